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

    async def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` on the asset account ``account_id`` as ``owner``, ``agent`` (spends only under
        a mandate chain) or ``denied``, replacing any role it had, in one transaction ordered with the
        account's transfers (LEDGER-ACCT-02). UnknownAccount; ValueError for another DID form or role,
        for the ledger's own accounts, or for a change that would leave the account without an owner."""

    async def deny(self, account_id: str, did: str) -> None:
        """Give ``did`` the role ``denied``: from now on it spends nothing from the account, on its own
        signature or in any mandate chain. Refusals as :meth:`allow` (ValueError for its only owner)."""

    async def members(self, account_id: str) -> dict[str, str]:
        """Role by DID (``owner``, ``agent`` or ``denied``) of every member of the account, sorted by
        DID. UnknownAccount if there is no such account."""

    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """Nothing if the ledger would let ``signer`` spend from ``payer`` on its own signature
        (``chain`` None) or under a verified mandate chain of these DIDs (principal first, signer last);
        else it raises what the transfer would: UnknownAccount, MandateRequired or UnauthorizedSigner.
        What a seller asks before it consumes a challenge (LEDGER-ACCT-05); it records nothing, and the
        transfer checks again, with the chain's signatures."""

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Verify ``revocation_token`` (signed by the issuer or the principal of ``mandate_token``) and
        record it; returns the revoked mandate's key (``<iss>#<jti>``). Every later transfer, open or
        top-up under a chain holding that link is refused (MandateRevokedError); recording it again
        changes nothing. MandateInvalid (mpp.identity) if the revocation does not verify."""

    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        """Those of ``jtis`` (mandate keys, ``<iss>#<jti>``) that are revoked on this ledger; an empty
        set if none is. What a seller asks before it consumes a challenge under a chain
        (IDENT-REV-03)."""

    async def mandate_spent(self, jti: str, period: str) -> int:
        """What the mandate link ``jti`` (its key, ``<iss>#<jti>``) has counted against its budget in
        ``period`` (``total``, or a day, ISO week or month key such as ``2025-01-31``, ``2025-W05``,
        ``2025-01``), in base units, across every seller: charges and session holds, less refunds and
        what session closes released; 0 if nothing was counted."""


@runtime_checkable
class AsyncLedgerSessions(Protocol):
    """``ledger.sessions``: caps held on the ledger, captured and released at close."""

    async def open(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                   mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` (base units) from ``payer`` for the session ``terms.session_id`` (transfer
        ``hold:<id>`` to ``holds:<currency>``) in one transaction, once (SESSION-LEDGER-01). The ledger
        verifies ``cap_signature`` by ``signer`` itself (CapSignatureInvalid); with ``mandate`` the
        whole cap counts against every link's budget until close. Repeating the open returns the session
        as it is now; other terms under the id raise TransferConflict.

        Otherwise refused as :meth:`AsyncLedger.transfer` is, for who pays and for money; UnknownAccount
        for terms naming another ledger, or payer and payee that are one account; ValueError for a
        session id that is empty or contains ``:``."""

    async def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` (a new total, in base units), holding the increase
        (transfer ``hold:<id>:<cap>``) within the payer's balance and the mandate's budgets
        (SESSION-LEDGER-02); ``cap_signature`` is the session signer's over the new cap
        (CapSignatureInvalid). A cap at or below the current one moves nothing and returns the session
        as it is. UnknownSession, SessionNotOpen, InsufficientFunds, BudgetExhausted,
        MandateRevokedError."""

    async def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` (base units) for the payee (``capture:<id>``) and release the rest of the
        cap to the payer (``release:<id>``, given back to the mandate budgets), in one transaction
        (SESSION-LEDGER-03). A capture above zero needs ``voucher``, signed by the session's signer for
        at least that much, and may not exceed the cap (CaptureRefused). Closing again with the same
        capture returns the same record, with another raises TransferConflict. UnknownSession;
        ValueError for a negative capture."""

    async def get(self, session_id: str) -> SessionHold | None:
        """The session's hold as it is now (cap, captured, released, status), or None if no session has
        that id."""

    async def all(self) -> list[SessionHold]:
        """Every session this ledger has held, open or closed, oldest first."""


@runtime_checkable
class AsyncLedger(Protocol):
    """What the ledger service needs from a ledger: the money here, who may spend in ``keys``,
    sessions in ``sessions``. ``ledger_id`` is known after ``open()``."""

    ledger_id: str
    keys: AsyncLedgerKeys
    sessions: AsyncLedgerSessions

    async def open(self) -> None:
        """Make the ledger ready: connect, create its tables if missing and read ``ledger_id``.
        Idempotent; the ledger service awaits it at startup."""

    async def close(self) -> None:
        """Release the connection or pool the ledger opened itself (one it was given is the caller's to
        close)."""

    async def transfer(self, transfer_id: str, *, payer: str, payee: str, amount: int, currency: str, signer: str | None,
                       mandate: MandateCharge | None = None) -> Transfer:
        """Move ``amount`` (a positive integer of base units) from ``payer`` to ``payee`` as a
        ``charge`` under ``transfer_id``, in one transaction, once: the same call again returns the
        first transfer; other terms, or an id voided before, raise TransferConflict (LEDGER-12,
        LEDGER-SVC-06).

        ``signer`` must own ``payer`` or, with ``mandate``, be the leaf of a chain rooted in an owner,
        whose revocations and budgets are checked in the same transaction (LEDGER-ACCT-03, IDENT-REV-04,
        IDENT-BUD-05); ``signer`` None without a mandate is an operator's transfer and checks no member.
        Refusals (nothing moved): UnknownPayee, UnknownAccount, WrongCurrency, UnauthorizedSigner,
        MandateRequired, OverMandate, MandateRevokedError, BudgetExhausted, InsufficientFunds;
        ValueError for an amount that is not a positive int."""

    async def refund(self, transfer_id: str) -> Transfer:
        """Reverse the transfer ``transfer_id`` once (LEDGER-15): ``refund:<id>`` moves its amount from
        payee back to payer, and the mandate budgets it counted are given back. Repeating returns the
        first refund. UnknownAccount if there is no such transfer; TransferConflict for a session's
        hold, capture or release. A payee whose balance no longer covers the amount is refused:
        InsufficientFunds on PostgreSQL, sqlite3.IntegrityError (the balance CHECK) on SQLite."""

    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Make sure no charge stands under ``transfer_id``: refund it if it was made (returns the
        refund), else record the id so that a transfer under it is refused from now on (None). A
        transfer under the id that is no charge, or with ``payee`` a charge to another payee, raises
        TransferConflict and is left alone."""

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer recorded under ``transfer_id``, or None (also for an id only voided)."""

    async def account(self, account_id: str) -> Account:
        """The account's currency, balance (base units) and kind. UnknownAccount if there is none."""

    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None,
                             exclusive: bool = False) -> Account:
        """An asset account in ``currency`` with balance 0. The same call again returns it unchanged,
        or with ``exclusive`` raises TransferConflict, as an account of another currency under the id
        does; with ``owner``, that DID is made one of its owners. ValueError for an id or currency of
        the wrong form (``issuance:`` and ``holds:`` are reserved) or an owner that is no Ed25519
        did:key."""

    async def transfers(self) -> list[Transfer]:
        """Every transfer on the ledger, of every kind, oldest first (unbounded: for inspection and
        tests)."""

    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` made in [since, until) (to the second, as they are
        stamped), oldest first; empty for an unknown account (LEDGER-SVC-11)."""


class AsyncSqliteKeys:
    """A SqliteLedger's ``keys`` behind :class:`AsyncLedgerKeys`, run inline."""

    def __init__(self, keys: SqliteKeys) -> None:
        self.sync = keys

    async def allow(self, account_id: str, did: str, role: str) -> None:
        """Enrol ``did`` on the account with ``role``, replacing any role it had
        (:meth:`SqliteKeys.allow`, run inline)."""
        self.sync.allow(account_id, did, role)

    async def deny(self, account_id: str, did: str) -> None:
        """Make ``did`` spend nothing from the account (:meth:`SqliteKeys.deny`, run inline)."""
        self.sync.deny(account_id, did)

    async def members(self, account_id: str) -> dict[str, str]:
        """Role by DID of every member of the account; UnknownAccount if there is none
        (:meth:`SqliteKeys.members`, run inline)."""
        return self.sync.members(account_id)

    async def spend_check(self, payer: str, *, signer: str, chain: tuple[str, ...] | None) -> None:
        """Raise what a transfer by ``signer`` from ``payer`` would get for who pays, else return
        (:meth:`SqliteKeys.spend_check`, run inline)."""
        self.sync.spend_check(payer, signer=signer, chain=chain)

    async def revoke(self, revocation_token: str, mandate_token: str) -> str:
        """Record a verified revocation; returns the revoked mandate's key (:meth:`SqliteKeys.revoke`,
        run inline)."""
        return self.sync.revoke(revocation_token, mandate_token)

    async def revoked(self, jtis: tuple[str, ...] | list[str]) -> set[str]:
        """Those of ``jtis`` that are revoked (:meth:`SqliteKeys.revoked`, run inline)."""
        return self.sync.revoked(jtis)

    async def mandate_spent(self, jti: str, period: str) -> int:
        """What the link ``jti`` has counted against its budget in ``period``, in base units
        (:meth:`SqliteKeys.mandate_spent`, run inline)."""
        return self.sync.mandate_spent(jti, period)


