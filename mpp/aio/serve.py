"""Build a seller application from a configuration file (what `mpp seller serve` runs)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from aiohttp import web

from ..audit import AuditLog
from ..config import RouteConfig, SellerConfig, read_secret
from ..keys import SigningKey
from ..ledger import SqliteLedger
from ..store import SqlitePaymentStore
from .rails import EmbeddedLedgerRail
from .seller import Seller, payment_of

__all__ = ["build_seller_app", "HEADER_LIMITS"]

LEDGER_KEY = web.AppKey("mpp_ledger", SqliteLedger)
# Credentials may be large (a mandate chain and an approval ride in them): accept header
# fields up to 32 KiB instead of aiohttp's 8 KiB. Pass to web.AppRunner(app, **HEADER_LIMITS).
HEADER_LIMITS = {"max_field_size": 32768, "max_line_size": 32768}


def _handler_for(route: RouteConfig):
    async def handler(request: web.Request) -> web.Response:
        payment = payment_of(request)
        if route.response is not None:
            result = route.response
        else:
            body = await request.read()
            text = body.decode("utf-8", errors="replace")
            result = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "summary": text[:80]}
        paid = None
        if payment is not None:
            paid = {"challengeId": payment.verified.challenge_id, "amount": payment.verified.request.amount,
                    "currency": payment.verified.request.currency, "payer": payment.payer}
        return web.json_response({"resource": f"{request.method} {request.path_qs}", "result": result, "paid": paid})

    return handler


def build_seller_app(config: SellerConfig) -> tuple[web.Application, Seller]:
    ledger = SqliteLedger(config.resolve(config.ledger))
    seller = Seller(
        realm=config.realm,
        secret=read_secret(config.resolve(config.secret_file)),
        receipt_key=SigningKey.load(config.resolve(config.receipt_key)),
        rails=[EmbeddedLedgerRail(ledger, recipient=config.recipient)],
        store=SqlitePaymentStore(config.resolve(config.store)),
        challenge_ttl=timedelta(seconds=config.challenge_ttl),
        trusted_principals=frozenset(config.trusted_principals),
        max_chain_depth=config.max_chain_depth,
        audit=AuditLog(config.resolve(config.audit_log)) if config.audit_log else None,
    )
    app = web.Application()
    app[LEDGER_KEY] = ledger
    for route in config.routes:
        seller.add_route(app.router, route.method, route.path, _handler_for(route), route.price)
    seller.setup(app)

    async def _close_ledger(app: web.Application):
        yield
        app[LEDGER_KEY].close()

    app.cleanup_ctx.append(_close_ledger)
    return app, seller
