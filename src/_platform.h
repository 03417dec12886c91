/* What differs between compilers, operating systems and CPUs, in one place:
 * the restrict keyword, atomics, the spin-wait hint, yielding the core, a
 * clock for short waits, and one kept worker thread. Everything else in src/ is
 * plain C11 over these names.
 *
 * Threads: POSIX threads (Linux, macOS, the BSDs, MinGW's winpthreads is not
 * needed) or Windows threads. PYLSTM_THREADS is 0 only where neither exists,
 * and then every call runs on the caller's thread.
 */
#ifndef PYLSTM_PLATFORM_H
#define PYLSTM_PLATFORM_H

#include <stddef.h>
#include <stdlib.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define PYLSTM_RESTRICT __restrict
#define PYLSTM_MSVC 1
#else
#define PYLSTM_RESTRICT restrict
#define PYLSTM_MSVC 0
#endif

#if defined(_WIN32)
#define PYLSTM_WIN32_THREADS 1
#define PYLSTM_POSIX_THREADS 0
#elif defined(__unix__) || defined(__APPLE__)
#define PYLSTM_WIN32_THREADS 0
#define PYLSTM_POSIX_THREADS 1
#else
#define PYLSTM_WIN32_THREADS 0
#define PYLSTM_POSIX_THREADS 0
#endif
#define PYLSTM_THREADS (PYLSTM_WIN32_THREADS || PYLSTM_POSIX_THREADS)

/* A kernel that must never run (a stand-in for a code path that the build
 * left out) stops the process with a message instead of returning garbage. */
#include <stdio.h>
#define PYLSTM_UNREACHABLE(what)                                                     \
    do {                                                                             \
        fprintf(stderr, "pylstm: internal error: %s is not in this build\n", what);  \
        abort();                                                                     \
    } while (0)

