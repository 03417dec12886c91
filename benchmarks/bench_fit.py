"""Training speed of ``LSTMClassifier.fit`` against an equivalent PyTorch training loop.

Not a test: a script that prints (and optionally saves) timings.

``bench_lstm.py`` times the layer; this script times what a user of the
estimator sees: the whole ``LSTMClassifier(...).fit(X, y)`` call (input
validation, label encoding, padding, batching, forward, loss, backward,
clipping, Adam updates, per-epoch bookkeeping), and, for the same data and
settings, a plain PyTorch loop that a user would write:

* ``torch.nn.LSTM(batch_first=True)`` with the same hidden size, and a
  ``torch.nn.Linear`` reading the last layer's final hidden state ``h_n[-1]``;
* cross-entropy loss (mean over the batch), ``torch.optim.Adam`` with pylstm's
  learning rate (``learning_rate_init=0.005`` unless ``--lr``) and default
  betas/epsilon, ``torch.nn.utils.clip_grad_norm_(..., 5.0)`` (pylstm's default
  ``clip_norm``), mini-batches of the same size drawn from a fresh
  ``torch.randperm`` every epoch, the epoch's mean loss accumulated with
  ``loss.item()`` (as pylstm's ``loss_curve_``);
* variable-length data: the list is padded once with ``pad_sequence`` and each
  batch goes through ``pack_padded_sequence(..., enforce_sorted=False)``;
  pylstm gets the list as is (it pads once and buckets batches by length, so
  a batch holds sequences of similar lengths and takes fewer sequential
  steps). The torch loop draws plain random batches, as a user would write
  it; ``--torch-bucketing`` gives it pylstm's bucketing instead (sort by
  length with random tie-breaks, cut, shuffle the batch order), which
  separates the kernels' speed from the batching strategy;
* the timed region includes turning the NumPy data into tensors, encoding the
  labels and building the model and optimizer, as ``fit`` does all of that.

pylstm runs with ``alpha=0`` (its default ``alpha=1e-4`` adds an L2 penalty
that the torch loop does not have), ``tol=0``, a huge ``n_iter_no_change`` (so
every run does exactly ``--epochs`` epochs), ``warm_start=False`` and
``shuffle=True``; float32 runs compare with torch's default float32, float64
runs with a torch model and data in double precision.

Cases (``--cases``):

* ``digits``: ``pylstm.datasets.load_digits_sequences`` (1797 x 8 steps x 8
  features, 10 classes), hidden size 64;
* ``synthetic``: ``--n-synthetic`` (default 1500; 4000 for the larger run
  below) x 50 steps x 16 features, 4 classes (the class shifts the mean of one
  feature), hidden sizes 64 and 128;
* ``varlen``: a list of ``--n-varlen`` (default 800) sequences of lengths
  10..100 with 16 features, 2 classes
  (``pylstm.datasets.make_variable_length_sequences``), hidden size 64;

each with batch sizes 32 and 128 (``--batch-sizes``) and both dtypes
(``--dtypes``). A stratified 20% of every data set is held out; the table
reports the accuracy each implementation reaches on it after the same number
of epochs, as a sanity check (the initial weights differ, so only rough
agreement is expected).

Each figure is the median over ``--repeats`` fits (pylstm and torch
alternate, so that both see the same background load), given as epochs per
second; ``best`` ratios use each side's fastest fit, which is less sensitive
to other processes. Ratios are ``pylstm / torch`` in epochs per second:
above 1 means pylstm is faster. ``--profile N`` adds one cProfile'd pylstm fit
per configuration and prints its top N functions by own time (the Cython
kernels show up inside the self time of ``pylstm/_layer.py`` forward/backward).

Threads: without ``--threads`` every library uses its default pool size.
``--threads N`` caps every BLAS/OpenMP pool with threadpoolctl and calls
``torch.set_num_threads(N)``. When other processes keep the cores busy, pools
of several threads (torch's OpenMP pool, multi-threaded OpenBLAS calls) can
slow down ten- to a hundredfold and a run takes much longer: the last column
of the table (other processes' CPU share, ``*`` above 15%) flags such figures.

Usage (from the repository root; the installed package is imported)::

    python benchmarks/bench_fit.py                           # all cases, 2-4 min on 2 cores
    python benchmarks/bench_fit.py --threads 1 --json benchmarks/results/fit_t1.json
    python benchmarks/bench_fit.py --cases digits --dtypes float32 --profile 15
    python benchmarks/bench_fit.py --n-synthetic 4000 --n-varlen 2000   # larger (~6 min)

Headline figures are run with OpenBLAS left to pick its own kernel and cache
sizes for the CPU, i.e. with the OpenBLAS overrides of some environments removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fit.py

The header reports whether ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set
and which kernel ("architecture") each OpenBLAS actually uses. Requires
threadpoolctl (``pip install threadpoolctl``, the ``bench`` extra) and, for
the comparison, torch (CPU build).

``--steady-malloc`` keeps freed memory in the process (glibc mallopt, as in
``bench_lstm.py``, whose docstring explains why), so that the temporaries
that torch's training loop allocates on every batch land on pages already
mapped; the header's ``malloc:`` line and ``environment.malloc`` in the JSON
file record the setting.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
from _common import (
    BUSY,
    add_common_options,
    add_profile_option,
    environment,
    geometric_mean,
    idle_share,
    import_libraries,
    malloc_setting,
    print_column_heads,
    print_environment,
    print_foreign_start,
    print_title,
    profile_top,
    progress,
    save_json,
    thread_limits,
    timed_alternately,
)

CASES = ("digits", "synthetic", "varlen")
#: Hidden sizes per case.
HIDDEN = {"digits": (64,), "synthetic": (64, 128), "varlen": (64,)}
IMPLS = ("pylstm", "torch")
#: Sequences per inference batch when scoring torch on the held-out set.
EVAL_BATCH = 256


# --------------------------------------------------------------------------- data
@dataclass
class Data:
    name: str
    description: str
    X_train: object  # ndarray (n, T, F) or list of (T_i, F) arrays
    y_train: np.ndarray
    X_test: object
    y_test: np.ndarray
    n_features: int
    n_classes: int
    ragged: bool


def _split(X, y, seed, ragged):
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2,
                                           random_state=seed, stratify=y)
    if ragged:
        return ([X[i] for i in idx_train], y[idx_train], [X[i] for i in idx_test],
                y[idx_test])
    return X[idx_train], y[idx_train], X[idx_test], y[idx_test]


def make_data(name, n_synthetic, n_varlen, seed):
    """One of the benchmark data sets, split 80/20 (stratified)."""
    from pylstm.datasets import load_digits_sequences, make_variable_length_sequences

    if name == "digits":
        X, y = load_digits_sequences(return_X_y=True)
        ragged = False
        desc = f"{X.shape[0]}x{X.shape[1]}x{X.shape[2]}, 10 classes"
    elif name == "synthetic":
        n, T, F, C = n_synthetic, 50, 16, 4
        rng = np.random.default_rng(seed)
        y = rng.integers(C, size=n)
        X = rng.standard_normal((n, T, F))
        X[np.arange(n), :, y] += 0.25  # the class raises the mean of one feature
        ragged = False
        desc = f"{n}x{T}x{F}, {C} classes"
    elif name == "varlen":
        n = n_varlen
        X, y = make_variable_length_sequences(n_samples=n, min_length=10, max_length=100,
                                              n_features=16, random_state=seed)
        ragged = True
        mean_len = np.mean([len(s) for s in X])
        desc = f"{n} x (10..100, mean {mean_len:.0f}) x 16, list, 2 classes"
    else:  # pragma: no cover - argparse restricts the names
        raise ValueError(name)
    X_tr, y_tr, X_te, y_te = _split(X, y, seed, ragged)
    n_features = (X[0].shape[1] if ragged else X.shape[2])
    return Data(name, desc, X_tr, y_tr, X_te, y_te, n_features, len(np.unique(y)), ragged)


# --------------------------------------------------------------------------- the two fits
def pylstm_fit(data, hidden, batch, dtype, epochs, lr, seed):
    """Time ``LSTMClassifier(...).fit``; return (seconds, fitted estimator)."""
    from sklearn.exceptions import ConvergenceWarning

    from pylstm import LSTMClassifier

    t0 = time.perf_counter()
    clf = LSTMClassifier(hidden_size=hidden, batch_size=batch, max_iter=epochs,
                         learning_rate_init=lr, alpha=0.0, clip_norm=5.0, tol=0.0,
                         n_iter_no_change=1_000_000, shuffle=True, warm_start=False,
                         early_stopping=False, random_state=seed, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(data.X_train, data.y_train)
    elapsed = time.perf_counter() - t0
    if clf.n_iter_ != epochs:
        raise RuntimeError(f"pylstm ran {clf.n_iter_} epochs instead of {epochs}")
    return elapsed, clf


def pylstm_accuracy(clf, data):
    return float(clf.score(data.X_test, data.y_test))


def _torch_model_class(torch):
    from torch.nn.utils.rnn import pack_padded_sequence

    class TorchLSTMClassifier(torch.nn.Module):
        """LSTM, then a linear layer on the final hidden state."""

        def __init__(self, n_features, hidden, n_classes, dtype):
            super().__init__()
            self.lstm = torch.nn.LSTM(n_features, hidden, batch_first=True, dtype=dtype)
            self.fc = torch.nn.Linear(hidden, n_classes, dtype=dtype)

        def forward(self, x, lengths=None):
            if lengths is not None:
                x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(x)
            return self.fc(h_n[-1])

    return TorchLSTMClassifier


def _torch_inputs(torch, X, ragged, tdtype):
    from torch.nn.utils.rnn import pad_sequence

    if ragged:
        seqs = [torch.as_tensor(np.asarray(s), dtype=tdtype) for s in X]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        return pad_sequence(seqs, batch_first=True), lengths
    return torch.as_tensor(np.asarray(X), dtype=tdtype), None


def _bucketed_batches(torch, lengths, size):
    """pylstm's batching of ragged data: similar lengths together, batches shuffled."""
    n = len(lengths)
    order = np.lexsort((torch.rand(n).numpy(), lengths.numpy()))
    batches = [torch.from_numpy(order[i:i + size]) for i in range(0, n, size)]
    return [batches[i] for i in torch.randperm(len(batches)).tolist()]


