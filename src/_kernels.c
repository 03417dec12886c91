/* One source of the hot kernels, compiled once per instruction-set level
 * (see _kernels.h and _simd.h). PYLSTM_TARGET names the level; the file
 * exports one table, pylstm_kernels_<PYLSTM_TARGET>.
 *
 * Rounding: every sum over k (the products) and over rows (the column sums)
 * adds its terms in order, one multiply-add each, so an element's value does
 * not depend on how many rows a call covers, nor on which thread runs it
 * (tests/c/test_kernels.c, split_calls). Between levels results differ in the last bits (fused against
 * separate multiply-adds, the vectorized exp).
 */
#define PYLSTM_KERNELS_TU 1
#include "_kernels.h"
#include "_simd.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef PYLSTM_TARGET
#error "compile _kernels.c with -DPYLSTM_TARGET=<level>"
#endif

#define PYLSTM_CAT2(a, b) a##b
#define PYLSTM_CAT(a, b) PYLSTM_CAT2(a, b)
#define PYLSTM_STR2(a) #a
#define PYLSTM_STR(a) PYLSTM_STR2(a)

#if defined(__clang__)
#define PYLSTM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define PYLSTM_UNROLL _Pragma("GCC unroll 16")
#else
#define PYLSTM_UNROLL
#endif

#define R PYLSTM_R
#define MR PYLSTM_TMR
#define NV PYLSTM_TNV

/* ------------------------------------------------------------------------
 * The cell, on vectors of L units (the last, partial vector of a row through
 * a padded local copy). exp is evaluated in plain arithmetic: x = n ln2 + r
 * with |r| <= ln2/2 (ln2 split in two parts for exactness), e^r by its Taylor
 * polynomial (degree 7 in float, 13 in double: truncation error below one
 * ulp), and 2^n by writing the exponent bits. The argument is clamped so that
 * nothing overflows or goes subnormal (a NaN becomes the upper bound).
 * sigmoid(x) = 1 / (1 + e^-x); tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|).
 * Near 0 both are accurate to a few ulps of 1 (absolute), which is what the
 * cell needs: gates and states are bounded by 1 in magnitude.
 * ------------------------------------------------------------------------ */
