"""One layer call: pylstm.LSTM against torch.nn.LSTM and the NumPy reference LSTM (CPU).

See benchmarks/README.md. Usage: ``python benchmarks/bench_lstm.py --threads 1,2 --memory``
"""

import argparse
import gc
import re
import sys
import tracemalloc
from typing import NamedTuple

import _common as common
import numpy as np

import pylstm
from pylstm.interop import to_torch

DEFAULT_CASES = ((32, 50, 32, 64), (64, 100, 64, 128), (64, 100, 128, 256), (1, 100, 32, 128))
LARGE_CASES = ((256, 50, 128, 512), (1, 1000, 64, 256))
IMPLS = ("pylstm", "numpy", "torch")
MODES = ("infer", "train")
#: Agreement is flagged above these max relative errors.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


class Case(NamedTuple):
    """A case: batch, steps, input features, hidden units; layers, directions, lengths."""

    B: int
    T: int
    I: int
    H: int
    num_layers: int = 1
    bidirectional: bool = False
    variable_lengths: bool = False

    @property
    def label(self):
        extra = ([f"L{self.num_layers}"] * (self.num_layers != 1) + ["bi"] * self.bidirectional
                 + ["var"] * self.variable_lengths)
        return f"{self.B}x{self.T}x{self.I}x{self.H}" + (" " + "-".join(extra) if extra else "")


#: The 2-layer bidirectional, variable-length case added unless ``--no-bidi``.
BIDI_CASE = Case(64, 100, 64, 128, 2, True, True)


def parse_case(text):
    """Parse ``B,T,I,H[,L][,bi][,var]`` (separators ``,``, ``x`` or ``:``)."""
    parts = [p for p in re.split(r"[,x:\s]+", text.strip().lower()) if p]
    if len(parts) < 4 or not all(p.isdigit() and int(p) > 0 for p in parts[:4]):
        raise argparse.ArgumentTypeError(f"case must be B,T,I,H[,L][,bi][,var], got {text!r}")
    layers = next((int(p) for p in parts[4:] if p.isdigit()), 1)
    unknown = [p for p in parts[4:] if not p.isdigit() and p not in ("bi", "var")]
    if unknown or layers < 1:
        raise argparse.ArgumentTypeError(f"unknown case option in {text!r}")
    return Case(*map(int, parts[:4]), layers, "bi" in parts[4:], "var" in parts[4:])


def setup(case, dtype, seed):
    """A fresh ``pylstm.LSTM`` of ``case``, X of shape (B, T, I) and, for a ``var`` case,
    lengths uniform in [T/2, T] (else None)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((case.B, case.T, case.I)).astype(dtype)
    lengths = (rng.integers(max(1, case.T // 2), case.T + 1, size=case.B)
               if case.variable_lengths else None)
    return pylstm.LSTM(case.I, case.H, num_layers=case.num_layers, dtype=dtype,
                       bidirectional=case.bidirectional, random_state=seed), X, lengths


def torch_calls(torch, case, layer, X, lengths):
    """torch's ``(module, infer, train)`` for one case, with the weights of ``layer``."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    module = to_torch(layer)
    xt = torch.from_numpy(X)
    ones = None

    def run(x):
        if lengths is None:
            out, (h, c) = module(x)
            return out, h, c
        packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = module(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=case.T)[0], h, c

    def infer():
        with torch.no_grad():
            return run(xt)

    def train():
        nonlocal ones
        module.zero_grad(set_to_none=True)
        xg = xt.detach().requires_grad_(True)
        out, h, c = run(xg)
        ones = torch.ones_like(out) if ones is None else ones
        (out * ones).sum().backward()
        return out, h, c, xg

    return module, infer, train


def rel_err(pairs):
    """Largest ``max|a - b| / max|b|`` over ``(a, b)`` pairs, in float64."""
    worst = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = float(np.max(np.abs(b), initial=0.0)) or 1.0
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)) / scale)
    return worst


