"""Behaviour of LSTMClassifier and LSTMRegressor beyond sklearn's API checks.

scikit-learn's estimator checks (tests/estimators/test_estimator_checks.py) only feed 2-D
input; these tests use 3-D arrays and lists of variable-length sequences.
"""

import pickle
import re

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from pylstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ESTIMATORS = [LSTMClassifier, LSTMRegressor]
KINDS = ["3d", "list"]
N, T, F = 40, 6, 2
SMALL = {"hidden_size": 4, "max_iter": 3, "random_state": 0}
# Tests that compare predictions at float64 rounding (rtol 1e-7) ask for it;
# float32, the default, agrees to float32 rounding (test_float32).
SMALL64 = {**SMALL, "dtype": "float64"}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _make_3d(n=N, t=T, f=F, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, t, f))


def _make_list(n=N, f=F, seed=0, min_len=1, max_len=9):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(k), f)) for k in rng.integers(min_len, max_len, n)]


def _make_X(kind, **kwargs):
    return _make_3d(**kwargs) if kind == "3d" else _make_list(**kwargs)


def _targets(X, Est):
    """Label: sign of the sum of feature 0; regression target: that sum."""
    s = np.array([np.asarray(x)[:, 0].sum() for x in X])
    return (s > 0).astype(np.int64) if Est is LSTMClassifier else s


def _data(kind, Est, **kwargs):
    X = _make_X(kind, **kwargs)
    return X, _targets(X, Est)


def _outputs(est, X):
    """Every prediction-like output of a fitted estimator, for comparisons."""
    out = {"predict": est.predict(X), "transform": est.transform(X)}
    if hasattr(est, "predict_proba"):
        out["predict_proba"] = est.predict_proba(X)
    return out


def _params(est):
    return [p.copy() for p in est.network_.parameters()]


def _assert_identical_params(a, b):
    pa, pb = _params(a), _params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _assert_outputs_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _scale_half(X):
    """Module-level (picklable) sequence transform for FunctionTransformer."""
    if isinstance(X, list):
        return [np.asarray(x) * 0.5 for x in X]
    return np.asarray(X) * 0.5


# ---------------------------------------------------------------------------
# determinism and persistence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_fit_is_idempotent(Est, kind):
    X, y = _data(kind, Est)
    est = Est(**SMALL)
    first = _outputs(est.fit(X, y), X)
    params = _params(est)
    second = _outputs(est.fit(X, y), X)
    _assert_outputs_equal(first, second)
    for p, q in zip(params, _params(est), strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_same_seed_identical_parameters_different_seed_differs(Est, kind):
    X, y = _data(kind, Est)
    a = Est(**SMALL).fit(X, y)
    b = Est(**SMALL).fit(X, y)
    _assert_identical_params(a, b)
    assert a.loss_curve_ == b.loss_curve_
    c = Est(**{**SMALL, "random_state": 1}).fit(X, y)
    assert any(not np.array_equal(p, q) for p, q in zip(_params(a), _params(c), strict=True))
    assert not np.array_equal(a.transform(X), c.transform(X))


@pytest.mark.parametrize("how", ["pickle", "joblib"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_pickle_round_trip(Est, kind, how, tmp_path):
    X, y = _data(kind, Est)
    est = Est(**SMALL).fit(X, y)
    restored = _round_trip(est, how, tmp_path)
    assert restored is not est
    _assert_outputs_equal(_outputs(est, X), _outputs(restored, X))
    _assert_identical_params(est, restored)
    assert restored.get_params() == est.get_params()


def _round_trip(est, how, tmp_path):
    if how == "pickle":
        return pickle.loads(pickle.dumps(est))
    path = tmp_path / "model.joblib"
    joblib.dump(est, path)
    return joblib.load(path)


@pytest.mark.parametrize("how", ["pickle", "joblib"])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_training_continues_after_round_trip(Est, how, tmp_path):
    X, y = _data("list", Est)
    kw = {"classes": [0, 1]} if Est is LSTMClassifier else {}
    est = Est(**SMALL).fit(X, y)
    restored = _round_trip(est, how, tmp_path)
    before = _params(restored)
    est.partial_fit(X, y, **kw)
    restored.partial_fit(X, y, **kw)
    assert restored.n_iter_ == est.n_iter_ == 4
    assert any(not np.array_equal(p, q)
               for p, q in zip(before, _params(restored), strict=True))
    _assert_identical_params(est, restored)
    _assert_outputs_equal(_outputs(est, X), _outputs(restored, X))


# ---------------------------------------------------------------------------
# batch composition never changes a result
# ---------------------------------------------------------------------------


def _per_row(est, method, X):
    return np.concatenate([getattr(est, method)(X[i:i + 1]) for i in range(len(X))])


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_subset_invariance_3d(Est):
    X, y = _data("3d", Est)
    est = Est(**SMALL64).fit(X, y)
    methods = ["predict", "transform"] + (["predict_proba", "predict_log_proba"]
                                           if Est is LSTMClassifier else [])
    for method in methods:
        together = getattr(est, method)(X)
        alone = _per_row(est, method, X)
        np.testing.assert_allclose(alone, together, rtol=1e-7, atol=1e-12, err_msg=method)
        # any subset, in any order
        idx = np.array([7, 3, 30, 3, 0])
        np.testing.assert_allclose(getattr(est, method)(X[idx]), together[idx], rtol=1e-7,
                                   atol=1e-12, err_msg=method)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_variable_length_equals_each_sequence_alone(Est):
    X, y = _data("list", Est)
    assert len({len(x) for x in X}) > 3  # mixed lengths
    est = Est(**SMALL64).fit(X, y)
    methods = ["predict", "transform"] + (["predict_proba"] if Est is LSTMClassifier else [])
    for method in methods:
        together = getattr(est, method)(X)
        # each sequence alone, as a one-element list and as a (1, T_i, F) array
        alone = np.concatenate([getattr(est, method)([x]) for x in X])
        alone_3d = np.concatenate([getattr(est, method)(x[None]) for x in X])
        np.testing.assert_allclose(alone, together, rtol=1e-7, atol=1e-12, err_msg=method)
        np.testing.assert_allclose(alone_3d, together, rtol=1e-7, atol=1e-12, err_msg=method)
        # other batch compositions: reversed order, and mixed with longer sequences
        rev = getattr(est, method)(X[::-1])
        np.testing.assert_allclose(rev[::-1], together, rtol=1e-7, atol=1e-12, err_msg=method)
        extra = _make_list(n=5, seed=3, min_len=15, max_len=20)
        mixed = getattr(est, method)(extra + X[:10])
        np.testing.assert_allclose(mixed[5:], together[:10], rtol=1e-7, atol=1e-12,
                                   err_msg=method)


def test_many_sequences_across_inference_batches():
    # more sequences than one inference batch holds: results do not depend on
    # which batch a sequence lands in
    X, y = _data("list", LSTMClassifier)
    est = LSTMClassifier(**SMALL).fit(X, y)
    big = _make_list(n=600, seed=5, max_len=12)
    proba = est.predict_proba(big)
    assert proba.shape == (600, 2)
    np.testing.assert_allclose(est.predict_proba(big[::3]), proba[::3], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(est.predict_proba(big[-7:] + big[:2]),
                               np.vstack([proba[-7:], proba[:2]]), rtol=1e-7, atol=1e-12)


def test_padded_3d_equals_list_of_full_sequences():
    # a list of equal-length sequences is the same data as the 3-D array
    X, y = _data("3d", LSTMRegressor)
    est = LSTMRegressor(**SMALL).fit(X, y)
    np.testing.assert_array_equal(est.predict(list(X)), est.predict(X))


# ---------------------------------------------------------------------------
# n_features_in_
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_n_features_in(Est):
    X3, y = _data("3d", Est)
    est = Est(**SMALL).fit(X3, y)
    assert est.n_features_in_ == F
    assert not hasattr(est, "feature_names_in_")
    with pytest.raises(ValueError, match="features per step"):
        est.predict(X3[:, :, :1])
    with pytest.raises(ValueError, match="features per step"):
        est.predict(np.concatenate([X3, X3[:, :, :1]], axis=2))
    # other sequence lengths are fine
    assert len(est.predict(X3[:, :3])) == N

    XL, yl = _data("list", Est, f=3)
    est = Est(**SMALL).fit(XL, yl)
    assert est.n_features_in_ == 3
    with pytest.raises(ValueError, match="features per step"):
        est.predict([x[:, :2] for x in XL])

    X2 = X3[:, :, 0]
    est = Est(**SMALL).fit(X2, y)
    assert est.n_features_in_ == T
    with pytest.raises(ValueError, match=f"expecting {T} features"):
        est.predict(X2[:, :4])
    with pytest.raises(ValueError, match="features per step"):
        est.predict(X3)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["fit", "predict"])
@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "infinity"),
                                         (-np.inf, "infinity")])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_non_finite_X_raises(Est, kind, value, word, where):
    X, y = _data(kind, Est)
    bad = [np.array(x, copy=True) for x in X] if kind == "list" else X.copy()
    bad[4][-1, 1] = value
    if where == "fit":
        est = Est(**SMALL)
        with pytest.raises(ValueError, match=word):
            est.fit(bad, y)
        assert not hasattr(est, "network_")
    else:
        est = Est(**SMALL).fit(X, y)
        with pytest.raises(ValueError, match=word):
            est.predict(bad)
        with pytest.raises(ValueError, match=word):
            est.transform(bad)