static inline pylstm_vf vexpf(pylstm_vf x)
{
    x = PYLSTM_MAX_F(PYLSTM_MIN_F(x, pylstm_splat_f(87.0f)), pylstm_splat_f(-87.0f));
    /* Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n, which then
     * sits in the low bits of t's significand. */
    pylstm_vf t = x * 1.44269504088896341f + 12582912.0f;
    pylstm_vf fn = t - 12582912.0f;
    pylstm_vf r = x - fn * 0.693145751953125f - fn * 1.428606765330187e-06f;
    pylstm_vf p = pylstm_splat_f(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * PYLSTM_FROM_BITS_F((PYLSTM_BITS_F(t) - 0x4B400000 + 127) << 23);
}

static inline pylstm_vd vexpd(pylstm_vd x)
{
    x = PYLSTM_MAX_D(PYLSTM_MIN_D(x, pylstm_splat_d(708.0)), pylstm_splat_d(-708.0));
    /* 1.5 * 2^52 rounds to an integer as above */
    pylstm_vd t = x * 1.4426950408889634074 + 6755399441055744.0;
    pylstm_vd fn = t - 6755399441055744.0;
    pylstm_vd r = x - fn * 0.6931471803691238164901733 - fn * 1.9082149292705877e-10;
    pylstm_vd p = pylstm_splat_d(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p * PYLSTM_FROM_BITS_D((PYLSTM_BITS_D(t) - 0x4338000000000000LL + 1023) << 52);
}

static inline pylstm_vf vsigmoidf(pylstm_vf x) { return 1.0f / (1.0f + vexpf(-x)); }
static inline pylstm_vd vsigmoidd(pylstm_vd x) { return 1.0 / (1.0 + vexpd(-x)); }

static inline pylstm_vf vtanhf(pylstm_vf x)
{
    pylstm_vf z = vexpf(-2.0f * PYLSTM_FROM_BITS_F(PYLSTM_BITS_F(x) & INT32_MAX));
    pylstm_vf t = (1.0f - z) / (1.0f + z);
    return PYLSTM_FROM_BITS_F(PYLSTM_BITS_F(t) | (PYLSTM_BITS_F(x) & INT32_MIN));
}

static inline pylstm_vd vtanhd(pylstm_vd x)
{
    pylstm_vd z = vexpd(-2.0 * PYLSTM_FROM_BITS_D(PYLSTM_BITS_D(x) & INT64_MAX));
    pylstm_vd t = (1.0 - z) / (1.0 + z);
    return PYLSTM_FROM_BITS_D(PYLSTM_BITS_D(t) | (PYLSTM_BITS_D(x) & INT64_MIN));
}

/* One row of one forward step, for the units j < n of a row whose gate
 * blocks (i, f, g, o) lie S apart (S = H; n = H, or a share of the units when
 * two threads split the step). gp: pre-activations without bias; h_in:
 * h_{t-1}; h_out receives h_t (a different array: the other thread may still
 * read h_in); c: state, updated in place; out: receives h_t. With keep != 0,
 * gates_keep receives the activated gates, c_keep c_t and h_prev_keep
 * h_{t-1} (with keep == 2 by streaming stores: the caller fences); without,
 * or with keep == 2, h_out holds o between the two passes.
 *
 * Two passes, the gates and c_t of every unit, then h_t = o tanh(c_t): in
 * one pass each vector's tanh(c_t) waits for a chain of five nonlinearities;
 * apart, the second pass's vectors are independent. */
#define CELL_FORWARD(NAME, T, V, L, LOAD, STORE, STREAM, SIG, TANH)                  \
static inline void NAME##_gates(const T *gp, const T *bias, const T *h_in, T *c,    \
                                T *gk, T *ck, T *hk, T *o_tmp, int keep, int S)      \
{                                                                                    \
    V ig = SIG(LOAD(gp) + LOAD(bias));                                               \
    V fg = SIG(LOAD(gp + S) + LOAD(bias + S));                                       \
    V gg = TANH(LOAD(gp + 2 * S) + LOAD(bias + 2 * S));                              \
    V og = SIG(LOAD(gp + 3 * S) + LOAD(bias + 3 * S));                               \
    V cn = fg * LOAD(c) + ig * gg;                                                   \
    if (keep) {                                                                      \
        if (keep == 2) {                                                             \
            STREAM(gk, ig);                                                          \
            STREAM(gk + S, fg);                                                      \
            STREAM(gk + 2 * S, gg);                                                  \
            STREAM(gk + 3 * S, og);                                                  \
            STREAM(ck, cn);                                                          \
            STREAM(hk, LOAD(h_in));                                                  \
            STORE(o_tmp, og); /* read back by the h_t pass: not from memory */       \
        } else {                                                                     \
            STORE(gk, ig);                                                           \
            STORE(gk + S, fg);                                                       \
            STORE(gk + 2 * S, gg);                                                   \
            STORE(gk + 3 * S, og);                                                   \
            STORE(ck, cn);                                                           \
            STORE(hk, LOAD(h_in));                                                   \
        }                                                                            \
    } else {                                                                         \
        STORE(o_tmp, og);                                                            \
    }                                                                                \
    STORE(c, cn);                                                                    \
}                                                                                    \
                                                                                     \
static void NAME(const T *R gp, const T *R bias, const T *R h_in, T *R h_out,       \
                 T *R c, T *R out, T *R gates_keep, T *R c_keep, T *R h_prev_keep,  \
                 int keep, int n, int S)                                             \
{                                                                                    \
    int j = 0;                                                                       \
    for (; j + L <= n; j += L)                                                       \
        NAME##_gates(gp + j, bias + j, h_in + j, c + j, keep ? gates_keep + j : NULL,\
                     keep ? c_keep + j : NULL, keep ? h_prev_keep + j : NULL,        \
                     h_out + j, keep, S);                                            \
    if (j < n) {                                                                     \
        /* the last units, padded: gates, bias, h_in, c, kept gates, c_t, h_{t-1}, o */ \
        T g[4 * L] = {0}, b[4 * L] = {0}, hi[L] = {0}, cc[L] = {0};                  \
        T gk[4 * L], ck[L], hk[L], o[L];                                             \
        int w = n - j;                                                               \
        for (int u = 0; u < w; u++) {                                                \
            for (int q = 0; q < 4; q++) {                                            \
                g[q * L + u] = gp[q * S + j + u];                                    \
                b[q * L + u] = bias[q * S + j + u];                                  \
            }                                                                        \
            hi[u] = h_in[j + u];                                                     \
            cc[u] = c[j + u];                                                        \
        }                                                                            \
        /* plain stores into the local copies, read back at once */                  \
        NAME##_gates(g, b, hi, cc, gk, ck, hk, o, keep != 0, L);                     \
        for (int u = 0; u < w; u++) {                                                \
            c[j + u] = cc[u];                                                        \
            if (keep) {                                                              \
                for (int q = 0; q < 4; q++)                                          \
                    gates_keep[q * S + j + u] = gk[q * L + u];                       \
                c_keep[j + u] = ck[u];                                               \
                h_prev_keep[j + u] = hk[u];                                          \
            }                                                                        \
            if (keep != 1)                                                           \
                h_out[j + u] = keep ? gk[3 * L + u] : o[u];                          \
        }                                                                            \
    }                                                                                \
    /* o as kept, or (not kept, or kept by streaming) as left in h_out */            \
    const T *o = keep == 1 ? gates_keep + 3 * S : h_out;                             \
    for (j = 0; j + L <= n; j += L) {                                                \
        V hn = LOAD(o + j) * TANH(LOAD(c + j));                                      \
        STORE(h_out + j, hn);                                                        \
        STORE(out + j, hn);                                                          \
    }                                                                                \
    if (j < n) {                                                                     \
        T ol[L] = {0}, cl[L] = {0}, hl[L];                                           \
        for (int u = 0; u < n - j; u++) {                                            \
            ol[u] = o[j + u];                                                        \
            cl[u] = c[j + u];                                                        \
        }                                                                            \
        STORE(hl, LOAD(ol) * TANH(LOAD(cl)));                                        \
        for (int u = 0; u < n - j; u++) {                                            \
            h_out[j + u] = hl[u];                                                    \
            out[j + u] = hl[u];                                                      \
        }                                                                            \
    }                                                                                \
}

