"""The compiled array passes of ``pylstm._arrays``: finite checks, layout copies (the
compact layout of sequences of several lengths included), sums of squares, the
scatter-add of rows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pylstm._arrays import (
    address,
    all_finite,
    compact_rows,
    compact_tokens,
    gather_rows,
    scatter_add_rows,
    sum_squares,
    to_batch_first,
    to_time_major,
    zero_padding,
)

from pylstm._validation import check_finite

DTYPES = [np.float32, np.float64]
BAD = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000])
def test_all_finite(dtype, n):
    a = np.linspace(-1e30, 1e30, n).astype(dtype)
    assert all_finite(a)
    for pos in {0, n // 2, n - 1} if n else ():
        for bad in BAD:
            b = a.copy()
            b[pos] = bad
            assert not all_finite(b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_extremes_are_finite(dtype):
    info = np.finfo(dtype)
    a = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0], dtype)
    assert all_finite(a)


def test_check_finite_fast_and_general_paths_agree():
    for arr in (np.ones((3, 4), np.float32), np.ones((3, 4))[:, ::2], np.ones(3, ">f8"),
                np.ones((2, 2), np.float16)):
        check_finite(arr, "A")
        bad = arr.copy()
        bad.flat[1] = np.nan
        with pytest.raises(ValueError, match="A contains NaN"):
            check_finite(bad, "A")
        bad.flat[1] = -np.inf
        with pytest.raises(ValueError, match="A contains infinity"):
            check_finite(bad, "A")


@settings(max_examples=30, deadline=None, database=None)
@given(B=st.integers(1, 6), T=st.integers(1, 6), F=st.integers(1, 40),
       extra=st.integers(0, 5), dtype=st.sampled_from(DTYPES), bad=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_copies_match_numpy_and_report_non_finite(B, T, F, extra, dtype, bad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, F)).astype(dtype)
    if bad:
        x[rng.integers(B), rng.integers(T), rng.integers(F)] = rng.choice(BAD)
    out = np.full((T * B, F + extra), 7, dtype)
    assert to_time_major(x, out) is (not bad)
    np.testing.assert_array_equal(out[:, :F], x.transpose(1, 0, 2).reshape(T * B, F))
    assert np.all(out[:, F:] == 7)  # other columns untouched
    back = np.empty_like(x)
    assert to_batch_first(out[:, :F], back) is (not bad)
    np.testing.assert_array_equal(back, x)


def test_copies_reject_small_or_strided_targets():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="at least 6 rows and 4 columns"):
        to_time_major(x, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="rows of out must be contiguous"):
        to_time_major(x, np.zeros((6, 8), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="at least 6 rows and 4 columns"):
        to_batch_first(np.zeros((6, 3), np.float32), x)
    with pytest.raises(ValueError, match="rows of src must be contiguous"):
        to_batch_first(np.zeros((6, 8), np.float32)[:, ::2], x)


def test_address():
    a = np.zeros((3, 5))
    assert address(a) == a.ctypes.data
    assert address(a[1:]) == a.ctypes.data + 5 * 8


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 100), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_sum_squares_matches_numpy_in_float64(n, dtype, seed):
    """Eight running sums and a tail: every length, both dtypes, squares in float64."""
    a = (np.random.default_rng(seed).standard_normal(n) * 1e3).astype(dtype)
    expect = float(np.square(a, dtype=np.float64).sum())
    assert sum_squares(a) == pytest.approx(expect, rel=1e-14, abs=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares_propagates_non_finite(dtype):
    a = np.ones(21, dtype=dtype)
    a[17] = np.inf
    assert sum_squares(a) == np.inf
    a[3] = np.nan
    assert np.isnan(sum_squares(a))
    big = np.full(9, 1e200)  # squares overflow float64: inf, as NumPy's
    assert sum_squares(big) == np.inf


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 60), rows=st.integers(1, 9), width=st.integers(1, 7),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_scatter_add_rows_matches_numpy(n, rows, width, dtype, seed):
    """The embedding's gradient: np.add.at in float64, in row order, the same bits."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, rows, n)
    values = rng.standard_normal((n, width)).astype(dtype)
    out = np.zeros((rows, width))
    scatter_add_rows(index, values, out)
    expect = np.zeros((rows, width))
    np.add.at(expect, index, values.astype(np.float64))
    np.testing.assert_array_equal(out, expect)


def test_scatter_add_rows_checks_before_adding():
    out = np.zeros((3, 2))
    for index in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match="outside the 3 rows of out"):
            scatter_add_rows(np.array(index), np.ones((2, 2)), out)
    assert (out == 0).all()  # nothing added
    with pytest.raises(ValueError, match="do not match"):
        scatter_add_rows(np.array([0, 1]), np.ones((2, 3)), out)
    with pytest.raises(ValueError, match="do not match"):
        scatter_add_rows(np.array([0]), np.ones((2, 2)), out)


