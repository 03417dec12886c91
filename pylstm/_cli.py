"""The ``python -m pylstm`` command line.

``demo`` trains a classifier on built-in data; ``charnn train`` trains a
character-level language model on a text file and ``charnn sample`` generates
text from a saved one.
"""

import argparse
import math
import sys
import time
import warnings


class CommandError(Exception):
    """A user error (bad input file, bad option value): printed, exit status 2."""


def _demo(args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    from ._estimators import LSTMClassifier
    from .datasets import load_digits_sequences

    X, y = load_digits_sequences(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    print("pylstm demo: classify handwritten digits read row by row")
    print(f"{len(X_train)} training and {len(X_test)} test sequences of "
          f"{X.shape[1]} steps x {X.shape[2]} features (scikit-learn's digits)")
    clf = LSTMClassifier(hidden_size=64, bidirectional=True, max_iter=args.epochs,
                         learning_rate_init=0.003, dtype="float32",
                         random_state=args.random_state, verbose=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # A fixed epoch budget is the point of the demo, not a convergence failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    elapsed = time.perf_counter() - start
    accuracy = clf.score(X_test, y_test)
    print(f"held-out accuracy: {accuracy:.4f}")
    print(f"fit time: {elapsed:.1f} s for {clf.n_iter_} epochs")
    return 0


# ---------------------------------------------------------------------- model files
def _save_model(model, path):
    """Write ``model`` to ``path``: the one place that knows the model file format.

    Uses the library's safe format (:func:`pylstm.save`): no pickle.
    """
    from ._io import save

    save(model, path)


def _not_a_model(path, exc):
    reason = str(exc)
    if reason.startswith("not a pylstm model file"):
        return f"{path}: {reason}"
    return f"{path} is not a pylstm model file: {reason}"


def _load_model(path):
    """Read a language model written by :func:`_save_model`; CommandError if it is not one.

    Uses :func:`pylstm.load` only, which never unpickles anything.
    """
    from ._io import ModelFileError, load
    from ._language_model import LSTMLanguageModel

    try:
        model = load(path)
    except ModelFileError as exc:
        raise CommandError(_not_a_model(path, exc)) from None
    except IsADirectoryError:
        raise CommandError(f"{path} is a folder, not a model file") from None
    except OSError as exc:
        raise CommandError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    if not isinstance(model, LSTMLanguageModel):
        raise CommandError(f"{path} holds a {type(model).__name__}, not a language model "
                           "trained by `python -m pylstm charnn train`")
    return model


# ---------------------------------------------------------------------- charnn
def _charnn_train(args):
    from ._language_model import LSTMLanguageModel

    try:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise CommandError(f"{args.input} is not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start})") from None
    except OSError as exc:
        raise CommandError(f"cannot read {args.input}: {exc.strerror or exc}") from None
    model = LSTMLanguageModel(
        level="char", embedding_dim=args.embedding_dim, hidden_size=args.hidden_size,
        num_layers=args.num_layers, dropout=args.dropout, seq_len=args.seq_len,
        batch_size=args.batch_size, max_iter=args.epochs,
        learning_rate_init=args.learning_rate, validation_fraction=args.validation_fraction,
        random_state=args.random_state, verbose=1, dtype=args.dtype)
    print(f"pylstm charnn: training on {len(text)} characters of {args.input}", flush=True)
    start = time.perf_counter()
    try:
        model.fit(text)
    except (ValueError, TypeError, FloatingPointError) as exc:
        raise CommandError(str(exc)) from None
    elapsed = time.perf_counter() - start
    summary = (f"trained {model.n_iter_} epochs in {elapsed:.1f} s; vocabulary "
               f"{len(model.vocabulary_)} tokens; training perplexity "
               f"{math.exp(model.loss_curve_[-1]):.3f}")
    if model.validation_perplexities_:
        summary += f"; validation perplexity {model.validation_perplexities_[-1]:.3f}"
    print(summary)
    try:
        _save_model(model, args.model)
    except OSError as exc:
        raise CommandError(f"cannot write {args.model}: {exc.strerror or exc}") from None
    print(f"saved the model to {args.model}")
    return 0


def _charnn_sample(args):
    model = _load_model(args.model)
    try:
        text = model.generate(args.prompt, n_tokens=args.length, temperature=args.temperature,
                              top_k=args.top_k, random_state=args.random_state)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    print(args.prompt + text)
    return 0


def _add_charnn(sub):
    charnn = sub.add_parser(
        "charnn", help="character-level language model: train on a text file, sample text",
        description="A character-level LSTM language model (char-rnn): `train` fits "
                    "pylstm.LSTMLanguageModel(level='char') on a UTF-8 text file and saves "
                    "it; `sample` generates text from a saved model.")
    commands = charnn.add_subparsers(dest="charnn_command", required=True)

    train = commands.add_parser(
        "train", help="train a model on a text file and save it",
        description="Train a character-level LSTM language model on INPUT and save it to "
                    "--model. Prints one progress line per epoch with the training loss, "
                    "perplexity and the held-out (validation) perplexity.")
    train.add_argument("input", metavar="INPUT", help="UTF-8 text file to learn from")
    train.add_argument("--model", required=True, metavar="PATH",
                       help="where to save the trained model (required)")
    train.add_argument("--hidden-size", type=int, default=128, metavar="N",
                       help="units of each LSTM layer (default 128)")
    train.add_argument("--num-layers", type=int, default=1, metavar="N",
                       help="stacked LSTM layers (default 1)")
    train.add_argument("--embedding-dim", type=int, default=32, metavar="N",
                       help="size of the character embedding (default 32)")
    train.add_argument("--dropout", type=float, default=0.0, metavar="P",
                       help="dropout between LSTM layers, in [0, 1) (default 0)")
    train.add_argument("--seq-len", type=int, default=64, metavar="N",
                       help="characters per training window, the truncation of "
                            "backpropagation through time (default 64)")
    train.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="parallel streams of text per batch (default 32)")
    train.add_argument("--epochs", type=int, default=10, metavar="N",
                       help="passes over the text (default 10)")
    train.add_argument("--learning-rate", type=float, default=0.003, metavar="LR",
                       help="Adam step size (default 0.003)")
    train.add_argument("--validation-fraction", type=float, default=0.05, metavar="F",
                       help="share of the text's end held out to report validation "
                            "perplexity after each epoch; 0 disables (default 0.05)")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="floating-point precision (default float32)")
    train.add_argument("--random-state", type=int, default=None, metavar="SEED",
                       help="seed of the weights and the stream order (default: random)")
    train.set_defaults(func=_charnn_train)

    sample = commands.add_parser(
        "sample", help="generate text from a saved model",
        description="Generate text with a model saved by `charnn train` and print the "
                    "prompt followed by the generated characters.")
    sample.add_argument("model", metavar="MODEL", help="model file written by `charnn train`")
    sample.add_argument("--length", type=int, default=500, metavar="N",
                        help="characters to generate (default 500)")
    sample.add_argument("--temperature", type=float, default=0.8, metavar="T",
                        help="sampling temperature: lower is more conservative, 0 is "
                             "greedy decoding (default 0.8)")
    sample.add_argument("--prompt", default="", metavar="TEXT",
                        help="text to continue; characters the model never saw are read "
                             "as the unknown token (default: empty)")
    sample.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="sample only among the K most likely characters "
                             "(default: all)")
    sample.add_argument("--random-state", type=int, default=None, metavar="SEED",
                        help="seed of the sampling, for repeatable output (default: random)")
    sample.set_defaults(func=_charnn_sample)


def build_parser():
    """Return the argument parser of ``python -m pylstm``."""
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="python -m pylstm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pylstm {__version__}",
                        help="print the version of pylstm and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="train an LSTMClassifier on built-in data and report its accuracy")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    demo.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    demo.set_defaults(func=_demo)
    _add_charnn(sub)
    return parser


def main(argv=None):
    """Parse ``argv`` and run the chosen command; return the exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        The arguments after ``python -m pylstm``; None reads ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 2 for a user error (a file that cannot be read or is not
        a model file, an invalid option value), whose message goes to stderr.
        ``--help``, ``--version`` and unparsable options exit through :class:`SystemExit`
        as argparse does (status 0 and 2).

    Examples
    --------
    >>> from pylstm._cli import main
    >>> main(["charnn", "sample", "no-such-model.pylstm"])
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
