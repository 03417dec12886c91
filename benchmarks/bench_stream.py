"""Streaming inference: time per step of ``LSTMStream.predict`` fed one step per call.

See benchmarks/README.md. Usage: ``python benchmarks/bench_stream.py --threads 1``
"""

import argparse
import os
import sys
import warnings

import _common as common
import numpy as np

import pylstm
from pylstm.interop import to_torch


def layer_loop(layers, seq, step):
    """Feed ``seq`` through ``layers`` one step per call (``step`` or a batch-1
    ``forward``), carrying each layer's ``(h, c)``; no output layer."""
    state = [(None, None)] * len(layers)
    for t in range(len(seq)):
        h = seq[t:t + 1] if step else seq[None, t:t + 1]
        for k, layer in enumerate(layers):
            if step:
                h, state[k] = layer.step(h, *state[k])
            else:
                h, state[k] = layer.forward(h, h0=state[k][0], c0=state[k][1], training=False)


def torch_loop(torch, clf, seq):
    """PyTorch's loop with the classifier's weights: each layer's ``nn.LSTM`` on one step,
    ``nn.Linear`` and ``argmax``, under ``no_grad``. Called with a list, it keeps the
    probabilities there."""
    net = clf.network_
    lstms = [to_torch(layer) for layer in net.layers]
    head = torch.nn.Linear(*net.coef.shape)
    head.load_state_dict({"weight": torch.from_numpy(net.coef.T.copy()),
                          "bias": torch.from_numpy(net.intercept)})
    xs = torch.from_numpy(seq)[None]

    def run(keep=None):
        state = [None] * len(lstms)
        with torch.no_grad():
            for t in range(len(seq)):
                out = xs[:, t:t + 1]
                for k, lstm in enumerate(lstms):
                    out, state[k] = lstm(out, state[k])
                logits = head(out[:, 0])
                logits.argmax(dim=1)
                if keep is not None:
                    keep.append(torch.softmax(logits, dim=1)[0].numpy())
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=500, help="steps per sample (default 500)")
    p.add_argument("--chunk", type=int, default=16, help="steps per call of the chunked row")
    p.add_argument("--repeats", type=int, default=7, help="samples per figure (default 7)")
    common.add_common_options(p, threads_default=1)
    args = common.apply_quick(p.parse_args(argv), hidden=8, steps=20, repeats=1)
    torch, env = common.start(args, "bench_stream.py: LSTMStream.predict one step per call vs "
                              "LSTM.forward / LSTM.step and torch")
    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(64, 10, args.features))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch on noise: only the weights' shapes matter
        clf = pylstm.LSTMClassifier(hidden_size=args.hidden, num_layers=args.layers,
                                    max_iter=1, random_state=args.seed, dtype="float32")
        clf.fit(X, X[:, :, 0].sum(axis=1) > 0)
    seq = rng.normal(size=(args.steps, args.features)).astype(np.float32)

    def stream(chunk):
        s = clf.stream()
        for t in range(0, len(seq), chunk):
            s.predict(seq[t:t + chunk])

    calls = {"stream.predict": lambda: stream(1),
             f"stream.predict, chunks of {args.chunk}": lambda: stream(args.chunk),
             "LSTM.forward (h0, c0)": lambda: layer_loop(clf.network_.layers, seq, False),
             "LSTM.step": lambda: layer_loop(clf.network_.layers, seq, True)}
    if torch is not None:
        calls["torch nn.LSTM + nn.Linear"] = run = torch_loop(torch, clf, seq)
        kept, s = [], clf.stream()
        run(kept)
        ours = np.concatenate([s.predict_proba(seq[t:t + 1]) for t in range(len(seq))])
        print(f"check: torch against stream.predict_proba, max |difference| "
              f"{np.abs(np.array(kept) - ours).max():.1e}\n")
    wall = common.alternate(calls, args.repeats, warmup=1)[0]
    rows = [{"call": name, "us_per_step": 1e6 * float(np.median(s)) / len(seq),
             "over_stream": float(np.median(s) / np.median(wall["stream.predict"]))}
            for name, s in wall.items()]
    print(f"hidden {args.hidden}, {args.features} features, {args.layers} layer(s), float32, "
          f"one sequence of {len(seq)} steps, median of {args.repeats}")
    print("\n".join(common.table([("", "<34", "call"), ("us/step", ">9.1f", "us_per_step"),
                                  ("/ stream.predict", ">17.2f", "over_stream")], rows)))
    print(f"load average {os.getloadavg()[0]:.2f} at the end (a busy machine gives "
          "slower and noisier figures)")
    common.write_json(args.json, env, calls=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