def _numpy_compact_rows(lengths, order, T):
    """The compact layout's source rows, step by step: time t holds the sorted rows
    still active at t."""
    return np.array([order[b] * T + t for t in range(max(lengths, default=0))
                     for b in range(len(lengths)) if lengths[b] > t], dtype=np.intp)


@settings(max_examples=40, deadline=None, database=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=9), extra=st.integers(0, 3),
       F=st.integers(1, 9), dtype=st.sampled_from(DTYPES), bad=st.sampled_from([None] + BAD),
       seed=st.integers(0, 2**31 - 1))
def test_compact_rows_and_gather_rows_match_numpy(lengths, extra, F, dtype, bad, seed):
    rng = np.random.default_rng(seed)
    B, T = len(lengths), max(lengths) + extra
    lens = np.array(lengths, np.intc)
    order = np.argsort(-lens, kind="stable")
    lens_sorted = np.ascontiguousarray(lens[order])
    rows = compact_rows(lens_sorted, order, T)
    np.testing.assert_array_equal(rows, _numpy_compact_rows(lens_sorted, order, T))
    assert rows.dtype == np.intp and len(rows) == lens.sum()
    X = rng.normal(size=(B, T, F)).astype(dtype)
    for b in range(B):
        X[b, lens[b]:] = np.nan  # past a length: never copied, never checked
    if bad is not None:  # at one valid step: reported
        b = int(rng.integers(B))
        X[b, int(rng.integers(lens[b])), int(rng.integers(F))] = bad
    wide = np.full((len(rows), F + 3), 7.0, dtype)
    ok = gather_rows(X.reshape(B * T, F), rows, wide[:, :F])
    assert ok == (bad is None)
    np.testing.assert_array_equal(wide[:, :F], X.reshape(B * T, F)[rows])
    assert (wide[:, F:] == 7.0).all()  # the other columns are left alone


def test_compact_rows_and_gather_rows_check_their_arguments():
    with pytest.raises(ValueError, match="lengths must decrease"):
        compact_rows(np.array([1, 2], np.intc), np.arange(2), 3)
    with pytest.raises(ValueError, match="lengths must decrease"):
        compact_rows(np.array([4, 2], np.intc), np.arange(2), 3)
    with pytest.raises(ValueError, match="2 lengths but 1"):
        compact_rows(np.array([2, 1], np.intc), np.arange(1), 3)
    src, out = np.zeros((4, 2)), np.full((2, 2), 5.0)
    with pytest.raises(ValueError, match="row 4 at position 1 is outside the 4 rows"):
        gather_rows(src, np.array([0, 4], np.intp), out)
    assert (out == 5.0).all()  # checked before anything is copied
    with pytest.raises(ValueError, match="at least 3 rows"):
        gather_rows(src, np.array([0, 1, 2], np.intp), out)
    with pytest.raises(ValueError, match="contiguous"):
        gather_rows(src, np.array([0], np.intp), np.zeros((2, 4))[:, ::2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_padding(dtype):
    out = np.ones((3, 4, 2), dtype)
    zero_padding(out, np.array([4, 0, 2], np.intc))
    expected = np.ones((3, 4, 2), dtype)
    expected[1] = 0
    expected[2, 2:] = 0
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="length 5 of row 0 is outside 0 .. 4"):
        zero_padding(out, np.array([5, 0, 0], np.intc))
    with pytest.raises(ValueError, match="2 lengths for 3 rows"):
        zero_padding(out, np.array([1, 1], np.intc))


@settings(max_examples=40, deadline=None, database=None)
@given(B=st.integers(1, 6), T=st.integers(1, 7), V=st.integers(1, 9), step=st.integers(1, 3),
       bad=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_compact_tokens_is_time_major_and_checked(B, T, V, step, bad, seed):
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, V, size=(B, T * step))
    tokens = wide[:, ::step]  # a strided view, as a language model's window is
    if bad:
        b, t = int(rng.integers(B)), int(rng.integers(T))
        tokens[b, t] = V if rng.random() < 0.5 else -1
    out = np.full(B * T, -7, np.intc)
    at = compact_tokens(tokens, V, out)
    if bad:
        first = np.argwhere((tokens < 0) | (tokens >= V))[0]
        assert at == first[0] * T + first[1]
        assert (out == -7).all()  # nothing written
    else:
        assert at == -1
        np.testing.assert_array_equal(out, tokens.T.reshape(-1))


def test_compact_tokens_checks_its_output():
    with pytest.raises(ValueError, match="out has 5 entries for 2 x 3 tokens"):
        compact_tokens(np.zeros((2, 3), np.int64), 4, np.empty(5, np.intc))
