/* Two threads on one time loop: a kept worker thread and a spinning barrier
 * for two, over the primitives of _platform.h.
 *
 * How a step is shared (by rows, or by hidden units with a barrier per step)
 * is _forward (_forward.pxi) and _backward_loop (_backward.pxi); whether a
 * call is shared at all is decided in one place, _split_ok (_split.pxi).
 *
 * A step takes microseconds, so waits spin with the pause hint rather than
 * sleep; after many spins they yield the core, so that a machine busier than
 * two threads does not turn the wait into a stall. The idle worker waits so
 * for a millisecond by the clock, then sleeps.
 */
#ifndef PYLSTM_PARALLEL_H
#define PYLSTM_PARALLEL_H

#include "_platform.h"

/* Pause hints before a waiting thread yields: long enough to ride out the
 * other thread's step, short enough not to starve a third thread on a busy
 * machine (benchmarks/bench_fit.py, two threads beside torch's workers). */
#define PYLSTM_SPINS 20000
/* How long the idle worker waits for the next task before it sleeps, in
 * microseconds: a training step's kernel calls come a fraction of a
 * millisecond apart (the Python between them), and a sleeping worker takes
 * tens of microseconds to wake (benchmarks/bench_fit.py --idle-wait). Set by
 * pylstm._lstm.set_idle_wait. Past PYLSTM_IDLE_YIELD_US of it the wait
 * yields the core between looks, so that a machine with more runnable
 * threads than cores runs them; it still counts against a CPU quota. */
static pylstm_atomic pylstm_idle_wait_us = 1000;
#define PYLSTM_IDLE_YIELD_US 100

typedef struct {
    pylstm_atomic arrived;
    pylstm_atomic phase;
} pylstm_barrier;

static inline void pylstm_barrier_init(pylstm_barrier *b)
{
    b->arrived = 0;
    b->phase = 0;
}

/* Wait until both threads have arrived (a barrier for two, reusable). */
static inline void pylstm_barrier_wait(pylstm_barrier *b)
{
    long phase = pylstm_load(&b->phase);
    long spins = 0;
    if (pylstm_fetch_add(&b->arrived, 1) == 1) {
        pylstm_store(&b->arrived, 0);
        pylstm_store(&b->phase, phase + 1);
        return;
    }
    while (pylstm_load(&b->phase) == phase) {
        if (++spins < PYLSTM_SPINS)
            pylstm_pause();
        else
            pylstm_yield();
    }
}

/* Kernel calls in progress in the process: a call splits its loop only while
 * it is the only one (two calls at once already take both cores; a third
 * thread would make every barrier wait for a descheduled partner). */
static pylstm_atomic pylstm_active_calls;

static inline void pylstm_enter(void) { pylstm_fetch_add(&pylstm_active_calls, 1); }
static inline void pylstm_leave(void) { pylstm_fetch_add(&pylstm_active_calls, -1); }
static inline int pylstm_alone(void) { return pylstm_load(&pylstm_active_calls) <= 1; }
static inline long pylstm_calls(void) { return pylstm_load(&pylstm_active_calls); }

#if PYLSTM_THREADS

/* The second thread, kept: it waits for a task (spinning a little, then
 * asleep) instead of a thread started and joined per kernel call. One caller
 * at a time holds it; a second caller meanwhile runs on its own thread only.
 * A child process after fork() has no worker: the fork handler resets the
 * state, and the child's first call starts a new one
 * (tests/threads/test_fork_safety.py). */
typedef struct {
    pylstm_sleeper sleeper;
    pylstm_atomic busy;     /* a caller holds the worker */
    pylstm_atomic started;  /* the worker thread exists */
    pylstm_atomic seq;      /* tasks posted */
    pylstm_atomic done;     /* the last task finished */
    long base;              /* seq when the worker was started */
    void (*fn)(void *);
    void *arg;
} pylstm_pool;

static pylstm_pool pylstm_worker = {PYLSTM_SLEEPER_INIT, 0, 0, 0, 0, 0, NULL, NULL};

