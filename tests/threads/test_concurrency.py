"""Thread safety: one fitted model used from many threads, and models fitted in threads.

* ``predict``/``predict_proba``/``predict_log_proba``/``transform`` of one
  fitted estimator from 8 threads at once (3-D and list input, uni- and
  bidirectional, several rounds) give exactly the sequential results, and
  leave the estimator's ``__dict__`` (deeply: arrays, values, the network's
  parameters) unchanged.
* ``LSTM.forward(training=False)`` from several threads gives identical results.
* Clones fitted in parallel threads (GridSearchCV with joblib's threading
  backend, and a thread pool fitting clones with the same ``random_state``)
  are bit-identical to clones fitted one after another.
* The kernels release the GIL (another thread keeps running Python while a
  kernel runs), and BLAS is single-threaded inside small kernels whichever
  thread calls them, so that two threads predicting concurrently finish
  faster than one after the other (measured and printed; run with ``-s``).
"""

import copy
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from threadpoolctl import ThreadpoolController, threadpool_limits

import pylstm._layer as layer_module
import pylstm._threads as threads_module
from pylstm import LSTM, LSTMClassifier, LSTMLanguageModel, LSTMRegressor
from pylstm._network import SequenceNetwork
from pylstm._workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N_THREADS = 8
ROUNDS = 3


def _sequences(kind, n=48, T=9, F=3, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "3d":
        return rng.normal(size=(n, T, F))
    return [rng.normal(size=(int(k), F)) for k in rng.integers(1, T + 1, n)]


def _labels(X):
    return np.array([int(np.asarray(x)[:, 0].sum() > 0) + int(np.asarray(x)[0, 1] > 1)
                     for x in X])


@pytest.fixture(scope="module", params=[(False, "3d"), (True, "3d"), (False, "list"),
                                        (True, "list")],
                ids=lambda p: f"{'bi' if p[0] else 'uni'}-{p[1]}")
def fitted(request):
    bidirectional, kind = request.param
    X = _sequences(kind)
    clf = LSTMClassifier(hidden_size=6, num_layers=2, bidirectional=bidirectional, max_iter=3,
                         batch_size=16, random_state=0).fit(X, _labels(X))
    return clf, kind


# ---------------------------------------------------------------------------- deep state
def _assert_same_state(a, b, path="est", seen=None):
    """Deep equality of two object graphs: arrays bit for bit, values by ==."""
    seen = set() if seen is None else seen
    if id(a) in seen:
        return
    seen.add(id(a))
    assert type(a) is type(b), f"{path}: type {type(a)} != {type(b)}"
    if isinstance(a, Workspace):
        return  # reusable scratch arrays (see pylstm._workspace), not state
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: dtype or shape changed"
        assert a.tobytes() == b.tobytes(), f"{path}: array values changed"
        assert a.flags.writeable == b.flags.writeable, f"{path}: writeable flag changed"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}[{k!r}]", seen)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length changed"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}[{i}]", seen)
    elif isinstance(a, np.random.RandomState):  # a generator's state, not its identity
        _assert_same_state(list(a.get_state()), list(b.get_state()), f"{path}.state", seen)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), f"{path}: {a!r} != {b!r}"
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _assert_same_state(vars(a), vars(b), f"{path}.__dict__", seen)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _run_threads(fn, args, n_threads=N_THREADS):
    """``fn(arg)`` for each arg on ``n_threads`` threads, the first ``n_threads`` released
    together (the others follow as threads free up)."""
    args = list(args)
    barrier = threading.Barrier(min(n_threads, len(args)))

    def task(i):
        if i < barrier.parties:
            barrier.wait(timeout=60)
        return fn(args[i])

    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        return list(ex.map(task, range(len(args))))


# ---------------------------------------------------------------------------- predict
METHODS = ["predict", "predict_proba", "predict_log_proba", "transform"]


