"""Quality on real data and on the adding problem, each within a minute.

These train real models; they are marked slow and still run in CI.
"""

import time

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from pylstm import LSTMClassifier, LSTMRegressor
from pylstm.datasets import load_digits_sequences, make_adding_problem

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_digits_as_sequences_accuracy():
    X, y = load_digits_sequences(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    start = time.perf_counter()
    # Seeds 0-4 gave 0.982-0.989 with these settings.
    clf = LSTMClassifier(hidden_size=64, bidirectional=True, max_iter=30,
                         learning_rate_init=0.003, dtype="float32", random_state=0)
    clf.fit(X_train, y_train)
    elapsed = time.perf_counter() - start
    accuracy = clf.score(X_test, y_test)
    assert accuracy >= 0.97, accuracy
    assert elapsed < 60, elapsed


def test_adding_problem_50_steps_is_solved():
    X, y = make_adding_problem(2000, 50, random_state=0)
    X_test, y_test = make_adding_problem(1000, 50, random_state=1)
    baseline = np.mean((y_test - y.mean()) ** 2)
    assert 0.14 < baseline < 0.19  # predicting the mean: about 1/6
    start = time.perf_counter()
    reg = LSTMRegressor(hidden_size=32, max_iter=25, learning_rate_init=0.01,
                        dtype="float32", random_state=0)
    reg.fit(X, y)
    elapsed = time.perf_counter() - start
    mse = np.mean((reg.predict(X_test) - y_test) ** 2)
    assert mse < 0.01, mse
    assert elapsed < 60, elapsed


def test_variable_length_classification_learns():
    from pylstm.datasets import make_variable_length_sequences

    X, y = make_variable_length_sequences(600, 5, 40, random_state=0)
    X_test, y_test = make_variable_length_sequences(300, 5, 40, random_state=1)
    clf = LSTMClassifier(hidden_size=16, max_iter=25, learning_rate_init=0.01,
                         dtype="float32", random_state=0).fit(X, y)
    assert clf.score(X_test, y_test) > 0.9
