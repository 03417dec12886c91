"""Property-based tests of :class:`pylstm.LSTM` over random small shapes and lengths."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylstm import LSTM

SETTINGS = settings(max_examples=25, deadline=None, database=None)


@st.composite
def configs(draw, max_t=7, max_layers=2, bidirectional=None, max_in=3):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, max_t))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return {
        "B": B,
        "T": T,
        "n_in": draw(st.integers(1, max_in)),
        "H": draw(st.integers(1, 5)),
        "num_layers": draw(st.integers(1, max_layers)),
        "bidirectional": (draw(st.booleans()) if bidirectional is None else bidirectional),
        "lengths": lengths,
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _layer(cfg, dtype=np.float64, **kwargs):
    return LSTM(cfg["n_in"], cfg["H"], num_layers=cfg["num_layers"],
                bidirectional=cfg["bidirectional"], dtype=dtype, random_state=cfg["seed"],
                **kwargs)


def _data(cfg, layer):
    """Inputs, initial states and output gradients for cfg."""
    rng = np.random.default_rng(cfg["seed"])
    B, T = cfg["B"], cfg["T"]
    n_states = layer.num_layers * layer.num_directions
    H = layer.hidden_size
    return {
        "X": rng.normal(size=(B, T, cfg["n_in"])),
        "h0": rng.normal(size=(n_states, B, H)),
        "c0": rng.normal(size=(n_states, B, H)),
        "d_out": rng.normal(size=(B, T, layer.num_directions * H)),
        "d_h_n": rng.normal(size=(n_states, B, H)),
        "d_c_n": rng.normal(size=(n_states, B, H)),
    }


def _close(actual, desired, tol=1e-12):
    np.testing.assert_allclose(actual, desired, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------- (a) batches
@SETTINGS
@given(configs())
def test_batch_equals_each_sequence_alone(cfg):
    layer = _layer(cfg)
    d = _data(cfg, layer)
    lengths = cfg["lengths"]
    out, (h_n, c_n) = layer.forward(d["X"], lengths=lengths, h0=d["h0"], c0=d["c0"])
    dX, grads = layer.backward(d["d_out"], d["d_h_n"], d["d_c_n"])
    summed = {name: np.zeros_like(g) for name, g in grads.items() if name not in ("h0", "c0")}
    for b, n in enumerate(lengths):
        s_out, (s_h, s_c) = layer.forward(d["X"][b:b + 1, :n], h0=d["h0"][:, b:b + 1],
                                          c0=d["c0"][:, b:b + 1])
        _close(out[b, :n], s_out[0])
        _close(h_n[:, b], s_h[:, 0])
        _close(c_n[:, b], s_c[:, 0])
        assert not out[b, n:].any()  # padding is exactly zero

        s_dX, s_grads = layer.backward(d["d_out"][b:b + 1, :n], d["d_h_n"][:, b:b + 1],
                                       d["d_c_n"][:, b:b + 1])
        _close(dX[b, :n], s_dX[0])
        assert not dX[b, n:].any()
        _close(grads["h0"][:, b], s_grads["h0"][:, 0])
        _close(grads["c0"][:, b], s_grads["c0"][:, 0])
        for name in summed:
            summed[name] += s_grads[name]
    # Parameter gradients of a batch are the sums over its sequences.
    for name, g in summed.items():
        _close(grads[name], g, tol=1e-10)


@SETTINGS
@given(configs())
def test_order_of_sequences_does_not_matter(cfg):
    layer = _layer(cfg)
    d = _data(cfg, layer)
    perm = np.random.default_rng(cfg["seed"] + 1).permutation(cfg["B"])
    lengths = np.asarray(cfg["lengths"])
    out, (h_n, c_n) = layer.forward(d["X"], lengths=lengths, h0=d["h0"], c0=d["c0"],
                                    training=False)
    p_out, (p_h, p_c) = layer.forward(d["X"][perm], lengths=lengths[perm], h0=d["h0"][:, perm],
                                      c0=d["c0"][:, perm], training=False)
    _close(p_out, out[perm])
    _close(p_h, h_n[:, perm])
    _close(p_c, c_n[:, perm])


# ---------------------------------------------------------------------------- (b) reverse
@SETTINGS
@given(configs(max_layers=1, bidirectional=True), st.booleans())
def test_bidirectional_halves_are_unidirectional_layers(cfg, training):
    bi = _layer(cfg)
    d = _data(cfg, bi)
    H, lengths = cfg["H"], cfg["lengths"]
    out, (h_n, c_n) = bi.forward(d["X"], lengths=lengths, h0=d["h0"], c0=d["c0"],
                                 training=training)
    sd = bi.state_dict()
    uni_cfg = dict(cfg, bidirectional=False)
    fwd, rev = _layer(uni_cfg), _layer(uni_cfg)
    fwd.load_state_dict({k: v for k, v in sd.items() if not k.endswith("_reverse")})
    rev.load_state_dict({k[:-len("_reverse")]: v for k, v in sd.items() if k.endswith("_reverse")})

    f_out, (f_h, f_c) = fwd.forward(d["X"], lengths=lengths, h0=d["h0"][:1], c0=d["c0"][:1])
    _close(out[..., :H], f_out)
    _close(h_n[0], f_h[0])
    _close(c_n[0], f_c[0])

    # Time-flip each sequence's valid part; the padding stays at the end.
    X_flip = np.zeros_like(d["X"])
    for b, n in enumerate(lengths):
        X_flip[b, :n] = d["X"][b, :n][::-1]
    r_out, (r_h, r_c) = rev.forward(X_flip, lengths=lengths, h0=d["h0"][1:], c0=d["c0"][1:])
    for b, n in enumerate(lengths):
        _close(out[b, :n, H:], r_out[b, :n][::-1])
        assert not out[b, n:].any()
    _close(h_n[1], r_h[0])
    _close(c_n[1], r_c[0])


# ---------------------------------------------------------------------------- (c) modes
def _assert_modes_identical(layer, X, lengths, h0=None, c0=None):
    tr_out, (tr_h, tr_c) = layer.forward(X, lengths=lengths, h0=h0, c0=c0, training=True)
    in_out, (in_h, in_c) = layer.forward(X, lengths=lengths, h0=h0, c0=c0, training=False)
    np.testing.assert_array_equal(in_out, tr_out)
    np.testing.assert_array_equal(in_h, tr_h)
    np.testing.assert_array_equal(in_c, tr_c)


@SETTINGS
@given(configs(max_t=40, max_in=12), st.sampled_from([np.float32, np.float64]))
def test_training_and_inference_are_bit_identical(cfg, dtype):
    # T up to 40 crosses the inference kernel's 32-step input-projection chunks;
    # input sizes past 8 reach BLAS code paths whose rounding depends on the GEMM's size.
    layer = _layer(cfg, dtype=dtype)
    d = _data(cfg, layer)
    _assert_modes_identical(layer, d["X"], cfg["lengths"], d["h0"], d["c0"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("bidirectional", "B", "T", "n_in", "H", "lengths"),
    [
        (False, 1, 37, 8, 2, None),
        (False, 3, 35, 12, 4, [35, 20, 33]),
        (True, 1, 2, 1, 5, None),
        (True, 1, 9, 1, 7, None),
        (True, 3, 6, 1, 5, [6, 1, 4]),
    ],
)
def test_training_and_inference_are_bit_identical_fixed_cases(dtype, bidirectional, B, T, n_in,
                                                              H, lengths):
    # Cases found by the property above, so that it is checked on every run and not
    # only when hypothesis happens to draw them.
    layer = LSTM(n_in, H, bidirectional=bidirectional, dtype=dtype, random_state=0)
    X = np.random.default_rng(0).normal(size=(B, T, n_in))
    _assert_modes_identical(layer, X, lengths)


# ---------------------------------------------------------------------------- (d) init
@SETTINGS
@given(configs(), st.integers(0, 2**31 - 1))
def test_initialization(cfg, other_seed):
    a, b = _layer(cfg), _layer(cfg)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert list(sd_a) == list(sd_b)
    for name in sd_a:
        np.testing.assert_array_equal(sd_a[name], sd_b[name])
    # A RandomState seeded alike draws the same weights; float32 rounds the same draws.
    from_rs = _layer(dict(cfg, seed=np.random.RandomState(cfg["seed"]))).state_dict()
    sd_32 = _layer(cfg, dtype=np.float32).state_dict()
    for name in sd_a:
        np.testing.assert_array_equal(from_rs[name], sd_a[name])
        np.testing.assert_array_equal(sd_32[name], sd_a[name].astype(np.float32))

    if other_seed != cfg["seed"]:
        sd_c = _layer(dict(cfg, seed=other_seed)).state_dict()
        assert any(not np.array_equal(sd_a[k], sd_c[k]) for k in sd_a)
        assert not np.array_equal(sd_a["weight_hh_l0"], sd_c["weight_hh_l0"])

    H = cfg["H"]
    for dtype, sd in ((np.float64, sd_a), (np.float32, sd_32)):
        bound = dtype(1.0 / np.sqrt(H))
        for arr in sd.values():
            assert arr.dtype == dtype
            assert np.all(np.abs(arr) <= bound)
    # The draws do fill the range (for more than a handful of values).
    all_vals = np.concatenate([v.ravel() for v in sd_a.values()])
    if all_vals.size >= 200:
        assert np.abs(all_vals).max() > 0.8 / np.sqrt(H)
        assert all_vals.min() < 0 < all_vals.max()


@SETTINGS
@given(configs())
def test_unit_forget_bias(cfg):
    H = cfg["H"]
    plain = _layer(cfg).state_dict()
    ufb = _layer(cfg, unit_forget_bias=True).state_dict()
    for name, arr in ufb.items():
        if name.startswith("bias_ih"):
            np.testing.assert_array_equal(arr[H:2 * H], 1.0)
        elif name.startswith("bias_hh"):
            np.testing.assert_array_equal(arr[H:2 * H], 0.0)
        if name.startswith("bias"):
            # Only the forget block is set; the other gates keep their draws.
            keep = np.r_[0:H, 2 * H:4 * H]
            np.testing.assert_array_equal(arr[keep], plain[name][keep])
        else:
            np.testing.assert_array_equal(arr, plain[name])


# ---------------------------------------------------------------------------- (e) precision
@SETTINGS
@given(configs())
def test_float32_close_to_float64(cfg):
    l64 = _layer(cfg)
    l32 = _layer(cfg, dtype=np.float32)
    # The same (float32-representable) weights and inputs in both.
    l64.load_state_dict(l32.state_dict())
    d = {k: v.astype(np.float32) for k, v in _data(cfg, l64).items()}
    lengths = cfg["lengths"]
    res = {}
    for name, layer in (("32", l32), ("64", l64)):
        out, (h_n, c_n) = layer.forward(d["X"], lengths=lengths, h0=d["h0"], c0=d["c0"])
        dX, grads = layer.backward(d["d_out"], d["d_h_n"], d["d_c_n"])
        res[name] = {"out": out, "h_n": h_n, "c_n": c_n, "dX": dX, **grads}
    for key, ref in res["64"].items():
        got = res["32"][key]
        assert got.dtype == np.float32 and ref.dtype == np.float64
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale, err_msg=key)


# ---------------------------------------------------------------------------- (f) state dicts
@SETTINGS
@given(configs(), st.sampled_from([np.float32, np.float64]))
def test_state_dict_round_trip(cfg, dtype):
    src = _layer(cfg, dtype=dtype)
    dst = _layer(dict(cfg, seed=cfg["seed"] ^ 1), dtype=dtype)
    params_before = dst.parameters()
    dst.load_state_dict(src.state_dict())
    # Same array objects, so an optimizer holding them keeps working.
    assert all(p is q for p, q in zip(dst.parameters(), params_before, strict=True))
    d = _data(cfg, src)
    for training in (False, True):
        a = src.forward(d["X"], lengths=cfg["lengths"], h0=d["h0"], c0=d["c0"], training=training)
        b = dst.forward(d["X"], lengths=cfg["lengths"], h0=d["h0"], c0=d["c0"], training=training)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1][0], b[1][0])
        np.testing.assert_array_equal(a[1][1], b[1][1])
    ga = src.backward(d["d_out"])
    gb = dst.backward(d["d_out"])
    np.testing.assert_array_equal(ga[0], gb[0])
    for name in ga[1]:
        np.testing.assert_array_equal(ga[1][name], gb[1][name])


@SETTINGS
@given(configs())
def test_parameters_are_live_and_state_dict_is_a_copy(cfg):
    layer = _layer(cfg)
    d = _data(cfg, layer)
    params = layer.parameters()
    assert [p.shape for p in params] == [v.shape for v in layer.state_dict().values()]

    # state_dict hands out copies; the dict given to load_state_dict is copied in.
    sd = layer.state_dict()
    for arr in sd.values():
        arr += 1.0
    assert not any(np.shares_memory(p, v) for p, v in zip(params, sd.values(), strict=True))
    before = layer.forward(d["X"], lengths=cfg["lengths"], training=False)[0]
    layer.load_state_dict(sd)
    for arr in sd.values():
        arr[...] = 0.0
    np.testing.assert_array_equal(layer.state_dict()["weight_ih_l0"],
                                  params[0])  # loaded values, not zeros
    assert params[0].any()

    # An "optimizer" step in place on the held arrays changes what the layer computes,
    # exactly as loading the stepped values would.
    out, _ = layer.forward(d["X"], lengths=cfg["lengths"])
    _, grads = layer.backward(d["d_out"])
    for p, name in zip(params, layer.state_dict(), strict=True):
        p -= 0.1 * grads[name]
    stepped = layer.forward(d["X"], lengths=cfg["lengths"], training=False)[0]
    fresh = _layer(cfg)
    fresh.load_state_dict(dict(zip(layer.state_dict(), params, strict=True)))
    np.testing.assert_array_equal(fresh.forward(d["X"], lengths=cfg["lengths"],
                                                training=False)[0], stepped)
    assert not np.array_equal(stepped, out)
    assert not np.array_equal(out, before)