def _bad_fit_cases():
    X3 = _make_3d()
    XL = _make_list()
    y = np.arange(N) % 2
    ragged = [np.zeros((2, 2)), np.zeros((4, 3))]
    return [
        ("empty-3d", np.zeros((0, T, F)), np.zeros(0), ValueError, "0 sample"),
        ("empty-2d", np.zeros((0, T)), np.zeros(0), ValueError, "0 sample"),
        ("zero-steps-3d", np.zeros((2, 0, F)), [0, 1], ValueError, "length 0"),
        ("zero-length-seq", [np.zeros((3, F)), np.zeros((0, F))], [0, 1], ValueError,
         r"X\[1\] has length 0"),
        ("ragged-features", ragged, [0, 1], ValueError, "same number of features"),
        ("ragged-features-same-length", [np.zeros((3, 2)), np.zeros((3, 3))], [0, 1],
         ValueError, "same number of features"),
        ("4-d", np.zeros((4, 3, 2, 2)), [0, 1, 0, 1], ValueError, r"shape \(4, 3, 2, 2\)"),
        ("strings-3d", np.array([[["a"], ["b"]], [["c"], ["d"]]]), [0, 1], ValueError,
         "string"),
        ("strings-list", [np.array(["a", "b"]), np.array(["c"])], [0, 1], ValueError,
         "real numbers"),
        ("numeric-strings-2d", np.array([["1", "2"], ["3", "4"]]), [0, 1], ValueError,
         "real numbers, got strings"),
        ("bytes-3d", np.array([[[b"1"], [b"2"]], [[b"3"], [b"4"]]]), [0, 1], ValueError,
         "real numbers, got bytes"),
        ("datetime-2d", np.array([[1, 2], [3, 4]], dtype="datetime64[s]"), [0, 1], ValueError,
         r"real numbers, got dates \(datetime64\)"),
        ("object-with-strings", np.array([[1.0, "2"], [3.0, 4.0]], dtype=object), [0, 1],
         ValueError, "object array holding str values such as '2'"),
        ("nested-ragged-list", [[[1.0], [2.0, 3.0]], [[1.0]]], [0, 1], ValueError,
         r"X\[0\] is not a rectangular array"),
        ("str-in-list", [np.zeros((3, 2)), "abc"], [0, 1], ValueError,
         r"X\[1\] is a str, not a sequence"),
        ("none-in-list", [np.zeros((3, 2)), None], [0, 1], ValueError,
         r"X\[1\] is None, not a sequence"),
        ("number-in-list", [np.zeros((3, 2)), 5.0], [0, 1], ValueError,
         r"X\[1\] is a float, not a sequence"),
        ("sparse", sp.csr_matrix(np.eye(4)), [0, 1, 0, 1], TypeError, "dense data"),
        ("y-too-short-3d", X3, y[:-1], ValueError, "inconsistent numbers of samples"),
        ("y-too-long-list", XL, np.r_[y, 0], ValueError, "inconsistent numbers of samples"),
    ]


