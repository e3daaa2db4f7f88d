"""Ledger records and refusals, shared by every ledger backend."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MPPError

__all__ = ["Account", "Transfer", "LedgerError", "InsufficientFunds", "UnknownAccount", "UnauthorizedSigner", "TransferConflict", "issuance_account"]


def issuance_account(currency: str) -> str:
    """Where value enters the ledger: funding debits it, so it runs negative by what was issued."""
    return f"issuance:{currency}"


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
    kind: str  # "charge", "fund", "refund"
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


class TransferConflict(LedgerError):
    """A transfer with this id exists with different terms: never move money twice under one id."""
