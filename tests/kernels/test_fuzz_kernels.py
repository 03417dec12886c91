"""Property-based fuzzing of the kernels through ``LSTM.forward/backward`` and the estimators.

Every call must either return finite results of the documented shapes, which
agree with a slow NumPy LSTM written here (forward outputs, ``h_n``, ``c_n``
and every gradient of a NumPy BPTT), or raise ``ValueError``/``TypeError``.
Hypothesis draws the sizes (B, T in 1..6, I, H in 1..5, one or two layers,
bidirectional or not), the layer's dtype and the inputs' dtypes, the lengths
and how they are given, memory layouts (C, Fortran, strided and reversed
views, read-only arrays, nested lists), initial states, and magnitudes up to
1e4 in inputs, states and weights; other tests put NaN and infinity in the
valid and the padded parts of X, break shapes, sizes and types, and feed the
estimators' ``fit``/``predict`` the same kind of data.

How close is close: with weights and inputs up to 1e4 the LSTM recursion can
amplify a rounding error by orders of magnitude, so no fixed tolerance is
both strict and honest. The reference is therefore run twice more with
tiny random perturbations (relative ``DELTA`` on every input and weight,
absolute ``DELTA`` on every gate activation, which is how the kernel's
``exp``/``tanh`` err, and relative on the gradients of the pre-activations),
and each array's tolerance is ``rtol * max|ref| + SAFETY * eps * S``, where
``S = max|perturbed - ref| / DELTA`` measures how much that array amplifies
such errors (``rtol`` is 1e-9 for float64, 1e-4 for float32; ``eps`` is the
layer dtype's). For well-conditioned draws ``S`` is of the order of the values
themselves, so the comparison is as strict as ``rtol`` alone.

The examples are derandomized (the same cases in every run); set
``PYLSTM_FUZZ_EXAMPLES`` to a larger number for a longer local run, and run with
``-s`` to see the counts at the end.
"""

import collections
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import expit

from pylstm import LSTM, LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_SCALE = float(os.environ.get("PYLSTM_FUZZ_EXAMPLES", "1"))


def _examples(n):
    return max(1, int(n * _SCALE)) if _SCALE > 1 else n


def _settings(n):
    return settings(max_examples=_examples(n), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


DELTA = 1e-8
SAFETY = 64.0
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}
#: Below this scale an array counts as zero (the kernels' exp clamps at e^-708 / e^-87).
TINY = 1e-12

_STATS = collections.Counter()

_MAGNITUDES = [1.0, 1.0, 3.0, 100.0, 1e4]
_WEIGHT_SCALES = [None, None, 0.5, 3.0, 100.0, 1e4, 1e-3]
_INPUT_DTYPES = ["float64", "float32", "float16", "longdouble", "int64", "int8", "bool"]
_LAYOUTS = ["C", "C", "F", "strided", "reversed", "readonly", "list"]
_LENGTH_KINDS = ["none", "list", "tuple", "int64", "int32", "uint8", "float", "readonly"]