def _same_result(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_result(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_predict_from_8_threads_equals_sequential(fitted):
    clf, kind = fitted
    X = _sequences(kind, n=40, seed=1)
    parts = [X[i::4] for i in range(4)]  # different inputs too, of different lengths
    inputs = [X] + parts
    expected = {(m, i): getattr(clf, m)(inp) for m in METHODS for i, inp in enumerate(inputs)}
    snapshot = copy.deepcopy(clf.__dict__)
    params_before = [id(p) for p in clf.network_.parameters()]

    jobs = [(m, i) for m in METHODS for i in range(len(inputs))] * 2
    for r in range(ROUNDS):
        order = np.random.default_rng(r).permutation(len(jobs))
        batch = [jobs[j] for j in order]
        results = _run_threads(lambda job: getattr(clf, job[0])(inputs[job[1]]), batch)
        for job, res in zip(batch, results, strict=True):
            _same_result(res, expected[job])
    # predict changed nothing: same keys, same objects' contents, same parameter arrays.
    _assert_same_state(clf.__dict__, snapshot)
    assert [id(p) for p in clf.network_.parameters()] == params_before


def test_predict_leaves_state_unchanged_sequentially(fitted):
    clf, kind = fitted
    X = _sequences(kind, n=10, seed=2)
    snapshot = copy.deepcopy(clf.__dict__)
    for m in METHODS + ["score"]:
        args = (X, clf.predict(X)) if m == "score" else (X,)
        getattr(clf, m)(*args)
    _assert_same_state(clf.__dict__, snapshot)


def test_regressor_predict_from_threads():
    X = _sequences("list", n=30)
    y = np.array([x[:, 0].sum() for x in X])
    reg = LSTMRegressor(hidden_size=5, bidirectional=True, max_iter=2, random_state=0).fit(X, y)
    expected = reg.predict(X)
    snapshot = copy.deepcopy(reg.__dict__)
    for res in _run_threads(lambda _: reg.predict(X), range(N_THREADS * ROUNDS)):
        _same_result(res, expected)
    _assert_same_state(reg.__dict__, snapshot)


# ---------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_inference_forward_from_threads(dtype, bidirectional):
    layer = LSTM(4, 7, num_layers=2, bidirectional=bidirectional, dtype=dtype, random_state=0)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(int(B), 11, 4)), rng.integers(1, 12, int(B)))
               for B in rng.integers(1, 40, 6)]
    expected = [layer.forward(X, lengths=lens, training=False) for X, lens in batches]
    params = layer.state_dict()
    jobs = list(range(len(batches))) * 4
    for _ in range(ROUNDS):
        results = _run_threads(
            lambda j: layer.forward(batches[j][0], lengths=batches[j][1], training=False), jobs)
        for j, (out, (h_n, c_n)) in zip(jobs, results, strict=True):
            e_out, (e_h, e_c) = expected[j]
            for a, b in ((out, e_out), (h_n, e_h), (c_n, e_c)):
                assert a.tobytes() == b.tobytes()
    for name, arr in layer.state_dict().items():
        assert arr.tobytes() == params[name].tobytes()


# ---------------------------------------------------------------------------- fitting
def _model_bytes(est):
    return [p.tobytes() for p in est.network_.parameters()] + [repr(est.loss_curve_)]


@pytest.mark.parametrize("Est, scoring", [(LSTMRegressor, None),
                                          (LSTMClassifier, "neg_log_loss")])
def test_grid_search_threading_backend_equals_sequential(Est, scoring):
    X = _sequences("list", n=36, T=7)
    y = _labels(X) if Est is LSTMClassifier else np.array([x[:, 0].sum() for x in X])
    grid = {"hidden_size": [3, 5], "bidirectional": [False, True]}
    base = Est(max_iter=3, batch_size=8, random_state=0)
    kwargs = {"cv": 3, "scoring": scoring, "error_score": "raise", "return_train_score": True}
    serial = GridSearchCV(base, grid, n_jobs=1, **kwargs).fit(X, y)
    with joblib.parallel_backend("threading"):
        threaded = GridSearchCV(base, grid, n_jobs=2, **kwargs).fit(X, y)
    for key, values in serial.cv_results_.items():
        if "score" in key and "time" not in key and "rank" not in key:
            np.testing.assert_array_equal(threaded.cv_results_[key], values, err_msg=key)
    assert threaded.best_params_ == serial.best_params_
    assert _model_bytes(threaded.best_estimator_) == _model_bytes(serial.best_estimator_)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_clones_fitted_in_threads_are_identical(bidirectional):
    X = _sequences("list", n=40)
    y = _labels(X)
    base = LSTMClassifier(hidden_size=6, bidirectional=bidirectional, max_iter=3,
                          batch_size=8, random_state=3)
    sequential = [clone(base).fit(X, y) for _ in range(2)]
    threaded = _run_threads(lambda _: clone(base).fit(X, y), range(4), n_threads=4)
    reference = _model_bytes(sequential[0])
    assert _model_bytes(sequential[1]) == reference
    for est in threaded:
        assert _model_bytes(est) == reference
        _same_result(est.predict_proba(X), sequential[0].predict_proba(X))


# ---------------------------------------------------------------------------- GIL and BLAS
def _blas_controllers():
    return ThreadpoolController().select(user_api="blas").lib_controllers


