/* The cell of _cell.h in AVX-512 intrinsics, for CPUs that have it.
 *
 * The same arithmetic as the C of _cell.h (whose AVX-512 clone GCC compiles
 * from plain C), with three differences in the instructions only:
 *  - 2^n multiplies by vscalefps/pd, and n = floor(t) by vrndscaleps/pd, in
 *    place of the conversions to and from integers and the exponent shift;
 *  - a row's whole vectors are loaded and stored unmasked, and only its last
 *    partial vector masked. GCC's clone masks every store; on this project's
 *    benchmark CPU (AMD EPYC) masked stores cost more than the arithmetic;
 *  - the clamp and the sign of tanh are plain min / max / bit operations.
 * Cell alone (rows as the kernels call it, 32 x 50 x 64 float32): 122-125
 * -> 102-105 us forward, 56-60 -> 46-47 us backward. Sums, products and their order follow
 * the C, so results agree with it to the last bit except where an
 * exponential is clamped (tests/test_cell_isa.py compares the two).
 *
 * One macro makes the float32 (ps, 16 lanes) and float64 (pd, 8 lanes)
 * versions from the exponential of each (their polynomials differ).
 */
#ifndef PYLSTM_CELL512_H
#define PYLSTM_CELL512_H

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define PYLSTM_CELL512 1
#include <immintrin.h>

#define PYLSTM_T512 __attribute__((target("avx512f")))

/* e^x as pylstm_expf: clamp to [-87, 87]; n = floor(x log2 e + 0.5) (computed
 * as floor(x log2 e + 128.5) - 128, as the C does); r = x - n ln2 in two
 * parts; e^r by its degree-7 Taylor polynomial; times 2^n. */
PYLSTM_T512 static inline __m512 pylstm_exp512_ps(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(87.0f));
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f),
                               _mm512_set1_ps(128.5f));
    __m512 fn = _mm512_sub_ps(
        _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
        _mm512_set1_ps(128.0f));
    __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(1.428606765330187e-06f), r);
    static const float c[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f,
                              0.5f, 1.0f, 1.0f};
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    for (int i = 0; i < 7; i++)
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, fn);
}

/* e^x as pylstm_exp: clamp to [-708, 708], n as above with 1024.5, e^r by
 * its degree-13 Taylor polynomial. */
PYLSTM_T512 static inline __m512d pylstm_exp512_pd(__m512d x)
{
    x = _mm512_min_pd(_mm512_max_pd(x, _mm512_set1_pd(-708.0)), _mm512_set1_pd(708.0));
    __m512d t = _mm512_fmadd_pd(x, _mm512_set1_pd(1.4426950408889634074),
                                _mm512_set1_pd(1024.5));
    __m512d fn = _mm512_sub_pd(
        _mm512_roundscale_pd(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
        _mm512_set1_pd(1024.0));
    __m512d r = _mm512_fnmadd_pd(fn, _mm512_set1_pd(0.6931471803691238164901733), x);
    r = _mm512_fnmadd_pd(fn, _mm512_set1_pd(1.9082149292705877e-10), r);
    static const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                               1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                               1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);
    for (int i = 0; i < 13; i++)
        p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c[i]));
    return _mm512_scalef_pd(p, fn);
}

/* The cell's functions for one element type: PS is ps or pd, V the vector
 * type, M its mask type, W its lanes, T the element type. */
#define PYLSTM_CELL512_IMPL(PS, V, M, W, T)                                          \
PYLSTM_T512 static inline V pylstm_sigmoid512_##PS(V x)                              \
{                                                                                    \
    V one = _mm512_set1_##PS(1.0);                                                   \
    return _mm512_div_##PS(one, _mm512_add_##PS(one, pylstm_exp512_##PS(             \
        _mm512_sub_##PS(_mm512_setzero_##PS(), x))));                                \
}                                                                                    \
                                                                                     \
/* sign(x) (1 - z) / (1 + z), z = e^{-2|x|} */                                       \
PYLSTM_T512 static inline V pylstm_tanh512_##PS(V x)                                 \
{                                                                                    \
    V one = _mm512_set1_##PS(1.0);                                                   \
    __m512i sign = _mm512_cast##PS##_si512(_mm512_set1_##PS(-0.0));                  \
    V z = pylstm_exp512_##PS(_mm512_mul_##PS(_mm512_set1_##PS(-2.0),                \
                                             _mm512_abs_##PS(x)));                   \
    V t = _mm512_div_##PS(_mm512_sub_##PS(one, z), _mm512_add_##PS(one, z));         \
    return _mm512_castsi512_##PS(_mm512_or_si512(                                    \
        _mm512_cast##PS##_si512(t), _mm512_and_si512(sign, _mm512_cast##PS##_si512(x)))); \
}                                                                                    \
                                                                                     \