CELL_FORWARD(cell_forward_f, float, pylstm_vf, PYLSTM_LF, pylstm_load_f, pylstm_store_f,
             pylstm_stream_f, vsigmoidf, vtanhf)
CELL_FORWARD(cell_forward_d, double, pylstm_vd, PYLSTM_LD, pylstm_load_d, pylstm_store_d,
             pylstm_stream_d, vsigmoidd, vtanhd)

/* One row of one BPTT step, units j < n, gate blocks S apart (as above).
 * gp: activated gates on entry, gate pre-activation gradients on exit; cn:
 * c_t; cp: c_{t-1}; dh, dc: running gradients (dc is replaced by
 * dL/dc_{t-1}); dout: dL/dh_t from above. */
#define CELL_BACKWARD(NAME, T, V, L, LOAD, STORE, TANH)                              \
static inline void NAME##_v(T *gp, const T *cn, const T *cp, const T *dh, T *dc,    \
                            const T *dout, int S)                                    \
{                                                                                    \
    V ig = LOAD(gp), fg = LOAD(gp + S), gg = LOAD(gp + 2 * S), og = LOAD(gp + 3 * S);\
    V tc = TANH(LOAD(cn));                                                           \
    V dht = LOAD(dh) + LOAD(dout);                                                   \
    V dct = LOAD(dc) + dht * og * (1 - tc * tc);                                     \
    STORE(gp, dct * gg * ig * (1 - ig));                                             \
    STORE(gp + S, dct * LOAD(cp) * fg * (1 - fg));                                   \
    STORE(gp + 2 * S, dct * ig * (1 - gg * gg));                                     \
    STORE(gp + 3 * S, dht * tc * og * (1 - og));                                     \
    STORE(dc, dct * fg);                                                             \
}                                                                                    \
                                                                                     \
static void NAME(T *R gp, const T *R cn, const T *R cp, const T *R dh, T *R dc,     \
                 const T *R dout, int n, int S)                                      \
{                                                                                    \
    int j = 0;                                                                       \
    for (; j + L <= n; j += L)                                                       \
        NAME##_v(gp + j, cn + j, cp + j, dh + j, dc + j, dout + j, S);               \
    if (j < n) {                                                                     \
        T g[4 * L] = {0}, a[L] = {0}, p[L] = {0}, h[L] = {0}, d[L] = {0}, o[L] = {0};\
        int w = n - j;                                                               \
        for (int u = 0; u < w; u++) {                                                \
            for (int q = 0; q < 4; q++)                                              \
                g[q * L + u] = gp[q * S + j + u];                                    \
            a[u] = cn[j + u];                                                        \
            p[u] = cp[j + u];                                                        \
            h[u] = dh[j + u];                                                        \
            d[u] = dc[j + u];                                                        \
            o[u] = dout[j + u];                                                      \
        }                                                                            \
        NAME##_v(g, a, p, h, d, o, L);                                               \
        for (int u = 0; u < w; u++) {                                                \
            for (int q = 0; q < 4; q++)                                              \
                gp[q * S + j + u] = g[q * L + u];                                    \
            dc[j + u] = d[u];                                                        \
        }                                                                            \
    }                                                                                \
}

CELL_BACKWARD(cell_backward_f, float, pylstm_vf, PYLSTM_LF, pylstm_load_f, pylstm_store_f,
              vtanhf)
CELL_BACKWARD(cell_backward_d, double, pylstm_vd, PYLSTM_LD, pylstm_load_d, pylstm_store_d,
              vtanhd)

/* out[j] = sum over rows r of a[r * lda + j], j < cols, rows in order (the
 * bias gradient: the column sums of the gate gradients). */
#define COLUMN_SUMS(NAME, T)                                                         \
static void NAME(const T *R a, ptrdiff_t rows, int cols, ptrdiff_t lda, T *R out)             \
{                                                                                    \
    for (int j = 0; j < cols; j++)                                                   \
        out[j] = 0;                                                                  \
    for (ptrdiff_t r = 0; r < rows; r++) {                                                \
        const T *R row = a + r * lda;                                                \
        for (int j = 0; j < cols; j++)                                               \
            out[j] += row[j];                                                        \
    }                                                                                \
}