def run_case(case, dtype, args, torch, threads):
    """Agreement (a dict of relative errors), then the timing rows of one case and dtype
    (with ``args.samples``, each implementation's samples in ms too)."""
    layer, X, lengths = setup(case, dtype, args.seed)
    state = layer.state_dict()
    ref = common.numpy_reference()(state, dtype)
    out, (h, c) = layer.forward(X, lengths=lengths, training=True)
    ones = np.ones_like(out)
    dX, grads = layer.backward(ones)
    out_i, (h_i, c_i) = layer.forward(X, lengths=lengths, training=False)
    r_out, (r_h, r_c) = ref.forward(X, lengths=lengths)
    r_dX, r_grads = ref.backward(ones)
    checks = {"infer_vs_train": rel_err([(out_i, out), (h_i, h), (c_i, c)]),
              "numpy_out": rel_err([(out, r_out), (h, r_h), (c, r_c)]),
              "numpy_grad": rel_err([(dX, r_dX)] + [(grads[k], r_grads[k]) for k in state])}

    def train(impl):
        impl.forward(X, lengths=lengths, training=True)
        return impl.backward(ones)

    calls = {("pylstm", "infer"): lambda: layer.forward(X, lengths=lengths, training=False),
             ("pylstm", "train"): lambda: train(layer)}
    if not args.no_numpy:
        calls["numpy", "infer"] = lambda: ref.forward(X, lengths=lengths, training=False)
        calls["numpy", "train"] = lambda: train(ref)
    if torch is not None:
        module, calls["torch", "infer"], calls["torch", "train"] = torch_calls(
            torch, case, layer, X, lengths)
        t_out, t_h, t_c, xg = calls["torch", "train"]()
        t_grads = {k: p.grad for k, p in module.named_parameters()}
        checks["torch_out"] = rel_err([(out, t_out.detach()), (h, t_h.detach()),
                                       (c, t_c.detach())])
        checks["torch_grad"] = rel_err([(dX, xg.grad)] + [(grads[k], t_grads[k]) for k in state])
    rows = []
    for mode in MODES:
        row = {"case": case.label, "dtype": np.dtype(dtype).name, "mode": mode,
               "threads": threads}
        for impl in IMPLS:  # one after another: no library's spinning threads slow the next
            if (impl, mode) in calls:
                common.progress(f"  {case.label:<24} {row['dtype']:<8} {mode:<6} {impl} ...")
                seconds = common.alternate({impl: calls[impl, mode]}, args.repeats,
                                           args.min_time, args.warmup)[0][impl]
                row[impl] = common.median_iqr(seconds)
                if args.samples:
                    row[impl]["samples"] = [1e3 * s for s in seconds]
        for impl in ("numpy", "torch"):
            row[f"{impl}_over_pylstm"] = (row[impl]["median_ms"] / row["pylstm"]["median_ms"]
                                          if impl in row else None)
        rows.append(row)
    return checks, rows


