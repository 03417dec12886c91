/* One-pass loops over the caller's arrays: a finite check, the copies
 * between the batch-first (B, T, F) layout and the time-major rows of the
 * kernels that check each value as it passes, the gradients' sum of squares
 * (their norm, for clipping) and Adam's update.
 *
 * A value is NaN or infinite exactly when all its exponent bits are set; the
 * test is on the integer bits, whose OR-reduction the compiler vectorizes
 * (a floating-point reduction it would not, without reassociation). These
 * passes are bound by memory, not arithmetic: one baseline build serves every
 * CPU. */
#ifndef PYLSTM_ARRAYS_H
#define PYLSTM_ARRAYS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_platform.h"

/* 1 if a[0 .. n-1] holds no NaN or infinity, else 0. */
#define PYLSTM_ALL_FINITE(NAME, T, U, EXP)               \
static int NAME(const T *PYLSTM_RESTRICT a, ptrdiff_t n) \
{                                                        \
    U bad = 0;                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                  \
        U u;                                             \
        memcpy(&u, a + i, sizeof u);                     \
        bad |= (U)((u & EXP) == EXP);                    \
    }                                                    \
    return bad == 0;                                     \
}

/* dst[i] = src[i] for i < n; 1 if none of them is NaN or infinite. */
#define PYLSTM_COPY_FINITE(NAME, T, U, EXP)                                        \
static int NAME(const T *PYLSTM_RESTRICT src, T *PYLSTM_RESTRICT dst, ptrdiff_t n) \
{                                                                                  \
    U bad = 0;                                                                     \
    for (ptrdiff_t i = 0; i < n; i++) {                                            \
        U u;                                                                       \
        memcpy(&u, src + i, sizeof u);                                             \
        bad |= (U)((u & EXP) == EXP);                                              \
        dst[i] = src[i];                                                           \
    }                                                                              \
    return bad == 0;                                                               \
}

/* One Adam update of n contiguous parameters, in place, in their own type, from
 * the gradient g scaled by gs (a clipping factor; 1 leaves every bit of g):
 *     m = b1 m + c1 g,  v = b2 v + c2 g^2,  p -= step m / (sqrt(v) / root_bias + eps)
 * one operation at a time in the order of pylstm._optim's NumPy update, each
 * rounded to T (src/meson.build compiles this file without contraction into
 * fused multiply-adds), so both give the same bits
 * (tests/estimators/test_optim.py::test_kept_scratch_gives_the_same_bits). */
#define PYLSTM_ADAM(NAME, T, SQRT)                                                       \
static void NAME(T *PYLSTM_RESTRICT p, const T *PYLSTM_RESTRICT g, T *PYLSTM_RESTRICT m, \
                 T *PYLSTM_RESTRICT v, ptrdiff_t n, T gs, T b1, T c1, T b2, T c2,      \
                 T root_bias, T eps, T step)                                           \
{                                                                                      \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T gi = g[i] * gs;                                                              \
        T mi = m[i] * b1;                                                              \
        T gm = gi * c1;                                                                \
        T vi = v[i] * b2;                                                              \
        T sq = gi * gi;                                                                \
        sq = sq * c2;                                                                  \
        mi = mi + gm;                                                                  \
        vi = vi + sq;                                                                  \
        T d = SQRT(vi);                                                                \
        d = d / root_bias;                                                             \
        d = d + eps;                                                                   \
        d = mi / d;                                                                    \
        d = d * step;                                                                  \
        m[i] = mi;                                                                     \
        v[i] = vi;                                                                     \
        p[i] = p[i] - d;                                                               \
    }                                                                                  \
}

PYLSTM_ADAM(pylstm_adam_f, float, sqrtf)
PYLSTM_ADAM(pylstm_adam_d, double, sqrt)

/* The sum of squares of a[0 .. n-1] in double: eight running sums (lanes the
 * compiler can vectorize without reordering any one sum), added at the end. */
#define PYLSTM_SUM_SQUARES(NAME, T)                                   \
static double NAME(const T *PYLSTM_RESTRICT a, ptrdiff_t n)          \
{                                                                     \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                         \
    ptrdiff_t i = 0;                                                  \
    for (; i + 8 <= n; i += 8)                                        \
        for (int k = 0; k < 8; k++)                                   \
            acc[k] += (double)a[i + k] * (double)a[i + k];            \
    for (; i < n; i++)                                                \
        acc[0] += (double)a[i] * (double)a[i];                        \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3]))                    \
           + ((acc[4] + acc[5]) + (acc[6] + acc[7]));                 \
}

PYLSTM_SUM_SQUARES(pylstm_sum_squares_f, float)
PYLSTM_SUM_SQUARES(pylstm_sum_squares_d, double)

PYLSTM_ALL_FINITE(pylstm_all_finite_f, float, uint32_t, 0x7f800000u)
PYLSTM_ALL_FINITE(pylstm_all_finite_d, double, uint64_t, 0x7ff0000000000000ull)
PYLSTM_COPY_FINITE(pylstm_copy_finite_f, float, uint32_t, 0x7f800000u)
PYLSTM_COPY_FINITE(pylstm_copy_finite_d, double, uint64_t, 0x7ff0000000000000ull)

#endif
