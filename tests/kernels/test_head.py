"""The language model's loss in the extension (``src/_head.pxi``):
``softmax_cross_entropy``, its loss and gradient in one pass per row, against
NumPy in float64, and the heads' weight gradients (``head_weight_gradients``),
at every SIMD level the suite runs at. The head's products (``gemm_halves``)
are tested with the BLAS wrappers, in test_blas.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylstm import _lstm

DTYPES = [np.float32, np.float64]


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
@pytest.mark.parametrize(("n", "c"), [(2048, 100), (4097, 31), (2, 40000)])
def test_softmax_cross_entropy_by_halves(dtype, n, c):
    """A language model's batch (from 62,500 logits on) goes by halves of
    its rows: the loss and the gradient of NumPy's, and the same bits on one
    thread as on two, call after call."""
    rng = np.random.default_rng(n)
    z = (rng.standard_normal((n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    weight = np.full(n, 1.0 / n)
    results = []
    for threads in (1, 2, 2, 2, 1):
        dz = np.full_like(z, np.nan)
        results.append((_lstm.softmax_cross_entropy(z, y, weight, dz, threads), dz))
    ref_loss, ref_dz = _reference(z, y, weight)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert results[0][0] == pytest.approx(ref_loss, rel=tol)
    np.testing.assert_allclose(results[0][1], ref_dz, rtol=tol, atol=tol / n)
    for loss, dz in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(dz, results[0][1])
    # A NaN in the second half still makes the loss NaN.
    z[-1, 0] = np.nan
    assert np.isnan(_lstm.softmax_cross_entropy(z, y, weight, np.empty_like(z), 2))


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_finite_logits_far_apart(dtype):
    """Finite logits whose difference overflows: an infinite loss, not NaN."""
    big = np.finfo(dtype).max
    z = np.array([[big, -big, 0.0], [0.0, 1.0, 2.0]], dtype=dtype)
    dz = np.empty_like(z)
    loss = _lstm.softmax_cross_entropy(z, np.array([1, 2]), np.full(2, 0.5), dz)
    assert loss == np.inf
    assert np.isfinite(dz).all()


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


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), h=st.integers(1, 80), v=st.integers(1, 40),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_head_weight_gradients_match_numpy(n, h, v, dtype, seed):
    """``x.T @ dz`` and ``dz``'s column sums for every shape (whole vectors of x's
    columns and a tail, step blocks and a rest), against NumPy in float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h)).astype(dtype)
    dz = rng.standard_normal((n, v)).astype(dtype)
    d_coef, d_b = np.full((h, v), np.nan, dtype), np.full(v, np.nan, dtype)
    _lstm.head_weight_gradients(x, dz, d_coef, d_b)
    x64, dz64 = x.astype(np.float64), dz.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.sqrt(n)  # the sums' size
    np.testing.assert_allclose(d_coef, x64.T @ dz64, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(d_b, dz64.sum(axis=0), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "h", "v"), [(2048, 256, 102), (2048, 129, 31), (700, 64, 3000)])
def test_head_weight_gradients_by_halves(dtype, n, h, v):
    """From HEAD_SPLIT_MACS multiply-adds on, two threads take half of x's columns
    each: the same bits as one thread, call after call, and NumPy's values."""
    assert n * h * v >= _lstm.HEAD_SPLIT_MACS
    rng = np.random.default_rng(h)
    x = rng.standard_normal((n, h)).astype(dtype)
    dz = rng.standard_normal((n, v)).astype(dtype)
    results = []
    for threads in (1, 2, 2, 1):
        d_coef, d_b = np.empty((h, v), dtype), np.empty(v, dtype)
        _lstm.head_weight_gradients(x, dz, d_coef, d_b, threads)
        results.append((d_coef, d_b))
    for d_coef, d_b in results[1:]:
        np.testing.assert_array_equal(d_coef, results[0][0])
        np.testing.assert_array_equal(d_b, results[0][1])
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(results[0][0], x.astype(np.float64).T @ dz, rtol=tol, atol=tol)
    np.testing.assert_allclose(results[0][1], dz.astype(np.float64).sum(axis=0), rtol=tol,
                               atol=tol)


def test_head_weight_gradients_checks_shapes_and_empty_sums():
    x, dz = np.ones((4, 3)), np.ones((4, 2))
    with pytest.raises(ValueError, match="do not match"):
        _lstm.head_weight_gradients(x, dz, np.empty((2, 3)), np.empty(2))
    with pytest.raises(ValueError, match="do not match"):
        _lstm.head_weight_gradients(x, dz, np.empty((3, 2)), np.empty(3))
    # No rows: sums of nothing.
    d_coef, d_b = np.full((3, 2), np.nan), np.full(2, np.nan)
    _lstm.head_weight_gradients(x[:0], dz[:0], d_coef, d_b)
    assert not d_coef.any() and not d_b.any()
