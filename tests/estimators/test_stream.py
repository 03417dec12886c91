"""Streaming inference: ``estimator.stream(n_streams)`` and :class:`pylstm.LSTMStream`.

* Every prefix's prediction equals the estimator's ``predict`` /
  ``predict_proba`` on that prefix, however the sequences are cut into chunks
  (hypothesis), for both estimators, float32 and float64, 1 and 2 layers,
  1 and 3 streams, 2-D and 3-D chunks; per-step models (``return_sequences``)
  and models fitted on 2-D X too.
* A chunk is one kernel call per layer whatever its length; state is kept
  between calls; ``reset`` starts over; bad input is refused before any
  kernel runs and leaves the state as it was.
* Bidirectional models, unfitted estimators and bad ``n_streams`` are
  refused with errors that say why; a refit model makes old streams raise.
* Streams of one estimator in two threads give what each gives alone; calls
  on one stream from two threads are serialized; pickled estimators and
  streams stream on.
"""

import copy
import functools
import pickle
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

import pylstm
import pylstm._layer as layer_module
from pylstm import LSTMClassifier, LSTMRegressor, LSTMStream

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

F = 3
#: Tolerances of a prefix's prediction against predict's (float rounding).
TOL = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


def _data(n=60, T=10, seed=0):
    X = np.random.default_rng(seed).normal(size=(n, T, F))
    s = X[:, :, 0].sum(axis=1)
    return X, s


@functools.cache
def _fitted(kind, dtype="float64", num_layers=1, **params):
    """A small fitted estimator, fitted once per session (read-only in the tests)."""
    X, s = _data()
    if params.get("return_sequences"):  # a target per step: the running sum
        s = X[:, :, 0].cumsum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "classifier":
            y = np.digitize(s, [-1.0, 1.0])  # three classes
            return LSTMClassifier(hidden_size=8, num_layers=num_layers, max_iter=3,
                                  dtype=dtype, random_state=0, **params).fit(X, y)
        return LSTMRegressor(hidden_size=8, num_layers=num_layers, max_iter=3, dtype=dtype,
                             random_state=0, **params).fit(X, s)


def _method(est):
    return "predict_proba" if isinstance(est, LSTMClassifier) else "predict"


def _prefix_predictions(est, X, method):
    """``method`` of ``est`` on every prefix of X (S, T, F): (S, T, ...)."""
    return np.stack([getattr(est, method)(X[:, :t]) for t in range(1, X.shape[1] + 1)],
                    axis=1)


def _feed(stream, method, X, cuts, flat=False):
    """``method`` of ``stream`` on the chunks of X (S, T, F) between ``cuts``, concatenated."""
    bounds = [0, *cuts, X.shape[1]]
    pieces = [getattr(stream, method)(X[0, a:b] if flat else X[:, a:b])
              for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return np.concatenate(pieces, axis=0 if flat else 1)


# ---------------------------------------------------------------------------- prefixes
@pytest.mark.parametrize("n_streams", [1, 3])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_every_prefix_equals_predict_whatever_the_chunks(kind, dtype, num_layers, n_streams,
                                                         data):
    est = _fitted(kind, dtype, num_layers)
    # Past 32 steps the layer's input projection runs in several chunks.
    T = data.draw(st.integers(1, 45), label="T")
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=8), label="cuts")
                  if T > 1 else [])
    flat = n_streams == 1 and data.draw(st.booleans(), label="2-D chunks")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    X = np.random.default_rng(seed).normal(size=(n_streams, T, F)) * 2
    method = _method(est)
    expected = _prefix_predictions(est, X, method)
    stream = est.stream(n_streams=n_streams)
    got = _feed(stream, method, X, cuts, flat)
    if flat:
        got = got[None]
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, **TOL[dtype])
    assert stream.n_steps_seen == T
    if kind == "classifier":
        labels = _feed(est.stream(n_streams), "predict", X, cuts, flat)
        labels = labels[None] if flat else labels
        np.testing.assert_array_equal(labels, est.classes_[got.argmax(axis=-1)])
        # Against predict's labels wherever the top two classes are apart
        # by more than float rounding.
        top2 = np.sort(expected, axis=-1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 1e-4
        ref = _prefix_predictions(est, X, "predict")
        np.testing.assert_array_equal(labels[clear], ref[clear])


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_per_step_model_streams_the_prediction_of_each_step(kind):
    est = _fitted(kind, "float64", 2, return_sequences=True)
    X = np.random.default_rng(1).normal(size=(3, 14, F))
    method = _method(est)
    expected = getattr(est, method)(X)  # (3, 14[, n_classes]): one per step
    last_of_prefix = np.stack([getattr(est, method)(X[:, :t])[:, -1] for t in range(1, 15)],
                              axis=1)
    np.testing.assert_allclose(last_of_prefix, expected, **TOL["float64"])
    got = _feed(est.stream(3), method, X, [1, 5, 6, 11])
    np.testing.assert_allclose(got, expected, **TOL["float64"])


@pytest.mark.parametrize("n_features", [None, 2])
def test_model_fitted_on_2d_x_streams_steps_of_its_features(n_features):
    # 2-D X holds n_timesteps * n_features values a row; a step has n_features.
    F2 = n_features or 1
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 8 * F2))
    est = LSTMRegressor(hidden_size=6, max_iter=2, dtype="float64", n_features=n_features,
                        random_state=0).fit(X, X.sum(axis=1))
    seq = X[:2].reshape(2, 8, F2)
    expected = _prefix_predictions(est, seq, "predict")
    np.testing.assert_allclose(est.predict(X[:2]), expected[:, -1], **TOL["float64"])
    got = _feed(est.stream(2), "predict", seq, [3, 4])
    np.testing.assert_allclose(got, expected, **TOL["float64"])
    with pytest.raises(ValueError, match=f"expecting {F2} features per step"):
        est.stream(2).predict(X[:2, None, :])


