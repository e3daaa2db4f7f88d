"""The whole ledger behind one async interface, whatever the engine: what the ledger service needs
(:class:`mpp.ledger.api.AsyncLedger`, with its ``keys`` and ``sessions``) plus the administration
and inspection the operator, the CLI and the tests need (accounts, funding, balances, invariants).

:class:`mpp.stores.pg.PgLedger` implements it natively; :class:`AsyncSqliteLedgerStore` wraps a
SqliteLedger. Choose one by URL with :func:`mpp.connect.ledger_for`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpp.ledger.api import AsyncLedger, AsyncSqliteLedger
from mpp.ledger.core import Account, Transfer
from mpp.ledger.sqlite import SqliteLedger

__all__ = ["AsyncLedgerStore", "AsyncSqliteLedgerStore"]


@runtime_checkable
class AsyncLedgerStore(AsyncLedger, Protocol):
    """Every SqliteLedger operation, as a coroutine, with the same meaning and refusals; those of
    its ``keys`` and ``sessions`` facets are on :class:`mpp.ledger.api.AsyncLedgerKeys` and
    :class:`mpp.ledger.api.AsyncLedgerSessions`."""

    async def balance(self, account_id: str) -> int:
        """The account's balance in base units. UnknownAccount if there is none."""

    async def accounts(self) -> list[Account]:
        """Every account, the ledger's own (``issuance:<currency>``, ``holds:<currency>``) included,
        ordered by id."""

    async def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt."""

    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` with ``amount`` (base units) from its currency's issuance account:
        prepaid credit, a ``fund`` transfer under ``reference`` (by default a new ``fund-<hex>``). The
        same reference again returns the first funding; with other terms it raises TransferConflict.
        UnknownAccount; ValueError for a holding account or an amount that is not a positive int."""

    async def check(self) -> list[str]:
        """The broken invariants, one line each (empty when the ledger is sound): each transfer's
        postings sum to zero, each balance equals its postings, each holding account holds its
        currency's open session caps, each mandate link's running total equals its spend rows."""


class AsyncSqliteLedgerStore(AsyncSqliteLedger):
    """A SqliteLedger behind :class:`AsyncLedgerStore`; each call runs inline on the event loop's
    thread (one short IMMEDIATE transaction), as in AsyncSqliteLedger."""

    @classmethod
    def at(cls, location: str) -> "AsyncSqliteLedgerStore":
        """A ledger of its own on ``location`` (a path or ``sqlite:`` URL), closed with the wrapper."""
        return cls(SqliteLedger(location), owned=True)

    async def balance(self, account_id: str) -> int:
        """The account's balance in base units; UnknownAccount if there is none
        (:meth:`SqliteLedger.balance`, run inline)."""
        return self.sync.balance(account_id)

    async def accounts(self) -> list[Account]:
        """Every account, the ledger's own included, by id (:meth:`SqliteLedger.accounts`, run
        inline)."""
        return self.sync.accounts()

    async def total(self) -> int:
        """Sum of every balance; zero unless the ledger is corrupt (:meth:`SqliteLedger.total`, run
        inline)."""
        return self.sync.total()

    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        """Credit ``account_id`` from its currency's issuance account, once per ``reference``
        (:meth:`SqliteLedger.fund`, run inline)."""
        return self.sync.fund(account_id, amount, reference=reference)

    async def check(self) -> list[str]:
        """The broken invariants, one line each; empty when sound (:meth:`SqliteLedger.check`, run
        inline)."""
        return self.sync.check()