# ---------------------------------------------------------------------------- reference
def _names(layer, d):
    return tuple(f"{kind}_l{layer}" + ("_reverse" if d else "")
                 for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


class _Reference:
    """A slow, direct float64 LSTM with BPTT, batched over rows by index arithmetic.

    With ``noise`` (a Generator), every input and weight is perturbed by a
    relative ``DELTA``, every activation by an absolute ``DELTA`` and every
    gate gradient by a relative ``DELTA``: the differences from the exact run
    estimate how much each output amplifies rounding errors.
    """

    def __init__(self, params, num_layers, D, H, noise=None):
        self.L, self.D, self.H = num_layers, D, H
        self.noise = noise
        self.params = {k: self._rel(np.asarray(v, dtype=np.float64)) for k, v in params.items()}

    def _rel(self, a):
        if self.noise is None:
            return a
        return a * (1.0 + DELTA * self.noise.uniform(-1, 1, size=np.shape(a)))

    def _abs(self, a):
        if self.noise is None:
            return a
        return a + DELTA * self.noise.uniform(-1, 1, size=np.shape(a))

    def forward(self, X, lens, h0, c0):
        L, D, H = self.L, self.D, self.H
        X, h0, c0 = self._rel(X), self._rel(h0), self._rel(c0)
        B, T, _ = X.shape
        h_n = np.zeros((L * D, B, H))
        c_n = np.zeros((L * D, B, H))
        inp = X
        self.tape = []
        for layer in range(L):
            out = np.zeros((B, T, D * H))
            dirs = []
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = (self.params[n] for n in _names(layer, d))
                h, c = h0[k].copy(), c0[k].copy()
                steps = []
                for s in range(T):
                    rows = np.flatnonzero(lens > s)
                    if rows.size == 0:
                        break
                    t = np.full(rows.size, s) if d == 0 else lens[rows] - 1 - s
                    x, hp, cp = inp[rows, t], h[rows], c[rows]
                    z = x @ w_ih.T + b_ih + hp @ w_hh.T + b_hh
                    i = self._abs(expit(z[:, :H]))
                    f = self._abs(expit(z[:, H:2 * H]))
                    g = self._abs(np.tanh(z[:, 2 * H:3 * H]))
                    o = self._abs(expit(z[:, 3 * H:]))
                    cn = self._rel(f * cp + i * g)
                    tc = self._abs(np.tanh(cn))
                    hn = o * tc
                    h[rows], c[rows] = hn, cn
                    out[rows, t, d * H:(d + 1) * H] = hn
                    steps.append((rows, t, x, hp, cp, i, f, g, o, tc))
                h_n[k], c_n[k] = h, c
                dirs.append(steps)
            self.tape.append((inp.shape, dirs))
            inp = out
        return out, h_n, c_n

    def backward(self, d_out, d_h_n, d_c_n, lens):
        L, D, H = self.L, self.D, self.H
        d_out, d_h_n, d_c_n = self._rel(d_out), self._rel(d_h_n), self._rel(d_c_n)
        B, T = d_out.shape[:2]
        valid = np.arange(T)[None, :] < lens[:, None]
        dy = d_out * valid[:, :, None]
        grads = {}
        g_h0 = np.zeros((L * D, B, H))
        g_c0 = np.zeros((L * D, B, H))
        for layer in range(L - 1, -1, -1):
            in_shape, dirs = self.tape[layer]
            d_in = np.zeros(in_shape)
            for d in range(D):
                k = layer * D + d
                names = _names(layer, d)
                w_ih, w_hh = self.params[names[0]], self.params[names[1]]
                gw_ih, gw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
                gb = np.zeros(4 * H)
                dh, dc = d_h_n[k].copy(), d_c_n[k].copy()
                for rows, t, x, hp, cp, i, f, g, o, tc in reversed(dirs[d]):
                    dht = dh[rows] + dy[rows, t, d * H:(d + 1) * H]
                    dct = dc[rows] + dht * o * (1 - tc * tc)
                    dz = np.concatenate([dct * g * i * (1 - i), dct * cp * f * (1 - f),
                                         dct * i * (1 - g * g), dht * tc * o * (1 - o)], axis=1)
                    dz = self._rel(dz)
                    gw_ih += dz.T @ x
                    gw_hh += dz.T @ hp
                    gb += dz.sum(axis=0)
                    d_in[rows, t] += dz @ w_ih
                    dh[rows] = dz @ w_hh
                    dc[rows] = dct * f
                grads.update({names[0]: gw_ih, names[1]: gw_hh, names[2]: gb, names[3]: gb})
                g_h0[k], g_c0[k] = dh, dc
            dy = d_in
        grads["h0"], grads["c0"] = g_h0, g_c0
        return dy, grads


def _reference_runs(params, cfg, X, lens, h0, c0, d_out, d_h_n, d_c_n, seed):
    """Exact reference results and each array's amplification S (see the module doc)."""
    L, D, H = cfg["num_layers"], cfg["D"], cfg["H"]

    def run(noise):
        ref = _Reference(params, L, D, H, noise)
        out, h_n, c_n = ref.forward(X, lens, h0, c0)
        res = {"out": out, "h_n": h_n, "c_n": c_n}
        if d_out is not None:
            dX, grads = ref.backward(d_out, d_h_n, d_c_n, lens)
            res["dX"] = dX
            res.update({"grad:" + k: v for k, v in grads.items()})
        return res

    with np.errstate(all="ignore"):
        exact = run(None)
        amp = {k: 0.0 for k in exact}
        for j in range(2):
            noisy = run(np.random.default_rng([seed, j]))
            for k, v in exact.items():
                diff = np.max(np.abs(noisy[k] - v), initial=0.0) / DELTA
                amp[k] = max(amp[k], diff if np.isfinite(diff) else np.inf)
    return exact, amp


def _assert_agrees(name, got, ref, amp, dtype):
    dtype = np.dtype(dtype)
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, reference {ref.shape}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, layer dtype {dtype}"
    assert np.isfinite(got).all(), f"{name}: not finite for finite input"
    scale = max(float(np.max(np.abs(ref), initial=0.0)), TINY)
    tol = RTOL[dtype] * scale + SAFETY * np.finfo(dtype).eps * amp
    err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0))
    assert err <= tol, (f"{name}: max abs error {err:.3g} > tolerance {tol:.3g} "
                        f"(max|ref| {scale:.3g}, amplification {amp:.3g})")
    _STATS["comparisons"] += 1
    if tol <= 1e-3 * scale or scale == TINY:
        _STATS["comparisons with tolerance <= 1e-3 x max|ref|"] += 1


