"""pylstm.export_onnx: exported models run in onnxruntime as the estimators predict.

Skipped where onnx / onnxruntime are not installed (CI installs both through
the ``test`` extra). onnxruntime's LSTM kernel runs float only, so float64
estimators are exported as float32 graphs (the default) and compared at float
tolerance; ``dtype='float64'`` graphs are checked with onnx's own reference
evaluator on full-length batches (it ignores ``sequence_lens``).
"""

import copy
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from pylstm import LSTMClassifier, LSTMRegressor, export_onnx

#: Largest allowed max|onnxruntime - pylstm| on probabilities and predictions.
ATOL = 1e-5


def _data(seed=0, n=40, max_len=9, n_features=3):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(t), n_features)) for t in rng.integers(1, max_len, size=n)]
    X[0] = rng.normal(size=(max_len, n_features))
    y = np.array([int(s[:, 0].sum() > 0) + int(s[-1, 1] > 0.5) for s in X])
    return X, y


def _pad(X, dtype=np.float32):
    lengths = np.array([len(s) for s in X], dtype=np.int32)
    Xp = np.zeros((len(X), lengths.max(), X[0].shape[1]), dtype=dtype)
    for i, s in enumerate(X):
        Xp[i, :len(s)] = s
    return Xp, lengths


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the short fits
        return est.fit(X, y)


def _session(model):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _run(model, X, lengths=None, outputs=None):
    feeds = {"X": X}
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, dtype=np.int32)
    return _session(model).run(outputs, feeds)


def _assert_labels_match(label, proba, expected):
    """Labels equal, except where the top two probabilities tie within float error."""
    top2 = np.sort(proba, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(np.asarray(label)[clear], np.asarray(expected)[clear])


ARCHS = [(1, False), (1, True), (2, False), (2, True)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), ARCHS)
def test_classifier_variable_length(num_layers, bidirectional, dtype):
    onnx = pytest.importorskip("onnx")
    X, y = _data()
    clf = _fit(LSTMClassifier(hidden_size=6, num_layers=num_layers, bidirectional=bidirectional,
                              max_iter=4, dtype=dtype, random_state=0), X, y)
    model = export_onnx(clf)
    lstm_nodes = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == num_layers
    for node in lstm_nodes:
        direction = onnx.helper.get_node_attr_value(node, "direction").decode()
        assert direction == ("bidirectional" if bidirectional else "forward")
    Xp, lengths = _pad(X)
    label, proba = _run(model, Xp, lengths, ["label", "probabilities"])
    assert proba.dtype == np.float32 and label.dtype == np.int64
    expected = clf.predict_proba(X)
    assert proba.shape == expected.shape
    np.testing.assert_allclose(proba, expected, rtol=0, atol=ATOL)
    _assert_labels_match(label, proba, clf.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), ARCHS)
def test_regressor_variable_length(num_layers, bidirectional, dtype):
    pytest.importorskip("onnx")
    X, _ = _data(1)
    y = np.array([s[:, 0].sum() + s[-1, 2] for s in X])
    reg = _fit(LSTMRegressor(hidden_size=6, num_layers=num_layers, bidirectional=bidirectional,
                             max_iter=4, dtype=dtype, random_state=0), X, y)
    Xp, lengths = _pad(X)
    (pred,) = _run(export_onnx(reg), Xp, lengths)
    expected = reg.predict(X)
    assert pred.shape == expected.shape == (len(X),)
    np.testing.assert_allclose(pred, expected, rtol=0, atol=ATOL * max(1, np.abs(expected).max()))


