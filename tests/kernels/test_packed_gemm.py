"""The packed-weight GEMM of the time loop (src/_kernels.c) against the BLAS path.

At every SIMD level the kernels multiply the per-step rows by a copy of W_hh packed
once per call; ``pylstm._lstm.set_packed_gemm(False)`` makes them call BLAS
for every step instead. Both must give the same results to rounding, for
every shape (tails of the 8-row and 32/16-column tiles, the one-row
product), variable lengths,
both directions and both dtypes; the torch parity and gradient checks run
with the default (packed where available).
"""

import numpy as np
import pytest

from pylstm import LSTM, _lstm

TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture
def restore_packed_setting():
    """Leave the packed-GEMM setting as it was before the test."""
    old = _lstm.set_packed_gemm(True)
    yield
    _lstm.set_packed_gemm(old)


def _step(layer, X, lengths):
    out, (h, c) = layer.forward(X, lengths=lengths, training=True)
    d_out = np.random.default_rng(5).normal(size=out.shape).astype(layer.dtype)
    dX, grads = layer.backward(d_out)
    return [out, h, c, dX] + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("B", "H", "var", "bidi"), [
    (1, 40, False, False),     # the one-row product
    (1, 9, False, True),
    (10, 16, True, True),      # the active rows fall from 10 through 2-7 (BLAS) to 1
    (8, 32, False, False),     # one full row tile, full column panels
    (9, 5, True, True),        # row tail of 1, column tail (4H = 20)
    (23, 40, True, False),     # shrinking active prefix crosses 8 and goes below
    (32, 64, False, True),
    (64, 33, True, True),      # 4H = 132: a 4-column tail in float32
])
def test_packed_equals_blas(restore_packed_setting, dtype, B, H, var, bidi):
    rng = np.random.default_rng(B * 100 + H)
    T, n_in = 13, 7
    X = rng.normal(size=(B, T, n_in)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if var else None
    layer = LSTM(n_in, H, num_layers=2, bidirectional=bidi, dtype=dtype, random_state=0)
    results = []
    for packed in (False, True):
        _lstm.set_packed_gemm(packed)
        results.append(_step(layer, X, lengths))
    for a, b in zip(*results, strict=True):
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype] * scale)
    # The switch really changes the path: without packing, steps of two or
    # more rows go through BLAS (and need the transposed copy of W_hh).
    full = np.full(max(B, 2), T, dtype=np.intc)
    _lstm.set_packed_gemm(False)
    assert _lstm.needs_w_hh_t(full)
    _lstm.set_packed_gemm(True)
    assert not _lstm.needs_w_hh_t(full) or max(B, 2) < 8


def test_switch_returns_the_old_setting(restore_packed_setting):
    assert _lstm.set_packed_gemm(False) is True
    assert _lstm.set_packed_gemm(True) is False
    assert _lstm.set_packed_gemm(True) is True


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("N", "G", "I"), [
    (5, 32, 3),        # fewer rows than a tile: BLAS
    (8, 32, 3),        # one row tile, a column tail
    (37, 256, 33),     # row and column tails
    (20, 2048, 64),    # W_ih over 256 KiB in float32 too: BLAS
])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_input_gradient_packed_equals_blas(restore_packed_setting, dtype, N, G, I, beta):
    """``input_gradient`` packs W_ih while it is small; both paths agree, in place too."""
    rng = np.random.default_rng(N + G)
    gates = rng.normal(size=(N, G)).astype(dtype)
    w_ih = rng.normal(size=(G, I)).astype(dtype)
    start = rng.normal(size=(N, I + 4)).astype(dtype)
    results = []
    for packed in (True, False):
        _lstm.set_packed_gemm(packed)
        wide = start.copy()
        _lstm.input_gradient(gates, w_ih, wide[:, 2:2 + I], beta)
        np.testing.assert_array_equal(wide[:, :2], start[:, :2])
        np.testing.assert_array_equal(wide[:, 2 + I:], start[:, 2 + I:])
        results.append(wide[:, 2:2 + I])
    expected = gates.astype(np.float64) @ w_ih + beta * start[:, 2:2 + I]
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=TOL[dtype] * np.abs(expected).max())
