# The C kernels of _kernels.h (one table per SIMD level, chosen at import and
# by PYLSTM_SIMD) and their fused-type wrappers.


cdef extern from "_kernels.h" nogil:
    int PYLSTM_NR_F
    int PYLSTM_NR_D
    int PYLSTM_SIMD_LEVELS
    int PYLSTM_SIMD_AVX512
    const char* pylstm_simd_names[]
    int pylstm_simd_level
    int pylstm_simd_usable(int level)
    int pylstm_simd_select(int cap)
    Py_ssize_t pylstm_packed_size_f(int k, int n)
    Py_ssize_t pylstm_packed_size_d(int k, int n)
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
    void pylstm_gemm_tn_f(int m, int k, const float* A, Py_ssize_t lda, const float* B1,
                          Py_ssize_t ldb1, int n1, float* C1, Py_ssize_t ldc1, const float* B2,
                          Py_ssize_t ldb2, int n2, float* C2, Py_ssize_t ldc2)
    void pylstm_gemm_tn_d(int m, int k, const double* A, Py_ssize_t lda, const double* B1,
                          Py_ssize_t ldb1, int n1, double* C1, Py_ssize_t ldc1, const double* B2,
                          Py_ssize_t ldb2, int n2, double* C2, Py_ssize_t ldc2)
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
    void pylstm_column_sums_f(const float* a, Py_ssize_t rows, int cols, Py_ssize_t lda, float* out)
    void pylstm_column_sums_d(const double* a, Py_ssize_t rows, int cols, Py_ssize_t lda,
                              double* out)
    void pylstm_scatter_rows_f(const float* a, Py_ssize_t rows, int cols, Py_ssize_t lda,
                               const int* idx, double* out, Py_ssize_t ldo)
    void pylstm_scatter_rows_d(const double* a, Py_ssize_t rows, int cols, Py_ssize_t lda,
                               const int* idx, double* out, Py_ssize_t ldo)
    double pylstm_softmax_xent_f(const float* z, Py_ssize_t rows, int cols, const int64_t* y,
                                 const double* w, float* dz)
    double pylstm_softmax_xent_d(const double* z, Py_ssize_t rows, int cols, const int64_t* y,
                                 const double* w, double* dz)
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


cdef inline void _cell_forward(const floating* gp, const floating* bias,
                               const floating* h_in, floating* h_out, floating* c,
                               floating* out, floating* gates_keep, floating* c_keep,
                               floating* h_prev_keep, int n, int S,
                               bint stream=False) noexcept nogil:
    """One row of one step, units ``0 .. n - 1``: activate the gates, update c, h.

    ``gp`` holds the pre-activations without bias, gate blocks ``S`` apart;
    ``h_in`` is h_{t-1} and ``h_out`` receives h_t, as does ``out``. When
    ``gates_keep`` is not NULL it receives the activated gates, and
    ``c_keep``/``h_prev_keep`` receive c_t and h_{t-1}, for BPTT; with
    ``stream``, by streaming stores (the thread then fences before another
    may read them: ``pylstm_store_fence``). The element-wise work is the
    vectorized C of ``_kernels.c``.
    """
    cdef int keep = 0 if gates_keep == NULL else (2 if stream else 1)
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
