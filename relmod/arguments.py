"""The argument parser of every relmod command: a usage error takes one line of stderr.

``relmod``, ``relmod-broker`` and ``python -m relmod.workers`` share it, so a mistake reads the
same everywhere and exits with status 2.

Example:
    >>> parser = OneLineParser(prog="relmod-demo")
    >>> _ = parser.add_argument("--count", type=int)
    >>> parser.parse_args(["--count", "x"])  # doctest: +SKIP
    relmod-demo: argument --count: invalid int value: 'x' (see --help)
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors take one line of stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")
