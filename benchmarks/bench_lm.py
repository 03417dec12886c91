"""The language model against the same PyTorch model: its speed, or (``--parity``) what it learns.

See benchmarks/README.md. Usage: ``python benchmarks/bench_lm.py --threads 1``, or
``python benchmarks/bench_lm.py --parity [--corpus stdlib] [--configs 128,1]``
"""

import argparse
import collections
import importlib
import inspect
import sys
import time

import _common as common
import numpy as np

from pylstm import LSTMLanguageModel
from pylstm.datasets import load_python_docs

PROMPT = "The for statement"
#: Python source of the standard library, a second corpus (code, not prose).
STDLIB = ("argparse", "inspect", "typing", "dataclasses", "pathlib", "subprocess", "logging")


def pylstm_lm(cfg, args, seed):
    """An ``LSTMLanguageModel`` of ``cfg`` (hidden size, layers), ``args.epochs`` per fit."""
    return LSTMLanguageModel(embedding_dim=args.embedding_dim, hidden_size=cfg[0],
                             num_layers=cfg[1], seq_len=args.seq_len, batch_size=args.batch_size,
                             max_iter=args.epochs, learning_rate_init=args.lr, clip_norm=5.0,
                             random_state=seed, dtype="float32")


def torch_lm(torch, vocab_size, cfg, args, seed):
    """The same model in PyTorch, from torch's initial weights, and its Adam."""
    torch.manual_seed(seed)
    model = common.torch_twins(torch)[1](vocab_size, args.embedding_dim, *cfg)
    return model, torch.optim.Adam(model.parameters(), lr=args.lr)


# --------------------------------------------------------------------------- speed
def torch_fit(torch, text, cfg, args, init=None):
    """The torch loop over pylstm's vocabulary and lanes; ``init``, a pylstm network, gives
    its initial weights. Returns the model and the epochs' losses."""
    vocab, inputs, targets = common.char_lanes(text, args.batch_size, args.seq_len)
    model, optimizer = torch_lm(torch, len(vocab), cfg, args, args.seed)
    if init is not None:
        common.copy_weights(torch, model, init)
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    return model, [common.torch_lm_epoch(torch, model, optimizer, inputs, targets, args.seq_len)
                   for _ in range(args.epochs)]


#: The LSTM kernel calls of a fit (forward, BPTT, input gradient), of
#: :data:`_common.COMPILED`.
KERNELS = common.COMPILED[:3]


def compiled_share(fit, layers, keep=False):
    """``fit()``'s wall time, the seconds inside each of its compiled calls
    (:func:`_common.time_compiled`), and its kernel calls (:data:`KERNELS`):
    ``{"batch": median seconds per batch, "batches": their number, "calls": with
    ``keep``, the last full batch's calls}`` for :func:`kernels_alone`.

    Every batch of a fit makes the same kernel calls, ``layers`` forward calls among
    them; the last batch, which may be shorter, is left out. (Kept calls keep their
    arrays alive: not in the timed fits, whose allocations it would change.)"""
    kernel_calls = []  # (name, seconds) of every kernel call, in order
    # (call, args, kwargs, BLAS held) of the last two batches' kernel calls at least (a
    # layer makes three at most), and of no more, whose arrays would stay alive.
    recent = collections.deque(maxlen=6 * layers)

    def record(name, call, args, kwargs, seconds, held):
        if name in KERNELS:
            kernel_calls.append((name, seconds))
            if keep:
                recent.append((call, args, kwargs, held))

    wall, inside = common.time_compiled(fit, record)
    n_batches = sum(name == "forward_train" for name, _ in kernel_calls) // layers
    k = len(kernel_calls) // n_batches
    assert k * n_batches == len(kernel_calls) and 2 * k <= recent.maxlen
    per_batch = [sum(s for _, s in kernel_calls[i:i + k])
                 for i in range(0, len(kernel_calls) - k, k)]
    return wall, inside, {"batch": float(np.median(per_batch)), "batches": n_batches,
                          "calls": list(recent)[-2 * k:-k]}


def kernels_alone(calls, repeats):
    """Median seconds of a batch's kernel calls (:func:`compiled_share`) made again, back
    to back with nothing between them: the same arrays, the same BLAS thread hold."""
    from pylstm._threads import single_threaded_blas

    times = []
    for _ in range(repeats):
        seconds = 0.0
        for call, args, kwargs, held in calls:
            with single_threaded_blas(held):
                t0 = time.perf_counter()
                call(*args, **kwargs)
                seconds += time.perf_counter() - t0
        times.append(seconds)
    return float(np.median(times))


