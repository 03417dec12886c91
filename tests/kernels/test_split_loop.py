"""Two threads on one time loop (src/_parallel.h) against one thread.

With ``threads=2`` the kernels may split each step's products and gate pass
by hidden units between two threads. The split must change nothing in what
the time loop computes: outputs, states, caches, gate gradients, the
gradients of the initial states and of the biases are compared bit for bit
with the one-thread call, for both dtypes, both directions, training and
inference, one row, full batches and lengths that shrink the batch from many
rows to one. The weight and input gradients after the loop are BLAS GEMMs
that the two threads split by rows; BLAS may round a block of rows
differently from the whole, so those agree to rounding.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import LSTM, _lstm

TOL = {np.float32: 1e-6, np.float64: 1e-14}

# Every test here runs loops that two threads share, with barriers: a hang must
# fail the test, not freeze the run.
pytestmark = pytest.mark.timeout(300)


def _assert_same(one, two, exact, dtype):
    if exact:
        np.testing.assert_array_equal(one, two)
    else:
        scale = max(1.0, float(np.abs(one).max()))
        np.testing.assert_allclose(one, two, rtol=0, atol=TOL[np.dtype(dtype).type] * scale)


@pytest.fixture(autouse=True)
def split_small_calls():
    """Let these small calls split (the kernels' work thresholds off)."""
    old = _lstm.set_split_thresholds(False)
    yield
    _lstm.set_split_thresholds(old)


def _packed_lengths(B, T, rng):
    """Lengths whose active counts are 1 or >= 8 at every step (no BLAS step)."""
    if B == 1:
        return np.array([T])
    short = rng.integers(T // 3, T // 2 + 1)
    return np.concatenate([[T], np.full(B - 1, short)])


def _forward(args, threads, train):
    a = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    if train:
        used = _lstm.forward_train(a["x"], a["lengths"], a["w_ih"], a["w_hh"], a["w_hh_t"],
                                   a["bias"], a["h"], a["c"], a["out"], 0, a["reverse"],
                                   a["xbuf"], a["gbuf"], a["gates"], a["c_cache"],
                                   a["h_prev"], False, None, threads)
    else:
        used = _lstm.forward_infer(a["x"], a["lengths"], a["w_ih"], a["w_hh"], a["w_hh_t"],
                                   a["bias"], a["h"], a["c"], a["out"], 0, a["reverse"],
                                   a["xbuf"], a["gbuf"], False, False, None, threads)
    return used, a


@pytest.fixture(params=["units", "rows", "auto"])
def split_mode(request):
    """Two threads sharing the hidden units, or the rows (``_lstm.set_split_mode``)."""
    old = _lstm.set_split_mode(request.param)
    yield request.param
    _lstm.set_split_mode(old)


def test_split_mode_setting():
    old = _lstm.set_split_mode("rows")
    try:
        assert _lstm.set_split_mode("units") == "rows"
        with pytest.raises(ValueError, match="mode must be one of"):
            _lstm.set_split_mode("columns")
        assert _lstm.set_split_mode("auto") == "units"
    finally:
        _lstm.set_split_mode(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("B", "T", "I", "H"), [(1, 40, 5, 64), (8, 17, 9, 128),
                                               (12, 23, 3, 64), (33, 9, 16, 192),
                                               (17, 40, 4, 64), (20, 35, 5, 40),
                                               (16, 70, 3, 24)])
def test_two_threads_equal_one(dtype, reverse, B, T, I, H, split_mode):
    # By rows, thread 1 has no row once one is left, and 8 of 17 at first;
    # the second chunk of 17 x 40 starts with one row (a single-row
    # projection), that of 16 x 70 with an even count. H = 40 and 24 are no
    # whole number of column panels per half: only the rows can be split.
    panels = 64 if dtype == np.float32 else 32
    split = H % panels == 0 or split_mode == "rows" or (split_mode == "auto" and B >= 16)
    rng = np.random.default_rng(B * 1000 + H)
    lengths = np.ascontiguousarray(np.sort(_packed_lengths(B, T, rng))[::-1], dtype=np.intc)
    assert not _lstm.needs_w_hh_t(lengths)
    N = int(lengths.sum())
    G = 4 * H
    K = min(32, T)
    args = dict(
        x=rng.normal(size=(N, I)).astype(dtype), lengths=lengths,
        w_ih=(rng.normal(size=(G, I)) * 0.3).astype(dtype),
        w_hh=(rng.normal(size=(G, H)) * 0.1).astype(dtype),
        bias=(rng.normal(size=G) * 0.1).astype(dtype),
        h=rng.normal(size=(B, H)).astype(dtype), c=rng.normal(size=(B, H)).astype(dtype),
        out=np.zeros((N, H), dtype), reverse=reverse,
        xbuf=np.zeros(K * B * I, dtype), gbuf=np.zeros(K * B * G, dtype),
        gates=np.zeros((N, G), dtype), c_cache=np.zeros((N, H), dtype),
        h_prev=np.zeros((N, H), dtype))
    args["w_hh_t"] = np.ascontiguousarray(args["w_hh"].T)
    h0, c0 = args["h"], args["c"]
    d_out = rng.normal(size=(N, H)).astype(dtype)
    d_h = rng.normal(size=(B, H)).astype(dtype)
    d_c = rng.normal(size=(B, H)).astype(dtype)
    results = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for threads in (1, 2):
            used_i, inf = _forward(args, threads, train=False)
            used_t, tr = _forward(args, threads, train=True)
            dh, dc, dx = d_h.copy(), d_c.copy(), np.zeros((N, I), dtype)
            dw_ih, dw_hh = np.zeros((G, I), dtype), np.zeros((G, H), dtype)
            db, scratch = np.zeros(G, dtype), np.zeros((B, G), dtype)
            used_b = _lstm.backward(tr["x"], lengths, tr["w_ih"], tr["w_hh"], c0, tr["gates"],
                                    tr["c_cache"], tr["h_prev"], d_out, 0, reverse, dh, dc,
                                    dx, 0.0, dw_ih, dw_hh, db, scratch, False, None, True,
                                    threads)
            assert (used_i, used_t, used_b) == (threads if split else 1,) * 3
            results[threads] = [inf["out"], inf["h"], inf["c"], tr["out"], tr["h"], tr["c"],
                                tr["gates"], tr["c_cache"], tr["h_prev"], dh, dc, db, dx, dw_ih,
                                dw_hh]
    for i, (one, two) in enumerate(zip(results[1], results[2], strict=True)):
        _assert_same(one, two, i < 12, dtype)
    np.testing.assert_array_equal(results[1][0], results[1][3])  # inference == training
    assert not np.array_equal(h0, results[1][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("B", "T", "I", "H", "lengths"),
                         [(8, 17, 9, 128, None), (17, 40, 4, 64, None),
                          (16, 70, 3, 24, None), (1, 12, 5, 64, None),
                          (4, 9, 5, 32, [9, 9, 6, 2])])
def test_lookup_projection(dtype, reverse, masked, B, T, I, H, lengths, split_mode):
    """``table``/``tokens``: the input projection looked up instead of
    multiplied gives what the projection of the embedding's rows gives, and
    ``x`` is not read for it; on two threads (each looking up its own rows or
    units) the same bits as on one, call after call, with recurrent dropout
    too (whose masked h0 each thread writes half of, split by units), for
    packed steps and BLAS steps (2-7 rows). Its backward (``tokens``,
    ``d_table``) sums the gate gradients by token in float64, rows in order,
    leaves ``dw_ih`` alone and gives the other gradients of the backward
    that multiplies (to rounding: the table rounds the projection once); the
    same bits on two threads."""
    rng = np.random.default_rng(B * 100 + H)
    if lengths is None:
        lengths = np.sort(_packed_lengths(B, T, rng))[::-1]
    lengths = np.ascontiguousarray(lengths, dtype=np.intc)
    N, G, V = int(lengths.sum()), 4 * H, 7
    emb = rng.normal(size=(V, I))
    tokens = rng.integers(0, V, N).astype(np.intc)
    w_ih = rng.normal(size=(G, I)) * 0.3
    table = (emb @ w_ih.T).astype(dtype)
    mask = ((rng.random((B, H)) > 0.3) / 0.7).astype(dtype) if masked else None
    K = min(32, T)
    args = dict(x=emb[tokens].astype(dtype), lengths=lengths, w_ih=w_ih.astype(dtype),
                w_hh=(rng.normal(size=(G, H)) * 0.1).astype(dtype),
                bias=(rng.normal(size=G) * 0.1).astype(dtype),
                h=rng.normal(size=(B, H)).astype(dtype),
                c=rng.normal(size=(B, H)).astype(dtype), out=np.zeros((N, H), dtype),
                reverse=reverse, xbuf=np.zeros(K * B * I, dtype),
                gbuf=np.zeros(K * B * G, dtype), gates=np.zeros((N, G), dtype),
                c_cache=np.zeros((N, H), dtype), h_prev=np.zeros((N, H), dtype))
    args["w_hh_t"] = np.ascontiguousarray(args["w_hh"].T)
    names = ("out", "h", "c", "gates", "c_cache", "h_prev")
    panels = 64 if dtype == np.float32 else 32
    split = not _lstm.needs_w_hh_t(lengths) and (
        H % panels == 0 or split_mode == "rows" or (split_mode == "auto" and B >= 16))

    def call(threads, lookup):
        a = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
        if lookup:
            a["x"][...] = np.nan  # unread by the lookup
        used = _lstm.forward_train(a["x"], lengths, a["w_ih"], a["w_hh"], a["w_hh_t"],
                                   a["bias"], a["h"], a["c"], a["out"], 0, reverse,
                                   a["xbuf"], a["gbuf"], a["gates"], a["c_cache"],
                                   a["h_prev"], False, None, threads, None, mask,
                                   table if lookup else None, tokens if lookup else None)
        a["forward"] = {name: a[name].copy() for name in names}
        a["dh"], a["dc"] = d_h.copy(), d_c.copy()
        a["dw_ih"] = np.full((G, I), np.nan, dtype)
        a["dw_hh"], a["db"] = np.zeros((G, H), dtype), np.zeros(G, dtype)
        factors = {}
        if lookup:  # the outputs start as NaN: every entry is written
            factors = dict(tokens=tokens, d_table=np.full((V, G), np.nan),
                           embedding=emb.astype(dtype),
                           d_embedding=np.full((V, I), np.nan, dtype),
                           table_work=np.full(_lstm.table_work_size(V, I, H), np.nan))
        used_b = _lstm.backward(a["x"], lengths, a["w_ih"], a["w_hh"], c0, a["gates"],
                                a["c_cache"], a["h_prev"], d_out, 0, reverse, a["dh"], a["dc"],
                                np.zeros((N, I), dtype), 0.0, a["dw_ih"], a["dw_hh"], a["db"],
                                np.zeros((B, G), dtype), False, None, False, threads,
                                mask=mask, **factors)
        a["d_table"], a["d_embedding"] = factors.get("d_table"), factors.get("d_embedding")
        return min(used, used_b), a

    d_out = rng.normal(size=(N, H)).astype(dtype)
    d_h, d_c = rng.normal(size=(2, B, H)).astype(dtype)
    c0 = args["c"]
    backward_names = ("gates", "dh", "dc", "db", "dw_hh")
    table_names = ("d_table", "dw_ih", "d_embedding")
    with threadpool_limits(limits=1, user_api="blas"):
        _, ref = call(1, False)
        _, one = call(1, True)
        for name in names:
            _assert_same(ref["forward"][name], one["forward"][name], False, dtype)
        for name in backward_names:  # as without the lookup
            _assert_same(ref[name], one[name], False, dtype)
        expected = np.zeros((V, G))
        np.add.at(expected, tokens, one["gates"].astype(np.float64))
        np.testing.assert_array_equal(one["d_table"], expected)
        # dW_ih and the embedding's gradient from the table's gradient, in
        # float64 rounded once: the multiplying backward's dW_ih and the input
        # gradients summed by token, to rounding.
        tol = 2e-5 if dtype == np.float32 else 1e-12
        emb_cast = emb.astype(dtype).astype(np.float64)
        np.testing.assert_allclose(one["dw_ih"], (expected.T @ emb_cast).astype(dtype),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(one["d_embedding"],
                                   expected @ args["w_ih"].astype(np.float64),
                                   rtol=tol, atol=tol)
        _assert_same(ref["dw_ih"], one["dw_ih"], False, dtype)
        for _ in range(20 if split else 1):
            used, two = call(2, True)
            assert used == (2 if split else 1)
            for name in names:
                np.testing.assert_array_equal(one["forward"][name], two["forward"][name],
                                              err_msg=name)
            for name in backward_names + table_names:
                np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_lookup_projection_checks():
    rng = np.random.default_rng(0)
    B, T, I, H = 2, 3, 2, 4
    lengths = np.full(B, T, dtype=np.intc)
    N, G = B * T, 4 * H

    def call(table, tokens):
        _lstm.forward_train(np.zeros((N, I)), lengths, np.zeros((G, I)), np.zeros((G, H)),
                            np.zeros((H, G)), np.zeros(G), np.zeros((B, H)),
                            np.zeros((B, H)), np.zeros((N, H)), 0, False,
                            np.zeros(T * B * I), np.zeros(T * B * G), np.zeros((N, G)),
                            np.zeros((N, H)), np.zeros((N, H)), False, None, 1, None, None,
                            table, tokens)

    table = rng.normal(size=(5, G))
    with pytest.raises(ValueError, match="token 5 at row 3 is not a row"):
        call(table, np.array([0, 1, 2, 5, 0, 0], dtype=np.intc))
    with pytest.raises(ValueError, match="token -1 at row 0"):
        call(table, np.array([-1, 1, 2, 3, 0, 0], dtype=np.intc))
    with pytest.raises(ValueError, match=r"table has shape \(5, 15\)"):
        call(table[:, :15].copy(), np.zeros(N, dtype=np.intc))
    with pytest.raises(ValueError, match="tokens has 5 entries; one per row, 6, needed"):
        call(table, np.zeros(N - 1, dtype=np.intc))
    with pytest.raises(ValueError, match="table and tokens go together"):
        call(table, None)
    call(table, np.zeros(N, dtype=np.intc))


def test_table_gradient_checks():
    """``backward``'s ``tokens`` and ``d_table`` are checked before any work."""
    B, T, I, H = 2, 3, 2, 4
    lengths = np.full(B, T, dtype=np.intc)
    N, G = B * T, 4 * H

    def call(tokens, d_table, with_dx=False, V=5, **factors):
        if tokens is not None:
            factors = dict(dict(embedding=np.zeros((V, I)), d_embedding=np.zeros((V, I)),
                                table_work=np.zeros(_lstm.table_work_size(V, I, H))),
                           **factors)
        _lstm.backward(np.zeros((N, I)), lengths, np.zeros((G, I)), np.zeros((G, H)),
                       np.zeros((B, H)), np.zeros((N, G)), np.zeros((N, H)), np.zeros((N, H)),
                       np.zeros((N, H)), 0, False, np.zeros((B, H)), np.zeros((B, H)),
                       np.zeros((N, I)), 0.0, np.zeros((G, I)), np.zeros((G, H)),
                       np.zeros(G), np.zeros((B, G)), False, None, with_dx, 1,
                       tokens=tokens, d_table=d_table, **factors)

    table = np.zeros((5, G))
    zeros = np.zeros(N, dtype=np.intc)
    with pytest.raises(ValueError, match="tokens need embedding, d_embedding and table_work"):
        call(zeros, table, embedding=None)
    with pytest.raises(ValueError, match=r"embedding has shape \(4, 2\); \(5, 2\) needed"):
        call(zeros, table, embedding=np.zeros((4, I)))
    with pytest.raises(ValueError, match=r"d_embedding has shape \(5, 3\); \(5, 2\) needed"):
        call(zeros, table, d_embedding=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="table_work has 9 entries; 94 needed"):
        call(zeros, table, table_work=np.zeros(9))
    with pytest.raises(ValueError, match="embedding, d_embedding and table_work go with tokens"):
        call(None, None, table_work=np.zeros(94))
    with pytest.raises(ValueError, match="token 5 at row 3 is not a row of the 5-row d_table"):
        call(np.array([0, 1, 2, 5, 0, 0], dtype=np.intc), table)
    with pytest.raises(ValueError, match="token -1 at row 0"):
        call(np.array([-1, 1, 2, 3, 0, 0], dtype=np.intc), table)
    with pytest.raises(ValueError, match=r"d_table has shape \(5, 15\)"):
        call(np.zeros(N, dtype=np.intc), np.zeros((5, 15)))
    with pytest.raises(ValueError, match="tokens has 5 entries; one per row, 6, needed"):
        call(np.zeros(N - 1, dtype=np.intc), table)
    with pytest.raises(ValueError, match="tokens and d_table go together"):
        call(np.zeros(N, dtype=np.intc), None)
    with pytest.raises(ValueError, match="has no input gradient"):
        call(np.zeros(N, dtype=np.intc), table, with_dx=True)
    assert not table.any()
    call(np.zeros(N, dtype=np.intc), table)


def test_no_split_where_it_cannot_work():
    """BLAS steps (2-7 active rows) and hidden sizes that are not whole column
    panels per half keep the loop on one thread."""
    rng = np.random.default_rng(0)
    cases = [(4, 64, [5, 5, 5, 5]), (8, 48, [5] * 8), (9, 64, [5, 5, 4, 4, 4, 3, 3, 2, 1])]
    for B, H, lengths in cases:
        lengths = np.array(lengths, dtype=np.intc)
        N, G, I = int(lengths.sum()), 4 * H, 3
        used = _lstm.forward_infer(rng.normal(size=(N, I)), lengths, np.zeros((G, I)),
                                   np.zeros((G, H)), np.zeros((H, G)), np.zeros(G),
                                   np.zeros((B, H)), np.zeros((B, H)), np.zeros((N, H)), 0,
                                   False, np.zeros(5 * B * I), np.zeros(5 * B * G), False,
                                   False, None, 2)
        assert used == 1, (B, H)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, [30] + [12] * 15])
def test_layer_results_do_not_depend_on_the_loop_threads(bidirectional, lengths, monkeypatch,
                                                        split_mode):
    """Through the layer: forcing one loop thread gives the same forward
    results, and gradients equal to rounding."""
    from pylstm import _layer, _threads

    rng = np.random.default_rng(3)
    X = rng.normal(size=(16, 30, 6)).astype(np.float32)
    layer = LSTM(6, 64, num_layers=2, bidirectional=bidirectional, dtype=np.float32,
                 random_state=0)
    d_out = rng.normal(size=(16, 30, 64 * (2 if bidirectional else 1))).astype(np.float32)

    def run():
        out, state = layer.forward(X, lengths=lengths)
        dX, grads = layer.backward(d_out)
        inf, _ = layer.forward(X, lengths=lengths, training=False)
        # Below the top layer, BPTT starts from the input gradient of the
        # layer above, which agrees to rounding only.
        return [out, *state, inf], [dX] + [grads[k] for k in sorted(grads)]

    with threadpool_limits(limits=1, user_api="blas"):
        plan = _threads.thread_plan
        monkeypatch.setattr(_layer, "thread_plan",
                            lambda *a: plan(*a)[:2] + (2,))
        two = run()
        monkeypatch.setattr(_layer, "thread_plan",
                            lambda *a: plan(*a)[:2] + (1,))
        one = run()
    for exact in (0, 1):
        for a, b in zip(one[exact], two[exact], strict=True):
            _assert_same(a, b, exact == 0, np.float32)


def test_small_calls_stay_on_one_thread():
    """With the thresholds on, a call too small to pay for a second thread
    does not start one; a large one does."""
    _lstm.set_split_thresholds(True)
    rng = np.random.default_rng(1)
    for B, T, H, expected in [(8, 5, 64, 1), (1, 10, 64, 1), (1, 100, 128, 2),
                              (64, 20, 128, 2)]:
        lengths = np.full(B, T, dtype=np.intc)
        N, G, I = B * T, 4 * H, 4
        used = _lstm.forward_infer(rng.normal(size=(N, I)), lengths, np.zeros((G, I)),
                                   np.zeros((G, H)), np.zeros((H, G)), np.zeros(G),
                                   np.zeros((B, H)), np.zeros((B, H)), np.zeros((N, H)), 0,
                                   False, np.zeros(20 * B * I), np.zeros(20 * B * G), False,
                                   False, None, 2)
        assert used == expected, (B, T, H)


def test_concurrent_split_calls_finish_and_agree(monkeypatch):
    """Two Python threads, each running split loops: four threads on the
    cores, whose barriers must wait (and yield) without hanging; results as
    on one thread."""
    import threading

    from pylstm import _layer, _threads

    rng = np.random.default_rng(7)
    X = rng.normal(size=(16, 40, 8)).astype(np.float32)
    layers = [LSTM(8, 64, dtype=np.float32, random_state=k) for k in range(2)]
    results = [None, None]
    with threadpool_limits(limits=1, user_api="blas"):
        expected = [layer.forward(X, training=False)[0] for layer in layers]
        plan = _threads.thread_plan
        monkeypatch.setattr(_layer, "thread_plan", lambda *a: plan(*a)[:2] + (2,))

        def work(k):
            for _ in range(20):
                results[k] = layers[k].forward(X, training=False)[0]

        workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
            assert not w.is_alive()
    for k in range(2):
        np.testing.assert_array_equal(results[k], expected[k])


def _split_forward(seed):
    """A layer's split inference (thresholds off, two loop threads)."""
    from threadpoolctl import threadpool_limits as limits

    from pylstm import _layer, _threads

    _lstm.set_split_thresholds(False)
    X = np.random.default_rng(seed).normal(size=(8, 30, 5)).astype(np.float32)
    layer = LSTM(5, 64, dtype=np.float32, random_state=seed)
    plan = _threads.thread_plan
    _layer.thread_plan = lambda *a: plan(*a)[:2] + (2,)
    try:
        with limits(limits=1, user_api="blas"):
            return layer.forward(X, training=False)[0]
    finally:
        _layer.thread_plan = plan


def test_worker_thread_survives_fork():
    """The kept worker thread does not exist in a forked child: the child's
    first split call starts its own, and gets the parent's results."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    expected = _split_forward(3)  # the parent's worker now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_split_forward, (3,)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("B", "H"), [(3, 64), (15, 20)])  # BLAS steps; H not whole panels
# (and fewer than 16 rows, which would split by rows)
def test_unsplit_loop_shares_the_weight_gradients(dtype, B, H):
    """A loop that cannot split still makes its weight gradients on two threads,
    by gate rows: they agree with one thread's to rounding, the rest exactly."""
    rng = np.random.default_rng(B + H)
    T, I = 11, 6
    G = 4 * H
    lengths = np.full(B, T, dtype=np.intc)
    N = B * T
    w_ih = (rng.normal(size=(G, I)) * 0.3).astype(dtype)
    w_hh = (rng.normal(size=(G, H)) * 0.2).astype(dtype)
    x = rng.normal(size=(N, I)).astype(dtype)
    xh = np.empty((N, I + H), dtype)  # the layer's layout: one GEMM for both
    xh[:, :I] = x
    c0 = rng.normal(size=(B, H)).astype(dtype)
    gates = np.empty((N, G), dtype)
    c_cache = np.empty((N, H), dtype)
    _lstm.forward_train(xh[:, :I], lengths, w_ih, w_hh, np.ascontiguousarray(w_hh.T),
                        np.zeros(G, dtype), np.zeros((B, H), dtype), c0.copy(),
                        np.empty((N, H), dtype), 0, False, np.empty(4 * B * I, dtype),
                        np.empty(4 * B * G, dtype), gates, c_cache, xh[:, I:])
    d_out = rng.normal(size=(N, H)).astype(dtype)
    results = {}
    for threads in (1, 2):
        dg = gates.copy()
        dh, dc = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
        dw_ih, dw_hh, db = np.empty((G, I), dtype), np.empty((G, H), dtype), np.empty(G, dtype)
        used = _lstm.backward(xh[:, :I], lengths, w_ih, w_hh, c0, dg, c_cache, xh[:, I:],
                              d_out, 0, False, dh, dc, np.empty((N, I), dtype), 0.0, dw_ih,
                              dw_hh, db, np.empty((B, G), dtype), False, None, False, threads)
        assert used == 1
        results[threads] = (dg, dh, dc, db, dw_ih, dw_hh)
    for one, two in zip(results[1][:4], results[2][:4], strict=True):
        np.testing.assert_array_equal(one, two)
    for one, two in zip(results[1][4:], results[2][4:], strict=True):
        _assert_same(one, two, False, dtype)
    np.testing.assert_allclose(results[2][4], results[2][0].T @ x,
                               rtol=0, atol=TOL[dtype] * 10 * np.abs(results[2][4]).max())


def test_no_split_while_another_call_runs():
    """Two kernel calls at once take both cores: neither splits its loop then
    (three threads on two cores would stall the barriers), and calls split
    again once the other has been gone for a while."""
    import threading
    import time

    rng = np.random.default_rng(2)

    def call(B, T, H, threads=2):
        lengths = np.full(B, T, dtype=np.intc)
        N, G, I = B * T, 4 * H, 4
        return _lstm.forward_infer(rng.normal(size=(N, I)), lengths, np.zeros((G, I)),
                                   np.zeros((G, H)), np.zeros((H, G)), np.zeros(G),
                                   np.zeros((B, H)), np.zeros((B, H)), np.zeros((N, H)), 0,
                                   False, np.zeros(20 * B * I), np.zeros(20 * B * G), False,
                                   False, None, threads)

    time.sleep(0.1)
    assert call(8, 20, 64) == 2  # alone: splits (thresholds off here)
    # On one thread: the worker stays free, so only the overlap can stop a split.
    long_call = threading.Thread(target=call, args=(64, 3000, 128, 1))
    long_call.start()
    while long_call.is_alive() and _lstm.calls_in_progress() == 0:
        time.sleep(0.001)  # until the long call is inside its kernel
    during = call(8, 20, 64)
    overlapped = _lstm.calls_in_progress() == 1  # the long call is still running
    long_call.join()
    if not overlapped:
        pytest.skip("the long call ended too soon to overlap")
    assert during == 1
    time.sleep(0.1)
    assert call(8, 20, 64) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 12])