@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize("X, y, exc, match",
                         [c[1:] for c in _bad_fit_cases()],
                         ids=[c[0] for c in _bad_fit_cases()])
def test_bad_input_raises_clear_error(Est, X, y, exc, match):
    est = Est(**SMALL)
    with pytest.raises(exc, match=match):
        est.fit(X, y)
    assert not hasattr(est, "network_")


_NON_NUMERIC_DTYPES = st.one_of(hnp.unicode_string_dtypes(), hnp.byte_string_dtypes(),
                                hnp.datetime64_dtypes(), hnp.timedelta64_dtypes())


@settings(max_examples=40, deadline=None)
@given(X=hnp.arrays(_NON_NUMERIC_DTYPES, st.sampled_from([(4, 3), (4, 3, 2)])),
       as_list=st.booleans(), where=st.sampled_from(["fit", "predict"]))
def test_non_numeric_X_is_refused_before_any_conversion(X, as_list, where):
    """Strings (even numeric ones), bytes, dates and durations are not read as numbers."""
    y = np.array([0, 1, 0, 1])
    Xin = [X[0], X[1, :2], X[2], X[3]] if as_list else X
    est = LSTMClassifier(**SMALL)
    if where == "predict":
        est.fit(np.zeros(X.shape), y)
    with pytest.raises(ValueError, match="must hold real numbers"):
        getattr(est, where)(*((Xin, y) if where == "fit" else (Xin,)))


def test_dataframe_with_a_text_or_date_column_is_refused():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": ["1", "2", "3", "4"]})
    with pytest.raises(ValueError, match=r"X\[:, 1\] must hold real numbers"):
        LSTMClassifier(**SMALL).fit(X, [0, 1, 0, 1])
    X["b"] = pd.to_datetime(["2024-01-01"] * 4)
    with pytest.raises(ValueError, match=r"X\[:, 1\] must hold real numbers, got dates"):
        LSTMClassifier(**SMALL).fit(X, [0, 1, 0, 1])
    X["b"] = np.array([1, 2, 3, 4], dtype=object)  # numbers in an object column are fine
    LSTMClassifier(**SMALL).fit(X, [0, 1, 0, 1])


@pytest.mark.parametrize(("labels", "match"), [
    (["a", None], r"y contains missing labels \(None or NaN\), first at index 1"),
    (["a", np.nan], "y contains missing labels"),
    ([1, None], "y contains missing labels"),
    (["a", 1], "y must hold labels of one kind, all strings or all numbers; got number, str"),
])
def test_missing_or_mixed_object_labels_are_named(labels, match):
    X = _make_3d()
    y = np.array(labels * (N // 2), dtype=object)
    with pytest.raises(ValueError, match=match):
        LSTMClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match=match.replace("y ", "classes ", 1)):
        LSTMClassifier(**SMALL).partial_fit(X, np.zeros(N), classes=np.array(labels,
                                                                               dtype=object))
    est = LSTMClassifier(**SMALL).partial_fit(X, np.arange(N) % 2, classes=[0, 1])
    with pytest.raises(ValueError, match=match.replace("y ", "classes ", 1)):
        est.partial_fit(X, np.arange(N) % 2, classes=np.array(labels, dtype=object))


@pytest.mark.parametrize("return_sequences", [False, True])
def test_regressor_targets_without_outputs_are_refused(return_sequences):
    X = _make_3d()
    y = np.zeros((N, T, 0) if return_sequences else (N, 0))
    with pytest.raises(ValueError, match=r"y has 0 outputs \(shape \(40, (6, )?0\)\)"):
        LSTMRegressor(**SMALL, return_sequences=return_sequences).fit(X, y)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_empty_list_raises(Est):
    with pytest.raises(ValueError):
        Est(**SMALL).fit([], [])


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_empty_list_error_is_clear(Est):
    with pytest.raises(ValueError, match="empty|0 sequences|0 sample"):
        Est(**SMALL).fit([], [])


def test_classifier_single_class():
    X = _make_3d()
    with pytest.raises(ValueError, match="at least 2 classes"):
        LSTMClassifier(**SMALL).fit(X, np.full(N, "a"))
    with pytest.raises(ValueError, match="at least 2 classes"):
        LSTMClassifier(**SMALL).fit(_make_list(), np.zeros(N))


def test_classifier_partial_fit_classes():
    X, y = _data("list", LSTMClassifier)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        LSTMClassifier(**SMALL).partial_fit(X, y)
    est = LSTMClassifier(**SMALL).partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"not seen in classes_.*2"):
        est.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="not seen in classes_"):
        LSTMClassifier(**SMALL).partial_fit(X, y + 5, classes=[0, 1])
    # the failed call left the fitted model alone
    assert est.n_iter_ == 1
    np.testing.assert_array_equal(est.classes_, [0, 1])


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_not_fitted(Est):
    X = _make_3d()
    est = Est(**SMALL)
    methods = ["predict", "transform"] + (["predict_proba", "predict_log_proba"]
                                           if Est is LSTMClassifier else [])
    for method in methods:
        with pytest.raises(NotFittedError):
            getattr(est, method)(X)
    with pytest.raises(NotFittedError):
        est.score(X, _targets(X, Est))


