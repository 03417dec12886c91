"""Safe persistence: pylstm.save / pylstm.load, and pickle, joblib and skops.io."""

import ast
import builtins
import contextlib
import doctest
import hashlib
import importlib
import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import pylstm
from pylstm import (
    LSTM,
    LSTMClassifier,
    LSTMLanguageModel,
    LSTMRegressor,
    ModelFileError,
    _container,
    _fields,
    _io,
    load,
    save,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ---------------------------------------------------------------------- data and models
def seq_data(n=40, T=6, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    lengths = rng.integers(2, T + 1, size=n)
    ragged = [X[i, :lengths[i]] for i in range(n)]
    score = X[:, :, 0].sum(axis=1)
    return X, ragged, score


def fit_classifier(dtype="float64", layers=1, bidirectional=False, input_kind="3d",
                   labels=None, seed=0, **params):
    X, ragged, score = seq_data(seed=seed)
    y = (score > 0).astype(int) if labels is None else np.asarray(labels)[(score > 0) * 1]
    Xf = {"3d": X, "list": ragged, "2d": X[:, :, 0]}[input_kind]
    params = {"hidden_size": 5, "max_iter": 2, "random_state": seed, **params}
    clf = LSTMClassifier(num_layers=layers, bidirectional=bidirectional, dtype=dtype, **params)
    return clf.fit(Xf, y), Xf, y


def fit_regressor(dtype="float64", layers=1, bidirectional=False, input_kind="3d",
                  n_outputs=None, seed=0, **params):
    X, ragged, score = seq_data(seed=seed)
    y = score if n_outputs is None else np.stack([score * (k + 1) for k in range(n_outputs)], 1)
    Xf = {"3d": X, "list": ragged, "2d": X[:, :, 0]}[input_kind]
    params = {"hidden_size": 5, "max_iter": 2, "random_state": seed, **params}
    reg = LSTMRegressor(num_layers=layers, bidirectional=bidirectional, dtype=dtype, **params)
    return reg.fit(Xf, y), Xf, y


LM_TEXTS = ["The cat sat on the mat. The dog sat on the log!",
            "A bird, a cat and a dog; 42 birds flew over 7 dogs.",
            "the end of the story is near, said the cat to the dog."] * 3


def fit_lm(level="char", dtype="float64", **params):
    params = {"embedding_dim": 4, "hidden_size": 6, "num_layers": 2, "dropout": 0.2,
              "seq_len": 8 if level == "char" else 4, "batch_size": 3, "max_iter": 2,
              "validation_fraction": 0.1, "random_state": 0, **params}
    return LSTMLanguageModel(level=level, dtype=dtype, **params).fit(LM_TEXTS)


def assert_same_lm(a, b):
    """Same type, hyperparameters, fitted attributes, arrays and optimizer state."""
    assert type(a) is type(b) is LSTMLanguageModel
    assert a.get_params() == b.get_params()
    assert set(vars(a)) == set(vars(b))
    for key, va in vars(a).items():
        vb = getattr(b, key)
        if key == "network_":
            assert type(va) is type(vb) and va.dtype == vb.dtype and va.dropout == vb.dropout
            for x, y in zip(va.parameters(), vb.parameters(), strict=True):
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
            assert [(layer.input_size, layer.hidden_size, layer.num_layers,
                     layer.bidirectional, layer.unit_forget_bias) for layer in va.layers] == [
                (layer.input_size, layer.hidden_size, layer.num_layers, layer.bidirectional,
                 layer.unit_forget_bias) for layer in vb.layers]
        elif key == "_optimizer":
            assert_same_optimizer(va, vb)
            for model, opt in ((a, va), (b, vb)):  # the optimizer updates the live arrays
                assert all(p is q for p, q in zip(opt.params, model.network_.parameters(),
                                                  strict=True))
        else:
            assert type(va) is type(vb), key
            if key in ("loss_curve_", "validation_perplexities_"):
                assert [type(x) for x in va] == [type(x) for x in vb], key
            assert va == vb, key


def assert_same_lm_outputs(a, b, text=LM_TEXTS[1]):
    for prefix in ("", "The c", "zzz unknown \u20ac", text):
        pa, pb = a.predict_proba(prefix), b.predict_proba(prefix)
        assert pa.dtype == pb.dtype and np.array_equal(pa, pb)
    assert a.predict_proba("The", as_dict=True) == b.predict_proba("The", as_dict=True)
    assert a.score(LM_TEXTS) == b.score(LM_TEXTS)
    assert a.perplexity(text) == b.perplexity(text)
    for kwargs in ({}, {"temperature": 0.7, "top_k": 3}, {"temperature": 0}):
        assert a.generate("The", 25, random_state=7, **kwargs) == b.generate(
            "The", 25, random_state=7, **kwargs)


def roundtrip(obj, folder, name="model.pylstm"):
    path = os.path.join(folder, name)
    save(obj, path)
    return load(path)


def network_arrays(est):
    return est.network_.parameters()


def assert_same_optimizer(a, b):
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], list):
            for x, y in zip(sa[key], sb[key], strict=True):
                assert x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert sa[key] == sb[key]
    for key in ("learning_rate_init", "momentum", "nesterov", "beta_1", "beta_2", "epsilon",
                "rho"):
        assert getattr(a, key, None) == getattr(b, key, None)


def assert_same_estimator(a, b):
    """Same type, hyperparameters, fitted attributes (names, types, values) and arrays."""
    assert type(a) is type(b)
    assert a.get_params() == b.get_params()
    assert set(vars(a)) == set(vars(b))
    for key, va in vars(a).items():
        vb = getattr(b, key)
        if key == "network_":
            for x, y in zip(network_arrays(a), network_arrays(b), strict=True):
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
            assert va.dropout == vb.dropout and va.return_sequences == vb.return_sequences
            assert [layer.hidden_size for layer in va.layers] == [
                layer.hidden_size for layer in vb.layers]
        elif key == "_optimizer":
            assert_same_optimizer(va, vb)
        elif isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb), key
        else:
            assert type(va) is type(vb), key
            assert va == vb, key


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (3, True),
                                                       (2, False)])
