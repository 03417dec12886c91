"""LSTM kernels: forward for training, forward for inference, and BPTT.

Every entry point works on one layer and one direction of a batch laid out
time-major, ``(T, B, features)`` (a dense batch's input and output may also
be the caller's batch-first arrays), with the batch sorted by length in
decreasing order. At step ``s`` the active rows are then the prefix
``0 .. n(s) - 1`` and every product covers exactly those rows: padded steps
cost nothing in the time loop.

A reverse direction visits, at step ``s``, time ``t = length[b] - 1 - s`` of
row ``b``: the time reversal is index arithmetic on the time-ordered arrays,
never a copy. All caches are kept in time order, so that after the reverse
time loop of BPTT the weight gradients are whole-sequence GEMMs.

Gate order (i, f, g, o) in blocks of ``H`` along the ``4H`` axis, as in
``torch.nn.LSTM``. The caller (``pylstm._layer``) validates every shape and
provides every buffer; the kernels allocate only the packed copy of W_hh,
once per call before the time loop (see ``_gemm.h``), and run their whole
time loop without the GIL.

The forward kernels share one time loop (``_forward``), so training and
inference round identically.
"""
from cython cimport floating
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from _blas cimport gemm, gemv

# OpenBLAS (0.3.17 on, x86-64 AVX-512 builds) multiplies without packing its
# operands when m * n * k <= 1e6 and A is not transposed; above that, every
# call copies the weight matrix into its own layout first. The per-step
# products of float32 up to 4e6 are therefore cut into column blocks under
# that size: 20-25% faster at batch 32 and hidden 128 (the language model's
# shape); larger products lose more to thin blocks than they gain.
cdef double SMALL_GEMM = 1e6


cdef extern from "_gemm.h" nogil:
    int pylstm_packed_gemm_ok()
    long pylstm_packed_size_f(int k, int n)
    long pylstm_packed_size_d(int k, int n)
    void pylstm_pack_f(const float* B, int ldb, int trans, int k, int n, float* Bp)
    void pylstm_pack_d(const double* B, int ldb, int trans, int k, int n, double* Bp)
    void pylstm_gemm_packed_f(int m, int n, int k, const float* A, int lda,
                              const float* Bp, float* C, int ldc, int accumulate)
    void pylstm_gemm_packed_d(int m, int n, int k, const double* A, int lda,
                              const double* Bp, double* C, int ldc, int accumulate)
    void pylstm_gemv_packed_f(int n, int k, const float* x, const float* Bp,
                              float* y, int accumulate)
    void pylstm_gemv_packed_d(int n, int k, const double* x, const double* Bp,
                              double* y, int accumulate)


# Whether the per-step products use the packed-weight GEMM of _gemm.h (needs
# AVX-512 at run time) instead of BLAS; set_packed_gemm switches it for tests
# and benchmarks. Below 8 active rows its 8-row tiles run partly empty and
# BLAS is faster (measured at batch 4), so those steps still call BLAS, except
# one row, which has its own packed matrix-vector product (1.3-1.5x faster than
# OpenBLAS's gemv at hidden 128-256). Packing costs about one step's reading
# of W_hh, so calls of one or two steps (generation) do not pack.
cdef enum:
    PACKED_MIN_ROWS = 8
cdef bint _packed_available = pylstm_packed_gemm_ok()
cdef bint _use_packed = _packed_available


cdef inline bint _packs(int T, int B) noexcept nogil:
    """Whether a call of T steps over B rows packs W_hh (see above)."""
    return _use_packed and T > 2 and (B == 1 or B >= PACKED_MIN_ROWS)


cdef inline bint _packed_rows(int n) noexcept nogil:
    """Whether a step with n active rows uses the packed product."""
    return n == 1 or n >= PACKED_MIN_ROWS


