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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("B", "T", "V", "I", "H", "L", "dropout"),
                         [(3, 5, 4, 3, 4, 2, 0.0), (16, 6, 9, 5, 64, 1, 0.3),
                          (2, 3, 3, 2, 260, 1, 0.0)])
def test_lookup_gradients_equal_the_multiplied_ones(dtype, B, T, V, I, H, L, dropout):
    """A forward whose first input projection is looked up (``lookup``, the
    language model's) gives the outputs and gradients of the same layer fed
    ``embedding[tokens]``, and as its input gradient the embedding's: the
    input gradients of each token's rows summed. Hidden sizes on both sides
    of the direct weight-gradient kernel's width (256)."""
    rng = np.random.default_rng(H)
    layer = LSTM(I, H, num_layers=L, recurrent_dropout=dropout, dtype=dtype, random_state=1)
    emb = rng.normal(size=(V, I)).astype(dtype)
    tokens = rng.integers(0, V, size=(B, T))
    tokens[0, :V] = np.arange(V)[:T]  # most tokens used
    X = emb[tokens]
    h0, c0 = rng.normal(size=(2, L, B, H)).astype(dtype)
    d_out = rng.normal(size=(B, T, H)).astype(dtype)
    d_h, d_c = rng.normal(size=(2, L, B, H)).astype(dtype)
    results = []
    # The lookup given X, and without it (the language model's call: the rows
    # are never read).
    for x_in, lookup in ((X, None), (X, (emb, tokens)), (None, (emb, tokens))):
        out, (h_n, c_n) = layer._forward(x_in, None, h0, c0, True, dropout > 0,
                                         np.random.RandomState(0), lookup)
        d_in, grads = layer._backward(d_out, d_h, d_c, True)
        results.append((out, h_n, c_n, d_in, grads))
    (out, h_n, c_n, dX, ref), (out2, h_n2, c_n2, d_emb, got), without_x = results
    for a, b in zip((out2, h_n2, c_n2, d_emb), without_x[:4], strict=True):
        np.testing.assert_array_equal(b, a)
    for name in got:
        np.testing.assert_array_equal(without_x[4][name], got[name], err_msg=name)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for a, b in ((out, out2), (h_n, h_n2), (c_n, c_n2)):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    expected = np.zeros((V, I))
    np.add.at(expected, tokens.reshape(-1), dX.reshape(-1, I).astype(np.float64))
    assert d_emb.shape == (V, I) and d_emb.dtype == dtype
    np.testing.assert_allclose(d_emb, expected, rtol=tol, atol=tol)
    assert set(got) == set(ref)
    for name in ref:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(got[name], ref[name], rtol=tol, atol=tol * scale,
                                   err_msg=name)
