"""Language-model speed: ``LSTMLanguageModel`` against an equivalent PyTorch model.

Not a test: a script that prints (and optionally saves) timings.

Two figures per configuration, both in tokens per second, on character-level
text (the first ``--chars`` characters of ``pylstm.datasets.load_python_docs()``):

* **training**: ``LSTMLanguageModel(..., max_iter=N, validation_fraction=0.0)
  .fit(text)`` (tokenizing, vocabulary and encoding included) against the
  PyTorch loop a user would write for the same model: ``nn.Embedding`` +
  ``nn.LSTM(batch_first=True)`` + ``nn.Linear`` with the same
  ``embedding_dim``, ``hidden_size`` and ``num_layers``; the same vocabulary
  (``<unk>``, ``<bos>``, then the sorted characters) and the same stream
  (``<bos>`` + text) cut into the same ``batch_size`` lanes and ``seq_len``
  windows; stateful truncated BPTT (the detached ``(h, c)`` carried from one
  window to the next); mean cross-entropy, ``torch.optim.Adam`` with the same
  learning rate and default betas/epsilon, ``clip_grad_norm_(..., 5.0)``
  (pylstm's default ``clip_norm``) and the epoch's loss accumulated with
  ``loss.item()``. The torch timed region also includes its vocabulary,
  encoding and the model and optimizer construction. Tokens per second are
  the predicted tokens (``batch_size * lane width * epochs``) over the fit's
  wall time.

  Both start from the *same* initial weights (pylstm's, copied into the torch
  modules), so the mean training loss of the first epoch must agree: the
  ``loss`` columns are a correctness check of the comparison, not a quality
  figure.

* **generation**: ``lm.generate(prompt, n_tokens=--gen-tokens,
  temperature=1.0, random_state=0)`` against a PyTorch sampling loop with the
  fitted pylstm weights loaded: the prompt is read once, then per token
  ``logits / temperature`` (``<unk>``/``<bos>`` masked as pylstm does),
  ``softmax``, ``torch.multinomial`` (seeded generator), ``.item()``, and one
  ``embedding -> LSTM -> Linear`` step with the carried ``(h, c)``, all under
  ``torch.inference_mode()``; the characters are joined at the end, as
  ``generate`` does. The ``max|dp|`` column is the largest difference of the
  two implementations' next-token distributions after the prompt.

Ratios are ``pylstm / torch`` in tokens per second (> 1: pylstm faster);
``best`` uses each side's fastest sample, which suffers less from other
processes, and ``cpu`` the median CPU time this process used (user + system,
``time.process_time``) instead of wall time: on a shared machine, time spent
waiting for a core does not count, so with ``--threads 1`` it is the steadiest
figure (with more threads it also counts threads spinning while they wait).
pylstm and torch alternate within each repeat so that both see the same
background load; the ``other CPU`` column is the largest CPU share other
processes took during a figure's samples (``*`` above 15%).

Default configurations (``--configs H,L ...``): hidden 128 and 256 with one
layer, and hidden 128 with two layers; embedding 32, batch 32, seq_len 64,
float32, learning rate 0.003 (pylstm's default); one epoch per fit, 5 fits
and 7 generation calls of 1000 tokens per figure. A default run takes about
2.5 minutes on a 2-core machine with ``--threads 1``.

Usage (from the repository root; the installed package is imported)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lm.py --threads 1
    python benchmarks/bench_lm.py --threads 1 --json benchmarks/results/lm_t1.json
    python benchmarks/bench_lm.py --configs 128,1 --profile 20     # plus a cProfile'd fit

``--threads N`` caps every BLAS/OpenMP pool with threadpoolctl and calls
``torch.set_num_threads(N)``. The header reports the versions, what
threadpoolctl finds (library, version, OpenBLAS kernel architecture, thread
count), whether ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set and
``torch.get_num_threads()``. Requires threadpoolctl and torch (CPU build).

``--steady-malloc``: glibc's malloc keeps what is freed (mallopt; see
``bench_lstm.py`` for why it matters), so that the per-step temporaries of
the torch training and sampling loops reuse mapped pages; the ``malloc:``
header line and the JSON ``environment.malloc`` say which setting ran.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import (
    BUSY,
    add_common_options,
    add_profile_option,
    environment,
    idle_share,
    import_libraries,
    load_average,
    malloc_setting,
    print_column_heads,
    print_environment,
    print_foreign_start,
    print_title,
    profile_top,
    progress,
    save_json,
    thread_limits,
    timed_alternately,
)

UNK, BOS = "<unk>", "<bos>"
PROMPT = "The for statement"


# --------------------------------------------------------------------------- header
def print_header(env, args, n_chars, vocab_size):
    print_title("pylstm language-model benchmark: LSTMLanguageModel vs an equivalent torch "
                "model (CPU)", 104, env)
    print_environment(env)
    print_foreign_start(env)
    print(f"data: first {n_chars} characters of load_python_docs(), vocabulary {vocab_size} "
          f"(with <unk>, <bos>); embedding {args.embedding_dim}, batch {args.batch_size} lanes, "
          f"seq_len {args.seq_len}, float32, Adam lr {args.lr}, clip 5.0")
    print(f"training: {args.epochs} epoch(s) per fit, {args.repeats} fits per figure; "
          f"generation: {args.gen_tokens} tokens per call, {args.gen_repeats} calls per figure, "
          f"prompt {PROMPT!r}")
    print()


# --------------------------------------------------------------------------- data
def vocabulary(text):
    """pylstm's character vocabulary: <unk>, <bos>, then the sorted characters."""
    vocab = [UNK, BOS] + sorted(set(text) - {UNK, BOS})
    return vocab, {tok: i for i, tok in enumerate(vocab)}


