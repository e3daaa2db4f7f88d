"""What a seller publishes about itself: its receipt keys (JWKS) and its priced routes (the
discovery draft's OpenAPI document with ``x-payment-info``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mpp.engine.http import HttpResponse
from mpp.engine.quotes import route_payment_info
from mpp.pricing.prices import Metered, Price
from mpp.protocol.keys import SigningKey
from mpp.protocol.receipts import jwks_document

if TYPE_CHECKING:
    from mpp.engine.shop import Shop

__all__ = ["JWKS_PATH", "OPENAPI_PATH", "jwks_response", "openapi_document"]

JWKS_PATH = "/.well-known/jwks.json"
"""Where the seller publishes its receipt-signing keys as a JWK Set (buyers verify receipts against it)."""
OPENAPI_PATH = "/openapi.json"
"""Where the seller publishes an OpenAPI document of its priced routes and their prices."""
_RESPONSES = {
    "200": {"description": "Paid response, with a Payment-Receipt header"},
    "402": {"description": "Payment Required"},
}


def jwks_response(keys: Sequence[SigningKey]) -> HttpResponse:
    """The receipt keys as a cacheable JWKS document."""
    return HttpResponse.json(200, jwks_document(list(keys)), [("Cache-Control", "public, max-age=300")])


def openapi_document(engine: "Shop", priced: Iterable[tuple[str, str, Price | Metered]]) -> dict[str, Any]:
    """Every route of the price list, then every other priced route (method, path, price)."""
    paths: dict[str, dict[str, Any]] = {}
    plist = engine.config.price_list
    now = engine.config.clock()
    for route in plist.routes if plist is not None else ():
        paths.setdefault(route.path, {})[route.method.lower()] = {
            "summary": route.description or route.route,
            "x-payment-info": {"priceList": plist.version, "offers": route_payment_info(engine.core, route, now)},
            "responses": _RESPONSES,
        }
    for method, path, price in priced:
        if plist is not None and plist.route_for(method, path) is not None:
            continue  # the list prices it
        paths.setdefault(path, {})[method.lower()] = {
            "summary": price.description or f"{method} {path}",
            "x-payment-info": {"offers": _offers(engine, price)},
            "responses": _RESPONSES,
        }
    return {"openapi": "3.1.0", "info": {"title": engine.config.title, "version": "1.0.0"}, "paths": paths}


def _offers(engine: "Shop", price: Price | Metered) -> list[dict[str, Any]]:
    charge = price.charge_price() if isinstance(price, Metered) else price
    offers = [
        {"intent": "charge", "method": name, "amount": str(charge.amount),
         "currency": engine.core.charge_request(name, charge)["currency"]}
        | ({"description": charge.description} if charge.description else {})
        for name in engine.core.quoting(charge.currency)
    ]
    if isinstance(price, Metered):
        offers = [
            {"intent": "session", "method": name, "amount": str(price.price), "currency": price.currency,
             "unitType": price.unit, "per": str(price.per), "maxUnits": str(price.max_units)}
            | ({"description": price.description} if price.description else {})
            for name, intent in engine.core.offers(price) if intent == "session"
        ] + offers
    return offers
