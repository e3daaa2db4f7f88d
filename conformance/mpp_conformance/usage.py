"""Exit status 2: bad usage, or a target the suite cannot check (down, or not priced)."""

from __future__ import annotations

__all__ = ["UsageError", "USAGE_EXIT"]

USAGE_EXIT = 2


class UsageError(SystemExit):
    """One line for the user and exit status 2. A SystemExit, so that a caller that does not catch
    it still stops; ``str()`` is the message (``code`` alone is 2: plain SystemExit(msg) exits 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = USAGE_EXIT
