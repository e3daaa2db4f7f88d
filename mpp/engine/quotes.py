"""The seller's side of pricing as data, without I/O (spec/pricing.md): one challenge per offer,
the terms of a purchase read back from the HMAC-bound challenge, and what /openapi.json lists.

The aiohttp seller (mpp.aio.seller) asks this module what to quote and what a paid credential
bought; stores (task states, seat periods), grants on the wire and the clock stay with it.
Terms are always read from the challenge the buyer paid, never from the current price list,
so a quote issued before a reload is honoured as it was quoted (PRICE-VER-03).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from mpp.protocol.digest import content_digest
from mpp.protocol.errors import InvalidChallenge, clip
from mpp.protocol.models import Challenge
from mpp.pricing import (
    DEFAULT_ANCHOR,
    MODELS,
    Offer,
    Route,
    SeatOffer,
    TaskOffer,
    TransactionOffer,
    UnitOffer,
    period_bounds,
    subscription_id,
)
from mpp.engine.core import INTENT as CHARGE_INTENT, RequestInfo, SellerCore
from mpp.protocol.challenge import BODY_METHODS
from mpp.intents.session import INTENT as SESSION_INTENT

__all__ = ["SUBSCRIPTION_INTENT", "INTENT_OF_MODEL", "route_challenges", "route_payment_info", "QuotedTerms",
           "quoted_terms"]

SUBSCRIPTION_INTENT = "subscription"
"""The intent of a seat's challenge: one subscription period per agent (spec/pricing.md)."""
INTENT_OF_MODEL = {"transaction": CHARGE_INTENT, "unit": SESSION_INTENT, "task": CHARGE_INTENT, "seat": SUBSCRIPTION_INTENT}
"""The challenge intent each pricing model is quoted with: transaction and task a charge, unit a session,
seat a subscription."""


def _charge_offer_for_unit(route: Route, unit: UnitOffer) -> tuple[int, dict[str, Any]]:
    """PRICE-MODEL-02: the charge beside a session: the route's transaction offer, else cost(max_units)."""
    transaction = next((o for o in route.offers if isinstance(o, TransactionOffer)), None)
    if transaction is not None:
        return transaction.amount, transaction.pricing_member()
    return unit.cost(unit.max_units), unit.pricing_member()


def _quotes(core: SellerCore, route: Route, now: datetime,
            subscription: str | None) -> list[tuple[str, str, dict[str, Any], str | None, datetime | None]]:
    """(method, intent, decoded request, description, not_after) per offer, in the list's order."""
    unit = next((o for o in route.offers if isinstance(o, UnitOffer)), None)
    out: list[tuple[str, str, dict[str, Any], str | None, datetime | None]] = []
    for offer in route.offers:
        description = offer.description or route.description
        if isinstance(offer, TransactionOffer) and unit is not None:
            continue  # priced the unit offer's charge instead (PRICE-MODEL-02)
        for name in core.quoting(offer.currency):  # the methods that can quote the offer's currency
            method = core.methods[name]
            if isinstance(offer, UnitOffer):
                metered = offer.to_metered(require_identity=route.require_identity)
                if hasattr(method, "session_request_for"):
                    request = method.session_request_for(metered)  # type: ignore[attr-defined]
                    if description:
                        request["description"] = description
                    out.append((name, SESSION_INTENT, {**request, "pricing": offer.pricing_member()}, description, None))
                amount, pricing = _charge_offer_for_unit(route, offer)
                request = method.request_for(amount=amount, currency=offer.currency, description=description)
                out.append((name, CHARGE_INTENT, {**request, "pricing": pricing}, description, None))
            elif isinstance(offer, SeatOffer):
                request = method.request_for(amount=offer.amount, currency=offer.currency, description=description)
                seat = offer.subscription_request(now)
                if subscription is not None:
                    seat["subscriptionId"] = subscription
                k = offer.period_index(now)
                _, end = offer.period_bounds(k)
                out.append((name, SUBSCRIPTION_INTENT, {**request, **seat}, description, end - timedelta(seconds=1)))
            else:  # transaction, task: a charge of the offer's amount
                request = method.request_for(amount=offer.amount, currency=offer.currency, description=description)
                out.append((name, CHARGE_INTENT, {**request, "pricing": offer.pricing_member()}, description, None))
    return out


def route_challenges(core: SellerCore, route: Route, info: RequestInfo, now: datetime, *,
                     subscription: str | None = None) -> list[Challenge]:
    """PRICE-MODEL-03: fresh challenges for this request, one per offer (a unit offer adding its
    charge), in the list's order, reordered by Accept-Payment (CORE-NEG-02)."""
    digest = content_digest(info.body) if (info.body or info.method.upper() in BODY_METHODS) else None
    quotes = _quotes(core, route, now, subscription)
    order = core._negotiate(info.accept_payment, [(name, intent) for name, intent, *_ in quotes])
    chosen: list[int] = []
    for pair in order:  # offers sharing (method, intent) keep their relative order
        chosen.extend(i for i, q in enumerate(quotes) if (q[0], q[1]) == pair and i not in chosen)
    out = []
    for i in chosen:
        name, intent, request, description, not_after = quotes[i]
        out.append(core.issuer.issue(method=name, intent=intent, request=request, now=now, digest=digest,
                                     opaque={"nonce": secrets.token_urlsafe(16), "resource": info.resource},
                                     description=description, not_after=not_after))
    return out