COLUMN_SUMS(column_sums_f, float)
COLUMN_SUMS(column_sums_d, double)

/* out[idx[r] * ldo + j] += a[r * lda + j], j < cols, rows in order, in double
 * (a looked-up input projection's gradient: the gate gradients of each token's
 * rows summed into its row of the table). */
#define SCATTER_ROWS(NAME, T)                                                        \
static void NAME(const T *R a, ptrdiff_t rows, int cols, ptrdiff_t lda, const int *R idx, \
                 double *R out, ptrdiff_t ldo)                                       \
{                                                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                           \
        const T *R row = a + r * lda;                                                \
        double *R o = out + (ptrdiff_t)idx[r] * ldo;                                 \
        for (int j = 0; j < cols; j++)                                               \
            o[j] += (double)row[j];                                                  \
    }                                                                                \
}

SCATTER_ROWS(scatter_rows_f, float)
SCATTER_ROWS(scatter_rows_d, double)

/* ------------------------------------------------------------------------
 * The products of the time loop: C[m, n] = A[m, k] @ B[k, n] (+ C when
 * accumulate != 0), B packed once per kernel call in panels of NR columns
 * (pylstm_pack_*): a general BLAS call would copy the weights into its own
 * layout at every step. A tile is MR rows by NV vectors (CB columns) of
 * accumulators; a panel (k * NR values) stays in L1 while every block of
 * rows streams past it. Row and column remainders go through a local tile.
 * ------------------------------------------------------------------------ */

/* One TR x CB tile: c (row stride ldc) = or += a (rows of stride lda) @ the
 * CB columns at bp of a panel (row stride NR). With rows < TR the last row is
 * read again for the missing ones (their results land in c's spare rows,
 * which the caller discards). */
#define TILE(NAME, TR, T, V, L, NR, SPLAT, LOAD, STORE)                                           \
static inline void NAME(int k, const T *R a, ptrdiff_t lda, int rows, const T *R bp,     \
                        T *R c, ptrdiff_t ldc, int accumulate)                            \
{                                                                                    \
    V acc[TR][NV];                                                                   \
    const T *ar[TR];                                                                 \
    PYLSTM_UNROLL                                                                    \
    for (int r = 0; r < TR; r++) {                                                   \
        ar[r] = a + (r < rows ? r : rows - 1) * lda;                                 \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NV; v++)                                                 \
            acc[r][v] = SPLAT(0);                                                    \
    }                                                                                \
    for (int kk = 0; kk < k; kk++) {                                                 \
        V b[NV];                                                                     \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NV; v++)                                                 \
            b[v] = LOAD(bp + (ptrdiff_t)kk * NR + v * L);                                 \
        PYLSTM_UNROLL                                                                \
        for (int r = 0; r < TR; r++) {                                               \
            V av = SPLAT(ar[r][kk]);                                                 \
            PYLSTM_UNROLL                                                            \
            for (int v = 0; v < NV; v++)                                             \
                acc[r][v] += av * b[v];                                              \
        }                                                                            \
    }                                                                                \
    PYLSTM_UNROLL                                                                    \
    for (int r = 0; r < TR; r++) {                                                   \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NV; v++) {                                               \
            if (accumulate)                                                          \
                acc[r][v] += LOAD(c + r * ldc + v * L);                              \
            STORE(c + r * ldc + v * L, acc[r][v]);                                   \
        }                                                                            \
    }                                                                                \
}

TILE(tile_f, MR, float, pylstm_vf, PYLSTM_LF, PYLSTM_NR_F, pylstm_splat_f, pylstm_load_f,
     pylstm_store_f)
TILE(tile_d, MR, double, pylstm_vd, PYLSTM_LD, PYLSTM_NR_D, pylstm_splat_d, pylstm_load_d,
     pylstm_store_d)
TILE(tile4_f, 4, float, pylstm_vf, PYLSTM_LF, PYLSTM_NR_F, pylstm_splat_f, pylstm_load_f,
     pylstm_store_f)
TILE(tile4_d, 4, double, pylstm_vd, PYLSTM_LD, PYLSTM_NR_D, pylstm_splat_d, pylstm_load_d,
     pylstm_store_d)

/* The rows of the next tile when `left` rows remain: MR while more than 8
 * remain or MR rows take the rest without a 4-row tile doing it better,
 * else 4, so that few rows are computed and dropped (32 rows, a thread's
 * share of 64 at AVX2: 6+6+6+6+4+4, not 6 x 6; bench_simd.py, avx2). */
static inline int tile_rows(int left)
{
    return (left > 8 || left % MR == 0 || (left > 4 && left <= MR)) ? MR : 4;
}

