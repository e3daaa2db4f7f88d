"""The ledger as the standalone service calls it: an async interface, so that a ledger on a
networked database (PostgreSQL) can stand behind the service, and an adapter for SqliteLedger.

Every method has the meaning and the refusals (LedgerError subclasses) of the SqliteLedger
method of the same name (on the ledger, its ``keys`` or its ``sessions``); see there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from mpp.intents.session import SessionTerms, Voucher
from mpp.ledger import core
from mpp.ledger.core import Account, LedgerError, MandateCharge, SessionClose, SessionHold, Transfer
from mpp.ledger.sqlite import SqliteLedger
from mpp.ledger.sqlite_facets import SqliteKeys, SqliteSessions

__all__ = ["AsyncLedger", "AsyncLedgerKeys", "AsyncLedgerSessions", "AsyncSqliteLedger", "AsyncSqliteKeys", "AsyncSqliteSessions",
           "as_async_ledger", "LEDGER_ERRORS"]

LEDGER_ERRORS: dict[str, type[LedgerError]] = {
    cls.__name__: cls
    for cls in vars(core).values()
    if isinstance(cls, type) and issubclass(cls, LedgerError)
}
"""Every refusal a ledger may raise, by class name: the name is what travels on the wire."""


@runtime_checkable
class AsyncLedgerKeys(Protocol):
    """``ledger.keys``: who may spend from an account, the mandates revoked, what each link spent."""

    async def allow(self, account_id: str, did: str, role: str) -> None: ...
    async def deny(self, account_id: str, did: str) -> None: ...
    async def members(self, account_id: str) -> dict[str, str]: ...
    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None: ...
    async def revoke(self, revocation_token: str, mandate_token: str) -> str: ...
    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]: ...
    async def mandate_spent(self, jti: str, period: str) -> int: ...


@runtime_checkable
class AsyncLedgerSessions(Protocol):
    """``ledger.sessions``: caps held on the ledger, captured and released at close."""

    async def open(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                   mandate: MandateCharge | None = None) -> SessionHold: ...
    async def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold: ...
    async def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose: ...
    async def get(self, session_id: str) -> SessionHold | None: ...
    async def all(self) -> list[SessionHold]: ...


@runtime_checkable
class AsyncLedger(Protocol):
    """What the ledger service needs from a ledger: the money here, who may spend in ``keys``,
    sessions in ``sessions``. ``ledger_id`` is known after ``open()``."""

    ledger_id: str
    keys: AsyncLedgerKeys
    sessions: AsyncLedgerSessions

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def transfer(self, transfer_id: str, *, payer: str, payee: str, amount: int, currency: str, signer: str | None,
                       mandate: MandateCharge | None = None) -> Transfer: ...
    async def refund(self, transfer_id: str) -> Transfer: ...
    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None: ...
    async def get_transfer(self, transfer_id: str) -> Transfer | None: ...
    async def account(self, account_id: str) -> Account: ...
    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None,
                             exclusive: bool = False) -> Account: ...
    async def transfers(self) -> list[Transfer]: ...
    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]: ...


class AsyncSqliteKeys:
    """A SqliteLedger's ``keys`` behind :class:`AsyncLedgerKeys`, run inline."""

    def __init__(self, keys: SqliteKeys) -> None:
        self.sync = keys

    async def allow(self, account_id: str, did: str, role: str) -> None:
        self.sync.allow(account_id, did, role)

    async def deny(self, account_id: str, did: str) -> None:
        self.sync.deny(account_id, did)

    async def members(self, account_id: str) -> dict[str, str]:
        return self.sync.members(account_id)

    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        self.sync.spend_check(payer, signer=signer, chain=chain)

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        return self.sync.revoke(revocation_token, mandate_token)

    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        return self.sync.revoked(jtis)

    async def mandate_spent(self, jti: str, period: str) -> int:
        return self.sync.mandate_spent(jti, period)


class AsyncSqliteSessions:
    """A SqliteLedger's ``sessions`` behind :class:`AsyncLedgerSessions`, run inline."""

    def __init__(self, sessions: SqliteSessions) -> None:
        self.sync = sessions

    async def open(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                   mandate: MandateCharge | None = None) -> SessionHold:
        return self.sync.open(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature, mandate=mandate)

    async def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        return self.sync.top_up(session_id, cap=cap, cap_signature=cap_signature)

    async def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        return self.sync.close(session_id, capture=capture, voucher=voucher)

    async def get(self, session_id: str) -> SessionHold | None:
        return self.sync.get(session_id)

    async def all(self) -> list[SessionHold]:
        return self.sync.all()


class AsyncSqliteLedger:
    """SqliteLedger behind the async interface. Each call runs to completion on the event loop's
    thread, as the other SQLite stores here do: a ledger operation is one short IMMEDIATE
    transaction, and running them inline keeps them from interleaving on the one connection."""

    def __init__(self, ledger: SqliteLedger, *, owned: bool = False) -> None:
        self.sync = ledger
        self.ledger_id = ledger.ledger_id
        self.keys = AsyncSqliteKeys(ledger.keys)
        self.sessions = AsyncSqliteSessions(ledger.sessions)
        self._owned = owned

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        if self._owned:
            self.sync.close()

    async def transfer(self, transfer_id: str, *, payer: str, payee: str, amount: int, currency: str, signer: str | None,
                       mandate: MandateCharge | None = None) -> Transfer:
        return self.sync.transfer(transfer_id, payer=payer, payee=payee, amount=amount, currency=currency, signer=signer,
                                  mandate=mandate)

    async def refund(self, transfer_id: str) -> Transfer:
        return self.sync.refund(transfer_id)

    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        return self.sync.void(transfer_id, payee=payee)

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        return self.sync.get_transfer(transfer_id)

    async def account(self, account_id: str) -> Account:
        return self.sync.account(account_id)

    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None,
                             exclusive: bool = False) -> Account:
        return self.sync.create_account(account_id, currency, owner=owner, exclusive=exclusive)

    async def transfers(self) -> list[Transfer]:
        return self.sync.transfers()

    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        return self.sync.transfers_of(account_id, since, until)


def as_async_ledger(ledger: SqliteLedger | AsyncLedger) -> AsyncLedger:
    """A SqliteLedger wrapped (not closed by the wrapper), or an async ledger as it is."""
    if isinstance(ledger, SqliteLedger):
        return AsyncSqliteLedger(ledger)
    return ledger
