"""The ledger on PostgreSQL: the operations, records and refusals of
:class:`mpp.ledger.SqliteLedger`, async (``await ledger.transfer(...)``), for one ledger shared by
any number of processes (the standalone ledger service, several sellers).

    ledger = await PgLedger.connect("postgresql://ledger@db/mpp")
    await ledger.transfer("t-1", payer="acct:buyer", payee="acct:seller", amount=25, currency="usd", signer=did)

Where SQLite takes its one write lock (``BEGIN IMMEDIATE``), each operation here is one
transaction that takes the locks it needs, always in this order, so that concurrent operations
queue instead of deadlocking:

1. the operation's own id (transfer id, session id): a transaction-scoped advisory lock, or the
   session's row (``FOR NO KEY UPDATE``) once the session exists, so that repeats of one call,
   and a ``void`` racing the transfer it voids, take turns;
2. the rows of every account whose balance it reads and then changes, in one statement
   ordered by account id (``SELECT ... ORDER BY id FOR NO KEY UPDATE``);
3. one advisory lock per mandate link it counts against, in key order: a link's running total
   (ledger_mandate_totals) is read and moved while its lock is held, so concurrent purchases through any number of
   processes never take a link past its budget.

Revocations are checked, and budgets counted, in the same transaction as the postings. Amounts
are BIGINT base units; times are kept to the second in UTC and reported as RFC 3339 text, as the
SQLite ledger reports them. Tables are prefixed ``ledger_``, so a ledger may share a database
with the seller's stores.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import asyncpg

from mpp.protocol.errors import PaymentProblem
from mpp.ledger.core import (
    Account,
    second_ceiling,
    BudgetExhausted,
    CapSignatureInvalid,
    CaptureRefused,
    InsufficientFunds,
    MandateCharge,
    MandateRevokedError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    check_member,
    OverMandate,
    check_account_id,
    check_spender,
    keeps_an_owner,
    holding_account,
    issuance_account,
    verified_links,
)
from mpp.protocol.models import format_rfc3339
from mpp.intents.session import SessionTerms, Voucher, VoucherInvalid, verify_cap, verify_voucher
from mpp.stores.pg._base import PgStoreBase, stamp

__all__ = ["PgLedger"]

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

_TRANSFER_COLUMNS = "id, payer, payee, amount, currency, kind, created_at, signer"
_SELECT_TRANSFER = f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers"
_SESSION_COLUMNS = "id, payer, payee, currency, signer, cap, captured, released, status, opened_at"
_SELECT_SESSION = f"SELECT {_SESSION_COLUMNS} FROM ledger_sessions"
_SESSION_KINDS = ("hold", "capture", "release")

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


def _count_spend(rows_sql: str) -> str:
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


def _now() -> datetime:
    return stamp(datetime.now(timezone.utc))


def _lock_key(kind: str, name: str) -> int:
    """A 64-bit advisory lock key; the same in every process (hash() is salted, this is not)."""
    return int.from_bytes(hashlib.blake2b(f"mpp.ledger.{kind}\n{name}".encode(), digest_size=8).digest(), "big", signed=True)


async def _advisory(conn: asyncpg.Connection, keys: Iterable[int]) -> None:
    """Take transaction-scoped advisory locks, in key order (every transaction takes them so)."""
    ordered = sorted(set(keys))
    if len(ordered) == 1:
        await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", ordered[0])
    elif ordered:
        await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY i",
                           ordered)


def _transfer(row: asyncpg.Record) -> Transfer:
    tid, payer, payee, amount, currency, kind, created, signer = row
    return Transfer(tid, payer, payee, amount, currency, kind, format_rfc3339(created), signer)


def _hold(row: asyncpg.Record) -> SessionHold:
    *head, opened = row
    return SessionHold(*head, format_rfc3339(opened))


def _is_holding(account_id: str) -> bool:
    return account_id.startswith(holding_account(""))


def _not_holding(account_id: str) -> None:
    if _is_holding(account_id):
        raise ValueError(f"{account_id!r} is a holding account: only session operations move value into or out of it")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("amount must be a positive integer in base units")


class _Verified:
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


_OWNERS = "SELECT did FROM ledger_account_members WHERE account_id=$1 AND role='owner' ORDER BY did"
_ROLES = "SELECT did, role FROM ledger_account_members WHERE account_id=$1 AND did = ANY($2::text[])"


class PgLedger(PgStoreBase):
    """``PgLedger(pool_or_url)``; ``await ledger.open()`` (or first use) creates the tables and
    reads the ledger id. Every method is a coroutine; see SqliteLedger for what each one means."""

    _SCHEMA = _SCHEMA
    _LOCK_NAME = "mpp.ledger.schema"

    def __init__(self, pool: asyncpg.Pool | str, **kwargs: Any) -> None:
        super().__init__(pool, **kwargs)
        self._ledger_id: str | None = None

    @property
    def ledger_id(self) -> str:
        if self._ledger_id is None:
            raise AttributeError("the ledger id is known once the ledger is open: await ledger.open()")
        return self._ledger_id

    async def open(self) -> "PgLedger":
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

    async def _atomic(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
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

    # -- accounts ----------------------------------------------------------

    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None, exclusive: bool = False) -> Account:
        check_account_id(account_id, currency)
        if owner is not None:
            check_member(owner, "owner")

        async def work(conn: asyncpg.Connection) -> None:
            if exclusive:  # made by this transaction, or refused: two creators never both become its owners
                made = await conn.fetchval("INSERT INTO ledger_accounts(id, currency, kind, balance) VALUES ($1, $2, 'asset', 0) "
                                           "ON CONFLICT (id) DO NOTHING RETURNING 1", account_id, currency)
                if made is None:
                    raise TransferConflict(f"account {account_id!r} exists already")
            await self._ensure_account(conn, account_id, currency, "asset")
            if owner is not None:
                await conn.execute("INSERT INTO ledger_account_members(account_id, did, role) VALUES ($1, $2, 'owner') "
                                   "ON CONFLICT (account_id, did) DO UPDATE SET role='owner'", account_id, owner)

        await self._atomic(work)
        return await self.account(account_id)

    @staticmethod
    async def _ensure_account(conn: asyncpg.Connection, account_id: str, currency: str, kind: str) -> None:
        row = await conn.fetchrow(
            "INSERT INTO ledger_accounts(id, currency, kind, balance) VALUES ($1, $2, $3, 0) "
            "ON CONFLICT (id) DO NOTHING RETURNING currency, kind",
            account_id, currency, kind,
        )
        if row is None:
            row = await conn.fetchrow("SELECT currency, kind FROM ledger_accounts WHERE id=$1", account_id)
        if (row[0], row[1]) != (currency, kind):
            raise TransferConflict(f"account {account_id!r} exists with currency {row[0]!r}, kind {row[1]!r}")

    async def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` as an ``owner`` or a mandate-bound ``agent``, replacing its role (LEDGER-ACCT-02)."""
        check_member(did, role)
        _not_holding(account_id)

        async def work(conn: asyncpg.Connection) -> None:
            # The account's row lock orders this against transfers, which read the members under it.
            kind = await conn.fetchval("SELECT kind FROM ledger_accounts WHERE id=$1 FOR NO KEY UPDATE", account_id)
            if kind is None:
                raise UnknownAccount(f"no account {account_id!r}")
            if kind != "asset":
                raise ValueError(f"{account_id!r} is the ledger's own {kind} account: nobody spends from it")
            keeps_an_owner(account_id, {r[0] for r in await conn.fetch(_OWNERS, account_id)}, did, role)
            await conn.execute("INSERT INTO ledger_account_members(account_id, did, role) VALUES ($1, $2, $3) "
                               "ON CONFLICT (account_id, did) DO UPDATE SET role=excluded.role", account_id, did, role)

        await self._atomic(work)

    async def deny(self, account_id: str, did: str) -> None:
        """``did`` spends nothing from the account from now on, directly or in any mandate chain."""
        await self.allow(account_id, did, "denied")

    async def members(self, account_id: str) -> dict[str, str]:
        await self.account(account_id)  # UnknownAccount
        pool = await self.pool()
        return {r[0]: r[1] for r in await pool.fetch(
            "SELECT did, role FROM ledger_account_members WHERE account_id=$1 ORDER BY did", account_id)}

    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """See SqliteLedger.spend_check."""
        await self.account(payer)  # UnknownAccount
        pool = await self.pool()
        roles = {r[0]: r[1] for r in await pool.fetch(_ROLES, payer, list(chain or (signer,)))}
        check_spender(roles, signer=signer, chain=chain)

    async def account(self, account_id: str) -> Account:
        pool = await self.pool()
        row = await pool.fetchrow("SELECT id, currency, balance, kind FROM ledger_accounts WHERE id=$1", account_id)
        if row is None:
            raise UnknownAccount(f"no account {account_id!r}")
        return Account(*row)

    async def balance(self, account_id: str) -> int:
        return (await self.account(account_id)).balance

    async def accounts(self) -> list[Account]:
        pool = await self.pool()
        return [Account(*r) for r in await pool.fetch("SELECT id, currency, balance, kind FROM ledger_accounts ORDER BY id")]

    async def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt."""
        pool = await self.pool()
        return int(await pool.fetchval("SELECT COALESCE(SUM(balance), 0)::bigint FROM ledger_accounts"))

    # -- revocation ----------------------------------------------------------

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a signed revocation; every later transfer under that mandate is refused."""
        from mpp.identity import verify_revocation

        jti, revoker = verify_revocation(revocation_token, mandate_token)
        pool = await self.pool()
        await pool.execute("INSERT INTO ledger_revocations(jti, revoker, revoked_at, token) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT (jti) DO NOTHING", jti, revoker, _now(), revocation_token)
        return jti

    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        if not jtis:
            return set()
        pool = await self.pool()
        return {r[0] for r in await pool.fetch("SELECT jti FROM ledger_revocations WHERE jti = ANY($1::text[])", list(jtis))}

    async def mandate_spent(self, jti: str, period: str) -> int:
        pool = await self.pool()
        return int(await pool.fetchval(
            "SELECT COALESCE((SELECT spent FROM ledger_mandate_totals WHERE jti=$1 AND period=$2), 0)::bigint", jti, period))

    # -- moving value ------------------------------------------------------

    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` from its currency's issuance account (prepaid credit). The same
        reference again returns the first funding; with other terms it raises TransferConflict."""
        _check_amount(amount)
        _not_holding(account_id)
        reference = reference or "fund-" + secrets.token_hex(8)

        async def work(conn: asyncpg.Connection) -> Transfer:
            await _advisory(conn, [_lock_key("transfer", reference)])
            currency = await conn.fetchval("SELECT currency FROM ledger_accounts WHERE id=$1", account_id)
            if currency is None:
                raise UnknownAccount(f"no account {account_id!r}")
            source = issuance_account(currency)
            await self._ensure_account(conn, source, currency, "issuance")
            existing = await self._get(conn, reference)
            if existing is not None:
                if (existing.payer, existing.payee, existing.amount, existing.kind) != (source, account_id, amount, "fund"):
                    raise TransferConflict(f"transfer {reference!r} exists with other terms")
                return existing
            await self._lock_accounts(conn, [source, account_id])
            return await self._post(conn, reference, source, account_id, amount, currency, "fund", None)

        return await self._atomic(work)

    async def transfer(
        self,
        transfer_id: str,
        *,
        payer: str,
        payee: str,
        amount: int,
        currency: str,
        signer: str | None,
        mandate: MandateCharge | None = None,
    ) -> Transfer:
        """Move ``amount`` once. Repeating the same call returns the first transfer unchanged.

        With ``mandate``, the revocation list and every link's budget are checked in the same
        transaction as the postings, each link under its own lock, so concurrent purchases
        through any number of processes cannot take a mandate past its budget.
        """
        _check_amount(amount)
        verified = await self._preverify(payer, signer, mandate, currency=currency, amount=amount)

        async def work(conn: asyncpg.Connection) -> Transfer:
            await _advisory(conn, [_lock_key("transfer", transfer_id)])
            row = await conn.fetchrow(
                f"SELECT {', '.join('t.' + c for c in _TRANSFER_COLUMNS.split(', '))}, "
                "EXISTS (SELECT 1 FROM ledger_voided v WHERE v.transfer_id = q.id) "
                "FROM (SELECT $1::text AS id) q LEFT JOIN ledger_transfers t ON t.id = q.id",
                transfer_id,
            )
            if row[0] is not None:
                existing = _transfer(row[:8])
                if (existing.payer, existing.payee, existing.amount, existing.currency) != (payer, payee, amount, currency):
                    raise TransferConflict(f"transfer {transfer_id!r} exists with other terms")
                return existing
            if row[8]:
                raise TransferConflict(f"transfer {transfer_id!r} was voided before it was made")
            accounts = await self._lock_accounts(conn, [payer, payee])
            if payer not in accounts:
                raise UnknownAccount(f"no payer account {payer!r}")
            if payee not in accounts:
                raise UnknownAccount(f"no payee account {payee!r}")
            for acct in (payer, payee):
                if accounts[acct]["currency"] != currency:
                    raise UnknownAccount(f"account {acct!r} does not hold {currency!r}")
                if _is_holding(acct):
                    raise UnauthorizedSigner("only session operations move value into or out of a holding account")
            links = await self._authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=amount)
            balance = accounts[payer]["balance"]
            if accounts[payer]["kind"] == "asset" and balance < amount:
                raise InsufficientFunds(f"balance {balance} is below {amount}")
            await self._spend_budgets(conn, links, transfer_id, amount)
            return await self._post(conn, transfer_id, payer, payee, amount, currency, "charge", signer)

        return await self._atomic(work)

    async def refund(self, transfer_id: str) -> Transfer:
        """Reverse a charge once (``refund:<id>``), e.g. when the seller could not deliver."""
        return await self._atomic(lambda conn: self._refund(conn, transfer_id))

    async def _refund(self, conn: asyncpg.Connection, transfer_id: str) -> Transfer:
        original = await self._get(conn, transfer_id)
        if original is None:
            raise UnknownAccount(f"no transfer {transfer_id!r}")
        if original.kind in _SESSION_KINDS:
            # Reversing one leg of a session would strand value in (or drain) the holding account.
            raise TransferConflict(f"transfer {transfer_id!r} belongs to a session; sessions end with close_session")
        refund_id = "refund:" + transfer_id
        accounts = await self._lock_accounts(conn, [original.payer, original.payee])
        existing = await self._get(conn, refund_id)
        if existing is not None:
            return existing
        payee = accounts[original.payee]
        if payee["kind"] == "asset" and payee["balance"] < original.amount:
            raise InsufficientFunds(f"balance {payee['balance']} of {original.payee!r} is below the refund {original.amount}")
        # Give the mandate budgets back too: the refunded purchase never happened.
        await conn.execute(
            _count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount) "
                         "SELECT $1, jti, period, -amount FROM ledger_mandate_spend WHERE transfer_id=$2 ORDER BY seq"),
            refund_id, transfer_id,
        )
        return await self._post(conn, refund_id, original.payee, original.payer, original.amount, original.currency, "refund",
                                None)

    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Make sure no charge stands under ``transfer_id``: refund it if it was made (returns the
        refund), else record the id so that a transfer under it is refused from now on (None).
        With ``payee``, a charge to another payee is refused (TransferConflict), not refunded."""

        async def work(conn: asyncpg.Connection) -> Transfer | None:
            await _advisory(conn, [_lock_key("transfer", transfer_id)])  # takes turns with transfer(transfer_id)
            original = await self._get(conn, transfer_id)
            if original is None:
                await conn.execute("INSERT INTO ledger_voided(transfer_id, voided_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   transfer_id, _now())
                return None
            if original.kind != "charge" or (payee is not None and original.payee != payee):
                raise TransferConflict(f"transfer {transfer_id!r} is not a charge to this payee")
            return await self._refund(conn, transfer_id)

        return await self._atomic(work)

    # -- authorization and budgets (inside a transaction) -------------------

    async def _preverify(self, payer: str, signer: str | None, mandate: MandateCharge | None, *, currency: str,
                         amount: int | None) -> _Verified | None:
        if mandate is None:
            return None
        pool = await self.pool()
        owners = [r[0] for r in await pool.fetch(_OWNERS, payer)]
        try:
            return _Verified(owners, verified_links(owners, signer, mandate, currency=currency, amount=amount), None)
        except (UnauthorizedSigner, OverMandate) as exc:
            return _Verified(owners, None, exc)

    async def _authorized_links(self, conn: asyncpg.Connection, payer: str, signer: str | None, mandate: MandateCharge | None,
                                verified: _Verified | None, *, currency: str, amount: int | None) -> Links:
        """May ``signer`` spend from ``payer`` (whose row this transaction has locked)? Through a
        verified, unrevoked mandate chain rooted in an owner (its links are returned) or, without
        one, as an owner of the account (LEDGER-ACCT-03)."""
        if mandate is None:
            roles = {r[0]: r[1] for r in await conn.fetch(_ROLES, payer, [signer])} if signer else {}
            check_spender(roles, signer=signer, chain=None)
            return []
        owners = [r[0] for r in await conn.fetch(_OWNERS, payer)]
        if verified is not None and verified.owners == owners:
            dids, links = verified.result()
        else:  # the owners changed since: verify again, for the owners as they are now
            dids, links = verified_links(owners, signer, mandate, currency=currency, amount=amount)
        check_spender({r[0]: r[1] for r in await conn.fetch(_ROLES, payer, list(dids))}, signer=signer, chain=dids)
        keys = [key for key, _, _ in links]
        if await conn.fetchval("SELECT 1 FROM ledger_revocations WHERE jti = ANY($1::text[]) LIMIT 1", keys) is not None:
            raise MandateRevokedError("a mandate in the chain has been revoked")
        return links

    @staticmethod
    async def _spend_budgets(conn: asyncpg.Connection, links: Links, transfer_id: str, amount: int,
                             session_id: str | None = None) -> None:
        """Count ``amount`` against every link's budget, or refuse if any would be exceeded. Each
        link's running total is read and moved under its advisory lock, held until this
        transaction ends."""
        if not links:
            return
        await _advisory(conn, (_lock_key("link", f"{jti}\n{period}") for jti, period, _ in links))
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
            _count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount, session_id) "
                         "SELECT $1, l.jti, l.period, $4, $5 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS l(jti, period, i) "
                         "ORDER BY l.i"),
            transfer_id, [jti for jti, _, _ in links], [period for _, period, _ in links], amount, session_id,
        )

    @staticmethod
    async def _lock_accounts(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, asyncpg.Record]:
        """Lock the accounts' rows, in id order; the ones that exist, by id."""
        rows = await conn.fetch("SELECT id, currency, balance, kind FROM ledger_accounts WHERE id = ANY($1::text[]) "
                                "ORDER BY id FOR NO KEY UPDATE", sorted(set(ids)))
        return {r["id"]: r for r in rows}

    # -- sessions: a cap held at open, captured and released at close -----------

    async def open_session(
        self,
        terms: SessionTerms,
        *,
        payer: str,
        signer: str,
        cap: int,
        cap_signature: str,
        mandate: MandateCharge | None = None,
    ) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session ``terms.session_id`` (transfer ``hold:<id>``
        to ``holds:<currency>``), once; see SqliteLedger.open_session."""
        _check_amount(cap)
        sid = terms.session_id
        if not isinstance(sid, str) or not sid or ":" in sid:
            raise ValueError("a session id must be a non-empty string without ':'")
        self._verify_cap(signer, terms, payer, cap, cap_signature)
        terms_json = _dumps(terms.as_json())
        tokens = _dumps(list(mandate.tokens)) if mandate is not None else None
        realm = mandate.realm if mandate is not None else None
        ledger_id = (await self.open()).ledger_id
        verified = await self._preverify(payer, signer, mandate, currency=terms.currency, amount=None)

        async def work(conn: asyncpg.Connection) -> SessionHold:
            await _advisory(conn, [_lock_key("session", sid)])
            row = await conn.fetchrow("SELECT payer, signer, terms, open_cap, mandate, realm FROM ledger_sessions WHERE id=$1",
                                      sid)
            if row is not None:
                if tuple(row) != (payer, signer, terms_json, cap, tokens, realm):
                    raise TransferConflict(f"session {sid!r} was opened with other terms")
                return await self._session(conn, sid)  # type: ignore[return-value]
            if terms.ledger != ledger_id:
                raise UnknownAccount(f"the session's terms name ledger {terms.ledger!r}, not this one")
            currency, payee = terms.currency, terms.recipient
            holds = holding_account(currency)
            accounts = await self._lock_accounts(conn, [payer, payee, holds])
            for name, acct in (("payer", payer), ("payee", payee)):
                if acct not in accounts or accounts[acct]["kind"] != "asset":
                    raise UnknownAccount(f"no {name} account {acct!r}")
                if accounts[acct]["currency"] != currency:
                    raise UnknownAccount(f"account {acct!r} does not hold {currency!r}")
            if payer == payee or _is_holding(payer) or _is_holding(payee):
                raise UnknownAccount("a session's payer and payee must differ, and neither may be the holding account")
            links = await self._authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=None)
            balance = accounts[payer]["balance"]
            if balance < cap:
                raise InsufficientFunds(f"balance {balance} is below the cap {cap}")
            hold_id = "hold:" + sid
            if await self._get(conn, hold_id) is not None:
                raise TransferConflict(f"transfer {hold_id!r} already exists")
            await self._spend_budgets(conn, links, hold_id, cap, sid)
            if holds not in accounts:  # the currency's first session: its row is new, and ours until commit
                await self._ensure_account(conn, holds, currency, "asset")
            elif (accounts[holds]["currency"], accounts[holds]["kind"]) != (currency, "asset"):
                raise TransferConflict(f"account {holds!r} exists with currency {accounts[holds]['currency']!r}, "
                                       f"kind {accounts[holds]['kind']!r}")
            opened_at = _now()
            await self._post(conn, hold_id, payer, holds, cap, currency, "hold", signer, at=opened_at)
            await conn.execute(
                "INSERT INTO ledger_sessions(id, payer, payee, currency, signer, terms, open_cap, cap, status, mandate, realm, "
                "opened_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 'open', $8, $9, $10)",
                sid, payer, payee, currency, signer, terms_json, cap, tokens, realm, opened_at,
            )
            return SessionHold(sid, payer, payee, currency, signer, cap, 0, 0, "open", format_rfc3339(opened_at))

        return await self._atomic(work)

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` (a new total), holding the difference (transfer
        ``hold:<id>:<cap>``) within the balance and the mandate's budgets. A cap at or below the
        current one changes nothing and returns the session as it is."""
        _check_amount(cap)
        pool = await self.pool()
        # payer, signer, terms, mandate and realm never change once a session is open
        row = await pool.fetchrow("SELECT payer, signer, terms, mandate, realm, currency FROM ledger_sessions WHERE id=$1",
                                  session_id)
        if row is None:
            raise UnknownSession(f"no session {session_id!r}")
        payer, signer, terms_json, tokens, realm, currency = row
        self._verify_cap(signer, SessionTerms.from_json(json.loads(terms_json)), payer, cap, cap_signature)
        mandate = MandateCharge(tuple(json.loads(tokens)), realm) if tokens is not None else None
        holds = holding_account(currency)
        verified = await self._preverify(payer, signer, mandate, currency=currency, amount=None)

        async def work(conn: asyncpg.Connection) -> SessionHold:
            current, status = await conn.fetchrow("SELECT cap, status FROM ledger_sessions WHERE id=$1 FOR NO KEY UPDATE",
                                                  session_id)
            if status != "open":
                raise SessionNotOpen(f"session {session_id!r} is closed")
            if cap <= current:
                return await self._session(conn, session_id)  # type: ignore[return-value]
            increase = cap - current
            accounts = await self._lock_accounts(conn, [payer, holds])
            links = await self._authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=None)
            balance = accounts[payer]["balance"]
            if balance < increase:
                raise InsufficientFunds(f"balance {balance} is below the increase {increase}")
            hold_id = f"hold:{session_id}:{cap}"
            await self._spend_budgets(conn, links, hold_id, increase, session_id)
            await self._post(conn, hold_id, payer, holds, increase, currency, "hold", signer)
            return _hold(await conn.fetchrow(f"UPDATE ledger_sessions SET cap=$2 WHERE id=$1 RETURNING {_SESSION_COLUMNS}",
                                             session_id, cap))

        return await self._atomic(work)

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` for the payee (``capture:<id>``) and release the rest of the cap
        to the payer (``release:<id>``), giving the released part back to the mandate budgets.
        Closing again with the same capture returns the same record."""
        if not isinstance(capture, int) or isinstance(capture, bool) or capture < 0:
            raise ValueError("capture must be a non-negative integer in base units")
        pool = await self.pool()
        row = await pool.fetchrow("SELECT payer, payee, currency, signer, terms FROM ledger_sessions WHERE id=$1", session_id)
        if row is None:
            raise UnknownSession(f"no session {session_id!r}")
        payer, payee, currency, signer, terms_json = row
        # The voucher is checked before the row is locked (signatures hold no locks); its refusal
        # is raised where SqliteLedger raises it.
        refusal: CaptureRefused | None = None
        if capture > 0:
            if voucher is None:
                refusal = CaptureRefused("a capture needs the agent's voucher")
            else:
                try:
                    verify_voucher(signer, SessionTerms.from_json(json.loads(terms_json)), voucher)
                except VoucherInvalid as exc:
                    refusal = CaptureRefused(f"voucher refused: {exc.detail}")
                else:
                    if voucher.cumulative < capture:
                        refusal = CaptureRefused(f"capture {capture} is above the voucher's {voucher.cumulative}")
        holds = holding_account(currency)

        async def work(conn: asyncpg.Connection) -> SessionClose:
            cap, status = await conn.fetchrow("SELECT cap, status FROM ledger_sessions WHERE id=$1 FOR NO KEY UPDATE", session_id)
            if status == "closed":
                closed = await self._closed(conn, session_id)
                if closed.captured != capture:
                    raise TransferConflict(f"session {session_id!r} was closed capturing {closed.captured}, not {capture}")
                return closed
            if capture > cap:
                raise CaptureRefused(f"capture {capture} is above the session's cap {cap}")
            if refusal is not None:
                raise refusal
            await self._lock_accounts(conn, [holds, payee, payer])
            release = cap - capture
            capture_ref = release_ref = None
            closed_at = _now()
            if capture > 0:
                capture_ref = "capture:" + session_id
                await self._post(conn, capture_ref, holds, payee, capture, currency, "capture", None, at=closed_at)
            if release > 0:
                release_ref = "release:" + session_id
                await self._post(conn, release_ref, holds, payer, release, currency, "release", None, at=closed_at)
                await self._release_budgets(conn, session_id, release_ref, release)
            await conn.execute("UPDATE ledger_sessions SET status='closed', captured=$2, released=$3, closed_at=$4, "
                               "capture_ref=$5, release_ref=$6 WHERE id=$1",
                               session_id, capture, release, closed_at, capture_ref, release_ref)
            return SessionClose(session_id, capture, release, capture_ref, release_ref, format_rfc3339(closed_at))

        return await self._atomic(work)

    @staticmethod
    async def _release_budgets(conn: asyncpg.Connection, session_id: str, release_ref: str, release: int) -> None:
        """Give ``release`` back to every link the session's holds were counted against, latest
        hold first, in the period each hold was counted in (row ``release:<id>``, or
        ``release:<id>:<period>`` when the holds span periods)."""
        held = await conn.fetch(
            "SELECT jti, period, SUM(amount)::bigint FROM ledger_mandate_spend WHERE session_id=$1 "
            "GROUP BY jti, period ORDER BY jti, MAX(seq) DESC",
            session_id,
        )
        periods: dict[str, list[tuple[str, int]]] = {}
        for jti, period, amount in held:
            periods.setdefault(jti, []).append((period, amount))
        rows = []
        for jti, spent in periods.items():
            left = release
            for period, amount in spent:
                give = min(left, amount)
                if give <= 0:
                    break
                left -= give
                rows.append((release_ref if len(spent) == 1 else f"{release_ref}:{period}", jti, period, -give))
        if rows:
            await conn.execute(
                _count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount) "
                             "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"),
                *(list(column) for column in zip(*rows)),
            )

    async def session(self, session_id: str) -> SessionHold | None:
        return await self._session(await self.pool(), session_id)

    async def sessions(self) -> list[SessionHold]:
        pool = await self.pool()
        return [_hold(r) for r in await pool.fetch(_SELECT_SESSION + " ORDER BY seq")]

    @staticmethod
    def _verify_cap(signer: str, terms: SessionTerms, payer: str, cap: int, signature: str) -> None:
        try:
            verify_cap(signer, terms, account=payer, cap=cap, signature=signature)
        except PaymentProblem as exc:  # VoucherInvalid, or a signer that is no did:key
            raise CapSignatureInvalid(f"cap refused: {exc.detail}") from None

    @staticmethod
    async def _session(conn: asyncpg.Connection | asyncpg.Pool, session_id: str) -> SessionHold | None:
        row = await conn.fetchrow(_SELECT_SESSION + " WHERE id=$1", session_id)
        return _hold(row) if row else None

    @staticmethod
    async def _closed(conn: asyncpg.Connection, session_id: str) -> SessionClose:
        sid, captured, released, capture_ref, release_ref, closed_at = await conn.fetchrow(
            "SELECT id, captured, released, capture_ref, release_ref, closed_at FROM ledger_sessions WHERE id=$1", session_id)
        return SessionClose(sid, captured, released, capture_ref, release_ref, format_rfc3339(closed_at))

    # -- records -------------------------------------------------------------

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        return await self._get(await self.pool(), transfer_id)

    async def transfers(self) -> list[Transfer]:
        pool = await self.pool()
        return [_transfer(r) for r in await pool.fetch(_SELECT_TRANSFER + " ORDER BY seq")]

    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` made in [since, until) (stamped to the second), oldest first."""
        pool = await self.pool()
        rows = await pool.fetch(_SELECT_TRANSFER + " WHERE (payer = $1 OR payee = $1) AND created_at >= $2 AND created_at < $3 "
                                "ORDER BY seq", account_id, second_ceiling(since), second_ceiling(until))
        return [_transfer(r) for r in rows]

    async def check(self) -> list[str]:
        """Invariants: each transfer's postings sum to zero; each balance equals its postings; each
        holding account holds exactly the caps of its currency's open sessions. Read from one
        snapshot, so it holds while other processes keep writing."""
        problems = []
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            for tid, total in await conn.fetch(
                    "SELECT transfer_id, SUM(amount)::bigint FROM ledger_postings GROUP BY transfer_id HAVING SUM(amount) != 0 "
                    "ORDER BY transfer_id"):
                problems.append(f"transfer {tid} postings sum to {total}")
            for acct, balance, posted in await conn.fetch(
                    "SELECT a.id, a.balance, COALESCE(p.total, 0)::bigint FROM ledger_accounts a LEFT JOIN "
                    "(SELECT account_id, SUM(amount) AS total FROM ledger_postings GROUP BY account_id) p ON p.account_id = a.id "
                    "WHERE a.balance != COALESCE(p.total, 0) ORDER BY a.id"):
                problems.append(f"account {acct} balance {balance} != postings {posted}")
            for acct, balance, held in await conn.fetch(
                    "SELECT a.id, a.balance, COALESCE(s.held, 0)::bigint FROM ledger_accounts a LEFT JOIN "
                    "(SELECT $1 || currency AS id, SUM(cap) AS held FROM ledger_sessions WHERE status='open' "
                    "GROUP BY currency) s "
                    "ON s.id = a.id WHERE starts_with(a.id, $1) AND a.balance != COALESCE(s.held, 0) ORDER BY a.id",
                    holding_account("")):
                problems.append(f"holding account {acct} balance {balance} != open sessions' caps {held}")
            for jti, period, total, counted in await conn.fetch(
                    "SELECT jti, period, SUM(t)::bigint, SUM(s)::bigint FROM (SELECT jti, period, spent AS t, 0 AS s "
                    "FROM ledger_mandate_totals UNION ALL SELECT jti, period, 0, amount FROM ledger_mandate_spend) u "
                    "GROUP BY jti, period HAVING SUM(t) != SUM(s) ORDER BY jti, period"):
                problems.append(f"mandate {jti} running total {total} for {period} != its spend rows {counted}")
        return problems

    # -- internals ---------------------------------------------------------

    @staticmethod
    async def _get(conn: asyncpg.Connection | asyncpg.Pool, transfer_id: str) -> Transfer | None:
        row = await conn.fetchrow(_SELECT_TRANSFER + " WHERE id=$1", transfer_id)
        return _transfer(row) if row else None

    @staticmethod
    async def _post(conn: asyncpg.Connection, transfer_id: str, payer: str, payee: str, amount: int, currency: str, kind: str,
                    signer: str | None, *, at: datetime | None = None) -> Transfer:
        """Record the transfer and its postings and move both balances (the caller holds both rows)."""
        created = at or _now()
        await conn.execute(_POST, transfer_id, payer, payee, amount, currency, kind, created, signer)
        return Transfer(transfer_id, payer, payee, amount, currency, kind, format_rfc3339(created), signer)

