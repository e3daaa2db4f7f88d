"""Payment methods. A method is two small objects, both sans-I/O here:

- a *seller* side that turns a price into a challenge ``request`` and checks a credential's
  ``payload`` offline (signatures, shapes); settlement itself is I/O and lives with the rail;
- a *buyer* side that turns an accepted challenge into a ``payload``.

A new rail (card processor, chain, x402 bridge) implements these two protocols and a settler,
without touching the core.
"""

from __future__ import annotations

from typing import Any, Protocol

from mpp.protocol.models import Challenge, ChargeRequest, Credential

__all__ = ["SellerMethod", "BuyerMethod"]


class SellerMethod(Protocol):
    """A payment method's seller side: the challenge ``request`` for a price, and the credential's
    ``payload`` checked offline."""

    name: str

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        """The decoded ``request`` of a charge challenge for this price."""

    def verify(self, credential: Credential, request: ChargeRequest) -> Any:
        """Check the payload offline; return what settlement needs. Raise VerificationFailed."""


class BuyerMethod(Protocol):
    """A payment method's buyer side: whether it can pay a challenge, and the ``payload`` that pays it."""

    name: str

    def can_pay(self, challenge: Challenge, request: ChargeRequest) -> str | None:
        """``None`` if this method can pay the challenge, else the reason it cannot."""

    def payload(self, challenge: Challenge, request: ChargeRequest) -> tuple[dict[str, Any], str | None]:
        """The credential ``payload`` and ``source`` for an accepted challenge."""
