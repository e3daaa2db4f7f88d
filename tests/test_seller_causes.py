"""One message per cause (issue 17, "one message, four causes"; CORE-ERR-14): a purchase refused
because (a) the payer account does not exist, (b) the payer account holds another currency,
(c) the seller's own recipient account is missing, (d) the seller runs on an empty (mistyped)
ledger. (a) and (b) are the buyer's: 402 ``verification-failed`` naming the account or currency.
(c) and (d) are the seller's: 503 ``seller-misconfigured`` with Retry-After, the fix in the
seller's log, no challenge consumed (the same credential pays once the seller is fixed), no
money moved. Both purchase paths: in one transaction (the book) and in several steps (precheck)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.stores.payments import SqlitePaymentStore

PAYER, RECIPIENT = "acct:buyer", "acct:seller"
POLICY = mpp.BuyerPolicy(max_amount=1000)
PATHS = ("book", "steps")


class Shop:
    """A seller of one 100 usd route on ``ledger``, its payment store in the ledger's file (the
    book) or in a file of its own (several steps), and a buyer's key."""

    def __init__(self, tmp_path: Path, ledger: SqliteLedger, path: str) -> None:
        self.ledger = ledger
        self.agent = mpp.SigningKey.generate()
        store = SqlitePaymentStore.beside(ledger) if path == "book" else SqlitePaymentStore(str(tmp_path / "p.db"))
        self.seller = Seller(realm="causes.test", secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                             rails=[EmbeddedLedgerRail(ledger, recipient=RECIPIENT)], store=store)

        @self.seller.price(100, "usd", "an item")
        async def item(request):
            return web.json_response({"item": 1})

        app = web.Application()
        app.router.add_get("/item", item)
        self.seller.setup(app)
        self.server = TestServer(app, host="127.0.0.1")

    async def credential(self, session: aiohttp.ClientSession, account: str = PAYER) -> str:
        async with session.get(str(self.server.make_url("/item"))) as resp:
            assert resp.status == 402
            challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"), skip_invalid=True)
        quote = mpp.select_quote(challenges, [LedgerBuyerMethod(key=self.agent, account=account)], POLICY,
                                 datetime.now(timezone.utc))
        return mpp.sign_quote(quote)

    async def send(self, session: aiohttp.ClientSession, authorization: str) -> tuple[int, dict, dict]:
        async with session.get(str(self.server.make_url("/item")), headers={"Authorization": authorization}) as resp:
            return resp.status, json.loads(await resp.read()), dict(resp.headers)


def _buyer(ledger: SqliteLedger, did: str, currency: str = "usd") -> None:
    ledger.create_account(PAYER, currency)
    ledger.keys.allow(PAYER, did, "owner")
    ledger.fund(PAYER, 1_000)


async def _refused(tmp_path: Path, path: str, prepare, account: str = PAYER):
    """The shop's answer to one purchase after ``prepare(ledger, agent_did)``; the shop, session
    and credential are handed back for a retry."""
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    shop = Shop(tmp_path, ledger, path)
    prepare(ledger, shop.agent.did)
    await shop.server.start_server()
    session = aiohttp.ClientSession()
    authorization = await shop.credential(session, account)
    status, doc, headers = await shop.send(session, authorization)
    return shop, session, authorization, status, doc, headers


async def _close(shop: Shop, session: aiohttp.ClientSession) -> None:
    await session.close()
    await shop.server.close()
    shop.ledger.close()


@pytest.mark.parametrize("path", PATHS)
async def test_a_missing_payer_account_is_named(tmp_path: Path, path: str):
    """issue 17, four causes (a): the payer account is not on the ledger: 402 naming the account."""
    def prepare(ledger, did):
        ledger.create_account(RECIPIENT, "usd")

    shop, session, _, status, doc, _ = await _refused(tmp_path, path, prepare, account="acct:ghost")
    try:
        assert status == 402 and doc["type"].endswith("verification-failed")
        assert "payer account is not on this seller's ledger" in doc["detail"] and "acct:ghost" in doc["detail"]
        assert "may not spend" not in doc["detail"]
    finally:
        await _close(shop, session)


@pytest.mark.parametrize("path", PATHS)
async def test_b_payer_account_in_another_currency_is_named(tmp_path: Path, path: str):
    """issue 17, four causes (b): the payer account holds eur, the quote is in usd: 402 naming both."""
    def prepare(ledger, did):
        ledger.create_account(RECIPIENT, "usd")
        _buyer(ledger, did, "eur")

    shop, session, _, status, doc, _ = await _refused(tmp_path, path, prepare)
    try:
        assert status == 402 and doc["type"].endswith("verification-failed")
        assert "another currency" in doc["detail"] and "'eur'" in doc["detail"] and "'usd'" in doc["detail"]
        assert shop.ledger.balance(PAYER) == 1_000
    finally:
        await _close(shop, session)