def lanes(text, batch_size, seq_len):
    """The token stream (<bos> + text) cut into lanes as ``LSTMLanguageModel`` does."""
    _, index = vocabulary(text)
    data = np.concatenate([[1], np.fromiter((index.get(ch, 0) for ch in text), dtype=np.int64,
                                            count=len(text))])
    B = max(1, min(batch_size, (len(data) - 1) // seq_len))
    width = (len(data) - 1) // B
    return data[: B * width].reshape(B, width), data[1: B * width + 1].reshape(B, width)


# --------------------------------------------------------------------------- pylstm
def pylstm_model(cfg, args, epochs, seed):
    from pylstm import LSTMLanguageModel

    return LSTMLanguageModel(level="char", embedding_dim=args.embedding_dim,
                             hidden_size=cfg["hidden"], num_layers=cfg["layers"],
                             seq_len=args.seq_len, batch_size=args.batch_size, max_iter=epochs,
                             solver="adam", learning_rate_init=args.lr, clip_norm=5.0,
                             validation_fraction=0.0, random_state=seed, dtype="float32")


def pylstm_fit(text, cfg, args, epochs, seed):
    """Time ``LSTMLanguageModel(...).fit(text)``; return (seconds, fitted model)."""
    t0 = time.perf_counter()
    lm = pylstm_model(cfg, args, epochs, seed).fit(text)
    elapsed = time.perf_counter() - t0
    if lm.n_iter_ != epochs:
        raise RuntimeError(f"pylstm ran {lm.n_iter_} epochs instead of {epochs}")
    return elapsed, lm


def pylstm_initial_weights(text, cfg, args, seed):
    """pylstm's initial parameters for this configuration (fit with the same seed).

    ``fit`` draws the network from ``check_random_state(random_state)`` before
    anything else, so building ``LanguageNetwork`` from a fresh
    ``RandomState(seed)`` reproduces them. Returns None if that private API
    changed (the torch model then keeps its own initialisation).
    """
    try:
        from pylstm._network import LanguageNetwork

        vocab, _ = vocabulary(text)
        net = LanguageNetwork(len(vocab), args.embedding_dim, cfg["hidden"], cfg["layers"],
                              0.0, np.float32, np.random.RandomState(seed))
        return net
    except Exception as exc:  # pragma: no cover - depends on private code
        progress(f"  (could not rebuild pylstm's initial weights: {exc}; torch keeps its own)")
        return None


def pylstm_generate(lm, args):
    t0 = time.perf_counter()
    out = lm.generate(PROMPT, n_tokens=args.gen_tokens, temperature=1.0, random_state=0)
    elapsed = time.perf_counter() - t0
    if len(out) != args.gen_tokens:
        raise RuntimeError(f"pylstm generated {len(out)} characters instead of "
                           f"{args.gen_tokens}")
    return elapsed, out


# --------------------------------------------------------------------------- torch
def torch_model_class(torch):
    nn = torch.nn

    class TorchLM(nn.Module):
        """Embedding, LSTM (batch_first) and a linear head over the vocabulary."""

        def __init__(self, vocab_size, embedding_dim, hidden, layers):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
            self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True)
            self.head = nn.Linear(hidden, vocab_size)

        def forward(self, x, state=None):
            out, state = self.lstm(self.embedding(x), state)
            return self.head(out), state

    return TorchLM


def load_pylstm_weights(torch, model, net):
    """Copy a pylstm ``LanguageNetwork``'s parameters into the torch model."""
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(net.embedding))
        for k, layer in enumerate(net.layers):
            for name, arr in layer.state_dict().items():  # weight_ih_l0, ...
                target = getattr(model.lstm, name[:-1] + str(k))
                target.copy_(torch.from_numpy(np.ascontiguousarray(arr)))
        model.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(net.coef.T)))
        model.head.bias.copy_(torch.from_numpy(net.intercept))