/* C[m, n] (row stride ldc) = or += A[m, k] (row stride lda) @ packed B. */
#define GEMM_PACKED(NAME, TILE, TILE4, T, L, NR)                                      \
static void NAME(int m, int n, int k, const T *A, int lda, const T *Bp, T *C,       \
                 int ldc, int accumulate)                                            \
{                                                                                    \
    enum { CB = NV * L };                                                            \
    T c_tile[MR * CB];                                                               \
    for (int j0 = 0; j0 < n; j0 += CB) {                                             \
        const T *bp = Bp + (ptrdiff_t)(j0 / NR) * NR * k + j0 % NR;                       \
        int w = n - j0 < CB ? n - j0 : CB;                                           \
        for (int i0 = 0, tr; i0 < m; i0 += tr) {                                     \
            tr = tile_rows(m - i0);                                                  \
            int rows = m - i0 < tr ? m - i0 : tr;                                    \
            const T *a = A + (ptrdiff_t)i0 * lda;                                         \
            if (rows == tr && w == CB) {                                             \
                T *c = C + (ptrdiff_t)i0 * ldc + j0;                                      \
                if (tr == MR)                                                        \
                    TILE(k, a, lda, rows, bp, c, ldc, accumulate);                   \
                else                                                                 \
                    TILE4(k, a, lda, rows, bp, c, ldc, accumulate);                  \
                continue;                                                            \
            }                                                                        \
            for (int r = 0; r < rows; r++)                                           \
                for (int j = 0; j < w; j++)                                          \
                    c_tile[r * CB + j] = C[(ptrdiff_t)(i0 + r) * ldc + j0 + j];           \
            if (tr == MR)                                                            \
                TILE(k, a, lda, rows, bp, c_tile, CB, accumulate);                   \
            else                                                                     \
                TILE4(k, a, lda, rows, bp, c_tile, CB, accumulate);                  \
            for (int r = 0; r < rows; r++)                                           \
                for (int j = 0; j < w; j++)                                          \
                    C[(ptrdiff_t)(i0 + r) * ldc + j0 + j] = c_tile[r * CB + j];           \
        }                                                                            \
    }                                                                                \
}

GEMM_PACKED(gemm_packed_f, tile_f, tile4_f, float, PYLSTM_LF, PYLSTM_NR_F)
GEMM_PACKED(gemm_packed_d, tile_d, tile4_d, double, PYLSTM_LD, PYLSTM_NR_D)

/* y[n] = or += x[k] @ packed B (k x n): the one-row case. Each panel sums
 * its k terms in Q interleaved partial sums (about 8 independent vectors of
 * multiply-add chains), added pairwise at the end; B streams through once,
 * in memory order. */
#define GEMV_PACKED(NAME, T, V, L, NR, SPLAT, LOAD, STORE)                                        \
static void NAME(int n, int k, const T *R x, const T *R Bp, T *R y, int accumulate) \
{                                                                                    \
    enum { NRV = NR / L, Q = NRV >= 8 ? 1 : (NRV >= 4 ? 2 : 4) };                    \
    for (int j0 = 0; j0 < n; j0 += NR) {                                             \
        const T *bp = Bp + (ptrdiff_t)j0 * k;                                             \
        int w = n - j0 < NR ? n - j0 : NR;                                           \
        V acc[Q][NRV];                                                               \
        PYLSTM_UNROLL                                                                \
        for (int q = 0; q < Q; q++) {                                                \
            PYLSTM_UNROLL                                                            \
            for (int v = 0; v < NRV; v++)                                            \
                acc[q][v] = SPLAT(0);                                                \
        }                                                                            \
        int kk = 0;                                                                  \
        for (; kk + Q <= k; kk += Q) {                                               \
            PYLSTM_UNROLL                                                            \
            for (int q = 0; q < Q; q++) {                                            \
                V xv = SPLAT(x[kk + q]);                                             \
                PYLSTM_UNROLL                                                        \
                for (int v = 0; v < NRV; v++)                                        \
                    acc[q][v] += xv * LOAD(bp + (ptrdiff_t)(kk + q) * NR + v * L);        \
            }                                                                        \
        }                                                                            \
        for (; kk < k; kk++) {                                                       \
            V xv = SPLAT(x[kk]);                                                     \
            PYLSTM_UNROLL                                                            \
            for (int v = 0; v < NRV; v++)                                            \
                acc[0][v] += xv * LOAD(bp + (ptrdiff_t)kk * NR + v * L);                  \
        }                                                                            \
        T out[NR];                                                                   \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NRV; v++) {                                              \
            V s = acc[0][v];                                                         \
            if (Q == 2)                                                              \
                s = acc[0][v] + acc[Q - 1][v];                                       \
            if (Q == 4)                                                              \
                s = (acc[0][v] + acc[1 % Q][v]) + (acc[2 % Q][v] + acc[3 % Q][v]);   \
            if (w == NR && accumulate)                                               \
                s = LOAD(y + j0 + v * L) + s;                                        \
            STORE(out + v * L, s);                                                   \
        }                                                                            \
        if (w == NR) {                                                               \
            memcpy(y + j0, out, sizeof out);                                         \
            continue;                                                                \
        }                                                                            \
        for (int j = 0; j < w; j++)                                                  \
            y[j0 + j] = accumulate ? y[j0 + j] + out[j] : out[j];                    \
    }                                                                                \
}

