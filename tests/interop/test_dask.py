"""pylstm on a Dask cluster (optional: ``pip install pylstm[dask]``).

Three patterns, on a two-worker ``LocalCluster`` of processes started here:
hyperparameter search under joblib's Dask backend, ``dask_ml``'s
``Incremental`` streaming the row blocks of a Dask array into ``partial_fit``
(2-D rows of ``n_timesteps * n_features`` values, see ``n_features``), and
parallel prediction over a Dask array of sequences. Plus what makes these
work well: estimators that pickle cheaply and keep to the worker's BLAS
thread limit. Last, the snippets of docs/scaling.rst run as written.
"""

import os
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
pytest.importorskip("dask_ml")

import dask.array as da  # noqa: E402
import joblib  # noqa: E402
from dask.distributed import Client, LocalCluster, get_task_stream  # noqa: E402
from dask_ml.wrappers import Incremental, ParallelPostFit  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import accuracy_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pylstm import LSTMClassifier  # noqa: E402
from pylstm.datasets import load_digits_sequences  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # The scheduler's HTTP server (health checks, even without a dashboard)
    # takes another port when 8787 is busy, e.g. while two clusters run.
    pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning"),
]

#: Variables through which BLAS/OpenMP libraries take their thread count.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(scope="module")
def client():
    """A two-worker LocalCluster of processes, one thread each, and its Client."""
    # Start the workers from an environment without thread-count variables, so
    # that they get the limit Dask itself sets, whatever the test runner's
    # environment says (a variable already set would win over Dask's default).
    # The nanny writes its variables into this process's environment as well:
    # restore it afterwards.
    before = dict(os.environ)
    for name in _THREAD_ENV:
        os.environ.pop(name, None)
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)
    with cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    """Digits as sequences of 8 rows of 8 pixels, split 75/25 (stratified)."""
    X, y = load_digits_sequences(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted_2d(digits):
    """A classifier fitted on the 2-D layout: rows of T * F values, n_features=F."""
    X_train, _, y_train, _ = digits
    n, T, F = X_train.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LSTMClassifier(hidden_size=16, max_iter=3, n_features=F,
                              random_state=0).fit(X_train.reshape(n, T * F), y_train)


# ---------------------------------------------------------------- grid search
@pytest.mark.parametrize("layout", ["3d", "list"])
def test_grid_search_dask_backend_matches_serial(client, digits, layout):
    X_train, _, y_train, _ = digits
    X, y = X_train[:240], y_train[:240]
    if layout == "list":
        X = list(X)
    grid = {"hidden_size": [8, 16], "learning_rate_init": [0.005, 0.02]}
    est = LSTMClassifier(max_iter=4, random_state=0)
    # Same seed, data and BLAS thread count give bit-identical models; the
    # workers run one BLAS thread, so does the serial reference.
    with threadpool_limits(limits=1, user_api="blas"):
        serial = GridSearchCV(est, grid, cv=3, n_jobs=1, error_score="raise").fit(X, y)
    with get_task_stream(client) as tasks, joblib.parallel_backend("dask"):
        dist = GridSearchCV(est, grid, cv=3, n_jobs=-1, error_score="raise").fit(X, y)
    assert len(tasks.data) > 0, "the fits did not run on the cluster"
    assert dist.best_params_ == serial.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score",
                "split2_test_score"):
        np.testing.assert_array_equal(dist.cv_results_[key], serial.cv_results_[key])


# ---------------------------------------------------------------- Incremental
def test_incremental_matches_in_memory_fit(client, digits):
    X_train, X_test, y_train, y_test = digits
    n, T, F = X_train.shape
    params = {"hidden_size": 32, "learning_rate_init": 0.01, "random_state": 0}
    epochs = 12
    X_da = da.from_array(X_train.reshape(n, T * F), chunks=(150, T * F))
    y_da = da.from_array(y_train, chunks=150)
    classes = np.unique(y_train)

    # Each Incremental.partial_fit is one pass over the blocks (in a new random
    # order), each block one partial_fit epoch of the estimator.
    inc = Incremental(LSTMClassifier(n_features=F, **params),
                      random_state=np.random.RandomState(0))
    for _ in range(epochs):
        inc.partial_fit(X_da, y_da, classes=classes)
    assert inc.estimator_.n_iter_ == epochs * X_da.numblocks[0]
    assert inc.estimator_.t_ == epochs * n
    X_test_2d = X_test.reshape(len(X_test), T * F)
    acc_inc = accuracy_score(y_test, inc.predict(X_test_2d))
    # The 2-D layout is the 3-D one, flattened: the same model reads both.
    np.testing.assert_array_equal(inc.estimator_.predict(X_test),
                                  inc.estimator_.predict(X_test_2d))

    mem = LSTMClassifier(max_iter=epochs, **params).fit(X_train, y_train)
    acc_mem = mem.score(X_test, y_test)
    assert acc_mem > 0.9
    assert abs(acc_inc - acc_mem) <= 0.03, (acc_inc, acc_mem)