def torch_generate(torch, model, vocab, n_tokens):
    """Sample ``n_tokens`` characters after the prompt, one step at a time."""
    index = {tok: i for i, tok in enumerate(vocab)}
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        logits, state = model(torch.tensor([[1] + [index.get(ch, 0) for ch in PROMPT]]))
        logits = logits[0, -1]
        for _ in range(n_tokens):
            logits[:2] = -float("inf")  # never <unk> or <bos>, as pylstm
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
            out.append(vocab[token.item()])
            step, state = model(token.view(1, 1), state)
            logits = step[0, 0]
    return "".join(out)


def rates(wall, cpu, tokens):
    """Tokens per second of the median and the fastest sample and per median CPU second,
    and their ratios pylstm / torch."""
    part = {name: {"tokens_per_s": tokens / float(np.median(wall[name])),
                   "tokens_per_s_best": tokens / min(wall[name]),
                   "tokens_per_cpu_s": tokens / float(np.median(cpu[name]))} for name in wall}
    for key in ("", "_best", "_cpu"):
        rate = "tokens_per_cpu_s" if key == "_cpu" else "tokens_per_s" + key
        part["ratio" + key] = part["pylstm"][rate] / part["torch"][rate]
    return part


def training_flops(cfg, embedding_dim, vocab_size):
    """Floating-point operations per training token: the LSTM layers' (6 x 4H(I + H)
    each: the forward products 2 x, the weight, state and input gradients 4 x) and the
    head's (6 x H V); the elementwise work is left out."""
    hidden, layers = cfg
    inputs = [embedding_dim] + [hidden] * (layers - 1)
    return sum(6 * 4 * hidden * (i + hidden) for i in inputs), 6 * hidden * vocab_size


def speed(torch, text, cfg, args):
    """Training and generation rates of one configuration."""
    vocab, inputs, _ = common.char_lanes(text, args.batch_size, args.seq_len)
    init = pylstm_lm(cfg, args, args.seed)
    init._prepare_fit(text, incremental=False)  # the network that fit starts from
    shares = []  # each pylstm fit's compiled_share

    def pylstm_fit():
        lm = pylstm_lm(cfg, args, args.seed)
        shares.append(compiled_share(lambda: lm.fit(text), cfg[1]))
        return lm

    wall, cpu, last = common.alternate({
        "pylstm": pylstm_fit,
        "torch": lambda: torch_fit(torch, text, cfg, args, init.network_)}, args.repeats)
    train = rates(wall, cpu, inputs.size * args.epochs)
    lstm_flops, head_flops = training_flops(cfg, args.embedding_dim, len(vocab))
    for name in ("pylstm", "torch"):
        train[name]["gflop_per_s"] = (lstm_flops + head_flops) * train[name]["tokens_per_s"] / 1e9
    lm = last["pylstm"]
    train["pylstm"]["loss"], train["torch"]["loss"] = lm.loss_curve_[-1], last["torch"][1][-1]
    # The same fits' time outside their compiled calls, over the time inside them
    # (the wrapping costs two clock reads per call).
    train["pylstm"]["outside_compiled"] = float(np.median(
        [wall / sum(inside.values()) - 1 for wall, inside, _ in shares]))
    # torch's fit time over that of pylstm's compiled calls alone (medians of the same
    # alternating fits): the ratio that a fit with nothing outside them would reach.
    train["pylstm"]["ceiling"] = float(np.median(wall["torch"]) / np.median(
        [sum(inside.values()) for _, inside, _ in shares]))
    # The LSTM kernel calls' own rate inside the fit (forward, BPTT, input gradient).
    train["pylstm"]["kernel_gflop_per_s"] = float(np.median(
        [lstm_flops * inputs.size * args.epochs / sum(inside[k] for k in KERNELS) / 1e9
         for _, inside, _ in shares]))
    # The kernel calls inside a fit and alone, per batch: one more fit (untimed above),
    # then its last full batch's calls made again (as many times as it had batches,
    # 5 to 30).
    _, _, kern = compiled_share(lambda: pylstm_lm(cfg, args, args.seed).fit(text), cfg[1],
                                keep=True)
    train["pylstm"]["kernel_fit_over_alone"] = kern["batch"] / kernels_alone(
        kern["calls"], min(30, max(5, kern["batches"])))

    model = common.torch_twins(torch)[1](len(vocab), args.embedding_dim, *cfg)
    common.copy_weights(torch, model, lm.network_)
    model.eval()
    with torch.inference_mode():
        index = {tok: i for i, tok in enumerate(vocab)}
        logits = model(torch.tensor([[1] + [index.get(ch, 0) for ch in PROMPT]]))[0][0, -1]
    max_dp = float(np.max(np.abs(lm.predict_proba(PROMPT)
                                 - torch.softmax(logits.double(), -1).numpy())))
    calls = {"pylstm": lambda: lm.generate(PROMPT, n_tokens=args.gen_tokens, temperature=1.0,
                                           random_state=0),
             "torch": lambda: torch_generate(torch, model, vocab, args.gen_tokens)}
    wall, cpu, _ = common.alternate(calls, args.gen_repeats, warmup=1)
    generate = {**rates(wall, cpu, args.gen_tokens), "max_abs_dp": max_dp}
    return {"hidden": cfg[0], "layers": cfg[1], "train": train, "generate": generate}


