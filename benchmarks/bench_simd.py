"""pylstm at each SIMD level against torch at the same level, and one build against another.

Not a test: a script that prints (and optionally saves) timings.

For each case ``B x T x I x H`` and dtype it times, as ``bench_lstm.py`` does
(same weights in torch, same calls, :func:`bench_lstm.measure`), **train**
(``forward(training=True)`` then ``backward(ones)``) and **infer**
(``forward(training=False)``) of ``pylstm.LSTM`` and ``torch.nn.LSTM``. Every
measurement runs in a fresh worker process (this script with ``--worker``),
so that each can have its own environment:

* ``--levels baseline,avx2,avx512`` (the default: every level the installed
  pylstm reports usable): one worker per level, with ``PYLSTM_SIMD=<level>``
  and torch held to the same instruction set (``ATEN_CPU_CAPABILITY``,
  ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``), as is the OpenBLAS
  that pylstm's whole-sequence GEMMs call (``OPENBLAS_CORETYPE`` Nehalem,
  Haswell or SkylakeX; set in the workers only, see :data:`LEVEL_ENV`). One
  table per level: pylstm ms, torch ms, torch / pylstm (above 1: pylstm is
  faster) and the level each side used.
* ``--builds gcc=PATH,clang=PATH``: one worker per build, each with ``PATH``
  (a folder made by ``pip install --no-deps --target PATH ...``; ``installed``
  = the installed package) first on ``PYTHONPATH``, at the default level with
  torch unrestricted (with ``--levels`` too: at each of those levels, every
  side restricted as above). The table gives each build's ms and its time
  over the first build's (above 1: slower), and the same ratio for the torch
  runs of the two workers, which should be 1: how far it is off shows the
  noise of the run. A single build (``--builds gcc=PATH``) gives the level
  tables of that build.

Every worker reports what was actually used: pylstm's ``_lstm.simd()`` and
``_lstm.compiler()`` ("n/a" for builds that predate them) and module path,
``torch.backends.cpu.get_cpu_capability()``, the ISA oneDNN announces in its
verbose header (MKL cannot say: its line shows ``MKL_ENABLE_INSTRUCTIONS``),
and the kernel ("architecture") threadpoolctl reports for SciPy's OpenBLAS.

The machine is noisy, so the workers run ``--rounds`` times (default 2), in
the given order in even rounds and reversed in odd ones (A B C, C B A, ...:
a slow drift of the load then falls on all alike); a figure is the median of
all samples of all rounds (``--repeats`` per worker and round, taken as
:func:`bench_lstm.measure` does: samples during which other processes used
more than 15% of the CPUs are replaced, waiting at most ``--busy-budget``
seconds per worker for them), marked ``*`` when a worker found the machine
busy for most of them. ``--threads`` (default 1) caps the BLAS/OpenMP pools
(threadpoolctl) and sets ``torch.set_num_threads`` in every worker.

Examples
--------
Headline figures: OpenBLAS picks its own kernel in the parent's environment
(the header shows ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` as the parent
has them)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_simd.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_simd.py \\
        --builds gcc=/tmp/build_gcc,clang=/tmp/build_clang
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_simd.py \\
        --builds old=/tmp/build_old,new=/tmp/build_gcc --no-torch
    python benchmarks/bench_simd.py --levels avx2 --cases 1,100,32,128 --dtypes float32
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from _common import (
    OPENBLAS_OVERRIDES,
    add_common_options,
    cpu_model,
    import_libraries,
    library_summaries,
    malloc_setting,
    print_column_heads,
    progress,
    save_json,
    thread_limits,
)
from bench_lstm import (
    DEFAULT_CASES,
    TOLERANCE,
    Case,
    make_inputs,
    measure,
    parse_case,
    rel_err,
    torch_runner,
)

#: What each level sets in its worker: pylstm, torch (ATen, MKL, oneDNN) and SciPy's OpenBLAS.
LEVEL_ENV = {
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                 "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OPENBLAS_CORETYPE": "SkylakeX"},
}
#: Variables a worker reports as it sees them.
WORKER_VARS = ("PYLSTM_SIMD", *LEVEL_ENV["avx2"], "OPENBLAS_L2_SIZE", "PYTHONPATH")
MODES = ("train", "infer")
#: Start of the worker's result line on its stdout.
MARK = "BENCH_SIMD_RESULT "


# --------------------------------------------------------------------------- worker
def onednn_isa(torch):
    """The ISA oneDNN names in its verbose header, from one tiny LSTM call (its output is
    caught at the file descriptor, so the result line on stdout stays clean)."""
    libc = ctypes.CDLL(None)
    fd = sys.stdout.fileno()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        sys.stdout.flush()
        os.dup2(tmp.fileno(), fd)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                torch.nn.LSTM(4, 8, batch_first=True)(torch.zeros(1, 2, 4))
        except Exception as exc:  # any failure: no figure
            return f"? ({type(exc).__name__})"
        finally:
            libc.fflush(None)
            os.dup2(saved, fd)
            os.close(saved)
        tmp.seek(0)
        m = re.search(r"isa:([^\n]+)", tmp.read().decode(errors="replace"))
    return m.group(1).strip() if m else "?"


def scipy_openblas():
    """``version architecture`` of the OpenBLAS SciPy (so pylstm) calls, per threadpoolctl."""
    libs = [lib for lib in library_summaries() if lib["internal_api"] == "openblas"]
    libs.sort(key=lambda lib: "scipy" not in os.path.dirname(lib["filepath"] or ""))
    return f"{libs[0]['version']} {libs[0]['architecture']}" if libs else "no OpenBLAS"


def time_case(case, dtype, args, pylstm, torch):
    """Median-ready samples of pylstm and torch, train and infer, for one case and dtype."""
    dtype = np.dtype(dtype)
    X, lengths = make_inputs(case, dtype, np.random.default_rng(args.seed))
    layer = pylstm.LSTM(case.I, case.H, num_layers=case.num_layers,
                        bidirectional=case.bidirectional, dtype=dtype.type,
                        random_state=args.seed)
    ones = np.ones_like(layer.forward(X, lengths=lengths, training=True)[0])
    calls = {("pylstm", "infer"): lambda: layer.forward(X, lengths=lengths, training=False),
             ("pylstm", "train"): lambda: (layer.forward(X, lengths=lengths, training=True),
                                           layer.backward(ones))}
    err = None
    if torch is not None:
        _, t_infer, t_train = torch_runner(torch, case, dtype, layer.state_dict(), X, lengths)
        err = rel_err(calls["pylstm", "infer"]()[0], t_infer()[0].numpy())
        calls["torch", "infer"], calls["torch", "train"] = t_infer, t_train
    margs = argparse.Namespace(repeats=args.repeats, warmup=2, min_time=args.min_time,
                               busy_wait=15.0, busy_budget=args.busy_budget)
    rows = []
    for mode in MODES:
        for impl in ("pylstm", "torch"):
            if (impl, mode) in calls:
                progress(f"  {case.label:<16} {dtype.name:<8} {mode:<6} {impl} ...")
                m = measure(calls[impl, mode], margs)
                rows.append({"case": case.label, "dtype": dtype.name, "mode": mode,
                             "impl": impl, "samples_ms": m["samples_ms"], "busy": m["busy"],
                             "foreign_cpu": m["foreign_cpu"], "torch_err": err})
    return rows


def worker(args):
    malloc = malloc_setting(args)
    pylstm, torch, torch_error = import_libraries(not args.no_torch)
    _lstm = importlib.import_module("pylstm._lstm")
    info = {"pylstm_simd": getattr(_lstm, "simd", lambda: "n/a")(),  # "n/a": older builds
            "pylstm_compiler": getattr(_lstm, "compiler", lambda: "n/a")(),
            "pylstm_path": os.path.dirname(pylstm.__file__), "torch_error": torch_error,
            "env": {k: os.environ.get(k, "unset") for k in WORKER_VARS}, "malloc": malloc}
    if torch is not None:
        info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        info["onednn_isa"] = onednn_isa(torch)
    rows = []
    with thread_limits(args.threads, torch):
        info["openblas"] = scipy_openblas()
        for case in args.cases:
            for dtype in args.dtypes:
                rows += time_case(case, dtype, args, pylstm, torch)
    print(MARK + json.dumps({"info": info, "rows": rows}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent
def case_arg(case):
    """``B,T,I,H[,L][,bi][,var]`` for :func:`bench_lstm.parse_case`."""
    extra = [str(case.num_layers)] + ["bi"] * case.bidirectional + ["var"] * case.variable_lengths
    return ",".join(str(v) for v in (case.B, case.T, case.I, case.H, *extra))


def run_worker(spec, args):
    name, path, level = spec
    env = dict(os.environ)
    if level is not None:
        env.update(LEVEL_ENV[level], PYLSTM_SIMD=level)
    if path != "installed":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--cases",
           *map(case_arg, args.cases), "--dtypes", *args.dtypes, "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--min-time", str(args.min_time),
           "--busy-budget", str(args.busy_budget), "--seed", str(args.seed)]
    cmd += ["--no-torch"] * args.no_torch + ["--steady-malloc"] * args.steady_malloc
    progress(f"worker {name} at level {level or 'default'} ...")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        sys.exit(f"worker {name} ({path}, level {level}) failed with code {proc.returncode}")
    result = json.loads(lines[-1][len(MARK):])
    if path != "installed" and not result["info"]["pylstm_path"].startswith(path):
        sys.exit(f"worker {name} imported pylstm from {result['info']['pylstm_path']}, "
                 f"not from {path}")
    return result


def pooled(results):
    """(case, dtype, mode, impl) -> median ms and busy flag over the samples of all rounds."""
    samples, busy = {}, {}
    for result in results:
        for r in result["rows"]:
            key = (r["case"], r["dtype"], r["mode"], r["impl"])
            samples.setdefault(key, []).extend(r["samples_ms"])
            busy[key] = busy.get(key, False) or r["busy"]
    return {k: (float(np.median(v)), busy[k]) for k, v in samples.items()}


def fmt(fig):
    return "-" if fig is None else f"{fig[0]:8.3f}{'*' if fig[1] else ' '}"


def ratio(a, b):
    return f"{a[0] / b[0]:.2f}" if a and b else "-"


def describe(spec, info):
    name, path, level = spec
    torch = f"torch: {info['torch_error'] or 'off'}"
    if "torch_capability" in info:
        torch = (f"torch {info['torch_capability']}, oneDNN {info['onednn_isa']}, "
                 f"MKL_ENABLE_INSTRUCTIONS={info['env']['MKL_ENABLE_INSTRUCTIONS']}")
    return (f"[{name} @ {level or 'default'}] pylstm {info['pylstm_simd']} "
            f"({info['pylstm_compiler']}) from {info['pylstm_path']} | {torch} | "
            f"SciPy OpenBLAS {info['openblas']} | PYLSTM_SIMD={info['env']['PYLSTM_SIMD']}, "
            f"OPENBLAS_CORETYPE={info['env']['OPENBLAS_CORETYPE']}")


def keys(args):
    return [(c.label, d, m) for c in args.cases for d in args.dtypes for m in MODES]


def print_levels(specs, figs, infos, args):
    for spec, fig, info in zip(specs, figs, infos, strict=True):
        used = f"{info['pylstm_simd']:<8} {info.get('torch_capability', '-')}"
        print(f"\n== level {spec[2]} ==")
        print_column_heads(f"{'case':<16} {'dtype':<8} {'mode':<6} {'pylstm ms':>10} "
                           f"{'torch ms':>10} {'torch/pl':>8}  {'pylstm':<8} torch")
        for k in keys(args):
            pl, th = fig.get((*k, "pylstm")), fig.get((*k, "torch"))
            print(f"{k[0]:<16} {k[1]:<8} {k[2]:<6} {fmt(pl):>10} {fmt(th):>10} "
                  f"{ratio(th, pl):>8}  {used}")


def print_builds(specs, figs, args):
    for level in dict.fromkeys(s[2] for s in specs):
        idx = [i for i, s in enumerate(specs) if s[2] == level]
        names = [specs[i][0] for i in idx]
        print(f"\n== builds at level {level or 'default'}: time ratio to {names[0]} "
              f"(above 1: slower); torch ratio = the same for the torch runs (noise) ==")
        print_column_heads(f"{'case':<16} {'dtype':<8} {'mode':<6} " + " ".join(
            f"{n + ' ms':>10}" for n in names) + "".join(
            f" {n + '/' + names[0]:>12} {'torch':>6}" for n in names[1:]))
        for k in keys(args):
            pl = [figs[i].get((*k, "pylstm")) for i in idx]
            th = [figs[i].get((*k, "torch")) for i in idx]
            row = " ".join(f"{fmt(p):>10}" for p in pl) + "".join(
                f" {ratio(pl[j], pl[0]):>12} {ratio(th[j], th[0]):>6}" for j in range(1, len(pl)))
            print(f"{k[0]:<16} {k[1]:<8} {k[2]:<6} {row}")


def parent(args):
    builds = args.builds or [("installed", "installed")]
    if args.levels is None and len(builds) == 1:
        from pylstm import _lstm
        args.levels = _lstm.simd_levels()
    specs = [(n, p, lv) for lv in (args.levels or [None]) for n, p in builds]
    print("=" * 100)
    what = f"builds {', '.join(n for n, _ in builds)}" if len(builds) > 1 else "levels"
    print(f"bench_simd.py: {what} | cpu: {cpu_model()} ({os.cpu_count()} logical cpus) | "
          f"python {sys.version.split()[0]}")
    print("parent environment: " + ", ".join(
        f"{k}={os.environ.get(k, 'unset')}" for k in (*OPENBLAS_OVERRIDES, "PYLSTM_SIMD")))
    if any(k in os.environ for k in OPENBLAS_OVERRIDES):
        print("  (not headline figures: run under env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)")
    print(f"threads {args.threads} (threadpoolctl, torch.set_num_threads) | {args.repeats} samples"
          f" per worker and round, {args.rounds} rounds (order reversed in odd rounds)")
    print("=" * 100)
    results = {s: [] for s in specs}
    for r in range(args.rounds):
        for spec in (specs if r % 2 == 0 else specs[::-1]):
            results[spec].append(run_worker(spec, args))
    infos = [results[s][0]["info"] for s in specs]
    for spec, info in zip(specs, infos, strict=True):
        print(describe(spec, info))
        bad = {r["case"] + " " + r["dtype"] for r in results[spec][0]["rows"]
               if (r["torch_err"] or 0) > TOLERANCE[r["dtype"]]}
        if bad:
            print(f"  WARNING: pylstm and torch disagree on {', '.join(sorted(bad))}")
    figs = [pooled(results[s]) for s in specs]
    if len(builds) > 1:
        print_builds(specs, figs, args)
    else:
        print_levels(specs, figs, infos, args)
    print("* = a worker found other processes busy during the figure's samples")
    if args.json:
        save_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "cases"},
                              "cases": [c.label for c in args.cases],
                              "workers": [{"name": s[0], "path": s[1], "level": s[2],
                                           "rounds": results[s]} for s in specs]})
    return 0


def parse_list(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(choices)}: {text!r}")
        return items
    return parse


def parse_builds(text):
    builds = [item.partition("=")[::2] for item in text.split(",") if item]
    for name, path in builds:
        if not name or not (path == "installed" or os.path.isdir(path)):
            raise argparse.ArgumentTypeError(f"NAME=PATH with a folder or 'installed': {text!r}")
    return [(n, p if p == "installed" else os.path.abspath(p)) for n, p in builds]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=parse_list(tuple(LEVEL_ENV)), metavar="L1,L2",
                   help="levels to compare (default: every level pylstm reports usable)")
    p.add_argument("--builds", type=parse_builds, metavar="NAME=PATH,...",
                   help="builds to compare (PATH from pip install --target, or 'installed')")
    p.add_argument("--cases", nargs="+", type=parse_case, metavar="B,T,I,H",
                   default=[Case(*c) for c in DEFAULT_CASES])
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7, help="samples per worker and round")
    p.add_argument("--rounds", type=int, default=2, help="runs of every worker (default 2)")
    p.add_argument("--threads", type=int, default=1, help="BLAS pools and torch (default 1)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds a sample lasts at least")
    p.add_argument("--busy-budget", type=float, default=60.0,
                   help="seconds a worker waits at most for other processes (default 60)")
    p.add_argument("--no-torch", action="store_true", help="time pylstm only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_common_options(p)
    args = p.parse_args(argv)
    return worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    sys.exit(main())