def torch_fit(torch, data, hidden, batch, dtype, epochs, lr, seed, bucketing=False):
    """Time the equivalent torch training loop; return (seconds, (model, classes))."""
    F = torch.nn.functional
    model_class = _torch_model_class(torch)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    X, lengths = _torch_inputs(torch, data.X_train, data.ragged, tdtype)
    classes, codes = np.unique(data.y_train, return_inverse=True)
    y = torch.as_tensor(codes, dtype=torch.int64)
    model = model_class(data.n_features, hidden, len(classes), tdtype)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    n = len(y)
    size = min(batch, n)
    model.train()
    for _ in range(epochs):
        if bucketing and lengths is not None:
            batches = _bucketed_batches(torch, lengths, size)
        else:
            perm = torch.randperm(n)
            batches = [perm[i:i + size] for i in range(0, n, size)]
        total = 0.0
        for idx in batches:
            logits = model(X[idx], None if lengths is None else lengths[idx])
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            total += loss.item() * len(idx)
        if not np.isfinite(total):
            raise FloatingPointError("torch: the training loss became non-finite")
    elapsed = time.perf_counter() - t0
    return elapsed, (model, classes)


def torch_accuracy(torch, fitted, data, dtype):
    model, classes = fitted
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    X, lengths = _torch_inputs(torch, data.X_test, data.ragged, tdtype)
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(X), EVAL_BATCH):
            lb = None if lengths is None else lengths[i:i + EVAL_BATCH]
            preds.append(model(X[i:i + EVAL_BATCH], lb).argmax(dim=1).numpy())
    return float(np.mean(classes[np.concatenate(preds)] == data.y_test))


