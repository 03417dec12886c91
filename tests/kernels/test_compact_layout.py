"""The compact time-major layout of per-step arrays, and the kernels' guards.

Every per-step array the kernels read or write (layer inputs and outputs,
the BPTT cache, gradients) holds one row per valid step: time ``t`` holds
the ``n(t)`` rows still active, in the order of the batch sorted by
decreasing length (the layout of PyTorch's ``PackedSequence``). The kernels
check the shapes they are given before any work, so that a wrong call raises
instead of reading or writing out of bounds.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylstm import LSTM, _lstm
from pylstm._layer import _compact_rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=10), st.integers(0, 3))
def test_compact_rows_are_the_valid_steps_time_major(lens, extra_T):
    lens = np.array(lens)
    T = int(lens.max()) + extra_T
    order = np.argsort(-lens, kind="stable")
    lens_sorted = lens[order]
    expected = [order[b] * T + t
                for t in range(int(lens_sorted[0]))
                for b in range(len(lens)) if lens_sorted[b] > t]
    rows = _compact_rows(lens_sorted, order, T)
    np.testing.assert_array_equal(rows, expected)
    assert rows.size == lens.sum()


def test_padding_costs_no_work_and_reads_no_values():
    """A batch with one long row: outputs past each length are zero, and a
    NaN there changes nothing (the compact layout never reads it)."""
    rng = np.random.default_rng(0)
    layer = LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, random_state=0)
    X = rng.normal(size=(4, 30, 3))
    lengths = np.array([30, 2, 7, 1])
    out, (h, c) = layer.forward(X, lengths=lengths)
    dirty = X.copy()
    for b, n in enumerate(lengths):
        dirty[b, n:] = np.nan
    out2, (h2, c2) = layer.forward(dirty, lengths=lengths)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h, h2)
    for b, n in enumerate(lengths):
        assert not out[b, n:].any()
    # Each row alone gives the same result (nothing leaks between rows).
    for b, n in enumerate(lengths):
        alone, _ = layer.forward(X[b:b + 1, :n])
        np.testing.assert_allclose(out[b, :n], alone[0], rtol=0, atol=1e-12)


def _forward_args(B=3, T=4, I=2, H=3, dtype=np.float64):
    lengths = np.array([T, T - 1, 1][:B], dtype=np.intc)
    N = int(lengths.sum())
    G = 4 * H
    return dict(
        x=np.zeros((N, I), dtype), lengths=lengths, w_ih=np.zeros((G, I), dtype),
        w_hh=np.zeros((G, H), dtype), w_hh_t=np.zeros((H, G), dtype), bias=np.zeros(G, dtype),
        h=np.zeros((B, H), dtype), c=np.zeros((B, H), dtype), out=np.zeros((N, H), dtype),
        offset=0, reverse=False, xbuf=np.zeros(T * B * I, dtype),
        gbuf=np.zeros(T * B * G, dtype), gates=np.zeros((N, G), dtype),
        c_cache=np.zeros((N, H), dtype), h_prev_cache=np.zeros((N, H), dtype))


def _train(args):
    return _lstm.forward_train(*args.values())


def test_forward_train_accepts_the_right_shapes():
    args = _forward_args()
    args["bias"][:] = 1.0
    args["out"][:] = np.nan
    assert _train(args) in (1, 2)  # the threads that ran the loop
    # Zero weights and a bias of 1: every gate is the same at every step, so
    # c_t = s c_{t-1} + s tanh(1) and h_t = s tanh(c_t), with s = sigmoid(1),
    # in the time-major rows of the active sequences (lengths 4, 3, 1).
    s, c, expected = 1 / (1 + np.exp(-1.0)), 0.0, []
    for t in range(4):
        c = s * c + s * np.tanh(1.0)
        expected += [s * np.tanh(c)] * int((args["lengths"] > t).sum())
    np.testing.assert_allclose(args["out"], np.repeat(np.array(expected)[:, None], 3, axis=1),
                               rtol=1e-12)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("x", np.zeros((7, 2)), "x has shape"),
    ("out", np.zeros((8, 2)), "out has shape"),
    ("gates", np.zeros((7, 12)), "gates has shape"),
    ("c_cache", np.zeros((8, 2)), "c_cache has shape"),
    ("h_prev_cache", np.zeros((2, 3)), "h_prev_cache has shape"),
    ("lengths", np.array([3, 4, 1], dtype=np.intc), "decreasing"),
    ("lengths", np.array([4, 3, 0], dtype=np.intc), "at least 1"),
    ("lengths", np.zeros(0, dtype=np.intc), "at least one row"),
    ("h", np.zeros((2, 3)), "one row per sequence"),
    ("xbuf", np.zeros(1), "work buffers"),
    ("w_ih", np.zeros((12, 5)), "features"),
    ("offset", 1, "out has shape"),
])
def test_forward_train_rejects_wrong_shapes(name, value, message):
    args = _forward_args()
    args[name] = value
    with pytest.raises(ValueError, match=message):
        _train(args)


def test_batch_first_needs_bf_rows_inside_the_array():
    args = _forward_args()
    B, T, H = 3, 4, 3
    args["out"] = np.zeros((B * T, H))
    with pytest.raises(ValueError, match="needs bf_rows"):
        _lstm.forward_train(*args.values(), True)
    with pytest.raises(ValueError, match="outside out"):
        _lstm.forward_train(*args.values(), True, np.array([0, 10, 8], dtype=np.intp))
    _lstm.forward_train(*args.values(), True, np.array([0, 4, 8], dtype=np.intp))


def test_backward_and_input_gradient_reject_wrong_shapes():
    args = _forward_args()
    _train(args)
    N, G, H = args["gates"].shape[0], 12, 3
    common = (args["x"], args["lengths"], args["w_ih"], args["w_hh"], np.zeros((3, H)),
              args["gates"], args["c_cache"], args["h_prev_cache"])
    d_out = np.zeros((N, H))
    tail = (np.zeros((3, H)), np.zeros((3, H)))
    grads = (np.zeros((G, 2)), np.zeros((G, H)), np.zeros(G), np.zeros((3, G)))
    with pytest.raises(ValueError, match="dx has shape"):
        _lstm.backward(*common, d_out, 0, False, *tail, np.zeros((N - 1, 2)), 0.0, *grads)
    with pytest.raises(ValueError, match="do not match"):
        _lstm.backward(*common, d_out, 0, False, *tail, np.zeros((N, 2)), 0.0,
                       np.zeros((G, 3)), *grads[1:])
    # Without dx, any array fills its slot.
    _lstm.backward(*common, d_out, 0, False, *tail, np.zeros((1, 1)), 0.0, *grads,
                   False, None, False)
    with pytest.raises(ValueError, match="do not match"):
        _lstm.input_gradient(args["gates"], args["w_ih"], np.zeros((N, 3)), 0.0)
    dx = np.ones((N, 2))
    _lstm.input_gradient(args["gates"], args["w_ih"], dx, 1.0)
    np.testing.assert_array_equal(dx, 1.0)  # zero weights: beta * dx
