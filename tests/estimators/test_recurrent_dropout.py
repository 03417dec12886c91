"""``recurrent_dropout`` of the estimators and the language model: checked,
reproducible, active in training only, carried to the layers."""

import numpy as np
import pytest

from pylstm import LSTMClassifier, LSTMLanguageModel, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(seed=0, n=40, T=8, F=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, :, 0].sum(axis=1), (X[:, :, 0].sum(axis=1) > 0).astype(int)


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor, LSTMLanguageModel])
@pytest.mark.parametrize("value", [1.0, -0.2, float("nan"), "0.1", None])
def test_bad_values_name_the_parameter(Est, value):
    est = Est(recurrent_dropout=value, max_iter=1)
    X, y_reg, y_clf = _data()
    with pytest.raises(ValueError, match="recurrent_dropout"):
        if Est is LSTMLanguageModel:
            est.fit("some text " * 20)
        else:
            est.fit(X, y_clf if Est is LSTMClassifier else y_reg)


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_fit_is_reproducible_and_differs_from_no_dropout(Est):
    X, y_reg, y_clf = _data()
    y = y_clf if Est is LSTMClassifier else y_reg
    kw = dict(hidden_size=8, num_layers=2, bidirectional=True, max_iter=3, dtype="float64",
              random_state=0)
    a = Est(recurrent_dropout=0.3, **kw).fit(X, y)
    b = Est(recurrent_dropout=0.3, **kw).fit(X, y)
    c = Est(**kw).fit(X, y)
    assert all(layer.recurrent_dropout == 0.3 for layer in a.network_.layers)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    assert a.loss_curve_ != c.loss_curve_
    # Prediction drops nothing: twice the same answer.
    out = a.predict_proba(X) if Est is LSTMClassifier else a.predict(X)
    again = a.predict_proba(X) if Est is LSTMClassifier else a.predict(X)
    np.testing.assert_array_equal(out, again)


def test_zero_recurrent_dropout_changes_nothing():
    X, y, _ = _data(1)
    kw = dict(hidden_size=8, max_iter=3, dtype="float64", random_state=0)
    a = LSTMRegressor(**kw).fit(X, y)
    b = LSTMRegressor(recurrent_dropout=0.0, **kw).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_language_model_trains_with_recurrent_dropout():
    text = "the quick brown fox jumps over the lazy dog. " * 30
    kw = dict(hidden_size=16, seq_len=16, batch_size=4, max_iter=2, random_state=0,
              dtype="float64")
    a = LSTMLanguageModel(recurrent_dropout=0.25, **kw).fit(text)
    b = LSTMLanguageModel(recurrent_dropout=0.25, **kw).fit(text)
    c = LSTMLanguageModel(**kw).fit(text)
    assert a.network_.layers[0].recurrent_dropout == 0.25
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    assert a.loss_curve_ != c.loss_curve_
    assert np.isfinite(a.loss_curve_).all()
    assert a.perplexity(text[:200]) == a.perplexity(text[:200])


def test_continued_fit_takes_the_value_set_now():
    X, y, _ = _data(2)
    est = LSTMRegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    assert est.network_.layers[0].recurrent_dropout == 0.0
    est.set_params(recurrent_dropout=0.4).partial_fit(X, y)
    assert est.network_.layers[0].recurrent_dropout == 0.4
    lm = LSTMLanguageModel(hidden_size=8, seq_len=8, max_iter=1, random_state=0)
    lm.fit("abcabcabc" * 10)
    lm.set_params(recurrent_dropout=0.3).partial_fit("abcabcabc" * 10)
    assert lm.network_.layers[0].recurrent_dropout == 0.3
