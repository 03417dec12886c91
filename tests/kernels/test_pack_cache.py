"""The packed weights that inference keeps from call to call.

``forward_infer(..., pack_cache=...)`` packs W_hh and W_ih into the caller's
buffer together with copies of what it packed, and reuses the packs while the
weights are byte for byte the same. A reuse must never serve stale weights:
weights changed in place between calls (as optimizers do) are repacked.
"""

import numpy as np
import pytest

from pylstm import LSTM, _lstm
from pylstm._workspace import Workspace


def _problem(dtype, B=8, T=9, I=5, H=16, seed=0):
    # B = 1 or B >= 8 and T > 2: the calls that pack (``_lstm._packs``).
    rng = np.random.default_rng(seed)
    G = 4 * H
    w_hh = (rng.normal(size=(G, H)) * 0.3).astype(dtype)
    return dict(
        x=rng.normal(size=(B * T, I)).astype(dtype),
        lengths=np.full(B, T, dtype=np.intc),
        w_ih=(rng.normal(size=(G, I)) * 0.3).astype(dtype), w_hh=w_hh,
        w_hh_t=np.ascontiguousarray(w_hh.T),
        bias=(rng.normal(size=G) * 0.1).astype(dtype),
        h=rng.normal(size=(B, H)).astype(dtype), c=rng.normal(size=(B, H)).astype(dtype),
    )


def _infer(p, cache):
    B, H = p["h"].shape
    T, I = int(p["lengths"][0]), p["x"].shape[1]
    h, c = p["h"].copy(), p["c"].copy()
    out = np.empty((B * T, H), p["x"].dtype)
    K = min(4, T)
    _lstm.forward_infer(p["x"], p["lengths"], p["w_ih"], p["w_hh"], p["w_hh_t"], p["bias"],
                        h, c, out, 0, False, np.empty(K * B * I, p["x"].dtype),
                        np.empty(K * B * 4 * H, p["x"].dtype), False, False, None, 1, cache)
    return out, h, c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 8])
def test_cache_gives_the_same_results_and_follows_weight_changes(dtype, B):
    p = _problem(dtype, B=B)
    I, H = p["x"].shape[1], p["h"].shape[1]
    cache = np.random.default_rng(1).normal(size=_lstm.pack_cache_size(I, H, dtype))
    cache = cache.astype(dtype)  # garbage to start with
    reference = _infer(p, None)
    for _ in range(2):  # the first call packs, the second reuses
        for got, want in zip(_infer(p, cache), reference, strict=True):
            np.testing.assert_array_equal(got, want)
    # In place, as an optimizer step does: one entry of each matrix in turn.
    for name in ("w_hh", "w_ih"):
        p[name][3, 1] += 0.25
        p["w_hh_t"] = np.ascontiguousarray(p["w_hh"].T)
        fresh = _infer(p, None)
        assert not np.array_equal(fresh[0], reference[0])
        for got, want in zip(_infer(p, cache), fresh, strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_short_cache_is_not_used():
    p = _problem(np.float64)
    I, H = p["x"].shape[1], p["h"].shape[1]
    short = np.full(_lstm.pack_cache_size(I, H, np.float64) - 1, 7.0)
    for got, want in zip(_infer(p, short), _infer(p, None), strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.all(short == 7.0)


@pytest.mark.parametrize(("bidirectional", "num_layers"), [(False, 2), (True, 1), (True, 2)])
def test_layer_inference_after_in_place_updates(bidirectional, num_layers):
    """Fresh layers made one after another may get the memory of freed caches.

    Their left-over bytes once held copies of equal weights next to packs
    that had since been overwritten: the workspace zero-fills new caches.
    """
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 12, 3))

    def new_layer():
        return LSTM(3, 16, num_layers=num_layers, bidirectional=bidirectional,
                    random_state=0)

    layer = new_layer()
    first, _ = layer.forward(X, training=False)
    np.testing.assert_array_equal(layer.forward(X, training=False)[0], first)
    for _ in range(2):
        for name, param in zip(layer.state_dict(), layer.parameters(), strict=True):
            param *= 1.1  # in place, as the optimizers update
            fresh = new_layer()
            fresh.load_state_dict(layer.state_dict())
            np.testing.assert_array_equal(layer.forward(X, training=False)[0],
                                          fresh.forward(X, training=False)[0], err_msg=name)


def test_workspace_zero_fills_new_kept_buffers():
    """The layer's caches start as zeros (copies of all-zero weights, whose packs
    are zeros too), never as left-over bytes, and keep their contents after."""
    ws = Workspace()
    for _ in range(20):  # recycled memory is typically non-zero
        freed = np.full(4096, 3.0)
        del freed
        with ws.borrow() as arrays:
            kept = arrays.kept("packs0", (4096,), np.float64)
            assert not kept.any()
            kept[:] = 5.0
        with ws.borrow() as arrays:
            assert np.all(arrays.kept("packs0", (4096,), np.float64) == 5.0)
            assert np.all(arrays.kept("packs0", (100,), np.float64) == 5.0)
            assert not arrays.kept("packs0", (5000,), np.float64).any()  # grown: new
        ws.clear()