GEMV_PACKED(gemv_packed_f, float, pylstm_vf, PYLSTM_LF, PYLSTM_NR_F, pylstm_splat_f,
            pylstm_load_f, pylstm_store_f)
GEMV_PACKED(gemv_packed_d, double, pylstm_vd, PYLSTM_LD, PYLSTM_NR_D, pylstm_splat_d,
            pylstm_load_d, pylstm_store_d)

/* ------------------------------------------------------------------------
 * The weight gradients: C1 = A^T B1 and C2 = A^T B2 over the k valid steps,
 * A (k x m, row stride lda) the gate gradients, B1 (k x n1) the layer input,
 * B2 (k x n2) h_{t-1}, each C row-major (m x n, row stride ldc). Neither B is
 * packed: a tile broadcasts MR contiguous values A[kk, i0 ..] and reads CB
 * values B[kk, j0 ..] of row kk, so that the transposed A and the row-major
 * B of the LSTM's layout are read as they lie. The steps are taken in blocks
 * (a block of B about 64 KiB stays in L2 while every row block of A streams
 * past it); each element sums its terms in order within a block, and the
 * blocks' sums are added to C in order.
 * ------------------------------------------------------------------------ */
#define PYLSTM_KB_BYTES (64 * 1024)

/* Columns j0 .. j0 + NVX * L - 1 of rows i0 .. i0 + rows - 1 of C, steps
 * k0 .. k0 + kn - 1. */
#define TN_BLOCK(NAME, T, V, L, NVX, SPLAT, LOAD, STORE)                                          \
static inline void NAME(const T *const *ap, int rows, ptrdiff_t lda, const T *b, ptrdiff_t ldb,\
                        ptrdiff_t kn, T *c, ptrdiff_t ldc, int add)                            \
{                                                                                    \
    V acc[MR][NVX];                                                                  \
    PYLSTM_UNROLL                                                                    \
    for (int r = 0; r < MR; r++) {                                                   \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NVX; v++)                                                \
            acc[r][v] = SPLAT(0);                                                    \
    }                                                                                \
    for (ptrdiff_t kk = 0; kk < kn; kk++) {                                               \
        V bv[NVX];                                                                   \
        ptrdiff_t o = kk * lda;                                                           \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NVX; v++)                                                \
            bv[v] = LOAD(b + v * L);                                                 \
        PYLSTM_UNROLL                                                                \
        for (int r = 0; r < MR; r++) {                                               \
            V av = SPLAT(ap[r][o]);                                                  \
            PYLSTM_UNROLL                                                            \
            for (int v = 0; v < NVX; v++)                                            \
                acc[r][v] += av * bv[v];                                             \
        }                                                                            \
        b += ldb;                                                                    \
    }                                                                                \
    for (int r = 0; r < rows; r++) {                                                 \
        PYLSTM_UNROLL                                                                \
        for (int v = 0; v < NVX; v++) {                                              \
            if (add)                                                                 \
                acc[r][v] += LOAD(c + r * ldc + v * L);                              \
            STORE(c + r * ldc + v * L, acc[r][v]);                                   \
        }                                                                            \
    }                                                                                \
}

TN_BLOCK(tn_wide_f, float, pylstm_vf, PYLSTM_LF, NV, pylstm_splat_f, pylstm_load_f,
         pylstm_store_f)
TN_BLOCK(tn_one_f, float, pylstm_vf, PYLSTM_LF, 1, pylstm_splat_f, pylstm_load_f,
         pylstm_store_f)
TN_BLOCK(tn_wide_d, double, pylstm_vd, PYLSTM_LD, NV, pylstm_splat_d, pylstm_load_d,
         pylstm_store_d)
TN_BLOCK(tn_one_d, double, pylstm_vd, PYLSTM_LD, 1, pylstm_splat_d, pylstm_load_d,
         pylstm_store_d)

/* The columns j0 .. n - 1 (fewer than a vector) of C's rows 0 .. m - 1, steps
 * k0 .. k0 + kn - 1: vectors along C's column (A's rows), four at a time for
 * independent chains; each element still sums its steps in order, one
 * multiply-add each, as in the tiles. */
