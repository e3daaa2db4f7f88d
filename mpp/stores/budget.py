"""The buyer's own budget counters: reservations against each mandate link, in SQLite.

Reserve before signing (in one IMMEDIATE transaction, so several buyer processes sharing the
file cannot both spend the last of a budget), commit on a verified receipt, release on a
refusal. A reservation whose outcome is unknown stays until it expires, then stops counting.

The buyer uses the counters through one async interface, :class:`AsyncBudgetStore`, whatever
the engine: :class:`AsyncSqliteBudgetStore` wraps a :class:`BudgetStore`, and
:class:`mpp.stores.pg.PgBudgetStore` keeps the same counters in PostgreSQL. Choose one by URL with
:func:`mpp.connect.budget_store_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol, Sequence, runtime_checkable

from mpp.stores.sqlite import connect, immediate
from mpp.protocol.models import format_rfc3339

__all__ = ["ReservationFinished", "BudgetStore", "BudgetLink", "BudgetRefused", "AsyncBudgetStore", "AsyncSqliteBudgetStore", "check_budget"]

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
    """Reserving ``amount`` more would take the mandate link ``jti`` over its ``budget`` (IDENT-BUD-01)."""

    def __init__(self, jti: str, budget: int, used: int, amount: int) -> None:
        super().__init__(f"mandate {jti}: {used} of {budget} already used or reserved; {amount} more would exceed it")
        self.jti, self.budget, self.used, self.amount = jti, budget, used, amount


@dataclass(frozen=True)
class BudgetLink:
    """One mandate of a chain as its budget counter sees it: the mandate's id, the period key the
    purchase falls in and the budget per period, in base units."""

    jti: str
    period: str  # period key, e.g. 2026-11-26
    budget: int


class ReservationFinished(BudgetRefused):
    """A reservation id that was already committed or released is offered again (a seller
    reusing a challenge id): replacing it would take spent money out of the count (IDENT-BUD-03)."""

    def __init__(self, reservation_id: str, state: str) -> None:
        Exception.__init__(self, f"reservation {reservation_id} is already {state}; it cannot be reserved again")
        self.jti, self.budget, self.used, self.amount = "", 0, 0, 0
        self.reservation_id, self.state = reservation_id, state


def check_budget(link: BudgetLink, used: int, amount: int) -> None:
    """IDENT-BUD-01: ``amount`` more fits only if what the link already counts plus it stays within its budget."""
    if used + amount > link.budget:
        raise BudgetRefused(link.jti, link.budget, used, amount)


class BudgetStore:
    """The budget counters in one SQLite file, synchronous; reservations unanswered for
    ``reservation_ttl`` stop counting."""

    def __init__(self, location: str, *, reservation_ttl: timedelta = timedelta(minutes=10)) -> None:
        self._conn = connect(location, _SCHEMA)
        self.reservation_ttl = reservation_ttl

    def close(self) -> None:
        """Close the store's connection to the file."""
        self._conn.close()

    def used(self, jti: str, period: str, now: datetime) -> int:
        """What counts against the link ``jti`` in ``period`` at ``now``, in base units: its committed
        reservations plus those still reserved and not expired (IDENT-BUD-02); released and expired ones do not count."""
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
            done = c.execute("SELECT state FROM reservations WHERE challenge_id=? AND state != 'reserved' LIMIT 1",
                             (challenge_id,)).fetchone()
            if done is not None:
                raise ReservationFinished(challenge_id, done[0])
            for link in links:
                used = self._used(c, link.jti, link.period, now) - self._held(c, challenge_id, link.jti, now)
                check_budget(link, used, amount)
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
        """The reservation is spent (a verified receipt, IDENT-BUD-03): every link's share moves from reserved
        to committed, in one IMMEDIATE transaction, and counts for good. Only a reservation still reserved
        changes (one past its expiry too, which then counts again); a finished or unknown one is left alone."""
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET state='committed' WHERE challenge_id=? AND state='reserved'", (challenge_id,))

    def release(self, challenge_id: str) -> None:
        """The reservation is given back (a refusal, IDENT-BUD-03): every link's share moves from reserved to
        released, in one IMMEDIATE transaction, and stops counting. Only a reservation still reserved changes;
        its ``challenge_id`` cannot be reserved again after (ReservationFinished)."""
        with immediate(self._conn) as c:
            c.execute("UPDATE reservations SET state='released' WHERE challenge_id=? AND state='reserved'", (challenge_id,))


