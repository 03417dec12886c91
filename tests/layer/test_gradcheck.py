"""Finite-difference gradient checks of BPTT in float64."""

import numpy as np
import pytest

from pylstm import LSTM

CASES = [
    # (B, T, I, H, num_layers, bidirectional, lengths)
    (3, 5, 3, 4, 2, True, [5, 2, 4]),
    (2, 1, 2, 3, 2, True, None),  # T = 1
    (3, 4, 2, 1, 2, True, [1, 4, 3]),  # hidden_size = 1
    (1, 6, 3, 2, 1, False, None),  # batch 1 (gemv paths)
    (1, 4, 2, 3, 2, True, [3]),  # batch 1, padded
    (4, 3, 1, 2, 1, True, [3, 3, 1, 2]),
]


@pytest.mark.parametrize("case", CASES)
def test_bptt_matches_finite_differences(case, check_bptt):
    B, T, I, H, L, bidi, lengths = case
    rng = np.random.default_rng(sum(case[:5]))
    layer = LSTM(I, H, num_layers=L, bidirectional=bidi, dtype=np.float64, random_state=1)
    D = layer.num_directions
    X = rng.normal(size=(B, T, I))
    h0, c0 = rng.normal(size=(2, L * D, B, H))
    check_bptt(layer, X, lengths, h0, c0, seed=sum(case[:5]))
    if lengths is not None:
        out, _ = layer.forward(X, lengths=lengths)
        for b, n in enumerate(lengths):
            assert not out[b, n:].any()


def test_zero_initial_states_get_gradients():
    rng = np.random.default_rng(0)
    layer = LSTM(2, 3, dtype=np.float64, random_state=0)
    X = rng.normal(size=(2, 4, 2))
    out, _ = layer.forward(X)
    _, grads = layer.backward(np.ones_like(out))
    assert grads["h0"].shape == (1, 2, 3)
    assert np.abs(grads["h0"]).max() > 0
    assert np.abs(grads["c0"]).max() > 0