@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize("param, value, match", [
    ("solver", "foo", "solver"),
    ("hidden_size", 0, "hidden_size"),
    ("hidden_size", 2.5, "hidden_size"),
    ("num_layers", 0, "num_layers"),
    ("batch_size", 0, "batch_size"),
    ("max_iter", 0, "max_iter"),
    ("dropout", 1.0, "dropout"),
    ("dropout", -0.1, "dropout"),
    ("dtype", "int8", "dtype"),
    ("dtype", "float16", "dtype"),
    ("learning_rate_init", 0.0, "learning_rate_init"),
    ("momentum", 1.5, "momentum"),
    ("alpha", -1.0, "alpha"),
    ("clip_norm", 0.0, "clip_norm"),
    ("clip_value", -1.0, "clip_value"),
    ("validation_fraction", 1.0, "validation_fraction"),
    ("tol", np.nan, "tol"),
])
def test_invalid_hyperparameters(Est, param, value, match):
    X, y = _data("3d", Est)
    est = Est(**{**SMALL, param: value})
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)
    assert not hasattr(est, "network_")
    if Est is LSTMClassifier:
        with pytest.raises(ValueError, match=match):
            Est(**{**SMALL, param: value}).partial_fit(X, y, classes=[0, 1])
    else:
        with pytest.raises(ValueError, match=match):
            Est(**{**SMALL, param: value}).partial_fit(X, y)


def test_bad_targets():
    X = _make_list()
    y = _targets(X, LSTMRegressor)
    with pytest.raises(ValueError, match="NaN or infinity"):
        LSTMRegressor(**SMALL).fit(X, np.where(np.arange(N) == 3, np.nan, y))
    with pytest.raises(ValueError, match="real numbers"):
        LSTMRegressor(**SMALL).fit(X, np.array(["a"] * N))
    # per-step labels without return_sequences
    with pytest.raises(ValueError, match="return_sequences=True"):
        LSTMClassifier(**SMALL).fit(X, [np.zeros(len(x), dtype=int) for x in X])
    # per-sequence labels with return_sequences
    with pytest.raises(ValueError, match="one target per step"):
        LSTMRegressor(**{**SMALL, "return_sequences": True}).fit(X, y)
    with pytest.raises(ValueError, match="one target per step"):
        LSTMRegressor(**{**SMALL, "return_sequences": True}).fit(
            X, [np.zeros(len(x) + 1) for x in X])


def test_regressor_y_none():
    with pytest.raises(ValueError, match="requires y"):
        LSTMRegressor(**SMALL).fit(_make_3d(), None)


# ---------------------------------------------------------------------------
# non-finite loss
# ---------------------------------------------------------------------------

_DIVERGING = {"hidden_size": 4, "learning_rate_init": 1e12, "clip_norm": None,
              "solver": "sgd", "momentum": 0.0, "max_iter": 50, "n_iter_no_change": 100,
              "random_state": 0}


def _diverging_data(scale):
    rng = np.random.default_rng(0)
    return rng.standard_normal((30, 5, 1)), rng.standard_normal(30) * scale


# 1e200: the loss overflows in the first epoch; 1e144: in the second, after
# one full epoch of (finite) updates. Smaller scales mostly hit the bug below.
@pytest.mark.parametrize("scale", [1e144, 1e200])
def test_non_finite_loss_raises_floating_point_error(scale):
    X, y = _diverging_data(scale)
    est = LSTMRegressor(**_DIVERGING)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as info:
        est.fit(X, y)
    msg = str(info.value)
    match = re.search(r"epoch (\d+)", msg)
    assert match, msg
    assert "learning_rate_init" in msg and "clip" in msg
    # the epoch that failed is the one after the last completed epoch
    assert int(match.group(1)) == est.n_iter_ + 1
    assert len(est.loss_curve_) == est.n_iter_
    for p in est.network_.parameters():
        assert np.isfinite(p).all()
    with np.errstate(all="ignore"):
        pred = est.predict(X)
    assert pred.shape == (30,)


@pytest.mark.filterwarnings("ignore:the training loss grew:RuntimeWarning")  # on its way
@pytest.mark.parametrize("dtype, scale", [("float32", 1e6), ("float64", 1e6),
                                          ("float64", 1e100)])
def test_non_finite_gradient_raises_floating_point_error(dtype, scale):
    X, y = _diverging_data(scale)
    est = LSTMRegressor(**{**_DIVERGING, "dtype": dtype})
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="epoch"):
        est.fit(X, y)
    for p in est.network_.parameters():
        assert np.isfinite(p).all()


