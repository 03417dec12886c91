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
import numpy as np

from pylstm import LSTM, LSTMLanguageModel, _lstm
from pylstm.datasets import load_python_docs

#: BxTxIxH: from a few hundred KiB kept per call (the digits) to tens of MiB
CASES = ("16x20x8x32", "32x8x8x64", "64x100x2x64", "32x50x16x128", "32x64x32x256",
         "64x100x64x256", "32x200x128x512")


def compare(label, make_call, repeats, min_time):
    """A table row: median ms per call of ``make_call()`` with streaming stores and with
    plain ones, alternated after one untimed round, and their ratio."""
    call = make_call()

    def with_streaming(enabled):
        def run():
            _lstm.set_streaming(enabled)
            return call()
        return run
    try:
        wall = common.alternate({"plain_ms": with_streaming(False),
                                 "stream_ms": with_streaming(True)},
                                repeats, min_time, warmup=1)[0]
    finally:
        _lstm.set_streaming(True)
    row = {"case": label, **{k: 1e3 * float(np.median(v)) for k, v in wall.items()}}
    return {**row, "ratio": row["stream_ms"] / row["plain_ms"]}


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
        B, T, I, H = (int(v) for v in case.split("x"))
        rng = np.random.default_rng(args.seed)
        X = rng.normal(size=(B, T, I)).astype(args.dtype)
        d_out = rng.normal(size=(B, T, H)).astype(args.dtype)

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
    print("Median ms per call; ratio = stream / plain (below 1: streaming faster)")
    print("\n".join(common.table([("case (BxTxIxH)", "<16", "case"),
                                  ("plain ms", ">10.3f", "plain_ms"),
                                  ("stream ms", ">10.3f", "stream_ms"),
                                  ("ratio", ">7.3f", "ratio")], rows)))
    common.write_json(args.json, env, cases=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
