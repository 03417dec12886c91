/* Two threads on one time loop: a worker thread per kernel call and a
 * spinning barrier between the steps.
 *
 * With two cores, a step's products and gate arithmetic split by hidden
 * units: each thread computes the four gates of its half of the units for
 * every active row, from the whole h_{t-1}, and writes only its half of h_t,
 * c_t and the caches. The one dependency between the halves is that the
 * next step reads all of h_t, hence one barrier per step (in BPTT: all of
 * the step's gate gradients before the product dG W_hh).
 *
 * A step takes microseconds, so the barrier spins (with the pause hint)
 * rather than sleeping; after many spins it yields the core, so that a
 * machine busier than two threads does not turn the wait into a stall.
 */
#ifndef PYLSTM_PARALLEL_H
#define PYLSTM_PARALLEL_H

#if defined(__GNUC__) && defined(__linux__) && !defined(__STDC_NO_ATOMICS__)
#define PYLSTM_THREADS 1
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

typedef struct {
    atomic_int arrived;
    atomic_int phase;
} pylstm_barrier;

static inline void pylstm_barrier_init(pylstm_barrier *b)
{
    atomic_init(&b->arrived, 0);
    atomic_init(&b->phase, 0);
}

/* Wait until both threads have arrived (a barrier for two, reusable). */
static inline void pylstm_barrier_wait(pylstm_barrier *b)
{
    int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, phase + 1, memory_order_release);
        return;
    }
    /* Up to about half a millisecond of pause hints (PAUSE takes ~65 cycles
     * on recent AMD cores), then yield: the other thread may not have a core
     * of its own right now. Shorter spinning (2000 hints, ~50 us) made fits
     * at two threads up to 1.8x slower when another library's spinning
     * workers (torch's OpenMP, OpenBLAS) shared the cores: each yield handed
     * the core to them. */
    long spins = 0;
    while (atomic_load_explicit(&b->phase, memory_order_acquire) == phase) {
        if (++spins < 20000) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
}

typedef struct {
    void (*fn)(void *);
    void *arg;
} pylstm_task;

static void *pylstm_task_main(void *p)
{
    pylstm_task *t = (pylstm_task *)p;
    t->fn(t->arg);
    return NULL;
}

/* fn(arg1) on a new thread and fn(arg0) on this one, then join. Returns 0,
 * or -1 without running anything if no thread could be started. */
static int pylstm_run_pair(void (*fn)(void *), void *arg0, void *arg1)
{
    pthread_t th;
    pylstm_task task = {fn, arg1};
    if (pthread_create(&th, NULL, pylstm_task_main, &task) != 0)
        return -1;
    fn(arg0);
    pthread_join(th, NULL);
    return 0;
}

#else
#define PYLSTM_THREADS 0

typedef struct {
    int unused;
} pylstm_barrier;

static inline void pylstm_barrier_init(pylstm_barrier *b) { (void)b; }
static inline void pylstm_barrier_wait(pylstm_barrier *b) { (void)b; }
static int pylstm_run_pair(void (*fn)(void *), void *arg0, void *arg1)
{
    (void)fn; (void)arg0; (void)arg1;
    return -1;
}
#endif

#endif
