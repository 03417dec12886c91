"""The ``python -m pylstm`` command line."""

import argparse
import time
import warnings


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


def build_parser():
    """Return the argument parser of ``python -m pylstm``."""
    parser = argparse.ArgumentParser(prog="python -m pylstm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="train an LSTMClassifier on built-in data and report its accuracy")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    demo.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Parse ``argv`` and run the chosen command; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)
