"""Errors the user can act on.

Every bad input raises :class:`CircuitsError` with a one-line message that says what was wrong
and what to do. The CLI prints it as ``Error: ...`` on stderr and exits with status 2; the Python
API lets it propagate so that notebooks see an ordinary exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CircuitsError(Exception):
    """A user-facing error: one line, says what was wrong and what to do."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def suggest(name: str, choices: Iterable[str], what: str) -> str:
    """``"unknown layer 'mixed4x'; did you mean 'mixed4c'?"`` style message for a bad name."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        hint = f"choose one of: {shown}"
    return f"unknown {what} {name!r}; {hint}"
