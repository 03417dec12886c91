# BPTT: the reverse time loop, the weight gradients and the input gradient.


cdef void _backward_loop(const floating* typed, _BackwardLoop* a) noexcept nogil:
    """The reverse time loop of BPTT (one thread's part; ``typed`` picks the dtype).

    Per step: the gate gradients of the active rows (in place over the gate
    cache; for a reverse direction also copied to a contiguous scratch), then
    ``dh_{s-1} = dG_s W_hh``. With two threads (see :func:`_forward`) each
    takes its half of the units for the gate pass and its half of the
    columns of ``dh``; a barrier between the two makes every gate gradient
    of the step ready before the product reads them. With ``by_rows`` each
    takes its rows (see :func:`_forward`) for both, without a barrier.
    """
    cdef int T = a.s.T, B = a.s.B, H = a.s.H
    cdef int G = 4 * H
    cdef const int* lengths = a.s.lengths
    cdef const Py_ssize_t* off = a.s.off
    cdef const Py_ssize_t* bfr = a.s.bfr
    cdef const floating* w_hh = <const floating*> a.s.w_hh
    cdef const floating* w_pack = <const floating*> a.s.w_pack
    cdef const floating* c0 = <const floating*> a.c0
    cdef floating* gates = <floating*> a.s.gates
    cdef const floating* c_cache = <const floating*> a.s.c_cache
    cdef const floating* d_out = <const floating*> a.d_out
    cdef floating* dh = <floating*> a.dh
    cdef floating* dc = <floating*> a.dc
    cdef int dw = a.dout_width
    cdef Py_ssize_t offset = a.s.offset
    cdef bint reverse = a.s.reverse
    cdef bint split = a.s.nparts > 1
    cdef bint by_rows = split and a.s.by_rows
    cdef int hn = H if by_rows else H // a.s.nparts
    cdef int u0 = 0 if by_rows else a.s.part * hn
    cdef int b0 = a.s.part if by_rows else 0
    cdef int bs = 2 if by_rows else 1
    cdef int n = 0
    cdef int s, b, bi, t, tp, g, hb, j0, jb
    cdef Py_ssize_t r
    cdef floating* gp
    cdef floating* scr
    cdef const floating* src
    cdef const floating* cp
    cdef const floating* mask = <const floating*> a.s.mask
    for s in range(T - 1, -1, -1):
        while n < B and lengths[n] > s:
            n += 1
        scr = <floating*> (a.scratch if s % 2 == 0 else a.scratch_alt)
        for bi in range((n - b0 + bs - 1) // bs):
            b = b0 + bi * bs
            if reverse:
                t = lengths[b] - 1 - s
                tp = t + 1
            else:
                t = s
                tp = t - 1
            r = off[t] + b
            gp = gates + r * G
            cp = c0 + <Py_ssize_t> b * H if s == 0 else c_cache + (off[tp] + b) * H
            _cell_backward(gp + u0, c_cache + r * H + u0, cp + u0,
                           dh + <Py_ssize_t> b * H + u0, dc + <Py_ssize_t> b * H + u0,
                           d_out + offset + u0
                           + (bfr[b] + t if a.dout_batch_first else r) * dw,
                           hn, H)
            if reverse:
                for g in range(4):
                    memcpy(scr + <Py_ssize_t> b * G + g * H + u0, gp + g * H + u0,
                           hn * sizeof(floating))
        if split and not by_rows:
            pylstm_barrier_wait(a.s.bar)
        src = scr if reverse else gates + off[s] * G
        # dh_{s-1}[:n] = dG_s[:n] @ w_hh
        if by_rows:
            _gemm_packed((n - b0 + 1) // 2, H, G, src + <Py_ssize_t> b0 * G, 2 * G, w_pack,
                         dh + <Py_ssize_t> b0 * H, 2 * H, False)
        elif split:
            _gemm_packed(n, hn, G, src, G, w_pack + <Py_ssize_t> u0 * G, dh + u0, H,
                         False)
        elif w_pack != NULL and _packed_rows(n):
            _gemm_packed(n, H, G, src, G, w_pack, dh, H, False)
        elif n == 1:
            gemv(True, G, H, <floating> 1.0, w_hh, H, src, <floating> 0.0, dh)
        else:
            hb = _column_block(n, H, G, 16) if floating is float else H
            j0 = 0
            while j0 < H:
                jb = hb if j0 + hb <= H else H - j0
                gemm(False, False, n, jb, G, <floating> 1.0, src, G,
                     w_hh + j0, H, <floating> 0.0, dh + j0, H)
                j0 += jb
        if mask != NULL:
            # The product gave dL/d(masked h_{s-1}); through the mask to h_{s-1}
            # (the part of dh this thread wrote; see _forward).
            for bi in range((n - b0 + bs - 1) // bs):
                b = b0 + bi * bs
                _mask_row(dh + <Py_ssize_t> b * H + u0, mask + <Py_ssize_t> b * H + u0, hn)
    if split:
        # The weight gradients by halves of the gate rows, one GEMM per
        # thread: BLAS then packs the shared factor [X | H_prev] once per
        # thread, not once per gate block (benchmarks/bench_lstm.py --threads
        # 2). A half reads gate gradients of both threads, hence the barrier.
        # (BLAS is held to one thread, so the two threads' calls run side by
        # side.)
        pylstm_barrier_wait(a.s.bar)
        _weight_gradients(typed, a, a.s.part * (G // 2), G // 2, 1)


cdef void _weight_gradients(const floating* typed, _BackwardLoop* a, int g0, int rows,
                            int n_blocks) noexcept nogil:
    """dW_ih, dW_hh and the bias gradient for gate rows ``g0 .. g0 + rows - 1``
    of each of ``n_blocks`` blocks ``H`` apart: whole-sequence GEMMs over the
    N valid steps (dG^T X, dG^T H_prev) and column sums of dG. With
    ``tokens`` (a looked-up projection) the columns of dG are summed into
    the rows of ``d_table`` by token instead of multiplying dG^T X,
    :func:`_table_products` makes dW_ih (and dE's parts) from them, and the
    bias gradient is the sum of the table's rows.

    With ``dw_tmp`` set, each row of h_prev continues its row of x in one
    array (the layer keeps them so): one GEMM dG^T [X | H_prev] then gives
    both gradients, and BLAS packs dG once instead of twice
    (benchmarks/bench_lstm.py).
    """
    cdef int H = a.s.H
    cdef int I = 0 if a.tokens != NULL else a.s.n_in
    cdef int G = 4 * H
    cdef int N = <int> a.n_rows
    cdef int W = I + H
    cdef int blk, r0, r, c
    cdef double total
    cdef const floating* dg = <const floating*> a.s.gates
    cdef floating* dw_ih = <floating*> a.dw_ih
    cdef floating* dw_hh = <floating*> a.dw_hh
    cdef floating* tmp = <floating*> a.dw_tmp
    cdef floating* db = <floating*> a.db
    for blk in range(n_blocks):
        r0 = blk * H + g0
        if _direct_dw(I, H):
            _gemm_tn2(rows, N, dg + r0, G, <const floating*> a.s.x, a.s.x_ld, I,
                      dw_ih + <Py_ssize_t> r0 * I, I, <const floating*> a.s.h_prev, a.s.hp_ld,
                      H, dw_hh + <Py_ssize_t> r0 * H, H)
        elif tmp != NULL:
            gemm(True, False, rows, W, N, <floating> 1.0, dg + r0, G,
                 <const floating*> a.s.x, <int> a.s.x_ld, <floating> 0.0,
                 tmp + <Py_ssize_t> r0 * W, W)
            for r in range(r0, r0 + rows):
                memcpy(dw_ih + <Py_ssize_t> r * I, tmp + <Py_ssize_t> r * W,
                       I * sizeof(floating))
                memcpy(dw_hh + <Py_ssize_t> r * H, tmp + <Py_ssize_t> r * W + I,
                       H * sizeof(floating))
        else:
            if I > 0:
                gemm(True, False, rows, I, N, <floating> 1.0, dg + r0, G,
                     <const floating*> a.s.x, <int> a.s.x_ld, <floating> 0.0,
                     dw_ih + <Py_ssize_t> r0 * I, I)
            gemm(True, False, rows, H, N, <floating> 1.0, dg + r0, G,
                 <const floating*> a.s.h_prev, <int> a.s.hp_ld, <floating> 0.0,
                 dw_hh + <Py_ssize_t> r0 * H, H)
        if a.tokens == NULL:
            if floating is float:
                pylstm_column_sums_f(dg + r0, N, rows, G, db + r0)
            else:
                pylstm_column_sums_d(dg + r0, N, rows, G, db + r0)
            continue
        # Each column sums its rows in row order, whatever the threads' halves;
        # the thread that sums a column clears it first (no pass before the call).
        for r in range(a.n_table):
            memset(a.d_table + <Py_ssize_t> r * G + r0, 0, rows * sizeof(double))
        if floating is float:
            pylstm_scatter_rows_f(dg + r0, N, rows, G, a.tokens, a.d_table + r0, G)
        else:
            pylstm_scatter_rows_d(dg + r0, N, rows, G, a.tokens, a.d_table + r0, G)
        # Every row of dG went to one row of the table: the bias gradient is the
        # sum of the table's rows (float64, rounded once), not another pass over dG.
        for c in range(r0, r0 + rows):
            total = 0.0
            for r in range(a.n_table):
                total += a.d_table[<Py_ssize_t> r * G + c]
            db[c] = <floating> total
    if a.tokens != NULL:
        _table_products(a, dw_ih, g0, rows)


cdef void _table_products(_BackwardLoop* a, floating* dw_ih, int g0, int rows) noexcept nogil:
    """From the table's gradient, for each half of the gate columns that
    ``g0 .. g0 + rows - 1`` covers: its rows of ``dW_ih = dTable^T E`` (in
    float64, rounded once) and its part of the embedding's gradient
    ``dTable W_ih`` (summed by :func:`backward` after the threads). The
    halves are fixed, whether one thread makes both or each thread one, so
    the bits do not depend on the threads (test_lookup_projection)."""
    cdef int G = 4 * a.s.H
    cdef int I = a.s.n_in
    cdef int V = a.n_table
    cdef int h, lo, hi
    cdef Py_ssize_t i
    for h in range(2):
        lo = 0 if h == 0 else G // 2
        hi = G // 2 if h == 0 else G
        if lo < g0 or hi > g0 + rows:
            continue  # the other thread's half
        gemm(True, False, hi - lo, I, V, <double> 1.0, a.d_table + lo, G, a.emb64, I,
             <double> 0.0, a.dw64 + <Py_ssize_t> lo * I, I)
        for i in range(<Py_ssize_t> lo * I, <Py_ssize_t> hi * I):
            dw_ih[i] = <floating> a.dw64[i]
        gemm(False, False, V, I, hi - lo, <double> 1.0, a.d_table + lo, G,
             a.w_ih64 + <Py_ssize_t> lo * I, I, <double> 0.0,
             a.emb_parts + <Py_ssize_t> h * V * I, I)


cdef inline bint _direct_dw(int I, int H) noexcept nogil:
    return _use_packed and I + H <= DIRECT_DW_MAX_WIDTH


def direct_weight_gradients(int n_in, int hidden):
    """Whether :func:`backward` writes the weight gradients with its own
    kernel, straight into ``dw_ih`` and ``dw_hh`` (``n_in + hidden`` at
    most 256, with the packed products on): then it never needs the scratch of the fused
    GEMM (``fuse`` is ignored).

    Examples
    --------
    >>> from pylstm import _lstm
    >>> _lstm.direct_weight_gradients(10**6, 4)
    False
    """
    return bool(_direct_dw(n_in, hidden))


def _gemm_tn(const floating[:, :] a, const floating[:, :] b1, const floating[:, :] b2,
             floating[:, :] c1, floating[:, :] c2):
    """``c1 = a.T @ b1`` and ``c2 = a.T @ b2`` through ``_kernels.c``'s
    ``pylstm_gemm_tn`` (for tests). Rows of every argument must
    be contiguous; ``a`` is (k, m), ``b1`` (k, n1), ``b2`` (k, n2)."""
    cdef int k = <int> a.shape[0]
    cdef int m = <int> a.shape[1]
    cdef int n1 = <int> b1.shape[1]
    cdef int n2 = <int> b2.shape[1]
    cdef Py_ssize_t s = sizeof(floating)
    if (b1.shape[0] != k or b2.shape[0] != k or c1.shape[0] != m or c2.shape[0] != m
            or c1.shape[1] != n1 or c2.shape[1] != n2 or k == 0 or m == 0
            or n1 == 0 or n2 == 0):
        raise ValueError("shapes do not match")
    cdef Py_ssize_t lda = _row_stride(k, m, a.strides[0], a.strides[1], s, "a")
    cdef Py_ssize_t l1 = _row_stride(k, n1, b1.strides[0], b1.strides[1], s, "b1")
    cdef Py_ssize_t l2 = _row_stride(k, n2, b2.strides[0], b2.strides[1], s, "b2")
    cdef Py_ssize_t o1 = _row_stride(m, n1, c1.strides[0], c1.strides[1], s, "c1")
    cdef Py_ssize_t o2 = _row_stride(m, n2, c2.strides[0], c2.strides[1], s, "c2")
    with nogil:
        _gemm_tn2(m, k, &a[0, 0], lda, &b1[0, 0], l1, n1, &c1[0, 0], o1,
                  &b2[0, 0], l2, n2, &c2[0, 0], o2)


cdef struct _GateRows:
    # One thread's gate rows of the weight gradients (after an unsplit loop).
    _BackwardLoop* a
    int g0, rows


cdef void _gate_rows_task(void* p) noexcept nogil:
    """:func:`_weight_gradients` for the ``_GateRows`` at ``p`` (a thread's entry point)."""
    cdef _GateRows* r = <_GateRows*> p
    if r.a.s.is_float:
        _weight_gradients(<const float*> r.a.s.x, r.a, r.g0, r.rows, 1)
    else:
        _weight_gradients(<const double*> r.a.s.x, r.a, r.g0, r.rows, 1)


cdef void _backward_task(void* p) noexcept nogil:
    """Run :func:`_backward_loop` for the ``_BackwardLoop`` at ``p`` (a thread's entry point)."""
    cdef _BackwardLoop* a = <_BackwardLoop*> p
    if a.s.is_float:
        _backward_loop(<const float*> a.s.x, a)
    else:
        _backward_loop(<const double*> a.s.x, a)


def backward(const floating[:, :] x,
             const int[::1] lengths,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, ::1] c0,
             floating[:, ::1] gates,
             const floating[:, ::1] c_cache,
             const floating[:, :] h_prev_cache,
             const floating[:, :] d_out,
             Py_ssize_t offset,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, :] dx,
             double dx_beta,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db,
             floating[:, ::1] scratch,
             bint dout_batch_first=False,
             const Py_ssize_t[::1] bf_rows=None,
             bint with_dx=True,
             int threads=1,
             floating[::1] work=None,
             bint fuse=True,
             const floating[:, ::1] mask=None,
             const int[::1] tokens=None,
             double[:, ::1] d_table=None,
             const floating[:, ::1] embedding=None,
             floating[:, ::1] d_embedding=None,
             double[::1] table_work=None):
    """Backpropagation through time for one direction.

    Parameters
    ----------
    x, lengths, w_ih, w_hh, offset, reverse
        As given to :func:`forward_train` (compact layout, see there).
    c0 : (B, H) array
        Initial cell state of that forward call.
    gates, c_cache, h_prev_cache
        The caches filled by :func:`forward_train`; ``gates`` is overwritten
        with the gradients of the gate pre-activations (so one cache serves
        one backward).
    d_out : (N, D*H) array
        Gradient of the loss with respect to ``out``, compact layout.
    dh, dc : (B, H) arrays
        Gradients with respect to the final states on entry; with respect to
        the initial states on exit.
    dx : (N, I) array
        Receives ``dL/dx + dx_beta * dx`` (``dx_beta = 1`` accumulates the
        second direction of a bidirectional layer).
    dw_ih, dw_hh, db : arrays
        Receive the weight gradients; ``db`` serves both biases.
    scratch : (B, 4H) array
        Work space.
    dout_batch_first : bool, default False
        ``d_out`` is the caller's batch-first (B * T', D*H) gradient instead,
        time ``t`` of sorted row ``b`` at row ``bf_rows[b] + t``.
    bf_rows : (B,) intp array, default None
        As in :func:`forward_train`; needed with ``dout_batch_first``.
    with_dx : bool, default True
        Compute ``dx``; with False it is left alone, and the caller forms it
        from the gate gradients left in ``gates`` (:func:`input_gradient`),
        for example in the place of ``x`` once every direction is done.
    threads : int, default 1
        As in :func:`forward_train`: two threads may share the time loop;
        then, or else for at least a million multiply-adds, they also share the
        weight-gradient GEMMs after it, by gate rows (BLAS held to one thread
        by the caller). The input gradient uses BLAS's own threads.
    work : 1-D array, default None
        As in :func:`forward_train`. It may be the array whose head holds
        ``dw_ih``, ``dw_hh`` and ``db`` (see :func:`gradient_work_size`):
        its scratch is dead before they are written.
    fuse : bool, default True
        When ``h_prev_cache`` continues the rows of ``x`` (see
        :func:`forward_train`), make both weight gradients with one GEMM
        into a scratch block of their size, then copy them out; with False
        (or where that block would overlap the gradients) two GEMMs write
        them in place.
    mask : (B, H) array, default None
        The recurrent-dropout mask given to :func:`forward_train`.
    tokens, d_table : (N,) int32 array and (V, 4H) float64 array, default None
        For a forward whose input projection was looked up (its ``table``
        and ``tokens``, the table being ``embedding @ w_ih.T``): ``d_table``
        receives the table's gradient, row ``v`` the sum of the gate
        gradients of the rows whose token is ``v`` (in float64, rows in
        order, the same bits on any number of threads). From it, V rows
        instead of N, ``dw_ih`` receives ``d_table.T @ embedding`` and
        ``d_embedding`` the embedding's gradient ``d_table @ w_ih``, both in
        float64 and rounded once. Needs ``with_dx=False`` (the embedding's
        gradient stands for the input's) and the three arrays below.
    embedding, d_embedding : (V, I) arrays, default None
        With ``tokens``: the lookup's embedding, and the array that receives
        its gradient.
    table_work : 1-D float64 array, default None
        With ``tokens``: scratch of :func:`table_work_size` entries.

    Returns
    -------
    int
        The number of threads that ran the time loop (1 or 2).
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int G = <int> w_ih.shape[0]
    cdef int H = G // 4
    cdef int nr = PYLSTM_NR_F if floating is float else PYLSTM_NR_D
    cdef int T, used
    cdef bint split
    cdef Py_ssize_t N
    cdef _BackwardLoop a, second
    cdef floating* w_pack = NULL
    cdef floating* scratch_alt = NULL
    cdef floating* dw_tmp = NULL
    cdef floating* block = NULL
    cdef Py_ssize_t pack_len = 0, tmp_len = 0
    cdef _GateRows rows0, rows1
    cdef Py_ssize_t dx_ld = I
    cdef _Work ws
    cdef Py_ssize_t V = 0, i
    cdef double* work64 = NULL
    cdef Py_ssize_t* off = _step_offsets(lengths)
    _work_from(&ws, work)
    try:
        T = lengths[0]
        N = off[T]
        _check_forward(lengths, off, bf_rows, x.shape[0], I, w_ih.shape[1], H,
                       dh.shape[0], dc.shape[0], d_out.shape[0], d_out.shape[1], offset,
                       False, dout_batch_first)
        _check_rows(gates.shape[0], gates.shape[1], N, G, "gates")
        _check_rows(c_cache.shape[0], c_cache.shape[1], N, H, "c_cache")
        _check_rows(h_prev_cache.shape[0], h_prev_cache.shape[1], N, H, "h_prev_cache")
        if with_dx:
            _check_rows(dx.shape[0], dx.shape[1], N, I, "dx")
            dx_ld = _row_stride(N, I, dx.strides[0], dx.strides[1], sizeof(floating), "dx")
        _check_rows(c0.shape[0], c0.shape[1], B, H, "c0")
        _check_rows(scratch.shape[0], scratch.shape[1], B, G, "scratch")
        _check_mask(mask, B, H)
        _check_table_gradient(tokens, d_table, N, G, with_dx)
        if tokens is not None:
            _check_table_factors(embedding, d_embedding, table_work, d_table.shape[0], I, H)
        elif embedding is not None or d_embedding is not None or table_work is not None:
            raise ValueError("embedding, d_embedding and table_work go with tokens")
        if (w_hh.shape[0] != G or w_hh.shape[1] != H or dw_ih.shape[0] != G
                or dw_ih.shape[1] != I or dw_hh.shape[0] != G or dw_hh.shape[1] != H
                or db.shape[0] != G):
            raise ValueError("weight or gradient arrays do not match 4H x (I, H)")
        memset(&a, 0, sizeof(a))
        a.s.is_float = floating is float
        a.s.nparts = 1
        a.s.T, a.s.B, a.s.n_in, a.s.H = T, B, I, H
        a.s.lengths = &lengths[0]
        a.s.off = off
        a.s.bfr = _bf_pointer(bf_rows)
        a.s.w_hh = &w_hh[0, 0]
        a.c0 = &c0[0, 0]
        a.s.gates = &gates[0, 0]
        a.s.c_cache = <void*> &c_cache[0, 0]
        a.d_out = &d_out[0, 0]
        a.dout_width = <int> _row_stride(d_out.shape[0], d_out.shape[1], d_out.strides[0],
                                         d_out.strides[1], sizeof(floating), "d_out")
        a.dout_batch_first = dout_batch_first
        a.s.offset = offset
        a.s.reverse = reverse
        a.dh = &dh[0, 0]
        a.dc = &dc[0, 0]
        a.scratch = &scratch[0, 0]
        a.scratch_alt = &scratch[0, 0]
        a.s.x = &x[0, 0]
        a.s.x_ld = _row_stride(N, I, x.strides[0], x.strides[1], sizeof(floating), "x")
        a.s.n_in = I
        a.s.h_prev = <void*> &h_prev_cache[0, 0]
        a.s.hp_ld = _row_stride(N, H, h_prev_cache.strides[0], h_prev_cache.strides[1],
                                sizeof(floating), "h_prev_cache")
        if (fuse and tokens is None and not _direct_dw(I, H) and N > 1
                and a.s.hp_ld == a.s.x_ld and a.s.x_ld == I + H
                and <const floating*> a.s.h_prev == &x[0, 0] + I):
            # Rows of h_prev continue those of x: one GEMM for both weight
            # gradients (see _weight_gradients).
            tmp_len = <Py_ssize_t> G * (I + H)
        if _packs(T, B):
            pack_len = _packed_len(G, H, floating is float)
        a.dw_ih = &dw_ih[0, 0]
        a.dw_hh = &dw_hh[0, 0]
        a.db = &db[0]
        a.n_rows = N
        a.s.mask = &mask[0, 0] if mask is not None else NULL
        if tokens is not None:
            a.tokens = &tokens[0]
            a.d_table = &d_table[0, 0]
            a.n_table = <int> d_table.shape[0]
            V = d_table.shape[0]
            # [W_ih | E] in float64, then dW_ih before rounding, then dE's two parts.
            work64 = &table_work[0]
            a.dw64 = work64 + (G + V) * I
            a.emb_parts = work64 + (2 * G + V) * I
            if floating is double:
                a.w_ih64, a.emb64 = &w_ih[0, 0], &embedding[0, 0]
            else:
                a.w_ih64, a.emb64 = work64, work64 + G * I
                with nogil:
                    for i in range(G * I):
                        work64[i] = (&w_ih[0, 0])[i]
                    for i in range(V * I):
                        work64[G * I + i] = (&embedding[0, 0])[i]
        with nogil:
            pylstm_enter()
            # One block for the packed W_hh of the time loop and then the fused
            # weight gradient: every thread has left the loop (a barrier, or the
            # loop's end) before the weight gradients are written.
            if tmp_len and _fused_overlaps(&ws, max(pack_len, tmp_len), tmp_len,
                                           &dw_ih[0, 0], &dw_hh[0, 0], &db[0], G, I, H):
                tmp_len = 0  # the caller's work holds the gradients: two GEMMs
            if pack_len or tmp_len:
                block = <floating*> _take(&ws, <size_t> max(pack_len, tmp_len)
                                          * sizeof(floating))
            if block != NULL and pack_len:
                w_pack = block
                _pack_into(&w_hh[0, 0], H, False, G, H, w_pack)
            if block != NULL and tmp_len:
                dw_tmp = block
            a.dw_tmp = dw_tmp
            a.s.w_pack = w_pack
            split = _split_ok(&a.s, threads, nr)
            if split and reverse:
                # The threads' skew of up to one step needs the step's scratch
                # copy of dG to alternate between two arrays.
                scratch_alt = <floating*> _take(&ws, <size_t> B * G * sizeof(floating))
                split = scratch_alt != NULL
                a.scratch_alt = scratch_alt if split else a.scratch
            second = a
            used = _run_loop(_backward_task, &a, &second, &a.s, &second.s, split)
            # Whole-sequence products over the N valid steps (a split loop's
            # threads have made the weight gradients already). A loop too
            # short to split still makes them by the same halves of the gate
            # rows, on two threads when it can, so that the results do not
            # depend on other calls in progress.
            if used == 1:
                rows0.a, rows0.g0, rows0.rows = &a, 0, G // 2
                rows1.a, rows1.g0, rows1.rows = &a, G // 2, G - G // 2
                if (threads >= 2 and PYLSTM_THREADS
                        and (not _split_sizes
                             or <double> N * G * (I + H) >= SPLIT_CALL_MACS)):
                    pylstm_run_both(_gate_rows_task, &rows0, &rows1)
                else:
                    _weight_gradients(&x[0, 0], &a, 0, G, 1)
            if tokens is not None:
                for i in range(V * I):
                    (&d_embedding[0, 0])[i] = <floating> (a.emb_parts[i]
                                                          + a.emb_parts[V * I + i])
            if with_dx:
                gemm(False, False, <int> N, I, G, <floating> 1.0, &gates[0, 0], G,
                     &w_ih[0, 0], I, <floating> dx_beta, &dx[0, 0], <int> dx_ld)
            pylstm_leave()
    finally:
        _give(&ws, block)
        _give(&ws, scratch_alt)
        free(off)
    return used


cdef int _check_table_gradient(const int[::1] tokens, double[:, ::1] d_table, Py_ssize_t N,
                               int G, bint with_dx) except -1:
    """ValueError unless :func:`backward`'s ``tokens`` and ``d_table`` are both
    None, or N tokens that are rows of a (V, G) table, without ``with_dx``."""
    cdef Py_ssize_t r
    if (tokens is None) != (d_table is None):
        raise ValueError("tokens and d_table go together")
    if tokens is None:
        return 0
    if with_dx:
        raise ValueError("a looked-up projection's backward has no input gradient "
                         "(with_dx=False)")
    if tokens.shape[0] != N:
        raise ValueError(f"tokens has {tokens.shape[0]} entries; one per row, {N}, needed")
    if d_table.shape[1] != G or d_table.shape[0] < 1:
        raise ValueError(f"d_table has shape ({d_table.shape[0]}, {d_table.shape[1]}); "
                         f"(V, {G}) with V >= 1 needed")
    for r in range(N):
        if tokens[r] < 0 or tokens[r] >= d_table.shape[0]:
            raise ValueError(f"token {tokens[r]} at row {r} is not a row of the "
                             f"{d_table.shape[0]}-row d_table")
    return 0


def table_work_size(Py_ssize_t vocab, int n_in, int hidden):
    """Entries of :func:`backward`'s float64 ``table_work`` for a (vocab, n_in)
    embedding and ``hidden`` units: ``W_ih`` and the embedding in float64,
    ``dW_ih`` before its rounding and the two parts of the embedding's
    gradient.

    Examples
    --------
    >>> from pylstm import _lstm
    >>> _lstm.table_work_size(10, 4, 8)
    376
    """
    return (2 * 4 * hidden + 3 * vocab) * n_in


cdef int _check_table_factors(const floating[:, ::1] embedding,
                              floating[:, ::1] d_embedding, double[::1] table_work,
                              Py_ssize_t V, int I, int H) except -1:
    """ValueError unless :func:`backward`'s lookup arrays fit a (V, I) embedding."""
    if embedding is None or d_embedding is None or table_work is None:
        raise ValueError("tokens need embedding, d_embedding and table_work")
    if embedding.shape[0] != V or embedding.shape[1] != I:
        raise ValueError(f"embedding has shape ({embedding.shape[0]}, {embedding.shape[1]}); "
                         f"({V}, {I}) needed")
    if d_embedding.shape[0] != V or d_embedding.shape[1] != I:
        raise ValueError(f"d_embedding has shape ({d_embedding.shape[0]}, "
                         f"{d_embedding.shape[1]}); ({V}, {I}) needed")
    if table_work.shape[0] < table_work_size(V, I, H):
        raise ValueError(f"table_work has {table_work.shape[0]} entries; "
                         f"{table_work_size(V, I, H)} needed")
    return 0


cdef struct _Rows:
    # One thread's rows of the input gradient dx = dG @ W_ih + beta * dx.
    bint is_float
    const void* gates
    const void* w_ih
    void* dx
    double beta
    int r0, r1, G, n_in
    Py_ssize_t dx_ld
    const void* w_pack        # W_ih packed as the (4H, I) right-hand factor, or NULL


cdef void _input_gradient_rows(const floating* gates, _Rows* a) noexcept nogil:
    """Rows ``r0 .. r1 - 1`` of the input gradient (one GEMM)."""
    if a.r1 > a.r0 and a.w_pack != NULL:
        _gemm_packed(a.r1 - a.r0, a.n_in, a.G, gates + <Py_ssize_t> a.r0 * a.G, a.G,
                     <const floating*> a.w_pack, <floating*> a.dx + a.r0 * a.dx_ld,
                     <int> a.dx_ld, a.beta != 0.0)
    elif a.r1 > a.r0:
        gemm(False, False, a.r1 - a.r0, a.n_in, a.G, <floating> 1.0,
             gates + <Py_ssize_t> a.r0 * a.G, a.G, <const floating*> a.w_ih, a.n_in,
             <floating> a.beta, <floating*> a.dx + a.r0 * a.dx_ld, <int> a.dx_ld)


cdef void _input_gradient_task(void* p) noexcept nogil:
    cdef _Rows* a = <_Rows*> p
    if a.is_float:
        _input_gradient_rows(<const float*> a.gates, a)
    else:
        _input_gradient_rows(<const double*> a.gates, a)


def input_gradient(const floating[:, ::1] gates,
                   const floating[:, ::1] w_ih,
                   floating[:, :] dx,
                   double beta,
                   int threads=1,
                   floating[::1] work=None):
    """``dx = gates @ w_ih + beta * dx``: the input gradient of one direction.

    ``gates`` holds the gate gradients that :func:`backward` left, (N, 4H);
    ``w_ih`` is (4H, I) and ``dx`` (N, I). ``dx`` may be the layer input
    that the backward calls have finished reading. With ``threads=2`` (and
    BLAS held to one thread by the caller) two threads take half of the rows
    each; the halves may round differently from one call over all rows.
    ``work`` as in :func:`forward_train`. Returns the number of threads used.
    """
    cdef int N = <int> gates.shape[0]
    cdef int G = <int> gates.shape[1]
    cdef int I = <int> w_ih.shape[1]
    cdef _Rows first, second
    cdef int used = 1
    cdef _Work ws
    _work_from(&ws, work)
    if w_ih.shape[0] != G or dx.shape[0] != N or dx.shape[1] != I:
        raise ValueError(f"shapes ({N}, {G}) @ ({w_ih.shape[0]}, {I}) -> "
                         f"({dx.shape[0]}, {dx.shape[1]}) do not match")
    if N == 0:
        return 1
    first.is_float = floating is float
    first.gates = &gates[0, 0]
    first.w_ih = &w_ih[0, 0]
    first.dx = &dx[0, 0]
    first.beta = beta
    first.G, first.n_in, first.r0, first.r1 = G, I, 0, N
    first.dx_ld = _row_stride(N, I, dx.strides[0], dx.strides[1], sizeof(floating), "dx")
    first.w_pack = NULL
    with nogil:
        pylstm_enter()
        if (_use_packed and N >= PACKED_MIN_ROWS and (beta == 0.0 or beta == 1.0)
                and <double> G * I * sizeof(floating) <= PACKED_DX_BYTES):
            # W_ih, the right-hand factor of every row block, packed once:
            # while it sits in L2 (PACKED_DX_BYTES) the packed kernel beats
            # BLAS at the LSTM's narrow I; larger, BLAS's blocking wins
            # (benchmarks/bench_lstm.py; figures in docs/architecture.rst).
            first.w_pack = _packed_weights(&w_ih[0, 0], I, False, G, I, &ws)
        if (threads >= 2 and PYLSTM_THREADS
                and (not _split_sizes or <double> N * G * I >= SPLIT_CALL_MACS)):
            # By halves of the rows, on two threads when it can: the same
            # products either way.
            second = first
            first.r1 = N // 2
            second.r0 = N // 2
            used = pylstm_run_both(_input_gradient_task, &first, &second)
        else:
            _input_gradient_task(&first)
        _give(&ws, <void*> first.w_pack)
        pylstm_leave()
    return used
