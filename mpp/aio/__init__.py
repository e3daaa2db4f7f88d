"""aiohttp adapters: the seller middleware and the buyer client. They carry bytes and await
stores and rails; every protocol decision is made by the sans-I/O core, the buyer's by the
framework-neutral buyer engine (:mod:`mpp.purchase`) that :class:`PaymentClient` wraps.

The buyer's errors are re-exported here (from :mod:`mpp.protocol.errors`), so a caller of
:class:`PaymentClient` catches them by cause without a second import: see :class:`BuyerError`."""

from mpp.aio.buyer import AiohttpExchange, CredentialResendBlocked, PaymentClient
from mpp.aio.rails import EmbeddedLedgerRail, HttpLedgerRail, LedgerUnavailable, PaymentRail, Settlement
from mpp.aio.seller import HEADER_LIMITS, PAYMENT_KEY, SELLER_KEY, Payment, Seller, TaskControl, grant_of, payment_of, start_task, task_of
from mpp.aio.seller import meter_of
from mpp.protocol.errors import (ApprovalNeeded, BudgetExceeded, BuyerError, NoPayableChallenge, OutcomeUnknown,
                                 PaymentFailed, PolicyRefused, QuoteRejected, ReceiptInvalid, SellerFault, SellerRefused,
                                 SellerUnreachable)
from mpp.purchase import AgentIdentity, OpenSession, PaidResponse, PaidStream, SessionManager, SessionPolicy, SSEEvent

__all__ = [
    "AgentIdentity",
    "AiohttpExchange",
    "ApprovalNeeded",
    "CredentialResendBlocked",
    "BudgetExceeded",
    "BuyerError",
    "NoPayableChallenge",
    "OutcomeUnknown",
    "PaymentFailed",
    "PolicyRefused",
    "QuoteRejected",
    "ReceiptInvalid",
    "SellerFault",
    "SellerRefused",
    "SellerUnreachable",
    "EmbeddedLedgerRail",
    "HEADER_LIMITS",
    "HttpLedgerRail",
    "LedgerUnavailable",
    "PAYMENT_KEY",
    "OpenSession",
    "PaidResponse",
    "PaidStream",
    "Payment",
    "PaymentClient",
    "PaymentRail",
    "SELLER_KEY",
    "Seller",
    "SessionManager",
    "SessionPolicy",
    "Settlement",
    "SSEEvent",
    "TaskControl",
    "grant_of",
    "meter_of",
    "payment_of",
    "start_task",
    "task_of",
]
