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
