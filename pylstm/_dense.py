"""The dense products of the networks' heads (and of a looked-up input projection).

Each runs by halves of its rows on the kernels' two threads; see
:func:`dense_product`.
"""

import numpy as np

from . import _blas, _lstm
from ._threads import blas_beyond_loop, loop_threads, single_threaded_blas
from ._tuning import WHOLE_SEQUENCE_ONE_THREAD_BELOW

#: Multiply-adds of a product below which OpenBLAS runs one thread whatever its
#: setting (its SMP_THRESHOLD_MIN x GEMM_MULTITHREAD_THRESHOLD): the head's
#: products below it skip the switch to one thread (:func:`dense_product`).
_BLAS_ONE_THREAD_BELOW = 65536 * 4


def dense_product(trans_a, trans_b, a, b, beta, c):
    """``c = op(a) @ op(b) + beta * c``: a product of a network's dense head.

    It runs by halves of its rows on the kernels' two threads
    (:func:`pylstm._lstm.gemm_halves`), each half on one BLAS thread:
    woken BLAS workers keep spinning on the other core after the call,
    and the next kernel call, which splits its loop over both cores,
    then waits for them. Only a large product where BLAS may use more
    than two cores (:func:`pylstm._threads.blas_beyond_loop`) runs on
    BLAS's threads (benchmarks/bench_lm.py, bench_quality.py;
    tests/language_model/test_language_model.py::test_head_threads).
    All arrays C-contiguous, of one dtype.
    """
    k = a.shape[0] if trans_a else a.shape[1]
    if k == 0:  # an empty sum (beta 0: c is not read, as in BLAS)
        if beta == 0.0:
            c.fill(0)
        else:
            c *= beta
        return
    work = c.shape[0] * c.shape[1] * k
    if work >= WHOLE_SEQUENCE_ONE_THREAD_BELOW and blas_beyond_loop():
        _blas.gemm_rm(trans_a, trans_b, 1.0, a, b, beta, c)
        return
    if work < _BLAS_ONE_THREAD_BELOW:
        # One BLAS call that BLAS keeps on one thread itself (a stream's step,
        # generate()): no switch, no thread query.
        _lstm.gemm_halves(trans_a, trans_b, 1.0, a, b, beta, c, 1)
        return
    with single_threaded_blas():
        _lstm.gemm_halves(trans_a, trans_b, 1.0, a, b, beta, c, loop_threads())


def column_sums(a):
    """The column sums of a C-contiguous (N, V) array: a head's bias gradient.

    One product with a column of ones (:func:`dense_product`): cheaper
    than NumPy's strided ``sum(axis=0)`` at the heads' sizes (measured
    with ``benchmarks/bench_lm.py``'s language model).
    """
    out = np.empty((a.shape[1], 1), dtype=a.dtype)
    dense_product(True, False, a, np.ones((a.shape[0], 1), dtype=a.dtype), 0.0, out)
    return out[:, 0]


def dense(x, coef, intercept):
    """``x @ coef + intercept`` for (N, D) rows ``x``, by :func:`dense_product`."""
    x = np.ascontiguousarray(x, dtype=coef.dtype)
    out = np.empty((x.shape[0], coef.shape[1]), dtype=coef.dtype)
    out[...] = intercept
    dense_product(False, False, x, coef, 1.0, out)
    return out
