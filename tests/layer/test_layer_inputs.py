"""Input validation and conversion of :class:`pylstm.LSTM`."""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylstm import LSTM
from pylstm._validation import NonFiniteError

B, T, I_SIZE, H = 3, 5, 4, 6


@pytest.fixture
def layer():
    return LSTM(I_SIZE, H, random_state=0)


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(B, T, I_SIZE))


# ---------------------------------------------------------------------------- forward: shapes
@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((T, I_SIZE), r"X must be a 3-D array, got shape \(5, 4\)"),
        ((1, B, T, I_SIZE), r"X must be a 3-D array, got shape \(1, 3, 5, 4\)"),
        ((I_SIZE,), "X must be a 3-D array"),
    ],
)
def test_wrong_ndim(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(np.zeros(shape))


def test_scalar_input(layer):
    with pytest.raises(ValueError, match="3-D"):
        layer.forward(1.0)


@pytest.mark.parametrize("n_features", [I_SIZE - 1, I_SIZE + 1])
def test_input_size_mismatch(layer, n_features):
    with pytest.raises(ValueError, match=f"X has {n_features} features per step, but "
                                         f"input_size is {I_SIZE}"):
        layer.forward(np.zeros((B, T, n_features)))


@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("shape", [(1, B, H + 1), (2, B, H), (1, B + 1, H), (B, H), (1, 1, B, H)])
def test_state_wrong_shape(layer, X, name, shape):
    with pytest.raises(ValueError, match=rf"{name} must have shape \(1, 3, 6\)"):
        layer.forward(X, **{name: np.zeros(shape)})


def test_state_shape_of_bidirectional_stack(X):
    layer = LSTM(I_SIZE, H, num_layers=2, bidirectional=True, random_state=0)
    good = np.zeros((4, B, H))
    layer.forward(X, h0=good, c0=good)
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 3, 6\), got \(2, 3, 6\)"):
        layer.forward(X, h0=np.zeros((2, B, H)))


@pytest.mark.parametrize("name", ["h0", "c0"])
def test_state_non_numeric(layer, X, name):
    with pytest.raises(TypeError, match=f"{name} must hold real numbers"):
        layer.forward(X, **{name: np.full((1, B, H), "a")})


@pytest.mark.parametrize(("name", "value", "what"),
                         [("h0", np.nan, "NaN"), ("c0", np.nan, "NaN"), ("h0", np.inf, "infinity"),
                          ("c0", -np.inf, "infinity")])
def test_state_not_finite(layer, X, name, value, what):
    state = np.zeros((1, B, H))
    state[0, 1, 2] = value
    with pytest.raises(ValueError, match=f"{name} contains {what}"):
        layer.forward(X, **{name: state})


# ---------------------------------------------------------------------------- forward: lengths
@pytest.mark.parametrize(
    ("lengths", "exc", "match"),
    [
        ([T + 1, 2, 3], ValueError, rf"lengths must be <= n_timesteps={T}, got a length of 6"),
        ([2, 100, 3], ValueError, "lengths must be <= n_timesteps"),
        ([0, 2, 3], ValueError, "lengths must be >= 1, got a length of 0"),
        ([2, -3, 3], ValueError, "lengths must be >= 1, got a length of -3"),
        ([2, 3], ValueError, r"lengths must have shape \(3,\) to match X, got \(2,\)"),
        ([2, 3, 4, 5], ValueError, r"lengths must have shape \(3,\) to match X, got \(4,\)"),
        ([[2], [3], [4]], ValueError, r"lengths must have shape \(3,\)"),
        (4, ValueError, r"lengths must have shape \(3,\) to match X, got \(\)"),
        ([1.5, 2, 3], ValueError, "lengths must be whole numbers"),
        ([np.nan, 2, 3], ValueError, "lengths must be whole numbers"),
        ([np.inf, 2, 3], ValueError, "lengths must be whole numbers"),
        (["a", "b", "c"], TypeError, "lengths must be integers"),
        ([1 + 0j, 2, 3], TypeError, "lengths must be integers"),
    ],
)
def test_bad_lengths(layer, X, lengths, exc, match):
    with pytest.raises(exc, match=match):
        layer.forward(X, lengths=lengths)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.integers(T + 1, 2**64 - 1).map(lambda v: np.array([v, 2, 3], dtype=np.uint64)),
    st.integers(-(2**63), 0).map(lambda v: np.array([2, v, 3], dtype=np.int64)),
    st.floats(T + 1, 1e300).map(lambda v: np.array([np.floor(v), 2, 3])),
    st.floats(-1e300, 0).map(lambda v: np.array([2, 3, np.floor(v)]))))
