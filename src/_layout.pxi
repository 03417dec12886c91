# The compact time-major layout: row offsets, row strides and the shape
# checks of the entry points; the state of one thread's time loop (_Loop and
# the forward and backward loops' own parts).


cdef Py_ssize_t* _step_offsets(const int[::1] lengths) except NULL:
    """Row offsets of the compact time-major layout of a sorted batch.

    Time ``t`` holds the rows ``b < n(t)`` that are still active (lengths
    decrease), at rows ``off[t] .. off[t + 1] - 1`` of every per-step array;
    ``off[T]`` is the number of valid steps. A dense batch gives
    ``off[t] = t * B``: the plain (T, B) layout. Caller frees the result.
    Every entry point takes its offsets here, so the order of the lengths,
    which every loop's indexing relies on, is checked here.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int T, t, n, b
    cdef Py_ssize_t* off
    if B < 1 or lengths[0] < 1:
        raise ValueError("lengths must hold at least one row of at least one step")
    for b in range(1, B):
        if lengths[b] > lengths[b - 1] or lengths[b] < 1:
            raise ValueError("lengths must be at least 1 and in decreasing order")
    T = lengths[0]
    off = <Py_ssize_t*> malloc((T + 1) * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    off[0] = 0
    n = B
    for t in range(T):
        while n > 0 and lengths[n - 1] <= t:
            n -= 1
        off[t + 1] = off[t] + n
    return off


cdef int _check_rows(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t need_rows,
                     Py_ssize_t need_width, str name) except -1:
    """ValueError unless an array has at least the rows and columns needed."""
    if rows < need_rows or width < need_width:
        raise ValueError(f"{name} has shape ({rows}, {width}); at least "
                         f"({need_rows}, {need_width}) needed")
    return 0


cdef struct _Loop:
    # What both time loops need of one thread's share: sizes, layout, and
    # pointers to the arrays of the call's dtype (cast back by the fused loop
    # bodies). Each loop's own arguments extend it (_ForwardLoop, _BackwardLoop).
    bint is_float
    int part                  # this thread's share (0 or 1) of the hidden units ...
    int nparts                # ... out of 1 or 2
    bint by_rows              # with 2: of the rows (b % 2 == part) instead
    pylstm_barrier* bar
    int T, B, n_in, H          # (n_in: a member named I clashes with complex.h's macro)
    const int* lengths
    const Py_ssize_t* off
    const Py_ssize_t* bfr
    const void* x
    Py_ssize_t x_ld           # row stride of x, in elements (I, or more for a view)
    const void* w_hh
    const void* w_pack        # W_hh packed (NULL: BLAS steps)
    Py_ssize_t offset
    bint reverse
    void* gates
    void* c_cache
    void* h_prev
    Py_ssize_t hp_ld          # row stride of h_prev
    const void* mask          # (B, H) recurrent-dropout mask on h_{t-1} (NULL: none)


cdef struct _ForwardLoop:
    _Loop s
    int K                     # steps per chunk of the input projection
    const void* w_ih
    const void* w_hh_t
    bint grouped              # W_hh packed with each half's units together (_pack_w_hh_t)
    const void* ih_pack       # W_ih^T packed, for a split projection
    const void* bias
    void* h
    void* h_alt               # h_{t-1} and h_t alternate between h and h_alt
    void* c
    void* out
    int out_width
    bint x_batch_first
    bint out_batch_first
    void* xbuf
    void* gbuf
    const void* table         # (V, 4H) input projections by token (NULL: x @ W_ih^T)
    const int* tokens         # each compact row's token, with table


cdef struct _BackwardLoop:
    _Loop s
    const void* c0
    const void* d_out
    int dout_width
    bint dout_batch_first
    void* dh
    void* dc
    void* scratch
    void* scratch_alt
    void* dw_ih
    void* dw_hh
    void* db
    void* dw_tmp              # (4H, I + H), for [dW_ih | dW_hh] in one GEMM (see backward)
    Py_ssize_t n_rows         # valid steps, N
    const int* tokens         # looked-up projection (see backward): the rows' tokens, or NULL
    double* d_table           # (V, 4H): the gate gradients of each token's rows, summed
    int n_table               # V
    const double* emb64       # (V, I): the embedding, in float64
    const double* w_ih64      # (4H, I): W_ih, in float64
    double* dw64              # (4H, I): dW_ih before its rounding
    double* emb_parts         # (2, V, I): each half of the gate columns' part of dE


cdef int _check_mask(const floating[:, ::1] mask, Py_ssize_t B, int H) except -1:
    """ValueError unless a recurrent-dropout mask is None or (B, H)."""
    if mask is not None and (mask.shape[0] != B or mask.shape[1] != H):
        raise ValueError(f"mask has shape ({mask.shape[0]}, {mask.shape[1]}); "
                         f"({B}, {H}) needed")
    return 0


cdef inline void _mask_row(floating* v, const floating* m, int n) noexcept nogil:
    """``v[:n] *= m[:n]``: a row of h_{t-1} (or of its gradient) through the
    recurrent-dropout mask."""
    cdef int j
    for j in range(n):
        v[j] *= m[j]


cdef inline void _gather_row(const floating* x, const _ForwardLoop* a, floating* dst, int b,
                             int s) noexcept nogil:
    """``dst`` receives the input of sorted row ``b`` at step ``s`` (time
    ``lengths[b] - 1 - s`` in reverse), or zeros past its length."""
    cdef int t
    cdef const floating* src
    if a.s.lengths[b] > s:
        t = a.s.lengths[b] - 1 - s if a.s.reverse else s
        if a.x_batch_first:
            src = x + (a.s.bfr[b] + t) * a.s.x_ld
        else:
            src = x + (a.s.off[t] + b) * a.s.x_ld
        memcpy(dst, src, a.s.n_in * sizeof(floating))
    else:
        memset(dst, 0, a.s.n_in * sizeof(floating))


cdef inline void _lookup_chunk(const floating* table, const _ForwardLoop* a, floating* gbuf,
                               int s0, int kk, int n_chunk, int b0, int bs, int u0,
                               int un) noexcept nogil:
    """The input projection of a chunk by lookup: row ``b`` of step ``s0 + k``
    in ``gbuf`` receives its token's row of ``table``, units ``u0 .. u0 + un``
    of each gate, for the rows ``b0, b0 + bs, ...`` active at that step."""
    cdef int H = a.s.H
    cdef int G = 4 * H
    cdef int k, b, s, t, g
    cdef const floating* src
    cdef floating* dst
    for k in range(kk):
        s = s0 + k
        b = b0
        while b < n_chunk and a.s.lengths[b] > s:
            t = a.s.lengths[b] - 1 - s if a.s.reverse else s
            src = table + <Py_ssize_t> a.tokens[a.s.off[t] + b] * G
            dst = gbuf + (<Py_ssize_t> k * n_chunk + b) * G
            if un == H:
                memcpy(dst, src, <size_t> G * sizeof(floating))
            else:
                for g in range(4):
                    memcpy(dst + g * H + u0, src + g * H + u0, <size_t> un * sizeof(floating))
            b += bs


cdef int _chunk_steps(Py_ssize_t xbuf_size, Py_ssize_t gbuf_size, int B, int I,
                      int G) except -1:
    """Steps per chunk that the work buffers hold (checked, at least 1)."""
    cdef Py_ssize_t K
    if B < 1 or G < 1:
        raise ValueError("lengths must hold at least one row of at least one step, "
                         "and the hidden size must be at least 1")
    K = gbuf_size // (<Py_ssize_t> B * G)
    if K < 1 or xbuf_size < K * B * I:
        raise ValueError("work buffers too small for one step")
    if K * B > 2147483647:
        K = 2147483647 // B
    return <int> K


cdef int _check_batch_first(const Py_ssize_t[::1] bf_rows, const int[::1] lengths,
                            Py_ssize_t rows, str name) except -1:
    """Every row ``bf_rows[b] + t`` (t < lengths[b]) of a batch-first array exists."""
    cdef Py_ssize_t b
    if bf_rows is None or bf_rows.shape[0] != lengths.shape[0]:
        raise ValueError(f"a batch-first {name} needs bf_rows, one entry per sequence")
    for b in range(lengths.shape[0]):
        if bf_rows[b] < 0 or bf_rows[b] + lengths[b] > rows:
            raise ValueError(f"bf_rows[{b}] is outside {name}")
    return 0


cdef int _check_forward(const int[::1] lengths, const Py_ssize_t* off,
                        const Py_ssize_t[::1] bf_rows,
                        Py_ssize_t x_rows, Py_ssize_t I, Py_ssize_t w_in, Py_ssize_t H,
                        Py_ssize_t h_rows, Py_ssize_t c_rows,
                        Py_ssize_t out_rows, Py_ssize_t out_width, Py_ssize_t offset,
                        bint x_batch_first, bint out_batch_first) except -1:
    """The shapes a forward call needs (the layer passes them; this is a guard)."""
    cdef Py_ssize_t B = lengths.shape[0]
    cdef Py_ssize_t T = lengths[0]
    cdef Py_ssize_t N = off[T]
    if w_in != I:
        raise ValueError(f"x has {I} features, w_ih expects {w_in}")
    if h_rows < B or c_rows < B:
        raise ValueError("h and c need one row per sequence")
    if offset < 0:
        raise ValueError("offset must be non-negative")
    _check_rows(x_rows, I, 0 if x_batch_first else N, I, "x")
    _check_rows(out_rows, out_width, 0 if out_batch_first else N, offset + H, "out")
    if x_batch_first:
        _check_batch_first(bf_rows, lengths, x_rows, "x")
    if out_batch_first:
        _check_batch_first(bf_rows, lengths, out_rows, "out")
    return 0


cdef inline const Py_ssize_t* _bf_pointer(const Py_ssize_t[::1] bf_rows) noexcept:
    """The first element of ``bf_rows``, or NULL when there is none."""
    if bf_rows is None or bf_rows.shape[0] == 0:
        return NULL
    return &bf_rows[0]


cdef Py_ssize_t _row_stride(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t stride0,
                            Py_ssize_t stride1, Py_ssize_t itemsize, str name) except -1:
    """Row stride, in elements, of a 2-D array of contiguous rows.

    The layer may pass a view of a wider array (rows of x continued by
    rows of h_prev, see :func:`backward`); its rows must not overlap.
    """
    if rows <= 1:
        return width
    if (width > 1 and stride1 != itemsize) or stride0 % itemsize != 0 \
            or stride0 < width * itemsize:
        raise ValueError(f"{name} must have contiguous, non-overlapping rows")
    return stride0 // itemsize
