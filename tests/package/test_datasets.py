"""Tests for pylstm.datasets."""

import doctest

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

import pylstm.datasets as datasets_module
from pylstm.datasets import (
    load_digits_sequences,
    make_adding_problem,
    make_variable_length_sequences,
)

# ---------------------------------------------------------------------------
# make_adding_problem
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_samples", "n_timesteps"), [(1, 2), (7, 3), (100, 50), (13, 11)])
def test_adding_shapes_and_dtypes(n_samples, n_timesteps):
    X, y = make_adding_problem(n_samples=n_samples, n_timesteps=n_timesteps, random_state=0)
    assert isinstance(X, np.ndarray)
    assert isinstance(y, np.ndarray)
    assert X.shape == (n_samples, n_timesteps, 2)
    assert y.shape == (n_samples,)
    assert X.dtype == np.float64
    assert y.dtype == np.float64


def test_adding_defaults():
    X, y = make_adding_problem(random_state=0)
    assert X.shape == (1000, 50, 2)
    assert y.shape == (1000,)


def test_adding_values_in_unit_interval():
    X, y = make_adding_problem(n_samples=500, n_timesteps=20, random_state=1)
    values = X[:, :, 0]
    assert np.all(values >= 0.0)
    assert np.all(values < 1.0)
    # Values are genuinely random, not constant.
    assert values.std() > 0.2
    assert np.all(y >= 0.0)
    assert np.all(y < 2.0)


@pytest.mark.parametrize("n_timesteps", [2, 3, 10, 11, 50])
def test_adding_markers_one_in_each_half(n_timesteps):
    X, _ = make_adding_problem(n_samples=400, n_timesteps=n_timesteps, random_state=2)
    markers = X[:, :, 1]
    # Markers are exactly 0 or 1.
    assert np.all((markers == 0.0) | (markers == 1.0))
    # Exactly two markers per sequence.
    np.testing.assert_array_equal(markers.sum(axis=1), 2.0)
    half = n_timesteps // 2
    np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1.0)
    np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1.0)


def test_adding_marker_positions_cover_both_halves():
    # Positions are random, not always at the same place.
    n_timesteps = 20
    X, _ = make_adding_problem(n_samples=2000, n_timesteps=n_timesteps, random_state=3)
    positions = np.nonzero(X[:, :, 1])[1].reshape(-1, 2)
    first, second = positions[:, 0], positions[:, 1]
    half = n_timesteps // 2
    np.testing.assert_array_equal(np.unique(first), np.arange(half))
    np.testing.assert_array_equal(np.unique(second), np.arange(half, n_timesteps))


def test_adding_target_is_marked_sum():
    X, y = make_adding_problem(n_samples=300, n_timesteps=30, random_state=4)
    expected = (X[:, :, 0] * X[:, :, 1]).sum(axis=1)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    # Explicit per-sample check via marker indices.
    for i in range(10):
        idx = np.flatnonzero(X[i, :, 1])
        assert idx.size == 2
        assert y[i] == pytest.approx(X[i, idx[0], 0] + X[i, idx[1], 0])


def test_adding_mean_predictor_mse_is_one_sixth():
    _, y = make_adding_problem(n_samples=20000, n_timesteps=20, random_state=5)
    mse = np.mean((y - y.mean()) ** 2)
    assert abs(mse - 1.0 / 6.0) < 0.01
    assert abs(y.mean() - 1.0) < 0.02


def test_adding_reproducible():
    X1, y1 = make_adding_problem(n_samples=50, n_timesteps=15, random_state=42)
    X2, y2 = make_adding_problem(n_samples=50, n_timesteps=15, random_state=42)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)


def test_adding_accepts_random_state_instance():
    X1, y1 = make_adding_problem(n_samples=20, n_timesteps=8, random_state=np.random.RandomState(7))
    X2, y2 = make_adding_problem(n_samples=20, n_timesteps=8, random_state=7)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)


def test_adding_different_seeds_differ():
    X1, y1 = make_adding_problem(n_samples=50, n_timesteps=15, random_state=0)
    X2, y2 = make_adding_problem(n_samples=50, n_timesteps=15, random_state=1)
    assert not np.array_equal(X1[:, :, 0], X2[:, :, 0])
    assert not np.array_equal(X1[:, :, 1], X2[:, :, 1])
    assert not np.array_equal(y1, y2)


def test_adding_accepts_numpy_integers():
    X, y = make_adding_problem(n_samples=np.int64(5), n_timesteps=np.int32(4), random_state=0)
    assert X.shape == (5, 4, 2)
    assert y.shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": -3}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": 10.0}, "n_samples"),
        ({"n_samples": "10"}, "n_samples"),
        ({"n_samples": True}, "n_samples"),
        ({"n_samples": None}, "n_samples"),
        ({"n_timesteps": 1}, "n_timesteps"),
        ({"n_timesteps": 0}, "n_timesteps"),
        ({"n_timesteps": 5.5}, "n_timesteps"),
        ({"n_timesteps": None}, "n_timesteps"),
    ],
)
def test_adding_bad_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_adding_problem(random_state=0, **kwargs)


# ---------------------------------------------------------------------------
# load_digits_sequences
# ---------------------------------------------------------------------------


def test_digits_return_X_y():
    X, y = load_digits_sequences(return_X_y=True)
    assert X.shape == (1797, 8, 8)
    assert y.shape == (1797,)
    assert X.dtype == np.float64
    assert np.issubdtype(y.dtype, np.integer)
    assert X.min() >= 0.0
    assert X.max() <= 1.0
    # The full range is actually used.
    assert X.min() == 0.0
    assert X.max() == 1.0


