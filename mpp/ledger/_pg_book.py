"""What the PostgreSQL ledger's facets share (:mod:`mpp.ledger.pg`): the schema, the pool, one
transaction run again after a deadlock or a lost race, the locks in their order, the mandate checks
and budget counting, and the posting of a transfer. :class:`PgBook` holds the pool; PgLedger, its
``keys`` and its ``sessions`` all run their transactions through the one book."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import asyncpg

from mpp.ledger._pg_purchase_sql import PURCHASE_FUNCTIONS
from mpp.ledger.core import (
    Account,
    BudgetExhausted,
    MandateCharge,
    MandateRevokedError,
    SessionHold,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    OverMandate,
    check_spender,
    holding_account,
    verified_links,
)
from mpp.protocol.models import format_rfc3339
from mpp.stores.pg._base import PgStoreBase, stamp

__all__ = ["PgBook", "Verified", "Links", "SELECT_TRANSFER", "SELECT_SESSION", "SESSION_COLUMNS", "SESSION_KINDS", "TRANSFER_COLUMNS",
           "OWNERS", "ROLES", "count_spend", "now", "lock_key", "advisory", "row_transfer", "row_hold", "is_holding", "not_holding",
           "dumps", "check_amount"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO ledger_meta(key, value) VALUES ('ledger_id', 'ledger-' || substr(md5(gen_random_uuid()::text), 1, 16))
    ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS ledger_accounts (
    id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('asset', 'issuance')),
    balance BIGINT NOT NULL,
    CHECK (kind = 'issuance' OR balance >= 0)
);
CREATE TABLE IF NOT EXISTS ledger_account_members (
    account_id TEXT NOT NULL REFERENCES ledger_accounts(id),
    did TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'agent', 'denied')),
    PRIMARY KEY (account_id, did)
);
-- A ledger made before accounts had members (see mpp.ledger.sqlite._migrate_members).
DO $$ BEGIN
    IF to_regclass('ledger_account_owners') IS NOT NULL THEN
        INSERT INTO ledger_account_members(account_id, did, role)
            SELECT account_id, principal, 'owner' FROM ledger_account_owners ON CONFLICT DO NOTHING;
    END IF;
    IF to_regclass('ledger_account_keys') IS NOT NULL THEN
        INSERT INTO ledger_account_members(account_id, did, role)
            SELECT k.account_id, k.did, CASE WHEN EXISTS (SELECT 1 FROM ledger_account_members m
                WHERE m.account_id = k.account_id AND m.role = 'owner') THEN 'agent' ELSE 'owner' END
            FROM ledger_account_keys k ON CONFLICT DO NOTHING;
        DROP TABLE ledger_account_keys;
    END IF;
    DROP TABLE IF EXISTS ledger_account_owners;
END $$;
CREATE TABLE IF NOT EXISTS ledger_transfers (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    id TEXT PRIMARY KEY,
    payer TEXT NOT NULL REFERENCES ledger_accounts(id),
    payee TEXT NOT NULL REFERENCES ledger_accounts(id),
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    signer TEXT
);
CREATE TABLE IF NOT EXISTS ledger_postings (
    transfer_id TEXT NOT NULL REFERENCES ledger_transfers(id),
    account_id TEXT NOT NULL REFERENCES ledger_accounts(id),
    amount BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_revocations (
    jti TEXT PRIMARY KEY,
    revoker TEXT NOT NULL,
    revoked_at TIMESTAMPTZ NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_mandate_spend (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    transfer_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount BIGINT NOT NULL,
    session_id TEXT,
    PRIMARY KEY (transfer_id, jti)
);
CREATE INDEX IF NOT EXISTS ledger_mandate_spend_by_link ON ledger_mandate_spend (jti, period);
CREATE INDEX IF NOT EXISTS ledger_transfers_by_payer ON ledger_transfers (payer, created_at);
CREATE INDEX IF NOT EXISTS ledger_transfers_by_payee ON ledger_transfers (payee, created_at);
CREATE INDEX IF NOT EXISTS ledger_mandate_spend_by_session ON ledger_mandate_spend (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS ledger_mandate_totals (
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (jti, period)
);
WITH first AS (
    INSERT INTO ledger_meta(key, value) VALUES ('mandate_totals', '1') ON CONFLICT (key) DO NOTHING RETURNING 1
)
INSERT INTO ledger_mandate_totals(jti, period, spent)
SELECT jti, period, SUM(amount) FROM ledger_mandate_spend WHERE EXISTS (SELECT 1 FROM first) GROUP BY jti, period
ON CONFLICT (jti, period) DO UPDATE SET spent = EXCLUDED.spent;
CREATE TABLE IF NOT EXISTS ledger_sessions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    id TEXT PRIMARY KEY,
    payer TEXT NOT NULL REFERENCES ledger_accounts(id),
    payee TEXT NOT NULL REFERENCES ledger_accounts(id),
    currency TEXT NOT NULL,
    signer TEXT NOT NULL,
    terms TEXT NOT NULL,
    open_cap BIGINT NOT NULL CHECK (open_cap > 0),
    cap BIGINT NOT NULL,
    captured BIGINT NOT NULL DEFAULT 0,
    released BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    mandate TEXT,
    realm TEXT,
    opened_at TIMESTAMPTZ NOT NULL,
    closed_at TIMESTAMPTZ,
    capture_ref TEXT,
    release_ref TEXT,
    CHECK (cap >= open_cap AND captured >= 0 AND released >= 0 AND captured + released <= cap),
    CHECK (status = 'open' OR captured + released = cap)
);
CREATE TABLE IF NOT EXISTS ledger_voided (
    transfer_id TEXT PRIMARY KEY,
    voided_at TIMESTAMPTZ NOT NULL
);
"""

