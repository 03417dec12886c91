/* The hot kernels, one table of them per instruction-set level, and the
 * choice of the table at run time.
 *
 * _kernels.c holds one source of every kernel: the LSTM cell (forward and
 * backward), the bias-gradient column sums, the softmax cross-entropy of the
 * language model's head, the products of the time loop
 * over packed weights (pylstm_gemm_packed, and pylstm_gemv_packed for one
 * row) and the weight-gradient product (pylstm_gemm_tn). src/meson.build
 * compiles it once per level that the compiler and platform have (x86-64:
 * baseline SSE2, AVX2 with FMA, AVX-512; aarch64: NEON; anything else: the
 * baseline), each into a table pylstm_kernels_<level>. The extension picks
 * the best table the CPU runs (pylstm_simd_select), and the names below call
 * through it.
 *
 * Packing (pylstm_pack_*) copies a matrix into panels of NR columns, the
 * order in which the products read it: what a BLAS gemm does to its operands
 * on every call, done here once per kernel call. "Packed" means this
 * throughout src/; the per-step rows of a variable-length batch are the
 * compact layout (_lstm.pyx). Packing is plain C: its layout is the same at
 * every level (panels of PYLSTM_NR_F floats or PYLSTM_NR_D doubles), so
 * packed weights stay valid when the level changes.
 */
#ifndef PYLSTM_KERNELS_H
#define PYLSTM_KERNELS_H

#include <stdint.h>

#include "_platform.h"

#define PYLSTM_NR_F 32
#define PYLSTM_NR_D 16

enum {
    PYLSTM_SIMD_BASELINE = 0,
    PYLSTM_SIMD_AVX2 = 1,
    PYLSTM_SIMD_AVX512 = 2,
    PYLSTM_SIMD_NEON = 3,
    PYLSTM_SIMD_LEVELS = 4
};

#define PYLSTM_R PYLSTM_RESTRICT

typedef struct {
    const char *name;
    void (*gemm_packed_f)(int m, int n, int k, const float *A, int lda, const float *Bp,
                          float *C, int ldc, int accumulate);
    void (*gemm_packed_d)(int m, int n, int k, const double *A, int lda, const double *Bp,
                          double *C, int ldc, int accumulate);
    void (*gemv_packed_f)(int n, int k, const float *x, const float *Bp, float *y,
                          int accumulate);
    void (*gemv_packed_d)(int n, int k, const double *x, const double *Bp, double *y,
                          int accumulate);
    void (*gemm_tn_f)(int m, int k, const float *A, ptrdiff_t lda, const float *B1, ptrdiff_t ldb1,
                      int n1, float *C1, ptrdiff_t ldc1, const float *B2, ptrdiff_t ldb2, int n2,
                      float *C2, ptrdiff_t ldc2);
    void (*gemm_tn_d)(int m, int k, const double *A, ptrdiff_t lda, const double *B1, ptrdiff_t ldb1,
                      int n1, double *C1, ptrdiff_t ldc1, const double *B2, ptrdiff_t ldb2, int n2,
                      double *C2, ptrdiff_t ldc2);
    void (*cell_forward_f)(const float *gp, const float *bias, const float *h_in,
                           float *h_out, float *c, float *out, float *gates_keep,
                           float *c_keep, float *h_prev_keep, int keep, int n, int S);
    void (*cell_forward_d)(const double *gp, const double *bias, const double *h_in,
                           double *h_out, double *c, double *out, double *gates_keep,
                           double *c_keep, double *h_prev_keep, int keep, int n, int S);
    void (*cell_backward_f)(float *gp, const float *cn, const float *cp, const float *dh,
                            float *dc, const float *dout, int n, int S);
    void (*cell_backward_d)(double *gp, const double *cn, const double *cp, const double *dh,
                            double *dc, const double *dout, int n, int S);
    void (*column_sums_f)(const float *a, ptrdiff_t rows, int cols, ptrdiff_t lda, float *out);
    void (*column_sums_d)(const double *a, ptrdiff_t rows, int cols, ptrdiff_t lda, double *out);
    void (*scatter_rows_f)(const float *a, ptrdiff_t rows, int cols, ptrdiff_t lda,
                           const int *idx, double *out, ptrdiff_t ldo);
    void (*scatter_rows_d)(const double *a, ptrdiff_t rows, int cols, ptrdiff_t lda,
                           const int *idx, double *out, ptrdiff_t ldo);
    double (*softmax_xent_f)(const float *z, ptrdiff_t rows, int cols, const int64_t *y,
                             const double *w, float *dz);
    double (*softmax_xent_d)(const double *z, ptrdiff_t rows, int cols, const int64_t *y,
                             const double *w, double *dz);
} pylstm_kernels;