def test_out_of_range_lengths_are_named_as_given(layer, X, value):
    # Checked before any cast: 1e20 or 2**64 - 1 do not wrap to a negative length.
    bad = value[(value < 1) | (value > T)][0]
    side = ">= 1" if bad < 1 else f"<= n_timesteps={T}"
    with pytest.raises(ValueError, match=rf"lengths must be {side}, got a length of "
                                         rf"{re.escape(str(bad))}$"):
        layer.forward(X, lengths=value)


def test_whole_float_and_unsigned_lengths_accepted(layer, X):
    ref = layer.forward(X, lengths=[5, 2, 3], training=False)[0]
    for lengths in ([5.0, 2.0, 3.0], np.array([5, 2, 3], dtype=np.uint8)):
        np.testing.assert_array_equal(layer.forward(X, lengths=lengths, training=False)[0], ref)


# ---------------------------------------------------------------------------- forward: values
@pytest.mark.parametrize(("value", "what"), [(np.nan, "NaN"), (np.inf, "infinity"),
                                             (-np.inf, "infinity")])
def test_non_finite_X(layer, X, value, what):
    X[1, 2, 3] = value
    with pytest.raises(ValueError, match=f"X contains {what}"):
        layer.forward(X)
    assert layer._cache is None


@pytest.mark.parametrize("training", [False, True])
def test_nan_in_padding_is_ignored(layer, X, training):
    ref = layer.forward(X, lengths=[5, 2, 3], training=training)
    X[1, 2:] = np.nan  # past the length of sequence 1
    got = layer.forward(X, lengths=[5, 2, 3], training=training)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1][0], ref[1][0])
    assert (got[0][1, 2:] == 0).all() and (got[0][2, 3:] == 0).all()  # zeros past a length


def test_non_finite_valid_step_of_a_ragged_training_batch(layer, X):
    # The compact copy checks the valid steps as it copies them (_arrays.gather_rows).
    X[1, 2:] = np.nan  # padding: allowed
    X[2, 1, 0] = np.inf  # a valid step of sequence 2
    with pytest.raises(ValueError, match="X contains infinity"):
        layer.forward(X, lengths=[5, 2, 3], training=True)
    assert layer._cache is None


@pytest.mark.parametrize(
    "bad",
    [
        np.full((B, T, I_SIZE), "a"),
        np.empty((B, T, I_SIZE), dtype=object),
        np.zeros((B, T, I_SIZE), dtype=complex),
        "abc",
        [[["a", "b", "c", "d"]]],
    ],
)
def test_non_numeric_X(layer, bad):
    with pytest.raises(TypeError, match="X must hold real numbers"):
        layer.forward(bad)


@pytest.mark.parametrize("shape", [(0, T, I_SIZE), (B, 0, I_SIZE)])
def test_empty_batch(layer, shape):
    with pytest.raises(ValueError, match="at least one sequence and one step"):
        layer.forward(np.zeros(shape))


# ---------------------------------------------------------------------------- sizes for BLAS
def test_hidden_size_too_large_for_blas():
    # 4 * 2**30 gate rows overflow a 32-bit BLAS int; refused before any allocation.
    with pytest.raises(ValueError, match="hidden_size is too large for 32-bit BLAS"):
        LSTM(3, 2**30)
    with pytest.raises(ValueError, match="too large for 32-bit BLAS"):
        LSTM(3, 2**31)