def test_incremental_fit_is_one_pass(client, digits):
    X_train, _, y_train, _ = digits
    n, T, F = X_train.shape
    X_da = da.from_array(X_train.reshape(n, T * F), chunks=(400, T * F))
    y_da = da.from_array(y_train, chunks=400)
    inc = Incremental(LSTMClassifier(hidden_size=8, n_features=F, random_state=0))
    inc.fit(X_da, y_da, classes=np.unique(y_train))
    assert inc.estimator_.n_iter_ == X_da.numblocks[0]
    assert inc.estimator_.n_features_in_ == T * F
    # fit starts again from scratch
    inc.fit(X_da, y_da, classes=np.unique(y_train))
    assert inc.estimator_.n_iter_ == X_da.numblocks[0]


# ---------------------------------------------------------- parallel prediction
def _large(digits):
    """~9000 noisy copies of the digits, flattened to rows of T * F values."""
    X_train, _, _, _ = digits
    n, T, F = X_train.shape
    rng = np.random.RandomState(0)
    X = np.tile(X_train, (7, 1, 1))
    X = X + rng.normal(scale=0.05, size=X.shape)
    return X.reshape(len(X), T * F), (T, F)


def test_parallel_post_fit_prediction(client, digits, fitted_2d):
    X, _ = _large(digits)
    expected = fitted_2d.predict(X)
    # Chunks of a multiple of the 256-sequence inference batch see the same
    # batches as the in-memory call.
    X_da = da.from_array(X, chunks=(1024, X.shape[1]))
    ppf = ParallelPostFit(fitted_2d)  # already fitted: no need to fit the wrapper
    pred = ppf.predict(X_da)
    assert isinstance(pred, da.Array)
    np.testing.assert_array_equal(pred.compute(), expected)
    proba = ppf.predict_proba(X_da).compute()
    np.testing.assert_allclose(proba, fitted_2d.predict_proba(X), rtol=1e-12, atol=1e-15)


def test_map_blocks_prediction(client, digits, fitted_2d):
    X, (T, F) = _large(digits)
    expected = fitted_2d.predict(X)
    X_da = da.from_array(X, chunks=(1000, X.shape[1]))
    pred = X_da.map_blocks(fitted_2d.predict, drop_axis=1, dtype=fitted_2d.classes_.dtype)
    np.testing.assert_array_equal(pred.compute(), expected)
    # A 3-D Dask array chunked along the samples only works just as well.
    X3 = da.from_array(X.reshape(len(X), T, F), chunks=(1000, T, F))
    pred3 = X3.map_blocks(fitted_2d.predict, drop_axis=(1, 2), dtype=fitted_2d.classes_.dtype)
    np.testing.assert_array_equal(pred3.compute(), expected)


# ------------------------------------------------- pickling and thread limits
def test_estimators_pickle_cheaply(digits, fitted_2d):
    n_params = sum(p.size for p in fitted_2d.network_.parameters())
    size = len(pickle.dumps(fitted_2d))
    # The weights and Adam's two moment estimates (float64), a little metadata;
    # neither the training data nor activation caches.
    assert size < 3 * 8 * n_params + 16_384, (size, n_params)
    X_train = digits[0]
    assert size < X_train.nbytes / 10
    assert len(pickle.dumps(LSTMClassifier())) < 2_048
    clone = pickle.loads(pickle.dumps(fitted_2d))
    X = X_train[:50].reshape(50, -1)
    np.testing.assert_array_equal(clone.predict_proba(X), fitted_2d.predict_proba(X))


def test_workers_keep_blas_to_one_thread(client):
    # Defined here, not at module level: the workers cannot import this test
    # module, so the function must travel by value (cloudpickle does that for
    # local functions).
    def _blas_threads_in_worker():
        """Thread-count variables and BLAS threads of a worker, before and after a fit."""
        from threadpoolctl import threadpool_info

        from pylstm import LSTMClassifier
        from pylstm.datasets import load_digits_sequences

        def blas():
            return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

        env = {name: os.environ.get(name) for name in _THREAD_ENV}
        before = blas()
        X, y = load_digits_sequences(return_X_y=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # batch 256 x hidden 64 is above pylstm's single-thread threshold: the
            # kernels then keep BLAS's own (the worker's) setting.
            LSTMClassifier(hidden_size=64, batch_size=256, max_iter=1, random_state=0).fit(X, y)
        return env, before, blas()

    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    futures = [client.submit(_blas_threads_in_worker, workers=[w], pure=False)
               for w in workers]
    for env, before, after in (f.result(timeout=120) for f in futures):
        # Dask's nanny sets these to 1 (distributed.nanny.pre-spawn-environ)
        # before it spawns each worker, whatever threads_per_worker is.
        assert env == dict.fromkeys(_THREAD_ENV, "1")
        # numpy's and scipy's OpenBLAS (the kernels call scipy's) at one thread,
        # before pylstm runs and after: it never raises the limit.
        assert before and after and len(after) >= len(before)
        assert set(before) == {1} and set(after) == {1}


# ------------------------------------------------------------------ the guide
def test_scaling_guide_runs():
    """The ``>>>`` snippets of docs/scaling.rst run as written (they start their own cluster)."""
    import doctest
    from pathlib import Path

    guide = Path(__file__).resolve().parents[2] / "docs" / "scaling.rst"
    if not guide.exists():
        pytest.skip("docs/scaling.rst is not next to the tests")
    before = dict(os.environ)  # the guide's LocalCluster writes thread variables here
    try:
        result = doctest.testfile(str(guide), module_relative=False,
                                  optionflags=doctest.NORMALIZE_WHITESPACE)
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)
    assert result.attempted > 30
    assert result.failed == 0
