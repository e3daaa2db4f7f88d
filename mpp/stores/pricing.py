"""The seller's pricing records (spec/pricing.md): task states (PRICE-TASK-04) and paid seat
periods (PRICE-SEAT-03), on SQLite here and on PostgreSQL in :mod:`mpp.stores.pg.pricing`, behind one
async interface (:class:`PricingStore`), chosen by location with
:func:`mpp.connect.pricing_store_for`.

A task moves only forward: ``running`` -> ``succeeded`` | ``failed``; ``succeeded`` ->
``delivered`` | ``failed``; ``failed`` -> ``refunded``. Every move is one conditional update, so
of two processes making the same move exactly one wins (and only that one refunds).
A seat period is recorded by inserting its (subscription, period) key: one insert wins.
Every price list version the seller served is kept with its content's fingerprint, so a version
name cannot come back with other prices after a restart (PRICE-VER-02).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from mpp.stores.sqlite import connect, immediate
from mpp.protocol.models import format_rfc3339

__all__ = ["TASK_STATES", "TASK_MOVES", "TaskRecord", "PricingStore", "SqlitePricingStore"]

TASK_STATES = ("running", "succeeded", "failed", "delivered", "refunded")
"""The states of a priced task (PRICE-TASK-04)."""
TASK_MOVES = {"succeeded": ("running",), "failed": ("running", "succeeded"), "delivered": ("succeeded",),
              "refunded": ("failed",)}
"""Which states each state may follow (PRICE-TASK-04)"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    method TEXT NOT NULL,
    agent TEXT NOT NULL,
    refund TEXT NOT NULL CHECK (refund IN ('full', 'none')),
    reference TEXT NOT NULL,
    payer TEXT,
    settled_at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'delivered', 'refunded')),
    detail TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seat_periods (
    subscription_id TEXT NOT NULL,
    period INTEGER NOT NULL,
    challenge_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (subscription_id, period)
);
CREATE TABLE IF NOT EXISTS price_lists (
    version TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    first_served TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class TaskRecord:
    """A paid task (spec/pricing.md): the challenge and method it was paid with, the agent, the
    quoted refund rule, the settlement reference, its state (one of ``TASK_STATES``) and detail."""

    task_id: str
    challenge_id: str
    method: str  # the payment method the task was paid with: its refund goes back through it
    agent: str
    refund: str  # the quoted refund rule: full or none
    reference: str  # the settlement reference of the task's charge
    payer: str | None
    settled_at: str
    state: str
    detail: str | None


class PricingStore(Protocol):
    """The seller's task states (PRICE-TASK-04) and paid seat periods (PRICE-SEAT-03)."""

    async def create_task(self, task_id: str, *, challenge_id: str, method: str, agent: str, refund: str, reference: str,
                          payer: str | None, settled_at: datetime) -> bool:
        """Record a running task; False if the id is taken (the handler named a used id)."""

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` (``settled_at`` RFC 3339, to the second), or None if there is none."""

    async def move_task(self, task_id: str, state: str, *, detail: str | None = None) -> bool:
        """Move the task to ``state`` if it is in one of the states that may precede it; True
        for exactly one caller."""

    async def refunds_owed(self) -> list[TaskRecord]:
        """Tasks that failed under the refund rule ``full`` and are not refunded yet (a refund
        interrupted by a crash, or by a rail that failed): the seller completes them."""

    async def reserve_seat(self, subscription_id: str, period: int, challenge_id: str) -> str | None:
        """Record the period as paid by this challenge. None if recorded now, else the challenge
        id that holds it (this same one, for a replayed credential)."""

    async def release_seat(self, subscription_id: str, period: int, challenge_id: str) -> None:
        """Remove the record if this challenge holds it (its settlement failed)."""

    async def remember_price_list(self, version: str, fingerprint: str) -> tuple[str, str]:
        """Record that the seller serves price list ``version`` whose content has ``fingerprint``
        (the first record of a version stays). Returns the fingerprint recorded for the version and
        when it was first served (RFC 3339): another fingerprint than ``fingerprint`` means the
        version was served before with other prices (PRICE-VER-02)."""

    async def price_lists(self) -> dict[str, str]:
        """Every price list version recorded, with its content's fingerprint."""

    async def close(self) -> None:
        """Release the store's connection or pool."""


def _now() -> str:
    return format_rfc3339(datetime.now(timezone.utc))


class SqlitePricingStore:
    """The pricing records in SQLite, shared by every seller process on the file."""

    def __init__(self, location: str) -> None:
        self._conn = connect(location, _SCHEMA)

    async def close(self) -> None:
        """Close the store's connection to the file."""
        self._conn.close()

    async def create_task(self, task_id: str, *, challenge_id: str, method: str, agent: str, refund: str, reference: str,
                          payer: str | None, settled_at: datetime) -> bool:
        """Record task ``task_id`` as ``running`` (PRICE-TASK-04): paid by ``challenge_id`` through ``method``
        (settlement ``reference`` at ``settled_at``) for ``agent``, refund rule ``refund`` (``full`` or ``none``),
        in one IMMEDIATE transaction. False if the id is taken; the existing record is left as it was."""
        now = _now()
        with immediate(self._conn) as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO tasks(task_id, challenge_id, method, agent, refund, reference, payer, settled_at, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (task_id, challenge_id, method, agent, refund, reference, payer, format_rfc3339(settled_at), now, now))
            return cur.rowcount == 1

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` (``settled_at`` RFC 3339, to the second), or None if there is none."""
        row = self._conn.execute(
            "SELECT task_id, challenge_id, method, agent, refund, reference, payer, settled_at, state, detail FROM tasks "
            "WHERE task_id=?", (task_id,)).fetchone()
        return TaskRecord(*row) if row else None

    async def refunds_owed(self) -> list[TaskRecord]:
        """Tasks ``failed`` under the refund rule ``full`` and not ``refunded`` yet (PRICE-TASK-04), least
        recently changed first: refunds a crash or a failed rail interrupted, for the seller to complete."""
        rows = self._conn.execute(
            "SELECT task_id, challenge_id, method, agent, refund, reference, payer, settled_at, state, detail FROM tasks "
            "WHERE state='failed' AND refund='full' ORDER BY updated_at, task_id").fetchall()
        return [TaskRecord(*row) for row in rows]

    async def move_task(self, task_id: str, state: str, *, detail: str | None = None) -> bool:
        """Move the task to ``state`` if it is in a state :data:`TASK_MOVES` lets precede it, with ``detail``
        (None keeps the earlier one), in one IMMEDIATE transaction: True for exactly one caller, False if the
        task is missing or elsewhere. KeyError for a ``state`` nothing moves to (``running``)."""
        before = TASK_MOVES[state]
        with immediate(self._conn) as c:
            cur = c.execute(
                f"UPDATE tasks SET state=?, detail=COALESCE(?, detail), updated_at=? "
                f"WHERE task_id=? AND state IN ({','.join('?' * len(before))})",
                (state, detail, _now(), task_id, *before))
            return cur.rowcount == 1

    async def reserve_seat(self, subscription_id: str, period: int, challenge_id: str) -> str | None:
        """Record period ``period`` of ``subscription_id`` as paid by ``challenge_id``, in one IMMEDIATE
        transaction (PRICE-SEAT-03): None if recorded now, else the challenge id that holds it (this same one
        for a replayed credential)."""
        with immediate(self._conn) as c:
            if c.execute("INSERT OR IGNORE INTO seat_periods(subscription_id, period, challenge_id, created_at) "
                         "VALUES (?, ?, ?, ?)", (subscription_id, period, challenge_id, _now())).rowcount == 1:
                return None
            return c.execute("SELECT challenge_id FROM seat_periods WHERE subscription_id=? AND period=?",
                             (subscription_id, period)).fetchone()[0]

    async def release_seat(self, subscription_id: str, period: int, challenge_id: str) -> None:
        """Remove the period's record if ``challenge_id`` holds it (its settlement failed, or the payment
        was refunded); another challenge's record is left alone."""
        with immediate(self._conn) as c:
            c.execute("DELETE FROM seat_periods WHERE subscription_id=? AND period=? AND challenge_id=?",
                      (subscription_id, period, challenge_id))

    async def remember_price_list(self, version: str, fingerprint: str) -> tuple[str, str]:
        """:meth:`PricingStore.remember_price_list`: one IMMEDIATE transaction, the first record of a version stays."""
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO price_lists(version, fingerprint, first_served) VALUES (?, ?, ?)",
                      (version, fingerprint, _now()))
            row = c.execute("SELECT fingerprint, first_served FROM price_lists WHERE version=?", (version,)).fetchone()
        return row[0], row[1]

    async def price_lists(self) -> dict[str, str]:
        """Every price list version recorded, with its content's fingerprint."""
        return dict(self._conn.execute("SELECT version, fingerprint FROM price_lists").fetchall())
