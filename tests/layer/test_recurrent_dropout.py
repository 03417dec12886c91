"""Recurrent (variational) dropout of ``pylstm.LSTM``: one mask per sequence,
layer and direction on h_{t-1}, constant over time, in the kernels."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pylstm import LSTM, _lstm

CASES = [
    # (B, T, I, H, num_layers, bidirectional, lengths)
    (3, 5, 3, 4, 2, True, [5, 2, 4]),
    (2, 1, 2, 3, 1, False, None),  # T = 1: only h0 goes through the mask
    (1, 6, 3, 2, 2, False, None),  # batch 1 (gemv paths)
    (9, 4, 2, 3, 1, True, [4, 4, 3, 1, 2, 4, 4, 4, 2]),  # packed and BLAS steps
]


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences_with_a_fixed_mask(case, check_bptt):
    """The same seed gives the same masks, so the loss is a function of the
    inputs alone and BPTT's gradients must match its finite differences."""
    B, T, I, H, L, bidi, lengths = case
    rng = np.random.default_rng(sum(case[:5]))
    layer = LSTM(I, H, num_layers=L, bidirectional=bidi, dtype=np.float64, random_state=1,
                 recurrent_dropout=0.4)
    D = layer.num_directions
    X = rng.normal(size=(B, T, I))
    h0, c0 = rng.normal(size=(2, L * D, B, H))
    masks = layer._recurrent_masks(np.random.default_rng(5), B)
    assert (masks == 0).any() and (masks > 1).any()
    check_bptt(layer, X, lengths, h0, c0, seed=sum(case[:5]), mask_seed=5)


@pytest.mark.parametrize(("B", "L", "bidirectional", "lengths", "P"), [
    (1, 1, False, None, 0), (4, 1, False, None, 0), (12, 2, True, None, 0),
    (5, 2, True, [7, 3, 1, 7, 5], 0), (5, 2, True, [7, 3, 1, 7, 5], 2)])
def test_mask_is_the_same_at_every_step(numpy_lstm, B, L, bidirectional, lengths, P):
    """Against the NumPy reference given one (B, R) mask per layer and direction
    for every step, h0 included: a mask redrawn per step would not match."""
    rng = np.random.default_rng(B)
    T, I, H = 7, 3, 6
    layer = LSTM(I, H, num_layers=L, bidirectional=bidirectional, proj_size=P,
                 dtype=np.float64, random_state=0, recurrent_dropout=0.5)
    D, R = layer.num_directions, layer.output_size
    X = rng.normal(size=(B, T, I))
    h0 = rng.normal(size=(L * D, B, R))
    c0 = rng.normal(size=(L * D, B, H))
    masks = layer._recurrent_masks(np.random.default_rng(9), B)
    assert masks.shape == (L * D, B, R) and set(np.unique(masks)) == {0.0, 2.0}
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, h0=h0, c0=c0,
                                    rng=np.random.default_rng(9))
    ref_out, (ref_h, ref_c) = numpy_lstm(layer.state_dict()).forward(
        X, lengths=lengths, training=False, h0=h0, c0=c0, recurrent_masks=masks)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, ref_h, rtol=0, atol=1e-12)  # unmasked
    np.testing.assert_allclose(c_n, ref_c, rtol=0, atol=1e-12)


