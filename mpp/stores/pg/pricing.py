"""The seller's pricing records on PostgreSQL: the same contract as
:class:`mpp.stores.pricing.SqlitePricingStore`, for seller processes sharing one database.

A seat period is recorded by ``INSERT ... ON CONFLICT DO NOTHING`` on its (subscription,
period) key, so of concurrent purchases of one period in any number of processes exactly one
records it (PRICE-SEAT-03); task moves are single conditional ``UPDATE``s.
"""

from __future__ import annotations

from datetime import datetime, timezone

from mpp.protocol.models import format_rfc3339
from mpp.stores.pricing import TASK_MOVES, TaskRecord
from mpp.stores.pg._base import PgStoreBase, rows_changed, stamp

__all__ = ["PgPricingStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    method TEXT NOT NULL,
    agent TEXT NOT NULL,
    refund TEXT NOT NULL CHECK (refund IN ('full', 'none')),
    reference TEXT NOT NULL,
    payer TEXT,
    settled_at TIMESTAMPTZ NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'delivered', 'refunded')),
    detail TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS seat_periods (
    subscription_id TEXT NOT NULL,
    period BIGINT NOT NULL,
    challenge_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscription_id, period)
);
CREATE TABLE IF NOT EXISTS price_lists (
    version TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    first_served TIMESTAMPTZ NOT NULL
);
"""


def _now() -> datetime:
    return stamp(datetime.now(timezone.utc))


class PgPricingStore(PgStoreBase):
    """``PgPricingStore(pool_or_url)``; ``await store.open()`` (or first use) creates the tables."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.pricing.schema"

    async def create_task(self, task_id: str, *, challenge_id: str, method: str, agent: str, refund: str, reference: str,
                          payer: str | None, settled_at: datetime) -> bool:
        """Record task ``task_id`` as ``running`` (PRICE-TASK-04): paid by ``challenge_id`` through ``method``
        (settlement ``reference`` at ``settled_at``, timezone-aware) for ``agent``, refund rule ``refund``
        (``full`` or ``none``). False if the id is taken; the existing record is left as it was."""
        pool = await self.pool()
        now = _now()
        won = await pool.fetchval(
            "INSERT INTO tasks(task_id, challenge_id, method, agent, refund, reference, payer, settled_at, state, created_at, "
            "updated_at) VALUES ($1, $2, $9, $3, $4, $5, $6, $7, 'running', $8, $8) ON CONFLICT (task_id) DO NOTHING RETURNING 1",
            task_id, challenge_id, agent, refund, reference, payer, stamp(settled_at), now, method)
        return won is not None

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` (``settled_at`` RFC 3339, to the second), or None if there is none."""
        pool = await self.pool()
        row = await pool.fetchrow(_SELECT_TASK + "WHERE task_id=$1", task_id)
        return _task(row) if row is not None else None

    async def refunds_owed(self) -> list[TaskRecord]:
        """Tasks ``failed`` under the refund rule ``full`` and not ``refunded`` yet (PRICE-TASK-04), least
        recently changed first: refunds a crash or a failed rail interrupted, for the seller to complete."""
        pool = await self.pool()
        rows = await pool.fetch(_SELECT_TASK + "WHERE state='failed' AND refund='full' ORDER BY updated_at, task_id")
        return [_task(row) for row in rows]

    async def move_task(self, task_id: str, state: str, *, detail: str | None = None) -> bool:
        """Move the task to ``state`` if it is in a state :data:`mpp.stores.pricing.TASK_MOVES` lets precede
        it, with ``detail`` (None keeps the earlier one), in one conditional UPDATE: True for exactly one
        caller, False if the task is missing or elsewhere. KeyError for a ``state`` nothing moves to."""
        pool = await self.pool()
        status = await pool.execute(
            "UPDATE tasks SET state=$1, detail=COALESCE($2, detail), updated_at=$3 "
            "WHERE task_id=$4 AND state = ANY($5::text[])",
            state, detail, _now(), task_id, list(TASK_MOVES[state]))
        return rows_changed(status) == 1

    async def reserve_seat(self, subscription_id: str, period: int, challenge_id: str) -> str | None:
        """Record period ``period`` of ``subscription_id`` as paid by ``challenge_id`` (PRICE-SEAT-03): None
        if recorded now, else the challenge id that holds it (this same one for a replayed credential).
        RuntimeError if, ten times over, a competing purchase's insert keeps the row from being either
        written or read (committed after this statement's snapshot, or rolled back)."""
        pool = await self.pool()
        for _ in range(10):
            row = await pool.fetchrow(
                "WITH ins AS (INSERT INTO seat_periods(subscription_id, period, challenge_id, created_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING challenge_id) "
                "SELECT true AS won, challenge_id FROM ins UNION ALL "
                "SELECT false, challenge_id FROM seat_periods WHERE subscription_id=$1 AND period=$2 LIMIT 1",
                subscription_id, period, challenge_id, _now())
            if row is not None:
                return None if row["won"] else row["challenge_id"]
            # the competing insert committed after this statement's snapshot, or was rolled back: look again
        raise RuntimeError(f"seat period {subscription_id}/{period} could not be recorded or read")

    async def release_seat(self, subscription_id: str, period: int, challenge_id: str) -> None:
        """Remove the period's record if ``challenge_id`` holds it (its settlement failed, or the payment
        was refunded); another challenge's record is left alone."""
        pool = await self.pool()
        await pool.execute("DELETE FROM seat_periods WHERE subscription_id=$1 AND period=$2 AND challenge_id=$3",
                           subscription_id, period, challenge_id)

    async def remember_price_list(self, version: str, fingerprint: str) -> tuple[str, str]:
        """:meth:`mpp.stores.pricing.PricingStore.remember_price_list`: the first record of a version stays
        (``ON CONFLICT DO NOTHING``), whichever process made it."""
        pool = await self.pool()
        await pool.execute("INSERT INTO price_lists(version, fingerprint, first_served) VALUES ($1, $2, $3) "
                           "ON CONFLICT (version) DO NOTHING", version, fingerprint, _now())
        row = await pool.fetchrow("SELECT fingerprint, first_served FROM price_lists WHERE version=$1", version)
        return row["fingerprint"], format_rfc3339(row["first_served"])

    async def price_lists(self) -> dict[str, str]:
        """Every price list version recorded, with its content's fingerprint."""
        pool = await self.pool()
        return {row["version"]: row["fingerprint"] for row in await pool.fetch("SELECT version, fingerprint FROM price_lists")}


_SELECT_TASK = "SELECT task_id, challenge_id, method, agent, refund, reference, payer, settled_at, state, detail FROM tasks "


def _task(row) -> TaskRecord:
    values = list(row)
    values[7] = values[7].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return TaskRecord(*values)
