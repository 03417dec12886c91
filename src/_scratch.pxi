# Scratch memory: what a call carves from the caller-kept work array, and
# the sizes of those arrays.


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
