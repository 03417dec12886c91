"""Command line: ``python -m pylstm demo``."""

import sys


def main(argv=None):
    """Entry point of ``python -m pylstm``."""
    from ._cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
