"""
================================================
Forecasting a recorded signal with LSTMRegressor
================================================

Forecast a real signal several steps ahead: the membrane potential of a
spiking neuron, a recording that ships with matplotlib as sample data. The
series is cut into sliding windows of past values (see
:ref:`data_formats`), each labelled with the value a few steps after its
end; an :class:`~pylstm.LSTMRegressor` learns the map, trained on the first
70% of the recording and tested on the rest. It is compared with two
baselines: *persistence* (the future equals the last value seen) and a
linear autoregressive model (ridge regression on the same windows).
"""

# %%
# The data
# --------
# ``membrane.dat`` holds 12,000 float32 samples. The neuron fires regularly
# between samples 1,000 and 11,000; we keep that part and every fourth sample,
# so that one window of 48 steps spans about one spike cycle.
import warnings

import matplotlib.cbook as cbook
import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge

from pylstm import LSTMRegressor

with cbook.get_sample_data("membrane.dat") as f:
    raw = np.frombuffer(f.read(), dtype="<f4").astype(np.float64)
series = raw[1000:11000:4]
print(f"{len(raw)} samples recorded, {len(series)} used")

# %%
# Windows and a chronological split
# ---------------------------------
# Each input is ``window`` consecutive values; the target is the value
# ``horizon`` steps after the window's last one. The split is by time: the
# test windows all come after the training ones. The series is standardised
# with the training part's mean and standard deviation.
window, horizon = 48, 8
n_train = int(0.7 * len(series))
mean, std = series[:n_train].mean(), series[:n_train].std()
z = (series - mean) / std

windows = np.lib.stride_tricks.sliding_window_view(z[:-horizon], window)
targets = z[window + horizon - 1:]
# The last training window is the last whose target is in the training part.
end_train = n_train - window - horizon + 1
X_train, y_train = windows[:end_train], targets[:end_train]
X_test, y_test = windows[n_train - window:], targets[n_train - window:]
print("train:", X_train.shape, "test:", X_test.shape)

# %%
# Fit the LSTM and the baselines
# ------------------------------
# The windows are univariate sequences; ``X[:, :, None]`` makes them 3-D
# with one feature per step (a 2-D array would work as well). With
# ``early_stopping=True`` the regressor holds out 15% of the training windows,
# stops when their :math:`R^2` has not improved for a few epochs and keeps
# the best epoch's weights.
reg = LSTMRegressor(hidden_size=32, max_iter=40, learning_rate_init=0.01,
                    early_stopping=True, validation_fraction=0.15,
                    n_iter_no_change=6, dtype="float32", random_state=0)
with warnings.catch_warnings():
    # in case it runs all 40 epochs
    warnings.simplefilter("ignore", ConvergenceWarning)
    reg.fit(X_train[:, :, None], y_train)
print(f"{reg.n_iter_} epochs, "
      f"best validation R^2 {reg.best_validation_score_:.3f}")

ridge = Ridge(alpha=1.0).fit(X_train, y_train)
predictions = {
    "persistence": X_test[:, -1],
    "linear (ridge)": ridge.predict(X_test),
    "LSTM": reg.predict(X_test[:, :, None]),
}
mse = {name: float(np.mean((p - y_test) ** 2))
       for name, p in predictions.items()}
for name, value in mse.items():
    print(f"{name:>15}: test MSE {value:.3f} (standardised units)")

# %%
# Prediction against truth
# ------------------------
# The LSTM follows the slow wave between spikes and places most spikes near
# the right time, though lower than recorded: trained on the squared error, a
# forecaster hedges where the exact timing is uncertain. The linear model
# copies the last spike's shape and puts its spikes in the wrong places;
# persistence (not drawn) is simply ``horizon`` steps late.
t = np.arange(len(y_test))[:240]
fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[3, 1],
                               layout="constrained")
ax.plot(t, y_test[t] * std + mean, color="black", lw=2, label="recorded")
ax.plot(t, predictions["linear (ridge)"][t] * std + mean, color="tab:orange",
        label="linear (ridge)")
ax.plot(t, predictions["LSTM"][t] * std + mean, color="tab:blue", label="LSTM")
ax.set_xlabel(f"test step (every 4th sample), forecast {horizon} steps ahead")
ax.set_ylabel("membrane potential (file units)")
ax.set_ylim(top=ax.get_ylim()[1] + 0.12)
ax.legend(loc="upper right", ncols=3, fontsize="small")
ax.set_title("Forecasts on the held-out end of the recording")

names = list(mse)
bars.barh(names, [mse[n] for n in names],
          color=["gray", "tab:orange", "tab:blue"])
bars.set_xlabel("test mean squared error")
bars.set_title("Lower is better")
plt.show()

# %%
# The training loss per epoch is in ``reg.loss_curve_`` and the validation
# scores in ``reg.validation_scores_`` (see :ref:`hyperparameters`). The
# validation windows are drawn at random from the training part, which is
# fine for choosing the epoch; for the final test of a forecaster keep the
# chronological split, since shuffled windows overlap their neighbours and
# leak their values into the test set.
