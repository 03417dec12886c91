"""LSTM kernels: forward for training, forward for inference, and BPTT.

Every entry point works on one layer and one direction of a batch sorted by
length in decreasing order. At step ``s`` the active rows are then the
prefix ``0 .. n(s) - 1`` and every product covers exactly those rows. Every
per-step array is 2-D with one row per valid step, in the packed time-major
layout: time ``t`` holds its ``n(t)`` rows from row ``n(0) + ... + n(t-1)``
on (``t * B`` for a dense batch). Padding costs neither memory nor time. The
caller's own batch-first input, result and output gradient may be read and
written in place instead (``bf_rows``: the first row of each sorted
sequence).

A reverse direction visits, at step ``s``, time ``t = length[b] - 1 - s`` of
row ``b``: the time reversal is index arithmetic on the time-ordered arrays,
never a copy. All caches are kept in time order, so that after the reverse
time loop of BPTT the weight gradients are whole-sequence GEMMs.

Gate order (i, f, g, o) in blocks of ``H`` along the ``4H`` axis, as in
``torch.nn.LSTM``. The caller (``pylstm._layer``) provides every buffer; the
kernels check the shapes before any work, allocate only the row offsets, the
packed copies of the weights and a second h array, once per call before the
time loop (see ``_kernels.c``), and run their whole time loop without the GIL,
on one thread or split between two (``_parallel.h``, ``threads=2``).

The forward kernels share one time loop (``_forward``), so training and
inference round identically.
"""
from cython cimport floating
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from _blas cimport gemm, gemv

# OpenBLAS (0.3.17 on, x86-64 AVX-512 builds) multiplies without packing its
# operands when m * n * k <= 1e6 and A is not transposed; above that, every
# call copies the weight matrix into its own layout first. The per-step
# products of float32 up to 4e6 are therefore cut into column blocks under
# that size: 20-25% faster at batch 32 and hidden 128 (the language model's
# shape); larger products lose more to thin blocks than they gain.
cdef double SMALL_GEMM = 1e6


cdef extern from "_kernels.h" nogil:
    int PYLSTM_NR_F
    int PYLSTM_NR_D
    int PYLSTM_SIMD_LEVELS
    int PYLSTM_SIMD_AVX512
    const char* pylstm_simd_names[]
    int pylstm_simd_level
    int pylstm_simd_usable(int level)
    int pylstm_simd_select(int cap)
    ctypedef struct pylstm_kernels:
        const char* name
        int tile_rows
    const pylstm_kernels* pylstm_simd_table(int level)
    int pylstm_cpu_has(int level)
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
    void pylstm_gemm_tn_f(int m, int k, const float* A, long lda, const float* B1,
                          long ldb1, int n1, float* C1, long ldc1, const float* B2,
                          long ldb2, int n2, float* C2, long ldc2)
    void pylstm_gemm_tn_d(int m, int k, const double* A, long lda, const double* B1,
                          long ldb1, int n1, double* C1, long ldc1, const double* B2,
                          long ldb2, int n2, double* C2, long ldc2)
    void pylstm_cell_forward_f(const float* gp, const float* bias, const float* h_in,
                               float* h_out, float* c, float* out, float* gates_keep,
                               float* c_keep, float* h_prev_keep, int keep,
                               int n, int S)
    void pylstm_cell_forward_d(const double* gp, const double* bias,
                               const double* h_in, double* h_out,
                               double* c, double* out, double* gates_keep,
                               double* c_keep, double* h_prev_keep, int keep,
                               int n, int S)
    void pylstm_cell_backward_f(float* gp, const float* cn, const float* cp,
                                const float* dh, float* dc, const float* dout,
                                int n, int S)
    void pylstm_cell_backward_d(double* gp, const double* cn, const double* cp,
                                const double* dh, double* dc,
                                const double* dout, int n, int S)
    void pylstm_column_sums_f(const float* a, long rows, int cols, long lda, float* out)
    void pylstm_column_sums_d(const double* a, long rows, int cols, long lda,
                              double* out)
    const char* PYLSTM_COMPILER


# The instruction-set level of the kernels: the best that this build and CPU
# have, capped by the environment variable PYLSTM_SIMD (read once, here).
_SIMD_NAMES = tuple(pylstm_simd_names[i].decode() for i in range(PYLSTM_SIMD_LEVELS))


def simd_levels():
    """The instruction-set levels that this build compiled and this CPU runs.

    Examples
    --------
    >>> from pylstm import _lstm
    >>> _lstm.simd() in _lstm.simd_levels()
    True
    """
    return [name for i, name in enumerate(_SIMD_NAMES) if pylstm_simd_usable(i)]


def simd():
    """The instruction-set level that the kernels use now."""
    return _SIMD_NAMES[pylstm_simd_level]


def set_simd(level):
    """Use the best usable level up to ``level`` (a name of :data:`_SIMD_NAMES`).

    Returns the level used before. A level above what the CPU runs gives the
    best it does run (as ``PYLSTM_SIMD`` does). Not for use while a kernel runs.
    """
    if level not in _SIMD_NAMES:
        raise ValueError(f"level must be one of {_SIMD_NAMES}, got {level!r}")
    old = simd()
    pylstm_simd_select(_SIMD_NAMES.index(level))
    return old


def compiler():
    """The C compiler (name and version) that built the kernels."""
    return PYLSTM_COMPILER.decode()


def _simd_from_environment():
    import os
    import warnings
    want = os.environ.get("PYLSTM_SIMD", "").strip().lower()
    pylstm_simd_select(PYLSTM_SIMD_AVX512)
    if not want:
        return
    if want not in _SIMD_NAMES:
        warnings.warn(f"PYLSTM_SIMD={want!r} is not one of {_SIMD_NAMES}; ignored "
                      f"(using {simd()!r})", RuntimeWarning, stacklevel=2)
        return
    set_simd(want)
    if simd() != want:
        warnings.warn(f"PYLSTM_SIMD={want!r}: this CPU or build does not run it; "
                      f"using {simd()!r}", RuntimeWarning, stacklevel=2)


_simd_from_environment()


cdef enum:
    PACKED_MIN_ROWS = 8
    PACKED_DX_BYTES = 262144      # packed W_ih for the input gradient: up to 256 KiB
cdef bint _packed_available = True
cdef bint _use_packed = _packed_available


