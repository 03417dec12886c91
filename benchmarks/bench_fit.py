"""A whole ``LSTMClassifier.fit`` against the PyTorch training loop a user would write.

See benchmarks/README.md. Usage: ``python benchmarks/bench_fit.py --threads 1``
"""

import argparse
import sys
import warnings
from functools import partial

import _common as common
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from pylstm import LSTMClassifier, _lstm
from pylstm._training_step import DenseTrainingSteps
from pylstm.datasets import load_digits_sequences, make_variable_length_sequences

CASES = ("digits", "synthetic", "varlen")
LR = 0.005  # pylstm's default learning_rate_init
HIDDEN = {"digits": (64,), "synthetic": (64, 128), "varlen": (64,)}


def make_data(name, args):
    """``(description, X_train, X_test, y_train, y_test)`` of one case, split 80/20."""
    rng = np.random.default_rng(args.seed)
    if name == "digits":
        X, y = load_digits_sequences(return_X_y=True)
    elif name == "synthetic":
        y = rng.integers(4, size=args.n_synthetic)
        X = rng.standard_normal((args.n_synthetic, 50, 16))
        X[np.arange(len(y)), :, y] += 0.25  # the class raises the mean of one feature
    else:
        X, y = make_variable_length_sequences(n_samples=args.n_varlen, min_length=10,
                                              max_length=100, n_features=16,
                                              random_state=args.seed)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=args.seed,
                                   stratify=y)
    desc = (f"{len(y)} x {X[0].shape[0]} x {X[0].shape[1]}" if not isinstance(X, list) else
            f"a list of {len(y)} x (10..100) x 16") + f", {len(set(y))} classes"
    pick = (lambda idx: [X[i] for i in idx]) if isinstance(X, list) else X.__getitem__
    return desc, pick(train), pick(test), y[train], y[test]


def pylstm_fit(data, hidden, batch, dtype, args):
    """The whole ``LSTMClassifier.fit``, exactly ``args.epochs`` epochs."""
    clf = LSTMClassifier(hidden_size=hidden, batch_size=batch, max_iter=args.epochs,
                         learning_rate_init=LR, alpha=0.0, clip_norm=5.0, tol=0.0,
                         n_iter_no_change=1_000_000, random_state=args.seed, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(data[1], data[3])


def torch_tensors(torch, X, dtype):
    """The data as one tensor (a list padded) and the lengths (None for an array)."""
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    if not isinstance(X, list):
        return torch.as_tensor(X, dtype=tdtype), None
    seqs = [torch.as_tensor(s, dtype=tdtype) for s in X]
    return (torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True),
            torch.tensor([len(s) for s in seqs]))


def torch_fit(torch, data, hidden, batch, dtype, args):
    """The torch loop: returns the model and the classes."""
    torch.manual_seed(args.seed)
    X, lengths = torch_tensors(torch, data[1], dtype)
    classes, codes = np.unique(data[3], return_inverse=True)
    y = torch.as_tensor(codes)
    model = common.torch_twins(torch)[0](X.shape[2], hidden, len(classes), X.dtype)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=LR)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(y)).split(batch):
            out = model(X[idx], None if lengths is None else lengths[idx])
            loss = torch.nn.functional.cross_entropy(out, y[idx])
            common.torch_step(torch, params, optimizer, loss)
            loss.item()  # read, as a loop that reports its loss does (pylstm's loss_curve_)
    return model, classes


def run_config(torch, data, hidden, batch, dtype, args):
    """Alternating fits of both; epochs per second, ratios and held-out accuracies.

    With ``args.idle_wait``, one pylstm entry per value in the same alternation,
    and a row for each (sharing torch's fits); with ``args.general_path``, one entry
    per training path (the planned step where it applies, and the general path alone)
    for each of those."""
    steps = ["planned", "general"] if args.general_path else [None]
    variants = [(wait, step) for wait in args.idle_wait or [None] for step in steps]
    calls, outside = {}, {v: [] for v in variants}
    for v in variants:
        calls[v] = partial(pylstm_fit_timed, outside[v], *v, data, hidden, batch, dtype, args)
    if torch is not None:
        calls["torch"] = lambda: torch_fit(torch, data, hidden, batch, dtype, args)
    wall, _, fitted = common.alternate(calls, args.repeats)
    rows = []
    for v in variants:
        wait, step = v
        row = {"case": data[0], "hidden": hidden, "batch": batch, "dtype": dtype,
               "pylstm": None, "torch": None, "ratio": None, "ratio_best": None}
        if wait is not None:
            row["idle_wait_us"] = wait
        if step is not None:
            row["step"] = step
        for impl, key in ((v, "pylstm"), ("torch", "torch")):
            if impl in wall:
                row[key] = {"epochs_per_s": args.epochs / float(np.median(wall[impl])),
                            "epochs_per_s_best": args.epochs / min(wall[impl])}
        row["pylstm"]["accuracy"] = float(fitted[v].score(data[2], data[4]))
        row["pylstm"]["outside_compiled"] = float(np.median(outside[v]))
        if torch is not None:
            (model, classes), (X, lengths) = fitted["torch"], torch_tensors(torch, data[2],
                                                                            dtype)
            with torch.no_grad():
                pred = classes[model(X, lengths).argmax(dim=1).numpy()]
            row["torch"]["accuracy"] = float(np.mean(pred == data[4]))
            row["ratio"] = row["pylstm"]["epochs_per_s"] / row["torch"]["epochs_per_s"]
            row["ratio_best"] = (row["pylstm"]["epochs_per_s_best"]
                                 / row["torch"]["epochs_per_s_best"])
        rows.append(row)
    return rows


