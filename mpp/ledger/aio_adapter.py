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

    async def balance(self, account_id: str) -> int: ...
    async def accounts(self) -> list[Account]: ...
    async def total(self) -> int: ...
    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer: ...
    async def check(self) -> list[str]: ...


class AsyncSqliteLedgerStore(AsyncSqliteLedger):
    """A SqliteLedger behind :class:`AsyncLedgerStore`; each call runs inline on the event loop's
    thread (one short IMMEDIATE transaction), as in AsyncSqliteLedger."""

    @classmethod
    def at(cls, location: str) -> "AsyncSqliteLedgerStore":
        """A ledger of its own on ``location`` (a path or ``sqlite:`` URL), closed with the wrapper."""
        return cls(SqliteLedger(location), owned=True)

    async def balance(self, account_id: str) -> int:
        return self.sync.balance(account_id)

    async def accounts(self) -> list[Account]:
        return self.sync.accounts()

    async def total(self) -> int:
        return self.sync.total()

    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer:
        return self.sync.fund(account_id, amount, reference=reference)

    async def check(self) -> list[str]:
        return self.sync.check()
