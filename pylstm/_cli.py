"""The ``python -m pylstm`` command line."""

import argparse
import time

import numpy as np


def _demo(args):
    from ._layer import LSTM

    rng = np.random.default_rng(0)
    layer = LSTM(16, 64, num_layers=2, bidirectional=True, random_state=0)
    X = rng.normal(size=(32, 50, 16)).astype(np.float32)
    lengths = rng.integers(10, 51, size=32)
    start = time.perf_counter()
    out, (h_n, _) = layer.forward(X, lengths=lengths)
    dX, grads = layer.backward(np.ones_like(out))
    elapsed = time.perf_counter() - start
    print(f"pylstm.LSTM(16, 64, num_layers=2, bidirectional=True) on X {X.shape}")
    print(f"out {out.shape}, h_n {h_n.shape}, {len(grads)} gradients")
    print(f"forward + BPTT in {elapsed * 1e3:.1f} ms")
    return 0


def build_parser():
    """Return the argument parser of ``python -m pylstm``."""
    parser = argparse.ArgumentParser(prog="python -m pylstm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model on built-in data and report")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Parse ``argv`` and run the chosen command; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)
