"""The training forward's kept gates and states by streaming stores.

A training forward writes what BPTT reads back (the activated gates, c_t
and h_{t-1}) with stores that bypass the caches (``_stream_keep`` in
``src/_forward.pxi``; ``_lstm.set_streaming`` switches them off). Only
where the bytes go changes, never their values: the caches, outputs,
states and every gradient are compared bit for bit with plain stores, for
both dtypes, at every SIMD level (the kernel call, on aligned arrays), one
and two threads (split by rows and by units, or a direction each), lengths
that shrink the batch, rows whose kept arrays are not aligned to the vector
width, and the language model's lookup path.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import LSTM, LSTMLanguageModel, _lstm
from pylstm._threads import usable_cpus
from pylstm._workspace import aligned_zeros

# Two threads share some of these loops: a hang must fail the test.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stream_setting():
    """Restore the streaming and the split settings after the test."""
    old = _lstm.set_streaming(True)
    old_split = _lstm.set_split_thresholds(False)
    old_mode = _lstm.set_split_mode("auto")
    yield
    _lstm.set_streaming(old)
    _lstm.set_split_thresholds(old_split)
    _lstm.set_split_mode(old_mode)


def test_streaming_setting_returns_the_old_one(stream_setting):
    assert _lstm.set_streaming(False) is True
    assert _lstm.set_streaming(True) is False


def _train_step(dtype, stream, threads, H, I, bidirectional, seed=0):
    """Everything a training step of a two-layer layer gives, the kept
    arrays streamed or not."""
    _lstm.set_streaming(stream)
    rng = np.random.default_rng(seed)
    B, T = 18, 13
    layer = LSTM(I, H, num_layers=2, bidirectional=bidirectional, dtype=dtype,
                 random_state=seed)
    X = rng.normal(size=(B, T, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[:9] = T  # nine full rows, then the batch shrinks
    with threadpool_limits(limits=threads, user_api="blas"):
        out, (h, c) = layer.forward(X, lengths=lengths, training=True)
        d_out = rng.normal(size=out.shape).astype(dtype)
        dX, grads = layer.backward(d_out)
    return [out, h, c, dX] + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("threads", "mode", "H", "I", "bidirectional"), [
    (1, "auto", 64, 5, True),
    (1, "auto", 40, 3, False),  # float32 rows off the vector alignment: plain stores
    (2, "auto", 64, 5, True),   # the directions on a thread each
    (2, "rows", 64, 5, False),  # one direction: two threads share its rows ...
    (2, "rows", 40, 3, False),
    (2, "units", 64, 5, False),  # ... or its units
])
def test_streamed_training_step_equals_plain_stores(dtype, threads, mode, H, I, bidirectional,
                                                    stream_setting):
    _lstm.set_split_mode(mode)
    plain = _train_step(dtype, False, threads, H, I, bidirectional)
    streamed = _train_step(dtype, True, threads, H, I, bidirectional)
    for a, b in zip(streamed, plain, strict=True):
        np.testing.assert_array_equal(a, b)


def _kernel_forward(dtype, stream, threads, lengths, weights, x):
    """One training forward_train call on 64-byte aligned arrays (so that the
    streaming stores are taken); returns the threads that ran it and its
    arrays."""
    _lstm.set_streaming(stream)
    w_ih, w_hh, bias = weights
    B, T, (N, I), H = len(lengths), int(lengths[0]), x.shape, w_hh.shape[1]
    G = 4 * H
    arrays = {name: aligned_zeros(shape, dtype) for name, shape in (
        ("h", (B, H)), ("c", (B, H)), ("out", (N, H)), ("gates", (N, G)),
        ("c_cache", (N, H)), ("h_prev", (N, H)))}
    with threadpool_limits(limits=1, user_api="blas"):
        used = _lstm.forward_train(x, lengths, w_ih, w_hh, np.ascontiguousarray(w_hh.T), bias,
                                   arrays["h"], arrays["c"], arrays["out"], 0, False,
                                   aligned_zeros(T * B * I, dtype), aligned_zeros(T * B * G, dtype),
                                   arrays["gates"], arrays["c_cache"], arrays["h_prev"], False,
                                   None, threads)
    return used, arrays


@pytest.mark.parametrize("level", _lstm.simd_levels())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("threads", "mode"), [(1, "auto"), (2, "rows"), (2, "units")])
def test_kernel_caches_are_the_same_streamed(level, dtype, threads, mode, stream_setting):
    if threads == 2 and (_lstm.kernel_threads() < 2 or usable_cpus() < 2):
        pytest.skip("needs two threads")
    old_level = _lstm.set_simd(level)
    try:
        _lstm.set_split_mode(mode)
        rng = np.random.default_rng(3)
        B, T, I, H = 18, 11, 4, 64
        lengths = np.ascontiguousarray(np.sort(rng.integers(T // 2, T + 1, size=B))[::-1],
                                       dtype=np.intc)
        lengths[:9] = T
        N, G = int(lengths.sum()), 4 * H
        weights = ((rng.normal(size=(G, I)) * 0.3).astype(dtype),
                   (rng.normal(size=(G, H)) * 0.1).astype(dtype),
                   (rng.normal(size=G) * 0.1).astype(dtype))
        x = rng.normal(size=(N, I)).astype(dtype)
        used_plain, plain = _kernel_forward(dtype, False, threads, lengths, weights, x)
        used, streamed = _kernel_forward(dtype, True, threads, lengths, weights, x)
    finally:
        _lstm.set_simd(old_level)
    assert used == used_plain == threads  # the loop was shared as asked
    for name in plain:
        np.testing.assert_array_equal(streamed[name], plain[name], err_msg=name)
    assert np.abs(streamed["gates"]).max() > 0  # something was kept


def test_language_model_lookup_path_is_the_same_streamed(stream_setting):
    text = "the cat sat on the mat; the dog sat on the log. " * 40
    fitted = []
    for stream in (False, True):
        _lstm.set_streaming(stream)
        lm = LSTMLanguageModel(embedding_dim=8, hidden_size=32, seq_len=16, batch_size=4,
                               max_iter=2, random_state=0).fit(text)
        fitted.append(lm)
    for a, b in zip(fitted[1].network_.parameters(), fitted[0].network_.parameters(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert fitted[1].loss_curve_ == fitted[0].loss_curve_
