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
BLAS/OpenMP pool with threadpoolctl and sets torch to ``N``; ``--threads 1,2``
runs everything once per thread count and adds a scaling table.

Throughput: each row also gives the LSTM's matrix work (the flops of the GEMMs
any LSTM implementation must do, see :func:`lstm_gemm_flops`) divided by the
wall time, in GFLOP/s and as a fraction of the GEMM peak that scipy's BLAS
(the one pylstm calls) reaches in the same run at a large square size. A
second table gives scipy's GEMM throughput at each case's own shapes and the
time the LSTM's GEMMs alone would take at those rates.

Memory: the peak NumPy allocation (tracemalloc) of a pylstm training step,
against what backpropagation through time must keep (:func:`bptt_bytes`), and
the working memory of inference at ``T`` and ``4 T`` steps.

Usage (from the repository root, the installed package is imported)::

    python benchmarks/bench_lstm.py                       # default cases, both dtypes
    python benchmarks/bench_lstm.py --dtypes float32 --repeats 5
    python benchmarks/bench_lstm.py --cases 16,200,32,64 128,20,64,256 --no-bidi
    python benchmarks/bench_lstm.py --cases 64,100,64,128,2,bi,var   # L=2, bidirectional,
                                                                     # variable lengths
    python benchmarks/bench_lstm.py --large --threads 1 --json results/run.json
    python benchmarks/bench_lstm.py --threads 1,2 --plot /tmp/ratios.png

Headline figures are run with OpenBLAS left to pick its own kernel and cache
sizes for the CPU, i.e. with the OpenBLAS overrides of some environments removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lstm.py

The header reports whether ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set
and which kernel ("architecture") each OpenBLAS actually uses. Requires
threadpoolctl (``pip install threadpoolctl``, the ``bench`` extra).

The C allocator matters for the peers. With glibc's defaults, large blocks
are returned to the system when freed, so a library that allocates its
temporaries afresh on every call (torch, the NumPy reference) pays a page
fault per 4 KiB page of them on every call; how often depends on what ran
before in the process (glibc adapts its thresholds). pylstm keeps its work
arrays between calls. ``--steady-malloc`` sets glibc's thresholds (mallopt)
so that freed memory stays in the process, up to glibc's 32 MiB limit per
block: every library then runs on warm pages, the conservative comparison.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import os
import re
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
from _common import (
    BUSY,
    ForeignCPU,
    add_common_options,
    environment_variables,
    geometric_mean,
    idle_share,
    malloc_setting,
    print_column_heads,
    print_foreign_start,
    print_malloc,
    print_title,
    progress,
    save_json,
    system_info,
    thread_limits,
    threadpoolctl,
    torch_details,
)

DEFAULT_CASES = ((32, 50, 32, 64), (64, 100, 64, 128), (64, 100, 128, 256), (1, 100, 32, 128))
LARGE_CASES = ((256, 50, 128, 512), (1, 1000, 64, 256))
BIDI_CASE = (64, 100, 64, 128)
IMPLS = ("pylstm", "numpy", "torch")
MODES = ("infer", "train")
#: Agreement flagged when the max relative error exceeds these.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: The inference memory is also measured with T multiplied by this.
MEMORY_T_FACTOR = 4


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


def is_busy(share, wall):
    """True when other processes took more than BUSY of the CPUs over ``wall`` seconds.

    Allows two clock ticks of slack, as /proc/stat counts in ticks (10 ms).
    """
    if share is None or wall <= 0:
        return False
    slack = 2.0 / os.sysconf("SC_CLK_TCK") / (wall * (os.cpu_count() or 1))
    return share > BUSY + slack


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


def torch_info(torch):
    """:func:`_common.torch_details`, oneDNN under the key of earlier result files."""
    info = torch_details(torch)
    info["mkldnn_enabled"] = info.pop("mkldnn")
    return info


def environment(pylstm, torch, torch_error, roles, n_threads):
    env = {
        **system_info(pylstm),
        "pylstm_build": build_fingerprint(pylstm),
        "torch": torch_info(torch) if torch is not None else None,
        "torch_error": torch_error,
        "threads": n_threads,
        "foreign_cpu_start": idle_share(),
        "env": environment_variables(),
        "libraries": [],
    }
    for info in threadpoolctl.threadpool_info():
        entry = dict(info)
        entry["used_by"] = roles.get(info["filepath"], ["?"])
        env["libraries"].append(entry)
    env["pylstm_blas"] = pylstm_blas_info(env["libraries"])
    return env


def pylstm_blas_info(libraries):
    """The threadpoolctl entry of the BLAS that scipy (so pylstm) uses, or None."""
    for lib in libraries:
        if lib.get("user_api") == "blas" and "scipy/pylstm" in lib["used_by"]:
            return lib
    return None


def blas_label(lib):
    """``openblas 0.3.30, kernel SkylakeX`` for a threadpoolctl entry."""
    if lib is None:
        return "unknown BLAS"
    return f"{lib.get('internal_api')} {lib.get('version')}, kernel {lib.get('architecture', '?')}"


def openblas_override_line(env):
    """Which OpenBLAS overrides are in effect and the kernel pylstm's BLAS runs."""
    coretype = env["env"]["OPENBLAS_CORETYPE"]
    l2 = env["env"]["OPENBLAS_L2_SIZE"]
    how = (
        f"OPENBLAS_CORETYPE={coretype} forces the kernel"
        if coretype != "unset"
        else "OPENBLAS_CORETYPE unset: OpenBLAS picks the kernel for this CPU"
    )
    cache = f"OPENBLAS_L2_SIZE={l2}" + (" overrides the L2 size" if l2 != "unset" else "")
    return (
        f"BLAS of pylstm and of the GEMM figures: {blas_label(env['pylstm_blas'])} ({how}; {cache})"
    )


