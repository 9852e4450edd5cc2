"""One-line errors for the user's mistakes in our commands (`python -m server`, `make triton`, `make bench`).

A mistake (a missing engine, a port in use, a bad flag value) ends the command with one line on stderr
naming the problem and the fix, and a non-zero exit; a traceback is kept for our own bugs. `UserError`
is a SystemExit, so Python prints its message and nothing else; `OneLineParser` does the same for the
flag errors argparse finds (its default prints the whole usage first).
"""

from __future__ import annotations

import argparse
import sys


class UserError(SystemExit):
    """A command that cannot go on because of its input; `str(err)` is the line the user sees."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse's hook; exit status 2 as argparse's own
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
