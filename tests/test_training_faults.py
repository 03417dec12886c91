"""Interrupted training, memory estimates and non-finite losses during fit."""

import warnings

import numpy as np
import pytest

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
