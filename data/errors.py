"""The one exception for data mistakes a user can make: bad config, missing or damaged data.

Messages are a single line naming the offending value or file and the fix.
"""

from __future__ import annotations


class DataError(ValueError):
    """A user-fixable data problem; the message names the value or file and how to fix it."""


def first_line(exc: BaseException, limit: int = 200, named: bool = False) -> str:
    """The first line of an error's message (its class name when it has none), for one-line
    reports of the several-line errors `datasets`, Hydra and `tokenizers` raise.

    named=True puts the class name first, for libraries whose messages alone do not say what
    went wrong. A copy of sweep.errors.first_line, since data must not import sweep.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0][:limit]
    return f"{type(exc).__name__}: {line}" if named else line
