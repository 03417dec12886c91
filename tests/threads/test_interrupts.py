"""Interrupts: a ``KeyboardInterrupt`` at any moment leaves pylstm usable.

Ctrl-C raises ``KeyboardInterrupt`` in the main thread between any two
bytecodes: inside a context manager's ``__enter__`` or ``__exit__``, between
a lock's acquisition and the ``try`` that releases it, while waiting for the
thread that runs the reverse direction. Whatever it hits in ``fit``,
``partial_fit``, ``predict``, ``generate`` or ``save``, the next call must
work: no lock stays held, no worker waits forever or still writes into
arrays that the next call is given, the BLAS thread count is the caller's
again, and the estimator is consistent (``n_iter_ == len(loss_curve_)``,
finite weights that predict alike in a deep copy, a model file complete or
untouched).

* unit tests of the mechanisms: a block left without ``__exit__`` (a BLAS
  switch, a workspace borrow), the reverse direction still running when
  the forward one is interrupted, an interrupt in the epoch's bookkeeping,
  before training starts, right after ``save`` opened its temporary file;
* storms: hundreds of interrupts at random moments (some two in a row) of
  ``fit``, ``partial_fit`` and ``predict`` of bidirectional and stacked
  models, of a language model's training and ``generate``, and of ``save``,
  each followed by the checks above.

The interrupts are real signals: a helper thread sends SIGUSR1 to the main
thread, whose handler raises ``KeyboardInterrupt`` (as SIGINT's does) while
the test expects one. Each test has a watchdog (pytest-timeout's mark when
the plugin is installed, else :func:`faulthandler.dump_traceback_later`),
so that a hang fails instead of freezing the run.
"""

import copy
import gc
import os
import queue
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import pylstm
from pylstm import LSTMClassifier, LSTMLanguageModel, LSTMRegressor, _threads
from pylstm import _estimators as estimators_module
from pylstm._workspace import Workspace

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore:training interrupted:UserWarning"),
]

needs_signals = pytest.mark.skipif(
    not (hasattr(signal, "SIGUSR1") and hasattr(signal, "pthread_kill")),
    reason="needs POSIX signals")

# ---------------------------------------------------------------------- interrupts
class Interrupter:
    """Raises ``KeyboardInterrupt`` in the main thread at chosen moments of a call.

    A helper thread sends SIGUSR1 to the main thread at each delay (seconds
    after the call starts), and waits for the handler to have run before the
    next one, so that no two signals merge. The handler raises only while
    interrupts are expected, so none escapes into the test itself.
    """

    def __init__(self):
        self.main = threading.main_thread().ident
        self.armed = 0
        self.handled = 0
        self.lost = 0
        self.jobs = queue.SimpleQueue()
        self.old_handler = signal.signal(signal.SIGUSR1, self._handler)
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _handler(self, signum, frame):
        self.handled += 1
        if self.armed > 0:
            self.armed -= 1
            raise KeyboardInterrupt

    def _send(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            start, delays = job
            for delay in delays:
                while (left := start + delay - time.perf_counter()) > 0:
                    time.sleep(min(left, 0.0005))
                handled = self.handled
                signal.pthread_kill(self.main, signal.SIGUSR1)
                deadline = time.perf_counter() + 10
                while self.handled == handled and time.perf_counter() < deadline:
                    time.sleep(0.0001)
                if self.handled == handled:  # pragma: no cover - never seen
                    self.lost += 1
                    self.armed = max(0, self.armed - 1)

    def run(self, call, delays):
        """``call()`` with interrupts ``delays`` seconds after its start; how many
        of them propagated out of it."""
        escaped = 0
        self.armed = len(delays)
        self.jobs.put((time.perf_counter(), sorted(delays)))
        try:
            call()
            while self.armed:  # later interrupts land here, inside the try
                time.sleep(0.0002)
        except KeyboardInterrupt:
            escaped += 1
        while self.armed:
            try:
                time.sleep(0.0002)
            except KeyboardInterrupt:
                escaped += 1
        return escaped

    def close(self):
        self.jobs.put(None)
        self.thread.join(10)
        signal.signal(signal.SIGUSR1, self.old_handler)


@pytest.fixture
def interrupter():
    if not (hasattr(signal, "SIGUSR1") and hasattr(signal, "pthread_kill")):
        pytest.skip("needs POSIX signals")
    helper = Interrupter()
    try:
        yield helper
    finally:
        helper.close()
    assert helper.lost == 0


def _delays(rng, longest, double=0.3):
    """One interrupt at a random moment, sometimes a second one just after."""
    first = float(rng.uniform(0.0, longest))
    if rng.random() < double:
        return [first, first + float(rng.uniform(0.0, 0.002))]
    return [first]


# ---------------------------------------------------------------------- checks
def _kernel_blas_threads():
    """The thread count of the BLAS that the kernels call (None without threadpoolctl)."""
    ctl = _threads._controller()
    return max(lib.num_threads for lib in ctl[1]) if ctl and ctl[1] else None


def _workspaces(model):
    net = model.network_
    return [layer._workspace for layer in net.layers] + [model._optimizer._workspace]


def _assert_usable(model, X, blas_threads, predict):
    """The checks after an interrupt: consistent, finite, predicting alike, nothing held."""
    assert model.n_iter_ == len(model.loss_curve_)
    for p in model.network_.parameters():
        assert np.isfinite(p).all()
    for ws in _workspaces(model):  # free: the next call reuses the kept arrays
        with ws.borrow() as arrays:
            assert arrays._buffers is ws._buffers
    # No stale writer, no half-restored weights: a deep copy, with fresh work
    # arrays, predicts exactly alike, and so does the model again.
    got = predict(model, X)
    np.testing.assert_array_equal(got, predict(copy.deepcopy(model), X))
    np.testing.assert_array_equal(got, predict(model, X))
    assert _kernel_blas_threads() == blas_threads  # the caller's setting again


def _data(n=96, T=15, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F)).astype(np.float32)
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(int) + (X[:, 0, 1] > 1)