#define TN_TAIL(NAME, T, V, L, SPLAT, LOAD, STORE)                                   \
static void NAME(int m, ptrdiff_t k0, ptrdiff_t kn, const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb,\
                 int j0, int n, T *C, ptrdiff_t ldc)                                      \
{                                                                                    \
    enum { U = 4 };                                                                  \
    for (int j = j0; j < n; j++) {                                                   \
        const T *b = B + k0 * ldb + j;                                               \
        int i = 0;                                                                   \
        while (i + L <= m) {                                                         \
            int nv = (m - i) / L < U ? 1 : U;                                        \
            V acc[U];                                                                \
            const T *a = A + k0 * lda + i;                                           \
            PYLSTM_UNROLL                                                            \
            for (int u = 0; u < U; u++)                                              \
                acc[u] = SPLAT(0);                                                   \
            if (nv == U) {                                                           \
                for (ptrdiff_t kk = 0; kk < kn; kk++) {                                   \
                    V bv = SPLAT(b[kk * ldb]);                                       \
                    PYLSTM_UNROLL                                                    \
                    for (int u = 0; u < U; u++)                                      \
                        acc[u] += LOAD(a + kk * lda + u * L) * bv;                   \
                }                                                                    \
            } else {                                                                 \
                for (ptrdiff_t kk = 0; kk < kn; kk++)                                     \
                    acc[0] += LOAD(a + kk * lda) * SPLAT(b[kk * ldb]);               \
            }                                                                        \
            for (int u = 0; u < nv; u++) {                                           \
                T out[L];                                                            \
                STORE(out, acc[u]);                                                  \
                for (int r = 0; r < L; r++) {                                        \
                    T *c = C + (ptrdiff_t)(i + u * L + r) * ldc + j;                      \
                    *c = k0 > 0 ? out[r] + *c : out[r];                              \
                }                                                                    \
            }                                                                        \
            i += nv * L;                                                             \
        }                                                                            \
        for (; i < m; i++) {                                                         \
            T s = 0;                                                                 \
            for (ptrdiff_t kk = 0; kk < kn; kk++)                                         \
                s += A[(k0 + kk) * lda + i] * b[kk * ldb];                           \
            T *c = C + (ptrdiff_t)i * ldc + j;                                            \
            *c = k0 > 0 ? s + *c : s;                                                \
        }                                                                            \
    }                                                                                \
}

TN_TAIL(tn_tail_f, float, pylstm_vf, PYLSTM_LF, pylstm_splat_f, pylstm_load_f, pylstm_store_f)
TN_TAIL(tn_tail_d, double, pylstm_vd, PYLSTM_LD, pylstm_splat_d, pylstm_load_d, pylstm_store_d)

/* Whole vectors of columns by tiles of MR rows, the rest by TN_TAIL. */
#define GEMM_TN(NAME, T, L, WIDE, ONE, TAIL)                                         \
static void NAME##_part(int i0, int rows, ptrdiff_t k0, ptrdiff_t kn, const T *A, ptrdiff_t lda,   \
                        const T *B, ptrdiff_t ldb, int n, T *C, ptrdiff_t ldc)                 \
{                                                                                    \
    const T *ap[MR];                                                                 \
    int j0 = 0;                                                                      \
    for (int r = 0; r < MR; r++)                                                     \
        ap[r] = A + k0 * lda + i0 + (r < rows ? r : rows - 1);                       \
    for (; j0 + NV * L <= n; j0 += NV * L)                                           \
        WIDE(ap, rows, lda, B + k0 * ldb + j0, ldb, kn, C + (ptrdiff_t)i0 * ldc + j0,     \
             ldc, k0 > 0);                                                           \
    for (; j0 + L <= n; j0 += L)                                                     \
        ONE(ap, rows, lda, B + k0 * ldb + j0, ldb, kn, C + (ptrdiff_t)i0 * ldc + j0,      \
            ldc, k0 > 0);                                                            \
}                                                                                    \
                                                                                     \
static void NAME(int m, int k, const T *A, ptrdiff_t lda, const T *B1, ptrdiff_t ldb1, int n1, \
                 T *C1, ptrdiff_t ldc1, const T *B2, ptrdiff_t ldb2, int n2, T *C2, ptrdiff_t ldc2) \
{                                                                                    \
    int kb = PYLSTM_KB_BYTES / (int)(sizeof(T) * (n1 + n2 > 0 ? n1 + n2 : 1));       \
    kb = kb < 16 ? 16 : kb;                                                          \
    for (ptrdiff_t k0 = 0; k0 < k; k0 += kb) {                                            \
        ptrdiff_t kn = k - k0 < kb ? k - k0 : kb;                                         \
        for (int i0 = 0; i0 < m; i0 += MR) {                                         \
            int rows = m - i0 < MR ? m - i0 : MR;                                    \
            NAME##_part(i0, rows, k0, kn, A, lda, B1, ldb1, n1, C1, ldc1);           \
            NAME##_part(i0, rows, k0, kn, A, lda, B2, ldb2, n2, C2, ldc2);           \
        }                                                                            \
        TAIL(m, k0, kn, A, lda, B1, ldb1, n1 - n1 % L, n1, C1, ldc1);                \
        TAIL(m, k0, kn, A, lda, B2, ldb2, n2 - n2 % L, n2, C2, ldc2);                \
    }                                                                                \
}

