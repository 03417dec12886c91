/* The small vector abstraction that _kernels.c is written over.
 *
 * _kernels.c is compiled once per instruction-set level with that level's
 * flags (src/meson.build); this header reads the compiler's own macros to
 * choose the vector width of the translation unit:
 *
 *   __AVX512F__            64 bytes (16 floats, 8 doubles)
 *   __AVX2__ and __FMA__   32 bytes
 *   __SSE2__, __ARM_NEON   16 bytes
 *   otherwise, or MSVC     one element ("vectors" of one lane: plain scalar
 *                          C that the compiler may still vectorize)
 *
 * With GCC and Clang the vectors are the compilers' vector extensions
 * (vector_size), so +, * and += are element-wise and the compiler emits the
 * level's instructions, fused multiply-adds included where the level has
 * them (-ffp-contract=fast). Loads and stores go through memcpy (unaligned,
 * free of aliasing rules).
 *
 * The register blocking follows the register file: PYLSTM_TMR rows by
 * PYLSTM_TNV vectors of accumulators in a tile, at most 16 of the 32 vector
 * registers of AVX-512 and NEON and 12 of the 16 of AVX2 and SSE2
 * (benchmarks/bench_simd.py compares the levels).
 */
#ifndef PYLSTM_SIMD_H
#define PYLSTM_SIMD_H

#include <stdint.h>
#include <string.h>

#include "_platform.h"

#if !PYLSTM_MSVC && defined(__AVX512F__)
#define PYLSTM_VBYTES 64
#elif !PYLSTM_MSVC && defined(__AVX2__) && defined(__FMA__)
#define PYLSTM_VBYTES 32
#elif !PYLSTM_MSVC && (defined(__SSE2__) || defined(__ARM_NEON) || defined(__ARM_NEON__))
#define PYLSTM_VBYTES 16
#else
#define PYLSTM_VBYTES 0
#endif

#if PYLSTM_VBYTES
typedef float pylstm_vf __attribute__((vector_size(PYLSTM_VBYTES)));
typedef double pylstm_vd __attribute__((vector_size(PYLSTM_VBYTES)));
typedef int32_t pylstm_vfi __attribute__((vector_size(PYLSTM_VBYTES)));
typedef int64_t pylstm_vdi __attribute__((vector_size(PYLSTM_VBYTES)));
#define PYLSTM_LF (PYLSTM_VBYTES / 4)
#define PYLSTM_LD (PYLSTM_VBYTES / 8)
#else
typedef float pylstm_vf;
typedef double pylstm_vd;
typedef int32_t pylstm_vfi;
typedef int64_t pylstm_vdi;
#define PYLSTM_LF 1
#define PYLSTM_LD 1
#endif

/* A vector of copies of x, written out lane by lane: GCC turns that into one
 * broadcast, but not a loop over the lanes (a masked broadcast per lane), and
 * "0 + x" would add. */
#define PYLSTM_REP2(x) x, x
#define PYLSTM_REP4(x) PYLSTM_REP2(x), PYLSTM_REP2(x)
#define PYLSTM_REP8(x) PYLSTM_REP4(x), PYLSTM_REP4(x)
#define PYLSTM_REP16(x) PYLSTM_REP8(x), PYLSTM_REP8(x)
#if PYLSTM_VBYTES == 64
#define PYLSTM_REPF PYLSTM_REP16
#define PYLSTM_REPD PYLSTM_REP8
#elif PYLSTM_VBYTES == 32
#define PYLSTM_REPF PYLSTM_REP8
#define PYLSTM_REPD PYLSTM_REP4
#elif PYLSTM_VBYTES == 16
#define PYLSTM_REPF PYLSTM_REP4
#define PYLSTM_REPD PYLSTM_REP2
#endif
#if PYLSTM_VBYTES
static inline pylstm_vf pylstm_splat_f(float x) { return (pylstm_vf){PYLSTM_REPF(x)}; }
static inline pylstm_vd pylstm_splat_d(double x) { return (pylstm_vd){PYLSTM_REPD(x)}; }
#else
static inline pylstm_vf pylstm_splat_f(float x) { return x; }
static inline pylstm_vd pylstm_splat_d(double x) { return x; }
#endif

