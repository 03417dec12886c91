"""What the benchmark scripts share: the NumPy reference, the run's settings and header,
timing, the summary file, and PyTorch's twins of pylstm's models with their training steps.

Not a package module: the scripts run as files (``python benchmarks/bench_lstm.py``), so
their folder comes first on ``sys.path`` and they ``import _common``.
"""

import ctypes
import ctypes.util
import functools
import gc
import importlib.util
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import threadpoolctl  # installed with scikit-learn

# Imported before any thread cap is set: threadpoolctl caps only the BLAS libraries
# already loaded, and pylstm loads SciPy's.
import pylstm

#: Variables that change what pylstm, torch and the BLAS/OpenMP libraries do; the header
#: shows them.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "PYLSTM_SIMD", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
            "ONEDNN_MAX_CPU_ISA")


def progress(msg):
    """Print a progress message to stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def numpy_reference():
    """The ``NumpyLSTM`` class of ``tests/reference.py``, the tests' oracle, loaded by path
    (the repository root on ``sys.path`` would shadow the installed pylstm)."""
    name = "pylstm_tests_reference"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "tests" / "reference.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].NumpyLSTM


# --------------------------------------------------------------------------- settings
def add_common_options(parser, threads_type=int, threads_default=None, timing=True):
    """Add ``--threads`` and ``--quick``; with ``timing``, ``--seed``, ``--json`` and
    ``--steady-malloc`` too."""
    parser.add_argument("--threads", type=threads_type, default=threads_default,
                        help="cap every BLAS/OpenMP pool (threadpoolctl) and torch's threads "
                             f"(default: {threads_default or 'the libraries own'})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one sample: checks that the script runs (no figures)")
    if timing:
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", metavar="PATH", help="write the medians and ratios here")
        parser.add_argument("--steady-malloc", action="store_true",
                            help="keep freed memory in the process (glibc mallopt), so that no "
                                 "library pays page faults for fresh temporaries on every call")


def apply_quick(args, **settings):
    """With ``--quick``, replace the given options and run on one thread unless told
    otherwise (a smoke test on a shared machine should not wait for busy cores)."""
    if args.quick:
        for name, value in {"threads": 1, **settings}.items():
            setattr(args, name, value)
    return args


def set_threads(n_threads, torch=None):
    """Cap every BLAS/OpenMP pool and torch at ``n_threads`` (None: leave the defaults),
    so that neither side runs on more cores than the other."""
    if n_threads is not None:
        threadpoolctl.threadpool_limits(limits=n_threads)
        if torch is not None:
            torch.set_num_threads(n_threads)


def steady_malloc():
    """Make glibc's malloc keep freed memory in the process; returns what the header shows.

    Blocks up to glibc's largest mmap threshold then come from a never trimmed heap: a
    library that allocates its temporaries on every call (torch, the NumPy reference)
    reuses warm pages instead of faulting in new ones, as pylstm, keeping its work
    arrays, does anyway."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return "glibc defaults (no mallopt here)"
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mmap_max = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
    settings = ((m_mmap_threshold, mmap_max), (m_top_pad, 2**30), (m_trim_threshold, 2**30))
    if not all(mallopt(key, value) == 1 for key, value in settings):
        return "glibc defaults (mallopt refused)"
    return f"steady (M_MMAP_THRESHOLD={mmap_max}, M_TOP_PAD=M_TRIM_THRESHOLD=2**30)"


def start(args, title, torch="wanted"):
    """Set a run up from ``args`` (malloc, torch, thread caps) and print its header;
    ``torch`` is ``"wanted"``, ``"needed"`` (the script ends without it) or ``"no"``.
    Returns torch (or None) and the :func:`environment` of the run."""
    malloc = steady_malloc() if getattr(args, "steady_malloc", False) else "glibc defaults"
    module, why = None, "disabled"
    if torch != "no":
        try:
            import torch as module
        except Exception as exc:  # any failure means "no torch"
            why = f"{type(exc).__name__}: {exc}"
        if module is None and torch == "needed":
            sys.exit(f"{Path(sys.argv[0]).name} needs torch: {why}")
    threads = getattr(args, "threads", None)
    set_threads(threads[0] if isinstance(threads, list) else threads, module)
    env = environment(module, None if module else why, threads, malloc)
    print_header(title, env)
    return module, env