def test_layer_roundtrip_is_bit_identical(tmp_path, dtype, num_layers, bidirectional):
    layer = LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                 random_state=0, unit_forget_bias=True)
    loaded = roundtrip(layer, tmp_path)
    assert type(loaded) is LSTM
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "dtype",
                 "unit_forget_bias"):
        assert getattr(loaded, attr) == getattr(layer, attr)
    sd, sd2 = layer.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    for name in sd:
        assert sd[name].dtype == sd2[name].dtype and np.array_equal(sd[name], sd2[name])
    X = np.random.default_rng(1).normal(size=(5, 7, 3))
    lengths = [7, 3, 1, 5, 6]
    for training in (False, True):
        out, (h, c) = layer.forward(X, lengths=lengths, training=training)
        out2, (h2, c2) = loaded.forward(X, lengths=lengths, training=training)
        assert np.array_equal(out, out2) and np.array_equal(h, h2) and np.array_equal(c, c2)
    dX, grads = layer.backward(np.ones_like(out))
    dX2, grads2 = loaded.backward(np.ones_like(out2))
    assert np.array_equal(dX, dX2)
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("input_kind", ["3d", "list", "2d"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_classifier_roundtrip_predicts_bit_for_bit(tmp_path, dtype, input_kind, layers,
                                                   bidirectional):
    clf, X, y = fit_classifier(dtype, layers, bidirectional, input_kind, dropout=0.1)
    loaded = roundtrip(clf, tmp_path)
    assert_same_estimator(clf, loaded)
    for method in ("predict", "predict_proba", "predict_log_proba", "transform"):
        a, b = getattr(clf, method)(X), getattr(loaded, method)(X)
        assert a.dtype == b.dtype and np.array_equal(a, b), method
    assert clf.score(X, y) == loaded.score(X, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("input_kind", ["3d", "list"])
@pytest.mark.parametrize("n_outputs", [None, 2])
def test_regressor_roundtrip_predicts_bit_for_bit(tmp_path, dtype, input_kind, n_outputs):
    reg, X, y = fit_regressor(dtype, 2, True, input_kind, n_outputs=n_outputs)
    loaded = roundtrip(reg, tmp_path)
    assert_same_estimator(reg, loaded)
    for method in ("predict", "transform"):
        a, b = getattr(reg, method)(X), getattr(loaded, method)(X)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), method


def test_return_sequences_roundtrip(tmp_path):
    X, ragged, _ = seq_data()
    y_steps = [(seq[:, 0] > 0).astype(int) for seq in ragged]
    clf = LSTMClassifier(hidden_size=4, max_iter=2, return_sequences=True, random_state=0)
    clf.fit(ragged, y_steps)
    loaded = roundtrip(clf, tmp_path)
    assert_same_estimator(clf, loaded)
    for a, b in zip(clf.predict_proba(ragged), loaded.predict_proba(ragged), strict=True):
        assert np.array_equal(a, b)
    reg = LSTMRegressor(hidden_size=4, max_iter=2, return_sequences=True, random_state=0)
    reg.fit(ragged, [seq[:, 1] for seq in ragged])
    loaded = roundtrip(reg, tmp_path)
    for a, b in zip(reg.predict(ragged), loaded.predict(ragged), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("make", [fit_classifier, fit_regressor])
@pytest.mark.parametrize("solver", ["adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_partial_fit_after_load_continues_identically(tmp_path, make, solver, dtype):
    est, X, y = make(dtype, 2, True, dropout=0.2, solver=solver)
    loaded = roundtrip(est, tmp_path)
    est.partial_fit(X, y)
    loaded.partial_fit(X, y)
    assert_same_estimator(est, loaded)
    assert np.array_equal(est.predict(X), loaded.predict(X))


def test_warm_start_after_load_continues_identically(tmp_path):
    clf, X, y = fit_classifier(solver="sgd")
    loaded = roundtrip(clf, tmp_path)
    for est in (clf, loaded):
        est.set_params(warm_start=True, max_iter=2)
        est.fit(X, y)
    assert_same_estimator(clf, loaded)


def test_early_stopping_state_roundtrip(tmp_path):
    clf, X, y = fit_classifier(early_stopping=True, n_iter_no_change=1, max_iter=5)
    assert clf.validation_scores_
    loaded = roundtrip(clf, tmp_path)
    assert_same_estimator(clf, loaded)
    reg, X, y = fit_regressor(early_stopping=True)
    loaded = roundtrip(reg, tmp_path)
    assert_same_estimator(reg, loaded)
    reg.partial_fit(X, y)
    loaded.partial_fit(X, y)
    assert_same_estimator(reg, loaded)


def test_interrupted_state_roundtrip(tmp_path):
    """Fitted values that are not finite (best_loss_ before any epoch) survive."""
    reg, X, y = fit_regressor()
    reg.best_loss_ = np.inf
    reg.loss_curve_ = [float("nan"), 1.0]
    loaded = roundtrip(reg, tmp_path)
    assert loaded.best_loss_ == np.inf and np.isnan(loaded.loss_curve_[0])


@pytest.mark.parametrize("labels", [
    np.array([3, 7], dtype=np.int64),
    np.array([-5, 100], dtype=np.int32),
    np.array([0, 255], dtype=np.uint8),
    np.array([-1, 1], dtype=np.int8),
    np.array([-2.0, 3.0], dtype=np.float32),
    np.array([-1e15, 2.0**60], dtype=np.float64),
    np.array([False, True]),
    np.array(["cat", "dog"]),
    np.array(["ü", "日本"], dtype="<U7"),
    np.array(["no", "yes"], dtype=object),
], ids=lambda a: str(a.dtype) + ("-" + type(a[0]).__name__ if a.dtype == object else ""))
def test_class_labels_keep_their_dtype(tmp_path, labels):
    clf, X, y = fit_classifier(labels=labels)
    loaded = roundtrip(clf, tmp_path)
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert list(loaded.classes_) == list(clf.classes_)
    assert [type(v) for v in loaded.classes_] == [type(v) for v in clf.classes_] or (
        clf.classes_.dtype != object)
    pred, pred_loaded = clf.predict(X), loaded.predict(X)
    assert pred.dtype == pred_loaded.dtype and np.array_equal(pred, pred_loaded)


def test_dataframe_feature_names_roundtrip(tmp_path):
    pd = pytest.importorskip("pandas")
    X, _, score = seq_data()
    df = pd.DataFrame(X[:, :, 0], columns=[f"t{i}" for i in range(X.shape[1])])
    reg = LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(df, score)
    loaded = roundtrip(reg, tmp_path)
    assert_same_estimator(reg, loaded)
    assert loaded.feature_names_in_.dtype == object
    assert np.array_equal(reg.predict(df), loaded.predict(df))
    renamed = df.rename(columns={"t0": "other"})
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(renamed)


def test_numpy_hyperparameters_are_converted(tmp_path):
    clf, X, y = fit_classifier()
    clf.set_params(dtype=np.float64, hidden_size=np.int64(5), alpha=np.float64(1e-4),
                   random_state=np.int64(0))
    loaded = roundtrip(clf, tmp_path)
    params = loaded.get_params()
    assert params["dtype"] == "float64" and type(params["hidden_size"]) is int
    assert roundtrip(clf.set_params(dtype="f4"), tmp_path).dtype == "float32"
    assert type(params["alpha"]) is float and params["random_state"] == 0
    assert np.array_equal(clf.predict_proba(X), loaded.predict_proba(X))


@pytest.mark.parametrize("labels,class_weight", [
    (None, {0: 2.0, 1: 0.5}),
    (None, {np.int64(1): np.float64(3.0)}),  # numpy keys and values: saved as Python's
    (None, {0: 2, 1: 1}),  # integer weights stay integers
    (["no", "yes"], {"yes": 4.0}),
    ([1.0, 2.0], {1.0: 1.0, 2.0: 2.0}),  # float labels stay floats
    (None, "balanced"),
])
def test_class_weight_roundtrip(tmp_path, labels, class_weight):
    clf, X, y = fit_classifier(labels=labels, class_weight=class_weight)
    loaded = roundtrip(clf, tmp_path)
    assert_same_estimator(clf, loaded)
    assert [type(k) for k in loaded.class_weight or ()] == [
        type(np.asarray(k).item()) for k in clf.class_weight or ()]
    assert np.array_equal(clf.predict_proba(X), loaded.predict_proba(X))
    # and it keeps training with the same weights
    clf.set_params(warm_start=True, max_iter=1).fit(X, y)
    loaded.set_params(warm_start=True, max_iter=1).fit(X, y)
    assert_same_estimator(clf, loaded)


def test_class_weight_labels_a_file_cannot_hold_are_refused_at_save(tmp_path):
    clf, X, y = fit_classifier()
    for cw, error, message in (({(0, 1): 2.0}, TypeError, "class_weight label"),
                               ({float("nan"): 2.0}, TypeError, "class_weight label"),
                               ({0: float("inf")}, ValueError, "finite numbers >= 0")):
        clf.class_weight = cw
        with pytest.raises(error, match=message):
            save(clf, tmp_path / "m.pylstm")
        assert not os.listdir(tmp_path)


def test_file_without_class_weight_loads_as_none(tmp_path, saved_files):
    """Files written before class_weight existed have no such key."""
    path = tmp_path / "old.pylstm"
    path.write_bytes(saved_files["classifier"].read_bytes())
    rewrite(path, model=set_in(["params", "class_weight"], KeyError))
    old = load(path)
    assert old.class_weight is None
    assert_same_estimator(old, load(saved_files["classifier"]))


def test_random_state_instance_is_saved_as_none_with_a_warning(tmp_path):
    clf, X, y = fit_classifier()
    clf.set_params(random_state=np.random.RandomState(0))
    with pytest.warns(UserWarning, match="RandomState instance"):
        save(clf, tmp_path / "m.pylstm")
    loaded = load(tmp_path / "m.pylstm")
    assert loaded.random_state is None
    assert np.array_equal(clf.predict_proba(X), loaded.predict_proba(X))


def test_hyperparameters_changed_after_fit_are_saved_as_they_are(tmp_path):
    """The network keeps its fitted architecture; the parameters keep their new values."""
    clf, X, y = fit_classifier(solver="sgd")
    clf.set_params(hidden_size=9, dropout=0.5, momentum=0.1, solver="adam")
    loaded = roundtrip(clf, tmp_path)
    assert_same_estimator(clf, loaded)
    assert loaded.network_.layers[0].hidden_size == 5
    with pytest.raises(ValueError, match="refit from scratch"):
        loaded.partial_fit(X, y)


# ---------------------------------------------------------------------- language models
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("level", ["char", "word"])
def test_language_model_roundtrip_is_bit_identical(tmp_path, level, dtype):
    lm = fit_lm(level, dtype)
    assert lm.validation_perplexities_ and lm.n_iter_ == 2
    loaded = roundtrip(lm, tmp_path)
    assert_same_lm(lm, loaded)
    assert loaded.vocabulary_[:2] == ["<unk>", "<bos>"]
    assert loaded._index == {tok: i for i, tok in enumerate(lm.vocabulary_)}
    assert loaded.network_.embedding.dtype == np.dtype(dtype)
    assert_same_lm_outputs(lm, loaded)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("solver", ["adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("level", ["char", "word"])
def test_language_model_partial_fit_after_load_continues_identically(tmp_path, level, solver,
                                                                      dtype):
    lm = fit_lm(level, dtype, solver=solver)
    loaded = roundtrip(lm, tmp_path)
    more = ["The cat and the bird sat on the dog, near the log.", "Unseen words: qux!"] * 3
    for model in (lm, loaded):
        model.partial_fit(more)
        model.partial_fit(LM_TEXTS)
    assert_same_lm(lm, loaded)
    assert lm.n_iter_ == 4
    assert_same_lm_outputs(lm, loaded)
    # A second round trip after training continues identically too.
    again = roundtrip(loaded, tmp_path, "again.pylstm")
    for model in (lm, again):
        model.partial_fit(LM_TEXTS)
    assert_same_lm(lm, again)


def test_language_model_refit_after_load_matches(tmp_path):
    """fit on a loaded model starts over exactly as on the saved one (same random_state)."""
    lm = fit_lm(early_stopping=True, n_iter_no_change=1, max_iter=4)
    loaded = roundtrip(lm, tmp_path)
    assert_same_lm(lm, loaded)
    for model in (lm, loaded):
        model.set_params(max_iter=1, early_stopping=False).fit(LM_TEXTS[:2])
    assert_same_lm(lm, loaded)


def test_language_model_interrupted_state_roundtrip(tmp_path):
    lm = fit_lm(validation_fraction=0.0, max_iter=1)
    assert lm.validation_perplexities_ == []
    lm.loss_curve_ = [float("nan")]
    loaded = roundtrip(lm, tmp_path)
    assert np.isnan(loaded.loss_curve_[0]) and loaded.validation_perplexities_ == []


def test_language_model_hyperparameters_changed_after_fit(tmp_path):
    """The network keeps its fitted sizes; the hyperparameters keep their new values."""
    lm = fit_lm()
    lm.set_params(hidden_size=9, embedding_dim=3, num_layers=1, dropout=0.5, dtype="float32",
                  solver="sgd", level="word", lowercase=True)
    loaded = roundtrip(lm, tmp_path)
    assert_same_lm(lm, loaded)
    assert loaded.network_.layers[0].hidden_size == 6 and len(loaded.network_.layers) == 2
    assert loaded.network_.embedding.shape[1] == 4 and loaded.network_.dropout == 0.2
    assert loaded.network_.embedding.dtype == np.float64 and loaded.dtype == "float32"
    assert_same_lm_outputs(lm, loaded)


def test_language_model_unicode_vocabulary(tmp_path):
    text = "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001f600 \"quote\" \\ tab\t\x00 " * 6
    lm = LSTMLanguageModel(hidden_size=4, embedding_dim=3, seq_len=8, max_iter=1,
                           random_state=0).fit(text)
    assert "\U0001f600" in lm.vocabulary_ and "\x00" in lm.vocabulary_
    loaded = roundtrip(lm, tmp_path)
    assert_same_lm(lm, loaded)
    assert_same_lm_outputs(lm, loaded, text)


def test_language_model_file_layout(tmp_path):
    lm = fit_lm("word", "float32", solver="sgd")
    save(lm, tmp_path / "m.pylstm")
    n, header, data = read_parts(tmp_path / "m.pylstm")
    meta = header.pop("__metadata__")
    assert meta["type"] == "LSTMLanguageModel"
    model = json.loads(meta["model"])
    assert set(model) == {"params", "fitted", "network", "optimizer"}
    # Hyperparameters added later are written only when set (see test_added_features_*).
    assert model["params"] == _without_unset_added(lm.get_params())
    assert model["fitted"]["vocabulary_"] == lm.vocabulary_
    assert "_index" not in model["fitted"]
    assert model["network"] == {"dropout": 0.2, "embedding_dim": 4, "hidden_size": 6,
                                "num_layers": 2}
    assert model["optimizer"]["name"] == "sgd"
    V = len(lm.vocabulary_)
    names = (["network.embedding"]
             + [f"network.layers.{k}.{p}" for k in range(2) for p in LSTM(1, 1).state_dict()]
             + ["network.coef", "network.intercept"])
    assert set(header) == set(names) | {f"optimizer.velocities.{n}" for n in names}
    assert header["network.embedding"]["shape"] == [V, 4]
    assert header["network.coef"]["shape"] == [6, V]
    assert header["network.intercept"]["shape"] == [V]
    assert header["network.layers.1.weight_ih_l0"]["shape"] == [24, 6]
    assert all(info["dtype"] == "F32" for info in header.values())
    b, e = header["network.embedding"]["data_offsets"]
    assert np.array_equal(np.frombuffer(data[b:e], "<f4").reshape(V, 4), lm.network_.embedding)
    # Deterministic: saving the loaded model writes the same bytes.
    save(load(tmp_path / "m.pylstm"), tmp_path / "b.pylstm")
    assert (tmp_path / "m.pylstm").read_bytes() == (tmp_path / "b.pylstm").read_bytes()


def test_language_model_save_refuses_what_it_cannot_save(tmp_path):
    path = tmp_path / "m.pylstm"
    with pytest.raises(NotFittedError):
        save(LSTMLanguageModel(), path)
    lm = fit_lm()
    bad = roundtrip(lm, tmp_path, "ok.pylstm")
    bad.network_.embedding[2, 0] = np.nan
    with pytest.raises(ValueError, match="network.embedding holds NaN"):
        save(bad, path)
    bad = roundtrip(lm, tmp_path, "ok.pylstm")
    bad.vocabulary_[3] = bad.vocabulary_[2]
    bad._index = {tok: i for i, tok in enumerate(bad.vocabulary_)}
    with pytest.raises(ValueError, match="twice"):
        save(bad, path)
    bad = roundtrip(lm, tmp_path, "ok.pylstm")
    bad._index["zzz"] = 0
    with pytest.raises(ValueError, match="token index"):
        save(bad, path)
    bad = roundtrip(lm, tmp_path, "ok.pylstm")
    bad.vocabulary_.append("extra")
    bad._index["extra"] = len(bad.vocabulary_) - 1
    with pytest.raises(ValueError, match="network.embedding has shape"):
        save(bad, path)
    bad = roundtrip(lm, tmp_path, "ok.pylstm").set_params(seq_len=0)
    with pytest.raises(ValueError, match="seq_len"):
        save(bad, path)
    bad = roundtrip(lm, tmp_path, "ok.pylstm")
    bad._dtype = np.dtype("float32")
    with pytest.raises(ValueError, match="_dtype"):
        save(bad, path)
    assert not path.exists()


# ---------------------------------------------------------------------- save behaviour
def test_save_accepts_path_objects_and_replaces_files(tmp_path):
    clf, X, y = fit_classifier()
    reg, _, _ = fit_regressor()
    path = tmp_path / "m.pylstm"
    save(reg, path)
    save(clf, str(path))  # replaces
    assert type(load(path)) is LSTMClassifier
    assert sorted(os.listdir(tmp_path)) == ["m.pylstm"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save(LSTM(2, 3), tmp_path / "m.pylstm")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.pylstm").st_mode & 0o777 == 0o644


def assert_same_layer(a, b):
    assert sorted(a.state_dict()) == sorted(b.state_dict())
    for name, arr in a.state_dict().items():
        np.testing.assert_array_equal(arr, b.state_dict()[name])


def test_save_accepts_bytes_paths(tmp_path):
    layer = LSTM(2, 3, random_state=0)
    save(layer, os.fsencode(tmp_path / "m.pylstm"))
    assert sorted(os.listdir(tmp_path)) == ["m.pylstm"]
    assert_same_layer(load(os.fsencode(tmp_path / "m.pylstm")), layer)


def test_save_errors_name_the_requested_path(tmp_path):
    path = tmp_path / "missing" / "m.pylstm"
    with pytest.raises(FileNotFoundError) as info:
        save(LSTM(2, 3), path)
    assert info.value.filename == str(path)
    assert ".tmp" not in str(info.value) and str(path) in str(info.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError if os.name == "posix" else OSError) as info:
        save(LSTM(2, 3), tmp_path / "folder")
    assert info.value.filename == str(tmp_path / "folder")
    assert sorted(os.listdir(tmp_path)) == ["folder"]  # no temporary file left


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix",
                    reason="POSIX symbolic links")
@pytest.mark.parametrize("dangling", [False, True])
def test_save_through_a_symlink_replaces_its_target(tmp_path, dangling):
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.pylstm"
    if not dangling:
        save(LSTM(2, 3, random_state=0), target)
    link = tmp_path / "link.pylstm"
    link.symlink_to(os.path.relpath(target, tmp_path))
    new = LSTM(2, 3, random_state=1)
    save(new, link)
    # The link stays a link, and the file it points to holds the new model.
    assert link.is_symlink() and os.path.samefile(link, target)
    assert_same_layer(load(target), new)
    assert sorted(os.listdir(tmp_path / "store")) == ["real.pylstm"]
    assert sorted(os.listdir(tmp_path)) == ["link.pylstm", "store"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path, mode):
    path = tmp_path / "m.pylstm"
    save(LSTM(2, 3), path)
    os.chmod(path, mode)
    old = os.umask(0o022)
    try:
        save(LSTM(2, 3, random_state=1), path)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


def test_save_removes_its_own_stale_temporary_files(tmp_path):
    path = tmp_path / "m.pylstm"
    old = time.time() - _container.STALE_TEMPORARY_SECONDS - 60
    names = {"stale": ".m.pylstm.0123456789ab.tmp", "fresh": ".m.pylstm.ba9876543210.tmp",
             "other model": ".n.pylstm.0123456789ab.tmp", "not ours": ".m.pylstm.tmp",
             "not hex": ".m.pylstm.0123456789xy.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
        if name != names["fresh"]:
            os.utime(tmp_path / name, (old, old))
    save(LSTM(2, 3), path)
    left = set(os.listdir(tmp_path))
    assert left == {"m.pylstm"} | (set(names.values()) - {names["stale"]})


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_orphan_of_a_killed_save_is_removed_by_a_later_save(tmp_path):
    path = tmp_path / "m.pylstm"
    code = textwrap.dedent(f"""
        import os, time
        import pylstm

        def stall(fd):
            print("writing", flush=True)
            time.sleep(120)

        os.fsync = stall
        pylstm.save(pylstm.LSTM(2, 3), {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    (orphan,) = os.listdir(tmp_path)
    assert orphan.startswith(".m.pylstm.") and orphan.endswith(".tmp")
    save(LSTM(2, 3), path)  # a save in progress, for all it knows: left alone
    assert sorted(os.listdir(tmp_path)) == sorted([orphan, "m.pylstm"])
    old = time.time() - _container.STALE_TEMPORARY_SECONDS - 1
    os.utime(tmp_path / orphan, (old, old))
    save(LSTM(2, 3), path)
    assert os.listdir(tmp_path) == ["m.pylstm"]


def test_a_second_interrupt_during_the_removal_still_removes_the_temporary(tmp_path,
                                                                           monkeypatch):
    """An interrupt (Ctrl-C twice) that comes while the interrupted save removes its
    temporary file: the removal is made again, and the second interrupt propagates."""
    path = tmp_path / "m.pylstm"
    save(LSTM(2, 3, random_state=0), path)
    before = path.read_bytes()
    real_unlink, calls = os.unlink, []

    def replace_interrupted(*args, **kwargs):
        raise KeyboardInterrupt("first")

    def unlink_interrupted_once(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 1:  # the interrupt comes before the file is removed
            raise KeyboardInterrupt("second")
        return real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_interrupted)
    monkeypatch.setattr(os, "unlink", unlink_interrupted_once)
    with pytest.raises(KeyboardInterrupt, match="second"):
        save(LSTM(2, 3, random_state=1), path)
    monkeypatch.undo()
    assert len(calls) == 2 and calls[0] == calls[1]  # made again
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pylstm"]  # no temporary file left


@pytest.mark.parametrize("failure", ["replace", "fsync", "write"])
def test_interrupted_save_leaves_the_old_file_intact(tmp_path, monkeypatch, failure):
    path = tmp_path / "m.pylstm"
    save(LSTM(2, 3, random_state=0), path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    if failure == "write":
        real_encode = _container.encode

        def encode_then_fail_midway(*args):
            header, table, chunks = real_encode(*args)

            def first_chunk_then_interrupt():
                yield chunks[0]
                raise KeyboardInterrupt

            return header, table, first_chunk_then_interrupt()

        monkeypatch.setattr(_container, "encode", encode_then_fail_midway)
    else:
        monkeypatch.setattr(os, failure, boom)
    with pytest.raises(KeyboardInterrupt):
        save(LSTM(2, 3, random_state=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pylstm"]  # no temporary file left
    assert type(load(path)) is LSTM


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        save(LSTM(2, 3), tmp_path / "m.pylstm")
    assert os.listdir(tmp_path) == []


def test_save_refuses_what_it_cannot_save(tmp_path):
    path = tmp_path / "m.pylstm"
    with pytest.raises(TypeError, match="cannot save an object of type dict"):
        save({"a": 1}, path)

    class MyClassifier(LSTMClassifier):
        pass

    with pytest.raises(TypeError, match="MyClassifier"):
        save(MyClassifier(), path)
    with pytest.raises(NotFittedError):
        save(LSTMClassifier(), path)
    clf, X, y = fit_classifier()
    with pytest.raises(TypeError, match="hyperparameter verbose"):
        save(roundtrip(clf, tmp_path, "ok.pylstm").set_params(verbose=[1]), path)
    bad = roundtrip(clf, tmp_path, "ok.pylstm").set_params(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        save(bad, path)
    nan = roundtrip(clf, tmp_path, "ok.pylstm")
    nan.network_.coef[0, 0] = np.nan
    with pytest.raises(ValueError, match="network.coef holds NaN"):
        save(nan, path)
    layer = LSTM(2, 3)
    layer._params["bias_hh_l0"][0] = np.inf
    with pytest.raises(ValueError, match="bias_hh_l0 holds NaN or infinity"):
        save(layer, path)
    assert not path.exists()


# ---------------------------------------------------------------------- the file format
def read_parts(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return n, header, data[8 + n:]


def _without_unset_added(params):
    """``params`` without the later hyperparameters a file omits at their defaults."""
    return {k: v for k, v in params.items()
            if not (k in ("proj_size", "recurrent_dropout", "unit_forget_bias") and v == 0)}


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_added_features_are_saved_when_set(tmp_path, Est):
    X, y = np.random.default_rng(0).normal(size=(30, 6, 2)), np.arange(30) % 2
    est = Est(hidden_size=6, proj_size=2, recurrent_dropout=0.25, num_layers=2, max_iter=2,
              random_state=0).fit(X, y)
    save(est, tmp_path / "m.pylstm")
    _, header, _ = read_parts(tmp_path / "m.pylstm")
    model = json.loads(header["__metadata__"]["model"])
    assert model["params"]["proj_size"] == 2 and model["params"]["recurrent_dropout"] == 0.25
    assert model["network"]["proj_size"] == 2
    assert header["network.layers.1.weight_hr_l0"]["shape"] == [2, 6]
    loaded = load(tmp_path / "m.pylstm")
    assert loaded.proj_size == 2 and loaded.recurrent_dropout == 0.25
    assert [layer.proj_size for layer in loaded.network_.layers] == [2, 2]
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    loaded.partial_fit(X, y)  # the optimizer's state has the projections' buffers too
    assert loaded.network_.layers[0].recurrent_dropout == 0.25


def test_added_features_of_the_layer_and_language_model(tmp_path):
    layer = LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, recurrent_dropout=0.5,
                 random_state=0)
    save(layer, tmp_path / "l.pylstm")
    loaded = load(tmp_path / "l.pylstm")
    assert loaded.proj_size == 2 and loaded.recurrent_dropout == 0.5
    X = np.ones((2, 4, 3))
    np.testing.assert_array_equal(loaded.forward(X, training=False)[0],
                                  layer.forward(X, training=False)[0])
    plain = LSTM(3, 5, random_state=0)
    save(plain, tmp_path / "p.pylstm")
    _, header, _ = read_parts(tmp_path / "p.pylstm")
    params = json.loads(header["__metadata__"]["model"])["params"]
    assert "proj_size" not in params and "recurrent_dropout" not in params
    lm = LSTMLanguageModel(hidden_size=8, proj_size=3, seq_len=8, max_iter=1,
                           random_state=0).fit("abcabcabd" * 12)
    save(lm, tmp_path / "lm.pylstm")
    back = load(tmp_path / "lm.pylstm")
    assert back.network_.coef.shape[0] == 3
    assert back.perplexity("abcabc") == lm.perplexity("abcabc")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda p: p.update(proj_size=5), r"model.params.proj_size must be"),
    (lambda p: p.update(recurrent_dropout=1.0), r"model.params.recurrent_dropout must be"),
    (lambda p: p.update(proj_size=True), r"model.params.proj_size"),
])
def test_added_layer_fields_are_checked(tmp_path, edit, match):
    save(LSTM(3, 5, proj_size=2, recurrent_dropout=0.5, random_state=0), tmp_path / "l.pylstm")
    rewrite(tmp_path / "l.pylstm", model=lambda model: edit(model["params"]))
    with pytest.raises(ModelFileError, match=match):
        load(tmp_path / "l.pylstm")


@pytest.mark.parametrize("value", [1, 0, 1.0, "yes", None])
def test_an_estimator_file_with_a_non_boolean_unit_forget_bias_is_refused(tmp_path, value):
    X, y = np.random.default_rng(0).normal(size=(20, 4, 2)), np.arange(20) % 2
    save(LSTMClassifier(hidden_size=3, max_iter=1, random_state=0, unit_forget_bias=True)
         .fit(X, y), tmp_path / "m.pylstm")
    rewrite(tmp_path / "m.pylstm", model=lambda m: m["params"].update(unit_forget_bias=value))
    with pytest.raises(ModelFileError, match="unit_forget_bias must be True or False"):
        load(tmp_path / "m.pylstm")


def test_file_layout(tmp_path):
    clf, X, y = fit_classifier(layers=2, bidirectional=True, dtype="float32",
                               labels=np.array(["a", "b"]))
    save(clf, tmp_path / "m.pylstm")
    n, header, data = read_parts(tmp_path / "m.pylstm")
    assert (8 + n) % 8 == 0
    meta = header.pop("__metadata__")
    assert set(meta) == {"format", "format_version", "type", "model", "sha256"}
    assert all(isinstance(v, str) for v in meta.values())  # safetensors: str -> str
    assert meta["format"] == "pylstm" and meta["format_version"] == "1"
    assert meta["type"] == "LSTMClassifier"
    model = json.loads(meta["model"])
    assert model["params"] == _without_unset_added(clf.get_params())
    assert model["fitted"]["classes_"] == {"dtype": "<U1", "values": ["a", "b"]}
    assert model["fitted"]["loss_curve_"] == clf.loss_curve_
    assert model["optimizer"]["name"] == "adam" and model["optimizer"]["t"] == clf._optimizer.t
    names = [f"network.layers.{k}.{p}" for k in range(2) for p in LSTM(
        1, 1, bidirectional=True).state_dict()] + ["network.coef", "network.intercept"]
    assert set(header) == set(names) | {f"optimizer.{b}.{n}" for b in ("ms", "vs")
                                        for n in names}
    end = 0
    for _name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        assert info["dtype"] == "F32" and info["data_offsets"][0] == end
        end = info["data_offsets"][1]
    assert end == len(data)
    params = dict(zip(names, clf.network_.parameters(), strict=True))
    for name, p in params.items():
        b, e = header[name]["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(header[name]["shape"])
        assert np.array_equal(arr, p)
    canonical = json.dumps({"metadata": {k: v for k, v in meta.items() if k != "sha256"},
                            "tensors": header}, sort_keys=True, separators=(",", ":"))
    assert meta["sha256"] == hashlib.sha256(canonical.encode() + b"\0" + data).hexdigest()


def test_file_is_deterministic(tmp_path):
    clf, X, y = fit_classifier()
    save(clf, tmp_path / "a.pylstm")
    save(load(tmp_path / "a.pylstm"), tmp_path / "b.pylstm")
    assert (tmp_path / "a.pylstm").read_bytes() == (tmp_path / "b.pylstm").read_bytes()


def test_safetensors_can_read_the_arrays(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0)
    save(layer, tmp_path / "m.safetensors")
    arrays = st.load_file(str(tmp_path / "m.safetensors"))
    sd = layer.state_dict()
    assert arrays.keys() == sd.keys()
    assert all(np.array_equal(arrays[k], sd[k]) for k in sd)


def test_registry_is_a_fixed_table_of_pylstm_types():
    assert set(_io._SAVABLE) == {"LSTM", "LSTMClassifier", "LSTMRegressor",
                                 "LSTMLanguageModel"}
    for name, cls in _io._SAVABLE.items():
        assert cls.__name__ == name and cls.__module__.startswith("pylstm.")
        for method in ("_saved_state", "_saved_layout", "_from_saved_state"):
            assert callable(getattr(cls, method)), (name, method)


#: The modules that read a model file's content: the container, the field codecs,
#: the dispatch, and the classes whose _saved_layout / _from_saved_state read it.
READING_MODULES = ["_container", "_fields", "_io", "_layer", "_network", "_optim",
                   "_estimators", "_language_model"]


@pytest.mark.parametrize("name", READING_MODULES)
def test_persistence_imports_nothing_that_runs_code_from_data(name):
    source = open(importlib.import_module(f"pylstm.{name}").__file__).read()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert not imported & {"pickle", "joblib", "importlib", "marshal", "shelve", "dill",
                           "cloudpickle", "zipfile"}
    for word in ("np.load(", "getattr(sys.modules", "eval(", "exec(", "__import__",
                 "allow_pickle=True"):
        assert word not in source


def test_schema_covers_every_fitted_attribute():
    """Every attribute fit sets is saved; a new one goes into the class's _saved_fitted."""
    pd = pytest.importorskip("pandas")
    X, ragged, score = seq_data()
    df = pd.DataFrame(X[:, :, 0])
    df.columns = [f"c{i}" for i in range(df.shape[1])]
    unsaved = {"network_", "_optimizer", "_best_state"}
    fitted = [fit_classifier(early_stopping=True)[0], fit_classifier(input_kind="list")[0],
              fit_regressor()[0], fit_regressor(early_stopping=True)[0],
              LSTMRegressor(hidden_size=3, max_iter=1).fit(df, score)]
    for est in fitted:
        known = set(est.get_params()) | set(type(est)._saved_fitted) | unsaved
        assert set(vars(est)) <= known, set(vars(est)) - known


def test_language_model_schema_covers_every_fitted_attribute():
    """Every attribute fit sets is saved or rebuilt; a new one goes into _saved_fitted."""
    saved = set(LSTMLanguageModel._saved_fitted)
    rebuilt = {"network_", "_optimizer", "_index"}
    assert not saved & rebuilt
    fitted = [fit_lm(), fit_lm("word", early_stopping=True, n_iter_no_change=1),
              fit_lm(validation_fraction=0.0),
              LSTMLanguageModel(hidden_size=3, seq_len=4, random_state=0).partial_fit(
                  LM_TEXTS)]
    for lm in fitted:
        attrs = set(vars(lm)) - set(lm.get_params())
        assert attrs == saved | rebuilt, attrs ^ (saved | rebuilt)


# ---------------------------------------------------------------------- refusing bad files
def rewrite(path, *, model=None, meta=None, table=None, data=None, checksum=True):
    """Edit a saved file's parts and write it back (with a recomputed checksum)."""
    metadata, tbl, buf = _container._split(open(path, "rb").read())
    if model is not None:
        m = json.loads(metadata["model"])
        model(m)
        metadata["model"] = json.dumps(m)
    if meta is not None:
        meta(metadata)
    if table is not None:
        table(tbl)
    if data is not None:
        buf = data(buf, tbl)
    if checksum and "sha256" in metadata:
        metadata["sha256"] = _container._digest(metadata, tbl, [buf])
    with open(path, "wb") as f:
        f.write(_container._pack_header(metadata, tbl) + buf)


def set_nan(name, index=0, value=np.nan):
    def edit(buf, tbl):
        b, e = tbl[name]["data_offsets"]
        dtype = _container.DTYPES[tbl[name]["dtype"]]
        arr = np.frombuffer(buf, dtype=dtype, count=(e - b) // dtype.itemsize, offset=b).copy()
        arr[index] = value
        return buf[:b] + arr.tobytes() + buf[e:]
    return edit


def add_array(tbl_name="evil", dtype="F32", payload=b"\0\0\0\0", shape=(1,)):
    state = {}

    def table(tbl):
        end = max(info["data_offsets"][1] for info in tbl.values())
        tbl[tbl_name] = {"dtype": dtype, "shape": list(shape),
                         "data_offsets": [end, end + len(payload)]}

    def data(buf, tbl):
        return buf + payload

    state["table"], state["data"] = table, data
    return state


def drop_array(name):
    def table(tbl):
        b, e = tbl.pop(name)["data_offsets"]
        for info in tbl.values():
            if info["data_offsets"][0] >= e:
                info["data_offsets"] = [o - (e - b) for o in info["data_offsets"]]
        table.cut = (b, e)

    def data(buf, tbl):
        b, e = table.cut
        return buf[:b] + buf[e:]

    return {"table": table, "data": data}


def set_in(keys, value):
    def edit(m):
        target = m
        for k in keys[:-1]:
            target = target[k]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return edit


def set_meta(key, value):
    def edit(meta):
        if value is KeyError:
            del meta[key]
        else:
            meta[key] = value
    return edit


def set_table(name, key, value):
    def edit(tbl):
        tbl[name][key] = value
    return edit


W = "network.layers.0.weight_ih_l0"
EDITS = {
    # metadata
    "format": (dict(meta=set_meta("format", "pickle")), "not a pylstm model file"),
    "no-metadata": (dict(meta=lambda m: m.clear()), "not a pylstm model file"),
    "newer-version": (dict(meta=set_meta("format_version", "7")),
                      r"format version 7.*format version 1\)"),
    "version-zero": (dict(meta=set_meta("format_version", "0")), ">= 1"),
    "version-text": (dict(meta=set_meta("format_version", "one")), "format_version"),
    "version-number": (dict(meta=set_meta("format_version", 1)), "must be a string"),
    "extra-metadata": (dict(meta=set_meta("code", "import os")), "unexpected keys"),
    "no-checksum": (dict(meta=set_meta("sha256", KeyError)), "missing keys"),
    "bad-checksum-syntax": (dict(meta=set_meta("sha256", "xyz"), checksum=False), "sha256"),
    "unknown-type": (dict(meta=set_meta("type", "os.system")), "unknown model type"),
    # The classifier's params have class_weight, which the regressor's have not.
    "other-type": (dict(meta=set_meta("type", "LSTMRegressor")),
                   r"params has unexpected keys \['class_weight'\]"),
    "layer-type": (dict(meta=set_meta("type", "LSTM")), "model has unexpected keys"),
    "model-not-json": (dict(meta=set_meta("model", "{'a': 1}")), "model description is not"),
    "model-nan": (dict(meta=set_meta("model", '{"a": NaN}')), "non-standard JSON constant"),
    "model-list": (dict(meta=set_meta("model", "[]")), "must be a JSON object"),
    # arrays
    "missing-array": (drop_array("network.intercept"), "misses the arrays"),
    "missing-buffer": (drop_array("optimizer.ms.network.coef"), "misses the arrays"),
    "extra-array": (add_array(), "unexpected arrays"),
    "object-array": (add_array(dtype="O", payload=pickle.dumps(print)),
                     "unsupported dtype 'O'"),
    "numpy-dtype": (dict(table=set_table(W, "dtype", "<f8")), "unsupported dtype"),
    "wrong-dtype": (dict(table=set_table(W, "dtype", "F32")), "dtype F32, expected F64"),
    "int-dtype": (dict(table=set_table(W, "dtype", "I64")), "dtype I64, expected F64"),
    "wrong-shape": (dict(table=set_table(W, "shape", [3, 20])), r"shape \(3, 20\), expected"),
    "huge-shape": (dict(table=set_table(W, "shape", [2**62, 2**62])), "shape"),
    "shape-float": (dict(table=set_table(W, "shape", [20.0, 3])), "must be an integer"),
    "negative-offset": (dict(table=set_table(W, "data_offsets", [-1, 479])), "data_offsets"),
    "reversed-offsets": (dict(table=set_table(W, "data_offsets", [480, 0])), "data_offsets"),
    "gap": (dict(table=set_table(W, "data_offsets", [8, 488])), "back to back|data_offsets"),
    "tensor-keys": (dict(table=set_table(W, "code", "x")), "unexpected keys"),
    "nan-weight": (dict(data=set_nan(W)), f"{W} contains NaN"),
    "inf-bias": (dict(data=set_nan("network.intercept", 1, np.inf)), "contains infinity"),
    "nan-buffer": (dict(data=set_nan("optimizer.ms.network.coef")), "contains NaN"),
    "negative-second-moment": (dict(data=set_nan("optimizer.vs.network.coef", 0, -1.0)),
                               "negative entries"),
    "data-bit-flip": (dict(data=lambda b, t: bytes([b[0] ^ 1]) + b[1:], checksum=False),
                      "checksum mismatch"),
    "model-edit-without-checksum": (
        dict(model=set_in(["fitted", "n_iter_"], 3), checksum=False), "checksum mismatch"),
    "swapped-offsets-without-checksum": (
        dict(table=lambda t: t.update({
            "network.layers.0.bias_ih_l0": t["network.layers.0.bias_hh_l0"],
            "network.layers.0.bias_hh_l0": t["network.layers.0.bias_ih_l0"]}), checksum=False),
        "checksum mismatch"),
    # hyperparameters
    "hidden-size-zero": (dict(model=set_in(["params", "hidden_size"], 0)),
                         "invalid hyperparameters.*hidden_size"),
    "solver": (dict(model=set_in(["params", "solver"], "lbfgs")), "invalid hyperparameters"),
    "param-missing": (dict(model=set_in(["params", "alpha"], KeyError)), "missing keys"),
    "param-extra": (dict(model=set_in(["params", "__class__"], "x")), "unexpected keys"),
    "param-list": (dict(model=set_in(["params", "alpha"], [1])), "JSON scalar"),
    "param-huge-float": (dict(meta=lambda m: m.update(model=m["model"].replace(
        '"alpha":0.0001', '"alpha":1e999'))), "finite"),
    "random-state": (dict(model=set_in(["params", "random_state"], -1)), "random_state"),
    "param-dtype": (dict(model=set_in(["params", "dtype"], ",f8")), "model.params.dtype"),
    "param-dtype-alias": (dict(model=set_in(["params", "dtype"], "f8")), "model.params.dtype"),
    "class-weight-text": (dict(model=set_in(["params", "class_weight"], "auto")),
                          "class_weight must be null"),
    "class-weight-object": (dict(model=set_in(["params", "class_weight"], {"0": 1.0})),
                            "class_weight must be null"),
    "class-weight-pair": (dict(model=set_in(["params", "class_weight"], [[0]])),
                          r"class_weight\[0\] must be a \[label, weight\] pair"),
    "class-weight-label": (dict(model=set_in(["params", "class_weight"], [[[0], 1.0]])),
                           r"class_weight\[0\]: the label must be"),
    "class-weight-negative": (dict(model=set_in(["params", "class_weight"], [[0, -1.0]])),
                              r"class_weight\[0\] \(weight\) must be a finite number"),
    "class-weight-bool": (dict(model=set_in(["params", "class_weight"], [[0, True]])),
                          r"class_weight\[0\] \(weight\) must be an integer"),
    "class-weight-twice": (dict(model=set_in(["params", "class_weight"],
                                             [[1, 1.0], [1.0, 2.0]])), "given twice"),
    # fitted values
    "n-iter-negative": (dict(model=set_in(["fitted", "n_iter_"], -1)), "n_iter_"),
    "n-iter-bool": (dict(model=set_in(["fitted", "n_iter_"], True)), "n_iter_"),
    "seed-big": (dict(model=set_in(["fitted", "_seed"], 2**40)), "_seed"),
    "layout": (dict(model=set_in(["fitted", "_input_layout"], "4d")), "_input_layout"),
    "dtype-mismatch": (dict(model=set_in(["fitted", "_dtype"], "float32")),
                       "_architecture has dtype float64"),
    "dtype-name": (dict(model=set_in(["fitted", "_dtype"], "object")), "_dtype"),
    "architecture": (dict(model=set_in(["fitted", "_architecture"], [5, 1, False])),
                     "_architecture"),
    "hidden-mismatch": (dict(model=set_in(["fitted", "_architecture", 0], 6)),
                        r"weight_ih_l0 has shape \(20, 3\), expected \(24, 3\)"),
    "layers-mismatch": (dict(model=set_in(["fitted", "_architecture", 1], 2)),
                        "misses the arrays"),
    "layers-huge": (dict(model=set_in(["fitted", "_architecture", 1], 10**15)),
                    "_architecture"),
    "features-mismatch": (dict(model=set_in(["fitted", "n_features_in_"], 4)), "differs"),
    "step-features": (dict(model=set_in(["fitted", "_n_step_features"], 4),),
                      "differs|shape"),
    "loss-curve": (dict(model=set_in(["fitted", "loss_curve_"], ["x"])), "loss_curve_"),
    "validation": (dict(model=set_in(["fitted", "validation_scores_"], [0.5])), "both"),
    "feature-names": (dict(model=set_in(["fitted", "feature_names_in_"], ["a", "b", "c"])),
                      "feature_names_in_"),
    "fitted-missing": (dict(model=set_in(["fitted", "t_"], KeyError)), "missing keys"),
    "classes-unsorted": (dict(model=set_in(["fitted", "classes_", "values"], [1, 0])),
                         "sorted"),
    "classes-dup": (dict(model=set_in(["fitted", "classes_", "values"], [1, 1])), "sorted"),
    "classes-one": (dict(model=set_in(["fitted", "classes_", "values"], [1])), "at least 2"),
    "classes-dtype": (dict(model=set_in(["fitted", "classes_", "dtype"], "<M8[s]")),
                      "not a supported label dtype"),
    "classes-object-dtype": (dict(model=set_in(["fitted", "classes_", "dtype"], "|O8")),
                             "not a supported label dtype"),
    "classes-overflow": (dict(model=set_in(["fitted", "classes_", "values"], [0, 2**63])),
                         "classes_"),
    "classes-huge-str": (dict(model=set_in(["fitted", "classes_"], {
        "dtype": "<U9999999", "values": [str(i) for i in range(100)]})), "too large"),
    "classes-count": (dict(model=set_in(["fitted", "classes_", "values"], [0, 1, 2])),
                      r"network.coef has shape \(5, 2\), expected \(5, 3\)"),
    "dropout": (dict(model=set_in(["network", "dropout"], 1.0)), "dropout"),
    "optimizer-name": (dict(model=set_in(["optimizer", "name"], "lbfgs")), "optimizer.name"),
    "optimizer-t": (dict(model=set_in(["optimizer", "t"], -1)), "optimizer.t"),
    "optimizer-lr": (dict(model=set_in(["optimizer", "learning_rate"], 0)), "learning_rate"),
    "optimizer-beta": (dict(model=set_in(["optimizer", "beta_1"], 1.5)), "beta_1"),
    "optimizer-keys": (dict(model=set_in(["optimizer", "momentum"], 0.9)), "unexpected keys"),
}


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    clf, _, _ = fit_classifier()
    reg, _, _ = fit_regressor(dtype="float32", n_outputs=2)
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0)
    lm = fit_lm("char", "float64")
    files = {}
    for name, obj in (("classifier", clf), ("regressor", reg), ("layer", layer), ("lm", lm)):
        files[name] = folder / f"{name}.pylstm"
        save(obj, files[name])
    return files


LAYER_EDITS = {
    "num-layers-huge": (dict(model=set_in(["params", "num_layers"], 10**12)), "num_layers"),
    "hidden-text": (dict(model=set_in(["params", "hidden_size"], "4")), "hidden_size"),
    "hidden-mismatch": (dict(model=set_in(["params", "hidden_size"], 5)), "shape"),
    "bidirectional": (dict(model=set_in(["params", "bidirectional"], False)),
                      "unexpected arrays"),
    "dtype": (dict(model=set_in(["params", "dtype"], "float16")), "dtype"),
    "param-extra": (dict(model=set_in(["params", "random_state"], 0)), "unexpected keys"),
    "nan": (dict(data=set_nan("weight_hh_l1_reverse", 3)), "weight_hh_l1_reverse contains NaN"),
}


def vocabulary_edit(change):
    def edit(m):
        change(m["fitted"]["vocabulary_"])
    return edit


def swap_first_tokens(vocab):
    vocab[0], vocab[1] = vocab[1], vocab[0]


LM_EDITS = {
    # vocabulary
    "vocab-extra-token": (dict(model=vocabulary_edit(lambda v: v.append("zebra"))),
                          r"network.embedding has shape \(\d+, 4\), expected"),
    "vocab-missing-token": (dict(model=vocabulary_edit(lambda v: v.pop())),
                            r"network.embedding has shape"),
    "vocab-duplicate": (dict(model=vocabulary_edit(lambda v: v.__setitem__(5, v[4]))),
                        "twice"),
    "vocab-duplicate-special": (dict(model=vocabulary_edit(lambda v: v.__setitem__(
        3, "<unk>"))), "twice"),
    "vocab-unk-not-first": (dict(model=vocabulary_edit(swap_first_tokens)), "'<unk>'"),
    "vocab-no-bos": (dict(model=vocabulary_edit(lambda v: v.__setitem__(1, "b0s"))),
                     "'<bos>'"),
    "vocab-empty-token": (dict(model=vocabulary_edit(lambda v: v.__setitem__(4, ""))),
                          "non-empty string"),
    "vocab-number": (dict(model=vocabulary_edit(lambda v: v.__setitem__(4, 7))),
                     "non-empty string"),
    "vocab-surrogate": (dict(model=vocabulary_edit(lambda v: v.__setitem__(4, "\ud800"))),
                        "surrogate"),
    "vocab-string": (dict(model=set_in(["fitted", "vocabulary_"], "<unk><bos>abc")),
                     "list of at least 2"),
    "vocab-one": (dict(model=set_in(["fitted", "vocabulary_"], ["<unk>"])),
                  "list of at least 2"),
    "vocab-missing": (dict(model=set_in(["fitted", "vocabulary_"], KeyError)), "missing keys"),
    "index-stored": (dict(model=set_in(["fitted", "_index"], {"<unk>": 0})),
                     "unexpected keys"),
    "vocab-edit-without-checksum": (
        dict(model=vocabulary_edit(lambda v: v.__setitem__(4, "Q")), checksum=False),
        "checksum mismatch"),
    # arrays
    "missing-embedding": (drop_array("network.embedding"), "misses the arrays"),
    "missing-embedding-buffer": (drop_array("optimizer.vs.network.embedding"),
                                 "misses the arrays"),
    "missing-layer": (drop_array("network.layers.1.bias_hh_l0"), "misses the arrays"),
    "extra-array": (add_array("network.layers.2.weight_ih_l0"), "unexpected arrays"),
    "coef-dtype": (dict(table=set_table("network.coef", "dtype", "F32")),
                   "dtype F32, expected F64"),
    "nan-embedding": (dict(data=set_nan("network.embedding", 5)),
                      "network.embedding contains NaN"),
    "inf-buffer": (dict(data=set_nan("optimizer.ms.network.intercept", 0, np.inf)),
                   "contains infinity"),
    "negative-second-moment": (dict(data=set_nan("optimizer.vs.network.embedding", 0, -1.0)),
                               "negative entries"),
    # network sizes
    "embedding-dim": (dict(model=set_in(["network", "embedding_dim"], 5)),
                      r"network.embedding has shape \(\d+, 4\), expected \(\d+, 5\)"),
    "hidden-size": (dict(model=set_in(["network", "hidden_size"], 7)), "shape"),
    "hidden-size-zero": (dict(model=set_in(["network", "hidden_size"], 0)), "hidden_size"),
    "num-layers-fewer": (dict(model=set_in(["network", "num_layers"], 1)), "unexpected arrays"),
    "num-layers-more": (dict(model=set_in(["network", "num_layers"], 3)), "misses the arrays"),
    "num-layers-huge": (dict(model=set_in(["network", "num_layers"], 10**12)), "num_layers"),
    "num-layers-text": (dict(model=set_in(["network", "num_layers"], "2")), "num_layers"),
    "network-dropout": (dict(model=set_in(["network", "dropout"], 1.0)), "dropout"),
    "network-missing": (dict(model=set_in(["network", "embedding_dim"], KeyError)),
                        "missing keys"),
    "network-extra": (dict(model=set_in(["network", "bidirectional"], True)),
                      "unexpected keys"),
    # hyperparameters
    "level": (dict(model=set_in(["params", "level"], "byte")), "invalid hyperparameters.*level"),
    "seq-len-zero": (dict(model=set_in(["params", "seq_len"], 0)),
                     "invalid hyperparameters.*seq_len"),
    "early-stopping": (dict(model=lambda m: m["params"].update(early_stopping=True,
                                                               validation_fraction=0.0)),
                       "invalid hyperparameters.*early_stopping"),
    "param-missing": (dict(model=set_in(["params", "min_frequency"], KeyError)),
                      "missing keys"),
    "param-extra": (dict(model=set_in(["params", "alpha"], 0.1)), "unexpected keys"),
    "param-list": (dict(model=set_in(["params", "level"], ["char"])), "JSON scalar"),
    "param-dtype": (dict(model=set_in(["params", "dtype"], "f8")), "model.params.dtype"),
    "random-state": (dict(model=set_in(["params", "random_state"], 2**40)), "random_state"),
    # fitted values
    "dtype-mismatch": (dict(model=set_in(["fitted", "_dtype"], "float32")),
                       "dtype F64, expected F32"),
    "dtype-name": (dict(model=set_in(["fitted", "_dtype"], "object")), "_dtype"),
    "n-iter-negative": (dict(model=set_in(["fitted", "n_iter_"], -1)), "n_iter_"),
    "seed-big": (dict(model=set_in(["fitted", "_seed"], 2**40)), "_seed"),
    "loss-curve": (dict(model=set_in(["fitted", "loss_curve_"], [1.0, None])), "loss_curve_"),
    "perplexities": (dict(model=set_in(["fitted", "validation_perplexities_"], "1.5")),
                     "validation_perplexities_"),
    "fitted-missing": (dict(model=set_in(["fitted", "n_iter_"], KeyError)), "missing keys"),
    # optimizer
    "optimizer-name": (dict(model=set_in(["optimizer", "name"], "sgd")), "keys|misses"),
    "optimizer-t": (dict(model=set_in(["optimizer", "t"], -1)), "optimizer.t"),
    "optimizer-beta": (dict(model=set_in(["optimizer", "beta_2"], 1.5)), "beta_2"),
    # type
    "classifier-type": (dict(meta=set_meta("type", "LSTMClassifier")), "keys"),
    "layer-type": (dict(meta=set_meta("type", "LSTM")), "model has unexpected keys"),
}


def transpose_embedding(tbl):
    tbl["network.embedding"]["shape"] = tbl["network.embedding"]["shape"][::-1]


LM_EDITS["embedding-transposed"] = (dict(table=transpose_embedding),
                                    r"network.embedding has shape \(4, \d+\), expected")


#: The edits of each saved file (a saved_files key): case -> (edit, expected message).
EDITS_BY_FILE = {"classifier": EDITS, "layer": LAYER_EDITS, "lm": LM_EDITS}


@pytest.mark.parametrize("base,case", [(base, case) for base, edits in EDITS_BY_FILE.items()
                                       for case in edits])
def test_refuses_edited_files(tmp_path, saved_files, base, case):
    edit, message = EDITS_BY_FILE[base][case]
    path = tmp_path / "edited.pylstm"
    path.write_bytes(saved_files[base].read_bytes())
    rewrite(path, **edit)
    with pytest.raises(ModelFileError, match=message):
        load(path)


def test_language_model_type_on_other_files_is_refused(tmp_path, saved_files):
    for name in ("classifier", "regressor", "layer"):
        path = tmp_path / f"{name}.pylstm"
        path.write_bytes(saved_files[name].read_bytes())
        rewrite(path, meta=set_meta("type", "LSTMLanguageModel"))
        with pytest.raises(ModelFileError, match="keys"):
            load(path)


def test_huge_declared_arrays_are_refused_before_reading(tmp_path, saved_files):
    """A header consistent with itself, declaring terabytes of arrays the file lacks, is
    refused as truncated before any read (not a MemoryError from reading that much)."""
    path = tmp_path / "huge.pylstm"
    path.write_bytes(saved_files["lm"].read_bytes())
    metadata, _, _ = _container._split(path.read_bytes())
    model = json.loads(metadata["model"])
    model["network"].update(embedding_dim=2**30, hidden_size=2**20)

    def relayout(tbl):
        _, expected = LSTMLanguageModel._saved_layout(model, len(tbl))
        tbl.clear()
        offset = 0
        for name, (shape, dtype) in expected.items():
            assert dtype == np.float64
            size = math.prod(shape) * 8
            tbl[name] = {"dtype": "F64", "shape": list(shape),
                         "data_offsets": [offset, offset + size]}
            offset += size
        assert offset > 2**40

    rewrite(path, model=lambda m: m.update(model), table=relayout)
    with pytest.raises(ModelFileError, match="truncated: the arrays need"):
        load(path)


class MakesAFile:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def foreign_files(tmp_path, saved):
    """name -> (bytes, expected message) of files that are not valid model files."""
    valid = saved["classifier"].read_bytes()
    (n,) = struct.unpack("<Q", valid[:8])
    marker = str(tmp_path / "pwned")
    clf, _, _ = fit_classifier()
    joblib.dump(clf, tmp_path / "clf.joblib")
    joblib.dump(clf, tmp_path / "clf.joblib.gz", compress=3)
    np.save(tmp_path / "obj.npy", np.array([MakesAFile(marker)], dtype=object))
    np.savez(tmp_path / "obj.npz", a=np.array([MakesAFile(marker)], dtype=object))
    header = b'{"__metadata__":{"format":"pylstm"}}'
    return {
        "empty": (b"", "only 0 bytes"),
        "short": (b"{}", "only 2 bytes"),
        "pickle": (pickle.dumps(clf), "pickle"),
        "malicious-pickle": (pickle.dumps(MakesAFile(marker)), "pickle"),
        "pickle-protocol-0": (pickle.dumps([1, 2], protocol=0), "exceeds the limit"),
        "joblib": ((tmp_path / "clf.joblib").read_bytes(), "pickle"),
        "joblib-compressed": ((tmp_path / "clf.joblib.gz").read_bytes(),
                              "pylstm model file|truncated"),
        "npy-object": ((tmp_path / "obj.npy").read_bytes(), "NumPy .npy"),
        "npz-object": ((tmp_path / "obj.npz").read_bytes(), "zip archive"),
        "text": (b"hello world, this is not a model", "exceeds the limit"),
        "oversized-header": (struct.pack("<Q", _container.MAX_HEADER_BYTES + 1) + b"{",
                             r"header length 16777217 exceeds the limit of 16777216"),
        "tiny-header": (struct.pack("<Q", 1) + b"{", "too small"),
        "truncated-header": (valid[:8 + n // 2], "truncated: its header needs"),
        "truncated-data": (valid[:-1], "truncated: the arrays need"),
        "truncated-to-header": (valid[:8 + n], "truncated: the arrays need"),
        "trailing-bytes": (valid + b"\0", "bytes after its last array"),
        "header-list": (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        "header-json-list": (struct.pack("<Q", 3) + b"{}]", "not valid JSON"),
        "header-not-json": (struct.pack("<Q", 6) + b"{nope}", "not valid JSON"),
        "header-utf8": (struct.pack("<Q", 4) + b'{"\xff"', "UTF-8"),
        "header-duplicate": (struct.pack("<Q", 13) + b'{"a":1,"a":2}', "duplicate key"),
        "header-nan": (struct.pack("<Q", 9) + b'{"a":NaN}', "non-standard JSON constant"),
        "header-deep": (struct.pack("<Q", 100006) + b'{"a":' + b"[" * 100000 + b"0}",
                        "not valid JSON"),
        "other-safetensors": (struct.pack("<Q", 2) + b"{}", "not a pylstm model file"),
        "no-version": (struct.pack("<Q", len(header)) + header, "format_version"),
    }


def test_refuses_foreign_and_damaged_files(tmp_path, saved_files):
    for name, (content, message) in foreign_files(tmp_path, saved_files).items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=message):
            load(path)
    assert not (tmp_path / "pwned").exists()


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)
    assert pylstm.ModelFileError is _io.ModelFileError is _container.ModelFileError


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.pylstm")


# ---------------------------------------------------------------------- nothing executes
@contextlib.contextmanager
def nothing_may_execute():
    """Make unpickling, importing new modules and pickle-enabled np.load fail loudly."""
    calls = []
    real_import = builtins.__import__
    real_import_module = importlib.import_module
    real_np_load = np.load

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called while loading")
        return fail

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name not in sys.modules:
            calls.append(f"import {name}")
            raise ImportError(f"import of {name} during load")
        return real_import(name, globals, locals, fromlist, level)

    def guarded_import_module(name, package=None):
        if name not in sys.modules:
            calls.append(f"import_module {name}")
            raise ImportError(f"import_module({name}) during load")
        return real_import_module(name, package)

    def guarded_np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            calls.append("np.load(allow_pickle=True)")
            raise AssertionError("np.load with allow_pickle=True")
        return real_np_load(*args, allow_pickle=False, **kwargs)

    patches = [(pickle, "loads", forbidden("pickle.loads")),
               (pickle, "load", forbidden("pickle.load")),
               (pickle, "Unpickler", forbidden("pickle.Unpickler")),
               (builtins, "eval", forbidden("eval")),
               (builtins, "exec", forbidden("exec")),
               (builtins, "__import__", guarded_import),
               (importlib, "import_module", guarded_import_module),
               (np, "load", guarded_np_load)]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, new in patches:
            setattr(obj, attr, new)
        yield calls
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)


def test_loading_executes_nothing(tmp_path, saved_files):
    bad = foreign_files(tmp_path, saved_files)
    for name, (content, _) in bad.items():
        (tmp_path / f"{name}.bin").write_bytes(content)
    edited = tmp_path / "object-array.pylstm"
    edited.write_bytes(saved_files["classifier"].read_bytes())
    rewrite(edited, **EDITS["object-array"][0])
    models = {}
    with nothing_may_execute() as calls:
        for name, path in saved_files.items():
            models[name] = load(path)
        for name in bad:
            with pytest.raises(ModelFileError):
                load(tmp_path / f"{name}.bin")
        with pytest.raises(ModelFileError, match="unsupported dtype"):
            load(edited)
    assert calls == []
    assert not (tmp_path / "pwned").exists()
    X, _, _ = seq_data()
    assert models["classifier"].predict(X).shape == (len(X),)
    assert models["regressor"].predict(X).shape == (len(X), 2)
    assert len(models["lm"].generate("The", 10, random_state=0)) == 10


def test_guard_really_catches_unpickling(tmp_path):
    """The guard of the test above is effective: joblib.load trips it."""
    clf, _, _ = fit_classifier()
    joblib.dump(clf, tmp_path / "clf.joblib")
    with nothing_may_execute() as calls, pytest.raises((AssertionError, ImportError)):
        pickle.loads(pickle.dumps(clf))
    assert calls == ["pickle.loads"]


# ---------------------------------------------------------------------- pickle, joblib, skops
def fitted_models():
    clf, X, y = fit_classifier(layers=2, bidirectional=True, labels=np.array(["a", "b"]))
    reg, _, yr = fit_regressor(dtype="float32", n_outputs=2)
    return [(clf, X, y), (reg, X, yr)]


def assert_same_predictions(a, b, X):
    assert np.array_equal(a.predict(X), b.predict(X))
    assert np.array_equal(a.transform(X), b.transform(X))
    if hasattr(a, "predict_proba"):
        assert np.array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_pickle_and_joblib_keep_working(tmp_path, how):
    for est, X, y in fitted_models():
        if how == "pickle":
            copy = pickle.loads(pickle.dumps(est))
        else:
            joblib.dump(est, tmp_path / "m.joblib")
            copy = joblib.load(tmp_path / "m.joblib")
        assert_same_predictions(est, copy, X)
        est.partial_fit(X, y)
        copy.partial_fit(X, y)
        assert_same_estimator(est, copy)
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0)
    copy = pickle.loads(pickle.dumps(layer))
    X = np.random.default_rng(0).normal(size=(2, 5, 3))
    assert np.array_equal(layer.forward(X)[0], copy.forward(X)[0])


def test_skops_roundtrip(tmp_path):
    sio = pytest.importorskip("skops.io")
    for est, X, y in fitted_models():
        path = tmp_path / "m.skops"
        sio.dump(est, path)
        untrusted = sio.get_untrusted_types(file=path)
        assert all(t.startswith("pylstm.") or t == "numpy.dtype" for t in untrusted), untrusted
        with pytest.raises(Exception, match="[Uu]ntrusted"):
            sio.load(path)
        copy = sio.load(path, trusted=untrusted)
        assert_same_predictions(est, copy, X)
        est.partial_fit(X, y)
        copy.partial_fit(X, y)
        assert_same_estimator(est, copy)
        assert not isinstance(load_or_error(path), type(est))
    layer = LSTM(3, 4, random_state=0)
    sio.dump(layer, tmp_path / "l.skops")
    copy = sio.load(tmp_path / "l.skops", trusted=sio.get_untrusted_types(
        file=tmp_path / "l.skops"))
    X = np.random.default_rng(0).normal(size=(2, 5, 3))
    assert np.array_equal(layer.forward(X)[0], copy.forward(X)[0])


def load_or_error(path):
    try:
        return load(path)
    except ModelFileError as exc:
        return exc


# ---------------------------------------------------------------------- docs
def test_doctests():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = [doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
                   for module in (_io, _container, _fields)]
    assert sum(r.attempted for r in results) >= 10
    assert sum(r.failed for r in results) == 0
