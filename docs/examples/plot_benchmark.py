"""
===============================
Benchmark: pylstm against NumPy
===============================

How much do compiled kernels buy over the same algorithm written with NumPy?
This example times :class:`pylstm.LSTM` against a straightforward NumPy LSTM
(the gate order and equations of :ref:`lstm_cell`; one matrix product for
the input projection of all steps, one per step for the recurrence, a Python
loop over time) and, if it is installed, ``torch.nn.LSTM`` on the CPU. Both
inference (``forward(training=False)``) and a training step (forward plus
backpropagation through time) are timed, after checking that the
implementations agree.

The figures are measured on the machine that builds this page, with one
thread per library so that they are comparable and stable; they depend on
the CPU, the BLAS and the machine's load. ``benchmarks/bench_lstm.py`` in the
repository is the full benchmark (see :ref:`performance`). If result files
written by it are present in ``benchmarks/results/``, their speed-ups are
charted at the end.
"""

# %%
# A NumPy LSTM
# ------------
import glob
import json
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from pylstm import LSTM


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class NumpyLSTM:
    """One-layer LSTM, gate order (i, f, g, o), batch-first input."""

    def __init__(self, state_dict):
        self.W_ih = state_dict["weight_ih_l0"]
        self.W_hh = state_dict["weight_hh_l0"]
        self.b = state_dict["bias_ih_l0"] + state_dict["bias_hh_l0"]

    def forward(self, X):
        B, T, _ = X.shape
        H = self.W_hh.shape[1]
        xw = X @ self.W_ih.T + self.b  # every step's input projection at once
        h, c = np.zeros((B, H), X.dtype), np.zeros((B, H), X.dtype)
        out, self.cache = np.empty((B, T, H), X.dtype), []
        for t in range(T):
            z = xw[:, t] + h @ self.W_hh.T
            i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
            g, o = np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
            self.cache.append((h, c, i, f, g, o))
            c = f * c + i * g
            h = o * np.tanh(c)
            out[:, t] = h
        self.X, self.c_last = X, c
        return out

    def backward(self, d_out):
        B, T, _ = d_out.shape
        H = self.W_hh.shape[1]
        dz = np.empty((B, T, 4 * H), d_out.dtype)
        dh, dc = np.zeros((B, H), d_out.dtype), np.zeros((B, H), d_out.dtype)
        c = self.c_last
        for t in range(T - 1, -1, -1):
            h_prev, c_prev, i, f, g, o = self.cache[t]
            dh = dh + d_out[:, t]
            tc = np.tanh(c)
            dc = dc + dh * o * (1 - tc**2)
            dz[:, t, :H] = dc * g * i * (1 - i)
            dz[:, t, H:2 * H] = dc * c_prev * f * (1 - f)
            dz[:, t, 2 * H:3 * H] = dc * i * (1 - g**2)
            dz[:, t, 3 * H:] = dh * tc * o * (1 - o)
            dh = dz[:, t] @ self.W_hh
            dc = dc * f
            c = c_prev
        h_prev = np.stack([entry[0] for entry in self.cache], axis=1)
        flat = dz.reshape(B * T, 4 * H)
        grads = {"weight_ih_l0": flat.T @ self.X.reshape(B * T, -1),
                 "weight_hh_l0": flat.T @ h_prev.reshape(B * T, H),
                 "bias": flat.sum(axis=0)}
        return dz @ self.W_ih, grads


# %%
# Agreement first
# ---------------
# Same weights, same input: the outputs and the gradients must match.
rng = np.random.default_rng(0)
layer = LSTM(16, 32, dtype=np.float64, random_state=0)
reference = NumpyLSTM(layer.state_dict())
X = rng.normal(size=(8, 20, 16))
out, _ = layer.forward(X, training=True)
dX, grads = layer.backward(np.ones_like(out))
ref_out = reference.forward(X)
ref_dX, ref_grads = reference.backward(np.ones_like(out))
print("max |out - numpy|:   ", np.abs(out - ref_out).max())
print("max |dX - numpy|:    ", np.abs(dX - ref_dX).max())
dW_hh, ref_dW_hh = grads["weight_hh_l0"], ref_grads["weight_hh_l0"]
print("max |dW_hh - numpy|: ", np.abs(dW_hh - ref_dW_hh).max())

# %%
# Timing
# ------
# Median of several repetitions of each call, in float32, for four cases
# (batch ``B`` x steps ``T`` x input features ``I`` x hidden units ``H``)
# from a single long sequence with a small state, where per-step overhead
# dominates, to a large batch with a large state, where the arithmetic does.
try:
    import torch
except ImportError:
    torch = None


def median_time(fn, min_time=0.05, repeats=5):
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return float(np.median(samples))