TRANSFER_COLUMNS = "id, payer, payee, amount, currency, kind, created_at, signer"
SELECT_TRANSFER = f"SELECT {TRANSFER_COLUMNS} FROM ledger_transfers"
SESSION_COLUMNS = "id, payer, payee, currency, signer, cap, captured, released, status, opened_at"
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM ledger_sessions"
SESSION_KINDS = ("hold", "capture", "release")

# One transfer, whole: the record, its two postings, both balances (payer == payee nets to zero).
_POST = """
WITH t AS (
    INSERT INTO ledger_transfers(id, payer, payee, amount, currency, kind, created_at, signer)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
), p AS (
    INSERT INTO ledger_postings(transfer_id, account_id, amount) VALUES ($1, $2, -$4::bigint), ($1, $3, $4::bigint)
)
UPDATE ledger_accounts
SET balance = balance - CASE WHEN id = $2 THEN $4::bigint ELSE 0 END + CASE WHEN id = $3 THEN $4::bigint ELSE 0 END
WHERE id IN ($2, $3)
"""


def count_spend(rows_sql: str) -> str:
    """One statement: insert the mandate spend rows ``rows_sql`` selects (transfer_id, jti,
    period, amount[, session_id]) and move each (link, period)'s running total with them, in
    (link, period) order. The totals are what budgets are checked against: one row per link,
    however long its history."""
    return f"""
WITH s AS (
    {rows_sql}
    RETURNING jti, period, amount
)
INSERT INTO ledger_mandate_totals(jti, period, spent)
SELECT jti, period, SUM(amount) FROM s GROUP BY jti, period ORDER BY jti, period
ON CONFLICT (jti, period) DO UPDATE SET spent = ledger_mandate_totals.spent + EXCLUDED.spent
"""


# Transient refusals of the database itself: the transaction is rolled back and run again.
# (A unique violation means another transaction made the same record first: the retry finds it.)
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)
_ATTEMPTS = 5

Links = list[tuple[str, str, int]]  # (link key, period, budget) per mandate link


def now() -> datetime:
    return stamp(datetime.now(timezone.utc))


def lock_key(kind: str, name: str) -> int:
    """A 64-bit advisory lock key; the same in every process (hash() is salted, this is not)."""
    return int.from_bytes(hashlib.blake2b(f"mpp.ledger.{kind}\n{name}".encode(), digest_size=8).digest(), "big", signed=True)


async def advisory(conn: asyncpg.Connection, keys: Iterable[int]) -> None:
    """Take transaction-scoped advisory locks, in key order (every transaction takes them so)."""
    ordered = sorted(set(keys))
    if len(ordered) == 1:
        await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", ordered[0])
    elif ordered:
        await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY i",
                           ordered)


