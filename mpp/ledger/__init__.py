"""The reference rail: a double-entry ledger in integer base units.

Embedded by default (SQLite in WAL mode, in the seller's process). Every transfer is two
postings that sum to zero; value enters through an issuance account per currency, so the
sum of all balances is always zero.
"""

from mpp.ledger.core import (
    AuthorizationInvalid,
    BudgetExhausted,
    CapSignatureInvalid,
    CaptureRefused,
    MandateCharge,
    MandateRequired,
    MandateRevokedError,
    OverMandate,
    Account,
    InsufficientFunds,
    LedgerError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    holding_account,
)
from mpp.ledger.sqlite import SqliteLedger

__all__ = [
    "AuthorizationInvalid",
    "BudgetExhausted",
    "CapSignatureInvalid",
    "CaptureRefused",
    "MandateCharge",
    "MandateRequired",
    "MandateRevokedError",
    "OverMandate",
    "Account",
    "InsufficientFunds",
    "LedgerError",
    "SessionClose",
    "SessionHold",
    "SessionNotOpen",
    "SqliteLedger",
    "Transfer",
    "TransferConflict",
    "UnauthorizedSigner",
    "UnknownAccount",
    "UnknownSession",
    "holding_account",
]
