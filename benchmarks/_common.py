"""Scaffolding shared by the benchmark scripts ``bench_lstm.py``, ``bench_fit.py`` and
``bench_lm.py``.

Not a package module: the scripts are run as files (``python benchmarks/bench_lm.py``),
so their folder is first on ``sys.path`` and they ``import _common`` directly.

``threadpoolctl`` (which every script needs) is imported here: when it is
missing, importing this module ends the script with a message that names it.
Scripts that call threadpoolctl themselves take it from here
(``from _common import threadpoolctl``).

What is here:

* measuring other processes' load: :class:`ForeignCPU`, :func:`idle_share`,
  :func:`load_average` and the threshold :data:`BUSY`;
* timing: :func:`timed` (one call) and :func:`timed_alternately` (two or more
  implementations, alternating within each repeat), :func:`profile_top`;
* the machine and libraries: :func:`cpu_model`, :func:`system_info`,
  :func:`torch_details`, :func:`environment_variables`, :func:`library_summaries`,
  :func:`environment`, :func:`import_libraries`;
* settings of the run: :func:`thread_limits`, :func:`steady_malloc`,
  :func:`malloc_setting`, :func:`add_profile_option`, :func:`add_common_options`;
* output: :func:`progress`, the header pieces (:func:`print_title`,
  :func:`print_environment`, :func:`print_malloc`, :func:`print_foreign_start`),
  :func:`print_column_heads`, :func:`save_json`, :func:`geometric_mean`.
"""

from __future__ import annotations

import contextlib
import cProfile
import ctypes
import ctypes.util
import gc
import importlib
import io
import json
import os
import platform
import pstats
import re
import sys
import time

import numpy as np

try:
    import threadpoolctl
except ImportError:  # pragma: no cover - message for the user
    sys.exit(f"{os.path.basename(sys.argv[0])} needs threadpoolctl: pip install threadpoolctl")

#: Figures are marked when other processes took more than this share of the CPUs.
BUSY = 0.15
#: Environment variables that change what the BLAS/OpenMP libraries do; the header shows them.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The two of ENV_VARS that override OpenBLAS's own choice of kernel and cache size.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --------------------------------------------------------------------------- output
def progress(msg):
    """Print a progress message to stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def save_json(path, payload):
    """Write ``payload`` to ``path`` as indented JSON, creating its folder.

    Parameters
    ----------
    path : str
        The file to write.
    payload : dict
        What to write; values JSON does not know are written as ``str(value)``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    print(f"wrote {path}")


def print_column_heads(head):
    """Print a table's column headings and a rule of the same width under them."""
    print(head)
    print("-" * len(head))


def geometric_mean(values):
    """Geometric mean of positive numbers, as a float."""
    return float(np.exp(np.mean(np.log(values))))


# --------------------------------------------------------------------------- load
class ForeignCPU:
    """Share of the machine's CPU time used by other processes between start and stop.

    Linux only (``/proc/stat``); ``stop`` returns None elsewhere. Our own
    threads, spinning BLAS/OpenMP workers included, are not counted.
    """

    def __init__(self):
        self._t0 = self._busy0 = self._self0 = None

    @staticmethod
    def _busy_seconds():
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal [guest guest_nice]
        busy = sum(fields[:3]) + sum(fields[5:8])
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _self_seconds():
        t = os.times()
        return t.user + t.system

    def start(self):
        """Start measuring; returns ``self``."""
        self._t0 = time.perf_counter()
        self._busy0 = self._busy_seconds()
        self._self0 = self._self_seconds()
        return self

    def stop(self):
        """Share of the CPUs (0 to 1) that other processes used, or None."""
        busy = self._busy_seconds()
        if busy is None or self._busy0 is None:
            return None
        wall = time.perf_counter() - self._t0
        foreign = (busy - self._busy0) - (self._self_seconds() - self._self0)
        return max(0.0, foreign) / (wall * (os.cpu_count() or 1)) if wall > 0 else None

    def wall(self):
        """Seconds since :meth:`start`."""
        return time.perf_counter() - self._t0


def idle_share(seconds=0.5):
    """Share of the CPUs other processes use while this one sleeps ``seconds``."""
    meter = ForeignCPU().start()
    time.sleep(seconds)
    return meter.stop()


def load_average():
    """``os.getloadavg()``, or None where the system does not provide it."""
    try:
        return os.getloadavg()
    except OSError:
        return None


# --------------------------------------------------------------------------- timing
def timed(fn):
    """Run ``fn`` after a full collection, measuring other processes' load meanwhile.

    The garbage collector stays on during the call, as it is for a user.

    Returns
    -------
    result
        What ``fn`` returned.
    share : float or None
        Share of the CPUs other processes used during the call (:class:`ForeignCPU`).
    cpu : float
        CPU seconds this process used (``time.process_time``).
    """
    gc.collect()
    meter = ForeignCPU().start()
    cpu0 = time.process_time()
    result = fn()
    cpu = time.process_time() - cpu0
    return result, meter.stop(), cpu


