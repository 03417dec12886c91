# The forward time loop, shared by training and inference, and its entry
# points forward_train and forward_infer.


cdef void _forward(const floating* x, _ForwardLoop* a) noexcept nogil:
    """The forward time loop shared by training and inference (one thread's part).

    Steps are taken in chunks of ``K``: the chunk's active input rows are
    gathered into ``xbuf`` (a reversed row by index arithmetic) and
    projected by one GEMM into ``gbuf``; then each step adds the recurrent
    GEMM of the active prefix and runs the fused gate pass. With ``gates``
    NULL nothing per step is kept (inference); otherwise the caches, in the
    compact layout of ``off`` (time order), receive what BPTT needs. Both
    modes therefore round identically. With ``x_batch_first`` /
    ``out_batch_first``, ``x`` / ``out`` are the caller's own batch-first
    arrays, time ``t`` of sorted row ``b`` at row ``bfr[b] + t``, without
    packed copies.

    With ``nparts == 2`` two threads run this loop, each for its half of the
    hidden units (all four gates of them): the projection and recurrent
    products through the packed weights, column panels of its own units;
    the gate pass for its units. h_{t-1} and h_t are separate arrays (h and
    h_alt, alternating), so that the barrier after each step is the only
    synchronisation. With ``by_rows`` the threads share the rows instead,
    thread p those of index p, p + 2, ... (alternate rows, so that shrinking
    lengths leave both about the same work), from the gather of their input
    and its projection to the gate pass: each reads only rows it wrote
    itself, and the threads wait for each other only where a chunk starts
    with fewer rows than the last. Results are bit-identical to one
    thread's either way.

    A training call writes its caches by streaming stores (``_stream_keep``),
    and each thread fences them before it returns.
    """
    cdef int T = a.s.T, B = a.s.B, I = a.s.n_in, H = a.s.H, K = a.K
    cdef int G = 4 * H
    cdef const int* lengths = a.s.lengths
    cdef const Py_ssize_t* off = a.s.off
    cdef const Py_ssize_t* bfr = a.s.bfr
    cdef const floating* w_ih = <const floating*> a.w_ih
    cdef const floating* w_hh = <const floating*> a.s.w_hh
    cdef const floating* w_hh_t = <const floating*> a.w_hh_t
    cdef const floating* w_pack = <const floating*> a.s.w_pack
    cdef const floating* ih_pack = <const floating*> a.ih_pack
    cdef const floating* bias = <const floating*> a.bias
    cdef floating* h = <floating*> a.h
    cdef floating* h_alt = <floating*> a.h_alt
    cdef floating* c = <floating*> a.c
    cdef floating* out = <floating*> a.out
    cdef floating* xbuf = <floating*> a.xbuf
    cdef floating* gbuf = <floating*> a.gbuf
    cdef floating* gates = <floating*> a.s.gates
    cdef floating* c_cache = <floating*> a.s.c_cache
    cdef floating* h_prev = <floating*> a.s.h_prev
    cdef const floating* mask = <const floating*> a.s.mask
    cdef int out_width = a.out_width
    cdef Py_ssize_t offset = a.s.offset
    cdef Py_ssize_t x_ld = a.s.x_ld
    cdef Py_ssize_t hp_ld = a.s.hp_ld
    cdef bint reverse = a.s.reverse
    cdef bint split = a.s.nparts > 1
    cdef bint by_rows = split and a.s.by_rows
    cdef int pn = H // a.s.nparts            # units of this thread's projection
    cdef int pu0 = a.s.part * pn
    cdef int hn = H if by_rows else pn     # units of its products and gate pass
    cdef int u0 = 0 if by_rows else pu0
    cdef int b0 = a.s.part if by_rows else 0  # its rows: b0, b0 + bs, ...
    cdef int bs = 2 if by_rows else 1
    cdef int last_chunk = 0
    cdef int n = B
    cdef bint direct
    cdef const floating* xa
    cdef Py_ssize_t xa_ld
    cdef int n_chunk, s0, k, kk, s, b, bi, t, gb, j0, jb, ns, g
    cdef Py_ssize_t tb, ob
    cdef floating* gp
    cdef floating* gk
    cdef floating* ck
    cdef floating* hk
    cdef floating* h_cur = h
    cdef floating* h_nxt = h_alt
    cdef floating* swap
    cdef floating one = 1.0
    cdef floating zero = 0.0
    # What a training call keeps goes by streaming stores (_stream_keep),
    # fenced at the end.
    cdef bint stream = gates != NULL and _stream_keep
    if mask != NULL:
        # Recurrent dropout: h_{t-1} enters the recurrent product (and the
        # cache of dW_hh) through the row's mask, h0 included; each thread
        # masks what it wrote, before the barrier that lets the other read it.
        for bi in range((B - b0 + bs - 1) // bs):
            b = b0 + bi * bs
            _mask_row(h + <Py_ssize_t> b * H + u0, mask + <Py_ssize_t> b * H + u0, hn)
    s0 = 0
    while s0 < T:
        while n > 0 and lengths[n - 1] <= s0:
            n -= 1
        if n == 0:
            break
        n_chunk = n
        kk = K if s0 + K <= T else T - s0
        # Time-ordered compact rows with every row active through the chunk
        # are already the chunk's (kk * n_chunk, I) block: project them in
        # place. Otherwise gather the chunk's input rows into xbuf, (kk,
        # n_chunk, I) in step order, rows that end within the chunk reading
        # as zeros from there on. (The first thread gathers, and a split by
        # units waits for it at the barrier below; split by rows, each
        # thread gathers its own rows.)
        direct = not reverse and not a.x_batch_first and lengths[n_chunk - 1] >= s0 + kk
        if direct:
            xa = x + off[s0] * x_ld
            xa_ld = x_ld
        else:
            xa = xbuf
            xa_ld = I
        if by_rows:
            # Each thread gathers and projects its own rows, which no other
            # thread reads or writes. Only when the chunk has fewer rows than
            # the last do a thread's rows of the buffers move (to where the
            # other's were): then both must have left the last chunk.
            if n_chunk != last_chunk and last_chunk > 0:
                pylstm_barrier_wait(a.s.bar)
            last_chunk = n_chunk
        if a.table != NULL:
            # Each thread looks up the rows or units it computes, which no
            # other thread writes (test_lookup_projection).
            _lookup_chunk(<const floating*> a.table, a, gbuf, s0, kk, n_chunk, b0, bs,
                          0 if by_rows else pu0, H if by_rows else pn)
            direct = True  # nothing to gather
        for k in range(kk if not direct and (by_rows or a.s.part == 0) else 0):
            s = s0 + k
            if not by_rows and not reverse and not a.x_batch_first and x_ld == I:
                ns = <int> (off[s + 1] - off[s])
                memcpy(xbuf + <Py_ssize_t> k * n_chunk * I, x + off[s] * I,
                       <size_t> ns * I * sizeof(floating))
                if ns < n_chunk:
                    memset(xbuf + (<Py_ssize_t> k * n_chunk + ns) * I, 0,
                           <size_t> (n_chunk - ns) * I * sizeof(floating))
            else:
                for bi in range((n_chunk - b0 + bs - 1) // bs):
                    b = b0 + bi * bs
                    _gather_row(x, a, xbuf + (<Py_ssize_t> k * n_chunk + b) * I, b, s)
        if a.table != NULL:
            # Split by units, the first step's product reads the other
            # thread's half of h0, masked by that thread: the barrier that the
            # projection below would give (test_lookup_projection, mask).
            if split and not by_rows and mask != NULL and s0 == 0:
                pylstm_barrier_wait(a.s.bar)
        elif by_rows:
            # (One thread's rows are fewer than the chunk's: the tile loop
            # rounds them as one thread's GEMM over the whole chunk does.)
            if kk * n_chunk == 1:  # as one thread: a matrix-vector product
                if b0 == 0:
                    _gemm_packed(1, G, I, xa, <int> xa_ld, ih_pack, gbuf, G, False)
            elif n_chunk % 2 == 0:  # its rows are every other row of the chunk
                _gemm_packed_tiles(kk * n_chunk // 2, G, I, xa + b0 * xa_ld,
                                   <int> (2 * xa_ld), ih_pack,
                                   gbuf + <Py_ssize_t> b0 * G, 2 * G)
            else:  # ... of each step
                for k in range(kk):
                    tb = <Py_ssize_t> k * n_chunk + b0
                    _gemm_packed_tiles((n_chunk - b0 + 1) // 2, G, I, xa + tb * xa_ld,
                                       <int> (2 * xa_ld), ih_pack, gbuf + tb * G, 2 * G)
        elif split:
            pylstm_barrier_wait(a.s.bar)
            for g in range(4):
                _gemm_packed(kk * n_chunk, pn, I, xa, <int> xa_ld,
                             ih_pack + <Py_ssize_t> (g * H + pu0) * I,
                             gbuf + g * H + pu0, G, False)
        elif ih_pack != NULL:
            _gemm_packed(kk * n_chunk, G, I, xa, <int> xa_ld, ih_pack, gbuf, G, False)
        else:
            gemm(False, True, kk * n_chunk, G, I, one, xa, <int> xa_ld, w_ih, I, zero,
                 gbuf, G)
        for k in range(kk):
            s = s0 + k
            while n > 0 and lengths[n - 1] <= s:
                n -= 1
            if n == 0:
                break
            gp = gbuf + <Py_ssize_t> k * n_chunk * G
            # Recurrent term for the active prefix: gp[:n] += h[:n] @ w_hh^T,
            # with w_hh^T stored (H, 4H) so that BLAS sees a no-transpose
            # product (OpenBLAS then takes its copy-free small-matrix kernel
            # when the product is small).
            if by_rows:  # rows b0, b0 + 2, ... of the active n
                _gemm_packed((n - b0 + 1) // 2, G, H, h_cur + <Py_ssize_t> b0 * H, 2 * H,
                             w_pack, gp + <Py_ssize_t> b0 * G, 2 * G, True)
            elif split:
                for g in range(4):
                    _gemm_packed(n, hn, H, h_cur, H,
                                 _w_hh_t_block(w_pack, H, a.grouped, g, u0),
                                 gp + g * H + u0, G, True)
            elif w_pack != NULL and _packed_rows(n):
                _recurrent_packed(n, H, h_cur, w_pack, a.grouped, gp)
            elif n == 1:
                gemv(False, G, H, one, w_hh, H, h_cur, one, gp)
            else:
                gb = _column_block(n, G, H, 64) if floating is float else G
                j0 = 0
                while j0 < G:
                    jb = gb if j0 + gb <= G else G - j0
                    gemm(False, False, n, jb, H, one, h_cur, H, w_hh_t + j0, G, one,
                         gp + j0, G)
                    j0 += jb
            for bi in range((n - b0 + bs - 1) // bs):
                b = b0 + bi * bs
                t = lengths[b] - 1 - s if reverse else s
                tb = off[t] + b
                ob = bfr[b] + t if a.out_batch_first else tb
                gk = ck = hk = NULL  # inference keeps nothing
                if gates != NULL:
                    gk = gates + tb * G + u0
                    ck = c_cache + tb * H + u0
                    hk = h_prev + tb * hp_ld + u0
                _cell_forward(gp + <Py_ssize_t> b * G + u0, bias + u0,
                              h_cur + <Py_ssize_t> b * H + u0,
                              h_nxt + <Py_ssize_t> b * H + u0,
                              c + <Py_ssize_t> b * H + u0,
                              out + ob * out_width + offset + u0, gk, ck, hk, hn, H,
                              stream)
                if mask != NULL:
                    _mask_row(h_nxt + <Py_ssize_t> b * H + u0,
                              mask + <Py_ssize_t> b * H + u0, hn)
            if split and not by_rows:
                pylstm_barrier_wait(a.s.bar)
            swap = h_cur
            h_cur = h_nxt
            h_nxt = swap
        s0 += kk
    if stream:  # before the caller, or the other thread, may read them
        pylstm_store_fence()
    # A row of odd length took its last step into h_alt: its final state to h.
    for bi in range((B - b0 + bs - 1) // bs):
        b = b0 + bi * bs
        if mask != NULL:  # the final state is h_t itself, unmasked, as out has it
            t = 0 if reverse else lengths[b] - 1
            ob = bfr[b] + t if a.out_batch_first else off[t] + b
            memcpy(h + <Py_ssize_t> b * H + u0, out + ob * out_width + offset + u0,
                   hn * sizeof(floating))
        elif lengths[b] % 2 == 1:
            memcpy(h + <Py_ssize_t> b * H + u0, h_alt + <Py_ssize_t> b * H + u0,
                   hn * sizeof(floating))


cdef void _forward_task(void* p) noexcept nogil:
    """Run :func:`_forward` for the ``_ForwardLoop`` at ``p`` (a thread's entry point)."""
    cdef _ForwardLoop* a = <_ForwardLoop*> p
    if a.s.is_float:
        _forward(<const float*> a.s.x, a)
    else:
        _forward(<const double*> a.s.x, a)


# The training forward keeps its gates and states (read back only by the
# backward, after all of the forward) by streaming stores: plain stores would
# first read every line into the caches and push out the packed weights and
# the products that each step reads again (benchmarks/bench_streaming.py).
# The projected loop (_projection.pxi) stores plainly: its h_{t-1} cache is
# scratch rewritten row by row.
cdef bint _stream_keep = True


def set_streaming(bint enabled):
    """Keep a training forward's gates and states by streaming stores (True,
    the default; not with ``proj_size``) or plain ones; returns the old
    setting. Results are bit-identical either way (for tests and benchmarks;
    not while a kernel runs)."""
    global _stream_keep
    old = bool(_stream_keep)
    _stream_keep = enabled
    return old


cdef int _run_forward(const floating[:, :] x, const int[::1] lengths,
                      const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                      const floating[:, ::1] w_hh_t, const floating[::1] bias,
                      floating[:, ::1] h, floating[:, ::1] c, floating[:, ::1] out,
                      Py_ssize_t offset, bint reverse, floating[::1] xbuf,
                      floating[::1] gbuf, floating* gates, floating* c_cache,
                      floating* h_prev, Py_ssize_t hp_ld, bint x_batch_first,
                      bint out_batch_first, const Py_ssize_t[::1] bf_rows,
                      int threads, floating[::1] pack_cache=None,
                      floating[::1] work=None, const floating* mask=NULL,
                      const floating* table=NULL, const int* tokens=NULL) except -1:
    """Check, set up and run one forward call (caches NULL: inference; the
    caller has checked their sizes). Returns the threads that ran the loop."""
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int H = <int> w_hh.shape[1]
    cdef int K = _chunk_steps(xbuf.shape[0], gbuf.shape[0], B, I, 4 * H)
    cdef int nr = PYLSTM_NR_F if floating is float else PYLSTM_NR_D
    cdef int T, used
    cdef _ForwardLoop a, second
    cdef floating* w_pack = NULL
    cdef floating* ih_pack = NULL
    cdef floating* h_alt = NULL
    cdef _Work ws
    cdef bint cached = False
    cdef Py_ssize_t* off = _step_offsets(lengths)
    _work_from(&ws, work)
    try:
        T = lengths[0]
        _check_forward(lengths, off, bf_rows, x.shape[0], I, w_ih.shape[1], H,
                       h.shape[0], c.shape[0], out.shape[0], out.shape[1], offset,
                       x_batch_first, out_batch_first)
        _check_rows(bias.shape[0], 1, 4 * H, 1, "bias")
        memset(&a, 0, sizeof(a))
        a.s.gates = gates
        a.s.c_cache = c_cache
        a.s.h_prev = h_prev
        a.s.hp_ld = hp_ld
        a.s.mask = mask
        a.s.x_ld = _row_stride(x.shape[0], I, x.strides[0], x.strides[1],
                               sizeof(floating), "x")
        h_alt = <floating*> _take(&ws, <size_t> B * H * sizeof(floating))
        if h_alt == NULL:
            raise MemoryError()
        a.s.is_float = floating is float
        a.s.nparts = 1
        a.s.T, a.s.B, a.s.n_in, a.s.H, a.K = T, B, I, H, K
        a.s.lengths = &lengths[0]
        a.s.off = off
        a.s.bfr = _bf_pointer(bf_rows)
        a.s.x = &x[0, 0]
        a.w_ih = &w_ih[0, 0]
        a.s.w_hh = &w_hh[0, 0]
        a.w_hh_t = &w_hh_t[0, 0]
        a.bias = &bias[0]
        a.h = &h[0, 0]
        a.h_alt = h_alt
        a.c = &c[0, 0]
        a.out = &out[0, 0]
        a.out_width = <int> out.shape[1]
        a.s.offset = offset
        a.s.reverse = reverse
        a.x_batch_first = x_batch_first
        a.out_batch_first = out_batch_first
        a.xbuf = &xbuf[0]
        a.gbuf = &gbuf[0]
        a.table = table
        a.tokens = tokens
        if _packs(T, B):
            # With W_hh packed, W_ih^T is too, and the input projection runs
            # on it: the same products whether one or two threads take the
            # loop, so that results do not depend on the count. (No fallback
            # to BLAS here: the caller made w_hh_t only for BLAS steps.)
            # Where two threads could split the units, W_hh^T is packed in
            # the order of the split, whether or not this call splits (see
            # _pack_w_hh_t): the layout then does not change from call to
            # call, and the cached packs stay valid.
            a.grouped = (threads >= 2 and PYLSTM_THREADS and not _by_rows(B)
                         and H % (2 * nr) == 0)
            if (pack_cache is not None
                    and pack_cache.shape[0] >= _pack_cache_len(I, H, a.s.is_float)):
                cached = True
                with nogil:
                    _cached_packs(&pack_cache[0], &w_ih[0, 0], &w_hh[0, 0], I, H,
                                  a.grouped, &w_pack, &ih_pack)
            else:
                with nogil:
                    w_pack = <floating*> _take(&ws, _packed_len(H, 4 * H, a.s.is_float)
                                               * sizeof(floating))
                    if w_pack != NULL:
                        _pack_w_hh_t(&w_hh[0, 0], H, a.grouped, w_pack)
                    if table == NULL:  # a looked-up projection never reads it
                        ih_pack = _packed_weights(&w_ih[0, 0], I, True, I, 4 * H, &ws)
                if w_pack == NULL or (ih_pack == NULL and table == NULL):
                    raise MemoryError("no memory for the packed weights")
        a.s.w_pack = w_pack
        a.ih_pack = ih_pack
        with nogil:
            pylstm_enter()
            second = a
            used = _run_loop(_forward_task, &a, &second, &a.s, &second.s,
                             _split_ok(&a.s, threads, nr))
            pylstm_leave()
    finally:
        if not cached:
            _give(&ws, w_pack)
            _give(&ws, ih_pack)
        _give(&ws, h_alt)
        free(off)
    return used


def forward_train(const floating[:, :] x,
                  const int[::1] lengths,
                  const floating[:, ::1] w_ih,
                  const floating[:, ::1] w_hh,
                  const floating[:, ::1] w_hh_t,
                  const floating[::1] bias,
                  floating[:, ::1] h,
                  floating[:, ::1] c,
                  floating[:, ::1] out,
                  Py_ssize_t offset,
                  bint reverse,
                  floating[::1] xbuf,
                  floating[::1] gbuf,
                  floating[:, ::1] gates,
                  floating[:, ::1] c_cache,
                  floating[:, :] h_prev_cache,
                  bint out_batch_first=False,
                  const Py_ssize_t[::1] bf_rows=None,
                  int threads=1,
                  floating[::1] work=None,
                  const floating[:, ::1] mask=None,
                  const floating[:, ::1] table=None,
                  const int[::1] tokens=None):
    """Forward pass of one direction, keeping what BPTT needs.

    Per-step arrays are 2-D, one row per valid step of one sequence, in the
    compact time-major layout: with the batch sorted by decreasing length and
    ``n(t)`` rows still active at time ``t``, time ``t`` holds rows
    ``off(t) .. off(t) + n(t) - 1`` where ``off(t) = n(0) + ... + n(t-1)``
    (``t * B`` for a dense batch, which is then simply (T, B) flattened).
    No row is padding.

    Parameters
    ----------
    x : (N, I) array
        Layer input in the compact layout, N = sum of lengths. Like every
        per-step argument that is not written in full (``x``,
        ``h_prev_cache``, and ``dx`` of :func:`backward`), it may be a view
        of wider rows: rows must be contiguous, the row stride is free.
    lengths : (B,) int32 array
        Valid steps per row, decreasing, each at least 1; ``T = lengths[0]``.
    w_ih, w_hh, bias : (4H, I), (4H, H), (4H,) arrays
        Weights in gate order (i, f, g, o); ``bias = b_ih + b_hh``.
    w_hh_t : (H, 4H) array
        ``w_hh`` transposed, for steps whose recurrent product BLAS computes
        (2-7 active rows, calls of 1-2 steps, packed GEMM off); otherwise
        unread (see :func:`needs_w_hh_t`).
    h, c : (B, H) arrays
        Initial states on entry, each row's final state on exit.
    out : (N, D*H) array
        Receives h_t in columns ``offset .. offset + H``; untouched elsewhere.
    offset : int
        Column offset of this direction in ``out``.
    reverse : bool
        Run from each row's last valid step back to its first.
    xbuf, gbuf : 1-D arrays
        Work space for a chunk of K steps: ``K * B * I`` and ``K * B * 4H``
        elements.
    gates, c_cache, h_prev_cache : (N, 4H), (N, H), (N, H) arrays
        Receive the activated gates, c_t and h_{t-1}, compact layout. When
        ``h_prev_cache`` is the right-hand columns of the array whose
        left-hand columns are ``x`` (an (N, I + H) array), :func:`backward`
        computes both weight gradients with one GEMM.
    out_batch_first : bool, default False
        ``out`` is the caller's batch-first (B * T', D*H) result instead:
        time ``t`` of sorted row ``b`` at row ``bf_rows[b] + t``.
    bf_rows : (B,) intp array, default None
        First row of each sorted sequence in batch-first arrays
        (``order[b] * T'`` for a (B, T', ...) array); needed with a
        batch-first flag.
    threads : int, default 1
        With 2, two threads share the time loop, each computing half of the
        rows or the hidden units where ``_split_ok`` (``_split.pxi``)
        allows it; results are bit-identical to one thread's.
    work : 1-D array, default None
        Scratch kept by the caller, at least :func:`work_size` elements:
        the call then allocates nothing of the size of the weights (see
        :func:`work_size`). Its contents on entry do not matter.
    mask : (B, H) array, default None
        Recurrent dropout (Gal & Ghahramani): row ``b`` of h_{t-1} is
        multiplied by ``mask[b]`` wherever it enters the recurrent product,
        at every step, h0 included; ``h_prev_cache`` keeps the masked rows
        and ``out`` and the final ``h`` the unmasked h_t. Give the same
        mask to :func:`backward`.
    table, tokens : (V, 4H) array and (N,) int32 array, default None
        The input projection by lookup, for an input that is an embedding's
        rows: row ``r``'s projection is ``table[tokens[r]]`` (the table being
        ``E @ w_ih.T`` for the embedding ``E``) instead of ``x[r] @ w_ih.T``,
        which is not computed; ``x`` and ``w_ih`` are still checked, and
        ``x`` is still read by a :func:`backward` without ``tokens``.
        Every token must be a row of ``table``.

    Returns
    -------
    int
        The number of threads that ran the time loop (1 or 2).
    """
    cdef Py_ssize_t N = 0
    cdef Py_ssize_t b, hp_ld
    cdef int H = <int> w_hh.shape[1]
    cdef floating[::1] no_cache = None
    for b in range(lengths.shape[0]):
        N += lengths[b]
    _check_rows(gates.shape[0], gates.shape[1], N, 4 * H, "gates")
    _check_rows(c_cache.shape[0], c_cache.shape[1], N, H, "c_cache")
    _check_rows(h_prev_cache.shape[0], h_prev_cache.shape[1], N, H, "h_prev_cache")
    hp_ld = _row_stride(N, H, h_prev_cache.strides[0], h_prev_cache.strides[1],
                        sizeof(floating), "h_prev_cache")
    _check_mask(mask, lengths.shape[0], H)
    if (table is None) != (tokens is None):
        raise ValueError("table and tokens go together")
    if table is not None:
        if tokens.shape[0] != N:
            raise ValueError(f"tokens has {tokens.shape[0]} entries; one per row, {N}, "
                             "needed")
        if table.shape[1] != 4 * H or table.shape[0] < 1:
            raise ValueError(f"table has shape ({table.shape[0]}, {table.shape[1]}); "
                             f"(V, {4 * H}) with V >= 1 needed")
        for b in range(N):
            if tokens[b] < 0 or tokens[b] >= table.shape[0]:
                raise ValueError(f"token {tokens[b]} at row {b} is not a row of the "
                                 f"{table.shape[0]}-row table")
    return _run_forward(x, lengths, w_ih, w_hh, w_hh_t, bias, h, c, out, offset, reverse,
                        xbuf, gbuf, &gates[0, 0], &c_cache[0, 0], &h_prev_cache[0, 0],
                        hp_ld, False, out_batch_first, bf_rows, threads, no_cache, work,
                        &mask[0, 0] if mask is not None else NULL,
                        &table[0, 0] if table is not None else NULL,
                        &tokens[0] if tokens is not None else NULL)


def forward_infer(const floating[:, :] x,
                  const int[::1] lengths,
                  const floating[:, ::1] w_ih,
                  const floating[:, ::1] w_hh,
                  const floating[:, ::1] w_hh_t,
                  const floating[::1] bias,
                  floating[:, ::1] h,
                  floating[:, ::1] c,
                  floating[:, ::1] out,
                  Py_ssize_t offset,
                  bint reverse,
                  floating[::1] xbuf,
                  floating[::1] gbuf,
                  bint x_batch_first=False,
                  bint out_batch_first=False,
                  const Py_ssize_t[::1] bf_rows=None,
                  int threads=1,
                  floating[::1] pack_cache=None,
                  floating[::1] work=None):
    """Forward pass of one direction keeping no per-step state.

    Same arguments as :func:`forward_train` without the caches: extra memory
    is the two chunk buffers, independent of T. Results are bit-identical to
    :func:`forward_train`'s. With ``x_batch_first``, ``x`` is the caller's
    batch-first (B * T', I) input, time ``t`` of sorted row ``b`` at row
    ``bf_rows[b] + t``, and with ``out_batch_first`` ``out`` is the
    (B * T', D*H) result: the layer's own input and result, so that
    inference keeps no copy of either. ``threads`` and ``work`` as in
    :func:`forward_train`.

    ``pack_cache``, a 1-D array of at least :func:`pack_cache_size` elements
    that the caller keeps from call to call, holds the packed weights and
    copies of the weights they were packed from: a call whose ``w_ih`` and
    ``w_hh`` equal the copies (byte for byte; a comparison costs a tenth of
    a packing) reuses the packs. Packing takes 15% of a 1 x 100 x 32 x 128
    float32 call. A new cache must be zero-filled (or hold a previous
    call's contents): left-over bytes of freed memory could hold copies of
    the weights without their packs.
    """
    return _run_forward(x, lengths, w_ih, w_hh, w_hh_t, bias, h, c, out, offset, reverse,
                        xbuf, gbuf, <floating*> NULL, <floating*> NULL, <floating*> NULL,
                        0, x_batch_first, out_batch_first, bf_rows, threads, pack_cache,
                        work)