# --------------------------------------------------------------------------- header
def print_header(env):
    print_title("pylstm fit benchmark: LSTMClassifier.fit vs an equivalent torch training "
                "loop (CPU)", 110, env)
    print_environment(env)
    print_foreign_start(env)
    print()


# --------------------------------------------------------------------------- running
def warm_up(torch, data, dtypes, lr, seed):
    """Untimed short fits: imports, first-call and allocator set-up of both sides."""
    small = Data(data.name, data.description, data.X_train[:64], data.y_train[:64],
                 data.X_test, data.y_test, data.n_features, data.n_classes, data.ragged)
    if len(np.unique(small.y_train)) < 2:
        small = data
    for dtype in dtypes:
        pylstm_fit(small, 16, 32, dtype, 1, lr, seed)
        if torch is not None:
            torch_fit(torch, small, 16, 32, dtype, 1, lr, seed)


def profile_pylstm(data, hidden, batch, dtype, epochs, lr, seed, top):
    """Top ``top`` functions by own time of one cProfile'd pylstm fit, as text."""
    return profile_top(lambda: pylstm_fit(data, hidden, batch, dtype, epochs, lr, seed), top)


def run_config(torch, data, hidden, batch, dtype, args):
    calls = {"pylstm": lambda: pylstm_fit(data, hidden, batch, dtype, args.epochs, args.lr,
                                          args.seed)}
    if torch is not None:
        calls["torch"] = lambda: torch_fit(torch, data, hidden, batch, dtype, args.epochs,
                                           args.lr, args.seed, args.torch_bucketing)
    impls = list(calls)
    samples, foreign, _, fitted = timed_alternately(calls, args.repeats)
    row = {"case": data.name, "data": data.description, "hidden": hidden, "batch": batch,
           "dtype": dtype, "epochs": args.epochs, "repeats": args.repeats}
    for impl in impls:
        med = float(np.median(samples[impl]))
        best = float(min(samples[impl]))
        shares = [s for s in foreign[impl] if s is not None]
        row[impl] = {
            "fit_s_samples": samples[impl],
            "fit_s_median": med,
            "fit_s_best": best,
            "epochs_per_s": args.epochs / med,
            "epochs_per_s_best": args.epochs / best,
            "foreign_cpu": shares,
        }
    row["pylstm"]["accuracy"] = pylstm_accuracy(fitted["pylstm"], data)
    if "torch" in impls:
        row["torch"]["accuracy"] = torch_accuracy(torch, fitted["torch"], data, dtype)
        row["ratio"] = row["pylstm"]["epochs_per_s"] / row["torch"]["epochs_per_s"]
        row["ratio_best"] = (row["pylstm"]["epochs_per_s_best"]
                             / row["torch"]["epochs_per_s_best"])
    else:
        row["torch"] = None
        row["ratio"] = row["ratio_best"] = None
    all_shares = [s for impl in impls for s in row[impl]["foreign_cpu"]]
    row["foreign_cpu_max"] = max(all_shares) if all_shares else None
    return row