/* The tables that this build compiled (src/meson.build defines
 * PYLSTM_HAVE_<LEVEL> for each). */
#ifdef PYLSTM_HAVE_BASELINE
extern const pylstm_kernels pylstm_kernels_baseline;
#endif
#ifdef PYLSTM_HAVE_AVX2
extern const pylstm_kernels pylstm_kernels_avx2;
#endif
#ifdef PYLSTM_HAVE_AVX512
extern const pylstm_kernels pylstm_kernels_avx512;
#endif
#ifdef PYLSTM_HAVE_NEON
extern const pylstm_kernels pylstm_kernels_neon;
#endif

#ifndef PYLSTM_KERNELS_TU   /* the dispatch: for the code that calls the kernels */

static const char *const pylstm_simd_names[PYLSTM_SIMD_LEVELS] = {
    "baseline", "avx2", "avx512", "neon"};

/* The table of a level, or NULL where this build has none. */
static inline const pylstm_kernels *pylstm_simd_table(int level)
{
    switch (level) {
#ifdef PYLSTM_HAVE_BASELINE
    case PYLSTM_SIMD_BASELINE: return &pylstm_kernels_baseline;
#endif
#ifdef PYLSTM_HAVE_AVX2
    case PYLSTM_SIMD_AVX2: return &pylstm_kernels_avx2;
#endif
#ifdef PYLSTM_HAVE_AVX512
    case PYLSTM_SIMD_AVX512: return &pylstm_kernels_avx512;
#endif
#ifdef PYLSTM_HAVE_NEON
    case PYLSTM_SIMD_NEON: return &pylstm_kernels_neon;
#endif
    default: return NULL;
    }
}

#if PYLSTM_MSVC && (defined(_M_X64) || defined(_M_IX86))
/* CPUID leaf 7 and XGETBV: the CPU has the instructions and the OS saves
 * the registers. */
static inline int pylstm_cpu_x86(int level)
{
    int r[4];
    unsigned long long xcr0;
    __cpuid(r, 1);
    if (!((r[2] >> 27) & 1) || !((r[2] >> 12) & 1))  /* OSXSAVE, FMA */
        return 0;
    xcr0 = _xgetbv(0);
    if ((xcr0 & 6) != 6)
        return 0;
    __cpuidex(r, 7, 0);
    if (level == PYLSTM_SIMD_AVX2)
        return (r[1] >> 5) & 1;
    /* AVX-512 F, DQ, BW, VL and the ZMM state */
    return (xcr0 & 0xe6) == 0xe6 && ((r[1] >> 16) & 1) && ((r[1] >> 17) & 1)
           && ((r[1] >> 30) & 1) && ((r[1] >> 31) & 1);
}
#endif

/* Whether this CPU runs a level's instructions. */
static inline int pylstm_cpu_has(int level)
{
    if (level == PYLSTM_SIMD_BASELINE)
        return 1;
#if defined(__aarch64__) || defined(_M_ARM64)
    return level == PYLSTM_SIMD_NEON;
#elif !PYLSTM_MSVC && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (level == PYLSTM_SIMD_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (level == PYLSTM_SIMD_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
               && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return 0;
#elif PYLSTM_MSVC && (defined(_M_X64) || defined(_M_IX86))
    if (level == PYLSTM_SIMD_AVX2 || level == PYLSTM_SIMD_AVX512)
        return pylstm_cpu_x86(level);
    return 0;
#else
    return 0;
#endif
}