# ---------------------------------------------------------------------------- inputs
def _convert(values, dtype_name):
    """``values`` (float64) as an array of ``dtype_name`` (ints rounded and clipped)."""
    if dtype_name == "bool":
        return values > 0
    dt = np.dtype(dtype_name)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.round(values), info.min, info.max).astype(dt)
    return values.astype(dt)


def _lay_out(arr, layout):
    """The same values as ``arr`` in another memory layout (or as nested lists)."""
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "strided":
        big = np.zeros(tuple(2 * n + 1 for n in arr.shape), dtype=arr.dtype)
        view = big[tuple(slice(1, None, 2) for _ in arr.shape)]
        view[...] = arr
        return view
    if layout == "reversed":
        flipped = np.ascontiguousarray(arr[::-1])
        return flipped[::-1]
    if layout == "readonly":
        ro = np.array(arr)
        ro.flags.writeable = False
        return ro
    if layout == "list":
        return arr.tolist()
    return np.ascontiguousarray(arr)


def _fed(draw, values, allow_dtypes=True):
    """Draw a dtype and layout for ``values``: (what is passed, what the layer should see)."""
    dtype_name = draw(st.sampled_from(_INPUT_DTYPES)) if allow_dtypes else "float64"
    layout = draw(st.sampled_from(_LAYOUTS))
    converted = _convert(values, dtype_name)
    if layout == "list" and dtype_name == "longdouble":
        layout = "C"  # tolist() would round long doubles to Python floats
    _STATS[f"layout {layout}"] += 1
    _STATS[f"input dtype {dtype_name}"] += 1
    return _lay_out(converted, layout), converted


def _lengths_as(draw, lens, T):
    kind = draw(st.sampled_from(_LENGTH_KINDS))
    if kind == "none":
        return None, np.full(len(lens), T)
    _STATS[f"lengths {kind}"] += 1
    conv = {"list": list, "tuple": tuple,
            "int64": lambda v: np.asarray(v, dtype=np.int64),
            "int32": lambda v: np.asarray(v, dtype=np.int32),
            "uint8": lambda v: np.asarray(v, dtype=np.uint8),
            "float": lambda v: np.asarray(v, dtype=np.float64),
            "readonly": lambda v: _lay_out(np.asarray(v, dtype=np.int64), "readonly")}[kind]
    return conv([int(n) for n in lens]), np.asarray(lens)


