# The dense heads (the language model's softmax, the estimators' output layer):
# their products by halves of their rows, the halves on two threads when the
# caller allows them, and the softmax cross-entropy.


cdef struct _Half:
    # One half of C = alpha * op(A) @ op(B) + beta * C: its rows r0 .. r1 - 1.
    bint is_float, trans_a, trans_b
    int r0, r1, n, k, lda, ldb, ldc
    double alpha, beta
    const void* a
    const void* b
    void* c


cdef void _half_rows(const floating* a, _Half* h) noexcept nogil:
    """Rows ``r0 .. r1 - 1`` of C: row r of op(A) is column r of A when transposed."""
    cdef Py_ssize_t a_off = h.r0 if h.trans_a else <Py_ssize_t> h.r0 * h.lda
    if h.r1 > h.r0:
        gemm(h.trans_a, h.trans_b, h.r1 - h.r0, h.n, h.k, <floating> h.alpha, a + a_off,
             h.lda, <const floating*> h.b, h.ldb, <floating> h.beta,
             <floating*> h.c + <Py_ssize_t> h.r0 * h.ldc, h.ldc)


cdef void _half_task(void* p) noexcept nogil:
    cdef _Half* h = <_Half*> p
    if h.is_float:
        _half_rows(<const float*> h.a, h)
    else:
        _half_rows(<const double*> h.a, h)


def gemm_halves(bint trans_a, bint trans_b, double alpha,
                const floating[:, ::1] a, const floating[:, ::1] b,
                double beta, floating[:, ::1] c, int threads=1):
    """``c = alpha * op(a) @ op(b) + beta * c`` by halves of the rows of ``c``.

    A product of at least SPLIT_CALL_MACS multiply-adds is always two BLAS
    calls, one per half of the rows, so that the result does not depend on
    ``threads``; with ``threads=2`` (and BLAS held to one thread by the
    caller) the halves run on two threads when no other kernel call holds the
    second one. All arrays C-contiguous, one dtype. Returns the threads used.
    """
    cdef int m = <int> c.shape[0]
    cdef int n = <int> c.shape[1]
    cdef int k = <int> (a.shape[0] if trans_a else a.shape[1])
    cdef _Half first, second
    cdef int used = 1
    if ((a.shape[1] if trans_a else a.shape[0]) != m
            or (b.shape[1] if trans_b else b.shape[0]) != k
            or (b.shape[0] if trans_b else b.shape[1]) != n):
        raise ValueError(f"gemm_halves: shapes ({a.shape[0]}, {a.shape[1]}){'^T' * trans_a} @ "
                         f"({b.shape[0]}, {b.shape[1]}){'^T' * trans_b} -> "
                         f"({c.shape[0]}, {c.shape[1]}) do not match")
    if k == 0:
        raise ValueError("gemm_halves: inner dimension must be positive")
    if m == 0 or n == 0:
        return 1
    first.is_float = floating is float
    first.trans_a, first.trans_b = trans_a, trans_b
    first.r0, first.r1, first.n, first.k = 0, m, n, k
    first.lda, first.ldb, first.ldc = <int> a.shape[1], <int> b.shape[1], n
    first.alpha, first.beta = alpha, beta
    first.a, first.b, first.c = &a[0, 0], &b[0, 0], &c[0, 0]
    with nogil:
        pylstm_enter()
        if m >= 2 and <double> m * n * k >= SPLIT_CALL_MACS:
            second = first
            first.r1 = second.r0 = m // 2
            if threads >= 2 and PYLSTM_THREADS:
                used = pylstm_run_both(_half_task, &first, &second)
            else:
                _half_task(&first)
                _half_task(&second)
        else:
            _half_task(&first)
        pylstm_leave()
    return used


cdef struct _XentHalf:
    # One half of the rows of a softmax cross-entropy, and its loss.
    bint is_float
    Py_ssize_t r0, r1
    int c
    const void* z
    const int64_t* y
    const double* w
    void* dz
    double loss


cdef void _xent_task(void* p) noexcept nogil:
    """Rows ``r0 .. r1 - 1`` of :func:`softmax_cross_entropy` (a thread's entry point)."""
    cdef _XentHalf* h = <_XentHalf*> p
    cdef Py_ssize_t o = h.r0 * h.c
    if h.is_float:
        h.loss = pylstm_softmax_xent_f(<const float*> h.z + o, h.r1 - h.r0, h.c, h.y + h.r0,
                                       h.w + h.r0, <float*> h.dz + o)
    else:
        h.loss = pylstm_softmax_xent_d(<const double*> h.z + o, h.r1 - h.r0, h.c, h.y + h.r0,
                                       h.w + h.r0, <double*> h.dz + o)


def softmax_cross_entropy(const floating[:, ::1] z, const int64_t[::1] y,
                          const double[::1] weight, floating[:, ::1] dz, int threads=1):
    """Weighted cross-entropy of logits ``z`` (N, C) for labels ``y`` (N,) and its gradient.

    Returns ``sum_r weight[r] * (logsumexp(z[r]) - z[r, y[r]])`` and writes
    ``dz[r] = weight[r] * (softmax(z[r]) - onehot(y[r]))``, one pass per row
    (``_kernels.c``, the cell's exponential). A non-finite logit makes the
    loss NaN. Every label is checked against ``C`` before any work; ``dz``
    must not overlap ``z``. From SPLIT_CALL_MACS / 16 logits on (a language
    model's batch) the rows go by halves and the loss is the sum of the two
    halves' losses, on one thread as on two; with ``threads=2`` the halves
    run on two threads when no other kernel call holds the second one.
    """
    cdef Py_ssize_t n = z.shape[0]
    cdef int c = <int> z.shape[1]
    cdef Py_ssize_t r
    cdef double loss
    cdef _XentHalf first, second
    if y.shape[0] != n or weight.shape[0] != n or dz.shape[0] != n or dz.shape[1] != c:
        raise ValueError(f"softmax_cross_entropy: logits ({n}, {c}), labels ({y.shape[0]},), "
                         f"weights ({weight.shape[0]},) and gradient ({dz.shape[0]}, "
                         f"{dz.shape[1]}) do not match")
    if n == 0:
        return 0.0
    if c == 0:
        raise ValueError("softmax_cross_entropy: no classes")
    for r in range(n):
        if y[r] < 0 or y[r] >= c:
            raise ValueError(f"softmax_cross_entropy: label {y[r]} at row {r} is outside "
                             f"0 .. {c - 1}")
    first.is_float = floating is float
    first.r0, first.r1, first.c = 0, n, c
    first.z, first.y, first.w, first.dz = &z[0, 0], &y[0], &weight[0], &dz[0, 0]
    with nogil:
        pylstm_enter()
        if n >= 2 and <double> n * c * 16 >= SPLIT_CALL_MACS:
            second = first
            first.r1 = second.r0 = n // 2
            if threads >= 2 and PYLSTM_THREADS:
                pylstm_run_both(_xent_task, &first, &second)
            else:
                _xent_task(&first)
                _xent_task(&second)
            loss = first.loss + second.loss
        else:
            _xent_task(&first)
            loss = first.loss
        pylstm_leave()
    return loss
