"""The seller prices from a price list (spec/pricing.md): several offers per route, receipts naming
the list, live reload, task grants and refunds, seat periods, mandate model restrictions, and
the pricing store on both engines. In-process servers of both adapters (aiohttp, and ASGI under
uvicorn; the world fixture is parametrised), plus `mpp seller serve` for start-up refusal and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mpp
import mpp.asgi
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.aio.seller import start_task, task_of
from mpp.buyer.core import Quote
from mpp.protocol.headers import parse_challenges, parse_receipt
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.protocol.models import ChargeRequest
from mpp.pricing import (
    GRANT_HEADER,
    GRANT_PROOF_HEADER,
    PriceListError,
    issue_grant,
    load_price_list,
    sign_grant_proof,
    subscription_id,
    task_grant_claims,
)
from mpp.stores.pricing import SqlitePricingStore
from mpp.stores.payments import SqlitePaymentStore
from mpp.connect import open_pricing_store

from tests._adapters import ADAPTERS, SELLERS, AsgiTestServer
from tests.conftest import REPO, start_seller, stop_seller

REALM = "prices.test"
ACCOUNT = "acct:buyer"
FUNDS = 100_000

PRICES_V1 = """\
version = "v1"
currency = "usd"

[[routes]]
method = "GET"
path = "/weather"
description = "Current weather"

  [[routes.offers]]
  model = "transaction"
  amount = 25

  [[routes.offers]]
  model = "seat"
  plan = "pro"
  amount = 900
  period_unit = "day"
  covers = ["GET /forecast"]

[[routes]]
method = "GET"
path = "/forecast"

  [[routes.offers]]
  model = "transaction"
  amount = 10

[[routes]]
method = "POST"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"]
  grant_ttl = 3600
  refund = "full"

[[routes]]
method = "POST"
path = "/batch"

  [[routes.offers]]
  model = "task"
  amount = 300
  follow_ups = ["GET /batch/{task}"]
  grant_ttl = 3600
  refund = "none"
"""

PRICES_V2 = PRICES_V1.replace('version = "v1"', 'version = "v2"').replace("amount = 25", "amount = 30")


def claims_of(jws: str) -> dict[str, Any]:
    from mpp.protocol.wire import b64url_decode

    return json.loads(b64url_decode(jws.split(".")[1]))


@dataclass
class Clock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


@dataclass
class World:
    seller: Seller
    server: TestServer | AsgiTestServer
    session: aiohttp.ClientSession
    ledger: SqliteLedger
    clock: Clock
    P: mpp.SigningKey
    A: mpp.SigningKey
    B: mpp.SigningKey
    tasks: dict[str, str] = field(default_factory=dict)
    adapter: str = "aiohttp"

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def challenges(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
        async with self.session.request(method, self.url(path), data=body, headers=headers or {}) as resp:
            assert resp.status == 402, (resp.status, await resp.text())
            assert resp.headers["Cache-Control"] == "no-store"
            return parse_challenges(resp.headers.getall("WWW-Authenticate"))

    async def quote(self, method: str, path: str, model: str, agent: mpp.SigningKey, body: bytes = b"") -> Quote:
        for challenge in await self.challenges(method, path, body):
            if challenge.request_json.get("pricing", {}).get("model") == model:
                return Quote(challenge, ChargeRequest.from_challenge(challenge), LedgerBuyerMethod(key=agent, account=ACCOUNT))
        raise AssertionError(f"no {model} offer")

    async def pay(self, method: str, path: str, quote: Quote, body: bytes = b"", chain: list[str] | None = None,
                  agent: mpp.SigningKey | None = None):
        extensions = None
        if chain is not None:
            assert agent is not None
            extensions = {"identity": I.identity_member(chain, agent, quote.challenge, quote.request)}
        authorization = mpp.sign_quote(quote, extensions)
        async with self.session.request(method, self.url(path), data=body, headers={"Authorization": authorization}) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if resp.content_type.endswith("json") else {}), resp.headers

    async def granted(self, method: str, path: str, grant: str | None, agent: mpp.SigningKey, *, proof_path: str | None = None,
                      body: bytes = b""):
        headers = {}
        if grant is not None:
            headers[GRANT_HEADER] = grant
            headers[GRANT_PROOF_HEADER] = sign_grant_proof(agent, grant_id=claims_of(grant)["jti"], method=method,
                                                           path=proof_path or path, body=body, now=datetime.now(timezone.utc))
        async with self.session.request(method, self.url(path), data=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else {}), resp.headers

    def receipt_claims(self, headers) -> dict[str, Any]:
        return claims_of(parse_receipt(headers["Payment-Receipt"]).receipt)

    def charges(self) -> list[Any]:
        return [t for t in self.ledger.transfers() if t.kind == "charge"]


def build_app(seller: Seller) -> web.Application:
    app = web.Application()

    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"ok": request.path})

    async def start(request: web.Request) -> web.Response:
        body = await request.read()
        if request.query.get("skip"):
            return web.json_response({"started": None}, status=201)  # names no task
        task_id = request.query.get("id", "job-" + os.urandom(6).hex())
        control = await start_task(request, task_id)
        if request.query.get("fail"):
            await control.fail("asked to fail")
        return web.json_response({"task": task_id, "body": len(body)}, status=201)

    async def follow(request: web.Request) -> web.Response:
        task = task_of(request)
        assert task is not None
        record = await task.record()
        doc = {"task": task.task_id, "state": record.state if record else None}
        if record is not None and record.state == "refunded":
            doc["refund"] = record.reference
        if request.path.endswith("/result") and record is not None and record.state == "succeeded":
            await task.delivered()
        return web.json_response(doc)

    app.router.add_get("/weather", plain)
    app.router.add_get("/forecast", plain)
    app.router.add_post("/jobs", start)
    app.router.add_post("/batch", start)
    app.router.add_get("/jobs/{task}", follow)
    app.router.add_get("/jobs/{task}/result", follow)
    app.router.add_delete("/jobs/{task}", follow)
    app.router.add_get("/batch/{task}", follow)
    seller.setup(app)
    return app


def build_asgi_app(seller: mpp.asgi.Seller) -> Starlette:
    """build_app's routes and handlers, as a Starlette application."""

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": request.url.path})

    async def start(request: Request) -> JSONResponse:
        body = await request.body()
        if request.query_params.get("skip"):
            return JSONResponse({"started": None}, status_code=201)  # names no task
        task_id = request.query_params.get("id", "job-" + os.urandom(6).hex())
        control = await mpp.asgi.start_task(request, task_id)
        if request.query_params.get("fail"):
            await control.fail("asked to fail")
        return JSONResponse({"task": task_id, "body": len(body)}, status_code=201)

    async def follow(request: Request) -> JSONResponse:
        task = mpp.asgi.task_of(request)
        assert task is not None
        record = await task.record()
        doc = {"task": task.task_id, "state": record.state if record else None}
        if record is not None and record.state == "refunded":
            doc["refund"] = record.reference
        if request.url.path.endswith("/result") and record is not None and record.state == "succeeded":
            await task.delivered()
        return JSONResponse(doc)

    app = Starlette(routes=[
        Route("/weather", plain, methods=["GET"]), Route("/forecast", plain, methods=["GET"]),
        Route("/jobs", start, methods=["POST"]), Route("/batch", start, methods=["POST"]),
        Route("/jobs/{task}", follow, methods=["GET", "DELETE"]), Route("/jobs/{task}/result", follow, methods=["GET"]),
        Route("/batch/{task}", follow, methods=["GET"]),
    ])
    seller.setup(app)
    return app


