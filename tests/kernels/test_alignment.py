"""The arrays that the kernels read and write start on a cache line (64 bytes)."""

import numpy as np
import pytest

from pylstm import LSTM
from pylstm._workspace import Workspace, aligned_empty, aligned_zeros


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.intc, np.int8])
@pytest.mark.parametrize("shape", [0, 1, 7, np.int64(9), (3, 5), (2, 3, 17)])
def test_aligned_empty_and_zeros(shape, dtype):
    for make in (aligned_empty, aligned_zeros):
        arrs = [make(shape, dtype) for _ in range(5)]
        for a in arrs:
            assert a.shape == ((shape,) if np.ndim(shape) == 0 else shape)
            assert a.dtype == np.dtype(dtype)
            assert a.flags.c_contiguous and a.flags.writeable
            # (An empty array has no data to align.)
            assert a.size == 0 or a.ctypes.data % 64 == 0
        if make is aligned_zeros:
            assert all(not a.any() for a in arrs)
    # Distinct calls never share memory.
    a, b = aligned_empty(shape, dtype), aligned_empty(shape, dtype)
    assert not np.shares_memory(a, b)


def test_workspace_arrays_are_aligned():
    ws = Workspace()
    with ws.borrow() as arrays:
        for n, name in [(13, "a"), (1000, "b"), (5, "a")]:  # "a" reused smaller
            assert arrays.empty(name, (n, 3), np.float32).ctypes.data % 64 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [None, [5, 3, 4]])
def test_layer_outputs_and_gradients_are_aligned(dtype, lengths):
    layer = LSTM(5, 8, num_layers=2, bidirectional=True, dtype=dtype, random_state=0)
    X = np.random.default_rng(0).standard_normal((3, 5, 5)).astype(dtype)
    for training in (False, True):
        out, _ = layer.forward(X, lengths=lengths, training=training)
        assert out.ctypes.data % 64 == 0
    dX, grads = layer.backward(np.ones_like(out))
    assert dX.ctypes.data % 64 == 0
    for name in layer.state_dict():
        if name.startswith("weight"):
            assert grads[name].ctypes.data % 64 == 0, name
    for buf in layer._workspace._buffers.values():
        assert buf.ctypes.data % 64 == 0