def row_transfer(row: asyncpg.Record) -> Transfer:
    tid, payer, payee, amount, currency, kind, created, signer = row
    return Transfer(tid, payer, payee, amount, currency, kind, format_rfc3339(created), signer)


def row_hold(row: asyncpg.Record) -> SessionHold:
    *head, opened = row
    return SessionHold(*head, format_rfc3339(opened))


def is_holding(account_id: str) -> bool:
    return account_id.startswith(holding_account(""))


def not_holding(account_id: str) -> None:
    if is_holding(account_id):
        raise ValueError(f"{account_id!r} is a holding account: only session operations move value into or out of it")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("amount must be a positive integer in base units")


class Verified:
    """A mandate chain verified before the transaction (signature checks hold no locks), for
    the owners the payer account had then; the transaction uses it only if they are unchanged."""

    def __init__(self, owners: list[str], result: tuple[tuple[str, ...], Links] | None,
                 error: UnauthorizedSigner | OverMandate | None) -> None:
        self.owners, self._result, self.error = owners, result, error

    def result(self) -> tuple[tuple[str, ...], Links]:
        if self.error is not None:
            raise self.error
        assert self._result is not None
        return self._result


OWNERS = "SELECT did FROM ledger_account_members WHERE account_id=$1 AND role='owner' ORDER BY did"
ROLES = "SELECT did, role FROM ledger_account_members WHERE account_id=$1 AND did = ANY($2::text[])"