def needs_w_hh_t(const int[::1] lengths):
    """Whether a forward call over these lengths has a step that BLAS multiplies.

    Such steps (2 or more active rows, without the packed product) read the
    transposed copy ``w_hh_t``; otherwise the caller may skip making it.
    ``lengths`` is sorted in decreasing order, as the kernels take it.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int n
    if B <= 1:
        return False
    if not _packs(lengths[0], B):
        return True
    # n rows are active at some step iff lengths[n - 1] > lengths[n] (0 past B).
    for n in range(2, min(B, PACKED_MIN_ROWS - 1) + 1):
        if lengths[n - 1] > (lengths[n] if n < B else 0):
            return True
    return False


def packed_gemm_available():
    """Whether this CPU runs the packed-weight GEMM of the time loop."""
    return bool(_packed_available)


def set_packed_gemm(bint enabled):
    """Use (True) or not (False) the packed-weight GEMM; returns the old setting.

    Without AVX-512 the setting stays False.
    """
    global _use_packed
    old = bool(_use_packed)
    _use_packed = enabled and _packed_available
    return old


cdef floating* _packed_weights(const floating* w, int ld, bint trans, int k,
                               int n) noexcept nogil:
    """A packed copy of the k x n matrix w (see _gemm.h), or NULL (then use BLAS)."""
    cdef long size
    cdef floating* bp
    if floating is float:
        size = pylstm_packed_size_f(k, n)
    else:
        size = pylstm_packed_size_d(k, n)
    bp = <floating*> malloc(size * sizeof(floating))
    if bp == NULL:
        return NULL
    if floating is float:
        pylstm_pack_f(w, ld, trans, k, n, bp)
    else:
        pylstm_pack_d(w, ld, trans, k, n, bp)
    return bp


cdef inline void _gemm_packed(int m, int n, int k, const floating* a, int lda,
                              const floating* bp, floating* c, int ldc,
                              bint accumulate) noexcept nogil:
    if m == 1:
        if floating is float:
            pylstm_gemv_packed_f(n, k, a, bp, c, accumulate)
        else:
            pylstm_gemv_packed_d(n, k, a, bp, c, accumulate)
    elif floating is float:
        pylstm_gemm_packed_f(m, n, k, a, lda, bp, c, ldc, accumulate)
    else:
        pylstm_gemm_packed_d(m, n, k, a, lda, bp, c, ldc, accumulate)


cdef extern from "_cell.h" nogil:
    void pylstm_cell_forward_f(const float* gp, const float* bias, float* h,
                               float* c, float* out, float* gates_keep,
                               float* c_keep, float* h_prev_keep, int keep,
                               int H)
    void pylstm_cell_forward_d(const double* gp, const double* bias, double* h,
                               double* c, double* out, double* gates_keep,
                               double* c_keep, double* h_prev_keep, int keep,
                               int H)
    void pylstm_cell_backward_f(float* gp, const float* cn, const float* cp,
                                const float* dh, float* dc, const float* dout,
                                int H)
    void pylstm_cell_backward_d(double* gp, const double* cn, const double* cp,
                                const double* dh, double* dc,
                                const double* dout, int H)
    void pylstm_column_sums_f(const float* a, long rows, int cols, float* out)
    void pylstm_column_sums_d(const double* a, long rows, int cols, double* out)


cdef inline void _cell_forward(const floating* gp, const floating* bias,
                               floating* h, floating* c, floating* out,
                               floating* gates_keep, floating* c_keep,
                               floating* h_prev_keep, int H) noexcept nogil:
    """One row of one step: activate the gates, update c and h in place.

    ``gp`` holds the 4H pre-activations without bias; ``out`` receives h_t.
    When ``gates_keep`` is not NULL it receives the activated gates, and
    ``c_keep``/``h_prev_keep`` receive c_t and h_{t-1}, for BPTT. The
    element-wise work is the vectorized C of ``_cell.h``.
    """
    cdef int keep = gates_keep != NULL
    if floating is float:
        pylstm_cell_forward_f(gp, bias, h, c, out, gates_keep, c_keep,
                              h_prev_keep, keep, H)
    else:
        pylstm_cell_forward_d(gp, bias, h, c, out, gates_keep, c_keep,
                              h_prev_keep, keep, H)


cdef inline void _cell_backward(floating* gp, const floating* cn,
                                const floating* cp, const floating* dh,
                                floating* dc, const floating* dout,
                                int H) noexcept nogil:
    """One row of one BPTT step (see ``_cell.h``)."""
    if floating is float:
        pylstm_cell_backward_f(gp, cn, cp, dh, dc, dout, H)
    else:
        pylstm_cell_backward_d(gp, cn, cp, dh, dc, dout, H)


cdef inline int _column_block(int rows, int cols, int inner,
                              int align) noexcept nogil:
    """Columns per GEMM call: 2-4 even blocks (multiples of ``align``) under the limit."""
    cdef double size = <double> rows * cols * inner
    cdef int blocks, cb
    if size <= SMALL_GEMM or size > (16 if rows <= 32 else 4) * SMALL_GEMM:
        return cols
    blocks = <int> (size / SMALL_GEMM) + 1
    cb = (cols + blocks - 1) // blocks
    cb = (cb + align - 1) // align * align
    if <double> rows * cb * inner > SMALL_GEMM:
        cb -= align
    return cb if cb >= align else cols


cdef Py_ssize_t* _step_offsets(const int[::1] lengths) except NULL:
    """Row offsets of the packed time-major layout of a sorted batch.

    Time ``t`` holds the rows ``b < n(t)`` that are still active (lengths
    decrease), at rows ``off[t] .. off[t + 1] - 1`` of every per-step array;
    ``off[T]`` is the number of valid steps. A dense batch gives
    ``off[t] = t * B``: the plain (T, B) layout. Caller frees the result.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int T, t, n
    cdef Py_ssize_t* off
    if B < 1 or lengths[0] < 1:
        raise ValueError("lengths must hold at least one row of at least one step")
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