def test_masks_are_per_sequence_and_redrawn_per_call():
    """Identical sequences in one batch get different masks; the next call
    (the layer's own generator) draws new ones; a seed repeats them."""
    layer = LSTM(2, 8, dtype=np.float64, random_state=0, recurrent_dropout=0.3)
    X = np.tile(np.random.default_rng(0).normal(size=(1, 6, 2)), (2, 1, 1))
    first, _ = layer.forward(X)
    assert not np.allclose(first[0], first[1])
    second, _ = layer.forward(X)
    assert not np.allclose(first, second)
    a, _ = layer.forward(X, rng=3)
    b, _ = layer.forward(X, rng=np.random.RandomState(3))
    np.testing.assert_array_equal(a, b)
    c, _ = layer.forward(X, rng=np.random.default_rng(3))
    d, _ = layer.forward(X, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(c, d)
    # The first step's input term has no recurrent part, but h0 = 0: the
    # first step is the same with or without a mask.
    np.testing.assert_array_equal(first[:, 0], second[:, 0])


def test_inference_and_gate_inspection_drop_nothing():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 9, 3))
    plain = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, random_state=2)
    dropped = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, random_state=2,
                   recurrent_dropout=0.5)
    expected, (h_n, c_n) = plain.forward(X, training=False)
    out, (h, c) = dropped.forward(X, training=False)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(h, h_n)
    train_plain, _ = plain.forward(X)
    train_dropped, _ = dropped.forward(X)
    assert not np.allclose(train_plain, train_dropped)
    gates = dropped.gate_activations(X)
    np.testing.assert_array_equal(gates["l1"]["h"], expected[:, :, :4])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_final_states_are_the_unmasked_last_outputs(bidirectional):
    rng = np.random.default_rng(2)
    lengths = [6, 2, 5, 1, 6]
    X = rng.normal(size=(5, 6, 3)).astype(np.float32)
    layer = LSTM(3, 7, bidirectional=bidirectional, random_state=0, recurrent_dropout=0.6)
    out, (h_n, _) = layer.forward(X, lengths=lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(h_n[0, b], out[b, n - 1, :7])
        if bidirectional:
            np.testing.assert_array_equal(h_n[1, b], out[b, 0, 7:])


@pytest.mark.timeout(300)  # two threads and a barrier per step: a hang must fail
@pytest.mark.parametrize("split_mode", ["units", "rows"])
@pytest.mark.parametrize("lengths", [None, [30] + [12] * 15])
def test_split_loops_apply_the_same_masks(split_mode, lengths, monkeypatch):
    """Two threads sharing a time loop (by units or by rows) give one thread's
    results, and a mask of ones (p so small that 1 / (1 - p) rounds to 1 in
    float32) gives the results without dropout, bit for bit."""
    from pylstm import _layer, _threads

    rng = np.random.default_rng(3)
    X = rng.normal(size=(16, 30, 6)).astype(np.float32)
    d_out = rng.normal(size=(16, 30, 128)).astype(np.float32)

    def run(layer, seed=4):
        out, state = layer.forward(X, lengths=lengths, rng=seed)
        dX, grads = layer.backward(d_out)
        # The top layer's BPTT results are exact; below it, BPTT starts from
        # the input gradient of the layer above, which agrees to rounding only.
        return [out, *state, grads["h0"][2:], grads["c0"][2:], grads["bias_ih_l1"]]

    old_mode = _lstm.set_split_mode(split_mode)
    old_thresholds = _lstm.set_split_thresholds(False)
    plan = _threads.thread_plan
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            results = {}
            for threads in (1, 2):
                monkeypatch.setattr(_layer, "thread_plan",
                                    lambda *a, n=threads: plan(*a)[:2] + (n,))
                layer = LSTM(6, 64, num_layers=2, bidirectional=True, random_state=0,
                             recurrent_dropout=0.3)
                results[threads] = run(layer)
                ones = LSTM(6, 64, num_layers=2, bidirectional=True, random_state=0,
                            recurrent_dropout=1e-9)
                plain = LSTM(6, 64, num_layers=2, bidirectional=True, random_state=0)
                for a, b in zip(run(ones), run(plain), strict=True):
                    np.testing.assert_array_equal(a, b)
    finally:
        _lstm.set_split_mode(old_mode)
        _lstm.set_split_thresholds(old_thresholds)
    for a, b in zip(results[1], results[2], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("value", "exc"), [(1.0, ValueError), (-0.1, ValueError),
                                            (float("nan"), ValueError), ("0.1", TypeError),
                                            (True, TypeError)])
def test_bad_recurrent_dropout(value, exc):
    with pytest.raises(exc, match="recurrent_dropout"):
        LSTM(2, 3, recurrent_dropout=value)


def test_kernel_rejects_a_mask_of_the_wrong_shape(kernel_problem):
    p = kernel_problem(np.float64, 3, 4, 2, 5, 0)
    N, H, I = p["N"], p["H"], p["I"]
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\); \(3, 5\) needed"):
        _lstm.forward_train(p["x"], p["lengths"], p["w_ih"], p["w_hh"], p["w_hh_t"],
                            p["bias"], p["h0"].copy(), p["c0"].copy(), np.zeros((N, H)), 0,
                            False, np.zeros(4 * 3 * I), np.zeros(4 * 3 * 4 * H),
                            np.zeros((N, 4 * H)), np.zeros((N, H)), np.zeros((N, H)),
                            mask=np.ones((3, 4)))


def test_pickled_layer_keeps_its_dropout():
    import pickle

    layer = LSTM(2, 3, random_state=0, recurrent_dropout=0.2)
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.recurrent_dropout == 0.2
    X = np.ones((2, 4, 2))
    np.testing.assert_array_equal(copy.forward(X, rng=1)[0], layer.forward(X, rng=1)[0])
