/* The float32 cell of _cell.h in AVX-512 intrinsics, for CPUs that have it.
 *
 * The same arithmetic as the C of _cell.h (whose AVX-512 clone GCC compiles
 * from plain C), with three differences in the instructions only:
 *  - 2^n multiplies by vscalefps, and n = floor(t) by vrndscaleps, in place
 *    of the conversions to and from integers and the exponent-bit shift;
 *  - a row's whole vectors are loaded and stored unmasked, and only its last
 *    partial vector masked. GCC's clone masks every store; on this project's
 *    benchmark CPU (AMD EPYC) masked stores cost more than the arithmetic;
 *  - the clamp and the sign of tanh are plain min / max / bit operations.
 * Cell alone (rows as the kernels call it, 32 x 50 x 64): 126 -> 89 us
 * forward. Sums, products and their order follow the C, so results agree
 * with the C to the last bit up to the fused multiply-adds the compiler
 * chooses there (tests/test_cell_isa.py compares the two).
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
PYLSTM_T512 static inline __m512 pylstm_exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(87.0f));
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f),
                               _mm512_set1_ps(128.5f));
    __m512 fn = _mm512_sub_ps(
        _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
        _mm512_set1_ps(128.0f));
    __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, fn);
}

PYLSTM_T512 static inline __m512 pylstm_sigmoid512(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, pylstm_exp512(_mm512_sub_ps(
        _mm512_setzero_ps(), x))));
}

PYLSTM_T512 static inline __m512 pylstm_tanh512(__m512 x)
{
    __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
    __m512 z = pylstm_exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ax));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(one, z), _mm512_add_ps(one, z));
    return _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(t), _mm512_and_si512(sign, _mm512_castps_si512(x))));
}

/* Loads and stores of 16 floats at p, masked by m when not full. */
#define PYLSTM_LD(p) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, (p)))
#define PYLSTM_ST(p, v)                                                              \
    do {                                                                             \
        if (full)                                                                    \
            _mm512_storeu_ps((p), (v));                                              \
        else                                                                         \
            _mm512_mask_storeu_ps((p), m, (v));                                      \
    } while (0)

/* Units j .. j+15 of the first pass of pylstm_cell_forward_f (see _cell.h). */
PYLSTM_T512 static inline void pylstm_cell_gates512(
    const float *restrict gp, const float *restrict bias, const float *restrict h_in,
    float *restrict c, float *restrict gk, float *restrict ck, float *restrict hk,
    float *restrict o_tmp, int keep, int j, int S, int full, __mmask16 m)
{
    __m512 ig = pylstm_sigmoid512(_mm512_add_ps(PYLSTM_LD(gp + j), PYLSTM_LD(bias + j)));
    __m512 fg = pylstm_sigmoid512(_mm512_add_ps(PYLSTM_LD(gp + S + j),
                                                PYLSTM_LD(bias + S + j)));
    __m512 gg = pylstm_tanh512(_mm512_add_ps(PYLSTM_LD(gp + 2 * S + j),
                                             PYLSTM_LD(bias + 2 * S + j)));
    __m512 og = pylstm_sigmoid512(_mm512_add_ps(PYLSTM_LD(gp + 3 * S + j),
                                                PYLSTM_LD(bias + 3 * S + j)));
    __m512 cn = _mm512_fmadd_ps(fg, PYLSTM_LD(c + j), _mm512_mul_ps(ig, gg));
    if (keep) {
        PYLSTM_ST(gk + j, ig);
        PYLSTM_ST(gk + S + j, fg);
        PYLSTM_ST(gk + 2 * S + j, gg);
        PYLSTM_ST(gk + 3 * S + j, og);
        PYLSTM_ST(ck + j, cn);
        PYLSTM_ST(hk + j, PYLSTM_LD(h_in + j));
    } else {
        PYLSTM_ST(o_tmp + j, og);
    }
    PYLSTM_ST(c + j, cn);
}