# ---------------------------------------------------------------------- mechanisms
@pytest.mark.timeout(30)
def test_blas_switch_given_back_when_exit_is_skipped():
    """A switch to one BLAS thread whose ``__exit__`` never runs (an interrupt
    at its first bytecode) gives the caller's setting back when it dies."""
    if _kernel_blas_threads() is None or _threads.usable_cpus() < 2:
        pytest.skip("no BLAS thread control here")
    with threadpool_limits(limits=2, user_api="blas"):
        switch = _threads.single_threaded_blas()
        switch.__enter__()
        assert _kernel_blas_threads() == 1
        assert _threads.caller_threads() == 2
        del switch  # left without __exit__
        gc.collect()
        assert _kernel_blas_threads() == 2
        with _threads.single_threaded_blas():  # and the switch works as before
            assert _kernel_blas_threads() == 1
        assert _kernel_blas_threads() == 2


@pytest.mark.timeout(30)
def test_workspace_free_when_exit_is_skipped():
    """A borrow whose ``__exit__`` never runs does not keep the arrays from the
    next call, and ``clear`` does not wait for it."""
    ws = Workspace()
    borrow = ws.borrow()
    kept = borrow.__enter__().empty("x", (8,), np.float64)
    del borrow  # left without __exit__
    with ws.borrow() as arrays:
        assert np.shares_memory(arrays.empty("x", (8,), np.float64), kept)
    cleared = threading.Thread(target=ws.clear, daemon=True)
    cleared.start()
    cleared.join(10)
    assert not cleared.is_alive(), "Workspace.clear() hangs"
    assert ws.nbytes == 0


def _slow_reverse_direction(forward):
    """A ``run(d)`` for ``run_directions`` whose reverse direction takes a while.

    Skips the test on one CPU, where the directions run one after the other.

    Parameters
    ----------
    forward : callable
        Called without arguments by the forward direction (the caller's
        thread) once the reverse one (the helper thread) has started.

    Returns
    -------
    run : callable
        ``run(d)`` returns ``d``; the reverse direction sleeps 0.2 s, the
        GIL released like a kernel's, before it returns.
    finished : list
        Holds ``1`` once the reverse direction has ended.
    """
    if _threads.usable_cpus() < 2:
        pytest.skip("one CPU: the directions run one after the other")
    started, finished = threading.Event(), []

    def run(d):
        if d == 1:
            started.set()
            time.sleep(0.2)
            finished.append(d)
        else:
            assert started.wait(10)
            forward()
        return d

    return run, finished


