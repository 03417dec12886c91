/* How fast can a batch-1 LSTM step read its recurrent weights, and how fast
 * can this CPU multiply-add at all?
 *
 * At batch 1 each time step multiplies h_{t-1} (H values) by W_hh (H x 4H):
 * every weight is read once per step and used in one multiply-add, so the
 * step's time is bounded below by the time to stream W_hh from wherever it
 * lies (L2 at H = 128 in float32: 256 KiB; partly beyond L2 at H = 256:
 * 1 MiB). This program prints three figures for each size:
 *
 *   gemv        pylstm's one-row packed product (gemv_packed_* of the
 *               AVX-512 table of src/_kernels.c, the kernel of a batch-1
 *               step, called as the extension calls it) on warm weights.
 *               On 1 thread the whole product in one call, as pylstm's
 *               one-thread loop runs it; on 2 threads each thread its half
 *               of every gate's columns, then a barrier (pylstm_barrier_wait
 *               of src/_parallel.h), with h_t exchanged as in the two-thread
 *               loop: the lower bound of a two-thread batch-1 step. The
 *               weights lie as pylstm packs them for that split, each
 *               thread's four gate blocks together (_pack_w_hh_t in
 *               src/_lstm.pyx);
 *   gemv apart  (2 threads) the same with the four blocks a quarter of the
 *               matrix apart, in column order, as pylstm packed them before;
 *   loads only  the same bytes read with plain vector loads and nothing else
 *               (each thread its half, no barrier): what the caches deliver,
 *               whatever the kernel. No batch-1 step can be faster.
 *
 * and, last, the CPU's multiply-add peak (independent AVX-512 FMAs, and
 * AVX2 FMAs, no memory), against which the GEMMs of a training step can be
 * judged at each level.
 *
 * Build and run from the repository root (gcc, Linux, x86-64 with AVX-512):
 *
 *   gcc -O2 -pthread -o /tmp/gemv_floor benchmarks/c/gemv_floor.c -lm && /tmp/gemv_floor
 *
 * The program compiles src/_kernels.c into itself for the AVX-512 level: a
 * target pragma stands in for that level's flags in src/meson.build, so no
 * flag is needed and the rest of the program runs on any x86-64 CPU (it
 * stops with a message where AVX-512 is missing).
 *
 * Prints nanoseconds per step (median of 7 runs of 20000 steps) and the
 * weight bytes streamed per second. Dividing torch's measured time per step
 * (bench_lstm.py, T = 1000 minus T = 100) by these gives the largest ratio a
 * batch-1 step can reach on this machine.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>

/* The kernels' dispatch (_kernels.h) with the one table compiled below. */
#define PYLSTM_HAVE_AVX512 1
#include "../../src/_kernels.h"

/* _kernels.c for the AVX-512 level: under the pragma, GCC defines
 * __AVX512F__ and the rest, from which _simd.h takes the vector width. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#define PYLSTM_TARGET avx512
#include "../../src/_kernels.c"
#if PYLSTM_VBYTES != 64
#error "the AVX-512 kernels need GCC here (its target pragma sets __AVX512F__)"
#endif
#pragma GCC pop_options
#undef R
#undef MR
#undef NV

#include "../../src/_parallel.h"

#define STEPS 20000
#define RUNS 7

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What a thread does per step: the product on its half of the units, whose
 * four gate blocks lie together (GROUPED, pylstm's layout for a split by
 * units) or a quarter of the matrix apart (APART, column order: pylstm's
 * layout before); or it streams its share of the bytes with loads alone. */
enum { GROUPED, APART, LOADS_ONLY };

typedef struct {
    int H, part, nparts, is_float;
    void *bp;          /* packed W_hh^T (H x 4H), shared */
    void *h[2];        /* h_{t-1} and h_t, alternating, shared */
    void *y;           /* this thread's 4H pre-activations */
    pylstm_barrier *bar;
    int mode;          /* GROUPED, APART or LOADS_ONLY */
    double seconds;
} job;

/* The bytes at p (64-byte aligned; whole 512-byte blocks) read with 512-bit
 * loads into eight accumulators: the loads, and an add each that keeps them
 * from being optimised away. */
