"""Ledger records and refusals, shared by every ledger backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import MPPError

__all__ = ["MandateCharge", "MandateRevokedError", "BudgetExhausted", "Account", "Transfer", "LedgerError", "InsufficientFunds", "UnknownAccount", "UnauthorizedSigner", "TransferConflict", "issuance_account",
           "holding_account", "SessionHold", "SessionClose", "UnknownSession", "SessionNotOpen", "CapSignatureInvalid", "CaptureRefused",
           "AuthorizationInvalid"]


def issuance_account(currency: str) -> str:
    """Where value enters the ledger: funding debits it, so it runs negative by what was issued."""
    return f"issuance:{currency}"


def holding_account(currency: str) -> str:
    """Where session caps wait between open and close: its balance is the sum of open sessions' caps."""
    return f"holds:{currency}"


@dataclass(frozen=True)
class Account:
    id: str
    currency: str
    balance: int
    kind: str  # "asset" (may not go below zero) or "issuance"


@dataclass(frozen=True)
class Transfer:
    id: str
    payer: str
    payee: str
    amount: int
    currency: str
    kind: str  # "charge", "fund", "refund"; sessions: "hold", "capture", "release"
    created_at: str
    signer: str | None = None


class LedgerError(MPPError):
    """The ledger refused an operation; nothing was changed."""


class UnknownAccount(LedgerError):
    pass


class InsufficientFunds(LedgerError):
    pass


class UnauthorizedSigner(LedgerError):
    """The key that signed the authorization may not spend from the payer account."""


class MandateRevokedError(LedgerError):
    """A link of the mandate chain has been revoked."""


class BudgetExhausted(LedgerError):
    """The transfer would take a mandate past its budget for the period."""


@dataclass(frozen=True)
class MandateCharge:
    """The mandate chain a transfer is made under, and the realm it was quoted in. The ledger
    verifies the chain itself (trusting the payer account's owner) and takes the budgets from
    the verified links, never from figures a seller supplies."""

    tokens: tuple[str, ...]
    realm: str


class TransferConflict(LedgerError):
    """A transfer with this id exists with different terms: never move money twice under one id."""


@dataclass(frozen=True)
class SessionHold:
    """A session's hold on the payer's account: ``cap`` is held from open until close, when
    ``captured`` went to the payee and ``released`` back to the payer (their sum is the cap)."""

    session_id: str
    payer: str
    payee: str
    currency: str
    signer: str
    cap: int
    captured: int
    released: int
    status: str  # "open" or "closed"
    opened_at: str


@dataclass(frozen=True)
class SessionClose:
    """How a session ended: the transfers made at close (None where the amount was zero)."""

    session_id: str
    captured: int
    released: int
    capture_ref: str | None
    release_ref: str | None
    closed_at: str


class UnknownSession(LedgerError):
    """No session with that id was ever opened on this ledger."""


class SessionNotOpen(LedgerError):
    """The session is closed: nothing more may be held under it."""


class CapSignatureInvalid(LedgerError):
    """The cap signature does not verify for the session's signer, terms, account and cap."""


class CaptureRefused(LedgerError):
    """The seller asked to capture more than the cap or than a valid voucher allows (a seller bug)."""


class AuthorizationInvalid(LedgerError):
    """The agent's signed authorization does not verify for this transfer (a ledger service checks
    it itself, LEDGER-16), or does not match the terms it is presented with."""


def second_ceiling(when: datetime) -> datetime:
    """``when`` rounded up to a whole second: transfers are stamped to the second, so a stamp S is at
    or after ``when`` exactly when S is at or after this."""
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + timedelta(seconds=1)
