"""A hand-driven session buyer for seller tests: every credential is built explicitly, so a
test can send exactly the voucher (or the forgery) it means to."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mpp
import mpp.asgi
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.aio.metering import SESSION_PATH, meter_of
from mpp.protocol.headers import format_credential, parse_challenges, parse_receipt
from mpp.ledger import SqliteLedger
from mpp.protocol.models import Challenge, Credential
from mpp.protocol.receipts import jwks_document, verify_receipt_jws
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, Voucher, sign_cap, sign_close, sign_voucher
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore

from _adapters import SELLERS, AsgiTestServer

PRICE, PER, MAX_UNITS = 2, 1000, 5000  # 2 usd-units per 1000 tokens; one request uses at most 5000 tokens (cost 10)


@dataclass
class SessionWorld:
    server: TestServer
    seller: Seller
    ledger: SqliteLedger
    agent: mpp.SigningKey
    http: aiohttp.ClientSession
    store: SqliteSessionStore
    requests: list[str] = field(default_factory=list)
    adapter: str = "aiohttp"

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def build_seller(tmp_path: Path, ledger: SqliteLedger, *, realm: str = "sessions.test", recipient: str = "acct:seller",
                 idle_timeout: int = 300, sweep: float = 0.2, name: str = "s", hits: list[str] | None = None,
                 adapter: str = "aiohttp") -> tuple[Seller, Any, SqliteSessionStore]:
    """The metered test seller on ``adapter``: its seller, application and session store."""
    store = SqliteSessionStore(str(tmp_path / f"{name}-sessions.db"))
    seller = SELLERS[adapter](realm=realm, secret=(name * 32).encode()[:32], receipt_key=mpp.SigningKey.generate(),
                              rails=[EmbeddedLedgerRail(ledger, recipient=recipient)],
                              store=SqlitePaymentStore(str(tmp_path / f"{name}-payments.db")),
                              session_store=store, session_sweep_interval=sweep)
    if adapter == "asgi":
        return seller, _asgi_app(seller, idle_timeout, hits), store

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="completion", idle_timeout=idle_timeout)
    async def complete(request: web.Request) -> web.Response:
        tokens = int(request.query.get("tokens", "1000"))
        meter_of(request).report(tokens)
        return web.json_response({"tokens": tokens})

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="stream", stream=True, idle_timeout=idle_timeout)
    async def stream(request: web.Request) -> web.StreamResponse:
        meter = meter_of(request)
        await meter.start(request)
        for i in range(int(request.query.get("chunks", "5"))):
            await meter.send(f"chunk {i}", units=int(request.query.get("tokens", "1000")))
            if "delay" in request.query:
                await asyncio.sleep(float(request.query["delay"]))
        return await meter.finish()

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="fails", idle_timeout=idle_timeout)
    async def fails(request: web.Request) -> web.Response:
        meter_of(request).report(MAX_UNITS)
        raise web.HTTPServiceUnavailable()

    @seller.meter("token", 2, "eur", per=1000, max_units=MAX_UNITS, description="in euros", idle_timeout=idle_timeout)
    async def euro(request: web.Request) -> web.Response:
        meter_of(request).report(1000)
        return web.json_response({"eur": True})

    @web.middleware
    async def count(request: web.Request, handler):
        if hits is not None:
            hits.append(f"{request.method} {request.path}")
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_get("/complete", complete)
    app.router.add_get("/stream", stream)
    app.router.add_get("/fails", fails)
    app.router.add_get("/euro", euro)
    seller.setup(app)
    return seller, app, store


def _asgi_app(seller: mpp.asgi.Seller, idle_timeout: int, hits: list[str] | None) -> Starlette:
    """build_seller's routes and handlers as a Starlette application."""

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="completion", idle_timeout=idle_timeout)
    async def complete(request: Request) -> JSONResponse:
        tokens = int(request.query_params.get("tokens", "1000"))
        mpp.asgi.meter_of(request).report(tokens)
        return JSONResponse({"tokens": tokens})

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="stream", stream=True, idle_timeout=idle_timeout)
    async def stream(request: Request) -> Any:
        meter = mpp.asgi.meter_of(request)
        await meter.start(request)
        for i in range(int(request.query_params.get("chunks", "5"))):
            await meter.send(f"chunk {i}", units=int(request.query_params.get("tokens", "1000")))
            if "delay" in request.query_params:
                await asyncio.sleep(float(request.query_params["delay"]))
        return await meter.finish()

    @seller.meter("token", PRICE, "usd", per=PER, max_units=MAX_UNITS, description="fails", idle_timeout=idle_timeout)
    async def fails(request: Request) -> JSONResponse:
        mpp.asgi.meter_of(request).report(MAX_UNITS)
        raise HTTPException(503)

    @seller.meter("token", 2, "eur", per=1000, max_units=MAX_UNITS, description="in euros", idle_timeout=idle_timeout)
    async def euro(request: Request) -> JSONResponse:
        mpp.asgi.meter_of(request).report(1000)
        return JSONResponse({"eur": True})

    app = Starlette(routes=[Route("/complete", complete), Route("/stream", stream), Route("/fails", fails),
                            Route("/euro", euro)])
    seller.setup(app)
    if hits is None:
        return app

    async def counted(scope: dict, receive: Any, send: Any) -> None:  # outermost, as aiohttp's middleware
        if scope["type"] == "http":
            hits.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    return counted  # type: ignore[return-value]


