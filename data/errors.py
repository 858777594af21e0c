"""The one exception for data mistakes a user can make: bad config, missing or damaged data.

Messages are a single line naming the offending value or file and the fix.
"""

from __future__ import annotations


class DataError(ValueError):
    """A user-fixable data problem; the message names the value or file and how to fix it."""
