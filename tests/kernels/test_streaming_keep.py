"""The training forward's kept gates and states by streaming stores.

Past ``STREAM_KEEP_BYTES`` (``src/_tuning.pxi``) a training forward writes
what BPTT reads back (the activated gates, c_t and h_{t-1}) with stores that
bypass the caches. Only where the bytes go changes, never their values: the
caches, outputs, states and every gradient are compared bit for bit with
plain stores, for both dtypes, one and two threads (split by rows and by
units), both directions, lengths that shrink the batch, rows whose kept
arrays are not aligned to the vector width, and the language model's
lookup path.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import LSTM, LSTMLanguageModel, _lstm

# Two threads share some of these loops: a hang must fail the test.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stream_setting():
    """Restore the threshold and the split settings after the test."""
    old = _lstm.set_stream_threshold(8 << 20)
    old_split = _lstm.set_split_thresholds(False)
    old_mode = _lstm.set_split_mode("auto")
    yield
    _lstm.set_stream_threshold(old)
    _lstm.set_split_thresholds(old_split)
    _lstm.set_split_mode(old_mode)


def test_threshold_setting_returns_the_old_one_and_rejects_nonsense(stream_setting):
    assert _lstm.set_stream_threshold(0) == 8 << 20
    assert _lstm.set_stream_threshold(-1) == 0
    with pytest.raises(ValueError, match="nbytes must be -1 or more"):
        _lstm.set_stream_threshold(-2)
    assert _lstm.set_stream_threshold(8 << 20) == -1


def _train_step(dtype, threshold, threads, H, I, bidirectional=True, seed=0):
    """Everything a training step of a two-layer layer gives, the kept
    arrays streamed (threshold 0) or not (-1)."""
    _lstm.set_stream_threshold(threshold)
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
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["rows", "units"])
@pytest.mark.parametrize(("H", "I"), [(64, 5), (40, 3)])
def test_streamed_training_step_equals_plain_stores(dtype, threads, mode, H, I,
                                                    stream_setting):
    # H = 40: rows of the kept arrays start off the vector alignment, where
    # the kernels fall back to plain stores within the same call.
    _lstm.set_split_mode(mode)
    plain = _train_step(dtype, -1, threads, H, I)
    streamed = _train_step(dtype, 0, threads, H, I)
    for a, b in zip(streamed, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_caches_are_the_same_streamed(dtype, stream_setting):
    rng = np.random.default_rng(3)
    B, T, I, H = 9, 11, 4, 48
    lengths = np.ascontiguousarray(np.sort(rng.integers(1, T + 1, size=B))[::-1],
                                   dtype=np.intc)
    lengths[0] = T
    N, G = int(lengths.sum()), 4 * H
    w_ih = (rng.normal(size=(G, I)) * 0.3).astype(dtype)
    w_hh = (rng.normal(size=(G, H)) * 0.1).astype(dtype)
    bias = (rng.normal(size=G) * 0.1).astype(dtype)
    x = rng.normal(size=(N, I)).astype(dtype)
    results = []
    for threshold in (-1, 0):
        _lstm.set_stream_threshold(threshold)
        arrays = dict(h=np.zeros((B, H), dtype), c=np.zeros((B, H), dtype),
                      out=np.zeros((N, H), dtype), gates=np.zeros((N, G), dtype),
                      c_cache=np.zeros((N, H), dtype), h_prev=np.zeros((N, H), dtype))
        _lstm.forward_train(x, lengths, w_ih, w_hh, np.ascontiguousarray(w_hh.T), bias,
                            arrays["h"], arrays["c"], arrays["out"], 0, False,
                            np.zeros(T * B * I, dtype), np.zeros(T * B * G, dtype),
                            arrays["gates"], arrays["c_cache"], arrays["h_prev"], False,
                            None, 1)
        results.append(arrays)
    for name in results[0]:
        np.testing.assert_array_equal(results[1][name], results[0][name], err_msg=name)
    assert np.abs(results[1]["gates"]).max() > 0  # something was kept


def test_language_model_lookup_path_is_the_same_streamed(stream_setting):
    text = "the cat sat on the mat; the dog sat on the log. " * 40
    fitted = []
    for threshold in (-1, 0):
        _lstm.set_stream_threshold(threshold)
        lm = LSTMLanguageModel(embedding_dim=8, hidden_size=32, seq_len=16, batch_size=4,
                               max_iter=2, random_state=0).fit(text)
        fitted.append(lm)
    for a, b in zip(fitted[1].network_.parameters(), fitted[0].network_.parameters(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert fitted[1].loss_curve_ == fitted[0].loss_curve_