def print_header(env):
    print_title("pylstm benchmark: pylstm.LSTM vs plain NumPy LSTM vs torch.nn.LSTM (CPU)", 100,
                env)
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
    print_malloc(env)
    print("threadpoolctl libraries:")
    for lib in env["libraries"]:
        print(
            f"  - {lib.get('internal_api')} {lib.get('version')} "
            f"[{lib.get('user_api')}] architecture={lib.get('architecture', '-')} "
            f"threads={lib.get('num_threads')} "
            f"threading={lib.get('threading_layer', '-')} used by {', '.join(lib['used_by'])}"
        )
        print(f"      {lib.get('filepath')}")
    print(openblas_override_line(env))
    counts = ", ".join(str(n) for n in env.get("thread_counts", [env["threads"]]))
    print(f"threads for the run: {counts} (BLAS pools; torch.set_num_threads)")
    print_foreign_start(env)
    print()


# --------------------------------------------------------------------------- GEMM work
#: The GEMMs of one layer and direction, in the order they are listed.
GEMM_KINDS = ("proj", "rec", "dX", "dW_ih", "dW_hh", "dh")
#: Those of the forward pass; the training step does all of GEMM_KINDS.
FORWARD_KINDS = ("proj", "rec")
#: Kinds done once per step (on B rows); the others once per sequence batch.
PER_STEP_KINDS = ("rec", "dh")
#: How an LSTM stores each kind's operands (row-major): (A stored transposed,
#: B stored transposed). The weights are kept as (4H, In) and (4H, H), so the
#: forward products read them transposed; the weight gradients read dZ^T.
GEMM_LAYOUT = {
    "proj": (False, True),
    "rec": (False, True),
    "dX": (False, False),
    "dW_ih": (True, False),
    "dW_hh": (True, False),
    "dh": (False, False),
}


def gemm_shapes(B, n, In, H):
    """The GEMMs of one layer and direction as ``{kind: (M, K, N)}``, C = A (MxK) @ B (KxN).

    Parameters
    ----------
    B : int
        Batch size.
    n : int
        Valid steps summed over the batch (``B * T`` without lengths).
    In : int
        Input features of the layer (``I``, or ``D * H`` above the first layer).
    H : int
        Hidden units; the gates have ``G = 4 H``.

    Returns
    -------
    dict
        ``proj`` X W_ih^T for all steps, ``rec`` h_{t-1} W_hh^T (per step),
        ``dX`` dZ W_ih, ``dW_ih`` dZ^T X, ``dW_hh`` dZ^T H_prev and ``dh``
        dZ_t W_hh (per step).
    """
    G = 4 * H
    return {
        "proj": (n, In, G),
        "rec": (B, H, G),
        "dX": (n, G, In),
        "dW_ih": (G, n, In),
        "dW_hh": (G, n, H),
        "dh": (B, G, H),
    }


def layer_inputs(case):
    """Input features of each layer: ``I``, then ``D * H``."""
    D = 2 if case.bidirectional else 1
    return [case.I] + [D * case.H] * (case.num_layers - 1)


def gemm_work(case, n):
    """Flops of every GEMM kind the LSTM does, summed over layers and directions.

    Returns ``{(kind, M, K, N): flops}``: per-step kinds are counted on the
    ``n / B`` steps of a full batch (with variable lengths the batch shrinks
    but the flops, ``2 n K N``, are the same).
    """
    D = 2 if case.bidirectional else 1
    work = {}
    for In in layer_inputs(case):
        for kind, (M, K, N) in gemm_shapes(case.B, n, In, case.H).items():
            calls = n / case.B if kind in PER_STEP_KINDS else 1
            key = (kind, M, K, N)
            work[key] = work.get(key, 0.0) + D * 2.0 * M * K * N * calls
    return work


def lstm_gemm_flops(case, n, mode):
    """Matrix work of one call: the flops of the GEMMs an LSTM must do.

    Per layer and direction, with ``n`` valid steps, layer input size ``In``
    and ``G = 4 H``:

    * forward (``infer``): input projection ``2 n In G`` + recurrence
      ``2 n H G`` = ``8 n H (In + H)``;
    * backward: dX ``2 n G In`` + dW_ih ``2 n G In`` + dW_hh ``2 n G H`` +
      dh ``2 n G H`` = ``16 n H (In + H)``, twice the forward;
    * ``train`` (forward + backward) = ``24 n H (In + H)``.

    Element-wise gate arithmetic, bias sums and copies are not counted.
    """
    kinds = FORWARD_KINDS if mode == "infer" else GEMM_KINDS
    return sum(f for (kind, *_), f in gemm_work(case, n).items() if kind in kinds)


