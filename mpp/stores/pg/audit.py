"""The identity audit log on PostgreSQL: the same tables, hash chain and checks as
:class:`mpp.stores.audit.AuditLog` (see :mod:`mpp.stores.audit` for what verify detects and what it cannot),
for processes sharing one database.

An append is one transaction that first locks the head table (``LOCK TABLE audit_head IN
EXCLUSIVE MODE``: appends take turns, plain reads go on), then reads the tail, then writes the
entry and the head, so two writers, in whatever process, never both extend the same tail
(IDENT-AUD-03). Verify walks the entries and reads the head in one REPEATABLE READ snapshot, so
an append running beside it is either wholly seen or not at all. ``ts`` and ``data`` are kept
as the text that was hashed, exactly as in SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from mpp.stores.audit import AuditEntry, ChainCheck, entries_of, entry_hash, next_link, prepare_entry, purchases_of
from mpp.stores.pg._base import PgStoreBase

__all__ = ["PgAuditLog", "audit_log_exists"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq  BIGINT PRIMARY KEY,
    ts   TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
"""

_ROWS = "SELECT seq, ts, kind, data, prev, hash FROM audit"
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"


class PgAuditLog(PgStoreBase):
    """``PgAuditLog(pool_or_url)``; ``await log.open()`` (or first use) creates the tables."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.stores.audit.schema"

    async def append(self, kind: str, data: dict[str, Any], *, now: datetime | None = None) -> AuditEntry:
        """Append one entry and move the head to it, in one transaction; refusals as :meth:`mpp.stores.audit.AuditLog.append`."""
        ts, stored, data = prepare_entry(kind, data, now)
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE audit_head IN EXCLUSIVE MODE")
            last = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = next_link(last, await conn.fetchrow(_HEAD))
            digest = entry_hash(seq, ts, kind, data, prev)
            await conn.execute("INSERT INTO audit (seq, ts, kind, data, prev, hash) VALUES ($1, $2, $3, $4, $5, $6)",
                               seq, ts, kind, stored, prev, digest)
            await conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) "
                               "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", seq, digest)
        return AuditEntry(seq, ts, kind, data, prev, digest)

    async def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry as recorded in the head row; ``(0, "")`` for an empty log."""
        pool = await self.pool()
        row = await pool.fetchrow(_HEAD)
        return (int(row[0]), str(row[1])) if row else (0, "")

    async def verify(self, *, anchor: tuple[int, str] | None = None) -> None:
        """Walk the whole chain; raise AuditChainBroken naming the first broken entry (:class:`mpp.stores.audit.ChainCheck`)."""
        check = ChainCheck(anchor)
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            async for row in conn.cursor(_ROWS + " ORDER BY seq", prefetch=500):
                check.row(row)
            head = await conn.fetchrow(_HEAD)
        check.finish(head)

    async def entries(self, *, agent: str | None = None, principal: str | None = None,
                      kind: str | None = None) -> list[AuditEntry]:
        """Entries in seq order, filtered on kind and on the agent/principal named in their data."""
        pool = await self.pool()
        if kind is None:
            rows = await pool.fetch(_ROWS + " ORDER BY seq")
        else:
            rows = await pool.fetch(_ROWS + " WHERE kind = $1 ORDER BY seq", kind)
        return entries_of(rows, agent=agent, principal=principal)

    async def purchases(self, *, agent: str | None = None, principal: str | None = None) -> list[dict[str, Any]]:
        """One row per challengeId (see :func:`mpp.stores.audit.purchases_of`)."""
        return purchases_of(await self.entries(), agent=agent, principal=principal)


async def audit_log_exists(url: str) -> bool:
    """Whether the database at ``url`` holds an audit log, found without creating one (as opening
    a :class:`PgAuditLog` would): for commands that only read."""
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT to_regclass('audit_head') IS NOT NULL"))
    finally:
        await conn.close()