GEMM_TN(gemm_tn_f, float, PYLSTM_LF, tn_wide_f, tn_one_f, tn_tail_f)
GEMM_TN(gemm_tn_d, double, PYLSTM_LD, tn_wide_d, tn_one_d, tn_tail_d)

/* Softmax cross-entropy of `rows` rows of `cols` logits z with labels y and row
 * weights w (the language model's loss): returns sum_r w_r (log s_r - (z_ry - m_r))
 * with m_r the row's largest logit and s_r = sum_j e^(z_rj - m_r), and writes
 * dz_r = w_r softmax(z_r) - w_r onehot(y_r). The exponentials go through the
 * cell's vexp; each vector lane sums in T, the lanes and the rows in double. A
 * NaN or infinite logit makes the result NaN: z * 0 is 0 for a finite z only,
 * and the sum of those products is added (finite logits too far apart for
 * z - m give an infinite loss, as the clamped exp leaves s >= 1). */
#define SOFTMAX_XENT(NAME, T, V, L, SPLAT, LOAD, STORE, VMAX, VEXP)                   \
static double NAME(const T *R z, ptrdiff_t rows, int cols, const int64_t *R y,      \
                   const double *R w, T *R dz)                                       \
{                                                                                    \
    double loss = 0.0, bad = 0.0;                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                           \
        const T *zr = z + r * cols;                                                  \
        T *dr = dz + r * cols;                                                       \
        T lanes[L], m = zr[0];                                                       \
        int j = 0;                                                                   \
        if (cols >= L) {                                                             \
            V vm = LOAD(zr);                                                         \
            for (j = L; j + L <= cols; j += L)                                       \
                vm = VMAX(vm, LOAD(zr + j));                                         \
            STORE(lanes, vm);                                                        \
            for (int u = 0; u < L; u++)                                              \
                m = lanes[u] > m ? lanes[u] : m;                                     \
        }                                                                            \
        for (; j < cols; j++)                                                        \
            m = zr[j] > m ? zr[j] : m;                                               \
        V vsum = SPLAT(0), vbad = SPLAT(0);                                          \
        for (j = 0; j + L <= cols; j += L) {                                         \
            V d = LOAD(zr + j) - m;                                                  \
            V e = VEXP(d);                                                           \
            STORE(dr + j, e);                                                        \
            vsum += e;                                                               \
            vbad += LOAD(zr + j) * (T)0;                                             \
        }                                                                            \
        double s = 0.0;                                                              \
        if (j < cols) { /* the last logits, padded with the row's largest */         \
            T zl[L], el[L];                                                          \
            for (int u = 0; u < L; u++)                                              \
                zl[u] = j + u < cols ? zr[j + u] : m;                                \
            V d = LOAD(zl) - m;                                                      \
            STORE(el, VEXP(d));                                                      \
            vbad += LOAD(zl) * (T)0;                                                 \
            for (int u = 0; u < cols - j; u++) {                                     \
                dr[j + u] = el[u];                                                   \
                s += el[u];                                                          \
            }                                                                        \
        }                                                                            \
        STORE(lanes, vsum);                                                          \
        for (int u = 0; u < L; u++)                                                  \
            s += lanes[u];                                                           \
        STORE(lanes, vbad);                                                          \
        for (int u = 0; u < L; u++)                                                  \
            bad += lanes[u];                                                         \
        loss += w[r] * (log(s) - (double)(zr[y[r]] - m));                            \
        V scale = SPLAT((T)(w[r] / s));                                              \
        for (j = 0; j + L <= cols; j += L)                                           \
            STORE(dr + j, LOAD(dr + j) * scale);                                     \
        for (; j < cols; j++)                                                        \
            dr[j] = dr[j] * (T)(w[r] / s);                                           \
        dr[y[r]] -= (T)w[r];                                                         \
    }                                                                                \
    return loss + bad;                                                               \
}

SOFTMAX_XENT(softmax_xent_f, float, pylstm_vf, PYLSTM_LF, pylstm_splat_f, pylstm_load_f,
             pylstm_store_f, PYLSTM_MAX_F, vexpf)
SOFTMAX_XENT(softmax_xent_d, double, pylstm_vd, PYLSTM_LD, pylstm_splat_d, pylstm_load_d,
             pylstm_store_d, PYLSTM_MAX_D, vexpd)

const pylstm_kernels PYLSTM_CAT(pylstm_kernels_, PYLSTM_TARGET) = {
    PYLSTM_STR(PYLSTM_TARGET),
    gemm_packed_f, gemm_packed_d,
    gemv_packed_f, gemv_packed_d,
    gemm_tn_f, gemm_tn_d,
    cell_forward_f, cell_forward_d,
    cell_backward_f, cell_backward_d,
    column_sums_f, column_sums_d,
    scatter_rows_f, scatter_rows_d,
    softmax_xent_f, softmax_xent_d,
};
