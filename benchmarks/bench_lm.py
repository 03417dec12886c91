"""Language model: ``LSTMLanguageModel`` fit and generate against the same PyTorch model.

Tokens per second of a whole ``fit`` (against a stateful truncated-BPTT torch loop on the
same lanes, from pylstm's initial weights, so that the losses must agree) and of
``generate`` (against a torch sampling loop with the fitted weights), on the first
``--chars`` characters of ``load_python_docs()``. Ratios pylstm / torch from the median
wall time, the fastest sample (``best``) and the median CPU time (``cpu``). See
benchmarks/README.md. Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lm.py --threads 1
"""

from __future__ import annotations

import argparse
import sys

import _common as common
import numpy as np

from pylstm import LSTMLanguageModel
from pylstm._network import LanguageNetwork
from pylstm.datasets import load_python_docs

PROMPT = "The for statement"


def pylstm_fit(text, cfg, args, epochs):
    lm = LSTMLanguageModel(embedding_dim=args.embedding_dim, hidden_size=cfg[0],
                           num_layers=cfg[1], seq_len=args.seq_len, batch_size=args.batch_size,
                           max_iter=epochs, learning_rate_init=args.lr, clip_norm=5.0,
                           validation_fraction=0.0, random_state=args.seed, dtype="float32")
    return lm.fit(text)


def torch_fit(torch, text, cfg, args, epochs, init=None):
    """The torch loop; ``init``, a pylstm network, gives its initial weights."""
    torch.manual_seed(args.seed)
    vocab, inputs, targets = common.char_lanes(text, args.batch_size, args.seq_len)
    model = common.torch_twins(torch)[1](len(vocab), args.embedding_dim, *cfg)
    if init is not None:
        common.copy_lm_weights(torch, model, init)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    losses = [common.torch_lm_epoch(torch, model, optimizer, inputs, targets, args.seq_len)
              for _ in range(epochs)]
    return model, losses


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


def summary(wall, cpu, tokens):
    """Tokens per second of the median and the fastest sample and per median CPU second."""
    return {name: {"tokens_per_s": tokens / float(np.median(wall[name])),
                   "tokens_per_s_best": tokens / min(wall[name]),
                   "tokens_per_cpu_s": tokens / float(np.median(cpu[name]))} for name in wall}


def with_ratios(part):
    p, t = part["pylstm"], part["torch"]
    for key in ("", "_best", "_cpu"):
        rate = "tokens_per_cpu_s" if key == "_cpu" else "tokens_per_s" + key
        part["ratio" + key] = p[rate] / t[rate]
    return part


def run_config(torch, text, cfg, args):
    vocab, inputs, _ = common.char_lanes(text, args.batch_size, args.seq_len)
    init = LanguageNetwork(len(vocab), args.embedding_dim, cfg[0], cfg[1], 0.0, np.float32,
                           np.random.RandomState(args.seed))  # what fit draws first
    wall, cpu, last = common.alternate({
        "pylstm": lambda: pylstm_fit(text, cfg, args, args.epochs),
        "torch": lambda: torch_fit(torch, text, cfg, args, args.epochs, init)}, args.repeats)
    train = with_ratios(summary(wall, cpu, inputs.size * args.epochs))
    lm = last["pylstm"]
    train["pylstm"]["loss"], train["torch"]["loss"] = lm.loss_curve_[-1], last["torch"][1][-1]

    model = common.torch_twins(torch)[1](len(vocab), args.embedding_dim, *cfg)
    common.copy_lm_weights(torch, model, lm.network_)
    model.eval()
    with torch.inference_mode():
        index = {tok: i for i, tok in enumerate(vocab)}
        logits = model(torch.tensor([[1] + [index.get(ch, 0) for ch in PROMPT]]))[0][0, -1]
    max_dp = float(np.max(np.abs(lm.predict_proba(PROMPT)
                                 - torch.softmax(logits.double(), -1).numpy())))
    calls = {"pylstm": lambda: lm.generate(PROMPT, n_tokens=args.gen_tokens, temperature=1.0,
                                           random_state=0),
             "torch": lambda: torch_generate(torch, model, vocab, args.gen_tokens)}
    common.alternate(calls, 1)  # untimed: first calls
    wall, cpu, _ = common.alternate(calls, args.gen_repeats)
    generate = with_ratios(summary(wall, cpu, args.gen_tokens))
    generate["max_abs_dp"] = max_dp
    return {"hidden": cfg[0], "layers": cfg[1], "train": train, "generate": generate}