def gemm_call(M, K, N, dtype, layout=(False, False), seed=0):
    """A function computing C = A @ B (M x K by K x N, C order) with scipy's ?gemm.

    ``layout = (a_t, b_t)``: A is stored as its (K x M) transpose when
    ``a_t``, B as its (N x K) transpose when ``b_t`` (see GEMM_LAYOUT).
    Row-major ``C = A B`` is column-major ``C^T = B^T A^T``; the transposed
    views of C-ordered arrays are Fortran-ordered, so f2py hands them (and
    ``C``) to BLAS without copying. The figure includes f2py's call overhead
    (a few microseconds).
    """
    from scipy.linalg import blas

    a_t, b_t = layout
    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
    rng = np.random.default_rng(seed)
    a = rng.random((K, M) if a_t else (M, K), dtype=dtype) - 0.5
    b = rng.random((N, K) if b_t else (K, N), dtype=dtype) - 0.5
    c = np.empty((M, N), dtype=dtype)

    def call():
        return gemm(
            1.0, b.T, a.T, trans_a=int(b_t), trans_b=int(a_t), beta=0.0, c=c.T, overwrite_c=True
        )

    return call


def gemv_call(K, N, dtype, b_t=False, seed=0):
    """A function computing the one-row product (1 x K) @ (K x N) with scipy's ?gemv.

    B is stored as in :func:`gemm_call`; the vector result goes to a
    preallocated array.
    """
    from scipy.linalg import blas

    gemv = blas.sgemv if np.dtype(dtype) == np.float32 else blas.dgemv
    rng = np.random.default_rng(seed)
    b = rng.random((N, K) if b_t else (K, N), dtype=dtype) - 0.5
    x = rng.random(K, dtype=dtype) - 0.5
    y = np.empty(N, dtype=dtype)

    def call():
        return gemv(1.0, b.T, x, beta=0.0, y=y, trans=int(b_t), overwrite_y=True)

    return call


class GemmMeter:
    """GEMM throughput of scipy's BLAS at given shapes, measured once per shape.

    Each figure is :func:`measure`'s median over ``args.gemm_repeats``
    samples after one warm-up call, at the thread count in effect.
    """

    def __init__(self, args):
        self.args = argparse.Namespace(**{**vars(args), "repeats": args.gemm_repeats, "warmup": 1})
        self.figures = {}

    def _measure(self, key, call, flops):
        if key not in self.figures:
            t = measure(call(), self.args)
            t["gflops"] = flops / (t["median_ms"] * 1e6)
            t["best_gflops"] = flops / (min(t["samples_ms"]) * 1e6)
            self.figures[key] = t
        return self.figures[key]

    def rate(self, M, K, N, dtype, layout=(False, False)):
        """:func:`measure` figures of one ?gemm call plus ``gflops``, cached per shape."""
        key = ("gemm", M, K, N, np.dtype(dtype).name, layout)
        t = self._measure(key, lambda: gemm_call(M, K, N, dtype, layout), 2.0 * M * K * N)
        t["shape"] = [M, K, N]
        return t

    def gemv_rate(self, K, N, dtype, b_t=False):
        """The same for the one-row product (1 x K) @ (K x N) through ?gemv."""
        key = ("gemv", K, N, np.dtype(dtype).name, b_t)
        return self._measure(key, lambda: gemv_call(K, N, dtype, b_t), 2.0 * K * N)

    def peak(self, dtype):
        """Throughput at the square size ``--peak-size``."""
        size = self.args.peak_size
        progress(f"GEMM peak {np.dtype(dtype).name} {size}^3 ...")
        return self.rate(size, size, size, dtype)


def case_gemm(case, n, dtype, meter):
    """Per-shape GEMM rates of a case and the GEMM-only time of each mode.

    Each shape is measured in the layout an LSTM stores its operands in
    (GEMM_LAYOUT). One-row products (B = 1) are matrix-vector products, for
    which ?gemm is slow: those are also measured through ?gemv.

    The GEMM-only time (``bound_ms``) is the sum over the case's GEMMs of
    their flops divided by the rate measured at their shape (the faster of
    ?gemm and ?gemv): what the call would cost if it did nothing but its
    GEMMs at those rates.
    """
    work = gemm_work(case, n)
    shapes, bound = [], {mode: 0.0 for mode in MODES}
    for (kind, M, K, N), flops in work.items():
        layout = GEMM_LAYOUT[kind]
        t = meter.rate(M, K, N, dtype, layout)
        v = meter.gemv_rate(K, N, dtype, layout[1]) if M == 1 else None
        rate = max(t["gflops"], v["gflops"] if v else 0.0)
        shapes.append(
            {
                "kind": kind,
                "shape": [M, K, N],
                "a_transposed": layout[0],
                "b_transposed": layout[1],
                "flops": flops,
                "median_ms": t["median_ms"],
                "iqr_ms": t["iqr_ms"],
                "gflops": t["gflops"],
                "best_gflops": t["best_gflops"],
                "gemv_gflops": v["gflops"] if v else None,
                "busy": t["busy"] or bool(v and v["busy"]),
            }
        )
        seconds = flops / (rate * 1e9)
        for mode in MODES:
            if mode == "train" or kind in FORWARD_KINDS:
                bound[mode] += 1e3 * seconds
    return {"shapes": shapes, "bound_ms": bound}


# --------------------------------------------------------------------------- memory
def traced_peak(fn):
    """Call ``fn()`` under tracemalloc.

    Returns
    -------
    result
        What ``fn`` returned.
    peak : int
        Peak bytes allocated during the call.
    held : int
        Bytes allocated during the call and still held when it returned
        (what it returned, and anything the callee keeps for later calls).

    Only allocations made during the call count (arrays that exist before it
    do not). NumPy reports its array buffers to tracemalloc; memory that C
    code allocates with plain ``malloc`` (OpenBLAS buffers, kernel scratch)
    is not seen.
    """
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, held


