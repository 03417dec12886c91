"""Interrupted training, memory estimates and non-finite losses during fit."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import pylstm._estimators as estimators_module
from pylstm import LSTMClassifier, LSTMRegressor
from pylstm._network import SequenceNetwork


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6, 2))
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    return X, y


def test_keyboard_interrupt_keeps_last_completed_epoch(monkeypatch):
    X, y = _data()
    reference = LSTMClassifier(hidden_size=6, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(X, y)

    calls = {"n": 0}
    original = SequenceNetwork.backward
    batches_per_epoch = int(np.ceil(60 / 32))

    def interrupting_backward(self, d_output):
        calls["n"] += 1
        if calls["n"] == 2 * batches_per_epoch + 1:  # first batch of epoch 3
            raise KeyboardInterrupt
        return original(self, d_output)

    monkeypatch.setattr(SequenceNetwork, "backward", interrupting_backward)
    clf = LSTMClassifier(hidden_size=6, max_iter=5, random_state=0)
    with pytest.warns(UserWarning, match="interrupted during epoch 3"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2
    assert clf.t_ == reference.t_
    for p, q in zip(clf.network_.parameters(), reference.network_.parameters(), strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(clf.predict_proba(X), reference.predict_proba(X))
    monkeypatch.setattr(SequenceNetwork, "backward", original)
    clf.partial_fit(X, y)  # still usable: training continues
    assert clf.n_iter_ == 3


def test_batch_too_large_for_memory_fails_early(monkeypatch):
    X, y = _data()
    monkeypatch.setattr(estimators_module, "_available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="partial_fit"):
        LSTMRegressor(hidden_size=8, max_iter=1).fit(X, y.astype(float))


@pytest.mark.filterwarnings("ignore:the training loss grew:RuntimeWarning")  # on its way
def test_non_finite_loss_names_epoch_and_keeps_finite_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5, 1))
    y = rng.normal(size=30) * 1e6
    reg = LSTMRegressor(hidden_size=4, learning_rate_init=1e12, clip_norm=None, solver="sgd",
                        momentum=0.0, max_iter=50, n_iter_no_change=100, random_state=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                  match=r"epoch \d+.*learning_rate_init"):
        reg.fit(X, y)
    assert all(np.isfinite(p).all() for p in reg.network_.parameters())


def test_partial_fit_rejects_changed_classes():
    X, y = _data()
    clf = LSTMClassifier(hidden_size=4, random_state=0).partial_fit(X, y, classes=[0, 1])
    clf.partial_fit(X, y, classes=[0, 1])  # the same classes again are fine
    with pytest.raises(ValueError, match="differs from the classes"):
        clf.partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_diverging_sgd_warns_naming_the_learning_rate(Est):
    X, y = _data()
    # float64: the loss grows a long way and stays finite (float32 overflows to
    # inf and raises, test_float32_overflow_rolls_back_to_finite_weights).
    est = Est(hidden_size=3, max_iter=5, solver="sgd", learning_rate_init=1e30,
              random_state=0, dtype="float64")
    with np.errstate(all="ignore"), pytest.warns(
            RuntimeWarning, match=r"training loss grew from .* \(first batch\) to .* "
                                  r"\(epoch \d\).*learning_rate_init \(now 1e\+30\)"):
        est.fit(X, y if Est is LSTMClassifier else y.astype(float))


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_converging_fit_does_not_warn_of_divergence(Est):
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        Est(hidden_size=4, max_iter=5, solver="sgd", random_state=0).fit(X, y)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("solver", ["adam", "sgd", "rmsprop"])
def test_float32_overflow_rolls_back_to_finite_weights(solver, num_layers):
    X, y = _data()
    reg = LSTMRegressor(hidden_size=4, num_layers=num_layers, learning_rate_init=1e300,
                        solver=solver, max_iter=5, dtype="float32", random_state=0)
    with np.errstate(all="ignore"), pytest.raises(
            FloatingPointError, match=r"epoch 1.*learning_rate_init.*last completed epoch"):
        reg.fit(X, y.astype(float))
    # The weights of the last completed epoch (here the initial ones), and usable.
    assert all(np.isfinite(p).all() for p in reg.network_.parameters())
    assert reg.n_iter_ == 0 and reg.loss_curve_ == []
    assert np.isfinite(reg.predict(X)).all()
