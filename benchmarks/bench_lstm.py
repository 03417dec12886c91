"""Side-by-side speed of pylstm.LSTM, a plain NumPy LSTM and torch.nn.LSTM on CPU.

Not a test: a script that prints (and optionally saves) timings.

For each case ``(B, T, I, H)`` (batch, steps, input features, hidden units) and
each dtype it times

* **infer**: ``forward(X, training=False)`` (torch: the module under
  ``torch.no_grad()``);
* **train**: ``forward(X, training=True)`` then ``backward(ones_like(out))``
  (torch: forward, then ``(out * ones).sum().backward()`` with ``X`` requiring
  grad, so that all three compute dX and every weight gradient);

for three implementations with the same weights:

* ``pylstm``: the installed package (Cython kernels on scipy's BLAS);
* ``numpy``: the reference LSTM of this script: one ``np.matmul`` for the
  input projection of all steps, one per step for the recurrence, a Python
  loop over time for forward and BPTT, whole-sequence weight-gradient GEMMs;
  variable lengths by masking. Its gradients are checked against pylstm's;
* ``torch``: ``torch.nn.LSTM(batch_first=True)`` loaded from pylstm's
  ``state_dict`` (only when ``import torch`` works, and not with
  ``--no-torch``); variable lengths through ``pack_padded_sequence``.

Each figure is the median (and interquartile range) over ``--repeats``
samples after ``--warmup`` calls, measured with ``time.perf_counter``; a call
shorter than ``--min-time`` is looped within a sample. Ratios are
``numpy / pylstm`` and ``torch / pylstm``: above 1 means pylstm is faster.
Before timing, outputs, final states and gradients are compared (max relative
error ``max|a - b| / max|b|``).

The machine should be idle: on Linux, samples taken while other processes use
more than 15% of the CPUs (from ``/proc/stat``) are set aside and replaced
after waiting for them (``--busy-wait``, ``--busy-budget``); figures left with
fewer than half quiet samples are marked ``*``.

Threads: pylstm and the NumPy LSTM use OpenBLAS's own thread pools; torch is
set to the same count (``torch.set_num_threads``). ``--threads N`` caps every
BLAS/OpenMP pool with threadpoolctl and sets torch to ``N``.

Usage (from the repository root, the installed package is imported)::

    python benchmarks/bench_lstm.py                       # default cases, both dtypes
    python benchmarks/bench_lstm.py --dtypes float32 --repeats 5
    python benchmarks/bench_lstm.py --cases 16,200,32,64 128,20,64,256 --no-bidi
    python benchmarks/bench_lstm.py --cases 64,100,64,128,2,bi,var   # L=2, bidirectional,
                                                                     # variable lengths
    python benchmarks/bench_lstm.py --large --threads 1 --json results/run.json

Headline figures are run with OpenBLAS left to pick its own kernel and cache
sizes for the CPU, i.e. with the OpenBLAS overrides of some environments removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lstm.py

The header reports whether ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set
and which kernel ("architecture") each OpenBLAS actually uses. Requires
threadpoolctl (``pip install threadpoolctl``, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

try:
    import threadpoolctl
except ImportError:  # pragma: no cover - message for the user
    sys.exit("bench_lstm.py needs threadpoolctl: pip install threadpoolctl")

DEFAULT_CASES = ((32, 50, 32, 64), (64, 100, 64, 128), (64, 100, 128, 256), (1, 100, 32, 128))
LARGE_CASES = ((256, 50, 128, 512), (1, 1000, 64, 256))
BIDI_CASE = (64, 100, 64, 128)
IMPLS = ("pylstm", "numpy", "torch")
MODES = ("infer", "train")
#: Agreement flagged when the max relative error exceeds these.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: Timings are marked when other processes took more than this share of the CPUs.
BUSY = 0.15


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    B: int
    T: int
    I: int  # noqa: E741 - the conventional name of the input size
    H: int
    num_layers: int = 1
    bidirectional: bool = False
    variable_lengths: bool = False

    @property
    def label(self):
        s = f"{self.B}x{self.T}x{self.I}x{self.H}"
        extra = []
        if self.num_layers != 1:
            extra.append(f"L{self.num_layers}")
        if self.bidirectional:
            extra.append("bi")
        if self.variable_lengths:
            extra.append("var")
        return s + (" " + "-".join(extra) if extra else "")


def parse_case(text):
    """Parse ``B,T,I,H[,L][,bi][,var]`` (separators ``,``, ``x`` or ``:``)."""
    parts = [p for p in re.split(r"[,x:\s]+", text.strip().lower()) if p]
    try:
        dims = [int(p) for p in parts[:4]]
    except ValueError:
        dims = []
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"case must be B,T,I,H[,L][,bi][,var], got {text!r}")
    layers, bi, var = 1, False, False
    for p in parts[4:]:
        if p.isdigit() and int(p) >= 1:
            layers = int(p)
        elif p in ("bi", "bidi", "bidirectional"):
            bi = True
        elif p in ("var", "lengths"):
            var = True
        else:
            raise argparse.ArgumentTypeError(f"unknown case option {p!r} in {text!r}")
    return Case(*dims, num_layers=layers, bidirectional=bi, variable_lengths=var)


# --------------------------------------------------------------------------- NumPy LSTM
def _sigmoid(z, out=None):
    """Logistic function through tanh (stable, keeps the dtype)."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class NumpyLSTM:
    """A plain NumPy LSTM, batch-first API, PyTorch layout and gate order (i, f, g, o).

    Forward: the input projection of all steps is one matmul, the recurrence a
    Python loop with one matmul per step. Variable lengths are handled by
    masking (state frozen and output zero past a sequence's length); the
    reverse direction reads each sequence reversed within its own length.
    Backward is full BPTT through the same loop, with whole-sequence GEMMs for
    the weight gradients and dX.
    """

    def __init__(self, state_dict, input_size, hidden_size, num_layers, bidirectional, dtype):
        self.I, self.H = input_size, hidden_size
        self.L, self.D = num_layers, 2 if bidirectional else 1
        self.dtype = np.dtype(dtype)
        self.params = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in state_dict.items()}
        self._cache = None

    def _suffix(self, layer, d):
        return f"_l{layer}" + ("_reverse" if d else "")

    # ------------------------------------------------------------- one direction
    def _dir_forward(self, x, mask, w_ih, w_hh, bias, training):
        T, B, In = x.shape
        H = self.H
        z_all = (x.reshape(T * B, In) @ w_ih.T).reshape(T, B, 4 * H)
        z_all += bias
        h = np.zeros((B, H), dtype=self.dtype)
        c = np.zeros((B, H), dtype=self.dtype)
        out = np.empty((T, B, H), dtype=self.dtype)
        if training:
            acts = z_all  # activated gates overwrite the pre-activations
            tanh_c = np.empty((T, B, H), dtype=self.dtype)
            c_prev = np.empty((T, B, H), dtype=self.dtype)
            h_prev = np.empty((T, B, H), dtype=self.dtype)
        for t in range(T):
            z = z_all[t]
            z += h @ w_hh.T
            _sigmoid(z[:, : 2 * H], out=z[:, : 2 * H])
            np.tanh(z[:, 2 * H : 3 * H], out=z[:, 2 * H : 3 * H])
            _sigmoid(z[:, 3 * H :], out=z[:, 3 * H :])
            i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
            c_new = f * c + i * g
            th = np.tanh(c_new)
            h_new = o * th
            if training:
                tanh_c[t] = th
                c_prev[t] = c
                h_prev[t] = h
            if mask is None:
                out[t] = h_new
                h, c = h_new, c_new
            else:
                m = mask[t]
                np.multiply(h_new, m, out=out[t])
                h = np.where(m, h_new, h)
                c = np.where(m, c_new, c)
        cache = (x, acts, tanh_c, c_prev, h_prev) if training else None
        return out, h, c, cache

    def _dir_backward(self, cache, d_out, mask, w_ih, w_hh):
        x, acts, tanh_c, c_prev, h_prev = cache
        T, B, In = x.shape
        H = self.H
        dh = np.zeros((B, H), dtype=self.dtype)
        dc = np.zeros((B, H), dtype=self.dtype)
        dz_all = np.empty((T, B, 4 * H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            a = acts[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            th = tanh_c[t]
            if mask is None:
                dhn = dh + d_out[t]
                dcn = dc
            else:
                m = mask[t]
                keep = 1 - m
                dhn = m * (dh + d_out[t])
                dcn = m * dc
            dcn = dcn + dhn * o * (1 - th * th)
            dz = dz_all[t]
            dz[:, :H] = dcn * g * i * (1 - i)
            dz[:, H : 2 * H] = dcn * c_prev[t] * f * (1 - f)
            dz[:, 2 * H : 3 * H] = dcn * i * (1 - g * g)
            dz[:, 3 * H :] = dhn * th * o * (1 - o)
            if mask is None:
                dc = dcn * f
                dh = dz @ w_hh
            else:
                dc = dcn * f + keep * dc
                dh = dz @ w_hh + keep * dh
        dz2 = dz_all.reshape(T * B, 4 * H)
        dw_ih = dz2.T @ x.reshape(T * B, In)
        dw_hh = dz2.T @ h_prev.reshape(T * B, H)
        db = dz2.sum(axis=0)
        dx = (dz2 @ w_ih).reshape(T, B, In)
        return dx, dw_ih, dw_hh, db

    # ------------------------------------------------------------- whole layer
    def forward(self, X, lengths=None, training=True):
        B, T, _ = X.shape
        x = np.ascontiguousarray(X.transpose(1, 0, 2), dtype=self.dtype)
        if lengths is None:
            mask = rev = None
        else:
            lens = np.asarray(lengths)
            steps = np.arange(T)[:, None]
            mask = (steps < lens[None, :]).astype(self.dtype)[:, :, None]
            # rev[t, b]: the time read at step t by the reverse direction; an
            # involution (padded steps map to themselves).
            rev = np.where(steps < lens[None, :], lens[None, :] - 1 - steps, steps)
        cols = np.arange(B)[None, :]
        h_n, c_n, caches = [], [], []
        layer_in = x
        for layer in range(self.L):
            outs, layer_cache = [], []
            for d in range(self.D):
                sfx = self._suffix(layer, d)
                p = self.params
                bias = p["bias_ih" + sfx] + p["bias_hh" + sfx]
                if d == 0:
                    seq = layer_in
                elif rev is None:
                    seq = np.ascontiguousarray(layer_in[::-1])
                else:
                    seq = layer_in[rev, cols]
                out, h, c, cache = self._dir_forward(
                    seq, mask, p["weight_ih" + sfx], p["weight_hh" + sfx], bias, training
                )
                if d == 1:
                    out = out[::-1] if rev is None else out[rev, cols]
                outs.append(out)
                layer_cache.append(cache)
                h_n.append(h)
                c_n.append(c)
            caches.append(layer_cache)
            layer_in = np.concatenate(outs, axis=2) if self.D == 2 else outs[0]
        self._cache = (mask, rev, caches) if training else None
        return layer_in.transpose(1, 0, 2), (np.stack(h_n), np.stack(c_n))

    def backward(self, d_out):
        mask, rev, caches = self._cache
        self._cache = None
        H = self.H
        B = d_out.shape[0]
        cols = np.arange(B)[None, :]
        grad = np.ascontiguousarray(d_out.transpose(1, 0, 2), dtype=self.dtype)
        grads = {}
        for layer in range(self.L - 1, -1, -1):
            dx_total = None
            for d in range(self.D):
                sfx = self._suffix(layer, d)
                g = grad[:, :, d * H : (d + 1) * H]
                if d == 1:
                    g = g[::-1] if rev is None else g[rev, cols]
                dx, dw_ih, dw_hh, db = self._dir_backward(
                    caches[layer][d],
                    g,
                    mask,
                    self.params["weight_ih" + sfx],
                    self.params["weight_hh" + sfx],
                )
                if d == 1:
                    dx = dx[::-1] if rev is None else dx[rev, cols]
                dx_total = dx if dx_total is None else dx_total + dx
                grads["weight_ih" + sfx] = dw_ih
                grads["weight_hh" + sfx] = dw_hh
                grads["bias_ih" + sfx] = db
                grads["bias_hh" + sfx] = db.copy()
            grad = dx_total
        return grad.transpose(1, 0, 2), grads


# --------------------------------------------------------------------------- helpers
def rel_err(actual, expected):
    """max|a - b| / max|b| in float64 (0 when both are zero)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(b), initial=0.0))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return diff / scale if scale > 0 else diff


def max_rel_err(pairs):
    return max(rel_err(a, b) for a, b in pairs)


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment
def load_libraries(use_torch):
    """Import scipy, pylstm and torch, noting which BLAS/OpenMP library each brought in."""
    roles = {}
    seen = set()
    for info in threadpoolctl.threadpool_info():  # numpy is imported: its BLAS
        roles[info["filepath"]] = ["numpy"]
        seen.add(info["filepath"])
    importlib.import_module("scipy.linalg.cython_blas")
    scipy_new = [i for i in threadpoolctl.threadpool_info() if i["filepath"] not in seen]
    if scipy_new:
        for info in scipy_new:
            roles[info["filepath"]] = ["scipy/pylstm"]
            seen.add(info["filepath"])
    else:  # scipy shares numpy's BLAS
        for r in roles.values():
            if "numpy" in r:
                r.append("scipy/pylstm")
    pylstm = importlib.import_module("pylstm")
    for info in threadpoolctl.threadpool_info():
        if info["filepath"] not in seen:
            roles[info["filepath"]] = ["pylstm deps"]
            seen.add(info["filepath"])
    torch = None
    torch_error = None
    if use_torch:
        try:
            torch = importlib.import_module("torch")
        except Exception as exc:  # any failure means "no torch"
            torch_error = f"{type(exc).__name__}: {exc}"
        else:
            for info in threadpoolctl.threadpool_info():
                if info["filepath"] not in seen:
                    roles[info["filepath"]] = ["torch"]
                    seen.add(info["filepath"])
    return pylstm, torch, torch_error, roles


def pylstm_blas_threads(roles):
    for info in threadpoolctl.threadpool_info():
        if info["user_api"] == "blas" and "scipy/pylstm" in roles.get(info["filepath"], []):
            return int(info["num_threads"])
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    return int(blas[0]["num_threads"]) if blas else (os.cpu_count() or 1)


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
        return time.perf_counter() - self._t0


def is_busy(share, wall):
    """True when other processes took more than BUSY of the CPUs over ``wall`` seconds.

    Allows two clock ticks of slack, as /proc/stat counts in ticks (10 ms).
    """
    if share is None or wall <= 0:
        return False
    slack = 2.0 / os.sysconf("SC_CLK_TCK") / (wall * (os.cpu_count() or 1))
    return share > BUSY + slack


def idle_share(seconds=0.5):
    """Share of the CPUs other processes use while this one sleeps."""
    meter = ForeignCPU().start()
    time.sleep(seconds)
    return meter.stop()


def wait_for_idle(timeout):
    """Sleep until other processes use at most BUSY of the CPUs (or ``timeout`` s)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        share = idle_share(0.5)
        if share is None or share <= BUSY:
            return True
    return False


#: Seconds spent so far waiting for other processes; capped by ``--busy-budget``.
_waited = [0.0]


def measure(fn, args):
    """Time ``fn``: median and quartiles (ms per call) over ``args.repeats`` samples.

    ``args.warmup`` untimed calls come first; the last of them sets how many
    calls a sample loops over to last ``args.min_time``. A sample during which
    other processes used more than BUSY of the CPUs is set aside, and after
    waiting (``--busy-wait`` s at most, ``--busy-budget`` s per run in all) for
    them to finish, sampling goes on: up to ``3 * repeats`` samples are taken
    to collect ``repeats`` quiet ones. Figures with fewer than half of their
    samples quiet are computed from all samples and flagged ``busy``.
    """
    last = 0.0
    for _ in range(max(1, args.warmup)):
        t0 = time.perf_counter()
        fn()
        last = time.perf_counter() - t0
    number = max(1, int(np.ceil(args.min_time / max(last, 1e-9))))
    quiet, busy, shares = [], [], []
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(quiet) < args.repeats and len(quiet) + len(busy) < 3 * args.repeats:
            meter = ForeignCPU().start()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter() - t0
            share = meter.stop()
            if share is not None:
                shares.append(share)
            if not is_busy(share, meter.wall()):
                quiet.append(elapsed / number)
                continue
            busy.append(elapsed / number)
            if _waited[0] >= args.busy_budget:
                continue
            progress(f"    other processes used {100 * share:.0f}% of the CPUs: waiting")
            t1 = time.perf_counter()
            wait_for_idle(min(args.busy_wait, args.busy_budget - _waited[0]))
            _waited[0] += time.perf_counter() - t1
            fn()  # wake the thread pools up again
    finally:
        if gc_enabled:
            gc.enable()
    flagged = 2 * len(quiet) < args.repeats
    times = quiet + busy if flagged else quiet
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {
        "median_ms": 1e3 * med,
        "q1_ms": 1e3 * q1,
        "q3_ms": 1e3 * q3,
        "iqr_ms": 1e3 * (q3 - q1),
        "loops_per_sample": number,
        "samples_ms": [1e3 * t for t in times],
        "busy_samples_ms": [1e3 * t for t in busy],
        "foreign_cpu": float(np.median(shares)) if shares else None,
        "busy": flagged,
    }


def build_fingerprint(package):
    """sha256 prefix and mtime of the package's compiled modules (rebuilds change them)."""
    folder = os.path.dirname(package.__file__)
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith((".so", ".pyd")):
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()[:12]
            mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
            out[name.split(".")[0]] = f"{digest} ({mtime})"
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_details(torch):
    info = {"version": torch.__version__, "num_threads": torch.get_num_threads()}
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        info["cpu_capability"] = "?"
    info["mkldnn_enabled"] = bool(
        torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    )
    config = torch.__config__.show()
    m = re.search(r"BLAS_INFO=(\w+)", config)
    info["blas"] = m.group(1) if m else "?"
    m = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    if m:
        info["blas"] += f" {m.group(1)}"
    return info


def environment(pylstm, torch, torch_error, roles, n_threads):
    import scipy

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pylstm": getattr(pylstm, "__version__", "?"),
        "pylstm_path": os.path.dirname(pylstm.__file__),
        "pylstm_build": build_fingerprint(pylstm),
        "threadpoolctl": threadpoolctl.__version__,
        "torch": torch_details(torch) if torch is not None else None,
        "torch_error": torch_error,
        "threads": n_threads,
        "foreign_cpu_start": idle_share(),
        "env": {
            k: os.environ.get(k, "unset")
            for k in (
                "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE",
                "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
            )
        },
        "libraries": [],
    }
    for info in threadpoolctl.threadpool_info():
        entry = dict(info)
        entry["used_by"] = roles.get(info["filepath"], ["?"])
        env["libraries"].append(entry)
    return env


def print_header(env):
    print("=" * 100)
    print("pylstm benchmark: pylstm.LSTM vs plain NumPy LSTM vs torch.nn.LSTM (CPU)")
    print("=" * 100)
    print(f"python {env['python']}  |  {env['platform']}")
    print(f"cpu: {env['cpu']}  ({env['cpu_count']} logical cpus)")
    t = env["torch"]
    tv = t["version"] if t else f"not available ({env['torch_error'] or 'disabled'})"
    print(
        f"numpy {env['numpy']}  |  scipy {env['scipy']}  |  pylstm {env['pylstm']} "
        f"({env['pylstm_path']})  |  torch {tv}"
    )
    if env["pylstm_build"]:
        print("pylstm build: " + ", ".join(f"{k} {v}" for k, v in env["pylstm_build"].items()))
    if t:
        print(
            f"torch: BLAS {t['blas']}, cpu capability {t['cpu_capability']}, "
            f"mkldnn {'on' if t['mkldnn_enabled'] else 'off'}, "
            f"num_threads {t['num_threads']}"
        )
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env["env"].items()))
    print("threadpoolctl libraries:")
    for lib in env["libraries"]:
        print(
            f"  - {lib.get('internal_api')} {lib.get('version')} "
            f"[{lib.get('user_api')}] architecture={lib.get('architecture', '-')} "
            f"threads={lib.get('num_threads')} "
            f"threading={lib.get('threading_layer', '-')} used by {', '.join(lib['used_by'])}"
        )
        print(f"      {lib.get('filepath')}")
    print(f"threads for the run: {env['threads']} (BLAS pools; torch.set_num_threads)")
    share = env["foreign_cpu_start"]
    if share is not None:
        print(f"CPU used by other processes before the run: {100 * share:.0f}%")
    print()


