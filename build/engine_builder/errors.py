"""One error type for bad input: a SystemExit, so the CLI prints its single line and no traceback."""

from __future__ import annotations

import argparse
import sys


class BuildError(SystemExit):
    """A build that cannot go on because of its input; `str(err)` is the one line the user sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class OneLineParser(argparse.ArgumentParser):
    """argparse's flag errors as one line (its default prints the whole usage first), exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
