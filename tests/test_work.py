"""The kernels' scratch taken from a caller-kept ``work`` array.

Every kernel call needs scratch of about the size of the weights: packed
copies of W_hh and W_ih, the fused weight gradient of the backward pass,
the alternate state of a two-thread loop. Allocated on every call, blocks of
that size come from newly mapped pages, and their page faults cost up to a
third of a small call. The layer therefore keeps one ``work`` array per
layer direction (``_lstm.work_size`` elements) and passes it to each kernel.
These tests check that results do not depend on where the scratch lies,
that nothing is written past ``work_size`` elements, that a short array
falls back to allocating, and that the layer passes its array.
"""

import numpy as np
import pytest

from pylstm import LSTM, _lstm

CASES = [(1, 9, 3, 32), (8, 6, 5, 16), (16, 12, 7, 64)]


def _kernels(p, work, reverse, threads):
    """forward_train, backward (fused weight gradient), input_gradient and
    forward_infer, each given ``work``; returns every array they wrote."""
    dtype = p["x"].dtype.type
    B, H = p["h0"].shape
    N, I, G = p["N"], p["I"], 4 * p["H"]
    K = min(4, int(p["lengths"][0]))
    xh = np.empty((N, I + H), dtype)  # x, then h_{t-1}: the fused layout
    xh[:, :I] = p["x"]
    x, h_prev = xh[:, :I], xh[:, I:]
    h, c = p["h0"].copy(), p["c0"].copy()
    out = np.zeros((N, H), dtype)
    gates = np.empty((N, G), dtype)
    c_cache = np.empty((N, H), dtype)
    xbuf, gbuf = np.empty(K * B * I, dtype), np.empty(K * B * G, dtype)
    r = {}
    r["threads_fwd"] = _lstm.forward_train(
        x, p["lengths"], p["w_ih"], p["w_hh"], p["w_hh_t"], p["bias"], h, c, out, 0, reverse,
        xbuf, gbuf, gates, c_cache, h_prev, False, None, threads, work)
    r.update(out=out.copy(), h=h, c=c, gates=gates.copy(), c_cache=c_cache.copy())
    dh, dc = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    dw_ih, dw_hh = np.empty_like(p["w_ih"]), np.empty_like(p["w_hh"])
    db = np.empty(G, dtype)
    r["threads_bwd"] = _lstm.backward(
        x, p["lengths"], p["w_ih"], p["w_hh"], p["c0"], gates, c_cache, h_prev, p["d_out"],
        0, reverse, dh, dc, x, 0.0, dw_ih, dw_hh, db, np.empty((B, G), dtype), False, None,
        False, threads, work)
    dx = np.empty((N, I), dtype)
    _lstm.input_gradient(gates, p["w_ih"], dx, 0.0, threads, work)
    r.update(dh=dh, dc=dc, dw_ih=dw_ih, dw_hh=dw_hh, db=db, dG=gates, dx=dx)
    h, c = p["h0"].copy(), p["c0"].copy()
    out = np.zeros((N, H), dtype)
    _lstm.forward_infer(p["x"], p["lengths"], p["w_ih"], p["w_hh"], p["w_hh_t"], p["bias"],
                        h, c, out, 0, reverse, xbuf, gbuf, False, False, None, threads, None,
                        work)
    r.update(infer_out=out, infer_h=h, infer_c=c)
    return r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("B", "T", "I", "H"), CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_the_scratch(dtype, reverse, B, T, I, H, threads,
                                              kernel_problem):
    p = kernel_problem(dtype, B, T, I, H, seed=B * 10 + H)
    size = _lstm.work_size(I, H, B, dtype)
    old = _lstm.set_split_thresholds(False)  # let threads=2 split these small calls
    try:
        ref = _kernels(p, None, reverse, threads)
        # NaN everywhere: scratch is written before it is read; 40 more
        # elements past work_size must stay untouched.
        work = np.full(size + 40, np.nan, dtype)
        got = _kernels(p, work, reverse, threads)
        short = _kernels(p, np.full(size // 3, np.nan, dtype), reverse, threads)
        empty = _kernels(p, np.empty(0, dtype), reverse, threads)
    finally:
        _lstm.set_split_thresholds(old)
    for name in ref:
        for other in (got, short, empty):
            np.testing.assert_array_equal(other[name], ref[name], err_msg=name)
    assert np.isnan(work[size:]).all()
    assert not np.isnan(work[:size]).all()  # the kernels did take their scratch here
    np.testing.assert_array_equal(got["infer_out"], got["out"])


def test_work_size_covers_the_weights():
    for dtype, itemsize in ((np.float32, 4), (np.float64, 8)):
        for I, H, B in ((3, 4, 1), (64, 128, 32), (7, 33, 5)):
            size = _lstm.work_size(I, H, B, dtype)
            assert size >= 4 * H * (I + H) + B * 4 * H
            # at most one padded copy of the weights more, plus alignment
            assert size <= 2 * 4 * H * (I + H) + B * 4 * H + 4 * H * 64 + 256 // itemsize


@pytest.mark.parametrize("training", [True, False])
def test_layer_keeps_one_work_array_per_direction(training):
    layer = LSTM(5, 16, num_layers=2, bidirectional=True, random_state=0)
    X = np.random.default_rng(0).normal(size=(8, 40, 5))
    out, _ = layer.forward(X, training=training)
    if training:
        layer.backward(np.ones_like(out))
    names = sorted(n for n in layer._workspace._buffers if n.startswith("work"))
    assert names == ["work0", "work1", "work2", "work3"]
    for k, name in enumerate(names):
        n_in = 5 if k < 2 else 32
        size = layer._workspace._buffers[name].size
        if training:
            assert size >= _lstm.work_size(n_in, 16, 8, np.float32)
        else:  # the packs are in the inference cache: only the alternate state here
            assert f"packs{k}" in layer._workspace._buffers
            assert 8 * 16 <= size < _lstm.work_size(n_in, 16, 8, np.float32)
    # Same results from a layer whose arrays are fresh.
    fresh = LSTM(5, 16, num_layers=2, bidirectional=True, random_state=0)
    np.testing.assert_array_equal(layer.forward(X, training=training)[0],
                                  fresh.forward(X, training=training)[0])
