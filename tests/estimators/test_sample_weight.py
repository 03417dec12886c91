"""sample_weight and class_weight of LSTMClassifier and LSTMRegressor.

The loss of a batch is sum(w_i * loss_i) / sum(w_i) and the L2 penalty is
divided by sum(w_i) (scikit-learn's MLP), so zero weights act as removed
samples and integer weights as repetitions. That holds exactly, up to
rounding, when every epoch is one batch (batch_size >= n_samples): the two
fits then take the same steps from the same initial weights, and only the
order of the sums in a batch differs. Such comparisons run in float64 and
allow rtol 1e-9 (observed: about 1e-13 over the few epochs run here; a
longer fit amplifies rounding, see tests/estimators/test_estimator_checks.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from pylstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ESTIMATORS = [LSTMClassifier, LSTMRegressor]
N, T, F = 24, 5, 2
#: One full batch per epoch (batch_size >= every n_samples used here), float64.
FULL = {"hidden_size": 4, "max_iter": 6, "batch_size": 1000, "dtype": "float64",
        "random_state": 0, "alpha": 1e-3}
RTOL = 1e-9  # float64 rounding of differently ordered sums, amplified over 6 epochs


def _make_3d(n=N, t=T, seed=0):
    return np.random.default_rng(seed).standard_normal((n, t, F))


def _make_list(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(k), F)) for k in rng.integers(2, 8, n)]


def _make_X(kind, **kwargs):
    return _make_3d(**kwargs) if kind == "3d" else _make_list(**kwargs)


def _targets(X, Est, n_classes=3):
    s = np.array([np.asarray(x)[:, 0].sum() for x in X])
    if Est is LSTMRegressor:
        return s
    return np.arange(len(s)) % n_classes  # every class everywhere in the data


def _step_targets(X, Est):
    """Per-step targets (return_sequences): running sign / running sum of feature 0."""
    out = [np.cumsum(np.asarray(x)[:, 0]) for x in X]
    if Est is LSTMClassifier:
        out = [(o > 0).astype(np.int64) for o in out]
    return out if isinstance(X, list) else np.stack(out)


def _take(X, idx):
    return X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]


def _outputs(est, X):
    out = {"predict": est.predict(X), "transform": est.transform(X)}
    if hasattr(est, "predict_proba"):
        out["predict_proba"] = est.predict_proba(X)
    return out


def _assert_same_model(a, b, X, rtol=RTOL):
    """Same fitted weights and outputs, to rtol (0: bit for bit)."""
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=rtol)
    for p, q in zip(a.network_.parameters(), b.network_.parameters(), strict=True):
        np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * np.abs(p).max())
    oa, ob = _outputs(a, X), _outputs(b, X)
    for key in oa:
        if isinstance(oa[key], list):  # per-step outputs of ragged input
            oa[key], ob[key] = np.concatenate(oa[key]), np.concatenate(ob[key])
        if key == "predict" and isinstance(a, LSTMClassifier):
            np.testing.assert_array_equal(oa[key], ob[key])
        else:
            np.testing.assert_allclose(oa[key], ob[key], rtol=rtol, atol=1e-12, err_msg=key)


# ---------------------------------------------------------------------------
# zero weights, integer weights
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["3d", "list"])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_zero_weights_equal_removed_samples(Est, kind):
    X = _make_X(kind)
    y = _targets(X, Est)
    sw = np.ones(N)
    sw[[1, 4, 5, 11, 17]] = 0
    kept = np.flatnonzero(sw)
    weighted = Est(**FULL).fit(X, y, sample_weight=sw)
    removed = Est(**FULL).fit(_take(X, kept), y[kept])
    _assert_same_model(weighted, removed, X)


@pytest.mark.parametrize(("dtype", "rtol"), [("float64", RTOL), ("float32", 1e-4)])
@pytest.mark.parametrize("kind", ["3d", "list"])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_integer_weights_equal_repeated_samples(Est, kind, dtype, rtol):
    # float32, the default, to its own rounding amplified over 6 epochs (the
    # scikit-learn check asks for 1e-7: test_estimator_checks.py).
    X = _make_X(kind)
    y = _targets(X, Est)
    sw = np.random.default_rng(1).integers(0, 4, N)
    sw[:3] = 1  # every class keeps a sample
    rep = np.repeat(np.arange(N), sw)
    weighted = Est(**{**FULL, "dtype": dtype}).fit(X, y, sample_weight=sw)
    repeated = Est(**{**FULL, "dtype": dtype}).fit(_take(X, rep), y[rep])
    _assert_same_model(weighted, repeated, X, rtol=rtol)
    assert weighted.t_ == FULL["max_iter"] * N and repeated.t_ == FULL["max_iter"] * len(rep)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_return_sequences_weight_applies_to_every_step(Est):
    X = _make_list()
    Y = _step_targets(X, Est)
    sw = np.random.default_rng(2).integers(0, 3, N)
    sw[:2] = 1
    rep = np.repeat(np.arange(N), sw)
    kw = {**FULL, "return_sequences": True}
    weighted = Est(**kw).fit(X, Y, sample_weight=sw)
    repeated = Est(**kw).fit(_take(X, rep), _take(Y, rep))
    assert weighted.n_iter_ == repeated.n_iter_
    for p, q in zip(weighted.network_.parameters(), repeated.network_.parameters(),
                    strict=True):
        np.testing.assert_allclose(p, q, rtol=RTOL, atol=RTOL * np.abs(p).max())
    # score: each sequence's weight on each of its steps, as repetition would
    np.testing.assert_allclose(weighted.score(X, Y, sample_weight=sw),
                               weighted.score(_take(X, rep), _take(Y, rep)), rtol=1e-12)


def test_zero_weight_batch_is_skipped():
    # shuffle=False: the zero-weighted first batch is skipped, so the fit makes
    # the very same updates as a fit without those samples, bit for bit.
    X = _make_3d(n=30)
    y = np.arange(30) % 2
    sw = np.ones(30)
    sw[:10] = 0
    kw = {**FULL, "batch_size": 10, "shuffle": False}
    weighted = LSTMClassifier(**kw).fit(X, y, sample_weight=sw)
    removed = LSTMClassifier(**kw).fit(X[10:], y[10:])
    _assert_same_model(weighted, removed, X, rtol=0)
    assert weighted.t_ == removed.t_ == 20 * FULL["max_iter"]


@settings(max_examples=10, deadline=None)
# No subnormal weights: scaling those by 2**k would round.
@given(weights=st.lists(st.one_of(st.just(0.0), st.floats(0.01, 10.0)), min_size=16,
                        max_size=16).filter(any),
       exponent=st.integers(-20, 20), batch_size=st.integers(1, 16))
def test_scaling_all_weights_by_a_power_of_two_changes_nothing(weights, exponent, batch_size):
    # Without the penalty (which is divided by the total weight, as a larger
    # data set would have it), the loss depends only on the weights' ratios,
    # whatever the batches; scaling by 2**k rounds alike: bit-identical models.
    X = _make_3d(n=16)
    y = X[:, :, 0].sum(axis=1)
    sw = np.array(weights)
    kw = {**FULL, "alpha": 0.0, "max_iter": 3, "batch_size": batch_size}
    a = LSTMRegressor(**kw).fit(X, y, sample_weight=sw)
    b = LSTMRegressor(**kw).fit(X, y, sample_weight=sw * 2.0**exponent)
    _assert_same_model(a, b, X, rtol=0)


@settings(max_examples=8, deadline=None)
@given(weights=st.lists(st.integers(0, 3), min_size=12, max_size=12),
       seed=st.integers(0, 2**16))
def test_integer_weights_as_repetitions_property(weights, seed):
    sw = np.array(weights)
    sw[:2] = np.maximum(sw[:2], 1)  # both classes keep weight
    X = _make_3d(n=12, seed=seed)
    y = np.arange(12) % 2
    rep = np.repeat(np.arange(12), sw)
    kw = {**FULL, "max_iter": 3}
    weighted = LSTMClassifier(**kw).fit(X, y, sample_weight=sw)
    repeated = LSTMClassifier(**kw).fit(X[rep], y[rep])
    _assert_same_model(weighted, repeated, X)


def test_no_weights_equal_unit_weights_bit_for_bit():
    X = _make_list()
    for Est in ESTIMATORS:
        y = _targets(X, Est)
        kw = {**FULL, "batch_size": 5, "dtype": "float32"}
        _assert_same_model(Est(**kw).fit(X, y), Est(**kw).fit(X, y, sample_weight=np.ones(N)),
                           X, rtol=0)


# ---------------------------------------------------------------------------
# partial_fit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_partial_fit_with_weights_equals_repetition(Est):
    X = _make_3d()
    y = _targets(X, Est)
    sw = np.random.default_rng(3).integers(0, 4, N)
    rep = np.repeat(np.arange(N), sw)
    extra = {"classes": [0, 1, 2]} if Est is LSTMClassifier else {}
    weighted, repeated = Est(**FULL), Est(**FULL)
    for _ in range(3):
        weighted.partial_fit(X, y, sample_weight=sw, **extra)
        repeated.partial_fit(X[rep], y[rep], **extra)
    _assert_same_model(weighted, repeated, X)


def test_classifier_partial_fit_keeps_classes_before_sample_weight():
    X = _make_3d()
    y = _targets(X, LSTMClassifier)
    sw = np.linspace(0.5, 2.0, N)
    a = LSTMClassifier(**FULL).partial_fit(X, y, [0, 1, 2], sw)
    b = LSTMClassifier(**FULL).partial_fit(X, y, classes=[0, 1, 2], sample_weight=sw)
    _assert_same_model(a, b, X, rtol=0)


def test_partial_fit_class_weight_dict_and_balanced_refused():
    X = _make_3d()
    y = _targets(X, LSTMClassifier)
    cw = {0: 2.0, 1: 0.5, 2: 1.0}
    a = LSTMClassifier(**FULL, class_weight=cw).partial_fit(X, y, classes=[0, 1, 2])
    b = LSTMClassifier(**FULL).partial_fit(X, y, classes=[0, 1, 2],
                                           sample_weight=np.array([cw[k] for k in y]))
    _assert_same_model(a, b, X, rtol=0)
    with pytest.raises(ValueError, match="class_weight='balanced' is not supported by "
                                         "partial_fit.*compute_class_weight"):
        LSTMClassifier(**FULL, class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])


# ---------------------------------------------------------------------------
# class_weight
# ---------------------------------------------------------------------------


def _imbalanced(n=N):
    X = _make_3d(n=n)
    y = np.where(np.arange(n) % 4 == 0, "rare", "common")
    return X, y


def test_class_weight_balanced_equals_its_sample_weight():
    X, y = _imbalanced()
    classes = np.unique(y)
    balanced = LSTMClassifier(**FULL, class_weight="balanced").fit(X, y)
    cw = compute_class_weight("balanced", classes=classes, y=y)
    manual = LSTMClassifier(**FULL).fit(X, y, sample_weight=cw[np.searchsorted(classes, y)])
    _assert_same_model(balanced, manual, X, rtol=0)
    # with sample weights: the balanced weights count them, and multiply them
    sw = np.linspace(0.2, 3.0, N)
    balanced = LSTMClassifier(**FULL, class_weight="balanced").fit(X, y, sample_weight=sw)
    cw = compute_class_weight("balanced", classes=classes, y=y, sample_weight=sw)
    manual = LSTMClassifier(**FULL).fit(X, y,
                                        sample_weight=sw * cw[np.searchsorted(classes, y)])
    _assert_same_model(balanced, manual, X, rtol=0)


def test_class_weight_balanced_ignores_zero_weighted_samples():
    # Zero weights remove samples from the class counts too.
    X, y = _imbalanced()
    sw = np.ones(N)
    sw[[1, 2, 3, 5]] = 0
    kept = np.flatnonzero(sw)
    a = LSTMClassifier(**FULL, class_weight="balanced").fit(X, y, sample_weight=sw)
    b = LSTMClassifier(**FULL, class_weight="balanced").fit(X[kept], y[kept])
    _assert_same_model(a, b, X)


def test_class_weight_dict_multiplies_sample_weight():
    X, y = _imbalanced()
    sw = np.linspace(0.5, 1.5, N)
    a = LSTMClassifier(**FULL, class_weight={"rare": 3}).fit(X, y, sample_weight=sw)
    b = LSTMClassifier(**FULL).fit(X, y, sample_weight=sw * np.where(y == "rare", 3, 1))
    _assert_same_model(a, b, X, rtol=0)


def test_class_weight_per_step_with_return_sequences():
    X = _make_list()
    Y = _step_targets(X, LSTMClassifier)
    flat = np.concatenate(Y)
    cw = compute_class_weight("balanced", classes=np.array([0, 1]), y=flat)
    kw = {**FULL, "return_sequences": True}
    a = LSTMClassifier(**kw, class_weight="balanced").fit(X, Y)
    b = LSTMClassifier(**kw, class_weight={0: cw[0], 1: cw[1]}).fit(X, Y)
    _assert_same_model(a, b, X, rtol=0)
    c = LSTMClassifier(**kw).fit(X, Y)
    assert not np.array_equal(a.network_.coef, c.network_.coef)


@pytest.mark.parametrize(("class_weight", "message"), [
    ({0: 1.0, 7: 2.0}, r"The classes, \[1, 2\], are not in class_weight"),
    ({"a": 1.0}, r"are not in class_weight"),
    ({0: -1.0}, r"class_weight\[0\] must be a finite number >= 0"),
    ({0: np.nan}, r"class_weight\[0\] must be a finite number >= 0"),
    ({0: "2"}, r"class_weight\[0\] must be a finite number >= 0"),
    ("auto", "class_weight must be None, 'balanced' or a dict"),
    ([1.0, 2.0, 3.0], "class_weight must be None, 'balanced' or a dict"),
    ({0: 0.0, 1: 0.0, 2: 0.0}, "all zero"),
    ({0: 0.0, 1: 0.0}, r"at least 2 classes with non-zero weight .*only class \[2\]"),
])
def test_class_weight_errors(class_weight, message):
    X = _make_3d()
    y = _targets(X, LSTMClassifier)
    est = LSTMClassifier(**FULL, class_weight=class_weight)
    with pytest.raises(ValueError, match=message):
        est.fit(X, y)
    assert not hasattr(est, "network_")


def test_class_weight_in_get_params_and_clone():
    from sklearn.base import clone
    cw = {0: 2.0, 1: 1.0}
    est = LSTMClassifier(class_weight=cw)
    assert est.get_params()["class_weight"] is cw
    assert clone(est).get_params()["class_weight"] == cw
    assert "class_weight" not in LSTMRegressor().get_params()


# ---------------------------------------------------------------------------
# validation of sample_weight
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("sample_weight", "message"), [
    (np.ones(N + 1), r"sample_weight.shape == \(25,\), expected \(24,\)"),
    (np.ones((N, 2)), "Sample weights must be 1D"),
    (np.r_[-1.0, np.ones(N - 1)], "Negative values in data passed to `sample_weight`"),
    (np.r_[np.nan, np.ones(N - 1)], "sample_weight contains NaN"),
    (np.r_[np.inf, np.ones(N - 1)], "sample_weight contains infinity"),
    (np.zeros(N), "Sample weights must contain at least one non-zero number"),
    (np.array(["a"] * N), "could not convert|dtype"),
])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_invalid_sample_weight_is_refused_before_training(Est, sample_weight, message):
    X = _make_3d()
    y = _targets(X, Est)
    est = Est(**FULL)
    with pytest.raises(ValueError, match=message):
        est.fit(X, y, sample_weight=sample_weight)
    assert not hasattr(est, "network_")
    # a fitted model is left exactly as it was
    est.fit(X, y)
    before = [p.copy() for p in est.network_.parameters()]
    extra = {"classes": [0, 1, 2]} if Est is LSTMClassifier else {}
    with pytest.raises(ValueError, match=message):
        est.partial_fit(X, y, sample_weight=sample_weight, **extra)
    assert est.n_iter_ == FULL["max_iter"]
    for p, q in zip(before, est.network_.parameters(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_weights_leaving_one_class_are_refused_by_fit():
    X = _make_3d()
    y = np.arange(N) % 2
    with pytest.raises(ValueError, match=r"at least 2 classes with non-zero weight"):
        LSTMClassifier(**FULL).fit(X, y, sample_weight=(y == 1).astype(float))
    # partial_fit takes its classes from `classes`: one class per call is fine
    LSTMClassifier(**FULL).partial_fit(X, y, classes=[0, 1],
                                       sample_weight=(y == 1).astype(float))


def test_sample_weight_is_not_modified():
    X, y = _imbalanced()
    sw = np.linspace(0.0, 2.0, N)
    copy = sw.copy()
    LSTMClassifier(**FULL, class_weight="balanced", early_stopping=True,
                   validation_fraction=0.25).fit(X, y, sample_weight=sw)
    np.testing.assert_array_equal(sw, copy)


# ---------------------------------------------------------------------------
# early stopping
# ---------------------------------------------------------------------------


def _held_out(est, X, y):
    """The validation indices of _split_validation (see _estimators.py)."""
    n = len(y)
    n_val = max(1, int(round(est.validation_fraction * n)))
    stratify = y if isinstance(est, LSTMClassifier) and not est.return_sequences else None
    rs = np.random.RandomState([est._seed, 2**20])  # noqa: NPY002
    _, val = train_test_split(np.arange(n), test_size=n_val, random_state=rs,
                              stratify=stratify)
    return val


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("Est", ESTIMATORS)
def test_early_stopping_scores_the_held_out_part_with_its_weights(Est, return_sequences):
    X = _make_3d(n=60)
    y = _step_targets(X, Est) if return_sequences else _targets(X, Est)
    sw = np.random.default_rng(4).uniform(0.0, 3.0, 60)
    est = Est(hidden_size=6, learning_rate_init=0.05, max_iter=15, early_stopping=True,
              validation_fraction=0.25, n_iter_no_change=3, random_state=0,
              dtype="float64", return_sequences=return_sequences)
    est.fit(X, y, sample_weight=sw)
    val = _held_out(est, X, y if not return_sequences else np.zeros(60))
    weighted = est.score(X[val], y[val], sample_weight=sw[val])
    assert weighted == pytest.approx(est.best_validation_score_, rel=1e-12, abs=1e-12)
    unweighted = est.score(X[val], y[val])
    if unweighted < 1:  # else both are 1
        assert weighted != pytest.approx(unweighted, rel=1e-6)


def test_early_stopping_uses_class_weight_in_the_validation_score():
    X, y = _imbalanced(n=60)
    est = LSTMClassifier(hidden_size=6, learning_rate_init=0.05, max_iter=10,
                         early_stopping=True, validation_fraction=0.25, random_state=0,
                         dtype="float64", class_weight={"rare": 5.0}).fit(X, y)
    val = _held_out(est, X, np.searchsorted(est.classes_, y))
    w = np.where(y[val] == "rare", 5.0, 1.0)
    assert est.score(X[val], y[val], sample_weight=w) == pytest.approx(
        est.best_validation_score_, rel=1e-12)


def test_early_stopping_refuses_a_part_without_weight():
    X = _make_3d(n=40)
    y = np.arange(40) % 2
    probe = LSTMClassifier(**{**FULL, "max_iter": 1}, early_stopping=True,
                           validation_fraction=0.25)
    probe.fit(X, y)
    val = _held_out(probe, X, y)
    sw = np.ones(40)
    sw[val] = 0
    with pytest.raises(ValueError, match="validation part of the data has only zero sample "
                                         "weights"):
        LSTMClassifier(**FULL, early_stopping=True, validation_fraction=0.25).fit(
            X, y, sample_weight=sw)
