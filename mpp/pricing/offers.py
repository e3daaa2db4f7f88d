"""Offers as the rest of the code sees them: the common part, and the transaction and unit models,
which are quoted as today's ``Price`` and ``Metered``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from mpp.intents.session import cost_of
from mpp.pricing.prices import Metered, Price

__all__ = [
    "Offer",
    "TransactionOffer",
    "UnitOffer",
]


@dataclass(frozen=True)
class Offer:
    """One offer of one route. ``route`` is its route string, ``price_list`` the list's version."""

    model: ClassVar[str]
    id: str
    route: str
    price_list: str
    amount: int
    currency: str
    description: str | None

    def to_price(self, *, require_identity: bool = False) -> Price:
        """The per-request charge this offer is quoted as (transaction, task; seat: one period)."""
        return Price(self.amount, self.currency, self.description, require_identity)

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        """The ``pricing`` member of the challenge request and of x-payment-info (PRICE-MODEL-04)."""
        return {"priceList": self.price_list, "offer": self.id, "model": self.model}


@dataclass(frozen=True)
class TransactionOffer(Offer):
    """A charge per request."""

    model: ClassVar[str] = "transaction"


@dataclass(frozen=True)
class UnitOffer(Offer):
    """A price per ``per`` units of usage, paid through a session; at most ``max_units`` a request."""

    model: ClassVar[str] = "unit"
    unit: str = "unit"
    per: int = 1
    max_units: int = 1
    stream: bool = False
    idle_timeout: int = 300
    suggested_cap: int | None = None

    def to_metered(self, *, require_identity: bool = False, charge_amount: int | None = None) -> Metered:
        """Today's ``Metered``; ``charge_amount`` is the route's transaction offer, if any (PRICE-MODEL-02)."""
        return Metered(self.unit, self.amount, self.currency, self.per, self.max_units, self.description,
                       require_identity, self.stream, self.suggested_cap, self.idle_timeout, charge_amount)

    def cost(self, units: int) -> int:
        """What ``units`` cost under this offer, rounded up to a whole base unit (SESSION-REQ-03)."""
        return cost_of(units, self.amount, self.per)