class PgBook(PgStoreBase):
    """The pool a PostgreSQL ledger's facets share, and what they do inside a transaction.
    ``await book.open()`` (or first use) creates the tables and reads the ledger id."""

    _SCHEMA = _SCHEMA + PURCHASE_FUNCTIONS  # a purchase in one call (mpp.ledger.pg.PgPurchaseBook)
    _LOCK_NAME = "mpp.ledger.schema"

    def __init__(self, pool: asyncpg.Pool | str, **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self._ledger_id: str | None = None

    @property
    def ledger_id(self) -> str:
        if self._ledger_id is None:
            raise AttributeError("the ledger id is known once the ledger is open: await ledger.open()")
        return self._ledger_id

    async def open(self) -> "PgBook":
        await super().open()
        if self._ledger_id is None:
            assert self._pool is not None
            self._ledger_id = await self._pool.fetchval("SELECT value FROM ledger_meta WHERE key='ledger_id'")
        return self

    async def pool(self) -> asyncpg.Pool:
        if not self._ready or self._ledger_id is None:
            await self.open()
        assert self._pool is not None
        return self._pool

    async def atomic(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; again (from the start) after a deadlock or a lost race."""
        pool = await self.pool()
        for attempt in range(_ATTEMPTS):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    return await work(conn)
            except _RETRY:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def account(self, account_id: str) -> Account:
        pool = await self.pool()
        row = await pool.fetchrow("SELECT id, currency, balance, kind FROM ledger_accounts WHERE id=$1", account_id)
        if row is None:
            raise UnknownAccount(f"no account {account_id!r}")
        return Account(*row)

    @staticmethod
    async def ensure_account(conn: asyncpg.Connection, account_id: str, currency: str, kind: str) -> None:
        row = await conn.fetchrow(
            "INSERT INTO ledger_accounts(id, currency, kind, balance) VALUES ($1, $2, $3, 0) "
            "ON CONFLICT (id) DO NOTHING RETURNING currency, kind",
            account_id, currency, kind,
        )
        if row is None:
            row = await conn.fetchrow("SELECT currency, kind FROM ledger_accounts WHERE id=$1", account_id)
        if (row[0], row[1]) != (currency, kind):
            raise TransferConflict(f"account {account_id!r} exists with currency {row[0]!r}, kind {row[1]!r}")

    async def preverify(self, payer: str, signer: str | None, mandate: MandateCharge | None, *, currency: str,
                         amount: int | None) -> Verified | None:
        if mandate is None:
            return None
        pool = await self.pool()
        owners = [r[0] for r in await pool.fetch(OWNERS, payer)]
        try:
            return Verified(owners, verified_links(owners, signer, mandate, currency=currency, amount=amount), None)
        except (UnauthorizedSigner, OverMandate) as exc:
            return Verified(owners, None, exc)

    async def authorized_links(self, conn: asyncpg.Connection, payer: str, signer: str | None, mandate: MandateCharge | None,
                                verified: Verified | None, *, currency: str, amount: int | None) -> Links:
        """May ``signer`` spend from ``payer`` (whose row this transaction has locked)? Through a
        verified, unrevoked mandate chain rooted in an owner (its links are returned) or, without
        one, as an owner of the account (LEDGER-ACCT-03)."""
        if mandate is None:
            roles = {r[0]: r[1] for r in await conn.fetch(ROLES, payer, [signer])} if signer else {}
            check_spender(roles, signer=signer, chain=None)
            return []
        owners = [r[0] for r in await conn.fetch(OWNERS, payer)]
        if verified is not None and verified.owners == owners:
            dids, links = verified.result()
        else:  # the owners changed since: verify again, for the owners as they are now
            dids, links = verified_links(owners, signer, mandate, currency=currency, amount=amount)
        check_spender({r[0]: r[1] for r in await conn.fetch(ROLES, payer, list(dids))}, signer=signer, chain=dids)
        keys = [key for key, _, _ in links]
        if await conn.fetchval("SELECT 1 FROM ledger_revocations WHERE jti = ANY($1::text[]) LIMIT 1", keys) is not None:
            raise MandateRevokedError("a mandate in the chain has been revoked")
        return links

    @staticmethod
    async def spend_budgets(conn: asyncpg.Connection, links: Links, transfer_id: str, amount: int,
                             session_id: str | None = None) -> None:
        """Count ``amount`` against every link's budget, or refuse if any would be exceeded. Each
        link's running total is read and moved under its advisory lock, held until this
        transaction ends."""
        if not links:
            return
        await advisory(conn, (lock_key("link", f"{jti}\n{period}") for jti, period, _ in links))
        rows = await conn.fetch(
            "SELECT l.jti, l.period, COALESCE(t.spent, 0)::bigint "
            "FROM unnest($1::text[], $2::text[]) AS l(jti, period) "
            "LEFT JOIN ledger_mandate_totals t ON t.jti = l.jti AND t.period = l.period",
            [jti for jti, _, _ in links], [period for _, period, _ in links],
        )
        spent = {(jti, period): total for jti, period, total in rows}
        for jti, period, budget in links:
            already = spent[(jti, period)]
            if already + amount > budget:
                raise BudgetExhausted(f"mandate {jti} has {budget - already} left of {budget} for {period}")
        await conn.execute(
            count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount, session_id) "
                        "SELECT $1, l.jti, l.period, $4, $5 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS l(jti, period, i) "
                        "ORDER BY l.i"),
            transfer_id, [jti for jti, _, _ in links], [period for _, period, _ in links], amount, session_id,
        )

    @staticmethod
    async def lock_accounts(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, asyncpg.Record]:
        """Lock the accounts' rows, in id order; the ones that exist, by id."""
        rows = await conn.fetch("SELECT id, currency, balance, kind FROM ledger_accounts WHERE id = ANY($1::text[]) "
                                "ORDER BY id FOR NO KEY UPDATE", sorted(set(ids)))
        return {r["id"]: r for r in rows}

    @staticmethod
    async def get(conn: asyncpg.Connection | asyncpg.Pool, transfer_id: str) -> Transfer | None:
        row = await conn.fetchrow(SELECT_TRANSFER + " WHERE id=$1", transfer_id)
        return row_transfer(row) if row else None

    @staticmethod
    async def post(conn: asyncpg.Connection, transfer_id: str, payer: str, payee: str, amount: int, currency: str, kind: str,
                    signer: str | None, *, at: datetime | None = None) -> Transfer:
        """Record the transfer and its postings and move both balances (the caller holds both rows)."""
        created = at or now()
        await conn.execute(_POST, transfer_id, payer, payee, amount, currency, kind, created, signer)
        return Transfer(transfer_id, payer, payee, amount, currency, kind, format_rfc3339(created), signer)