def timed_alternately(calls, repeats):
    """Time several implementations ``repeats`` times each, alternating their order.

    Within even repeats the implementations run in the order of ``calls``,
    within odd ones in reverse, so that all see the same background load.

    Parameters
    ----------
    calls : dict
        Name -> function without arguments that returns ``(seconds, result)``.
    repeats : int
        Calls per implementation.

    Returns
    -------
    samples, shares, cpus : dict
        Name -> list over repeats of the seconds ``fn`` reported, of the
        other processes' CPU share and of this process's CPU seconds (see
        :func:`timed`).
    last : dict
        Name -> the ``result`` of its last call.
    """
    names = list(calls)
    samples, shares, cpus = ({name: [] for name in names} for _ in range(3))
    last = {}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            (elapsed, last[name]), share, cpu = timed(calls[name])
            samples[name].append(elapsed)
            shares[name].append(share)
            cpus[name].append(cpu)
    return samples, shares, cpus, last


def profile_top(fn, top):
    """Call ``fn`` under cProfile; its top ``top`` functions by own time, as text.

    Paths inside the folder that holds the installed ``pylstm`` are shown
    relative to it.
    """
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    root = os.path.dirname(os.path.dirname(importlib.import_module("pylstm").__file__))
    return buf.getvalue().replace(root + os.sep, "")


# --------------------------------------------------------------------------- environment
def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo`` (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info(pylstm):
    """Python, platform and CPU, and the versions of numpy, scipy, pylstm and threadpoolctl.

    Returns
    -------
    dict
        ``python``, ``platform``, ``cpu``, ``cpu_count``, ``numpy``, ``scipy``,
        ``pylstm``, ``pylstm_path`` (the folder of the imported package) and
        ``threadpoolctl``.
    """
    import scipy

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pylstm": getattr(pylstm, "__version__", "?"),
        "pylstm_path": os.path.dirname(pylstm.__file__),
        "threadpoolctl": threadpoolctl.__version__,
    }


def torch_details(torch):
    """torch's version, thread count, CPU capability, BLAS and whether oneDNN is on.

    Returns
    -------
    dict
        ``version``, ``num_threads``, ``cpu_capability`` (``"?"`` when torch
        cannot tell), ``blas`` (e.g. ``mkl 2024.2-Product``) and ``mkldnn``.
    """
    info = {"version": torch.__version__, "num_threads": torch.get_num_threads()}
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        info["cpu_capability"] = "?"
    config = torch.__config__.show()
    m = re.search(r"BLAS_INFO=(\w+)", config)
    info["blas"] = m.group(1) if m else "?"
    m = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    if m:
        info["blas"] += f" {m.group(1)}"
    info["mkldnn"] = bool(torch.backends.mkldnn.is_available()
                          and torch.backends.mkldnn.enabled)
    return info


def environment_variables():
    """The value of each of :data:`ENV_VARS`, ``"unset"`` where absent."""
    return {k: os.environ.get(k, "unset") for k in ENV_VARS}


def library_summaries():
    """The BLAS/OpenMP libraries threadpoolctl finds, with the fields the headers show."""
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads",
            "threading_layer", "filepath")
    return [{k: info.get(k) for k in keys} for info in threadpoolctl.threadpool_info()]


def environment(pylstm, torch, torch_error, threads):
    """What ``bench_fit.py`` and ``bench_lm.py`` report about the machine and libraries.

    Parameters
    ----------
    pylstm : module
        The imported package.
    torch : module or None
        torch, or None when it is not used.
    torch_error : str or None
        Why torch could not be imported.
    threads : int or None
        The ``--threads`` option.

    Returns
    -------
    dict
        :func:`system_info` plus ``sklearn``, ``torch`` (:func:`torch_details`
        or None), ``torch_error``, ``threads_option``, ``env``
        (:func:`environment_variables`), ``libraries``
        (:func:`library_summaries`) and ``foreign_cpu_start``
        (:func:`idle_share`).
    """
    import sklearn

    return {
        **system_info(pylstm),
        "sklearn": sklearn.__version__,
        "torch": torch_details(torch) if torch is not None else None,
        "torch_error": torch_error,
        "threads_option": threads,
        "env": environment_variables(),
        "libraries": library_summaries(),
        "foreign_cpu_start": idle_share(),
    }


def import_libraries(use_torch):
    """Import scipy's BLAS, pylstm and (with ``use_torch``) torch.

    Returns
    -------
    pylstm : module
    torch : module or None
        None when not asked for or when the import failed.
    error : str or None
        ``"ExceptionName: message"`` of a failed torch import.
    """
    importlib.import_module("scipy.linalg.cython_blas")
    pylstm = importlib.import_module("pylstm")
    torch, error = None, None
    if use_torch:
        try:
            torch = importlib.import_module("torch")
        except Exception as exc:  # any failure means "no torch"
            error = f"{type(exc).__name__}: {exc}"
    return pylstm, torch, error


