"""Ledger records and refusals, shared by every ledger backend."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MPPError

__all__ = ["MandateCharge", "MandateRevokedError", "BudgetExhausted", "Account", "Transfer", "LedgerError", "InsufficientFunds", "UnknownAccount", "UnauthorizedSigner", "TransferConflict", "issuance_account"]


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