/* Units j .. j+15 of the second pass: h_t = o tanh(c_t). */
PYLSTM_T512 static inline void pylstm_cell_h512(const float *restrict o,
                                                const float *restrict c,
                                                float *restrict h_out, float *restrict out,
                                                int j, int full, __mmask16 m)
{
    __m512 hn = _mm512_mul_ps(PYLSTM_LD(o + j), pylstm_tanh512(PYLSTM_LD(c + j)));
    PYLSTM_ST(h_out + j, hn);
    PYLSTM_ST(out + j, hn);
}

/* pylstm_cell_forward_f (same arguments and results; see _cell.h). */
PYLSTM_T512 static void pylstm_cell_forward_f512(
    const float *restrict gp, const float *restrict bias, const float *restrict h_in,
    float *restrict h_out, float *restrict c, float *restrict out,
    float *restrict gates_keep, float *restrict c_keep, float *restrict h_prev_keep,
    int keep, int n, int S)
{
    int j = 0;
    int tail = n % 16;
    __mmask16 mt = (__mmask16)((1u << tail) - 1u);
    for (; j + 16 <= n; j += 16)
        pylstm_cell_gates512(gp, bias, h_in, c, gates_keep, c_keep, h_prev_keep, h_out,
                             keep, j, S, 1, 0xFFFF);
    if (tail)
        pylstm_cell_gates512(gp, bias, h_in, c, gates_keep, c_keep, h_prev_keep, h_out,
                             keep, j, S, 0, mt);
    /* o_t: in the gate cache (keep) or, as in the C, held in h_out */
    const float *o = keep ? gates_keep + 3 * S : h_out;
    for (j = 0; j + 16 <= n; j += 16)
        pylstm_cell_h512(o, c, h_out, out, j, 1, 0xFFFF);
    if (tail)
        pylstm_cell_h512(o, c, h_out, out, j, 0, mt);
}

/* Units j .. j+15 of pylstm_cell_backward_f. */
PYLSTM_T512 static inline void pylstm_cell_back512(
    float *restrict gp, const float *restrict cn, const float *restrict cp,
    const float *restrict dh, float *restrict dc, const float *restrict dout,
    int j, int S, int full, __mmask16 m)
{
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 ig = PYLSTM_LD(gp + j), fg = PYLSTM_LD(gp + S + j);
    __m512 gg = PYLSTM_LD(gp + 2 * S + j), og = PYLSTM_LD(gp + 3 * S + j);
    __m512 tc = pylstm_tanh512(PYLSTM_LD(cn + j));
    __m512 dht = _mm512_add_ps(PYLSTM_LD(dh + j), PYLSTM_LD(dout + j));
    __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dht, og),
                                 _mm512_fnmadd_ps(tc, tc, one), PYLSTM_LD(dc + j));
    PYLSTM_ST(gp + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, gg), ig),
                                    _mm512_sub_ps(one, ig)));
    PYLSTM_ST(gp + S + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, PYLSTM_LD(cp + j)),
                                                      fg), _mm512_sub_ps(one, fg)));
    PYLSTM_ST(gp + 2 * S + j, _mm512_mul_ps(_mm512_mul_ps(dct, ig),
                                            _mm512_fnmadd_ps(gg, gg, one)));
    PYLSTM_ST(gp + 3 * S + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dht, tc), og),
                                            _mm512_sub_ps(one, og)));
    PYLSTM_ST(dc + j, _mm512_mul_ps(dct, fg));
}

/* pylstm_cell_backward_f (same arguments and results; see _cell.h). */
PYLSTM_T512 static void pylstm_cell_backward_f512(
    float *restrict gp, const float *restrict cn, const float *restrict cp,
    const float *restrict dh, float *restrict dc, const float *restrict dout, int n, int S)
{
    int j = 0;
    int tail = n % 16;
    for (; j + 16 <= n; j += 16)
        pylstm_cell_back512(gp, cn, cp, dh, dc, dout, j, S, 1, 0xFFFF);
    if (tail)
        pylstm_cell_back512(gp, cn, cp, dh, dc, dout, j, S, 0,
                            (__mmask16)((1u << tail) - 1u));
}

#undef PYLSTM_LD
#undef PYLSTM_ST
#else
#define PYLSTM_CELL512 0
#endif

#endif