# ---------------------------------------------------------------------------- shapes
def test_output_shapes_and_dtypes():
    clf = _fitted("classifier")
    x = np.random.default_rng(3).normal(size=(7, F))
    stream = clf.stream()
    assert stream.predict(x).shape == (7,)
    assert stream.predict(x).dtype == clf.classes_.dtype
    assert stream.predict_proba(x).shape == (7, 3)
    assert stream.predict(x[None]).shape == (1, 7)
    assert stream.predict_proba(x[None]).shape == (1, 7, 3)
    assert clf.stream(4).predict_proba(np.stack([x] * 4)).shape == (4, 7, 3)
    # Probabilities: float64 and summing to 1, as predict_proba's.
    proba = stream.predict_proba(x)
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)

    reg = _fitted("regressor", "float32")
    out = reg.stream().predict(x)
    assert out.shape == (7,) and out.dtype == np.float64
    assert reg.stream(2).predict(np.stack([x, x])).shape == (2, 7)


def test_multi_output_regressor_and_string_labels():
    X, s = _data()
    reg = LSTMRegressor(hidden_size=4, max_iter=2, random_state=0)
    reg.fit(X, np.stack([s, -s], axis=1))
    x = X[0, :5]
    assert reg.stream().predict(x).shape == (5, 2)
    assert reg.stream(2).predict(X[:2, :5]).shape == (2, 5, 2)
    np.testing.assert_allclose(reg.stream().predict(x)[-1], reg.predict(X[:1, :5])[0],
                               **TOL["float32"])

    clf = LSTMClassifier(hidden_size=4, max_iter=2, random_state=0)
    clf.fit(X, np.where(s > 0, "up", "down"))
    labels = clf.stream().predict(x)
    assert labels.dtype == clf.classes_.dtype and set(labels) <= {"up", "down"}


def test_regressor_stream_has_no_predict_proba():
    stream = _fitted("regressor").stream()
    assert not hasattr(stream, "predict_proba")
    assert hasattr(_fitted("classifier").stream(), "predict_proba")


def test_empty_chunk_returns_nothing_and_keeps_the_state():
    clf = _fitted("classifier")
    X = np.random.default_rng(4).normal(size=(1, 6, F))
    stream = clf.stream()
    stream.predict_proba(X[0, :3])
    assert stream.predict_proba(X[0, :0]).shape == (0, 3)
    assert stream.predict(X[:, :0]).shape == (1, 0)
    assert stream.n_steps_seen == 3
    np.testing.assert_allclose(stream.predict_proba(X[0, 3:])[-1], clf.predict_proba(X)[0],
                               **TOL["float64"])


# ---------------------------------------------------------------------------- state
def test_state_is_kept_between_calls_and_reset_starts_over():
    clf = _fitted("classifier", "float64", 2)
    X = np.random.default_rng(5).normal(size=(2, 12, F)) * 2
    stream = clf.stream(2)
    stream.predict_proba(X[:, :7])
    tail = stream.predict_proba(X[:, 7:])
    np.testing.assert_allclose(tail[:, -1], clf.predict_proba(X), **TOL["float64"])
    # Without the first 7 steps the result differs: the state carried them.
    fresh = clf.stream(2).predict_proba(X[:, 7:])
    assert not np.allclose(fresh, tail, atol=1e-3)
    assert stream.n_steps_seen == 12

    assert stream.reset() is stream
    assert stream.n_steps_seen == 0
    np.testing.assert_array_equal(stream.predict_proba(X[:, 7:]), fresh)


