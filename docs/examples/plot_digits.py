"""
===============================
Classifying digits as sequences
===============================

scikit-learn's 8x8 handwritten digits, read as sequences: each image is 8
time steps (its rows, top to bottom) of 8 features (the pixels of the row).
A bidirectional :class:`~pylstm.LSTMClassifier` reads every image forwards
and backwards and classifies it from both final states. The data ship with
scikit-learn (:func:`pylstm.datasets.load_digits_sequences`).
"""

# %%
# Load the data and hold out a quarter
# ------------------------------------
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import ConfusionMatrixDisplay, classification_report
from sklearn.model_selection import train_test_split

from pylstm import LSTMClassifier
from pylstm.datasets import load_digits_sequences

X, y = load_digits_sequences(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0)
n_samples, n_steps, n_features = X.shape
print(f"{n_samples} images, each a sequence of {n_steps} steps "
      f"x {n_features} features")

# %%
# What the network sees
# ---------------------
# One sequence is one image, one step is one row.
fig, axes = plt.subplots(1, 8, figsize=(10, 1.8), layout="constrained")
for ax, image, label in zip(axes, X_train[:8], y_train[:8], strict=True):
    ax.imshow(image, cmap="gray_r")
    ax.set_title(f"label {label}", fontsize="small")
    ax.set_xticks([])
    ax.set_yticks(range(0, 8, 2), [f"t={t}" for t in range(0, 8, 2)],
                  fontsize="x-small")
plt.show()

# %%
# Train
# -----
clf = LSTMClassifier(hidden_size=64, bidirectional=True, max_iter=25,
                     learning_rate_init=0.005, dtype="float32", random_state=0)
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget
    clf.fit(X_train, y_train)
print(f"fit: {clf.n_iter_} epochs in {time.perf_counter() - start:.1f} s")
print(f"held-out accuracy: {clf.score(X_test, y_test):.3f}")

# %%
# Confusion matrix
# ----------------
# Rows are the true digits, columns the predicted ones; off-diagonal cells
# are the mistakes.
y_pred = clf.predict(X_test)
print(classification_report(y_test, y_pred, digits=3))
fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
ConfusionMatrixDisplay.from_predictions(y_test, y_pred, ax=ax, colorbar=False,
                                        cmap="Blues")
ax.set_title("LSTMClassifier on held-out digits")
plt.show()
# sphinx_gallery_thumbnail_number = 2

# %%
# The mistakes
# ------------
# The misclassified test images, with the predicted label and its
# probability.
proba = clf.predict_proba(X_test)
wrong = np.flatnonzero(y_pred != y_test)[:8]
if len(wrong):
    fig, axes = plt.subplots(1, len(wrong), figsize=(1.3 * len(wrong), 1.9),
                             layout="constrained", squeeze=False)
    for ax, i in zip(axes[0], wrong, strict=True):
        ax.imshow(X_test[i], cmap="gray_r")
        ax.set_title(f"{y_test[i]} -> {y_pred[i]}\np={proba[i].max():.2f}",
                     fontsize="small")
        ax.axis("off")
    plt.show()

# %%
# ``clf.transform(X)`` returns the final hidden states (here ``2 * 64``
# features per image) for use by another estimator, and
# ``clf.predict_proba`` the class probabilities.
