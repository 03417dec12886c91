/* One-pass loops over the caller's arrays: a finite check, and the copies
 * between the batch-first (B, T, F) layout and the time-major rows of the
 * kernels that check each value as it passes.
 *
 * A value is NaN or infinite exactly when all its exponent bits are set; the
 * test is on the integer bits, whose OR-reduction the compiler vectorizes
 * (a floating-point reduction it would not, without reassociation). These
 * passes are bound by memory, not arithmetic: one baseline build serves every
 * CPU. */
#ifndef PYLSTM_ARRAYS_H
#define PYLSTM_ARRAYS_H

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

PYLSTM_ALL_FINITE(pylstm_all_finite_f, float, uint32_t, 0x7f800000u)
PYLSTM_ALL_FINITE(pylstm_all_finite_d, double, uint64_t, 0x7ff0000000000000ull)
PYLSTM_COPY_FINITE(pylstm_copy_finite_f, float, uint32_t, 0x7f800000u)
PYLSTM_COPY_FINITE(pylstm_copy_finite_d, double, uint64_t, 0x7ff0000000000000ull)

#endif
