"""``unit_forget_bias`` of the estimators: checked, the initial weights it sets (and
only those), saved and loaded."""

import json
import pickle

import numpy as np
import pytest

from pylstm import LSTMClassifier, LSTMRegressor, load, save

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=30, T=6, F=2):
    X = np.random.default_rng(0).normal(size=(n, T, F))
    return X, X[:, :, 0].sum(axis=1), (X[:, :, 0].sum(axis=1) > 0).astype(int)


def _fit_data(Est):
    X, y_reg, y_clf = _data()
    return X, (y_clf if Est is LSTMClassifier else y_reg)


def _initialized(Est, **kw):
    """An estimator whose network is initialized as its first fit makes it."""
    X, y = _fit_data(Est)
    est = Est(random_state=0, **kw)
    est._prepare_fit(X, y, False, np.array([0, 1]) if Est is LSTMClassifier else None, None)
    return est


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_bad_values_name_the_parameter(Est, value):
    with pytest.raises(ValueError, match="unit_forget_bias must be True or False"):
        Est(unit_forget_bias=value, max_iter=1).fit(*_fit_data(Est))


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sets_the_forget_blocks_and_nothing_else(Est, dtype):
    kw = dict(hidden_size=5, num_layers=2, bidirectional=True, dtype=dtype)
    plain = _initialized(Est, **kw)
    unit = _initialized(Est, unit_forget_bias=np.True_, **kw)
    H = 5
    n_checked = 0
    for a, b in zip(plain.network_.layers, unit.network_.layers, strict=True):
        assert b.unit_forget_bias and not a.unit_forget_bias
        for name, value in a._params.items():
            got = b._params[name]
            if name.startswith(("bias_ih", "bias_hh")):
                forget = 1.0 if name.startswith("bias_ih") else 0.0
                np.testing.assert_array_equal(got[H:2 * H], forget)
                assert not np.all(value[H:2 * H] == forget)  # the draw differs from it
                got, value = np.delete(got, np.s_[H:2 * H]), np.delete(value, np.s_[H:2 * H])
                n_checked += 1
            np.testing.assert_array_equal(got, value)  # the same draw elsewhere
    assert n_checked == 8  # 2 layers x 2 directions x (bias_ih, bias_hh)
    np.testing.assert_array_equal(unit.network_.coef, plain.network_.coef)


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_changes_training_only_through_the_start(Est):
    X, y = _fit_data(Est)
    a = Est(hidden_size=6, max_iter=3, random_state=0, unit_forget_bias=True).fit(X, y)
    b = Est(hidden_size=6, max_iter=3, random_state=0, unit_forget_bias=True).fit(X, y)
    c = Est(hidden_size=6, max_iter=3, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    assert a.loss_curve_ != c.loss_curve_
    # warm_start continues the fitted weights: the parameter no longer applies.
    a.set_params(warm_start=True, unit_forget_bias=False, max_iter=1)
    before = [p.copy() for p in a.network_.parameters()]
    a.fit(X, y)
    H = 6
    changed = a.network_.layers[0]._params["bias_ih_l0"][H:2 * H] - before[2][H:2 * H]
    assert np.max(np.abs(changed)) < 0.1  # updated from about 1, not redrawn


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_saved_when_set_and_loaded(tmp_path, Est):
    X, y = _fit_data(Est)
    est = Est(hidden_size=4, max_iter=1, random_state=0, unit_forget_bias=True).fit(X, y)
    save(est, tmp_path / "m.pylstm")
    loaded = load(tmp_path / "m.pylstm")
    assert loaded.unit_forget_bias is True
    assert all(layer.unit_forget_bias for layer in loaded.network_.layers)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    plain = Est(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    save(plain, tmp_path / "p.pylstm")
    data = open(tmp_path / "p.pylstm", "rb").read()
    n = int.from_bytes(data[:8], "little")
    params = json.loads(json.loads(data[8:8 + n])["__metadata__"]["model"])["params"]
    assert "unit_forget_bias" not in params  # a file as before the parameter existed
    assert load(tmp_path / "p.pylstm").unit_forget_bias is False


def test_a_pickle_from_before_the_parameter_unpickles_without_it():
    est = LSTMRegressor(hidden_size=3)
    state = est.__getstate__()
    del state["unit_forget_bias"]
    old = pickle.loads(pickle.dumps(est))
    old.__dict__.pop("unit_forget_bias")
    old.__setstate__(state)
    assert old.unit_forget_bias is False
    assert old.get_params()["unit_forget_bias"] is False
