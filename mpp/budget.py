"""The buyer's own budget counters: reservations against each mandate link, in SQLite.

Reserve before signing (in one IMMEDIATE transaction, so several buyer processes sharing the
file cannot both spend the last of a budget), commit on a verified receipt, release on a
refusal. A reservation whose outcome is unknown stays until it expires, then stops counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from ._sqlite import connect, immediate
from .models import format_rfc3339

__all__ = ["BudgetStore", "BudgetLink", "BudgetRefused"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    challenge_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    expires_at TEXT NOT NULL,
    PRIMARY KEY (challenge_id, jti)
);
CREATE INDEX IF NOT EXISTS reservations_by_link ON reservations (jti, period, state)
"""


class BudgetRefused(Exception):
    def __init__(self, jti: str, budget: int, used: int, amount: int) -> None:
        super().__init__(f"mandate {jti}: {used} of {budget} already used or reserved; {amount} more would exceed it")
        self.jti, self.budget, self.used, self.amount = jti, budget, used, amount


@dataclass(frozen=True)
class BudgetLink:
    jti: str
    period: str  # period key, e.g. 2026-11-26
    budget: int


class BudgetStore:
    def __init__(self, location: str, *, reservation_ttl: timedelta = timedelta(minutes=10)) -> None:
        self._conn = connect(location, _SCHEMA)
        self.reservation_ttl = reservation_ttl

    def close(self) -> None:
        self._conn.close()

    def used(self, jti: str, period: str, now: datetime) -> int:
        return self._used(self._conn, jti, period, now)

    @staticmethod
    def _used(c, jti: str, period: str, now: datetime) -> int:
        return c.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE jti=? AND period=? "
            "AND (state='committed' OR (state='reserved' AND expires_at > ?))",
            (jti, period, format_rfc3339(now)),
        ).fetchone()[0]

    def reserve(self, challenge_id: str, links: Sequence[BudgetLink], amount: int, *, now: datetime | None = None,
                ttl: timedelta | None = None) -> None:
        """Hold ``amount`` against every link, or raise BudgetRefused and hold nothing.

        Reserving again under the same ``challenge_id`` replaces that reservation (a session's
        top-up raises its cap this way): the old amount does not count against the new one.
        """
        now = now or datetime.now(timezone.utc)
        expires = format_rfc3339(now + (ttl or self.reservation_ttl))
        with immediate(self._conn) as c:
            for link in links:
                used = self._used(c, link.jti, link.period, now) - self._held(c, challenge_id, link.jti, now)
                if used + amount > link.budget:
                    raise BudgetRefused(link.jti, link.budget, used, amount)
            for link in links:
                c.execute(
                    "INSERT OR REPLACE INTO reservations(challenge_id, jti, period, amount, state, expires_at) VALUES (?, ?, ?, ?, 'reserved', ?)",
                    (challenge_id, link.jti, link.period, amount, expires),
                )

    @staticmethod
    def _held(c, challenge_id: str, jti: str, now: datetime) -> int:
        return c.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE challenge_id=? AND jti=? AND state='reserved' AND expires_at > ?",
            (challenge_id, jti, format_rfc3339(now)),
        ).fetchone()[0]

    def extend(self, challenge_id: str, *, ttl: timedelta | None = None, now: datetime | None = None) -> None:
        """Keep a live reservation (an open session's cap) from expiring for another ``ttl``."""
        expires = format_rfc3339((now or datetime.now(timezone.utc)) + (ttl or self.reservation_ttl))
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET expires_at=? WHERE challenge_id=? AND state='reserved'", (expires, challenge_id))

    def settle(self, challenge_id: str, amount: int) -> None:
        """Commit exactly ``amount`` of a reservation and release the rest (a session's capture at close)."""
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET amount=?, state='committed' WHERE challenge_id=? AND state='reserved'",
                      (amount, challenge_id))

    def commit(self, challenge_id: str) -> None:
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET state='committed' WHERE challenge_id=? AND state='reserved'", (challenge_id,))

    def release(self, challenge_id: str) -> None:
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET state='released' WHERE challenge_id=? AND state='reserved'", (challenge_id,))
