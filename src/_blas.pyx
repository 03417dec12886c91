"""Thin Python entry points over the row-major BLAS wrappers (for tests)."""
from cython cimport floating

from _blas cimport gemm, gemv


def gemm_rm(bint trans_a, bint trans_b, double alpha,
            const floating[:, ::1] a, const floating[:, ::1] b,
            double beta, floating[:, ::1] c):
    """Compute ``c = alpha * op(a) @ op(b) + beta * c`` in place.

    All arrays are C-contiguous and share one dtype (float32 or float64).
    """
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int ka = a.shape[1] if trans_a else a.shape[0]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int nb = b.shape[0] if trans_b else b.shape[1]
    if ka != m or kb != k or nb != n:
        raise ValueError("gemm_rm: operand shapes do not conform")
    if k == 0:
        raise ValueError("gemm_rm: inner dimension must be positive")
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating> alpha, &a[0, 0],
             <int> a.shape[1], &b[0, 0], <int> b.shape[1], <floating> beta,
             &c[0, 0], n)


def gemv_rm(bint trans_a, double alpha, const floating[:, ::1] a,
            const floating[::1] x, double beta, floating[::1] y):
    """Compute ``y = alpha * op(a) @ x + beta * y`` in place."""
    cdef int m = a.shape[0]
    cdef int n = a.shape[1]
    cdef int nx = m if trans_a else n
    cdef int ny = n if trans_a else m
    if x.shape[0] != nx or y.shape[0] != ny:
        raise ValueError("gemv_rm: operand shapes do not conform")
    with nogil:
        gemv(trans_a, m, n, <floating> alpha, &a[0, 0], n, &x[0],
             <floating> beta, &y[0])
