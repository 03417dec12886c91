"""Fork safety: a child forked from a process that used pylstm's threads works.

pylstm runs threads of its own: the helper thread on which the reverse
direction of a bidirectional layer runs (``pylstm._threads``), and the
compiled kernels' worker thread that shares a time loop (the split loop,
``src/_parallel.h``). After ``os.fork()`` the child has none of them, and
any lock that one of them held stays held. Fork is ``multiprocessing``'s
default start method on Linux up to Python 3.13, and joblib's
``multiprocessing`` backend and pre-forking servers fork too, so a child must
be able to ``predict``, ``fit`` and ``save`` while the parent goes on:

* after a fit and predict of each kind of model and thread mode: one
  direction, two directions on two threads, the split time loop, a
  language model;
* in a fork-start ``multiprocessing.Pool`` mapping ``predict`` over chunks;
* with the fork taken while another thread of the parent is inside a kernel
  call (or holds one of pylstm's locks).

A hang must fail, never freeze the run: each child is joined with a
timeout (a child still alive then has its threads' tracebacks dumped, is
killed, and the test fails), and each test has a watchdog of its own
(pytest-timeout's mark when the plugin is installed, else
:func:`faulthandler.dump_traceback_later`, which prints every thread's
traceback and exits).
"""

import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from threadpoolctl import threadpool_limits

import pylstm
import pylstm._layer as layer_module
from pylstm import LSTMClassifier, LSTMLanguageModel, LSTMRegressor, _lstm
from pylstm._threads import caller_threads