# --------------------------------------------------------------------------- one case
def make_inputs(case, dtype, rng):
    X = rng.standard_normal((case.B, case.T, case.I)).astype(dtype)
    lengths = None
    if case.variable_lengths:
        lengths = rng.integers(max(1, case.T // 2), case.T + 1, size=case.B)
    return X, lengths


def torch_runner(torch, case, dtype, state_dict, X, lengths):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    module = torch.nn.LSTM(
        case.I,
        case.H,
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
        batch_first=True,
        dtype=tdtype,
    )
    module.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    )
    xt = torch.from_numpy(X)
    lt = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)

    def run(x):
        if lt is None:
            out, (h, c) = module(x)
        else:
            packed = pack_padded_sequence(x, lt, batch_first=True, enforce_sorted=False)
            out, (h, c) = module(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=case.T)
        return out, h, c

    ones = None

    def infer():
        with torch.no_grad():
            return run(xt)

    def train():
        nonlocal ones
        module.zero_grad(set_to_none=True)
        xg = xt.detach().requires_grad_(True)
        out, h, c = run(xg)
        if ones is None or ones.shape != out.shape:
            ones = torch.ones_like(out)
        (out * ones).sum().backward()
        return out, h, c, xg

    return module, infer, train


def run_case(case, dtype, args, pylstm, torch):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(args.seed)
    X, lengths = make_inputs(case, dtype, rng)
    layer = pylstm.LSTM(
        case.I,
        case.H,
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
        dtype=dtype.type,
        random_state=args.seed,
    )
    state = layer.state_dict()
    ref = NumpyLSTM(state, case.I, case.H, case.num_layers, case.bidirectional, dtype)
    names = list(state)

    # ---- agreement (once per case and dtype)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=True)
    d_out = np.ones_like(out)
    dX, grads = layer.backward(d_out)
    out_i, (h_i, c_i) = layer.forward(X, lengths=lengths, training=False)
    checks = {"pylstm_infer_vs_train": max_rel_err([(out_i, out), (h_i, h_n), (c_i, c_n)])}
    r_out, (r_h, r_c) = ref.forward(X, lengths=lengths, training=True)
    r_dX, r_grads = ref.backward(d_out)
    checks["numpy_out"] = max_rel_err([(out, r_out), (h_n, r_h), (c_n, r_c)])
    checks["numpy_grad"] = max_rel_err([(dX, r_dX)] + [(grads[k], r_grads[k]) for k in names])

    impls = {}
    pl_ones = d_out

    def pl_infer():
        return layer.forward(X, lengths=lengths, training=False)

    def pl_train():
        layer.forward(X, lengths=lengths, training=True)
        return layer.backward(pl_ones)

    def np_infer():
        return ref.forward(X, lengths=lengths, training=False)

    def np_train():
        ref.forward(X, lengths=lengths, training=True)
        return ref.backward(pl_ones)

    impls["pylstm"] = {"infer": pl_infer, "train": pl_train}
    if not args.no_numpy:
        impls["numpy"] = {"infer": np_infer, "train": np_train}
    if torch is not None:
        module, t_infer, t_train = torch_runner(torch, case, dtype, state, X, lengths)
        t_out, t_h, t_c, xg = t_train()
        t_out = t_out.detach().numpy()
        checks["torch_out"] = max_rel_err(
            [(out, t_out), (h_n, t_h.detach().numpy()), (c_n, t_c.detach().numpy())]
        )
        t_grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
        checks["torch_grad"] = max_rel_err(
            [(dX, xg.grad.numpy())] + [(grads[k], t_grads[k]) for k in names]
        )
        checks["torch_infer_out"] = rel_err(out_i, t_infer()[0].numpy())
        impls["torch"] = {"infer": t_infer, "train": t_train}

    # ---- timing: each implementation's samples back to back (no interleaving,
    # so that one library's spinning worker threads do not slow the next)
    timings = {}
    for mode in MODES:
        for impl in IMPLS:
            if impl not in impls:
                continue
            progress(f"  {case.label:<24} {dtype.name:<8} {mode:<6} {impl:<7} ...")
            timings[(mode, impl)] = measure(impls[impl][mode], args)
    return checks, timings


