"""What the engine asks of a payment rail: settle once, refund, say what it would refuse."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Protocol

from mpp.engine.core import Verified
from mpp.ledger import MandateCharge
from mpp.methods import SellerMethod

__all__ = ["Settlement", "PaymentRail"]


@dataclass(frozen=True)
class Settlement:
    """A payment made: the rail's reference, when, and the account that paid; ``receipt_members`` are
    the method's own members of the receipt (``evm``: ``chainId``, as draft-evm-charge-00's receipt
    has it), carried in the ``Payment-Receipt`` field and the signed claims alike, never in place of a
    member the receipt already has."""

    reference: str
    settled_at: datetime
    payer: str | None = None
    receipt_members: Mapping[str, Any] = field(default_factory=dict, hash=False)


class PaymentRail(SellerMethod, Protocol):
    """A seller's payment method that moves money (mpp.aio.rails has the ``ledger`` ones)."""

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Move the money, at most once per challenge id; with ``mandate``, within its budgets
        and only if no link is revoked. Raise a PaymentProblem to refuse."""

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandate ids the rail knows to be revoked."""

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        """Before the challenge is consumed: raise a PaymentProblem if the rail already knows that
        settlement would be refused for who is paying (the payer and signer of ``verified``, bare
        or under a verified mandate chain of these DIDs, principal first), so that the buyer can
        put it right and retry the same challenge."""

    async def refund(self, settlement: Settlement) -> None:
        """Give the money back (the seller could not deliver). Idempotent."""