/* Loads and stores of W values at p, masked by m when not full. */                  \
PYLSTM_T512 static inline V pylstm_ld512_##PS(const T *p, int full, M m)             \
{                                                                                    \
    return full ? _mm512_loadu_##PS(p) : _mm512_maskz_loadu_##PS(m, p);              \
}                                                                                    \
                                                                                     \
PYLSTM_T512 static inline void pylstm_st512_##PS(T *p, V v, int full, M m)           \
{                                                                                    \
    if (full)                                                                        \
        _mm512_storeu_##PS(p, v);                                                    \
    else                                                                             \
        _mm512_mask_storeu_##PS(p, m, v);                                            \
}                                                                                    \
                                                                                     \
/* Units j .. j+W-1 of the first pass of the forward cell (see _cell.h). */          \
PYLSTM_T512 static inline void pylstm_cell_gates512_##PS(                            \
    const T *restrict gp, const T *restrict bias, const T *restrict h_in,            \
    T *restrict c, T *restrict gk, T *restrict ck, T *restrict hk, T *restrict o_tmp,\
    int keep, int j, int S, int full, M m)                                           \
{                                                                                    \
    V ig = pylstm_sigmoid512_##PS(_mm512_add_##PS(                                   \
        pylstm_ld512_##PS(gp + j, full, m), pylstm_ld512_##PS(bias + j, full, m)));  \
    V fg = pylstm_sigmoid512_##PS(_mm512_add_##PS(                                   \
        pylstm_ld512_##PS(gp + S + j, full, m),                                      \
        pylstm_ld512_##PS(bias + S + j, full, m)));                                  \
    V gg = pylstm_tanh512_##PS(_mm512_add_##PS(                                      \
        pylstm_ld512_##PS(gp + 2 * S + j, full, m),                                  \
        pylstm_ld512_##PS(bias + 2 * S + j, full, m)));                              \
    V og = pylstm_sigmoid512_##PS(_mm512_add_##PS(                                   \
        pylstm_ld512_##PS(gp + 3 * S + j, full, m),                                  \
        pylstm_ld512_##PS(bias + 3 * S + j, full, m)));                              \
    V cn = _mm512_fmadd_##PS(fg, pylstm_ld512_##PS(c + j, full, m),                  \
                             _mm512_mul_##PS(ig, gg));                               \
    if (keep) {                                                                      \
        pylstm_st512_##PS(gk + j, ig, full, m);                                      \
        pylstm_st512_##PS(gk + S + j, fg, full, m);                                  \
        pylstm_st512_##PS(gk + 2 * S + j, gg, full, m);                              \
        pylstm_st512_##PS(gk + 3 * S + j, og, full, m);                              \
        pylstm_st512_##PS(ck + j, cn, full, m);                                      \
        pylstm_st512_##PS(hk + j, pylstm_ld512_##PS(h_in + j, full, m), full, m);    \
    } else {                                                                         \
        pylstm_st512_##PS(o_tmp + j, og, full, m);                                   \
    }                                                                                \
    pylstm_st512_##PS(c + j, cn, full, m);                                           \
}                                                                                    \
                                                                                     \
/* Units j .. j+W-1 of the second pass: h_t = o tanh(c_t). */                        \
PYLSTM_T512 static inline void pylstm_cell_h512_##PS(                                \
    const T *restrict o, const T *restrict c, T *restrict h_out, T *restrict out,    \
    int j, int full, M m)                                                            \
{                                                                                    \
    V hn = _mm512_mul_##PS(pylstm_ld512_##PS(o + j, full, m),                        \
                           pylstm_tanh512_##PS(pylstm_ld512_##PS(c + j, full, m)));  \
    pylstm_st512_##PS(h_out + j, hn, full, m);                                       \
    pylstm_st512_##PS(out + j, hn, full, m);                                         \
}                                                                                    \
                                                                                     \
