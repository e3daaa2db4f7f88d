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

A seller whose payment store and audit log share the ledger's database books each purchase in
one round trip through :class:`PgPurchaseBook` (the server-side function it calls takes the same
locks in the same order).

The money is :class:`PgLedger`; who may spend is ``ledger.keys`` and sessions held on the ledger
``ledger.sessions`` (:mod:`mpp.ledger.pg_facets`); all three share one :class:`mpp.ledger._pg_book.PgBook`.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any, Sequence

import asyncpg

from mpp.ledger._pg_book import (
    SELECT_TRANSFER,
    SESSION_KINDS,
    TRANSFER_COLUMNS,
    PgBook,
    advisory,
    check_amount,
    count_spend,
    is_holding,
    lock_key,
    not_holding,
    now,
    row_transfer,
)
from mpp.ledger._pg_purchase_sql import CHAIN_BROKEN, PURCHASE, REFUND, REFUSED
from mpp.ledger.book import Purchase
from mpp.ledger.core import (
    Account,
    BudgetExhausted,
    InsufficientFunds,
    LedgerError,
    MandateRequired,
    MandateCharge,
    MandateRevokedError,
    OverMandate,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownPayee,
    WrongCurrency,
    check_parties,
    check_account_id,
    check_member,
    holding_account,
    issuance_account,
    second_ceiling,
)
from mpp.ledger.pg_facets import PgKeys, PgSessions
from mpp.stores.audit import prepare_entry, tail_problem
from mpp.stores.pg._base import PgStoreBase, same_database
from mpp.stores.pg.audit import PgAuditLog
from mpp.stores.pg.payments import PgPaymentStore

__all__ = ["PgLedger", "PgPurchaseBook"]


