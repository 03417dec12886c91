"""Time to a good model: pylstm's estimators against the equivalent PyTorch loop.

See benchmarks/README.md. Usage: ``python benchmarks/bench_quality.py --save PREFIX``
"""

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path

import _common as common
import numpy as np
from sklearn.model_selection import train_test_split

import pylstm
from pylstm.datasets import load_digits_sequences, load_python_docs, make_adding_problem

#: name: (metric, target, larger is better, epochs at most, hidden size, batch, rate)
TASKS = {"digits": ("accuracy", 0.97, True, 40, 64, 32, 0.005),
         "adding": ("mse", 0.01, False, 30, 64, 64, 0.01),
         "lm": ("perplexity", 7.0, False, 6, 256, 32, 0.003)}


def load(task, n):
    """Training and validation data; ``n`` scales the sizes down (1: as documented)."""
    if task == "digits":
        X, y = load_digits_sequences(return_X_y=True)
        X, y = X[:int(len(y) * n)], y[:int(len(y) * n)]
        return train_test_split(X.astype(np.float32), y, test_size=0.2, stratify=y,
                                random_state=0)
    if task == "adding":
        m = int(10000 * n)
        X, y = make_adding_problem(m + m // 10, 100, random_state=0)
        return X[:m].astype(np.float32), X[m:].astype(np.float32), y[:m], y[m:]
    text = load_python_docs()
    m = int(150_000 * n)
    return text[:m], text[m:m + m // 7]


def _reached(value, task):
    _, target, larger = TASKS[task][:3]
    return value >= target if larger else value <= target


def pylstm_model(task, data, seed, hidden, initialize=False, forget_bias=False):
    """The pylstm estimator of ``task``; with ``initialize``, its vocabulary (language
    model) and initial weights already made, as its first ``partial_fit`` would make them;
    ``forget_bias``: the estimators' ``unit_forget_bias``."""
    _, _, _, _, _, batch, lr = TASKS[task]
    if task == "lm":
        model = pylstm.LSTMLanguageModel(embedding_dim=32, hidden_size=hidden, seq_len=64,
                                         batch_size=batch, learning_rate_init=lr,
                                         clip_norm=5.0, random_state=seed)
        if initialize:
            model._prepare_fit(data[0], incremental=False)
        return model
    est = pylstm.LSTMClassifier if task == "digits" else pylstm.LSTMRegressor
    model = est(hidden_size=hidden, batch_size=batch, learning_rate_init=lr, alpha=0.0,
                clip_norm=5.0, random_state=seed, dtype="float32", unit_forget_bias=forget_bias)
    if initialize:
        classes = np.arange(10) if task == "digits" else None
        model._prepare_fit(data[0], data[2], False, classes, None)
    return model


def pylstm_run(task, data, seed, hidden, model=None, forget_bias=False):
    """Yield the validation metric after every epoch (of ``model`` when given, a
    :func:`pylstm_model`)."""
    model = model or pylstm_model(task, data, seed, hidden, forget_bias=forget_bias)
    if task == "lm":
        while True:
            yield model.partial_fit(data[0]).perplexity(data[1])
    Xtr, Xva, ytr, yva = data
    while True:
        if task == "digits":
            model.partial_fit(Xtr, ytr, classes=np.arange(10))
            yield float(np.mean(model.predict(Xva) == yva))
        else:
            yield float(np.mean((model.partial_fit(Xtr, ytr).predict(Xva) - yva) ** 2))


def torch_run(torch, task, data, seed, hidden, init=None, forget_bias=False):
    """The PyTorch loop a user would write; yields as :func:`pylstm_run`. ``init``, an
    initialized :func:`pylstm_model`, gives its weights (and vocabulary) to the model;
    ``forget_bias`` starts the forget gates' total bias at 1, as ``unit_forget_bias``."""
    _, _, _, _, _, batch, lr = TASKS[task]
    torch.manual_seed(seed)
    Sequence, LanguageModel = common.torch_twins(torch)
    if task == "lm":
        vocab, inputs, targets = common.char_lanes(data[0], batch, 64,
                                                   init and list(init.vocabulary_))
        val_in, val_out = (torch.from_numpy(a) for a in common.char_lanes(data[1], 1, 1, vocab)[1:])
        model = LanguageModel(len(vocab), 32, hidden)
        if init:
            common.copy_weights(torch, model, init.network_)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        while True:
            common.torch_lm_epoch(torch, model, opt, inputs, targets, 64)
            yield common.torch_perplexity(torch, model, val_in, val_out)
    Xtr, Xva, ytr, yva = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    classify = task == "digits"
    model = Sequence(Xtr.shape[2], hidden, 10 if classify else 1)
    if init:
        common.copy_weights(torch, model, init.network_)
    elif forget_bias:
        with torch.no_grad():
            model.lstm.bias_ih_l0[hidden:2 * hidden] = 1.0
            model.lstm.bias_hh_l0[hidden:2 * hidden] = 0.0
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    ytr = ytr.long() if classify else ytr.float()[:, None]
    loss_fn = torch.nn.functional.cross_entropy if classify else torch.nn.functional.mse_loss
    while True:
        for idx in torch.randperm(len(Xtr)).split(batch):
            common.torch_step(torch, params, opt, loss_fn(model(Xtr[idx]), ytr[idx]))
        with torch.no_grad():
            out = model(Xva)
            yield (float((out.argmax(1) == yva).float().mean()) if classify
                   else float(((out[:, 0].double() - yva) ** 2).mean()))


def initial_gap(torch, task, data, hidden, init):
    """Largest difference between the predictions of an initialized :func:`pylstm_model`
    and of torch's model given its weights (next-token probabilities for the language
    model), before any training: the premise of ``--same-init``."""
    Sequence, LanguageModel = common.torch_twins(torch)
    with torch.no_grad():
        if task == "lm":
            vocab = list(init.vocabulary_)
            model = LanguageModel(len(vocab), 32, hidden)
            common.copy_weights(torch, model, init.network_)
            prefix = data[1][:200]
            x = torch.tensor([[1] + [vocab.index(ch) if ch in vocab else 0 for ch in prefix]])
            theirs = torch.softmax(model(x)[0][0, -1].double(), -1).numpy()
            return float(np.max(np.abs(init.predict_proba(prefix) - theirs)))
        X = np.ascontiguousarray(data[1][:64])
        model = Sequence(X.shape[2], hidden, 10 if task == "digits" else 1)
        common.copy_weights(torch, model, init.network_)
        out = model(torch.from_numpy(X)).double()
        if task == "digits":
            return float(np.max(np.abs(init.predict_proba(X) - torch.softmax(out, 1).numpy())))
        return float(np.max(np.abs(init.predict(X) - out[:, 0].numpy())))


def time_to_target(runs, task, max_epochs):
    """Each run's wall time and epochs until the metric first reaches the target, and
    its curve (side -> dict); pylstm's also ``outside``, its time outside its compiled
    calls over the time inside them until then, or over the run if it never got there
    (:func:`_common.time_compiled`).

    The runs take turns, one epoch at a time, in alternating order, each timing only
    its own epochs: a slow spell of a shared machine then falls on both sides rather
    than on whichever ran through it.
    """
    runs = {side: run() for side, run in runs.items()}
    state = {side: {"seconds": 0.0, "inside": 0.0, "curve": [], "hit": None} for side in runs}
    turn = 0
    while runs:
        for side in list(runs)[::1 if turn % 2 == 0 else -1]:
            st = state[side]
            if side == "pylstm":  # the epoch and its validation, its compiled calls timed
                got = []
                wall, inside = common.time_compiled(lambda s=side, g=got: g.append(next(runs[s])))
                value = got[0]
                st["inside"] += sum(inside.values())
            else:
                t0 = time.perf_counter()
                value = next(runs[side])
                wall = time.perf_counter() - t0
            st["seconds"] += wall
            st["curve"].append(value)
            n = len(st["curve"])
            if st["hit"] is None and _reached(value, task):
                st["hit"] = (st["seconds"], n, st["inside"])
            # The language model always runs 3 epochs: the table reports epoch 3.
            if n >= max_epochs or (st["hit"] and (task != "lm" or n >= 3)):
                del runs[side]
        turn += 1
    results = {}
    for side, st in state.items():
        # Until the target (over the whole run where it never got there).
        seconds, _, inside = st["hit"] or (st["seconds"], None, st["inside"])
        results[side] = {"seconds": st["hit"] and st["hit"][0],
                         "epochs": st["hit"] and st["hit"][1],
                         "outside": (seconds - inside) / inside if inside else None,
                         "curve": st["curve"]}
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--same-init", action="store_true",
                   help="start torch from pylstm's initial weights (and the language model "
                        "from its vocabulary), so that the luck of the draw is the same")
    p.add_argument("--unit-forget-bias", action="store_true",
                   help="the estimators' unit_forget_bias=True, and torch's forget gates "
                        "started the same way; with --tasks digits adding (the language "
                        "model has no such parameter)")
    p.add_argument("--save", metavar="PREFIX", help="write PREFIX.txt and PREFIX.json")
    common.add_common_options(p, threads_default=2, timing=False)
    args = common.apply_quick(p.parse_args(argv), seeds=1)
    if args.unit_forget_bias and "lm" in args.tasks:
        p.error("--unit-forget-bias: pass --tasks digits adding (the language model has "
                "no such parameter)")
    scale, hidden_scale, max_epochs = (0.03, 0.125, 1) if args.quick else (1, 1, None)
    torch, env = common.start(args, "bench_quality.py: time to a target validation metric, pylstm "
                              "vs torch", "needed")
    results, gaps = {}, {}
    for task in args.tasks:
        data, hidden = load(task, scale), int(TASKS[task][4] * hidden_scale)
        for seed in range(args.seeds):
            # --same-init: both start from pylstm's initial weights, made before the clocks.
            # (torch's copy is taken now: pylstm's run trains its model in place.)
            fb = args.unit_forget_bias
            init = pylstm_model(task, data, seed, hidden, True, fb) if args.same_init else None
            if init:
                gap = initial_gap(torch, task, data, hidden, init)
                if not gap < 1e-4:
                    raise SystemExit(f"--same-init: the two {task} models differ by {gap} "
                                     "before training")
                gaps.setdefault(task, []).append(gap)
            runs = {"pylstm": partial(pylstm_run, task, data, seed, hidden, init, fb),
                    "torch": partial(torch_run, torch, task, data, seed, hidden,
                                     copy.deepcopy(init), fb)}
            if seed % 2:
                runs = dict(reversed(runs.items()))
            for side, r in time_to_target(runs, task,
                                          max_epochs or TASKS[task][3]).items():
                results.setdefault(task, {}).setdefault(side, []).append(r)
                print(f"{task} seed {seed} {side}: epochs {r['epochs']}, {r['seconds']} s, "
                      f"curve {[round(v, 4) for v in r['curve']]}", flush=True)

    def median(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else float("nan")

    blas = [f"{lib['api']} {lib['version']} {lib['architecture']}" for lib in env["libraries"]
            if lib["api"] != "openmp"]
    lines = [f"bench_quality.py | {env['cpu']} | pylstm {env['pylstm']} | torch "
             f"{env['torch']['version']} | threads {args.threads} | seeds {args.seeds}"
             + (" | same initial weights" if args.same_init else "")
             + (" | unit_forget_bias" if args.unit_forget_bias else ""),
             f"BLAS: {'; '.join(blas)}", "",
             f"{'task':8} {'target':>18} {'pylstm s':>9} {'ep':>4} {'torch s':>9} {'ep':>4} "
             f"{'pylstm/torch':>13} {'paired':>7} {'outside':>8}"]
    summary = {}
    for task, sides in results.items():
        metric, target, larger = TASKS[task][:3]
        s = {side: {"seconds": median([r["seconds"] for r in rs]),
                    "epochs": median([r["epochs"] for r in rs])} for side, rs in sides.items()}
        pl, th = s["pylstm"], s["torch"]
        # Each seed's two runs took turns epoch by epoch: their ratio cancels the
        # machine's slow and fast spells, which the ratio of the medians does not.
        paired = median([a["seconds"] / b["seconds"]
                         for a, b in zip(sides["pylstm"], sides["torch"], strict=True)
                         if a["seconds"] and b["seconds"]])
        outside = median([r["outside"] for r in sides["pylstm"]])
        lines.append(f"{task:8} {metric + (' >= ' if larger else ' <= ') + str(target):>18} "
                     f"{pl['seconds']:9.2f} {pl['epochs']:4.0f} {th['seconds']:9.2f} "
                     f"{th['epochs']:4.0f} {pl['seconds'] / th['seconds']:13.2f} {paired:7.2f} "
                     f"{100 * outside:7.1f}%")
        summary[task] = {**s, "pylstm_over_torch": pl["seconds"] / th["seconds"],
                         "paired_ratio": paired, "pylstm_outside": outside}
        if task in gaps:
            summary[task]["initial_gap"] = max(gaps[task])
        third = {side: [r["curve"][2] for r in rs if len(r["curve"]) >= 3]
                 for side, rs in sides.items()}
        if task == "lm" and all(third.values()):
            mp, mt = float(np.mean(third["pylstm"])), float(np.mean(third["torch"]))
            summary[task]["perplexity_epoch_3"] = {"pylstm": mp, "torch": mt}
            lines.append(f"\nlm perplexity after 3 epochs (mean of seeds): pylstm {mp:.3f}, "
                         f"torch {mt:.3f}, ratio {mp / mt:.3f}")
    lines.append("(times: median over seeds of the wall time until the validation metric "
                 "first reached the target; ep: epochs it took; pylstm/torch: the ratio of "
                 "those medians; paired: the median over seeds of each seed's ratio; "
                 "outside: the median over seeds of pylstm's time outside its compiled calls "
                 "(LSTM kernels, head products and loss) over the time inside them, "
                 "validation included)")
    if gaps:
        lines.append("same initial weights: largest difference of the two models' predictions "
                     "before training, " + ", ".join(f"{task} {max(g):.1e}"
                                                     for task, g in gaps.items()))
    print("\n" + "\n".join(lines))
    if args.save:
        Path(args.save + ".txt").write_text("\n".join(lines) + "\n")
        common.write_json(args.save + ".json", env, tasks=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