cdef inline bint _packs(int T, int B) noexcept nogil:
    """Whether a call of T steps over B rows packs W_hh (see above)."""
    return _use_packed and T > 2 and (B == 1 or B >= PACKED_MIN_ROWS)


cdef inline bint _packed_rows(int n) noexcept nogil:
    """Whether a step with n active rows uses the packed product."""
    return n == 1 or n >= PACKED_MIN_ROWS


def packs_weights(int T, int B):
    """Whether a forward call of T steps over B rows multiplies by packed weights.

    Only such calls read the ``pack_cache`` of :func:`forward_infer`.
    """
    return _packs(T, B)


def needs_w_hh_t(const int[::1] lengths):
    """Whether a forward call over these lengths has a step that BLAS multiplies.

    Such steps (2 or more active rows, without the packed product) read the
    transposed copy ``w_hh_t``; otherwise the caller may skip making it.
    ``lengths`` is sorted in decreasing order, as the kernels take it.
    """
    return _blas_steps(&lengths[0], <int> lengths.shape[0])


cdef bint _blas_steps(const int* lengths, int B) noexcept nogil:
    """:func:`needs_w_hh_t` on a pointer: some step of 2+ rows goes through BLAS."""
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


cdef struct _Work:
    # Caller-kept memory that a call carves its scratch from (see work_size):
    # allocated afresh on every call, buffers of a few hundred KiB come from
    # newly mapped pages, and the page faults of their first writes cost up
    # to a third of a small call.
    char* base
    size_t size
    size_t used


cdef void _work_init(_Work* w, void* base, size_t nbytes) noexcept nogil:
    w.base = <char*> base
    w.size = nbytes if base != NULL else 0
    w.used = 0


cdef void _work_from(_Work* w, floating[::1] work) noexcept:
    """``w`` over the caller's ``work`` array (None or empty: nothing)."""
    if work is None or work.shape[0] == 0:
        _work_init(w, NULL, 0)
    else:
        _work_init(w, &work[0], <size_t> work.shape[0] * sizeof(floating))


cdef inline char* _peek(_Work* w, size_t nbytes) noexcept nogil:
    """Where :func:`_take` would put ``nbytes`` in ``w``, or NULL (no room)."""
    cdef size_t start = (<size_t> (w.base + w.used) + 63) // 64 * 64 - <size_t> w.base
    if w.base != NULL and start + nbytes <= w.size:
        return w.base + start
    return NULL


cdef void* _take(_Work* w, size_t nbytes) noexcept nogil:
    """``nbytes`` of scratch, 64-byte aligned, from ``w`` while it has room,
    else from malloc (NULL: out of memory). Return it with :func:`_give`."""
    cdef char* p = _peek(w, nbytes)
    if p != NULL:
        w.used = <size_t> (p - w.base) + nbytes
        return p
    return malloc(nbytes)


cdef void _give(_Work* w, void* p) noexcept nogil:
    """Free ``p`` unless it lies in ``w`` (NULL is ignored)."""
    if p != NULL and not (w.base != NULL and <char*> p >= w.base
                          and <char*> p < w.base + w.size):
        free(p)


cdef inline bint _overlaps(const floating* p, Py_ssize_t n, const floating* q,
                           Py_ssize_t m) noexcept nogil:
    """Whether ``p[0:n]`` and ``q[0:m]`` share memory."""
    return p < q + m and q < p + n


cdef bint _fused_overlaps(_Work* w, Py_ssize_t block_len, Py_ssize_t tmp_len,
                          const floating* dw_ih, const floating* dw_hh,
                          const floating* db, Py_ssize_t G, Py_ssize_t I,
                          Py_ssize_t H) noexcept nogil:
    """Whether the fused weight gradient's first ``tmp_len`` elements, in the
    block of ``block_len`` that :func:`_take` would give next, would overlap
    the gradients it is copied into (malloc'd memory never does)."""
    cdef const floating* p = <const floating*> _peek(w, <size_t> block_len
                                                     * sizeof(floating))
    if p == NULL:
        return False
    return (_overlaps(p, tmp_len, dw_ih, G * I) or _overlaps(p, tmp_len, dw_hh, G * H)
            or _overlaps(p, tmp_len, db, G))


cdef Py_ssize_t _work_len(int I, int H, int B, bint is_float) noexcept nogil:
    """Elements of the work array that spares every kernel call its mallocs:
    the largest need of a forward call (W_hh^T and W_ih^T packed, the
    alternate h), of a backward call (W_hh packed, then the fused weight
    gradient in the same place; the alternate scratch) and of an input
    gradient (W_ih packed), with room to align each buffer."""
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t s = 4 if is_float else 8
    cdef Py_ssize_t fwd, bwd, dx
    fwd = _packed_len(H, G, is_float) + _packed_len(I, G, is_float) + <Py_ssize_t> B * H
    # The fused weight gradient reuses the packed W_hh's memory (see backward).
    bwd = max(_packed_len(G, H, is_float), G * (I + H)) + <Py_ssize_t> B * G
    dx = _packed_len(G, I, is_float)
    return max(fwd, bwd, dx) + 4 * 64 // s


cdef Py_ssize_t _gradient_work_len(int I, int H, int B, bint is_float,
                                   bint fused) noexcept nogil:
    """Elements of a training work array whose head becomes the weight
    gradients (see :func:`gradient_work_size`)."""
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t a = 64 // (4 if is_float else 8)
    cdef Py_ssize_t grads = G * (I + H) + G
    cdef Py_ssize_t fwd, bwd
    fwd = (_packed_len(H, G, is_float) + _packed_len(I, G, is_float)
           + <Py_ssize_t> B * H + 3 * a)
    bwd = 0 if fused else _packed_len(G, H, is_float) + <Py_ssize_t> B * G + 2 * a
    return max(grads, fwd, bwd)


def gradient_work_size(int n_in, int hidden, int batch, dtype, bint fused=True):
    """Length of a training call's work array that then holds its weight gradients.

    :func:`forward_train` and :func:`backward` of one direction may take
    their scratch from the array that afterwards holds that direction's
    weight gradients, the first ``4H (n_in + H) + 4H`` elements as
    ``dw_ih``, ``dw_hh`` and ``db`` (in this order, each C-contiguous):
    the packed weights of the forward pass, then those of the backward
    pass, are dead by the time :func:`backward` writes the gradients (every
    thread has left the time loop). The training step then holds no copy
    of the weights' size besides the gradients themselves, which at batch
    1 is about a third of its memory. With ``fused`` the backward call's
    fused weight gradient (``backward(fuse=True)``) needs scratch of its own
    (:func:`work_size`), and this array serves only :func:`forward_train`.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import _lstm
    >>> _lstm.gradient_work_size(3, 4, 2, np.float64) >= 16 * (3 + 4 + 1)
    True
    """
    import numpy as np
    return _gradient_work_len(n_in, hidden, batch, np.dtype(dtype) == np.float32, fused)


