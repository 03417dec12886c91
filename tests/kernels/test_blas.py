"""The row-major BLAS wrappers of :mod:`pylstm._blas`, and ``pylstm._lstm.gemm_halves``
over them, against NumPy."""

import itertools

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import _blas, _lstm

gemm_rm = _blas.gemm_rm
gemv_rm = _blas.gemv_rm

DTYPES = [np.float32, np.float64]
TRANS = list(itertools.product([False, True], repeat=2))
# (m, n, k): result c is (m, n), op(a) is (m, k), op(b) is (k, n).
GEMM_SHAPES = [
    (1, 1, 1),
    (1, 7, 3),  # 1 x N result
    (7, 1, 3),  # N x 1 result
    (3, 5, 1),  # rank-one update (k = 1)
    (1, 1, 9),  # dot product
    (4, 6, 5),  # non-square everywhere
    (33, 17, 65),  # larger than the micro-kernel blocks
]
GEMV_SHAPES = [(1, 1), (1, 6), (6, 1), (3, 8), (8, 3), (40, 23)]
ALPHA_BETA = [(0.75, -1.25), (-2.0, 0.5), (1.0, 0.0), (0.0, 1.0)]


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-12,
                                                                     "atol": 1e-12}


def _operand(rng, rows, cols, trans, dtype):
    """An array whose op() has shape (rows, cols), C-contiguous as stored."""
    shape = (cols, rows) if trans else (rows, cols)
    return np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
