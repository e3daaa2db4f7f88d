"""The seller's list of in-doubt charges: transfers a ledger service may or may not have made
(the seller asked, and no usable answer came back), to be voided once the ledger answers.

The list outlives the process: a seller restarted, or another seller process on the same store,
takes up the voids where they were left, so a buyer who was told 503 is never left charged.
Voiding is idempotent at the ledger, so two processes voiding the same transfer is harmless.
The SQLite journal lives in the payment store's file; :class:`mpp.stores.pg.PgDoubtJournal` in its
database. Choose one with :func:`mpp.connect.doubt_journal_for`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from mpp.stores.sqlite import connect, immediate
from mpp.protocol.models import format_rfc3339

__all__ = ["DoubtJournal", "SqliteDoubtJournal", "MemoryDoubtJournal"]


class DoubtJournal(Protocol):
    """The seller's in-doubt transfers, by transfer id: add, remove, list."""

    async def add(self, transfer_id: str, why: str) -> None:
        """Remember ``transfer_id`` as in doubt (again: the first reason is kept)."""

    async def remove(self, transfer_id: str) -> None:
        """Forget ``transfer_id``: the ledger has answered for it (voided, or refused the void). An id not
        in the journal is ignored."""

    async def pending(self) -> dict[str, str]:
        """Every transfer still in doubt -> why, oldest first."""

    async def close(self) -> None:
        """Release the journal's connection or pool."""


class MemoryDoubtJournal:
    """In this process only: lost on restart (for tests and throwaway sellers)."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}

    async def add(self, transfer_id: str, why: str) -> None:
        """Remember ``transfer_id`` as in doubt; an id already there keeps its first reason."""
        self._items.setdefault(transfer_id, why)

    async def remove(self, transfer_id: str) -> None:
        """Forget ``transfer_id``; an unknown id is ignored."""
        self._items.pop(transfer_id, None)

    async def pending(self) -> dict[str, str]:
        """A copy of the transfers in doubt -> why, in the order they were added."""
        return dict(self._items)

    async def close(self) -> None:
        """Nothing to release."""
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS in_doubt (
    transfer_id TEXT PRIMARY KEY,
    why TEXT NOT NULL,
    since TEXT NOT NULL
)
"""


class SqliteDoubtJournal:
    """The in-doubt journal in SQLite (the payment store's file), shared by every process on it."""

    def __init__(self, location: str) -> None:
        self._conn = connect(location, _SCHEMA)

    async def add(self, transfer_id: str, why: str) -> None:
        """Remember ``transfer_id`` as in doubt since now, in one IMMEDIATE transaction; an id already there
        keeps its first reason and time."""
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO in_doubt(transfer_id, why, since) VALUES (?, ?, ?)",
                      (transfer_id, why, format_rfc3339(datetime.now(timezone.utc))))

    async def remove(self, transfer_id: str) -> None:
        """Forget ``transfer_id`` (the ledger has answered for it), in one IMMEDIATE transaction; an unknown
        id is ignored."""
        with immediate(self._conn) as c:
            c.execute("DELETE FROM in_doubt WHERE transfer_id = ?", (transfer_id,))

    async def pending(self) -> dict[str, str]:
        """Every transfer still in doubt -> why, oldest first (to the second, then by id), as every process
        on the file left them."""
        rows = self._conn.execute("SELECT transfer_id, why FROM in_doubt ORDER BY since, transfer_id").fetchall()
        return {tid: why for tid, why in rows}

    async def close(self) -> None:
        """Close the journal's connection to the file."""
        self._conn.close()
