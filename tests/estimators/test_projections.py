"""``proj_size`` of the estimators and the language model: layers with
projections, a head on the projected state, streaming, and the refusals."""

import numpy as np
import pytest

from pylstm import LSTMClassifier, LSTMLanguageModel, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(seed=0, n=60, T=7, F=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, :, 0].sum(axis=1), (X[:, :, 0].sum(axis=1) > 0).astype(int)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_networks_are_built_with_projections(bidirectional, return_sequences):
    X, y_reg, y_clf = _data()
    if return_sequences:
        y_clf = (X[:, :, 0] > 0).astype(int)
    clf = LSTMClassifier(hidden_size=8, proj_size=3, num_layers=2, max_iter=2,
                         bidirectional=bidirectional, return_sequences=return_sequences,
                         dtype="float64", random_state=0).fit(X, y_clf)
    D = 2 if bidirectional else 1
    assert [layer.proj_size for layer in clf.network_.layers] == [3, 3]
    assert clf.network_.layers[1].input_size == 3 * D
    assert clf.network_.coef.shape == (3 * D, 2)
    proba = clf.predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=-1), 1.0)


def test_learns_and_streams():
    X, y, _ = _data(1, n=200)
    reg = LSTMRegressor(hidden_size=16, proj_size=4, max_iter=30, learning_rate_init=0.01,
                        dtype="float64", random_state=0).fit(X[:150], y[:150])
    assert reg.score(X[150:], y[150:]) > 0.5
    stream = reg.stream()
    steps = stream.predict(X[150])
    np.testing.assert_allclose(steps[-1], reg.predict(X[150:151])[0], rtol=1e-12)


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor, LSTMLanguageModel])
@pytest.mark.parametrize("value", [8, 9, -1, 1.5, True])
def test_bad_values_name_the_parameter(Est, value):
    X, y_reg, y_clf = _data()
    est = Est(hidden_size=8, proj_size=value, max_iter=1)
    with pytest.raises(ValueError, match=r"proj_size must be an integer >= 0 and smaller than "
                                         r"hidden_size \(8\)"):
        if Est is LSTMLanguageModel:
            est.fit("some text " * 20)
        else:
            est.fit(X, y_clf if Est is LSTMClassifier else y_reg)


def test_continued_fit_refuses_another_proj_size():
    X, y, _ = _data()
    reg = LSTMRegressor(hidden_size=8, proj_size=2, max_iter=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="whose proj_size is 2; the parameters now ask for 3"):
        reg.set_params(proj_size=3).partial_fit(X, y)


def test_language_model_with_projections():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    lm = LSTMLanguageModel(hidden_size=24, proj_size=6, num_layers=2, seq_len=16,
                           max_iter=3, random_state=0).fit(text)
    assert lm.network_.coef.shape[0] == 6
    assert [layer.proj_size for layer in lm.network_.layers] == [6, 6]
    assert lm.loss_curve_[-1] < lm.loss_curve_[0]
    assert len(lm.generate("the ", n_tokens=12, random_state=0)) == 12
    assert np.isfinite(lm.perplexity(text[:300]))


def test_onnx_export_refuses_projections():
    pytest.importorskip("onnx")
    from pylstm import export_onnx

    X, _, y = _data()
    clf = LSTMClassifier(hidden_size=8, proj_size=2, max_iter=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="proj_size=2: ONNX's LSTM operator has no projection"):
        export_onnx(clf)


def test_models_pickled_before_the_new_parameters_load():
    """A pickle from before proj_size and recurrent_dropout gets their former meaning."""
    X, y, _ = _data()
    reg = LSTMRegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    lm = LSTMLanguageModel(hidden_size=8, seq_len=8, max_iter=1, random_state=0)
    lm.fit("abcabcabc" * 10)
    for model, data in ((reg, (X, y)), (lm, ("abcabcabc" * 10,))):
        state = model.__getstate__()
        del state["proj_size"], state["recurrent_dropout"]
        old = type(model).__new__(type(model))
        old.__setstate__(state)
        assert old.get_params()["proj_size"] == 0
        assert old.get_params()["recurrent_dropout"] == 0.0
        old.partial_fit(*data)