def bptt_bytes(case, n, n_params, itemsize):
    """What a training step (forward + BPTT) must hold, in bytes, by component.

    With ``s`` the itemsize, ``n`` the valid steps summed over the batch, ``P``
    the number of parameters and ``D`` the directions:

    * ``cache``: per layer and direction, the gate activations (4H), cell
      states (H) and hidden outputs (H) of every valid step: ``L D n 6 H s``;
    * ``params`` and ``param_grads``: ``P s`` each;
    * ``dX``: ``B T I s``; ``out``: ``B T D H s``;
    * ``states``: h_n, c_n and their gradients for h0, c0: ``4 L D B H s``.
    """
    D = 2 if case.bidirectional else 1
    B, T, I, H, L = case.B, case.T, case.I, case.H, case.num_layers
    parts = {
        "cache": L * D * n * 6 * H * itemsize,
        "params": n_params * itemsize,
        "param_grads": n_params * itemsize,
        "dX": B * T * I * itemsize,
        "out": B * T * D * H * itemsize,
        "states": 4 * L * D * B * H * itemsize,
    }
    parts["total"] = sum(parts.values())
    return parts


def nbytes(*arrays):
    return sum(a.nbytes for a in arrays)


def train_memory(new_layer, case, X, lengths, n):
    """Peak memory of ``forward(training=True)`` + ``backward`` against :func:`bptt_bytes`.

    ``new_layer()`` must return a layer that has not run yet, so that work
    arrays a layer keeps between calls are allocated, and counted, inside
    the traced step. ``peak_bytes`` is the traced peak plus the parameters
    (which the layer holds throughout); X and the output gradient exist
    before the call and count in neither figure. ``retained_bytes``: what
    the layer still holds after the step, beyond what it returned.
    """
    layer = new_layer()
    d_out = np.ones((case.B, case.T, layer.num_directions * case.H), dtype=layer.dtype)

    def step():
        out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=True)
        dX, grads = layer.backward(d_out)
        return out, h_n, c_n, dX, grads

    (out, h_n, c_n, dX, grads), traced, held = traced_peak(step)
    params = nbytes(*layer.parameters())
    returned = nbytes(out, h_n, c_n, dX, *grads.values())
    theory = bptt_bytes(case, n, sum(p.size for p in layer.parameters()), layer.dtype.itemsize)
    peak = traced + params
    return {
        "traced_peak_bytes": traced,
        "param_bytes": params,
        "returned_bytes": returned,
        "retained_bytes": held - returned,
        "peak_bytes": peak,
        "theory_bytes": theory,
        "peak_over_theory": peak / theory["total"],
    }


def infer_excess(layer, X, lengths):
    """Traced peak of ``forward(training=False)`` minus the bytes of what it returns."""
    (out, (h_n, c_n)), peak, held = traced_peak(
        lambda: layer.forward(X, lengths=lengths, training=False)
    )
    returned = nbytes(out, h_n, c_n)
    return {
        "traced_peak_bytes": peak,
        "excess_bytes": peak - returned,
        "retained_bytes": held - returned,
    }


def infer_memory(new_layer, case, X, lengths):
    """Inference working memory at T and at ``MEMORY_T_FACTOR * T`` steps.

    Each figure uses a layer fresh from ``new_layer()`` (see
    :func:`train_memory`). The longer input repeats X along time (lengths
    scaled alike) and is built before the traced call. ``growth_per_step``
    is the extra excess per added step, in units of the bytes one step of
    output takes (``B D H s``).
    """
    k = MEMORY_T_FACTOR
    X_long = np.tile(X, (1, k, 1))
    lengths_long = None if lengths is None else np.asarray(lengths) * k
    base = infer_excess(new_layer(), X, lengths)
    long = infer_excess(new_layer(), X_long, lengths_long)
    itemsize = np.dtype(X.dtype).itemsize
    step_bytes = case.B * (2 if case.bidirectional else 1) * case.H * itemsize
    grown = long["excess_bytes"] - base["excess_bytes"]
    return {
        "T": case.T,
        "T_long": k * case.T,
        "excess_bytes": base["excess_bytes"],
        "excess_bytes_long": long["excess_bytes"],
        "traced_peak_bytes": base["traced_peak_bytes"],
        "traced_peak_bytes_long": long["traced_peak_bytes"],
        "retained_bytes": base["retained_bytes"],
        "retained_bytes_long": long["retained_bytes"],
        "long_over_base": long["excess_bytes"] / max(1, base["excess_bytes"]),
        "growth_per_step": grown / ((k - 1) * case.T * step_bytes),
    }


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


def valid_steps(case, lengths):
    """Steps the LSTM must compute: ``B * T``, or the sum of the lengths."""
    return case.B * case.T if lengths is None else int(np.sum(lengths))


