"""
=====================================
The adding problem: long-range memory
=====================================

The adding problem of Hochreiter and Schmidhuber (1997) is the classic test
of long-range memory. Each sequence has two channels: random values in
``[0, 1)``, and a marker that is 1 at exactly two steps, one in each half of
the sequence. The target is the sum of the two marked values. To solve it,
a network must notice the first marked value, keep it over up to half the
sequence while ignoring everything else, and add the second one
(:func:`pylstm.datasets.make_adding_problem`).

Predicting the mean target (1.0) gives a mean squared error (MSE) of
``1/6``; a model has learned the task only if it does clearly better. We
train an :class:`~pylstm.LSTMRegressor` one epoch at a time with
``partial_fit`` for three sequence lengths and compare its learning curves
with what models that see the whole sequence at once reach: a linear model
and a multi-layer perceptron (MLP) on the flattened sequence.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor

from pylstm import LSTMRegressor
from pylstm.datasets import make_adding_problem

X, y = make_adding_problem(n_samples=4, n_timesteps=10, random_state=0)
print("values: ", np.round(X[0, :, 0], 2))
print("markers:", X[0, :, 1])
print("target: ", round(y[0], 3))

# %%
# Learning curves
# ---------------
# For each length ``T``, 1,500 training and 500 test sequences. The LSTM
# gets 15 epochs; after each one we record its test MSE. The baselines are
# fitted on the flattened sequences (``2 * T`` features).
lengths = (10, 25, 50)
n_epochs = 15
results = {}
for T in lengths:
    X_train, y_train = make_adding_problem(1500, T, random_state=0)
    X_test, y_test = make_adding_problem(500, T, random_state=1)

    def test_mse(predict, X=X_test, y=y_test):
        return float(np.mean((predict(X) - y) ** 2))

    reg = LSTMRegressor(hidden_size=32, learning_rate_init=0.01,
                        dtype="float32", random_state=0)
    curve = []
    for _ in range(n_epochs):
        reg.partial_fit(X_train, y_train)  # one more epoch
        curve.append(test_mse(reg.predict))

    flat_train = X_train.reshape(len(X_train), -1)
    flat_test = X_test.reshape(len(X_test), -1)
    ridge = Ridge(alpha=1.0).fit(flat_train, y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(64,), max_iter=200,
                           random_state=0).fit(flat_train, y_train)
    results[T] = {
        "LSTM": curve,
        "linear": test_mse(ridge.predict, flat_test),
        "MLP": test_mse(mlp.predict, flat_test),
    }
    print(f"T={T:>3}: LSTM {curve[-1]:.4f} after {n_epochs} epochs, "
          f"MLP {results[T]['MLP']:.4f}, linear {results[T]['linear']:.4f}")

# %%
# Plot
# ----
# The LSTM's test error sits at the level of the mean predictor for a
# while, the longer the sequence the longer, then drops by two orders of
# magnitude once it has learned to hold the first value. The MLP, which has
# to find the marked values among ``2 * T`` inputs without sharing weights
# across time, manages short sequences only; the linear model cannot
# multiply a value by its marker and stays near the mean predictor.
fig, axes = plt.subplots(1, len(lengths), figsize=(12, 3.8), sharey=True,
                         layout="constrained")
epochs = np.arange(1, n_epochs + 1)
for ax, T in zip(axes, lengths, strict=True):
    r = results[T]
    ax.plot(epochs, r["LSTM"], "o-", color="tab:blue", label="LSTM (test)")
    ax.axhline(1 / 6, color="gray", ls="--", label="predict the mean (1/6)")
    ax.axhline(r["linear"], color="tab:orange", ls=":", label="linear model")
    ax.axhline(r["MLP"], color="tab:green", ls="-.", label="MLP")
    ax.set_yscale("log")
    ax.set_title(f"sequences of T = {T} steps")
    ax.set_xlabel("epoch")
axes[0].set_ylabel("test mean squared error")
axes[0].legend(fontsize="small", loc="lower left")
plt.show()

# %%
# The plateau is the vanishing gradient at work (see :ref:`lstm_cell`): at
# first, the error signal about the first marked value has to travel back
# over up to ``T`` steps. The gated cell state lets it arrive, and once the
# network starts to use the marker, learning is fast.
