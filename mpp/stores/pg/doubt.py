"""The seller's in-doubt charges on PostgreSQL: :class:`mpp.stores.doubt.SqliteDoubtJournal`'s contract,
shared by every seller process on the database."""

from __future__ import annotations

from datetime import datetime, timezone

from mpp.stores.pg._base import PgStoreBase, stamp

__all__ = ["PgDoubtJournal"]


class PgDoubtJournal(PgStoreBase):
    """The in-doubt journal in PostgreSQL."""

    _SCHEMA = """
CREATE TABLE IF NOT EXISTS in_doubt (
    transfer_id TEXT PRIMARY KEY,
    why TEXT NOT NULL,
    since TIMESTAMPTZ NOT NULL
);
"""
    _LOCK_NAME = "mpp.stores.doubt.schema"

    async def add(self, transfer_id: str, why: str) -> None:
        """Remember ``transfer_id`` as in doubt since now (one INSERT); an id already there keeps its first
        reason and time."""
        pool = await self.pool()
        await pool.execute("INSERT INTO in_doubt(transfer_id, why, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                           transfer_id, why, stamp(datetime.now(timezone.utc)))

    async def remove(self, transfer_id: str) -> None:
        """Forget ``transfer_id`` (the ledger has answered for it); an unknown id is ignored."""
        pool = await self.pool()
        await pool.execute("DELETE FROM in_doubt WHERE transfer_id = $1", transfer_id)

    async def pending(self) -> dict[str, str]:
        """Every transfer still in doubt -> why, oldest first (to the second, then by id), as every seller
        process on the database left them."""
        pool = await self.pool()
        rows = await pool.fetch("SELECT transfer_id, why FROM in_doubt ORDER BY since, transfer_id")
        return {r[0]: r[1] for r in rows}