# ---------------------------------------------------------------------------
# meta-estimators
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_clone(Est, kind):
    X, y = _data(kind, Est)
    est = Est(**SMALL).fit(X, y)
    fresh = clone(est)
    assert fresh.get_params() == est.get_params()
    assert not hasattr(fresh, "network_")
    fresh.fit(X, y)
    _assert_outputs_equal(_outputs(est, X), _outputs(fresh, X))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_grid_search(Est, kind):
    X, y = _data(kind, Est)
    gs = GridSearchCV(Est(max_iter=2, random_state=0), {"hidden_size": [4, 8]},
                      n_jobs=2, cv=2)
    gs.fit(X, y)
    assert gs.best_params_["hidden_size"] in (4, 8)
    scores = gs.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.isfinite(scores).all()
    best = gs.best_estimator_
    assert best.hidden_size == gs.best_params_["hidden_size"]
    # refit on the whole data is the same model as fitting it directly
    direct = Est(max_iter=2, random_state=0, hidden_size=best.hidden_size).fit(X, y)
    np.testing.assert_array_equal(gs.predict(X), direct.predict(X))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_pipeline(Est, kind):
    X, y = _data(kind, Est)
    pipe = Pipeline([("scale", FunctionTransformer(_scale_half)), ("lstm", Est(**SMALL))])
    pipe.fit(X, y)
    direct = Est(**SMALL).fit(_scale_half(X), y)
    np.testing.assert_array_equal(pipe.predict(X), direct.predict(_scale_half(X)))
    assert pipe.score(X, y) == direct.score(_scale_half(X), y)
    # and a pipeline inside a grid search (parameters routed with the step name)
    gs = GridSearchCV(pipe, {"lstm__hidden_size": [2, 4]}, cv=2).fit(X, y)
    assert gs.best_params_["lstm__hidden_size"] in (2, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_transform_feeds_logistic_regression(kind):
    X, y = _data(kind, LSTMClassifier)
    est = LSTMClassifier(hidden_size=5, max_iter=5, random_state=0, dtype="float64").fit(X, y)
    Z = est.transform(X)
    assert Z.shape == (N, 5)
    assert Z.dtype == np.float64
    assert np.all(np.abs(Z) < 1)  # hidden states are tanh-bounded
    np.testing.assert_array_equal(est.fit_transform(X, y), Z)
    pipe = make_pipeline(
        LSTMClassifier(hidden_size=5, max_iter=5, random_state=0, dtype="float64"),
        LogisticRegression())
    pipe.fit(X, y)
    np.testing.assert_array_equal(pipe[0].transform(X), Z)
    ref = LogisticRegression().fit(Z, y)
    np.testing.assert_array_equal(pipe.predict(X), ref.predict(Z))
    assert pipe.predict_proba(X).shape == (N, 2)

    bi = LSTMRegressor(hidden_size=3, bidirectional=True, max_iter=2, random_state=0)
    assert bi.fit(X, _targets(X, LSTMRegressor)).transform(X).shape == (N, 6)


# ---------------------------------------------------------------------------
# incremental training
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_partial_fit_stream(Est, kind):
    X, y = _data(kind, Est)
    kw = {"classes": np.array([0, 1])} if Est is LSTMClassifier else {}
    est = Est(hidden_size=6, learning_rate_init=0.02, random_state=0)
    n_calls = 8
    for i in range(n_calls):
        est.partial_fit(X, y, **kw)
        assert est.n_iter_ == i + 1
        assert est.t_ == (i + 1) * N
        assert len(est.loss_curve_) == i + 1
        if Est is LSTMClassifier:
            np.testing.assert_array_equal(est.classes_, [0, 1])
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    # k partial_fit calls are k epochs of fit, bit for bit
    full = Est(hidden_size=6, learning_rate_init=0.02, random_state=0, max_iter=n_calls,
               tol=0.0, n_iter_no_change=100).fit(X, y)
    _assert_identical_params(est, full)
    assert est.loss_curve_ == full.loss_curve_


@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_changed_learning_rate_applies_and_keeps_the_optimizer_state(Est, how):
    X, y = _data("3d", Est)
    kw = {"classes": [0, 1]} if Est is LSTMClassifier and how == "partial_fit" else {}
    est = Est(**{**SMALL, "max_iter": 1}, warm_start=how == "warm_start")
    step = est.partial_fit if how == "partial_fit" else est.fit
    step(X, y, **kw)
    optimizer, t = est._optimizer, est._optimizer.t
    before = [p.copy() for p in est.network_.parameters()]
    est.set_params(learning_rate_init=1e-12)
    step(X, y, **kw)
    assert est._optimizer is optimizer and optimizer.t > t  # state kept, counter goes on
    assert optimizer.learning_rate == optimizer.learning_rate_init == 1e-12
    # Steps of 1e-12 (Adam's steps are about the learning rate) barely move the weights.
    moved = max(np.abs(p - q).max() for p, q in zip(est.network_.parameters(), before,
                                                    strict=True))
    assert moved < 1e-9


@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
def test_changed_solver_starts_a_new_optimizer(how):
    X, y = _data("3d", LSTMRegressor)
    est = LSTMRegressor(**{**SMALL, "max_iter": 1}, warm_start=how == "warm_start")
    step = est.partial_fit if how == "partial_fit" else est.fit
    step(X, y)
    assert type(est._optimizer).__name__ == "AdamOptimizer"
    est.set_params(solver="sgd", momentum=0.5, nesterovs_momentum=False)
    step(X, y)
    opt = est._optimizer
    assert type(opt).__name__ == "SGDOptimizer"
    assert (opt.momentum, opt.nesterov, opt.t) == (0.5, False, 2)  # 2 batches of 20
    est.set_params(momentum=0.0)
    step(X, y)
    assert est._optimizer is opt and opt.momentum == 0.0


def test_partial_fit_chunks_missing_a_class():
    X, y = _data("list", LSTMClassifier)
    est = LSTMClassifier(**SMALL)
    only0 = [x for x, c in zip(X, y, strict=True) if c == 0]
    only1 = [x for x, c in zip(X, y, strict=True) if c == 1]
    est.partial_fit(only0, np.zeros(len(only0), int), classes=[0, 1])
    est.partial_fit(only1, np.ones(len(only1), int))
    np.testing.assert_array_equal(est.classes_, [0, 1])
    assert est.t_ == N
    assert est.predict_proba(X).shape == (N, 2)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_warm_start_continues(Est):
    X, y = _data("list", Est)
    kw = {"hidden_size": 4, "random_state": 0, "tol": 0.0, "n_iter_no_change": 100}
    est = Est(max_iter=3, warm_start=True, **kw).fit(X, y)
    est.fit(X, y)
    assert est.n_iter_ == 6
    assert len(est.loss_curve_) == 6
    assert est.t_ == 6 * N
    once = Est(max_iter=6, **kw).fit(X, y)
    _assert_identical_params(est, once)
    # without warm_start a second fit starts over
    cold = Est(max_iter=3, **kw).fit(X, y).fit(X, y)
    assert cold.n_iter_ == 3


def _validation_split(est, X, y):
    """Reproduce the held-out part of _split_validation (see _estimators.py)."""
    n = len(y)
    n_val = max(1, int(round(est.validation_fraction * n)))
    stratify = y if isinstance(est, LSTMClassifier) else None
    rs = np.random.RandomState([est._seed, 2**20])  # noqa: NPY002
    _, val = train_test_split(np.arange(n), test_size=n_val, random_state=rs,
                              stratify=stratify)
    return val


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_early_stopping_restores_best_weights(Est, kind):
    X, y = _data(kind, Est, n=60)
    est = Est(hidden_size=6, learning_rate_init=0.05, max_iter=40, early_stopping=True,
              validation_fraction=0.25, n_iter_no_change=3, random_state=0)
    est.fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_)
    assert est.best_validation_score_ == max(scores)
    assert est.n_iter_ < 40  # it stopped early
    assert est.t_ == est.n_iter_ * (60 - 15)  # trained on the training part only

    val = _validation_split(est, X, y)
    X_val = X[val] if kind == "3d" else [X[i] for i in val]
    assert est.score(X_val, y[val]) == pytest.approx(est.best_validation_score_, rel=1e-12,
                                                     abs=1e-12)

    plain = Est(**SMALL).fit(X, y)
    assert plain.validation_scores_ is None and plain.best_validation_score_ is None