def print_tables(rows):
    """The training and the generation table."""
    def get(*keys):
        def cell(row):
            for key in keys:
                row = row[key]
            return row
        return cell
    for part, title, extra in (
            ("train", "Training: tokens per second of a whole fit",
             [("loss pl", ">10.4f", get("train", "pylstm", "loss")),
              ("loss torch", ">10.4f", get("train", "torch", "loss"))]),
            ("generate", "Generation: tokens per second of generate()",
             [("max|dp|", ">10.1e", get("generate", "max_abs_dp"))])):
        print(f"{title} (median); ratio = pylstm / torch (> 1: pylstm faster)")
        print("\n".join(common.table([
            ("H", ">4", "hidden"), ("L", ">2", "layers"),
            ("pylstm tok/s", ">13,.0f", get(part, "pylstm", "tokens_per_s")),
            ("torch tok/s", ">12,.0f", get(part, "torch", "tokens_per_s")),
            ("ratio", ">6.2f", get(part, "ratio")), ("best", ">6.2f", get(part, "ratio_best")),
            ("cpu", ">6.2f", get(part, "ratio_cpu"))] + extra, rows)) + "\n")


def parse_config(spec):
    try:
        hidden, layers = (int(v) for v in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,L (e.g. 128,1), got {spec!r}") from None
    return hidden, layers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="H,L",
                   default=[(128, 1), (256, 1), (128, 2)],
                   help="hidden size, layers (default 128,1 256,1 128,2)")
    p.add_argument("--chars", type=int, default=200_000, help="characters to train on")
    p.add_argument("--embedding-dim", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003, help="Adam's rate (pylstm's default)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per fit (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="fits per figure (default 5)")
    p.add_argument("--gen-tokens", type=int, default=1000, help="tokens per generate call")
    p.add_argument("--gen-repeats", type=int, default=7, help="generate calls per figure")
    common.add_common_options(p)
    args = common.apply_quick(p.parse_args(argv), configs=[(16, 1)], chars=5000, repeats=1,
                              gen_tokens=20, gen_repeats=1)
    torch, env = common.start(args, "bench_lm.py: LSTMLanguageModel vs the equivalent torch model",
                              "needed")
    text = load_python_docs()[:args.chars]
    print(f"data: {len(text)} characters of load_python_docs(); embedding "
          f"{args.embedding_dim}, batch {args.batch_size}, seq_len {args.seq_len}, float32, "
          f"Adam {args.lr}; {args.epochs} epoch(s) per fit, {args.repeats} fits, "
          f"{args.gen_repeats} x {args.gen_tokens} generated tokens per figure\n")
    if not args.quick:  # untimed: first calls of both sides
        pylstm_fit(text[:5000], (16, 1), args, 1)
        torch_fit(torch, text[:5000], (16, 1), args, 1)
    rows = []
    for cfg in args.configs:
        common.progress(f"  H={cfg[0]} L={cfg[1]} ...")
        rows.append(run_config(torch, text, cfg, args))
    print_tables(rows)
    print("loss: mean training cross-entropy of the last epoch, both from pylstm's initial "
          "weights; max|dp|: largest difference of the next-token distributions")
    if args.json:
        common.write_json(args.json, {"script": "bench_lm.py", "args": sys.argv[1:],
                               "environment": env, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
