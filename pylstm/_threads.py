"""BLAS thread policy for the kernels.

The recurrent GEMMs of an LSTM are small (batch x hidden x 4 hidden) and
there are T of them per call. Waking BLAS worker threads for each costs more
than it saves below a size, and on a busy machine it costs many times the
work itself. The kernels therefore run single-threaded BLAS when a per-step
product that BLAS computes is small (:func:`thread_plan`), and leave BLAS's
own setting alone otherwise: the products of pylstm's packed-weight loop
(``src/_kernels.c``) never call BLAS, and the whole-sequence GEMMs are large.

The switch applies to the BLAS library that the kernels call (SciPy's, see
:func:`_kernel_libraries`), through its C functions where it is OpenBLAS. It
is reference-counted under a lock, so concurrent calls from several Python
threads restore the caller's setting exactly once, when the last of them
leaves.

Interrupts and fork
-------------------
A ``KeyboardInterrupt`` is raised in the main thread between any two
bytecodes, also inside a context manager's ``__enter__`` or ``__exit__`` and
between a lock's acquisition and the ``try`` meant to release it. Nothing
here may then be left held: the module lock is only ever taken by ``with``
(atomic for a C lock), a BLAS switch is recorded as a weak reference to its
context manager, so that one whose ``__exit__`` never ran is noticed (the
reference dies with the interrupted frame) and the setting given back, and
:func:`run_directions` does not return, normally or by an exception, while
its second direction still runs on the worker thread and writes into the
layer's work arrays.

A public method of an estimator runs inside :class:`model_use`, which refuses
a call made while another thread fits the same model (with a
``RuntimeError`` that names both) rather than let it drop the fit's caches.

After ``os.fork()`` the child has none of the parent's threads: the helper
threads of :func:`run_directions` are forgotten (the child starts its own
when it needs one), the module lock is replaced, and the switches made by
threads that the child does not have are given back
(:func:`_after_fork_in_child`). The compiled kernels' worker thread is reset
by their own ``pthread_atfork`` handler (``src/_parallel.h``).
"""

import _thread
import ctypes
import functools
import itertools
import os
import queue
import threading
import weakref
from pathlib import Path

from ._tuning import SINGLE_THREAD_BELOW, WHOLE_SEQUENCE_ONE_THREAD_BELOW

# Reentrant: a hold's weak-reference callback may run in a thread that holds
# it already (when the garbage collector frees an abandoned switch there).
_lock = threading.RLock()
#: ``restore``: the settings that the first switch replaced, given back when
#: no hold is left; ``holds``: weak references to the entered switches.
_state = {"controller": None, "holds": [], "restore": None}


class _Blas:
    """One loaded BLAS library's thread count, read and set.

    For OpenBLAS with its own (pthreads) pool, through the library's C
    functions (``openblas_get_num_threads`` / ``openblas_set_num_threads``,
    under SciPy's and NumPy's symbol prefixes and suffixes): a small
    training step switches twice, and threadpoolctl's Python layers cost
    more than the step's own Python (bench_lstm.py, 1 x 100 x 32 x 128).
    Other libraries go through threadpoolctl.
    """

    def __init__(self, lib):
        self.lib = lib
        self.filepath = lib.filepath
        self._get = self._set = None
        if (lib.internal_api == "openblas"
                and getattr(lib, "threading_layer", None) == "pthreads"):
            try:
                dll = ctypes.CDLL(lib.filepath)
            except OSError:  # pragma: no cover - the library is loaded already
                return
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
                get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    self._get, self._set = get, put
                    break

    @property
    def num_threads(self):
        return self._get() if self._get is not None else self.lib.num_threads

    def set_num_threads(self, n):
        if self._set is not None:
            self._set(n)
        else:
            _set_num_threads(self.lib, n)


def _kernel_libraries(libs):
    """The libraries that pylstm's kernels call: SciPy's BLAS (``cython_blas``).

    A SciPy wheel brings its own OpenBLAS in ``scipy.libs`` next to the
    package; NumPy's (used by no kernel) is then left alone. If none lies
    there (SciPy linked to a system BLAS, maybe NumPy's too), every BLAS.
    """
    try:
        import scipy
    except ImportError:  # pragma: no cover - a dependency
        return libs
    home = Path(scipy.__file__).resolve().parent
    dirs = {home, home.parent / "scipy.libs"}
    own = [b for b in libs if Path(b.filepath).resolve().parent in dirs]
    return own or libs


