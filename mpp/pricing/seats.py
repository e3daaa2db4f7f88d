"""The seat model (PRICE-SEAT-*): one charge per period of a plan, the agent's subscription, the periods
paid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from mpp.protocol.wire import b64url_encode
from mpp.pricing.offers import Offer
from mpp.pricing.periods import DEFAULT_ANCHOR, _rfc3339, period_bounds, period_index
from mpp.pricing.problems import SeatAlreadyPaid
from mpp.pricing.routes import _route_matches

__all__ = [
    "SUBSCRIPTION_ID_HEADER",
    "SUBSCRIPTION_DOMAIN",
    "SeatOffer",
    "subscription_id",
    "SeatRecords",
]

SUBSCRIPTION_ID_HEADER = "Subscription-Id"
"""The response header naming the subscription a seat purchase opened."""
SUBSCRIPTION_DOMAIN = b"mpp-subscription-v1\n"
"""Domain separation prefix of a subscription id's derivation."""


@dataclass(frozen=True)
class SeatOffer(Offer):
    """A charge per period of a plan, covering its routes for the agent until the period ends."""

    model: ClassVar[str] = "seat"
    plan: str = ""
    period_unit: str = "month"
    period_count: int = 1
    anchor: datetime = DEFAULT_ANCHOR
    covers: tuple[str, ...] = ()  # own route first

    def period_index(self, now: datetime) -> int:
        """The index of the period holding ``now``, counted from ``anchor`` (PRICE-SEAT-02); negative before
        the anchor. ValueError for a naive ``now``."""
        return period_index(self.anchor, now, self.period_unit, self.period_count)

    def period_bounds(self, index: int) -> tuple[datetime, datetime]:
        """[start, end) of period ``index``, as UTC datetimes (PRICE-SEAT-02)."""
        return period_bounds(self.anchor, index, self.period_unit, self.period_count)

    def covers_request(self, method: str, path: str) -> bool:
        """Does one of the routes the seat covers (``covers``) match this request?"""
        return any(_route_matches(r, method, path) is not None for r in self.covers)

    def subscription_request(self, now: datetime) -> dict[str, Any]:
        """The seat-specific members of the decoded ``request`` (spec/pricing.md §3.2), for the
        period in force at ``now``; the method adds amount, currency, recipient, methodDetails."""
        k = self.period_index(now)
        start, end = self.period_bounds(k)
        return {"periodUnit": self.period_unit, "periodCount": str(self.period_count),
                "periodSeconds": str(int((end - start).total_seconds())), "subscriptionExpires": _rfc3339(end),
                "pricing": self.pricing_member(now)}

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        doc = {**super().pricing_member(now), "plan": self.plan, "anchor": _rfc3339(self.anchor), "covers": list(self.covers)}
        if now is not None:
            k = self.period_index(now)
            start, end = self.period_bounds(k)
            doc.update(period=k, periodStart=_rfc3339(start), periodEnd=_rfc3339(end))
        return doc


def subscription_id(realm: str, plan: str, agent: str) -> str:
    """The agent's subscription to a plan at a seller: the same for every period (spec/pricing.md §3.2)."""
    digest = hashlib.sha256(SUBSCRIPTION_DOMAIN + f"{realm}\n{plan}\n{agent}".encode("utf-8")).digest()
    return "sub_" + b64url_encode(digest)[:22]


class SeatRecords:
    """The (subscription, period) pairs paid, in memory: the reference the seller's store follows
    (PRICE-SEAT-03). ``reserve`` before settling, ``release`` if settlement fails. The seller adds
    ``periodEnd`` and a fresh seat grant to the SeatAlreadyPaid it gets before answering."""

    def __init__(self) -> None:
        self._paid: dict[tuple[str, int], str] = {}

    def reserve(self, subscription: str, period: int, challenge_id: str) -> None:
        """Record the period for this challenge, or raise SeatAlreadyPaid (nothing is recorded)."""
        key = (subscription, period)
        if key in self._paid:
            raise SeatAlreadyPaid(f"period {period} of this subscription is already paid",
                                  subscriptionId=subscription, period=period)
        self._paid[key] = challenge_id

    def release(self, subscription: str, period: int, challenge_id: str) -> None:
        """Remove the period's record if ``challenge_id`` made it (its settlement failed, PRICE-SEAT-03); a
        record another challenge made is left alone."""
        if self._paid.get((subscription, period)) == challenge_id:
            del self._paid[(subscription, period)]

    def paid(self, subscription: str, period: int) -> bool:
        """Is the period recorded (paid, or being paid)?"""
        return (subscription, period) in self._paid
