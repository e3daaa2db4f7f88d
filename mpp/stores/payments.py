"""The seller's payment records: which challenges were consumed, how they settled, and the
responses kept for Idempotency-Key retries.

The interface is async so that a networked database can stand behind it; the SQLite
implementation runs each statement synchronously (they are short, and never interleave).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from mpp.stores.sqlite import apply_schema, connect, immediate
from mpp.protocol.models import format_rfc3339

__all__ = ["StateError", "PaymentRecord", "StoredResponse", "PaymentStore", "SqlitePaymentStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    challenge_id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('settling', 'settled', 'failed', 'delivered', 'refunded')),
    idempotency_key TEXT,
    payer TEXT,
    amount TEXT,
    currency TEXT,
    reference TEXT,
    receipt TEXT,
    failure TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seller_mandate_spend (
    challenge_id TEXT NOT NULL REFERENCES payments(challenge_id),
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (challenge_id, jti)
);
CREATE INDEX IF NOT EXISTS seller_mandate_spend_by_jti ON seller_mandate_spend (jti, period);
CREATE TABLE IF NOT EXISTS seller_mandate_totals (
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    spent INTEGER NOT NULL,
    PRIMARY KEY (jti, period)
);
CREATE TABLE IF NOT EXISTS approvals_used (
    jti TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    challenge_id TEXT PRIMARY KEY REFERENCES payments(challenge_id),
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
)
"""


# A payment record only moves forward (CHARGE-04): which states each state may follow.
_PREDECESSORS = {"failed": ("settling",), "delivered": ("settled",), "refunded": ("settled", "delivered")}


class StateError(Exception):
    """A store update would move a payment record backwards: a bug, never bad input."""


@dataclass(frozen=True)
class StoredResponse:
    """A paid response kept for Idempotency-Key replays: status, the replayed headers
    (``REPLAY_HEADERS``) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class PaymentRecord:
    """What the seller keeps of one challenge it settled or refused: the resource, the state of the
    purchase, the Idempotency-Key it came with, payer, amount and currency, the ledger's reference,
    the receipt sent, or why it failed. Amounts are strings of integers in base units, as on the wire."""

    challenge_id: str
    resource: str
    state: str
    idempotency_key: str | None
    payer: str | None
    amount: str | None
    currency: str | None
    reference: str | None
    receipt: str | None
    failure: str | None


class PaymentStore(Protocol):
    """The seller's payment records, by challenge id: each challenge consumed at most once
    (:meth:`claim`), its settlement, and the response kept for Idempotency-Key retries."""

    async def claim(self, challenge_id: str, *, resource: str, idempotency_key: str | None) -> bool:
        """Consume the challenge: record it ``settling`` for ``resource`` with the request's Idempotency-Key.
        True for exactly one caller, across every process sharing the store (CORE-ONCE-01, CORE-ONCE-02); False if
        it was consumed before."""
    async def get(self, challenge_id: str) -> PaymentRecord | None:
        """The record of ``challenge_id``, or None if it was never claimed."""
    async def mark_settled(self, challenge_id: str, *, payer: str, amount: str, currency: str, reference: str, receipt: str) -> None:
        """Record a ``settling`` challenge as ``settled``: payer, amount (a decimal string of base units),
        currency, the ledger's reference and the receipt sent. StateError if it is not ``settling`` (CHARGE-04)."""
    async def mark(self, challenge_id: str, state: str, *, failure: str | None = None) -> None:
        """Move the record to ``state``: ``failed`` (from settling), ``delivered`` (from settled) or
        ``refunded`` (from settled or delivered), keeping ``failure`` as why (None keeps the earlier one).
        StateError if the record is missing or not in a state ``state`` may follow (CHARGE-04); KeyError for
        any other ``state`` (``settled`` is :meth:`mark_settled`)."""
    async def save_response(self, challenge_id: str, response: StoredResponse) -> None:
        """Keep the paid response to ``challenge_id`` for Idempotency-Key replays (CORE-ONCE-06), replacing
        one kept before. The challenge must have been claimed (the response references its record)."""
    async def get_response(self, challenge_id: str) -> StoredResponse | None:
        """The response kept for ``challenge_id`` by :meth:`save_response`, or None."""
    async def close(self) -> None:
        """Release the store's connection or pool (one it was given is left to its owner)."""