def test_a_chunk_is_one_kernel_call_per_layer(monkeypatch):
    calls = []
    original = layer_module._lstm.forward_infer

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(layer_module._lstm, "forward_infer", counting)
    clf = _fitted("classifier", "float64", 2)
    X = np.random.default_rng(6).normal(size=(3, 50, F))
    for n_streams, chunk in ((3, X[:, :50]), (3, X[:, :1]), (1, X[0, :50]), (1, X[0, :1])):
        calls.clear()
        clf.stream(n_streams).predict(chunk)
        assert len(calls) == 2, (n_streams, chunk.shape, calls)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5), r"must have shape \(t, 3\) or \(1, t, 3\)"),
    (np.zeros((1, 1, 5, 3)), r"must have shape \(t, 3\) or \(1, t, 3\)"),
    (np.zeros((2, 5, 3)), r"holds 2 sequences but the stream reads n_streams=1"),
    (np.zeros((5, 2)), r"X has 2 features per step, but LSTMClassifier is expecting 3"),
    (np.full((5, 3), np.nan), r"X contains NaN"),
    (np.full((5, 3), np.inf), r"X contains infinity"),
    (np.full((5, 3), "1.0"), r"X must hold real numbers, got strings"),
    (np.zeros((5, 3), dtype=complex), r"X must hold real numbers"),
])
def test_bad_chunks_are_refused_before_any_kernel_and_keep_the_state(monkeypatch, bad,
                                                                     match):
    clf = _fitted("classifier", "float64")
    X = np.random.default_rng(7).normal(size=(1, 9, F))
    stream = clf.stream()
    stream.predict_proba(X[0, :4])
    calls = []
    original = layer_module._lstm.forward_infer
    monkeypatch.setattr(layer_module._lstm, "forward_infer",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(ValueError, match=match):
        stream.predict(bad)
    assert calls == [] and stream.n_steps_seen == 4
    np.testing.assert_allclose(stream.predict_proba(X[0, 4:])[-1], clf.predict_proba(X)[0],
                               **TOL["float64"])


def test_several_streams_need_3d_chunks():
    stream = _fitted("regressor").stream(3)
    with pytest.raises(ValueError, match=r"X must have shape \(3, t, 3\)"):
        stream.predict(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"holds 2 sequences but the stream reads n_streams=3"):
        stream.predict(np.zeros((2, 5, 3)))


# ---------------------------------------------------------------------------- refusals
def test_bidirectional_model_is_refused_with_the_reason():
    est = _fitted("classifier", "float64", 1, bidirectional=True)
    with pytest.raises(ValueError, match=r"needs a unidirectional model.*reverse direction"):
        est.stream()
    with pytest.raises(ValueError, match="bidirectional=False"):
        LSTMStream(est)


@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_unfitted_estimator_raises_not_fitted(Est):
    with pytest.raises(NotFittedError):
        Est().stream()
    with pytest.raises(NotFittedError):
        LSTMStream(Est())


def test_other_estimators_are_refused():
    from sklearn.linear_model import LinearRegression

    linear = LinearRegression().fit(np.zeros((4, 3)), np.arange(4))
    with pytest.raises(TypeError, match="must be an LSTMClassifier or LSTMRegressor, got "
                                        "LinearRegression"):
        LSTMStream(linear)


def test_object_and_list_chunks_of_numbers_are_read():
    clf = _fitted("classifier", "float64")
    x = np.random.default_rng(12).normal(size=(4, F))
    expected = clf.stream().predict_proba(x)
    np.testing.assert_array_equal(clf.stream().predict_proba(x.astype(object)), expected)
    np.testing.assert_array_equal(clf.stream().predict_proba(x.tolist()), expected)
    with pytest.raises(ValueError, match="X must hold real numbers"):
        clf.stream().predict(np.array([[1.0, object(), 2.0]], dtype=object))
    with pytest.raises(ValueError, match="X contains NaN"):  # None reads as NaN
        clf.stream().predict(np.array([[1.0, None, 2.0]], dtype=object))


@pytest.mark.parametrize("n_streams, error", [(0, ValueError), (-2, ValueError),
                                              (1.5, TypeError), (True, TypeError),
                                              ("2", TypeError), (None, TypeError)])
def test_bad_n_streams(n_streams, error):
    with pytest.raises(error, match="n_streams"):
        _fitted("regressor").stream(n_streams=n_streams)


def test_numpy_integer_n_streams():
    assert _fitted("regressor").stream(np.int64(2)).n_streams == 2


def test_refit_from_scratch_makes_the_stream_raise_and_partial_fit_applies():
    X, s = _data()
    reg = LSTMRegressor(hidden_size=4, max_iter=2, dtype="float64", random_state=0).fit(X, s)
    stream = reg.stream()
    stream.predict(X[0, :3])
    reg.partial_fit(X, s)  # in place: the stream goes on with the new weights
    stream.predict(X[0, 3:])
    assert stream.n_steps_seen == X.shape[1]
    np.testing.assert_allclose(stream.reset().predict(X[0])[-1], reg.predict(X[:1])[0],
                               **TOL["float64"])
    reg.fit(X, s)
    with pytest.raises(RuntimeError, match="fitted again from scratch.*make a new stream"):
        stream.predict(X[0])
    reg.stream().predict(X[0])


# ---------------------------------------------------------------------------- threads
def _in_threads(*tasks, timeout=60):
    """Run the tasks in threads started together; their results (a hang fails)."""
    barrier = threading.Barrier(len(tasks))
    results, errors = [None] * len(tasks), []

    def run(i):
        try:
            barrier.wait(timeout)
            results[i] = tasks[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    if errors:
        raise errors[0]
    return results


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_streams_in_two_threads_give_what_each_gives_alone(dtype):
    X, s = _data(n=80, T=10)
    clf = LSTMClassifier(hidden_size=32, num_layers=2, max_iter=1, dtype=dtype,
                         random_state=0).fit(X, s > 0)
    rng = np.random.default_rng(8)
    A = rng.normal(size=(1, 300, F))  # one sensor, one step at a time
    B = rng.normal(size=(3, 300, F))  # three sensors, chunks of 1 to 7 steps
    cuts_a = list(range(1, 300))
    cuts_b = np.cumsum(rng.integers(1, 8, size=100))
    cuts_b = list(cuts_b[cuts_b < 300])

    def run_a():
        return _feed(clf.stream(), "predict_proba", A, cuts_a, flat=True)

    def run_b():
        return _feed(clf.stream(3), "predict_proba", B, cuts_b)

    alone = [run_a(), run_b()]
    for _ in range(3):
        together = _in_threads(run_a, run_b)
        np.testing.assert_array_equal(together[0], alone[0])
        np.testing.assert_array_equal(together[1], alone[1])


@pytest.mark.timeout(120)
def test_calls_on_one_stream_from_two_threads_are_serialized():
    clf = _fitted("classifier", "float64")
    x = np.random.default_rng(9).normal(size=(1, F))
    stream = clf.stream()
    n = 200

    def feed():
        for _ in range(n):
            stream.predict_proba(x)

    _in_threads(feed, feed)
    # Every step was read, each from the state that the one before left.
    assert stream.n_steps_seen == 2 * n
    np.testing.assert_allclose(stream.predict_proba(x)[-1],
                               clf.predict_proba(np.repeat(x[None], 2 * n + 1, axis=1))[0],
                               **TOL["float64"])


@pytest.mark.timeout(120)
def test_stream_while_another_thread_fits_raises(paused_fit):
    X, s = _data()
    clf = LSTMClassifier(hidden_size=4, max_iter=1, random_state=0).fit(X, s > 0)
    stream = clf.stream()
    with paused_fit(clf, lambda: clf.partial_fit(X, s > 0)):
        with pytest.raises(RuntimeError, match=r"LSTMClassifier\.stream\(\)\.predict_proba "
                                               "was called while partial_fit is running"):
            stream.predict_proba(X[0])
        with pytest.raises(RuntimeError, match=r"LSTMClassifier\.stream was called"):
            clf.stream()
    assert stream.n_steps_seen == 0
    assert stream.predict_proba(X[0]).shape == (X.shape[1], 2)


# ---------------------------------------------------------------------------- persistence
def test_pickled_and_saved_estimators_stream(tmp_path):
    clf = _fitted("classifier", "float32", 2)
    X = np.random.default_rng(10).normal(size=(2, 9, F))
    expected = _feed(clf.stream(2), "predict_proba", X, [4])
    path = tmp_path / "clf.pylstm"
    pylstm.save(clf, path)
    for again in (pickle.loads(pickle.dumps(clf)), pylstm.load(path)):
        np.testing.assert_array_equal(_feed(again.stream(2), "predict_proba", X, [4]),
                                      expected)


def test_stream_pickles_and_copies_with_its_state():
    clf = _fitted("classifier", "float64")
    X = np.random.default_rng(11).normal(size=(1, 9, F))
    stream = clf.stream()
    stream.predict_proba(X[0, :5])
    expected = copy.deepcopy(stream).predict_proba(X[0, 5:])
    again = pickle.loads(pickle.dumps(stream))
    assert again.n_steps_seen == 5 and again.n_streams == 1
    np.testing.assert_array_equal(again.predict_proba(X[0, 5:]), expected)
    np.testing.assert_array_equal(stream.predict_proba(X[0, 5:]), expected)
    assert "n_steps_seen=9" in repr(stream)
