"""Learning parity: ``LSTMLanguageModel`` against the same model in PyTorch.

Not a test: prints validation perplexity after each epoch, per seed, for
pylstm and for a PyTorch loop fed the *same* pipeline as pylstm (vocabulary
``<unk>``, ``<bos>`` + sorted characters; ``<bos>`` + text cut into
``batch`` lanes and ``seq_len`` windows; stateful truncated BPTT with the
state reset each epoch; mean cross-entropy per token; Adam; global-norm
clipping at 5; validation on ``<bos>`` + the next ``--val`` characters read
as one stream from a zero state). Each side starts from its own library's
initial weights unless told otherwise, so that initialisation is the one
factor left to toggle:

* ``--torch-from-pylstm PARTS`` copies pylstm's initial PARTS into torch,
* ``--pylstm-from-torch PARTS`` copies torch's initial PARTS into pylstm,

PARTS a comma list of ``embedding``, ``lstm``, ``head`` (``all`` = the three).
``--former PARTS`` puts back pylstm's former initialisation of PARTS
(embedding N(0, 0.1^2); lstm: forget-gate bias 1; head: Glorot uniform, zero
bias) on top of the current one, PyTorch's.

Usage (from the repository root; the installed package is imported)::

    python benchmarks/lm_parity.py                       # the issue's setting, seeds 0-2
    python benchmarks/lm_parity.py --torch-from-pylstm all --seeds 0
    python benchmarks/lm_parity.py --corpus stdlib --hidden 128
"""

import argparse
import inspect
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pylstm import LSTMLanguageModel
from pylstm.datasets import load_python_docs

PARTS = ("embedding", "lstm", "head")
# Python source of the standard library, a second corpus (code, not prose).
STDLIB = ("argparse", "inspect", "typing", "dataclasses", "pathlib", "subprocess", "logging")


def corpus(name):
    if name == "pydocs":
        return load_python_docs()
    import importlib

    return "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in STDLIB)


class TorchLM(torch.nn.Module):
    def __init__(self, vocab_size, embedding_dim, hidden):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embedding(x), state)
        return self.head(out), state


def copy_init(model, net, parts, to_torch):
    """Copy PARTS between the torch model and a pylstm LanguageNetwork."""
    layer = net.layers[0]
    pairs = {"embedding": [(model.embedding.weight, net.embedding)],
             "lstm": [(getattr(model.lstm, n), layer._params[n]) for n in layer._params],
             "head": [(model.head.weight, net.coef.T), (model.head.bias, net.intercept)]}
    with torch.no_grad():
        for part in parts:
            for t, a in pairs[part]:
                if to_torch:
                    t.copy_(torch.from_numpy(np.ascontiguousarray(a)))
                else:
                    a[...] = t.numpy()


def former_init(net, parts):
    """pylstm's initialisation before issue 21, made from the current draws."""
    H, V = net.coef.shape
    if "embedding" in parts:
        net.embedding *= 0.1
    if "lstm" in parts:
        for layer in net.layers:
            layer._params["bias_ih_l0"][H : 2 * H] = 1.0
            layer._params["bias_hh_l0"][H : 2 * H] = 0.0
    if "head" in parts:
        net.coef *= np.sqrt(6.0 / (H + V)) * np.sqrt(H)  # U(+-1/sqrt(H)) -> Glorot
        net.intercept[...] = 0.0


def val_perplexity_torch(model, val):
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(val[None, :-1]))
        nll = torch.nn.functional.cross_entropy(logits[0].double(), torch.from_numpy(val[1:]))
    return float(torch.exp(nll))


def run(text, args, seed, parts_to_torch, parts_to_pylstm, former):
    train, val_text = text[: args.chars], text[args.chars: args.chars + args.val]
    lm = LSTMLanguageModel(embedding_dim=args.embedding, hidden_size=args.hidden,
                           seq_len=args.seq_len, batch_size=args.batch, max_iter=args.epochs,
                           learning_rate_init=args.lr, clip_norm=5.0, random_state=seed)
    streams, _ = lm._prepare_fit(train, incremental=False)  # builds vocabulary and network
    former_init(lm.network_, former)
    torch.manual_seed(seed)
    V = len(lm.vocabulary_)
    model = TorchLM(V, args.embedding, args.hidden)
    copy_init(model, lm.network_, parts_to_torch, to_torch=True)
    copy_init(model, lm.network_, parts_to_pylstm, to_torch=False)
    # The same lanes as pylstm (one stream: the permutation does not matter).
    inputs, targets = (torch.from_numpy(a) for a in lm._lanes(streams, np.random.RandomState(0)))
    val = np.concatenate([[1], lm._encode(lm._tokenize(val_text))])
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    out = {"pylstm": [], "torch": []}
    for _ in range(args.epochs):
        lm._train(True, streams, [])
        out["pylstm"].append(lm.perplexity(val_text))
        state = None
        for start in range(0, inputs.shape[1], args.seq_len):
            x, y = inputs[:, start:start + args.seq_len], targets[:, start:start + args.seq_len]
            logits, state = model(x, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            state = tuple(s.detach() for s in state)
        out["torch"].append(val_perplexity_torch(model, val))
    return out


def parts(s):
    out = list(PARTS) if s == "all" else [p for p in s.split(",") if p]
    if set(out) - set(PARTS):
        raise argparse.ArgumentTypeError(f"parts are {PARTS} or 'all', got {s!r}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    text = corpus(args.corpus)
    print(f"corpus {args.corpus} ({len(text)} chars): train {args.chars}, val {args.val}; "
          f"E {args.embedding} H {args.hidden} T {args.seq_len} B {args.batch} lr {args.lr}; "
          f"torch<-pylstm {args.torch_from_pylstm or '-'}, "
          f"pylstm<-torch {args.pylstm_from_torch or '-'}, former {args.former or '-'}")
    print(f"{'seed':>4} {'epoch':>5} {'pylstm':>8} {'torch':>8} {'ratio':>6}")
    final = {"pylstm": [], "torch": []}
    with threadpool_limits(args.threads):
        for seed in args.seeds:
            t0 = time.perf_counter()
            res = run(text, args, seed, args.torch_from_pylstm, args.pylstm_from_torch,
                      args.former)
            for e, (a, b) in enumerate(zip(res["pylstm"], res["torch"], strict=True)):
                print(f"{seed:>4} {e + 1:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}")
            print(f"     ({time.perf_counter() - t0:.0f} s)", flush=True)
            for k in final:
                final[k].append(res[k][-1])
    a, b = np.mean(final["pylstm"]), np.mean(final["torch"])
    print(f"mean {args.epochs:>5} {a:>8.3f} {b:>8.3f} {a / b:>6.3f}   "
          f"(pylstm sd {np.std(final['pylstm']):.3f}, torch sd {np.std(final['torch']):.3f})")


if __name__ == "__main__":
    main()
