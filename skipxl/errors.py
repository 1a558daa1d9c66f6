"""One exception type for every user-facing mistake.

Bad input (a missing file, a wrong shape, an invalid combination of options) raises
:class:`SkipxlError` with a message that names the problem *and* the fix. Command-line
entry points catch it and print a single line instead of a traceback.
"""

from __future__ import annotations


class SkipxlError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`SkipxlError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SkipxlError(message)


class ExitStatus(Exception):
    """Leave a command with ``code`` after the normal shutdown (no traceback, no ``error:`` line):
    a training run stopped by a signal exits ``128 + signum`` (143 SIGTERM, 130 SIGINT) on every
    rank; ``skipxl runs check`` exits 1 when it finds damage."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
