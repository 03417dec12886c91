"""Fixtures shared by the test modules (which, under ``--import-mode=importlib``,
cannot import one another)."""

import contextlib
import faulthandler
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest


def _load_reference():
    """``tests/reference.py``, loaded by path: the test folder is not on ``sys.path``."""
    name = "pylstm_tests_reference"
    if name not in sys.modules:
        path = Path(__file__).with_name("reference.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture
def numpy_lstm():
    """The NumPy reference LSTM class of ``tests/reference.py`` (also the benchmarks')."""
    return _load_reference().NumpyLSTM


def _numeric_grad(f, arr, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to ``arr``, in place."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def _rel_err(a, b):
    """``max|a - b|`` over the larger of ``max|a|`` and ``max|b|``."""
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-12)
    return np.abs(a - b).max() / scale


def _check_bptt(layer, X, lengths, h0, c0, seed=0, mask_seed=None, tol=1e-6):
    """Assert that a float64 layer's BPTT matches central differences.

    The loss is ``sum(out * w_out) + sum(h_n * w_h) + sum(c_n * w_c)`` with
    random weights. Without ``mask_seed`` it is evaluated by inference, so
    the check also ties the inference kernels to the training ones; with it,
    by training calls whose recurrent-dropout masks that seed fixes. Every
    parameter, X, h0 and c0 are checked, and dX is zero past each length.
    """
    rng = np.random.default_rng(seed)
    B, T = X.shape[:2]
    K, R = layer.num_layers * layer.num_directions, layer.output_size
    w_out = rng.normal(size=(B, T, layer.num_directions * R))
    w_h, w_c = rng.normal(size=(K, B, R)), rng.normal(size=(K, B, layer.hidden_size))

    def loss():
        kw = {"training": False} if mask_seed is None else {
            "rng": np.random.default_rng(mask_seed)}
        out, (h_n, c_n) = layer.forward(X, lengths=lengths, h0=h0, c0=c0, **kw)
        return np.sum(out * w_out) + np.sum(h_n * w_h) + np.sum(c_n * w_c)

    layer.forward(X, lengths=lengths, h0=h0, c0=c0,
                  rng=None if mask_seed is None else np.random.default_rng(mask_seed))
    dX, grads = layer.backward(w_out, d_h_n=w_h, d_c_n=w_c)
    for name, arr in [*layer._params.items(), ("X", X), ("h0", h0), ("c0", c0)]:
        analytic = dX if name == "X" else grads[name]
        assert _rel_err(analytic, _numeric_grad(loss, arr)) < tol, name
    for b, n in enumerate(lengths if lengths is not None else []):
        assert not dX[b, n:].any()


@pytest.fixture
def check_bptt():
    """``check_bptt(layer, X, lengths, h0, c0, seed=0, mask_seed=None)``: assert
    that BPTT matches finite differences (:func:`_check_bptt`)."""
    return _check_bptt


@contextlib.contextmanager
def _paused_fit(monkeypatch, est, fit):
    """Run ``fit()`` in a thread, paused inside the first backward pass of
    ``est.network_`` while the ``with`` block runs.

    Leaving the block lets the fit go on and waits for it to end; the fit
    raising is a failure.
    """
    network = type(est.network_)
    original = network.backward
    paused, go = threading.Event(), threading.Event()

    def pausing_backward(self, d_output):
        if not paused.is_set():
            paused.set()
            assert go.wait(30)
        return original(self, d_output)

    monkeypatch.setattr(network, "backward", pausing_backward)
    errors = []

    def run():
        try:
            fit()
        except BaseException as exc:  # noqa: BLE001 - reported on leaving the block
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.wait(30)
    try:
        yield
    finally:
        go.set()
        thread.join(30)
        assert not thread.is_alive(), "the fit did not end"
    assert not errors, f"the fit raised {errors[0]!r}"


@pytest.fixture
def paused_fit(monkeypatch):
    """``with paused_fit(est, fit): ...``: ``fit()`` runs in another thread, held
    inside its first backward pass for the block (tests of use during a fit)."""
    return lambda est, fit: _paused_fit(monkeypatch, est, fit)


def _kernel_problem(dtype, B, T, I, H, seed):
    """Random inputs of one kernel direction: lengths (sorted, the first T),
    weights, initial states and gradients, per-step arrays in the compact layout."""
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(1, T + 1, size=B))[::-1].copy()
    lengths[0] = T
    lengths = np.ascontiguousarray(lengths, dtype=np.intc)
    N, G = int(lengths.sum()), 4 * H
    w_hh = (rng.normal(size=(G, H)) * 0.2).astype(dtype)
    return dict(
        lengths=lengths, N=N, I=I, H=H,
        x=rng.normal(size=(N, I)).astype(dtype),
        w_ih=(rng.normal(size=(G, I)) * 0.3).astype(dtype), w_hh=w_hh,
        w_hh_t=np.ascontiguousarray(w_hh.T),
        bias=(rng.normal(size=G) * 0.1).astype(dtype),
        h0=rng.normal(size=(B, H)).astype(dtype), c0=rng.normal(size=(B, H)).astype(dtype),
        d_out=rng.normal(size=(N, H)).astype(dtype),
        dh=rng.normal(size=(B, H)).astype(dtype), dc=rng.normal(size=(B, H)).astype(dtype),
    )


@pytest.fixture
def kernel_problem():
    """``kernel_problem(dtype, B, T, I, H, seed)``: a dict of kernel inputs."""
    return _kernel_problem


@pytest.fixture(autouse=True)
def _watchdog_without_plugin(request):
    """A test's ``timeout`` mark arms :func:`faulthandler.dump_traceback_later`
    where pytest-timeout (a test dependency) is not installed: a hang then
    ends the run with every thread's stack instead of freezing it."""
    mark = request.node.get_closest_marker("timeout")
    if mark is None or request.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    faulthandler.dump_traceback_later(mark.args[0], exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


#: ``fuzz_report()`` of the collected test modules that have one.
_REPORTERS = []


def pytest_collection_modifyitems(session, config, items):
    """Note the test modules whose ``fuzz_report()`` says what their fuzzing tried."""
    for module in dict.fromkeys(getattr(item, "module", None) for item in items):
        if hasattr(module, "fuzz_report"):
            _REPORTERS.append(module.fuzz_report)


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' counts, after the run (a report, not a test)."""
    lines = [line for report in _REPORTERS for line in report()]
    if lines:
        terminalreporter.section("fuzz counts")
        for line in lines:
            terminalreporter.write_line(line)