def _controller():
    """``(all BLAS libraries, those the kernels call)``, or False without threadpoolctl."""
    if _state["controller"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _state["controller"] = False
        else:
            import scipy.linalg.cython_blas  # noqa: F401 - loads the kernels' BLAS first
            libs = [_Blas(lib) for lib in
                    ThreadpoolController().select(user_api="blas").lib_controllers]
            _state["controller"] = (libs, _kernel_libraries(libs))
    return _state["controller"]


def _set_num_threads(lib, n):
    """``lib.set_num_threads(n)`` from any thread (the caller holds ``_lock``).

    threadpoolctl (>= 3.8) lets only one "controlling" thread resize a
    process-wide OpenBLAS pool and silently ignores the others; pylstm
    serializes its own changes under ``_lock``, so it takes control for the
    call and gives it back.
    """
    clear = getattr(lib, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    lib.set_num_threads(n)
    if clear is not None:
        clear()


def _give_back():
    """Restore the caller's BLAS setting if no switch is held any more (holds ``_lock``).

    Weak references to switches that were never left (their frame ended by
    an exception before ``__exit__`` ran) are dropped first.
    """
    holds = _state["holds"]
    if holds:
        holds[:] = [ref for ref in holds if ref() is not None]
    restore = _state["restore"]
    if not holds and restore is not None:
        for lib, n in restore:
            if n != 1:
                lib.set_num_threads(n)
        _state["restore"] = None


def _hold_ended(ref):
    """Weak-reference callback: a switch object died while still held.

    That is a block whose ``__exit__`` never ran (normally ``__exit__``
    drops the reference first, and a dropped reference calls nothing).
    """
    if ref in _state["holds"]:
        with _lock:
            _give_back()


def _drop_hold(cm):
    holds = _state["holds"]
    for i, ref in enumerate(holds):
        if ref() is cm:
            del holds[i]
            break


class single_threaded_blas:  # noqa: N801 - used as a function, like contextlib's
    """Run the block with one BLAS thread when ``active`` (nested and thread safe).

    A class rather than a generator-based context manager: it is entered
    twice per training step, and the class costs less per entry and exit.
    A block left by an exception that skipped ``__exit__`` (an interrupt at
    its first bytecode) gives the setting back when this object dies.

    Examples
    --------
    >>> from pylstm._threads import single_threaded_blas
    >>> with single_threaded_blas():
    ...     pass
    """

    __slots__ = ("active", "__weakref__")

    def __init__(self, active=True):
        self.active = active

    def __enter__(self):
        if not self.active:
            return None
        with _lock:
            _give_back()
            holds = _state["holds"]
            first = not holds
            # Registered before the switch: an interrupt from here on leaves
            # a hold that dies with this object, and the setting comes back.
            holds.append(weakref.ref(self, _hold_ended))
            if first:
                try:
                    ctl = _controller()
                    if ctl:
                        _state["restore"] = [(lib, lib.num_threads) for lib in ctl[1]]
                        for lib, n in _state["restore"]:
                            if n != 1:
                                lib.set_num_threads(1)
                except BaseException:
                    # Not entered: undone at once (a traceback kept by the
                    # caller would keep this object, and its hold, alive).
                    _drop_hold(self)
                    _give_back()
                    raise
        return None

    def __exit__(self, *exc):
        if not self.active:
            return False
        with _lock:
            _drop_hold(self)
            _give_back()
        return False


def run_to_completion(fn, *args):
    """``fn(*args)``, called again if an interrupt cuts it short; then the interrupt.

    For restoring steps (copying saved weights back) that must not stop
    half-way; ``fn`` must be idempotent. A ``KeyboardInterrupt`` raised
    meanwhile is re-raised once ``fn`` has run to its end.

    Examples
    --------
    >>> from pylstm._threads import run_to_completion
    >>> run_to_completion(print, "restored")
    restored
    """
    interrupted = None
    while True:
        try:
            fn(*args)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def wants_single_thread(batch, hidden):
    """True when the per-step recurrent GEMM is small enough for one thread.

    Examples
    --------
    >>> from pylstm._threads import wants_single_thread
    >>> wants_single_thread(32, 64), wants_single_thread(256, 512)
    (True, False)
    """
    return batch * 4 * hidden * hidden < SINGLE_THREAD_BELOW


def caller_threads():
    """The BLAS thread count the caller allows (its setting, before any switch here).

    Inside :func:`single_threaded_blas` this is the setting it will restore;
    outside, the current one (the largest over the BLAS libraries that the
    kernels call).
    A caller that limited BLAS to one thread (``threadpool_limits(1)``, or
    joblib in its workers) gets no extra thread from pylstm either.

    Examples
    --------
    >>> from threadpoolctl import threadpool_limits
    >>> from pylstm._threads import caller_threads
    >>> with threadpool_limits(limits=1, user_api="blas"):
    ...     caller_threads()
    1
    """
    with _lock:
        _give_back()
        restore = _state["restore"]
        if restore:
            return max(n for _, n in restore)
        ctl = _controller()
        if ctl and ctl[1]:
            return max(lib.num_threads for lib in ctl[1])
    return os.cpu_count() or 1


def parallel_directions(batch, hidden):
    """Whether the two directions of a layer should run on two threads.

    They do when the per-step product is small (:func:`wants_single_thread`:
    each direction then runs one BLAS thread) and the caller allows two or
    more threads.
    """
    return wants_single_thread(batch, hidden) and caller_threads() >= 2


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one).

    Examples
    --------
    >>> from pylstm._threads import usable_cpus
    >>> usable_cpus() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1




_local = threading.local()
#: Python threads inside a pylstm model call (:func:`model_call`) now.
_callers = {"threads": 0}
_callers_lock = _thread.allocate_lock()


def model_call(method):
    """Count the calling thread as inside pylstm while ``method`` runs.

    A model's forward and backward passes (the layer's, and the networks'
    around it) are counted, nested calls once per thread. While two threads
    are inside, no call splits its time loop: each thread already has a core,
    and a split would put three threads on two cores, whose barriers wait for
    a descheduled partner (``tests/threads/test_concurrency.py``). Counting whole
    model calls, not kernel calls, covers the Python between a thread's
    kernel calls, where the other thread would otherwise find itself alone.
    """
    @functools.wraps(method)
    def counted(*args, **kwargs):
        depth = getattr(_local, "depth", 0)
        if depth == 0:
            with _callers_lock:
                _callers["threads"] += 1
        _local.depth = depth + 1
        try:
            return method(*args, **kwargs)
        finally:
            _local.depth = depth
            if depth == 0:
                with _callers_lock:
                    _callers["threads"] -= 1
    return counted


def loop_threads():
    """Threads a kernel call may share its work between: 2 or 1.

    Two when the process may use two CPUs, the caller allows two or more
    threads (its BLAS setting) and no other thread is inside a pylstm model
    call (:func:`model_call`), which would hold the second core.
    """
    return 2 if (usable_cpus() >= 2 and _callers["threads"] <= 1
                 and caller_threads() >= 2) else 1


def blas_beyond_loop():
    """Whether BLAS's own threads may reach past the kernels' two cores.

    True when the caller allows BLAS more than two threads and the process
    may use more than two CPUs. Only then may a large product outside the
    kernels run on BLAS's threads: where they cannot do more than the
    kernels' two threads, the woken BLAS workers keep spinning after the
    call and take the cores that the next kernel call splits its loop over
    (benchmarks/bench_quality.py, the language model's validation).

    Examples
    --------
    >>> from threadpoolctl import threadpool_limits
    >>> from pylstm._threads import blas_beyond_loop
    >>> with threadpool_limits(limits=2, user_api="blas"):
    ...     blas_beyond_loop()
    False
    """
    return min(caller_threads(), usable_cpus()) > 2


def thread_plan(batch, hidden, directions, blas_steps, work=None):
    """How the kernel calls of one batch use threads.

    Returns ``(one_blas_thread, parallel_directions, loop_threads)``.
    ``blas_steps``: whether some per-step product goes through BLAS (see
    ``pylstm._lstm.needs_w_hh_t``); the packed-weight loop of the others
    never calls BLAS. BLAS is held to one thread only where its threads
    would be woken at every step of a small product, or where the two
    directions already take a core each. Otherwise the whole-sequence
    GEMMs (input projection, weight and input gradients) use the caller's
    threads, and, when the caller allows two or more, two threads share each
    kernel's time loop (``loop_threads = 2``; whether it then splits is
    ``_split_ok`` in ``src/_split.pxi``) unless another thread is inside a
    pylstm model call (:func:`model_call`).
    ``work``, the multiply-adds of the whole-sequence products when given,
    keeps small calls on one BLAS thread
    (:data:`WHOLE_SEQUENCE_ONE_THREAD_BELOW`).

    Examples
    --------
    >>> from threadpoolctl import threadpool_limits
    >>> from pylstm._threads import thread_plan
    >>> with threadpool_limits(limits=1, user_api="blas"):
    ...     thread_plan(64, 128, 1, blas_steps=True), thread_plan(64, 128, 1, blas_steps=False)
    ((True, False, 1), (False, False, 1))
    """
    parallel = directions == 2 and parallel_directions(batch, hidden)
    split = not parallel and not blas_steps and loop_threads() == 2
    one_thread = (split or (wants_single_thread(batch, hidden) and (blas_steps or parallel))
                  or (work is not None and work < WHOLE_SEQUENCE_ONE_THREAD_BELOW))
    return one_thread, parallel, 2 if split else 1


class _Job:
    """``fn(arg)`` for a helper thread, which may run it, or skip it if claimed first.

    ``claim`` decides who runs it (the helper, or the caller that takes it
    back); ``finished`` and ``done`` (released then) tell that the helper is
    through with it, run or skipped. All of them are C-level operations, so
    an interrupt between two bytecodes of the caller cannot leave the
    hand-over half done.
    """

    __slots__ = ("fn", "arg", "result", "error", "finished", "done", "claim")

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg
        self.result = self.error = None
        self.finished = False
        self.claim = _thread.allocate_lock()
        self.done = _thread.allocate_lock()
        self.done.acquire()

    def settle(self):
        """Return once the job will not run, or has run, on the helper.

        Takes the job back if the helper has not started it (it then never
        will), else waits for the helper to finish. An interrupt meanwhile
        (Python runs signal handlers in the main thread, here) does not cut
        the wait short: it is re-raised once the helper is through, so that
        no caller goes on while the helper still writes into arrays that the
        next call may be given.
        """
        interrupted = None
        while True:
            try:
                if not self.claim.acquire(blocking=False):
                    while not self.finished:
                        self.done.acquire()
                break
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                interrupted = exc
        if interrupted is not None:
            raise interrupted


class _Helper:
    """A daemon thread running :class:`_Job` objects from its queue, one at a time."""

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name="pylstm-directions",
                                       daemon=True)
        self.thread.start()

    def _main(self):
        jobs = self.jobs
        while True:
            job = jobs.get()
            if job.claim.acquire(blocking=False):
                try:
                    job.result = job.fn(job.arg)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    job.error = exc
            _pool["idle"].append(self)  # before the caller may look for a helper again
            job.finished = True
            job.done.release()
            # Not kept while idle: the job's function holds the layer's work arrays.
            job = None


