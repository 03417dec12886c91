"""The LSTM layer: shapes, dtypes, lengths, parameters and the BPTT cache.

This module owns the place where the public (PyTorch) parameter layout
meets the kernels of :mod:`pylstm._lstm`: every call sorts the batch by
length, lays it out time-major and calls one kernel per layer and direction.
(:mod:`pylstm._training_step` makes the same calls for the common case of a
fit, planned once per batch shape.)

Per-step arrays (layer inputs and outputs, the BPTT cache, gradients) hold
one row per valid step, in the compact time-major layout of
:func:`_compact_rows`: a batch with variable lengths keeps and computes
nothing for the padding. A dense batch's layout is plain (T, B) order.
"""

import numpy as np
from sklearn.utils import check_random_state

from . import _lstm
from ._arrays import (
    compact_rows,
    compact_tokens,
    gather_rows,
    to_batch_first,
    to_time_major,
    zero_padding,
)
from ._container import ModelFileError, read_bool, read_float, read_int, read_object, read_str
from ._dense import dense_product
from ._threads import (
    model_call,
    run_directions,
    single_threaded_blas,
    thread_plan,
    wants_single_thread,
)
from ._tuning import CHUNK_ELEMENTS, CHUNK_STEPS, PACK_CACHE_MAX_ROWS
from ._validation import (
    BLAS_INT_MAX,
    NonFiniteError,
    as_float_array,
    check_dropout,
    check_dtype,
    check_finite,
    check_lengths,
    check_positive_int,
)
from ._workspace import Workspace, aligned_empty, aligned_zeros

__all__ = ["LSTM"]



