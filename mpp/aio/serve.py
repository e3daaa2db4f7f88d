"""Build a seller application from a configuration file (what `mpp seller serve` runs)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from aiohttp import web

from ..config import RouteConfig, SellerConfig, read_secret
from ..keys import SigningKey
from ..ledger import SqliteLedger
from ..seller_core import Metered
from ..stores import audit_log_for, doubt_journal_for, ensure_open, is_postgres, ledger_for, payment_store_for, session_store_for
from .metering import StreamStopped, meter_of
from .rails import EmbeddedLedgerRail, HttpLedgerRail
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


def _metered_handler_for(route: RouteConfig, metered: Metered):
    """A stand-in metered service: it "uses" ``?units=N`` units (at most the route's max_units),
    or, streaming, sends ``?chunks=N`` chunks of that many units each."""

    def _int(request: web.Request, name: str, default: int, top: int) -> int:
        text = request.query.get(name, str(default))
        if not text.isdigit() or not 0 <= int(text) <= top:
            raise web.HTTPBadRequest(text=f"{name} must be an integer from 0 to {top}")
        return int(text)

    async def handler(request: web.Request) -> web.StreamResponse:
        meter = meter_of(request)
        if metered.stream:
            chunks = _int(request, "chunks", 5, 10_000)
            units = _int(request, "units", min(250, metered.max_units), metered.max_units)
            await meter.start(request)
            try:
                for i in range(chunks):
                    await meter.send(json.dumps({"chunk": i, "units": units}), units=units)
            except StreamStopped:  # the payment ran out and the buyer sent no more: end the stream cleanly
                assert meter.response is not None
                await meter.response.write_eof()
                return meter.response
            return await meter.finish()
        units = _int(request, "units", 1, metered.max_units)
        meter.report(units)
        result = route.response if route.response is not None else {"units": units, "unit": metered.unit}
        return web.json_response({"resource": f"{request.method} {request.path_qs}", "result": result})

    return handler


def _rail_for(config: SellerConfig) -> tuple[EmbeddedLedgerRail | HttpLedgerRail, SqliteLedger | None]:
    """The embedded ledger (``ledger = "path"``) or a ledger service (``ledger_url`` + ``ledger_key``)."""
    if config.ledger_url is not None:
        assert config.ledger_key is not None  # SellerConfig requires it with ledger_url
        key = SigningKey.load(config.resolve(config.ledger_key))
        journal = doubt_journal_for(config.locate(config.store))  # beside the payment records
        return HttpLedgerRail(config.ledger_url, key=key, recipient=config.recipient, journal=journal), None
    assert config.ledger is not None
    if is_postgres(config.ledger):  # a ledger database shared with other seller processes
        return EmbeddedLedgerRail(ledger_for(config.ledger), recipient=config.recipient), None
    ledger = SqliteLedger(config.locate(config.ledger))
    return EmbeddedLedgerRail(ledger, recipient=config.recipient), ledger


def build_seller_app(config: SellerConfig) -> tuple[web.Application, Seller]:
    rail, ledger = _rail_for(config)
    seller = Seller(
        realm=config.realm,
        secret=read_secret(config.resolve(config.secret_file)),
        receipt_key=SigningKey.load(config.resolve(config.receipt_key)),
        rails=[rail],
        store=payment_store_for(config.locate(config.store)),
        challenge_ttl=timedelta(seconds=config.challenge_ttl),
        trusted_principals=frozenset(config.trusted_principals),
        max_chain_depth=config.max_chain_depth,
        audit=audit_log_for(config.locate(config.audit_log)) if config.audit_log else None,
        session_store=session_store_for(config.sessions_location),
    )
    app = web.Application()
    if ledger is not None:
        app[LEDGER_KEY] = ledger
    else:  # PostgreSQL or a service: learn the ledger id before serving (a service: void in-doubt charges)
        app.cleanup_ctx.append(rail.lifecycle)

    async def _open_stores(app: web.Application):
        # PostgreSQL stores make their pools here, before anything uses them (the seller closes them)
        await ensure_open(seller.store)
        await ensure_open(seller.session_store)
        await ensure_open(seller.audit)
        yield
        if seller.audit is not None:  # made here, so closed here
            await seller.audit.close()

    app.cleanup_ctx.append(_open_stores)
    for route in config.routes:
        price = route.price
        handler = _metered_handler_for(route, price) if isinstance(price, Metered) else _handler_for(route)
        seller.add_route(app.router, route.method, route.path, handler, price)
    seller.setup(app)

    async def _close_ledger(app: web.Application):
        yield
        if LEDGER_KEY in app:
            app[LEDGER_KEY].close()

    app.cleanup_ctx.append(_close_ledger)
    return app, seller
