"""Which rails quote a price (mpp.engine.core.SellerCore.quoting): a seller with an ``evm`` method and
a ledger offers each route only on the methods that can quote its currency, a price may name a
token address, and a price no rail can quote is refused when the seller starts or loads the list,
never a 402 without a challenge or a 500 at request time. No chain is needed: quoting is offline."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import Seller
from mpp.engine.core import RequestInfo, SellerCore
from mpp.engine.publish import openapi_document
from mpp.methods.evm.charge import EvmSellerMethod, EvmToken
from mpp.methods.ledger import LedgerSellerMethod
from mpp.pricing import PriceListError, load_price_list
from mpp.pricing.prices import Metered, Price
from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.models import ChargeRequest
from mpp.stores.payments import SqlitePaymentStore

TOKEN = EvmToken("0x5FbDB2315678afecb367f032d93F642f64180aa3", "MPP Test USD", "1")
OTHER_TOKEN = "0x" + "ab" * 20
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def methods():
    return {"ledger": LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-1"),
            "evm": EvmSellerMethod(recipient="0x" + "12" * 20, chain_id=31337, tokens={"usd": TOKEN})}


@pytest.fixture
def core() -> SellerCore:
    return SellerCore(ChallengeIssuer(b"k" * 32, "shop.test"), methods())


@pytest.mark.parametrize("currency, offered", [
    ("usd", [("ledger", "charge"), ("evm", "charge")]),
    ("eur", [("ledger", "charge")]),
    (TOKEN.address, [("evm", "charge")]),
    (TOKEN.address.lower(), [("evm", "charge")]),
    (OTHER_TOKEN, []),
])
def test_a_price_is_offered_on_the_methods_that_quote_its_currency(core, currency, offered):
    """A code goes to the ledger (which takes any code) and to evm if it has a token for it; a token
    address only to evm, and only for a token it has; a currency nobody quotes is offered nowhere."""
    assert core.offers(Price(25, currency)) == offered


def test_a_metered_price_in_a_token_is_a_charge_on_evm_only(core):
    """Sessions are the ledger's: a per-unit price in a token is offered as evm's per-request charge."""
    assert core.offers(Metered("token", 2, "usd", per=1000, max_units=4000)) == [
        ("ledger", "session"), ("ledger", "charge"), ("evm", "charge")]
    assert core.offers(Metered("token", 2, TOKEN.address, per=1000, max_units=4000)) == [("evm", "charge")]


def test_the_challenge_of_a_token_price_names_the_token(core):
    challenges = core.challenges(Price(25, TOKEN.address.lower(), "in tokens"), RequestInfo("GET", "/x"), NOW)
    assert [c.method for c in challenges] == ["evm"]
    request = ChargeRequest.from_challenge(challenges[0])
    assert request.currency == TOKEN.address and request.amount == "25"
    assert request.methodDetails["chainId"] == 31337


def test_a_price_may_be_a_token_address():
    """The issue: "a price may be a token address on this method"."""
    assert Price(1, OTHER_TOKEN).currency == OTHER_TOKEN
    assert Price(1, TOKEN.address).currency == TOKEN.address
    for bad in ("0x" + "ab" * 19, "0x" + "zz" * 20, "USD", "0X" + "ab" * 20, OTHER_TOKEN + "00"):
        with pytest.raises(ValueError, match="token's address"):
            Price(1, bad)


def test_a_price_list_may_price_in_a_token_address():
    plist = load_price_list(f'version = "1"\ncurrency = "{TOKEN.address}"\n[[routes]]\nmethod = "GET"\npath = "/a"\n'
                            f'  [[routes.offers]]\n  model = "transaction"\n  amount = 5\n'
                            f'  [[routes.offers]]\n  id = "usd"\n  model = "transaction"\n  amount = 7\n  currency = "usd"\n',
                            source="prices.toml")
    assert [o.currency for o in plist.routes[0].offers] == [TOKEN.address, "usd"]
    with pytest.raises(PriceListError, match="token's address"):
        load_price_list('version = "1"\ncurrency = "0xabc"\n[[routes]]\nmethod = "GET"\npath = "/a"\n'
                        '  [[routes.offers]]\n  model = "transaction"\n  amount = 5\n', source="prices.toml")


def _seller(tmp_path, **kwargs):
    return Seller(realm="shop.test", secret=os.urandom(32), receipt_key=mpp.SigningKey.generate(),
                  rails=list(methods().values()), store=SqlitePaymentStore(str(tmp_path / "p.db")), **kwargs)


def test_a_price_list_no_rail_can_quote_is_refused(tmp_path):
    text = (f'version = "1"\n[[routes]]\nmethod = "GET"\npath = "/a"\n  [[routes.offers]]\n  model = "transaction"\n'
            f'  amount = 5\n  currency = "{OTHER_TOKEN}"\n')
    with pytest.raises(PriceListError, match="no rail of this seller can quote"):
        _seller(tmp_path, price_list=load_price_list(text, source="prices.toml"))
    seller = _seller(tmp_path)
    with pytest.raises(PriceListError, match="no rail of this seller can quote"):
        seller.reload_prices(text, "prices.toml")
    assert seller.price_list is None


async def test_a_route_no_rail_can_quote_stops_the_seller_from_starting(tmp_path):
    """CORE-ERR-14: refused at start, naming the route, rather than answered with a 402 that offers nothing."""
    seller = _seller(tmp_path)

    @seller.price(25, OTHER_TOKEN)
    async def unsold(request):
        return web.Response(text="never")

    app = web.Application()
    app.router.add_get("/unsold", unsold)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    with pytest.raises(ValueError, match=f"GET /unsold \\(currency '{OTHER_TOKEN}'\\)"):
        await server.start_server()
    await server.close()


def test_openapi_lists_the_offers_each_price_has(tmp_path):
    """CORE-DISC-02: x-payment-info names the methods the 402 would offer."""
    seller = _seller(tmp_path)
    doc = openapi_document(seller.engine, [("GET", "/both", Price(5, "usd")), ("GET", "/tokens", Price(5, TOKEN.address)),
                                           ("GET", "/ledger", Price(5, "eur"))])
    methods_of = {path: [o["method"] for o in item["get"]["x-payment-info"]["offers"]] for path, item in doc["paths"].items()}
    assert methods_of == {"/both": ["ledger", "evm"], "/tokens": ["evm"], "/ledger": ["ledger"]}
