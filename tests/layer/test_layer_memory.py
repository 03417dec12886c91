"""Memory use of the forward pass, measured with tracemalloc.

NumPy reports its data allocations to tracemalloc (its own allocator domain), so
the peak traced memory of a call bounds the arrays it allocated. The first test
checks that this holds here; the others skip if it does not.
"""

import tracemalloc
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pylstm._network as network_module
from pylstm import LSTM, LSTMRegressor, _lstm
from pylstm._network import SequenceNetwork
from pylstm._tuning import PACK_CACHE_MAX_ROWS

MIB = 2**20


def _numpy_is_traced():
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        arr = np.empty(2 * MIB, dtype=np.uint8)
        arr[:] = 1
        grown = tracemalloc.get_traced_memory()[0] - before
        del arr
        return grown >= 2 * MIB
    finally:
        tracemalloc.stop()


NUMPY_TRACED = _numpy_is_traced()
needs_tracing = pytest.mark.skipif(not NUMPY_TRACED,
                                   reason="NumPy allocations are not traced by tracemalloc")


def _peak(fn):
    """Run fn() under tracemalloc; return (result, peak bytes above the start)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return result, peak


def _sizes(B, T, n_in, H, num_layers, D, itemsize):
    """Bytes of the input copy, of one layer's output and of all training caches."""
    x = B * T * n_in * itemsize
    out = B * T * D * H * itemsize
    # Per layer and direction: gates (T, B, 4H), c (T, B, H) and h_prev (T, B, H).
    cache = num_layers * D * T * B * (4 * H + H + H) * itemsize
    return x, out, cache


def test_tracemalloc_sees_numpy_allocations():
    assert NUMPY_TRACED
    (_, peak) = _peak(lambda: np.ones((1000, 1000)).sum())
    assert 8_000_000 <= peak < 8_000_000 + MIB


