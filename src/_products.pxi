# The per-step products: which run on packed weights and which through BLAS,
# the packing of W_hh^T and W_ih^T, and the inference calls' kept packs.


cdef bint _use_packed = True


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


def set_packed_gemm(bint enabled):
    """Use (True, the default) or not (False: BLAS for every per-step
    product) the packed-weight products; returns the old setting (for tests
    and benchmarks; not while a kernel runs)."""
    global _use_packed
    old = bool(_use_packed)
    _use_packed = enabled
    return old


cdef floating* _packed_weights(const floating* w, int ld, bint trans, int k,
                               int n, _Work* work) noexcept nogil:
    """A packed copy of the k x n matrix w (see _kernels.h) in scratch from
    ``work`` (:func:`_take`), or NULL (out of memory)."""
    cdef Py_ssize_t size
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
    blocks a quarter of the matrix apart, which take longer to read
    (benchmarks/c/gemv_floor.c, "gemv" against "gemv apart"). Each half of
    a gate must be whole panels (H a multiple of 2 NR).
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
