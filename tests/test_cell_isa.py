"""The AVX-512 cell (``src/_cell512.h``) against the C cell of ``src/_cell.h``.

Both evaluate the same formulas in the same order; they agree to the last
bit except where an exponential is clamped (an argument beyond +-87 in
float32, +-708 in float64), where values near the smallest normal number may
differ in their last place.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylstm import LSTM, _lstm

pytestmark = pytest.mark.skipif(not _lstm.cell512_available(),
                                reason="the CPU has no AVX-512")


@pytest.fixture(autouse=True)
def _restore_cell():
    old = _lstm.set_cell512(True)
    yield
    _lstm.set_cell512(old)


def _run(layer, X, lengths, cell512):
    _lstm.set_cell512(cell512)
    inf = layer.forward(X, lengths=lengths, training=False)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=True)
    dX, grads = layer.backward(np.cos(out) + 0.5)
    return [inf[0], *inf[1], out, h_n, c_n, dX, *(grads[k] for k in sorted(grads))]


def test_switch_reports_and_restores():
    assert _lstm.set_cell512(False) is True
    assert _lstm.set_cell512(True) is False
    assert _lstm.set_cell512(True) is True


@settings(max_examples=40, deadline=None, database=None)
@given(B=st.integers(1, 5), T=st.integers(1, 6), n_in=st.integers(1, 6),
       H=st.integers(1, 40), bidirectional=st.booleans(), variable=st.booleans(),
       scale=st.sampled_from([0.1, 1.0, 5.0]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_bit_identical_to_the_c_cell(B, T, n_in, H, bidirectional, variable, scale, dtype,
                                     seed):
    # H up to 40: whole vectors (16 float32, 8 float64 units) and a partial one.
    rng = np.random.default_rng(seed)
    layer = LSTM(n_in, H, bidirectional=bidirectional, dtype=dtype, random_state=seed % 1000)
    X = (scale * rng.standard_normal((B, T, n_in))).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if variable else None
    fast = _run(layer, X, lengths, True)
    plain = _run(layer, X, lengths, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_two_thread_split_identical(threads, dtype):
    # H = 40: split by rows, whole rows of 40 units end in a partial vector.
    from threadpoolctl import threadpool_limits

    layer = LSTM(7, 40, dtype=dtype, random_state=1)
    X = np.random.default_rng(2).standard_normal((64, 9, 7)).astype(dtype)
    with threadpool_limits(threads):
        fast = _run(layer, X, None, True)
        plain = _run(layer, X, None, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("dtype", "scale", "atol"),
                         [(np.float32, 1e3, 1e-37), (np.float64, 1e4, 1e-300)])
def test_saturated_gates_agree_near_the_smallest_normal(dtype, scale, atol):
    # Pre-activations far beyond the clamp (+-87 in float32, +-708 in
    # float64): gates are 0 or 1 up to values near the smallest normal number.
    layer = LSTM(3, 20, dtype=dtype, random_state=0)
    X = (scale * np.random.default_rng(0).standard_normal((4, 6, 3))).astype(dtype)
    fast = _run(layer, X, None, True)
    plain = _run(layer, X, None, False)
    for a, b in zip(fast, plain, strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-14,
                                   atol=atol)