def print_speed(rows):
    """The training and the generation table."""
    for part, title, extra in (
            ("train", "Training: tokens per second of a whole fit",
             [("GF/s pl", ">8.0f", ("train", "pylstm", "gflop_per_s")),
              ("GF/s torch", ">10.0f", ("train", "torch", "gflop_per_s")),
              ("GF/s kern", ">9.0f", ("train", "pylstm", "kernel_gflop_per_s")),
              ("fit/alone", ">9.2f", ("train", "pylstm", "kernel_fit_over_alone")),
              ("outside", ">8.1%", ("train", "pylstm", "outside_compiled")),
              ("ceiling", ">8.2f", ("train", "pylstm", "ceiling")),
              ("loss pl", ">10.4f", ("train", "pylstm", "loss")),
              ("loss torch", ">10.4f", ("train", "torch", "loss"))]),
            ("generate", "Generation: tokens per second of generate()",
             [("max|dp|", ">10.1e", ("generate", "max_abs_dp"))])):
        print(f"{title} (median); ratio = pylstm / torch (> 1: pylstm faster)")
        print("\n".join(common.table([
            ("H", ">4", "hidden"), ("L", ">2", "layers"),
            ("pylstm tok/s", ">13,.0f", (part, "pylstm", "tokens_per_s")),
            ("torch tok/s", ">12,.0f", (part, "torch", "tokens_per_s")),
            ("ratio", ">6.2f", (part, "ratio")), ("best", ">6.2f", (part, "ratio_best")),
            ("cpu", ">6.2f", (part, "ratio_cpu"))] + extra, rows)) + "\n")
    print("GF/s: the training products' floating-point operations per second (6 x 4H(I+H) "
          "per layer and 6 x HV per token), to set beside the SGEMM rate above; GF/s kern: "
          "pylstm's LSTM kernel calls alone inside its fit (forward, BPTT, input gradient); "
          "fit/alone: those calls' time per batch inside the fit over the same calls made "
          "again alone, back to back (the last full batch's; 1: as fast as alone); "
          "outside: "
          "pylstm's fit time outside its compiled calls (kernels, input gradient, head "
          "products and loss) over the time inside them; ceiling: torch's fit time over the "
          "time of pylstm's compiled calls alone (the ratio with nothing outside them); "
          "loss: mean "
          "training cross-entropy of the last epoch, both from pylstm's initial weights; "
          "max|dp|: largest difference of the next-token distributions")


# --------------------------------------------------------------------------- parity
def parity(torch, text, cfg, args, seed):
    """Validation perplexity after each epoch: ``{"pylstm": [...], "torch": [...]}``."""
    train, val = text[:args.chars], text[args.chars:args.chars + args.val]
    lm = pylstm_lm(cfg, args, seed)
    streams, _ = lm._prepare_fit(train, incremental=False)  # vocabulary and network
    model, optimizer = torch_lm(torch, len(lm.vocabulary_), cfg, args, seed)
    if args.same_init:
        common.copy_weights(torch, model, lm.network_)
    lanes = [torch.from_numpy(a) for a in common.char_lanes(train, args.batch_size,
                                                            args.seq_len, lm.vocabulary_)[1:]]
    val_lane = [torch.from_numpy(a) for a in common.char_lanes(val, 1, 1, lm.vocabulary_)[1:]]
    out = {"pylstm": [], "torch": []}
    for _ in range(args.epochs):
        lm._train(True, streams, [])
        out["pylstm"].append(lm.perplexity(val))
        common.torch_lm_epoch(torch, model, optimizer, *lanes, args.seq_len)
        out["torch"].append(common.torch_perplexity(torch, model, *val_lane))
    return out