@st.composite
def _sizes(draw, min_t=1):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(min_t, 6))
    return {
        "B": B, "T": T,
        "I": draw(st.integers(1, 5)),
        "H": draw(st.integers(1, 5)),
        "num_layers": draw(st.integers(1, 2)),
        "bidirectional": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "lens": draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _make_layer(cfg, rng, weight_scale):
    layer = LSTM(cfg["I"], cfg["H"], num_layers=cfg["num_layers"],
                 bidirectional=cfg["bidirectional"], dtype=cfg["dtype"],
                 random_state=cfg["seed"] % 2**31)
    if weight_scale is not None:
        state = {k: rng.uniform(-weight_scale, weight_scale, size=v.shape)
                 for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
    cfg["D"] = layer.num_directions
    return layer


def _values(draw, rng, shape):
    """Random values of ``shape`` at a drawn magnitude, sometimes with exact special values."""
    mag = draw(st.sampled_from(_MAGNITUDES))
    vals = rng.normal(size=shape) * mag
    if vals.size and draw(st.booleans()):
        specials = np.array([0.0, mag, -mag, 1e4, -1e4, 1.0, -1.0])
        pick = rng.random(shape) < 0.3
        vals[pick] = rng.choice(specials, size=int(pick.sum()))
    return np.clip(vals, -1e4, 1e4)


def _doc_shapes(cfg):
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    S = cfg["num_layers"] * cfg["D"]
    return {"out": (B, T, cfg["D"] * H), "h_n": (S, B, H), "c_n": (S, B, H), "dX": (B, T, I),
            "grad:h0": (S, B, H), "grad:c0": (S, B, H)}


# ---------------------------------------------------------------------------- the layer
@_settings(300)
@given(cfg=_sizes(), data=st.data())
def test_forward_backward_agree_with_numpy_reference(cfg, data):
    """Random sizes, dtypes, layouts, lengths, states and magnitudes against the reference."""
    draw = data.draw
    rng = np.random.default_rng(cfg["seed"])
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    layer = _make_layer(cfg, rng, draw(st.sampled_from(_WEIGHT_SCALES)))
    dtype = layer.dtype
    S, D = cfg["num_layers"] * cfg["D"], cfg["D"]
    lengths, lens = _lengths_as(draw, cfg["lens"], T)

    X_fed, X_conv = _fed(draw, _values(draw, rng, (B, T, I)))
    X64 = X_conv.astype(dtype).astype(np.float64)
    states = {}
    for name in ("h0", "c0"):
        if draw(st.booleans()):
            fed, conv = _fed(draw, _values(draw, rng, (S, B, H)))
            states[name] = (fed, conv.astype(dtype).astype(np.float64))
        else:
            states[name] = (None, np.zeros((S, B, H)))
    with_grads = draw(st.sampled_from([True, True, True, False]))

    out, (h_n, c_n) = layer.forward(X_fed, lengths=lengths, h0=states["h0"][0],
                                    c0=states["c0"][0], training=with_grads)
    got = {"out": out, "h_n": h_n, "c_n": c_n}
    grad_in = (None, None, None)
    if with_grads:
        d_out = _values(draw, rng, (B, T, D * H))
        # Entries past a sequence's length are ignored: put garbage there.
        d_out[np.arange(T)[None, :] >= lens[:, None]] = 1e3
        d_h_n = _values(draw, rng, (S, B, H)) if draw(st.booleans()) else None
        d_c_n = _values(draw, rng, (S, B, H)) if draw(st.booleans()) else None
        fed = [_fed(draw, a, allow_dtypes=False)[0] if a is not None else None
               for a in (d_out, d_h_n, d_c_n)]
        dX, grads = layer.backward(*fed)
        got["dX"] = dX
        got.update({"grad:" + k: v for k, v in grads.items()})
        grad_in = tuple(np.asarray(a, dtype=dtype).astype(np.float64) if a is not None
                        else np.zeros((S, B, H)) for a in (d_out, d_h_n, d_c_n))
        assert set(grads) == set(layer.state_dict()) | {"h0", "c0"}

    params = layer.state_dict()
    exact, amp = _reference_runs(params, cfg, X64, lens, states["h0"][1], states["c0"][1],
                                 *grad_in, seed=cfg["seed"])
    shapes = _doc_shapes(cfg)
    shapes.update({"grad:" + k: v.shape for k, v in params.items()})
    assert set(got) == set(exact)
    for name, arr in got.items():
        assert arr.shape == shapes[name], f"{name}: {arr.shape}, documented {shapes[name]}"
        _assert_agrees(name, arr, exact[name], amp[name], dtype)
    # Zero past each sequence's length, exactly.
    padded = np.arange(T)[None, :] >= lens[:, None]
    assert not out[padded].any()
    if with_grads:
        assert not got["dX"][padded].any()
        # The inference kernel rounds exactly as the training one.
        i_out, (i_h, i_c) = layer.forward(X_fed, lengths=lengths, h0=states["h0"][0],
                                          c0=states["c0"][0], training=False)
        for a, b in ((i_out, out), (i_h, h_n), (i_c, c_n)):
            np.testing.assert_array_equal(a, b)
    _STATS["layer cases"] += 1
    _STATS[f"layer cases {np.dtype(dtype).name}"] += 1
    if max(np.abs(X64).max(), max(np.abs(p).max() for p in params.values())) >= 1e3:
        _STATS["layer cases with |values| >= 1e3"] += 1


@_settings(100)
@given(cfg=_sizes(min_t=2), data=st.data())
def test_non_finite_in_padding_is_ignored(cfg, data):
    """NaN/inf past a sequence's length: accepted, results equal those with zeros there."""
    draw = data.draw
    rng = np.random.default_rng(cfg["seed"])
    lens = np.asarray(cfg["lens"])
    T = cfg["T"]
    if lens.min() == T:
        lens[draw(st.integers(0, cfg["B"] - 1))] = draw(st.integers(1, T - 1))
    layer = _make_layer(cfg, rng, draw(st.sampled_from(_WEIGHT_SCALES)))
    X = _values(draw, rng, (cfg["B"], T, cfg["I"]))
    padded = np.arange(T)[None, :] >= lens[:, None]
    X[padded] = 0.0
    dirty = X.copy()
    bad = np.array([np.nan, np.inf, -np.inf])
    where = np.argwhere(padded)
    picks = where[rng.random(len(where)) < draw(st.sampled_from([0.2, 1.0]))]
    if len(picks) == 0:
        picks = where[:1]
    for b, t in picks:
        cols = rng.random(cfg["I"]) < 0.5
        cols[rng.integers(cfg["I"])] = True
        dirty[b, t, cols] = rng.choice(bad, size=int(cols.sum()))
    dirty = _lay_out(dirty, draw(st.sampled_from(["C", "F", "strided", "readonly"])))
    lengths = draw(st.sampled_from([list, np.asarray]))(lens.tolist())
    out_c, (h_c, c_c) = layer.forward(X, lengths=lengths)
    g_clean = layer.backward(np.ones_like(out_c))
    out_d, (h_d, c_d) = layer.forward(dirty, lengths=lengths)
    g_dirty = layer.backward(np.ones_like(out_d))
    for a, b in ((out_d, out_c), (h_d, h_c), (c_d, c_c), (g_dirty[0], g_clean[0])):
        np.testing.assert_array_equal(a, b)
    for name in g_clean[1]:
        np.testing.assert_array_equal(g_dirty[1][name], g_clean[1][name])
    assert np.isfinite(out_d).all()
    _STATS["padding cases (NaN/inf past lengths)"] += 1


def _corrupt(draw, rng, cfg, kind):
    """Arguments of forward (and backward) with one thing wrong; returns (stage, args)."""
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    S = cfg["num_layers"] * cfg["D"]
    lens = np.asarray(cfg["lens"])
    X = rng.normal(size=(B, T, I))
    fwd = {"X": X, "lengths": lens.copy(), "h0": None, "c0": None}
    bwd = None
    bad = float(draw(st.sampled_from([np.nan, np.inf, -np.inf])))
    if kind == "X valid non-finite":
        b = int(rng.integers(B))
        X[b, int(rng.integers(lens[b])), int(rng.integers(I))] = bad
    elif kind == "X non-finite without lengths":
        fwd["lengths"] = None
        X[int(rng.integers(B)), int(rng.integers(T)), int(rng.integers(I))] = bad
    elif kind in ("h0 non-finite", "c0 non-finite"):
        state = rng.normal(size=(S, B, H))
        state[int(rng.integers(S)), int(rng.integers(B)), int(rng.integers(H))] = bad
        fwd[kind[:2]] = state
    elif kind == "lengths":
        fwd["lengths"] = draw(st.sampled_from([
            [0] * B, [T + 1] * B, [-1] * B, [1.5] * B, [np.nan] * B, [np.inf] * B,
            list(lens) + [1], list(lens)[:-1] or [[]], [list(lens)], ["a"] * B,
            np.full(B, 1 + 1j), np.array([None] * B, dtype=object), [True] * B + [1],
        ]))
    elif kind == "X shape":
        fwd["X"] = draw(st.sampled_from([
            np.zeros((0, T, I)), np.zeros((B, 0, I)), np.zeros((B, T, 0)),
            np.zeros((B, T, I + 1)), np.zeros((B, T)), np.zeros((B, T, I, 1)),
            np.zeros(()), np.zeros((0, 0, 0)),
        ]))
        fwd["lengths"] = None
    elif kind == "X type":
        fwd["X"] = draw(st.sampled_from([
            X.astype(np.complex128), X.astype(str), X.astype(object).astype(str),
            np.full((B, T, I), None), [[["a"] * I] * T] * B, X.astype("datetime64[s]"),
            [[[1.0] * I] * T, [[1.0] * I] * (T + 1)],
        ]))
        fwd["lengths"] = None
    elif kind == "state shape":
        fwd[draw(st.sampled_from(["h0", "c0"]))] = draw(st.sampled_from([
            np.zeros((S + 1, B, H)), np.zeros((S, B + 1, H)), np.zeros((S, B, H + 1)),
            np.zeros((B, H)), np.zeros((S, B, H), dtype=np.complex64),
            np.full((S, B, H), "x"),
        ]))
    else:  # the backward arguments
        D = cfg["D"]
        d_out = rng.normal(size=(B, T, D * H))
        bwd = {"d_out": d_out, "d_h_n": None, "d_c_n": None}
        if kind == "d_out valid non-finite":
            b = int(rng.integers(B))
            d_out[b, int(rng.integers(lens[b])), int(rng.integers(D * H))] = bad
        elif kind == "d_out shape":
            bwd["d_out"] = draw(st.sampled_from([
                np.zeros((B, T, D * H + 1)), np.zeros((B + 1, T, D * H)), np.zeros((B, T)),
                np.zeros((B, T + 1, D * H)), d_out.astype(np.complex128),
            ]))
        else:  # gradient of h_n or c_n
            g = rng.normal(size=(S, B, H))
            g[int(rng.integers(S)), int(rng.integers(B)), int(rng.integers(H))] = bad
            shaped = draw(st.sampled_from([g, np.zeros((S, B, H + 1)), np.zeros((S + 1, B, H))]))
            bwd[draw(st.sampled_from(["d_h_n", "d_c_n"]))] = shaped
    return fwd, bwd


_CORRUPTIONS = ["X valid non-finite", "X non-finite without lengths", "h0 non-finite",
                "c0 non-finite", "lengths", "X shape", "X type", "state shape",
                "d_out valid non-finite", "d_out shape", "state gradient"]


@pytest.mark.parametrize("kind", _CORRUPTIONS)
@_settings(25)
@given(cfg=_sizes(), data=st.data())
def test_invalid_input_raises_value_or_type_error(kind, cfg, data):
    """One thing wrong at a time: ValueError/TypeError, and the layer stays usable."""
    rng = np.random.default_rng(cfg["seed"])
    layer = _make_layer(cfg, rng, None)
    before = layer.state_dict()
    fwd, bwd = _corrupt(data.draw, rng, cfg, kind)
    if bwd is None:
        with pytest.raises((ValueError, TypeError)):
            layer.forward(fwd["X"], lengths=fwd["lengths"], h0=fwd["h0"], c0=fwd["c0"])
    else:
        layer.forward(fwd["X"], lengths=fwd["lengths"])
        with pytest.raises((ValueError, TypeError)):
            layer.backward(**bwd)
    for name, arr in layer.state_dict().items():
        np.testing.assert_array_equal(arr, before[name])
    # Still usable.
    good = rng.normal(size=(cfg["B"], cfg["T"], cfg["I"]))
    out, _ = layer.forward(good, lengths=cfg["lens"])
    dX, _ = layer.backward(np.ones_like(out))
    assert np.isfinite(out).all() and np.isfinite(dX).all()
    _STATS[f"rejected: {kind}"] += 1


@pytest.mark.parametrize("kwargs", [
    {"input_size": 0, "hidden_size": 2}, {"input_size": 2, "hidden_size": 0},
    {"input_size": 2, "hidden_size": 2, "num_layers": 0},
    {"input_size": -1, "hidden_size": 2}, {"input_size": 2.0, "hidden_size": 2},
    {"input_size": 2, "hidden_size": 2, "dtype": np.float16},
    {"input_size": 2, "hidden_size": 2, "dtype": np.int32},
    {"input_size": 2, "hidden_size": 2, "dtype": "complex128"},
])
def test_zero_or_invalid_sizes_rejected_at_construction(kwargs):
    with pytest.raises((ValueError, TypeError)):
        LSTM(**kwargs)


def test_one_size_axes():
    """B = T = I = H = 1, every layout of the one value: finite, documented shapes."""
    for dtype in (np.float32, np.float64):
        layer = LSTM(1, 1, num_layers=2, bidirectional=True, dtype=dtype, random_state=0)
        for X in ([[[0.5]]], np.full((1, 1, 1), 0.5), np.full((1, 1, 1), 0.5, order="F")):
            out, (h_n, c_n) = layer.forward(X, lengths=[1])
            assert out.shape == (1, 1, 2) and h_n.shape == c_n.shape == (4, 1, 1)
            dX, grads = layer.backward(np.ones_like(out))
            assert dX.shape == (1, 1, 1) and np.isfinite(dX).all()
            assert all(np.isfinite(g).all() for g in grads.values())


# ---------------------------------------------------------------------------- estimators
@st.composite
def _estimator_cases(draw, Est, fault):
    n = draw(st.integers(2, 8))
    T = draw(st.integers(1, 5))
    F = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["3d", "2d", "list"]))
    if kind == "2d":
        F = 1
    return {
        "Est": Est,
        "n": n, "T": T, "F": F, "kind": kind,
        "params": {
            "hidden_size": draw(st.integers(1, 3)),
            "num_layers": draw(st.integers(1, 2)),
            "bidirectional": draw(st.booleans()),
            "dtype": draw(st.sampled_from(["float32", "float64"])),
            "batch_size": draw(st.integers(1, 4)),
            "max_iter": 1,
            "random_state": draw(st.integers(0, 1000)),
        },
        "mag": draw(st.sampled_from([1.0, 100.0, 1e4])),
        "fault": fault,
        "bad": float(draw(st.sampled_from([np.nan, np.inf, -np.inf]))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _estimator_data(case, rng):
    n, T, F, mag = case["n"], case["T"], case["F"], case["mag"]
    if case["kind"] == "list":
        X = [rng.normal(size=(int(k), F)) * mag for k in rng.integers(1, T + 1, n)]
        X[0] = rng.normal(size=(T, F)) * mag  # the longest sets T
    elif case["kind"] == "2d":
        X = rng.normal(size=(n, T)) * mag
    else:
        X = rng.normal(size=(n, T, F)) * mag
    if case["Est"] is LSTMClassifier:
        y = np.arange(n) % 2  # two classes, whatever n
        rng.shuffle(y)
    else:
        y = rng.normal(size=n) * mag
    return X, y


def _poison(X, rng, bad):
    if isinstance(X, list):
        X = [x.copy() for x in X]
        seq = X[int(rng.integers(len(X)))]
        seq[int(rng.integers(seq.shape[0])), int(rng.integers(seq.shape[1]))] = bad
        return X
    X = X.copy()
    X[tuple(int(rng.integers(s)) for s in X.shape)] = bad
    return X


@pytest.mark.parametrize("fault", ["none", "X fit", "y fit", "X predict"])
@pytest.mark.parametrize("Est", [LSTMClassifier, LSTMRegressor])
def test_estimators_fit_predict_fuzz(Est, fault):
    """Random small data: NaN/inf -> ValueError, else finite predictions of the right shape."""
    _estimator_fuzz(Est, fault)


@_settings(15)
@given(data=st.data())
def _estimator_fuzz(Est, fault, data):
    case = data.draw(_estimator_cases(Est, fault))
    rng = np.random.default_rng(case["seed"])
    X, y = _estimator_data(case, rng)
    Est, fault, bad = case["Est"], case["fault"], case["bad"]
    est = Est(**case["params"])
    if fault == "X fit":
        with pytest.raises(ValueError):
            est.fit(_poison(X, rng, bad), y)
        _STATS["estimator: rejected non-finite X in fit"] += 1
        return
    if fault == "y fit":
        y_bad = y.astype(np.float64)
        y_bad[int(rng.integers(len(y_bad)))] = bad
        with pytest.raises(ValueError):
            est.fit(X, y_bad)
        _STATS["estimator: rejected non-finite y in fit"] += 1
        return
    try:
        est.fit(X, y)
    except FloatingPointError:
        # The training loop's documented stop on a non-finite loss (another
        # issue's work): not expected here, as clip_norm bounds every step.
        _STATS["estimator: training stopped on a non-finite loss"] += 1
        assume(False)
    n = case["n"]
    if fault == "X predict":
        with pytest.raises(ValueError):
            est.predict(_poison(X, rng, bad))
        _STATS["estimator: rejected non-finite X in predict"] += 1
        return
    pred = est.predict(X)
    width = est.network_.layers[-1].num_directions * case["params"]["hidden_size"]
    feats = est.transform(X)
    assert feats.shape == (n, width) and np.isfinite(feats).all()
    if Est is LSTMClassifier:
        assert pred.shape == (n,) and set(pred) <= set(est.classes_)
        proba = est.predict_proba(X)
        assert proba.shape == (n, len(est.classes_)) and np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    else:
        assert pred.shape == (n,) and np.isfinite(pred).all()
    _STATS[f"estimator: {Est.__name__} fitted and predicted ({case['kind']})"] += 1


# ---------------------------------------------------------------------------- the build
@pytest.mark.skipif(os.environ.get("PYLSTM_EXPECT_BOUNDS_CHECK") != "1",
                    reason="only for the -Dbounds_check=true build (CI sets the variable)")
def test_bounds_checked_build_is_active():
    """The kernels of a bounds-checked build reject an out-of-bounds index."""
    from pylstm import _lstm

    x = np.zeros((1, 1))
    lengths = np.ones(1, dtype=np.intc)
    w = np.zeros((4, 1))
    # Every shape the kernel checks is right; only the (here unread) transposed
    # W_hh is empty, and taking the address of its first element is out of bounds.
    with pytest.raises(IndexError):
        _lstm.forward_infer(x, lengths, w, w, np.zeros((0, 4)), np.zeros(4), np.zeros((1, 1)),
                            np.zeros((1, 1)), np.zeros((1, 1)), 0, False,
                            np.zeros(1), np.zeros(4))


def fuzz_report():
    """What the tests above tried: printed after the run (conftest.py)."""
    if not _STATS:
        return []
    return ["kernel fuzzing:"] + [f"  {key}: {_STATS[key]}" for key in sorted(_STATS)]
