"""Move LSTM weights between pylstm, PyTorch and Keras.

* :func:`from_torch` / :func:`to_torch` convert between :class:`pylstm.LSTM`
  and ``torch.nn.LSTM`` (PyTorch is optional and imported only inside them).
* :func:`from_keras_weights` / :func:`to_keras_weights` convert between
  :class:`pylstm.LSTM` and the arrays of Keras' ``LSTM`` layer (Keras itself is
  not needed: only its array layout is used).

pylstm's parameters follow PyTorch's names, shapes and gate order (i, f, g, o),
so the PyTorch conversion copies arrays. Keras stores the same gates in the
same order (i, f, c, o) but transposed, ``kernel`` (I, 4H) and
``recurrent_kernel`` (H, 4H), with one bias (4H,) where PyTorch has two.

Structure of the Keras weights
------------------------------
One layer reading in one direction is three arrays, ``kernel`` (I, 4H),
``recurrent_kernel`` (H, 4H) and ``bias`` (4H,): what ``keras.layers.LSTM``'s
``get_weights()`` returns and ``set_weights()`` takes. A stacked or
bidirectional LSTM is, for each of the three, a list with one entry per layer;
the entry is the layer's array, or a pair ``(forward, backward)`` of arrays
for a layer wrapped in ``keras.layers.Bidirectional`` (merge mode ``'concat'``,
whose ``get_weights()`` is ``[kernel_f, recurrent_kernel_f, bias_f, kernel_b,
recurrent_kernel_b, bias_b]``). Layer ``k > 0`` reads the concatenated
outputs of layer ``k - 1``, so its kernel has ``D * H`` rows.
"""

import numpy as np

from ._layer import LSTM, _param_names
from ._validation import check_dtype

__all__ = ["from_keras_weights", "from_torch", "to_keras_weights", "to_torch"]