def _migrate(c: sqlite3.Connection) -> None:
    """A store from before its budget tables were named for the seller (``mandate_spend`` keyed by
    challenge id, not the ledger's table of that name): their rows move over, once; and a store from
    before the running totals: they are counted from the rows, once."""
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "mandate_spend" in tables and "challenge_id" in {r[1] for r in c.execute("PRAGMA table_info(mandate_spend)")}:
        c.execute("INSERT OR IGNORE INTO seller_mandate_spend(challenge_id, jti, period, amount) "
                  "SELECT challenge_id, jti, period, amount FROM mandate_spend")
        c.execute("DROP TABLE mandate_spend")
        if "mandate_totals" in tables:
            c.execute("DROP TABLE mandate_totals")
        c.execute("DELETE FROM seller_mandate_totals")
    if c.execute("SELECT 1 FROM seller_mandate_totals LIMIT 1").fetchone() is None:
        c.execute("INSERT INTO seller_mandate_totals(jti, period, spent) "
                  "SELECT jti, period, SUM(amount) FROM seller_mandate_spend GROUP BY jti, period")


def _now() -> str:
    return format_rfc3339(datetime.now(timezone.utc))


class SqlitePaymentStore:
    """The payment records in SQLite, shared by every seller process on the file.

    ``connection``: keep them on an open connection instead (a :class:`~mpp.ledger.SqliteLedger`'s,
    ``SqlitePaymentStore.beside(ledger)``), so that a purchase's claim, transfer and record commit in
    one transaction (:class:`mpp.ledger.book.SqliteBook`); the store then leaves closing it to its owner.
    """

    def __init__(self, location: str | None = None, *, connection: sqlite3.Connection | None = None) -> None:
        if (location is None) == (connection is None):
            raise ValueError("give a location or a connection")
        self._owned = connection is None
        self._conn = connect(location, _SCHEMA) if connection is None else apply_schema(connection, _SCHEMA)
        with immediate(self._conn) as c:
            _migrate(c)

    @classmethod
    def beside(cls, ledger: Any) -> "SqlitePaymentStore":
        """The payment records in a :class:`~mpp.ledger.SqliteLedger`'s own database, on its connection."""
        return cls(connection=ledger.connection)

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's SQLite connection: its own, or the ledger's it was made :meth:`beside` (then a
        purchase's claim, transfer and record commit together, :class:`mpp.ledger.book.SqliteBook`)."""
        return self._conn

    async def close(self) -> None:
        """Close the connection if the store opened it; one it was given (:meth:`beside`) is left to its
        owner."""
        if self._owned:
            self._conn.close()

    async def claim(self, challenge_id: str, *, resource: str, idempotency_key: str | None) -> bool:
        """Consume a challenge. True for exactly one caller, across processes sharing the file."""
        now = _now()
        with immediate(self._conn) as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO payments(challenge_id, resource, state, idempotency_key, created_at, updated_at) "
                "VALUES (?, ?, 'settling', ?, ?, ?)",
                (challenge_id, resource, idempotency_key, now, now),
            )
            return cur.rowcount == 1

    async def get(self, challenge_id: str) -> PaymentRecord | None:
        """The record of ``challenge_id``, or None if it was never claimed."""
        row = self._conn.execute(
            "SELECT challenge_id, resource, state, idempotency_key, payer, amount, currency, reference, receipt, failure "
            "FROM payments WHERE challenge_id=?",
            (challenge_id,),
        ).fetchone()
        return PaymentRecord(*row) if row else None

    async def mark_settled(self, challenge_id: str, *, payer: str, amount: str, currency: str, reference: str, receipt: str) -> None:
        """Record a ``settling`` challenge as ``settled`` (payer, amount as a decimal string of base units,
        currency, the ledger's reference, the receipt sent), in one IMMEDIATE transaction. StateError if it
        is not ``settling`` (CHARGE-04)."""
        with immediate(self._conn) as c:
            cur = c.execute(
                "UPDATE payments SET state='settled', payer=?, amount=?, currency=?, reference=?, receipt=?, updated_at=? "
                "WHERE challenge_id=? AND state='settling'",
                (payer, amount, currency, reference, receipt, _now(), challenge_id),
            )
            if cur.rowcount != 1:
                raise StateError(f"payment {challenge_id} is not settling")

    async def mark(self, challenge_id: str, state: str, *, failure: str | None = None) -> None:
        """Move the record to ``failed`` (from settling), ``delivered`` (from settled) or ``refunded`` (from
        settled or delivered), keeping ``failure`` as why (None keeps the earlier one), in one IMMEDIATE
        transaction. StateError if it is missing or not in a state ``state`` may follow (CHARGE-04); KeyError
        for any other ``state``."""
        before = _PREDECESSORS[state]
        with immediate(self._conn) as c:
            cur = c.execute(
                f"UPDATE payments SET state=?, failure=COALESCE(?, failure), updated_at=? "
                f"WHERE challenge_id=? AND state IN ({','.join('?' * len(before))})",
                (state, failure, _now(), challenge_id, *before),
            )
            if cur.rowcount != 1:
                raise StateError(f"payment {challenge_id} cannot become {state!r} from its current state")

    async def save_response(self, challenge_id: str, response: StoredResponse) -> None:
        """Keep the paid response for Idempotency-Key replays (CORE-ONCE-06), replacing one kept before;
        sqlite3.IntegrityError if ``challenge_id`` was never claimed (a foreign key)."""
        with immediate(self._conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO responses(challenge_id, status, headers, body) VALUES (?, ?, ?, ?)",
                (challenge_id, response.status, json.dumps(response.headers), response.body),
            )

    async def mandate_spent(self, periods: dict[str, str]) -> dict[str, int]:
        """This seller's own share: what each mandate link has spent here in its period (a running
        total per link and period, moved in the same transaction as the rows it counts)."""
        spent = {}
        for jti, period in periods.items():
            row = self._conn.execute("SELECT spent FROM seller_mandate_totals WHERE jti=? AND period=?", (jti, period)).fetchone()
            spent[jti] = row[0] if row else 0
        return spent

    async def record_mandate_spend(self, challenge_id: str, links: list[tuple[str, str]], amount: int, approval: str | None) -> None:
        """Count a settled purchase against each link; mark its approval used (once, ever)."""
        with immediate(self._conn) as c:
            for jti, period in links:
                if c.execute("INSERT OR IGNORE INTO seller_mandate_spend(challenge_id, jti, period, amount) VALUES (?, ?, ?, ?)",
                             (challenge_id, jti, period, amount)).rowcount == 1:
                    c.execute("INSERT INTO seller_mandate_totals(jti, period, spent) VALUES (?, ?, ?) "
                              "ON CONFLICT (jti, period) DO UPDATE SET spent = spent + excluded.spent", (jti, period, amount))
            if approval is not None:
                c.execute("INSERT OR IGNORE INTO approvals_used(jti, challenge_id) VALUES (?, ?)", (approval, challenge_id))

    async def forget_mandate_spend(self, challenge_id: str) -> None:
        """Undo :meth:`record_mandate_spend` for a refunded purchase: its rows are deleted and their amounts
        taken off the running totals, in one IMMEDIATE transaction, so this seller's share no longer counts it
        (IDENT-BUD-04). A second call changes nothing; the approval it used stays used."""
        with immediate(self._conn) as c:
            rows = c.execute("SELECT jti, period, amount FROM seller_mandate_spend WHERE challenge_id=?", (challenge_id,)).fetchall()
            c.execute("DELETE FROM seller_mandate_spend WHERE challenge_id=?", (challenge_id,))
            c.executemany("UPDATE seller_mandate_totals SET spent = spent - ? WHERE jti=? AND period=?",
                          [(amount, jti, period) for jti, period, amount in rows])

    async def approval_used(self, jti: str) -> bool:
        """Whether the approval ``jti`` (the key the caller records, ``iss#jti``) was used by a settled
        purchase here (:meth:`record_mandate_spend`): an approval is used at most once (IDENT-APR-06)."""
        return self._conn.execute("SELECT 1 FROM approvals_used WHERE jti=?", (jti,)).fetchone() is not None

    async def get_response(self, challenge_id: str) -> StoredResponse | None:
        """The response kept for ``challenge_id`` by :meth:`save_response`, or None."""
        row = self._conn.execute("SELECT status, headers, body FROM responses WHERE challenge_id=?", (challenge_id,)).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], [tuple(h) for h in json.loads(row[1])], bytes(row[2]))

    async def settled_between(self, since: datetime, until: datetime) -> list["SettledPayment"]:
        """Payments that settled (settled, delivered or refunded) and may have settled in [since,
        until): claimed by ``until`` and last changed at or after ``since``, to the second. The
        settlement time itself is the receipt's ``timestamp``; the usage export picks by it."""
        rows = self._conn.execute(
            "SELECT challenge_id, resource, state, idempotency_key, payer, amount, currency, reference, receipt, failure, "
            "created_at, updated_at FROM payments WHERE state IN ('settled', 'delivered', 'refunded') "
            "AND created_at <= ? AND updated_at >= ? ORDER BY created_at, challenge_id",
            (format_rfc3339(until), format_rfc3339(since)),
        ).fetchall()
        return [SettledPayment(PaymentRecord(*row[:10]), row[10], row[11]) for row in rows]


@dataclass(frozen=True)
class SettledPayment:
    """A settled payment record with its times (RFC 3339, to the second): ``created_at`` when its
    challenge was claimed, ``updated_at`` its last change (delivery or refund)."""

    record: PaymentRecord
    created_at: str
    updated_at: str
