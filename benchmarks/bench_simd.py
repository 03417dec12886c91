"""pylstm at each SIMD level against torch held to the same level, and build against build.

The cases of ``bench_lstm.py``, each level (``PYLSTM_SIMD``, torch's ``ATEN_CPU_CAPABILITY``,
``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``, SciPy's ``OPENBLAS_CORETYPE``: see
:data:`LEVEL_ENV`) or build (``--builds NAME=PATH,...``, folders from ``pip install
--target``) in a worker process of its own (this script with ``--worker``), workers in
``--rounds`` rounds of alternating order. See benchmarks/README.md. Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_simd.py --threads 2
    python benchmarks/bench_simd.py --builds gcc=/tmp/build_gcc,clang=/tmp/build_clang
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile

import _common as common
import numpy as np
from bench_lstm import CASE_COLUMNS, DEFAULT_CASES, TOLERANCE, Case, parse_case, run_case

import pylstm

#: What each level sets in its worker: torch (ATen, MKL, oneDNN) and SciPy's OpenBLAS.
LEVEL_ENV = {
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                 "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OPENBLAS_CORETYPE": "SkylakeX"},
}
MODES = ("train", "infer")
#: Start of the worker's result line on its stdout.
MARK = "BENCH_SIMD_RESULT "


# --------------------------------------------------------------------------- worker
def onednn_isa(torch):
    """The ISA in oneDNN's verbose header, from one tiny LSTM call; its output is caught
    at the file descriptor, so that the result line on stdout stays clean."""
    fd, saved = sys.stdout.fileno(), os.dup(sys.stdout.fileno())
    with tempfile.TemporaryFile() as tmp:
        sys.stdout.flush()
        os.dup2(tmp.fileno(), fd)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                torch.nn.LSTM(4, 8, batch_first=True)(torch.zeros(1, 2, 4))
        except Exception as exc:  # no verbose mode: no figure
            return f"? ({type(exc).__name__})"
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, fd)
            os.close(saved)
        tmp.seek(0)
        m = re.search(r"isa:([^\n]+)", tmp.read().decode(errors="replace"))
    return m.group(1).strip() if m else "?"


def worker(args):
    malloc = common.steady_malloc() if args.steady_malloc else "glibc defaults"
    torch, torch_error = None, "disabled"
    if not args.no_torch:
        try:
            import torch
        except Exception as exc:  # any failure means "no torch"
            torch_error = f"{type(exc).__name__}: {exc}"
    from pylstm import _lstm

    blas = [i for i in common.threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "scipy" in os.path.dirname(i["filepath"] or "")]
    info = {"simd": getattr(_lstm, "simd", lambda: "n/a")(),  # n/a: builds older than it
            "compiler": getattr(_lstm, "compiler", lambda: "n/a")(),
            "path": os.path.dirname(pylstm.__file__), "torch": torch_error, "malloc": malloc,
            "openblas": f"{blas[0]['version']} {blas[0]['architecture']}" if blas else "?",
            "env": {k: os.environ.get(k, "unset") for k in ("PYLSTM_SIMD", *LEVEL_ENV["avx2"])}}
    if torch is not None:
        info["torch"] = f"{torch.backends.cpu.get_cpu_capability()}, oneDNN {onednn_isa(torch)}"
    common.set_threads(args.threads, torch)
    args.no_numpy, args.warmup = True, 2
    rows = []
    for case in args.cases:
        for dt in args.dtypes:
            checks, case_rows = run_case(case, np.dtype(dt).type, args, torch, args.threads,
                                         keep_samples=True)
            rows += [{"case": r["case"], "dtype": dt, "mode": r["mode"], "impl": impl,
                      "samples": r[impl]["samples"], "torch_err": checks.get("torch_out")}
                     for r in case_rows for impl in ("pylstm", "torch") if impl in r]
    print(MARK + json.dumps({"info": info, "rows": rows}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent
def case_arg(case):
    extra = [str(case.num_layers)] + ["bi"] * case.bidirectional + ["var"] * case.variable_lengths
    return ",".join(map(str, (case.B, case.T, case.I, case.H, *extra)))


def run_worker(name, path, level, args):
    env = dict(os.environ)
    if level is not None:
        env.update(LEVEL_ENV[level], PYLSTM_SIMD=level)
    if path != "installed":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--cases",
           *map(case_arg, args.cases), "--dtypes", *args.dtypes, "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--min-time", str(args.min_time),
           "--seed", str(args.seed)] + ["--no-torch"] * args.no_torch \
        + ["--steady-malloc"] * args.steady_malloc
    common.progress(f"worker {name} at level {level or 'default'} ...")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        sys.exit(f"worker {name} ({path}, level {level}) failed with code {proc.returncode}")
    result = json.loads(lines[-1][len(MARK):])
    if path != "installed" and not result["info"]["path"].startswith(path):
        sys.exit(f"worker {name} imported pylstm from {result['info']['path']}, not {path}")
    return result


def parse_list(choices):
    def parse(text):
        items = [t for t in text.split(",") if t]
        if not items or set(items) - set(choices):
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(choices)}: {text!r}")
        return items
    return parse


def parse_builds(text):
    builds = [item.partition("=")[::2] for item in text.split(",") if item]
    if not all(n and (p == "installed" or os.path.isdir(p)) for n, p in builds):
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
    p.add_argument("--min-time", type=float, default=0.05, help="seconds a sample lasts at least")
    p.add_argument("--no-torch", action="store_true", help="time pylstm only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    common.add_common_options(p, threads_default=1)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if common.apply_quick(args, cases=[Case(2, 4, 3, 4)], dtypes=["float32"], repeats=1, rounds=1,
                          min_time=0.0).quick:
        args.levels = args.levels or [pylstm.show_config(mode="dicts")["simd"]]
    builds = args.builds or [("installed", "installed")]
    if args.levels is None and len(builds) == 1:
        args.levels = pylstm.show_config(mode="dicts")["simd_available"]
    specs = [(n, path, lv) for lv in (args.levels or [None]) for n, path in builds]
    what = "builds" if len(builds) > 1 else "levels"
    _, env = common.start(argparse.Namespace(threads=args.threads),
                          f"bench_simd.py: {what}, {args.repeats} samples x {args.rounds} "
                          "rounds per worker (the header: the parent's environment)", "no")
    results = {s: [] for s in specs}
    for r in range(args.rounds):
        for spec in specs if r % 2 == 0 else specs[::-1]:
            results[spec].append(run_worker(*spec, args))
    figures, workers = {}, []
    for spec, runs in results.items():
        info = runs[0]["info"]
        workers.append({"name": spec[0], "path": spec[1], "level": spec[2], **info})
        print(f"[{spec[0]} @ {spec[2] or 'default'}] pylstm {info['simd']} ({info['compiler']}) "
              f"from {info['path']} | torch {info['torch']} | SciPy OpenBLAS {info['openblas']}"
              f" | {', '.join(f'{k}={v}' for k, v in info['env'].items())}")
        for row in (row for run in runs for row in run["rows"]):
            key = (spec, row["case"], row["dtype"], row["mode"], row["impl"])
            figures.setdefault(key, []).extend(row["samples"])
            if (row["torch_err"] or 0) > TOLERANCE[row["dtype"]]:
                print(f"  WARNING: pylstm and torch disagree on {row['case']} {row['dtype']}")
    med = {k: float(np.median(v)) for k, v in figures.items()}
    rows = []
    for level in dict.fromkeys(s[2] for s in specs):
        group = [s for s in specs if s[2] == level]
        first = group[0][0]
        print(f"\n== level {level or 'default'}: ms per call; X/{first}: time over {first}'s "
              "(above 1: slower), torch: the same of their torch runs (noise); torch/pl above "
              "1: pylstm faster ==")
        for case, dt, mode in [(c.label, d, m) for c in args.cases for d in args.dtypes
                               for m in MODES]:
            row = {"case": case, "dtype": dt, "mode": mode, "level": level}
            for s in group:
                row[f"{s[0]}_ms"] = med.get((s, case, dt, mode, "pylstm"))
                row[f"torch_{s[0]}_ms"] = med.get((s, case, dt, mode, "torch"))
            for s in group[1:]:  # each build's time over the first build's, and torch's
                for key in (f"{s[0]}_ms", f"torch_{s[0]}_ms"):
                    base = row[key.replace(s[0], first)]
                    row[key[:-3] + f"/{first}"] = row[key] / base if row[key] and base else None
            if row[f"torch_{first}_ms"]:
                row["torch/pl"] = row[f"torch_{first}_ms"] / row[f"{first}_ms"]
            rows.append(row)
        keys = [k for k in rows[-1] if k not in ("case", "dtype", "mode", "level")]
        print("\n".join(common.table(CASE_COLUMNS + [(k, ">13.3f", k) for k in keys],
                                     rows[-len(args.cases) * len(args.dtypes) * len(MODES):])))
    if args.json:
        common.write_json(args.json, {"script": "bench_simd.py", "args": sys.argv[1:],
                               "environment": env, "workers": workers, "figures": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
