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


#: Logits from which softmax_cross_entropy goes by halves (Python's callers skip the
#: thread query below it).
XENT_SPLIT_LOGITS = SPLIT_CALL_MACS / 16.0

#: Multiply-adds from which head_weight_gradients may take two threads (Python's
#: callers skip the thread query below it).
HEAD_SPLIT_MACS = SPLIT_CALL_MACS


cdef struct _HeadGrad:
    # One part of the head's weight gradient: columns h0 .. h1 - 1 of its
    # transpose, and the intercept's gradient where ``ones`` is set.
    bint is_float
    int h0, h1, n, h, v
    const void* x
    const void* dz
    const void* ones
    void* dw_t
    void* db


cdef void _head_grad_part(const floating* x, _HeadGrad* a) noexcept nogil:
    """``dw_t[:, h0:h1] = dz.T @ x[:, h0:h1]``, and ``db = dz``'s column sums with ``ones``."""
    _gemm_tn2(a.v, a.n, <const floating*> a.dz, a.v, x + a.h0, a.h, a.h1 - a.h0,
              <floating*> a.dw_t + a.h0, a.h, <const floating*> a.ones, 1,
              1 if a.ones != NULL else 0, <floating*> a.db, 1)


cdef void _head_grad_task(void* p) noexcept nogil:
    cdef _HeadGrad* a = <_HeadGrad*> p
    if a.is_float:
        _head_grad_part(<const float*> a.x, a)
    else:
        _head_grad_part(<const double*> a.x, a)


def head_weight_gradients(const floating[:, ::1] x, const floating[:, ::1] dz,
                          floating[:, ::1] d_coef, floating[::1] d_intercept,
                          int threads=1):
    """A dense head's weight gradients, ``d_coef = x.T @ dz`` and the column sums of
    ``dz`` into ``d_intercept``, through ``pylstm_gemm_tn``.

    For the language model's head (``x`` its (N, H) inputs, ``dz`` the (N, V)
    logits' gradient): ``dz``'s columns against ``x``'s rows as they lie,
    whole vectors of ``x``'s H columns, where BLAS's product has only V
    columns to a row of its result; faster than BLAS up to H = 512
    (``benchmarks/bench_head.py``).
    Each entry sums its terms in row order by blocks. From SPLIT_CALL_MACS
    multiply-adds on, the work goes by halves of ``x``'s columns, the same
    halves whatever ``threads``, so that the bits do not depend on it; with
    ``threads=2`` the halves run on two threads when no other kernel call
    holds the second one.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import _lstm
    >>> x, dz = np.arange(6.0).reshape(3, 2), np.ones((3, 1))
    >>> d_coef, d_b = np.empty((2, 1)), np.empty(1)
    >>> _lstm.head_weight_gradients(x, dz, d_coef, d_b)
    >>> d_coef.ravel().tolist(), d_b.tolist()
    ([6.0, 9.0], [3.0])
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef int h = <int> x.shape[1]
    cdef int v = <int> dz.shape[1]
    cdef _HeadGrad first, second
    cdef floating* work
    cdef floating* dw_t
    cdef floating* ones
    cdef Py_ssize_t i
    cdef int j
    if (dz.shape[0] != n or d_coef.shape[0] != h or d_coef.shape[1] != v
            or d_intercept.shape[0] != v):
        raise ValueError(f"head_weight_gradients: inputs ({n}, {h}), gradient "
                         f"({dz.shape[0]}, {v}), d_coef ({d_coef.shape[0]}, "
                         f"{d_coef.shape[1]}) and d_intercept ({d_intercept.shape[0]},) "
                         "do not match")
    if n == 0 or h == 0 or v == 0:
        d_coef[:, :] = 0
        d_intercept[:] = 0
        return
    # The transpose's rows, then a column of ones (the intercept's products).
    work = <floating*> malloc((<size_t> v * h + n) * sizeof(floating))
    if work == NULL:
        raise MemoryError()
    dw_t, ones = work, work + <Py_ssize_t> v * h
    try:
        first.is_float = floating is float
        first.h0, first.h1, first.n, first.h, first.v = 0, h, <int> n, h, v
        first.x, first.dz, first.ones = &x[0, 0], &dz[0, 0], ones
        first.dw_t, first.db = dw_t, &d_intercept[0]
        with nogil:
            for i in range(n):
                ones[i] = 1
            pylstm_enter()
            if h >= 2 and <double> n * h * v >= SPLIT_CALL_MACS:
                # By halves of x's columns, the first with the intercept: two
                # parts on one thread too, for the same step blocks and bits.
                second = first
                first.h1 = second.h0 = h // 2
                second.ones = NULL
                if threads >= 2 and PYLSTM_THREADS:
                    pylstm_run_both(_head_grad_task, &first, &second)
                else:
                    _head_grad_task(&first)
                    _head_grad_task(&second)
            else:
                _head_grad_task(&first)
            pylstm_leave()
            for i in range(h):
                for j in range(v):
                    d_coef[i, j] = dw_t[<Py_ssize_t> j * h + i]
    finally:
        free(work)
