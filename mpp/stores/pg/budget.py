"""The buyer's budget counters on PostgreSQL: the same contract as :class:`mpp.stores.budget.BudgetStore`,
for buyer processes sharing one database.

Where SQLite takes its one write lock (``BEGIN IMMEDIATE``), a reservation here is one
transaction that first takes a transaction-scoped advisory lock per mandate link (in one order,
so two reservations over the same links cannot deadlock): every reservation against a link
takes turns, in whatever process it runs, so two buyers never both spend the last of a budget
(IDENT-BUD-02), while reservations against other links proceed in parallel. Commit, settle,
release and extend check no budget (in SQLite either), so each is one UPDATE and needs no lock:
a reservation running beside one sees it either done or not yet, as it would in SQLite. Times
are kept to the second, as the SQLite store keeps them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import asyncpg

from mpp.stores.budget import BudgetLink, ReservationFinished, check_budget
from mpp.stores.pg._base import PgStoreBase, stamp

__all__ = ["PgBudgetStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_reservations (
    challenge_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (challenge_id, jti)
);
CREATE INDEX IF NOT EXISTS budget_reservations_by_link ON budget_reservations (jti, period, state);
"""

# What counts against a link in its period: committed, and reserved until it expires.
_USED = ("SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE jti=$1 AND period=$2 "
         "AND (state='committed' OR (state='reserved' AND expires_at > $3))")


class PgBudgetStore(PgStoreBase):
    """``PgBudgetStore(pool_or_url)``; ``await store.open()`` (or first use) creates the table."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.stores.budget.schema"

    def __init__(self, pool: asyncpg.Pool | str, *, reservation_ttl: timedelta = timedelta(minutes=10), **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self.reservation_ttl = reservation_ttl

    async def used(self, jti: str, period: str, now: datetime) -> int:
        """What counts against the link ``jti`` in ``period`` at ``now``, in base units: committed
        reservations plus those still reserved and not expired (IDENT-BUD-02). ValueError for a naive ``now``."""
        pool = await self.pool()
        return int(await pool.fetchval(_USED, jti, period, stamp(now)))

    async def reserve(self, challenge_id: str, links: Sequence[BudgetLink], amount: int, *, now: datetime | None = None,
                      ttl: timedelta | None = None) -> None:
        """Hold ``amount`` against every link, or raise BudgetRefused and hold nothing.

        Reserving again under the same ``challenge_id`` replaces that reservation (a session's
        top-up raises its cap this way): the old amount does not count against the new one.
        """
        now = now or datetime.now(timezone.utc)
        at, expires = stamp(now), stamp(now + (ttl or self.reservation_ttl))
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            for jti in sorted({link.jti for link in links}):
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"mpp.stores.budget:{jti}")
            done = await conn.fetchval("SELECT state FROM budget_reservations WHERE challenge_id=$1 AND state != 'reserved' LIMIT 1",
                                       challenge_id)
            if done is not None:
                raise ReservationFinished(challenge_id, done)
            for link in links:
                used = await conn.fetchval(_USED, link.jti, link.period, at)
                held = await conn.fetchval(
                    "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations "
                    "WHERE challenge_id=$1 AND jti=$2 AND state='reserved' AND expires_at > $3",
                    challenge_id, link.jti, at,
                )
                check_budget(link, int(used) - int(held), amount)
            await conn.executemany(
                "INSERT INTO budget_reservations(challenge_id, jti, period, amount, state, expires_at) "
                "VALUES ($1, $2, $3, $4, 'reserved', $5) ON CONFLICT (challenge_id, jti) DO UPDATE SET "
                "period=excluded.period, amount=excluded.amount, state=excluded.state, expires_at=excluded.expires_at",
                [(challenge_id, link.jti, link.period, amount, expires) for link in links],
            )

    async def extend(self, challenge_id: str, *, ttl: timedelta | None = None, now: datetime | None = None) -> None:
        """Keep a live reservation (an open session's cap) from expiring for another ``ttl``."""
        expires = stamp((now or datetime.now(timezone.utc)) + (ttl or self.reservation_ttl))
        pool = await self.pool()
        await pool.execute("UPDATE budget_reservations SET expires_at=$1 WHERE challenge_id=$2 AND state='reserved'",
                           expires, challenge_id)

    async def settle(self, challenge_id: str, amount: int) -> None:
        """Commit exactly ``amount`` of a reservation and release the rest (a session's capture at close)."""
        pool = await self.pool()
        await pool.execute("UPDATE budget_reservations SET amount=$1, state='committed' WHERE challenge_id=$2 AND state='reserved'",
                           amount, challenge_id)

    async def commit(self, challenge_id: str) -> None:
        """The reservation is spent (a verified receipt, IDENT-BUD-03): reserved -> committed on every link,
        in one UPDATE. A reservation already committed or released, or unknown, is left alone."""
        pool = await self.pool()
        await pool.execute("UPDATE budget_reservations SET state='committed' WHERE challenge_id=$1 AND state='reserved'",
                           challenge_id)

    async def release(self, challenge_id: str) -> None:
        """The reservation is given back (IDENT-BUD-03): reserved -> released on every link, in one UPDATE; it
        stops counting, and its ``challenge_id`` cannot be reserved again (ReservationFinished)."""
        pool = await self.pool()
        await pool.execute("UPDATE budget_reservations SET state='released' WHERE challenge_id=$1 AND state='reserved'",
                           challenge_id)