def _chunk_steps(T, B, H):
    """Steps per input-projection chunk for a batch of B rows and hidden size H.

    At most 32 and at most ``2**15 / (4 H B)``: the chunk buffer is then
    independent of T (inference) and small next to what a training call keeps
    for its T steps anyway. Training and inference take the same chunks, so
    their results are bit-identical.
    """
    return max(1, min(CHUNK_STEPS, T, CHUNK_ELEMENTS // (B * 4 * H)))


def _compact_rows(lens_sorted, order, T):
    """:func:`pylstm._arrays.compact_rows` (the compact time-major layout's source
    rows, PyTorch's ``PackedSequence`` order) for lengths and order of any integer
    dtype.

    Examples
    --------
    >>> import numpy as np
    >>> _compact_rows(np.array([3, 1]), np.array([1, 0]), 3)
    array([3, 0, 4, 5])
    """
    return compact_rows(np.ascontiguousarray(lens_sorted, dtype=np.intc),
                        np.ascontiguousarray(order, dtype=np.intp), T)


def _check_steps_finite(arr, rows, name):
    """ValueError if a valid step of the batch-first (B, T, F) ``arr`` is not finite.

    ``rows`` are the valid steps' rows (:func:`_compact_rows`), None when all
    are valid. The whole array is checked first, which needs no temporary;
    only when something is not finite are the valid steps looked at alone,
    since NaN or infinity past a length is allowed.
    """
    try:
        check_finite(arr, name)
    except ValueError:
        if rows is None:
            raise
        check_finite(arr.reshape(-1, arr.shape[2])[rows], name)


def _fuse_weight_gradients(n_rows, n_in, hidden):
    """Whether the backward pass makes both weight gradients with one GEMM.

    The fused GEMM (``pylstm._lstm.backward``) needs a scratch block of the
    weights' size; two GEMMs write the gradients in place, into the array
    whose scratch the time loops used (:func:`_grad_arrays`), so that a
    training step holds no copy of the weights' size. Fused only where that
    block is small next to the BPTT cache (6H values per step): at batch 1
    and 100 steps it would be a third of the step's memory.
    """
    return 8 * 4 * hidden * (n_in + hidden) <= n_rows * 6 * hidden


def _grad_arrays(work, gates, n_in):
    """``dw_ih`` (4H, I), ``dw_hh`` (4H, H) and ``db`` (4H,): views of the head of
    a training call's work array (``pylstm._lstm.gradient_work_size``)."""
    H = gates // 4
    a, b = gates * n_in, gates * (n_in + H)
    return (work[:a].reshape(gates, n_in), work[a:b].reshape(gates, H),
            work[b:b + gates])


def _param_names(num_layers, bidirectional, projected=False):
    """Names of the parameters in PyTorch's order, as (layer, direction, names);
    ``weight_hr`` last in each group when ``projected``."""
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (
        ("weight_hr",) if projected else ())
    out = []
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            out.append((layer, direction, tuple(f"{kind}{sfx}" for kind in kinds)))
    return out


def param_shapes(input_size, hidden_size, num_layers, bidirectional, proj_size=0):
    """(name, shape) of an LSTM's parameters, in :meth:`LSTM.state_dict` order."""
    H, D, R = hidden_size, 2 if bidirectional else 1, proj_size or hidden_size
    out = []
    for layer, _, names in _param_names(num_layers, bidirectional, proj_size > 0):
        in_size = input_size if layer == 0 else R * D
        shapes = ((4 * H, in_size), (4 * H, R), (4 * H,), (4 * H,), (proj_size, H))
        out.extend(zip(names, shapes[:len(names)], strict=True))
    return out


class LSTM:
    """A multi-layer, optionally bidirectional LSTM on compiled kernels.

    Computes, for each step ``t`` and gate order (i, f, g, o),
    ``i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)``,
    ``f = sigmoid(W_if x + b_if + W_hf h + b_hf)``,
    ``g = tanh(W_ig x + b_ig + W_hg h + b_hg)``,
    ``o = sigmoid(W_io x + b_io + W_ho h + b_ho)``,
    ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``, exactly as
    ``torch.nn.LSTM(batch_first=True)``, whose parameter names, shapes and
    gate order :meth:`state_dict` uses.

    Parameters
    ----------
    input_size : int
        Number of features of each input step.
    hidden_size : int
        Number of units ``H`` of each direction of each layer.
    num_layers : int, default=1
        Number of stacked layers; layer ``k > 0`` reads layer ``k - 1``'s output.
    bidirectional : bool, default=False
        Add a direction that reads each sequence backwards from its last valid
        step; outputs of both directions are concatenated (forward first).
    dtype : {np.float32, np.float64}, default=np.float32
        Floating type of parameters, computations and outputs. Inputs of
        another type are converted to it.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, drawn uniformly from
        ``[-1/sqrt(H), 1/sqrt(H)]`` as in PyTorch.
    unit_forget_bias : bool, default=False
        Start with a total forget-gate bias of 1 (``bias_ih`` forget block set
        to 1, ``bias_hh`` forget block to 0), which helps long-range memory
        early in training (Jozefowicz et al., 2015).
    proj_size : int, default=0
        With ``proj_size > 0``, an LSTM with projections (Sak, Senior &
        Beaufays, 2014), as ``torch.nn.LSTM(proj_size=...)``: h_t =
        W_hr (o_t * tanh(c_t)) has ``proj_size`` units (fewer than
        ``hidden_size``), and so have the outputs, ``h0`` and ``h_n``;
        ``weight_hh_l{k}`` is (4H, proj_size) and each layer and direction
        has a ``weight_hr_l{k}`` (proj_size, H). ``c`` keeps ``hidden_size``.
    recurrent_dropout : float in [0, 1), default=0.0
        Variational recurrent dropout (Gal & Ghahramani, 2016), Keras'
        ``LSTM(recurrent_dropout=...)``: in a training :meth:`forward`, each
        sequence, layer and direction draws one mask that zeroes each unit of
        h_{t-1} with this probability and scales the others by
        ``1 / (1 - recurrent_dropout)``, where h_{t-1} enters the recurrent
        product, the same mask at every step. The outputs and final states
        are the unmasked h_t; inference (``training=False``) drops nothing.

    Attributes
    ----------
    num_directions : int
        1, or 2 when bidirectional.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import LSTM
    >>> layer = LSTM(3, 5, num_layers=2, bidirectional=True, random_state=0)
    >>> X = np.random.default_rng(0).normal(size=(4, 7, 3))
    >>> out, (h_n, c_n) = layer.forward(X, lengths=[7, 5, 2, 1])
    >>> out.shape, h_n.shape
    ((4, 7, 10), (4, 4, 5))
    >>> dX, grads = layer.backward(np.ones_like(out))
    >>> dX.shape, grads['weight_hh_l1_reverse'].shape
    ((4, 7, 3), (20, 5))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype=np.float32, random_state=None, unit_forget_bias=False,
                 recurrent_dropout=0.0, proj_size=0):
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        if 4 * self.hidden_size > BLAS_INT_MAX:
            raise ValueError("hidden_size is too large for 32-bit BLAS integers")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.bidirectional = bool(bidirectional)
        self.dtype = check_dtype(dtype)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.recurrent_dropout = check_dropout(recurrent_dropout, "recurrent_dropout")
        self.proj_size = check_positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size "
                             f"({self.hidden_size}), got {self.proj_size}")
        self._cache = None
        self._workspace = Workspace()
        rng = check_random_state(random_state)
        H, P = self.hidden_size, self.proj_size
        bound = 1.0 / np.sqrt(H)
        self._params = {
            name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            for name, shape in param_shapes(self.input_size, H, self.num_layers,
                                            self.bidirectional, P)}
        if self.unit_forget_bias:
            for _, _, names in _param_names(self.num_layers, self.bidirectional):
                self._params[names[2]][H:2 * H] = 1.0
                self._params[names[3]][H:2 * H] = 0.0
        # Draws the recurrent-dropout masks of calls that bring no generator.
        self._dropout_rng = rng

    def __setstate__(self, state):
        # Pickled before these existed.
        state.setdefault("proj_size", 0)
        state.setdefault("recurrent_dropout", 0.0)
        state.setdefault("_dropout_rng", np.random.RandomState())
        self.__dict__.update(state)
        self._workspace = Workspace()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_workspace"] = None  # scratch arrays, not state
        state.pop("_dense_steps", None)  # a network's training steps: scratch too
        return state

    def free_workspace(self):
        """Release the work arrays kept from the last call.

        :meth:`forward` and :meth:`backward` keep their work arrays (the BPTT
        cache among them) for the next call, so that a training loop over
        batches of one shape allocates nothing after its first step. This
        drops them, and the cache of a pending :meth:`backward`; the
        estimators call it at the end of ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTM
        >>> layer = LSTM(2, 3)
        >>> out, _ = layer.forward(np.ones((4, 5, 2)))
        >>> layer.workspace_nbytes > 0
        True
        >>> layer.free_workspace()
        >>> layer.workspace_nbytes
        0
        """
        self._cache = None
        self._workspace.clear()
        # A network's planned training steps (pylstm._training_step): a fit's scratch.
        self.__dict__.pop("_dense_steps", None)

    @property
    def workspace_nbytes(self):
        """Bytes of work arrays kept for the next call (see :meth:`free_workspace`)."""
        return self._workspace.nbytes

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Units of h per direction: ``proj_size`` if it is set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    # ------------------------------------------------------------------ parameters
    def state_dict(self):
        """Return copies of the parameters under PyTorch's names.

        Returns
        -------
        dict of str to ndarray
            ``weight_ih_l{k}`` (4H, in), ``weight_hh_l{k}`` (4H, H),
            ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (4H,), and with projections
            ``weight_hr_l{k}`` (proj_size, H) (``weight_hh_l{k}`` is then
            (4H, proj_size)), with ``_reverse`` suffixes for the backward
            direction; gate order (i, f, g, o).

        Examples
        --------
        >>> from pylstm import LSTM
        >>> sorted(LSTM(2, 3).state_dict())
        ['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0']
        """
        return {name: arr.copy() for name, arr in self._params.items()}

    def load_state_dict(self, state_dict):
        """Copy parameters in from a dict shaped like :meth:`state_dict`.

        A ``torch.nn.LSTM(batch_first=True)`` state dict converted with
        ``{k: v.numpy() for k, v in module.state_dict().items()}`` loads as is.

        Parameters
        ----------
        state_dict : dict of str to array-like
            Exactly the keys of :meth:`state_dict`, same shapes, finite values.

        Raises
        ------
        KeyError
            If a key is missing or unexpected.
        ValueError
            If a shape differs or a value is NaN or infinite.

        Examples
        --------
        >>> from pylstm import LSTM
        >>> a, b = LSTM(2, 3, random_state=0), LSTM(2, 3, random_state=1)
        >>> b.load_state_dict(a.state_dict())
        >>> bool((b.state_dict()['weight_ih_l0'] == a.state_dict()['weight_ih_l0']).all())
        True
        """
        missing = sorted(set(self._params) - set(state_dict))
        extra = sorted(set(state_dict) - set(self._params))
        if missing or extra:
            raise KeyError(f"state_dict keys do not match: missing {missing}, unexpected {extra}")
        new = {}
        for name, ref in self._params.items():
            arr = np.asarray(state_dict[name])
            if arr.shape != ref.shape:
                raise ValueError(f"{name} must have shape {ref.shape}, got {arr.shape}")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
            arr = arr.astype(self.dtype)
            check_finite(arr, name)
            new[name] = arr
        for name, arr in new.items():
            self._params[name][...] = arr  # in place: optimizers hold these arrays
        self._cache = None

    # ------------------------------------------------------------------ saved state
    #: The constructor arguments a model file keeps (``random_state`` only drew the
    #: initial weights, which the file replaces).
    _SAVED_PARAMS = ("input_size", "hidden_size", "num_layers", "bidirectional", "dtype",
                     "unit_forget_bias")

    def _saved_state(self):
        """The description and arrays :func:`pylstm.save` writes: ``{"params": {...}}``
        (the constructor arguments of :data:`_SAVED_PARAMS`) and :meth:`state_dict`."""
        params = {"input_size": int(self.input_size), "hidden_size": int(self.hidden_size),
                  "num_layers": int(self.num_layers), "bidirectional": bool(self.bidirectional),
                  "dtype": np.dtype(self.dtype).name,
                  "unit_forget_bias": bool(self.unit_forget_bias)}
        # Written only when set: a file without them is as before they existed.
        if self.proj_size:
            params["proj_size"] = int(self.proj_size)
        if self.recurrent_dropout:
            params["recurrent_dropout"] = float(self.recurrent_dropout)
        return {"params": params}, self.state_dict()

    @classmethod
    def _saved_layout(cls, description, n_arrays):
        """Check a description read by :func:`pylstm.load`; return the constructor
        arguments and the arrays the file must hold (name to shape and dtype).

        ``n_arrays``, the number of arrays in the file, bounds ``num_layers``.
        """
        where = "model.params."
        p = read_object(description, "model", {"params"})["params"]
        optional = [k for k in ("proj_size", "recurrent_dropout") if isinstance(p, dict) and k in p]
        p = read_object(p, "model.params", cls._SAVED_PARAMS + tuple(optional))
        params = {
            "input_size": read_int(p["input_size"], where + "input_size", 1, BLAS_INT_MAX),
            "hidden_size": read_int(p["hidden_size"], where + "hidden_size", 1,
                                    BLAS_INT_MAX // 4),
            "num_layers": read_int(p["num_layers"], where + "num_layers", 1, max(1, n_arrays)),
            "bidirectional": read_bool(p["bidirectional"], where + "bidirectional"),
            "dtype": read_str(p["dtype"], where + "dtype", {"float32", "float64"}),
            "unit_forget_bias": read_bool(p["unit_forget_bias"], where + "unit_forget_bias"),
        }
        if "proj_size" in p:
            params["proj_size"] = read_int(p["proj_size"], where + "proj_size", 1,
                                           params["hidden_size"] - 1)
        if "recurrent_dropout" in p:
            params["recurrent_dropout"] = read_float(
                p["recurrent_dropout"], where + "recurrent_dropout", lo=0.0, hi=1.0)
            if params["recurrent_dropout"] == 1.0:
                raise ModelFileError(f"{where}recurrent_dropout must be below 1, got 1.0")
        shapes = param_shapes(params["input_size"], params["hidden_size"],
                              params["num_layers"], params["bidirectional"],
                              params.get("proj_size", 0))
        return params, {name: (shape, params["dtype"]) for name, shape in shapes}

    @classmethod
    def _from_saved_state(cls, params, arrays):
        """The layer of :meth:`_saved_layout`'s ``params`` with the saved weights."""
        layer = cls(**params, random_state=0)
        layer.load_state_dict(arrays)
        return layer

    def parameters(self):
        """Return the live parameter arrays, in :meth:`state_dict` order.

        The arrays are the layer's own (not copies): an optimizer may update
        them in place.

        Examples
        --------
        >>> from pylstm import LSTM
        >>> [p.shape for p in LSTM(2, 3).parameters()]
        [(12, 2), (12, 3), (12,), (12,)]
        """
        return list(self._params.values())

    # ------------------------------------------------------------------ forward
    def _check_state(self, state, name, batch):
        """``state`` as a checked array of the layer's dtype; zeros for None. The
        h states (``h0``, ``h``, ``d_h_n``) have ``output_size`` units, the rest H."""
        width = self.output_size if name in ("h0", "h", "d_h_n") else self.hidden_size
        shape = (self.num_layers * self.num_directions, batch, width)
        if state is None:
            return np.zeros(shape, dtype=self.dtype)
        arr = np.asarray(state)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        check_finite(arr, name)
        return arr

    def _recurrent_masks(self, rng, batch):
        """The recurrent-dropout masks of one training call, (L * D, B, H).

        One uniform draw per unit of each sequence, layer and direction, in
        that order (``rng.random((L * D, B, H))``): a unit is kept, scaled
        by ``1 / (1 - p)``, where its draw is at least ``p``.
        """
        p = self.recurrent_dropout
        if rng is None:
            rng = self._dropout_rng
        elif not isinstance(rng, np.random.Generator):
            rng = check_random_state(rng)
        shape = (self.num_layers * self.num_directions, batch, self.output_size)
        keep = rng.random(shape) >= p
        return keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p))

    @model_call
    def forward(self, X, lengths=None, h0=None, c0=None, training=True, rng=None):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        X : array-like of shape (B, T, input_size)
            Batch-first input. Integer, non-contiguous, Fortran-ordered and
            read-only arrays are converted to the layer's dtype.
        lengths : array-like of shape (B,), default=None
            Valid steps of each sequence (``1 <= lengths[b] <= T``); steps past
            a length are ignored (as with PyTorch's ``PackedSequence``).
        h0, c0 : array-like of shape (num_layers * D, B, hidden_size), default=None
            Initial states (zeros when None); D = 2 when bidirectional. With
            projections ``h0`` is (num_layers * D, B, proj_size).
        training : bool, default=True
            Keep the cache that :meth:`backward` needs, and apply recurrent
            dropout if the layer has it. With False, the inference kernel
            runs and keeps no per-step state. Every call, even one that fails
            its checks, drops the previous call's cache.
        rng : int, numpy.random.Generator, RandomState or None, default=None
            Draws the recurrent-dropout masks of a training call (unused
            otherwise); None takes them from the layer's own generator,
            seeded by ``random_state``. The same seed gives the same masks.

        Returns
        -------
        out : ndarray of shape (B, T, D * output_size)
            Last layer's h_t, zero past each sequence's length
            (:attr:`output_size` is ``proj_size`` if set, else ``hidden_size``).
        (h_n, c_n) : tuple of ndarrays of shape (num_layers * D, B, hidden_size)
            States at each sequence's last valid step (for the reverse
            direction, after reading the sequence's first step); ``h_n`` is
            (num_layers * D, B, output_size).

        Raises
        ------
        ValueError
            Wrong ndim or sizes, lengths out of range, NaN or infinity.
        TypeError
            Non-numeric input.
        """
        return self._forward(X, lengths, h0, c0, training,
                             training and self.recurrent_dropout > 0, rng)

    def _forward(self, X, lengths, h0, c0, training, dropout, rng, lookup=None):
        """:meth:`forward`, with recurrent dropout only where ``dropout``.

        ``lookup``, for a unidirectional training call without ``lengths``
        whose ``X`` is ``embedding[tokens]`` (or None, since the rows are
        then never read): ``(embedding, tokens)``, the
        (V, input_size) embedding and the (B, T) token ids. The first
        layer's input projection is then looked up in the table
        ``embedding @ weight_ih_l0.T`` (``_lstm.forward_train``), and the
        backward sums the gate gradients by token into the table's gradient
        (``_lstm.backward``), from which it forms ``weight_ih_l0``'s
        gradient and, as the input gradient, the embedding's (V,
        input_size): a language model's input projection and its two
        gradient products cost V instead of B * T rows
        (benchmarks/bench_lm.py).
        """
        # Dropped first, whatever follows: a backward after a call that fails its
        # checks must not use the cache of the call before it.
        self._cache = None
        if X is None and lookup is not None:
            # X would be embedding[tokens], which a looked-up projection never
            # reads (forward_train with a table, backward with tokens): no
            # gather and no copy; _lookup_table checks the embedding instead.
            shape = np.shape(lookup[1]) + (self.input_size,)
            if len(shape) != 3:
                raise ValueError("a lookup's tokens must be a 2-D integer array")
            if not (training and lengths is None):
                raise ValueError("a lookup needs a training call without lengths")
        else:
            shape = np.shape(X)
        if len(shape) == 3 and shape[0] * shape[1] > BLAS_INT_MAX:
            raise ValueError("X is too large for 32-bit BLAS integers (B * T must be < 2**31)")
        if X is not None:
            X = as_float_array(X, "X", self.dtype, 3)
            shape = X.shape
        B, T, I = shape
        if I != self.input_size:
            raise ValueError(f"X has {I} features per step, but input_size is {self.input_size}")
        if B == 0 or T == 0:
            raise ValueError(f"X must have at least one sequence and one step, got shape {shape}")
        D, H = self.num_directions, self.output_size
        # Zero initial states stay None: the kernels' state arrays are zeroed.
        h0 = None if h0 is None else self._check_state(h0, "h0", B)
        c0 = None if c0 is None else self._check_state(c0, "c0", B)
        if lengths is None:  # every row T steps long: already in order
            order = np.arange(B)
            lens_sorted = np.full(B, T, dtype=np.intc)
        else:
            lens = check_lengths(lengths, B, T)
            order = np.argsort(-lens, kind="stable")
            lens_sorted = np.ascontiguousarray(lens[order], dtype=np.intc)
        T_eff = int(lens_sorted[0])
        masks = None
        if dropout:  # in the kernels' row order
            masks = [np.ascontiguousarray(m[order]) for m in self._recurrent_masks(rng, B)]
        # Every step of every row valid and no reordering: plain copies suffice.
        dense = bool(lens_sorted[-1] == T)
        h_n = np.empty((self.num_layers * D, B, H), dtype=self.dtype)
        c_n = np.empty((self.num_layers * D, B, self.hidden_size), dtype=self.dtype)
        # Steps past a length are never read, NaN or not, and cost nothing.
        rows = None if dense else _compact_rows(lens_sorted, order, T)
        if self.proj_size:
            if lookup is not None:
                raise ValueError("a lookup needs a layer without projections")
            _check_steps_finite(X, rows, "X")
            result = self._forward_projected(X, lens_sorted, order, h0, c0, h_n, c_n,
                                             training, masks)
            return result, (h_n, c_n)
        if not training:  # else checked by the copy below
            _check_steps_finite(X, rows, "X")
        # The last layer writes the batch-first result in place, and inference
        # reads X in place: no copy of either, so inference memory beyond the
        # result does not grow with T. Training keeps X with one row per valid
        # step, in the compact time-major layout of the weight-gradient GEMM.
        with self._workspace.borrow() as arrays:
            result = aligned_empty((B, T, D * H), self.dtype)
            if not dense:  # the kernels write the valid steps
                zero_padding(result, np.ascontiguousarray(lens, dtype=np.intc))
            if not training:
                x = X.reshape(B * T, I)
            else:
                # The compact copy of X takes the left-hand columns of an
                # (n, I + H) array whose right-hand ones receive the first
                # direction's h_{t-1} (see _forward_layers).
                n_rows = T_eff * B if dense else len(rows)
                x = arrays.empty("x", (n_rows, I + H), self.dtype)
                if X is None:  # the looked-up rows: unread
                    pass
                elif dense:  # copied and checked in one pass, before any kernel runs
                    if not to_time_major(X, x):
                        check_finite(X, "X")
                elif not gather_rows(X.reshape(B * T, I), rows, x[:, :I]):
                    # Only the valid steps were copied and checked, and one is not finite.
                    _check_steps_finite(X, rows, "X")
            bf_rows = order * T
            blas_steps = _lstm.needs_w_hh_t(lens_sorted)
            n_valid = int(lens_sorted.sum(dtype=np.int64))
            work = n_valid * 4 * H * D * (I + H + (self.num_layers - 1) * (D * H + H))
            one_thread, parallel, loop_threads = thread_plan(B, H, D, blas_steps, work)
            if lookup is not None:
                lookup = self._lookup_table(lookup, training and lengths is None, B, T)
            with single_threaded_blas(one_thread):
                caches = self._forward_layers(
                    arrays, x, lens_sorted, n_valid, order, bf_rows, h0, c0, h_n, c_n,
                    training, result.reshape(B * T, D * H), not training, blas_steps,
                    parallel, loop_threads, masks, lookup)
            if training:
                self._cache = {"order": order, "lengths": lens_sorted, "shape": (B, T),
                               "dense": dense, "rows": rows, "bf_rows": bf_rows,
                               "blas_steps": blas_steps, "work": work, "layers": caches,
                               "lookup": None if lookup is None else (lookup[2], lookup[1])}
        return result, (h_n, c_n)

    def _lookup_table(self, lookup, allowed, B, T):
        """:meth:`_forward`'s ``(embedding, tokens)`` checked: ``(table, compact
        tokens, embedding)``, the table ``embedding @ weight_ih_l0.T``."""
        embedding, tokens = lookup
        if not allowed:
            raise ValueError("a lookup needs a training call without lengths")
        if self.num_directions != 1:
            raise ValueError("a lookup needs a unidirectional layer")
        if (not isinstance(embedding, np.ndarray) or embedding.dtype != self.dtype
                or embedding.ndim != 2 or embedding.shape[1] != self.input_size
                or embedding.shape[0] < 1 or not embedding.flags.c_contiguous):
            raise ValueError(f"a lookup's embedding must be a C-contiguous (V, "
                             f"{self.input_size}) {self.dtype.name} array")
        tokens = np.asarray(tokens)
        if tokens.shape != (B, T) or tokens.dtype.kind not in "iu":
            raise ValueError(f"a lookup's tokens must be a ({B}, {T}) integer array")
        check_finite(embedding, "the lookup's embedding")
        V = embedding.shape[0]

        def not_a_row(b, t):
            return ValueError(f"token {tokens[b, t]} at ({b}, {t}) is not a row of the {V}-row "
                              "embedding")

        if tokens.dtype != np.int64:  # checked before the cast, which could wrap
            bad = (tokens < 0) | (tokens >= V)
            if bad.any():
                raise not_a_row(*np.argwhere(bad)[0])
            tokens = tokens.astype(np.int64)
        # The compact layout of a dense batch is time-major; the ids are checked as
        # they are copied (NumPy's check and copy had cost more, bench_lm.py).
        compact = np.empty(B * T, np.intc)
        at = compact_tokens(tokens, V, compact)
        if at >= 0:
            raise not_a_row(*divmod(at, T))
        w_ih = self._params["weight_ih_l0"]
        table = np.empty((V, w_ih.shape[0]), self.dtype)
        dense_product(False, True, embedding, w_ih, 0.0, table)
        return table, compact, embedding

    def _forward_layers(self, arrays, x, lens_sorted, N, order, bf_rows, h0, c0, h_n, c_n,
                        training, result, x_batch_first, need_t, parallel, loop_threads,
                        masks=None, lookup=None):
        """Kernel calls of :meth:`forward`, layer by layer; directions may run concurrently.

        Work arrays come from ``arrays`` (the layer's :class:`Workspace`);
        per-step arrays have one row per valid step (compact layout, see
        :func:`_compact_rows`), each written by the kernels. The last layer
        writes ``result``, the caller's (B * T, D*H) output, in place (row
        ``bf_rows[b] + t``); with ``x_batch_first`` (inference) ``x`` is the
        batch-first input itself, (B * T, I). In training, ``x`` is (N, I + H):
        each layer's input is the left-hand part of an array whose right-hand
        H columns receive the first direction's h_{t-1}, so that the backward
        pass makes both of its weight gradients with one GEMM
        (``pylstm._lstm.backward``). ``need_t``: some step multiplies
        by the transposed ``W_hh`` (:func:`pylstm._lstm.needs_w_hh_t`);
        ``parallel``: run the two directions side by side; ``loop_threads``:
        threads sharing each kernel's time loop; ``N``: valid steps, the rows
        of the per-step arrays; ``h0`` / ``c0`` None: zero initial states;
        ``masks``: per layer and direction, the sorted rows' recurrent-dropout
        mask (None: no dropout); ``lookup``: the first layer's (table,
        compact tokens, embedding) of :meth:`_forward`. Returns the training
        caches.
        """
        B, T_eff = len(lens_sorted), int(lens_sorted[0])
        D, H, L = self.num_directions, self.hidden_size, self.num_layers
        dt = self.dtype
        new = arrays.empty
        caches = []
        wide = x if training else None
        layer_in = x[:, :x.shape[1] - H] if training else x
        for layer in range(L):
            x_bf = x_batch_first and layer == 0
            out_batch_first = layer == L - 1
            if out_batch_first:
                out = result
            elif training:  # the next layer's input, continued by its h_{t-1}
                out = new(f"out{layer}", (N, D * H + H), dt)
            elif L == 1:
                out = new(f"out{layer}", (N, D * H), dt)
            else:  # freed once the next layer has read it, as inference needs
                out = aligned_empty((N, D * H), dt)

            def run(d, layer=layer, layer_in=layer_in, out=out, x_bf=x_bf,
                    out_bf=out_batch_first, wide=wide):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = self._params["weight_ih" + sfx]
                w_hh = self._params["weight_hh" + sfx]
                bias = self._params["bias_ih" + sfx] + self._params["bias_hh" + sfx]
                if need_t:
                    w_hh_t = arrays.empty(f"w_hh_t{k}", (H, 4 * H), dt)
                    np.copyto(w_hh_t, w_hh.T)
                else:  # unread by the kernels; any (H, 4H) array fills the slot
                    w_hh_t = w_hh.reshape(H, 4 * H)
                h = arrays.empty(f"h{k}", (B, H), dt)
                c = arrays.empty(f"c{k}", (B, H), dt)
                for state, start in ((h, h0), (c, c0)):
                    if start is None:
                        state.fill(0)
                    else:
                        np.take(start[k], order, axis=0, out=state)
                K = _chunk_steps(T_eff, B, H)
                xbuf = arrays.empty(f"xbuf{k}", (K * B * layer_in.shape[1],), dt)
                gbuf = arrays.empty(f"gbuf{k}", (K * B * 4 * H,), dt)
                kept = None
                packs = None
                if (not training and N <= PACK_CACHE_MAX_ROWS
                        and _lstm.packs_weights(T_eff, B)):
                    # Packed weights kept for the next call with the same weights.
                    packs = arrays.kept(
                        f"packs{k}", (_lstm.pack_cache_size(w_ih.shape[1], H, dt),), dt)
                if training:
                    # The kernels' scratch comes from the array that will hold
                    # this direction's weight gradients (see _grad_arrays).
                    # (A looked-up projection makes no dG^T X product: nothing to fuse.)
                    looked_up = lookup is not None and k == 0
                    fuse = (not looked_up
                            and not _lstm.direct_weight_gradients(w_ih.shape[1], H)
                            and _fuse_weight_gradients(N, w_ih.shape[1], H))
                    work = aligned_empty(
                        _lstm.gradient_work_size(w_ih.shape[1], H, B, dt, fuse), dt)
                    c_start = c.copy()
                    # One row per valid step, each written by the kernel.
                    gates = new(f"gates{k}", (N, 4 * H), dt)
                    c_cache = new(f"c_cache{k}", (N, H), dt)
                    if d == 0:  # continues the rows of layer_in
                        h_prev = wide[:, layer_in.shape[1]:]
                    else:
                        h_prev = new(f"h_prev{k}", (N, H), dt)
                    mask = None if masks is None else masks[k]
                    table, tokens = lookup[:2] if looked_up else (None, None)
                    _lstm.forward_train(layer_in, lens_sorted, w_ih, w_hh, w_hh_t, bias, h, c,
                                        out, d * H, bool(d), xbuf, gbuf, gates, c_cache,
                                        h_prev, out_bf, bf_rows, loop_threads, work, mask,
                                        table, tokens)
                    kept = (c_start, gates, c_cache, h_prev, work, fuse, mask)
                else:
                    # The kernels' scratch (packed weights, ...: see
                    # _lstm.work_size), kept so that no call maps fresh pages
                    # for it; with the packs cached, inference needs only a
                    # (B, H) alternate state from it.
                    work = arrays.empty(f"work{k}", (
                        B * H + 64 if packs is not None
                        else _lstm.work_size(w_ih.shape[1], H, B, dt),), dt)
                    _lstm.forward_infer(layer_in, lens_sorted, w_ih, w_hh, w_hh_t, bias, h, c,
                                        out, d * H, bool(d), xbuf, gbuf, x_bf, out_bf,
                                        bf_rows, loop_threads, packs, work)
                h_n[k, order] = h
                c_n[k, order] = c
                return kept

            layer_cache = run_directions(run, D, parallel=parallel)
            if training:
                caches.append((layer_in, layer_cache))
            if training and not out_batch_first:
                wide, layer_in = out, out[:, :D * H]
            else:
                layer_in = out
        return caches

    def _forward_projected(self, X, lens_sorted, order, h0, c0, h_n, c_n, training, masks):
        """:meth:`forward` of a layer with projections (``_lstm.forward_projected``).

        Every layer reads and writes per-step arrays in the compact layout
        (:func:`_compact_rows`), made here: the input's valid steps, one
        (N, D * P) output per layer, and in training the caches of
        :meth:`_backward_projected`. Returns the batch-first result.
        """
        B, T, I = X.shape
        D, H, P, L = self.num_directions, self.hidden_size, self.proj_size, self.num_layers
        dt = self.dtype
        rows = _compact_rows(lens_sorted, order, T)
        N = len(rows)
        layer_in = X.reshape(B * T, I)[rows]
        caches = []
        for layer in range(L):
            out = np.empty((N, D * P), dt)
            kept = []
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                h = np.zeros((B, P), dt) if h0 is None else h0[k][order]
                c = np.zeros((B, H), dt) if c0 is None else c0[k][order]
                weights = (self._params["weight_ih" + sfx], self._params["weight_hh" + sfx],
                           self._params["bias_ih" + sfx] + self._params["bias_hh" + sfx],
                           self._params["weight_hr" + sfx])
                if training:
                    mask = None if masks is None else masks[k]
                    caches_d = (np.empty((N, 4 * H), dt), np.empty((N, H), dt),
                                np.empty((N, H), dt), np.empty((N, P), dt))
                    kept.append((c.copy(), *caches_d, mask))
                    _lstm.forward_projected(layer_in, lens_sorted, *weights, h, c, out,
                                            d * P, bool(d), *caches_d, mask)
                else:
                    _lstm.forward_projected(layer_in, lens_sorted, *weights, h, c, out,
                                            d * P, bool(d))
                h_n[k, order] = h
                c_n[k, order] = c
            caches.append((layer_in, kept))
            layer_in = out
        result = np.zeros((B, T, D * P), dt)
        result.reshape(B * T, D * P)[rows] = layer_in
        if training:
            self._cache = {"order": order, "lengths": lens_sorted, "shape": (B, T),
                           "dense": False, "rows": rows, "projected": True,
                           "layers": caches}
        return result

    def _backward_projected(self, cache, d_out, d_h_n, d_c_n, input_gradient=True):
        """:meth:`backward` of a layer with projections (``_lstm.backward_projected``):
        the parameter and initial-state gradients and the compact input gradient
        (None without ``input_gradient``)."""
        B, T = cache["shape"]
        D, H, P, L = self.num_directions, self.hidden_size, self.proj_size, self.num_layers
        dt = self.dtype
        order, lens, rows = cache["order"], cache["lengths"], cache["rows"]
        grad = np.ascontiguousarray(d_out.reshape(B * T, D * P)[rows])
        grads = {}
        g_h0 = np.empty((L * D, B, P), dt)
        g_c0 = np.empty((L * D, B, H), dt)
        for layer in range(L - 1, -1, -1):
            layer_in, kept = cache["layers"][layer]
            d_in = np.empty(layer_in.shape, dt)
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = self._params["weight_ih" + sfx]
                c_start, gates, c_cache, m_cache, h_prev, mask = kept[d]
                dh = np.zeros((B, P), dt) if d_h_n is None else d_h_n[k][order]
                dc = np.zeros((B, H), dt) if d_c_n is None else d_c_n[k][order]
                dw = (np.empty_like(w_ih), np.empty((4 * H, P), dt), np.empty(4 * H, dt),
                      np.empty((P, H), dt))
                _lstm.backward_projected(layer_in, lens, self._params["weight_hh" + sfx],
                                         self._params["weight_hr" + sfx], c_start, gates,
                                         c_cache, m_cache, h_prev, grad, d * P, bool(d),
                                         dh, dc, *dw, mask)
                if layer > 0 or input_gradient:
                    _lstm.input_gradient(gates, w_ih, d_in, float(d > 0))
                for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "weight_hr"), dw,
                                   strict=True):
                    grads[name + sfx] = g
                grads["bias_hh" + sfx] = dw[2].copy()
                g_h0[k, order] = dh
                g_c0[k, order] = dc
            grad = d_in
        return grads, g_h0, g_c0, grad if input_gradient else None

    @model_call
    def gate_activations(self, X, lengths=None, h0=None, c0=None):
        """Per-step gate activations and states, for looking inside the cell.

        Parameters
        ----------
        X, lengths, h0, c0
            As in :meth:`forward`.

        Returns
        -------
        dict of str to dict of str to ndarray
            One entry per layer and direction, named like the parameters'
            suffixes (``'l0'``, ``'l0_reverse'``, ...), each a dict with the
            arrays ``'input'``, ``'forget'``, ``'cell'`` (the candidate g),
            ``'output'`` and ``'c'`` of shape (B, T, hidden_size) and ``'h'``
            of shape (B, T, :attr:`output_size`), in
            the input's time order and zero past each sequence's length.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTM
        >>> layer = LSTM(2, 3, random_state=0)
        >>> gates = layer.gate_activations(np.ones((1, 4, 2)))
        >>> sorted(gates['l0']), gates['l0']['forget'].shape
        (['c', 'cell', 'forget', 'h', 'input', 'output'], (1, 4, 3))
        """
        out, _ = self._forward(X, lengths, h0, c0, True, False, None)
        cache, self._cache = self._cache, None
        B, T = cache["shape"]
        order = cache["order"]
        H = self.output_size
        result = {}

        rows = cache["rows"]
        if rows is None:
            rows = _compact_rows(cache["lengths"], order, T)

        def batch_first(arr):
            full = np.zeros((B, T) + arr.shape[1:], dtype=self.dtype)
            full.reshape((B * T,) + arr.shape[1:])[rows] = arr
            return full

        for layer, (_, layer_cache) in enumerate(cache["layers"]):
            outputs = (cache["layers"][layer + 1][0] if layer + 1 < self.num_layers
                       else None)
            for d, (_, gates, c_cache, *_) in enumerate(layer_cache):
                name = f"l{layer}" + ("_reverse" if d else "")
                g = gates.reshape(-1, 4, self.hidden_size)
                entry = {kind: batch_first(g[:, j]) for j, kind in
                         enumerate(("input", "forget", "cell", "output"))}
                entry["c"] = batch_first(c_cache)
                if outputs is None:
                    entry["h"] = out[:, :, d * H:(d + 1) * H].copy()
                else:
                    entry["h"] = batch_first(outputs[:, d * H:(d + 1) * H])
                result[name] = entry
        return result

    def step(self, x, h=None, c=None):
        """Advance a unidirectional layer by one time step (for generation).

        A lean path for token-by-token decoding: no sorting or padding, one
        kernel call per layer on the (B, input_size) input, state in and out.

        Parameters
        ----------
        x : array-like of shape (B, input_size)
            The input of this step.
        h, c : arrays of shape (num_layers, B, output_size), (num_layers, B, hidden_size)
            The state after the previous step (zeros when None, the default).

        Returns
        -------
        out : ndarray of shape (B, output_size)
            The last layer's h_t.
        (h, c) : tuple of ndarrays
            The new state, shaped as ``h`` and ``c`` (new arrays; the inputs
            are not modified).

        Raises
        ------
        ValueError
            For a bidirectional layer (whose reverse direction needs the whole
            sequence), wrong shapes, NaN or infinity.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTM
        >>> layer = LSTM(3, 4, random_state=0)
        >>> X = np.random.default_rng(0).normal(size=(2, 5, 3))
        >>> out, _ = layer.forward(X, training=False)
        >>> h = c = None
        >>> for t in range(5):
        ...     o, (h, c) = layer.step(X[:, t], h, c)
        >>> bool(np.allclose(o, out[:, -1]))
        True
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer")
        x = as_float_array(x, "x", self.dtype, 2)
        B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x has {I} features, but input_size is {self.input_size}")
        if B == 0:
            raise ValueError("x must hold at least one row")
        check_finite(x, "x")
        H = self.hidden_size
        h = self._check_state(h, "h", B).copy()
        c = self._check_state(c, "c", B).copy()
        lengths = np.ones(B, dtype=np.intc)
        layer_in = x
        with single_threaded_blas(wants_single_thread(B, H)):
            for layer in range(self.num_layers):
                sfx = f"_l{layer}"
                bias = self._params["bias_ih" + sfx] + self._params["bias_hh" + sfx]
                if self.proj_size:
                    out = np.empty((B, self.proj_size), dtype=self.dtype)
                    _lstm.forward_projected(layer_in, lengths, self._params["weight_ih" + sfx],
                                            self._params["weight_hh" + sfx], bias,
                                            self._params["weight_hr" + sfx], h[layer],
                                            c[layer], out, 0, False)
                    layer_in = out
                    continue
                out = np.empty((B, H), dtype=self.dtype)
                xbuf = np.empty(B * layer_in.shape[1], dtype=self.dtype)
                gbuf = np.empty(B * 4 * H, dtype=self.dtype)
                w_hh = self._params["weight_hh" + sfx]
                # The transposed copy serves the recurrent GEMM of B > 1 rows; one
                # row takes a GEMV on w_hh itself (the view only fills the slot).
                w_hh_t = np.ascontiguousarray(w_hh.T) if B > 1 else w_hh.reshape(H, 4 * H)
                _lstm.forward_infer(layer_in, lengths, self._params["weight_ih" + sfx],
                                    w_hh, w_hh_t, bias, h[layer], c[layer], out, 0, False,
                                    xbuf, gbuf)
                layer_in = out
        return layer_in, (h, c)

    # ------------------------------------------------------------------ backward
    @model_call
    def backward(self, d_out, d_h_n=None, d_c_n=None):
        """Backpropagate through time for the most recent ``forward(training=True)``.

        Parameters
        ----------
        d_out : array-like of shape (B, T, D * output_size)
            Gradient of the loss with respect to ``out`` (entries past a
            sequence's length are ignored).
        d_h_n, d_c_n : array-like of shape (num_layers * D, B, hidden_size), default=None
            Gradients with respect to ``h_n`` and ``c_n`` (zeros when None);
            ``d_h_n`` has ``h_n``'s shape.

        Returns
        -------
        dX : ndarray of shape (B, T, input_size)
            Gradient with respect to X (zero past each length).
        grads : dict of str to ndarray
            Gradients under the :meth:`state_dict` keys, plus ``'h0'`` and
            ``'c0'`` for the initial states.

        Raises
        ------
        RuntimeError
            If there was no ``forward(training=True)`` since the last backward,
            or the last forward failed.
        ValueError
            If a gradient has the wrong shape or is not finite, or a finite
            ``d_out`` is so large that the gradients overflow the layer's dtype.
        """
        return self._backward(d_out, d_h_n, d_c_n, True)

    def _backward(self, d_out, d_h_n, d_c_n, input_gradient, checked=True):
        """:meth:`backward`; without ``input_gradient``, ``dX`` is None and not computed.

        After a forward with a ``lookup`` (:meth:`_forward`), ``dX`` is the
        gradient of the lookup's embedding, (V, input_size).

        A network's first layer has no use for the gradient of its input
        (the data), and it would cost a pass over the (N, 4H) gate gradients
        per direction (benchmarks/bench_quality.py, the adding problem).
        Without ``checked``, neither ``d_out`` nor the results are checked
        for NaN or infinity: for a network that checks its loss and its
        gradients' norm, which a non-finite value would reach.
        """
        with self._workspace.borrow() as arrays:
            cache = self._cache
            if cache is None:
                raise RuntimeError(
                    "backward() needs a preceding forward(..., training=True); the cache is "
                    "used up by each backward and not kept by training=False"
                )
            B, T = cache["shape"]
            D, H = self.num_directions, self.output_size
            d_out = np.asarray(d_out)
            if d_out.shape != (B, T, D * H):
                raise ValueError(f"d_out must have shape {(B, T, D * H)}, got {d_out.shape}")
            d_out = as_float_array(d_out, "d_out", self.dtype, 3)
            d_h_n = None if d_h_n is None else self._check_state(d_h_n, "d_h_n", B)
            d_c_n = None if d_c_n is None else self._check_state(d_c_n, "d_c_n", B)
            # Entries past a length are never read (NaN or not); the top
            # layer reads the caller's gradient in place.
            if checked:
                _check_steps_finite(d_out, cache["rows"], "d_out")
            self._cache = None
            if cache.get("projected"):
                grads, g_h0, g_c0, grad_out = self._backward_projected(
                    cache, d_out, d_h_n, d_c_n, input_gradient)
            else:
                one_thread, parallel, loop_threads = thread_plan(
                    B, H, D, cache["blas_steps"], cache["work"])
                with single_threaded_blas(one_thread):
                    grads, g_h0, g_c0, grad_out = self._backward_layers(
                        arrays, cache, d_out.reshape(B * T, D * H), d_h_n, d_c_n, parallel,
                        loop_threads, input_gradient)
            n_in = self.input_size
            if not input_gradient or cache.get("lookup") is not None:  # see _forward
                dX = grad_out
            elif cache["dense"]:
                dX = aligned_empty((B, T, n_in), self.dtype)
                to_batch_first(grad_out, dX)
            else:
                dX = aligned_zeros((B, T, n_in), self.dtype)
                dX.reshape(B * T, n_in)[cache["rows"]] = grad_out
        grads = {name: grads[name] for name in self._params}
        grads["h0"] = g_h0
        grads["c0"] = g_c0
        # A finite d_out can still overflow on its way down (3e38 in float32):
        # say so rather than return infinity or NaN as gradients.
        checks = (() if not checked else tuple(grads.items())
                  + ((("dX", dX),) if input_gradient else ()))
        for name, arr in checks:
            try:
                check_finite(arr, name)
            except NonFiniteError as exc:
                raise NonFiniteError(
                    f"the gradients overflowed {self.dtype.name} ({exc}) although d_out is "
                    "finite: scale d_out (the loss) down"
                ) from None
        return dX, grads

    def _backward_layers(self, arrays, cache, grad_out, d_h_n, d_c_n, parallel,
                         loop_threads, input_gradient=True):
        """Kernel calls of :meth:`backward`, top layer first; work arrays from ``arrays``.

        ``grad_out`` is the caller's (B * T, D*H) gradient, which the top
        layer reads in place; each layer below reads the compact input
        gradient of the one above (``d_h_n`` / ``d_c_n`` None: zeros). Returns
        the parameter and initial-state gradients and the compact gradient of
        the input (None without ``input_gradient``; after a lookup, see
        :meth:`_forward`, the embedding's).
        """
        B = cache["shape"][0]
        D, H, L = self.num_directions, self.hidden_size, self.num_layers
        order, lens, bf_rows = cache["order"], cache["lengths"], cache["bf_rows"]
        grads = {}
        g_h0 = np.empty((L * D, B, H), dtype=self.dtype)
        g_c0 = np.empty((L * D, B, H), dtype=self.dtype)
        lookup = cache.get("lookup")
        for layer in range(L - 1, -1, -1):
            layer_in, layer_cache = cache["layers"][layer]
            table = None
            if lookup is not None and layer == 0:
                # The kernel sums the table's gradient by token, and from it
                # makes dW_ih and the embedding's gradient (V rows, not N).
                V = lookup[0].shape[0]
                table = dict(tokens=lookup[1], embedding=lookup[0],
                             d_table=arrays.empty("d_table", (V, 4 * H), np.float64),
                             d_embedding=np.empty((V, self.input_size), self.dtype),
                             table_work=arrays.empty("table_work", (
                                 _lstm.table_work_size(V, self.input_size, H),), np.float64))

            def run(d, layer=layer, layer_in=layer_in, layer_cache=layer_cache,
                    grad_out=grad_out, g_bf=layer == L - 1, table=table):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = self._params["weight_ih" + sfx]
                w_hh = self._params["weight_hh" + sfx]
                c_start, gates, c_cache, h_prev, grad_work, fuse, mask = layer_cache[d]
                dh, dc = (np.zeros((B, H), self.dtype) if g is None else g[k][order]
                          for g in (d_h_n, d_c_n))
                dw_ih, dw_hh, db = _grad_arrays(grad_work, *w_ih.shape)
                scratch = arrays.empty(f"scratch{k}", (B, 4 * H), self.dtype)
                n_in = w_ih.shape[1]
                work = arrays.empty(f"work{k}", (
                    _lstm.work_size(n_in, H, B, self.dtype) if fuse
                    else _lstm.input_gradient_work_size(n_in, H, self.dtype),), self.dtype)
                _lstm.backward(layer_in, lens, w_ih, w_hh, c_start, gates, c_cache, h_prev,
                               grad_out, d * H, bool(d), dh, dc, layer_in, 0.0,
                               dw_ih, dw_hh, db, scratch, g_bf, bf_rows, False,
                               loop_threads, work if fuse else grad_work, fuse, mask,
                               **(table or {}))
                grads["weight_ih" + sfx] = dw_ih
                grads["weight_hh" + sfx] = dw_hh
                grads["bias_ih" + sfx] = db
                grads["bias_hh" + sfx] = db.copy()
                g_h0[k, order] = dh
                g_c0[k, order] = dc
                return gates, w_ih, work

            parts = run_directions(run, D, parallel=parallel)
            if table is not None:
                return grads, g_h0, g_c0, table["d_embedding"] if input_gradient else None
            if layer == 0 and not input_gradient:
                return grads, g_h0, g_c0, None
            # Every direction has read the layer input: its gradient takes its place
            # (the input is the layer's own compact copy or the output of the layer
            # below, both work arrays; the cache is used up by this backward).
            for d, (dg, w_ih, work) in enumerate(parts):
                _lstm.input_gradient(dg, w_ih, layer_in, float(d > 0), loop_threads, work)
            grad_out = layer_in
        return grads, g_h0, g_c0, grad_out
