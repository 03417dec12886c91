"""LSTM with projections (``proj_size``): shapes, checks, gradients in float64,
and the one-step path. Parity with ``torch.nn.LSTM(proj_size=...)`` is in
test_torch_parity.py (the ``proj_*`` fixtures)."""

import pickle

import numpy as np
import pytest

from pylstm import LSTM

CASES = [
    # (B, T, I, H, P, num_layers, bidirectional, lengths, recurrent_dropout)
    (3, 5, 3, 4, 2, 2, True, [5, 2, 4], 0.0),
    (2, 1, 2, 3, 1, 1, False, None, 0.0),  # T = 1
    (1, 6, 3, 5, 3, 2, False, None, 0.0),  # batch 1
    (4, 4, 2, 4, 3, 1, True, [4, 1, 3, 4], 0.5),  # with recurrent dropout
]


@pytest.mark.parametrize("case", CASES)
def test_bptt_matches_finite_differences(case, check_bptt):
    B, T, I, H, P, L, bidi, lengths, p = case
    rng = np.random.default_rng(sum(case[:6]))
    layer = LSTM(I, H, num_layers=L, bidirectional=bidi, proj_size=P, dtype=np.float64,
                 random_state=1, recurrent_dropout=p)
    assert any(name.startswith("weight_hr") for name in layer.state_dict())
    D = layer.num_directions
    X = rng.normal(size=(B, T, I))
    h0 = rng.normal(size=(L * D, B, P))
    c0 = rng.normal(size=(L * D, B, H))
    check_bptt(layer, X, lengths, h0, c0, seed=sum(case[:6]), mask_seed=2 if p else None)


def test_shapes_and_parameters():
    layer = LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, random_state=0)
    assert layer.output_size == 2
    shapes = {k: v.shape for k, v in layer.state_dict().items()}
    assert list(shapes)[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                "weight_hr_l0"]
    assert shapes["weight_hh_l0"] == (24, 2)
    assert shapes["weight_hr_l1_reverse"] == (2, 6)
    assert shapes["weight_ih_l1"] == (24, 4)  # reads both directions' 2 units
    out, (h_n, c_n) = layer.forward(np.ones((5, 7, 3)), lengths=[7, 3, 1, 7, 2])
    assert out.shape == (5, 7, 4) and h_n.shape == (4, 5, 2) and c_n.shape == (4, 5, 6)
    assert not out[1, 3:].any()
    gates = layer.gate_activations(np.ones((5, 7, 3)))
    assert gates["l1_reverse"]["h"].shape == (5, 7, 2)
    assert gates["l1_reverse"]["c"].shape == (5, 7, 6)
    assert LSTM(3, 6).output_size == 6


def test_step_matches_forward():
    rng = np.random.default_rng(0)
    layer = LSTM(3, 5, num_layers=2, proj_size=2, dtype=np.float64, random_state=0)
    X = rng.normal(size=(4, 6, 3))
    out, (h_n, c_n) = layer.forward(X, training=False)
    h = c = None
    for t in range(6):
        o, (h, c) = layer.step(X[:, t], h, c)
        np.testing.assert_allclose(o, out[:, t], rtol=0, atol=1e-14)
    np.testing.assert_allclose(h, h_n, rtol=0, atol=1e-14)
    np.testing.assert_allclose(c, c_n, rtol=0, atol=1e-14)


@pytest.mark.parametrize(("proj_size", "exc", "match"), [
    (5, ValueError, r"proj_size must be smaller than hidden_size \(5\), got 5"),
    (-1, ValueError, "proj_size must be >= 0"),
    (1.5, TypeError, "proj_size must be an integer"),
])
def test_bad_proj_size(proj_size, exc, match):
    with pytest.raises(exc, match=match):
        LSTM(2, 5, proj_size=proj_size)


def test_state_shapes_are_checked_by_width():
    layer = LSTM(2, 5, proj_size=3)
    X = np.ones((2, 4, 2))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 3\), got \(1, 2, 5\)"):
        layer.forward(X, h0=np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match=r"c0 must have shape \(1, 2, 5\), got \(1, 2, 3\)"):
        layer.forward(X, c0=np.zeros((1, 2, 3)))
    layer.forward(X)
    with pytest.raises(ValueError, match=r"d_out must have shape \(2, 4, 3\)"):
        layer.backward(np.zeros((2, 4, 5)))


def test_layer_pickled_before_projections_loads():
    layer = LSTM(2, 3, random_state=0)
    state = layer.__getstate__()
    del state["proj_size"], state["recurrent_dropout"], state["_dropout_rng"]
    old = LSTM.__new__(LSTM)
    old.__setstate__(state)
    assert old.proj_size == 0 and old.recurrent_dropout == 0.0
    X = np.ones((1, 3, 2))
    np.testing.assert_array_equal(old.forward(X)[0], layer.forward(X)[0])
    copy = pickle.loads(pickle.dumps(LSTM(2, 3, proj_size=1, random_state=0)))
    assert copy.proj_size == 1
