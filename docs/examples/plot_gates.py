"""
==========================================
What the gates do: looking inside the cell
==========================================

An LSTM that has learned a memory task, opened up. The task is the adding
problem (:func:`pylstm.datasets.make_adding_problem`): each sequence carries
random values and a marker channel that flags two steps, one in each half;
the target is the sum of the two flagged values. The network must *write*
the first flagged value into its memory when the marker comes, *keep* it
while ignoring the unflagged values, and *read* it out at the end.

:meth:`pylstm.LSTMRegressor.gate_activations` returns, for every step, the
input gate :math:`i_t`, forget gate :math:`f_t`, candidate :math:`g_t`,
output gate :math:`o_t`, cell state :math:`c_t` and hidden state
:math:`h_t` of each unit (see :ref:`lstm_cell` for the equations). We train
a small network (8 units) and plot them.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from pylstm import LSTMRegressor
from pylstm.datasets import make_adding_problem

T = 30
X, y = make_adding_problem(n_samples=2000, n_timesteps=T, random_state=0)
X_test, y_test = make_adding_problem(n_samples=300, n_timesteps=T,
                                     random_state=1)

reg = LSTMRegressor(hidden_size=8, max_iter=30, n_iter_no_change=30,
                    learning_rate_init=0.01, dtype="float32", random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget
    reg.fit(X, y)
mse = float(np.mean((reg.predict(X_test) - y_test) ** 2))
print(f"test MSE {mse:.4f} (predicting the mean: {1 / 6:.4f})")

# %%
# Gate activations
# ----------------
# One dict per layer and direction; each array has shape
# ``(n_samples, n_timesteps, hidden_size)``.
gates = reg.gate_activations(X_test)["l0"]
print({name: a.shape for name, a in gates.items()})

# %%
# Which unit holds the memory?
# ----------------------------
# Between the two markers, the network must carry the first flagged value.
# For every unit, correlate its cell state just before the second marker with
# that value, over the test sequences: the unit with the strongest
# correlation is the memory.
marks = np.argsort(-X_test[:, :, 1], axis=1, kind="stable")[:, :2]
first, second = marks.min(axis=1), marks.max(axis=1)
rows = np.arange(len(X_test))
first_value = X_test[rows, first, 0]
c_before = gates["c"][rows, second - 1]
corr = np.array([np.corrcoef(c_before[:, j], first_value)[0, 1]
                 for j in range(reg.hidden_size)])
memory = int(np.argmax(np.abs(corr)))
print("correlation of each unit's cell state with the first value:",
      np.round(corr, 2))
print(f"memory unit: {memory}")

# %%
# Heatmaps over time for one sequence
# -----------------------------------
# Rows are the 8 units (the memory unit is marked), columns the steps; the
# dashed lines are the two markers. Look at the memory unit: its input gate
# opens at the first marker, the cell state jumps to a level set by the
# flagged value and stays there (forget gate near 1) until the second marker.
# The cell states are shown scaled, each unit by its largest magnitude in this
# sequence, so that small and large units are equally visible.
k = 0
panels = [("input", "input gate $i_t$", "viridis", (0, 1)),
          ("forget", "forget gate $f_t$", "viridis", (0, 1)),
          ("output", "output gate $o_t$", "viridis", (0, 1)),
          ("c", "cell state $c_t$ (scaled per unit)", "RdBu_r", (-1, 1))]
fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(9, 10), sharex=True,
                         layout="constrained",
                         height_ratios=[1.2] + [2] * len(panels))
ax = axes[0]
flagged = X_test[k, :, 1] > 0
ax.bar(np.arange(T), X_test[k, :, 0],
       color=np.where(flagged, "tab:red", "0.6"))
ax.set_ylabel("value")
prediction = reg.predict(X_test[k:k + 1])[0]
ax.set_title(f"input sequence (flagged values in red), target {y_test[k]:.2f},"
             f" prediction {prediction:.2f}")
for ax, (name, title, cmap, lims) in zip(axes[1:], panels, strict=True):
    data = gates[name][k].T
    if name == "c":
        data = data / np.abs(data).max(axis=1, keepdims=True)
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=lims[0], vmax=lims[1],
                   interpolation="nearest")
    ax.set_yticks(range(reg.hidden_size),
                  [f"unit {j}" + (" (memory)" if j == memory else "")
                   for j in range(reg.hidden_size)], fontsize="x-small")
    ax.set_title(title, loc="left")
    fig.colorbar(im, ax=ax, pad=0.01)
    for t in (first[k], second[k]):
        line_color = "white" if cmap == "viridis" else "black"
        ax.axvline(t, color=line_color, ls="--", lw=1)
axes[-1].set_xlabel("time step")
plt.show()

# %%
# The memory unit across many sequences
# -------------------------------------
# The memory unit's cell state for 40 test sequences, from just before the
# first marker to the step before the second one, aligned on the first marker
# and coloured by the first flagged value. The value is written at the marker
# and then held: the level encodes the value to remember (the sign of the
# encoding is the network's arbitrary choice).
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
cmap = plt.get_cmap("coolwarm")
for i in range(40):
    span = np.arange(max(first[i] - 3, 0), second[i])
    ax.plot(span - first[i], gates["c"][i, span, memory],
            color=cmap(first_value[i]), alpha=0.8)
ax.axvline(0, color="black", ls="--", lw=1)
ax.set_xlabel("steps after the first marker (until the second marker)")
ax.set_ylabel(f"cell state of unit {memory}")
sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
fig.colorbar(sm, ax=ax, label="first flagged value")
plt.show()

# %%
# The other units do other jobs, for instance tracking whether the second
# marker has been seen. Trained networks rarely keep one clean variable in
# one unit, but on a task with a single thing to remember, one usually
# dominates.