_BIG_BATCH_SCRIPT = textwrap.dedent("""
    import json, resource, tracemalloc
    import numpy as np
    from pylstm import LSTM

    layer = LSTM(1, 1, random_state=0)
    # 2**16 * (2**15 + 1) > 2**31 - 1 steps, from a one-element array (no memory).
    X = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (2**16, 2**15 + 1, 1))
    # Cap the address space so that a full-size copy (8 GiB) fails fast instead of
    # being allocated.
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
    tracemalloc.start()
    try:
        layer.forward(X, training=False)
        result = {"error": None, "message": ""}
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    result["peak"] = tracemalloc.get_traced_memory()[1]
    print(json.dumps(result))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_batch_times_steps_too_large_for_blas_fails_before_allocating(tmp_path):
    # In a subprocess (cwd away from the source tree, so the installed package loads),
    # as the failure mode being guarded against is a multi-GiB allocation.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _BIG_BATCH_SCRIPT], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "ValueError", result
    assert "too large for 32-bit BLAS" in result["message"]
    assert result["peak"] < 2**20, result  # no copy of X was attempted


# ---------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be >= 1, got 0"),
        ({"hidden_size": -2}, ValueError, "hidden_size must be >= 1, got -2"),
        ({"input_size": 0}, ValueError, "input_size must be >= 1, got 0"),
        ({"num_layers": 0}, ValueError, "num_layers must be >= 1, got 0"),
        ({"hidden_size": 2.0}, TypeError, "hidden_size must be an integer, got float"),
        ({"hidden_size": True}, TypeError, "hidden_size must be an integer, got bool"),
        ({"num_layers": "2"}, TypeError, "num_layers must be an integer, got str"),
        ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64, got int32"),
        ({"dtype": np.float16}, TypeError, "dtype must be float32 or float64, got float16"),
        ({"dtype": np.complex128}, TypeError, "dtype must be float32 or float64"),
        ({"dtype": "foo"}, TypeError, "dtype must be float32 or float64, got 'foo'"),
    ],
)
def test_bad_constructor_args(kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(exc, match=match):
        LSTM(**args)


def test_numpy_integer_sizes_and_dtype_strings_accepted():
    layer = LSTM(np.int64(3), np.int32(4), num_layers=np.int8(2), dtype="float64")
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (3, 4, 2)
    assert type(layer.hidden_size) is int
    assert layer.dtype == np.float64
    assert all(p.dtype == np.float64 for p in layer.parameters())


# ---------------------------------------------------------------------------- backward
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        layer.backward(np.zeros((B, T, H)))


def test_backward_after_inference_forward(layer, X):
    layer.forward(X, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.zeros((B, T, H)))


def test_inference_forward_drops_training_cache(layer, X):
    layer.forward(X, training=True)
    layer.forward(X, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.zeros((B, T, H)))


@pytest.mark.parametrize(("bad_call", "match"), [
    (lambda layer, X: layer.forward(X, lengths=[0, 2, 3]), "lengths must be >= 1"),
    (lambda layer, X: layer.forward(X[:, :, :2]), "features per step"),
    (lambda layer, X: layer.forward(np.where(X > 1, np.nan, X), lengths=[5, 2, 3]), "NaN"),
    (lambda layer, X: layer.forward(X, h0=np.zeros((1, B, H + 1))), "h0 must have shape"),
])
def test_backward_after_a_failed_forward_does_not_use_the_one_before(layer, X, bad_call,
                                                                     match):
    layer.forward(X)
    with pytest.raises(ValueError, match=match):
        bad_call(layer, X)
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        layer.backward(np.zeros((B, T, H)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_d_out_that_overflows_the_gradients_is_refused(X, dtype):
    layer = LSTM(I_SIZE, H, num_layers=2, dtype=dtype, random_state=0)
    out, _ = layer.forward(X.astype(dtype))
    huge = np.finfo(dtype).max / 2
    with pytest.raises(ValueError, match=rf"gradients overflowed {np.dtype(dtype).name} "
                                         r"\(.* contains (infinity|NaN)\).*scale d_out"):
        layer.backward(np.full_like(out, huge))
    # An ordinary gradient after it is fine.
    layer.forward(X.astype(dtype))
    dX, grads = layer.backward(np.ones_like(out))
    assert np.isfinite(dX).all() and all(np.isfinite(g).all() for g in grads.values())


def test_second_backward(layer, X):
    out, _ = layer.forward(X)
    layer.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match="used up by each backward"):
        layer.backward(np.ones_like(out))


@pytest.mark.parametrize("shape", [(B, T, H + 1), (B, T - 1, H), (B + 1, T, H), (B, T * H)])
def test_d_out_wrong_shape(layer, X, shape):
    out, _ = layer.forward(X)
    with pytest.raises(ValueError, match=r"d_out must have shape \(3, 5, 6\)"):
        layer.backward(np.zeros(shape))
    # A rejected call leaves the cache for a correct one.
    dX, _ = layer.backward(np.ones_like(out))
    assert dX.shape == X.shape


@pytest.mark.parametrize("name", ["d_h_n", "d_c_n"])
def test_state_gradient_wrong_shape(layer, X, name):
    out, _ = layer.forward(X)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(1, 3, 6\), got \(2, 3, 6\)"):
        layer.backward(np.zeros_like(out), **{name: np.zeros((2, B, H))})


def test_d_out_not_finite(layer, X):
    out, _ = layer.forward(X)
    d_out = np.zeros_like(out)
    d_out[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="d_out contains NaN"):
        layer.backward(d_out)


def test_d_out_past_a_length_is_ignored_even_if_not_finite(layer, X):
    """Entries of d_out past a sequence's length are documented as ignored."""
    lengths = [X.shape[1], 2, X.shape[1] - 1]
    out, _ = layer.forward(X, lengths=lengths)
    d_out = np.ones_like(out)
    dX_ref, grads_ref = layer.backward(d_out.copy())
    d_out[1, 2:] = np.nan
    d_out[2, -1] = np.inf
    layer.forward(X, lengths=lengths)
    dX, grads = layer.backward(d_out)
    np.testing.assert_array_equal(dX, dX_ref)
    for k in grads_ref:
        np.testing.assert_array_equal(grads[k], grads_ref[k])
    # Inside a length a bad entry is still an error.
    d_out[1, 1, 0] = np.nan
    layer.forward(X, lengths=lengths)
    with pytest.raises(ValueError, match="d_out contains NaN"):
        layer.backward(d_out)


def test_d_out_non_numeric(layer, X):
    layer.forward(X)
    with pytest.raises(TypeError, match="d_out must hold real numbers"):
        layer.backward(np.full((B, T, H), "x"))


# ---------------------------------------------------------------------------- conversions
def _run(layer, X, lengths=(5, 2, 4)):
    out, (h_n, c_n) = layer.forward(X, lengths=list(lengths))
    dX, grads = layer.backward(np.ones_like(out), np.ones_like(h_n))
    return out, h_n, c_n, dX, grads


def _assert_same(got, ref):
    for g, r in zip(got[:4], ref[:4], strict=True):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)
    for name in ref[4]:
        np.testing.assert_array_equal(got[4][name], ref[4][name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["strided", "fortran", "transposed", "readonly", "int", "list"])
def test_converted_inputs_give_identical_results(dtype, kind):
    layer = LSTM(I_SIZE, H, dtype=dtype, random_state=0)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(B, 2 * T, I_SIZE))
    if kind == "strided":
        X = base[:, ::2]
    elif kind == "fortran":
        X = np.asfortranarray(base[:, :T])
    elif kind == "transposed":
        X = np.ascontiguousarray(base[:, :T].transpose(2, 1, 0)).transpose(2, 1, 0)
    elif kind == "readonly":
        X = base[:, :T].copy()
        X.flags.writeable = False
    elif kind == "int":
        X = rng.integers(-3, 4, size=(B, T, I_SIZE))
    else:
        X = base[:, :T].tolist()
    if kind not in ("int", "list"):
        assert not (X.flags.c_contiguous and X.flags.writeable)
    ref = _run(layer, np.array(X, dtype=dtype, order="C"))
    got = _run(layer, X)
    _assert_same(got, ref)