/* Unaligned loads and stores, by value (a memcpy into an element of an array
 * of vectors kept that array in memory: GCC 12, AVX2). */
static inline pylstm_vf pylstm_load_f(const float *p)
{
    pylstm_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline pylstm_vd pylstm_load_d(const double *p)
{
    pylstm_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void pylstm_store_f(float *p, pylstm_vf v) { memcpy(p, &v, sizeof v); }
static inline void pylstm_store_d(double *p, pylstm_vd v) { memcpy(p, &v, sizeof v); }

/* The bits of a vector as integers and back (a bit cast, no conversion). */
#if PYLSTM_VBYTES
#define PYLSTM_BITS_F(v) ((pylstm_vfi)(v))
#define PYLSTM_BITS_D(v) ((pylstm_vdi)(v))
#define PYLSTM_FROM_BITS_F(v) ((pylstm_vf)(v))
#define PYLSTM_FROM_BITS_D(v) ((pylstm_vd)(v))
#else
static inline int32_t pylstm_bits_f(float x) { int32_t i; memcpy(&i, &x, 4); return i; }
static inline int64_t pylstm_bits_d(double x) { int64_t i; memcpy(&i, &x, 8); return i; }
static inline float pylstm_from_bits_f(int32_t i) { float x; memcpy(&x, &i, 4); return x; }
static inline double pylstm_from_bits_d(int64_t i) { double x; memcpy(&x, &i, 8); return x; }
#define PYLSTM_BITS_F(v) pylstm_bits_f(v)
#define PYLSTM_BITS_D(v) pylstm_bits_d(v)
#define PYLSTM_FROM_BITS_F(v) pylstm_from_bits_f(v)
#define PYLSTM_FROM_BITS_D(v) pylstm_from_bits_d(v)
#endif

/* min(a, b) = a < b ? a : b and max(a, b) = a > b ? a : b, element-wise: the
 * semantics of x86's min and max instructions (b where a is NaN), which GCC
 * does not emit for the ternary without -ffinite-math-only (a comparison and
 * a blend instead). NEON's minnm/maxnm give the same for a NaN a. */
#if PYLSTM_VBYTES == 64
#include <immintrin.h>
#define PYLSTM_MIN_F(a, b) ((pylstm_vf)_mm512_min_ps((__m512)(a), (__m512)(b)))
#define PYLSTM_MAX_F(a, b) ((pylstm_vf)_mm512_max_ps((__m512)(a), (__m512)(b)))
#define PYLSTM_MIN_D(a, b) ((pylstm_vd)_mm512_min_pd((__m512d)(a), (__m512d)(b)))
#define PYLSTM_MAX_D(a, b) ((pylstm_vd)_mm512_max_pd((__m512d)(a), (__m512d)(b)))
#elif PYLSTM_VBYTES == 32
#include <immintrin.h>
#define PYLSTM_MIN_F(a, b) ((pylstm_vf)_mm256_min_ps((__m256)(a), (__m256)(b)))
#define PYLSTM_MAX_F(a, b) ((pylstm_vf)_mm256_max_ps((__m256)(a), (__m256)(b)))
#define PYLSTM_MIN_D(a, b) ((pylstm_vd)_mm256_min_pd((__m256d)(a), (__m256d)(b)))
#define PYLSTM_MAX_D(a, b) ((pylstm_vd)_mm256_max_pd((__m256d)(a), (__m256d)(b)))
#elif PYLSTM_VBYTES == 16 && (defined(__ARM_NEON) || defined(__ARM_NEON__))
#include <arm_neon.h>
#define PYLSTM_MIN_F(a, b) ((pylstm_vf)vminnmq_f32((float32x4_t)(a), (float32x4_t)(b)))
#define PYLSTM_MAX_F(a, b) ((pylstm_vf)vmaxnmq_f32((float32x4_t)(a), (float32x4_t)(b)))
#define PYLSTM_MIN_D(a, b) ((pylstm_vd)vminnmq_f64((float64x2_t)(a), (float64x2_t)(b)))
#define PYLSTM_MAX_D(a, b) ((pylstm_vd)vmaxnmq_f64((float64x2_t)(a), (float64x2_t)(b)))
#elif PYLSTM_VBYTES == 16
#include <emmintrin.h>
#define PYLSTM_MIN_F(a, b) ((pylstm_vf)_mm_min_ps((__m128)(a), (__m128)(b)))
#define PYLSTM_MAX_F(a, b) ((pylstm_vf)_mm_max_ps((__m128)(a), (__m128)(b)))
#define PYLSTM_MIN_D(a, b) ((pylstm_vd)_mm_min_pd((__m128d)(a), (__m128d)(b)))
#define PYLSTM_MAX_D(a, b) ((pylstm_vd)_mm_max_pd((__m128d)(a), (__m128d)(b)))
#else
#define PYLSTM_MIN_F(a, b) ((a) < (b) ? (a) : (b))
#define PYLSTM_MAX_F(a, b) ((a) > (b) ? (a) : (b))
#define PYLSTM_MIN_D(a, b) ((a) < (b) ? (a) : (b))
#define PYLSTM_MAX_D(a, b) ((a) > (b) ? (a) : (b))
#endif

/* A streaming store: v to p, bypassing the caches, where the level has one
 * and p is aligned to the vector; else a plain store. For data read back
 * only much later (the training forward's kept gates and states): it is not
 * read into the caches before it is written, and does not push out what the
 * writer reads again (_stream_keep in _forward.pxi;
 * tests/kernels/test_streaming_keep.py). The writer must
 * pylstm_store_fence() (_platform.h) before another thread reads it: only
 * x86 streams here, where that fence is sfence. */
#if PYLSTM_VBYTES == 64
#define PYLSTM_STREAM_F(p, v) _mm512_stream_ps((p), (__m512)(v))
#define PYLSTM_STREAM_D(p, v) _mm512_stream_pd((p), (__m512d)(v))
#elif PYLSTM_VBYTES == 32
#define PYLSTM_STREAM_F(p, v) _mm256_stream_ps((p), (__m256)(v))
#define PYLSTM_STREAM_D(p, v) _mm256_stream_pd((p), (__m256d)(v))
#elif PYLSTM_VBYTES == 16 && !(defined(__ARM_NEON) || defined(__ARM_NEON__))
#define PYLSTM_STREAM_F(p, v) _mm_stream_ps((p), (__m128)(v))
#define PYLSTM_STREAM_D(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif
#if defined(PYLSTM_STREAM_F) && !(defined(__x86_64__) || defined(__i386__))
#error "streaming stores need pylstm_store_fence (_platform.h) for this target"
#endif
#ifdef PYLSTM_STREAM_F
static inline void pylstm_stream_f(float *p, pylstm_vf v)
{
    if (((uintptr_t)p & (PYLSTM_VBYTES - 1)) == 0)
        PYLSTM_STREAM_F(p, v);
    else
        pylstm_store_f(p, v);
}
static inline void pylstm_stream_d(double *p, pylstm_vd v)
{
    if (((uintptr_t)p & (PYLSTM_VBYTES - 1)) == 0)
        PYLSTM_STREAM_D(p, v);
    else
        pylstm_store_d(p, v);
}
#else
#define pylstm_stream_f pylstm_store_f
#define pylstm_stream_d pylstm_store_d
#endif

#if PYLSTM_VBYTES == 64
#define PYLSTM_TMR 8
#define PYLSTM_TNV 2
#elif PYLSTM_VBYTES == 32
#define PYLSTM_TMR 6
#define PYLSTM_TNV 2
#elif PYLSTM_VBYTES == 16 && (defined(__ARM_NEON) || defined(__ARM_NEON__))
#define PYLSTM_TMR 8
#define PYLSTM_TNV 2
#elif PYLSTM_VBYTES == 16
#define PYLSTM_TMR 6
#define PYLSTM_TNV 2
#else
#define PYLSTM_TMR 4
#define PYLSTM_TNV 4
#endif

#endif