def test_digits_matches_sklearn_images_over_16():
    X, y = load_digits_sequences(return_X_y=True)
    digits = load_digits()
    np.testing.assert_allclose(X, digits.images / 16.0, rtol=0, atol=0)
    np.testing.assert_array_equal(y, digits.target)
    # Rows are time steps: time step t of sample i is row t of image i.
    np.testing.assert_array_equal(X[5, 3], digits.images[5][3] / 16.0)
    np.testing.assert_array_equal(X.reshape(len(X), -1), digits.data / 16.0)


def test_digits_bunch():
    bunch = load_digits_sequences()
    assert isinstance(bunch, Bunch)
    for key in ("data", "target", "images", "target_names", "DESCR"):
        assert key in bunch
    assert bunch.data.shape == (1797, 8, 8)
    assert bunch.data.dtype == np.float64
    assert bunch.target.shape == (1797,)
    assert bunch.images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(bunch.target_names, np.arange(10))
    assert isinstance(bunch.DESCR, str)
    assert bunch.DESCR.strip()
    X, y = load_digits_sequences(return_X_y=True)
    np.testing.assert_array_equal(bunch.data, X)
    np.testing.assert_array_equal(bunch.target, y)
    assert set(np.unique(bunch.target)) == set(range(10))


def test_digits_return_X_y_is_keyword_only():
    with pytest.raises(TypeError):
        load_digits_sequences(True)


# ---------------------------------------------------------------------------
# make_variable_length_sequences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_samples", "min_length", "max_length", "n_features"),
    [(200, 5, 30, 1), (50, 1, 3, 4), (10, 7, 7, 2), (1, 2, 9, 3)],
)
def test_varlen_structure(n_samples, min_length, max_length, n_features):
    X, y = make_variable_length_sequences(
        n_samples=n_samples,
        min_length=min_length,
        max_length=max_length,
        n_features=n_features,
        random_state=0,
    )
    assert isinstance(X, list)
    assert len(X) == n_samples
    assert isinstance(y, np.ndarray)
    assert y.shape == (n_samples,)
    assert np.issubdtype(y.dtype, np.integer)
    for seq in X:
        assert isinstance(seq, np.ndarray)
        assert seq.ndim == 2
        assert seq.dtype == np.float64
        assert seq.shape[1] == n_features
        assert min_length <= seq.shape[0] <= max_length


def test_varlen_defaults():
    X, y = make_variable_length_sequences(random_state=0)
    assert len(X) == 200
    assert y.shape == (200,)
    lengths = np.array([len(seq) for seq in X])
    assert lengths.min() >= 5
    assert lengths.max() <= 30
    assert all(seq.shape[1] == 1 for seq in X)


def test_varlen_lengths_actually_vary():
    X, _ = make_variable_length_sequences(n_samples=500, min_length=3, max_length=8, random_state=1)
    lengths = {len(seq) for seq in X}
    # Both ends of the inclusive range are reached.
    assert lengths == set(range(3, 9))


def test_varlen_labels_follow_rule():
    X, y = make_variable_length_sequences(n_samples=300, n_features=3, random_state=2)
    expected = np.array([int(seq[:, 0].sum() > 0) for seq in X])
    np.testing.assert_array_equal(y, expected)
    assert set(np.unique(y)) <= {0, 1}
    # Roughly balanced classes.
    assert 0.35 < y.mean() < 0.65


def test_varlen_values_standard_normal():
    X, _ = make_variable_length_sequences(n_samples=1000, n_features=2, random_state=3)
    values = np.concatenate(X, axis=0)
    assert abs(values.mean()) < 0.05
    assert abs(values.std() - 1.0) < 0.05


def test_varlen_reproducible():
    X1, y1 = make_variable_length_sequences(n_samples=30, n_features=2, random_state=11)
    X2, y2 = make_variable_length_sequences(n_samples=30, n_features=2, random_state=11)
    assert len(X1) == len(X2)
    for a, b in zip(X1, X2, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y1, y2)


def test_varlen_different_seeds_differ():
    X1, _ = make_variable_length_sequences(n_samples=30, random_state=0)
    X2, _ = make_variable_length_sequences(n_samples=30, random_state=1)
    assert [len(seq) for seq in X1] != [len(seq) for seq in X2]
    n = min(len(X1[0]), len(X2[0]))
    assert not np.array_equal(X1[0][:n], X2[0][:n])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 1.5}, "n_samples"),
        ({"min_length": 0}, "min_length"),
        ({"min_length": 2.0}, "min_length"),
        ({"min_length": 10, "max_length": 9}, "max_length"),
        ({"max_length": 7.5}, "max_length"),
        ({"n_features": 0}, "n_features"),
        ({"n_features": None}, "n_features"),
    ],
)
def test_varlen_bad_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_variable_length_sequences(random_state=0, **kwargs)


# ---------------------------------------------------------------------------
# Module-level
# ---------------------------------------------------------------------------


def test_all_lists_public_functions():
    assert set(datasets_module.__all__) == {
        "make_adding_problem",
        "load_digits_sequences",
        "make_variable_length_sequences",
        "load_python_docs",
        "make_agreement",
    }
    for name in datasets_module.__all__:
        assert callable(getattr(datasets_module, name))


def test_docstring_examples():
    result = doctest.testmod(datasets_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