static void *pylstm_worker_main(void *unused)
{
    pylstm_pool *p = &pylstm_worker;
    long seen = p->base;
    (void)unused;
    for (;;) {
        long s;
        unsigned long spins = 0;
        long long since = pylstm_now_ns(), waited = 0;
        while ((s = pylstm_load(&p->seq)) == seen) {
            if ((++spins & 63) == 0) {
                /* The clock, every 64 looks; one that went back (a jump of
                 * the wall clock) ends the wait too. */
                waited = pylstm_now_ns() - since;
                if (waited < 0 || waited >= 1000LL * pylstm_load(&pylstm_idle_wait_us))
                    break;
            }
            if (waited >= 1000LL * PYLSTM_IDLE_YIELD_US)
                pylstm_yield();
            else
                pylstm_pause();
        }
        if (s == seen) {
            pylstm_sleeper_lock(&p->sleeper);
            while ((s = pylstm_load(&p->seq)) == seen)
                pylstm_sleeper_wait(&p->sleeper);
            pylstm_sleeper_unlock(&p->sleeper);
        }
        seen = s;
        p->fn(p->arg);
        pylstm_store(&p->done, s);
    }
    return NULL;
}

static void pylstm_pool_after_fork(void)
{
    pylstm_pool *p = &pylstm_worker;
    pylstm_sleeper_reset(&p->sleeper);
    pylstm_store(&p->started, 0);
    pylstm_store(&p->busy, 0);
    pylstm_store(&p->done, pylstm_load(&p->seq));
    pylstm_store(&pylstm_active_calls, 0);
}

/* Register the fork handler; the extension calls this at import, so that a
 * child forked while another thread is in a kernel call (before any worker
 * was started) does not inherit that call's count. 0 on success. */
static int pylstm_parallel_init(void)
{
    static int fork_handler = 0;
    if (!fork_handler && pylstm_at_fork_child(pylstm_pool_after_fork) == 0)
        fork_handler = 1;
    return fork_handler ? 0 : -1;
}

/* Hold the worker (started if need be); 0 if another caller has it or no
 * thread could be started. */
static int pylstm_pool_acquire(void)
{
    pylstm_pool *p = &pylstm_worker;
    if (!pylstm_cas(&p->busy, 0, 1))
        return 0;
    if (!pylstm_load(&p->started)) {
        if (pylstm_parallel_init() != 0) {
            pylstm_store(&p->busy, 0);
            return 0;
        }
        p->base = pylstm_load(&p->seq);
        pylstm_store(&p->done, p->base);
        if (pylstm_thread_start(pylstm_worker_main) != 0) {
            pylstm_store(&p->busy, 0);
            return 0;
        }
        pylstm_store(&p->started, 1);
    }
    return 1;
}

/* fn(arg1) on the worker thread and fn(arg0) on this one, then wait for
 * both. Returns 0, or -1 without running anything if the worker is held by
 * another call (or none could be started). */
static int pylstm_run_pair(void (*fn)(void *), void *arg0, void *arg1)
{
    pylstm_pool *p = &pylstm_worker;
    long s, spins = 0;
    if (!pylstm_pool_acquire())
        return -1;
    p->fn = fn;
    p->arg = arg1;
    pylstm_sleeper_lock(&p->sleeper);
    s = pylstm_load(&p->seq) + 1;
    pylstm_store(&p->seq, s);
    pylstm_sleeper_signal(&p->sleeper);
    pylstm_sleeper_unlock(&p->sleeper);
    fn(arg0);
    while (pylstm_load(&p->done) != s) {
        if (++spins < PYLSTM_SPINS)
            pylstm_pause();
        else
            pylstm_yield();
    }
    pylstm_store(&p->busy, 0);
    return 0;
}

#else

static int pylstm_parallel_init(void) { return 0; }

static int pylstm_run_pair(void (*fn)(void *), void *arg0, void *arg1)
{
    (void)fn; (void)arg0; (void)arg1;
    return -1;
}

#endif

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

#endif