def run_case(case, dtype, args, pylstm, torch, with_memory=False):
    """Check agreement, then time every implementation and mode of one case and dtype.

    Returns
    -------
    dict
        ``checks`` (name: max relative error), ``timings`` ((mode, impl):
        :func:`measure` figures), ``valid_steps`` and, with ``with_memory``,
        ``memory`` (:func:`train_memory` and :func:`infer_memory`, measured
        after the timings in separate, untimed calls on fresh layers with the
        same weights).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(args.seed)
    X, lengths = make_inputs(case, dtype, rng)

    def new_layer():
        return pylstm.LSTM(
            case.I,
            case.H,
            num_layers=case.num_layers,
            bidirectional=case.bidirectional,
            dtype=dtype.type,
            random_state=args.seed,
        )

    layer = new_layer()
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
    result = {"checks": checks, "timings": timings, "valid_steps": valid_steps(case, lengths)}
    if with_memory:
        progress(f"  {case.label:<24} {dtype.name:<8} memory (tracemalloc) ...")
        result["memory"] = {
            "train": train_memory(new_layer, case, X, lengths, result["valid_steps"]),
            "infer": infer_memory(new_layer, case, X, lengths),
        }
    return result


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


def fmt_rate(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def print_tables(rows, check_rows):
    """The timing table (with matrix-work throughput), geometric means and agreement."""
    print(
        "Timings: median ms per call (IQR); ratios > 1 mean pylstm is faster; GF/s = LSTM "
        "GEMM flops / wall time;\n%peak = GF/s / scipy's GEMM peak below (torch has its own "
        "BLAS and may exceed 100%)"
    )
    head = (
        f"{'case (BxTxIxH)':<24} {'dtype':<8} {'mode':<6} {'pylstm':>19} {'numpy':>19} "
        f"{'torch':>19} {'numpy/pl':>9} {'torch/pl':>9} {'pl GF/s':>8} {'pl %peak':>9} "
        f"{'th %peak':>9}"
    )
    print_column_heads(head)
    for r in rows:
        print(
            f"{r['case']:<24} {r['dtype']:<8} {r['mode']:<6} "
            f"{fmt_ms(r['pylstm']):>19} {fmt_ms(r['numpy']):>19} {fmt_ms(r['torch']):>19} "
            f"{fmt_ratio(r['numpy_over_pylstm']):>9} {fmt_ratio(r['torch_over_pylstm']):>9} "
            f"{fmt_rate(r['pylstm_gflops']):>8} {fmt_pct(r['pylstm_frac_peak']):>9} "
            f"{fmt_pct(r['torch_frac_peak']):>9}"
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
                    parts.append(f"{dt} {mode} {geometric_mean(vals):.2f}")
        if parts:
            print(f"geometric mean {title}: " + ", ".join(parts))
    print()
    print_agreement(check_rows)


def print_agreement(check_rows):
    print(
        "Agreement: max relative error max|a-b|/max|b| (out = output, h_n, c_n; "
        "grad = dX and all weight grads)"
    )
    head = (
        f"{'case (BxTxIxH)':<24} {'dtype':<8} {'out vs torch':>13} {'grad vs torch':>14} "
        f"{'out vs numpy':>13} {'grad vs numpy':>14} {'infer vs train':>15}  status"
    )
    print_column_heads(head)

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


def kind_rates(shapes, kind):
    """GF/s of one GEMM kind; ``a/b`` when the layers' input sizes differ."""
    figures = [s for s in shapes if s["kind"] == kind]
    if not figures:
        return "-"
    busy = "*" if any(s["busy"] for s in figures) else ""
    cells = []
    for s in figures:
        cell = f"{s['gflops']:.1f}"
        if s["gemv_gflops"] is not None:
            cell += f"|v{s['gemv_gflops']:.1f}"
        cells.append(cell)
    return "/".join(cells) + busy


def print_gemm_table(run, env):
    """Peak GEMM throughput, then each case's GEMM shapes and GEMM-only times."""
    if not run["gemm_peak"]:
        return
    size = next(iter(run["gemm_peak"].values()))["shape"][0]
    peaks = ", ".join(
        f"{dt} {t['gflops']:.1f} GF/s ({t['median_ms']:.1f} ms){'*' if t['busy'] else ''} "
        f"[best sample {t['best_gflops']:.1f}]"
        for dt, t in run["gemm_peak"].items()
    )
    print(
        f"GEMM throughput of scipy.linalg.blas ?gemm ({blas_label(env['pylstm_blas'])}), "
        f"{run['threads']} thread(s), median of one call"
    )
    print(f"peak (median), {size} x {size} x {size}: {peaks}")
    print(
        "shapes (M x K @ K x N), n = valid steps (B*T or sum of lengths), G = 4H, In = layer "
        "input:\n  proj n x In @ In x G, rec B x H @ H x G (per step), dX n x G @ G x In, "
        "dW_ih G x n @ n x In, dW_hh G x n @ n x H, dh B x G @ G x H (per step);\n"
        "  in the LSTM's storage layout (weights (G x In), (G x H)); a/b: first layer / upper "
        "layers; |v: one-row product through ?gemv;\n"
        "  GEMM ms = the case's GEMM flops at these rates (the faster of gemm and gemv); "
        "pl/GEMM = pylstm time / GEMM ms"
    )
    head = f"{'case (BxTxIxH)':<24} {'dtype':<8} " + " ".join(f"{k:>12}" for k in GEMM_KINDS)
    head += f" {'GEMM ms inf':>11} {'pl/GEMM':>7} {'GEMM ms trn':>11} {'pl/GEMM':>7}"
    print_column_heads(head)
    by_key = {(r["case"], r["dtype"], r["mode"]): r for r in run["timings"]}
    for g in run["gemm_shapes"]:
        line = f"{g['case']:<24} {g['dtype']:<8} "
        line += " ".join(f"{kind_rates(g['shapes'], k):>12}" for k in GEMM_KINDS)
        for mode in MODES:
            r = by_key[(g["case"], g["dtype"], mode)]
            line += f" {g['bound_ms'][mode]:>11.3f} {fmt_ratio(r['pylstm_over_gemm_bound']):>7}"
        print(line)
    warning = peak_warning(run)
    if warning:
        print(warning)
    print()