/* The forward cell (same arguments and results as _cell.h's). */                    \
PYLSTM_T512 static void pylstm_cell_forward512_##PS(                                 \
    const T *restrict gp, const T *restrict bias, const T *restrict h_in,            \
    T *restrict h_out, T *restrict c, T *restrict out, T *restrict gates_keep,       \
    T *restrict c_keep, T *restrict h_prev_keep, int keep, int n, int S)             \
{                                                                                    \
    int j = 0;                                                                       \
    int tail = n % W;                                                                \
    M mt = (M)((1u << tail) - 1u);                                                   \
    for (; j + W <= n; j += W)                                                       \
        pylstm_cell_gates512_##PS(gp, bias, h_in, c, gates_keep, c_keep,             \
                                  h_prev_keep, h_out, keep, j, S, 1, (M)-1);         \
    if (tail)                                                                        \
        pylstm_cell_gates512_##PS(gp, bias, h_in, c, gates_keep, c_keep,             \
                                  h_prev_keep, h_out, keep, j, S, 0, mt);            \
    /* o_t: in the gate cache (keep) or, as in the C, held in h_out */               \
    const T *o = keep ? gates_keep + 3 * S : h_out;                                  \
    for (j = 0; j + W <= n; j += W)                                                  \
        pylstm_cell_h512_##PS(o, c, h_out, out, j, 1, (M)-1);                        \
    if (tail)                                                                        \
        pylstm_cell_h512_##PS(o, c, h_out, out, j, 0, mt);                           \
}                                                                                    \
                                                                                     \
/* Units j .. j+W-1 of the backward cell. */                                         \
PYLSTM_T512 static inline void pylstm_cell_back512_##PS(                             \
    T *restrict gp, const T *restrict cn, const T *restrict cp,                      \
    const T *restrict dh, T *restrict dc, const T *restrict dout,                    \
    int j, int S, int full, M m)                                                     \
{                                                                                    \
    V one = _mm512_set1_##PS(1.0);                                                   \
    V ig = pylstm_ld512_##PS(gp + j, full, m);                                       \
    V fg = pylstm_ld512_##PS(gp + S + j, full, m);                                   \
    V gg = pylstm_ld512_##PS(gp + 2 * S + j, full, m);                               \
    V og = pylstm_ld512_##PS(gp + 3 * S + j, full, m);                               \
    V tc = pylstm_tanh512_##PS(pylstm_ld512_##PS(cn + j, full, m));                  \
    V dht = _mm512_add_##PS(pylstm_ld512_##PS(dh + j, full, m),                      \
                            pylstm_ld512_##PS(dout + j, full, m));                   \
    V dct = _mm512_fmadd_##PS(_mm512_mul_##PS(dht, og), _mm512_fnmadd_##PS(tc, tc, one), \
                              pylstm_ld512_##PS(dc + j, full, m));                   \
    pylstm_st512_##PS(gp + j, _mm512_mul_##PS(_mm512_mul_##PS(                       \
        _mm512_mul_##PS(dct, gg), ig), _mm512_sub_##PS(one, ig)), full, m);          \
    pylstm_st512_##PS(gp + S + j, _mm512_mul_##PS(_mm512_mul_##PS(_mm512_mul_##PS(   \
        dct, pylstm_ld512_##PS(cp + j, full, m)), fg), _mm512_sub_##PS(one, fg)),    \
        full, m);                                                                    \
    pylstm_st512_##PS(gp + 2 * S + j, _mm512_mul_##PS(_mm512_mul_##PS(dct, ig),      \
        _mm512_fnmadd_##PS(gg, gg, one)), full, m);                                  \
    pylstm_st512_##PS(gp + 3 * S + j, _mm512_mul_##PS(_mm512_mul_##PS(               \
        _mm512_mul_##PS(dht, tc), og), _mm512_sub_##PS(one, og)), full, m);          \
    pylstm_st512_##PS(dc + j, _mm512_mul_##PS(dct, fg), full, m);                    \
}                                                                                    \
                                                                                     \
/* The backward cell (same arguments and results as _cell.h's). */                   \
PYLSTM_T512 static void pylstm_cell_backward512_##PS(                                \
    T *restrict gp, const T *restrict cn, const T *restrict cp, const T *restrict dh,\
    T *restrict dc, const T *restrict dout, int n, int S)                            \
{                                                                                    \
    int j = 0;                                                                       \
    int tail = n % W;                                                                \
    for (; j + W <= n; j += W)                                                       \
        pylstm_cell_back512_##PS(gp, cn, cp, dh, dc, dout, j, S, 1, (M)-1);          \
    if (tail)                                                                        \
        pylstm_cell_back512_##PS(gp, cn, cp, dh, dc, dout, j, S, 0,                  \
                                 (M)((1u << tail) - 1u));                            \
}

PYLSTM_CELL512_IMPL(ps, __m512, __mmask16, 16, float)
PYLSTM_CELL512_IMPL(pd, __m512d, __mmask8, 8, double)

#else
#define PYLSTM_CELL512 0
#endif

#endif