# --------------------------------------------------------------------------- header
def print_title(title, width, env):
    """The top of every header: the title between rules, Python, platform and CPU."""
    print("=" * width)
    print(title)
    print("=" * width)
    print(f"python {env['python']}  |  {env['platform']}")
    print(f"cpu: {env['cpu']}  ({env['cpu_count']} logical cpus)")


def print_environment(env):
    """The versions, torch, environment, malloc and library lines of an :func:`environment`."""
    t = env["torch"]
    tv = t["version"] if t else f"not available ({env['torch_error'] or 'disabled'})"
    print(f"numpy {env['numpy']}  |  scipy {env['scipy']}  |  scikit-learn {env['sklearn']}  |  "
          f"pylstm {env['pylstm']} ({env['pylstm_path']})  |  torch {tv}")
    if t:
        print(f"torch: BLAS {t['blas']}, cpu capability {t['cpu_capability']}, "
              f"mkldnn {'on' if t['mkldnn'] else 'off'}, "
              f"torch.get_num_threads() = {t['num_threads']}")
    e = env["env"]
    for key in OPENBLAS_OVERRIDES:
        state = "unset" if e[key] == "unset" else f"SET to {e[key]!r}"
        print(f"{key}: {state}")
    others = ", ".join(f"{k}={v}" for k, v in e.items() if k not in OPENBLAS_OVERRIDES)
    print(f"other environment: {others}")
    print_malloc(env)
    print("threadpoolctl (BLAS / OpenMP libraries, after --threads):")
    for lib in env["libraries"]:
        print(f"  - {lib['internal_api']} {lib['version']} [{lib['user_api']}] "
              f"architecture={lib['architecture'] or '-'} num_threads={lib['num_threads']} "
              f"({os.path.basename(lib['filepath'] or '?')})")
    opt = env["threads_option"]
    print(f"--threads: {opt if opt is not None else 'not given (library defaults)'}")


def print_malloc(env):
    """The ``malloc:`` line: :func:`steady_malloc`'s outcome, or glibc's defaults."""
    print(f"malloc: {env.get('malloc', 'glibc defaults')}")


def print_foreign_start(env):
    """The share of the CPUs other processes used before the run.

    Followed by the load average when ``env`` has one (``load_average_start``).
    """
    share = env["foreign_cpu_start"]
    if share is None:
        return
    load = env.get("load_average_start")
    print(f"CPU used by other processes before the run: {100 * share:.0f}%"
          + (f"  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})" if load else ""))


# --------------------------------------------------------------------------- settings
@contextlib.contextmanager
def thread_limits(n_threads, torch=None, cap_pools=True):
    """Cap the BLAS/OpenMP pools at ``n_threads`` and set torch's thread count.

    Parameters
    ----------
    n_threads : int or None
        Threads per pool; None leaves every library at its default.
    torch : module or None
        Gets ``torch.set_num_threads(n_threads)``.
    cap_pools : bool
        False leaves the BLAS/OpenMP pools alone (torch is still set).

    The pools' limits are restored on exit; torch's count is not.
    """
    limiter = None
    if n_threads is not None and cap_pools:
        limiter = threadpoolctl.threadpool_limits(limits=n_threads)
    if n_threads is not None and torch is not None:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def steady_malloc():
    """Keep freed memory in the process (glibc mallopt); a description, or why not.

    Sets M_MMAP_THRESHOLD to glibc's maximum (32 MiB on 64-bit), so that
    smaller blocks come from the heap, and M_TOP_PAD and M_TRIM_THRESHOLD
    to 1 GiB, so that the heap keeps what is freed: later allocations reuse
    pages already mapped instead of faulting in fresh ones. (Measured with
    torch 2.13 at 64x100x64x128 float32: a training step takes 37 ms with
    glibc's defaults and 23 ms with these settings; M_TOP_PAD is the one
    that matters, M_TRIM_THRESHOLD alone makes it slower, 53 ms.)

    Returns
    -------
    str
        What the ``malloc:`` header line shows.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "not available (no glibc mallopt)"
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mmap_max = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
    settings = {m_mmap_threshold: mmap_max, m_top_pad: 2**30, m_trim_threshold: 2**30}
    if not all(mallopt(key, value) == 1 for key, value in settings.items()):
        return "mallopt refused the settings"
    return (f"steady (mallopt M_MMAP_THRESHOLD={mmap_max}, M_TOP_PAD={2**30}, "
            f"M_TRIM_THRESHOLD={2**30})")


def malloc_setting(args):
    """:func:`steady_malloc` with ``--steady-malloc``, else ``"glibc defaults"``."""
    return steady_malloc() if args.steady_malloc else "glibc defaults"


def add_profile_option(parser):
    """Add ``--profile N``: one cProfile'd pylstm fit per configuration (:func:`profile_top`)."""
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the top N functions of one cProfile'd pylstm fit per "
                             "configuration")


def add_common_options(parser):
    """Add ``--seed``, ``--json`` and ``--steady-malloc``, the last options of every script."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument(
        "--steady-malloc",
        action="store_true",
        help="keep freed memory in the process (glibc mallopt), so that no library "
        "pays page faults for fresh temporaries on every call (see the module docstring)",
    )