def peak_warning(run):
    """A warning when a scipy-BLAS rate beats the peak (a peak sampled under contention)."""
    over = set()
    for g in run["gemm_shapes"]:
        peak = run["gemm_peak"][g["dtype"]]["gflops"]
        over.update(g["dtype"] for s in g["shapes"] if s["gflops"] > 1.05 * peak)
    # torch runs its own BLAS (MKL / oneDNN), which may beat scipy's: not a sign.
    over.update(r["dtype"] for r in run["timings"] if (r["pylstm_frac_peak"] or 0) > 1.05)
    if not over:
        return ""
    return (
        f"WARNING: rates above the {'/'.join(sorted(over))} GEMM peak: the peak was probably "
        "measured while other processes ran; %peak figures overstate"
    )


def mb(v):
    return f"{v / 1e6:.2f}"


def print_memory_table(memory_rows):
    """Training peak against the BPTT minimum; inference working memory at T and k T."""
    if not memory_rows:
        return
    k = MEMORY_T_FACTOR
    print("Memory (tracemalloc: NumPy allocations made during the call; MB = 1e6 bytes)")
    print(
        "  each figure on a fresh layer (same weights), so that arrays a layer keeps between "
        "calls are counted\n"
        "  train peak = traced peak of forward(training=True) + backward, plus the parameters "
        "(X and d_out excluded);\n"
        "  kept = what the layer still holds after the step, beyond what it returned\n"
        "  theory = s * (L*D*n*6H [gates 4H, c H, h H per valid step] + 2P [params, grads] "
        "+ B*T*I [dX] + B*T*D*H [out]\n"
        "           + 4*L*D*B*H [h_n, c_n, d h0, d c0]), s = itemsize, n = valid steps, "
        "P = parameter count\n"
        f"  infer excess = traced peak of forward(training=False) minus its outputs, at T "
        f"and {k}T;\n"
        f"  growth/step = extra excess per added step / bytes of one output step (B*D*H*s)"
    )
    head = (
        f"{'case (BxTxIxH)':<24} {'dtype':<8} {'train peak':>11} {'theory':>9} "
        f"{'peak/theory':>11} {'kept':>9} {'infer T':>9} {f'infer {k}T':>9} {f'{k}T/T':>6} "
        f"{'growth/step':>11}"
    )
    print_column_heads(head)
    for m in memory_rows:
        tr, inf = m["train"], m["infer"]
        print(
            f"{m['case']:<24} {m['dtype']:<8} {mb(tr['peak_bytes']):>11} "
            f"{mb(tr['theory_bytes']['total']):>9} {tr['peak_over_theory']:>11.2f} "
            f"{mb(tr['retained_bytes']):>9} "
            f"{mb(inf['excess_bytes']):>9} {mb(inf['excess_bytes_long']):>9} "
            f"{inf['long_over_base']:>6.2f} {inf['growth_per_step']:>11.2f}"
        )
    print()


def scaling_rows(runs):
    """Per case, dtype and mode: each implementation's median ms at every thread count."""
    counts = [run["threads"] for run in runs]
    lookup = [{(r["case"], r["dtype"], r["mode"]): r for r in run["timings"]} for run in runs]
    out = []
    for r in runs[0]["timings"]:
        key = (r["case"], r["dtype"], r["mode"])
        entry = {"case": key[0], "dtype": key[1], "mode": key[2], "threads": counts}
        for impl in IMPLS:
            ms = [(by.get(key) or {}).get(impl) for by in lookup]
            ms = [None if t is None else t["median_ms"] for t in ms]
            entry[f"{impl}_ms"] = ms
            ok = ms[0] is not None and ms[-1] is not None
            entry[f"{impl}_speedup"] = ms[0] / ms[-1] if ok else None
        out.append(entry)
    return out


def print_scaling_table(rows, runs):
    """GEMM peak per thread count, then pylstm's and torch's ms per count and speedup."""
    counts = rows[0]["threads"]
    print(
        f"Thread scaling: median ms per call at {', '.join(map(str, counts))} thread(s); "
        f"speedup = ms at {counts[0]} / ms at {counts[-1]}"
    )
    for dt in runs[0]["gemm_peak"]:
        peaks = [run["gemm_peak"][dt]["gflops"] for run in runs]
        text = ", ".join(f"{n}t {p:.1f}" for n, p in zip(counts, peaks, strict=True))
        print(f"  GEMM peak {dt} GF/s: {text} (x{peaks[-1] / peaks[0]:.2f})")
    head = f"{'case (BxTxIxH)':<24} {'dtype':<8} {'mode':<6}"
    for impl in ("pylstm", "torch"):
        head += "".join(f" {f'{impl} {n}t':>10}" for n in counts) + f" {'speedup':>8}"
    print_column_heads(head)
    for r in rows:
        line = f"{r['case']:<24} {r['dtype']:<8} {r['mode']:<6}"
        for impl in ("pylstm", "torch"):
            line += "".join(f" {'-' if v is None else f'{v:.3f}':>10}" for v in r[f"{impl}_ms"])
            line += f" {fmt_ratio(r[f'{impl}_speedup']):>8}"
        print(line)
    print()


