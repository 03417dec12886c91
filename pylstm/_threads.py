"""BLAS thread policy for the kernels.

The recurrent GEMMs of an LSTM are small (batch x hidden x 4 hidden) and
there are T of them per call. Waking BLAS worker threads for each costs more
than it saves below a size, and on a busy machine it costs many times the
work itself. The kernels therefore run single-threaded BLAS when a per-step
product that BLAS computes is small (:func:`thread_plan`), and leave BLAS's
own setting alone otherwise: the products of pylstm's packed-weight loop
(``src/_gemm.h``) never call BLAS, and the whole-sequence GEMMs are large.

The switch applies to the BLAS library that the kernels call (SciPy's, see
:func:`_kernel_libraries`), through its C functions where it is OpenBLAS. It
is reference-counted under a lock, so concurrent calls from several Python
threads restore the caller's setting exactly once, when the last of them
leaves.
"""

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: Per-step recurrent GEMM size (B * 4H * H multiply-adds) below which one
#: BLAS thread is used.
SINGLE_THREAD_BELOW = 16_000_000

_lock = threading.Lock()
_state = {"controller": None, "depth": 0, "restore": None}


class _Blas:
    """One loaded BLAS library's thread count, read and set.

    For OpenBLAS with its own (pthreads) pool, through the library's C
    functions (``openblas_get_num_threads`` / ``openblas_set_num_threads``,
    under SciPy's and NumPy's symbol prefixes and suffixes): 0.4 us for a
    read and two sets, against 10 us through threadpoolctl's Python layers,
    which small training steps paid twice each. Other libraries go through
    threadpoolctl.
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


class single_threaded_blas:  # noqa: N801 - used as a function, like contextlib's
    """Run the block with one BLAS thread when ``active`` (nested and thread safe).

    A class rather than a generator-based context manager: it is entered
    twice per training step (with a switch: 2.4 -> 1.8 us per entry and exit).

    Examples
    --------
    >>> from pylstm._threads import single_threaded_blas
    >>> with single_threaded_blas():
    ...     pass
    """

    __slots__ = ("active",)

    def __init__(self, active=True):
        self.active = active

    def __enter__(self):
        if not self.active:
            return None
        with _lock:
            ctl = _controller()
            if ctl and _state["depth"] == 0:
                _state["restore"] = [(lib, lib.num_threads) for lib in ctl[1]]
                for lib, n in _state["restore"]:
                    if n != 1:
                        lib.set_num_threads(1)
            _state["depth"] += 1
        return None

    def __exit__(self, *exc):
        if not self.active:
            return False
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["restore"]:
                for lib, n in _state["restore"]:
                    if n != 1:
                        lib.set_num_threads(n)
                _state["restore"] = None
        return False


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
        restore = _state["restore"] if _state["depth"] else None
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


#: Multiply-adds of a call's whole-sequence products (about ``n 4H (I + H)``
#: for n valid steps) below which BLAS stays on one thread: waking its workers
#: costs more than they save there (1 x 100 x 32 x 128 training, 8M: 0.57 ms
#: on one thread, 0.77 ms on two; 32 x 50 x 32 x 64, 39M: 1.54 against 1.64).
WHOLE_SEQUENCE_ONE_THREAD_BELOW = 100_000_000


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
    kernel's time loop (``loop_threads = 2``, see ``src/_parallel.h``).
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
    split = (not parallel and not blas_steps and usable_cpus() >= 2
             and caller_threads() >= 2)
    one_thread = (split or (wants_single_thread(batch, hidden) and (blas_steps or parallel))
                  or (work is not None and work < WHOLE_SEQUENCE_ONE_THREAD_BELOW))
    return one_thread, parallel, 2 if split else 1


_pool = {"executor": None}


def run_directions(run, n_directions, parallel):
    """``[run(0), run(1), ...]``, running direction 1 on a worker thread if ``parallel``.

    The two directions of a bidirectional layer are independent and the
    kernels release the GIL, so on two or more cores they run side by side
    (each with one BLAS thread). Results are the same either way.

    Examples
    --------
    >>> from pylstm._threads import run_directions
    >>> run_directions(lambda d: d * 10, 2, parallel=True)
    [0, 10]
    """
    if n_directions == 1 or not parallel or usable_cpus() < 2:
        return [run(d) for d in range(n_directions)]
    with _lock:
        if _pool["executor"] is None:
            _pool["executor"] = ThreadPoolExecutor(max_workers=2,
                                                   thread_name_prefix="pylstm")
        executor = _pool["executor"]
    future = executor.submit(run, 1)
    first = run(0)
    return [first, future.result()]