def server_for(app: Any) -> TestServer | AsgiTestServer:
    """An in-process server for an aiohttp or an ASGI application."""
    return TestServer(app, host="127.0.0.1") if isinstance(app, web.Application) else AsgiTestServer(app)


def make_ledger(tmp_path: Path, agent: mpp.SigningKey, *, funds: int = 10_000) -> SqliteLedger:
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account("acct:buyer", "usd")
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    ledger.fund("acct:buyer", funds)
    return ledger


@dataclass
class RawSession:
    """One session as a buyer holds it: the opening challenge, terms, and the last voucher."""

    world: SessionWorld
    challenge: Challenge
    request: SessionRequest
    terms: SessionTerms
    key: mpp.SigningKey
    account: str = "acct:buyer"
    cap: int = 0
    sequence: int = 0
    cumulative: int = 0

    @property
    def id(self) -> str:
        return self.challenge.id

    def voucher(self, cumulative: int, sequence: int | None = None, *, key: mpp.SigningKey | None = None,
                terms: SessionTerms | None = None) -> Voucher:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        return sign_voucher(key or self.key, terms or self.terms, cumulative, sequence)

    def credential(self, payload: SessionPayload, challenge: Challenge | None = None, **extensions: Any) -> str:
        return format_credential(Credential(challenge=challenge or self.challenge, payload=payload.as_json(),
                                            source=payload.signer, extensions=extensions))

    def voucher_credential(self, voucher: Voucher, *, signer: str | None = None, session_id: str | None = None) -> str:
        return self.credential(SessionPayload("voucher", session_id or self.id, signer or self.key.did, voucher=voucher))

    def close_credential(self) -> str:
        return self.credential(SessionPayload("close", self.id, self.key.did, close_signature=sign_close(self.key, self.terms)))


async def quote(world: SessionWorld, path: str) -> tuple[Challenge, list[Challenge]]:
    async with world.http.get(world.url(path)) as resp:
        assert resp.status == 402, await resp.text()
        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate"))
    (session,) = [c for c in challenges if c.intent == "session"]
    return session, challenges


async def open_session(world: SessionWorld, path: str = "/complete?tokens=1000", *, cap: int = 1000, first: int = 10,
                       key: mpp.SigningKey | None = None) -> tuple[RawSession, aiohttp.ClientResponse, bytes]:
    challenge, _ = await quote(world, path)
    request = SessionRequest.from_challenge(challenge)
    key = key or world.agent
    s = RawSession(world, challenge, request, SessionTerms.of(challenge, request), key, cap=cap)
    voucher = s.voucher(first)
    payload = SessionPayload("open", s.id, key.did, account=s.account, cap=cap,
                             cap_signature=sign_cap(key, s.terms, account=s.account, cap=cap), voucher=voucher)
    s.cumulative = first
    async with world.http.get(world.url(path), headers={"Authorization": s.credential(payload)}) as resp:
        body = await resp.read()
    return s, resp, body


async def send(world: SessionWorld, path: str, authorization: str, method: str = "GET") -> tuple[int, Any, CIMultiDict]:
    async with world.http.request(method, world.url(path), headers={"Authorization": authorization}) as resp:
        body = await resp.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = body.decode()
        return resp.status, doc, CIMultiDict(resp.headers)  # names are case-insensitive (ASGI sends them lowercased)


def receipt_claims(world: SessionWorld, header: str) -> dict[str, Any]:
    receipt = parse_receipt(header)
    jwks = jwks_document([world.seller.receipt_key])
    return verify_receipt_jws(receipt.receipt, jwks, issuer=world.seller.realm, challenge_id=receipt.challengeId,
                              now=world.seller.clock())