@pytest.mark.timeout(30)
def test_interrupted_direction_waits_for_the_other():
    """An interrupt in the forward direction surfaces only once the reverse
    one, on the helper thread, is over: it writes into work arrays that the
    next call would be given."""
    def interrupt():
        raise KeyboardInterrupt

    run, finished = _slow_reverse_direction(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _threads.run_directions(run, 2, parallel=True)
    assert finished == [1]
    # the helper is free again
    assert _threads.run_directions(lambda d: d, 2, parallel=True) == [0, 1]


@pytest.mark.timeout(30)
def test_interrupt_while_waiting_for_the_other_direction(interrupter):
    """A signal while the caller waits for the helper: the wait goes on to the
    end, then the interrupt is raised."""
    run, finished = _slow_reverse_direction(lambda: None)

    def call():
        _threads.run_directions(run, 2, parallel=True)

    assert interrupter.run(call, [0.05]) == 1
    assert finished == [1]


def test_direction_errors_propagate():
    def run(d):
        if d == 1:
            raise ValueError("reverse")
        return d

    with pytest.raises(ValueError, match="reverse"):
        _threads.run_directions(run, 2, parallel=True)
    assert _threads.run_directions(lambda d: d, 2, parallel=True) == [0, 1]


@pytest.mark.timeout(60)
def test_interrupt_in_epoch_bookkeeping(monkeypatch):
    """An interrupt after an epoch's weights are done but before its bookkeeping
    is: the estimator is back at the end of the previous epoch, all of it."""
    X, y = _data(n=32)
    reference = LSTMClassifier(hidden_size=8, max_iter=2, random_state=0).fit(X, y)
    real = estimators_module.LSTMClassifier._update_no_improvement
    calls = []

    def interrupted(self, loss, val_score):
        calls.append(loss)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, loss, val_score)

    monkeypatch.setattr(estimators_module.LSTMClassifier, "_update_no_improvement",
                        interrupted)
    with pytest.warns(UserWarning, match="training interrupted"):
        est = LSTMClassifier(hidden_size=8, max_iter=5, random_state=0).fit(X, y)
    assert est.n_iter_ == 2 == len(est.loss_curve_)
    assert est.loss_curve_ == reference.loss_curve_
    assert est.t_ == reference.t_
    for a, b in zip(est.network_.parameters(), reference.network_.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    est.partial_fit(X, y)  # goes on like the reference
    reference.partial_fit(X, y)
    np.testing.assert_array_equal(est.predict_proba(X), reference.predict_proba(X))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["_check_memory", "_initialize"])
def test_interrupt_before_training_keeps_the_fitted_model(monkeypatch, where):
    """A refit interrupted before its first epoch leaves the fitted model as it was."""
    X, y = _data(n=32)
    est = LSTMClassifier(hidden_size=8, max_iter=2, random_state=0).fit(X, y)
    before = est.predict_proba(X)
    real = getattr(estimators_module.LSTMClassifier, where)

    def interrupted(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(estimators_module.LSTMClassifier, where, interrupted)
    est.set_params(random_state=1)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X[:, :5], y)
    monkeypatch.undo()
    assert est.n_iter_ == 2 == len(est.loss_curve_)
    np.testing.assert_array_equal(est.predict_proba(X), before)


@pytest.mark.timeout(30)
def test_interrupted_save_leaves_no_file(monkeypatch, tmp_path):
    """An interrupt right after ``save`` created its temporary file: the target
    is untouched and no temporary file stays behind."""
    X, y = _data(n=32)
    est = LSTMClassifier(hidden_size=8, max_iter=1, random_state=0).fit(X, y)
    path = tmp_path / "model.pylstm"
    pylstm.save(est, path)
    saved = path.read_bytes()
    est.partial_fit(X, y)
    real_open = os.open

    def interrupted(name, *args, **kwargs):
        fd = real_open(name, *args, **kwargs)
        if str(name).endswith(".tmp"):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pylstm.save(est, path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model.pylstm"]
    assert path.read_bytes() == saved


# ---------------------------------------------------------------------- storms
def _classifier_predict(model, X):
    return model.predict_proba(X)


def _regressor_predict(model, X):
    return model.predict(X)


STORM_MODELS = {
    "bidirectional": (LSTMClassifier, dict(bidirectional=True), _classifier_predict),
    "stacked": (LSTMRegressor, dict(num_layers=2), _regressor_predict),
    "stacked bidirectional": (LSTMClassifier, dict(num_layers=2, bidirectional=True),
                              _classifier_predict),
}


@needs_signals
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(STORM_MODELS))
def test_interrupt_storm(kind, interrupter):
    """About 260 interrupts at random moments of fit, partial_fit and predict,
    each call followed by the checks of a usable estimator."""
    cls, params, predict = STORM_MODELS[kind]
    X, y = _data()
    target = y if cls is LSTMClassifier else X[:, -1, 0]
    est = cls(hidden_size=16, max_iter=4, batch_size=16, random_state=0, **params)
    est.fit(X, target)
    blas_threads = _kernel_blas_threads()
    rng = np.random.default_rng(len(kind))
    calls = {
        "fit": (lambda: est.fit(X, target), 0.04),
        "partial_fit": (lambda: est.partial_fit(X, target), 0.01),
        "predict": (lambda: predict(est, X), 0.004),
    }
    interrupts = escaped = 0
    for _ in range(200):
        call, longest = calls[rng.choice(list(calls))]
        delays = _delays(rng, longest)
        escaped += interrupter.run(call, delays)
        interrupts += len(delays)
        _assert_usable(est, X[:7], blas_threads, predict)
    assert interrupts >= 200
    print(f"{kind}: {interrupts} interrupts, {escaped} propagated out of the call")


