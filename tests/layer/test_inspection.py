"""The gate inspection API of the layer and the estimators."""

import numpy as np
import pytest

from pylstm import LSTM, LSTMClassifier


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_gates_satisfy_the_cell_equations(bidirectional):
    rng = np.random.default_rng(0)
    layer = LSTM(3, 4, num_layers=2, bidirectional=bidirectional, dtype=np.float64,
                 random_state=0)
    X = rng.normal(size=(3, 6, 3))
    lengths = np.array([6, 2, 4])
    h0 = rng.normal(size=(2 * layer.num_directions, 3, 4))
    c0 = rng.normal(size=(2 * layer.num_directions, 3, 4))
    out, (h_n, c_n) = layer.forward(X, lengths, h0=h0, c0=c0, training=False)
    gates = layer.gate_activations(X, lengths, h0=h0, c0=c0)
    for k, (name, g) in enumerate(gates.items()):
        for kind in ("input", "forget", "output"):
            assert np.all((g[kind] >= 0) & (g[kind] <= 1))
        reverse = name.endswith("_reverse")
        for b, n in enumerate(lengths):
            steps = range(n - 1, -1, -1) if reverse else range(n)
            c_prev = c0[k, b]
            for t in steps:
                c_t = g["forget"][b, t] * c_prev + g["input"][b, t] * g["cell"][b, t]
                np.testing.assert_allclose(g["c"][b, t], c_t, atol=1e-12)
                np.testing.assert_allclose(g["h"][b, t], g["output"][b, t] * np.tanh(c_t),
                                           atol=1e-12)
                c_prev = c_t
            np.testing.assert_allclose(c_prev, c_n[k, b], atol=1e-12)
            assert np.all(g["forget"][b, n:] == 0)
    assert layer._cache is None


def test_estimator_gates_match_transform():
    rng = np.random.default_rng(1)
    X = [rng.normal(size=(n, 2)) for n in (5, 3, 7, 4)]
    y = [0, 1, 0, 1]
    clf = LSTMClassifier(hidden_size=5, num_layers=2, bidirectional=True, max_iter=2,
                         random_state=0).fit(X, y)
    gates = clf.gate_activations(X)
    assert sorted(gates) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    assert gates["l1"]["h"].shape == (4, 7, 5)
    last = np.array([len(x) - 1 for x in X])
    feats = np.concatenate([gates["l1"]["h"][np.arange(4), last],
                            gates["l1_reverse"]["h"][:, 0]], axis=1)
    np.testing.assert_allclose(feats, clf.transform(X), atol=1e-12)
