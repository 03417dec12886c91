"""Parity of pylstm.LSTM with torch.nn.LSTM on committed reference fixtures.

The fixtures in ``tests/data/torch_ref/*.npz`` are written by
``tests/data/make_torch_reference.py`` (the only place torch is used); this
module needs numpy and pylstm only. Each fixture holds a torch state dict
(``param__<name>``), inputs, an upstream gradient, and torch's outputs and
gradients (``grad__<name>``, ``grad__x``, ``grad__h0``, ``grad__c0``) for the
loss ``sum(out * d_out) + sum(h_n * d_h_n) + sum(c_n * d_c_n)``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import pylstm

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "torch_ref"
FIXTURES = sorted(DATA_DIR.glob("*.npz"))

# max|a - b| / max|ref| must stay below this
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

PARAM = "param__"
GRAD = "grad__"


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def _config(ref: dict[str, np.ndarray]) -> dict:
    dtype = np.dtype(str(ref["dtype"]))
    return {
        "input_size": int(ref["input_size"]),
        "hidden_size": int(ref["hidden_size"]),
        "num_layers": int(ref["num_layers"]),
        "bidirectional": bool(ref["bidirectional"]),
        "proj_size": int(ref["proj_size"]) if "proj_size" in ref else 0,
        "dtype": dtype,
    }


def _inputs(ref: dict[str, np.ndarray]) -> dict:
    has_lengths = bool(ref["has_lengths"])
    has_h0 = bool(ref["has_h0"])
    return {
        "lengths": ref["lengths"].copy() if has_lengths else None,
        "h0": ref["h0"].copy() if has_h0 else None,
        "c0": ref["c0"].copy() if has_h0 else None,
    }


def _state_dict(ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key[len(PARAM) :]: ref[key].copy() for key in ref if key.startswith(PARAM)}


def _make_layer(ref: dict[str, np.ndarray]):
    cfg = _config(ref)
    layer = pylstm.LSTM(
        cfg["input_size"],
        cfg["hidden_size"],
        num_layers=cfg["num_layers"],
        bidirectional=cfg["bidirectional"],
        proj_size=cfg["proj_size"],
        dtype=cfg["dtype"].type,
    )
    layer.load_state_dict(_state_dict(ref))
    return layer


def _assert_close(actual, expected: np.ndarray, what: str) -> None:
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(expected.dtype).tiny)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)) / scale
    tol = RTOL[expected.dtype]
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.0e} (max|ref| = {scale:.3e})"


def _assert_zero_past_lengths(out: np.ndarray, lengths) -> None:
    if lengths is None:
        return
    for b, n in enumerate(lengths):
        assert not np.any(out[b, int(n) :]), f"out[{b}, {int(n)}:] is not zero"


def test_fixtures_present():
    assert FIXTURES, f"no torch reference fixtures in {DATA_DIR}"
    dtypes = {str(_load(p)["dtype"]) for p in FIXTURES}
    assert dtypes == {"float32", "float64"}
    projected = {str(_load(p)["dtype"]) for p in FIXTURES if "proj_size" in _load(p)}
    assert projected == {"float32", "float64"}


@pytest.fixture(params=FIXTURES, ids=[p.stem for p in FIXTURES])
def ref(request) -> dict[str, np.ndarray]:
    return _load(request.param)


def test_state_dict_matches_torch_names(ref):
    layer = _make_layer(ref)
    expected = _state_dict(ref)
    sd = layer.state_dict()
    assert set(sd) == set(expected)
    for name, arr in expected.items():
        _assert_close(sd[name], arr, f"state_dict[{name!r}]")


def test_forward_backward_match_torch(ref):
    layer = _make_layer(ref)
    inputs = _inputs(ref)
    x = ref["x"].copy()
    out, (h_n, c_n) = layer.forward(x, training=True, **inputs)
    _assert_close(out, ref["out"], "out")
    _assert_close(h_n, ref["h_n"], "h_n")
    _assert_close(c_n, ref["c_n"], "c_n")
    _assert_zero_past_lengths(np.asarray(out), inputs["lengths"])

    dx, grads = layer.backward(
        ref["d_out"].copy(), d_h_n=ref["d_h_n"].copy(), d_c_n=ref["d_c_n"].copy()
    )
    _assert_close(dx, ref["grad__x"], "dx")
    param_names = set(_state_dict(ref))
    assert set(grads) == param_names | {"h0", "c0"}
    for name in sorted(param_names) + ["h0", "c0"]:
        _assert_close(grads[name], ref[GRAD + name], f"grads[{name!r}]")

    # the call must not have modified its inputs
    np.testing.assert_array_equal(x, ref["x"])
    for key in ("lengths", "h0", "c0"):
        if inputs[key] is not None:
            np.testing.assert_array_equal(inputs[key], ref[key])


def test_inference_forward_matches_training(ref):
    layer = _make_layer(ref)
    inputs = _inputs(ref)
    out_t, (h_t, c_t) = layer.forward(ref["x"].copy(), training=True, **inputs)
    out_i, (h_i, c_i) = layer.forward(ref["x"].copy(), training=False, **inputs)
    for name, a_inf, a_train in (("out", out_i, out_t), ("h_n", h_i, h_t), ("c_n", c_i, c_t)):
        _assert_close(a_inf, ref[name], f"{name} (training=False)")
        _assert_close(a_inf, np.asarray(a_train), f"{name} (training=False vs True)")
    _assert_zero_past_lengths(np.asarray(out_i), inputs["lengths"])