def input_gradient_work_size(int n_in, int hidden, dtype):
    """Length of the ``work`` array that :func:`input_gradient` takes (the packed ``W_ih``).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import _lstm
    >>> _lstm.input_gradient_work_size(3, 4, np.float64) >= 16 * 3
    True
    """
    import numpy as np
    cdef bint is_float = np.dtype(dtype) == np.float32
    return _packed_len(4 * hidden, n_in, is_float) + 64 // (4 if is_float else 8)


def work_size(int n_in, int hidden, int batch, dtype):
    """Length of the ``work`` array that the kernels take for these sizes.

    A kernel call given a 1-D ``work`` array of at least this many elements
    (of the call's dtype) takes its scratch from it: the packed weights,
    the fused weight gradient of :func:`backward` and the two-thread
    alternates, about ``4H (n_in + H)`` elements in all. Without one (or
    with a shorter one) it allocates them itself. One array serves every
    kernel of one layer direction, one call at a time.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import _lstm
    >>> _lstm.work_size(3, 4, 2, np.float64) >= 16 * (3 + 4)
    True
    """
    import numpy as np
    return _work_len(n_in, hidden, batch, np.dtype(dtype) == np.float32)


cdef floating* _packed_weights(const floating* w, int ld, bint trans, int k,
                               int n, _Work* work) noexcept nogil:
    """A packed copy of the k x n matrix w (see _kernels.h) in scratch from
    ``work`` (:func:`_take`), or NULL (out of memory)."""
    cdef long size
    cdef floating* bp
    if floating is float:
        size = pylstm_packed_size_f(k, n)
    else:
        size = pylstm_packed_size_d(k, n)
    bp = <floating*> _take(work, size * sizeof(floating))
    if bp != NULL:
        _pack_into(w, ld, trans, k, n, bp)
    return bp


cdef inline void _pack_into(const floating* w, int ld, bint trans, int k, int n,
                            floating* bp) noexcept nogil:
    if floating is float:
        pylstm_pack_f(w, ld, trans, k, n, bp)
    else:
        pylstm_pack_d(w, ld, trans, k, n, bp)


cdef void _pack_w_hh_t(const floating* w_hh, int H, bint grouped,
                       floating* bp) noexcept nogil:
    """Pack ``W_hh^T`` (H x 4H) for the forward products into ``bp``.

    ``grouped``: the column panels in the order of a split by units, first
    the first half of the units of each gate (i, f, g, o), then the second
    half of each, instead of column order. Each thread of the split then
    streams one contiguous block of the packed weights per step, not four
    blocks a quarter of the matrix apart: on the benchmark CPU the four
    blocks took 1.3-1.8x as long to read (float32 batch-1 step, two threads,
    benchmarks/c/gemv_floor.c: H = 128 1054 -> 799 ns, H = 256 4123 -> 2292
    ns). Each half of a gate must be whole panels (H a multiple of 2 NR).
    """
    cdef int hn = H // 2
    cdef int p, g
    if not grouped:
        _pack_into(w_hh, H, True, H, 4 * H, bp)
        return
    for p in range(2):
        for g in range(4):
            _pack_into(w_hh + <Py_ssize_t> (g * H + p * hn) * H, H, True, H, hn,
                       bp + <Py_ssize_t> (4 * p + g) * hn * H)


