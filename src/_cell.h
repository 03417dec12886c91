/* The LSTM cell's element-wise work, written for the compiler to vectorize.
 *
 * libm's expf/tanhf are scalar calls; on a CPU they were measured to take
 * about half of a training step. Here exp is evaluated branch-free in plain
 * arithmetic: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts for
 * exactness), e^r by its Taylor polynomial (degree 7 in float, 13 in double:
 * truncation error below one ulp), and 2^n by writing the exponent bits. The
 * argument is clamped so that nothing overflows or goes subnormal. Each row
 * function is compiled for AVX-512, AVX2 and the baseline, chosen at load
 * time (GCC function multiversioning), so one wheel runs everywhere. The
 * clones are the x86-64 ISA levels v4 (AVX-512) and v3 (AVX2), which include
 * FMA: the polynomials then run as fused multiply-adds, half the instructions
 * of the separate multiplies and adds that a bare "avx512f" target gives.
 *
 * sigmoid(x) = 1 / (1 + e^-x); tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|).
 * Near 0 both are accurate to a few ulps of 1 (absolute), which is what the
 * cell needs: gates and states are bounded by 1 in magnitude.
 */
#ifndef PYLSTM_CELL_H
#define PYLSTM_CELL_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define PYLSTM_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYLSTM_CLONES
#endif

static inline float pylstm_expf(float x)
{
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    /* n = round(x / ln2), via truncation of a positive value */
    int32_t n = (int32_t)(x * 1.44269504088896341f + 128.5f) - 128;
    float fn = (float)n;
    float r = x - fn * 0.693145751953125f - fn * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double pylstm_exp(double x)
{
    x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);
    /* int32 (not int64) conversion: vectorizable without AVX-512DQ */
    int32_t n = (int32_t)(x * 1.4426950408889634074 + 1024.5) - 1024;
    double fn = (double)n;
    double r = x - fn * 0.6931471803691238164901733 - fn * 1.9082149292705877e-10;
    double p = 1.0 / 6227020800.0;
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
    int64_t bits = (int64_t)(n + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float pylstm_sigmoidf(float x) { return 1.0f / (1.0f + pylstm_expf(-x)); }
static inline double pylstm_sigmoid(double x) { return 1.0 / (1.0 + pylstm_exp(-x)); }

static inline float pylstm_tanhf(float x)
{
    float ax = x < 0 ? -x : x;
    float z = pylstm_expf(-2.0f * ax);
    float t = (1.0f - z) / (1.0f + z);
    return x < 0 ? -t : t;
}

static inline double pylstm_tanh(double x)
{
    double ax = x < 0 ? -x : x;
    double z = pylstm_exp(-2.0 * ax);
    double t = (1.0 - z) / (1.0 + z);
    return x < 0 ? -t : t;
}

/* One row of one forward step, for the units j < n of a row whose gate
 * blocks (i, f, g, o) lie S apart (S = H; n = H, or a share of the units when
 * two threads split the step). gp: pre-activations without bias; h_in:
 * h_{t-1}; h_out receives h_t (a different array: the other thread may still
 * read h_in); c: state, updated in place; out: receives h_t. With keep != 0,
 * gates_keep receives the activated gates, c_keep c_t and h_prev_keep
 * h_{t-1}.
 *
 * Two passes: the gates and c_t of every unit, then h_t = o tanh(c_t). In one
 * pass, each vector's tanh(c_t) waits for its four gate nonlinearities and
 * the division of a fifth (a chain of about 60 cycles) and a row holds only
 * a few vectors, so little of the chain overlapped; apart, the second pass's
 * iterations are independent. The same operations on the same values: the
 * results are bit-identical. (Cell alone, 1 row calls as in the kernels:
 * 1.12-1.21x, 32 x 50 x 64 153 -> 127 us.) Without keep, h_out holds o
 * between the passes. */
#define PYLSTM_CELL_FORWARD(NAME, T, SIG, TANH)                                      \
PYLSTM_CLONES void NAME(const T *restrict gp, const T *restrict bias,                \
                        const T *restrict h_in, T *restrict h_out,                   \
                        T *restrict c, T *restrict out,                              \
                        T *restrict gates_keep, T *restrict c_keep,                  \
                        T *restrict h_prev_keep, int keep, int n, int S)             \
{                                                                                    \
    if (keep) {                                                                      \
        for (int j = 0; j < n; j++) {                                                \
            T ig = SIG(gp[j] + bias[j]);                                             \
            T fg = SIG(gp[S + j] + bias[S + j]);                                     \
            T gg = TANH(gp[2 * S + j] + bias[2 * S + j]);                            \
            T og = SIG(gp[3 * S + j] + bias[3 * S + j]);                             \
            T cn = fg * c[j] + ig * gg;                                              \
            gates_keep[j] = ig;                                                      \
            gates_keep[S + j] = fg;                                                  \
            gates_keep[2 * S + j] = gg;                                              \
            gates_keep[3 * S + j] = og;                                              \
            c_keep[j] = cn;                                                          \
            h_prev_keep[j] = h_in[j];                                                \
            c[j] = cn;                                                               \
        }                                                                            \
        for (int j = 0; j < n; j++) {                                                \
            T hn = gates_keep[3 * S + j] * TANH(c[j]);                               \
            h_out[j] = hn;                                                           \
            out[j] = hn;                                                             \
        }                                                                            \
    } else {                                                                         \
        for (int j = 0; j < n; j++) {                                                \
            T ig = SIG(gp[j] + bias[j]);                                             \
            T fg = SIG(gp[S + j] + bias[S + j]);                                     \
            T gg = TANH(gp[2 * S + j] + bias[2 * S + j]);                            \
            c[j] = fg * c[j] + ig * gg;                                              \
            h_out[j] = SIG(gp[3 * S + j] + bias[3 * S + j]);                         \
        }                                                                            \
        for (int j = 0; j < n; j++) {                                                \
            T hn = h_out[j] * TANH(c[j]);                                            \
            h_out[j] = hn;                                                           \
            out[j] = hn;                                                             \
        }                                                                            \
    }                                                                                \
}

PYLSTM_CELL_FORWARD(pylstm_cell_forward_f_c, float, pylstm_sigmoidf, pylstm_tanhf)
PYLSTM_CELL_FORWARD(pylstm_cell_forward_d_c, double, pylstm_sigmoid, pylstm_tanh)

/* One row of one BPTT step, units j < n, gate blocks S apart (as above).
 * gp: activated gates on entry, gate pre-activation gradients on exit; cn:
 * c_t; cp: c_{t-1}; dh, dc: running gradients (dc is replaced by
 * dL/dc_{t-1}); dout: dL/dh_t from above. */
#define PYLSTM_CELL_BACKWARD(NAME, T, TANH)                                          \
PYLSTM_CLONES void NAME(T *restrict gp, const T *restrict cn,                        \
                        const T *restrict cp, const T *restrict dh,                  \
                        T *restrict dc, const T *restrict dout, int n, int S)        \
{                                                                                    \
    for (int j = 0; j < n; j++) {                                                    \
        T ig = gp[j], fg = gp[S + j], gg = gp[2 * S + j], og = gp[3 * S + j];        \
        T tc = TANH(cn[j]);                                                          \
        T dht = dh[j] + dout[j];                                                     \
        T dct = dc[j] + dht * og * (1 - tc * tc);                                    \
        gp[j] = dct * gg * ig * (1 - ig);                                            \
        gp[S + j] = dct * cp[j] * fg * (1 - fg);                                     \
        gp[2 * S + j] = dct * ig * (1 - gg * gg);                                    \
        gp[3 * S + j] = dht * tc * og * (1 - og);                                    \
        dc[j] = dct * fg;                                                            \
    }                                                                                \
}

PYLSTM_CELL_BACKWARD(pylstm_cell_backward_f_c, float, pylstm_tanhf)
PYLSTM_CELL_BACKWARD(pylstm_cell_backward_d_c, double, pylstm_tanh)

/* The cell: the AVX-512 intrinsics of _cell512.h where the CPU has them and
 * pylstm_cell512_set(1) chose them (the kernels' module does at import),
 * else the C above. */
#include "_cell512.h"

static int pylstm_cell_use512 = 0;

static inline int pylstm_cell512_available(void)
{
#if PYLSTM_CELL512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

/* Use the intrinsics (on != 0, where available) or the C; returns the
 * previous setting. */
static inline int pylstm_cell512_set(int on)
{
    int old = pylstm_cell_use512;
    pylstm_cell_use512 = on && pylstm_cell512_available();
    return old;
}

/* The cell for both element types: SFX f or d, PS ps or pd. */
#if PYLSTM_CELL512
#define PYLSTM_CELL_DISPATCH512(CALL) if (pylstm_cell_use512) { CALL; return; }
#else
#define PYLSTM_CELL_DISPATCH512(CALL)
#endif
#define PYLSTM_CELL_DISPATCH(SFX, PS, T)                                             \
static inline void pylstm_cell_forward_##SFX(                                       \
    const T *restrict gp, const T *restrict bias, const T *restrict h_in,           \
    T *restrict h_out, T *restrict c, T *restrict out, T *restrict gates_keep,      \
    T *restrict c_keep, T *restrict h_prev_keep, int keep, int n, int S)            \
{                                                                                   \
    PYLSTM_CELL_DISPATCH512(pylstm_cell_forward512_##PS(                            \
        gp, bias, h_in, h_out, c, out, gates_keep, c_keep, h_prev_keep, keep, n, S)) \
    pylstm_cell_forward_##SFX##_c(gp, bias, h_in, h_out, c, out, gates_keep, c_keep, \
                                  h_prev_keep, keep, n, S);                         \
}                                                                                   \
                                                                                    \
