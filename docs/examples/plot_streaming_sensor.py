"""
==========================================
Classifying a sensor signal while it comes
==========================================

A motion sensor sends a sample at a time, and the application wants to know
the activity *now* (at rest, walking, running), not after the recording
ends. An :class:`~pylstm.LSTMClassifier` trained with
``return_sequences=True`` labels every step of a sequence;
:meth:`~pylstm.LSTMClassifier.stream` then gives that label as the samples
arrive: each call reads the new samples and carries the LSTM state on, so no
sample is read twice. The data are synthetic: two channels of a sensor worn
by someone who changes activity now and then.
"""

# %%
# Recordings
# ----------
# At rest the sensor reads noise; walking adds a slow swing of both channels,
# running a faster and stronger one. Each training recording has one to
# three activities of random durations, and a label at every sample.
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from pylstm import LSTMClassifier

ACTIVITIES = ["rest", "walk", "run"]
FREQUENCY = {0: 0.0, 1: 0.06, 2: 0.15}  # cycles per sample
AMPLITUDE = {0: 0.0, 1: 1.0, 2: 1.6}


def recording(n_steps, rng, n_segments):
    """A (n_steps, 2) signal and its activity at each step."""
    bounds = np.sort(rng.choice(np.arange(10, n_steps - 10), n_segments - 1, replace=False))
    labels = np.zeros(n_steps, dtype=int)
    for start, activity in zip([0, *bounds], rng.integers(0, 3, n_segments), strict=True):
        labels[start:] = activity
    freq = np.array([FREQUENCY[a] for a in labels])
    amp = np.array([AMPLITUDE[a] for a in labels])
    phase = 2 * np.pi * np.cumsum(freq)
    signal = np.stack([amp * np.sin(phase), amp * np.cos(phase) ** 2], axis=1)
    return signal + 0.3 * rng.normal(size=signal.shape), labels


rng = np.random.default_rng(0)
train = [recording(100, rng, int(rng.integers(1, 4))) for _ in range(240)]
X_train = np.stack([s for s, _ in train])
y_train = np.stack([labels for _, labels in train])
print("training recordings:", X_train.shape, "labels:", y_train.shape)

# %%
# A per-step classifier
# ---------------------
# One label per step: ``y`` has shape (n_recordings, n_steps). The model is
# unidirectional, as streaming needs: a bidirectional one would read each
# recording backwards from its end, which has not arrived yet.
clf = LSTMClassifier(hidden_size=24, return_sequences=True, max_iter=12,
                     learning_rate_init=0.02, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.fit(X_train, y_train)
print(f"training accuracy per step: {clf.score(X_train, y_train):.3f}")

# %%
# Three sensors, read as their samples arrive
# -------------------------------------------
# Three people wear a sensor each; ``stream(n_streams=3)`` keeps one state
# per sensor. The samples come in bursts of 1 to 8 (whatever the radio
# delivered since the last call); each call returns the class probabilities
# after every new sample, shape (3, burst, 3).
live = [recording(600, rng, 5) for _ in range(3)]
signals = np.stack([s for s, _ in live])
truth = np.stack([labels for _, labels in live])

stream = clf.stream(n_streams=3)
pieces, start = [], 0
while start < signals.shape[1]:
    burst = int(rng.integers(1, 9))
    pieces.append(stream.predict_proba(signals[:, start:start + burst]))
    start += burst
streamed = np.concatenate(pieces, axis=1)
print("streamed:", streamed.shape, "steps read:", stream.n_steps_seen)

# %%
# The stream gives what ``predict_proba`` gives for the whole recording at
# once (to float32 rounding): its chunks are only a way of reading it.
at_once = clf.predict_proba(signals)
print(f"largest difference to predict_proba: {np.abs(streamed - at_once).max():.1e}")
labels = streamed.argmax(axis=-1)
print(f"accuracy per step while streaming: {(labels == truth).mean():.3f}")

# %%
# What a sample costs
# -------------------
# One sensor read one sample at a time, as a device with no buffer would:
# a call per sample, each one kernel call per LSTM layer.
one = clf.stream()
start = time.perf_counter()
for t in range(200):
    one.predict_proba(signals[0, t:t + 1])
per_sample = (time.perf_counter() - start) / 200
print(f"{per_sample * 1e6:.0f} microseconds per sample (this machine, now)")

# %%
# The first sensor's signal and the streamed probabilities
# --------------------------------------------------------
# The background shows the true activity. After a change the probabilities
# take a few samples to follow: the model needs part of a swing to tell
# walking from running.
colors = ["tab:gray", "tab:blue", "tab:red"]
steps = np.arange(signals.shape[1])
fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True,
                                  layout="constrained")
for ax in (top, bottom):
    change = np.flatnonzero(np.diff(truth[0])) + 1
    for a, b in zip([0, *change], [*change, len(steps)], strict=True):
        ax.axvspan(a, b, color=colors[truth[0, a]], alpha=0.12, lw=0)
top.plot(steps, signals[0, :, 0], lw=0.8, color="black", label="channel 1")
top.plot(steps, signals[0, :, 1], lw=0.8, color="tab:olive", label="channel 2")
top.set_ylabel("sensor reading")
top.legend(loc="upper right", ncols=2, fontsize="small")
top.set_title("Sensor 1 (background: true activity)")
for k, name in enumerate(ACTIVITIES):
    bottom.plot(steps, streamed[0, :, k], color=colors[k], label=name)
bottom.set_ylabel("streamed probability")
bottom.set_xlabel("sample")
bottom.legend(loc="center right", fontsize="small")
plt.show()

# %%
# A model trained with ``return_sequences=False`` streams as well: each call
# then returns, for every new sample, the prediction for the whole recording
# read so far. :ref:`streaming` in the user guide has the shapes and the
# rules (threads, ``reset``, refitting).