@pytest.mark.parametrize(("n", "fraction", "return_sequences", "T_val"), [
    (12, 0.05, False, T), (40, 0.01, False, T), (12, 0.05, True, 1)])
def test_regressor_early_stopping_refuses_a_validation_set_r2_cannot_score(
        n, fraction, return_sequences, T_val):
    X = _make_3d(n=n, t=T_val)
    y = X.sum(axis=2) if return_sequences else X.sum(axis=(1, 2))
    est = LSTMRegressor(**{**SMALL, "max_iter": 20}, early_stopping=True,
                        validation_fraction=fraction, return_sequences=return_sequences)
    with pytest.raises(ValueError, match=r"early_stopping holds out 1 of \d+ samples .*, 1 "
                                         r"(sample|step) to score, and R\^2 needs at least 2"):
        est.fit(X, y)
    assert not hasattr(est, "network_")


def test_regressor_early_stopping_scores_one_sequence_of_several_steps():
    X = _make_3d(n=12)
    est = LSTMRegressor(**{**SMALL, "max_iter": 20}, early_stopping=True, n_iter_no_change=2,
                        validation_fraction=0.05, return_sequences=True)
    est.fit(X, X.sum(axis=2))  # 1 held-out sequence, 6 steps: R^2 is defined
    assert all(np.isfinite(est.validation_scores_))


# ---------------------------------------------------------------------------
# warnings and progress output
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_convergence_warning(Est):
    X, y = _data("list", Est)
    with pytest.warns(ConvergenceWarning, match=r"maximum iterations \(2\)"):
        Est(hidden_size=4, max_iter=2, random_state=0).fit(X, y)


def test_no_convergence_warning_when_stopping(recwarn):
    X, y = _data("3d", LSTMRegressor)
    # tol so large that no epoch after the first counts as an improvement: the
    # count exceeds n_iter_no_change=1 (as in MLPRegressor) after 3 epochs
    est = LSTMRegressor(hidden_size=4, max_iter=50, tol=1e6, n_iter_no_change=1,
                        random_state=0).fit(X, y)
    assert est.n_iter_ == 3
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_verbose(Est, capsys):
    X, y = _data("list", Est)
    Est(hidden_size=4, max_iter=3, random_state=0, verbose=1).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines, start=1):
        assert "loss" in line
        assert line.startswith(f"Epoch {epoch}/3")

    Est(hidden_size=4, max_iter=3, random_state=0, verbose=1, early_stopping=True,
        validation_fraction=0.25).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("validation_score" in line for line in lines)

    est = Est(hidden_size=4, max_iter=3, random_state=0, verbose=0).fit(X, y)
    est.predict(X)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------
# training options
# ---------------------------------------------------------------------------


def _easy_problem():
    X = _make_3d(n=48, t=5, f=2, seed=1)
    return X, X[:, :, 0].sum(axis=1)


@pytest.mark.parametrize("solver, extra", [
    ("sgd", {"nesterovs_momentum": False, "learning_rate_init": 0.05}),
    ("sgd", {"nesterovs_momentum": True, "learning_rate_init": 0.05}),
    ("sgd", {"momentum": 0.0, "learning_rate_init": 0.1}),
    ("rmsprop", {"learning_rate_init": 0.01}),
    ("adam", {"learning_rate_init": 0.02}),
], ids=["sgd", "sgd-nesterov", "sgd-no-momentum", "rmsprop", "adam"])
def test_solvers_reduce_training_loss(solver, extra):
    X, y = _easy_problem()
    est = LSTMRegressor(hidden_size=8, max_iter=15, solver=solver, random_state=0,
                        tol=0.0, n_iter_no_change=100, **extra).fit(X, y)
    assert est.n_iter_ == 15
    assert est.loss_curve_[-1] < 0.5 * est.loss_curve_[0]
    assert est.best_loss_ == min(est.loss_curve_)
    assert est.score(X, y) > 0.3


def test_sgd_nesterov_changes_trajectory():
    X, y = _easy_problem()
    a = LSTMRegressor(solver="sgd", nesterovs_momentum=False, **SMALL).fit(X, y)
    b = LSTMRegressor(solver="sgd", nesterovs_momentum=True, **SMALL).fit(X, y)
    assert a.loss_curve_ != b.loss_curve_
    assert any(not np.array_equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))


@pytest.mark.parametrize("clip", [{"clip_value": 0.01}, {"clip_norm": 0.1},
                                  {"clip_norm": None, "clip_value": 0.05},
                                  {"clip_norm": None}])
