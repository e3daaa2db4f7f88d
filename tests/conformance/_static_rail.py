"""A trivial payment rail for tests: method ``test`` accepts exactly one fixed payload and
"settles" by naming a reference derived from the challenge id (so settling is idempotent by
id, as PaymentRail requires). No money exists anywhere. Reusable by any test that needs a
seller a `static:` payer can pay:

    app, seller = static_seller_app()          # GET /thing priced 7 usd, method "test"
    --pay-with 'static:{"token": "test"}'
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from mpp.aio.rails import Settlement
from mpp.aio.seller import Seller
from mpp.protocol.errors import VerificationFailed
from mpp.protocol.keys import SigningKey
from mpp.ledger import MandateCharge
from mpp.protocol.models import ChargeRequest, Credential
from mpp.engine.core import Verified
from mpp.pricing.prices import Price
from mpp.stores.payments import SqlitePaymentStore

__all__ = ["STATIC_METHOD", "STATIC_PAYLOAD", "StaticTestRail", "static_seller_app"]

STATIC_METHOD = "test"
STATIC_PAYLOAD = {"token": "test"}


class StaticTestRail:
    """Seller method + settlement: verify accepts only STATIC_PAYLOAD; settle moves nothing."""

    name = STATIC_METHOD

    def __init__(self, *, recipient: str = "test:seller", payload: dict[str, Any] | None = None) -> None:
        self.recipient = recipient
        self.payload = dict(STATIC_PAYLOAD if payload is None else payload)
        self.settled: dict[str, Settlement] = {}
        self.refunded: list[str] = []

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        request: dict[str, Any] = {"amount": str(amount), "currency": currency, "recipient": self.recipient}
        if description:
            request["description"] = description
        return request

    def verify(self, credential: Credential, request: ChargeRequest) -> dict[str, Any]:
        if credential.payload != self.payload:
            raise VerificationFailed("test payload does not match")
        return {"payer": credential.source or "test:payer"}

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        cid = verified.challenge_id
        if cid not in self.settled:
            reference = "test-" + hashlib.sha256(cid.encode()).hexdigest()[:24]
            self.settled[cid] = Settlement(reference, datetime.now(timezone.utc).replace(microsecond=0), verified.proof["payer"])
        return self.settled[cid]

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        return set()

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        return None  # a test method: no payer is known to be refused before settlement

    async def refund(self, settlement: Settlement) -> None:
        self.refunded.append(settlement.reference)


def static_seller_app(store_path: str = ":memory:", *, path: str = "/thing", method: str = "GET", amount: int = 7,
                      rail: StaticTestRail | None = None) -> tuple[web.Application, Seller]:
    """An aiohttp app selling one route through StaticTestRail only."""
    rail = rail or StaticTestRail()
    seller = Seller(realm="static.test", secret=secrets.token_bytes(32), receipt_key=SigningKey.generate(),
                    rails=[rail], store=SqlitePaymentStore(store_path))

    async def thing(request: web.Request) -> web.Response:
        return web.json_response({"thing": "paid for", "resource": f"{request.method} {request.path_qs}"})

    app = web.Application()
    seller.add_route(app.router, method, path, thing, Price(amount, "usd", "a test thing"))
    seller.setup(app)
    return app, seller