# --------------------------------------------------------------------------- header
def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(torch=None, torch_error=None, threads=None, malloc="glibc defaults"):
    """What a result depends on, as a dict: machine and load, the versions of numpy,
    scipy, pylstm (SIMD level, compiler, folder) and ``torch`` (threads, CPU capability, BLAS),
    ``torch_error`` (why no torch), the ``threads`` option, ``malloc``, the variables
    :data:`ENV_VARS` and the BLAS/OpenMP ``libraries`` threadpoolctl finds."""
    import scipy

    try:
        config = pylstm.show_config(mode="dicts")
    except AttributeError:  # builds older than show_config
        config = {"simd": "n/a", "compiler": "n/a"}
    env = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__, "scipy": scipy.__version__,
        "pylstm": f"{pylstm.__version__} ({config['simd']}, {config['compiler']})",
        "pylstm_path": os.path.dirname(pylstm.__file__),
        "torch": None, "torch_error": torch_error, "threads": threads, "malloc": malloc,
        "env": {k: os.environ.get(k, "unset") for k in ENV_VARS},
        "libraries": [
            {"api": i.get("internal_api"), "version": i.get("version"),
             "architecture": i.get("architecture"), "num_threads": i.get("num_threads"),
             "file": "/".join(Path(i.get("filepath") or "?").parts[-2:])}
            for i in threadpoolctl.threadpool_info()],
    }
    if torch is not None:
        blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        env["torch"] = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "blas": blas.group(1) if blas else "?"}
    return env


def print_header(title, env):
    """Print ``title`` and the :func:`environment` lines above a script's tables."""
    print(f"{'=' * 100}\n{title}\n{'=' * 100}")
    load = env["load_average"]
    print(f"python {env['python']} | {env['platform']} | cpu {env['cpu']} "
          f"({env['cpu_count']} logical cpus)"
          + (f" | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""))
    t = env["torch"]
    torch_text = (f"{t['version']} (cpu capability {t['cpu_capability']}, BLAS {t['blas']}, "
                  f"{t['num_threads']} threads)" if t else f"not used ({env['torch_error']})")
    print(f"numpy {env['numpy']} | scipy {env['scipy']} | pylstm {env['pylstm']} | "
          f"torch {torch_text}\npylstm from {env['pylstm_path']}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env["env"].items())
          + f" | malloc: {env['malloc']}")
    print("BLAS / OpenMP libraries (threadpoolctl, under the run's thread cap):")
    for lib in env["libraries"]:
        print(f"  - {lib['api']} {lib['version']}, kernel {lib['architecture'] or '-'}, "
              f"{lib['num_threads']} thread(s): {lib['file']}")
    print(f"--threads: {env['threads'] if env['threads'] is not None else 'library defaults'}")
    print()


# --------------------------------------------------------------------------- timing
def median_iqr(seconds):
    """``{"median_ms": ..., "iqr_ms": ...}`` of samples in seconds."""
    q1, med, q3 = 1e3 * np.percentile(seconds, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1)}


def alternate(calls, repeats, min_time=0.0, warmup=0):
    """Sample each of ``calls`` (name -> function) ``repeats`` times, in order in even
    rounds and reversed in odd ones, so that a drift of the load falls on all alike.

    ``warmup`` untimed rounds come first. A sample calls the function once, or as often
    as it takes to last ``min_time`` seconds, with the garbage collector off (it collects
    before each sample), so that no sample pays for another's garbage. Returns ``wall``
    and ``cpu``, name -> seconds of wall time and of this process's CPU time per call,
    and ``last``, name -> what its last call returned.
    """
    names, gc_was_on = list(calls), gc.isenabled()
    wall, cpu, last = {n: [] for n in names}, {n: [] for n in names}, {}
    for _ in range(warmup):
        for name in names:
            calls[name]()
    try:
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                gc.collect()
                gc.disable()
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while n == 0 or time.perf_counter() - t0 < min_time:
                    last[name] = calls[name]()
                    n += 1
                wall[name].append((time.perf_counter() - t0) / n)
                cpu[name].append((time.process_time() - c0) / n)
    finally:
        if gc_was_on:
            gc.enable()
    return wall, cpu, last


#: pylstm's compiled calls in a fit (functions of ``pylstm._lstm``): the LSTM training
#: kernels, the input gradient, the heads' products and the classifiers' and the
#: language model's loss (src/_head.pxi), and the inference kernel of a validation.
#: The optimizer, clipping and the regressor's loss, compiled passes or NumPy, count as
#: the fit's own work.
COMPILED = ("forward_train", "backward", "input_gradient", "gemm_halves",
            "head_weight_gradients", "softmax_cross_entropy", "forward_infer")


def time_compiled(fit, record=None):
    """``fit()``'s wall time and the seconds inside each of its :data:`COMPILED` calls
    (name -> seconds), timed by wrapping them in ``pylstm._lstm`` for this one call (two
    clock reads each). ``record(name, call, args, kwargs, seconds, held)``, when given, is
    told of every call; ``held``: whether BLAS was held to one thread as it began."""
    from pylstm import _lstm, _threads

    inside, real = dict.fromkeys(COMPILED, 0.0), {name: getattr(_lstm, name) for name in COMPILED}

    def timed(name, call):
        def run(*args, **kwargs):
            held = bool(_threads._state["holds"])
            t0 = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - t0
                inside[name] += seconds
                if record is not None:
                    record(name, call, args, kwargs, seconds, held)
        return run

    try:
        for name, call in real.items():
            setattr(_lstm, name, timed(name, call))
        t0 = time.perf_counter()
        fit()
        wall = time.perf_counter() - t0
    finally:
        for name, call in real.items():
            setattr(_lstm, name, call)
    return wall, inside


def ab_row(label, calls, repeats, min_time=0.0):
    """A table row: ``label`` as ``case``, the median ms per call of each of two ``calls``
    (name -> function, the names ending in ``_ms``), sampled by :func:`alternate` after one
    untimed round, and ``ratio``, the second's median over the first's."""
    wall = alternate(calls, repeats, min_time, warmup=1)[0]
    row = {"case": label, **{k: 1e3 * float(np.median(v)) for k, v in wall.items()}}
    first, second = calls
    return {**row, "ratio": row[second] / row[first]}


def print_ab(rows, first, second, meaning, case_heading="case (BxTxIxH)"):
    """Print :func:`ab_row` rows as a table, ``first`` and ``second`` the two calls' names
    without ``_ms``, ``meaning`` what the ratio's side of 1 says."""
    print(f"Median ms per call; ratio = {second} / {first} ({meaning})")
    print("\n".join(table([(case_heading, "<16", "case")]
                          + [(f"{name} ms", f">{len(name) + 5}.3f", f"{name}_ms")
                             for name in (first, second)]
                          + [("ratio", ">7.3f", "ratio")], rows)))


def training_inputs(case, dtype, seed):
    """``I, H, X, d_out`` of a ``BxTxIxH`` case: a layer's normal inputs and output
    gradients."""
    B, T, I, H = (int(v) for v in case.split("x"))
    rng = np.random.default_rng(seed)
    return (I, H, rng.normal(size=(B, T, I)).astype(dtype),
            rng.normal(size=(B, T, H)).astype(dtype))


def sgemm_rate(n=2048, repeats=7):
    """GFLOP/s of a float32 n x n x n product through the BLAS pylstm calls (SciPy's),
    median of ``repeats``: the machine's attainable rate at the current thread cap."""
    from pylstm._blas import gemm_rm

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    times = []
    for _ in range(repeats + 1):  # the first call is untimed
        t0 = time.perf_counter()
        gemm_rm(False, False, 1.0, a, a, 0.0, c)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times[1:])) / 1e9


