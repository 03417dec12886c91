"""Files written by earlier pylstm versions still load, and give what they gave.

The files of ``tests/data/model_files/`` were written by
``tests/data/make_model_files.py`` (its docstring says what each ``.npz``
holds) with the pylstm of format version 1, before persistence was split into
the container and the classes' own saved state.
"""

import pathlib

import numpy as np
import pytest

import pylstm
from pylstm import LSTM, LSTMClassifier, LSTMLanguageModel, LSTMRegressor

FILES = pathlib.Path(__file__).resolve().parents[1] / "data" / "model_files"
NAMES = sorted(p.stem for p in FILES.glob("*.pylstm"))
TYPES = {"layer": LSTM, "classifier": LSTMClassifier, "regressor": LSTMRegressor,
         "lm": LSTMLanguageModel}
TEXTS = ["the cat sat on the mat, the dog sat on the log.", "A bird; 42 birds flew!"] * 2


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def assert_close(actual, expected, dtype):
    # Another CPU (SIMD level, BLAS) may round differently: outputs agree to rounding.
    tol = 1e-5 if dtype == "float32" else 1e-10
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def ragged(X):
    """The sequences the regressors were fitted and evaluated on (the script's rule)."""
    return [X[i, : 2 + i % 4] for i in range(len(X))]


def test_every_kind_and_dtype_has_a_file():
    assert len(NAMES) == 8
    for prefix in TYPES:
        for dtype in ("float32", "float64"):
            assert any(n.startswith(prefix) and n.endswith(dtype) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_old_file_loads_with_its_weights_and_outputs(name):
    model = pylstm.load(FILES / f"{name}.pylstm")
    expected = np.load(FILES / f"{name}.npz", allow_pickle=False)
    dtype = name.rsplit("_", 1)[1]
    assert type(model) is TYPES[name.split("_", 1)[0]]
    if isinstance(model, LSTM):
        assert model.dtype == np.dtype(dtype)
        assert np.array_equal(flat(model.state_dict().values()), expected["params"])
        out, _ = model.forward(expected["X"], lengths=[4, 2, 1], training=False)
        assert_close(out, expected["out"], dtype)
        return
    assert np.array_equal(flat(model.network_.parameters()), expected["params"])
    optimizer = model._optimizer.state_dict()
    assert optimizer["t"] == expected["optimizer_t"]
    buffers = [a for b in type(model._optimizer)._buffer_names for a in optimizer[b]]
    assert np.array_equal(flat(buffers), expected["optimizer"])
    if isinstance(model, LSTMLanguageModel):
        assert_close(model.predict_proba(str(expected["prefix"])), expected["proba"], dtype)
        assert_close(model.score(str(expected["text"])), expected["score"], "float64")
        model.partial_fit(TEXTS)
        assert model._optimizer.t > expected["optimizer_t"]
        return
    X = expected["X"]
    if "columns" in expected:
        pd = pytest.importorskip("pandas")
        X = pd.DataFrame(X, columns=expected["columns"])
        assert list(model.feature_names_in_) == list(expected["columns"])
    elif isinstance(model, LSTMRegressor):
        X = ragged(X)
    predict = model.predict(X)
    if isinstance(model, LSTMClassifier):
        assert np.array_equal(predict, expected["predict"])
        assert_close(model.predict_proba(X), expected["predict_proba"], dtype)
    else:
        predict = np.concatenate(predict) if isinstance(predict, list) else predict
        assert_close(predict, expected["predict"], dtype)
    if "transform" in expected:
        assert_close(model.transform(X), expected["transform"], dtype)


@pytest.mark.parametrize("name", NAMES)
def test_old_file_saves_again_to_the_same_bytes(tmp_path, name):
    """Today's writer writes format version 1 exactly as the old one did."""
    original = (FILES / f"{name}.pylstm").read_bytes()
    pylstm.save(pylstm.load(FILES / f"{name}.pylstm"), tmp_path / "again.pylstm")
    assert (tmp_path / "again.pylstm").read_bytes() == original
