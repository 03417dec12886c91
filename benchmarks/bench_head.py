"""A dense head's weight gradients: pylstm_gemm_tn against BLAS's product.

See benchmarks/README.md. Usage: ``python benchmarks/bench_head.py --threads 2``
"""

import argparse
import sys

import _common as common
import numpy as np

from pylstm import _lstm
from pylstm._dense import dense_product
from pylstm._threads import loop_threads, single_threaded_blas

#: N x H x V: rows, the head's inputs, its outputs (a language model's 2048 rows and
#: 102 characters at four widths; a large vocabulary; an estimator's batch).
CASES = ("2048x128x102", "2048x256x102", "2048x512x102", "2048x1024x102",
         "2048x256x10000", "64x64x10")


def calls(case, dtype, rng):
    """The two ways to one case's gradients, as :func:`_common.ab_row` takes them."""
    N, H, V = (int(v) for v in case.split("x"))
    x, dz = rng.standard_normal((N, H)).astype(dtype), rng.standard_normal((N, V)).astype(dtype)
    d_coef, d_b = np.empty((H, V), dtype), np.empty(V, dtype)
    ones, sums = np.ones((N, 1), dtype), np.empty((V, 1), dtype)
    threads = loop_threads() if N * H * V >= _lstm.HEAD_SPLIT_MACS else 1  # as head_gradients

    def blas():  # the products as dense_product makes them, the sums by a column of ones
        dense_product(True, False, x, dz, 0.0, d_coef)
        dense_product(True, False, dz, ones, 0.0, sums)

    def tn():
        _lstm.head_weight_gradients(x, dz, d_coef, d_b, threads)
    return {"blas_ms": blas, "tn_ms": tn}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="NxHxV")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    common.add_common_options(p, threads_default=2)
    args = common.apply_quick(p.parse_args(argv), cases=["64x8x5"], repeats=1)
    _, env = common.start(args, "bench_head.py: the weight gradients of a dense head, "
                          f"x.T @ dz and dz's column sums, {args.dtype}", "no")
    rng = np.random.default_rng(args.seed)
    with single_threaded_blas():
        rows = [common.ab_row(case, calls(case, args.dtype, rng), args.repeats, 0.02)
                for case in args.cases]
    common.print_ab(rows, "blas", "tn", "below 1: pylstm_gemm_tn faster", "case (NxHxV)")
    common.write_json(args.json, env, cases=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