def test_memmap_read_only_input(tmp_path):
    layer = LSTM(I_SIZE, H, random_state=0)
    data = np.random.default_rng(2).normal(size=(B, T, I_SIZE)).astype(np.float32)
    path = tmp_path / "x.dat"
    data.tofile(path)
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(B, T, I_SIZE))
    assert not X.flags.writeable
    got = _run(layer, X)
    _assert_same(got, _run(layer, data.copy()))
    del X


def test_read_only_states_and_gradients():
    layer = LSTM(I_SIZE, H, random_state=0)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(B, T, I_SIZE))
    h0, c0 = rng.normal(size=(2, 1, B, H))
    ref_out, (ref_h, _) = layer.forward(X, h0=h0, c0=c0)
    ref_dX, _ = layer.backward(np.ones_like(ref_out), d_h_n=np.ones_like(ref_h))
    for arr in (X, h0, c0):
        arr.flags.writeable = False
    h0f = np.asfortranarray(h0)
    out, (h_n, _) = layer.forward(X, h0=h0f, c0=c0)
    d_out = np.ones_like(out)
    d_out.flags.writeable = False
    d_h = np.ones((B, 1, H)).transpose(1, 0, 2)  # non-contiguous
    dX, _ = layer.backward(d_out, d_h_n=d_h)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dX, ref_dX)


