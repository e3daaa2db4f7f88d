"""The seller middleware in-process, on both adapters (aiohttp; ASGI under uvicorn): handler
failures refund, streams get receipts, decorators price."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.routing import Route

import mpp
import mpp.asgi
from mpp.aio import EmbeddedLedgerRail, PaymentClient, Seller, payment_of
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.stores.payments import SqlitePaymentStore

from _adapters import ADAPTERS, SELLERS, AsgiTestServer


def _aiohttp_app(seller: Seller) -> web.Application:
    @seller.price(100, "usd", "crashes after payment")
    async def crash(request):
        raise RuntimeError("boom")

    @seller.price(100, "usd", "not found after payment")
    async def missing(request):
        raise web.HTTPNotFound()

    @seller.price(100, "usd", "streams")
    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(f"payer={payment_of(request).payer}".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/crash", crash)
    app.router.add_get("/missing", missing)
    app.router.add_get("/stream", stream)
    seller.setup(app)
    return app


def _asgi_app(seller: mpp.asgi.Seller) -> Starlette:
    @seller.price(100, "usd", "crashes after payment")
    async def crash(request):
        raise RuntimeError("boom")

    @seller.price(100, "usd", "not found after payment")
    async def missing(request):
        raise HTTPException(404)

    @seller.price(100, "usd", "streams")
    async def stream(request):
        async def body():
            yield f"payer={mpp.asgi.payment_of(request).payer}".encode()

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/crash", crash), Route("/missing", missing), Route("/stream", stream)])
    seller.setup(app)
    return app


@pytest.fixture(params=ADAPTERS)
async def stack(tmp_path: Path, request):
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account("acct:buyer", "usd")
    agent = mpp.SigningKey.generate()
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    ledger.fund("acct:buyer", 10_000)
    seller = SELLERS[request.param](realm="inproc.test", secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                                    store=SqlitePaymentStore(str(tmp_path / "p.db")))
    if request.param == "asgi":
        server = AsgiTestServer(_asgi_app(seller))
    else:
        server = TestServer(_aiohttp_app(seller), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        client = PaymentClient(session, [LedgerBuyerMethod(key=agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=1000))
        yield server, client, ledger
    await server.close()
    ledger.close()


async def test_handler_crash_after_settlement_refunds(stack):
    """CORE-ONCE-08, CHARGE-05: a handler that fails after settlement gets the payment refunded; no receipt."""
    server, client, ledger = stack
    with pytest.raises(mpp.OutcomeUnknown):
        await client.request("GET", str(server.make_url("/crash")))
    assert ledger.balance("acct:buyer") == 10_000 and ledger.balance("acct:seller") == 0
    assert [t.kind for t in ledger.transfers()] == ["fund", "charge", "refund"]


async def test_handler_error_status_refunds_and_has_no_receipt(stack):
    """CORE-RCPT-02, CORE-ONCE-08: no Payment-Receipt on an error; the charge is reversed."""
    server, client, ledger = stack
    with pytest.raises(mpp.PaymentFailed) as info:
        await client.request("GET", str(server.make_url("/missing")))
    assert info.value.status == 404
    assert ledger.balance("acct:buyer") == 10_000


async def test_streamed_response_carries_the_receipt(stack):
    """CORE-RCPT-01, CORE-RCPT-03: a prepared stream still gets Payment-Receipt and Cache-Control: private."""
    server, client, ledger = stack
    resp = await client.request("GET", str(server.make_url("/stream")))
    assert resp.status == 200 and resp.paid and resp.text() == "payer=acct:buyer"
    assert resp.headers["Cache-Control"].startswith("private")
    assert ledger.balance("acct:seller") == 100


def test_with_price_prices_a_copy():
    """One handler on two routes at two prices: with_price leaves the handler itself unpriced."""
    from mpp.engine.config import price_of, with_price
    from mpp.pricing.prices import Price

    async def handler(request):
        return request

    def sync_handler(request):
        return request

    cheap, dear = with_price(handler, Price(1, "usd")), with_price(handler, Price(9, "usd"))
    assert (price_of(cheap).amount, price_of(dear).amount, price_of(handler)) == (1, 9, None)
    assert with_price(handler, None) is handler
    assert with_price(sync_handler, Price(2, "usd"))("req") == "req"
    import asyncio
    assert asyncio.run(cheap("req")) == "req"
