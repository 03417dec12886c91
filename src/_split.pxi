# Two threads on one time loop: whether a call is split (_split_ok, the one
# place that decides), how (by rows or by units), and running it.


cdef extern from "_parallel.h" nogil:
    ctypedef struct pylstm_barrier:
        pass
    void pylstm_barrier_init(pylstm_barrier* b)
    void pylstm_barrier_wait(pylstm_barrier* b)
    int pylstm_run_pair(void (*fn)(void*) noexcept nogil, void* arg0, void* arg1)
    int pylstm_run_both(void (*fn)(void*) noexcept nogil, void* arg0, void* arg1)
    void pylstm_enter()
    void pylstm_leave()
    int pylstm_alone()
    long pylstm_calls()
    int pylstm_parallel_init()
    int PYLSTM_THREADS
    ctypedef long pylstm_atomic
    pylstm_atomic pylstm_idle_wait_us
    long pylstm_load(pylstm_atomic* a)
    void pylstm_store(pylstm_atomic* a, long v)
    void pylstm_store_fence()


pylstm_parallel_init()


cdef int _run_halves(void (*fn)(void*) noexcept nogil, void* arg0, void* arg1) noexcept nogil:
    """``fn(arg0)`` and ``fn(arg1)``, on the kept worker and the caller when no
    other kernel call holds the worker, else one after the other; counted as
    a kernel call in progress. Returns the threads used."""
    cdef int used
    pylstm_enter()
    used = pylstm_run_both(fn, arg0, arg1)
    pylstm_leave()
    return used


# _run_halves for the other extensions (pylstm._arrays' Adam update): one kept
# worker per process, whichever module's work it runs. (A function pointer
# through void*: ISO C leaves it undefined, POSIX and Windows define it.)
RUN_HALVES = PyCapsule_New(<void*> _run_halves, b"pylstm._lstm.run_halves", NULL)


cdef bint _split_sizes = True


def set_split_thresholds(bint enabled):
    """Apply (True) or not (False) the work thresholds of the two-thread loop.

    Returns the old setting. Without them any call that can split does (for
    tests, whose calls are small).
    """
    global _split_sizes
    old = bool(_split_sizes)
    _split_sizes = enabled
    return old


cdef bint _split_ok(_Loop* a, int threads, int nr) noexcept nogil:
    """Whether two threads share this call's time loop: the one rule.

    A call splits when its caller allows two threads, every step's product
    runs on packed weights (BLAS is not called from two threads at once), its
    shape allows a split (by rows: two rows or more; by units: each half of
    the units whole panels of ``nr`` columns), no other kernel call is in
    progress (that one holds the other core), and a step has at least
    SPLIT_STEP_MACS multiply-adds and the call SPLIT_CALL_MACS.
    """
    cdef double step = <double> a.B * 4 * a.H * a.H
    cdef bint possible = (a.B >= 2 if _by_rows(a.B) else a.H % (2 * nr) == 0)
    if not (threads >= 2 and PYLSTM_THREADS and a.w_pack != NULL and possible
            and not _blas_steps(a.lengths, a.B) and pylstm_alone()):
        return False
    return not _split_sizes or (step >= SPLIT_STEP_MACS and step * a.T >= SPLIT_CALL_MACS)


# How two threads share a time loop: by hidden units, with a barrier after
# every step (each step's product needs the h_{t-1} that both wrote), or by
# rows, each thread its alternate rows with the whole weight matrix and no
# barrier between steps. By rows from ROW_SPLIT_MIN_ROWS rows on, and for any
# H; by units below, down to one row, for H a multiple of two column panels.
cdef int _split_mode = 0  # 0: by the batch size as above, 1: by units, 2: by rows
_SPLIT_MODES = ("auto", "units", "rows")


cdef inline bint _by_rows(int B) noexcept nogil:
    """Whether two threads share a loop over B rows by rows (else by units)."""
    return (_split_mode == 2 and B >= 2) or (_split_mode == 0 and B >= ROW_SPLIT_MIN_ROWS)


def set_split_mode(mode):
    """How two threads share a time loop: ``"auto"`` (the default: by rows
    from 16 rows on, else by units), ``"units"`` or ``"rows"`` (from two rows
    on, else by units); returns the old setting. Results are bit-identical
    in every mode (for tests and benchmarks; not while a kernel runs)."""
    global _split_mode
    if mode not in _SPLIT_MODES:
        raise ValueError(f"mode must be one of {_SPLIT_MODES}, got {mode!r}")
    old = _SPLIT_MODES[_split_mode]
    _split_mode = _SPLIT_MODES.index(mode)
    return old


cdef int _run_loop(void (*task)(void*) noexcept nogil, void* first, void* second,
                   _Loop* s0, _Loop* s1, bint split) noexcept nogil:
    """Run ``task`` on ``first``: on two threads if ``split`` (and one can be
    started), ``second`` being a copy of ``first`` for the other thread and
    ``s0``, ``s1`` the shared parts of the two."""
    cdef pylstm_barrier bar
    if split:
        pylstm_barrier_init(&bar)
        s0.by_rows = s1.by_rows = _by_rows(s0.B)
        s0.nparts = s1.nparts = 2
        s0.part, s1.part = 0, 1
        s0.bar = s1.bar = &bar
        if pylstm_run_pair(task, first, second) == 0:
            return 2
        s0.nparts = 1
    task(first)
    return 1


def set_idle_wait(double seconds):
    """How long the kept worker thread waits for the next task before it
    sleeps, 0 to 1 second; returns the old setting (for tests and
    benchmarks; the default is 0.001, see ``_parallel.h``)."""
    if not 0 <= seconds <= 1:
        raise ValueError(f"seconds must be in [0, 1], got {seconds!r}")
    old = pylstm_load(&pylstm_idle_wait_us) / 1e6
    pylstm_store(&pylstm_idle_wait_us, <long> (seconds * 1e6 + 0.5))
    return old


def calls_in_progress():
    """Kernel calls running now in this process (for tests)."""
    return pylstm_calls()


def kernel_threads():
    """How many threads a kernel call can use in this build: 2 where the
    platform has threads (``_parallel.h``), else 1."""
    return 2 if PYLSTM_THREADS else 1
