"""Rails: a seller-side method plus its settlement. Settlement is idempotent by challenge id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from ..errors import InvalidChallenge, PaymentInsufficient, VerificationFailed
from ..identity import BudgetExceeded, MandateRevoked
from ..ledger import (
    BudgetExhausted,
    InsufficientFunds,
    MandateCharge,
    MandateRevokedError,
    SqliteLedger,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
)
from ..methods import SellerMethod
from ..methods.ledger import LedgerAuthorization, LedgerSellerMethod
from ..seller_core import Verified

__all__ = ["Settlement", "PaymentRail", "EmbeddedLedgerRail"]


@dataclass(frozen=True)
class Settlement:
    reference: str
    settled_at: datetime
    payer: str | None = None


class PaymentRail(SellerMethod, Protocol):
    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Move the money, at most once per challenge id; with ``mandate``, within its budgets
        and only if no link is revoked. Raise a PaymentProblem to refuse."""

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandate ids the rail knows to be revoked."""

    async def refund(self, settlement: Settlement) -> None:
        """Give the money back (the seller could not deliver). Idempotent."""


class EmbeddedLedgerRail(LedgerSellerMethod):
    """The ``ledger`` method settled on a ledger in this process (SQLite)."""

    def __init__(self, ledger: SqliteLedger, *, recipient: str) -> None:
        super().__init__(recipient=recipient, ledger_id=ledger.ledger_id)
        self.ledger = ledger

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        auth: LedgerAuthorization = verified.proof
        try:
            transfer = self.ledger.transfer(
                verified.challenge_id,
                payer=auth.account,
                payee=auth.recipient,
                amount=auth.amount,
                currency=auth.currency,
                signer=auth.signer,
                mandate=mandate,
            )
        except MandateRevokedError as exc:
            raise MandateRevoked("a mandate in the chain has been revoked") from exc
        except BudgetExhausted as exc:
            raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
        except InsufficientFunds as exc:
            raise PaymentInsufficient("payer account balance is too low for this charge") from exc
        except (UnauthorizedSigner, UnknownAccount) as exc:
            raise VerificationFailed("signer may not spend from that account") from exc
        except TransferConflict as exc:
            raise InvalidChallenge("challenge id was already settled on other terms") from exc
        settled = datetime.strptime(transfer.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Settlement(reference=transfer.id, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        self.ledger.refund(settlement.reference)

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        return self.ledger.revoked(jtis)
