"""The reference rail: a double-entry ledger in integer base units.

Embedded by default (SQLite in WAL mode, in the seller's process). Every transfer is two
postings that sum to zero; value enters through an issuance account per currency, so the
sum of all balances is always zero.
"""

from .core import (
    BudgetExhausted,
    MandateCharge,
    MandateRevokedError,
    Account,
    InsufficientFunds,
    LedgerError,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
)
from .sqlite import SqliteLedger

__all__ = [
    "BudgetExhausted",
    "MandateCharge",
    "MandateRevokedError",
    "Account",
    "InsufficientFunds",
    "LedgerError",
    "SqliteLedger",
    "Transfer",
    "TransferConflict",
    "UnauthorizedSigner",
    "UnknownAccount",
]