/* Whether a level can run here: compiled into this build and run by the CPU. */
static inline int pylstm_simd_usable(int level)
{
    return pylstm_simd_table(level) != NULL && pylstm_cpu_has(level);
}

/* The best usable level no higher than `cap` in the order baseline < avx2 <
 * avx512 (NEON is the only level of an aarch64 build). */
static inline int pylstm_simd_best(int cap)
{
    static const int order[] = {PYLSTM_SIMD_AVX512, PYLSTM_SIMD_AVX2, PYLSTM_SIMD_NEON,
                                PYLSTM_SIMD_BASELINE};
    int rank[PYLSTM_SIMD_LEVELS] = {0, 1, 2, 0};
    for (int i = 0; i < 4; i++) {
        int level = order[i];
        if (rank[level] <= rank[cap] && pylstm_simd_usable(level))
            return level;
    }
    return -1;
}

static const pylstm_kernels *pylstm_k = NULL;
static int pylstm_simd_level = -1;

/* Use the best usable level up to `cap`; returns the level chosen. */
static inline int pylstm_simd_select(int cap)
{
    int level = pylstm_simd_best(cap);
    if (level < 0)
        PYLSTM_UNREACHABLE("a kernel table for this CPU");
    pylstm_k = pylstm_simd_table(level);
    pylstm_simd_level = level;
    return level;
}

static inline void pylstm_gemm_packed_f(int m, int n, int k, const float *A, int lda,
                                        const float *Bp, float *C, int ldc, int accumulate)
{
    pylstm_k->gemm_packed_f(m, n, k, A, lda, Bp, C, ldc, accumulate);
}
static inline void pylstm_gemm_packed_d(int m, int n, int k, const double *A, int lda,
                                        const double *Bp, double *C, int ldc, int accumulate)
{
    pylstm_k->gemm_packed_d(m, n, k, A, lda, Bp, C, ldc, accumulate);
}
static inline void pylstm_gemv_packed_f(int n, int k, const float *x, const float *Bp,
                                        float *y, int accumulate)
{
    pylstm_k->gemv_packed_f(n, k, x, Bp, y, accumulate);
}
static inline void pylstm_gemv_packed_d(int n, int k, const double *x, const double *Bp,
                                        double *y, int accumulate)
{
    pylstm_k->gemv_packed_d(n, k, x, Bp, y, accumulate);
}
static inline void pylstm_gemm_tn_f(int m, int k, const float *A, ptrdiff_t lda, const float *B1,
                                    ptrdiff_t ldb1, int n1, float *C1, ptrdiff_t ldc1, const float *B2,
                                    ptrdiff_t ldb2, int n2, float *C2, ptrdiff_t ldc2)
{
    pylstm_k->gemm_tn_f(m, k, A, lda, B1, ldb1, n1, C1, ldc1, B2, ldb2, n2, C2, ldc2);
}
static inline void pylstm_gemm_tn_d(int m, int k, const double *A, ptrdiff_t lda,
                                    const double *B1, ptrdiff_t ldb1, int n1, double *C1,
                                    ptrdiff_t ldc1, const double *B2, ptrdiff_t ldb2, int n2,
                                    double *C2, ptrdiff_t ldc2)
{
    pylstm_k->gemm_tn_d(m, k, A, lda, B1, ldb1, n1, C1, ldc1, B2, ldb2, n2, C2, ldc2);
}
static inline void pylstm_cell_forward_f(const float *gp, const float *bias,
                                         const float *h_in, float *h_out, float *c,
                                         float *out, float *gates_keep, float *c_keep,
                                         float *h_prev_keep, int keep, int n, int S)
{
    pylstm_k->cell_forward_f(gp, bias, h_in, h_out, c, out, gates_keep, c_keep,
                             h_prev_keep, keep, n, S);
}
static inline void pylstm_cell_forward_d(const double *gp, const double *bias,
                                         const double *h_in, double *h_out, double *c,
                                         double *out, double *gates_keep, double *c_keep,
                                         double *h_prev_keep, int keep, int n, int S)
{
    pylstm_k->cell_forward_d(gp, bias, h_in, h_out, c, out, gates_keep, c_keep,
                             h_prev_keep, keep, n, S);
}
static inline void pylstm_cell_backward_f(float *gp, const float *cn, const float *cp,
                                          const float *dh, float *dc, const float *dout,
                                          int n, int S)
{
    pylstm_k->cell_backward_f(gp, cn, cp, dh, dc, dout, n, S);
}
static inline void pylstm_cell_backward_d(double *gp, const double *cn, const double *cp,
                                          const double *dh, double *dc, const double *dout,
                                          int n, int S)
{
    pylstm_k->cell_backward_d(gp, cn, cp, dh, dc, dout, n, S);
}
static inline void pylstm_column_sums_f(const float *a, ptrdiff_t rows, int cols, ptrdiff_t lda,
                                        float *out)
{
    pylstm_k->column_sums_f(a, rows, cols, lda, out);
}
static inline void pylstm_column_sums_d(const double *a, ptrdiff_t rows, int cols, ptrdiff_t lda,
                                        double *out)
{
    pylstm_k->column_sums_d(a, rows, cols, lda, out);
}

