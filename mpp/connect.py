"""Choose a store's engine by its location: SQLite for ``sqlite:///path``, ``sqlite:relative``
or a plain path; PostgreSQL for ``postgresql://...`` (or ``postgres://...``).

    store = await open_payment_store("postgresql://seller@db/mpp")
    sessions = await open_session_store("sqlite:///var/lib/mpp/sessions.db")

    ledger = await open_ledger("postgresql://ledger@db/mpp")   # every ledger operation, async
    budget = await open_budget_store("postgresql://agent@db/mpp")   # the buyer's budget counters, async
    audit = await open_audit_log("sqlite:///var/lib/mpp/audit.db")   # the audit log, async

``payment_store_for`` / ``session_store_for`` / ``ledger_for`` / ``budget_store_for`` / ``audit_log_for``
(and ``doubt_journal_for``, ``evm_store_for`` beside a payment store) build the same stores synchronously (for code
that wires a seller before its event loop runs): a SQLite store is ready at once, a PostgreSQL
one makes its pool on ``await ensure_open(store)`` or on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mpp.stores.sqlite import sqlite_path
from mpp.stores.audit import AsyncAuditLog, AsyncSqliteAuditLog
from mpp.stores.budget import AsyncBudgetStore, AsyncSqliteBudgetStore
from mpp.stores.pricing import PricingStore, SqlitePricingStore
from mpp.stores.sessions import SessionStore, SqliteSessionStore
from mpp.stores.payments import PaymentStore, SqlitePaymentStore

if TYPE_CHECKING:
    from mpp.stores.doubt import DoubtJournal
    from mpp.stores.evm import EvmStore
    from mpp.ledger.aio_adapter import AsyncLedgerStore

__all__ = ["is_postgres", "check_location", "payment_store_for", "session_store_for", "open_payment_store",
           "open_session_store", "ensure_open", "ledger_for", "open_ledger", "budget_store_for", "open_budget_store",
           "audit_log_for", "open_audit_log", "doubt_journal_for", "evm_store_for", "pricing_store_for", "open_pricing_store"]


def is_postgres(location: str) -> bool:
    """Whether ``location`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return location.startswith(("postgresql://", "postgres://"))


def check_location(location: str) -> str:
    """``location`` unchanged if some store here can open it; ValueError naming it if not."""
    if not is_postgres(location):
        sqlite_path(location)  # ValueError for any other URL scheme
    return location


def payment_store_for(location: str, **kwargs: Any) -> PaymentStore:
    """The seller's payment store at ``location``: PostgreSQL (``kwargs``: pool sizes) or SQLite."""
    if is_postgres(location):
        from mpp.stores.pg import PgPaymentStore

        return PgPaymentStore(location, **kwargs)
    return SqlitePaymentStore(location)


def session_store_for(location: str, **kwargs: Any) -> SessionStore:
    """``kwargs``: ``instance_ttl`` for either engine; pool sizes for PostgreSQL."""
    if is_postgres(location):
        from mpp.stores.pg import PgSessionStore

        return PgSessionStore(location, **kwargs)
    return SqliteSessionStore(location, **kwargs)


async def ensure_open(store: Any) -> Any:
    """Open a store that opens asynchronously (PostgreSQL: pool and tables); others are open already."""
    opener = getattr(store, "open", None)
    if opener is not None:
        await opener()
    return store


def pricing_store_for(location: str, **kwargs: Any) -> PricingStore:
    """The seller's task states and paid seat periods (mpp.stores.pricing): PostgreSQL or SQLite."""
    if is_postgres(location):
        from mpp.stores.pg.pricing import PgPricingStore

        return PgPricingStore(location, **kwargs)
    return SqlitePricingStore(location)


async def open_pricing_store(location: str, **kwargs: Any) -> PricingStore:
    """:func:`pricing_store_for`, opened."""
    return await ensure_open(pricing_store_for(location, **kwargs))


async def open_payment_store(location: str, **kwargs: Any) -> PaymentStore:
    """:func:`payment_store_for`, opened."""
    return await ensure_open(payment_store_for(location, **kwargs))


async def open_session_store(location: str, **kwargs: Any) -> SessionStore:
    """:func:`session_store_for`, opened."""
    return await ensure_open(session_store_for(location, **kwargs))


def ledger_for(location: str, **kwargs: Any) -> "AsyncLedgerStore":
    """The ledger at ``location``, behind one async interface (mpp.ledger.aio_adapter.AsyncLedgerStore):
    :class:`mpp.stores.pg.PgLedger` for PostgreSQL (``kwargs``: pool sizes; it opens on ``await
    ensure_open(ledger)`` or first use, and knows its ``ledger_id`` from then), else a SqliteLedger
    wrapped (open at once; closed with the wrapper)."""
    if is_postgres(location):
        from mpp.ledger.pg import PgLedger

        return PgLedger(location, **kwargs)
    from mpp.ledger.aio_adapter import AsyncSqliteLedgerStore

    sqlite_path(location)  # ValueError for any other URL scheme
    return AsyncSqliteLedgerStore.at(location)


async def open_ledger(location: str, **kwargs: Any) -> "AsyncLedgerStore":
    """:func:`ledger_for`, opened."""
    return await ensure_open(ledger_for(location, **kwargs))


def budget_store_for(location: str, **kwargs: Any) -> AsyncBudgetStore:
    """The buyer's budget counters at ``location``, behind :class:`mpp.stores.budget.AsyncBudgetStore`:
    :class:`mpp.stores.pg.PgBudgetStore` for PostgreSQL, else a BudgetStore wrapped (closed with the
    wrapper). ``kwargs``: ``reservation_ttl`` for either engine; pool sizes for PostgreSQL."""
    if is_postgres(location):
        from mpp.stores.pg.budget import PgBudgetStore

        return PgBudgetStore(location, **kwargs)
    sqlite_path(location)  # ValueError for any other URL scheme
    return AsyncSqliteBudgetStore.at(location, **kwargs)


async def open_budget_store(location: str, **kwargs: Any) -> AsyncBudgetStore:
    """:func:`budget_store_for`, opened."""
    return await ensure_open(budget_store_for(location, **kwargs))


def audit_log_for(location: str, **kwargs: Any) -> AsyncAuditLog:
    """The audit log at ``location``, behind :class:`mpp.stores.audit.AsyncAuditLog`:
    :class:`mpp.stores.pg.PgAuditLog` for PostgreSQL (``kwargs``: pool sizes), else an AuditLog wrapped
    (closed with the wrapper)."""
    if is_postgres(location):
        from mpp.stores.pg.audit import PgAuditLog

        return PgAuditLog(location, **kwargs)
    sqlite_path(location)  # ValueError for any other URL scheme
    return AsyncSqliteAuditLog.at(location)


async def open_audit_log(location: str, **kwargs: Any) -> AsyncAuditLog:
    """:func:`audit_log_for`, opened."""
    return await ensure_open(audit_log_for(location, **kwargs))


def doubt_journal_for(location: str) -> "DoubtJournal":
    """The seller's in-doubt charges (mpp.stores.doubt) beside its payment store at ``location``."""
    if is_postgres(location):
        from mpp.stores.pg.doubt import PgDoubtJournal

        return PgDoubtJournal(location, max_size=2)
    from mpp.stores.doubt import SqliteDoubtJournal

    return SqliteDoubtJournal(location)


def evm_store_for(location: str) -> "EvmStore":
    """An ``evm`` seller's claims, pending transactions and refunds (mpp.stores.evm) beside its payment
    store at ``location``: PostgreSQL (opened on first use) or SQLite."""
    if is_postgres(location):
        from mpp.stores.pg.evm import PgEvmStore

        return PgEvmStore(location, max_size=4)
    from mpp.stores.evm import SqliteEvmStore

    return SqliteEvmStore(location)