def test_kernels_release_the_gil():
    """While one thread runs a long kernel call, another keeps executing Python."""
    layer = LSTM(16, 48, dtype=np.float64, random_state=0)
    X = np.random.default_rng(0).normal(size=(16, 4000, 16))
    span = {}

    def work():
        span["start"] = time.perf_counter()
        layer.forward(X, training=False)  # one kernel call runs the whole time loop
        span["end"] = time.perf_counter()

    worker = threading.Thread(target=work)
    stamps = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    stamps = np.array(stamps + [time.perf_counter()])
    during = (stamps[1:] > span["start"]) & (stamps[:-1] < span["end"])
    max_gap = float(np.diff(stamps)[during].max())
    duration = span["end"] - span["start"]
    print(f"\nGIL: the worker's forward took {duration:.3f} s; the other thread's longest "
          f"pause meanwhile {max_gap * 1e3:.1f} ms ({len(stamps)} loop iterations)")
    # Holding the GIL would pause the loop for the whole call.
    assert max_gap < 0.5 * duration


def test_blas_single_threaded_in_small_kernels_from_any_thread(monkeypatch):
    """Small kernels run on one BLAS thread whichever Python thread calls them.

    With several BLAS threads, concurrent callers spin against each other in
    OpenBLAS's thread server (seen: two threads 4-30x slower than one after the
    other), so ``pylstm._threads`` limits BLAS to one thread around small
    kernels. That must work from worker threads too, and restore the caller's
    setting afterwards.
    """
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def forward_infer(*args):
            seen.append(tuple(lib.num_threads for lib in _blas_controllers()
                              if lib.filepath in kernel_blas))
            return real.forward_infer(*args)

    real = layer_module._lstm
    monkeypatch.setattr(layer_module, "_lstm", Spy())
    # The kernels' BLAS (SciPy's); NumPy's, which no kernel calls, is left as it is.
    kernel_blas = {b.filepath for b in threads_module._controller()[1]}
    layer = LSTM(3, 8, random_state=0)
    X = np.random.default_rng(0).normal(size=(4, 5, 3))
    with threadpool_limits(limits=2, user_api="blas"):
        before = [lib.num_threads for lib in _blas_controllers()]
        _run_threads(lambda _: layer.forward(X, training=False), range(8), n_threads=4)
        after = [lib.num_threads for lib in _blas_controllers()]
    assert seen and all(n and n == (1,) * len(n) for n in seen), (
        f"BLAS thread counts seen inside the kernels from worker threads: {sorted(set(seen))}")
    assert after == before


@pytest.mark.parametrize("limit", [1, 2])
def test_directions_share_the_callers_thread_budget(monkeypatch, limit):
    """Directions run side by side only when the caller allows two BLAS threads."""
    seen = []
    real = layer_module.run_directions

    def spy(run, n_directions, parallel):
        seen.append(parallel)
        return real(run, n_directions, parallel)

    monkeypatch.setattr(layer_module, "run_directions", spy)
    layer = LSTM(3, 8, bidirectional=True, random_state=0)
    X = np.random.default_rng(0).normal(size=(4, 6, 3))
    with threadpool_limits(limits=limit, user_api="blas"):
        out, _ = layer.forward(X, training=True)
        layer.backward(np.ones_like(out))
    # parallel is the request; run_directions still runs sequentially on one core.
    assert seen and all(p == (limit >= 2) for p in seen)


def test_blas_switch_touches_only_the_kernels_blas():
    """The switch sets the kernels' BLAS (SciPy's) to one thread and back, through
    OpenBLAS's C functions where it can; another BLAS (NumPy's own) keeps its count."""
    libs, kernel = threads_module._controller()
    assert kernel and set(kernel) <= set(libs)
    others = [b for b in libs if b not in kernel]
    with threadpool_limits(limits=2, user_api="blas"):
        before = {b.filepath: b.num_threads for b in libs}
        with threads_module.single_threaded_blas(True):
            inside = {b.filepath: b.num_threads for b in libs}
        after = {b.filepath: b.num_threads for b in libs}
    assert after == before
    assert all(inside[b.filepath] == 1 for b in kernel)
    assert all(inside[b.filepath] == before[b.filepath] for b in others)
    for b in libs:  # the C functions read what threadpoolctl reads
        assert b.num_threads == b.lib.num_threads
        if b.lib.internal_api == "openblas" and b.lib.threading_layer == "pthreads":
            assert b._set is not None


