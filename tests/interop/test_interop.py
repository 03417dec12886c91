"""pylstm.interop: PyTorch modules and Keras-layout weights, there and back.

The PyTorch tests need torch (skipped without it); the Keras tests compare
against a NumPy transcription of Keras' LSTM equations on Keras' array layout,
so Keras itself is not needed.
"""

import sys
import warnings

import numpy as np
import pytest

import pylstm
from pylstm import LSTM, LSTMClassifier
from pylstm.interop import from_keras_weights, from_torch, to_keras_weights, to_torch

#: Largest allowed max|pylstm - reference| per dtype.
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}

CONFIGS = [(1, False), (1, True), (2, False), (2, True), (3, True)]


def _ragged_batch(rng, B, T, I, dtype):
    X = rng.normal(size=(B, T, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    return X, lengths


# ---------------------------------------------------------------------- PyTorch
def _torch_run(module, X, lengths=None):
    """torch.nn.LSTM(batch_first=True) outputs as NumPy, packed when lengths are given."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.ascontiguousarray(X))
    with torch.no_grad():
        if lengths is None:
            out, (h_n, c_n) = module(x)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
            out, (h_n, c_n) = module(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=X.shape[1])
    return out.numpy(), h_n.numpy(), c_n.numpy()


def _assert_close(actual, expected, dtype):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        err = np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)))
        assert err <= ATOL[np.dtype(dtype)], err


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_to_torch_runs_the_same(num_layers, bidirectional, dtype):
    torch = pytest.importorskip("torch")
    layer = LSTM(4, 6, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                 random_state=0)
    module = to_torch(layer)
    assert isinstance(module, torch.nn.LSTM)
    assert module.batch_first and module.bias and module.proj_size == 0
    assert module.bidirectional == bidirectional and module.num_layers == num_layers
    assert module.weight_ih_l0.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    X, lengths = _ragged_batch(np.random.default_rng(1), 5, 7, 4, dtype)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=False)
    _assert_close((out, h_n, c_n), _torch_run(module, X, lengths), dtype)
    out, (h_n, c_n) = layer.forward(X, training=False)
    _assert_close((out, h_n, c_n), _torch_run(module, X), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_from_torch_runs_the_same(num_layers, bidirectional, dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    module = torch.nn.LSTM(3, 5, num_layers=num_layers, bidirectional=bidirectional,
                           batch_first=True, dtype=tdtype)
    layer = from_torch(module)
    assert layer.dtype == np.dtype(dtype)
    assert (layer.input_size, layer.hidden_size) == (3, 5)
    assert (layer.num_layers, layer.bidirectional) == (num_layers, bidirectional)
    X, lengths = _ragged_batch(np.random.default_rng(2), 6, 8, 3, dtype)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=False)
    _assert_close((out, h_n, c_n), _torch_run(module, X, lengths), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_weights_exactly(dtype):
    pytest.importorskip("torch")
    layer = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype, random_state=0)
    back = from_torch(to_torch(layer))
    assert back.dtype == layer.dtype
    a, b = layer.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    X, lengths = _ragged_batch(np.random.default_rng(0), 4, 6, 3, dtype)
    np.testing.assert_array_equal(layer.forward(X, lengths=lengths, training=False)[0],
                                  back.forward(X, lengths=lengths, training=False)[0])


def test_from_torch_time_major_module_converts_its_weights():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)  # batch_first=False
    layer = from_torch(module)
    X = np.random.default_rng(3).normal(size=(2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        ref, _ = module(torch.from_numpy(X.transpose(1, 0, 2).copy()))
    out, _ = layer.forward(X, training=False)
    _assert_close((out,), (ref.numpy().transpose(1, 0, 2),), np.float32)


def test_from_torch_without_bias_gives_zero_biases():
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    module = torch.nn.LSTM(3, 4, bias=False, bidirectional=True, batch_first=True)
    layer = from_torch(module)
    for name, arr in layer.state_dict().items():
        if name.startswith("bias"):
            assert not arr.any()
    X, lengths = _ragged_batch(np.random.default_rng(4), 3, 5, 3, np.float32)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=False)
    _assert_close((out, h_n, c_n), _torch_run(module, X, lengths), np.float32)


def test_from_torch_dtype_choices():
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(2, 3, batch_first=True)
    assert from_torch(module, dtype=np.float64).dtype == np.float64
    assert from_torch(module.to(torch.float16)).dtype == np.float32
    assert from_torch(module.to(torch.bfloat16)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_projections_convert_both_ways(num_layers, bidirectional, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    module = torch.nn.LSTM(4, 6, num_layers=num_layers, bidirectional=bidirectional,
                           proj_size=2, batch_first=True, dtype=tdtype)
    layer = from_torch(module)
    assert layer.proj_size == 2 and layer.dtype == dtype
    X, lengths = _ragged_batch(np.random.default_rng(1), 5, 7, 4, dtype)
    expected = _torch_run(module, X, lengths)
    out, (h_n, c_n) = layer.forward(X, lengths=lengths, training=False)
    _assert_close((out, h_n, c_n), expected, dtype)
    back = to_torch(layer)
    assert back.proj_size == 2
    _assert_close(_torch_run(back, X, lengths), expected, dtype)


def test_from_torch_rejects_what_pylstm_cannot_run():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.nn.LSTM, got GRU"):
        from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(TypeError, match="got LSTMCell"):
        from_torch(torch.nn.LSTMCell(3, 4))
    with pytest.raises(TypeError, match="pylstm.LSTM, got LSTM"):
        to_torch(torch.nn.LSTM(3, 4))


def test_missing_torch_raises_a_helpful_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="to_torch needs PyTorch.*pip install torch"):
        to_torch(LSTM(2, 3))
    with pytest.raises(ImportError, match="from_torch needs PyTorch"):
        from_torch(object())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_estimator_trained_here_runs_in_torch(bidirectional):
    """A fitted classifier's layers and head, rebuilt in torch, give predict_proba."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(int(n), 2)) for n in rng.integers(2, 9, size=30)]
    y = np.array([int(s[:, 0].mean() > 0) for s in X])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LSTMClassifier(hidden_size=5, num_layers=2, bidirectional=bidirectional,
                             max_iter=3, random_state=0, dtype="float64").fit(X, y)
    modules = [to_torch(layer) for layer in clf.network_.layers]
    lengths = np.array([len(s) for s in X])
    Xp = np.zeros((len(X), lengths.max(), 2))
    for i, s in enumerate(X):
        Xp[i, :len(s)] = s
    h = torch.from_numpy(Xp)
    with torch.no_grad():
        for module in modules:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                h, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
            out, (h_n, _) = module(packed)
            h, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        feats = h_n.permute(1, 0, 2).reshape(len(X), -1)
        logits = feats @ torch.from_numpy(clf.network_.coef) + torch.from_numpy(
            clf.network_.intercept)
        proba = torch.softmax(logits, dim=1).numpy()
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- Keras
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _keras_lstm(x, kernel, recurrent_kernel, bias, go_backwards=False):
    """Keras' LSTM (tanh, sigmoid) on one sequence x (T, I); returns h at every step.

    With go_backwards the sequence is read from its end and, as Keras'
    Bidirectional does for the backward layer, the outputs are put back in
    input order.
    """
    H = recurrent_kernel.shape[0]
    h = np.zeros(H)
    c = np.zeros(H)
    steps = x[::-1] if go_backwards else x
    outs = []
    for x_t in steps:
        z = x_t @ kernel + h @ recurrent_kernel + bias
        i = _sigmoid(z[:H])
        f = _sigmoid(z[H:2 * H])
        c_bar = np.tanh(z[2 * H:3 * H])
        o = _sigmoid(z[3 * H:])
        c = f * c + i * c_bar
        h = o * np.tanh(c)
        outs.append(h)
    outs = np.array(outs)
    return outs[::-1] if go_backwards else outs


def _keras_stack(x, kernels, recurrent_kernels, biases):
    """Stacked (Bidirectional) Keras LSTMs over one sequence; nested-list weights."""
    for k, rk, b in zip(kernels, recurrent_kernels, biases, strict=True):
        if isinstance(k, tuple):
            x = np.concatenate([_keras_lstm(x, k[0], rk[0], b[0]),
                                _keras_lstm(x, k[1], rk[1], b[1], go_backwards=True)], axis=1)
        else:
            x = _keras_lstm(x, k, rk, b)
    return x


def _random_keras_weights(rng, I, H, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    kernels, recurrent, biases = [], [], []
    for k in range(num_layers):
        rows = I if k == 0 else D * H
        dirs = [(rng.normal(scale=0.5, size=(rows, 4 * H)),
                 rng.normal(scale=0.5, size=(H, 4 * H)),
                 rng.normal(scale=0.5, size=4 * H)) for _ in range(D)]
        for out, j in zip((kernels, recurrent, biases), range(3), strict=True):
            out.append(tuple(d[j] for d in dirs) if bidirectional else dirs[0][j])
    return kernels, recurrent, biases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_from_keras_weights_matches_keras_equations(num_layers, bidirectional, dtype):
    rng = np.random.default_rng(10)
    I, H = 3, 4
    kernels, recurrent, biases = _random_keras_weights(rng, I, H, num_layers, bidirectional)
    if num_layers == 1 and not bidirectional:
        args = (kernels[0], recurrent[0], biases[0])  # plain arrays
    else:
        args = (kernels, recurrent, biases)
    layer = from_keras_weights(*args, dtype=dtype)
    assert layer.dtype == np.dtype(dtype)
    assert (layer.num_layers, layer.bidirectional) == (num_layers, bidirectional)
    X = rng.normal(size=(5, 6, I))
    lengths = np.array([6, 1, 4, 6, 2])
    out, _ = layer.forward(X.astype(dtype), lengths=lengths, training=False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for b, n in enumerate(lengths):
        ref = _keras_stack(X[b, :n], kernels, recurrent, biases)
        np.testing.assert_allclose(out[b, :n], ref, rtol=0, atol=tol)
        assert not out[b, n:].any()


@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_to_keras_weights_runs_the_same_under_keras_equations(num_layers, bidirectional):
    layer = LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                 random_state=0)
    kernel, recurrent_kernel, bias = to_keras_weights(layer)
    if num_layers == 1 and not bidirectional:
        assert [a.shape for a in (kernel, recurrent_kernel, bias)] == [(3, 16), (4, 16), (16,)]
        kernel, recurrent_kernel, bias = [kernel], [recurrent_kernel], [bias]
    else:
        assert len(kernel) == len(recurrent_kernel) == len(bias) == num_layers
        for entry in kernel:
            assert isinstance(entry, tuple) == bidirectional
    X = np.random.default_rng(0).normal(size=(3, 5, 3))
    out, _ = layer.forward(X, training=False)
    for b in range(3):
        ref = _keras_stack(X[b], kernel, recurrent_kernel, bias)
        np.testing.assert_allclose(out[b], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS)
def test_keras_round_trips(num_layers, bidirectional):
    rng = np.random.default_rng(1)
    keras = _random_keras_weights(rng, 2, 3, num_layers, bidirectional)
    layer = from_keras_weights(*keras)
    # Keras -> pylstm -> Keras gives the same arrays (bias_hh is zero).
    again = to_keras_weights(layer)
    if num_layers == 1 and not bidirectional:
        again = tuple([a] for a in again)
    for ours, theirs in zip(again, keras, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # pylstm -> Keras -> pylstm runs the same (the two biases are summed).
    layer = LSTM(2, 3, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                 random_state=0)
    back = from_keras_weights(*to_keras_weights(layer))
    X = rng.normal(size=(2, 4, 2))
    np.testing.assert_allclose(back.forward(X, lengths=[4, 2], training=False)[0],
                               layer.forward(X, lengths=[4, 2], training=False)[0],
                               rtol=0, atol=1e-14)


def test_keras_dtype_bias_and_state_layout():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 8)).astype(np.float32)
    recurrent_kernel = rng.normal(size=(2, 8)).astype(np.float32)
    layer = from_keras_weights(kernel, recurrent_kernel)  # use_bias=False
    assert layer.dtype == np.float32
    state = layer.state_dict()
    np.testing.assert_array_equal(state["weight_ih_l0"], kernel.T)
    np.testing.assert_array_equal(state["weight_hh_l0"], recurrent_kernel.T)
    assert not state["bias_ih_l0"].any() and not state["bias_hh_l0"].any()
    assert from_keras_weights(kernel.astype(np.float64), recurrent_kernel).dtype == np.float64
    assert from_keras_weights(kernel, recurrent_kernel, dtype="float64").dtype == np.float64
    kernel, recurrent, _ = _random_keras_weights(rng, 3, 2, 2, True)
    layer = from_keras_weights(kernel, recurrent, None)
    assert all(not a.any() for n, a in layer.state_dict().items() if n.startswith("bias"))
    layer = from_keras_weights(kernel, recurrent, [(None, None), (None, None)])
    assert layer.num_layers == 2


def test_keras_structure_and_shape_errors():
    rng = np.random.default_rng(3)
    k = rng.normal(size=(3, 8))
    rk = rng.normal(size=(2, 8))
    b = np.zeros(8)
    with pytest.raises(ValueError, match="must be arrays too"):
        from_keras_weights(k, [rk], b)
    with pytest.raises(ValueError, match="recurrent_kernel must be a list of 2"):
        from_keras_weights([k, k], [rk], [b, b])
    with pytest.raises(ValueError, match="bias must be a list of 1"):
        from_keras_weights([k], [rk], b)
    with pytest.raises(ValueError, match="empty list"):
        from_keras_weights([], [], [])
    with pytest.raises(ValueError, match="same directions"):
        from_keras_weights([(k, k), rng.normal(size=(4, 8))], [(rk, rk), rk], [(b, b), b])
    with pytest.raises(ValueError, match="must be a pair too"):
        from_keras_weights([(k, k)], [rk], [(b, b)])
    with pytest.raises(ValueError, match="forward, backward"):
        from_keras_weights([(k, k, k)], [(rk, rk, rk)], [(b, b, b)])
    with pytest.raises(ValueError, match="must be one array too"):
        from_keras_weights([k], [(rk, rk)], [b])
    with pytest.raises(ValueError, match="4 \\* hidden_size"):
        from_keras_weights(rng.normal(size=(3, 7)), rk, None)
    with pytest.raises(ValueError, match="recurrent_kernel of layer 0 must have shape"):
        from_keras_weights(k, rng.normal(size=(3, 8)), b)
    with pytest.raises(ValueError, match="bias of layer 0 must have shape"):
        from_keras_weights(k, rk, np.zeros(4))
    with pytest.raises(ValueError, match="kernel of layer 1 must have shape \\(2, 8\\)"):
        from_keras_weights([k, k], [rk, rk], [b, b])
    with pytest.raises(ValueError, match="kernel of layer 1, backward direction"):
        from_keras_weights([(k, k), (rng.normal(size=(4, 8)), k)], [(rk, rk)] * 2,
                           [(b, b)] * 2)
    with pytest.raises(TypeError, match="must hold real numbers"):
        from_keras_weights(np.full((3, 8), "x"), rk, b)
    with pytest.raises(ValueError, match="NaN"):
        from_keras_weights(np.full((3, 8), np.nan), rk, b)
    with pytest.raises(TypeError, match="pylstm.LSTM, got ndarray"):
        to_keras_weights(k)


def test_public_names():
    assert pylstm.interop.from_torch is from_torch
    assert {"interop", "export_onnx"} <= set(pylstm.__all__)


def test_doctests():
    import doctest

    result = doctest.testmod(pylstm.interop, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