def torch_fit(torch, text, cfg, args, epochs, seed, init_net):
    """Time the equivalent torch TBPTT loop; return (seconds, (model, mean loss per epoch))."""
    F = torch.nn.functional
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    vocab, _ = vocabulary(text)
    inputs_np, targets_np = lanes(text, args.batch_size, args.seq_len)
    inputs, targets = torch.from_numpy(inputs_np), torch.from_numpy(targets_np)
    model = torch_model_class(torch)(len(vocab), args.embedding_dim, cfg["hidden"],
                                     cfg["layers"])
    if init_net is not None:
        load_pylstm_weights(torch, model, init_net)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    V = len(vocab)
    width = inputs.shape[1]
    model.train()
    losses = []
    for _ in range(epochs):
        state, total, count = None, 0.0, 0
        for start in range(0, width, args.seq_len):
            x = inputs[:, start:start + args.seq_len]
            y = targets[:, start:start + args.seq_len]
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            state = (state[0].detach(), state[1].detach())
            total += loss.item() * y.numel()
            count += y.numel()
        losses.append(total / count)
        if not np.isfinite(losses[-1]):
            raise FloatingPointError("torch: the training loss became non-finite")
    elapsed = time.perf_counter() - t0
    return elapsed, (model, losses)


def torch_prime(torch, model, prompt_ids):
    with torch.inference_mode():
        logits, state = model(torch.tensor([prompt_ids], dtype=torch.int64))
    return logits[0, -1], state


def torch_generate(torch, model, vocab, index, args, seed=0):
    """Time the step-by-step torch sampling loop; return (seconds, text)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = [1] + [index.get(ch, 0) for ch in PROMPT]
    temperature = 1.0
    out = []
    with torch.inference_mode():
        logits, state = model(torch.tensor([prompt_ids], dtype=torch.int64))
        logits = logits[0, -1]
        for _ in range(args.gen_tokens):
            z = logits / temperature
            z[:2] = -float("inf")  # never emit <unk> or <bos>, as pylstm
            p = torch.softmax(z, dim=-1)
            token = torch.multinomial(p, 1, generator=gen)
            out.append(vocab[token.item()])
            step, state = model(token.view(1, 1), state)
            logits = step[0, 0]
    text = "".join(out)
    elapsed = time.perf_counter() - t0
    return elapsed, text


# --------------------------------------------------------------------------- running
def summarize(samples, shares, cpus, work):
    med, best = float(np.median(samples)), float(min(samples))
    shares = [s for s in shares if s is not None]
    return {"s_samples": samples, "s_median": med, "s_best": best,
            "tokens_per_s": work / med, "tokens_per_s_best": work / best,
            "cpu_s_samples": cpus, "tokens_per_cpu_s": work / float(np.median(cpus)),
            "foreign_cpu": shares}


def ratios(part):
    p, t = part["pylstm"], part["torch"]
    part["ratio"] = p["tokens_per_s"] / t["tokens_per_s"]
    part["ratio_best"] = p["tokens_per_s_best"] / t["tokens_per_s_best"]
    part["ratio_cpu"] = p["tokens_per_cpu_s"] / t["tokens_per_cpu_s"]


def run_config(torch, text, cfg, args):
    vocab, index = vocabulary(text)
    inputs, _ = lanes(text, args.batch_size, args.seq_len)
    n_train = inputs.size * args.epochs
    init_net = pylstm_initial_weights(text, cfg, args, args.seed)

    # training
    samples, shares, cpus, last = timed_alternately({
        "pylstm": lambda: pylstm_fit(text, cfg, args, args.epochs, args.seed),
        "torch": lambda: torch_fit(torch, text, cfg, args, args.epochs, args.seed, init_net),
    }, args.repeats)
    lm, (_, torch_losses) = last["pylstm"], last["torch"]
    train = {impl: summarize(samples[impl], shares[impl], cpus[impl], n_train)
             for impl in samples}
    train["pylstm"]["loss"] = [float(v) for v in lm.loss_curve_]
    train["torch"]["loss"] = torch_losses
    train["same_init"] = init_net is not None
    ratios(train)
    train["tokens_per_fit"] = int(n_train)

    # generation, with the trained pylstm weights in both
    model = torch_model_class(torch)(len(vocab), args.embedding_dim, cfg["hidden"],
                                     cfg["layers"])
    load_pylstm_weights(torch, model, lm.network_)
    model.eval()
    p_pylstm = lm.predict_proba(PROMPT)
    logits, _ = torch_prime(torch, model, [1] + [index.get(ch, 0) for ch in PROMPT])
    p_torch = torch.softmax(logits.double(), -1).numpy()
    max_dp = float(np.max(np.abs(p_pylstm - p_torch)))
    for _ in range(args.warmup):
        pylstm_generate(lm, args)
        torch_generate(torch, model, vocab, index, args)
    samples, shares, cpus, sample_text = timed_alternately({
        "pylstm": lambda: pylstm_generate(lm, args),
        "torch": lambda: torch_generate(torch, model, vocab, index, args),
    }, args.gen_repeats)
    gen = {impl: summarize(samples[impl], shares[impl], cpus[impl], args.gen_tokens)
           for impl in samples}
    ratios(gen)
    gen["max_abs_dp"] = max_dp
    gen["sample"] = {impl: s[:80] for impl, s in sample_text.items()}
    return {"hidden": cfg["hidden"], "layers": cfg["layers"], "train": train,
            "generate": gen, "vocab_size": len(vocab)}


def profile_pylstm(text, cfg, args, top):
    """Top ``top`` functions by own time of one cProfile'd pylstm fit, as text."""
    return profile_top(lambda: pylstm_fit(text, cfg, args, args.epochs, args.seed), top)


