"""The whole ledger behind one async interface, whatever the engine: what the ledger service needs
(:class:`mpp.ledger.api.AsyncLedger`) plus the administration and inspection the operator, the
CLI and the tests need (accounts and their members, funding, revocation, balances, invariants).

:class:`mpp.stores.pg.PgLedger` implements it natively; :class:`AsyncSqliteLedgerStore` wraps a
SqliteLedger. Choose one by URL with :func:`mpp.connect.ledger_for`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpp.ledger.api import AsyncLedger, AsyncSqliteLedger
from mpp.ledger.core import Account, SessionHold, Transfer
from mpp.ledger.sqlite import SqliteLedger

__all__ = ["AsyncLedgerStore", "AsyncSqliteLedgerStore"]


@runtime_checkable
class AsyncLedgerStore(AsyncLedger, Protocol):
    """Every SqliteLedger operation, as a coroutine, with the same meaning and refusals."""

    async def balance(self, account_id: str) -> int: ...
    async def accounts(self) -> list[Account]: ...
    async def total(self) -> int: ...
    async def fund(self, account_id: str, amount: int, *, reference: str | None = None) -> Transfer: ...
    async def revoke(self, revocation_token: str, mandate_token: str) -> str: ...
    async def mandate_spent(self, jti: str, period: str) -> int: ...
    async def transfers(self) -> list[Transfer]: ...
    async def sessions(self) -> list[SessionHold]: ...
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

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        return self.sync.revoke(revocation_token, mandate_token)

    async def mandate_spent(self, jti: str, period: str) -> int:
        return self.sync.mandate_spent(jti, period)

    async def sessions(self) -> list[SessionHold]:
        return self.sync.sessions()

    async def check(self) -> list[str]:
        return self.sync.check()