def _import_torch(caller):
    """Import torch, or raise an ImportError that says how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"pylstm.interop.{caller} needs PyTorch, which is not installed; install it "
            "with `pip install torch` (see https://pytorch.org for CPU-only builds)"
        ) from exc
    return torch


# ---------------------------------------------------------------------- PyTorch
def from_torch(module, dtype=None):
    """Build a :class:`pylstm.LSTM` with the weights of a ``torch.nn.LSTM``.

    Parameters
    ----------
    module : torch.nn.LSTM
        The module to convert, on any device. ``batch_first`` may be True or
        False: only the weights are read, and the returned layer always takes
        batch-first input ``(B, T, input_size)``, like
        ``torch.nn.LSTM(batch_first=True)``. ``bias=False`` gives zero biases.
        The module's ``dropout`` (between layers, in training only) is not
        carried over: :class:`pylstm.LSTM` has none, and inference outputs are
        the same. ``proj_size`` is: the layer has the same projections.
    dtype : {np.float32, np.float64} or None, default=None
        dtype of the layer; None takes float64 for a float64 module and
        float32 otherwise (half-precision weights are widened to float32).

    Returns
    -------
    pylstm.LSTM
        A layer with the module's sizes and a copy of its weights.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    TypeError
        If ``module`` is not a ``torch.nn.LSTM``.

    See Also
    --------
    to_torch : The inverse conversion.
    pylstm.LSTM.load_state_dict : Load a NumPy copy of a state dict directly.

    Examples
    --------
    >>> import numpy as np
    >>> import torch  # doctest: +SKIP
    >>> from pylstm.interop import from_torch
    >>> module = torch.nn.LSTM(3, 8, num_layers=2, bidirectional=True,
    ...                        batch_first=True)  # doctest: +SKIP
    >>> layer = from_torch(module)  # doctest: +SKIP
    >>> X = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    >>> out, _ = layer.forward(X, training=False)  # doctest: +SKIP
    >>> with torch.no_grad():  # doctest: +SKIP
    ...     ref, _ = module(torch.from_numpy(X))
    >>> bool(np.allclose(out, ref.numpy(), atol=1e-6))  # doctest: +SKIP
    True
    """
    torch = _import_torch("from_torch")
    if not isinstance(module, torch.nn.LSTM):
        raise TypeError(
            f"from_torch converts a torch.nn.LSTM, got {type(module).__name__}"
        )
    params = {name: p.detach() for name, p in module.named_parameters()}
    if dtype is None:
        first = next(iter(params.values()))
        dtype = np.float64 if first.dtype == torch.float64 else np.float32
    dtype = check_dtype(dtype)
    layer = LSTM(module.input_size, module.hidden_size, num_layers=module.num_layers,
                 bidirectional=module.bidirectional, dtype=dtype,
                 proj_size=getattr(module, "proj_size", 0))
    state = {}
    for name, ref in layer.state_dict().items():
        if name in params:
            p = params[name]
            if not p.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {p.dtype}")
            if p.dtype not in (torch.float32, torch.float64):
                p = p.float()
            state[name] = p.cpu().numpy().astype(dtype)
        elif name.startswith("bias") and not module.bias:
            state[name] = np.zeros_like(ref)
        else:
            raise KeyError(f"the module has no parameter {name!r}")
    layer.load_state_dict(state)
    return layer


def to_torch(layer):
    """Build a ``torch.nn.LSTM(batch_first=True)`` with the weights of a pylstm layer.

    Parameters
    ----------
    layer : pylstm.LSTM
        The layer to convert.

    Returns
    -------
    torch.nn.LSTM
        A CPU module with ``batch_first=True``, ``bias=True``, the layer's
        sizes (``proj_size`` included) and dtype (``torch.float32`` or
        ``torch.float64``) and a copy of its weights; its outputs equal
        ``layer.forward``'s to float tolerance
        (use ``torch.nn.utils.rnn.pack_padded_sequence`` for ``lengths``).

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    TypeError
        If ``layer`` is not a :class:`pylstm.LSTM`.

    See Also
    --------
    from_torch : The inverse conversion.

    Notes
    -----
    A fitted estimator's network keeps one single-layer :class:`pylstm.LSTM`
    per stacked layer in ``estimator.network_.layers``; convert each, or
    chain them in a ``torch.nn.Sequential``-like module of your own, followed
    by ``network_.coef`` and ``network_.intercept`` as a linear layer.

    Examples
    --------
    >>> from pylstm import LSTM
    >>> from pylstm.interop import to_torch
    >>> module = to_torch(LSTM(3, 8, bidirectional=True, random_state=0))  # doctest: +SKIP
    >>> module  # doctest: +SKIP
    LSTM(3, 8, batch_first=True, bidirectional=True)
    """
    torch = _import_torch("to_torch")
    if not isinstance(layer, LSTM):
        raise TypeError(f"to_torch converts a pylstm.LSTM, got {type(layer).__name__}")
    tdtype = torch.float64 if layer.dtype == np.float64 else torch.float32
    module = torch.nn.LSTM(layer.input_size, layer.hidden_size, num_layers=layer.num_layers,
                           bias=True, batch_first=True, bidirectional=layer.bidirectional,
                           proj_size=layer.proj_size, dtype=tdtype)
    state = {name: torch.from_numpy(np.ascontiguousarray(arr))
             for name, arr in layer.state_dict().items()}
    module.load_state_dict(state)
    return module


# ---------------------------------------------------------------------- Keras
def _is_nested(value):
    return isinstance(value, (list, tuple))


def _leaf(value, name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _keras_structure(kernel, recurrent_kernel, bias):
    """Flatten the three Keras structures to [[(k, rk, b) per direction] per layer]."""
    if not _is_nested(kernel):
        if _is_nested(recurrent_kernel) or _is_nested(bias):
            raise ValueError(
                "kernel is one array (one layer, one direction), so recurrent_kernel and "
                "bias must be arrays too, not lists"
            )
        return [[(_leaf(kernel, "kernel"), _leaf(recurrent_kernel, "recurrent_kernel"),
                  None if bias is None else _leaf(bias, "bias"))]]
    n = len(kernel)
    if n == 0:
        raise ValueError("kernel is an empty list: give one entry per layer")
    if not _is_nested(recurrent_kernel) or len(recurrent_kernel) != n:
        raise ValueError(f"kernel lists {n} layers, so recurrent_kernel must be a list of "
                         f"{n} entries too")
    if bias is None:
        bias = [None] * n
    elif not _is_nested(bias) or len(bias) != n:
        raise ValueError(f"kernel lists {n} layers, so bias must be a list of {n} entries "
                         "too (or None)")
    layers = []
    for k in range(n):
        entries = (kernel[k], recurrent_kernel[k], bias[k])
        if _is_nested(entries[0]):
            if len(entries[0]) != 2:
                raise ValueError(f"kernel[{k}] must be an array or a (forward, backward) pair,"
                                 f" got a sequence of {len(entries[0])}")
            for what, e in zip(("recurrent_kernel", "bias"), entries[1:], strict=True):
                if e is not None and not (_is_nested(e) and len(e) == 2):
                    raise ValueError(f"kernel[{k}] is a (forward, backward) pair, so {what}"
                                     f"[{k}] must be a pair too")
            b = entries[2] if entries[2] is not None else (None, None)
            layers.append([
                (_leaf(entries[0][d], f"kernel[{k}][{d}]"),
                 _leaf(entries[1][d], f"recurrent_kernel[{k}][{d}]"),
                 None if b[d] is None else _leaf(b[d], f"bias[{k}][{d}]"))
                for d in range(2)
            ])
        else:
            for what, e in zip(("recurrent_kernel", "bias"), entries[1:], strict=True):
                if _is_nested(e):
                    raise ValueError(f"kernel[{k}] is one array, so {what}[{k}] must be one "
                                     "array too")
            layers.append([(_leaf(entries[0], f"kernel[{k}]"),
                            _leaf(entries[1], f"recurrent_kernel[{k}]"),
                            None if entries[2] is None else _leaf(entries[2], f"bias[{k}]"))])
    if len({len(dirs) for dirs in layers}) > 1:
        raise ValueError("every layer must have the same directions: all arrays (forward "
                         "only) or all (forward, backward) pairs")
    return layers


def from_keras_weights(kernel, recurrent_kernel, bias=None, dtype=None):
    """Build a :class:`pylstm.LSTM` from weights in Keras' ``LSTM`` layout.

    Keras computes ``z = x @ kernel + h @ recurrent_kernel + bias`` and splits
    ``z`` into the gates i, f, c, o; that is pylstm's (PyTorch's) gate order,
    so ``weight_ih = kernel.T``, ``weight_hh = recurrent_kernel.T``,
    ``bias_ih = bias`` and ``bias_hh = 0``. The Keras layers must use the
    default activations (``activation='tanh'``,
    ``recurrent_activation='sigmoid'``).

    Parameters
    ----------
    kernel : array-like of shape (I, 4H), or list
        Input weights. For a stacked or bidirectional LSTM, a list with one
        entry per layer, each an array (forward only) or a pair
        ``(forward, backward)`` (see the module docstring for the structure).
    recurrent_kernel : array-like of shape (H, 4H), or list
        Recurrent weights, in the same structure as ``kernel``.
    bias : array-like of shape (4H,), list, or None, default=None
        Biases in the same structure (``use_bias=False`` layers: None, or
        None entries), taken as zero when missing.
    dtype : {np.float32, np.float64} or None, default=None
        dtype of the layer; None takes float64 if the first kernel is
        float64, else float32.

    Returns
    -------
    pylstm.LSTM
        The equivalent layer; ``num_layers`` is the length of the lists (1
        for arrays) and ``bidirectional`` is True for pairs.

    Raises
    ------
    ValueError
        If the structures differ, a shape is inconsistent (kernel widths not
        4H, layer ``k > 0`` not reading ``D * H`` inputs), or a value is not
        finite.
    TypeError
        If an array is not numeric.

    See Also
    --------
    to_keras_weights : The inverse conversion.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm.interop import from_keras_weights
    >>> rng = np.random.default_rng(0)
    >>> I, H = 3, 4
    >>> kernel = rng.normal(size=(I, 4 * H))
    >>> recurrent_kernel = rng.normal(size=(H, 4 * H))
    >>> bias = rng.normal(size=4 * H)
    >>> layer = from_keras_weights(kernel, recurrent_kernel, bias)
    >>> layer.input_size, layer.hidden_size, layer.dtype
    (3, 4, dtype('float64'))
    >>> bool(np.array_equal(layer.state_dict()['weight_ih_l0'], kernel.T))
    True

    A two-layer bidirectional LSTM, as two ``Bidirectional(LSTM(H))`` layers:

    >>> def pair(rows):
    ...     return (rng.normal(size=(rows, 4 * H)), rng.normal(size=(rows, 4 * H)))
    >>> kernels = [pair(I), pair(2 * H)]
    >>> recurrent = [pair(H), pair(H)]
    >>> biases = [(np.zeros(4 * H), np.zeros(4 * H))] * 2
    >>> layer = from_keras_weights(kernels, recurrent, biases)
    >>> layer.num_layers, layer.bidirectional
    (2, True)
    """
    layers = _keras_structure(kernel, recurrent_kernel, bias)
    k0 = layers[0][0][0]
    if dtype is None:
        dtype = np.float64 if k0.dtype == np.float64 else np.float32
    dtype = check_dtype(dtype)
    if k0.ndim != 2 or k0.shape[1] % 4 or k0.shape[1] == 0:
        raise ValueError(f"the first kernel must have shape (input_size, 4 * hidden_size), got "
                         f"{k0.shape}")
    input_size, H = k0.shape[0], k0.shape[1] // 4
    D = len(layers[0])
    layer = LSTM(input_size, H, num_layers=len(layers), bidirectional=D == 2, dtype=dtype)
    state = {}
    for k, d, names in _param_names(len(layers), D == 2):
        kern, rec, b = layers[k][d]
        where = f"layer {k}" + (", backward direction" if d else "")
        in_size = input_size if k == 0 else D * H
        if kern.shape != (in_size, 4 * H):
            raise ValueError(f"kernel of {where} must have shape {(in_size, 4 * H)}, got "
                             f"{kern.shape}")
        if rec.shape != (H, 4 * H):
            raise ValueError(f"recurrent_kernel of {where} must have shape {(H, 4 * H)}, got "
                             f"{rec.shape}")
        if b is None:
            b = np.zeros(4 * H)
        elif b.shape != (4 * H,):
            raise ValueError(f"bias of {where} must have shape {(4 * H,)}, got {b.shape}")
        state[names[0]] = kern.T
        state[names[1]] = rec.T
        state[names[2]] = b
        state[names[3]] = np.zeros(4 * H)
    layer.load_state_dict(state)
    return layer


def to_keras_weights(layer):
    """Return a :class:`pylstm.LSTM`'s weights in Keras' ``LSTM`` layout.

    ``kernel = weight_ih.T``, ``recurrent_kernel = weight_hh.T`` and
    ``bias = bias_ih + bias_hh`` (gate order i, f, c, o), in the layer's dtype.

    Parameters
    ----------
    layer : pylstm.LSTM
        The layer to convert.

    Returns
    -------
    kernel, recurrent_kernel, bias
        For a one-layer, one-direction LSTM, three arrays of shapes (I, 4H),
        (H, 4H) and (4H,): ``keras.layers.LSTM(H).set_weights([kernel,
        recurrent_kernel, bias])`` loads them. Otherwise three lists with one
        entry per layer, each an array, or for a bidirectional layer a tuple
        ``(forward, backward)``; ``keras.layers.Bidirectional(LSTM(H))`` layer
        ``k`` loads ``[kernel[k][0], recurrent_kernel[k][0], bias[k][0],
        kernel[k][1], recurrent_kernel[k][1], bias[k][1]]``.
        ``from_keras_weights(*to_keras_weights(layer))`` rebuilds the layer.

    Raises
    ------
    TypeError
        If ``layer`` is not a :class:`pylstm.LSTM`.

    See Also
    --------
    from_keras_weights : The inverse conversion.

    Examples
    --------
    >>> from pylstm import LSTM
    >>> from pylstm.interop import to_keras_weights
    >>> kernel, recurrent_kernel, bias = to_keras_weights(LSTM(3, 4, random_state=0))
    >>> kernel.shape, recurrent_kernel.shape, bias.shape
    ((3, 16), (4, 16), (16,))
    >>> kernel, recurrent_kernel, bias = to_keras_weights(
    ...     LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0))
    >>> len(kernel), kernel[1][0].shape, kernel[1][1].shape
    (2, (8, 16), (8, 16))
    """
    if not isinstance(layer, LSTM):
        raise TypeError(f"to_keras_weights converts a pylstm.LSTM, got {type(layer).__name__}")
    state = layer.state_dict()
    per_layer = [[] for _ in range(layer.num_layers)]
    for k, _, names in _param_names(layer.num_layers, layer.bidirectional):
        per_layer[k].append((
            np.ascontiguousarray(state[names[0]].T),
            np.ascontiguousarray(state[names[1]].T),
            state[names[2]] + state[names[3]],
        ))
    if layer.num_layers == 1 and not layer.bidirectional:
        return per_layer[0][0]
    out = ([], [], [])
    for dirs in per_layer:
        for i in range(3):
            out[i].append(dirs[0][i] if len(dirs) == 1 else (dirs[0][i], dirs[1][i]))
    return out