# ---------------------------------------------------------------- fit and use from two threads
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fit_method", ["fit", "partial_fit"])
def test_use_while_another_thread_fits_raises_a_clear_error(paused_fit, fit_method):
    X = _sequences("3d")
    y = _labels(X)
    est = LSTMClassifier(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    reference = copy.deepcopy(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(reference, fit_method)(X, y)
    calls = {"predict": (X,), "predict_proba": (X,), "predict_log_proba": (X,),
             "transform": (X,), "score": (X, y), "gate_activations": (X[:2],),
             "fit": (X, y), "partial_fit": (X, y)}
    with paused_fit(est, lambda: getattr(est, fit_method)(X, y)):
        for method, args in calls.items():
            with pytest.raises(RuntimeError, match=rf"^LSTMClassifier\.{method} was called "
                                                   rf"while {fit_method} is running on the "
                                                   "same estimator in another thread"):
                getattr(est, method)(*args)
    # The fit was not disturbed: it ends as it would have alone.
    for p, q in zip(est.network_.parameters(), reference.network_.parameters(), strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(est.predict_proba(X), reference.predict_proba(X))


@pytest.mark.timeout(120)
def test_fit_waits_for_predictions_running_in_other_threads(monkeypatch):
    X = _sequences("list")
    y = _labels(X)
    est = LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, y.astype(float))
    expected = est.predict(X)
    original = SequenceNetwork.features
    predicting, go, events = threading.Event(), threading.Event(), []

    def slow_features(self, X, lengths, training=False, **kwargs):
        if not training and not predicting.is_set():
            predicting.set()
            assert go.wait(30)
            result = original(self, X, lengths, training=training, **kwargs)
            events.append("prediction")
            return result
        if training and "fit" not in events:
            events.append("fit")
        return original(self, X, lengths, training=training, **kwargs)

    monkeypatch.setattr(SequenceNetwork, "features", slow_features)
    with ThreadPoolExecutor(2) as pool:
        prediction = pool.submit(est.predict, X)
        assert predicting.wait(30)
        fitting = pool.submit(est.partial_fit, X, y.astype(float))
        time.sleep(0.2)  # the fit is waiting: it has not started to train
        assert events == []
        go.set()
        np.testing.assert_array_equal(prediction.result(timeout=30), expected)
        fitting.result(timeout=30)
    assert events == ["prediction", "fit"]
    assert est.n_iter_ == 3


@pytest.mark.timeout(120)
def test_language_model_use_while_another_thread_fits(paused_fit):
    text = "the quick brown fox jumps over the lazy dog " * 10
    lm = LSTMLanguageModel(hidden_size=8, embedding_dim=4, seq_len=8, batch_size=4,
                           max_iter=1, random_state=0).fit(text)
    calls = {"generate": ("the",), "predict_proba": ("the",), "score": (text,),
             "perplexity": (text,)}
    with paused_fit(lm, lambda: lm.partial_fit(text)):
        for method, args in calls.items():
            with pytest.raises(RuntimeError, match=r"LSTMLanguageModel\.(generate|"
                                                   r"predict_proba|score) was called while "
                                                   "partial_fit is running"):
                getattr(lm, method)(*args)
    assert lm.n_iter_ == 2


@pytest.mark.timeout(60)
def test_idle_worker_spins_briefly_then_sleeps():
    """The kept worker thread spins for ``set_idle_wait`` after a task, then
    sleeps: a process idle after a kernel call uses no CPU; a worker asleep
    between calls (wait 0) gives the same results as one kept spinning."""
    from pylstm import _lstm
    from pylstm._threads import single_threaded_blas

    if _lstm.kernel_threads() < 2 or threads_module.usable_cpus() < 2:
        pytest.skip("no second thread here")
    for bad in (-1.0, 2.0, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"seconds must be in \[0, 1\]"):
            _lstm.set_idle_wait(bad)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(256, 128)), rng.normal(size=(128, 128))
    results = {}
    default = _lstm.set_idle_wait(0.001)
    try:
        with single_threaded_blas():
            for wait in (0.0, 0.001):
                _lstm.set_idle_wait(wait)
                c = np.empty((256, 128))
                for k in range(40):
                    assert _lstm.gemm_halves(False, False, 1.0, a, b, 0.0, c, 2) == 2
                    results.setdefault(wait, []).append(c.copy())
                    if k % 2:  # longer than the wait: the worker sleeps; else it spins
                        time.sleep(0.002)
                cpu = time.process_time()
                time.sleep(0.3)
                # A worker spinning on would take about 0.3 s of CPU here.
                assert time.process_time() - cpu < 0.1
    finally:
        _lstm.set_idle_wait(default)
    for c in results[0.0] + results[0.001]:
        np.testing.assert_array_equal(c, results[0.0][0])