# --------------------------------------------------------------------------- report
def _share(row_part):
    vals = [s for impl in ("pylstm", "torch") for s in row_part[impl]["foreign_cpu"]]
    return max(vals) if vals else None


def _cpu(share):
    if share is None:
        return "    -"
    return f"{100 * share:>4.0f}%" + ("*" if share > BUSY else " ")


def print_rate_table(title, rows, part, extra):
    """One table of tokens per second, pylstm against torch, a row per configuration.

    Parameters
    ----------
    title : str
        The line above the table.
    rows : list of dict
        :func:`run_config` results.
    part : str
        ``"train"`` or ``"generate"``: which figures of a row to show.
    extra : list of (str, int, callable)
        Columns between the ratios and ``other CPU``: heading, width and a
        function of the row's ``part`` that returns the cell's text.
    """
    print(title)
    print_column_heads(
        f"{'H':>4} {'L':>2} {'pylstm tok/s':>13} {'torch tok/s':>12} {'ratio':>6} "
        f"{'best':>6} {'cpu':>6} " + "".join(f"{name:>{width}} " for name, width, _ in extra)
        + f"{'other CPU':>10}")
    for r in rows:
        e = r[part]
        print(f"{r['hidden']:>4} {r['layers']:>2} {e['pylstm']['tokens_per_s']:>13,.0f} "
              f"{e['torch']['tokens_per_s']:>12,.0f} {e['ratio']:>6.2f} {e['ratio_best']:>6.2f} "
              f"{e['ratio_cpu']:>6.2f} " + "".join(f"{cell(e):>{width}} "
                                                    for _, width, cell in extra)
              + f"{_cpu(_share(e)):>10}")
    print()


def print_tables(rows):
    print_rate_table(
        "Training: tokens per second of a whole fit (median over fits); "
        "ratio = pylstm / torch (> 1: pylstm faster)", rows, "train",
        [("loss pylstm", 11, lambda t: f"{t['pylstm']['loss'][-1]:.4f}"),
         ("loss torch", 10, lambda t: f"{t['torch']['loss'][-1]:.4f}")])
    print_rate_table(
        "Generation: tokens per second of generate(prompt, n_tokens, temperature=1.0) vs "
        "the torch step loop; ratio = pylstm / torch", rows, "generate",
        [("max|dp|", 9, lambda g: f"{g['max_abs_dp']:.1e}")])