async def _sellers_fault(shop: Shop, session, authorization: str, status: int, doc: dict, headers: dict, caplog) -> None:
    assert status == 503, (status, doc)
    assert doc["type"] == "urn:mpp:problem:seller-misconfigured"
    assert "cannot take payment" in doc["detail"] and "may not spend" not in doc["detail"]
    assert headers["Retry-After"] and headers["Content-Type"].startswith("application/problem+json")
    assert [t for t in shop.ledger.transfers() if t.kind == "charge"] == []
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "mpp.seller"]
    assert any("mpp ledger account create" in line for line in logged), logged


@pytest.mark.parametrize("path", PATHS)
async def test_c_missing_recipient_account_is_the_sellers_fault(tmp_path: Path, path: str, caplog):
    """issue 17, four causes (c): the seller's recipient account is missing: 503, logged with the
    fix, nothing consumed: once the account exists the same credential pays."""
    caplog.set_level(logging.ERROR, logger="mpp.seller")

    def prepare(ledger, did):
        _buyer(ledger, did)

    shop, session, authorization, status, doc, headers = await _refused(tmp_path, path, prepare)
    try:
        await _sellers_fault(shop, session, authorization, status, doc, headers, caplog)
        assert shop.ledger.balance(PAYER) == 1_000
        shop.ledger.create_account(RECIPIENT, "usd")
        status, doc, _ = await shop.send(session, authorization)
        assert status == 200 and doc == {"item": 1}
        assert shop.ledger.balance(PAYER) == 900
    finally:
        await _close(shop, session)


@pytest.mark.parametrize("path", PATHS)
async def test_d_empty_ledger_is_the_sellers_fault(tmp_path: Path, path: str, caplog):
    """issue 17, four causes (d): the seller runs on an empty ledger (a mistyped file name): 503
    seller-misconfigured, not "you may not spend"; the start-up log already names the fix."""
    caplog.set_level(logging.ERROR, logger="mpp.seller")
    shop, session, authorization, status, doc, headers = await _refused(tmp_path, path, lambda ledger, did: None)
    try:
        await _sellers_fault(shop, session, authorization, status, doc, headers, caplog)
        assert any("recipient account 'acct:seller' is not on the seller's ledger" in r.getMessage()
                   for r in caplog.records)
        shop.ledger.create_account(RECIPIENT, "usd")
        _buyer(shop.ledger, shop.agent.did)
        status, doc, _ = await shop.send(session, authorization)
        assert status == 200 and doc == {"item": 1}
    finally:
        await _close(shop, session)


@pytest.mark.parametrize("path", PATHS)
async def test_the_buyer_reports_the_sellers_fault_as_such_and_pays_once_it_is_fixed(tmp_path: Path, path: str):
    """issue 17, four causes, at the buyer (CORE-BUY-11): our PaymentClient turns the 503
    seller-misconfigured into SellerFault, a refusal (nothing paid, the seller's detail and
    Retry-After carried), not OutcomeUnknown; `mpp fetch`'s wording is the exception's. Once the
    seller's account exists, the same client pays."""
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    shop = Shop(tmp_path, ledger, path)
    _buyer(ledger, shop.agent.did)
    await shop.server.start_server()
    events: list[tuple[str, dict]] = []
    async with aiohttp.ClientSession() as session:
        client = mpp.aio.PaymentClient(session, [LedgerBuyerMethod(key=shop.agent, account=PAYER)], POLICY,
                                       on_event=lambda kind, data: events.append((kind, data)))
        try:
            with pytest.raises(mpp.SellerFault) as caught:
                await client.request("GET", str(shop.server.make_url("/item")))
            exc = caught.value
            assert isinstance(exc, mpp.SellerRefused) and not isinstance(exc, mpp.OutcomeUnknown)
            assert exc.status == 503 and exc.problem_type == "seller-misconfigured"
            assert isinstance(exc.retry_after, int) and exc.retry_after > 0
            assert "cannot take payment" in exc.detail
            assert "nothing was paid" in str(exc) and f"retry after {exc.retry_after} s" in str(exc)
            assert [d.get("outcome") for k, d in events if k == "refusal"] == ["refused"]
            assert ledger.balance(PAYER) == 1_000
            ledger.create_account(RECIPIENT, "usd")
            paid = await client.request("GET", str(shop.server.make_url("/item")))
            assert paid.status == 200 and paid.paid and ledger.balance(PAYER) == 900
        finally:
            await shop.server.close()
            ledger.close()