def test_clipping_options(clip):
    X, y = _easy_problem()
    est = LSTMRegressor(hidden_size=6, max_iter=5, learning_rate_init=0.02, random_state=0,
                        **clip).fit(X, y)
    assert all(np.isfinite(p).all() for p in est.network_.parameters())
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    # clipping is actually applied: a different clip gives a different model
    other = LSTMRegressor(hidden_size=6, max_iter=5, learning_rate_init=0.02, random_state=0,
                          clip_norm=1e-4, clip_value=None).fit(X, y)
    assert any(not np.array_equal(p, q)
               for p, q in zip(_params(est), _params(other), strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_two_layers(kind):
    X, y = _data(kind, LSTMClassifier)
    kw = {"hidden_size": 6, "num_layers": 2, "max_iter": 8, "learning_rate_init": 0.02,
          "random_state": 0}
    a = LSTMClassifier(dropout=0.3, **kw).fit(X, y)
    b = LSTMClassifier(dropout=0.3, **kw).fit(X, y)
    _assert_identical_params(a, b)
    assert len(a.network_.layers) == 2
    assert a.loss_curve_[-1] < a.loss_curve_[0]
    # dropout only acts in training: prediction is deterministic and differs
    # from the model trained without dropout
    np.testing.assert_array_equal(a.predict_proba(X), a.predict_proba(X))
    c = LSTMClassifier(dropout=0.0, **kw).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_bidirectional(Est, kind):
    X, y = _data(kind, Est)
    est = Est(hidden_size=4, bidirectional=True, num_layers=2, max_iter=10, dtype="float64",
              learning_rate_init=0.02, random_state=0).fit(X, y)
    assert est.transform(X).shape == (N, 8)
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    pred = est.predict(X)
    assert pred.shape == (N,)
    np.testing.assert_allclose(np.concatenate([est.predict([x]) for x in X]), pred,
                               rtol=1e-7, atol=1e-12)
    uni = Est(hidden_size=4, num_layers=2, max_iter=10, dtype="float64", learning_rate_init=0.02,
              random_state=0).fit(X, y)
    assert len(_params(est)) > len(_params(uni))


# ---------------------------------------------------------------------------
# return_sequences
# ---------------------------------------------------------------------------


def test_classifier_per_step_labels_list():
    X = _make_list(n=60, f=1, seed=2, min_len=2, max_len=10)
    y = [np.where(x[:, 0] > 0, "pos", "neg") for x in X]
    est = LSTMClassifier(hidden_size=8, max_iter=30, learning_rate_init=0.02, dtype="float64",
                         return_sequences=True, random_state=0).fit(X, y)
    np.testing.assert_array_equal(est.classes_, ["neg", "pos"])
    pred = est.predict(X)
    assert isinstance(pred, list) and len(pred) == len(X)
    for p, x in zip(pred, X, strict=True):
        assert p.shape == (len(x),)
    acc = np.mean(np.concatenate(pred) == np.concatenate(y))
    assert acc > 0.9
    assert est.score(X, y) == pytest.approx(acc)
    proba = est.predict_proba(X)
    assert [p.shape for p in proba] == [(len(x), 2) for x in X]
    np.testing.assert_allclose([p.sum(axis=1) for p in proba[:1]], [np.ones(len(X[0]))])
    # batch composition does not change per-step results either
    for i in (0, 7, 59):
        np.testing.assert_allclose(est.predict_proba([X[i]])[0], proba[i], rtol=1e-7,
                                   atol=1e-12)
        np.testing.assert_array_equal(est.predict([X[i]])[0], pred[i])
    # 3-D input gives a (n, T) array
    X3 = _make_3d(n=5, t=4, f=1)
    assert est.predict(X3).shape == (5, 4)
    assert est.predict_proba(X3).shape == (5, 4, 2)


@pytest.mark.parametrize("rule", ["double", "cumsum"])
def test_regressor_per_step_3d(rule):
    X = _make_3d(n=60, t=8, f=1, seed=4)
    y = 2 * X[:, :, 0] if rule == "double" else np.cumsum(X[:, :, 0], axis=1)
    est = LSTMRegressor(hidden_size=8, max_iter=30, learning_rate_init=0.02, dtype="float64",
                        return_sequences=True, random_state=0).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (60, 8)
    assert est.score(X, y) > 0.9
    ss_res = ((pred - y) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum()
    assert est.score(X, y) == pytest.approx(1 - ss_res / ss_tot)
    np.testing.assert_allclose(_per_row(est, "predict", X), pred, rtol=1e-7, atol=1e-12)


def test_regressor_per_step_list_multioutput():
    X = _make_list(n=30, f=1, seed=6, min_len=2, max_len=7)
    y = [np.column_stack([x[:, 0], -x[:, 0]]) for x in X]
    est = LSTMRegressor(hidden_size=4, max_iter=3, return_sequences=True,
                        random_state=0).fit(X, y)
    assert est.n_outputs_ == 2
    pred = est.predict(X)
    assert [p.shape for p in pred] == [(len(x), 2) for x in X]
    np.testing.assert_allclose(est.predict([X[3]])[0], pred[3], rtol=1e-7, atol=1e-12)


# ---------------------------------------------------------------------------
# dtype and pandas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_default_dtype_is_float32(Est):
    X, y = _data("3d", Est)
    est = Est(**SMALL).fit(X, y)
    assert est.get_params()["dtype"] == "float32"
    assert all(p.dtype == np.float32 for p in est.network_.parameters())
    assert est.transform(X).dtype == np.float32
    out = est.predict(X) if Est is LSTMRegressor else est.predict_proba(X)
    assert out.dtype == np.float64


@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize("kind", KINDS)
def test_float32(Est, kind):
    X, y = _data(kind, Est)
    est = Est(hidden_size=6, max_iter=10, learning_rate_init=0.02, dtype="float32",
              random_state=0).fit(X, y)
    assert all(p.dtype == np.float32 for p in est.network_.parameters())
    assert est.transform(X).dtype == np.float32
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    if Est is LSTMRegressor:
        assert est.predict(X).dtype == np.float64  # targets' dtype, as scikit-learn
    else:
        proba = est.predict_proba(X)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # close to the float64 model with the same seed
    ref = Est(hidden_size=6, max_iter=10, learning_rate_init=0.02, dtype="float64",
              random_state=0).fit(X, y)
    np.testing.assert_allclose(est.transform(X), ref.transform(X), atol=1e-3)
    # deterministic too
    _assert_identical_params(est, clone(est).fit(X, y))
    # float32 predictions are batch-composition invariant within float32 precision
    np.testing.assert_allclose(np.concatenate([est.transform([x]) for x in X]),
                               est.transform(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_pandas_dataframe(Est):
    pd = pytest.importorskip("pandas")
    X2 = _make_3d(n=30, t=5, f=1)[:, :, 0]
    y = _targets(X2[:, :, None], Est)
    df = pd.DataFrame(X2, columns=[f"t{i}" for i in range(5)])
    a = Est(**SMALL).fit(df, y)
    b = Est(**SMALL).fit(X2, y)
    np.testing.assert_array_equal(a.feature_names_in_, df.columns.to_numpy())
    assert not hasattr(b, "feature_names_in_")
    assert a.n_features_in_ == 5
    _assert_outputs_equal(_outputs(a, df), _outputs(b, X2))
    _assert_identical_params(a, b)
    with pytest.raises(ValueError, match="feature names"):
        a.predict(df[df.columns[::-1]])
    # refitting on 3-D input forgets the column names
    a.fit(X2[:, :, None], y)
    assert not hasattr(a, "feature_names_in_")
    assert a.n_features_in_ == 1


# ---------------------------------------------------------------------------
# the dense head's products
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_head_runs_by_halves_on_one_blas_thread(monkeypatch, return_sequences, dtype):
    """The estimators' head multiplies through gemm_halves with BLAS held to one
    thread (numpy's ``@`` would wake its BLAS workers, which then spin beside the
    next kernel call), its weight gradients through head_weight_gradients (no
    BLAS), and gives the products that ``@`` gives."""
    from threadpoolctl import threadpool_limits

    from pylstm import _lstm, _threads
    from pylstm._network import SequenceNetwork

    kernel_libs = _threads._controller()
    if not kernel_libs or not kernel_libs[1]:
        pytest.skip("threadpoolctl does not see the kernels' BLAS")
    seen = []
    real = _lstm.gemm_halves

    def spy(*args):
        seen.append(max(lib.num_threads for lib in kernel_libs[1]))
        return real(*args)

    monkeypatch.setattr(_lstm, "gemm_halves", spy)
    rng = np.random.RandomState(0)
    # Each product 600 x 64 x 10 multiply-adds or more: enough for BLAS's threads.
    net = SequenceNetwork(3, 10, 64, 1, False, 0.0, return_sequences, dtype, rng)
    net.intercept[:] = rng.normal(size=10)
    X = rng.normal(size=(600, 7, 3)).astype(dtype)
    with threadpool_limits(limits=2, user_api="blas"):
        out = net.forward(X, np.full(600, 7), training=True)
        feats = net._cache["feats"]
        d_out = rng.normal(size=out.shape).astype(dtype)
        grads = net.backward(d_out)
        assert seen == [1, 1]  # the logits, the features' gradient
        # A product too small for BLAS's threads skips the switch to one.
        net.forward(X[:2], np.full(2, 7))
        assert seen[2:] == [2]
    # Another BLAS (NumPy's) makes the reference: equal to rounding.
    tol = ({"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32
           else {"rtol": 1e-12, "atol": 1e-12})
    np.testing.assert_allclose(out, feats @ net.coef + net.intercept, **tol)
    flat_f, flat_d = feats.reshape(-1, 64), d_out.reshape(-1, 10)
    np.testing.assert_allclose(grads[-2], flat_f.T @ flat_d, **tol)
    np.testing.assert_allclose(grads[-1], flat_d.sum(axis=0), **tol)
    assert grads[-2].dtype == grads[-1].dtype == dtype


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_first_layer_input_gradient_is_not_computed(monkeypatch, bidirectional, proj_size):
    """The network's backward skips the gradient of its input (the data), one
    pass over the gate gradients per direction, and its parameter gradients
    are the bits that the layers' full backward gives."""
    from pylstm import _layer
    from pylstm._network import SequenceNetwork

    rng = np.random.RandomState(0)
    X = rng.normal(size=(5, 4, 3))
    lengths = np.array([4, 2, 4, 3, 1])
    d_out = rng.normal(size=(5, 2))
    calls = []
    real_gradient = _layer._lstm.input_gradient

    def counted(*args, **kwargs):
        calls.append(args[1].shape)  # the direction's w_ih
        return real_gradient(*args, **kwargs)

    def run(net):
        net.forward(X, lengths, training=True)
        return net.backward(d_out)

    net = SequenceNetwork(3, 2, 5, 2, bidirectional, 0.0, False, np.float64,
                          np.random.RandomState(1), proj_size)
    monkeypatch.setattr(_layer._lstm, "input_gradient", counted)
    skipped = run(net)
    # Only the second layer's input gradient, once per direction.
    D = 2 if bidirectional else 1
    assert len(calls) == D
    assert all(shape[1] == D * (proj_size or 5) for shape in calls)
    real_backward = _layer.LSTM._backward
    monkeypatch.setattr(_layer.LSTM, "_backward",
                        lambda self, d, h, c, wanted, **kw: real_backward(self, d, h, c, True,
                                                                           **kw))
    full = run(net)
    assert len(calls) == 3 * D
    for a, b in zip(skipped, full, strict=True):
        np.testing.assert_array_equal(a, b)