@needs_tracing
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_keeps_no_per_step_state(dtype):
    B, T, n_in, H = 2, 20000, 4, 32
    itemsize = np.dtype(dtype).itemsize
    layer = LSTM(n_in, H, dtype=dtype, random_state=0)
    X = np.random.default_rng(0).normal(size=(B, T, n_in)).astype(dtype)
    x_bytes, out_bytes, cache_bytes = _sizes(B, T, n_in, H, 1, 1, itemsize)

    (out_inf, _), peak_inf = _peak(lambda: layer.forward(X, training=False))
    assert layer._cache is None
    layer.free_workspace()  # measure what a first training call allocates
    (out_train, _), peak_train = _peak(lambda: layer.forward(X, training=True))
    assert layer._cache is not None

    # Inference: the time-major input copy, the layer output and the returned
    # batch-first output, plus O(chunk) work space; nothing of size T * 4H.
    assert peak_inf <= x_bytes + 2 * out_bytes + MIB, (peak_inf, x_bytes, out_bytes)
    assert peak_inf < 0.5 * cache_bytes
    assert peak_inf < 0.4 * peak_train
    # Training really keeps the cache (so the bound above is not vacuous).
    assert peak_train >= cache_bytes + out_bytes
    np.testing.assert_allclose(out_inf, out_train, rtol=0,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


@needs_tracing
def test_inference_extra_memory_does_not_grow_with_length():
    B, n_in, H = 3, 2, 16
    layer = LSTM(n_in, H, num_layers=2, bidirectional=True, dtype=np.float64, random_state=1)
    overheads = []
    for T in (2000, 16000):
        X = np.random.default_rng(T).normal(size=(B, T, n_in))
        x_bytes, out_bytes, _ = _sizes(B, T, n_in, H, 2, 2, 8)
        lengths = [T, T // 2, 7]
        layer.free_workspace()
        _, peak = _peak(lambda X=X, lengths=lengths: layer.forward(X, lengths=lengths,
                                                                    training=False))
        # Two consecutive layers' outputs (or the last one and the result) are alive.
        overheads.append(peak - (x_bytes + 2 * out_bytes))
    assert layer._cache is None
    assert max(overheads) < MIB, overheads
    assert overheads[1] - overheads[0] < 256 * 1024, overheads


@needs_tracing
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [4, 1])
def test_dense_inference_needs_nothing_of_size_T_but_the_result(dtype, B):
    """Equal lengths: the kernel reads X and writes the result in place."""
    n_in, H = 8, 32
    itemsize = np.dtype(dtype).itemsize
    layer = LSTM(n_in, H, bidirectional=True, dtype=dtype, random_state=3)
    extra = []
    for T in (40, 2000, 16000):
        X = np.random.default_rng(T).normal(size=(B, T, n_in)).astype(dtype)
        layer.free_workspace()
        (out, _), peak = _peak(lambda X=X: layer.forward(X, training=False))
        assert out.shape == (B, T, 2 * H)
        # The kernels' scratch (packed weights: _lstm.work_size), kept by the
        # layer: of the size of the weights, whatever T.
        scratch = sum(buf.nbytes for name, buf in layer._workspace._buffers.items()
                      if name.startswith("work"))
        assert scratch <= 2 * _lstm.work_size(n_in, H, B, dtype) * itemsize
        extra.append(peak - out.nbytes - scratch)
        # Same values as the time-major path of the training kernel.
        ref, _ = layer.forward(X, training=True)
        np.testing.assert_array_equal(out, ref)
    # Beyond the result: per direction the chunk buffers (32 steps x B x 4H),
    # W_hh^T and the states, the same at 50x and 400x the length (the result
    # is 16 or 32 MB at T = 16000).
    # One row (B = 1) keeps the packed weights from call to call (two
    # directions, each with copies of the weights they come from) in calls of
    # up to PACK_CACHE_MAX_ROWS rows: a constant, not a growth with T.
    packs = [2 * _lstm.pack_cache_size(n_in, H, dtype) * itemsize
             if _lstm.packs_weights(T, B) and B * T <= PACK_CACHE_MAX_ROWS else 0
             for T in (40, 2000, 16000)]
    assert packs[-1] == 0
    extra = [e - p for e, p in zip(extra, packs, strict=True)]
    work = 2 * (32 * B * (4 * H + n_in) + 4 * H * H + 4 * B * H) * itemsize
    assert max(extra) < 1.5 * work, (extra, work)
    assert max(extra) - min(extra) < 16 * 1024, extra


# ---------------------------------------------------------------- sequence-level prediction
@needs_tracing
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_memory_does_not_grow_with_length(monkeypatch, dtype):
    """Only the final states are needed: read in chunks, O(B x H) state is carried."""
    # Chunks of 512 steps here, so that a test-sized T spans many of them.
    monkeypatch.setattr(network_module, "_FINAL_STATE_CHUNK_ELEMENTS", 512 * 32, raising=False)
    H = 32
    itemsize = np.dtype(dtype).itemsize
    rng = np.random.default_rng(0)
    est = LSTMRegressor(hidden_size=H, num_layers=2, max_iter=1, dtype=dtype, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=1 does not converge
        est.fit(rng.normal(size=(20, 10, 1)), rng.normal(size=20))
    peaks, results = [], {}
    for T in (20_000, 80_000):
        X = rng.normal(size=(2, T, 1)).astype(dtype)
        for name, method in (("predict", est.predict), ("transform", est.transform)):
            results[name, T], peak = _peak(lambda X=X, method=method: method(X))
            peaks.append(peak)
    # Layer outputs of every step would add 60_000 x H x itemsize per row and layer
    # (15 or 31 MB); what grows is the copy of X's batch (60_000 x itemsize per row).
    growth = max(peaks[2] - peaks[0], peaks[3] - peaks[1])
    assert growth < 2 * 60_000 * (H * itemsize) / 8, peaks
    # The chunks give the result of one call, to rounding.
    monkeypatch.setattr(network_module, "_FINAL_STATE_CHUNK_ELEMENTS", 2**40)
    np.testing.assert_allclose(results["predict", 80_000], est.predict(X),
                               rtol=1e-5 if dtype == "float32" else 1e-12)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), num_layers=st.integers(1, 3), steps=st.integers(1, 12),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_final_states_in_chunks_equal_one_call(data, num_layers, steps, dtype):
    B = data.draw(st.integers(1, 6))
    lengths = np.array(data.draw(st.lists(st.integers(1, 40), min_size=B, max_size=B)))
    T = int(lengths.max()) + data.draw(st.integers(0, 3))
    rng = np.random.RandomState(data.draw(st.integers(0, 2**16)))
    net = SequenceNetwork(3, 2, 5, num_layers, False, 0.0, False, dtype, rng)
    X = rng.normal(size=(B, T, 3)).astype(dtype)
    whole = net.features(X, lengths, final_states=True)
    with mock.patch.object(network_module, "_FINAL_STATE_CHUNK_ELEMENTS", 0), \
            mock.patch.object(network_module, "_MIN_CHUNK_STEPS", steps):
        assert net._chunk_steps(B) == steps
        chunked = net.features(X, lengths, final_states=True)
    np.testing.assert_allclose(chunked, whole, rtol=0,
                               atol=1e-6 if dtype == np.float32 else 1e-14)


@needs_tracing
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True)])
def test_training_peak_is_the_cache(num_layers, bidirectional):
    B, T, n_in, H = 2, 8000, 4, 32
    D = 2 if bidirectional else 1
    layer = LSTM(n_in, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                 random_state=0)
    X = np.random.default_rng(1).normal(size=(B, T, n_in))
    x_bytes, out_bytes, cache_bytes = _sizes(B, T, n_in, H, num_layers, D, 8)
    # Caches, every layer's output (kept as the next layer's input), the result
    # and the time-major copy of X.
    theory = cache_bytes + (num_layers + 1) * out_bytes + x_bytes

    def run():
        out, _ = layer.forward(X, training=True)
        held = tracemalloc.get_traced_memory()[0]
        return out, held

    (out, held), peak = _peak(run)
    assert peak >= cache_bytes
    assert peak <= 1.5 * theory, (peak, theory)
    assert peak <= 1.5 * (cache_bytes + 2 * out_bytes * num_layers + x_bytes)
    # What stays allocated after forward is essentially the cache (plus the output).
    assert held >= cache_bytes

    dX, _ = layer.backward(np.ones_like(out))
    assert layer._cache is None
    assert dX.shape == X.shape


