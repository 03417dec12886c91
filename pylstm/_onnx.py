"""Export fitted estimators to ONNX with the standard ``LSTM`` operator.

The graph reads batch-first sequences, turns them time-major, runs one ONNX
``LSTM`` node per layer of ``estimator.network_.layers`` (gate blocks
reordered from pylstm's i, f, g, o to ONNX's i, o, f, c) and ends with the
estimator's dense output layer. The ``onnx`` package builds it; onnxruntime
(or any ONNX runtime) runs it.
"""

import numbers

import numpy as np

from ._validation import check_dtype

__all__ = ["export_onnx"]

#: ONNX opset of the exported graphs (LSTM-7 semantics, Softmax-13, Squeeze-13).
DEFAULT_OPSET = 17

#: Blocks of pylstm's (i, f, g, o) gates in ONNX's (i, o, f, c) order.
_ONNX_GATES = (0, 3, 1, 2)


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "pylstm.export_onnx needs the onnx package, which is not installed; install it "
            "with `pip install onnx` (or `pip install pylstm[onnx]`, which adds onnxruntime "
            "to run the exported models)"
        ) from exc
    return onnx


def _reorder(arr, H):
    """Rows of a (4H, ...) or (4H,) array from (i, f, g, o) to ONNX's (i, o, f, c)."""
    return np.concatenate([arr[g * H:(g + 1) * H] for g in _ONNX_GATES])


def _lstm_weights(layer, dtype):
    """ONNX W (D, 4H, in), R (D, 4H, H) and B (D, 8H) of a one-layer pylstm.LSTM."""
    H = layer.hidden_size
    state = layer.state_dict()
    W, R, B = [], [], []
    for d in range(layer.num_directions):
        sfx = "_l0" + ("_reverse" if d else "")
        W.append(_reorder(state["weight_ih" + sfx], H))
        R.append(_reorder(state["weight_hh" + sfx], H))
        B.append(np.concatenate([_reorder(state["bias_ih" + sfx], H),
                                 _reorder(state["bias_hh" + sfx], H)]))
    return (np.stack(W).astype(dtype), np.stack(R).astype(dtype),
            np.stack(B).astype(dtype))


def _classes_tensor(onnx, classes):
    """classes_ as an ONNX constant for Gather, and its element type.

    Raises ValueError for labels that no ONNX tensor holds exactly, rather
    than export a graph that predicts other labels than ``predict``.
    """
    from onnx import TensorProto

    classes = np.asarray(classes)
    kind = classes.dtype.kind
    if kind == "i":
        arr, elem = classes.astype(np.int64), TensorProto.INT64
    elif kind == "u":
        # Unsigned labels stay unsigned: int64 would wrap those >= 2**63 to negatives.
        arr, elem = classes.astype(np.uint64), TensorProto.UINT64
    elif kind == "b":
        arr, elem = classes, TensorProto.BOOL
    elif kind == "f":
        arr, elem = classes.astype(np.float64), TensorProto.DOUBLE
    elif kind == "U" or (kind == "O" and all(isinstance(c, str) for c in classes)):
        arr, elem = np.array([str(c) for c in classes], dtype=object), TensorProto.STRING
    else:
        # Bytes among them: an ONNX string comes back as str, not as the bytes label.
        raise ValueError(
            f"classes_ of dtype {classes.dtype} cannot be stored in an ONNX graph; use integer, "
            "float, boolean or string labels"
        )
    if kind in "iuf" and not np.array_equal(arr.astype(classes.dtype), classes):
        raise ValueError(  # long double labels that float64 rounds
            f"classes_ of dtype {classes.dtype} cannot be stored exactly in an ONNX graph "
            f"(as {arr.dtype}); use integer, float64, boolean or string labels"
        )
    return onnx.numpy_helper.from_array(arr, "classes"), elem


