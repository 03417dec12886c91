# Row-major (C-contiguous) wrappers over scipy.linalg.cython_blas.
#
# A row-major matrix is, to Fortran BLAS, its own transpose, so
# C[m, n] = op(A)[m, k] . op(B)[k, n] is computed by asking BLAS for
# C^T = op(B)^T . op(A)^T: operands swapped, m and n swapped, each
# transpose flag travelling with its operand. Every ld argument is the
# row stride (in elements) of the array as stored.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A) @ op(B) + beta * C, all row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb,
              <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb,
              <double*> a, &lda, &beta, c, &ldc)


cdef inline void gemv(bint trans_a, int m, int n, floating alpha,
                      const floating* a, int lda, const floating* x,
                      floating beta, floating* y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y for a row-major A of shape (m, n)."""
    # Row-major A (m, n) is the Fortran matrix A^T (n, m): flip the flag.
    cdef char t = b'N' if trans_a else b'T'
    cdef int one = 1
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*> a, &lda, <float*> x, &one,
              &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*> a, &lda, <double*> x, &one,
              &beta, y, &one)