def test_weights_grouped_for_the_split_any_thread_count(dtype, B):
    """Where two threads may split the units, W_hh^T is packed with each
    half's units together (``_pack_w_hh_t``), whether the call then splits
    or not. One thread on the natural layout, two splitting the grouped one,
    and one on the grouped layout (a call too small for the split once the
    size thresholds are on) give the same bits; a kept pack cache follows
    the layout from call to call."""
    H = 64 if dtype == np.float32 else 32
    T, I, G = 30 if B == 1 else 3, 5, 4 * H  # B * 4H * H * T below SPLIT_CALL_MACS
    rng = np.random.default_rng(B)
    lengths = np.full(B, T, dtype=np.intc)  # (2-7 active rows would take BLAS steps)
    N = B * T
    w_ih = (rng.normal(size=(G, I)) * 0.3).astype(dtype)
    w_hh = (rng.normal(size=(G, H)) * 0.2).astype(dtype)
    bias = (rng.normal(size=G) * 0.1).astype(dtype)
    x = rng.normal(size=(N, I)).astype(dtype)
    cache = np.zeros(_lstm.pack_cache_size(I, H, dtype), dtype)

    def run(threads, pack_cache, thresholds=False):
        h, c = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
        out = np.zeros((N, H), dtype)
        old = _lstm.set_split_thresholds(thresholds)
        try:
            used = _lstm.forward_infer(x, lengths, w_ih, w_hh, np.ascontiguousarray(w_hh.T),
                                       bias, h, c, out, 0, False, np.zeros(T * B * I, dtype),
                                       np.zeros(T * B * G, dtype), False, False, None,
                                       threads, pack_cache)
        finally:
            _lstm.set_split_thresholds(old)
        return used, out, h, c

    results = []
    for pack_cache in (None, cache):
        used_one, *one = run(1, pack_cache)
        used_split, *split = run(2, pack_cache)
        used_small, *small = run(2, pack_cache, thresholds=True)
        used_again, *again = run(1, pack_cache)
        assert (used_one, used_split, used_small, used_again) == (1, 2, 1, 1)
        for arrays in (split, small, again):
            for a, b in zip(one, arrays, strict=True):
                np.testing.assert_array_equal(a, b)
        results.append(one)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