def time_case(B, T, I, H):
    """Seconds per call of each implementation and mode for one case."""
    layer = LSTM(I, H, dtype=np.float32, random_state=0)
    reference = NumpyLSTM(layer.state_dict())
    X = rng.normal(size=(B, T, I)).astype(np.float32)
    ones = np.ones((B, T, H), np.float32)

    def pylstm_train():
        layer.forward(X, training=True)
        layer.backward(ones)

    def numpy_train():
        reference.forward(X)
        reference.backward(ones)

    result = {
        ("pylstm", "inference"): median_time(
            lambda: layer.forward(X, training=False)),
        ("pylstm", "training step"): median_time(pylstm_train),
        ("NumPy", "inference"): median_time(lambda: reference.forward(X)),
        ("NumPy", "training step"): median_time(numpy_train),
    }
    if torch is not None:
        module = torch.nn.LSTM(I, H, batch_first=True)
        Xt = torch.from_numpy(X)
        ones_t = torch.from_numpy(ones)

        def torch_infer():
            with torch.no_grad():
                module(Xt)

        def torch_train():
            out, _ = module(Xt.requires_grad_())
            (out * ones_t).sum().backward()

        result["PyTorch", "inference"] = median_time(torch_infer)
        result["PyTorch", "training step"] = median_time(torch_train)
    return result


cases = [(1, 200, 16, 32), (8, 100, 16, 64), (32, 50, 32, 128),
         (64, 50, 64, 256)]
labels = [f"{B}x{T}x{I}x{H}" for B, T, I, H in cases]
tick_labels = [f"B={B}, T={T}\nI={I}, H={H}" for B, T, I, H in cases]
modes = ("inference", "training step")
times = {}
with threadpool_limits(limits=1):
    if torch is not None:
        torch.set_num_threads(1)
    for label, case in zip(labels, cases, strict=True):
        for (name, mode), seconds in time_case(*case).items():
            times[name, mode, label] = seconds

implementations = ["pylstm", "NumPy"]
if torch is not None:
    implementations.append("PyTorch")
print(f"{'case BxTxIxH':<14} {'mode':<14}"
      + "".join(f"{n + ' ms':>12}" for n in implementations))
for label in labels:
    for mode in modes:
        print(f"{label:<14} {mode:<14}"
              + "".join(f"{1e3 * times[n, mode, label]:>12.3f}"
                        for n in implementations))

# %%
# The chart
# ---------
# Milliseconds per call (log scale, lower is better), and the time ratio of
# the other implementations to pylstm (above 1: pylstm is faster). Where the
# per-step work is small, the NumPy loop's interpreter overhead and
# temporaries dominate; where it is large, the matrix products and the gate
# arithmetic dominate, and how well each implementation vectorises them
# decides.
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
colors = {"pylstm": "tab:blue", "NumPy": "tab:orange", "PyTorch": "tab:green"}
width = 0.8 / len(implementations)
x = np.arange(len(labels))
for ax, mode in zip(axes[:2], modes, strict=True):
    for j, name in enumerate(implementations):
        ax.bar(x + (j - (len(implementations) - 1) / 2) * width,
               [1e3 * times[name, mode, label] for label in labels], width,
               label=name, color=colors[name])
    ax.set_xticks(x, tick_labels, fontsize="small")
    ax.set_xlabel("case")
    ax.set_yscale("log")
    ax.set_title(f"{mode}: ms per call", fontsize="medium")
axes[0].set_ylabel("milliseconds (log scale)")
axes[0].legend()
ax = axes[2]
for name in implementations[1:]:
    for mode, style in zip(modes, ("o-", "s--"), strict=True):
        ax.plot(x, [times[name, mode, label] / times["pylstm", mode, label]
                    for label in labels], style, color=colors[name],
                label=f"{name} / pylstm, {mode}")
ax.axhline(1, color="gray", lw=0.8)
ax.set_yscale("log")
ax.set_xticks(x, tick_labels, fontsize="small")
ax.set_xlabel("case")
ax.set_ylabel("time ratio (above 1: pylstm faster)")
ax.set_title("relative speed", fontsize="medium")
ax.legend(fontsize="small")
plt.show()

# %%
# Result files of ``benchmarks/bench_lstm.py``
# --------------------------------------------
# ``python benchmarks/bench_lstm.py --json benchmarks/results/NAME.json``
# writes every figure of a full run. Such files, when present next to the
# documentation's sources, are charted here: the speed-up of pylstm for every
# case, dtype and mode.
folder = os.path.abspath(os.getcwd())  # the gallery runs in docs/examples
while not os.path.isdir(os.path.join(folder, "benchmarks")):
    parent = os.path.dirname(folder)
    if parent == folder:
        break
    folder = parent
results = os.path.join(folder, "benchmarks", "results")
files = sorted(glob.glob(os.path.join(results, "*.json")))
runs = []
for path in files:
    with open(path) as fh:
        try:
            data = json.load(fh)
        except ValueError:
            continue
    if isinstance(data, dict) and "timings" in data:
        runs.append((os.path.basename(path), data["timings"]))
if not runs:
    print("no bench_lstm.py result files in benchmarks/results/")
ratios = (("numpy_over_pylstm", "NumPy / pylstm", "tab:orange"),
          ("torch_over_pylstm", "PyTorch / pylstm", "tab:green"))
for name, rows in runs:
    labels = [f"{r['case']} {r['dtype']} {r['mode']}"
              + (f" {r['threads']}t" if r.get("threads") else "") for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5),
                           layout="constrained")
    y = np.arange(len(rows))
    for key, label, color in ratios:
        values = [r.get(key) or np.nan for r in rows]
        ax.scatter(values, y, label=label, color=color)
    ax.axvline(1, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize="x-small")
    ax.set_xlabel("time ratio (above 1: pylstm faster)")
    ax.set_title(name)
    ax.legend()
    plt.show()