@needs_tracing
def test_workspace_is_reused_then_freed():
    B, T, n_in, H = 2, 5000, 3, 32
    layer = LSTM(n_in, H, dtype=np.float64, random_state=0)
    X = np.random.default_rng(2).normal(size=(B, T, n_in))
    _, _, cache_bytes = _sizes(B, T, n_in, H, 1, 1, 8)
    d_out = np.ones((B, T, H))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        out, _ = layer.forward(X, training=True)
        after_forward = tracemalloc.get_traced_memory()[0] - start
        dX, grads = layer.backward(d_out)
        del out, dX, grads
        after_backward = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.reset_peak()
        held = tracemalloc.get_traced_memory()[0]
        out, _ = layer.forward(X, training=True)
        dX, grads = layer.backward(d_out)
        second_step = tracemalloc.get_traced_memory()[1] - held
        del out, dX, grads
        layer.free_workspace()
        after_free = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert after_forward >= cache_bytes
    # The cache is used up by backward but its arrays are kept for the next step ...
    assert layer._cache is None
    assert cache_bytes <= after_backward <= 1.5 * cache_bytes, (after_backward, cache_bytes)
    # ... which allocates only its results (output, dX, gradients) on top.
    out_bytes = B * T * H * 8
    assert second_step <= 2 * out_bytes + 0.05 * cache_bytes, (second_step, cache_bytes)
    # free_workspace gives it all back.
    assert after_free < 0.05 * cache_bytes, after_free
    assert layer.workspace_nbytes == 0


def test_workspace_not_pickled():
    import pickle

    layer = LSTM(3, 4, random_state=0)
    layer.forward(np.ones((2, 50, 3)), training=True)
    assert layer.workspace_nbytes > 0
    clone = pickle.loads(pickle.dumps(layer))
    assert clone.workspace_nbytes == 0
    assert clone._cache is None
    out, _ = clone.forward(np.ones((2, 50, 3)), training=False)
    np.testing.assert_array_equal(out, layer.forward(np.ones((2, 50, 3)), training=False)[0])


@needs_tracing
@pytest.mark.parametrize(("B", "T", "n_in", "H", "L", "bidi", "var"), [
    (64, 100, 64, 128, 1, False, False),
    (16, 400, 8, 64, 1, False, False),
    (64, 100, 64, 128, 2, True, True),   # the benchmark's variable-length case
    # One long row, the others short. (At T=300 the input-projection chunk,
    # a fixed 2**15 values per direction, would be 12% of this small step.)
    (12, 600, 16, 32, 1, False, True),
    (1, 100, 32, 128, 1, False, False),  # batch 1: the weights outweigh the cache
])
def test_training_step_within_1_2x_of_the_bptt_minimum(B, T, n_in, H, L, bidi, var):
    """Forward + backward: peak against what BPTT must hold.

    The minimum (as in benchmarks/bench_lstm.py), with n the number of valid
    steps: per valid step and layer and direction the gates (4H), c (H) and
    h (H); parameters and their gradients; dX and the output (padded, as
    returned); the final states and the initial-state gradients. With
    variable lengths only the valid steps may cost memory.
    """
    D = 2 if bidi else 1
    rng = np.random.default_rng(0)
    layer = LSTM(n_in, H, num_layers=L, bidirectional=bidi, dtype=np.float32, random_state=0)
    X = rng.normal(size=(B, T, n_in)).astype(np.float32)
    lengths = None
    n = B * T
    if var:
        lengths = (rng.integers(T // 2, T + 1, size=B) if bidi
                   else np.array([T] + [T // 20] * (B - 1)))
        n = int(lengths.sum())
    d_out = np.ones((B, T, D * H), dtype=np.float32)
    P = sum(p.size for p in layer.parameters())
    theory = 4 * (L * D * n * 6 * H + 2 * P + B * T * n_in + B * T * D * H + 4 * L * D * B * H)

    def step():
        out, _ = layer.forward(X, lengths=lengths, training=True)
        return layer.backward(d_out)

    _, peak = _peak(step)
    # The kernels' scratch is counted: the packed weights of the time loops
    # lie in the arrays that then receive the weight gradients
    # (_lstm.gradient_work_size); the layer keeps the rest, the packed W_ih
    # of the input gradient and, where the backward pass fuses the weight
    # gradients (large batches), scratch of the weights' size.
    scratch = sum(buf.nbytes for name, buf in layer._workspace._buffers.items()
                  if name.startswith("work"))
    assert 0 < scratch <= 4 * (P + L * D * (B * 4 * H + 256)), (scratch, P)
    assert (peak + 4 * P) / theory <= 1.2, (peak + 4 * P) / theory
