"""Per-step latency of streaming inference: one step per call, the state carried.

Not a test: a script that prints a table. For a fitted ``LSTMClassifier``
(``--hidden`` units, ``--features`` inputs, ``--layers`` layers, float32)
it times reading one sequence one step per call, and gives the median over
``--repeats`` samples of the time per step of:

* ``stream.predict``: ``clf.stream()``, a (1, features) chunk per call;
* ``stream.predict, chunks of K``: the same with ``--chunk`` steps per call;
* ``LSTM.forward``: each layer's ``forward(x, h0=h, c0=c, training=False)``
  on a (1, 1, features) batch, carrying (h, c) by hand (no output layer);
* ``LSTM.step``: each layer's one-step path (no output layer);
* ``torch``: ``nn.LSTM`` then ``nn.Linear`` and ``argmax`` on (1, 1, features)
  under ``torch.no_grad()``, carrying (h, c); pylstm's weights, checked.

Usage (from the repository root; the installed package is imported)::

    python benchmarks/bench_stream.py --threads 1 | tee benchmarks/results/stream.txt
"""

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import threadpoolctl

import pylstm

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--features", type=int, default=8)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--steps", type=int, default=500, help="steps per sample")
p.add_argument("--chunk", type=int, default=16, help="steps per call of the chunked row")
p.add_argument("--repeats", type=int, default=7, help="samples per figure (median)")
p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP and torch threads")
args = p.parse_args()

threadpoolctl.threadpool_limits(limits=args.threads)
try:
    import torch
    torch.set_num_threads(args.threads)
except ImportError:
    torch = None

print(f"pylstm {pylstm.__version__}, numpy {np.__version__}, torch "
      f"{torch.__version__ if torch else 'not installed'}, Python {platform.python_version()}")
print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
      f"threads capped at {args.threads}")
for lib in threadpoolctl.threadpool_info():
    print(f"  {lib['internal_api']} {lib.get('version')} ({lib['prefix']}): kernel "
          f"{lib.get('architecture', '-')}, {lib['num_threads']} thread(s)")

H, F, L, T = args.hidden, args.features, args.layers, args.steps
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 10, F)).astype(np.float32)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf = pylstm.LSTMClassifier(hidden_size=H, num_layers=L, max_iter=1, random_state=0)
    clf.fit(X, X[:, :, 0].sum(axis=1) > 0)
seq = rng.normal(size=(T, F)).astype(np.float32)
layers = clf.network_.layers


def stream_steps(chunk):
    stream = clf.stream()
    for t in range(0, T, chunk):
        stream.predict(seq[t:t + chunk])


def layer_forward():
    state = [(None, None)] * L
    for t in range(T):
        h = seq[None, t:t + 1]
        for k, layer in enumerate(layers):
            h, state[k] = layer.forward(h, h0=state[k][0], c0=state[k][1], training=False)


def layer_step():
    state = [(None, None)] * L
    for t in range(T):
        h = seq[t:t + 1]
        for k, layer in enumerate(layers):
            h, state[k] = layer.step(h, *state[k])


cases = {"stream.predict": lambda: stream_steps(1),
         f"stream.predict, chunks of {args.chunk}": lambda: stream_steps(args.chunk),
         "LSTM.forward (h0, c0)": layer_forward, "LSTM.step": layer_step}
if torch is not None:
    lstm = torch.nn.LSTM(F, H, num_layers=L, batch_first=True)
    head = torch.nn.Linear(H, clf.network_.coef.shape[1])
    weights = {name.replace("_l0", f"_l{k}"): torch.from_numpy(value)
               for k, layer in enumerate(layers) for name, value in layer.state_dict().items()}
    lstm.load_state_dict(weights)
    head.load_state_dict({"weight": torch.from_numpy(clf.network_.coef.T.copy()),
                          "bias": torch.from_numpy(clf.network_.intercept)})
    xs = torch.from_numpy(seq)[None]

    def torch_loop(keep=None):
        hc = None
        with torch.no_grad():
            for t in range(T):
                out, hc = lstm(xs[:, t:t + 1], hc)
                logits = head(out[:, 0])
                logits.argmax(dim=1)
                if keep is not None:
                    keep.append(torch.softmax(logits, dim=1)[0].numpy())

    cases["torch nn.LSTM + nn.Linear"] = torch_loop
    kept, stream = [], clf.stream()
    torch_loop(kept)
    ours = np.concatenate([stream.predict_proba(seq[t:t + 1]) for t in range(T)])
    print(f"check: torch against stream.predict_proba, max |difference| "
          f"{np.abs(np.array(kept) - ours).max():.1e}")

medians = {}
for name, fn in cases.items():
    fn()  # warm-up
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / T * 1e6)
    medians[name] = statistics.median(samples)

base = medians["stream.predict"]
print(f"\nhidden {H}, {F} features, {L} layer(s), float32, one sequence of {T} steps, "
      f"median of {args.repeats}")
print(f"{'':34} {'us/step':>9} {'/ stream.predict':>17}")
for name, value in medians.items():
    print(f"{name:34} {value:9.1f} {value / base:17.2f}")
print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes: "
      "figures from a busy machine are slower and noisier)")
