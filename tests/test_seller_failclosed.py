"""Fail closed (issue 17, finding 1; CORE-ERR-14): a priced handler reached without the payment
middleware (``seller.setup(app)`` forgotten) refuses with a 503 ``seller-misconfigured`` problem,
never serves for free, and the seller logs the fix once."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import mpp
from mpp.aio import EmbeddedLedgerRail
from mpp.ledger import SqliteLedger
from mpp.stores.payments import SqlitePaymentStore

from _adapters import SELLERS, AsgiTestServer


def _seller(adapter: str, tmp_path: Path):
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    return SELLERS[adapter](realm="closed.test", secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                            rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                            store=SqlitePaymentStore(str(tmp_path / "p.db")))


def _aiohttp_app(seller, served: list[str]) -> web.Application:
    @seller.price(100, "usd", "a forecast")
    async def forecast(request):
        served.append("forecast")
        return web.json_response({"forecast": "sun"})

    async def report(request):
        served.append("report")
        return web.json_response({"report": "rain"})

    app = web.Application()
    app.router.add_get("/forecast", forecast)
    seller.add_route(app.router, "GET", "/report", report, mpp.Price(50, "usd"))
    return app  # no seller.setup(app): the mistake under test


def _asgi_app(seller, served: list[str]) -> Starlette:
    @seller.price(100, "usd", "a forecast")
    async def forecast(request):
        served.append("forecast")
        return PlainTextResponse("sun")

    @seller.price(100, "usd", "a report")
    def report(request):
        served.append("report")
        return PlainTextResponse("rain")

    return Starlette(routes=[Route("/forecast", forecast), Route("/report", report)])


@pytest.mark.parametrize("adapter", sorted(SELLERS))
async def test_priced_route_without_setup_refuses_and_logs_once(adapter: str, tmp_path: Path, caplog):
    """issue 17, finding 1: two requests to priced routes of an app without ``seller.setup(app)``
    answer 503 problems, run no handler body, and the log names ``seller.setup(app)`` once."""
    seller = _seller(adapter, tmp_path)
    served: list[str] = []
    if adapter == "asgi":
        server = AsgiTestServer(_asgi_app(seller, served))
    else:
        server = TestServer(_aiohttp_app(seller, served), host="127.0.0.1")
    await server.start_server()
    caplog.set_level(logging.ERROR, logger="mpp.seller")
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/forecast", "/report"):
                async with session.get(str(server.make_url(path))) as resp:
                    assert resp.status == 503
                    assert resp.headers["Content-Type"].startswith("application/problem+json")
                    assert resp.headers["Retry-After"]
                    problem = await resp.json(content_type=None)
                    assert problem["type"] == "urn:mpp:problem:seller-misconfigured"
                    assert "misconfigured" in problem["detail"] and "Traceback" not in problem["detail"]
    finally:
        await server.close()
    assert served == []
    lines = [r.getMessage() for r in caplog.records if "seller.setup(app)" in r.getMessage()]
    assert len(lines) == 1, lines


async def test_priced_route_with_setup_still_answers_402(tmp_path: Path):
    """issue 17, finding 1: the guard lets the middleware's own requests through (402, not 503)."""
    seller = _seller("aiohttp", tmp_path)
    served: list[str] = []
    app = _aiohttp_app(seller, served)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/forecast", "/report"):
                async with session.get(str(server.make_url(path))) as resp:
                    assert resp.status == 402
    finally:
        await server.close()
    assert served == []