def plot_ratios(runs, path):
    """Bar chart of numpy/pylstm and torch/pylstm per case, dtype and mode.

    One panel per thread count, log scale, a dashed line at 1. Returns False
    (after saying so) when matplotlib cannot be imported.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullFormatter
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written")
        return False
    series = (
        ("numpy_over_pylstm", "numpy / pylstm", "tab:orange"),
        ("torch_over_pylstm", "torch / pylstm", "tab:green"),
    )
    n_rows = len(runs[0]["timings"])
    fig, axes = plt.subplots(
        len(runs),
        1,
        figsize=(max(6.0, 0.5 * n_rows + 2), 4.5 * len(runs)),
        squeeze=False,
        layout="constrained",
    )
    for ax, run in zip(axes[:, 0], runs, strict=True):
        rows = run["timings"]
        present = [s for s in series if any(r[s[0]] is not None for r in rows)]
        x = np.arange(len(rows))
        width = 0.8 / max(1, len(present))
        values = []
        for j, (key, label, color) in enumerate(present):
            v = np.array([np.nan if r[key] is None else r[key] for r in rows])
            values.extend(v[np.isfinite(v)])
            offset = (j - (len(present) - 1) / 2) * width
            # Bars start at 1: up when pylstm is faster, down when it is slower.
            bars = ax.bar(x + offset, v - 1, width, bottom=1, label=label, color=color)
            ax.bar_label(bars, labels=[f"{r:.2f}" for r in v], fontsize=6)
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_yscale("log")
        lo, hi = min(values + [1.0]), max(values + [1.0])
        ax.set_ylim(lo / 1.4, hi * 1.4)
        powers = range(int(np.floor(np.log2(lo))), int(np.ceil(np.log2(hi))) + 1)
        ax.yaxis.set_major_locator(FixedLocator([2.0**k for k in powers]))
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(
            x, [f"{r['case']}\n{r['dtype']} {r['mode']}" for r in rows], rotation=90, fontsize=7
        )
        ax.set_ylabel("time ratio (> 1: pylstm faster)")
        ax.set_title(f"bench_lstm.py, {run['threads']} thread(s)", fontsize="medium")
        ax.legend(fontsize="small")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return True


def parse_threads(text):
    """Parse ``N`` or a comma list ``N1,N2,...`` of thread counts (duplicates dropped)."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"threads must be N or N1,N2,... >= 1, got {text!r}")
    return list(dict.fromkeys(counts))


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
        type=parse_threads,
        default=None,
        metavar="N[,N2,...]",
        help="limit BLAS/OpenMP threads (threadpoolctl) and torch.set_num_threads; a "
        "comma list (e.g. 1,2) runs everything once per count and adds a scaling table",
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
    p.add_argument(
        "--no-gemm", action="store_true", help="skip the GEMM peak and per-shape GEMM figures"
    )
    p.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="square size of the GEMM peak measurement (default 2048)",
    )
    p.add_argument(
        "--gemm-repeats",
        type=int,
        default=5,
        help="samples per GEMM figure, after one warm-up call (default 5)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the tracemalloc memory figures")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG bar chart of the ratios (matplotlib)"
    )
    add_common_options(p)
    return p


def select_cases(args):
    cases = list(args.cases) if args.cases else [Case(*c) for c in DEFAULT_CASES]
    if args.large:
        cases += [Case(*c) for c in LARGE_CASES]
    if args.bidi:
        cases.append(Case(*BIDI_CASE, num_layers=2, bidirectional=True, variable_lengths=True))
    return cases


def check_row(case, dtype, checks):
    tol = TOLERANCE[dtype]
    bad = [k for k, v in checks.items() if v > tol]
    return {
        "case": case.label,
        "dtype": dtype,
        **checks,
        "tolerance": tol,
        "status": "ok" if not bad else "CHECK " + ",".join(bad),
    }


def timing_row(case, dtype, mode, result, peak, gemm, n_threads):
    """One row of the timing table: timings, ratios, matrix-work GF/s and fraction of peak."""
    t = {impl: result["timings"].get((mode, impl)) for impl in IMPLS}
    n = result["valid_steps"]
    flops = lstm_gemm_flops(case, n, mode)
    row = {
        "case": case.label,
        "B": case.B,
        "T": case.T,
        "I": case.I,
        "H": case.H,
        "num_layers": case.num_layers,
        "bidirectional": case.bidirectional,
        "variable_lengths": case.variable_lengths,
        "dtype": dtype,
        "mode": mode,
        **t,
        "numpy_over_pylstm": ratio(t["numpy"], t["pylstm"]),
        "torch_over_pylstm": ratio(t["torch"], t["pylstm"]),
        "threads": n_threads,
        "valid_steps": n,
        "gemm_flops": flops,
        "gemm_peak_gflops": None if peak is None else peak["gflops"],
    }
    for impl in IMPLS:
        rate = None if t[impl] is None else flops / (t[impl]["median_ms"] * 1e6)
        row[f"{impl}_gflops"] = rate
        row[f"{impl}_frac_peak"] = None if None in (rate, peak) else rate / peak["gflops"]
    bound = None if gemm is None else gemm["bound_ms"][mode]
    row["gemm_bound_ms"] = bound
    row["pylstm_over_gemm_bound"] = None if bound is None else t["pylstm"]["median_ms"] / bound
    return row