def run_parity(torch, text, cfg, args):
    """Run :func:`parity` for every seed and print the curves and their means."""
    print(f"H {cfg[0]} L {cfg[1]}\n{'seed':>4} {'epoch':>5} {'pylstm':>8} {'torch':>8} "
          f"{'ratio':>6}")
    final = {"pylstm": [], "torch": []}
    for seed in args.seeds:
        t0 = time.perf_counter()
        res = parity(torch, text, cfg, args, seed)
        for e, (a, b) in enumerate(zip(res["pylstm"], res["torch"], strict=True)):
            print(f"{seed:>4} {e + 1:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}")
        print(f"     ({time.perf_counter() - t0:.0f} s)", flush=True)
        for k in final:
            final[k].append(res[k][-1])
    a, b = np.mean(final["pylstm"]), np.mean(final["torch"])
    print(f"mean {args.epochs:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}   "
          f"(pylstm sd {np.std(final['pylstm']):.3f}, torch sd {np.std(final['torch']):.3f})\n")
    return {"hidden": cfg[0], "layers": cfg[1], "seeds": args.seeds, "final": final}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", metavar="H,L",
                   type=lambda text: tuple(int(v) for v in text.split(",")),
                   help="hidden size, layers (default 128,1 256,1 128,2; --parity: 256,1)")
    p.add_argument("--chars", type=int, help="training characters (200k; --parity: 150k)")
    p.add_argument("--embedding-dim", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003, help="Adam's rate (pylstm's default)")
    p.add_argument("--epochs", type=int, help="epochs per fit (1; --parity: 3)")
    p.add_argument("--repeats", type=int, default=5, help="fits per figure (default 5)")
    p.add_argument("--gen-tokens", type=int, default=1000, help="tokens per generate call")
    p.add_argument("--gen-repeats", type=int, default=7, help="generate calls per figure")
    group = p.add_argument_group("learning parity")
    group.add_argument("--parity", action="store_true", help="validation perplexities instead")
    group.add_argument("--corpus", choices=("pydocs", "stdlib"), default="pydocs")
    group.add_argument("--val", type=int, default=20_000, help="validation characters")
    group.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    group.add_argument("--same-init", action="store_true",
                       help="torch starts from pylstm's initial weights (then both agree)")
    common.add_common_options(p)
    args = common.apply_quick(p.parse_args(argv), configs=[(16, 1)], chars=5000, val=500,
                              epochs=1, seeds=[0], repeats=1, gen_tokens=20, gen_repeats=1)
    defaults = ({"configs": [(256, 1)], "chars": 150_000, "epochs": 3, "threads": 1}
                if args.parity else {"configs": [(128, 1), (256, 1), (128, 2)],
                                     "chars": 200_000, "epochs": 1})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch, env = common.start(args, "bench_lm.py: LSTMLanguageModel vs the same torch model, "
                              + ("validation perplexity" if args.parity else "speed"), "needed")
    text = load_python_docs() if args.corpus == "pydocs" else "\n\n".join(
        inspect.getsource(importlib.import_module(m)) for m in STDLIB)
    print(f"{len(text)} characters of {args.corpus}: {args.chars} for training; embedding "
          f"{args.embedding_dim}, batch {args.batch_size}, seq_len {args.seq_len}, float32, "
          f"Adam {args.lr}, {args.epochs} epoch(s) per fit")
    if args.parity:
        print(f"validation: the next {args.val} characters\n")
        rows = [run_parity(torch, text, cfg, args) for cfg in args.configs]
    else:
        text = text[:args.chars]
        print(f"{args.repeats} fits, {args.gen_repeats} x {args.gen_tokens} generated tokens "
              "per figure\n")
        if not args.quick:  # untimed: first calls of both sides
            sub = argparse.Namespace(**{**vars(args), "epochs": 1})
            pylstm_lm((16, 1), sub, 0).fit(text[:5000])
            torch_fit(torch, text[:5000], (16, 1), sub)
        n = 256 if args.quick else 2048
        env["sgemm_gflop_per_s"] = common.sgemm_rate(n)
        print(f"SGEMM {n}^3 through SciPy's BLAS at this thread cap: "
              f"{env['sgemm_gflop_per_s']:.0f} GFLOP/s\n")
        rows = []
        for cfg in args.configs:
            common.progress(f"  H={cfg[0]} L={cfg[1]} ...")
            rows.append(speed(torch, text, cfg, args))
        print_speed(rows)
    common.write_json(args.json, env, **{"parity" if args.parity else "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