def test_dtypes_float32_layer():
    layer = LSTM(I_SIZE, H, random_state=0)
    X64 = np.random.default_rng(4).normal(size=(B, T, I_SIZE))
    out64, (h64, c64) = layer.forward(X64)
    dX, grads = layer.backward(np.ones_like(out64))
    assert out64.dtype == h64.dtype == c64.dtype == dX.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    out32, (h32, c32) = layer.forward(X64.astype(np.float32))
    assert out32.dtype == h32.dtype == c32.dtype == np.float32
    np.testing.assert_array_equal(out64, out32)  # float64 input is rounded, then run


def test_float64_layer_computes_in_float64(numpy_lstm):
    layer = LSTM(I_SIZE, H, dtype=np.float64, random_state=0)
    X = np.random.default_rng(5).normal(size=(B, T, I_SIZE)).astype(np.float32)
    out, (h_n, c_n) = layer.forward(X)
    dX, grads = layer.backward(np.ones_like(out))
    assert out.dtype == h_n.dtype == c_n.dtype == dX.dtype == np.float64
    assert all(g.dtype == np.float64 for g in grads.values())
    ref_out, (ref_h, ref_c) = numpy_lstm(layer.state_dict()).forward(X.astype(np.float64),
                                                                    training=False)
    # float32 arithmetic would be off by ~1e-7; float64 agrees to rounding.
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-13)
    np.testing.assert_allclose(h_n, ref_h, rtol=0, atol=1e-13)
    np.testing.assert_allclose(c_n, ref_c, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------- load_state_dict
def test_load_state_dict_missing_key(layer):
    sd = layer.state_dict()
    del sd["bias_hh_l0"]
    with pytest.raises(KeyError, match=r"missing \['bias_hh_l0'\]"):
        layer.load_state_dict(sd)


def test_load_state_dict_extra_key(layer):
    sd = layer.state_dict()
    sd["weight_ih_l1"] = np.zeros((4 * H, H))
    with pytest.raises(KeyError, match=r"unexpected \['weight_ih_l1'\]"):
        layer.load_state_dict(sd)


def test_load_state_dict_wrong_shape(layer):
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"].T
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(24, 6\), got \(6, 24\)"):
        layer.load_state_dict(sd)


@pytest.mark.parametrize(("value", "what"), [(np.nan, "NaN"), (np.inf, "infinity"),
                                             (1e300, "infinity")])
def test_load_state_dict_not_finite(layer, value, what):
    before = layer.state_dict()
    sd = layer.state_dict()
    sd["bias_ih_l0"] = sd["bias_ih_l0"].astype(np.float64)
    sd["bias_ih_l0"][3] = value  # 1e300 overflows float32 to inf
    with warnings.catch_warnings():
        # (NumPy may warn about the overflowing cast before the check raises.)
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=f"bias_ih_l0 contains {what}"):
            layer.load_state_dict(sd)
    # Nothing was loaded, not even the keys before the bad one.
    for name, arr in layer.state_dict().items():
        np.testing.assert_array_equal(arr, before[name])


