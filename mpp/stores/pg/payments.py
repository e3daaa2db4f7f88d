"""The seller's payment records on PostgreSQL: the same contract as
:class:`mpp.stores.payments.SqlitePaymentStore`, for seller processes sharing one database.

A challenge is consumed by ``INSERT ... ON CONFLICT DO NOTHING`` on its primary key, so of
any number of concurrent claims, in any number of processes, exactly one wins (CORE-ONCE-01).
State moves are single conditional ``UPDATE``s, so a record only ever moves forward.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from mpp.stores.payments import _PREDECESSORS, PaymentRecord, StateError, StoredResponse
from mpp.stores.pg._base import PgStoreBase, rows_changed, stamp

__all__ = ["PgPaymentStore"]

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
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS mandate_spend (
    challenge_id TEXT NOT NULL REFERENCES payments(challenge_id),
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (challenge_id, jti)
);
CREATE INDEX IF NOT EXISTS mandate_spend_by_link ON mandate_spend (jti, period);
CREATE TABLE IF NOT EXISTS mandate_totals (
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (jti, period)
);
INSERT INTO mandate_totals(jti, period, spent)
SELECT jti, period, SUM(amount) FROM mandate_spend WHERE NOT EXISTS (SELECT 1 FROM mandate_totals) GROUP BY jti, period;
CREATE TABLE IF NOT EXISTS approvals_used (
    jti TEXT PRIMARY KEY,
    challenge_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    challenge_id TEXT PRIMARY KEY REFERENCES payments(challenge_id),
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL
);
"""


def _now() -> datetime:
    return stamp(datetime.now(timezone.utc))