def geomean(values):
    """Geometric mean of positive numbers (nan when there are none)."""
    values = [v for v in values if v is not None]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def table(columns, rows):
    """A table's lines: heading, rule, one line per row. ``columns`` are ``(heading, spec,
    cell)``: ``spec`` a format spec starting with alignment and width (``">9.2f"``),
    ``cell`` a key of the row, a tuple of keys into nested dicts or a function of the
    row; a missing value (None) shows as ``-``."""
    def value(row, cell):
        if callable(cell):
            return cell(row)
        for key in cell if isinstance(cell, tuple) else (cell,):
            row = (row or {}).get(key)
        return row
    specs = [(spec[0], int(re.match(r"\d+", spec[1:]).group()), spec) for _, spec, _ in columns]
    head = " ".join(f"{h:{a}{w}}" for (h, _, _), (a, w, _) in zip(columns, specs, strict=True))
    lines = [head, "-" * len(head)]
    for row in rows:
        values = [value(row, cell) for _, _, cell in columns]
        lines.append(" ".join(f"{'-':{a}{w}}" if v is None else format(v, spec)
                              for v, (a, w, spec) in zip(values, specs, strict=True)).rstrip())
    return lines


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def write_json(path, env, **parts):
    """Write the run's summary to ``path``, if one is given: the script, its options, the
    :func:`environment` ``env`` and ``parts``, to four significant digits (as the tables
    print them), one line per top-level key and per row of a table (a list of dicts)."""
    if not path:
        return
    lines = []
    payload = {"script": Path(sys.argv[0]).name, "args": sys.argv[1:], "environment": env}
    for key, value in _rounded({**payload, **parts}).items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = ",\n  ".join(json.dumps(v, default=str) for v in value)
            lines.append(f" {json.dumps(key)}: [\n  {rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, default=str)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {path}")


