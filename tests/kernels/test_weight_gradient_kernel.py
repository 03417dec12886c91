"""The weight-gradient kernel of ``src/_kernels.c`` (``pylstm_gemm_tn``).

It makes ``dW_ih = dG^T X`` and ``dW_hh = dG^T H_prev`` from the gate
gradients and the layer's per-step arrays as they lie (dG's columns are a
range of gate rows; X and H_prev are views of one wider array), straight
into the gradient arrays. These tests check it against NumPy in extended
precision, that an element's result does not depend on which rows a call
covers (the two threads' halves), and that nothing outside the outputs is
written.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylstm import _lstm

SHAPES = [  # k steps, gate rows, n_in, hidden: partial panels, short tiles, k-blocks
    (1, 8, 3, 4), (37, 20, 5, 16), (100, 64, 32, 128), (1500, 44, 7, 33), (700, 96, 40, 24),
]


def _problem(dtype, k, G, n_in, H, seed=0):
    rng = np.random.default_rng(seed)
    dg = rng.normal(size=(k, G + 5)).astype(dtype)[:, 2:G + 2]  # a column range
    xh = rng.normal(size=(k, n_in + H + 3)).astype(dtype)        # rows of x, then h_prev
    return dg, xh[:, :n_in], xh[:, n_in:n_in + H]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("k", "G", "n_in", "H"), SHAPES)
def test_matches_numpy(dtype, k, G, n_in, H):
    dg, x, h_prev = _problem(dtype, k, G, n_in, H)
    # Outputs inside wider NaN arrays: nothing past their columns is written.
    c1 = np.full((G, n_in + 9), np.nan, dtype)
    c2 = np.full((G, H + 9), np.nan, dtype)
    _lstm._gemm_tn(dg, x, h_prev, c1[:, :n_in], c2[:, :H])
    assert np.isnan(c1[:, n_in:]).all() and np.isnan(c2[:, H:]).all()
    ref1 = dg.T.astype(np.longdouble) @ x.astype(np.longdouble)
    ref2 = dg.T.astype(np.longdouble) @ h_prev.astype(np.longdouble)
    eps = np.finfo(dtype).eps
    for got, ref, b in ((c1[:, :n_in], ref1, x), (c2[:, :H], ref2, h_prev)):
        # |error| <= k eps sum |a||b| (sequential summation)
        bound = 2 * k * eps * (np.abs(dg.T).astype(np.longdouble) @ np.abs(b))
        assert (np.abs(got - ref) <= bound + np.finfo(dtype).tiny).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("split", [1, 5, 8, 13])
def test_rows_do_not_depend_on_the_call(dtype, split):
    k, G, n_in, H = 1500, 24, 7, 33
    dg, x, h_prev = _problem(dtype, k, G, n_in, H, seed=split)
    whole1, whole2 = np.empty((G, n_in), dtype), np.empty((G, H), dtype)
    _lstm._gemm_tn(dg, x, h_prev, whole1, whole2)
    parts1, parts2 = np.empty((G, n_in), dtype), np.empty((G, H), dtype)
    for lo, hi in ((0, split), (split, G)):
        _lstm._gemm_tn(dg[:, lo:hi], x, h_prev, parts1[lo:hi], parts2[lo:hi])
    np.testing.assert_array_equal(parts1, whole1)
    np.testing.assert_array_equal(parts2, whole2)


def test_backward_uses_it_within_its_width():
    assert _lstm.direct_weight_gradients(32, 64)
    assert _lstm.direct_weight_gradients(128, 128)
    assert not _lstm.direct_weight_gradients(128, 256)
    old = _lstm.set_packed_gemm(False)
    try:
        assert not _lstm.direct_weight_gradients(32, 64)
    finally:
        _lstm.set_packed_gemm(old)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 300), m=st.integers(1, 40), n1=st.integers(1, 70),
       n2=st.integers(1, 70), col=st.integers(0, 5), dtype=st.sampled_from([np.float32,
                                                                          np.float64]))
def test_any_shape(k, m, n1, n2, col, dtype):
    """Random shapes and offsets (partial tiles, partial panels, the last
    rows of the arrays): the result is A^T B within the summation bound."""
    rng = np.random.default_rng(k * 7919 + m * 31 + n1 + n2)
    a = rng.normal(size=(k, m + col)).astype(dtype)[:, col:]
    b = rng.normal(size=(k, n1 + n2)).astype(dtype)
    c1, c2 = np.empty((m, n1), dtype), np.empty((m, n2), dtype)
    _lstm._gemm_tn(a, b[:, :n1], b[:, n1:], c1, c2)
    eps = np.finfo(dtype).eps
    for got, part in ((c1, b[:, :n1]), (c2, b[:, n1:])):
        ref = a.T.astype(np.longdouble) @ part.astype(np.longdouble)
        bound = 2 * k * eps * (np.abs(a.T).astype(np.longdouble) @ np.abs(part))
        assert (np.abs(got - ref) <= bound + np.finfo(dtype).tiny).all()
