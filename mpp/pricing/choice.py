"""Which offers a mandate allows (PRICE-MDT-02) and which one a buyer takes (PRICE-BUY-01)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from mpp.protocol.errors import ParseError, clip
from mpp.intents.session import cost_of
from mpp.identity.restrictions import MODELS, MandateRestrictions
from mpp.pricing.problems import ModelNotAllowed, PricingProblem, UnitPriceTooHigh

__all__ = [
    "check_offer_allowed",
    "QuotedOffer",
    "quoted_offer",
    "expected_total",
    "choose_offer",
]


def _as_fraction(value: Fraction | int | tuple[int, int] | None) -> Fraction | None:
    if value is None or isinstance(value, Fraction):
        return value
    if isinstance(value, tuple):
        return Fraction(value[0], value[1])
    return Fraction(value)


def check_offer_allowed(offer: Any, restrictions: MandateRestrictions) -> None:
    """PRICE-MDT-02: raise ModelNotAllowed or UnitPriceTooHigh when the chain excludes the offer."""
    if restrictions.models is not None and offer.model not in restrictions.models:
        raise ModelNotAllowed(f"the mandate does not allow {offer.model!r} offers", model=offer.model)
    limit = restrictions.max_unit_price
    if limit is not None and offer.model == "unit" and offer.amount * limit.denominator > limit.numerator * offer.per:
        raise UnitPriceTooHigh(f"{offer.amount} per {offer.per} is above the mandate's unit price limit",
                               maxUnitPrice={"amount": limit.numerator, "per": limit.denominator})


@dataclass(frozen=True)
class QuotedOffer:
    """What a buyer knows of an offer from a challenge's decoded request."""

    model: str
    amount: int
    currency: str
    per: int = 1
    max_units: int = 1
    offer: str | None = None
    price_list: str | None = None


def quoted_offer(request: Mapping[str, Any], intent: str) -> QuotedOffer:
    """Read the offer a challenge quotes: ``pricing.model`` or, without it, the intent's model."""
    pricing = request.get("pricing") if isinstance(request.get("pricing"), dict) else {}
    default = {"session": "unit", "subscription": "seat"}.get(intent, "transaction")
    model = pricing.get("model", default)
    if model not in MODELS:
        raise ParseError(f"unknown pricing model {clip(model)!r}")
    amount = request.get("amount")
    if not isinstance(amount, str) or not re.fullmatch(r"0|[1-9][0-9]{0,18}", amount):
        raise ParseError("request amount is not a decimal string")
    details = request.get("methodDetails") if isinstance(request.get("methodDetails"), dict) else {}
    def positive(name: str) -> int:
        value = details.get(name, "1")
        if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]{0,18}", value):
            raise ParseError(f"methodDetails.{name} is not a positive decimal string")
        return int(value)
    per, max_units = (positive("per"), positive("maxUnits")) if model == "unit" else (1, 1)
    return QuotedOffer(model, int(amount), str(request.get("currency")), per, max_units,
                       pricing.get("offer"), pricing.get("priceList"))


def expected_total(offer: Any, *, planned_requests: int, planned_units: int | None = None,
                   planned_periods: int = 1) -> int:
    """What the planned work costs under this offer (spec/pricing.md §6)."""
    if offer.model == "unit":
        units = planned_units if planned_units is not None else planned_requests * offer.max_units
        return cost_of(units, offer.amount, offer.per)
    if offer.model == "seat":
        return planned_periods * offer.amount
    return planned_requests * offer.amount  # transaction; task: one charge per task started


def choose_offer(
    offers: Sequence[Any],
    *,
    planned_requests: int = 1,
    planned_units: int | None = None,
    allowed_models: Iterable[str] | None = None,
    max_unit_price: Fraction | int | tuple[int, int] | None = None,
    planned_periods: int = 1,
    currency: str | None = None,
) -> Any | None:
    """The allowed offer with the lowest expected total, ties to the earlier one; None if none is allowed.

    Offers of another currency than ``currency`` (default: the first offer's) are not compared.
    """
    restrictions = MandateRestrictions(frozenset(allowed_models) if allowed_models is not None else None,
                                       _as_fraction(max_unit_price))
    best, best_total = None, None
    currency = currency or (offers[0].currency if offers else None)
    for offer in offers:
        if offer.currency != currency:
            continue
        try:
            check_offer_allowed(offer, restrictions)
        except PricingProblem:
            continue
        total = expected_total(offer, planned_requests=planned_requests, planned_units=planned_units,
                               planned_periods=planned_periods)
        if best_total is None or total < best_total:
            best, best_total = offer, total
    return best