def export_onnx(estimator, path=None, *, dtype="float32", sequence_lens=True,
                opset=DEFAULT_OPSET):
    """Export a fitted LSTMClassifier or LSTMRegressor to an ONNX model.

    The graph uses the standard ONNX ``LSTM`` operator, one node per layer
    (``direction='bidirectional'`` for bidirectional estimators), followed by
    the output layer (``MatMul`` and ``Add``, and for classifiers ``Softmax``
    and ``ArgMax``).

    Parameters
    ----------
    estimator : LSTMClassifier or LSTMRegressor
        A fitted estimator, with ``return_sequences`` False or True.
    path : str or path-like, default=None
        File to write the model to; None only returns it.
    dtype : {'float32', 'float64'}, default='float32'
        Element type of the graph's float input, weights and outputs.
        'float32' runs in onnxruntime, whose ``LSTM`` kernel implements float
        only: a float64 estimator is then exported with its weights cast to
        float32 (results agree with ``predict_proba``/``predict`` to about
        1e-5). 'float64' writes a graph that is valid ONNX (the operator allows
        double) for runtimes that implement it.
    sequence_lens : bool, default=True
        Add the int32 input ``sequence_lens`` of shape (batch,): the valid
        steps of each padded sequence, as the ``lengths`` of
        :meth:`pylstm.LSTM.forward`. With False, every sequence is taken to
        fill all steps of ``X``.
    opset : int, default=17
        ONNX opset of the model: 13 or later, up to the newest that the
        installed ``onnx`` package knows.

    Returns
    -------
    onnx.ModelProto
        The model (checked with ``onnx.checker``), also written to ``path``.

    Raises
    ------
    ImportError
        If the ``onnx`` package is not installed.
    TypeError
        If ``estimator`` is not a pylstm estimator.
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ValueError
        For classifier labels ONNX cannot store, an unsupported dtype or
        opset, or a model with ``proj_size > 0`` (ONNX's ``LSTM`` operator
        has no projection).

    Notes
    -----
    Inputs and outputs of the graph:

    * ``X``, float, shape (batch, steps, n_features): padded, batch-first
      sequences (zeros or anything past each length). A model fitted on 2-D
      input (univariate sequences) takes ``X[:, :, None]``.
    * ``sequence_lens``, int32, shape (batch,), each in ``[1, steps]``.
    * Classifier: ``label`` (batch,), the predicted classes (``classes_``
      values), and ``probabilities`` (batch, n_classes).
    * Regressor: ``prediction``, shape (batch,) or (batch, n_outputs) as
      ``predict``.
    * With ``return_sequences=True`` every output has a ``steps`` axis after
      the batch axis; entries past a sequence's length are to be ignored.

    Examples
    --------
    >>> import numpy as np
    >>> import onnxruntime as ort  # doctest: +SKIP
    >>> from pylstm import LSTMClassifier, export_onnx
    >>> from pylstm.datasets import load_digits_sequences
    >>> X, y = load_digits_sequences(return_X_y=True)
    >>> clf = LSTMClassifier(hidden_size=16, max_iter=2, dtype='float32',
    ...                      random_state=0).fit(X[:200], y[:200])
    >>> model = export_onnx(clf, 'digits.onnx')  # doctest: +SKIP
    >>> session = ort.InferenceSession('digits.onnx')  # doctest: +SKIP
    >>> Xb = np.asarray(X[:5], dtype=np.float32)
    >>> lens = np.full(5, Xb.shape[1], dtype=np.int32)
    >>> label, proba = session.run(['label', 'probabilities'],
    ...                            {'X': Xb, 'sequence_lens': lens})  # doctest: +SKIP
    >>> bool((label == clf.predict(X[:5])).all())  # doctest: +SKIP
    True
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.utils.validation import check_is_fitted

    from ._estimators import LSTMClassifier, LSTMRegressor

    if not isinstance(estimator, (LSTMClassifier, LSTMRegressor)):
        raise TypeError(
            f"export_onnx exports an LSTMClassifier or LSTMRegressor, got "
            f"{type(estimator).__name__}"
        )
    check_is_fitted(estimator, "network_")
    proj_size = estimator.network_.layers[0].proj_size
    if proj_size:
        raise ValueError(
            f"the model has proj_size={proj_size}: ONNX's LSTM operator has no "
            "projection of the hidden state, so export_onnx cannot express it"
        )
    try:
        dtype = check_dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise ValueError(f"opset must be an integer from 13 to {newest}, got {opset!r}")
    opset = int(opset)
    if opset < 13:
        raise ValueError(f"opset must be 13 or later, got {opset}")
    if opset > newest:
        raise ValueError(f"opset must be at most {newest}, the newest that the installed onnx "
                         f"package knows, got {opset}")
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    net = estimator.network_
    classifier = isinstance(estimator, LSTMClassifier)
    seqs = bool(net.return_sequences)

    nodes, inits = [], []

    def const(name, value):
        if name not in {t.name for t in inits}:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def shape_3d():
        return const("shape_time_batch_flat", np.array([0, 0, -1], dtype=np.int64))

    nodes.append(helper.make_node("Transpose", ["X"], ["X_time_major"], perm=[1, 0, 2],
                                  name="to_time_major"))
    layer_in = "X_time_major"
    top = len(net.layers) - 1
    for k, layer in enumerate(net.layers):
        W, R, B = _lstm_weights(layer, dtype)
        inputs = [layer_in, const(f"W_{k}", W), const(f"R_{k}", R), const(f"B_{k}", B),
                  "sequence_lens" if sequence_lens else ""]
        nodes.append(helper.make_node(
            "LSTM", inputs, [f"Y_{k}", f"Y_h_{k}"], name=f"lstm_{k}",
            hidden_size=layer.hidden_size,
            direction="bidirectional" if layer.bidirectional else "forward"))
        if k < top or seqs:
            # (steps, D, batch, H) -> (steps, batch, D * H)
            nodes.append(helper.make_node("Transpose", [f"Y_{k}"], [f"Y_{k}_t"],
                                          perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Y_{k}_t", shape_3d()],
                                          [f"out_{k}"]))
            layer_in = f"out_{k}"
    if seqs:
        # (steps, batch, D * H) -> (batch, steps, D * H)
        nodes.append(helper.make_node("Transpose", [layer_in], ["features"], perm=[1, 0, 2]))
    else:
        # Y_h (D, batch, H) -> (batch, D * H): forward state, then reverse state.
        nodes.append(helper.make_node("Transpose", [f"Y_h_{top}"], ["Y_h_t"], perm=[1, 0, 2]))
        shape_2d = const("shape_batch_flat", np.array([0, -1], dtype=np.int64))
        nodes.append(helper.make_node("Reshape", ["Y_h_t", shape_2d], ["features"]))
    nodes.append(helper.make_node("MatMul", ["features", const("coef", net.coef.astype(dtype))],
                                  ["features_coef"]))
    nodes.append(helper.make_node(
        "Add", ["features_coef", const("intercept", net.intercept.astype(dtype))], ["logits"]))

    lead = ["batch", "steps"] if seqs else ["batch"]
    if classifier:
        n_classes = len(estimator.classes_)
        classes, label_elem = _classes_tensor(onnx, estimator.classes_)
        inits.append(classes)
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label_index"], axis=-1,
                                      keepdims=0))
        nodes.append(helper.make_node("Gather", ["classes", "label_index"], ["label"], axis=0))
        outputs = [helper.make_tensor_value_info("label", label_elem, lead),
                   helper.make_tensor_value_info("probabilities", elem, lead + [n_classes])]
    else:
        if estimator._y_squeeze:
            nodes.append(helper.make_node("Squeeze", ["logits", const("last_axis", np.array(
                [-1], dtype=np.int64))], ["prediction"]))
            shape = lead
        else:
            nodes.append(helper.make_node("Identity", ["logits"], ["prediction"]))
            shape = lead + [estimator.n_outputs_]
        outputs = [helper.make_tensor_value_info("prediction", elem, shape)]

    inputs = [helper.make_tensor_value_info("X", elem,
                                            ["batch", "steps", net.layers[0].input_size])]
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                    ["batch"]))
    name = type(estimator).__name__
    graph = helper.make_graph(nodes, f"pylstm_{name}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    from . import __version__

    model = helper.make_model(
        graph, opset_imports=opsets, producer_name="pylstm", producer_version=__version__,
        ir_version=helper.find_min_ir_version_for(opsets),
        doc_string=f"pylstm {name} (hidden_size={net.layers[0].hidden_size}, "
                   f"num_layers={len(net.layers)}, bidirectional={net.layers[0].bidirectional}, "
                   f"return_sequences={seqs})")
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save_model(model, path)
    return model