# --------------------------------------------------------------------------- report
def fmt_ms(t):
    if t is None:
        return "-"
    mark = "*" if t["busy"] else " "
    if t["median_ms"] < 10:
        return f"{t['median_ms']:.3f} ({t['iqr_ms']:.3f}){mark}"
    return f"{t['median_ms']:.2f} ({t['iqr_ms']:.2f}){mark}"


def ratio(a, b):
    if a is None or b is None:
        return None
    return a["median_ms"] / b["median_ms"]


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def print_tables(rows, check_rows):
    print("Timings: median ms per call (IQR); ratios > 1 mean pylstm is faster")
    head = (
        f"{'case (BxTxIxH)':<24} {'dtype':<8} {'mode':<6} {'pylstm':>19} {'numpy':>19} "
        f"{'torch':>19} {'numpy/pl':>9} {'torch/pl':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['case']:<24} {r['dtype']:<8} {r['mode']:<6} "
            f"{fmt_ms(r['pylstm']):>19} {fmt_ms(r['numpy']):>19} {fmt_ms(r['torch']):>19} "
            f"{fmt_ratio(r['numpy_over_pylstm']):>9} {fmt_ratio(r['torch_over_pylstm']):>9}"
        )
    print()
    for key, title in (
        ("torch_over_pylstm", "torch/pylstm"),
        ("numpy_over_pylstm", "numpy/pylstm"),
    ):
        parts = []
        for dt in sorted({r["dtype"] for r in rows}):
            for mode in MODES:
                vals = [
                    r[key]
                    for r in rows
                    if r["mode"] == mode and r["dtype"] == dt and r[key] is not None
                ]
                if vals:
                    gm = float(np.exp(np.mean(np.log(vals))))
                    parts.append(f"{dt} {mode} {gm:.2f}")
        if parts:
            print(f"geometric mean {title}: " + ", ".join(parts))
    print()
    print(
        "Agreement: max relative error max|a-b|/max|b| (out = output, h_n, c_n; "
        "grad = dX and all weight grads)"
    )
    head = (
        f"{'case (BxTxIxH)':<24} {'dtype':<8} {'out vs torch':>13} {'grad vs torch':>14} "
        f"{'out vs numpy':>13} {'grad vs numpy':>14} {'infer vs train':>15}  status"
    )
    print(head)
    print("-" * len(head))

    def e(v):
        return "-" if v is None else f"{v:.2e}"

    for c in check_rows:
        print(
            f"{c['case']:<24} {c['dtype']:<8} {e(c.get('torch_out')):>13} "
            f"{e(c.get('torch_grad')):>14} {e(c.get('numpy_out')):>13} "
            f"{e(c.get('numpy_grad')):>14} {e(c.get('pylstm_infer_vs_train')):>15}  "
            f"{c['status']}"
        )
    print()


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark pylstm.LSTM against a NumPy LSTM and torch.nn.LSTM.",
        epilog="Headline figures: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
        "python benchmarks/bench_lstm.py",
    )
    p.add_argument(
        "--cases",
        nargs="+",
        type=parse_case,
        metavar="B,T,I,H[,L][,bi][,var]",
        help="cases to run instead of the default four",
    )
    p.add_argument("--large", action="store_true", help="add 256x50x128x512 and 1x1000x64x256")
    p.add_argument(
        "--bidi",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add a 2-layer bidirectional case with variable lengths "
        "(64x100x64x128, lengths uniform in [T/2, T]; default on)",
    )
    p.add_argument(
        "--dtypes", nargs="+", choices=("float32", "float64"), default=["float32", "float64"]
    )
    p.add_argument("--repeats", type=int, default=7, help="timed samples (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument(
        "--min-time",
        type=float,
        default=0.05,
        help="loop calls within a sample until it lasts this many seconds (default 0.05)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit BLAS/OpenMP threads (threadpoolctl) and torch.set_num_threads",
    )
    p.add_argument(
        "--busy-wait",
        type=float,
        default=15.0,
        help="a sample taken while other processes used more than 15%% of the "
        "CPUs is set aside; wait at most this long for them before the next "
        "(default 15; Linux only)",
    )
    p.add_argument(
        "--busy-budget",
        type=float,
        default=120.0,
        help="seconds per run spent at most on such waits (default 120)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--no-numpy", action="store_true", help="skip timing the NumPy LSTM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        sys.exit("--repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        sys.exit("--threads must be >= 1")
    cases = list(args.cases) if args.cases else [Case(*c) for c in DEFAULT_CASES]
    if args.large:
        cases += [Case(*c) for c in LARGE_CASES]
    if args.bidi:
        cases.append(Case(*BIDI_CASE, num_layers=2, bidirectional=True, variable_lengths=True))

    pylstm, torch, torch_error, roles = load_libraries(not args.no_torch)
    limiter = None
    if args.threads is not None:
        limiter = threadpoolctl.threadpool_limits(limits=args.threads)
        n_threads = args.threads
    else:
        n_threads = pylstm_blas_threads(roles)
    if torch is not None:
        torch.set_num_threads(n_threads)

    env = environment(pylstm, torch, torch_error, roles, n_threads)
    print_header(env)

    t_start = time.perf_counter()
    rows, check_rows = [], []
    for case in cases:
        for dt in args.dtypes:
            progress(f"{case.label} {dt}")
            checks, timings = run_case(case, dt, args, pylstm, torch)
            tol = TOLERANCE[dt]
            bad = [k for k, v in checks.items() if v > tol]
            check_rows.append(
                {
                    "case": case.label,
                    "dtype": dt,
                    **checks,
                    "tolerance": tol,
                    "status": "ok" if not bad else "CHECK " + ",".join(bad),
                }
            )
            for mode in MODES:
                t = {impl: timings.get((mode, impl)) for impl in IMPLS}
                rows.append(
                    {
                        "case": case.label,
                        "B": case.B,
                        "T": case.T,
                        "I": case.I,
                        "H": case.H,
                        "num_layers": case.num_layers,
                        "bidirectional": case.bidirectional,
                        "variable_lengths": case.variable_lengths,
                        "dtype": dt,
                        "mode": mode,
                        **t,
                        "numpy_over_pylstm": ratio(t["numpy"], t["pylstm"]),
                        "torch_over_pylstm": ratio(t["torch"], t["pylstm"]),
                    }
                )
    elapsed = time.perf_counter() - t_start
    print_tables(rows, check_rows)
    print(f"total benchmark time {elapsed:.1f} s")
    env["foreign_cpu_end"] = idle_share()
    figures = [t for r in rows for t in (r[i] for i in IMPLS) if t is not None]
    n_busy = sum(len(t["busy_samples_ms"]) for t in figures)
    n_all = n_busy + sum(len(t["samples_ms"]) for t in figures if not t["busy"])
    if env["foreign_cpu_end"] is not None:
        print(
            f"samples set aside as other processes used > {100 * BUSY:.0f}% of the CPUs: "
            f"{n_busy} of {n_all}; waited {_waited[0]:.0f} s for them; their CPU share "
            f"after the run: {100 * env['foreign_cpu_end']:.0f}%"
        )
    if any(t["busy"] for t in figures):
        print(
            "WARNING: figures marked * had fewer than half of their samples quiet (all "
            "samples used); re-run on an idle machine"
        )

    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        payload = {
            "args": {
                k: (v if k != "cases" else [c.label for c in cases]) for k, v in vars(args).items()
            },
            "environment": env,
            "timings": rows,
            "agreement": check_rows,
            "elapsed_s": elapsed,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