static inline void pylstm_scatter_rows_f(const float *a, ptrdiff_t rows, int cols,
                                         ptrdiff_t lda, const int *idx, double *out,
                                         ptrdiff_t ldo)
{
    pylstm_k->scatter_rows_f(a, rows, cols, lda, idx, out, ldo);
}
static inline void pylstm_scatter_rows_d(const double *a, ptrdiff_t rows, int cols,
                                         ptrdiff_t lda, const int *idx, double *out,
                                         ptrdiff_t ldo)
{
    pylstm_k->scatter_rows_d(a, rows, cols, lda, idx, out, ldo);
}

static inline double pylstm_softmax_xent_f(const float *z, ptrdiff_t rows, int cols,
                                           const int64_t *y, const double *w, float *dz)
{
    return pylstm_k->softmax_xent_f(z, rows, cols, y, w, dz);
}
static inline double pylstm_softmax_xent_d(const double *z, ptrdiff_t rows, int cols,
                                           const int64_t *y, const double *w, double *dz)
{
    return pylstm_k->softmax_xent_d(z, rows, cols, y, w, dz);
}

/* Number of elements of the packed copy of a k x n matrix. */
static inline ptrdiff_t pylstm_packed_size_f(int k, int n)
{
    return (ptrdiff_t)((n + PYLSTM_NR_F - 1) / PYLSTM_NR_F) * PYLSTM_NR_F * k;
}

static inline ptrdiff_t pylstm_packed_size_d(int k, int n)
{
    return (ptrdiff_t)((n + PYLSTM_NR_D - 1) / PYLSTM_NR_D) * PYLSTM_NR_D * k;
}

/* Pack B (k x n, row stride ldb; with trans != 0, B is read as the transpose
 * of a row-major n x k matrix with row stride ldb) in panels of NR columns:
 * panel p holds, for kk = 0 .. k - 1, the NR values B[kk, p*NR ..] (zero
 * past column n). */
#define PYLSTM_PACK(NAME, T, NR)                                                        \
static void NAME(const T *B, int ldb, int trans, int k, int n, T *Bp)                   \
{                                                                                       \
    for (int p = 0; p * NR < n; p++) {                                                  \
        T *dst = Bp + (ptrdiff_t)p * NR * k;                                            \
        int j0 = p * NR;                                                                \
        int w = n - j0 < NR ? n - j0 : NR;                                              \
        for (int kk = 0; kk < k; kk++) {                                                \
            for (int j = 0; j < w; j++)                                                 \
                dst[(ptrdiff_t)kk * NR + j] = trans ? B[(ptrdiff_t)(j0 + j) * ldb + kk] \
                                               : B[(ptrdiff_t)kk * ldb + j0 + j];       \
            for (int j = w; j < NR; j++)                                                \
                dst[(ptrdiff_t)kk * NR + j] = 0;                                        \
        }                                                                               \
    }                                                                                   \
}

PYLSTM_PACK(pylstm_pack_f, float, PYLSTM_NR_F)
PYLSTM_PACK(pylstm_pack_d, double, PYLSTM_NR_D)

#endif  /* PYLSTM_KERNELS_TU */

#endif
