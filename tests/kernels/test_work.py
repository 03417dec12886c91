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


def _kernels(p, work, reverse, threads, fuse=True, grads_in_work=False):
    """forward_train, backward (fused weight gradient unless not ``fuse``),
    input_gradient and forward_infer, each given ``work``; returns every
    array they wrote. With ``grads_in_work`` the weight gradients are views
    of the head of ``work`` (as :func:`pylstm._lstm.gradient_work_size`
    allows), and input_gradient allocates its own scratch."""
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
    if grads_in_work:
        dw_ih = work[:G * I].reshape(G, I)
        dw_hh = work[G * I:G * (I + H)].reshape(G, H)
        db = work[G * (I + H):G * (I + H + 1)]
    else:
        dw_ih, dw_hh = np.empty_like(p["w_ih"]), np.empty_like(p["w_hh"])
        db = np.empty(G, dtype)
    r["threads_bwd"] = _lstm.backward(
        x, p["lengths"], p["w_ih"], p["w_hh"], p["c0"], gates, c_cache, h_prev, p["d_out"],
        0, reverse, dh, dc, x, 0.0, dw_ih, dw_hh, db, np.empty((B, G), dtype), False, None,
        False, threads, work, fuse)
    r.update(dh=dh, dc=dc, dw_ih=dw_ih.copy(), dw_hh=dw_hh.copy(), db=db.copy(),
             dG=gates.copy())
    if grads_in_work:
        return r
    dx = np.empty((N, I), dtype)
    _lstm.input_gradient(gates, p["w_ih"], dx, 0.0, threads, work)
    r["dx"] = dx
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("B", "T", "I", "H"), CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_gradients_written_over_the_scratch_of_their_own_call(dtype, reverse, B, T, I, H,
                                                             threads, kernel_problem):
    """The training work array of gradient_work_size: its head holds the
    weight gradients, which are written after the loops' scratch in it is
    dead. A backward asked to fuse the weight gradients into scratch that
    would overlap them makes them with two GEMMs instead."""
    p = kernel_problem(dtype, B, T, I, H, seed=B * 10 + H + 1)
    size = _lstm.gradient_work_size(I, H, B, dtype, fused=False)
    old = _lstm.set_split_thresholds(False)
    try:
        ref = _kernels(p, None, reverse, threads, fuse=False)
        fused = _kernels(p, None, reverse, threads, fuse=True)
        got = {}
        for fuse in (False, True):
            work = np.full(size + 40, np.nan, dtype)
            got[fuse] = _kernels(p, work, reverse, threads, fuse=fuse, grads_in_work=True)
            assert np.isnan(work[size:]).all()
    finally:
        _lstm.set_split_thresholds(old)
    for fuse in (False, True):
        for name in got[fuse]:
            np.testing.assert_array_equal(got[fuse][name], ref[name], err_msg=name)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name in ("dw_ih", "dw_hh", "db"):
        np.testing.assert_allclose(fused[name], ref[name], rtol=rtol,
                                   atol=rtol * np.abs(ref[name]).max(), err_msg=name)


def test_gradient_work_size_covers_the_packs():
    for dtype in (np.float32, np.float64):
        for I, H, B in ((3, 4, 1), (64, 128, 32), (7, 33, 5)):
            G = 4 * H
            grads = G * (I + H + 1)
            for fused in (False, True):
                size = _lstm.gradient_work_size(I, H, B, dtype, fused=fused)
                assert size >= max(grads, G * (I + H) + B * H)
                # the packed weights at most, never twice the weights' size
                assert size <= G * (I + H) + 64 * G + B * G + 64
            assert (_lstm.input_gradient_work_size(I, H, dtype)
                    >= G * I)


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
        if training:  # the packs are in the gradient arrays: at most the fused block here
            assert (_lstm.input_gradient_work_size(n_in, 16, np.float32) <= size
                    <= _lstm.work_size(n_in, 16, 8, np.float32))
        else:  # the packs are in the inference cache: only the alternate state here
            assert f"packs{k}" in layer._workspace._buffers
            assert 8 * 16 <= size < _lstm.work_size(n_in, 16, 8, np.float32)
    # Same results from a layer whose arrays are fresh.
    fresh = LSTM(5, 16, num_layers=2, bidirectional=True, random_state=0)
    np.testing.assert_array_equal(layer.forward(X, training=training)[0],
                                  fresh.forward(X, training=training)[0])


@pytest.mark.parametrize(("B", "T"), [(1, 50), (16, 40)])  # two GEMMs; fused
def test_layer_gradients_are_each_steps_own(B, T):
    """The weight gradients are views of the array whose scratch the step's
    kernels used: a later step must not write into them."""
    layer = LSTM(6, 32, num_layers=2, bidirectional=True, dtype=np.float64, random_state=0)
    rng = np.random.default_rng(1)
    X1, X2 = rng.normal(size=(2, B, T, 6))
    out, _ = layer.forward(X1, training=True)
    _, grads = layer.backward(np.ones_like(out))
    kept = {name: g.copy() for name, g in grads.items()}
    out2, _ = layer.forward(X2, training=True)
    _, grads2 = layer.backward(np.ones_like(out2))
    for name, g in grads.items():
        np.testing.assert_array_equal(g, kept[name], err_msg=name)
        assert not np.shares_memory(g, grads2[name])
    # Same gradients as a fresh layer's.
    fresh = LSTM(6, 32, num_layers=2, bidirectional=True, dtype=np.float64, random_state=0)
    out3, _ = fresh.forward(X2, training=True)
    _, grads3 = fresh.backward(np.ones_like(out3))
    for name, g in grads3.items():
        np.testing.assert_array_equal(grads2[name], g, err_msg=name)
