"""The dense products of the networks' heads (and of a looked-up input projection).

Each runs by halves on the kernels' two threads: the products by halves of
their rows (:func:`dense_product`), a head's weight gradients by halves of its
inputs' columns (:func:`head_gradients`).
"""

import numpy as np

from . import _blas, _lstm
from ._threads import blas_beyond_loop, loop_threads, single_threaded_blas
from ._tuning import HEAD_TN_MAX_INPUTS, WHOLE_SEQUENCE_ONE_THREAD_BELOW

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


def head_gradients(x, dz):
    """``(x.T @ dz, dz.sum(axis=0))``: a head's weight gradients from its (N, D) inputs
    ``x`` and its outputs' (N, V) gradient ``dz``, both C-contiguous of one dtype.

    One compiled call (:func:`pylstm._lstm.head_weight_gradients`), on the
    kernels' two threads from ``HEAD_SPLIT_MACS`` multiply-adds on. Inputs wider
    than ``HEAD_TN_MAX_INPUTS``, and a large product where BLAS may use more than
    two cores, go to :func:`dense_product` (BLAS).
    """
    d_coef = np.empty((x.shape[1], dz.shape[1]), dtype=x.dtype)
    work = x.shape[0] * x.shape[1] * dz.shape[1]
    if x.shape[1] > HEAD_TN_MAX_INPUTS or (work >= WHOLE_SEQUENCE_ONE_THREAD_BELOW
                                           and blas_beyond_loop()):
        # Wide inputs, or BLAS with more cores than the kernels' two: BLAS's product.
        dense_product(True, False, x, dz, 0.0, d_coef)
        return d_coef, dz.sum(axis=0)
    d_intercept = np.empty(dz.shape[1], dtype=x.dtype)
    _lstm.head_weight_gradients(x, dz, d_coef, d_intercept,
                                loop_threads() if work >= _lstm.HEAD_SPLIT_MACS else 1)
    return d_coef, d_intercept


def dense(x, coef, intercept):
    """``x @ coef + intercept`` for (N, D) rows ``x``, by :func:`dense_product`."""
    x = np.ascontiguousarray(x, dtype=coef.dtype)
    out = np.empty((x.shape[0], coef.shape[1]), dtype=coef.dtype)
    out[...] = intercept
    dense_product(False, False, x, coef, 1.0, out)
    return out