def test_regressor_multi_output_and_equal_lengths_without_sequence_lens():
    pytest.importorskip("onnx")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 7, 2))
    Y = np.stack([X[:, :, 0].sum(axis=1), X[:, -1, 1]], axis=1)
    reg = _fit(LSTMRegressor(hidden_size=5, bidirectional=True, max_iter=4, dtype="float32",
                             random_state=0), X, Y)
    model = export_onnx(reg, sequence_lens=False)
    assert [i.name for i in model.graph.input] == ["X"]
    (pred,) = _run(model, X.astype(np.float32))
    assert pred.shape == (30, 2)
    np.testing.assert_allclose(pred, reg.predict(X), rtol=0, atol=ATOL)
    # The same padded batch with sequence_lens on a model that has the input.
    (pred2,) = _run(export_onnx(reg), X.astype(np.float32), np.full(30, 7))
    np.testing.assert_allclose(pred2, pred, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_return_sequences(bidirectional):
    pytest.importorskip("onnx")
    X, _ = _data(3)
    y = [(s[:, 0] > 0).astype(int) + (s[:, 1] > 1) for s in X]
    clf = _fit(LSTMClassifier(hidden_size=6, num_layers=2, bidirectional=bidirectional,
                              return_sequences=True, max_iter=4, dtype="float32",
                              random_state=0), X, y)
    Xp, lengths = _pad(X)
    label, proba = _run(export_onnx(clf), Xp, lengths, ["label", "probabilities"])
    assert proba.shape == (len(X), lengths.max(), len(clf.classes_))
    assert label.shape == (len(X), lengths.max())
    for i, (p, lab) in enumerate(zip(clf.predict_proba(X), clf.predict(X), strict=True)):
        n = lengths[i]
        np.testing.assert_allclose(proba[i, :n], p, rtol=0, atol=ATOL)
        _assert_labels_match(label[i, :n], proba[i, :n], lab)


@pytest.mark.parametrize("squeeze", [True, False])
def test_regressor_return_sequences(squeeze):
    pytest.importorskip("onnx")
    X, _ = _data(4)
    y = [np.cumsum(s[:, 0]) for s in X]
    if not squeeze:
        y = [np.stack([t, -t], axis=1) for t in y]
    reg = _fit(LSTMRegressor(hidden_size=6, bidirectional=True, return_sequences=True,
                             max_iter=4, dtype="float64", random_state=0), X, y)
    Xp, lengths = _pad(X)
    (pred,) = _run(export_onnx(reg), Xp, lengths)
    expected = reg.predict(X)
    assert pred.shape[:2] == (len(X), lengths.max())
    for i, e in enumerate(expected):
        np.testing.assert_allclose(pred[i, :lengths[i]], e, rtol=0, atol=ATOL)


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "eel"]), np.array([-1, 5, 7]),
                                    np.array([1.0, 2.0, 3.0]), np.array(["x", "y", "z"],
                                                                        dtype=object)])
def test_classifier_labels_map_to_classes(labels):
    pytest.importorskip("onnx")
    X, y = _data(5)
    clf = _fit(LSTMClassifier(hidden_size=5, max_iter=4, dtype="float32", random_state=0),
               X, labels[y])
    Xp, lengths = _pad(X)
    label, proba = _run(export_onnx(clf), Xp, lengths, ["label", "probabilities"])
    _assert_labels_match(label, proba, clf.predict(X))
    assert set(label.tolist()) <= set(clf.classes_.tolist())


@pytest.fixture(scope="module")
def three_class_model():
    X, y = _data(5)
    clf = _fit(LSTMClassifier(hidden_size=5, max_iter=4, dtype="float32", random_state=0), X, y)
    return clf, X


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from([np.uint8, np.uint32, np.uint64, np.int64]), data=st.data())
def test_integer_labels_of_every_width_are_exported_exactly(three_class_model, dtype, data):
    pytest.importorskip("onnx")
    clf, X = three_class_model
    info = np.iinfo(dtype)
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=3,
                                max_size=3, unique=True))
    model = copy.deepcopy(clf)
    model.classes_ = np.sort(np.array(values, dtype=dtype))
    Xp, lengths = _pad(X)
    (label,) = _run(export_onnx(model), Xp, lengths, ["label"])
    # Exactly predict's labels: no wrap of unsigned labels >= 2**63 to negatives.
    np.testing.assert_array_equal(label, model.predict(X))
    assert label.dtype.kind == np.dtype(dtype).kind


