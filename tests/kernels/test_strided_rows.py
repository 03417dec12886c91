"""Per-step arrays given as views of wider rows (the layer's training layout).

In training the layer keeps each layer's input and the first direction's
h_{t-1} side by side, in one (N, I + H) array, so that the backward pass
makes both weight gradients with one GEMM (``dG^T [X | H_prev]``). The
kernels therefore take ``x``, ``h_prev_cache``, ``d_out`` and ``dx`` with any
row stride. These tests compare that layout with separate contiguous arrays:
the forward pass and the time loop of BPTT bit for bit, the weight and input
gradients to rounding (one GEMM against two); and views whose rows overlap or
are not contiguous are refused before any work.
"""

import numpy as np
import pytest

from pylstm import _lstm

TOL = {np.float32: 2e-6, np.float64: 1e-14}


def _close(a, b, dtype):
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype] * scale)


def _train_step(p, x, h_prev, d_out, dx, reverse, threads=1):
    """forward_train then backward on the given (possibly strided) arrays."""
    dtype = p["x"].dtype.type
    B, H = p["h0"].shape
    N, G = p["N"], 4 * H
    K = min(8, int(p["lengths"][0]))
    h, c = p["h0"].copy(), p["c0"].copy()
    out = np.zeros((N, H), dtype)
    gates = np.empty((N, G), dtype)
    c_cache = np.empty((N, H), dtype)
    xbuf = np.empty(K * B * x.shape[1], dtype)
    gbuf = np.empty(K * B * G, dtype)
    _lstm.forward_train(x, p["lengths"], p["w_ih"], p["w_hh"], p["w_hh_t"], p["bias"], h, c,
                        out, 0, reverse, xbuf, gbuf, gates, c_cache, h_prev, False, None,
                        threads)
    fwd = dict(out=out.copy(), h=h, c=c, gates=gates.copy(), c_cache=c_cache,
               h_prev=np.array(h_prev))
    dh, dc = p["dh"].copy(), p["dc"].copy()
    dw_ih, dw_hh = np.empty_like(p["w_ih"]), np.empty_like(p["w_hh"])
    db = np.empty(G, dtype)
    _lstm.backward(x, p["lengths"], p["w_ih"], p["w_hh"], p["c0"], gates, c_cache, h_prev,
                   d_out, 0, reverse, dh, dc, dx, 0.0, dw_ih, dw_hh, db,
                   np.empty((B, G), dtype), False, None, True, threads)
    bwd = dict(dh=dh, dc=dc, db=db, dG=gates, dw_ih=dw_ih, dw_hh=dw_hh, dx=np.array(dx))
    return fwd, bwd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("B", "T", "I", "H"), [(1, 7, 3, 5), (6, 9, 4, 8), (16, 12, 7, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_wide_rows_match_separate_arrays(dtype, reverse, B, T, I, H, threads, kernel_problem):
    p = kernel_problem(dtype, B, T, I, H, seed=B * 100 + H)
    N = p["N"]
    old = _lstm.set_split_thresholds(False)  # let threads=2 split these small calls
    try:
        ref_f, ref_b = _train_step(p, p["x"].copy(), np.empty((N, H), dtype),
                                   p["d_out"].copy(), np.empty((N, I), dtype), reverse, threads)
        # The layer's layout: x then h_prev in one row; d_out and dx as views too.
        xh = np.full((N, I + H), np.nan, dtype)
        xh[:, :I] = p["x"]
        d_wide = np.full((N, H + 3), np.nan, dtype)
        d_wide[:, 2:2 + H] = p["d_out"]
        dx_wide = np.full((N, I + 5), -7.0, dtype)
        f, b = _train_step(p, xh[:, :I], xh[:, I:], d_wide[:, 2:2 + H], dx_wide[:, 1:1 + I],
                           reverse, threads)
    finally:
        _lstm.set_split_thresholds(old)
    for name in ref_f:
        np.testing.assert_array_equal(f[name], ref_f[name], err_msg=name)
    for name in ("dh", "dc", "db", "dG"):
        np.testing.assert_array_equal(b[name], ref_b[name], err_msg=name)
    for name in ("dw_ih", "dw_hh", "dx"):
        _close(b[name], ref_b[name], dtype)
    # Nothing outside the views was written.
    assert np.all(dx_wide[:, 0] == -7.0) and np.all(dx_wide[:, 1 + I:] == -7.0)
    assert np.isnan(d_wide[:, :2]).all() and np.isnan(d_wide[:, 2 + H:]).all()


def test_wide_rows_against_numpy(kernel_problem):
    """The one-GEMM weight gradients equal dG^T X and dG^T H_prev."""
    p = kernel_problem(np.float64, 5, 6, 3, 4, seed=1)
    N, I, H = p["N"], 3, 4
    xh = np.empty((N, I + H))
    xh[:, :I] = p["x"]
    _, b = _train_step(p, xh[:, :I], xh[:, I:], p["d_out"], np.empty((N, I)), False)
    np.testing.assert_allclose(b["dw_ih"], b["dG"].T @ p["x"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b["dw_hh"], b["dG"].T @ xh[:, I:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b["dx"], b["dG"] @ p["w_ih"], rtol=1e-12, atol=1e-12)


def test_rows_must_be_contiguous_and_apart(kernel_problem):
    p = kernel_problem(np.float64, 3, 4, 4, 4, seed=2)
    N, H = p["N"], 4
    every_other = np.repeat(p["x"], 2, axis=1)[:, ::2]
    with pytest.raises(ValueError, match="x must have contiguous, non-overlapping rows"):
        _train_step(p, every_other, np.empty((N, H)), p["d_out"], np.empty((N, 4)), False)
    overlapping = np.lib.stride_tricks.as_strided(np.zeros(N + 8), shape=(N, H),
                                                  strides=(8, 8))
    with pytest.raises(ValueError, match="h_prev_cache must have contiguous"):
        _train_step(p, p["x"], overlapping, p["d_out"], np.empty((N, 4)), False)