class PgPaymentStore(PgStoreBase):
    """``PgPaymentStore(pool_or_url)``; ``await store.open()`` (or first use) creates the tables."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.payments.schema"

    async def claim(self, challenge_id: str, *, resource: str, idempotency_key: str | None) -> bool:
        """Consume a challenge. True for exactly one caller, across processes sharing the database."""
        now = _now()
        pool = await self.pool()
        won = await pool.fetchval(
            "INSERT INTO payments(challenge_id, resource, state, idempotency_key, created_at, updated_at) "
            "VALUES ($1, $2, 'settling', $3, $4, $4) ON CONFLICT (challenge_id) DO NOTHING RETURNING 1",
            challenge_id, resource, idempotency_key, now,
        )
        return won is not None

    async def get(self, challenge_id: str) -> PaymentRecord | None:
        """The record of ``challenge_id``, or None if it was never claimed."""
        pool = await self.pool()
        row = await pool.fetchrow(
            "SELECT challenge_id, resource, state, idempotency_key, payer, amount, currency, reference, receipt, failure "
            "FROM payments WHERE challenge_id=$1",
            challenge_id,
        )
        return PaymentRecord(*row) if row else None

    async def mark_settled(self, challenge_id: str, *, payer: str, amount: str, currency: str, reference: str, receipt: str) -> None:
        """Record a ``settling`` challenge as ``settled`` (payer, amount as a decimal string of base units,
        currency, the ledger's reference, the receipt sent), in one conditional UPDATE. StateError if it is
        not ``settling`` (CHARGE-04)."""
        pool = await self.pool()
        status = await pool.execute(
            "UPDATE payments SET state='settled', payer=$1, amount=$2, currency=$3, reference=$4, receipt=$5, updated_at=$6 "
            "WHERE challenge_id=$7 AND state='settling'",
            payer, amount, currency, reference, receipt, _now(), challenge_id,
        )
        if rows_changed(status) != 1:
            raise StateError(f"payment {challenge_id} is not settling")

    async def mark(self, challenge_id: str, state: str, *, failure: str | None = None) -> None:
        """Move the record to ``failed`` (from settling), ``delivered`` (from settled) or ``refunded`` (from
        settled or delivered), keeping ``failure`` as why (None keeps the earlier one), in one conditional
        UPDATE. StateError if it is missing or not in a state ``state`` may follow (CHARGE-04); KeyError for
        any other ``state``."""
        before = list(_PREDECESSORS[state])
        pool = await self.pool()
        status = await pool.execute(
            "UPDATE payments SET state=$1, failure=COALESCE($2, failure), updated_at=$3 "
            "WHERE challenge_id=$4 AND state = ANY($5::text[])",
            state, failure, _now(), challenge_id, before,
        )
        if rows_changed(status) != 1:
            raise StateError(f"payment {challenge_id} cannot become {state!r} from its current state")

    async def save_response(self, challenge_id: str, response: StoredResponse) -> None:
        """Keep the paid response for Idempotency-Key replays (CORE-ONCE-06), replacing one kept before;
        asyncpg.ForeignKeyViolationError if ``challenge_id`` was never claimed."""
        pool = await self.pool()
        await pool.execute(
            "INSERT INTO responses(challenge_id, status, headers, body) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (challenge_id) DO UPDATE SET status=excluded.status, headers=excluded.headers, body=excluded.body",
            challenge_id, response.status, json.dumps(response.headers), bytes(response.body),
        )

    async def get_response(self, challenge_id: str) -> StoredResponse | None:
        """The response kept for ``challenge_id`` by :meth:`save_response`, or None."""
        pool = await self.pool()
        row = await pool.fetchrow("SELECT status, headers, body FROM responses WHERE challenge_id=$1", challenge_id)
        if row is None:
            return None
        return StoredResponse(row[0], [tuple(h) for h in json.loads(row[1])], bytes(row[2]))

    async def mandate_spent(self, periods: dict[str, str]) -> dict[str, int]:
        """This seller's own share: what each mandate link has spent here in its period."""
        if not periods:
            return {}
        pool = await self.pool()
        rows = await pool.fetch(  # running totals per link and period, moved with the rows they count
            "SELECT p.jti, COALESCE(t.spent, 0) FROM unnest($1::text[], $2::text[]) AS p(jti, period) "
            "LEFT JOIN mandate_totals t ON t.jti = p.jti AND t.period = p.period",
            list(periods), list(periods.values()),
        )
        spent = {jti: int(total) for jti, total in rows}
        return {jti: spent.get(jti, 0) for jti in periods}

    async def record_mandate_spend(self, challenge_id: str, links: list[tuple[str, str]], amount: int, approval: str | None) -> None:
        """Count a settled purchase against each link; mark its approval used (once, ever)."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            if links:
                await conn.execute(
                    "WITH s AS (INSERT INTO mandate_spend(challenge_id, jti, period, amount) "
                    "SELECT $1, l.jti, l.period, $4 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS l(jti, period, i) "
                    "ORDER BY l.i ON CONFLICT DO NOTHING RETURNING jti, period, amount) "
                    "INSERT INTO mandate_totals(jti, period, spent) SELECT jti, period, SUM(amount) FROM s "
                    "GROUP BY jti, period ORDER BY jti, period "
                    "ON CONFLICT (jti, period) DO UPDATE SET spent = mandate_totals.spent + EXCLUDED.spent",
                    challenge_id, [jti for jti, _ in links], [period for _, period in links], amount,
                )
            if approval is not None:
                await conn.execute("INSERT INTO approvals_used(jti, challenge_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   approval, challenge_id)

    async def forget_mandate_spend(self, challenge_id: str) -> None:
        """Undo :meth:`record_mandate_spend` for a refunded purchase: its rows are deleted and their amounts
        taken off the running totals, in one statement, so this seller's share no longer counts it
        (IDENT-BUD-04). A second call changes nothing; the approval it used stays used."""
        pool = await self.pool()
        await pool.execute(  # one statement: the rows and what they added to the running totals go together
            "WITH s AS (DELETE FROM mandate_spend WHERE challenge_id=$1 RETURNING jti, period, amount) "
            "UPDATE mandate_totals t SET spent = t.spent - d.amount "
            "FROM (SELECT jti, period, SUM(amount) AS amount FROM s GROUP BY jti, period) d "
            "WHERE t.jti = d.jti AND t.period = d.period",
            challenge_id)

    async def approval_used(self, jti: str) -> bool:
        """Whether the approval ``jti`` (the key the caller records, ``iss#jti``) was used by a settled
        purchase here (:meth:`record_mandate_spend`): an approval is used at most once (IDENT-APR-06)."""
        pool = await self.pool()
        return await pool.fetchval("SELECT 1 FROM approvals_used WHERE jti=$1", jti) is not None

    async def settled_between(self, since: datetime, until: datetime):
        """Payments that settled (settled, delivered or refunded) and may have settled in [since,
        until): as :meth:`mpp.stores.payments.SqlitePaymentStore.settled_between`."""
        from mpp.protocol.models import format_rfc3339
        from mpp.stores.payments import SettledPayment

        pool = await self.pool()
        rows = await pool.fetch(
            "SELECT challenge_id, resource, state, idempotency_key, payer, amount, currency, reference, receipt, failure, "
            "created_at, updated_at FROM payments WHERE state IN ('settled', 'delivered', 'refunded') "
            "AND created_at <= $1 AND updated_at >= $2 ORDER BY created_at, challenge_id",
            stamp(until), stamp(since),
        )
        return [SettledPayment(PaymentRecord(*row[:10]), format_rfc3339(row[10]), format_rfc3339(row[11])) for row in rows]