def server_for(adapter: str, seller: Any) -> TestServer | AsgiTestServer:
    """An in-process server of the test routes on the given adapter."""
    if adapter == "asgi":
        return AsgiTestServer(build_asgi_app(seller))
    return TestServer(build_app(seller), host="127.0.0.1")


@pytest.fixture(params=ADAPTERS)
async def world(tmp_path: Path, request):
    adapter = request.param
    P, A, B = mpp.SigningKey.generate(), mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account(ACCOUNT, "usd")
    ledger.keys.allow(ACCOUNT, A.did, "owner")
    ledger.keys.allow(ACCOUNT, B.did, "owner")
    ledger.keys.allow(ACCOUNT, P.did, "owner")
    ledger.fund(ACCOUNT, FUNDS)
    clock = Clock()
    seller = SELLERS[adapter](realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                              rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                              store=SqlitePaymentStore(str(tmp_path / "payments.db")), clock=clock, trusted_principals={P.did},
                              pricing_store=SqlitePricingStore(str(tmp_path / "pricing.db")),
                              price_list=load_price_list(PRICES_V1, source="prices.toml"))
    server = server_for(adapter, seller)
    await server.start_server()
    # uvicorn closes the connection after a handler's exception (its 500): no reuse, so no race with it
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=adapter == "asgi")) as session:
        yield World(seller, server, session, ledger, clock, P, A, B, adapter=adapter)
    await server.close()
    ledger.close()


def mandate(w: World, **overrides: Any) -> list[str]:
    t = datetime.now(timezone.utc)
    claims: dict[str, Any] = dict(audience=[REALM], scope=["*"], currency="usd", ceiling=10_000, budget_amount=50_000,
                                  not_before=t - timedelta(minutes=5), expires=t + timedelta(days=1))
    claims.update(overrides)
    return [I.issue_mandate(w.P, subject=w.A.did, **claims)]


# -- offers, receipts ------------------------------------------------------------------


