"""pylstm at each SIMD level against torch held to the same level, and build against build.

See benchmarks/README.md. Usage: ``python benchmarks/bench_simd.py --levels avx2,avx512``, or
``python benchmarks/bench_simd.py --builds gcc=/tmp/build_gcc,clang=/tmp/build_clang``
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as common
import numpy as np
from bench_lstm import CASE_COLUMNS, TOLERANCE

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
#: One tiny torch LSTM call with oneDNN's verbose output on, whose header names its ISA.
ONEDNN_PROBE = """import torch
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
    torch.nn.LSTM(4, 8, batch_first=True)(torch.zeros(1, 2, 4))"""


def worker_env(path, level):
    """The environment of a worker: the level's variables, the build first on the path."""
    env = dict(os.environ)
    if level is not None:
        env.update(LEVEL_ENV[level], PYLSTM_SIMD=level)
    if path != "installed":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    return env


def run_worker(name, path, level, args):
    """``bench_lstm.py`` with one build at one level: its summary, with every sample."""
    common.progress(f"worker {name} at level {level or 'default'} ...")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).with_name("bench_lstm.py")),
               *(["--cases", *args.cases] if args.cases else []), "--no-bidi", "--no-numpy",
               "--samples", "--dtypes", *args.dtypes,
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--min-time",
               str(args.min_time), "--seed", str(args.seed), "--json", f"{tmp}/out.json"]
        cmd += ["--no-torch"] * args.no_torch + ["--steady-malloc"] * args.steady_malloc
        code = subprocess.run(cmd, env=worker_env(path, level), stdout=subprocess.DEVNULL)
        if code.returncode:
            sys.exit(f"worker {name} ({path}, level {level}) failed: code {code.returncode}")
        result = json.loads(Path(tmp, "out.json").read_text())
    if path != "installed" and not result["environment"]["pylstm_path"].startswith(path):
        sys.exit(f"worker {name} imported pylstm from {result['environment']['pylstm_path']}")
    return result


def describe(spec, env):
    """One line: what a worker used (pylstm's level, compiler and folder, torch's CPU
    capability and oneDNN's ISA, SciPy's OpenBLAS kernel, the variables of its level)."""
    torch = f"not used ({env['torch_error']})"
    if env["torch"]:
        probe = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], env=worker_env(*spec[1:]),
                               capture_output=True, text=True).stdout
        isa = re.search(r"isa:([^\n]+)", probe)
        torch = f"{env['torch']['cpu_capability']}, oneDNN {isa.group(1) if isa else '?'}"
    blas = [f"{lib['version']} {lib['architecture']}" for lib in env["libraries"]
            if lib["api"] == "openblas" and lib["file"].startswith("scipy")]
    variables = ", ".join(f"{k}={env['env'][k]}" for k in ("PYLSTM_SIMD", *LEVEL_ENV["avx2"]))
    return (f"[{spec[0]} @ {spec[2] or 'default'}] pylstm {env['pylstm']} from "
            f"{env['pylstm_path']} | torch {torch} | SciPy OpenBLAS {', '.join(blas) or '?'} | "
            f"{variables}")


def parse_builds(text):
    builds = [item.partition("=")[::2] for item in text.split(",") if item]
    if not all(n and (p == "installed" or os.path.isdir(p)) for n, p in builds):
        raise argparse.ArgumentTypeError(f"NAME=PATH with a folder or 'installed': {text!r}")
    return [(n, p if p == "installed" else os.path.abspath(p)) for n, p in builds]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=lambda text: text.split(","), metavar="L1,L2",
                   help="levels to compare (default: every level pylstm reports usable)")
    p.add_argument("--builds", type=parse_builds, metavar="NAME=PATH,...",
                   help="builds to compare (PATH from pip install --target, or 'installed')")
    p.add_argument("--cases", nargs="+", metavar="B,T,I,H[,L][,bi][,var]",
                   help="cases instead of bench_lstm.py's four")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7, help="samples per worker and round")
    p.add_argument("--rounds", type=int, default=2, help="runs of every worker (default 2)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds a sample lasts at least")
    p.add_argument("--no-torch", action="store_true", help="time pylstm only")
    common.add_common_options(p, threads_default=1)
    args = p.parse_args(argv)
    if set(args.levels or []) - set(LEVEL_ENV):
        p.error(f"--levels: expected some of {', '.join(LEVEL_ENV)}")
    if common.apply_quick(args, cases=["2,4,3,4"], dtypes=["float32"], repeats=1, rounds=1,
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
    samples, workers = {}, []  # (case, dtype, mode) -> (spec, impl) -> every sample
    for spec, runs in results.items():
        used = runs[0]["environment"]
        workers.append({"name": spec[0], "path": spec[1], "level": spec[2], "environment": used})
        print(describe(spec, used))
        for row in (row for run in runs for row in run["timings"]):
            for impl in ("pylstm", "torch"):
                cell = samples.setdefault((row["case"], row["dtype"], row["mode"]), {})
                cell.setdefault((spec, impl), []).extend(row.get(impl, {}).get("samples", []))
        for check in runs[0]["agreement"]:
            if check.get("torch_out", 0) > TOLERANCE[check["dtype"]]:
                print(f"  WARNING: pylstm and torch disagree on {check['case']} {check['dtype']}")
    rows = []
    for level in dict.fromkeys(s[2] for s in specs):
        group = [s for s in specs if s[2] == level]
        first, table = group[0][0], []
        print(f"\n== level {level or 'default'}: ms per call; X/{first}: time over {first}'s "
              "(above 1: slower), torch: the same of their torch runs (noise); torch/pl above "
              "1: pylstm faster ==")
        for (case, dt, mode), cell in samples.items():
            row = {"case": case, "dtype": dt, "mode": mode, "level": level}
            for s in group:
                for impl, key in (("pylstm", f"{s[0]}_ms"), ("torch", f"torch_{s[0]}_ms")):
                    row[key] = float(np.median(cell[s, impl])) if cell[s, impl] else None
            for s in group[1:]:  # each build's time over the first build's, and torch's
                for key in (f"{s[0]}_ms", f"torch_{s[0]}_ms"):
                    base = row[key.replace(s[0], first)]
                    row[key[:-3] + f"/{first}"] = row[key] / base if row[key] and base else None
            if row[f"torch_{first}_ms"]:
                row["torch/pl"] = row[f"torch_{first}_ms"] / row[f"{first}_ms"]
            table.append(row)
        keys = [k for k in table[0] if k not in ("case", "dtype", "mode", "level")]
        print("\n".join(common.table(CASE_COLUMNS + [(k, ">13.3f", k) for k in keys], table)))
        rows += table
    common.write_json(args.json, env, workers=workers, figures=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