def pylstm_fit_timed(shares, *fit_args):
    """:func:`pylstm_fit_waiting`, its time outside its compiled calls over the time
    inside them appended to ``shares`` (the wrapping costs two clock reads per call)."""
    fitted = []
    wall, inside = common.time_compiled(
        lambda: fitted.append(pylstm_fit_waiting(*fit_args)))
    shares.append(wall / sum(inside.values()) - 1)
    return fitted[0]


def pylstm_fit_waiting(wait, step, data, hidden, batch, dtype, args):
    """:func:`pylstm_fit` with the kept worker's idle wait at ``wait`` microseconds
    (None: as built), restored after; ``step`` "general": every batch through the
    general path (``DenseTrainingSteps.applies`` false for this fit)."""
    applies = DenseTrainingSteps.__dict__["applies"]
    default = None if wait is None else _lstm.set_idle_wait(wait / 1e6)
    if step == "general":
        DenseTrainingSteps.applies = staticmethod(lambda layer: False)
    try:
        return pylstm_fit(data, hidden, batch, dtype, args)
    finally:
        DenseTrainingSteps.applies = applies
        if default is not None:
            _lstm.set_idle_wait(default)


def print_table(rows):
    """Epochs per second of both sides, their ratios and accuracies; geometric means."""
    print("Epochs per second of a whole fit (median); ratio = pylstm / torch (> 1: pylstm "
          "faster), best = from each side's fastest fit")
    print("\n".join(common.table([
        ("case", "<10", "case"), ("H", ">4", "hidden"), ("batch", ">5", "batch"),
        ("dtype", "<8", "dtype")] + ([("wait us", ">7", "idle_wait_us")]
                                     if "idle_wait_us" in rows[0] else [])
        + ([("step", "<8", "step")] if "step" in rows[0] else []) + [
        ("pylstm ep/s", ">12.3f", ("pylstm", "epochs_per_s")),
        ("torch ep/s", ">11.3f", ("torch", "epochs_per_s")), ("ratio", ">6.2f", "ratio"),
        ("best", ">6.2f", "ratio_best"), ("outside", ">8.1%", ("pylstm", "outside_compiled")),
        ("acc pylstm", ">10.3f", ("pylstm", "accuracy")),
        ("acc torch", ">9.3f", ("torch", "accuracy"))], rows)))
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        if rows[0]["ratio"] is not None:
            print(f"geometric mean pylstm/torch {dtype}: " + ", ".join(
                f"{k} {common.geomean([r[key] for r in rows if r['dtype'] == dtype]):.2f}"
                for k, key in (("median", "ratio"), ("best", "ratio_best"))))
    print("outside: pylstm's fit time outside its compiled calls (LSTM kernels, head products "
          "and loss) over the time inside them (median over the fits)\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--hidden", nargs="+", type=int, help="hidden sizes for every case")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="fits per figure (default 3)")
    p.add_argument("--n-synthetic", type=int, default=1500)
    p.add_argument("--n-varlen", type=int, default=800)
    p.add_argument("--no-torch", action="store_true", help="time pylstm only")
    p.add_argument("--idle-wait", nargs="+", type=float, metavar="US",
                   help="time pylstm once per value, in the same alternation: how long "
                        "its kept worker thread waits for a task before it sleeps, in "
                        "microseconds")
    p.add_argument("--general-path", action="store_true",
                   help="time pylstm twice per figure, in the same alternation: with the "
                        "planned training step where it applies (as built) and with every "
                        "batch through the general path")
    common.add_common_options(p)
    args = common.apply_quick(p.parse_args(argv), cases=["digits", "varlen"], hidden=[8],
                              batch_sizes=[128], dtypes=["float32"], epochs=1, repeats=1,
                              n_varlen=60)
    torch, env = common.start(args, "bench_fit.py: LSTMClassifier.fit vs the equivalent torch "
                              "training loop", "no" if args.no_torch else "wanted")
    rows = []
    for case in args.cases:
        desc, *split = make_data(case, args)
        print(f"{case}: {desc}; {len(split[2])} training, {len(split[3])} held-out")
        if case == args.cases[0] and not args.quick:  # untimed: first calls of both sides
            run_config(torch, (case, *split), 8, 32, args.dtypes[0], argparse.Namespace(
                **{**vars(args), "epochs": 1, "repeats": 1}))
        for hidden in args.hidden or HIDDEN[case]:
            for batch in args.batch_sizes:
                for dtype in args.dtypes:
                    common.progress(f"  {case} H={hidden} batch={batch} {dtype} ...")
                    rows += run_config(torch, (case, *split), hidden, batch, dtype, args)
    print(f"{args.epochs} epochs per fit, {args.repeats} fits per figure")
    print_table(rows)
    common.write_json(args.json, env, results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