pytestmark = [
    pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                       reason="no fork on this platform"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # Python >= 3.12 warns about fork() in a process with threads: what is tested here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

#: Seconds a child may take (it needs well under one) before it counts as hung.
CHILD_TIMEOUT = 30

# ---------------------------------------------------------------------- children
def _child_main(conn, target, args):
    """Run in the forked child: report ``target(*args)`` or its traceback."""
    if hasattr(signal, "SIGUSR1"):  # the parent asks for tracebacks before a kill
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        result = ("ok", target(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent
        result = ("error", traceback.format_exc())
    conn.send(result)
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if result[0] == "ok" else 1)


def _start_child(target, *args):
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(writer, target, args), daemon=True)
    proc.start()
    writer.close()
    return proc, reader


def _finish_child(proc, reader, what, timeout=CHILD_TIMEOUT):
    """The child's result; fails (after dumping its threads) if it does not finish."""
    deadline = time.monotonic() + timeout
    report = reader.recv() if reader.poll(timeout) else None
    proc.join(max(0.1, deadline - time.monotonic()))
    if proc.is_alive():
        if hasattr(signal, "SIGUSR1"):
            os.kill(proc.pid, signal.SIGUSR1)  # its tracebacks, on the captured stderr
            time.sleep(1.0)
        proc.kill()
        proc.join()
        pytest.fail(f"{what}: the forked child hung (still running after {timeout} s)")
    assert report is not None, f"{what}: the child exited ({proc.exitcode}) without a report"
    status, value = report
    assert status == "ok" and proc.exitcode == 0, f"{what}: the child failed:\n{value}"
    return value


def run_in_child(target, *args, what="child"):
    """``target(*args)`` in a forked child (a picklable result), within CHILD_TIMEOUT."""
    proc, reader = _start_child(target, *args)
    return _finish_child(proc, reader, what)


# ---------------------------------------------------------------------- models
def _data(n=40, T=12, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(int)


def _force_split(enable):
    """Make small calls split their time loop over two threads (or stop doing so).

    The kernels' private switches change names as the kernels evolve: each is
    used only if present. Returns a function undoing the change.
    """
    undo = []
    for name in ("set_split_thresholds", "set_split_tuning"):
        switch = getattr(_lstm, name, None)
        if switch is not None:
            old = switch(not enable)
            undo.append((switch, old))
    plan = layer_module.thread_plan
    if enable:  # two loop threads wherever the plan allows a split at all
        layer_module.thread_plan = lambda *a, **k: plan(*a, **k)[:2] + (2,)

    def restore():
        layer_module.thread_plan = plan
        for switch, old in undo:
            switch(old)
    return restore


def _model(mode):
    X, y = _data()
    if mode == "language model":
        text = "the quick brown fox jumps over the lazy dog. " * 6
        return LSTMLanguageModel(hidden_size=16, embedding_dim=8, seq_len=12, max_iter=2,
                                 random_state=0).fit(text), text
    params = dict(hidden_size=16, max_iter=3, random_state=0)
    if mode == "bidirectional":
        params["bidirectional"] = True
    elif mode == "stacked":
        params["num_layers"] = 2
        params["bidirectional"] = True
    elif mode == "split":
        params["hidden_size"] = 64  # the split by units takes whole 64-unit halves
    return LSTMClassifier(**params).fit(X, y), X


def _outputs(model, data):
    if isinstance(model, LSTMLanguageModel):
        return model.generate("the ", n_tokens=40, random_state=1)
    return model.predict_proba(data)


def _child_uses_the_model(model, data, expected, folder):
    """In the child: predict, train (a clone from scratch, and the model on), save."""
    if not np.array_equal(np.asarray(_outputs(model, data)), np.asarray(expected)):
        raise AssertionError("the child's predictions differ from the parent's")
    if isinstance(model, LSTMLanguageModel):
        clone(model).set_params(max_iter=1).fit(data)
        model.partial_fit(data)
    else:
        X, y = _data(seed=1)
        fresh = clone(model).set_params(max_iter=2).fit(X, y)
        assert fresh.n_iter_ == len(fresh.loss_curve_) == 2
        model.partial_fit(X, y)
    path = os.path.join(folder, f"child-{os.getpid()}.pylstm")
    pylstm.save(model, path)
    again = pylstm.load(path)
    if not np.array_equal(np.asarray(_outputs(again, data)), np.asarray(_outputs(model, data))):
        raise AssertionError("the model saved in the child does not predict alike")
    return model.n_iter_


MODES = ["unidirectional", "bidirectional", "stacked", "split", "language model"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_child_predicts_fits_and_saves(mode, tmp_path):
    """Fork after the parent has run each kind of model (so its threads exist);
    the child predicts like the parent, fits, partial_fits and saves, while the
    parent goes on predicting."""
    restore = _force_split(mode == "split")
    try:
        model, data = _model(mode)
        expected = _outputs(model, data)  # the threads of this mode now exist
        n_iter = model.n_iter_
        proc, reader = _start_child(_child_uses_the_model, model, data, expected,
                                    str(tmp_path))
        for _ in range(3):  # the parent goes on meanwhile
            np.testing.assert_array_equal(np.asarray(_outputs(model, data)),
                                          np.asarray(expected))
        child_iter = _finish_child(proc, reader, mode)
        assert child_iter == n_iter + 1
        assert model.n_iter_ == n_iter  # the child's training stayed in the child
        # and the parent's threads still work after the fork
        np.testing.assert_array_equal(np.asarray(_outputs(model, data)), np.asarray(expected))
        if not isinstance(model, LSTMLanguageModel):
            model.partial_fit(*_data(seed=1))
            assert model.n_iter_ == n_iter + 1
    finally:
        restore()


def _adam_by_halves(n):
    from pylstm._arrays import adam_update

    p, g = np.ones(n, np.float32), np.full(n, 0.5, np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    used = adam_update(p, g, m, v, 0.9, 0.999, 0.5, 1e-8, 1e-3, 2)
    return used, float(p.min()), float(p.max())


@pytest.mark.timeout(60)
def test_child_updates_adam_by_halves():
    """Adam's update by halves (pylstm._arrays, on pylstm._lstm's worker through
    its RUN_HALVES capsule) in a child forked after the parent used it: the
    child's own worker runs the second half."""
    n = 1 << 18
    parent = _adam_by_halves(n)
    assert parent[0] == 2
    assert run_in_child(_adam_by_halves, n, what="adam by halves") == parent
    assert _adam_by_halves(n) == parent


def _issue_repro_child(model, X):
    return model.predict(X[:5]).tolist()


@pytest.mark.timeout(60)
def test_issue_repro_bidirectional_child_predicts():
    """The report's reproducer: a bidirectional model fitted and used for
    ``predict`` in the parent, then ``predict`` in a forked child."""
    X = np.random.default_rng(0).normal(size=(40, 12, 3))
    y = np.arange(40) % 2
    m = LSTMClassifier(hidden_size=16, bidirectional=True, random_state=0).fit(X, y)
    m.predict(X)
    got = run_in_child(_issue_repro_child, m, X, what="issue reproducer")
    assert got == m.predict(X[:5]).tolist()


_POOL_MODEL = {}


def _pool_predict(chunk):
    return _POOL_MODEL["model"].predict_proba(chunk)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_fork_pool_maps_predict(bidirectional):
    """``multiprocessing.get_context("fork").Pool(2).map(...)`` over ``predict``."""
    X, y = _data(n=64)
    model = LSTMClassifier(hidden_size=16, num_layers=2, bidirectional=bidirectional,
                           max_iter=2, random_state=0).fit(X, y)
    expected = model.predict_proba(X)
    _POOL_MODEL["model"] = model
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        result = pool.map_async(_pool_predict, np.array_split(X, 8))
        try:
            parts = result.get(timeout=CHILD_TIMEOUT)
        except multiprocessing.TimeoutError:
            pytest.fail(f"the fork pool's predict hung (no result after {CHILD_TIMEOUT} s)")
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        _POOL_MODEL.clear()
    np.testing.assert_array_equal(np.concatenate(parts), expected)


def _child_after_busy_fork(model, X, y):
    """In a child forked while a parent thread was inside pylstm: everything works,
    the shared model included, and the BLAS setting is the caller's."""
    model.predict_proba(X)
    model.partial_fit(X, y)
    fresh = clone(model).set_params(max_iter=2).fit(X, y)
    fresh.predict(X)
    split = _force_split(True)
    try:
        LSTMRegressor(hidden_size=64, max_iter=1, random_state=0).fit(X, X[:, -1, 0])
    finally:
        split()
    return caller_threads()


@pytest.mark.timeout(150)
def test_fork_while_another_thread_runs_kernels():
    """Children forked at staggered moments while a second parent thread keeps
    predicting and training with bidirectional and split models (so that the
    fork often finds it inside a kernel, holding a workspace, a BLAS switch
    or the directions' helper)."""
    X, y = _data(n=48)
    bi = LSTMClassifier(hidden_size=16, bidirectional=True, max_iter=2,
                        random_state=0).fit(X, y)
    uni = LSTMClassifier(hidden_size=64, max_iter=2, random_state=0).fit(X, y)
    baseline = caller_threads()
    stop = threading.Event()
    errors = []

    def busy():
        split = _force_split(True)
        try:
            while not stop.is_set():
                bi.predict_proba(X)
                bi.partial_fit(X, y)
                uni.predict_proba(X)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            split()

    worker = threading.Thread(target=busy, daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worker.start()
        try:
            rng = np.random.default_rng(0)
            for i in range(6):
                time.sleep(float(rng.uniform(0.005, 0.05)))
                threads = run_in_child(_child_after_busy_fork, bi, X, y,
                                       what=f"fork {i} during kernel calls")
                assert threads == baseline  # no switch of the parent's thread stuck in it
        finally:
            stop.set()
            worker.join(CHILD_TIMEOUT)
    assert not worker.is_alive(), "the parent's busy thread hung after the forks"
    assert not errors, errors


def _kernel_blas_threads():
    """The kernels' BLAS thread count after a switch to one thread and back."""
    from pylstm._threads import _controller, single_threaded_blas

    with single_threaded_blas():
        pass
    return max(lib.num_threads for lib in _controller()[1])


@pytest.mark.timeout(60)
def test_child_blas_setting_is_the_callers():
    """A fork inside a BLAS switch of another thread: the child gets the
    caller's thread count back, not the kernels' temporary one."""
    from pylstm._threads import single_threaded_blas

    if caller_threads() < 2 or not _kernel_blas_threads():
        pytest.skip("BLAS runs one thread here: nothing to restore")
    with threadpool_limits(limits=2, user_api="blas"):
        inside, release = threading.Event(), threading.Event()

        def hold():
            with single_threaded_blas():
                inside.set()
                release.wait(CHILD_TIMEOUT)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        try:
            assert inside.wait(CHILD_TIMEOUT)
            assert caller_threads() == 2
            got = run_in_child(_kernel_blas_threads, what="fork inside a BLAS switch")
        finally:
            release.set()
            holder.join(CHILD_TIMEOUT)
        assert got == 2
        assert _kernel_blas_threads() == 2