__attribute__((target("avx512f"), noinline))
static float stream_bytes(const char *p, long bytes)
{
    __m512 a[8];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_setzero_ps();
    for (long o = 0; o + 512 <= bytes; o += 512)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            a[i] = _mm512_add_ps(a[i], _mm512_load_ps((const float *)(p + o + 64 * i)));
    for (int i = 1; i < 8; i++)
        a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

/* Each thread: its half (or all) of the packed weights, STEPS times. */
static void stream_share(job *j, size_t es)
{
    long n = es == sizeof(float) ? pylstm_packed_size_f(j->H, 4 * j->H)
                                 : pylstm_packed_size_d(j->H, 4 * j->H);
    long bytes = n * (long)es / j->nparts / 512 * 512;
    const char *p = (const char *)j->bp + (long)j->part * bytes;
    volatile float sink = 0;
    double t0 = now_s();
    for (int s = 0; s < STEPS; s++)
        sink += stream_bytes(p, bytes);
    j->seconds = now_s() - t0;
    (void)sink;
}

/* Each thread: for its units u0 .. u0 + hn of every gate, y = h W; then a
 * stand-in for the cell (h_t of its units from y) and the barrier. */
#define STEP_LOOP(T, GEMV)                                                          \
    {                                                                               \
        T *bp = j->bp, *y = j->y;                                                   \
        int H = j->H, hn = H / j->nparts, u0 = j->part * hn;                        \
        double t0 = now_s();                                                        \
        for (int s = 0; s < STEPS; s++) {                                           \
            T *hc = j->h[s & 1], *hx = j->h[(s + 1) & 1];                           \
            if (j->nparts == 1)                                                     \
                GEMV(4 * H, H, hc, bp, y, 0);                                       \
            else                                                                    \
                for (int g = 0; g < 4; g++)                                         \
                    GEMV(hn, H, hc,                                                 \
                         bp + (j->mode == GROUPED ? (long)(4 * u0 + g * hn) * H     \
                                                  : (long)(g * H + u0) * H),        \
                         y + g * H + u0, 0);                                        \
            for (int u = u0; u < u0 + hn; u++)                                      \
                hx[u] = (T)1e-3 * y[u] + (T)1e-3 * y[3 * H + u];                    \
            if (j->nparts > 1)                                                      \
                pylstm_barrier_wait(j->bar);                                        \
        }                                                                           \
        j->seconds = now_s() - t0;                                                  \
    }

/* Keep the calling thread on CPU ``cpu``. */
static void pin_to_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *run(void *arg)
{
    job *j = arg;
    pin_to_cpu(j->part);
    if (j->mode == LOADS_ONLY)
        stream_share(j, j->is_float ? sizeof(float) : sizeof(double));
    else if (j->is_float)
        STEP_LOOP(float, pylstm_gemv_packed_f)
    else
        STEP_LOOP(double, pylstm_gemv_packed_d)
    return NULL;
}

static void measure(int H, int is_float, int nparts, int mode)
{
    size_t es = is_float ? sizeof(float) : sizeof(double);
    long n = is_float ? pylstm_packed_size_f(H, 4 * H) : pylstm_packed_size_d(H, 4 * H);
    char *bp = aligned_alloc(64, (size_t)n * es);
    char *h0 = aligned_alloc(64, (size_t)H * es), *h1 = aligned_alloc(64, (size_t)H * es);
    for (long i = 0; i < n; i++) {
        if (is_float) ((float *)bp)[i] = (float)((i % 13) - 6) * 1e-3f;
        else ((double *)bp)[i] = (double)((i % 13) - 6) * 1e-3;
    }
    for (int i = 0; i < H; i++) {
        if (is_float) ((float *)h0)[i] = ((float *)h1)[i] = 0.5f;
        else ((double *)h0)[i] = ((double *)h1)[i] = 0.5;
    }
    double per_step[RUNS];
    for (int r = 0; r < RUNS; r++) {
        pylstm_barrier bar;
        pylstm_barrier_init(&bar);
        job jobs[2];
        pthread_t tid[2];
        for (int p = 0; p < nparts; p++) {
            jobs[p] = (job){H, p, nparts, is_float, bp, {h0, h1},
                            aligned_alloc(64, 4 * (size_t)H * es), &bar, mode, 0};
            pthread_create(&tid[p], NULL, run, &jobs[p]);
        }
        double worst = 0;
        for (int p = 0; p < nparts; p++) {
            pthread_join(tid[p], NULL);
            worst = jobs[p].seconds > worst ? jobs[p].seconds : worst;
            free(jobs[p].y);
        }
        per_step[r] = worst / STEPS;
    }
    qsort(per_step, RUNS, sizeof per_step[0], cmp_double);
    double t = per_step[RUNS / 2];
    static const char *names[] = {"gemv", "gemv apart", "loads only"};
    printf("%-8s H=%-4d W_hh %5ld KiB  %d thread(s)  %-10s %7.1f ns per step  %6.1f GB/s\n",
           is_float ? "float32" : "float64", H, n * (long)es / 1024, nparts, names[mode],
           t * 1e9, n * (double)es / t / 1e9);
    free(bp);
    free(h0);
    free(h1);
}

/* Independent FMA chains, no memory: the multiply-add peak of one thread. */
#define FMA_CHAINS 12
#define FMA_ITERS 50000000L
typedef struct {
    int part, lanes;   /* lanes: 16 (AVX-512) or 8 (AVX2) floats per FMA */
    double seconds;
    float sink;
} fma_job;

__attribute__((target("avx512f"), noinline))
static float fma_loop(long iters)
{
    __m512 a[FMA_CHAINS];
    __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
    for (int i = 0; i < FMA_CHAINS; i++)
        a[i] = _mm512_set1_ps(1e-3f * (float)i);
    for (long k = 0; k < iters; k++)
#pragma GCC unroll 12
        for (int i = 0; i < FMA_CHAINS; i++)
            a[i] = _mm512_fmadd_ps(a[i], b, c);
    for (int i = 1; i < FMA_CHAINS; i++)
        a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

/* The same with 256-bit FMAs: the peak of the AVX2 level. */
__attribute__((target("avx2,fma"), noinline))
static float fma_loop256(long iters)
{
    __m256 a[FMA_CHAINS];
    __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
    for (int i = 0; i < FMA_CHAINS; i++)
        a[i] = _mm256_set1_ps(1e-3f * (float)i);
    for (long k = 0; k < iters; k++)
#pragma GCC unroll 12
        for (int i = 0; i < FMA_CHAINS; i++)
            a[i] = _mm256_fmadd_ps(a[i], b, c);
    for (int i = 1; i < FMA_CHAINS; i++)
        a[0] = _mm256_add_ps(a[0], a[i]);
    float out[8];
    _mm256_storeu_ps(out, a[0]);
    return out[0] + out[7];
}

static void *fma_run(void *arg)
{
    fma_job *j = arg;
    pin_to_cpu(j->part);
    double t0 = now_s();
    j->sink = j->lanes == 16 ? fma_loop(FMA_ITERS) : fma_loop256(FMA_ITERS);
    j->seconds = now_s() - t0;
    return NULL;
}

/* float32 multiply-adds per second of nparts threads (best of RUNS); a
 * float64 FMA does half as many flops in the same time. */
static void fma_peak(int nparts, int lanes)
{
    double best = 0;
    for (int r = 0; r < RUNS; r++) {
        fma_job jobs[2];
        pthread_t tid[2];
        for (int p = 0; p < nparts; p++) {
            jobs[p] = (fma_job){p, lanes, 0, 0};
            pthread_create(&tid[p], NULL, fma_run, &jobs[p]);
        }
        double worst = 0;
        for (int p = 0; p < nparts; p++) {
            pthread_join(tid[p], NULL);
            worst = jobs[p].seconds > worst ? jobs[p].seconds : worst;
        }
        double gf = 2.0 * lanes * FMA_CHAINS * FMA_ITERS * nparts / worst / 1e9;
        best = gf > best ? gf : best;
    }
    printf("FMA peak %s %d thread(s): %6.1f GF/s float32, %6.1f GF/s float64\n",
           lanes == 16 ? "AVX-512" : "AVX2   ", nparts, best, best / 2);
}

int main(void)
{
    if (!pylstm_cpu_has(PYLSTM_SIMD_AVX512)) {
        printf("no AVX-512: this program measures the AVX-512 kernels\n");
        return 0;
    }
    pylstm_simd_select(PYLSTM_SIMD_AVX512);  /* pylstm_gemv_packed_* call its table */
    int sizes[] = {128, 256};
    for (int is_float = 1; is_float >= 0; is_float--)
        for (int i = 0; i < 2; i++)
            for (int nparts = 1; nparts <= 2; nparts++)
                for (int mode = GROUPED; mode <= LOADS_ONLY; mode++)
                    if (!(nparts == 1 && mode == APART))
                        measure(sizes[i], is_float, nparts, mode);
    for (int lanes = 16; lanes >= 8; lanes -= 8)
        for (int nparts = 1; nparts <= 2; nparts++)
            fma_peak(nparts, lanes);
    return 0;
}