# --------------------------------------------------------------------------- torch twins
@functools.cache
def torch_twins(torch):
    """PyTorch's versions of pylstm's estimator models, as ``(Sequence, LanguageModel)``.

    ``Sequence(n_in, hidden, n_out, dtype)``, the estimators' model: an LSTM, a linear
    layer on the last layer's final hidden state (``forward(x, lengths=None)``, packed).
    ``LanguageModel(vocab, embedding, hidden, layers)``: embedding, LSTM, a linear head
    on every step (``forward(x, state=None)``)."""
    nn = torch.nn

    class Sequence(nn.Module):
        def __init__(self, n_in, hidden, n_out, dtype=None):
            super().__init__()
            self.lstm = nn.LSTM(n_in, hidden, batch_first=True, dtype=dtype)
            self.head = nn.Linear(hidden, n_out, dtype=dtype)

        def forward(self, x, lengths=None):
            if lengths is not None:
                x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                      enforce_sorted=False)
            _, (h_n, _) = self.lstm(x)
            return self.head(h_n[-1])

    class LanguageModel(nn.Module):
        def __init__(self, vocab_size, embedding_dim, hidden, layers=1):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
            self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True)
            self.head = nn.Linear(hidden, vocab_size)

        def forward(self, x, state=None):
            out, state = self.lstm(self.embedding(x), state)
            return self.head(out), state

    return Sequence, LanguageModel


def torch_step(torch, params, optimizer, loss):
    """One update as pylstm's estimators make it: gradients, clipping to norm 5
    (pylstm's default ``clip_norm``), the optimizer's step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    optimizer.step()


def torch_lm_epoch(torch, model, optimizer, inputs, targets, seq_len):
    """One epoch of stateful truncated BPTT, as ``LSTMLanguageModel`` trains: windows of
    ``seq_len`` steps over the lanes, the detached ``(h, c)`` carried from one to the next
    (reset each epoch), mean cross-entropy per token. Returns the epoch's mean loss."""
    params = list(model.parameters())
    state, total, count = None, 0.0, 0
    for start in range(0, inputs.shape[1], seq_len):
        x, y = inputs[:, start:start + seq_len], targets[:, start:start + seq_len]
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        torch_step(torch, params, optimizer, loss)
        state = tuple(s.detach() for s in state)
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count


def torch_perplexity(torch, model, inputs, targets):
    """Perplexity of a :func:`torch_twins` language model on one lane (a text read as one
    stream, as ``LSTMLanguageModel.perplexity`` reads it), in float64."""
    with torch.no_grad():
        logits, _ = model(inputs)
        nll = torch.nn.functional.cross_entropy(logits[0].double(), targets[0])
    return float(torch.exp(nll))


def char_lanes(text, batch_size, seq_len, vocab=None):
    """pylstm's character pipeline: vocabulary, and the lanes of ``<bos>`` + text.

    The vocabulary is ``<unk>``, ``<bos>``, then the text's sorted characters (or
    ``vocab``); the token stream is cut into ``batch_size`` lanes of equal width,
    the targets one token ahead, as ``LSTMLanguageModel`` cuts it.

    Returns
    -------
    vocab : list of str
    inputs, targets : ndarray of int64 of shape (lanes, width)
    """
    vocab = vocab or ["<unk>", "<bos>"] + sorted(set(text) - {"<unk>", "<bos>"})
    index = {tok: i for i, tok in enumerate(vocab)}
    data = np.array([1] + [index.get(ch, 0) for ch in text], dtype=np.int64)
    lanes = max(1, min(batch_size, (len(data) - 1) // seq_len))
    width = (len(data) - 1) // lanes
    return (vocab, data[:lanes * width].reshape(lanes, width),
            data[1:lanes * width + 1].reshape(lanes, width))


def copy_weights(torch, model, net):
    """Copy a pylstm estimator's ``network_`` into its :func:`torch_twins` model (the
    language model's embedding too)."""
    # Each one-layer pylstm LSTM names its parameters "..._l0[_reverse]"; layer k of
    # torch's stack "..._l{k}[_reverse]".
    lstm = [(getattr(model.lstm, name.replace("_l0", f"_l{k}", 1)), arr)
            for k, layer in enumerate(net.layers)
            for name, arr in zip(layer.state_dict(), layer.parameters(), strict=True)]
    pairs = {"lstm": lstm,
             "head": [(model.head.weight, net.coef.T), (model.head.bias, net.intercept)]}
    if hasattr(net, "embedding"):
        pairs["embedding"] = [(model.embedding.weight, net.embedding)]
    with torch.no_grad():
        for tensor, arr in (pair for part in pairs.values() for pair in part):
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(arr)))
