"""Learning parity: validation perplexity of ``LSTMLanguageModel`` and the same PyTorch model.

Per seed and epoch, pylstm and a torch loop fed pylstm's own lanes, each from its own
library's initial weights unless ``--torch-from-pylstm`` / ``--pylstm-from-torch``
copy PARTS (``embedding``, ``lstm``, ``head`` or ``all``) across; ``--former PARTS`` puts
back pylstm's initialisation of before issue 21. See benchmarks/README.md. Usage::

    python benchmarks/lm_parity.py [--corpus stdlib] [--hidden 128] [--former PARTS]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

import _common as common
import numpy as np

from pylstm import LSTMLanguageModel
from pylstm.datasets import load_python_docs

PARTS = ("embedding", "lstm", "head")
#: Python source of the standard library, a second corpus (code, not prose).
STDLIB = ("argparse", "inspect", "typing", "dataclasses", "pathlib", "subprocess", "logging")


def former_init(net, parts):
    """pylstm's initialisation before issue 21, made from the current draws."""
    H, V = net.coef.shape
    if "embedding" in parts:
        net.embedding *= 0.1
    if "lstm" in parts:
        for layer in net.layers:
            layer.parameters()[2][H:2 * H] = 1.0  # bias_ih: the forget gate's
            layer.parameters()[3][H:2 * H] = 0.0  # bias_hh
    if "head" in parts:
        net.coef *= np.sqrt(6.0 / (H + V)) * np.sqrt(H)  # U(+-1/sqrt(H)) -> Glorot
        net.intercept[...] = 0.0


def run(torch, text, args, seed):
    """Validation perplexity after each epoch: ``{"pylstm": [...], "torch": [...]}``."""
    train, val_text = text[:args.chars], text[args.chars:args.chars + args.val]
    lm = LSTMLanguageModel(embedding_dim=args.embedding, hidden_size=args.hidden,
                           seq_len=args.seq_len, batch_size=args.batch, max_iter=args.epochs,
                           learning_rate_init=args.lr, clip_norm=5.0, random_state=seed)
    streams, _ = lm._prepare_fit(train, incremental=False)  # vocabulary and network
    former_init(lm.network_, args.former)
    torch.manual_seed(seed)
    model = common.torch_twins(torch)[1](len(lm.vocabulary_), args.embedding, args.hidden)
    common.copy_lm_weights(torch, model, lm.network_, args.torch_from_pylstm, to_torch=True)
    common.copy_lm_weights(torch, model, lm.network_, args.pylstm_from_torch, to_torch=False)
    # pylstm's own lanes (one stream: the permutation does not matter).
    inputs, targets = (torch.from_numpy(a) for a in lm._lanes(streams, np.random.RandomState(0)))
    val = torch.from_numpy(np.concatenate([[1], lm._encode(lm._tokenize(val_text))]))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    out = {"pylstm": [], "torch": []}
    for _ in range(args.epochs):
        lm._train(True, streams, [])
        out["pylstm"].append(lm.perplexity(val_text))
        common.torch_lm_epoch(torch, model, optimizer, inputs, targets, args.seq_len)
        with torch.no_grad():
            logits, _ = model(val[None, :-1])
            nll = torch.nn.functional.cross_entropy(logits[0].double(), val[1:])
        out["torch"].append(float(torch.exp(nll)))
    return out


def parts(text):
    out = list(PARTS) if text == "all" else [p for p in text.split(",") if p]
    if set(out) - set(PARTS):
        raise argparse.ArgumentTypeError(f"parts are {PARTS} or 'all', got {text!r}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", choices=("pydocs", "stdlib"), default="pydocs")
    p.add_argument("--chars", type=int, default=150_000)
    p.add_argument("--val", type=int, default=20_000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embedding", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--torch-from-pylstm", type=parts, default=[])
    p.add_argument("--pylstm-from-torch", type=parts, default=[])
    p.add_argument("--former", type=parts, default=[])
    common.add_common_options(p, threads_default=1, timing=False)
    args = common.apply_quick(p.parse_args(argv), chars=3000, val=500, hidden=16, epochs=1,
                              seeds=[0])
    torch, _ = common.start(args, "lm_parity.py: validation perplexity, LSTMLanguageModel vs the "
                            "same torch model", "needed")
    text = load_python_docs() if args.corpus == "pydocs" else "\n\n".join(
        inspect.getsource(importlib.import_module(m)) for m in STDLIB)
    print(f"corpus {args.corpus} ({len(text)} chars): train {args.chars}, val {args.val}; "
          f"E {args.embedding} H {args.hidden} T {args.seq_len} B {args.batch} lr {args.lr}; "
          f"torch<-pylstm {args.torch_from_pylstm or '-'}, pylstm<-torch "
          f"{args.pylstm_from_torch or '-'}, former {args.former or '-'}")
    print(f"{'seed':>4} {'epoch':>5} {'pylstm':>8} {'torch':>8} {'ratio':>6}")
    final = {"pylstm": [], "torch": []}
    for seed in args.seeds:
        t0 = time.perf_counter()
        res = run(torch, text, args, seed)
        for e, (a, b) in enumerate(zip(res["pylstm"], res["torch"], strict=True)):
            print(f"{seed:>4} {e + 1:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}")
        print(f"     ({time.perf_counter() - t0:.0f} s)", flush=True)
        for k in final:
            final[k].append(res[k][-1])
    a, b = np.mean(final["pylstm"]), np.mean(final["torch"])
    print(f"mean {args.epochs:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}   "
          f"(pylstm sd {np.std(final['pylstm']):.3f}, torch sd {np.std(final['torch']):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
