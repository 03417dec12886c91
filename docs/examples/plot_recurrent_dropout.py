"""
======================================================
Recurrent dropout against overfitting a small data set
======================================================

With 150 training sequences, an LSTM of 128 units has far more weights than
the data can pin down: its training loss falls towards zero while the loss
on new data stops improving and then rises. ``recurrent_dropout`` zeroes a
random share of the units of h_{t-1} where it enters the recurrent product,
with one mask per sequence that stays the same at every step (Gal &
Ghahramani's variational dropout, Keras' ``recurrent_dropout``), and so
keeps the network from leaning on any few units of its memory
(:ref:`recurrent-dropout`).

The task: the digits data set read row by row (8 steps of 8 pixels,
:func:`pylstm.datasets.load_digits_sequences`), 150 images to train on and
800 others to test on. The same classifier is trained with and without
recurrent dropout, one epoch at a time with ``partial_fit``.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import log_loss

from pylstm import LSTMClassifier
from pylstm.datasets import load_digits_sequences

X, y = load_digits_sequences(return_X_y=True)
order = np.random.default_rng(0).permutation(len(X))
train, test = order[:150], order[600:1400]
classes = np.arange(10)
n_epochs, every = 60, 5

curves = {}
for p in (0.0, 0.5):
    clf = LSTMClassifier(hidden_size=128, batch_size=16, alpha=0.0,
                         recurrent_dropout=p, random_state=0)
    rows = []
    for epoch in range(1, n_epochs + 1):
        clf.partial_fit(X[train], y[train], classes=classes)
        if epoch % every == 0:
            rows.append((
                epoch,
                log_loss(y[train], clf.predict_proba(X[train]), labels=classes),
                log_loss(y[test], clf.predict_proba(X[test]), labels=classes),
                clf.score(X[test], y[test]),
            ))
    curves[p] = np.array(rows)
    print(f"recurrent_dropout={p}: after {n_epochs} epochs train log-loss "
          f"{rows[-1][1]:.3f}, test log-loss {rows[-1][2]:.3f}, "
          f"test accuracy {rows[-1][3]:.3f}")

# %%
# Learning curves
# ---------------
# Without dropout the training loss reaches nearly zero within 40 epochs
# and the test loss stops improving; with ``recurrent_dropout=0.5`` the
# training loss falls more slowly, and the test loss, higher at first, goes
# on falling (with ups and downs) to end well below the other.
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
for p, rows in curves.items():
    label = f"recurrent_dropout={p}"
    line, = ax_loss.plot(rows[:, 0], rows[:, 2], label=f"{label}, test")
    ax_loss.plot(rows[:, 0], rows[:, 1], "--", color=line.get_color(),
                 label=f"{label}, train")
    ax_acc.plot(rows[:, 0], rows[:, 3], color=line.get_color(), label=label)
ax_loss.set(xlabel="epoch", ylabel="log-loss", yscale="log",
            title="Loss (dashed: training data)")
ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Test accuracy")
ax_loss.legend(fontsize=8)
ax_acc.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Recurrent dropout is off in ``predict``: the fitted model is deterministic.
# It costs little in training, because the masks are applied inside the
# compiled time loop (``benchmarks/bench_recurrent_dropout.py``).
