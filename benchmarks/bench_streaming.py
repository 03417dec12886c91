"""Streaming stores for the training forward's kept gates and states, against plain stores.

A training step of ``pylstm.LSTM`` at several sizes and a language-model epoch, each timed
with the kept arrays written by streaming stores (the default) and by plain stores
(``pylstm._lstm.set_streaming``), alternating in one process so that the machine's slow and
fast spells fall on both. See benchmarks/README.md.
Usage: ``python benchmarks/bench_streaming.py --threads 2``
"""

import argparse
import sys

import _common as common

from pylstm import LSTM, LSTMLanguageModel, _lstm
from pylstm.datasets import load_python_docs

#: BxTxIxH: from a few hundred KiB kept per call (the digits) to tens of MiB
CASES = ("16x20x8x32", "32x8x8x64", "64x100x2x64", "32x50x16x128", "32x64x32x256",
         "64x100x64x256", "32x200x128x512")


def compare(label, make_call, repeats, min_time):
    """A table row: median ms per call of ``make_call()`` with plain stores and with
    streaming ones and their ratio (:func:`_common.ab_row`)."""
    call = make_call()

    def with_streaming(enabled):
        def run():
            _lstm.set_streaming(enabled)
            return call()
        return run
    try:
        return common.ab_row(label, {"plain_ms": with_streaming(False),
                                     "stream_ms": with_streaming(True)}, repeats, min_time)
    finally:
        _lstm.set_streaming(True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="BxTxIxH")
    p.add_argument("--repeats", type=int, default=21,
                   help="samples per figure (default 21; a third, at least 3, for the epoch)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    common.add_common_options(p, threads_default=2)
    args = common.apply_quick(p.parse_args(argv), cases=["2x5x3x4"], repeats=1)
    _, env = common.start(args, "bench_streaming.py: pylstm's training forward keeping its "
                          f"gates and states by streaming or plain stores, {args.dtype}", "no")
    rows = []
    for case in args.cases:
        I, H, X, d_out = common.training_inputs(case, args.dtype, args.seed)

        def train_step(I=I, H=H, X=X, d_out=d_out):
            layer = LSTM(I, H, dtype=args.dtype, random_state=args.seed)
            return lambda: (layer.forward(X, training=True), layer.backward(d_out))
        rows.append(compare(case, train_step, args.repeats, 0.05))
    text = load_python_docs()[:2_000 if args.quick else 50_000]
    hidden = 8 if args.quick else 256

    def epoch():
        lm = LSTMLanguageModel(embedding_dim=32, hidden_size=hidden, seq_len=64, batch_size=32,
                               learning_rate_init=0.003, clip_norm=5.0, dtype=args.dtype,
                               random_state=args.seed)
        return lambda: lm.partial_fit(text)
    rows.append(compare(f"lm epoch H={hidden}", epoch,
                        1 if args.quick else max(3, args.repeats // 3), 0.0))
    common.print_ab(rows, "plain", "stream", "below 1: streaming faster")
    common.write_json(args.json, env, cases=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
