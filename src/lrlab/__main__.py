"""``python -m lrlab`` and the ``lrlab`` console script."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the lrlab command line; returns the process exit code."""
    from lrlab.bench.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
