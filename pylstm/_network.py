"""The trainable stack behind the estimators.

``SequenceNetwork`` is LSTM layers (with dropout between them) followed by a
dense output layer. It computes the forward and backward pass of the whole
model on one batch and exposes its parameters and gradients as aligned lists
of arrays; losses live here too. It knows nothing of scikit-learn.
"""

import numpy as np

from . import _lstm
from ._arrays import scatter_add_rows
from ._dense import dense, dense_product, head_gradients
from ._layer import LSTM, param_shapes
from ._threads import loop_threads, model_call
from ._training_step import DenseTrainingSteps

__all__ = ["SequenceNetwork", "log_softmax", "softmax_cross_entropy", "squared_error"]

#: Elements (rows x steps x units) of the layer outputs that an inference of final
#: states holds at a time. A layer's forward returns its output at every step;
#: for longer batches, unidirectional stacks read the sequences in chunks of steps
#: carrying each layer's (h, c), so that memory does not grow with their length.
_FINAL_STATE_CHUNK_ELEMENTS = 2**22
#: Fewest steps per such chunk: each chunk costs a kernel call per layer.
_MIN_CHUNK_STEPS = 32


def log_softmax(z):
    """Row-wise log-softmax along the last axis, stable for any finite input.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import log_softmax
    >>> np.exp(log_softmax(np.array([[1000.0, 0.0]]))).round(3)
    array([[1., 0.]])
    """
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(z, y, weight):
    """Mean cross-entropy of logits ``z`` (N, C) for integer labels ``y`` (N,).

    ``weight`` (N,) gives each row's share of the mean (0 for ignored rows);
    it sums to 1. Returns the loss and its gradient with respect to ``z``.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import softmax_cross_entropy
    >>> loss, dz = softmax_cross_entropy(np.zeros((2, 2)), np.array([0, 1]), np.full(2, 0.5))
    >>> round(float(loss), 4)
    0.6931
    """
    # One compiled pass per row (src/_head.pxi): the loss and the gradient from
    # one exponential of each logit; a language model's batch by halves of its
    # rows on the kernels' two threads (below XENT_SPLIT_LOGITS, one pass: no
    # thread query).
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    loss = _lstm.softmax_cross_entropy(
        z, np.ascontiguousarray(y, dtype=np.int64),
        np.ascontiguousarray(weight, dtype=np.float64), dz,
        loop_threads() if z.size >= _lstm.XENT_SPLIT_LOGITS else 1)
    return loss, dz


def squared_error(z, y, weight):
    """Half the weighted mean over rows of the squared error summed over outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import squared_error
    >>> loss, dz = squared_error(np.array([[1.0]]), np.array([[0.0]]), np.ones(1))
    >>> float(loss), dz.tolist()
    (0.5, [[1.0]])
    """
    diff = z - y
    loss = 0.5 * np.dot(weight, (diff * diff).sum(axis=1))
    return loss, diff * weight[:, None]


def dense_steps(layers):
    """Each layer's :class:`~pylstm._training_step.DenseTrainingSteps`, made at the
    first call of a fit (``layer.free_workspace()`` drops them), when they apply to
    every layer; else None."""
    if not all(DenseTrainingSteps.applies(layer) for layer in layers):
        return None
    for layer in layers:
        if getattr(layer, "_dense_steps", None) is None:
            layer._dense_steps = DenseTrainingSteps(layer)
    return [layer._dense_steps for layer in layers]


def _stack_shapes(n_inputs, hidden_size, num_layers, bidirectional, proj_size):
    """(saved name, shape) of the parameters of stacked one-layer LSTMs."""
    shapes, in_size = [], n_inputs
    for k in range(num_layers):
        shapes += [(f"network.layers.{k}.{name}", shape) for name, shape in
                   param_shapes(in_size, hidden_size, 1, bidirectional, proj_size)]
        in_size = (proj_size or hidden_size) * (2 if bidirectional else 1)
    return shapes


