/* A GEMM for the per-step products of the time loop, with the weight matrix
 * packed once per kernel call instead of once per step.
 *
 * At every step the LSTM multiplies a small block of rows (the active batch)
 * by the same weight matrix. A general BLAS call cannot know that the weights
 * repeat: above its small-matrix limit it copies them into its own panel
 * layout on every call. Here the caller packs the weights once per call
 * (pylstm_pack_*), and each step runs only the register-blocked inner
 * product (pylstm_gemm_packed_*):
 *
 *     C[m, n] = A[m, k] @ B[k, n]  (+ C when accumulate != 0)
 *
 * B is packed in panels of NR columns: panel p holds, for kk = 0 .. k - 1,
 * the NR values B[kk, p*NR .. p*NR + NR - 1] (zero past column n). Each panel
 * (k * NR values, 32 KiB at k = 256 in float32) stays in L1 while every block
 * of MR rows of A streams past it. MR x NR accumulators live in 16 AVX-512
 * registers. Row and column remainders go through small local tiles, so any
 * m, n, k work.
 *
 * Only compiled for AVX-512 (the target attribute); pylstm_packed_gemm_ok()
 * tells the caller at run time whether the CPU has it, and otherwise the
 * kernels call BLAS as before. Summation over k is in order, one FMA per
 * term, as in a BLAS micro-kernel.
 */
#ifndef PYLSTM_GEMM_H
#define PYLSTM_GEMM_H

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define PYLSTM_PACKED_GEMM 1
#define PYLSTM_AVX512 __attribute__((target("avx512f")))
#include <immintrin.h>
#else
#define PYLSTM_PACKED_GEMM 0
#endif

#define PYLSTM_MR 8
#define PYLSTM_NR_F 32
#define PYLSTM_NR_D 16