#: Helper threads: those waiting for work (list operations are atomic under
#: the GIL), and all of them. One per caller running directions at a time,
#: started on demand, up to one per usable CPU.
_pool = {"idle": [], "all": []}


def _take_helper():
    """An idle helper, else a new one, else (as many as CPUs) any: the job then
    waits in its queue, and the caller takes it back if it is not started in time."""
    try:
        return _pool["idle"].pop()
    except IndexError:
        pass
    helpers = _pool["all"]
    if len(helpers) < max(2, usable_cpus()):
        helper = _Helper()
        helpers.append(helper)
        return helper
    return helpers[next(_turns) % len(helpers)]


_turns = itertools.count()


def run_directions(run, n_directions, parallel):
    """``[run(0), run(1), ...]``, running direction 1 on a helper thread if ``parallel``.

    The two directions of a bidirectional layer are independent and the
    kernels release the GIL, so on two or more cores they run side by side
    (each with one BLAS thread). Results are the same either way. The
    calling thread takes direction 1 back if the helper has not started it
    when direction 0 is done. Whether it returns or raises (an interrupt
    included), direction 1 is over: run, or never started.

    Examples
    --------
    >>> from pylstm._threads import run_directions
    >>> run_directions(lambda d: d * 10, 2, parallel=True)
    [0, 10]
    """
    if n_directions == 1 or not parallel or usable_cpus() < 2:
        return [run(d) for d in range(n_directions)]
    job = _Job(run, 1)
    try:
        _take_helper().jobs.put(job)
        first = run(0)
        if job.claim.acquire(blocking=False):  # not started yet: run it here
            job.finished = True  # for settle(): the helper will skip it
            return [first, run(1)]
    finally:
        job.settle()
    if job.error is not None:
        raise job.error
    return [first, job.result]