async def test_multi_offer_402_one_challenge_per_offer_with_pricing(world: World):
    """PRICE-MODEL-03, PRICE-MODEL-04, PRICE-MODEL-01, PRICE-SEAT-01: one challenge per offer, in the
    list's order, each request carrying its pricing member; /openapi.json lists the same offers."""
    challenges = await world.challenges("GET", "/weather")
    assert [(c.intent, c.request_json["pricing"]["model"]) for c in challenges] == [("charge", "transaction"),
                                                                                    ("subscription", "seat")]
    charge, seat = (c.request_json for c in challenges)
    assert charge["amount"] == "25" and charge["pricing"] == {"priceList": "v1", "offer": "transaction", "model": "transaction"}
    assert seat["amount"] == "900" and seat["periodUnit"] == "day" and seat["periodCount"] == "1"
    assert seat["periodSeconds"] == "86400"
    pricing = seat["pricing"]
    assert pricing["plan"] == "pro" and pricing["covers"] == ["GET /weather", "GET /forecast"]
    assert seat["subscriptionExpires"] == pricing["periodEnd"]
    expires = datetime.strptime(challenges[1].expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert expires < datetime.strptime(pricing["periodEnd"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    task = (await world.challenges("POST", "/jobs"))[0].request_json["pricing"]
    assert task == {"priceList": "v1", "offer": "task", "model": "task", "grantTtl": "3600", "refund": "full",
                    "followUps": ["GET /jobs/{task}", "GET /jobs/{task}/result", "DELETE /jobs/{task}"]}
    async with world.session.get(world.url("/openapi.json")) as resp:
        doc = await resp.json()
    offers = doc["paths"]["/weather"]["get"]["x-payment-info"]["offers"]
    assert [(o["intent"], o["pricing"]["model"], o["amount"]) for o in offers] == [("charge", "transaction", "25"),
                                                                                    ("subscription", "seat", "900")]


async def test_transaction_receipt_names_price_list_and_model(world: World):
    """PRICE-VER-01, PRICE-MODEL-01: the receipt carries the list's version and the model."""
    quote = await world.quote("GET", "/weather", "transaction", world.A)
    status, body, headers = await world.pay("GET", "/weather", quote)
    assert status == 200 and body == {"ok": "/weather"}
    claims = world.receipt_claims(headers)
    assert (claims["priceList"], claims["model"], claims["offer"], claims["amount"]) == ("v1", "transaction", "transaction", "25")
    assert GRANT_HEADER not in headers


# -- reload ----------------------------------------------------------------------------------


async def test_reload_keeps_a_quote_issued_before_it(world: World):
    """PRICE-VER-02, PRICE-VER-03: a quote of v1 is settled as quoted after v2 is loaded."""
    old = await world.quote("GET", "/weather", "transaction", world.A)
    assert world.seller.reload_prices(PRICES_V2, "prices.toml").version == "v2"
    fresh = (await world.challenges("GET", "/weather"))[0].request_json
    assert (fresh["amount"], fresh["pricing"]["priceList"]) == ("30", "v2")
    status, _, headers = await world.pay("GET", "/weather", old)
    assert status == 200
    assert world.receipt_claims(headers)["priceList"] == "v1"
    assert [t.amount for t in world.charges()] == [25]


async def test_reload_of_an_invalid_list_is_refused_and_the_old_list_stays(world: World):
    """PRICE-VER-02, PRICE-LIST-03: the loader's `source:LINE: problem`; the running list stays."""
    broken = PRICES_V2.replace("amount = 30", "amount = 30.5")
    with pytest.raises(PriceListError) as info:
        world.seller.reload_prices(broken, "prices.toml")
    line = PRICES_V2.splitlines().index("  amount = 30") + 1
    assert str(info.value).startswith(f"prices.toml:{line}: ") and "'amount' must be an integer" in str(info.value)
    same_version = PRICES_V1.replace("amount = 25", "amount = 26")
    with pytest.raises(PriceListError, match=r"prices.toml:1: version 'v1' is the running list's version"):
        world.seller.reload_prices(same_version, "prices.toml")
    assert world.seller.price_list.version == "v1"
    assert (await world.challenges("GET", "/weather"))[0].request_json["amount"] == "25"


async def test_a_version_served_earlier_cannot_come_back_with_other_prices(world: World):
    """issue 17, finding 11; PRICE-VER-02: v1, then v2, then "v1" with other prices is refused (the
    name would make receipts saying v1 ambiguous) and v2 stays; v1 as it was may come back."""
    world.seller.reload_prices(PRICES_V2, "prices.toml")
    other_v1 = PRICES_V1.replace("amount = 25", "amount = 26")
    with pytest.raises(PriceListError, match=r"prices.toml:1: version 'v1' was served earlier by this seller with other content"):
        world.seller.reload_prices(other_v1, "prices.toml")
    assert world.seller.price_list.version == "v2"
    assert (await world.challenges("GET", "/weather"))[0].request_json["amount"] == "30"
    assert world.seller.reload_prices(PRICES_V1, "prices.toml").version == "v1"


async def test_a_version_served_in_an_earlier_run_cannot_come_back_with_other_prices(world: World, tmp_path: Path):
    """issue 17, finding 11 across restarts (PRICE-VER-02): the pricing store remembers every
    version served. After v1 (at start) and v2 (a reload, recorded in the background), a new seller
    process on the same stores refuses to start with another "v2", and refuses a reload to another
    "v1"; the same v2 starts."""
    world.seller.reload_prices(PRICES_V2, "prices.toml")
    await asyncio.sleep(0)  # let the background recording run
    for _ in range(50):
        if "v2" in await world.seller.pricing_store.price_lists():
            break
        await asyncio.sleep(0.01)
    remembered = await world.seller.pricing_store.price_lists()
    assert set(remembered) == {"v1", "v2"}

    def again(prices: str):
        return SELLERS[world.adapter](realm=REALM, secret=b"s" * 32, receipt_key=world.seller.receipt_key,
                                      rails=[EmbeddedLedgerRail(world.ledger, recipient="acct:seller")],
                                      store=SqlitePaymentStore(str(tmp_path / "payments.db")),
                                      pricing_store=SqlitePricingStore(str(tmp_path / "pricing.db")),
                                      price_list=load_price_list(prices, source="prices.toml"))

    other_v2 = PRICES_V2.replace("amount = 30", "amount = 31")
    assert other_v2 != PRICES_V2
    with pytest.raises(PriceListError, match=r"prices.toml:1: version 'v2' was served by this seller before \(first on "
                                             r"\d{4}-\d\d-\d\dT[0-9:]+Z\) with other content"):
        await again(other_v2).start_serving([])
    seller = again(PRICES_V2)
    await seller.start_serving([])
    try:
        with pytest.raises(PriceListError, match=r"version 'v1' was served by this seller before with other content"):
            seller.reload_prices(PRICES_V1.replace("amount = 25", "amount = 26"), "prices.toml")
        assert seller.price_list.version == "v2"
        assert seller.reload_prices(PRICES_V1, "prices.toml").version == "v1"  # as it was: fine
    finally:
        await seller.stop_serving()


# -- tasks -----------------------------------------------------------------------------------


async def buy_task(world: World, agent: mpp.SigningKey, query: str = "", path: str = "/jobs") -> tuple[str, str, dict]:
    quote = await world.quote("POST", path + query, "task", agent)
    status, body, headers = await world.pay("POST", path + query, quote)
    assert status == 201, body
    return body["task"], headers[GRANT_HEADER], world.receipt_claims(headers)


async def test_task_charged_once_and_follow_ups_served_with_grant(world: World):
    """PRICE-TASK-01, PRICE-TASK-02, PRICE-TASK-03, PRICE-GRANT-01, PRICE-GRANT-04: one charge; the
    grant covers the follow-ups of this task for this agent; follow-ups carry no receipt."""
    task, grant, receipt = await buy_task(world, world.A)
    g = claims_of(grant)
    assert g["kind"] == "task" and g["task"] == task and g["sub"] == world.A.did and g["iss"] == g["aud"] == REALM
    assert g["routes"] == [f"GET /jobs/{task}", f"GET /jobs/{task}/result", f"DELETE /jobs/{task}"]
    assert g["exp"] == g["iat"] + 3600 and g["priceList"] == "v1" and g["challengeId"] == receipt["challengeId"]
    assert receipt["task"] == task and receipt["grant"] == g["jti"] and receipt["model"] == "task"
    for _ in range(3):
        status, body, headers = await world.granted("GET", f"/jobs/{task}", grant, world.A)
        assert status == 200 and body["state"] == "running"
        assert "Payment-Receipt" not in headers
    status, body, _ = await world.granted("DELETE", f"/jobs/{task}", grant, world.A)
    assert status == 200  # PRICE-TASK-05: cancellation is a follow-up, no refund
    assert [t.amount for t in world.charges()] == [500]
    assert not [t for t in world.ledger.transfers() if t.kind == "refund"]


async def test_follow_up_without_grant_is_403_grant_required(world: World):
    """PRICE-TASK-03, PRICE-ERR-01: no grant, no service, and no challenge."""
    async with world.session.get(world.url("/jobs/abc")) as resp:
        assert resp.status == 403 and "WWW-Authenticate" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"
        doc = await resp.json()
    assert doc["type"] == "urn:mpp:problem:grant-required" and doc["route"] == "GET /jobs/abc"


async def test_task_grant_refused_for_another_task_agent_seller_expiry_and_proof(world: World):
    """PRICE-GRANT-02, PRICE-GRANT-03, PRICE-ERR-01: another task, another agent, another seller,
    expired, a proof over another request: each its own 403, without a challenge."""
    task, grant, _ = await buy_task(world, world.A)
    other_task, _, _ = await buy_task(world, world.A)

    async def slug(method: str, path: str, token: str | None, agent: mpp.SigningKey, **kw: Any) -> str:
        status, body, headers = await world.granted(method, path, token, agent, **kw)
        assert status == 403 and "WWW-Authenticate" not in headers and (token is None or token not in json.dumps(body))
        return body["type"].removeprefix("urn:mpp:problem:")

    assert await slug("GET", f"/jobs/{other_task}", grant, world.A) == "grant-task"
    assert await slug("GET", f"/jobs/{task}", grant, world.B) == "grant-agent"
    assert await slug("GET", f"/jobs/{task}", grant, world.A, proof_path=f"/jobs/{task}/result") == "grant-proof-invalid"
    now = datetime.now(timezone.utc)
    offer = world.seller.price_list.offer("POST /jobs", "task")
    elsewhere = issue_grant(world.seller.receipt_key, task_grant_claims(realm="other.test", agent=world.A.did, task_id=task,
                                                                         offer=offer, challenge_id="x", now=now))
    assert await slug("GET", f"/jobs/{task}", elsewhere, world.A) == "grant-audience"
    foreign_key = issue_grant(mpp.SigningKey.generate(), task_grant_claims(realm=REALM, agent=world.A.did, task_id=task,
                                                                           offer=offer, challenge_id="x", now=now))
    assert await slug("GET", f"/jobs/{task}", foreign_key, world.A) == "grant-invalid"
    world.clock.offset = timedelta(seconds=3601)
    assert await slug("GET", f"/jobs/{task}", grant, world.A) == "grant-expired"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_replayed_grant_proof_is_refused(world: World, method: str):
    """PRICE-GRANT-06: a proof accepted once is refused when sent again within its window, for a
    safe request (a status poll) as for an unsafe one (a cancellation)."""
    task, grant, _ = await buy_task(world, world.A)
    proof = sign_grant_proof(world.A, grant_id=claims_of(grant)["jti"], method=method, path=f"/jobs/{task}",
                             now=datetime.now(timezone.utc))
    headers = {GRANT_HEADER: grant, GRANT_PROOF_HEADER: proof}
    async with world.session.request(method, world.url(f"/jobs/{task}"), headers=headers) as resp:
        assert resp.status == 200
    async with world.session.request(method, world.url(f"/jobs/{task}"), headers=headers) as resp:
        assert resp.status == 403 and (await resp.json())["type"] == "urn:mpp:problem:grant-proof-invalid"


async def test_two_honest_polls_in_one_second_are_both_served(world: World):
    """PRICE-GRANT-05, PRICE-GRANT-06: two alike GETs signed at the same instant (same t) carry two
    nonces, so neither looks like a replay of the other; then both are spent."""
    task, grant, _ = await buy_task(world, world.A)
    at = datetime.now(timezone.utc)
    proofs = [sign_grant_proof(world.A, grant_id=claims_of(grant)["jti"], method="GET", path=f"/jobs/{task}", now=at)
              for _ in range(2)]
    statuses = []
    for proof in proofs + proofs:
        async with world.session.get(world.url(f"/jobs/{task}"), headers={GRANT_HEADER: grant, GRANT_PROOF_HEADER: proof}) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 403, 403]


async def test_failed_task_is_refunded_once_when_the_rule_is_full(world: World):
    """PRICE-TASK-04: a task that fails before delivery is refunded once through the rail; the
    status follow-up says so and names the refund reference."""
    task, grant, receipt = await buy_task(world, world.A, "?fail=1")
    assert world.ledger.balance(ACCOUNT) == FUNDS and world.ledger.balance("acct:seller") == 0
    assert not await world.seller.finish_task(task, ok=False)  # a second failure moves nothing, refunds nothing
    assert len([t for t in world.ledger.transfers() if t.kind == "refund"]) == 1
    record = await world.seller.store.get(receipt["challengeId"])
    assert record.state == "refunded"
    status, body, _ = await world.granted("GET", f"/jobs/{task}", grant, world.A)
    assert status == 200 and body["state"] == "refunded" and body["refund"] == receipt["reference"]


async def test_a_refund_interrupted_by_a_crash_is_completed_at_the_next_start(world: World, tmp_path: Path):
    """PRICE-TASK-04: the task moved to failed and the process died before the refund; the next
    seller process on the same stores completes the refund at start-up, once."""
    task, _, receipt = await buy_task(world, world.A)
    assert await world.seller.pricing_store.move_task(task, "failed", detail="crashed right after")  # no refund yet
    assert world.ledger.balance(ACCOUNT) == FUNDS - 500
    again = SELLERS[world.adapter](realm=REALM, secret=b"s" * 32, receipt_key=world.seller.receipt_key,
                                   rails=[EmbeddedLedgerRail(world.ledger, recipient="acct:seller")],
                                   store=SqlitePaymentStore(str(tmp_path / "payments.db")), trusted_principals={world.P.did},
                                   pricing_store=SqlitePricingStore(str(tmp_path / "pricing.db")),
                                   price_list=load_price_list(PRICES_V1, source="prices.toml"))
    server = server_for(world.adapter, again)
    await server.start_server()  # start-up completes the owed refund
    try:
        assert world.ledger.balance(ACCOUNT) == FUNDS and world.ledger.balance("acct:seller") == 0
        assert (await again.task(task)).state == "refunded"
        assert (await again.store.get(receipt["challengeId"])).state == "refunded"
        assert await again.refund_owed_tasks() == 0 and await world.seller.refund_owed_tasks() == 0
        assert len([t for t in world.ledger.transfers() if t.kind == "refund"]) == 1
    finally:
        await server.close()


async def test_task_failures_after_delivery_or_under_refund_none_refund_nothing(world: World):
    """PRICE-TASK-04: refund "none" never refunds; a delivered task's failure is no failure."""
    task, _, _ = await buy_task(world, world.A, "?fail=1", path="/batch")
    assert (await world.seller.task(task)).state == "failed"
    task, grant, _ = await buy_task(world, world.A)
    assert await world.seller.finish_task(task, ok=True)
    status, _, _ = await world.granted("GET", f"/jobs/{task}/result", grant, world.A)
    assert status == 200 and (await world.seller.task(task)).state == "delivered"
    assert not await world.seller.finish_task(task, ok=False)
    assert not [t for t in world.ledger.transfers() if t.kind == "refund"]
    assert world.ledger.balance("acct:seller") == 800


async def test_task_handler_naming_no_valid_task_is_refunded(world: World):
    """PRICE-TASK-02, CORE-ONCE-08: an invalid task id fails the handler; the charge is refunded."""
    quote = await world.quote("POST", "/jobs?id=bad%20id", "task", world.A)
    status, _, headers = await world.pay("POST", "/jobs?id=bad%20id", quote)
    assert status == 500 and "Payment-Receipt" not in headers and GRANT_HEADER not in headers
    assert world.ledger.balance(ACCOUNT) == FUNDS
    quote = await world.quote("POST", "/jobs?skip=1", "task", world.A)
    status, _, headers = await world.pay("POST", "/jobs?skip=1", quote)
    assert status == 500 and "Payment-Receipt" not in headers and GRANT_HEADER not in headers
    assert world.ledger.balance(ACCOUNT) == FUNDS
    assert (await world.seller.store.get(quote.challenge.id)).state == "refunded"


# -- seats -----------------------------------------------------------------------------------


async def test_seat_paid_once_per_period_and_covers_routes(world: World):
    """PRICE-SEAT-01, PRICE-SEAT-03, PRICE-SEAT-05, PRICE-SEAT-06: the seat is paid like a charge;
    the receipt names subscription and period; covered routes are served on the grant; a second
    purchase in the period is refused 409 with a fresh grant, nothing moved, its challenge unused."""
    quote = await world.quote("GET", "/weather", "seat", world.A)
    status, _, headers = await world.pay("GET", "/weather", quote)
    assert status == 200
    sub = subscription_id(REALM, "pro", world.A.did)
    receipt = world.receipt_claims(headers)
    period = quote.challenge.request_json["pricing"]["period"]
    assert (receipt["subscriptionId"], receipt["plan"], receipt["period"], receipt["model"]) == (sub, "pro", period, "seat")
    assert receipt["periodEnd"] == quote.challenge.request_json["pricing"]["periodEnd"]
    assert parse_receipt(headers["Payment-Receipt"]).model_extra["subscriptionId"] == sub
    grant = headers[GRANT_HEADER]
    g = claims_of(grant)
    assert g["kind"] == "seat" and g["routes"] == ["GET /weather", "GET /forecast"] and g["period"] == period
    assert g["exp"] == int(datetime.strptime(receipt["periodEnd"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
    for path in ("/forecast", "/weather"):
        status, body, headers = await world.granted("GET", path, grant, world.A)
        assert status == 200 and body == {"ok": path} and "Payment-Receipt" not in headers
    balance = world.ledger.balance(ACCOUNT)
    again = await world.quote("GET", "/weather", "seat", world.A)
    status, body, headers = await world.pay("GET", "/weather", again)
    assert status == 409 and body["type"] == "urn:mpp:problem:seat-already-paid"
    assert (body["subscriptionId"], body["period"], body["periodEnd"]) == (sub, period, receipt["periodEnd"])
    assert claims_of(body["grant"])["sub"] == world.A.did and "WWW-Authenticate" not in headers
    assert world.ledger.balance(ACCOUNT) == balance and len(world.charges()) == 1
    assert await world.seller.store.get(again.challenge.id) is None
    status, _, _ = await world.granted("GET", "/forecast", body["grant"], world.A)
    assert status == 200  # the period stays covered


async def test_seat_of_another_agent_is_its_own_subscription(world: World):
    """PRICE-SEAT-03: the subscription id is per agent: B's seat is not A's period."""
    for agent in (world.A, world.B):
        quote = await world.quote("GET", "/weather", "seat", agent)
        status, _, _ = await world.pay("GET", "/weather", quote)
        assert status == 200
    assert [t.amount for t in world.charges()] == [900, 900]


async def test_missed_seat_periods_are_never_charged(world: World):
    """PRICE-SEAT-04, PRICE-SEAT-02: two days later the quote is for the period then in force, and
    one payment pays exactly one period."""
    first = await world.quote("GET", "/weather", "seat", world.A)
    assert (await world.pay("GET", "/weather", first))[0] == 200
    world.clock.offset = timedelta(days=2)
    later = await world.quote("GET", "/weather", "seat", world.A)
    k0, k2 = (q.challenge.request_json["pricing"]["period"] for q in (first, later))
    assert k2 == k0 + 2
    status, _, headers = await world.pay("GET", "/weather", later)
    assert status == 200 and world.receipt_claims(headers)["period"] == k2
    assert [t.amount for t in world.charges()] == [900, 900]


# -- mandate restrictions ----------------------------------------------------------------------


async def test_mandate_forbidding_a_model_is_refused_by_the_seller(world: World):
    """PRICE-MDT-02, PRICE-ERR-01: a seat under a mandate of `models = [transaction]` is refused
    403 model-not-allowed before the challenge is consumed; the transaction offer is bought."""
    chain = mandate(world, models=["transaction"])
    quote = await world.quote("GET", "/weather", "seat", world.A)
    status, body, headers = await world.pay("GET", "/weather", quote, chain=chain, agent=world.A)
    assert status == 403 and body["type"] == "urn:mpp:problem:model-not-allowed" and body["model"] == "seat"
    assert world.charges() == [] and await world.seller.store.get(quote.challenge.id) is None
    quote = await world.quote("GET", "/weather", "transaction", world.A)
    status, _, headers = await world.pay("GET", "/weather", quote, chain=chain, agent=world.A)
    assert status == 200 and world.receipt_claims(headers)["agent"] == world.A.did


async def test_mandate_with_an_invalid_models_claim_is_invalid(world: World):
    """PRICE-MDT-03: a malformed `models` claim makes the mandate invalid."""
    import jwt

    token = mandate(world)[0]
    bad = jwt.encode({**claims_of(token), "models": ["transaction", "transaction"]}, world.P.private_key, algorithm="EdDSA",
                     headers={"typ": I.MANDATE_TYP, "kid": world.P.did})
    quote = await world.quote("GET", "/weather", "transaction", world.A)
    status, body, _ = await world.pay("GET", "/weather", quote, chain=[bad], agent=world.A)
    assert body["type"] == "urn:mpp:problem:mandate-invalid" and world.charges() == []


def test_mandate_restrictions_intersect_and_delegation_only_narrows():
    """PRICE-MDT-01: the chain's models are the intersection; a child naming a model its parent
    excludes is refused delegation-invalid."""
    P, A, S = (mpp.SigningKey.generate() for _ in range(3))
    t = datetime.now(timezone.utc)
    common = dict(currency="usd", ceiling=100, budget_amount=100, not_before=t - timedelta(minutes=1),
                  expires=t + timedelta(hours=1))
    root = I.issue_mandate(P, subject=A.did, max_depth=1, models=["transaction", "unit"],
                           max_unit_price={"amount": 3, "per": 1000}, **common)
    child = I.issue_mandate(A, subject=S.did, principal=P.did, models=["unit"], max_unit_price={"amount": 2, "per": 1000},
                            **common)
    chain = I.verify_chain([root, child], trusted_principals={P.did}, realm="r", now=t)
    assert chain.restrictions.models == frozenset({"unit"}) and chain.restrictions.max_unit_price == Fraction(2, 1000)
    wider = I.issue_mandate(A, subject=S.did, principal=P.did, models=["seat"], **common)
    with pytest.raises(I.DelegationInvalid, match="models"):
        I.verify_chain([root, wider], trusted_principals={P.did}, realm="r", now=t)


# -- the pricing store on both engines -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def pricing_location(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/pricing.db"
    return request.getfixturevalue("pg_url")  # errors (never skips) if PostgreSQL cannot start


async def test_seat_period_recorded_once_across_processes(pricing_location: str):
    """PRICE-SEAT-03: of concurrent records of one (subscription, period) by two "processes"
    (two stores on one database), exactly one wins; release frees only the holder's record."""
    one, two = await open_pricing_store(pricing_location), await open_pricing_store(pricing_location)
    try:
        results = await asyncio.gather(*(store.reserve_seat("sub_x", 7, f"ch{i}") for i, store in
                                         enumerate([one, two] * 5)))
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        holder = f"ch{winners[0]}"
        assert all(r == holder for r in results if r is not None)
        await two.release_seat("sub_x", 7, "someone-else")
        assert await one.reserve_seat("sub_x", 7, "late") == holder
        await two.release_seat("sub_x", 7, holder)  # settlement failed: the period is free again
        assert await one.reserve_seat("sub_x", 7, "late") is None
        assert await two.reserve_seat("sub_x", 8, "late") is None  # another period is another record
    finally:
        await one.close()
        await two.close()


async def test_price_list_versions_are_remembered_once_across_processes(pricing_location: str):
    """PRICE-VER-02 across restarts: of two processes recording one version with different content,
    the first record stays and both are told its fingerprint; every version is listed."""
    one, two = await open_pricing_store(pricing_location), await open_pricing_store(pricing_location)
    try:
        results = await asyncio.gather(*(store.remember_price_list("v1", f"fp{i}") for i, store in
                                         enumerate([one, two] * 3)))
        assert len({fingerprint for fingerprint, _ in results}) == 1 and len({since for _, since in results}) == 1
        kept = results[0][0]
        assert (await one.remember_price_list("v1", "other"))[0] == kept
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", results[0][1])
        assert (await two.remember_price_list("v2", "fp-v2"))[0] == "fp-v2"
        assert await one.price_lists() == {"v1": kept, "v2": "fp-v2"}
    finally:
        await one.close()
        await two.close()


async def test_task_states_move_forward_once(pricing_location: str):
    """PRICE-TASK-04: running -> failed -> refunded happens once, whoever races; ids are unique."""
    one, two = await open_pricing_store(pricing_location), await open_pricing_store(pricing_location)
    try:
        now = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        args = dict(challenge_id="ch1", method="ledger", agent="did:key:zA", refund="full", reference="tr_1", payer="acct:b",
                    settled_at=now)
        assert await one.create_task("t1", **args)
        assert not await two.create_task("t1", **args)
        moves = await asyncio.gather(*(s.move_task("t1", "failed", detail="x") for s in [one, two] * 4))
        assert moves.count(True) == 1
        assert not await one.move_task("t1", "succeeded")
        assert [r.task_id for r in await two.refunds_owed()] == ["t1"]  # failed under "full", not refunded yet
        assert await two.move_task("t1", "refunded") and not await one.move_task("t1", "refunded")
        assert await one.refunds_owed() == []
        record = await one.get_task("t1")
        assert (record.state, record.refund, record.reference, record.method, record.settled_at, record.detail) == (
            "refunded", "full", "tr_1", "ledger", "2031-01-02T03:04:05Z", "x")
        assert await one.create_task("t2", **args)
        assert await one.move_task("t2", "succeeded") and await two.move_task("t2", "delivered")
        assert not await one.move_task("t2", "failed")
        assert await one.get_task("nope") is None
    finally:
        await one.close()
        await two.close()


# -- `mpp seller serve`: refused at start, SIGHUP ---------------------------------------------


def _with_price_list(home: Path, text: str) -> Path:
    (home / "prices.toml").write_text(text)
    config = (home / "seller.toml").read_text()
    config = config.replace("challenge_ttl = 300\n", 'challenge_ttl = 300\nprice_list = "prices.toml"\n')
    (home / "seller.toml").write_text(config)
    return home / "prices.toml"


LISTED = PRICES_V1.replace("/weather", "/listed")


def test_serve_refuses_an_invalid_price_list_at_start(home: Path):
    """PRICE-LIST-01, PRICE-LIST-03: `mpp seller serve` exits 2 with `file:LINE: problem`, no traceback."""
    prices = _with_price_list(home, LISTED.replace("  period_unit = \"day\"\n", "  period_unit = \"fortnight\"\n"))
    line = LISTED.splitlines().index('  period_unit = "day"') + 1
    for extra in ((), ("--workers", "2"), ("--asgi",), ("--asgi", "--workers", "2")):
        proc = subprocess.run([sys.executable, "-m", "mpp.cli.main", "seller", "serve", "--config", str(home / "seller.toml"),
                               "--port", "0", *extra], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert f"{prices}:{line}: 'period_unit' must be one of" in proc.stderr and "Traceback" not in proc.stderr


def _first_offer(url: str) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url + "/listed")
    except urllib.error.HTTPError as exc:
        assert exc.code == 402
        return parse_challenges(exc.headers.get_all("WWW-Authenticate"))[0].request_json
    raise AssertionError("not a 402")


def _wait_for(stream_lines: list[str], pattern: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in stream_lines):
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not seen in {stream_lines}")


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_reloads_on_sighup_and_keeps_the_old_list_on_error(home: Path, workers: int, adapter: str):
    """PRICE-VER-02: SIGHUP reloads the list in every worker; an invalid list is refused with its
    `file:LINE: problem` and the running seller keeps serving the old one."""
    import threading

    prices = _with_price_list(home, LISTED)
    seller = start_seller(home, *(("--workers", str(workers)) if workers > 1 else ()), *(("--asgi",) if adapter == "asgi" else ()))
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, sink=sink: sink.extend(iter(s.readline, "")), daemon=True)
               for s, sink in ((seller.process.stdout, out), (seller.process.stderr, err))]
    for r in readers:
        r.start()
    try:
        assert _first_offer(seller.url)["pricing"]["priceList"] == "v1"
        prices.write_text(LISTED.replace('version = "v1"', 'version = "v2"').replace("amount = 25", "amount = 2.5"))
        seller.process.send_signal(signal.SIGHUP)
        _wait_for(err, rf"price list not reloaded \(still serving v1\): {re.escape(str(prices))}:\d+: 'amount' must be an integer")
        time.sleep(0.2)
        for _ in range(4):
            assert _first_offer(seller.url)["amount"] == "25"
        prices.write_text(LISTED.replace('version = "v1"', 'version = "v2"').replace("amount = 25", "amount = 30"))
        seller.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "".join(out).count("price list v2 loaded") < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "".join(out).count("price list v2 loaded") == workers, out
        for _ in range(4):
            offer = _first_offer(seller.url)
            assert (offer["amount"], offer["pricing"]["priceList"]) == ("30", "v2")
    finally:
        seller.process.send_signal(signal.SIGTERM)
        seller.process.wait(timeout=10)
        for r in readers:
            r.join(timeout=5)
    assert not any("Traceback" in line for line in err), err


UNIT_PRICES = """\
version = "u1"
currency = "usd"

[[routes]]
path = "/complete"

  [[routes.offers]]
  model = "unit"
  unit = "token"
  amount = 2
  per = 1000
  max_units = 4000

  [[routes.offers]]
  model = "transaction"
  amount = 7
"""


async def test_unit_offer_quotes_a_session_and_the_transaction_offer_as_its_charge(tmp_path: Path):
    """PRICE-MODEL-02, PRICE-MODEL-03: a unit offer is a session challenge (unitType = unit); the
    charge beside it is priced by the route's transaction offer, which adds no second charge."""
    from mpp.aio import meter_of
    from mpp.stores.sessions import SqliteSessionStore

    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account(ACCOUNT, "usd")
    agent = mpp.SigningKey.generate()
    ledger.keys.allow(ACCOUNT, agent.did, "owner")
    ledger.fund(ACCOUNT, FUNDS)
    seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                    store=SqlitePaymentStore(str(tmp_path / "payments.db")),
                    session_store=SqliteSessionStore(str(tmp_path / "sessions.db")),
                    price_list=load_price_list(UNIT_PRICES, source="unit.toml"))
    app = web.Application()

    async def complete(request: web.Request) -> web.Response:
        meter_of(request).report(1000)
        return web.json_response({"ok": True})

    app.router.add_get("/complete", complete)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/complete")) as resp:
                assert resp.status == 402
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate"))
            assert [(c.intent, c.request_json["pricing"]["model"]) for c in challenges] == [("session", "unit"),
                                                                                            ("charge", "transaction")]
            session_request, charge = (c.request_json for c in challenges)
            assert session_request["unitType"] == "token" and session_request["amount"] == "2"
            assert charge["amount"] == "7"
            quote = Quote(challenges[1], ChargeRequest.from_challenge(challenges[1]), LedgerBuyerMethod(key=agent, account=ACCOUNT))
            async with session.get(server.make_url("/complete"), headers={"Authorization": mpp.sign_quote(quote)}) as resp:
                assert resp.status == 200
                receipt = claims_of(parse_receipt(resp.headers["Payment-Receipt"]).receipt)
            assert (receipt["priceList"], receipt["model"], receipt["amount"]) == ("u1", "transaction", "7")
    finally:
        await server.close()
        ledger.close()
