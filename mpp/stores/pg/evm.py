"""The ``evm`` seller's claims, pending transactions and refunds on PostgreSQL:
:class:`mpp.stores.evm.SqliteEvmStore`'s contract, shared by every seller process on the database."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from mpp.protocol.models import format_rfc3339
from mpp.stores.evm import REFUND_SENT, PendingTx, RefundRecord, checked_changes, refund_row
from mpp.stores.pg._base import PgStoreBase, rows_changed, stamp

__all__ = ["PgEvmStore"]

_REFUND_COLUMNS = "reference, payer, token, amount, tx_hash, nonce, raw, state"


class PgEvmStore(PgStoreBase):
    """Claims, pending transactions and refunds of an ``evm`` seller in PostgreSQL; every call one
    statement, or two for a claim or a refund begun by another process first."""

    _SCHEMA = """
CREATE TABLE IF NOT EXISTS evm_claims (
    replay_key TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS evm_pending (
    tx_hash TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    since TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS evm_refunds (
    reference TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    token TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    tx_hash TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    raw TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
"""
    _LOCK_NAME = "mpp.stores.evm.schema"

    async def claim(self, replay_key: str, challenge_id: str) -> str:
        """Claim ``replay_key`` for ``challenge_id`` unless it is claimed; the challenge that holds it.
        A concurrent claim of the same key waits for the first to commit, then reads its holder."""
        pool = await self.pool()
        won = await pool.fetchval("INSERT INTO evm_claims(replay_key, challenge_id, claimed_at) VALUES ($1, $2, $3) "
                                  "ON CONFLICT DO NOTHING RETURNING challenge_id", replay_key, challenge_id, _now())
        if won is not None:
            return won
        return await pool.fetchval("SELECT challenge_id FROM evm_claims WHERE replay_key = $1", replay_key)

    async def holder(self, replay_key: str) -> str | None:
        """The challenge that holds ``replay_key``, or None."""
        pool = await self.pool()
        return await pool.fetchval("SELECT challenge_id FROM evm_claims WHERE replay_key = $1", replay_key)

    async def add_pending(self, pending: PendingTx) -> None:
        """Remember a transaction whose outcome is unknown; a hash already there keeps its first record."""
        pool = await self.pool()
        await pool.execute("INSERT INTO evm_pending(tx_hash, challenge_id, detail, since) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT DO NOTHING", pending.tx_hash, pending.challenge_id, json.dumps(pending.detail), _now())

    async def remove_pending(self, tx_hash: str) -> None:
        """Forget ``tx_hash``; an unknown hash is ignored."""
        pool = await self.pool()
        await pool.execute("DELETE FROM evm_pending WHERE tx_hash = $1", tx_hash)

    async def pending(self) -> list[PendingTx]:
        """Every transaction still pending, oldest first (to the second, then by hash)."""
        pool = await self.pool()
        rows = await pool.fetch("SELECT tx_hash, challenge_id, detail, since FROM evm_pending ORDER BY since, tx_hash")
        return [PendingTx(r[0], r[1], json.loads(r[2]), format_rfc3339(r[3])) for r in rows]

    async def refund_of(self, reference: str) -> RefundRecord | None:
        """The refund of ``reference``, if one was begun."""
        pool = await self.pool()
        row = await pool.fetchrow(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE reference = $1", reference)
        return refund_row(row) if row else None

    async def begin_refund(self, record: RefundRecord) -> RefundRecord:
        """Record ``record`` unless a refund of its reference exists; the refund on record."""
        pool = await self.pool()
        row = await pool.fetchrow(
            f"INSERT INTO evm_refunds({_REFUND_COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            f"ON CONFLICT DO NOTHING RETURNING {_REFUND_COLUMNS}", record.reference, record.payer, record.token,
            record.amount, record.tx_hash, record.nonce, record.raw, record.state, _now())
        if row is None:
            row = await pool.fetchrow(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE reference = $1", record.reference)
        return refund_row(row)

    async def update_refund(self, reference: str, expected_tx: str, **changes: Any) -> bool:
        """Change the refund of ``reference`` (``state``, ``tx_hash``, ``nonce``, ``raw``) if its transaction
        is still ``expected_tx``; whether it was changed."""
        changes = checked_changes(changes)
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=4))
        pool = await self.pool()
        status = await pool.execute(f"UPDATE evm_refunds SET {sets}, updated_at = $3 WHERE reference = $1 AND tx_hash = $2",
                                    reference, expected_tx, _now(), *changes.values())
        return rows_changed(status) == 1

    async def open_refunds(self) -> list[RefundRecord]:
        """Every refund sent and not yet seen mined, oldest first."""
        pool = await self.pool()
        rows = await pool.fetch(f"SELECT {_REFUND_COLUMNS} FROM evm_refunds WHERE state = $1 ORDER BY updated_at, reference",
                                REFUND_SENT)
        return [refund_row(r) for r in rows]


def _now() -> datetime:
    return stamp(datetime.now(timezone.utc))