class PgLedger:
    """``PgLedger(pool_or_url)``; ``await ledger.open()`` (or first use) creates the tables and
    reads the ledger id. Every method is a coroutine; see SqliteLedger for what each one means.
    ``keys`` (who may spend) and ``sessions`` (caps held on the ledger) are its other facets."""

    def __init__(self, pool: asyncpg.Pool | str, **kwargs: Any) -> None:
        self._book = PgBook(pool, **kwargs)
        self.keys = PgKeys(self._book)
        self.sessions = PgSessions(self._book)

    @classmethod
    async def connect(cls, pool: asyncpg.Pool | str, **kwargs: Any) -> "PgLedger":
        """A ledger that is open: pool made and schema in place."""
        return await cls(pool, **kwargs).open()

    @property
    def ledger_id(self) -> str:
        """This ledger's id, read from the database by :meth:`open`; AttributeError before the ledger is
        open."""
        return self._book.ledger_id

    async def open(self) -> "PgLedger":
        """Make the pool (when built from a URL), create the tables if missing and read the ledger id;
        returns the ledger. Idempotent; every other coroutine opens the ledger on first use."""
        await self._book.open()
        return self

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool the ledger runs on, opening the ledger first if it is not open."""
        return await self._book.pool()

    def same_database(self, store: Any) -> bool:
        """Whether a PostgreSQL store (mpp.stores.pg) is kept in this ledger's database: built on
        the same pool or from the same URL (mpp.stores.pg._base.same_database)."""
        return isinstance(store, PgStoreBase) and same_database(self._book, store)

    async def close(self) -> None:
        """Close the pool if the ledger made it (built from a URL); a pool passed in is the caller's to
        close."""
        await self._book.close()

    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None, exclusive: bool = False) -> Account:
        """An asset account in ``currency`` with balance 0, as :meth:`SqliteLedger.create_account`: the
        same call again returns it unchanged, or with ``exclusive`` raises TransferConflict (of two
        concurrent exclusive creators exactly one succeeds); with ``owner``, that DID is made one of its
        owners. ValueError for an id, currency or owner of the wrong form."""
        check_account_id(account_id, currency)
        if owner is not None:
            check_member(owner, "owner")

        async def work(conn: asyncpg.Connection) -> None:
            if exclusive:  # made by this transaction, or refused: two creators never both become its owners
                made = await conn.fetchval("INSERT INTO ledger_accounts(id, currency, kind, balance) VALUES ($1, $2, 'asset', 0) "
                                           "ON CONFLICT (id) DO NOTHING RETURNING 1", account_id, currency)
                if made is None:
                    raise TransferConflict(f"account {account_id!r} exists already")
            await self._book.ensure_account(conn, account_id, currency, "asset")
            if owner is not None:
                await conn.execute("INSERT INTO ledger_account_members(account_id, did, role) VALUES ($1, $2, 'owner') "
                                   "ON CONFLICT (account_id, did) DO UPDATE SET role='owner'", account_id, owner)

        await self._book.atomic(work)
        return await self.account(account_id)

    async def account(self, account_id: str) -> Account:
        """The account's currency, balance (base units) and kind. UnknownAccount if there is none."""
        return await self._book.account(account_id)

    async def balance(self, account_id: str) -> int:
        """The account's balance in base units. UnknownAccount if there is none."""
        return (await self.account(account_id)).balance

    async def accounts(self) -> list[Account]:
        """Every account, the ledger's own (``issuance:<currency>``, ``holds:<currency>``) included,
        ordered by id."""
        pool = await self._book.pool()
        return [Account(*r) for r in await pool.fetch("SELECT id, currency, balance, kind FROM ledger_accounts ORDER BY id")]

    async def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt."""
        pool = await self._book.pool()
        return int(await pool.fetchval("SELECT COALESCE(SUM(balance), 0)::bigint FROM ledger_accounts"))

    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` from its currency's issuance account (prepaid credit). The same
        reference again returns the first funding; with other terms it raises TransferConflict."""
        check_amount(amount)
        not_holding(account_id)
        reference = reference or "fund-" + secrets.token_hex(8)

        async def work(conn: asyncpg.Connection) -> Transfer:
            await advisory(conn, [lock_key("transfer", reference)])
            currency = await conn.fetchval("SELECT currency FROM ledger_accounts WHERE id=$1", account_id)
            if currency is None:
                raise UnknownAccount(f"no account {account_id!r}")
            source = issuance_account(currency)
            await self._book.ensure_account(conn, source, currency, "issuance")
            existing = await self._book.get(conn, reference)
            if existing is not None:
                if (existing.payer, existing.payee, existing.amount, existing.kind) != (source, account_id, amount, "fund"):
                    raise TransferConflict(f"transfer {reference!r} exists with other terms")
                return existing
            await self._book.lock_accounts(conn, [source, account_id])
            return await self._book.post(conn, reference, source, account_id, amount, currency, "fund", None)

        return await self._book.atomic(work)

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
        check_amount(amount)
        verified = await self._book.preverify(payer, signer, mandate, currency=currency, amount=amount)

        async def work(conn: asyncpg.Connection) -> Transfer:
            await advisory(conn, [lock_key("transfer", transfer_id)])
            row = await conn.fetchrow(
                f"SELECT {', '.join('t.' + c for c in TRANSFER_COLUMNS.split(', '))}, "
                "EXISTS (SELECT 1 FROM ledger_voided v WHERE v.transfer_id = q.id) "
                "FROM (SELECT $1::text AS id) q LEFT JOIN ledger_transfers t ON t.id = q.id",
                transfer_id,
            )
            if row[0] is not None:
                existing = row_transfer(row[:8])
                if (existing.payer, existing.payee, existing.amount, existing.currency) != (payer, payee, amount, currency):
                    raise TransferConflict(f"transfer {transfer_id!r} exists with other terms")
                return existing
            if row[8]:
                raise TransferConflict(f"transfer {transfer_id!r} was voided before it was made")
            accounts = await self._book.lock_accounts(conn, [payer, payee])
            check_parties({a: r["currency"] for a, r in accounts.items()}, payer, payee, currency)
            for acct in (payer, payee):
                if is_holding(acct):
                    raise UnauthorizedSigner("only session operations move value into or out of a holding account")
            links = await self._book.authorized_links(conn, payer, signer, mandate, verified, currency=currency, amount=amount)
            balance = accounts[payer]["balance"]
            if accounts[payer]["kind"] == "asset" and balance < amount:
                raise InsufficientFunds(f"balance {balance} is below {amount}")
            await self._book.spend_budgets(conn, links, transfer_id, amount)
            return await self._book.post(conn, transfer_id, payer, payee, amount, currency, "charge", signer)

        return await self._book.atomic(work)

    async def refund(self, transfer_id: str) -> Transfer:
        """Reverse a charge once (``refund:<id>``), e.g. when the seller could not deliver."""
        return await self._book.atomic(lambda conn: self._refund(conn, transfer_id))

    async def _refund(self, conn: asyncpg.Connection, transfer_id: str) -> Transfer:
        original = await self._book.get(conn, transfer_id)
        if original is None:
            raise UnknownAccount(f"no transfer {transfer_id!r}")
        if original.kind in SESSION_KINDS:
            # Reversing one leg of a session would strand value in (or drain) the holding account.
            raise TransferConflict(f"transfer {transfer_id!r} belongs to a session; sessions end with close_session")
        if original.kind != "charge":  # a fund, or a refund: reversing it would issue or move value no purchase moved
            raise TransferConflict(f"transfer {transfer_id!r} is a {original.kind}, not a charge: only charges are refunded")
        refund_id = "refund:" + transfer_id
        accounts = await self._book.lock_accounts(conn, [original.payer, original.payee])
        existing = await self._book.get(conn, refund_id)
        if existing is not None:
            return existing
        payee = accounts[original.payee]
        if payee["kind"] == "asset" and payee["balance"] < original.amount:
            raise InsufficientFunds(f"balance {payee['balance']} of {original.payee!r} is below the refund {original.amount}")
        # Give the mandate budgets back too: the refunded purchase never happened.
        await conn.execute(
            count_spend("INSERT INTO ledger_mandate_spend(transfer_id, jti, period, amount) "
                        "SELECT $1, jti, period, -amount FROM ledger_mandate_spend WHERE transfer_id=$2 ORDER BY seq"),
            refund_id, transfer_id,
        )
        return await self._book.post(conn, refund_id, original.payee, original.payer, original.amount, original.currency, "refund",
                                None)

    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Make sure no charge stands under ``transfer_id``: refund it if it was made (returns the
        refund), else record the id so that a transfer under it is refused from now on (None).
        With ``payee``, a charge to another payee is refused (TransferConflict), not refunded."""

        async def work(conn: asyncpg.Connection) -> Transfer | None:
            await advisory(conn, [lock_key("transfer", transfer_id)])  # takes turns with transfer(transfer_id)
            original = await self._book.get(conn, transfer_id)
            if original is None:
                await conn.execute("INSERT INTO ledger_voided(transfer_id, voided_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   transfer_id, now())
                return None
            if original.kind != "charge" or (payee is not None and original.payee != payee):
                raise TransferConflict(f"transfer {transfer_id!r} is not a charge to this payee")
            return await self._refund(conn, transfer_id)

        return await self._book.atomic(work)

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer recorded under ``transfer_id``, or None (also for an id only voided)."""
        return await self._book.get(await self._book.pool(), transfer_id)

    async def transfers(self) -> list[Transfer]:
        """Every transfer on the ledger, of every kind, oldest first (unbounded: for inspection and
        tests)."""
        pool = await self._book.pool()
        return [row_transfer(r) for r in await pool.fetch(SELECT_TRANSFER + " ORDER BY seq")]

    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` made in [since, until) (stamped to the second), oldest first."""
        pool = await self._book.pool()
        rows = await pool.fetch(SELECT_TRANSFER + " WHERE (payer = $1 OR payee = $1) AND created_at >= $2 AND created_at < $3 "
                                "ORDER BY seq", account_id, second_ceiling(since), second_ceiling(until))
        return [row_transfer(r) for r in rows]

    async def check(self) -> list[str]:
        """Invariants: each transfer's postings sum to zero; each balance equals its postings; each
        holding account holds exactly the caps of its currency's open sessions. Read from one
        snapshot, so it holds while other processes keep writing."""
        problems = []
        pool = await self._book.pool()
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


# -- one purchase, one round trip (issue 16, CORE-ONCE-10) ---------------------------------------

_CALL_PURCHASE = f"SELECT o_status, o_detail FROM {PURCHASE}({', '.join(f'${i}' for i in range(1, 23))})"
_CALL_REFUND = f"SELECT o_status FROM {REFUND}($1, $2, $3, $4, $5, $6)"

_REFUSALS: dict[str, type[LedgerError]] = {cls.__name__: cls for cls in (
    UnknownAccount, UnknownPayee, WrongCurrency, UnauthorizedSigner, MandateRequired, TransferConflict, OverMandate, MandateRevokedError,
    InsufficientFunds, BudgetExhausted)}
_MONEY = ("InsufficientFunds", "BudgetExhausted")

# Transient refusals of the database itself: the call (one transaction) is made again.
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)
_ATTEMPTS = 5

Entries = Sequence[tuple[str, dict[str, Any]]]


class PgPurchaseBook:
    """One purchase, one round trip: a seller whose payment store (:class:`mpp.stores.pg.PgPaymentStore`)
    and audit log (:class:`mpp.stores.pg.PgAuditLog`, or none) are kept in its PgLedger's own
    database claims the challenge, moves the money,
    counts the mandate budgets (the ledger's and its own share), marks the approval used, records the
    payment with its signed receipt and appends its audit entries in one call of the ledger's
    server-side function ``ledger_purchase_v1`` (:mod:`mpp.ledger._pg_purchase_sql`, installed by the
    ledger's schema migration): one statement, so one transaction, on a pooled connection released
    without a reset query (:func:`mpp.stores.pg._base.release_as_is`).

    It does what :class:`mpp.ledger.book.SqliteBook` does, with the same outcomes: False when the
    challenge was claimed before (nothing written); a refusal for who pays rolls everything back (the
    challenge stays unconsumed); a refusal for money commits the record ``failed`` and raises the
    LedgerError with ``consumed = True``. The mandate chain is not verified again in there: the seller
    verified it in this process and passes its DIDs and links (:class:`mpp.ledger.book.VerifiedMandate`);
    the function checks what only the ledger knows (owner, denied keys, revocations, balance, budgets)
    under the ledger's locks, in the ledger's order (:mod:`mpp.ledger.pg`), so budgets hold across
    sellers and a challenge pays once across processes.

    Which stores are "in the ledger's database" is decided before anything is open
    (:meth:`PgPurchaseBook.fits`): built on the one asyncpg pool, or from the same ``postgresql://``
    URL text. Anything else (another database, or the same one spelt another way) keeps the
    several-step path, which is correct, only slower.
    """

    def __init__(self, ledger: PgLedger, payments: PgPaymentStore, audit: PgAuditLog | None = None) -> None:
        if not self.fits(ledger, payments, audit):
            raise ValueError("the payment store and the audit log must be kept in the ledger's database "
                             "(the same pool, or the same postgresql:// URL)")
        self._ledger, self._payments, self._audit = ledger, payments, audit
        self.audit = audit is not None
        self._opened = False

    @staticmethod
    def fits(ledger: Any, payments: Any, audit: Any) -> bool:
        """Whether these three can be one book: a PgLedger, a PgPaymentStore and a PgAuditLog (or
        none) in one database (see the class docstring)."""
        return (isinstance(ledger, PgLedger) and isinstance(payments, PgPaymentStore) and ledger.same_database(payments)
                and (audit is None or (isinstance(audit, PgAuditLog) and ledger.same_database(audit))))

    async def purchase(self, p: Purchase) -> bool:
        """Claim, pay and record ``p`` in one call. False if the challenge was claimed before
        (nothing written); a LedgerError if the ledger refuses, with ``consumed = True`` set on it
        when the refusal is for money and the challenge stays used (its record ``failed``)."""
        if not isinstance(p.amount, int) or isinstance(p.amount, bool) or p.amount <= 0:
            raise ValueError("amount must be a positive integer in base units")
        kinds, stamps, texts = self._entries(p.audit)
        mandate = p.mandate
        links = mandate.links if mandate is not None else ()
        status, detail = await self._call(
            _CALL_PURCHASE, p.challenge_id, p.resource, p.idempotency_key, p.payer, p.payee, p.amount, p.currency, p.signer,
            _when(p.settled_at), p.receipt, lock_key("transfer", p.challenge_id),
            list(mandate.dids) if mandate is not None else None,
            [link.key for link in links], [link.period for link in links], [link.budget for link in links],
            [link.currency for link in links], [link.ceiling for link in links],
            [lock_key("link", f"{link.key}\n{link.period}") for link in links],  # as PgBook.spend_budgets locks them
            p.approval, kinds, stamps, texts,
        )
        if status == "settled":
            return True
        if status == "claimed":
            return False
        if status not in _MONEY:
            raise AssertionError(f"{PURCHASE} answered {status!r}")
        error = _REFUSALS[status](detail)
        error.consumed = True  # type: ignore[attr-defined]  # the payer was accepted: it has shown who it is
        raise error

    async def refund(self, challenge_id: str, why: str, audit: Entries = ()) -> None:
        """Undo a purchase the seller could not deliver, in one call: the money back
        (``refund:<id>``), the mandate budgets given back at the ledger and the seller, the record
        ``refunded``, the audit entries appended. Idempotent: a purchase refunded already is left alone."""
        kinds, stamps, texts = self._entries(audit)
        await self._call(_CALL_REFUND, challenge_id, why, now(), kinds, stamps, texts)

    def _entries(self, entries: Entries) -> tuple[list[str], list[str], list[str]]:
        """The audit entries as the function appends them: kind, timestamp and data as RFC 8785
        text (what the hash is computed over: mpp.stores.audit.prepare_entry)."""
        kinds: list[str] = []
        stamps: list[str] = []
        texts: list[str] = []
        if self.audit:
            for kind, data in entries:
                ts, stored, _ = prepare_entry(kind, data)
                kinds.append(kind)
                stamps.append(ts)
                texts.append(stored)
        return kinds, stamps, texts

    async def _call(self, query: str, *args: Any) -> asyncpg.Record:
        if not self._opened:  # the stores' tables made (each open is idempotent)
            await self._payments.open()
            if self._audit is not None:
                await self._audit.open()
            self._opened = True
        pool = await self._ledger.pool()
        for attempt in range(_ATTEMPTS):
            try:
                return await pool.fetchrow(query, *args)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == REFUSED:
                    raise _refusal(exc) from None
                if exc.sqlstate == CHAIN_BROKEN:
                    last_seq, last_hash, head_seq, head_hash = json.loads(getattr(exc, "detail", None) or "[]")
                    raise tail_problem(None if last_seq is None else (last_seq, last_hash),
                                       None if head_seq is None else (head_seq, head_hash)) from None
                if not isinstance(exc, _RETRY) or attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")


def _refusal(exc: asyncpg.PostgresError) -> LedgerError:
    kind, _, rule = (getattr(exc, "hint", None) or "").partition(":")
    detail = getattr(exc, "message", None) or str(exc)
    if kind == "OverMandate":
        return OverMandate(detail, rule=rule or "ceiling")
    return _REFUSALS.get(kind, LedgerError)(detail)


def _when(rfc3339: str) -> datetime:
    """The receipt's time (RFC 3339 to the second, UTC) as the transfer's and the record's."""
    return datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
