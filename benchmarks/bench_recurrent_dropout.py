"""What recurrent dropout costs a training step of ``pylstm.LSTM``.

Times ``forward(training=True)`` + ``backward`` with and without
``recurrent_dropout`` (masks drawn by the call), and one epoch of
``LSTMClassifier.fit`` on the digits (hidden 128), the two alternated sample
by sample in one process; prints the medians and their ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_recurrent_dropout.py --threads 2
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from pylstm import LSTM, LSTMClassifier
from pylstm.datasets import load_digits_sequences

CASES = ["32x64x32x256", "64x100x64x128", "16x50x16x64", "1x100x32x128"]


def _median_ms(calls, repeats):
    """Median milliseconds per call of each of ``calls``, alternated."""
    times = [[] for _ in calls]
    for call in calls * 2:
        call()
    for _ in range(repeats):
        for call, samples in zip(calls, times, strict=True):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.05 or n == 0:
                call()
                n += 1
            samples.append((time.perf_counter() - start) / n)
    return [1e3 * float(np.median(t)) for t in times]


def _row(name, plain, dropped):
    print(f"{name:>16} {plain:10.3f} {dropped:11.3f} {dropped / plain:7.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="B x T x I x H")
    parser.add_argument("--p", type=float, default=0.25, help="recurrent_dropout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    for pool in threadpool_info():
        print(f"# {pool['internal_api']} {pool.get('version')} {pool.get('architecture')} "
              f"threads={pool['num_threads']}")
    print(f"# threads={args.threads} dtype={args.dtype} recurrent_dropout={args.p}")
    print(f"{'case':>16} {'plain ms':>10} {'dropout ms':>11} {'ratio':>7}")
    with threadpool_limits(limits=args.threads):
        for case in args.cases:
            B, T, I, H = (int(v) for v in case.split("x"))
            rng = np.random.default_rng(0)
            X = rng.normal(size=(B, T, I)).astype(args.dtype)
            d_out = rng.normal(size=(B, T, H)).astype(args.dtype)
            layers = [LSTM(I, H, dtype=args.dtype, random_state=0, recurrent_dropout=p)
                      for p in (0.0, args.p)]
            _row(case, *_median_ms(
                [lambda layer=layer, X=X, d=d_out: (layer.forward(X), layer.backward(d))
                 for layer in layers], args.repeats))
        X, y = load_digits_sequences(return_X_y=True)
        fits = [LSTMClassifier(hidden_size=128, max_iter=1, dtype=args.dtype,
                               recurrent_dropout=p, random_state=0) for p in (0.0, args.p)]
        _row("digits fit", *_median_ms(
            [lambda est=est: est.partial_fit(X, y, classes=np.arange(10)) for est in fits],
            max(3, args.repeats // 3)))

if __name__ == "__main__":
    main()