def test_load_state_dict_non_numeric(layer):
    sd = layer.state_dict()
    sd["bias_ih_l0"] = np.full(4 * H, "a")
    with pytest.raises(TypeError, match="bias_ih_l0 must hold real numbers"):
        layer.load_state_dict(sd)


# ---------------------------------------------------------------------------- saturation
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_saturated_activations_are_stable(dtype, bidirectional, numpy_lstm):
    # One input feature of +-1 and input weights of +-1e4: every gate pre-activation
    # is about +-1e4, far past where exp overflows in float32 (~88).
    nh = 5
    layer = LSTM(1, nh, num_layers=2, bidirectional=bidirectional, dtype=dtype, random_state=0)
    rng = np.random.default_rng(6)
    sd = layer.state_dict()
    for name, arr in sd.items():
        if name.startswith("weight_ih"):
            sd[name] = np.sign(rng.standard_normal(arr.shape)) * 1e4 / arr.shape[1]
        elif name.startswith("bias_ih"):
            sd[name] = np.where(rng.random(arr.shape) < 0.3, -1e4, arr)
    layer.load_state_dict(sd)
    X = rng.choice([-1.0, 1.0], size=(4, 9, 1))
    lengths = [9, 3, 9, 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="raise"):
            out, (h_n, c_n) = layer.forward(X, lengths=lengths)
            dX, grads = layer.backward(np.ones_like(out), np.ones_like(h_n), np.ones_like(c_n))
            out_inf, _ = layer.forward(X, lengths=lengths, training=False)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    for arr in (out, h_n, c_n, dX, out_inf, *grads.values()):
        assert np.isfinite(arr).all()
    assert np.abs(out).max() <= 1.0 and np.abs(h_n).max() <= 1.0
    assert np.abs(out).max() > 0.5  # saturated, not all zero
    # |c| grows by at most |i * g| <= 1 a step.
    assert np.abs(c_n).max() <= 9.0
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out_inf, out, rtol=0, atol=tol)
    if not bidirectional:
        # First layer against the float64 reference (its sigmoid cannot overflow).
        one = LSTM(1, nh, dtype=dtype)
        one.load_state_dict({k: v for k, v in layer.state_dict().items() if k.endswith("_l0")})
        ref_out, _ = numpy_lstm(one.state_dict()).forward(X, training=False)
        got, _ = one.forward(X, training=False)
        # float32 sums of +-1e4 terms carry absolute errors of ~1e4 * eps32 ~ 1e-3.
        atol = 3e-3 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(got, ref_out, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_activations_raise_no_warning_as_error(dtype):
    layer = LSTM(1, 3, dtype=dtype, random_state=0)
    sd = layer.state_dict()
    sd["weight_ih_l0"] = np.full_like(sd["weight_ih_l0"], 1e4)
    sd["weight_ih_l0"][::2] = -1e4
    layer.load_state_dict(sd)
    X = np.array([[[1.0], [-1.0], [1.0], [1.0], [-1.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            out, (h_n, c_n) = layer.forward(X)
            dX, grads = layer.backward(np.ones_like(out))
    assert np.isfinite(out).all() and np.isfinite(dX).all()
    assert all(np.isfinite(g).all() for g in grads.values())
    assert -1.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_large_input_with_one_bad_value_is_rejected(bad):
    """Large arrays take check_finite's min/max path; one bad value is still found."""
    layer = LSTM(16, 4, random_state=0)
    X = np.zeros((8, 1000, 16))  # 128000 elements, above the small-array path
    X[3, 517, 9] = bad
    with pytest.raises(ValueError, match="NaN" if np.isnan(bad) else "infinity"):
        layer.forward(X)
    with pytest.raises(ValueError, match="NaN" if np.isnan(bad) else "infinity"):
        layer.forward(X, training=False)


def test_lookup_arguments_are_checked():
    """``LSTM._forward``'s ``lookup`` (the language model's looked-up input
    projection) is refused, before any kernel runs, where it cannot apply."""
    X = np.zeros((2, 3, 4), np.float32)
    tokens = np.zeros((2, 3), dtype=np.int64)
    emb = np.zeros((5, 4), np.float32)
    layer = LSTM(4, 6, dtype=np.float32, random_state=0)

    def run(lstm=layer, lengths=None, training=True, lookup=(emb, tokens)):
        return lstm._forward(X, lengths, None, None, training, False, None, lookup)

    with pytest.raises(ValueError, match=r"must be a C-contiguous \(V, 4\) float32 array"):
        run(lookup=(emb.astype(np.float64), tokens))
    with pytest.raises(ValueError, match=r"must be a C-contiguous \(V, 4\) float32 array"):
        run(lookup=(emb[:, :2], tokens))
    with pytest.raises(ValueError, match=r"must be a C-contiguous \(V, 4\) float32 array"):
        run(lookup=(np.zeros((4, 5), np.float32).T, tokens))
    with pytest.raises(ValueError, match=r"tokens must be a \(2, 3\) integer array"):
        run(lookup=(emb, tokens[:, :2]))
    with pytest.raises(ValueError, match=r"tokens must be a \(2, 3\) integer array"):
        run(lookup=(emb, tokens.astype(np.float64)))
    with pytest.raises(ValueError, match="a lookup needs a training call without lengths"):
        run(lengths=[3, 2])
    with pytest.raises(ValueError, match="a lookup needs a training call without lengths"):
        run(training=False)
    with pytest.raises(ValueError, match="a lookup needs a unidirectional layer"):
        run(lstm=LSTM(4, 6, bidirectional=True, dtype=np.float32, random_state=0))
    with pytest.raises(ValueError, match="a lookup needs a layer without projections"):
        run(lstm=LSTM(4, 6, dtype=np.float32, proj_size=2, random_state=0))
    with pytest.raises(ValueError, match=r"token 5 at \(0, 0\) is not a row of the 5-row "
                                         "embedding"):
        run(lookup=(emb, np.full((2, 3), 5)))
    # Checked before the kernels' C int: 2**32 + 1 would wrap to 1.
    wrapped = tokens.copy()
    wrapped[1, 2] = 2**32 + 1
    with pytest.raises(ValueError, match=r"token 4294967297 at \(1, 2\)"):
        run(lookup=(emb, wrapped))
    # Other integer types: checked by NumPy, then the same compact copy.
    for kind in (np.int32, np.uint8):
        small = tokens.astype(kind)
        small[0, 1] = 7
        with pytest.raises(ValueError, match=r"token 7 at \(0, 1\) is not a row of the 5-row"):
            run(lookup=(emb, small))
        np.testing.assert_array_equal(run(lookup=(emb, tokens.astype(kind)))[0],
                                      run(lookup=(emb, tokens))[0])
    with pytest.raises(NonFiniteError, match="the lookup's embedding contains NaN"):
        run(lookup=(np.full((5, 4), np.nan, np.float32), tokens))
    with pytest.raises(ValueError, match="a lookup's tokens must be a 2-D integer array"):
        layer._forward(None, None, None, None, True, False, None, (emb, tokens[0]))
    # Without X the same checks come first.
    with pytest.raises(ValueError, match="a lookup needs a training call without lengths"):
        layer._forward(None, None, None, None, False, False, None, (emb, tokens))
    with pytest.raises(ValueError, match="a lookup needs a training call without lengths"):
        layer._forward(None, [3, 2], None, None, True, False, None, (emb, tokens))
    with pytest.raises(ValueError, match=r"at least one sequence and one step, got shape "
                                         r"\(0, 3, 4\)"):
        layer._forward(None, None, None, None, True, False, None, (emb, tokens[:0]))
    out, _ = run()
    assert out.shape == (2, 3, 6)
    np.testing.assert_array_equal(
        layer._forward(None, None, None, None, True, False, None, (emb, tokens))[0], out)