def parse_config(spec):
    try:
        h, l = (int(v) for v in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,L (e.g. 128,1), got {spec!r}") from None
    if h < 1 or l < 1:
        raise argparse.ArgumentTypeError(f"H and L must be >= 1, got {spec!r}")
    return {"hidden": h, "layers": l}


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark LSTMLanguageModel (fit and generate) against an equivalent "
                    "torch model.",
        epilog="Headline figures: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
               "python benchmarks/bench_lm.py --threads 1",
    )
    p.add_argument("--configs", nargs="+", type=parse_config,
                   default=[parse_config(c) for c in ("128,1", "256,1", "128,2")],
                   metavar="H,L", help="hidden size, layers (default 128,1 256,1 128,2)")
    p.add_argument("--chars", type=int, default=200_000,
                   help="characters of load_python_docs() to train on (default 200000)")
    p.add_argument("--embedding-dim", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003,
                   help="Adam learning rate of both (default 0.003, pylstm's default)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per fit (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed fits per figure (default 5)")
    p.add_argument("--gen-tokens", type=int, default=1000,
                   help="tokens per generation call (default 1000)")
    p.add_argument("--gen-repeats", type=int, default=7,
                   help="timed generation calls per figure (default 7)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed generation calls per implementation (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="limit BLAS/OpenMP threads (threadpoolctl) and torch.set_num_threads")
    add_profile_option(p)
    add_common_options(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("epochs", "repeats", "gen_tokens", "gen_repeats", "embedding_dim",
                 "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        sys.exit("--threads must be >= 1")
    malloc = malloc_setting(args)

    pylstm, torch, torch_error = import_libraries(use_torch=True)
    if torch is None:
        sys.exit(f"bench_lm.py needs torch (CPU build): {torch_error}")
    with thread_limits(args.threads, torch):
        return run(args, pylstm, torch, malloc)


def run(args, pylstm, torch, malloc):
    """Header, warm-up, every configuration and the report (under the thread limits)."""
    from pylstm.datasets import load_python_docs

    text = load_python_docs()[: args.chars]
    if len(text) < args.batch_size * args.seq_len:
        sys.exit("--chars is too small for one window per lane")
    env = environment(pylstm, torch, None, args.threads)
    env["load_average_start"] = load_average()
    env["malloc"] = malloc
    print_header(env, args, len(text), len(vocabulary(text)[0]))

    t_start = time.perf_counter()
    # Untimed warm-up: imports, first calls, allocators of both sides.
    small = text[: max(20 * args.batch_size * args.seq_len, 2000)]
    warm_cfg = {"hidden": 32, "layers": 1}
    pylstm_fit(small, warm_cfg, args, 1, args.seed)
    torch_fit(torch, small, warm_cfg, args, 1, args.seed, None)

    rows, profiles = [], []
    for cfg in args.configs:
        progress(f"  H={cfg['hidden']} L={cfg['layers']} ...")
        rows.append(run_config(torch, text, cfg, args))
        if args.profile > 0:
            profiles.append({**cfg, "top": profile_pylstm(text, cfg, args, args.profile)})
    elapsed = time.perf_counter() - t_start
    print_tables(rows)
    same = all(r["train"]["same_init"] for r in rows)
    print("best = ratio of each side's fastest sample; cpu = ratio of tokens per CPU-second "
          "of this process (median)")
    print(f"{rows[0]['train']['tokens_per_fit']:,} predicted tokens per fit; loss = mean "
          f"training cross-entropy of the last epoch (nats/token), "
          f"{'same initial weights in both' if same else 'own initial weights'}; max|dp| = "
          "max difference of the next-token distributions after the prompt (pylstm weights "
          "in torch)")
    env["foreign_cpu_end"] = idle_share()
    env["load_average_end"] = load_average()
    shares = [s for r in rows for part in (r["train"], r["generate"])
              if (s := _share(part)) is not None]
    load = env["load_average_end"]
    print(f"total benchmark time {elapsed:.1f} s; CPU used by other processes: max per figure "
          f"{100 * max(shares, default=0):.0f}%, after the run "
          f"{100 * (env['foreign_cpu_end'] or 0):.0f}%"
          + (f" (load average {load[0]:.2f})" if load else ""))
    if shares and max(shares) > BUSY:
        print(f"WARNING: figures marked * ran while other processes used more than "
              f"{100 * BUSY:.0f}% of the CPUs; the 'cpu' (and 'best') ratios are the more "
              "reliable there")
    for prof in profiles:
        print()
        print(f"--- cProfile of one pylstm fit: H={prof['hidden']} L={prof['layers']} "
              f"(top {args.profile} by own time)")
        print(prof["top"].strip())

    if args.json:
        save_json(args.json, {"args": vars(args), "environment": env, "n_chars": len(text),
                              "results": rows, "profiles": profiles, "elapsed_s": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
