"""The language model's softmax head in the extension (``src/_head.pxi``).

``gemm_halves``: its products by halves of their rows, on the kernels' two
threads (a hang in the worker hand-over must fail the test, hence the
watchdogs); ``softmax_cross_entropy``: its loss and gradient in one pass per
row, against NumPy in float64, at every SIMD level the suite runs at.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from pylstm import _lstm

DTYPES = [np.float32, np.float64]
TRANS = list(itertools.product([False, True], repeat=2))


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-12,
                                                                     "atol": 1e-12}


def _operand(rng, rows, cols, trans, dtype):
    """An array whose op() has shape (rows, cols), C-contiguous as stored."""
    shape = (cols, rows) if trans else (rows, cols)
    return np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", TRANS)
@pytest.mark.parametrize("m, n, k", [(1, 3, 2), (7, 5, 3), (301, 70, 90)])
def test_gemm_halves_matches_numpy_and_ignores_threads(dtype, trans_a, trans_b, m, n, k):
    rng = np.random.default_rng(m * n * k)
    a = _operand(rng, m, k, trans_a, dtype)
    b = _operand(rng, k, n, trans_b, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    expect = 0.75 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) - 1.25 * c0
    results = []
    with threadpool_limits(limits=1, user_api="blas"):
        for threads in (1, 2):
            c = c0.copy()
            used = _lstm.gemm_halves(trans_a, trans_b, 0.75, a, b, -1.25, c, threads)
            # Halves from SPLIT_CALL_MACS (1e6) multiply-adds on; below, one call.
            if threads == 1 or m * n * k < 1e6:
                assert used == 1
            np.testing.assert_allclose(c, expect, **_tol(dtype))
            results.append(c)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_halves_on_a_large_product_uses_two_threads(dtype):
    if _lstm.kernel_threads() < 2:
        pytest.skip("this build has no kernel threads")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 64)).astype(dtype)
    b = rng.standard_normal((64, 40)).astype(dtype)
    c = np.empty((512, 40), dtype=dtype)
    with threadpool_limits(limits=1, user_api="blas"):
        assert _lstm.gemm_halves(False, False, 1.0, a, b, 0.0, c, 2) == 2
    np.testing.assert_allclose(c, a @ b, **_tol(dtype))


@pytest.mark.parametrize("a_shape, b_shape, c_shape", [((3, 4), (5, 2), (3, 2)),
                                                       ((3, 4), (4, 2), (2, 2)),
                                                       ((3, 4), (4, 2), (3, 3))])
def test_gemm_halves_shape_mismatch_raises(a_shape, b_shape, c_shape):
    with pytest.raises(ValueError, match="gemm_halves: shapes .* do not match"):
        _lstm.gemm_halves(False, False, 1.0, np.zeros(a_shape), np.zeros(b_shape), 0.0,
                          np.zeros(c_shape))
    for m, n in ((0, 2), (3, 0)):  # an empty result: nothing to compute
        assert _lstm.gemm_halves(False, False, 1.0, np.zeros((m, 4)), np.zeros((4, n)), 0.0,
                                 np.zeros((m, n))) == 1
    with pytest.raises(ValueError, match="inner dimension"):
        _lstm.gemm_halves(False, False, 1.0, np.zeros((3, 0)), np.zeros((0, 2)), 0.0,
                          np.zeros((3, 2)))


def _reference(z, y, weight):
    """Loss and gradient in float64 with NumPy."""
    z = z.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1)
    rows = np.arange(len(y))
    loss = float(np.dot(weight, np.log(total) - shifted[rows, y]))
    dz = e * (weight / total)[:, None]
    dz[rows, y] -= weight
    return loss, dz


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(1, 70), scale=st.sampled_from([0.1, 3.0, 30.0]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_softmax_cross_entropy_matches_numpy(n, c, scale, dtype, seed):
    """Every row width (whole vectors and a padded tail), weights that sum to 1."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, n)
    weight = rng.random(n)
    weight /= weight.sum()
    dz = np.full_like(z, np.nan)
    loss = _lstm.softmax_cross_entropy(z, y, weight, dz)
    ref_loss, ref_dz = _reference(z, y, weight)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(ref_loss, rel=tol, abs=tol)
    np.testing.assert_allclose(dz, ref_dz, rtol=tol, atol=tol * weight.max())
    # Each row's gradient sums to 0 (softmax minus a one-hot, both scaled by the weight).
    np.testing.assert_allclose(dz.sum(axis=1), 0.0, atol=10 * tol * weight.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_softmax_cross_entropy_non_finite_logit_gives_nan(dtype, bad):
    """A NaN or infinite logit anywhere, even in another class than the label,
    makes the loss NaN: the caller then raises instead of training on it."""
    z = np.zeros((3, 37), dtype=dtype)
    z[1, 30] = bad
    loss = _lstm.softmax_cross_entropy(z, np.array([0, 1, 2]), np.full(3, 1 / 3),
                                       np.empty_like(z))
    assert np.isnan(loss)


def test_softmax_cross_entropy_checks_before_work():
    z = np.zeros((2, 3))
    dz = np.full_like(z, 7.0)
    for y in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match="label .* outside 0 .. 2"):
            _lstm.softmax_cross_entropy(z, np.array(y), np.full(2, 0.5), dz)
    assert (dz == 7.0).all()  # nothing written
    with pytest.raises(ValueError, match="do not match"):
        _lstm.softmax_cross_entropy(z, np.array([0]), np.full(2, 0.5), dz)
    with pytest.raises(ValueError, match="do not match"):
        _lstm.softmax_cross_entropy(z, np.array([0, 1]), np.full(2, 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no classes"):
        _lstm.softmax_cross_entropy(np.zeros((2, 0)), np.array([0, 0]), np.full(2, 0.5),
                                    np.zeros((2, 0)))
    assert _lstm.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64),
                                       np.zeros(0), np.zeros((0, 3))) == 0.0
