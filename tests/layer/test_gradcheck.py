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


def _loss_parts(rng, layer, B, T):
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    return (rng.normal(size=(B, T, D * H)), rng.normal(size=(L * D, B, H)),
            rng.normal(size=(L * D, B, H)))


def _loss(layer, X, lengths, h0, c0, w_out, w_h, w_c):
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, h0=h0, c0=c0, training=False)
    return np.sum(out * w_out) + np.sum(h_n * w_h) + np.sum(c_n * w_c)


@pytest.mark.parametrize("case", CASES)
def test_bptt_matches_finite_differences(case, gradcheck):
    numeric_grad, rel_err = gradcheck
    B, T, I, H, L, bidi, lengths = case
    rng = np.random.default_rng(sum(case[:5]))
    layer = LSTM(I, H, num_layers=L, bidirectional=bidi, dtype=np.float64, random_state=1)
    D = layer.num_directions
    X = rng.normal(size=(B, T, I))
    h0 = rng.normal(size=(L * D, B, H))
    c0 = rng.normal(size=(L * D, B, H))
    w_out, w_h, w_c = _loss_parts(rng, layer, B, T)

    out, (h_n, c_n) = layer.forward(X, lengths=lengths, h0=h0, c0=c0)
    dX, grads = layer.backward(w_out, d_h_n=w_h, d_c_n=w_c)

    def f():
        return _loss(layer, X, lengths, h0, c0, w_out, w_h, w_c)

    for name, param in layer._params.items():
        num = numeric_grad(f, param)
        assert rel_err(grads[name], num) < 1e-6, name
    assert rel_err(dX, numeric_grad(f, X)) < 1e-6
    assert rel_err(grads["h0"], numeric_grad(f, h0)) < 1e-6
    assert rel_err(grads["c0"], numeric_grad(f, c0)) < 1e-6
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert np.all(dX[b, n:] == 0)
            assert np.all(out[b, n:] == 0)


def test_zero_initial_states_get_gradients():
    rng = np.random.default_rng(0)
    layer = LSTM(2, 3, dtype=np.float64, random_state=0)
    X = rng.normal(size=(2, 4, 2))
    out, _ = layer.forward(X)
    _, grads = layer.backward(np.ones_like(out))
    assert grads["h0"].shape == (1, 2, 3)
    assert np.abs(grads["h0"]).max() > 0
    assert np.abs(grads["c0"]).max() > 0
