/* Two threads on one time loop: a kept worker thread (see pylstm_pool) and
 * a spinning barrier.
 *
 * With two cores, a step's products and gate arithmetic split by rows (from
 * 16 rows: each thread its alternate rows, all units, no barrier between
 * steps) or by hidden units: each thread computes the four gates of its
 * half of the units for every active row, from the whole h_{t-1}, and
 * writes only its half of h_t, c_t and the caches. The one dependency
 * between the halves is that the next step reads all of h_t, hence one
 * barrier per step (in BPTT: all of the step's gate gradients before the
 * product dG W_hh). See _forward in _lstm.pyx.
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
#include <time.h>
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

/* The second thread, kept: one worker that waits for a task (spinning a
 * little, ~40 us, since kernel calls of a training step follow each other
 * closely, then asleep on a condition variable) instead of a thread started
 * and joined per kernel call (33 us on the benchmark machine, and a core
 * whose caches start cold). One caller at a time holds it; a second caller
 * meanwhile (another Python thread) runs on its own thread only.
 * A child process after fork() has no worker: the fork handler resets the
 * state, and the child's first call starts a new one. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int busy;       /* a caller holds the worker */
    atomic_int started;    /* the worker thread exists */
    atomic_uint seq;       /* tasks posted */
    atomic_uint done;      /* the last task finished */
    unsigned base;         /* seq when the worker was started */
    void (*fn)(void *);
    void *arg;
} pylstm_pool;

static pylstm_pool pylstm_worker = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

#define PYLSTM_IDLE_SPINS 2000

static inline void pylstm_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *pylstm_worker_main(void *unused)
{
    pylstm_pool *p = &pylstm_worker;
    unsigned seen = p->base;
    (void)unused;
    for (;;) {
        unsigned s;
        long spins = 0;
        while ((s = atomic_load_explicit(&p->seq, memory_order_acquire)) == seen) {
            if (++spins < PYLSTM_IDLE_SPINS) {
                pylstm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->seq, memory_order_acquire) == seen)
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        seen = s;
        p->fn(p->arg);
        atomic_store_explicit(&p->done, s, memory_order_release);
    }
    return NULL;
}

static void pylstm_pool_after_fork(void)
{
    pylstm_pool *p = &pylstm_worker;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_store(&p->started, 0);
    atomic_store(&p->busy, 0);
    atomic_store(&p->done, atomic_load(&p->seq));
}

/* Hold the worker (started if need be); 0 if another caller has it or no
 * thread could be started. */
static int pylstm_pool_acquire(void)
{
    pylstm_pool *p = &pylstm_worker;
    static int fork_handler = 0;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&p->busy, &expected, 1))
        return 0;
    if (!atomic_load(&p->started)) {
        pthread_t th;
        pthread_attr_t attr;
        int ok;
        if (!fork_handler) {
            if (pthread_atfork(NULL, NULL, pylstm_pool_after_fork) != 0) {
                atomic_store(&p->busy, 0);
                return 0;
            }
            fork_handler = 1;
        }
        p->base = atomic_load(&p->seq);
        atomic_store(&p->done, p->base);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ok = pthread_create(&th, &attr, pylstm_worker_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) {
            atomic_store(&p->busy, 0);
            return 0;
        }
        atomic_store(&p->started, 1);
    }
    return 1;
}

/* Kernel calls in progress in the process. Two calls at once (two Python
 * threads, or the two directions of a bidirectional layer) already take
 * both cores: a call that splits its loop then would put three threads on
 * two cores, whose barriers wait for a descheduled partner (two Python
 * threads training small layers at once ran 10x slower than one after the
 * other). So a call splits only while it is the only one, and none
 * overlapped another lately. */
static atomic_int pylstm_active_calls;
static atomic_llong pylstm_crowded_until;    /* ns, CLOCK_MONOTONIC */

/* A call that overlapped another keeps every call from splitting for the
 * next 50 ms: threads that alternate between kernel calls and Python would
 * otherwise each find themselves alone now and then, split, and then share
 * the cores three ways. */
#define PYLSTM_CROWDED_NS 50000000LL

static inline long long pylstm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void pylstm_enter(void)
{
    if (atomic_fetch_add(&pylstm_active_calls, 1) > 0)
        atomic_store(&pylstm_crowded_until, pylstm_now_ns() + PYLSTM_CROWDED_NS);
}

static inline void pylstm_leave(void) { atomic_fetch_sub(&pylstm_active_calls, 1); }

static inline int pylstm_alone(void)
{
    return atomic_load(&pylstm_active_calls) <= 1
           && pylstm_now_ns() > atomic_load(&pylstm_crowded_until);
}

/* fn(arg1) on the worker thread and fn(arg0) on this one, then wait for
 * both. Returns 0, or -1 without running anything if the worker is held by
 * another call (or none could be started). */
static int pylstm_run_pair(void (*fn)(void *), void *arg0, void *arg1)
{
    if (pylstm_pool_acquire()) {
        pylstm_pool *p = &pylstm_worker;
        unsigned s;
        long spins = 0;
        p->fn = fn;
        p->arg = arg1;
        pthread_mutex_lock(&p->mu);
        s = atomic_load(&p->seq) + 1;
        atomic_store_explicit(&p->seq, s, memory_order_release);
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
        fn(arg0);
        while (atomic_load_explicit(&p->done, memory_order_acquire) != s) {
            if (++spins < 20000)
                pylstm_pause();
            else
                sched_yield();
        }
        atomic_store(&p->busy, 0);
        return 0;
    }
    return -1;
}

/* fn(arg0) and fn(arg1), independent tasks: on two threads when the worker
 * is free and this is the only call in progress, else one after the other
 * here. The same tasks either way, so the same results. Returns the
 * threads used. */
static int pylstm_run_both(void (*fn)(void *), void *arg0, void *arg1)
{
    if (pylstm_alone() && pylstm_run_pair(fn, arg0, arg1) == 0)
        return 2;
    fn(arg0);
    fn(arg1);
    return 1;
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
static int pylstm_run_both(void (*fn)(void *), void *arg0, void *arg1)
{
    fn(arg0);
    fn(arg1);
    return 1;
}
static inline void pylstm_enter(void) {}
static inline void pylstm_leave(void) {}
static inline int pylstm_alone(void) { return 1; }
/* No split without threads, so the split is never timed (see _tune_want). */
static inline long long pylstm_now_ns(void) { return 0; }
#endif

#endif