def run_threads(n_threads, cases, args, pylstm, torch, with_memory):
    """Everything measured at one thread count: GEMM peak, then every case and dtype."""
    t0 = time.perf_counter()
    rows, check_rows, gemm_rows, memory_rows = [], [], [], []
    with thread_limits(n_threads, torch, cap_pools=bool(args.threads)):
        meter = None if args.no_gemm else GemmMeter(args)
        peak = {dt: meter.peak(dt) for dt in args.dtypes} if meter else {}
        for case in cases:
            for dt in args.dtypes:
                progress(f"{case.label} {dt} ({n_threads} thread(s))")
                result = run_case(case, dt, args, pylstm, torch, with_memory)
                check_rows.append(check_row(case, dt, result["checks"]))
                gemm = None
                if meter is not None:
                    progress(f"  {case.label:<24} {dt:<8} GEMM shapes ...")
                    gemm = case_gemm(case, result["valid_steps"], dt, meter)
                    gemm_rows.append({"case": case.label, "dtype": dt, **gemm})
                for mode in MODES:
                    rows.append(timing_row(case, dt, mode, result, peak.get(dt), gemm, n_threads))
                if "memory" in result:
                    memory_rows.append({"case": case.label, "dtype": dt, **result["memory"]})
    return {
        "threads": n_threads,
        "timings": rows,
        "agreement": check_rows,
        "gemm_peak": peak,
        "gemm_shapes": gemm_rows,
        "memory": memory_rows,
        "elapsed_s": time.perf_counter() - t0,
    }


def print_busy_summary(env, runs):
    figures = [t for run in runs for r in run["timings"] for t in (r[i] for i in IMPLS) if t]
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


#: The formulas behind the derived figures, copied into the JSON file.
FORMULAS = {
    "gemm_flops_infer": "sum over layers and directions of 8*n*H*(In+H): input projection "
    "2*n*In*4H + recurrence 2*n*H*4H; n = valid steps (B*T or sum of lengths), In = I for "
    "the first layer and D*H above",
    "gemm_flops_train": "sum over layers and directions of 24*n*H*(In+H): forward 8*n*H*(In+H) "
    "+ backward dX 2*n*4H*In + dW_ih 2*n*4H*In + dW_hh 2*n*4H*H + dh 2*n*4H*H",
    "gflops": "gemm_flops / median wall time of the implementation",
    "frac_peak": "gflops / GEMM peak (scipy.linalg.blas ?gemm, peak_size^3, same dtype and "
    "thread count)",
    "gemm_bound_ms": "sum over the case's GEMMs of flops / GF/s measured at that shape and "
    "storage layout (the faster of ?gemm and, for one-row products, ?gemv)",
    "train_peak_bytes": "tracemalloc peak of forward(training=True) + backward on a fresh "
    "layer, plus the parameter bytes; X and d_out excluded",
    "retained_bytes": "traced bytes still allocated after the call minus the bytes it "
    "returned (work arrays the layer keeps for its next call)",
    "train_theory_bytes": "s*(L*D*n*6H + 2P + B*T*I + B*T*D*H + 4*L*D*B*H): cached gates, "
    "c and h per valid step; parameters and their gradients; dX; out; h_n, c_n and the "
    "gradients for h0, c0",
    "infer_excess_bytes": "tracemalloc peak of forward(training=False) on a fresh layer minus "
    "the bytes of out, h_n and c_n; also at T multiplied by MEMORY_T_FACTOR",
}


def write_json(path, args, cases, env, runs, elapsed):
    """Write everything; the top-level keys of earlier versions describe the first run."""
    first = runs[0]
    saved_args = dict(vars(args), cases=[c.label for c in cases])
    if args.threads and len(args.threads) == 1:
        saved_args["threads"] = args.threads[0]  # an int, as before thread lists
    payload = {
        "args": saved_args,
        "environment": env,
        "timings": first["timings"],
        "agreement": first["agreement"],
        "gemm": {"peak": first["gemm_peak"], "shapes": first["gemm_shapes"]},
        "memory": first["memory"],
        "memory_t_factor": MEMORY_T_FACTOR,
        "runs": [{k: v for k, v in run.items() if k != "memory"} for run in runs],
        "scaling": scaling_rows(runs) if len(runs) > 1 else None,
        "formulas": FORMULAS,
        "elapsed_s": elapsed,
    }
    save_json(path, payload)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.gemm_repeats < 1:
        sys.exit("--repeats and --gemm-repeats must be >= 1")
    if args.peak_size < 1:
        sys.exit("--peak-size must be >= 1")
    cases = select_cases(args)
    malloc = malloc_setting(args)

    pylstm, torch, torch_error, roles = load_libraries(not args.no_torch)
    counts = args.threads or [pylstm_blas_threads(roles)]
    with thread_limits(counts[0], torch, cap_pools=bool(args.threads)):
        env = environment(pylstm, torch, torch_error, roles, counts[0])
    env["thread_counts"] = counts
    env["malloc"] = malloc
    print_header(env)

    t_start = time.perf_counter()
    runs = [
        run_threads(n, cases, args, pylstm, torch, with_memory=i == 0 and not args.no_memory)
        for i, n in enumerate(counts)
    ]
    elapsed = time.perf_counter() - t_start
    for run in runs:
        if len(runs) > 1:
            print(f"{'=' * 40} {run['threads']} thread(s) {'=' * 40}")
        print_tables(run["timings"], run["agreement"])
        print_gemm_table(run, env)
    print_memory_table(runs[0]["memory"])
    if len(runs) > 1:
        print_scaling_table(scaling_rows(runs), runs)
    print(f"total benchmark time {elapsed:.1f} s")
    env["foreign_cpu_end"] = idle_share()
    print_busy_summary(env, runs)
    if args.plot:
        plot_ratios(runs, args.plot)
    if args.json:
        write_json(args.json, args, cases, env, runs, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