/* ---- atomics on int (sequentially consistent; they are off the hot path) -- */
#if PYLSTM_MSVC
#include <intrin.h>
#include <windows.h>
typedef volatile long pylstm_atomic;
static inline long pylstm_load(pylstm_atomic *a) { return InterlockedCompareExchange(a, 0, 0); }
static inline void pylstm_store(pylstm_atomic *a, long v) { InterlockedExchange(a, v); }
static inline long pylstm_fetch_add(pylstm_atomic *a, long v) { return InterlockedExchangeAdd(a, v); }
static inline int pylstm_cas(pylstm_atomic *a, long expected, long v)
{
    return InterlockedCompareExchange(a, v, expected) == expected;
}
#else
typedef long pylstm_atomic;
static inline long pylstm_load(pylstm_atomic *a) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
static inline void pylstm_store(pylstm_atomic *a, long v)
{
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);
}
static inline long pylstm_fetch_add(pylstm_atomic *a, long v)
{
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
static inline int pylstm_cas(pylstm_atomic *a, long expected, long v)
{
    return __atomic_compare_exchange_n(a, &expected, v, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
#endif

/* ---- ordering streaming stores ------------------------------------------- */
/* Streaming (non-temporal) stores are weakly ordered: a thread that made any
 * must fence them before another thread reads what they wrote
 * (tests/kernels/test_streaming_keep.py). */
#if PYLSTM_MSVC && (defined(_M_X64) || defined(_M_IX86))
#define pylstm_store_fence() _mm_sfence()
#elif defined(__x86_64__) || (defined(__i386__) && defined(__SSE__))
#define pylstm_store_fence() __builtin_ia32_sfence()
#else
#define pylstm_store_fence() ((void)0)
#endif

/* ---- the spin-wait hint and giving the core away ------------------------- */
#if PYLSTM_MSVC
#define pylstm_pause() YieldProcessor()
#elif defined(__x86_64__) || defined(__i386__)
#define pylstm_pause() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define pylstm_pause() __asm__ __volatile__("yield")
#else
#define pylstm_pause() ((void)0)
#endif

#if PYLSTM_WIN32_THREADS
#if !PYLSTM_MSVC
#include <windows.h>
#endif
#define pylstm_yield() ((void)SwitchToThread())
#elif PYLSTM_POSIX_THREADS
#include <pthread.h>
#include <sched.h>
#define pylstm_yield() ((void)sched_yield())
#else
#define pylstm_yield() ((void)0)
#endif

/* ---- a clock for short waits, in nanoseconds ------------------------------ */
/* Monotonic where the headers offer it; in a strict ISO C build (no POSIX
 * names) the wall clock, whose jumps only end a wait early (see _parallel.h). */
#if PYLSTM_WIN32_THREADS
static inline long long pylstm_now_ns(void)
{
    LARGE_INTEGER count, freq;
    QueryPerformanceCounter(&count);
    QueryPerformanceFrequency(&freq);
    return (long long)((double)count.QuadPart * (1e9 / (double)freq.QuadPart));
}
#elif PYLSTM_POSIX_THREADS
#include <time.h>
static inline long long pylstm_now_ns(void)
{
    struct timespec ts;
#ifdef CLOCK_MONOTONIC
    clock_gettime(CLOCK_MONOTONIC, &ts);
#else
    timespec_get(&ts, TIME_UTC);
#endif
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif

/* ---- one kept worker thread ---------------------------------------------- */
/* pylstm_thread_start(fn) starts a detached thread running fn(NULL); 0 on
 * success. pylstm_wake/pylstm_sleep are a mutex and condition variable. */
#if PYLSTM_WIN32_THREADS
typedef struct {
    SRWLOCK lock;
    CONDITION_VARIABLE cv;
} pylstm_sleeper;
#define PYLSTM_SLEEPER_INIT {SRWLOCK_INIT, CONDITION_VARIABLE_INIT}
static inline void pylstm_sleeper_reset(pylstm_sleeper *s)
{
    InitializeSRWLock(&s->lock);
    InitializeConditionVariable(&s->cv);
}
static inline void pylstm_sleeper_lock(pylstm_sleeper *s) { AcquireSRWLockExclusive(&s->lock); }
static inline void pylstm_sleeper_unlock(pylstm_sleeper *s) { ReleaseSRWLockExclusive(&s->lock); }
static inline void pylstm_sleeper_wait(pylstm_sleeper *s)
{
    SleepConditionVariableSRW(&s->cv, &s->lock, INFINITE, 0);
}
static inline void pylstm_sleeper_signal(pylstm_sleeper *s) { WakeConditionVariable(&s->cv); }
static DWORD WINAPI pylstm_thread_trampoline(LPVOID fn)
{
    ((void *(*)(void *))fn)(NULL);
    return 0;
}
static inline int pylstm_thread_start(void *(*fn)(void *))
{
    HANDLE h = CreateThread(NULL, 0, pylstm_thread_trampoline, (LPVOID)fn, 0, NULL);
    if (h == NULL)
        return -1;
    CloseHandle(h);
    return 0;
}
/* Windows has no fork(). */
static inline int pylstm_at_fork_child(void (*fn)(void)) { (void)fn; return 0; }
#elif PYLSTM_POSIX_THREADS
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pylstm_sleeper;
#define PYLSTM_SLEEPER_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER}
static inline void pylstm_sleeper_reset(pylstm_sleeper *s)
{
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}
static inline void pylstm_sleeper_lock(pylstm_sleeper *s) { pthread_mutex_lock(&s->mu); }
static inline void pylstm_sleeper_unlock(pylstm_sleeper *s) { pthread_mutex_unlock(&s->mu); }
static inline void pylstm_sleeper_wait(pylstm_sleeper *s) { pthread_cond_wait(&s->cv, &s->mu); }
static inline void pylstm_sleeper_signal(pylstm_sleeper *s) { pthread_cond_signal(&s->cv); }
static inline int pylstm_thread_start(void *(*fn)(void *))
{
    pthread_t th;
    pthread_attr_t attr;
    int err;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    err = pthread_create(&th, &attr, fn, NULL);
    pthread_attr_destroy(&attr);
    return err == 0 ? 0 : -1;
}
static inline int pylstm_at_fork_child(void (*fn)(void))
{
    return pthread_atfork(NULL, NULL, fn) == 0 ? 0 : -1;
}
#endif

#endif