@needs_signals
@pytest.mark.timeout(120)
def test_issue_storm_bidirectional_fits(interrupter):
    """The report's storm: 30 fits in a row of one bidirectional classifier on
    600 sequences of 20 steps, interrupted after 10 ms, 23 ms, 36 ms, ..."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 20, 3)).astype(np.float32)
    y = np.arange(600) % 2
    est = LSTMClassifier(hidden_size=16, max_iter=30, bidirectional=True)
    est.fit(X[:50], y[:50])
    blas_threads = _kernel_blas_threads()
    for k in range(30):
        interrupter.run(lambda: est.fit(X, y), [0.010 + 0.013 * k])
        _assert_usable(est, X[:7], blas_threads, _classifier_predict)


def _generate(model, prompt):
    return model.generate(prompt, n_tokens=30, random_state=0)


@needs_signals
@pytest.mark.timeout(120)
def test_interrupt_storm_language_model(interrupter):
    """Interrupts at random moments of a language model's fit, partial_fit and
    generate: consistent afterwards, and generating alike in a deep copy."""
    text = "a quick brown fox jumps over the lazy dog; the dog sleeps. " * 8
    model = LSTMLanguageModel(hidden_size=16, embedding_dim=8, seq_len=16, batch_size=8,
                              max_iter=3, random_state=0).fit(text)
    blas_threads = _kernel_blas_threads()
    rng = np.random.default_rng(1)
    calls = {
        "fit": (lambda: model.fit(text), 0.05),
        "partial_fit": (lambda: model.partial_fit(text), 0.02),
        "generate": (lambda: _generate(model, "the "), 0.005),
    }
    interrupts = 0
    for _ in range(60):
        call, longest = calls[rng.choice(list(calls))]
        delays = _delays(rng, longest)
        interrupter.run(call, delays)
        interrupts += len(delays)
        _assert_usable(model, "the ", blas_threads, _generate)
    assert interrupts >= 60


@needs_signals
@pytest.mark.timeout(120)
def test_interrupt_storm_save(interrupter, tmp_path):
    """Interrupts at random moments of ``save``: the file is the previous one or
    the complete new one, it loads, and no temporary file stays behind."""
    X, y = _data(n=32)
    est = LSTMClassifier(hidden_size=16, bidirectional=True, max_iter=1,
                         random_state=0).fit(X, y)
    folder = tmp_path / "target"
    folder.mkdir()
    path = folder / "model.pylstm"
    reference = tmp_path / "reference.pylstm"
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        pylstm.save(est, reference)
        durations.append(time.perf_counter() - start)
    longest = 1.5 * float(np.median(durations))
    rng = np.random.default_rng(2)
    previous = None
    for i in range(80):
        if i % 4 == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.partial_fit(X, y)
            pylstm.save(est, reference)
        complete = reference.read_bytes()
        interrupter.run(lambda: pylstm.save(est, path), _delays(rng, longest, double=0.1))
        assert os.listdir(folder) in ([], ["model.pylstm"])
        if path.exists():
            content = path.read_bytes()
            assert content in (previous, complete)
            loaded = pylstm.load(path)
            assert loaded.n_iter_ == len(loaded.loss_curve_)
            previous = content