cdef void _forward(const floating* x, int T, int B, int I,
                   const int* lengths, const Py_ssize_t* off, const Py_ssize_t* bfr,
                   const floating* w_ih, const floating* w_hh,
                   const floating* w_hh_t, const floating* w_pack,
                   const floating* bias, int H,
                   floating* h, floating* c, floating* out, int out_width,
                   Py_ssize_t offset, bint reverse, bint x_batch_first,
                   bint out_batch_first, int K,
                   floating* xbuf, floating* gbuf, floating* gates,
                   floating* c_cache, floating* h_prev) noexcept nogil:
    """The forward time loop shared by training and inference.

    Steps are taken in chunks of ``K``: the chunk's active input rows are
    gathered into ``xbuf`` (a reversed row by index arithmetic) and
    projected by one GEMM into ``gbuf``; then each step adds the recurrent
    GEMM of the active prefix and runs the fused gate pass. With ``gates``
    NULL nothing per step is kept (inference); otherwise the caches, in the
    packed layout of ``off`` (time order), receive what BPTT needs. Both
    modes therefore round identically. With ``x_batch_first`` /
    ``out_batch_first``, ``x`` / ``out`` are the caller's own batch-first
    arrays, time ``t`` of sorted row ``b`` at row ``bfr[b] + t``, without
    packed copies.
    """
    cdef int G = 4 * H
    cdef int n = B
    cdef int n_chunk, s0, k, kk, s, b, t, gb, j0, jb, ns
    cdef Py_ssize_t tb, ob
    cdef floating* gp
    cdef const floating* src
    cdef floating one = 1.0
    cdef floating zero = 0.0
    s0 = 0
    while s0 < T:
        while n > 0 and lengths[n - 1] <= s0:
            n -= 1
        if n == 0:
            break
        n_chunk = n
        kk = K if s0 + K <= T else T - s0
        # Gather the chunk's input rows: (kk, n_chunk, I), step order; rows
        # that end within the chunk read as zeros from there on.
        for k in range(kk):
            s = s0 + k
            if not reverse and not x_batch_first:
                ns = <int> (off[s + 1] - off[s])
                memcpy(xbuf + <Py_ssize_t> k * n_chunk * I, x + off[s] * I,
                       <size_t> ns * I * sizeof(floating))
                if ns < n_chunk:
                    memset(xbuf + (<Py_ssize_t> k * n_chunk + ns) * I, 0,
                           <size_t> (n_chunk - ns) * I * sizeof(floating))
            else:
                for b in range(n_chunk):
                    tb = (<Py_ssize_t> k * n_chunk + b) * I
                    if lengths[b] > s:
                        t = lengths[b] - 1 - s if reverse else s
                        if x_batch_first:
                            src = x + (bfr[b] + t) * I
                        else:
                            src = x + (off[t] + b) * I
                        memcpy(xbuf + tb, src, I * sizeof(floating))
                    else:
                        memset(xbuf + tb, 0, I * sizeof(floating))
        gemm(False, True, kk * n_chunk, G, I, one, xbuf, I, w_ih, I, zero,
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
            if w_pack != NULL and _packed_rows(n):
                _gemm_packed(n, G, H, h, H, w_pack, gp, G, True)
            elif n == 1:
                gemv(False, G, H, one, w_hh, H, h, one, gp)
            else:
                gb = _column_block(n, G, H, 64) if floating is float else G
                j0 = 0
                while j0 < G:
                    jb = gb if j0 + gb <= G else G - j0
                    gemm(False, False, n, jb, H, one, h, H, w_hh_t + j0, G, one,
                         gp + j0, G)
                    j0 += jb
            for b in range(n):
                t = lengths[b] - 1 - s if reverse else s
                tb = off[t] + b
                ob = bfr[b] + t if out_batch_first else tb
                if gates != NULL:
                    _cell_forward(gp + <Py_ssize_t> b * G, bias,
                                  h + <Py_ssize_t> b * H, c + <Py_ssize_t> b * H,
                                  out + ob * out_width + offset,
                                  gates + tb * G, c_cache + tb * H,
                                  h_prev + tb * H, H)
                else:
                    _cell_forward(gp + <Py_ssize_t> b * G, bias,
                                  h + <Py_ssize_t> b * H, c + <Py_ssize_t> b * H,
                                  out + ob * out_width + offset,
                                  <floating*> NULL, <floating*> NULL,
                                  <floating*> NULL, H)
        s0 += kk


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
    cdef Py_ssize_t b
    for b in range(1, B):
        if lengths[b] > lengths[b - 1] or lengths[b] < 1:
            raise ValueError("lengths must be at least 1 and in decreasing order")
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
    return NULL if bf_rows is None or bf_rows.shape[0] == 0 else &bf_rows[0]


def forward_train(const floating[:, ::1] x,
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
                  floating[:, ::1] h_prev_cache,
                  bint out_batch_first=False,
                  const Py_ssize_t[::1] bf_rows=None):
    """Forward pass of one direction, keeping what BPTT needs.

    Per-step arrays are 2-D, one row per valid step of one sequence, in the
    packed time-major layout: with the batch sorted by decreasing length and
    ``n(t)`` rows still active at time ``t``, time ``t`` holds rows
    ``off(t) .. off(t) + n(t) - 1`` where ``off(t) = n(0) + ... + n(t-1)``
    (``t * B`` for a dense batch, which is then simply (T, B) flattened).
    No row is padding.

    Parameters
    ----------
    x : (N, I) array
        Layer input in the packed layout, N = sum of lengths.
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
        Receive the activated gates, c_t and h_{t-1}, packed layout.
    out_batch_first : bool, default False
        ``out`` is the caller's batch-first (B * T', D*H) result instead:
        time ``t`` of sorted row ``b`` at row ``bf_rows[b] + t``.
    bf_rows : (B,) intp array, default None
        First row of each sorted sequence in batch-first arrays
        (``order[b] * T'`` for a (B, T', ...) array); needed with a
        batch-first flag.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int H = <int> w_hh.shape[1]
    cdef int T
    cdef int K = _chunk_steps(xbuf.shape[0], gbuf.shape[0], B, I, 4 * H)
    cdef floating* w_pack = NULL
    cdef const Py_ssize_t* bfr = _bf_pointer(bf_rows)
    cdef Py_ssize_t* off = _step_offsets(lengths)
    try:
        T = lengths[0]
        _check_forward(lengths, off, bf_rows, x.shape[0], I, w_ih.shape[1], H,
                       h.shape[0], c.shape[0], out.shape[0], out.shape[1], offset, False,
                       out_batch_first)
        _check_rows(gates.shape[0], gates.shape[1], off[T], 4 * H, "gates")
        _check_rows(c_cache.shape[0], c_cache.shape[1], off[T], H, "c_cache")
        _check_rows(h_prev_cache.shape[0], h_prev_cache.shape[1], off[T], H,
                    "h_prev_cache")
        with nogil:
            if _packs(T, B):
                w_pack = _packed_weights(&w_hh[0, 0], H, True, H, 4 * H)
            _forward(&x[0, 0], T, B, I, &lengths[0], off, bfr, &w_ih[0, 0],
                     &w_hh[0, 0], &w_hh_t[0, 0], w_pack, &bias[0], H, &h[0, 0], &c[0, 0],
                     &out[0, 0], <int> out.shape[1], offset, reverse, False,
                     out_batch_first, K, &xbuf[0], &gbuf[0], &gates[0, 0],
                     &c_cache[0, 0], &h_prev_cache[0, 0])
    finally:
        free(w_pack)
        free(off)


def forward_infer(const floating[:, ::1] x,
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
                  const Py_ssize_t[::1] bf_rows=None):
    """Forward pass of one direction keeping no per-step state.

    Same arguments as :func:`forward_train` without the caches: extra memory
    is the two chunk buffers, independent of T. Results are bit-identical to
    :func:`forward_train`'s. With ``x_batch_first``, ``x`` is the caller's
    batch-first (B * T', I) input, time ``t`` of sorted row ``b`` at row
    ``bf_rows[b] + t``, and with ``out_batch_first`` ``out`` is the
    (B * T', D*H) result: the layer's own input and result, so that
    inference keeps no copy of either.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int H = <int> w_hh.shape[1]
    cdef int T
    cdef int K = _chunk_steps(xbuf.shape[0], gbuf.shape[0], B, I, 4 * H)
    cdef floating* w_pack = NULL
    cdef const Py_ssize_t* bfr = _bf_pointer(bf_rows)
    cdef Py_ssize_t* off = _step_offsets(lengths)
    try:
        T = lengths[0]
        _check_forward(lengths, off, bf_rows, x.shape[0], I, w_ih.shape[1], H,
                       h.shape[0], c.shape[0], out.shape[0], out.shape[1], offset,
                       x_batch_first, out_batch_first)
        with nogil:
            if _packs(T, B):
                w_pack = _packed_weights(&w_hh[0, 0], H, True, H, 4 * H)
            _forward(&x[0, 0], T, B, I, &lengths[0], off, bfr, &w_ih[0, 0],
                     &w_hh[0, 0], &w_hh_t[0, 0], w_pack, &bias[0], H, &h[0, 0], &c[0, 0],
                     &out[0, 0], <int> out.shape[1], offset, reverse,
                     x_batch_first, out_batch_first, K, &xbuf[0], &gbuf[0],
                     <floating*> NULL, <floating*> NULL, <floating*> NULL)
    finally:
        free(w_pack)
        free(off)


def backward(const floating[:, ::1] x,
             const int[::1] lengths,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, ::1] c0,
             floating[:, ::1] gates,
             const floating[:, ::1] c_cache,
             const floating[:, ::1] h_prev_cache,
             const floating[:, ::1] d_out,
             Py_ssize_t offset,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, ::1] dx,
             double dx_beta,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db,
             floating[:, ::1] scratch,
             bint dout_batch_first=False,
             const Py_ssize_t[::1] bf_rows=None,
             bint with_dx=True):
    """Backpropagation through time for one direction.

    Parameters
    ----------
    x, lengths, w_ih, w_hh, offset, reverse
        As given to :func:`forward_train` (packed layout, see there).
    c0 : (B, H) array
        Initial cell state of that forward call.
    gates, c_cache, h_prev_cache
        The caches filled by :func:`forward_train`; ``gates`` is overwritten
        with the gradients of the gate pre-activations (so one cache serves
        one backward).
    d_out : (N, D*H) array
        Gradient of the loss with respect to ``out``, packed layout.
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
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int G = <int> w_ih.shape[0]
    cdef int H = G // 4
    cdef int T
    cdef int n = 0
    cdef int s, b, t, tp
    cdef int hb, j0, jb
    cdef int dw = <int> d_out.shape[1]
    cdef Py_ssize_t r, N
    cdef floating* gp
    cdef const floating* src
    cdef const floating* cp
    cdef floating* w_pack = NULL
    cdef const Py_ssize_t* bfr = _bf_pointer(bf_rows)
    cdef Py_ssize_t* off = _step_offsets(lengths)
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
        _check_rows(c0.shape[0], c0.shape[1], B, H, "c0")
        _check_rows(scratch.shape[0], scratch.shape[1], B, G, "scratch")
        if (w_hh.shape[0] != G or w_hh.shape[1] != H or dw_ih.shape[0] != G
                or dw_ih.shape[1] != I or dw_hh.shape[0] != G or dw_hh.shape[1] != H
                or db.shape[0] != G):
            raise ValueError("weight or gradient arrays do not match 4H x (I, H)")
        with nogil:
            if _packs(T, B):
                w_pack = _packed_weights(&w_hh[0, 0], H, False, G, H)
            for s in range(T - 1, -1, -1):
                while n < B and lengths[n] > s:
                    n += 1
                for b in range(n):
                    if reverse:
                        t = lengths[b] - 1 - s
                        tp = t + 1
                    else:
                        t = s
                        tp = t - 1
                    r = off[t] + b
                    gp = &gates[0, 0] + r * G
                    cp = &c0[b, 0] if s == 0 else &c_cache[0, 0] + (off[tp] + b) * H
                    _cell_backward(gp, &c_cache[0, 0] + r * H, cp, &dh[b, 0], &dc[b, 0],
                                   &d_out[0, 0] + offset
                                   + (bfr[b] + t if dout_batch_first else r) * dw,
                                   H)
                    if reverse:
                        memcpy(&scratch[b, 0], gp, G * sizeof(floating))
                src = &scratch[0, 0] if reverse else &gates[0, 0] + off[s] * G
                # dh_{s-1}[:n] = dG_s[:n] @ w_hh
                if w_pack != NULL and _packed_rows(n):
                    _gemm_packed(n, H, G, src, G, w_pack, &dh[0, 0], H, False)
                elif n == 1:
                    gemv(True, G, H, <floating> 1.0, &w_hh[0, 0], H, src,
                         <floating> 0.0, &dh[0, 0])
                else:
                    hb = _column_block(n, H, G, 16) if floating is float else H
                    j0 = 0
                    while j0 < H:
                        jb = hb if j0 + hb <= H else H - j0
                        gemm(False, False, n, jb, G, <floating> 1.0, src, G,
                             &w_hh[0, j0], H, <floating> 0.0, &dh[0, j0], H)
                        j0 += jb
            # Whole-sequence products over the N valid steps.
            gemm(True, False, G, I, <int> N, <floating> 1.0, &gates[0, 0], G,
                 &x[0, 0], I, <floating> 0.0, &dw_ih[0, 0], I)
            gemm(True, False, G, H, <int> N, <floating> 1.0, &gates[0, 0], G,
                 &h_prev_cache[0, 0], H, <floating> 0.0, &dw_hh[0, 0], H)
            if with_dx:
                gemm(False, False, <int> N, I, G, <floating> 1.0, &gates[0, 0], G,
                     &w_ih[0, 0], I, <floating> dx_beta, &dx[0, 0], I)
            if floating is float:
                pylstm_column_sums_f(&gates[0, 0], N, G, &db[0])
            else:
                pylstm_column_sums_d(&gates[0, 0], N, G, &db[0])
    finally:
        free(w_pack)
        free(off)


def input_gradient(const floating[:, ::1] gates,
                   const floating[:, ::1] w_ih,
                   floating[:, ::1] dx,
                   double beta):
    """``dx = gates @ w_ih + beta * dx``: the input gradient of one direction.

    ``gates`` holds the gate gradients that :func:`backward` left, (N, 4H);
    ``w_ih`` is (4H, I) and ``dx`` (N, I). ``dx`` may be the layer input
    that the backward calls have finished reading.
    """
    cdef int N = <int> gates.shape[0]
    cdef int G = <int> gates.shape[1]
    cdef int I = <int> w_ih.shape[1]
    if w_ih.shape[0] != G or dx.shape[0] != N or dx.shape[1] != I:
        raise ValueError(f"shapes ({N}, {G}) @ ({w_ih.shape[0]}, {I}) -> "
                         f"({dx.shape[0]}, {dx.shape[1]}) do not match")
    with nogil:
        gemm(False, False, N, I, G, <floating> 1.0, &gates[0, 0], G,
             &w_ih[0, 0], I, <floating> beta, &dx[0, 0], I)