def test_labels_onnx_cannot_hold_exactly_are_refused(three_class_model):
    pytest.importorskip("onnx")
    clf = copy.deepcopy(three_class_model[0])
    clf.classes_ = np.array([b"cat", b"dog", b"eel"])  # would come back as str
    with pytest.raises(ValueError, match=r"classes_ of dtype \|S3 cannot be stored"):
        export_onnx(clf)
    if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        clf.classes_ = np.array([1, 1 + np.finfo(np.longdouble).eps, 2], dtype=np.longdouble)
        with pytest.raises(ValueError, match="cannot be stored exactly"):
            export_onnx(clf)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"opset": "abc"}, "opset must be an integer from 13 to"),
    ({"opset": 17.0}, "opset must be an integer"),
    ({"opset": True}, "opset must be an integer"),
    ({"opset": 10**6}, "opset must be at most"),
    ({"dtype": "abc"}, "dtype must be 'float32' or 'float64', got 'abc'"),
])
def test_bad_export_arguments_are_named(three_class_model, kwargs, match):
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match=match):
        export_onnx(three_class_model[0], **kwargs)


def test_model_fitted_on_2d_input_takes_one_feature_per_step():
    pytest.importorskip("onnx")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 8))
    y = (X.sum(axis=1) > 0).astype(int)
    clf = _fit(LSTMClassifier(hidden_size=4, max_iter=4, dtype="float32", random_state=0), X, y)
    (proba,) = _run(export_onnx(clf), X[:, :, None].astype(np.float32), np.full(30, 8),
                    ["probabilities"])
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


def test_writes_the_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    X, y = _data(7)
    clf = _fit(LSTMClassifier(hidden_size=4, max_iter=2, random_state=0), X, y)
    path = tmp_path / "clf.onnx"
    model = export_onnx(clf, path)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == model.SerializeToString()
    assert loaded.producer_name == "pylstm"
    assert [o.name for o in loaded.graph.output] == ["label", "probabilities"]
    assert [i.name for i in loaded.graph.input] == ["X", "sequence_lens"]
    Xp, lengths = _pad(X)
    (proba,) = _session(loaded).run(["probabilities"], {"X": Xp, "sequence_lens": lengths})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=ATOL)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float64_graph_under_the_onnx_reference_evaluator(bidirectional):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(8)
    X = rng.normal(size=(20, 6, 3))
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    clf = _fit(LSTMClassifier(hidden_size=5, num_layers=2, bidirectional=bidirectional,
                              max_iter=3, dtype="float64", random_state=0), X, y)
    model = export_onnx(clf, dtype="float64")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    label, proba = ReferenceEvaluator(model).run(
        ["label", "probabilities"], {"X": X, "sequence_lens": np.full(20, 6, np.int32)})
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(label, clf.predict(X))


def test_errors():
    pytest.importorskip("onnx")
    with pytest.raises(NotFittedError):
        export_onnx(LSTMClassifier())
    with pytest.raises(TypeError, match="LSTMClassifier or LSTMRegressor, got str"):
        export_onnx("model")
    X, y = _data(9)
    clf = _fit(LSTMClassifier(hidden_size=3, max_iter=1, random_state=0), X, y)
    with pytest.raises(ValueError, match="dtype must be"):
        export_onnx(clf, dtype="float16")
    with pytest.raises(ValueError, match="opset must be 13 or later"):
        export_onnx(clf, opset=11)
    clf.classes_ = np.array([1 + 1j, 2 + 0j, 3 + 0j])  # not storable in ONNX
    with pytest.raises(ValueError, match="cannot be stored"):
        export_onnx(clf)


def test_missing_onnx_raises_a_helpful_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        export_onnx(LSTMClassifier())


def test_doctests():
    import doctest

    import pylstm._onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(pylstm._onnx, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