@runtime_checkable
class AsyncBudgetStore(Protocol):
    """The buyer's budget counters behind one async interface: every :class:`BudgetStore`
    operation, as a coroutine, with the same meaning and refusals (BudgetRefused)."""

    @property
    def reservation_ttl(self) -> timedelta:
        """How long a reservation counts without an answer when :meth:`reserve` or :meth:`extend` is given
        no ``ttl`` (ten minutes unless the store was made with another)."""

    async def used(self, jti: str, period: str, now: datetime) -> int:
        """What counts against the link ``jti`` in ``period`` at ``now``, in base units: committed
        reservations plus those still reserved and not expired (IDENT-BUD-02)."""

    async def reserve(self, challenge_id: str, links: Sequence[BudgetLink], amount: int, *, now: datetime | None = None,
                      ttl: timedelta | None = None) -> None:
        """Hold ``amount`` (base units) against every link until ``now + ttl``, in one serialised
        transaction (IDENT-BUD-02): all links or none. BudgetRefused, nothing held, if a link's count plus
        ``amount`` exceeds its budget (IDENT-BUD-01); ReservationFinished if ``challenge_id`` was already
        committed or released. Reserving again under a reserved ``challenge_id`` replaces it (a session's top-up):
        its old amount does not count against the new one."""

    async def extend(self, challenge_id: str, *, ttl: timedelta | None = None, now: datetime | None = None) -> None:
        """Move the expiry of the reservation ``challenge_id`` to ``now + ttl``, so an open session's cap keeps
        counting. No budget is checked; only a reservation still reserved changes (one already expired counts again)."""

    async def settle(self, challenge_id: str, amount: int) -> None:
        """Commit exactly ``amount`` (base units) of the reservation on every link and release the rest (a
        session's capture at close). No budget is checked; only a reservation still reserved changes."""

    async def commit(self, challenge_id: str) -> None:
        """The reservation is spent (a verified receipt, IDENT-BUD-03): reserved -> committed on every link,
        for good. A reservation already committed or released, or unknown, is left alone."""

    async def release(self, challenge_id: str) -> None:
        """The reservation is given back (a 4xx refusal or an unsent credential, IDENT-BUD-03): reserved ->
        released on every link; it stops counting, and its ``challenge_id`` cannot be reserved again."""

    async def close(self) -> None:
        """Release the store's connection or pool (a pool or store the caller passed in stays open)."""


class AsyncSqliteBudgetStore:
    """A :class:`BudgetStore` behind :class:`AsyncBudgetStore`. Each call runs to completion on the
    caller's thread, as the other SQLite stores here do: one short IMMEDIATE transaction, and
    running it inline keeps two calls from interleaving on the one connection."""

    def __init__(self, store: BudgetStore, *, owned: bool = False) -> None:
        self.sync = store
        self._owned = owned

    @classmethod
    def at(cls, location: str, **kwargs: object) -> "AsyncSqliteBudgetStore":
        """Counters of their own on ``location`` (a path or ``sqlite:`` URL), closed with the wrapper."""
        return cls(BudgetStore(location, **kwargs), owned=True)  # type: ignore[arg-type]

    @property
    def reservation_ttl(self) -> timedelta:
        """The wrapped :class:`BudgetStore`'s ``reservation_ttl``."""
        return self.sync.reservation_ttl

    async def open(self) -> "AsyncSqliteBudgetStore":
        """Nothing to open (the file was opened with the :class:`BudgetStore`): ``self``, so the wrapper
        is opened as the PostgreSQL store is (:func:`mpp.connect.ensure_open`)."""
        return self

    async def close(self) -> None:
        """Close the wrapped :class:`BudgetStore` if the wrapper owns it (made by :meth:`at`); one passed
        in is left to its caller."""
        if self._owned:
            self.sync.close()

    async def used(self, jti: str, period: str, now: datetime) -> int:
        """:meth:`BudgetStore.used`: committed plus unexpired reserved amounts against the link ``jti`` in
        ``period``, in base units."""
        return self.sync.used(jti, period, now)

    async def reserve(self, challenge_id: str, links: Sequence[BudgetLink], amount: int, *, now: datetime | None = None,
                      ttl: timedelta | None = None) -> None:
        """:meth:`BudgetStore.reserve`: hold ``amount`` against every link in one IMMEDIATE transaction, or
        raise BudgetRefused (ReservationFinished for a finished ``challenge_id``) and hold nothing."""
        self.sync.reserve(challenge_id, links, amount, now=now, ttl=ttl)

    async def extend(self, challenge_id: str, *, ttl: timedelta | None = None, now: datetime | None = None) -> None:
        """:meth:`BudgetStore.extend`: the reservation, if still reserved, expires ``ttl`` after ``now``
        (default :attr:`reservation_ttl`)."""
        self.sync.extend(challenge_id, ttl=ttl, now=now)

    async def settle(self, challenge_id: str, amount: int) -> None:
        """:meth:`BudgetStore.settle`: commit exactly ``amount`` of a reservation still reserved, release the
        rest."""
        self.sync.settle(challenge_id, amount)

    async def commit(self, challenge_id: str) -> None:
        """:meth:`BudgetStore.commit`: a reservation still reserved becomes committed (IDENT-BUD-03)."""
        self.sync.commit(challenge_id)

    async def release(self, challenge_id: str) -> None:
        """:meth:`BudgetStore.release`: a reservation still reserved becomes released (IDENT-BUD-03)."""
        self.sync.release(challenge_id)