class _SavedParameters:
    """A network's parameters under the names a model file gives them.

    Subclasses give the names and shapes for given sizes (``saved_shapes``)
    and their own sizes (``_saved_sizes``); the estimators that own the
    network write its other settings.
    """

    def saved_arrays(self):
        """The live parameters by saved name, in :meth:`parameters` order."""
        shapes = self.saved_shapes(*self._saved_sizes())
        return {name: p for (name, _), p in zip(shapes, self.parameters(), strict=True)}

    def load_saved_arrays(self, arrays):
        """Copy the parameters in from arrays of the saved names and shapes."""
        for name, p in self.saved_arrays().items():
            p[...] = arrays[name]


class SequenceNetwork(_SavedParameters):
    """LSTM layers, dropout between them, and a dense output layer.

    Parameters
    ----------
    n_inputs : int
        Features per step.
    n_outputs : int
        Width of the dense output layer (classes or regression targets).
    hidden_size, num_layers, bidirectional, dropout
        As in the estimators.
    return_sequences : bool
        Output at every valid step (True) or from each sequence's final
        states (False).
    dtype : numpy.dtype
        float32 or float64.
    rng : numpy.random.RandomState
        Source of the initial weights.
    proj_size : int, default=0
        The layers' projection (:class:`pylstm.LSTM`); 0: none.
    unit_forget_bias : bool, default=False
        The layers' initial forget-gate bias of 1 (:class:`pylstm.LSTM`).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import SequenceNetwork
    >>> net = SequenceNetwork(2, 3, 4, 1, False, 0.0, False, np.float64,
    ...                       np.random.RandomState(0))
    >>> net.forward(np.zeros((5, 6, 2)), np.full(5, 6)).shape
    (5, 3)
    """

    def __init__(self, n_inputs, n_outputs, hidden_size, num_layers, bidirectional,
                 dropout, return_sequences, dtype, rng, proj_size=0, unit_forget_bias=False):
        self.dtype = np.dtype(dtype)
        self.dropout = float(dropout)
        self.return_sequences = bool(return_sequences)
        self.layers = []
        in_size = n_inputs
        for _ in range(num_layers):
            layer = LSTM(in_size, hidden_size, 1, bidirectional, self.dtype,
                         random_state=rng, unit_forget_bias=unit_forget_bias,
                         proj_size=proj_size)
            self.layers.append(layer)
            in_size = layer.output_size * layer.num_directions
        bound = np.sqrt(6.0 / (in_size + n_outputs))
        self.coef = rng.uniform(-bound, bound, size=(in_size, n_outputs)).astype(self.dtype)
        self.intercept = np.zeros(n_outputs, dtype=self.dtype)
        self._cache = None

    # ------------------------------------------------------------------ parameters
    def parameters(self):
        """Live parameter arrays: each layer's (in state-dict order), then the head."""
        params = [p for layer in self.layers for p in layer.parameters()]
        return params + [self.coef, self.intercept]

    @staticmethod
    def saved_shapes(n_inputs, n_outputs, hidden_size, num_layers, bidirectional,
                     proj_size=0):
        """(name, shape) of a saved network's parameters, aligned with :meth:`parameters`:
        ``network.layers.{k}.{LSTM parameter}``, ``network.coef``, ``network.intercept``."""
        in_size = (proj_size or hidden_size) * (2 if bidirectional else 1)
        return _stack_shapes(n_inputs, hidden_size, num_layers, bidirectional, proj_size) + [
            ("network.coef", (in_size, n_outputs)), ("network.intercept", (n_outputs,))]

    def _saved_sizes(self):
        first = self.layers[0]
        return (first.input_size, self.coef.shape[1], first.hidden_size, len(self.layers),
                first.bidirectional, first.proj_size)

    def penalised(self):
        """Booleans aligned with :meth:`parameters`: True for weight matrices (L2)."""
        return [p.ndim == 2 for p in self.parameters()]

    def get_state(self):
        """Copies of all parameters (a list aligned with :meth:`parameters`)."""
        return [p.copy() for p in self.parameters()]

    def set_state(self, state):
        """Copy parameters in place from a list made by :meth:`get_state`."""
        for p, s in zip(self.parameters(), state, strict=True):
            p[...] = s

    # ------------------------------------------------------------------ passes
    @model_call
    def features(self, X, lengths, training=False, rng=None, final_states=None):
        """Run the LSTM stack; return (B, D*H) final states or (B, T, D*H) outputs.

        ``final_states`` defaults to ``not return_sequences``. Final states at
        inference keep O(B x H) memory whatever T for unidirectional stacks
        (:meth:`_final_states_in_chunks`).
        """
        if final_states is None:
            final_states = not self.return_sequences
        if final_states and not training and not self.layers[0].bidirectional:
            steps = self._chunk_steps(X.shape[0])
            if X.shape[1] > steps:
                return self._final_states_in_chunks(X, lengths, steps)
        steps = self._dense_steps(X, lengths) if training else None
        masks = []
        h = X
        top = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if steps is None:
                out, (h_n, _) = layer.forward(h, lengths=lengths, training=training, rng=rng)
            else:  # the same calls, planned (pylstm._training_step)
                out, h_n, _ = steps[k].forward(h)
            if k < top:
                if training and self.dropout > 0:
                    keep = 1.0 - self.dropout
                    mask = (rng.random_sample(out.shape) < keep).astype(self.dtype) / keep
                    out *= mask
                    masks.append(mask)
                else:
                    masks.append(None)
            h = out
        if training:
            self._cache = {"masks": masks, "shape": h.shape, "dense_steps": steps}
        if not final_states:
            return h
        if steps is not None:
            return h_n
        return np.ascontiguousarray(h_n.transpose(1, 0, 2).reshape(h_n.shape[1], -1))

    def _dense_steps(self, X, lengths):
        """The layers' :func:`dense_steps` for a training batch ``X`` (B, T, I) with
        ``lengths`` when every sequence is T steps long and ``X`` a C-contiguous array
        of the network's dtype; else None."""
        if (isinstance(X, np.ndarray) and X.ndim == 3 and X.dtype == self.dtype
                and X.flags.c_contiguous and X.shape[2] == self.layers[0].input_size
                and X.shape[0] * X.shape[1] > 0 and lengths is not None
                and len(lengths) == X.shape[0]
                and (np.asarray(lengths) == X.shape[1]).all()):
            return dense_steps(self.layers)
        return None

    def _chunk_steps(self, batch):
        """Steps per chunk of :meth:`_final_states_in_chunks` for ``batch`` rows."""
        widest = max(max(layer.input_size, layer.hidden_size) for layer in self.layers)
        return max(_MIN_CHUNK_STEPS, _FINAL_STATE_CHUNK_ELEMENTS // (batch * widest))

    def _final_states_in_chunks(self, X, lengths, steps):
        """(B, H) final states of a unidirectional stack, reading ``steps`` steps at a time.

        Each chunk runs every layer on the rows still active, from the (h, c)
        that the previous chunk left; a row's state stops at its last valid
        step as in one call. The reverse direction of a bidirectional layer
        starts from each sequence's end, so those stacks take one call.
        """
        B, T = X.shape[:2]
        lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
        states = [(np.zeros((1, B, layer.output_size), self.dtype),
                   np.zeros((1, B, layer.hidden_size), self.dtype)) for layer in self.layers]
        for start in range(0, int(lengths.max()), steps):
            rows = np.flatnonzero(lengths > start)
            chunk_lengths = np.minimum(lengths[rows] - start, steps)
            h = X[rows, start:start + int(chunk_lengths.max())]
            for layer, (h_all, c_all) in zip(self.layers, states, strict=True):
                h, (h_n, c_n) = layer.forward(h, lengths=chunk_lengths, h0=h_all[:, rows],
                                              c0=c_all[:, rows], training=False)
                h_all[:, rows] = h_n
                c_all[:, rows] = c_n
        return np.ascontiguousarray(states[-1][0][0])

    @model_call
    def forward(self, X, lengths, training=False, rng=None):
        """Network output: (B, n_outputs), or (B, T, n_outputs) per step."""
        feats = self.features(X, lengths, training=training, rng=rng)
        if training:
            self._cache["feats"] = feats
        if feats.ndim == 2:
            return dense(feats, self.coef, self.intercept)
        return dense(feats.reshape(-1, feats.shape[-1]), self.coef,
                     self.intercept).reshape(feats.shape[:-1] + self.coef.shape[1:])

    @model_call
    def forward_from(self, X, state):
        """Output at every step of X (B, T, n_outputs), read on from ``state``; the new state.

        Inference of a unidirectional stack (streaming, :mod:`pylstm._stream`):
        one kernel call per layer for all T steps (:meth:`LSTM.forward
        <pylstm.LSTM.forward>`, or :meth:`LSTM.step <pylstm.LSTM.step>` for
        one step of one sequence), started from ``state``
        (None: zeros, or a list of (h, c) pairs, one per layer, of shapes
        (1, B, output_size) and (1, B, hidden_size)), and the head on every
        step's top-layer output in one matrix product. Step ``t``'s output is
        what :meth:`forward` gives for the sequence read up to ``t``. The input
        ``state`` is not modified.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm._network import SequenceNetwork
        >>> net = SequenceNetwork(2, 3, 4, 2, False, 0.0, False, np.float64,
        ...                       np.random.RandomState(0))
        >>> X = np.random.RandomState(1).normal(size=(5, 6, 2))
        >>> head, state = net.forward_from(X[:, :4], None)
        >>> tail, state = net.forward_from(X[:, 4:], state)
        >>> bool(np.allclose(tail[:, -1], net.forward(X, np.full(5, 6))))
        True
        """
        if self.layers[0].bidirectional:
            raise ValueError("forward_from() needs a unidirectional stack")
        B, T = X.shape[:2]
        # One step of one sequence (a signal read sample by sample) takes the
        # layers' one-step path: the same kernel call, bit for bit, without
        # the sorting and work-array bookkeeping of forward, which at one step
        # cost more than the step itself. More rows would make it copy W_hh.
        one_step = B == 1 and T == 1
        h = X[:, 0] if one_step else X
        new_state = []
        for k, layer in enumerate(self.layers):
            h0, c0 = (None, None) if state is None else state[k]
            if one_step:
                h, (h_n, c_n) = layer.step(h, h0, c0)
            else:
                h, (h_n, c_n) = layer.forward(h, h0=h0, c0=c0, training=False)
            new_state.append((h_n, c_n))
        width = h.shape[-1]
        out = dense(h.reshape(B * T, width), self.coef, self.intercept)
        return out.reshape(B, T, -1), new_state

    @model_call
    def backward(self, d_output):
        """Gradients (aligned with :meth:`parameters`) for the last training forward."""
        cache, self._cache = self._cache, None
        feats = cache["feats"]
        flat_f = np.ascontiguousarray(feats.reshape(-1, feats.shape[-1]))
        flat_d = np.ascontiguousarray(d_output.reshape(-1, d_output.shape[-1]),
                                      dtype=self.dtype)
        d_coef, d_intercept = head_gradients(flat_f, flat_d)
        d_feats = np.empty_like(flat_f)
        dense_product(False, True, flat_d, self.coef, 0.0, d_feats)
        d_feats = d_feats.reshape(feats.shape)
        B, T, width = cache["shape"]
        top = self.layers[-1]
        steps = cache["dense_steps"]
        if self.return_sequences:
            d_out, d_h_n = d_feats, None
        elif steps is not None:  # zeros (None) and the final states' gradient
            d_out, d_h_n = None, d_feats
        else:
            d_out = np.zeros((B, T, width), dtype=self.dtype)
            d_h_n = d_feats.reshape(B, top.num_directions, top.output_size).transpose(1, 0, 2)
        grads_per_layer = []
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            # The first layer's input is the data: no gradient wanted. The
            # estimator checks the loss and the gradients' norm.
            if steps is None:
                d_in, grads = layer._backward(d_out, d_h_n, None, k > 0, checked=False)
                grads_per_layer.append([grads[name] for name in layer._params])
            else:
                grads, d_in = steps[k].backward(d_out, d_h_n, input_gradient=k > 0)
                grads_per_layer.append(grads)
            if k > 0:
                mask = cache["masks"][k - 1]
                d_out = d_in if mask is None else d_in * mask
                d_h_n = None
        grads = [g for layer_grads in reversed(grads_per_layer) for g in layer_grads]
        return grads + [d_coef.astype(self.dtype, copy=False),
                        d_intercept.astype(self.dtype, copy=False)]


class LanguageNetwork(_SavedParameters):
    """Embedding, unidirectional LSTM layers (dropout between) and a softmax head.

    The forward and backward pass of a next-token model on a batch of token
    windows, with the LSTM state carried in and out (stateful truncated
    BPTT). The head's products call BLAS through scipy's cython_blas, by
    halves of their rows on two threads (:func:`dense_product`); the
    embedding's gradient touches only the rows
    used by the batch.

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size, num_layers : int
        Sizes.
    dropout : float
        Dropout on the outputs of every LSTM layer but the last.
    dtype : numpy.dtype
        float32 or float64.
    rng : numpy.random.RandomState
        Source of the initial weights.
    proj_size : int, default=0
        The layers' projection (:class:`pylstm.LSTM`); 0: none.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import LanguageNetwork
    >>> net = LanguageNetwork(10, 4, 8, 1, 0.0, np.float64, np.random.RandomState(0))
    >>> logits, state = net.forward(np.zeros((2, 5), dtype=np.int64), None)
    >>> logits.shape
    (2, 5, 10)
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_layers, dropout, dtype,
                 rng, proj_size=0):
        self.dtype = np.dtype(dtype)
        self.dropout = float(dropout)
        # PyTorch's default initialisation of nn.Embedding, nn.LSTM and
        # nn.Linear (benchmarks/bench_lm.py): with Adam, whose steps have a
        # size set by the learning rate whatever the weights' scale, a smaller
        # start (an embedding from N(0, 0.1^2)) takes many epochs to catch up.
        self.embedding = rng.standard_normal((vocab_size, embedding_dim)).astype(self.dtype)
        self.layers = []
        in_size = embedding_dim
        for _ in range(num_layers):
            self.layers.append(LSTM(in_size, hidden_size, 1, False, self.dtype,
                                    random_state=rng, proj_size=proj_size))
            in_size = self.layers[-1].output_size
        bound = 1.0 / np.sqrt(in_size)
        self.coef = rng.uniform(-bound, bound, size=(in_size, vocab_size)).astype(self.dtype)
        self.intercept = rng.uniform(-bound, bound, size=vocab_size).astype(self.dtype)
        self._cache = None

    def parameters(self):
        """Live parameter arrays: embedding, each layer's, then the head."""
        params = [self.embedding]
        params += [p for layer in self.layers for p in layer.parameters()]
        return params + [self.coef, self.intercept]

    @staticmethod
    def saved_shapes(vocab_size, embedding_dim, hidden_size, num_layers, proj_size=0):
        """(name, shape) of a saved network's parameters, aligned with :meth:`parameters`:
        ``network.embedding``, ``network.layers.{k}.{LSTM parameter}``, ``network.coef``,
        ``network.intercept``."""
        return ([("network.embedding", (vocab_size, embedding_dim))]
                + _stack_shapes(embedding_dim, hidden_size, num_layers, False, proj_size)
                + [("network.coef", (proj_size or hidden_size, vocab_size)),
                   ("network.intercept", (vocab_size,))])

    def _saved_sizes(self):
        return (*self.embedding.shape, self.layers[0].hidden_size, len(self.layers),
                self.layers[0].proj_size)

    def get_state(self):
        """Copies of all parameters."""
        return [p.copy() for p in self.parameters()]

    def set_state(self, state):
        """Copy parameters in place from :meth:`get_state`'s list."""
        for p, s in zip(self.parameters(), state, strict=True):
            p[...] = s

    def _head(self, hidden):
        flat = np.ascontiguousarray(hidden.reshape(-1, hidden.shape[-1]))
        return flat, dense(flat, self.coef, self.intercept)

    @model_call
    def forward(self, tokens, state, training=False, rng=None, last_only=False):
        """Logits (B, T, V) for token windows (B, T) and the state after them.

        ``state`` is None (zeros) or a list of (h, c) pairs, one per layer,
        of shapes (1, B, output_size) and (1, B, hidden_size) (the layers'
        :attr:`~pylstm.LSTM.output_size`). With ``last_only`` (inference), the
        logits (B, V) of the last step alone: the head, whose result has a
        row per step and a column per token, then runs on one row.
        """
        h, lookup = None, None
        if (training and not self.layers[0].proj_size
                and self.embedding.shape[0] <= np.size(tokens)):
            # The first input projection of all the vocabulary, and its
            # gradient products, cost no more than those of the batch's rows:
            # the time loop looks its rows up (LSTM._forward), and the rows
            # themselves are never gathered.
            lookup = (self.embedding, tokens)
        else:
            h = self.embedding[tokens]
        # The same calls, planned (pylstm._training_step), for a looked-up batch.
        steps = dense_steps(self.layers) if lookup is not None else None
        new_state, masks = [], []
        top = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            h0, c0 = (None, None) if state is None else state[k]
            if steps is None:
                out, (h_n, c_n) = layer._forward(h, None, h0, c0, training,
                                                 training and layer.recurrent_dropout > 0,
                                                 rng, lookup if k == 0 else None)
            else:
                out, h_n, c_n = steps[k].forward(h, h0, c0, lookup if k == 0 else None)
                h_n, c_n = h_n[None].copy(), c_n[None].copy()
            new_state.append((h_n, c_n))
            if k < top and training and self.dropout > 0:
                keep = 1.0 - self.dropout
                mask = (rng.random_sample(out.shape) < keep).astype(self.dtype) / keep
                out *= mask
                masks.append(mask)
            elif k < top:
                masks.append(None)
            h = out
        if last_only and not training:
            return self._head(h[:, -1])[1], new_state
        flat, logits = self._head(h)
        if training:
            self._cache = {"tokens": tokens, "flat": flat, "masks": masks, "shape": h.shape,
                           "lookup": lookup is not None, "dense_steps": steps}
        return logits.reshape(h.shape[0], h.shape[1], -1), new_state

    @model_call
    def backward(self, d_logits):
        """Gradients aligned with :meth:`parameters` for the last training forward."""
        cache, self._cache = self._cache, None
        flat = cache["flat"]
        d_flat = np.ascontiguousarray(d_logits.reshape(flat.shape[0], -1), dtype=self.dtype)
        d_coef, d_intercept = head_gradients(flat, d_flat)
        d_hidden = np.empty_like(flat)
        dense_product(False, True, d_flat, self.coef, 0.0, d_hidden)
        d_out = d_hidden.reshape(cache["shape"])
        steps = cache["dense_steps"]
        layer_grads = []
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            # The language model checks its loss and the gradients' norm.
            if steps is None:
                d_in, grads = layer._backward(d_out, None, None, True, checked=False)
                layer_grads.append([grads[name] for name in layer._params])
            else:
                grads, d_in = steps[k].backward(d_out, input_gradient=True)
                layer_grads.append(grads)
            if k > 0:
                mask = cache["masks"][k - 1]
                d_out = d_in if mask is None else d_in * mask
        if cache.get("lookup"):  # the first layer gave the embedding's gradient
            grads = [d_in]
        else:
            # Embedding gradient: the input gradients of equal tokens summed in
            # float64, in row order, then rounded once.
            tokens = np.ascontiguousarray(cache["tokens"], dtype=np.int64).reshape(-1)
            d_rows = np.zeros(self.embedding.shape)
            scatter_add_rows(tokens, d_in.reshape(len(tokens), self.embedding.shape[1]),
                             d_rows)
            grads = [d_rows.astype(self.dtype)]
        grads += [g for gs in reversed(layer_grads) for g in gs]
        return grads + [d_coef, d_intercept.astype(self.dtype, copy=False)]

    @model_call
    def step(self, token_ids, state):
        """Logits (B, V) after one more token per row, and the new state."""
        h = self.embedding[token_ids]
        new_state = []
        for k, layer in enumerate(self.layers):
            h0, c0 = (None, None) if state is None else state[k]
            h, (h_n, c_n) = layer.step(h, h0, c0)
            new_state.append((h_n, c_n))
        _, logits = self._head(h)
        return logits, new_state