def route_payment_info(core: SellerCore, route: Route, now: datetime) -> list[dict[str, Any]]:
    """CORE-DISC-02 x-payment-info offers of a price-list route: the same offers as its 402."""
    offers = []
    for name, intent, request, description, _ in _quotes(core, route, now, None):
        entry: dict[str, Any] = {"intent": intent, "method": name, "amount": request["amount"],
                                 "currency": request["currency"], "pricing": request["pricing"]}
        if intent == SESSION_INTENT:
            details = request.get("methodDetails", {})
            entry |= {"unitType": request["unitType"], "per": details.get("per", "1"), "maxUnits": details.get("maxUnits", "1")}
        if intent == SUBSCRIPTION_INTENT:
            entry |= {k: request[k] for k in ("periodUnit", "periodCount", "periodSeconds", "subscriptionExpires")}
        if description:
            entry["description"] = description
        offers.append(entry)
    return offers


@dataclass(frozen=True)
class QuotedTerms:
    """What a paid challenge bought, read from its HMAC-bound ``request`` (PRICE-VER-03)."""

    model: str
    offer_id: str | None
    price_list: str | None
    offer: Offer | None  # a TaskOffer or SeatOffer rebuilt from the quote; None for the others
    pricing: dict[str, Any]

    def receipt_claims(self) -> dict[str, Any]:
        """PRICE-VER-01: the version, the model and the offer in every receipt of a listed purchase."""
        if self.price_list is None:
            return {}
        return {"priceList": self.price_list, "model": self.model, "offer": self.offer_id}


def _int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise InvalidChallenge(f"quoted pricing.{name} is not an integer")


def _time(value: Any, name: str) -> datetime:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidChallenge(f"quoted pricing.{name} is not an RFC 3339 UTC time") from None


def quoted_terms(challenge: Challenge, request: Mapping[str, Any], route: str) -> QuotedTerms:
    """The terms of the purchase, from the challenge only. ``route`` is the route string of the
    request (for a seat, its own route; the grant covers the quoted ``covers``). A challenge we
    issued always parses; anything else means a bug or a forged secret (InvalidChallenge)."""
    pricing = request.get("pricing") if isinstance(request.get("pricing"), dict) else None
    default = {SESSION_INTENT: "unit", SUBSCRIPTION_INTENT: "seat"}.get(challenge.intent, "transaction")
    if pricing is None:
        if challenge.intent == SUBSCRIPTION_INTENT:
            raise InvalidChallenge("a subscription challenge without its pricing member")
        return QuotedTerms(default, None, None, None, {})
    model = pricing.get("model", default)
    if model not in MODELS:
        raise InvalidChallenge(f"quoted pricing model {clip(model)!r} is unknown")
    common = dict(id=str(pricing.get("offer")), route=route, price_list=str(pricing.get("priceList")),
                  amount=int(request["amount"]), currency=str(request["currency"]),
                  description=request.get("description"))
    offer: Offer | None = None
    if model == "task":
        follow_ups = pricing.get("followUps")
        if not isinstance(follow_ups, list) or not all(isinstance(f, str) for f in follow_ups) or not follow_ups:
            raise InvalidChallenge("quoted pricing.followUps is not an array of route strings")
        refund = pricing.get("refund")
        if refund not in ("full", "none"):
            raise InvalidChallenge("quoted pricing.refund is neither full nor none")
        offer = TaskOffer(**common, follow_ups=tuple(follow_ups), grant_ttl=_int(pricing.get("grantTtl"), "grantTtl"),
                          refund=refund)
    elif model == "seat":
        if challenge.intent != SUBSCRIPTION_INTENT:
            raise InvalidChallenge("a seat is quoted with the subscription intent")
        covers = pricing.get("covers")
        if not isinstance(covers, list) or not all(isinstance(c, str) for c in covers):
            raise InvalidChallenge("quoted pricing.covers is not an array of route strings")
        anchor = _time(pricing.get("anchor", "2001-01-01T00:00:00Z"), "anchor") if "anchor" in pricing else DEFAULT_ANCHOR
        offer = SeatOffer(**common, plan=str(pricing.get("plan")), period_unit=str(request.get("periodUnit")),
                          period_count=_int(request.get("periodCount"), "periodCount"), anchor=anchor,
                          covers=tuple(covers))
        period = _int(pricing.get("period"), "period")
        if offer.period_bounds(period)[1] != _time(pricing.get("periodEnd"), "periodEnd"):
            raise InvalidChallenge("quoted period does not match its bounds")
    return QuotedTerms(model, common["id"], common["price_list"], offer, dict(pricing))


def seat_subscription(realm: str, terms: QuotedTerms, agent: str) -> tuple[str, int, datetime, datetime]:
    """(subscription id, period index, period start, period end) of a quoted seat for this agent."""
    assert isinstance(terms.offer, SeatOffer)
    period = _int(terms.pricing.get("period"), "period")
    start, end = period_bounds(terms.offer.anchor, period, terms.offer.period_unit, terms.offer.period_count)
    return subscription_id(realm, terms.offer.plan, agent), period, start, end