def memory_ratio(case, dtype, seed):
    """Peak NumPy memory (tracemalloc) of a training step on a fresh layer, with the
    parameters it holds throughout, against what BPTT must hold, in MB.

    The minimum: per valid step, layer and direction the gates (4H), c and h; the
    parameters and their gradients; dX and the output (padded, as returned); the final
    states and the initial states' gradients. X and the output gradient exist before
    the step and count in neither figure.
    """
    layer, X, lengths = setup(case, dtype, seed)
    D, L, H = layer.num_directions, case.num_layers, case.H
    d_out = np.ones((case.B, case.T, D * H), dtype=dtype)
    gc.collect()
    tracemalloc.start()
    try:
        layer.forward(X, lengths=lengths, training=True)
        layer.backward(d_out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n = case.B * case.T if lengths is None else int(np.sum(lengths))
    n_params = sum(p.size for p in layer.parameters())
    minimum = (L * D * n * 6 * H + 2 * n_params + case.B * case.T * (case.I + D * H)
               + 4 * L * D * case.B * H) * np.dtype(dtype).itemsize
    return {"case": case.label, "dtype": np.dtype(dtype).name,
            "peak_mb": (peak + n_params * np.dtype(dtype).itemsize) / 1e6,
            "bptt_mb": minimum / 1e6}


#: The first columns of every table.
CASE_COLUMNS = [("case (BxTxIxH)", "<24", "case"), ("dtype", "<8", "dtype"), ("mode", "<6", "mode")]


def print_timings(rows):
    """The timings of one thread count and their geometric means."""
    def ms(impl):
        def cell(r):
            t, digits = r.get(impl), 3 if r.get(impl, {}).get("median_ms", 0) < 10 else 2
            return t and f"{t['median_ms']:.{digits}f} ({t['iqr_ms']:.{digits}f})"
        return impl, ">17", cell
    print(f"Median ms per call (IQR), threads: {rows[0]['threads'] or 'library defaults'}; "
          "ratios above 1: pylstm faster")
    print("\n".join(common.table(CASE_COLUMNS + [ms(i) for i in IMPLS] + [
        (f"{i}/pl", ">9.2f", f"{i}_over_pylstm") for i in ("numpy", "torch")], rows)))
    for key in ("torch_over_pylstm", "numpy_over_pylstm"):
        groups = {}
        for r in rows:
            groups.setdefault(f"{r['dtype']} {r['mode']}", []).append(r[key])
        if any(r[key] for r in rows):
            print(f"geometric mean {key.replace('_over_', '/')}: "
                  + ", ".join(f"{g} {common.geomean(v):.2f}" for g, v in groups.items()))
    print()


def print_agreement(checks):
    """The agreement of every case and dtype, flagged above :data:`TOLERANCE`."""
    names = ("torch_out", "torch_grad", "numpy_out", "numpy_grad", "infer_vs_train")

    def status(c):
        bad = [n for n in names if c.get(n, 0) > TOLERANCE[c["dtype"]]]
        return "CHECK " + ",".join(bad) if bad else "ok"
    print("Agreement: max|a-b|/max|b| of out, h_n, c_n (out) and of dX and all weight "
          "gradients (grad)")
    print("\n".join(common.table(CASE_COLUMNS[:2] + [(n, ">14.2e", n) for n in names]
                                 + [("status", "<6", status)], checks)) + "\n")


def print_scaling(rows, counts):
    """Per case, dtype and mode: pylstm's and torch's ms at every thread count."""
    by_key = {(r["case"], r["dtype"], r["mode"], r["threads"]): r for r in rows}
    scaled, columns = [], list(CASE_COLUMNS)
    for impl in ("pylstm", "torch"):
        columns += [(f"{impl} {n}t", ">10.3f", f"{impl} {n}t") for n in counts]
        columns += [("speedup", ">8.2f", f"{impl} speedup")]
    for r in (r for r in rows if r["threads"] == counts[0]):
        row = dict(r)
        for impl in ("pylstm", "torch"):
            ms = [by_key[r["case"], r["dtype"], r["mode"], n].get(impl, {}).get("median_ms")
                  for n in counts]
            row.update({f"{impl} {n}t": v for n, v in zip(counts, ms, strict=True)})
            row[f"{impl} speedup"] = ms[0] / ms[-1] if ms[0] and ms[-1] else None
        scaled.append(row)
    print(f"Thread scaling: median ms at {', '.join(map(str, counts))} thread(s); speedup = "
          f"ms at {counts[0]} / ms at {counts[-1]}")
    print("\n".join(common.table(columns, scaled)) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", type=parse_case, metavar="B,T,I,H[,L][,bi][,var]",
                   help="cases instead of the default four")
    p.add_argument("--large", action="store_true", help="add 256x50x128x512 and 1x1000x64x256")
    p.add_argument("--bidi", action=argparse.BooleanOptionalAction, default=True,
                   help="add the 2-layer bidirectional variable-length case 64x100x64x128")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7, help="samples per figure (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--min-time", type=float, default=0.05,
                   help="seconds a sample lasts at least (default 0.05)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--no-numpy", action="store_true", help="skip timing the NumPy reference")
    p.add_argument("--memory", action="store_true",
                   help="add a training step's peak memory over the BPTT minimum")
    p.add_argument("--samples", action="store_true",
                   help="keep every sample in the summary (bench_simd.py's workers)")
    common.add_common_options(p, threads_type=lambda text: [int(n) for n in text.split(",")])
    args = p.parse_args(argv)
    cases = args.cases or [Case(*c) for c in DEFAULT_CASES]
    cases += [Case(*c) for c in LARGE_CASES] * args.large + [BIDI_CASE] * args.bidi
    if common.apply_quick(args, repeats=1, warmup=1, min_time=0.0,
                          threads=args.threads or [1]).quick:
        cases = [Case(2, 4, 3, 4), Case(3, 5, 2, 4, 2, True, True)]
    torch, env = common.start(args, "bench_lstm.py: pylstm.LSTM vs torch.nn.LSTM vs the NumPy "
                              "reference LSTM", "no" if args.no_torch else "wanted")
    rows, checks, counts = [], [], args.threads or [None]
    for n in counts:
        common.set_threads(n, torch)
        run_rows = []
        for case in cases:
            for dt in args.dtypes:
                common.progress(f"{case.label} {dt} ({n or 'default'} threads)")
                check, case_rows = run_case(case, np.dtype(dt).type, args, torch, n)
                run_rows += case_rows
                checks += [{"case": case.label, "dtype": dt, **check}] * (n == counts[0])
        print_timings(run_rows)
        rows += run_rows
    print_agreement(checks)
    if len(counts) > 1:
        print_scaling(rows, counts)
    memory = None
    if args.memory:
        memory = [memory_ratio(case, np.dtype(dt).type, args.seed)
                  for case in cases for dt in args.dtypes]
        print("Memory of a training step (tracemalloc, fresh layer; MB = 1e6 bytes)")
        print("\n".join(common.table(CASE_COLUMNS[:2] + [
            ("peak MB", ">9.2f", "peak_mb"), ("BPTT MB", ">9.2f", "bptt_mb"),
            ("peak/BPTT", ">9.2f", lambda m: m["peak_mb"] / m["bptt_mb"])], memory)) + "\n")
    common.write_json(args.json, env, timings=rows, agreement=checks, memory=memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
