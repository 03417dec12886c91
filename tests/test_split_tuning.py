"""The two-thread split of small calls, chosen by measurement (``_lstm``).

Whether two threads pay on a small step depends on how fast the two cores
exchange h_t at that moment (on a VM, where the host placed the vCPUs), so
for small steps the kernels time a few calls each way and keep the faster.
These tests drive the choice with fed timings, and check that results do
not depend on it.
"""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import LSTM, _lstm

KEY = ("test", 8, 16, 4, True)


@pytest.fixture(autouse=True)
def _fresh_table():
    old = _lstm.set_split_tuning(True, valid_seconds=60)
    yield
    _lstm.set_split_tuning(old, valid_seconds=2)


def _explore(split_ns, single_ns):
    """Run the exploration: five calls split, five not, fed these timings."""
    for _ in range(5):
        assert _lstm._tune_choice(KEY, 1e4) == 2
        _lstm._tune_feed(KEY, 2, split_ns)
    for _ in range(5):
        assert _lstm._tune_choice(KEY, 1e4) == 1
        _lstm._tune_feed(KEY, 1, single_ns)
    return _lstm._tune_choice(KEY, 1e4)


def test_the_faster_way_is_kept():
    assert _explore(split_ns=300.0, single_ns=1000.0) == 2
    for _ in range(5):  # it stands while valid; further timings are not taken
        _lstm._tune_feed(KEY, 2, 10**9)
        assert _lstm._tune_choice(KEY, 1e4) == 2


def test_a_slow_split_is_dropped():
    assert _explore(split_ns=3400.0, single_ns=1300.0) == 1
    assert _lstm._tune_choice(KEY, 1e4) == 1


def test_a_split_about_as_fast_is_kept():
    # Within 10%: the split stays (its first calls also warm the worker's cache).
    assert _explore(split_ns=1050.0, single_ns=1000.0) == 2


def test_the_best_sample_counts():
    # Slow samples (a cold worker, a preempted call) do not decide.
    for ns in (3300.0, 1900.0, 900.0, 5000.0, 950.0):
        _lstm._tune_choice(KEY, 1e4)
        _lstm._tune_feed(KEY, 2, ns)
    for ns in (1000.0, 1100.0, 400.0, 1200.0, 1000.0):
        _lstm._tune_choice(KEY, 1e4)
        _lstm._tune_feed(KEY, 1, ns)
    assert _lstm._tune_choice(KEY, 1e4) == 1


def test_a_choice_expires():
    _lstm.set_split_tuning(True, valid_seconds=0)
    assert _explore(split_ns=3400.0, single_ns=1300.0) == 1
    assert _lstm._tune_choice(KEY, 1e4) == 2  # expired: timed again, split first


def test_large_steps_and_switched_off_keep_the_thresholds():
    assert _lstm._tune_choice(KEY, 1e8) == 0
    old = _lstm.set_split_thresholds(False)
    try:
        assert _lstm._tune_choice(KEY, 1e4) == 0
    finally:
        _lstm.set_split_thresholds(old)
    _lstm.set_split_tuning(False)
    assert _lstm._tune_choice(KEY, 1e4) == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_the_choice(dtype):
    """Ten training steps at two threads while the choice is explored (both
    ways) and made, against the same steps with the thresholds alone."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 30, 8)).astype(dtype)
    d = rng.normal(size=(16, 30, 64)).astype(dtype)

    def run(tuning):
        _lstm.set_split_tuning(tuning, valid_seconds=60)
        layer = LSTM(8, 64, dtype=dtype, random_state=0)
        outs = []
        with threadpool_limits(2):
            for _ in range(10):
                out, _ = layer.forward(X, training=True)
                dX, grads = layer.backward(d)
                outs.append((out, dX, grads["weight_hh_l0"].copy()))
        return outs

    for a, b in zip(run(True), run(False), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