cdef inline const floating* _w_hh_t_block(const floating* w_pack, int H, bint grouped,
                                          int g, int u0) noexcept nogil:
    """Where the packed columns of gate ``g``, units ``u0 ..``, start (``u0``
    0 or H / 2 when ``grouped``; else any multiple of the panel width)."""
    if grouped:
        return w_pack + (<Py_ssize_t> 4 * u0 + <Py_ssize_t> g * (H // 2)) * H
    return w_pack + <Py_ssize_t> (g * H + u0) * H


cdef inline void _recurrent_packed(int n, int H, const floating* h_cur,
                                   const floating* w_pack, bint grouped,
                                   floating* gp) noexcept nogil:
    """``gp[:n] += h_cur[:n] @ W_hh^T`` (all 4H columns) on the packed weights,
    as one product, or one per gate and half when they are ``grouped``.
    Either way each element sums the same terms in the same order."""
    cdef int hn = H // 2
    cdef int p, g
    if not grouped:
        _gemm_packed(n, 4 * H, H, h_cur, H, w_pack, gp, 4 * H, True)
        return
    for p in range(2):
        for g in range(4):
            _gemm_packed(n, hn, H, h_cur, H, _w_hh_t_block(w_pack, H, True, g, p * hn),
                         gp + g * H + p * hn, 4 * H, True)


cdef inline Py_ssize_t _packed_len(int k, int n, bint is_float) noexcept nogil:
    if is_float:
        return pylstm_packed_size_f(k, n)
    return pylstm_packed_size_d(k, n)


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


cdef inline void _gemm_packed_tiles(int m, int n, int k, const floating* a, int lda,
                                    const floating* bp, floating* c, int ldc) noexcept nogil:
    """``c = a @ B`` through the tile loop of ``_kernels.c`` even for one row (where
    :func:`_gemm_packed` takes the matrix-vector product, which rounds
    differently): a row's result is then the same in any block of rows."""
    if floating is float:
        pylstm_gemm_packed_f(m, n, k, a, lda, bp, c, ldc, False)
    else:
        pylstm_gemm_packed_d(m, n, k, a, lda, bp, c, ldc, False)


cdef inline void _gemm_tn2(int m, int k, const floating* a, Py_ssize_t lda,
                           const floating* b1, Py_ssize_t ldb1, int n1, floating* c1,
                           Py_ssize_t ldc1, const floating* b2, Py_ssize_t ldb2, int n2,
                           floating* c2, Py_ssize_t ldc2) noexcept nogil:
    """``c1 = a^T b1`` and ``c2 = a^T b2`` through ``pylstm_gemm_tn`` (see _kernels.c)."""
    if floating is float:
        pylstm_gemm_tn_f(m, k, a, lda, b1, ldb1, n1, c1, ldc1, b2, ldb2, n2, c2, ldc2)
    else:
        pylstm_gemm_tn_d(m, k, a, lda, b1, ldb1, n1, c1, ldc1, b2, ldb2, n2, c2, ldc2)


cdef extern from "_parallel.h" nogil:
    ctypedef struct pylstm_barrier:
        pass
    void pylstm_barrier_init(pylstm_barrier* b)
    void pylstm_barrier_wait(pylstm_barrier* b)
    int pylstm_run_pair(void (*fn)(void*) noexcept nogil, void* arg0, void* arg1)
    int pylstm_run_both(void (*fn)(void*) noexcept nogil, void* arg0, void* arg1)
    void pylstm_enter()
    void pylstm_leave()
    int pylstm_alone()
    int PYLSTM_THREADS


cdef inline void _cell_forward(const floating* gp, const floating* bias,
                               const floating* h_in, floating* h_out, floating* c,
                               floating* out, floating* gates_keep, floating* c_keep,
                               floating* h_prev_keep, int n, int S) noexcept nogil:
    """One row of one step, units ``0 .. n - 1``: activate the gates, update c, h.

    ``gp`` holds the pre-activations without bias, gate blocks ``S`` apart;
    ``h_in`` is h_{t-1} and ``h_out`` receives h_t, as does ``out``. When
    ``gates_keep`` is not NULL it receives the activated gates, and
    ``c_keep``/``h_prev_keep`` receive c_t and h_{t-1}, for BPTT. The
    element-wise work is the vectorized C of ``_kernels.c``.
    """
    cdef int keep = gates_keep != NULL
    if floating is float:
        pylstm_cell_forward_f(gp, bias, h_in, h_out, c, out, gates_keep, c_keep,
                              h_prev_keep, keep, n, S)
    else:
        pylstm_cell_forward_d(gp, bias, h_in, h_out, c, out, gates_keep, c_keep,
                              h_prev_keep, keep, n, S)


cdef inline void _cell_backward(floating* gp, const floating* cn,
                                const floating* cp, const floating* dh,
                                floating* dc, const floating* dout,
                                int n, int S) noexcept nogil:
    """One row of one BPTT step, units ``0 .. n - 1`` (see ``_kernels.c``)."""
    if floating is float:
        pylstm_cell_backward_f(gp, cn, cp, dh, dc, dout, n, S)
    else:
        pylstm_cell_backward_d(gp, cn, cp, dh, dc, dout, n, S)


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


cdef struct _Loop:
    # What one thread of a time loop needs: sizes, and pointers to the
    # arrays of the call's dtype (cast back by the fused loop bodies).
    bint is_float
    int part                  # this thread's share (0 or 1) of the hidden units ...
    int nparts                # ... out of 1 or 2
    bint by_rows              # with 2: of the rows (b % 2 == part) instead
    pylstm_barrier* bar
    int T, B, n_in, H, K       # (n_in: a member named I clashes with complex.h's macro)
    const int* lengths
    const Py_ssize_t* off
    const Py_ssize_t* bfr
    const void* x
    Py_ssize_t x_ld           # row stride of x, in elements (I, or more for a view)
    const void* w_ih
    const void* w_hh
    const void* w_hh_t
    const void* w_pack        # W_hh packed (NULL: BLAS steps)
    bint grouped              # ... with each half's units together (_pack_w_hh_t)
    const void* ih_pack       # W_ih^T packed, for a split projection
    const void* bias
    void* h
    void* h_alt               # h_{t-1} and h_t alternate between h and h_alt
    void* c
    void* out
    int out_width
    Py_ssize_t offset
    bint reverse
    bint x_batch_first
    bint out_batch_first
    void* xbuf
    void* gbuf
    void* gates
    void* c_cache
    void* h_prev
    Py_ssize_t hp_ld          # row stride of h_prev
    # backward only
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


cdef inline void _gather_row(const floating* x, const _Loop* a, floating* dst, int b,
                             int s) noexcept nogil:
    """``dst`` receives the input of sorted row ``b`` at step ``s`` (time
    ``lengths[b] - 1 - s`` in reverse), or zeros past its length."""
    cdef int t
    cdef const floating* src
    if a.lengths[b] > s:
        t = a.lengths[b] - 1 - s if a.reverse else s
        if a.x_batch_first:
            src = x + (a.bfr[b] + t) * a.x_ld
        else:
            src = x + (a.off[t] + b) * a.x_ld
        memcpy(dst, src, a.n_in * sizeof(floating))
    else:
        memset(dst, 0, a.n_in * sizeof(floating))


cdef void _forward(const floating* x, _Loop* a) noexcept nogil:
    """The forward time loop shared by training and inference (one thread's part).

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
    """
    cdef int T = a.T, B = a.B, I = a.n_in, H = a.H, K = a.K
    cdef int G = 4 * H
    cdef const int* lengths = a.lengths
    cdef const Py_ssize_t* off = a.off
    cdef const Py_ssize_t* bfr = a.bfr
    cdef const floating* w_ih = <const floating*> a.w_ih
    cdef const floating* w_hh = <const floating*> a.w_hh
    cdef const floating* w_hh_t = <const floating*> a.w_hh_t
    cdef const floating* w_pack = <const floating*> a.w_pack
    cdef const floating* ih_pack = <const floating*> a.ih_pack
    cdef const floating* bias = <const floating*> a.bias
    cdef floating* h = <floating*> a.h
    cdef floating* h_alt = <floating*> a.h_alt
    cdef floating* c = <floating*> a.c
    cdef floating* out = <floating*> a.out
    cdef floating* xbuf = <floating*> a.xbuf
    cdef floating* gbuf = <floating*> a.gbuf
    cdef floating* gates = <floating*> a.gates
    cdef floating* c_cache = <floating*> a.c_cache
    cdef floating* h_prev = <floating*> a.h_prev
    cdef int out_width = a.out_width
    cdef Py_ssize_t offset = a.offset
    cdef Py_ssize_t x_ld = a.x_ld
    cdef Py_ssize_t hp_ld = a.hp_ld
    cdef bint reverse = a.reverse
    cdef bint split = a.nparts > 1
    cdef bint by_rows = split and a.by_rows
    cdef int pn = H // a.nparts            # units of this thread's projection
    cdef int pu0 = a.part * pn
    cdef int hn = H if by_rows else pn     # units of its products and gate pass
    cdef int u0 = 0 if by_rows else pu0
    cdef int b0 = a.part if by_rows else 0  # its rows: b0, b0 + bs, ...
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
    s0 = 0
    while s0 < T:
        while n > 0 and lengths[n - 1] <= s0:
            n -= 1
        if n == 0:
            break
        n_chunk = n
        kk = K if s0 + K <= T else T - s0
        # Time-ordered packed rows with every row active through the chunk
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
                pylstm_barrier_wait(a.bar)
            last_chunk = n_chunk
        for k in range(kk if not direct and (by_rows or a.part == 0) else 0):
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
        if by_rows:
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
            pylstm_barrier_wait(a.bar)
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
                              out + ob * out_width + offset + u0, gk, ck, hk, hn, H)
            if split and not by_rows:
                pylstm_barrier_wait(a.bar)
            swap = h_cur
            h_cur = h_nxt
            h_nxt = swap
        s0 += kk
    # A row of odd length took its last step into h_alt: its final state to h.
    for bi in range((B - b0 + bs - 1) // bs):
        b = b0 + bi * bs
        if lengths[b] % 2 == 1:
            memcpy(h + <Py_ssize_t> b * H + u0, h_alt + <Py_ssize_t> b * H + u0,
                   hn * sizeof(floating))


cdef void _forward_task(void* p) noexcept nogil:
    """Run :func:`_forward` for the ``_Loop`` at ``p`` (a thread's entry point)."""
    cdef _Loop* a = <_Loop*> p
    if a.is_float:
        _forward(<const float*> a.x, a)
    else:
        _forward(<const double*> a.x, a)


cdef void _backward_loop(const floating* typed, _Loop* a) noexcept nogil:
    """The reverse time loop of BPTT (one thread's part; ``typed`` picks the dtype).

    Per step: the gate gradients of the active rows (in place over the gate
    cache; for a reverse direction also copied to a contiguous scratch), then
    ``dh_{s-1} = dG_s W_hh``. With two threads (see :func:`_forward`) each
    takes its half of the units for the gate pass and its half of the
    columns of ``dh``; a barrier between the two makes every gate gradient
    of the step ready before the product reads them. With ``by_rows`` each
    takes its rows (see :func:`_forward`) for both, without a barrier.
    """
    cdef int T = a.T, B = a.B, H = a.H
    cdef int G = 4 * H
    cdef const int* lengths = a.lengths
    cdef const Py_ssize_t* off = a.off
    cdef const Py_ssize_t* bfr = a.bfr
    cdef const floating* w_hh = <const floating*> a.w_hh
    cdef const floating* w_pack = <const floating*> a.w_pack
    cdef const floating* c0 = <const floating*> a.c0
    cdef floating* gates = <floating*> a.gates
    cdef const floating* c_cache = <const floating*> a.c_cache
    cdef const floating* d_out = <const floating*> a.d_out
    cdef floating* dh = <floating*> a.dh
    cdef floating* dc = <floating*> a.dc
    cdef int dw = a.dout_width
    cdef Py_ssize_t offset = a.offset
    cdef bint reverse = a.reverse
    cdef bint split = a.nparts > 1
    cdef bint by_rows = split and a.by_rows
    cdef int hn = H if by_rows else H // a.nparts
    cdef int u0 = 0 if by_rows else a.part * hn
    cdef int b0 = a.part if by_rows else 0
    cdef int bs = 2 if by_rows else 1
    cdef int n = 0
    cdef int s, b, bi, t, tp, g, hb, j0, jb
    cdef Py_ssize_t r
    cdef floating* gp
    cdef floating* scr
    cdef const floating* src
    cdef const floating* cp
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
            pylstm_barrier_wait(a.bar)
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
    if split:
        # The weight gradients by halves of the gate rows, one GEMM per
        # thread: the shared factor [X | H_prev] is then packed by BLAS once
        # per thread, not once per gate block (the threads' own unit columns
        # of dG, four blocks, took four GEMMs each: the 64 x 100 x 64 x 128
        # float32 backward kernel at two threads, x and h_prev apart, 8.4-8.9
        # -> 7.8 ms). A half reads
        # gate gradients of both threads, hence the barrier. (BLAS is held
        # to one thread, so the two threads' calls run side by side.)
        pylstm_barrier_wait(a.bar)
        _weight_gradients(typed, a, a.part * (G // 2), G // 2, 1)


cdef void _weight_gradients(const floating* typed, _Loop* a, int g0, int rows,
                            int n_blocks) noexcept nogil:
    """dW_ih, dW_hh and the bias gradient for gate rows ``g0 .. g0 + rows - 1``
    of each of ``n_blocks`` blocks ``H`` apart: whole-sequence GEMMs over the
    N valid steps (dG^T X, dG^T H_prev) and column sums of dG.

    With ``dw_tmp`` set, each row of h_prev continues its row of x in one
    array (the layer keeps them so): one GEMM dG^T [X | H_prev] then gives
    both gradients, and BLAS packs dG once instead of twice (1.2x faster at
    32 x 50 x 32 x 64).
    """
    cdef int H = a.H, I = a.n_in
    cdef int G = 4 * H
    cdef int N = <int> a.n_rows
    cdef int W = I + H
    cdef int blk, r0, r
    cdef const floating* dg = <const floating*> a.gates
    cdef floating* dw_ih = <floating*> a.dw_ih
    cdef floating* dw_hh = <floating*> a.dw_hh
    cdef floating* tmp = <floating*> a.dw_tmp
    cdef floating* db = <floating*> a.db
    for blk in range(n_blocks):
        r0 = blk * H + g0
        if _direct_dw(I, H):
            _gemm_tn2(rows, N, dg + r0, G, <const floating*> a.x, a.x_ld, I,
                      dw_ih + <Py_ssize_t> r0 * I, I, <const floating*> a.h_prev, a.hp_ld,
                      H, dw_hh + <Py_ssize_t> r0 * H, H)
        elif tmp != NULL:
            gemm(True, False, rows, W, N, <floating> 1.0, dg + r0, G,
                 <const floating*> a.x, <int> a.x_ld, <floating> 0.0,
                 tmp + <Py_ssize_t> r0 * W, W)
            for r in range(r0, r0 + rows):
                memcpy(dw_ih + <Py_ssize_t> r * I, tmp + <Py_ssize_t> r * W,
                       I * sizeof(floating))
                memcpy(dw_hh + <Py_ssize_t> r * H, tmp + <Py_ssize_t> r * W + I,
                       H * sizeof(floating))
        else:
            gemm(True, False, rows, I, N, <floating> 1.0, dg + r0, G,
                 <const floating*> a.x, <int> a.x_ld, <floating> 0.0,
                 dw_ih + <Py_ssize_t> r0 * I, I)
            gemm(True, False, rows, H, N, <floating> 1.0, dg + r0, G,
                 <const floating*> a.h_prev, <int> a.hp_ld, <floating> 0.0,
                 dw_hh + <Py_ssize_t> r0 * H, H)
        if floating is float:
            pylstm_column_sums_f(dg + r0, N, rows, G, db + r0)
        else:
            pylstm_column_sums_d(dg + r0, N, rows, G, db + r0)


cdef enum:
    # Widest [X | H_prev] (n_in + H) whose weight gradients _kernels.c's
    # pylstm_gemm_tn makes; wider, BLAS's blocking wins (benchmarks/bench_lstm.py).
    DIRECT_DW_MAX_WIDTH = 256


cdef inline bint _direct_dw(int I, int H) noexcept nogil:
    return _use_packed and I + H <= DIRECT_DW_MAX_WIDTH


def direct_weight_gradients(int n_in, int hidden):
    """Whether :func:`backward` writes the weight gradients with its own
    kernel, straight into ``dw_ih`` and ``dw_hh`` (AVX-512, ``n_in +
    hidden`` at most 256): then it never needs the scratch of the fused
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
    _Loop* a
    int g0, rows


cdef void _gate_rows_task(void* p) noexcept nogil:
    """:func:`_weight_gradients` for the ``_GateRows`` at ``p`` (a thread's entry point)."""
    cdef _GateRows* r = <_GateRows*> p
    if r.a.is_float:
        _weight_gradients(<const float*> r.a.x, r.a, r.g0, r.rows, 1)
    else:
        _weight_gradients(<const double*> r.a.x, r.a, r.g0, r.rows, 1)


cdef void _backward_task(void* p) noexcept nogil:
    """Run :func:`_backward_loop` for the ``_Loop`` at ``p`` (a thread's entry point)."""
    cdef _Loop* a = <_Loop*> p
    if a.is_float:
        _backward_loop(<const float*> a.x, a)
    else:
        _backward_loop(<const double*> a.x, a)


# Splitting a time loop pays when a step is long next to the barrier between
# steps (a fraction of a microsecond) and the call next to handing the second
# half to the worker thread (_parallel.h keeps one: a few microseconds when
# it is asleep, less when a call follows closely; starting a thread per call
# took 33 us and needed 1M multiply-adds per step, or W_hh of 512 KiB, and
# 16M per call to pay). Measured at two threads with the kept worker, layer
# calls, forced split against none: 1 x 100 x 16 x 64 float32 training (16K
# per step) 0.199 -> 0.170 ms, 1 x 100 x 32 x 128 0.524 -> 0.428, float64
# 0.926 -> 0.715, 32 x 50 x 32 x 64 float32 training (0.5M) 1.344 -> 1.161,
# inference 0.532 -> 0.386, float64 training 2.672 -> 2.023.
cdef enum:
    SPLIT_STEP_MACS = 16384
    SPLIT_CALL_MACS = 1000000
cdef bint _split_sizes = True


def set_split_thresholds(bint enabled):
    """Apply (True) or not (False) the work thresholds of the two-thread loop.

    Returns the old setting. Without them any call that can split does (for
    tests, whose calls are small).
    """
    global _split_sizes
    old = bool(_split_sizes)
    _split_sizes = enabled
    return old


cdef bint _split_ok(_Loop* a, int threads, int nr) noexcept nogil:
    """Whether two threads should share this call's time loop (see :func:`_forward`).

    Every step's product must run on the packed weights (no BLAS step: BLAS
    is not called from two threads at once), the split must be possible (by
    rows: two rows or more; by units: each half of the units whole column
    panels of ``nr``), no other kernel call may be in progress (it holds the
    other core: see ``pylstm_alone`` in ``_parallel.h``), and the work must
    pay for the threads.
    """
    cdef double step = <double> a.B * 4 * a.H * a.H
    cdef bint possible = (a.B >= 2 if _by_rows(a.B) else a.H % (2 * nr) == 0)
    if not (threads >= 2 and PYLSTM_THREADS and a.w_pack != NULL and possible
            and not _blas_steps(a.lengths, a.B) and pylstm_alone()):
        return False
    return not _split_sizes or (step >= SPLIT_STEP_MACS and step * a.T >= SPLIT_CALL_MACS)


# How two threads share a time loop: by hidden units, with a barrier after
# every step (each step's product needs the h_{t-1} that both wrote), or by
# rows, each thread its alternate rows with the whole weight matrix and no
# barrier between steps. By rows from ROW_SPLIT_MIN_ROWS rows on, where
# each thread has at least one full block of rows of the packed product
# (PYLSTM_MR), and for any H; by units below, down to one row, for H a
# multiple of two column panels.
cdef int ROW_SPLIT_MIN_ROWS = 16
cdef int _split_mode = 0  # 0: by the batch size as above, 1: by units, 2: by rows
_SPLIT_MODES = ("auto", "units", "rows")


cdef inline bint _by_rows(int B) noexcept nogil:
    """Whether two threads share a loop over B rows by rows (else by units)."""
    return (_split_mode == 2 and B >= 2) or (_split_mode == 0 and B >= ROW_SPLIT_MIN_ROWS)


def set_split_mode(mode):
    """How two threads share a time loop: ``"auto"`` (the default: by rows
    from 16 rows on, else by units), ``"units"`` or ``"rows"`` (from two rows
    on, else by units); returns the old setting. Results are bit-identical
    in every mode (for tests and benchmarks; not while a kernel runs)."""
    global _split_mode
    if mode not in _SPLIT_MODES:
        raise ValueError(f"mode must be one of {_SPLIT_MODES}, got {mode!r}")
    old = _SPLIT_MODES[_split_mode]
    _split_mode = _SPLIT_MODES.index(mode)
    return old


cdef int _run_loop(void (*task)(void*) noexcept nogil, _Loop* a, bint split) noexcept nogil:
    """Run ``task`` on ``a``: on two threads if ``split`` (and one can be started)."""
    cdef _Loop second
    cdef pylstm_barrier bar
    if split:
        pylstm_barrier_init(&bar)
        a.by_rows = _by_rows(a.B)
        second = a[0]
        a.nparts = 2
        a.part = 0
        a.bar = &bar
        second.nparts = 2
        second.part = 1
        second.bar = &bar
        if pylstm_run_pair(task, a, &second) == 0:
            return 2
        a.nparts = 1
    task(a)
    return 1


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
    """The first element of ``bf_rows``, or NULL when there is none."""
    if bf_rows is None or bf_rows.shape[0] == 0:
        return NULL
    return &bf_rows[0]


cdef Py_ssize_t _pack_cache_len(int I, int H, bint is_float) noexcept nogil:
    """Elements of a packed-weight cache: both packed factors, the layout of
    the first (1: grouped, see _pack_w_hh_t), then copies of W_hh and W_ih
    (what they were packed from)."""
    cdef Py_ssize_t G = 4 * H
    if is_float:
        return (pylstm_packed_size_f(H, 4 * H) + pylstm_packed_size_f(I, 4 * H) + 1
                + G * H + G * I)
    return (pylstm_packed_size_d(H, 4 * H) + pylstm_packed_size_d(I, 4 * H) + 1
            + G * H + G * I)


def pack_cache_size(int n_in, int hidden, dtype):
    """Length of the ``pack_cache`` that :func:`forward_infer` takes for these sizes.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import _lstm
    >>> _lstm.pack_cache_size(3, 4, np.float64) >= 2 * 16 * (3 + 4)
    True
    """
    import numpy as np
    return _pack_cache_len(n_in, hidden, np.dtype(dtype) == np.float32)


cdef bint _cached_packs(floating* cache, const floating* w_ih, const floating* w_hh,
                        int I, int H, bint grouped, floating** w_pack,
                        floating** ih_pack) noexcept nogil:
    """Point ``w_pack``/``ih_pack`` into ``cache``, packing first unless the
    cache already holds the packs of these very weights in this layout
    (``grouped``: see _pack_w_hh_t). Returns whether it had to pack."""
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n_hh, n_ih
    cdef floating* saved
    cdef floating* layout
    if floating is float:
        n_hh, n_ih = pylstm_packed_size_f(H, 4 * H), pylstm_packed_size_f(I, 4 * H)
    else:
        n_hh, n_ih = pylstm_packed_size_d(H, 4 * H), pylstm_packed_size_d(I, 4 * H)
    w_pack[0] = cache
    ih_pack[0] = cache + n_hh
    layout = cache + n_hh + n_ih
    saved = layout + 1
    # The copies are written after the packs, so equal copies mean packs made
    # from these weights (a call that stopped half-way leaves a mismatch).
    if (layout[0] == <floating> grouped
            and memcmp(saved, w_hh, <size_t> (G * H) * sizeof(floating)) == 0
            and memcmp(saved + G * H, w_ih, <size_t> (G * I) * sizeof(floating)) == 0):
        return False
    layout[0] = -1  # no layout until the packs are complete
    _pack_w_hh_t(w_hh, H, grouped, w_pack[0])
    _pack_into(w_ih, I, True, I, 4 * H, ih_pack[0])
    layout[0] = <floating> grouped
    memcpy(saved, w_hh, <size_t> (G * H) * sizeof(floating))
    memcpy(saved + G * H, w_ih, <size_t> (G * I) * sizeof(floating))
    return True


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


cdef int _run_forward(const floating[:, :] x, const int[::1] lengths,
                      const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                      const floating[:, ::1] w_hh_t, const floating[::1] bias,
                      floating[:, ::1] h, floating[:, ::1] c, floating[:, ::1] out,
                      Py_ssize_t offset, bint reverse, floating[::1] xbuf,
                      floating[::1] gbuf, floating* gates, floating* c_cache,
                      floating* h_prev, Py_ssize_t hp_ld, bint x_batch_first,
                      bint out_batch_first, const Py_ssize_t[::1] bf_rows,
                      int threads, floating[::1] pack_cache=None,
                      floating[::1] work=None) except -1:
    """Check, set up and run one forward call (caches NULL: inference; the
    caller has checked their sizes). Returns the threads that ran the loop."""
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> x.shape[1]
    cdef int H = <int> w_hh.shape[1]
    cdef int K = _chunk_steps(xbuf.shape[0], gbuf.shape[0], B, I, 4 * H)
    cdef int nr = PYLSTM_NR_F if floating is float else PYLSTM_NR_D
    cdef int T, used
    cdef _Loop a
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
        a.gates = gates
        a.c_cache = c_cache
        a.h_prev = h_prev
        a.hp_ld = hp_ld
        a.x_ld = _row_stride(x.shape[0], I, x.strides[0], x.strides[1], sizeof(floating),
                             "x")
        h_alt = <floating*> _take(&ws, <size_t> B * H * sizeof(floating))
        if h_alt == NULL:
            raise MemoryError()
        a.is_float = floating is float
        a.nparts = 1
        a.T, a.B, a.n_in, a.H, a.K = T, B, I, H, K
        a.lengths = &lengths[0]
        a.off = off
        a.bfr = _bf_pointer(bf_rows)
        a.x = &x[0, 0]
        a.w_ih = &w_ih[0, 0]
        a.w_hh = &w_hh[0, 0]
        a.w_hh_t = &w_hh_t[0, 0]
        a.bias = &bias[0]
        a.h = &h[0, 0]
        a.h_alt = h_alt
        a.c = &c[0, 0]
        a.out = &out[0, 0]
        a.out_width = <int> out.shape[1]
        a.offset = offset
        a.reverse = reverse
        a.x_batch_first = x_batch_first
        a.out_batch_first = out_batch_first
        a.xbuf = &xbuf[0]
        a.gbuf = &gbuf[0]
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
                    and pack_cache.shape[0] >= _pack_cache_len(I, H, a.is_float)):
                cached = True
                with nogil:
                    _cached_packs(&pack_cache[0], &w_ih[0, 0], &w_hh[0, 0], I, H,
                                  a.grouped, &w_pack, &ih_pack)
            else:
                with nogil:
                    w_pack = <floating*> _take(&ws, _packed_len(H, 4 * H, a.is_float)
                                               * sizeof(floating))
                    if w_pack != NULL:
                        _pack_w_hh_t(&w_hh[0, 0], H, a.grouped, w_pack)
                    ih_pack = _packed_weights(&w_ih[0, 0], I, True, I, 4 * H, &ws)
                if w_pack == NULL or ih_pack == NULL:
                    raise MemoryError("no memory for the packed weights")
        a.w_pack = w_pack
        a.ih_pack = ih_pack
        with nogil:
            pylstm_enter()
            used = _run_loop(_forward_task, &a, _split_ok(&a, threads, nr))
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
                  floating[::1] work=None):
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
        Layer input in the packed layout, N = sum of lengths. Like every
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
        Receive the activated gates, c_t and h_{t-1}, packed layout. When
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
        hidden units (see ``_parallel.h``) where the packed products allow
        it (AVX-512, no BLAS step, H a multiple of 64 in float32 or 32 in
        float64); results are bit-identical to one thread's.
    work : 1-D array, default None
        Scratch kept by the caller, at least :func:`work_size` elements:
        the call then allocates nothing of the size of the weights (see
        :func:`work_size`). Its contents on entry do not matter.

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
    return _run_forward(x, lengths, w_ih, w_hh, w_hh_t, bias, h, c, out, offset, reverse,
                        xbuf, gbuf, &gates[0, 0], &c_cache[0, 0], &h_prev_cache[0, 0],
                        hp_ld, False, out_batch_first, bf_rows, threads, no_cache, work)


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
             bint fuse=True):
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
    cdef _Loop a
    cdef floating* w_pack = NULL
    cdef floating* scratch_alt = NULL
    cdef floating* dw_tmp = NULL
    cdef floating* block = NULL
    cdef Py_ssize_t pack_len = 0, tmp_len = 0
    cdef _GateRows rows0, rows1
    cdef Py_ssize_t dx_ld = I
    cdef _Work ws
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
        if (w_hh.shape[0] != G or w_hh.shape[1] != H or dw_ih.shape[0] != G
                or dw_ih.shape[1] != I or dw_hh.shape[0] != G or dw_hh.shape[1] != H
                or db.shape[0] != G):
            raise ValueError("weight or gradient arrays do not match 4H x (I, H)")
        memset(&a, 0, sizeof(a))
        a.is_float = floating is float
        a.nparts = 1
        a.T, a.B, a.n_in, a.H = T, B, I, H
        a.lengths = &lengths[0]
        a.off = off
        a.bfr = _bf_pointer(bf_rows)
        a.w_hh = &w_hh[0, 0]
        a.c0 = &c0[0, 0]
        a.gates = &gates[0, 0]
        a.c_cache = <void*> &c_cache[0, 0]
        a.d_out = &d_out[0, 0]
        a.dout_width = <int> _row_stride(d_out.shape[0], d_out.shape[1], d_out.strides[0],
                                         d_out.strides[1], sizeof(floating), "d_out")
        a.dout_batch_first = dout_batch_first
        a.offset = offset
        a.reverse = reverse
        a.dh = &dh[0, 0]
        a.dc = &dc[0, 0]
        a.scratch = &scratch[0, 0]
        a.scratch_alt = &scratch[0, 0]
        a.x = &x[0, 0]
        a.x_ld = _row_stride(N, I, x.strides[0], x.strides[1], sizeof(floating), "x")
        a.n_in = I
        a.h_prev = <void*> &h_prev_cache[0, 0]
        a.hp_ld = _row_stride(N, H, h_prev_cache.strides[0], h_prev_cache.strides[1],
                              sizeof(floating), "h_prev_cache")
        if fuse and not _direct_dw(I, H) and N > 1 and a.hp_ld == a.x_ld and a.x_ld == I + H \
                and <const floating*> a.h_prev == &x[0, 0] + I:
            # Rows of h_prev continue those of x: one GEMM for both weight
            # gradients (see _weight_gradients).
            tmp_len = <Py_ssize_t> G * (I + H)
        if _packs(T, B):
            pack_len = _packed_len(G, H, floating is float)
        a.dw_ih = &dw_ih[0, 0]
        a.dw_hh = &dw_hh[0, 0]
        a.db = &db[0]
        a.n_rows = N
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
            a.w_pack = w_pack
            split = _split_ok(&a, threads, nr)
            if split and reverse:
                # The threads' skew of up to one step needs the step's scratch
                # copy of dG to alternate between two arrays.
                scratch_alt = <floating*> _take(&ws, <size_t> B * G * sizeof(floating))
                split = scratch_alt != NULL
                a.scratch_alt = scratch_alt if split else a.scratch
            used = _run_loop(_backward_task, &a, split)
            # Whole-sequence products over the N valid steps (a split loop's
            # threads have made the weight gradients already). A loop too
            # short to split still makes them by the same halves of the gate
            # rows, on two threads when it can (with a thread per call: 32 x
            # 50 x 32 x 64 float32 training at two threads 1.47 -> 1.40 ms),
            # so that the results do not depend on other calls in progress.
            if used == 1:
                rows0.a, rows0.g0, rows0.rows = &a, 0, G // 2
                rows1.a, rows1.g0, rows1.rows = &a, G // 2, G - G // 2
                if (threads >= 2 and PYLSTM_THREADS
                        and (not _split_sizes
                             or <double> N * G * (I + H) >= SPLIT_CALL_MACS)):
                    pylstm_run_both(_gate_rows_task, &rows0, &rows1)
                else:
                    _weight_gradients(&x[0, 0], &a, 0, G, 1)
            if with_dx:
                gemm(False, False, <int> N, I, G, <floating> 1.0, &gates[0, 0], G,
                     &w_ih[0, 0], I, <floating> dx_beta, &dx[0, 0], <int> dx_ld)
            pylstm_leave()
    finally:
        _give(&ws, block)
        _give(&ws, scratch_alt)
        free(off)
    return used


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
            # while it sits in L2 the packed kernel beats BLAS at the LSTM's
            # narrow I (one thread, dG (N, 4H) @ W_ih (4H, I): float32 1600 x
            # 256 x 32 1.27x, 6400 x 512 x 64 1.32x; float64 1.26-1.74x).
            # Larger, BLAS's blocking wins (float64 6400 x 512 x 256: 0.68x).
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


def kernel_threads():
    """How many threads a kernel call can use in this build: 2 where the
    platform has threads (``_parallel.h``), else 1."""
    return 2 if PYLSTM_THREADS else 1