#: The models in use by a public method now: id(model) -> weak references to the
#: :class:`model_use` objects of those calls (a call whose ``__exit__`` never ran
#: stops counting when its frame, and so its object, dies).
_uses = {}
_uses_changed = threading.Condition(threading.Lock())
#: Seconds between looks at the calls that a fit waits for (a call whose object
#: died without ``__exit__`` notifies nobody).
_USE_POLL_SECONDS = 0.05


def _live_uses(key):
    """The live :class:`model_use` objects of model ``key`` (holds ``_uses_changed``)."""
    refs = [ref for ref in _uses.get(key, ()) if ref() is not None]
    if refs:
        _uses[key] = refs
    else:
        _uses.pop(key, None)
    return [use for use in (ref() for ref in refs) if use is not None]


class model_use:  # noqa: N801 - used as a function, like contextlib's
    """A public method's use of a model, refused while another thread fits it.

    Training changes the weights in place and keeps the layers' BPTT caches
    between the forward and the backward pass of each batch; an inference
    call from another thread meanwhile reads half-updated weights and drops
    those caches, which broke the fit with an internal error. So a call made
    while another thread runs ``fit``/``partial_fit`` on the same model
    raises a ``RuntimeError`` naming both; a fit that starts while other
    threads run inference on the model waits for those calls to return
    (new ones are refused from then on). Calls of one thread never exclude
    each other, and any number of inference calls run together.

    Examples
    --------
    >>> from pylstm._threads import model_use
    >>> model = object()
    >>> with model_use(model, "predict"):
    ...     pass
    """

    __slots__ = ("key", "owner", "method", "fitting", "thread", "__weakref__")

    def __init__(self, model, method, fitting=False):
        self.key = id(model)
        self.owner = type(model).__name__
        self.method = method
        self.fitting = fitting
        self.thread = threading.get_ident()

    def _others(self, fitting):
        return [use for use in _live_uses(self.key)
                if use.fitting == fitting and use.thread != self.thread]

    def __enter__(self):
        with _uses_changed:
            fits = self._others(fitting=True)
            if fits:
                raise RuntimeError(
                    f"{self.owner}.{self.method} was called while {fits[0].method} is running "
                    "on the same estimator in another thread; wait for it to return, or use "
                    "a copy of the estimator (copy.deepcopy) in this thread"
                )
            _uses.setdefault(self.key, []).append(weakref.ref(self))
            if self.fitting:
                try:
                    while self._others(fitting=False):
                        _uses_changed.wait(_USE_POLL_SECONDS)
                except BaseException:  # an interrupt while waiting: not entered
                    self._leave()
                    raise
        return self

    def _leave(self):
        refs = _uses.get(self.key, [])
        refs[:] = [ref for ref in refs if ref() is not None and ref() is not self]
        if not refs:
            _uses.pop(self.key, None)
        _uses_changed.notify_all()

    def __exit__(self, *exc):
        with _uses_changed:
            self._leave()
        return False


def inference(method):
    """Run the model's public ``method`` as a :class:`model_use`: a fit in
    another thread makes it raise a clear error instead of breaking that fit."""
    @functools.wraps(method)
    def used(self, *args, **kwargs):
        with model_use(self, method.__name__):
            return method(self, *args, **kwargs)
    return used


def _after_fork_in_child():
    """Forget the parent's threads in a forked child (see the module docstring).

    The helper threads do not exist in the child, nor do the threads that
    held a BLAS switch: their holds are dropped and the caller's setting
    comes back at the next use of the lock (:func:`_give_back`). The lock
    may have been held by one of those threads: a new one replaces it. The
    models' uses (:class:`model_use`) were the parent threads' too.
    """
    global _lock, _callers_lock, _uses_changed
    _lock = threading.RLock()
    _callers_lock = _thread.allocate_lock()
    _uses_changed = threading.Condition(threading.Lock())
    _uses.clear()
    _pool["idle"] = []
    _pool["all"] = []
    _state["holds"] = []
    _callers["threads"] = 0
    _local.depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
