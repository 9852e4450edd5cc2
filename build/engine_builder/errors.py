"""One error type for bad input: a SystemExit, so the CLI prints its single line and no traceback."""

from __future__ import annotations


class BuildError(SystemExit):
    """A build that cannot go on because of its input; `str(err)` is the one line the user sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