static inline int pylstm_packed_gemm_ok(void)
{
#if PYLSTM_PACKED_GEMM
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

/* Number of elements of the packed copy of a k x n matrix. */
static inline long pylstm_packed_size_f(int k, int n)
{
    return (long)((n + PYLSTM_NR_F - 1) / PYLSTM_NR_F) * PYLSTM_NR_F * k;
}

static inline long pylstm_packed_size_d(int k, int n)
{
    return (long)((n + PYLSTM_NR_D - 1) / PYLSTM_NR_D) * PYLSTM_NR_D * k;
}

/* Pack B (k x n, row stride ldb; with trans != 0, B is read as the transpose
 * of a row-major n x k matrix with row stride ldb). */
#define PYLSTM_PACK(NAME, T, NR)                                                      \
static void NAME(const T *B, int ldb, int trans, int k, int n, T *Bp)                 \
{                                                                                     \
    for (int p = 0; p * NR < n; p++) {                                                \
        T *dst = Bp + (long)p * NR * k;                                               \
        int j0 = p * NR;                                                              \
        int w = n - j0 < NR ? n - j0 : NR;                                            \
        for (int kk = 0; kk < k; kk++) {                                              \
            for (int j = 0; j < w; j++)                                               \
                dst[(long)kk * NR + j] = trans ? B[(long)(j0 + j) * ldb + kk]         \
                                               : B[(long)kk * ldb + j0 + j];          \
            for (int j = w; j < NR; j++)                                              \
                dst[(long)kk * NR + j] = 0;                                           \
        }                                                                             \
    }                                                                                 \
}

PYLSTM_PACK(pylstm_pack_f, float, PYLSTM_NR_F)
PYLSTM_PACK(pylstm_pack_d, double, PYLSTM_NR_D)

#if PYLSTM_PACKED_GEMM

typedef float pylstm_vf __attribute__((vector_size(64), aligned(4)));
typedef double pylstm_vd __attribute__((vector_size(64), aligned(8)));

/* One MR x NR tile: c (row stride ldc) = or += a (rows of stride lda) @ panel.
 * With rows < MR the last row is read again for the missing ones (their
 * results land in c's spare rows, which the caller discards). */
#define PYLSTM_TILE(NAME, T, V, L, SPLAT)                                             \
PYLSTM_AVX512 static inline void NAME(int k, const T *restrict a, long lda, int rows, \
                                      const T *restrict bp, T *restrict c, long ldc,  \
                                      int accumulate)                                 \
{                                                                                     \
    V acc0[PYLSTM_MR], acc1[PYLSTM_MR];                                               \
    const T *ar[PYLSTM_MR];                                                           \
    for (int r = 0; r < PYLSTM_MR; r++)                                               \
        ar[r] = a + (r < rows ? r : rows - 1) * lda;                                  \
    _Pragma("GCC unroll 8")                                                           \
    for (int r = 0; r < PYLSTM_MR; r++) {                                             \
        acc0[r] = (V){0};                                                             \
        acc1[r] = (V){0};                                                             \
    }                                                                                 \
    for (int kk = 0; kk < k; kk++) {                                                  \
        V b0, b1;                                                                     \
        memcpy(&b0, bp + (long)kk * 2 * L, sizeof b0);                                \
        memcpy(&b1, bp + (long)kk * 2 * L + L, sizeof b1);                            \
        _Pragma("GCC unroll 8")                                                       \
        for (int r = 0; r < PYLSTM_MR; r++) {                                         \
            V av = SPLAT(ar[r][kk]);                                                  \
            acc0[r] += av * b0;                                                       \
            acc1[r] += av * b1;                                                       \
        }                                                                             \
    }                                                                                 \
    _Pragma("GCC unroll 8")                                                           \
    for (int r = 0; r < PYLSTM_MR; r++) {                                             \
        if (accumulate) {                                                             \
            V c0, c1;                                                                 \
            memcpy(&c0, c + r * ldc, sizeof c0);                                      \
            memcpy(&c1, c + r * ldc + L, sizeof c1);                                  \
            acc0[r] += c0;                                                            \
            acc1[r] += c1;                                                            \
        }                                                                             \
        memcpy(c + r * ldc, &acc0[r], sizeof acc0[r]);                                \
        memcpy(c + r * ldc + L, &acc1[r], sizeof acc1[r]);                            \
    }                                                                                 \
}

/* A vector of copies of x (one broadcast load; "0 + x" would add first). */
#define PYLSTM_SPLAT_F(x) ((pylstm_vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x})
#define PYLSTM_SPLAT_D(x) ((pylstm_vd){x, x, x, x, x, x, x, x})

PYLSTM_TILE(pylstm_tile_f, float, pylstm_vf, 16, PYLSTM_SPLAT_F)
PYLSTM_TILE(pylstm_tile_d, double, pylstm_vd, 8, PYLSTM_SPLAT_D)

/* C[m, n] (row stride ldc) = or += A[m, k] (row stride lda) @ packed B. */
#define PYLSTM_GEMM_PACKED(NAME, TILE, T, NR)                                         \
PYLSTM_AVX512 static void NAME(int m, int n, int k, const T *A, int lda,              \
                               const T *Bp, T *C, int ldc, int accumulate)            \
{                                                                                     \
    T c_tile[PYLSTM_MR * NR];                                                         \
    for (int p = 0; p * NR < n; p++) {                                                \
        const T *bp = Bp + (long)p * NR * k;                                          \
        int j0 = p * NR;                                                              \
        int w = n - j0 < NR ? n - j0 : NR;                                            \
        for (int i0 = 0; i0 < m; i0 += PYLSTM_MR) {                                   \
            int rows = m - i0 < PYLSTM_MR ? m - i0 : PYLSTM_MR;                       \
            const T *a = A + (long)i0 * lda;                                          \
            if (rows == PYLSTM_MR && w == NR) {                                       \
                TILE(k, a, lda, rows, bp, C + (long)i0 * ldc + j0, ldc, accumulate);  \
            } else {                                                                  \
                for (int r = 0; r < rows; r++)                                        \
                    for (int j = 0; j < w; j++)                                       \
                        c_tile[r * NR + j] = C[(long)(i0 + r) * ldc + j0 + j];        \
                TILE(k, a, lda, rows, bp, c_tile, NR, accumulate);                    \
                for (int r = 0; r < rows; r++)                                        \
                    for (int j = 0; j < w; j++)                                       \
                        C[(long)(i0 + r) * ldc + j0 + j] = c_tile[r * NR + j];        \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
}

PYLSTM_GEMM_PACKED(pylstm_gemm_packed_f, pylstm_tile_f, float, PYLSTM_NR_F)
PYLSTM_GEMM_PACKED(pylstm_gemm_packed_d, pylstm_tile_d, double, PYLSTM_NR_D)

/* y[n] = or += x[k] @ packed B (k x n): the one-row case. Each panel sums
 * its k terms in four interleaved partial sums (8 independent FMA chains),
 * added at the end; B streams through once, in memory order. */
#define PYLSTM_GEMV_PACKED(NAME, T, V, L, NR, SPLAT)                                  \
PYLSTM_AVX512 static void NAME(int n, int k, const T *restrict x,                     \
                               const T *restrict Bp, T *restrict y, int accumulate)   \
{                                                                                     \
    for (int p = 0; p * NR < n; p++) {                                                \
        const T *bp = Bp + (long)p * NR * k;                                          \
        int j0 = p * NR;                                                              \
        int w = n - j0 < NR ? n - j0 : NR;                                            \
        V acc[4][2];                                                                  \
        for (int q = 0; q < 4; q++) {                                                 \
            acc[q][0] = (V){0};                                                       \
            acc[q][1] = (V){0};                                                       \
        }                                                                             \
        int kk = 0;                                                                   \
        for (; kk + 4 <= k; kk += 4) {                                                \
            _Pragma("GCC unroll 4")                                                   \
            for (int q = 0; q < 4; q++) {                                             \
                V b0, b1;                                                             \
                memcpy(&b0, bp + (long)(kk + q) * NR, sizeof b0);                     \
                memcpy(&b1, bp + (long)(kk + q) * NR + L, sizeof b1);                 \
                V xv = SPLAT(x[kk + q]);                                              \
                acc[q][0] += xv * b0;                                                 \
                acc[q][1] += xv * b1;                                                 \
            }                                                                         \
        }                                                                             \
        for (; kk < k; kk++) {                                                        \
            V b0, b1;                                                                 \
            memcpy(&b0, bp + (long)kk * NR, sizeof b0);                               \
            memcpy(&b1, bp + (long)kk * NR + L, sizeof b1);                           \
            V xv = SPLAT(x[kk]);                                                      \
            acc[0][0] += xv * b0;                                                     \
            acc[0][1] += xv * b1;                                                     \
        }                                                                             \
        V s0 = (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]);                     \
        V s1 = (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1]);                     \
        if (w == NR) {                                                                \
            /* Whole vectors: the caller's next vector loads of y are then   */       \
            /* forwarded from these stores (not from 32 scalar ones).         */       \
            if (accumulate) {                                                         \
                V y0, y1;                                                             \
                memcpy(&y0, y + j0, sizeof y0);                                       \
                memcpy(&y1, y + j0 + L, sizeof y1);                                   \
                s0 = y0 + s0;                                                         \
                s1 = y1 + s1;                                                         \
            }                                                                         \
            memcpy(y + j0, &s0, sizeof s0);                                           \
            memcpy(y + j0 + L, &s1, sizeof s1);                                       \
            continue;                                                                 \
        }                                                                             \
        T out[NR];                                                                    \
        memcpy(out, &s0, sizeof s0);                                                  \
        memcpy(out + L, &s1, sizeof s1);                                              \
        for (int j = 0; j < w; j++)                                                   \
            y[j0 + j] = accumulate ? y[j0 + j] + out[j] : out[j];                     \
    }                                                                                 \
}

PYLSTM_GEMV_PACKED(pylstm_gemv_packed_f, float, pylstm_vf, 16, PYLSTM_NR_F, PYLSTM_SPLAT_F)
PYLSTM_GEMV_PACKED(pylstm_gemv_packed_d, double, pylstm_vd, 8, PYLSTM_NR_D, PYLSTM_SPLAT_D)

/* The weight gradients: C1 = A^T B1 and C2 = A^T B2 over the k valid steps,
 * A (k x m, row stride lda) the gate gradients, B1 (k x n1) the layer input,
 * B2 (k x n2) h_{t-1}, each C row-major (m x n, row stride ldc). Neither B
 * is packed: each MR x NR tile broadcasts the MR values A[kk, i0 .. i0 + 7]
 * (contiguous) and reads the NR values B[kk, j0 ..] of row kk, so that the
 * transposed A and the row-major B of the LSTM's layout are read as they
 * lie, with masked loads and stores for the last, partial panel of each B.
 * The steps are taken in blocks (a block of B about 64 KiB: it then stays
 * in L2 while every row block of A streams past it); within a block each
 * element sums its terms in order, one FMA each, and the blocks' sums are
 * added to C in order. An element's result therefore does not depend on m
 * or on which rows a call covers (the two threads' halves). Measured at one
 * thread against OpenBLAS's gemm (C = A^T B, B = [X | H_prev] as one factor):
 * float32 m x n x k = 256 x 96 x 1600 1.24x, 512 x 160 x 100 1.21x, 512 x 192
 * x 6400 1.07x; float64 1.34x, 1.13x, 1.10x; but 0.8-0.9x for n >= 320,
 * where BLAS's packing and blocking win: the caller keeps BLAS there. */
#define PYLSTM_KB_BYTES (64 * 1024)

#define PYLSTM_GEMM_TN(NAME, T, V, L, SET1, MLOAD, FMA, MSTORE, ADD, MASK)              \
PYLSTM_AVX512 static void NAME##_part(int i0, int rows, int k0, int kn, const T *A,    \
                                      long lda, const T *B, long ldb, int n, T *C,     \
                                      long ldc)                                        \
{                                                                                       \
    const T *ap[PYLSTM_MR];                                                             \
    _Pragma("GCC unroll 8")                                                             \
    for (int r = 0; r < PYLSTM_MR; r++)                                                 \
        ap[r] = A + (long)k0 * lda + i0 + (r < rows ? r : rows - 1);                    \
    for (int j0 = 0; j0 < n; j0 += 2 * L) {                                             \
        int w = n - j0;                                                                 \
        int w0 = w < L ? w : L;                                                         \
        int w1 = w - L <= 0 ? 0 : (w - L < L ? w - L : L);                              \
        MASK m0 = (MASK)((1u << w0) - 1u), m1 = (MASK)((1u << w1) - 1u);                \
        V acc0[PYLSTM_MR], acc1[PYLSTM_MR];                                             \
        _Pragma("GCC unroll 8")                                                         \
        for (int r = 0; r < PYLSTM_MR; r++) {                                           \
            acc0[r] = SET1(0);                                                          \
            acc1[r] = SET1(0);                                                          \
        }                                                                               \
        const T *b = B + (long)k0 * ldb + j0;                                           \
        for (long kk = 0; kk < kn; kk++) {                                              \
            V b0 = MLOAD(m0, b), b1 = MLOAD(m1, b + L);                                 \
            long o = kk * lda;                                                          \
            _Pragma("GCC unroll 8")                                                     \
            for (int r = 0; r < PYLSTM_MR; r++) {                                       \
                V av = SET1(ap[r][o]);                                                  \
                acc0[r] = FMA(av, b0, acc0[r]);                                         \
                acc1[r] = FMA(av, b1, acc1[r]);                                         \
            }                                                                           \
            b += ldb;                                                                   \
        }                                                                               \
        _Pragma("GCC unroll 8")                                                         \
        for (int r = 0; r < PYLSTM_MR; r++) {                                           \
            if (r >= rows)                                                              \
                break;                                                                  \
            T *c = C + (long)(i0 + r) * ldc + j0;                                       \
            if (k0 > 0) {                                                               \
                acc0[r] = ADD(acc0[r], MLOAD(m0, c));                                   \
                acc1[r] = ADD(acc1[r], MLOAD(m1, c + L));                               \
            }                                                                           \
            MSTORE(c, m0, acc0[r]);                                                     \
            MSTORE(c + L, m1, acc1[r]);                                                 \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
PYLSTM_AVX512 static void NAME(int m, int k, const T *A, long lda,                     \
                               const T *B1, long ldb1, int n1, T *C1, long ldc1,       \
                               const T *B2, long ldb2, int n2, T *C2, long ldc2)       \
{                                                                                       \
    int kb = PYLSTM_KB_BYTES / (int)(sizeof(T) * (n1 + n2 > 0 ? n1 + n2 : 1));          \
    kb = kb < 16 ? 16 : kb;                                                             \
    for (int k0 = 0; k0 < k; k0 += kb) {                                                \
        int kn = k - k0 < kb ? k - k0 : kb;                                             \
        for (int i0 = 0; i0 < m; i0 += PYLSTM_MR) {                                     \
            int rows = m - i0 < PYLSTM_MR ? m - i0 : PYLSTM_MR;                         \
            NAME##_part(i0, rows, k0, kn, A, lda, B1, ldb1, n1, C1, ldc1);              \
            NAME##_part(i0, rows, k0, kn, A, lda, B2, ldb2, n2, C2, ldc2);              \
        }                                                                               \
    }                                                                                   \
}

PYLSTM_GEMM_TN(pylstm_gemm_tn_f, float, __m512, 16, _mm512_set1_ps, _mm512_maskz_loadu_ps,
               _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_add_ps, __mmask16)
PYLSTM_GEMM_TN(pylstm_gemm_tn_d, double, __m512d, 8, _mm512_set1_pd, _mm512_maskz_loadu_pd,
               _mm512_fmadd_pd, _mm512_mask_storeu_pd, _mm512_add_pd, __mmask8)

#else

static void pylstm_gemm_tn_f(int m, int k, const float *A, long lda, const float *B1,
                             long ldb1, int n1, float *C1, long ldc1, const float *B2,
                             long ldb2, int n2, float *C2, long ldc2)
{
    (void)m; (void)k; (void)A; (void)lda; (void)B1; (void)ldb1; (void)n1; (void)C1;
    (void)ldc1; (void)B2; (void)ldb2; (void)n2; (void)C2; (void)ldc2;
}

static void pylstm_gemm_tn_d(int m, int k, const double *A, long lda, const double *B1,
                             long ldb1, int n1, double *C1, long ldc1, const double *B2,
                             long ldb2, int n2, double *C2, long ldc2)
{
    (void)m; (void)k; (void)A; (void)lda; (void)B1; (void)ldb1; (void)n1; (void)C1;
    (void)ldc1; (void)B2; (void)ldb2; (void)n2; (void)C2; (void)ldc2;
}

static void pylstm_gemv_packed_f(int n, int k, const float *x, const float *Bp, float *y,
                                 int accumulate)
{
    (void)n; (void)k; (void)x; (void)Bp; (void)y; (void)accumulate;
}

static void pylstm_gemv_packed_d(int n, int k, const double *x, const double *Bp,
                                 double *y, int accumulate)
{
    (void)n; (void)k; (void)x; (void)Bp; (void)y; (void)accumulate;
}

static void pylstm_gemm_packed_f(int m, int n, int k, const float *A, int lda,
                                 const float *Bp, float *C, int ldc, int accumulate)
{
    (void)m; (void)n; (void)k; (void)A; (void)lda; (void)Bp; (void)C; (void)ldc;
    (void)accumulate;
}

static void pylstm_gemm_packed_d(int m, int n, int k, const double *A, int lda,
                                 const double *Bp, double *C, int ldc, int accumulate)
{
    (void)m; (void)n; (void)k; (void)A; (void)lda; (void)Bp; (void)C; (void)ldc;
    (void)accumulate;
}

#endif

#endif
