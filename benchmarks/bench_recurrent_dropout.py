"""Recurrent dropout: what it costs a training step of ``pylstm.LSTM`` and a digits epoch.

See benchmarks/README.md. Usage: ``python benchmarks/bench_recurrent_dropout.py --threads 2``
"""

import argparse
import sys

import _common as common
import numpy as np

from pylstm import LSTM, LSTMClassifier
from pylstm.datasets import load_digits_sequences

CASES = ("32x64x32x256", "64x100x64x128", "16x50x16x64", "1x100x32x128")


def compare(label, make_call, p, repeats, min_time):
    """A table row: median ms per call of ``make_call(0)`` and ``make_call(p)`` and their
    ratio (:func:`_common.ab_row`)."""
    return common.ab_row(label, {"plain_ms": make_call(0.0), "dropout_ms": make_call(p)},
                         repeats, min_time)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="BxTxIxH")
    p.add_argument("--p", type=float, default=0.25, help="recurrent_dropout (default 0.25)")
    p.add_argument("--repeats", type=int, default=15,
                   help="samples per figure (default 15; a third, at least 3, for the fit)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    common.add_common_options(p, threads_default=2)
    args = common.apply_quick(p.parse_args(argv), cases=["2x5x3x4"], repeats=1)
    _, env = common.start(args, "bench_recurrent_dropout.py: pylstm with and without "
                          f"recurrent_dropout={args.p}, {args.dtype}", "no")
    rows = []
    for case in args.cases:
        I, H, X, d_out = common.training_inputs(case, args.dtype, args.seed)

        def train_step(p, I=I, H=H, X=X, d_out=d_out):
            layer = LSTM(I, H, dtype=args.dtype, random_state=args.seed, recurrent_dropout=p)
            return lambda: (layer.forward(X, training=True), layer.backward(d_out))
        rows.append(compare(case, train_step, args.p, args.repeats, 0.05))
    X, y = load_digits_sequences(return_X_y=True)
    X, y = (X[:200], y[:200]) if args.quick else (X, y)

    def epoch(p):
        clf = LSTMClassifier(hidden_size=128, max_iter=1, dtype=args.dtype, recurrent_dropout=p,
                             random_state=args.seed)
        return lambda: clf.partial_fit(X, y, classes=np.arange(10))
    fits = 1 if args.quick else max(3, args.repeats // 3)
    rows.append(compare("digits epoch", epoch, args.p, fits, 0.0))
    common.print_ab(rows, "plain", "dropout", "above 1: dropout slower")
    common.write_json(args.json, env, cases=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
