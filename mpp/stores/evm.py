"""What an ``evm`` seller keeps beside its payment records: the payments it has consumed, the
transactions whose outcome it does not know yet, and the refunds it has made.

- **claims**: a payment's replay key (draft-evm-charge-00 §Replay Protection: the payer and
  EIP-3009 nonce of an authorization, the hash of a transaction) -> the challenge it paid. The
  payment store's claim of the challenge id is not enough: one transaction could otherwise be
  presented for two challenges. A key is claimed once, for good, across every seller process on
  the store.
- **pending**: transactions sent (or about to be) whose receipt has not been seen: a charge the
  buyer was told is pending (503), or a refund owed. ``reconcile`` in :mod:`mpp.aio.evm_rail`
  refunds the ones that confirm and drops the ones that can no longer be mined.
- **refunds**: one per settlement reference (the charge's transaction hash), with the signed refund
  transaction, so that a second refund of one settlement never pays twice: it re-sends the same
  signed transaction, or replaces it only once its nonce is spent by another.

The SQLite store lives in the payment store's file; :class:`mpp.stores.pg.evm.PgEvmStore` in its
database. Choose one with :func:`mpp.connect.evm_store_for`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

from mpp.protocol.models import format_rfc3339
from mpp.stores.sqlite import connect, immediate

__all__ = ["PendingTx", "RefundRecord", "EvmStore", "MemoryEvmStore", "SqliteEvmStore", "REFUND_SENT", "REFUND_DONE",
           "REFUND_FAILED", "refund_row", "checked_changes"]

REFUND_SENT = "sent"
"""A refund transaction signed, recorded and sent; its receipt not seen yet."""
REFUND_DONE = "done"
"""A refund mined with status 1: the payer has the amount back."""
REFUND_FAILED = "failed"
"""A refund mined but reverted (the seller's token balance was short): the operator's to settle."""


@dataclass(frozen=True)
class PendingTx:
    """A transaction whose outcome the seller does not know: its hash, the challenge it was for, and
    what settling it needs (``detail``: kind, payer, token, amount, sender and nonce...), since when."""

    tx_hash: str
    challenge_id: str
    detail: dict[str, Any] = field(default_factory=dict)
    since: str = ""


@dataclass(frozen=True)
class RefundRecord:
    """The refund of the settlement ``reference``: ``amount`` base units of ``token`` back to ``payer``,
    by the signed transaction ``raw`` (``0x``-hex) whose hash is ``tx_hash`` and nonce ``nonce``;
    ``state`` one of REFUND_SENT, REFUND_DONE, REFUND_FAILED."""

    reference: str
    payer: str
    token: str
    amount: int
    tx_hash: str
    nonce: int
    raw: str
    state: str = REFUND_SENT


class EvmStore(Protocol):
    """Claims, pending transactions and refunds of an ``evm`` seller."""

    async def claim(self, replay_key: str, challenge_id: str) -> str:
        """Claim ``replay_key`` for ``challenge_id`` unless it is claimed; the challenge that holds it."""

    async def holder(self, replay_key: str) -> str | None:
        """The challenge that holds ``replay_key``, or None."""

    async def add_pending(self, pending: PendingTx) -> None:
        """Remember a transaction whose outcome is unknown (again: the first record is kept)."""

    async def remove_pending(self, tx_hash: str) -> None:
        """Forget ``tx_hash``: its outcome is settled. An unknown hash is ignored."""

    async def pending(self) -> list[PendingTx]:
        """Every transaction still pending, oldest first."""

    async def refund_of(self, reference: str) -> RefundRecord | None:
        """The refund of ``reference``, if one was begun."""

    async def begin_refund(self, record: RefundRecord) -> RefundRecord:
        """Record ``record`` unless a refund of its reference exists; the refund on record."""

    async def update_refund(self, reference: str, expected_tx: str, **changes: Any) -> bool:
        """Change the refund of ``reference`` (``state``, or a new ``tx_hash``, ``nonce`` and ``raw``)
        if its transaction is still ``expected_tx``; whether it was changed."""

    async def open_refunds(self) -> list[RefundRecord]:
        """Every refund sent and not yet seen mined."""

    async def close(self) -> None:
        """Release the store's connection or pool."""


def _now() -> str:
    return format_rfc3339(datetime.now(timezone.utc))


class MemoryEvmStore:
    """In this process only, lost on restart (tests, throwaway sellers): a restarted seller would
    take a consumed payment again and forget the refunds it owes. Use a SQLite or PostgreSQL one."""

    def __init__(self) -> None:
        self._claims: dict[str, str] = {}
        self._pending: dict[str, PendingTx] = {}
        self._refunds: dict[str, RefundRecord] = {}

    async def claim(self, replay_key: str, challenge_id: str) -> str:
        """Claim ``replay_key`` for ``challenge_id`` unless it is claimed; the challenge that holds it."""
        return self._claims.setdefault(replay_key, challenge_id)

    async def holder(self, replay_key: str) -> str | None:
        """The challenge that holds ``replay_key``, or None."""
        return self._claims.get(replay_key)

    async def add_pending(self, pending: PendingTx) -> None:
        """Remember a transaction whose outcome is unknown; a hash already there keeps its first record."""
        self._pending.setdefault(pending.tx_hash, replace(pending, since=pending.since or _now()))

    async def remove_pending(self, tx_hash: str) -> None:
        """Forget ``tx_hash``; an unknown hash is ignored."""
        self._pending.pop(tx_hash, None)

    async def pending(self) -> list[PendingTx]:
        """Every transaction still pending, in the order they were added."""
        return list(self._pending.values())

    async def refund_of(self, reference: str) -> RefundRecord | None:
        """The refund of ``reference``, if one was begun."""
        return self._refunds.get(reference)

    async def begin_refund(self, record: RefundRecord) -> RefundRecord:
        """Record ``record`` unless a refund of its reference exists; the refund on record."""
        return self._refunds.setdefault(record.reference, record)

    async def update_refund(self, reference: str, expected_tx: str, **changes: Any) -> bool:
        """Change the refund of ``reference`` if its transaction is still ``expected_tx``."""
        changes = checked_changes(changes)
        record = self._refunds.get(reference)
        if record is None or record.tx_hash != expected_tx:
            return False
        self._refunds[reference] = replace(record, **changes)
        return True

    async def open_refunds(self) -> list[RefundRecord]:
        """Every refund sent and not yet seen mined."""
        return [r for r in self._refunds.values() if r.state == REFUND_SENT]

    async def close(self) -> None:
        """Nothing to release."""
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS evm_claims (
    replay_key TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    claimed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evm_pending (
    tx_hash TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evm_refunds (
    reference TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    token TEXT NOT NULL,
    amount TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    raw TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""
_REFUND_COLUMNS = "reference, payer, token, amount, tx_hash, nonce, raw, state"
_CHANGEABLE = ("tx_hash", "nonce", "raw", "state")


def refund_row(row: Any) -> RefundRecord:
    """A RefundRecord from a row of ``evm_refunds`` (its columns in the order of _REFUND_COLUMNS)."""
    return RefundRecord(row[0], row[1], row[2], int(row[3]), row[4], int(row[5]), row[6], row[7])


def checked_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to a refund, refused (ValueError) unless they name columns that may change."""
    unknown = set(changes) - set(_CHANGEABLE)
    if unknown or not changes:
        raise ValueError(f"a refund's {', '.join(_CHANGEABLE)} may change, not {', '.join(sorted(unknown)) or 'nothing'}")
    return changes


class SqliteEvmStore:
    """The store in SQLite (the payment store's file), shared by every process on it; each write
    one IMMEDIATE transaction."""

    def __init__(self, location: str) -> None:
        self._conn = connect(location, _SCHEMA)

    async def claim(self, replay_key: str, challenge_id: str) -> str:
        """Claim ``replay_key`` for ``challenge_id`` unless it is claimed; the challenge that holds it."""
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO evm_claims(replay_key, challenge_id, claimed_at) VALUES (?, ?, ?)",
                      (replay_key, challenge_id, _now()))
            return c.execute("SELECT challenge_id FROM evm_claims WHERE replay_key = ?", (replay_key,)).fetchone()[0]

    async def holder(self, replay_key: str) -> str | None:
        """The challenge that holds ``replay_key``, or None."""
        row = self._conn.execute("SELECT challenge_id FROM evm_claims WHERE replay_key = ?", (replay_key,)).fetchone()
        return row[0] if row else None

    async def add_pending(self, pending: PendingTx) -> None:
        """Remember a transaction whose outcome is unknown; a hash already there keeps its first record."""
        with immediate(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO evm_pending(tx_hash, challenge_id, detail, since) VALUES (?, ?, ?, ?)",
                      (pending.tx_hash, pending.challenge_id, json.dumps(pending.detail), pending.since or _now()))

    async def remove_pending(self, tx_hash: str) -> None:
        """Forget ``tx_hash``; an unknown hash is ignored."""
        with immediate(self._conn) as c:
            c.execute("DELETE FROM evm_pending WHERE tx_hash = ?", (tx_hash,))

    async def pending(self) -> list[PendingTx]:
        """Every transaction still pending, oldest first (to the second, then by hash)."""
        rows = self._conn.execute("SELECT tx_hash, challenge_id, detail, since FROM evm_pending ORDER BY since, tx_hash")
        return [PendingTx(h, cid, json.loads(detail), since) for h, cid, detail, since in rows.fetchall()]

    async def refund_of(self, reference: str) -> RefundRecord | None:
        """The refund of ``reference``, if one was begun."""
        row = self._conn.execute(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE reference = ?", (reference,)).fetchone()
        return refund_row(row) if row else None

    async def begin_refund(self, record: RefundRecord) -> RefundRecord:
        """Record ``record`` unless a refund of its reference exists; the refund on record."""
        with immediate(self._conn) as c:
            c.execute(f"INSERT OR IGNORE INTO evm_refunds({_REFUND_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (record.reference, record.payer, record.token, str(record.amount), record.tx_hash, record.nonce,
                       record.raw, record.state, _now()))
            row = c.execute(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE reference = ?", (record.reference,)).fetchone()
        return refund_row(row)

    async def update_refund(self, reference: str, expected_tx: str, **changes: Any) -> bool:
        """Change the refund of ``reference`` (``state``, ``tx_hash``, ``nonce``, ``raw``) if its transaction
        is still ``expected_tx``; whether it was changed."""
        changes = checked_changes(changes)
        sets = ", ".join(f"{name} = ?" for name in changes)
        with immediate(self._conn) as c:
            cur = c.execute(f"UPDATE evm_refunds SET {sets}, updated_at = ? WHERE reference = ? AND tx_hash = ?",
                            (*changes.values(), _now(), reference, expected_tx))
            return cur.rowcount == 1

    async def open_refunds(self) -> list[RefundRecord]:
        """Every refund sent and not yet seen mined, oldest first."""
        rows = self._conn.execute(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE state = ? ORDER BY updated_at, reference",
                                  (REFUND_SENT,)).fetchall()
        return [refund_row(r) for r in rows]

    async def close(self) -> None:
        """Close the store's connection to the file."""
        self._conn.close()