static inline void pylstm_cell_backward_##SFX(                                      \
    T *restrict gp, const T *restrict cn, const T *restrict cp, const T *restrict dh,\
    T *restrict dc, const T *restrict dout, int n, int S)                           \
{                                                                                   \
    PYLSTM_CELL_DISPATCH512(pylstm_cell_backward512_##PS(gp, cn, cp, dh, dc, dout, n, S)) \
    pylstm_cell_backward_##SFX##_c(gp, cn, cp, dh, dc, dout, n, S);                 \
}

PYLSTM_CELL_DISPATCH(f, ps, float)
PYLSTM_CELL_DISPATCH(d, pd, double)

/* out[j] = sum over rows r of a[r * lda + j], j < cols, rows in order (the
 * bias gradient: the column sums of the gate gradients). */
#define PYLSTM_COLUMN_SUMS(NAME, T)                                                  \
PYLSTM_CLONES void NAME(const T *restrict a, long rows, int cols, long lda,         \
                        T *restrict out)                                             \
{                                                                                    \
    for (int j = 0; j < cols; j++)                                                   \
        out[j] = 0;                                                                  \
    for (long r = 0; r < rows; r++) {                                                \
        const T *restrict row = a + r * lda;                                         \
        for (int j = 0; j < cols; j++)                                               \
            out[j] += row[j];                                                        \
    }                                                                                \
}

PYLSTM_COLUMN_SUMS(pylstm_column_sums_f, float)
PYLSTM_COLUMN_SUMS(pylstm_column_sums_d, double)

#endif