class AsyncSqliteSessions:
    """A SqliteLedger's ``sessions`` behind :class:`AsyncLedgerSessions`, run inline."""

    def __init__(self, sessions: SqliteSessions) -> None:
        self.sync = sessions

    async def open(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                   mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session, once (:meth:`SqliteSessions.open`, run
        inline)."""
        return self.sync.open(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature, mandate=mandate)

    async def top_up(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap``, holding the increase (:meth:`SqliteSessions.top_up`, run
        inline)."""
        return self.sync.top_up(session_id, cap=cap, cap_signature=cap_signature)

    async def close(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture ``capture`` for the payee and release the rest to the payer
        (:meth:`SqliteSessions.close`, run inline)."""
        return self.sync.close(session_id, capture=capture, voucher=voucher)

    async def get(self, session_id: str) -> SessionHold | None:
        """The session's hold as it is now, or None (:meth:`SqliteSessions.get`, run inline)."""
        return self.sync.get(session_id)

    async def all(self) -> list[SessionHold]:
        """Every session the ledger has held, oldest first (:meth:`SqliteSessions.all`, run inline)."""
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
        """Nothing to do: a SqliteLedger is ready once made."""
        return None

    async def close(self) -> None:
        """Close the wrapped SqliteLedger if this wrapper owns it (``owned=True``, as
        ``AsyncSqliteLedgerStore.at`` makes it); otherwise leave it open for its owner."""
        if self._owned:
            self.sync.close()

    async def transfer(self, transfer_id: str, *, payer: str, payee: str, amount: int, currency: str, signer: str | None,
                       mandate: MandateCharge | None = None) -> Transfer:
        """Move ``amount`` once under ``transfer_id`` (:meth:`SqliteLedger.transfer`, run inline)."""
        return self.sync.transfer(transfer_id, payer=payer, payee=payee, amount=amount, currency=currency, signer=signer,
                                  mandate=mandate)

    async def refund(self, transfer_id: str) -> Transfer:
        """Reverse the transfer once as ``refund:<id>`` (:meth:`SqliteLedger.refund`, run inline)."""
        return self.sync.refund(transfer_id)

    async def void(self, transfer_id: str, *, payee: str | None = None) -> Transfer | None:
        """Refund the charge under ``transfer_id`` or bar the id from now on (:meth:`SqliteLedger.void`,
        run inline)."""
        return self.sync.void(transfer_id, payee=payee)

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer under ``transfer_id``, or None (:meth:`SqliteLedger.get_transfer`, run
        inline)."""
        return self.sync.get_transfer(transfer_id)

    async def account(self, account_id: str) -> Account:
        """The account; UnknownAccount if there is none (:meth:`SqliteLedger.account`, run inline)."""
        return self.sync.account(account_id)

    async def create_account(self, account_id: str, currency: str, *, owner: str | None = None,
                             exclusive: bool = False) -> Account:
        """An asset account, made once (:meth:`SqliteLedger.create_account`, run inline)."""
        return self.sync.create_account(account_id, currency, owner=owner, exclusive=exclusive)

    async def transfers(self) -> list[Transfer]:
        """Every transfer, oldest first (:meth:`SqliteLedger.transfers`, run inline)."""
        return self.sync.transfers()

    async def transfers_of(self, account_id: str, since: datetime, until: datetime) -> list[Transfer]:
        """The transfers to or from ``account_id`` in [since, until), oldest first
        (:meth:`SqliteLedger.transfers_of`, run inline)."""
        return self.sync.transfers_of(account_id, since, until)


def as_async_ledger(ledger: SqliteLedger | AsyncLedger) -> AsyncLedger:
    """A SqliteLedger wrapped (not closed by the wrapper), or an async ledger as it is."""
    if isinstance(ledger, SqliteLedger):
        return AsyncSqliteLedger(ledger)
    return ledger
