"""Write the model files of ``tests/data/model_files/``: what saved files look like.

Run with ``python tests/data/make_model_files.py`` (pandas needed). The
committed files were written by pylstm 1.x (format version 1) before the
persistence code was split out of ``pylstm/_io.py``; ``tests/io/test_old_files.py``
loads them with today's code. Regenerate them only for a new format version,
and then keep the old files too: they are the promise that old files load.

For every savable kind, in float32 and float64, ``<name>.pylstm`` holds the
model and ``<name>.npz`` (plain arrays, ``allow_pickle=False`` works) what
loading it must give:

* ``params``: every weight the model saves, raveled and concatenated in the
  order of ``parameters()`` (a layer's ``state_dict`` order), and for
  estimators and language models ``optimizer``: the optimizer's buffers
  likewise, buffer after buffer, with ``optimizer_t`` its step counter; they
  are compared exactly;
* ``X`` (or ``prefix`` / ``text`` for language models) and the outputs the
  saved model gave for it: ``out`` (a layer's ``forward``), ``predict``,
  ``predict_proba``, ``transform``, or for language models ``proba`` and
  ``score``; outputs are compared to a tolerance (another CPU's SIMD level
  may round differently);
* ``columns`` for a model fitted on a DataFrame.
"""

import pathlib

import numpy as np
import pandas as pd

import pylstm
from pylstm import LSTM, LSTMClassifier, LSTMLanguageModel, LSTMRegressor

OUT_DIR = pathlib.Path(__file__).resolve().parent / "model_files"

TEXTS = ["the cat sat on the mat, the dog sat on the log.", "A bird; 42 birds flew!"] * 2


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 5, 2))
    ragged = [X[i, : 2 + i % 4] for i in range(len(X))]
    return X, ragged, X[:, :, 0].sum(axis=1)


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _model_arrays(est):
    """The weights and the optimizer's state, flattened (one array each: a small file)."""
    state = est._optimizer.state_dict()
    buffers = [a for buf in type(est._optimizer)._buffer_names for a in state[buf]]
    return {"params": _flat(est.network_.parameters()), "optimizer": _flat(buffers),
            "optimizer_t": np.array(state["t"])}


def layers():
    x = np.random.default_rng(1).normal(size=(3, 4, 3))
    for dtype, kwargs in (("float32", dict(num_layers=2, bidirectional=True,
                                           unit_forget_bias=True)),
                          ("float64", dict(num_layers=1))):
        layer = LSTM(3, 2, dtype=dtype, random_state=0, **kwargs)
        out, _ = layer.forward(x, lengths=[4, 2, 1], training=False)
        yield f"layer_{dtype}", layer, {"X": x, "out": out,
                                          "params": _flat(layer.state_dict().values())}


def estimators():
    X, ragged, score = _data()
    words = np.where(score > 0, "up", "down")
    clf32 = LSTMClassifier(hidden_size=3, num_layers=2, bidirectional=True, dropout=0.1,
                           max_iter=2, dtype="float32", random_state=0).fit(X, words)
    df = pd.DataFrame(X[:, :, 0], columns=[f"t{i}" for i in range(X.shape[1])])
    clf64 = LSTMClassifier(hidden_size=3, max_iter=3, solver="sgd", early_stopping=True,
                           n_iter_no_change=1, class_weight={0: 2.0, 1: 1}, dtype="float64",
                           random_state=0).fit(df, (score > 0).astype(int))
    reg32 = LSTMRegressor(hidden_size=3, max_iter=2, solver="rmsprop", dtype="float32",
                          random_state=0).fit(ragged, np.stack([score, -score], 1))
    reg64 = LSTMRegressor(hidden_size=2, bidirectional=True, return_sequences=True,
                          max_iter=2, solver="sgd", dtype="float64", random_state=0).fit(
        ragged, [seq[:, 1] for seq in ragged])
    yield "classifier_float32", clf32, {
        "X": X, "predict": clf32.predict(X), "predict_proba": clf32.predict_proba(X),
        "transform": clf32.transform(X), **_model_arrays(clf32)}
    yield "classifier_float64", clf64, {
        "X": df.to_numpy(), "columns": np.array(df.columns, dtype=str),
        "predict": clf64.predict(df), "predict_proba": clf64.predict_proba(df),
        **_model_arrays(clf64)}
    yield "regressor_float32", reg32, {
        "X": X, "predict": reg32.predict(ragged), **_model_arrays(reg32)}
    # Ragged outputs, one sequence after another.
    yield "regressor_float64", reg64, {
        "X": X, "predict": np.concatenate(reg64.predict(ragged)), **_model_arrays(reg64)}


def language_models():
    for name, kwargs in (("lm_char_float32", dict(dtype="float32", num_layers=2,
                                                  dropout=0.1, validation_fraction=0.1)),
                         ("lm_word_float64", dict(level="word", lowercase=True,
                                                  solver="rmsprop"))):
        lm = LSTMLanguageModel(embedding_dim=3, hidden_size=3, seq_len=6, batch_size=2,
                               max_iter=2, random_state=0, **kwargs).fit(TEXTS)
        yield name, lm, {"prefix": np.array("the c"), "text": np.array(TEXTS[1]),
                         "proba": lm.predict_proba("the c"),
                         "score": np.array(lm.score(TEXTS[1])), **_model_arrays(lm)}


def main():
    OUT_DIR.mkdir(exist_ok=True)
    for source in (layers, estimators, language_models):
        for name, obj, outputs in source():
            pylstm.save(obj, OUT_DIR / f"{name}.pylstm")
            np.savez_compressed(OUT_DIR / f"{name}.npz", **outputs)
            print(name, (OUT_DIR / f"{name}.pylstm").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