# --------------------------------------------------------------------------- report
def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def print_table(rows):
    print("Epochs per second of a whole fit (median over repeats); ratio = pylstm / torch "
          "(> 1: pylstm faster)")
    head = (f"{'case':<10} {'H':>4} {'batch':>5} {'dtype':<8} {'pylstm ep/s':>12} "
            f"{'torch ep/s':>11} {'ratio':>6} {'best':>6} {'acc pylstm':>10} "
            f"{'acc torch':>9} {'other CPU':>9}")
    print_column_heads(head)
    for r in rows:
        t = r["torch"] or {}
        share = r["foreign_cpu_max"]
        mark = "*" if share is not None and share > BUSY else " "
        print(f"{r['case']:<10} {r['hidden']:>4} {r['batch']:>5} {r['dtype']:<8} "
              f"{r['pylstm']['epochs_per_s']:>12.3f} {_f(t.get('epochs_per_s'), '.3f'):>11} "
              f"{_f(r['ratio'], '.2f'):>6} {_f(r['ratio_best'], '.2f'):>6} "
              f"{r['pylstm']['accuracy']:>10.3f} {_f(t.get('accuracy'), '.3f'):>9} "
              f"{_f(None if share is None else 100 * share, '.0f'):>8}%{mark}")
    print()
    parts = []
    for dtype in sorted({r["dtype"] for r in rows}):
        for key, label in (("ratio", "median"), ("ratio_best", "best")):
            vals = [r[key] for r in rows if r["dtype"] == dtype and r[key] is not None]
            if vals:
                parts.append(f"{dtype} {label} {geometric_mean(vals):.2f}")
    if parts:
        print("geometric mean of pylstm/torch: " + ", ".join(parts))
    print()


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark LSTMClassifier.fit against an equivalent torch training loop.",
        epilog="Headline figures: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
               "python benchmarks/bench_fit.py",
    )
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                   help="data sets to run (default all)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--hidden", nargs="+", type=int, default=None,
                   help="hidden sizes for every case (default: 64; 64 and 128 for synthetic)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed fits per implementation and configuration (default 3)")
    p.add_argument("--n-synthetic", type=int, default=1500,
                   help="sequences of the synthetic case (default 1500)")
    p.add_argument("--n-varlen", type=int, default=800,
                   help="sequences of the varlen case (default 800)")
    p.add_argument("--lr", type=float, default=0.005,
                   help="learning rate of both (default 0.005, pylstm's default)")
    p.add_argument("--threads", type=int, default=None,
                   help="limit BLAS/OpenMP threads (threadpoolctl) and torch.set_num_threads")
    p.add_argument("--no-torch", action="store_true", help="time pylstm only")
    p.add_argument("--torch-bucketing", action="store_true",
                   help="varlen: give the torch loop pylstm's length-bucketed batches instead "
                        "of plain random ones")
    add_profile_option(p)
    add_common_options(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("epochs", "repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name} must be >= 1")
    if args.threads is not None and args.threads < 1:
        sys.exit("--threads must be >= 1")
    if min(args.batch_sizes) < 1:
        sys.exit("--batch-sizes must be >= 1")
    if min(args.n_synthetic, args.n_varlen) < 50:
        sys.exit("--n-synthetic and --n-varlen must be >= 50")
    malloc = malloc_setting(args)

    pylstm, torch, torch_error = import_libraries(not args.no_torch)
    with thread_limits(args.threads, torch):
        env = environment(pylstm, torch, torch_error, args.threads)
        env["malloc"] = malloc
        print_header(env)
        return run(args, torch, env)


def run(args, torch, env):
    """Every case and configuration, then the report (under the thread limits)."""

    t_start = time.perf_counter()
    rows, profiles = [], []
    first = True
    for case in args.cases:
        data = make_data(case, args.n_synthetic, args.n_varlen, args.seed)
        print(f"{case}: {data.description}; {len(data.y_train)} training, "
              f"{len(data.y_test)} held-out sequences")
        if first:
            warm_up(torch, data, args.dtypes, args.lr, args.seed)
            first = False
        for hidden in (args.hidden or HIDDEN[case]):
            for batch in args.batch_sizes:
                for dtype in args.dtypes:
                    progress(f"  {case} H={hidden} batch={batch} {dtype} ...")
                    row = run_config(torch, data, hidden, batch, dtype, args)
                    rows.append(row)
                    if args.profile > 0:
                        text = profile_pylstm(data, hidden, batch, dtype, args.epochs,
                                              args.lr, args.seed, args.profile)
                        profiles.append({"case": case, "hidden": hidden, "batch": batch,
                                         "dtype": dtype, "top": text})
    print()
    elapsed = time.perf_counter() - t_start
    print_table(rows)
    batching = "pylstm's length buckets" if args.torch_bucketing else "random batches"
    print(f"{args.epochs} epochs per fit, {args.repeats} fits per figure; torch varlen loop: "
          f"{batching}; total benchmark time {elapsed:.1f} s")
    env["foreign_cpu_end"] = idle_share()
    shares = [r["foreign_cpu_max"] for r in rows if r["foreign_cpu_max"] is not None]
    if shares:
        print(f"CPU used by other processes: max per figure {100 * max(shares):.0f}%, "
              f"after the run {100 * (env['foreign_cpu_end'] or 0):.0f}%")
        if max(shares) > BUSY:
            print(f"WARNING: figures marked * ran while other processes used more than "
                  f"{100 * BUSY:.0f}% of the CPUs; the 'best' ratios are the more reliable "
                  "there; re-run on an idle machine for headline figures")
    for prof in profiles:
        print()
        print(f"--- cProfile of one pylstm fit: {prof['case']} H={prof['hidden']} "
              f"batch={prof['batch']} {prof['dtype']} (top {args.profile} by own time)")
        print(prof["top"].strip())

    if args.json:
        save_json(args.json, {"args": vars(args), "environment": env, "results": rows,
                              "profiles": profiles, "elapsed_s": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