@pytest.mark.parametrize(("m", "n", "k"), GEMM_SHAPES)
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
def test_gemm_matches_numpy(dtype, trans_a, trans_b, m, n, k, alpha, beta):
    rng = np.random.default_rng([m, n, k, trans_a, trans_b])
    a = _operand(rng, m, k, trans_a, dtype)
    b = _operand(rng, k, n, trans_b, dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    expected = (alpha * (op_a.astype(np.float64) @ op_b.astype(np.float64))
                + beta * c.astype(np.float64))
    a_before, b_before = a.copy(), b.copy()
    result = gemm_rm(trans_a, trans_b, alpha, a, b, beta, c)
    assert result is None
    assert c.dtype == dtype
    np.testing.assert_allclose(c, expected, **_tol(dtype))
    # Inputs are read only.
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_beta_zero_ignores_nan_in_c(dtype):
    # BLAS semantics: with beta == 0, c is overwritten, not scaled (NaN * 0 is NaN).
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal((4, 2)).astype(dtype)
    c = np.full((3, 2), np.nan, dtype=dtype)
    gemm_rm(False, False, 1.0, a, b, 0.0, c)
    np.testing.assert_allclose(c, a @ b, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_writes_only_c(dtype):
    # c is a view into a larger C-contiguous buffer: rows around it stay intact.
    rng = np.random.default_rng(2)
    buf = rng.standard_normal((6, 3)).astype(dtype)
    before = buf.copy()
    c = buf[2:4]
    assert c.flags.c_contiguous
    a = rng.standard_normal((2, 5)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype)
    gemm_rm(False, False, 1.0, a, b, 0.0, c)
    np.testing.assert_allclose(buf[2:4], a @ b, **_tol(dtype))
    np.testing.assert_array_equal(buf[:2], before[:2])
    np.testing.assert_array_equal(buf[4:], before[4:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize(("m", "n"), GEMV_SHAPES)
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
def test_gemv_matches_numpy(dtype, trans_a, m, n, alpha, beta):
    rng = np.random.default_rng([m, n, trans_a])
    a = rng.standard_normal((m, n)).astype(dtype)
    x = rng.standard_normal(m if trans_a else n).astype(dtype)
    y = rng.standard_normal(n if trans_a else m).astype(dtype)
    op_a = (a.T if trans_a else a).astype(np.float64)
    expected = alpha * (op_a @ x.astype(np.float64)) + beta * y.astype(np.float64)
    a_before, x_before = a.copy(), x.copy()
    assert gemv_rm(trans_a, alpha, a, x, beta, y) is None
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected, **_tol(dtype))
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_and_gemv_agree_on_a_single_row(dtype):
    # The layer switches from gemm to gemv when one row is active: same numbers.
    rng = np.random.default_rng(3)
    h = rng.standard_normal((1, 5)).astype(dtype)
    w = rng.standard_normal((8, 5)).astype(dtype)
    c = np.zeros((1, 8), dtype=dtype)
    y = np.zeros(8, dtype=dtype)
    gemm_rm(False, True, 1.0, h, w, 0.0, c)
    gemv_rm(False, 1.0, w, h[0], 0.0, y)
    np.testing.assert_allclose(c[0], y, **_tol(dtype))
    np.testing.assert_allclose(y, w @ h[0], **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("trans_a", "trans_b", "a_shape", "b_shape", "c_shape"),
    [
        (False, False, (3, 4), (5, 2), (3, 2)),  # inner dimensions differ
        (False, False, (3, 4), (4, 2), (2, 2)),  # rows of c
        (False, False, (3, 4), (4, 2), (3, 3)),  # columns of c
        (True, False, (3, 4), (4, 2), (4, 2)),  # op(a) is (4, 3): 3 != 4
        (False, True, (3, 4), (4, 2), (3, 2)),  # op(b) is (2, 4)
        (True, True, (4, 3), (2, 4), (2, 3)),  # op(a) (3, 4): rows of c
    ],
)
def test_gemm_shape_mismatch_raises(dtype, trans_a, trans_b, a_shape, b_shape, c_shape):
    a, b = np.ones(a_shape, dtype), np.ones(b_shape, dtype)
    c = np.full(c_shape, 7.0, dtype)
    with pytest.raises(ValueError, match="do not conform"):
        gemm_rm(trans_a, trans_b, 1.0, a, b, 0.0, c)
    np.testing.assert_array_equal(c, 7.0)  # untouched


def test_gemm_empty_inner_dimension_raises():
    with pytest.raises(ValueError, match="inner dimension"):
        gemm_rm(False, False, 1.0, np.ones((3, 0)), np.ones((0, 2)), 0.0, np.zeros((3, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("trans_a", "a_shape", "x_len", "y_len"),
    [
        (False, (3, 5), 4, 3),
        (False, (3, 5), 5, 5),
        (True, (3, 5), 5, 5),
        (True, (3, 5), 3, 3),
    ],
)
def test_gemv_shape_mismatch_raises(dtype, trans_a, a_shape, x_len, y_len):
    y = np.full(y_len, 7.0, dtype)
    with pytest.raises(ValueError, match="do not conform"):
        gemv_rm(trans_a, 1.0, np.ones(a_shape, dtype), np.ones(x_len, dtype), 0.0, y)
    np.testing.assert_array_equal(y, 7.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["a", "b", "c"])
def test_gemm_rejects_fortran_order(dtype, which):
    ops = {"a": np.ones((3, 4), dtype), "b": np.ones((4, 2), dtype), "c": np.zeros((3, 2), dtype)}
    ops[which] = np.asfortranarray(ops[which])
    assert not ops[which].flags.c_contiguous
    with pytest.raises(ValueError, match="not C-contiguous"):
        gemm_rm(False, False, 1.0, ops["a"], ops["b"], 0.0, ops["c"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_rejects_non_contiguous(dtype):
    a, x, y = np.ones((3, 5), dtype), np.ones(5, dtype), np.zeros(3, dtype)
    with pytest.raises(ValueError, match="not C-contiguous"):
        gemv_rm(False, 1.0, np.asfortranarray(a), x, 0.0, y)
    with pytest.raises(ValueError, match="not C-contiguous"):
        gemv_rm(False, 1.0, a, np.ones(10, dtype)[::2], 0.0, y)
    with pytest.raises(ValueError, match="not C-contiguous"):
        gemv_rm(False, 1.0, a, x, 0.0, np.zeros(6, dtype)[::2])


def test_mixed_dtypes_rejected():
    with pytest.raises(ValueError, match="dtype mismatch"):
        gemm_rm(False, False, 1.0, np.ones((3, 4)), np.ones((4, 2), np.float32), 0.0,
                np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dtype mismatch"):
        gemv_rm(False, 1.0, np.ones((3, 4), np.float32), np.ones(4), 0.0,
                np.zeros(3, np.float32))


def test_integer_arrays_rejected():
    # No float or double specialization matches: the fused function refuses the call.
    with pytest.raises(TypeError, match="No matching signature"):
        gemm_rm(False, False, 1.0, np.ones((3, 4), np.int64), np.ones((4, 2), np.int64), 0.0,
                np.zeros((3, 2), np.int64))


def test_read_only_output_rejected_but_read_only_inputs_accepted():
    a, b = np.ones((3, 4)), np.ones((4, 2))
    a.flags.writeable = False
    b.flags.writeable = False
    c = np.zeros((3, 2))
    gemm_rm(False, False, 1.0, a, b, 0.0, c)  # const memoryviews accept read-only input
    np.testing.assert_array_equal(c, 4.0)
    c.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gemm_rm(False, False, 1.0, a, b, 0.0, c)


# gemm_halves (src/_head.pxi): the language model head's products by halves of their
# rows, on the kernels' two threads. A hang in the worker hand-over must fail the test.
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
