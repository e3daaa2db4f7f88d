"""The standalone ledger service (`mpp ledger serve`, spec/methods/ledger.md §7) and sellers that
settle on it over HTTP (HttpLedgerRail): signed requests, payee binding, idempotent calls, lost
answers, sessions, and the budget of one principal held across two sellers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp.aio import HttpLedgerRail, LedgerUnavailable, PaymentClient, Seller
from mpp.purchase.agent import AgentIdentity
from mpp.aio.metering import SESSION_PATH, meter_of
from mpp.stores.doubt import SqliteDoubtJournal
from mpp.ledger.pg import PgLedger
from mpp.protocol.headers import format_credential, parse_challenges
from mpp.ledger import SqliteLedger, holding_account
from mpp.ledger.aio_adapter import AsyncSqliteLedgerStore
from mpp.ledger.nonces import SqliteNonces
from mpp.ledger.service import ledger_app
from mpp.ledger.signing import parse_authorization, sign_request, signed_bytes
from mpp.methods.ledger import LedgerBuyerMethod, authorization_message
from mpp.protocol.models import ChargeRequest, Credential
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, sign_cap, sign_close, sign_voucher
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import FUNDS, PAYEE, PAYER, PLAIN_PAYER, REALM, link_key, mandate, new_ledger
from conftest import REPO, start_seller, stop_seller

PAYEE2 = "acct:seller2"
PRICE, BUDGET = 100, 1000


# -- a ledger service on loopback, with a switch to make it fail --------------------------------


@dataclass
class Service:
    ledger: SqliteLedger
    server: TestServer
    http: aiohttp.ClientSession
    keys: dict[str, mpp.SigningKey]  # payee -> the seller key registered for it
    principal: mpp.SigningKey
    agent: mpp.SigningKey  # may spend from PLAIN_PAYER with its key alone
    fault: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def call(self, method: str, path: str, body: Any = None, *, key: mpp.SigningKey | None = None,
                   unsigned: bool = False, **sign: Any) -> tuple[int, dict[str, Any], Any]:
        """One request; signed by ``key`` (default: the first seller's) unless ``unsigned``.
        ``sign`` overrides what is signed: ledger_id, signed_method, signed_target, signed_body, now, nonce."""
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        headers = {}
        if not unsigned:
            key = key or self.keys[PAYEE]
            headers["Authorization"] = sign.pop("authorization", None) or sign_request(
                key, ledger_id=sign.get("ledger_id", self.ledger.ledger_id), method=sign.get("signed_method", method),
                target=sign.get("signed_target", path), body=sign.get("signed_body", data), now=sign.get("now"), nonce=sign.get("nonce"))
        async with self.http.request(method, self.server.make_url(path), data=data, headers=headers) as resp:
            raw = await resp.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"raw": raw.decode(errors="replace")}
            return resp.status, doc, resp.headers

    def transfer_body(self, tid: str, *, amount: int = PRICE, payee: str = PAYEE, payer: str = PLAIN_PAYER,
                      agent: mpp.SigningKey | None = None, signed_amount: int | None = None, realm: str = REALM) -> dict[str, Any]:
        """A transfer as a seller sends it: the agent's authorization over exactly this charge."""
        agent = agent or self.agent
        request = ChargeRequest(amount=str(signed_amount or amount), currency="usd", recipient=payee,
                                methodDetails={"ledger": self.ledger.ledger_id})
        signature = agent.sign(authorization_message(challenge_id=tid, realm=realm, request=request, account=payer))
        return {"id": tid, "realm": realm, "payer": payer, "payee": payee, "amount": str(amount), "currency": "usd",
                "signer": agent.did, "signature": signature}

    def charges(self) -> list:
        return [t for t in self.ledger.transfers() if t.kind == "charge"]


def _faults(fault: dict[str, Any]):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if fault.get("down"):
            return web.Response(status=503, text="down for maintenance")
        if fault.get("lose_transfer_answers", 0) > 0 and request.path == "/v1/transfers":
            await handler(request)  # the transfer is made ...
            fault["lose_transfer_answers"] -= 1
            return web.Response(status=502, text="answer lost")  # ... and its answer is lost
        return await handler(request)

    return middleware


@pytest.fixture
async def service(tmp_path: Path):
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    ledger.create_account(PAYEE2, "usd")
    ledger.keys.allow(PLAIN_PAYER, agent.did, "owner")
    keys = {PAYEE: mpp.SigningKey.generate(), PAYEE2: mpp.SigningKey.generate()}
    fault: dict[str, Any] = {}
    app = ledger_app(ledger, sellers={k.did: payee for payee, k in keys.items()})
    app.middlewares.append(_faults(fault))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Service(ledger, server, http, keys, principal, agent, fault)
    await server.close()
    ledger.close()


def assert_problem(status: int, doc: dict[str, Any], expected_status: int, error: str) -> None:
    assert (status, doc.get("error")) == (expected_status, error), doc
    assert doc["status"] == status and doc["type"] == "urn:mpp:ledger:" + error and doc["detail"]


# -- signed requests --------------------------------------------------------------------------


async def test_info_is_public_and_everything_else_needs_a_signature(service: Service):
    """LEDGER-SVC-01: GET /v1/info names the ledger without a signature; every other endpoint
    refuses an unsigned request 401 with a problem document and WWW-Authenticate: MPP-Ledger."""
    async with service.http.get(service.server.make_url("/v1/info")) as resp:
        assert resp.status == 200
        assert (await resp.json())["ledger"] == service.ledger.ledger_id
    for method, path, body in (("POST", "/v1/transfers", service.transfer_body("t-unsigned")), ("POST", "/v1/refunds", {"transfer": "x"}),
                               ("POST", "/v1/revoked", {"jtis": []}), ("POST", "/v1/sessions", {}),
                               ("POST", "/v1/sessions/s/close", {"capture": "0"}), ("GET", f"/v1/accounts/{PAYEE}", None)):
        status, doc, headers = await service.call(method, path, body, unsigned=True)
        assert_problem(status, doc, 401, "Unauthenticated")
        assert headers["WWW-Authenticate"] == "MPP-Ledger"
        assert headers["Content-Type"].startswith("application/problem+json")
    assert service.charges() == []


async def test_wrong_key_stale_timestamp_replay_and_tampering_are_refused(service: Service):
    """LEDGER-SVC-01, LEDGER-SVC-02: an unregistered key, a registered keyid with another key's
    signature, a stale or future timestamp, a replayed nonce, a tampered body, path or method, and a
    request signed for another ledger are each refused 401, and nothing moves."""
    body = service.transfer_body("t-auth")
    data = json.dumps(body).encode()
    stranger = mpp.SigningKey.generate()
    seller = service.keys[PAYEE]

    status, doc, _ = await service.call("POST", "/v1/transfers", body, key=stranger)
    assert_problem(status, doc, 401, "Unauthenticated")
    assert "not registered" in doc["detail"]

    forged = sign_request(stranger, ledger_id=service.ledger.ledger_id, method="POST", target="/v1/transfers", body=data)
    forged = forged.replace(stranger.did, seller.did)  # claims the seller's keyid, signed by another key
    status, doc, _ = await service.call("POST", "/v1/transfers", data, authorization=forged)
    assert_problem(status, doc, 401, "Unauthenticated")

    for skew in (-61, 61, -3600):
        status, doc, _ = await service.call("POST", "/v1/transfers", data, now=time.time() + skew)
        assert_problem(status, doc, 401, "Unauthenticated")
        assert "timestamp" in doc["detail"]

    other = service.transfer_body("t-auth", amount=PRICE * 10, signed_amount=PRICE * 10)
    status, doc, _ = await service.call("POST", "/v1/transfers", json.dumps(other).encode(), signed_body=data)  # signed A, sent B
    assert_problem(status, doc, 401, "Unauthenticated")
    status, doc, _ = await service.call("POST", "/v1/transfers", data, signed_target="/v1/refunds")
    assert_problem(status, doc, 401, "Unauthenticated")
    status, doc, _ = await service.call("POST", "/v1/transfers", data, signed_method="PUT")
    assert_problem(status, doc, 401, "Unauthenticated")
    status, doc, _ = await service.call("POST", "/v1/transfers", data, ledger_id="ledger-elsewhere")
    assert_problem(status, doc, 401, "Unauthenticated")
    for header in ("MPP-Ledger", "Bearer abc", 'MPP-Ledger keyid="x", ts="1", nonce="n", sig="s"',
                   sign_request(seller, ledger_id=service.ledger.ledger_id, method="POST", target="/v1/transfers", body=data) + ', ts="1"'):
        status, doc, _ = await service.call("POST", "/v1/transfers", data, authorization=header)
        assert_problem(status, doc, 401, "Unauthenticated")
    assert service.charges() == []

    header = sign_request(seller, ledger_id=service.ledger.ledger_id, method="POST", target="/v1/transfers", body=data)
    status, doc, _ = await service.call("POST", "/v1/transfers", data, authorization=header)
    assert status == 200, doc
    status, doc, _ = await service.call("POST", "/v1/transfers", data, authorization=header)  # the same request again
    assert_problem(status, doc, 401, "Unauthenticated")
    assert "nonce" in doc["detail"]
    assert len(service.charges()) == 1


def test_authorization_header_round_trips():
    """LEDGER-SVC-01, LEDGER-SVC-02: the header carries keyid, ts, a fresh 128-bit nonce and an
    86-character signature, and parses back to them."""
    key = mpp.SigningKey.generate()
    a = sign_request(key, ledger_id="ledger-1", method="POST", target="/v1/transfers", body=b"{}", now=1767225600)
    b = sign_request(key, ledger_id="ledger-1", method="POST", target="/v1/transfers", body=b"{}", now=1767225600)
    pa, pb = parse_authorization(a), parse_authorization(b)
    assert re.fullmatch(r'MPP-Ledger keyid="did:key:z\w+", ts="1767225600", nonce="[\w-]{22}", sig="[\w-]{86}"', a)
    assert (pa.keyid, pa.ts) == (key.did, 1767225600) and pa.nonce != pb.nonce
    # the example of spec/methods/ledger.md §7.2, byte for byte
    example = (REPO / "spec" / "methods" / "ledger.md").read_text().split("```\nmpp-ledger-request-v1\n", 1)[1].split("\n```", 1)[0]
    target = "/v1/transfers/x7Qm3a9LbXw0cZpRkT2yVn8sUe4dHf6jGi1oKlMqPrA/void"
    assert signed_bytes(ledger_id="ledger-0f3a9c1d2e4b5a69", method="post", target=target, ts=1767225600,
                        nonce="mD3yX2v0b1Qk9cT8aL5nWg", body=b"") == b"mpp-ledger-request-v1\n" + example.encode()


async def test_a_seller_may_credit_only_its_own_payee(service: Service):
    """LEDGER-SVC-03: seller 2 cannot credit seller 1's account, refund, void or read it, or
    close seller 1's session; nothing moves."""
    before = [(a.id, a.balance) for a in service.ledger.accounts()]
    other = service.keys[PAYEE2]
    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("t-1"), key=other)
    assert_problem(status, doc, 403, "Forbidden")
    assert [(a.id, a.balance) for a in service.ledger.accounts()] == before

    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("t-1"))  # seller 1 itself
    assert status == 200, doc
    for method, path, body in (("POST", "/v1/refunds", {"transfer": "t-1"}), ("POST", "/v1/transfers/t-1/void", None),
                               ("GET", f"/v1/accounts/{PAYEE}", None)):
        status, doc, _ = await service.call(method, path, body, key=other)
        assert_problem(status, doc, 403, "Forbidden")
    status, doc, _ = await service.call("GET", f"/v1/accounts/{PAYEE}")
    assert status == 200 and doc["account"]["balance"] == str(PRICE)

    terms = SessionTerms("sess-own", REALM, PAYEE, service.ledger.ledger_id, "usd", 2, 1000)
    opening = {"terms": terms.as_json(), "payer": PLAIN_PAYER, "signer": service.agent.did, "cap": "300",
               "capSignature": sign_cap(service.agent, terms, account=PLAIN_PAYER, cap=300)}
    status, doc, _ = await service.call("POST", "/v1/sessions", opening, key=other)
    assert_problem(status, doc, 403, "Forbidden")
    status, doc, _ = await service.call("POST", "/v1/sessions", opening)
    assert status == 200 and doc["session"]["cap"] == "300", doc
    status, doc, _ = await service.call("POST", "/v1/sessions/sess-own/close", {"capture": "0", "voucher": None}, key=other)
    assert_problem(status, doc, 403, "Forbidden")
    assert service.ledger.sessions.get("sess-own").status == "open"
    assert service.ledger.total() == 0 and service.ledger.check() == []


async def test_the_service_verifies_the_agents_authorization_itself(service: Service):
    """LEDGER-SVC-04, LEDGER-16: a transfer whose agent signature was made over another amount, by
    another key, or for another realm's mandate is refused 403 AuthorizationInvalid, nothing moved."""
    tampered = service.transfer_body("t-sig", amount=PRICE * 50, signed_amount=PRICE)  # seller asks for more than signed
    status, doc, _ = await service.call("POST", "/v1/transfers", tampered)
    assert_problem(status, doc, 403, "AuthorizationInvalid")
    stolen = service.transfer_body("t-sig", agent=mpp.SigningKey.generate())
    stolen["signer"] = service.agent.did
    status, doc, _ = await service.call("POST", "/v1/transfers", stolen)
    assert_problem(status, doc, 403, "AuthorizationInvalid")
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    elsewhere = service.transfer_body("t-sig", payer=PAYER) | {"mandate": {"tokens": [token], "realm": "other.test"}}
    status, doc, _ = await service.call("POST", "/v1/transfers", elsewhere)
    assert_problem(status, doc, 403, "AuthorizationInvalid")
    assert service.charges() == []


async def test_realm_and_ids_are_at_most_255_printable_characters(service: Service, tmp_path: Path):
    """LEDGER-SVC-15: a realm of 255 characters settles; one of 256, or with a control character,
    is refused 400 InvalidRequest with nothing moved, as is a transfer id of 256; and a seller on
    the service refuses to start with a realm the service would refuse."""
    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("t-realm", realm="r" * 255))
    assert status == 200, doc
    for tid, realm in (("t-long", "r" * 256), ("t-ctl", "api\x00.test"), ("t" * 256, REALM)):
        status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body(tid, realm=realm))
        assert_problem(status, doc, 400, "InvalidRequest")
    assert [t.id for t in service.charges()] == ["t-realm"]
    rail = HttpLedgerRail(service.url, key=service.keys[PAYEE], recipient=PAYEE, reconcile_interval=0)
    with pytest.raises(ValueError, match="255"):
        Seller(realm="r" * 256, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(), rails=[rail],
               store=SqlitePaymentStore(str(tmp_path / "p.db")))


async def test_a_transfer_is_idempotent_by_id(service: Service):
    """LEDGER-SVC-05, LEDGER-12: the same transfer sent twice (fresh signatures) gives the same
    answer and one transfer; the same id with other terms is refused 409 TransferConflict."""
    body = service.transfer_body("t-once")
    first = await service.call("POST", "/v1/transfers", body)
    second = await service.call("POST", "/v1/transfers", body)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert first[1]["transfer"] | {"createdAt": None} == {"id": "t-once", "payer": PLAIN_PAYER, "payee": PAYEE, "amount": str(PRICE),
                                                        "currency": "usd", "kind": "charge", "createdAt": None,
                                                        "signer": service.agent.did}
    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("t-once", amount=PRICE + 1))
    assert_problem(status, doc, 409, "TransferConflict")
    assert [t.id for t in service.charges()] == ["t-once"]
    refunds = [await service.call("POST", "/v1/refunds", {"transfer": "t-once"}) for _ in range(2)]
    assert refunds[0][0] == refunds[1][0] == 200 and refunds[0][1] == refunds[1][1]
    assert [t.id for t in service.ledger.transfers() if t.kind == "refund"] == ["refund:t-once"]
    assert service.ledger.balance(PAYEE) == 0 and service.ledger.total() == 0


async def test_void_refunds_a_made_charge_and_bars_an_unmade_one(service: Service):
    """LEDGER-SVC-06, LEDGER-SVC-05: voiding a made charge refunds it (once); voiding an id
    never used makes a later transfer under it fail 409 TransferConflict."""
    await service.call("POST", "/v1/transfers", service.transfer_body("t-made"))
    for _ in range(2):
        status, doc, _ = await service.call("POST", "/v1/transfers/t-made/void")
        assert status == 200 and doc["refund"]["id"] == "refund:t-made", doc
    status, doc, _ = await service.call("POST", "/v1/transfers/t-never/void")
    assert status == 200 and doc["refund"] is None
    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("t-never"))
    assert_problem(status, doc, 409, "TransferConflict")
    assert service.ledger.balance(PAYEE) == 0 and service.ledger.balance(PLAIN_PAYER) == 100_000
    assert service.ledger.total() == 0 and service.ledger.check() == []


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"null", b"[" * 100_000, b'{"id": 5}', b"\xff\xfe",
                                  json.dumps({"id": "x", "amount": "-1"}).encode(), json.dumps({"jtis": "x"}).encode(),
                                  json.dumps({"terms": {"sessionId": "a"}}).encode(), json.dumps({"capture": 1}).encode(),
                                  json.dumps({"transfer": ["x"]}).encode()])
async def test_bad_input_is_a_4xx_problem_never_a_5xx(service: Service, body: bytes):
    """LEDGER-SVC-07: malformed bodies, signed properly, to every endpoint: each answer is a 4xx
    problem document naming its error; no 5xx."""
    for method, path in (("POST", "/v1/transfers"), ("POST", "/v1/refunds"), ("POST", "/v1/revoked"), ("POST", "/v1/sessions"),
                         ("POST", "/v1/sessions/x/top-up"), ("POST", "/v1/sessions/x/close"), ("POST", "/v1/nowhere"),
                         ("DELETE", "/v1/transfers")):
        status, doc, headers = await service.call(method, path, body)
        assert 400 <= status < 500, (path, status, doc)
        assert doc["error"] and doc["status"] == status and headers["Content-Type"].startswith("application/problem+json")
    status, doc, _ = await service.call("POST", "/v1/transfers", b"x" * (300 * 1024))
    assert_problem(status, doc, 413, "PayloadTooLarge")


async def test_bodies_that_are_not_strict_json_are_invalid_requests(service: Service):
    """CORE-CRED-07, LEDGER-SVC-07: a correctly signed transfer whose body also holds NaN,
    Infinity, a repeated member or 33-deep nesting is refused 400 InvalidRequest and moves
    nothing; the same transfer as a seller sends it is made."""
    body = json.dumps(service.transfer_body("t-strict"))
    for extra in (',"x":NaN', ',"x":Infinity', ',"x":-Infinity', ',"x":1e400', ',"amount":"100"',
                  ',"x":' + "[" * 32 + "]" * 32, ',"x":' + "[" * 5000 + "]" * 5000):
        status, doc, _ = await service.call("POST", "/v1/transfers", (body[:-1] + extra + "}").encode())
        assert_problem(status, doc, 400, "InvalidRequest")
    assert service.charges() == []
    status, doc, _ = await service.call("POST", "/v1/transfers", body.encode())
    assert status == 200, doc
    assert [t.id for t in service.charges()] == ["t-strict"]


async def test_nothing_secret_reaches_the_logs(service: Service, caplog: pytest.LogCaptureFixture):
    """LEDGER-SVC-08: a transfer under a mandate and a refused one are logged by ids only: no
    signature, mandate token or Authorization value in the service's log."""
    caplog.set_level(logging.DEBUG)
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    body = service.transfer_body("t-log", payer=PAYER) | {"mandate": {"tokens": [token], "realm": REALM}}
    status, doc, _ = await service.call("POST", "/v1/transfers", body)
    assert status == 200, doc
    bad = service.transfer_body("t-log2", signed_amount=7)
    await service.call("POST", "/v1/transfers", bad)
    assert "t-log" in caplog.text
    for secret in (body["signature"], bad["signature"], token, token.split(".")[2]):
        assert secret not in caplog.text


# -- sellers on the service (HttpLedgerRail) ---------------------------------------------------


def http_seller(service: Service | Remote, payee: str, store: str, *, routes: dict[str, int] | None = None, attempts: int = 3,
                sessions: str | None = None, name: str = "a", journal: Any = None) -> tuple[web.Application, Seller, HttpLedgerRail]:
    rail = HttpLedgerRail(service.url, key=service.keys[payee], recipient=payee, attempts=attempts, backoff=0.01,
                          reconcile_interval=0, journal=journal)
    seller = Seller(realm=REALM, secret=(name * 32).encode()[:32], receipt_key=mpp.SigningKey.generate(), rails=[rail],
                    store=SqlitePaymentStore(store), trusted_principals={service.principal.did}, max_chain_depth=2,
                    session_store=SqliteSessionStore(sessions) if sessions else None)
    app = web.Application()
    for path, amount in (routes or {"/thing": PRICE}).items():
        @seller.price(amount, "usd", path, require_identity=True)
        async def handler(request: web.Request) -> web.Response:
            if request.path == "/broken":
                raise web.HTTPInternalServerError()
            return web.json_response({"ok": request.path})

        app.router.add_get(path, handler)
    if sessions:
        @seller.meter("token", 2, "usd", per=1000, max_units=5000, require_identity=True)  # one request costs at most 10
        async def complete(request: web.Request) -> web.Response:
            meter_of(request).report(int(request.query.get("units", "1000")))
            return web.json_response({"ok": True})

        app.router.add_get("/complete", complete)
    seller.setup(app)
    app.cleanup_ctx.append(rail.lifecycle)
    return app, seller, rail


async def start(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def client(session: aiohttp.ClientSession, agent: mpp.SigningKey, chain: list[str]) -> PaymentClient:
    return PaymentClient(session, [LedgerBuyerMethod(key=agent, account=PAYER)], mpp.BuyerPolicy(max_amount=1000),
                         identity=AgentIdentity(agent, chain, budget=None))


async def test_purchase_through_a_seller_on_the_service(service: Service, tmp_path: Path):
    """LEDGER-SVC-10, LEDGER-17: a seller pointed at the service by URL quotes its ledger id,
    settles there (reference = challenge id), and a handler failure is refunded there."""
    app, seller, rail = http_seller(service, PAYEE, str(tmp_path / "p.db"), routes={"/thing": PRICE, "/broken": PRICE})
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing", "GET /broken"], approval_threshold=None)
    try:
        assert rail.ledger_id == service.ledger.ledger_id
        async with aiohttp.ClientSession() as http:
            buyer = client(http, service.agent, [token])
            resp = await buyer.request("GET", str(server.make_url("/thing")))
            assert resp.status == 200 and resp.paid
            assert resp.receipt.reference == resp.receipt.challengeId
            with pytest.raises(mpp.OutcomeUnknown):  # the handler failed after settlement: 500, refunded
                await buyer.request("GET", str(server.make_url("/broken")))
    finally:
        await server.close()
    assert [(t.kind, t.amount) for t in service.ledger.transfers() if t.kind in ("charge", "refund")] == [
        ("charge", PRICE), ("charge", PRICE), ("refund", PRICE)]
    assert service.ledger.balance(PAYEE) == PRICE and service.ledger.total() == 0 and service.ledger.check() == []


async def test_a_lost_answer_is_resent_and_settles_once(service: Service, tmp_path: Path):
    """LEDGER-SVC-05, LEDGER-SVC-10: the ledger makes the transfer but its answer is lost (502);
    the rail sends the same transfer again, gets the existing one, and the buyer is served once."""
    app, seller, rail = http_seller(service, PAYEE, str(tmp_path / "p.db"), attempts=3)
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    try:
        async with aiohttp.ClientSession() as http:
            service.fault["lose_transfer_answers"] = 2
            resp = await client(http, service.agent, [token]).request("GET", str(server.make_url("/thing")))
    finally:
        await server.close()
    assert resp.status == 200 and resp.paid
    assert [t.id for t in service.charges()] == [resp.receipt.challengeId]
    assert rail.doubt.pending == {}


async def test_no_answer_is_a_503_and_the_charge_is_voided(service: Service, tmp_path: Path):
    """LEDGER-SVC-10, LEDGER-SVC-06: every answer lost: the buyer gets 503 ledger-unavailable
    (outcome unknown, nothing delivered), and once the ledger answers again the rail voids the
    transfer it may have made, so the payer has its money back."""
    app, seller, rail = http_seller(service, PAYEE, str(tmp_path / "p.db"), attempts=2)
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    before = service.ledger.balance(PAYER)
    try:
        async with aiohttp.ClientSession() as http:
            service.fault["lose_transfer_answers"] = 2
            with pytest.raises(mpp.OutcomeUnknown) as exc:  # a 503: nothing delivered, outcome unknown to the buyer
                await client(http, service.agent, [token]).request("GET", str(server.make_url("/thing")))
        cid = exc.value.challenge_id
        assert list(rail.doubt.pending) == [cid]
        assert [t.id for t in service.charges()] == [cid]  # made, but nobody knew
        service.fault["down"] = True
        assert await rail.reconcile() == 1  # still unreachable: kept
        service.fault["down"] = False
        assert await rail.reconcile() == 0
    finally:
        await server.close()
    assert service.ledger.get_transfer("refund:" + cid) is not None
    assert service.ledger.balance(PAYER) == before and service.ledger.balance(PAYEE) == 0
    assert service.ledger.total() == 0 and service.ledger.check() == []


async def test_a_seller_lists_its_own_transfers_and_its_sales_reconcile(service: Service, tmp_path: Path):
    """LEDGER-SVC-11, LEDGER-SVC-03, PRICE-USAGE-02: a seller on the service lists the transfers to
    and from its payee in a window (its charge, and a refund), and its sales records reconcile
    with them; another account's listing is refused 403; a bad window is a 400 problem."""
    from datetime import datetime, timedelta, timezone

    from mpp.engine.usage import build_report, ledger_transfers, read_usage, reconcile

    store = str(tmp_path / "p.db")
    app, seller, rail = http_seller(service, PAYEE, store, routes={"/thing": PRICE, "/broken": PRICE})
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing", "GET /broken"], approval_threshold=None)
    since = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        async with aiohttp.ClientSession() as http:
            buyer = client(http, service.agent, [token])
            paid = await buyer.request("GET", str(server.make_url("/thing")))
            with pytest.raises(mpp.OutcomeUnknown):  # paid, the handler failed (500), refunded
                await buyer.request("GET", str(server.make_url("/broken")))
        until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        listed = await rail.transfers_between(since, until)
        assert [(t.kind, t.amount) for t in listed] == [("charge", PRICE), ("charge", PRICE), ("refund", PRICE)]
        assert paid.receipt.reference in {t.id for t in listed}
        assert await rail.transfers_between(until, until + timedelta(hours=1)) == []
        records = await read_usage(seller.store, None, since=since, until=until)
        report = build_report(records, since=since, until=until)
        assert reconcile(report, records, await ledger_transfers(rail, PAYEE, since=since, until=until), PAYEE) == []
        assert report["totals"]["usd"]["net"] == str(PRICE)
    finally:
        await server.close()
    status, doc, _ = await service.call("GET", f"/v1/accounts/{PAYEE2}/transfers?since=2020-01-01T00:00:00Z&until=2030-01-01T00:00:00Z")
    assert_problem(status, doc, 403, "Forbidden")
    for query in ("", "?since=2020-01-01T00:00:00Z", "?since=yesterday&until=2030-01-01T00:00:00Z",
                  "?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z"):
        status, doc, _ = await service.call("GET", f"/v1/accounts/{PAYEE}/transfers{query}")
        assert_problem(status, doc, 400, "InvalidRequest")


async def test_an_in_doubt_charge_is_voided_after_a_seller_restart(service: Service, tmp_path: Path):
    """LEDGER-SVC-10: the answer to a transfer is lost and the seller stops before the ledger
    answers again; the in-doubt transfer is in the journal beside its payment records, and the
    next seller process on that store voids it, so the buyer told 503 is not left charged."""
    store = str(tmp_path / "p.db")
    app, seller, rail = http_seller(service, PAYEE, store, attempts=1, journal=SqliteDoubtJournal(store))
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    before = service.ledger.balance(PAYER)
    try:
        async with aiohttp.ClientSession() as http:
            service.fault["lose_transfer_answers"] = 1
            with pytest.raises(mpp.OutcomeUnknown) as exc:
                await client(http, service.agent, [token]).request("GET", str(server.make_url("/thing")))
        cid = exc.value.challenge_id
        assert [t.id for t in service.charges()] == [cid] and service.ledger.balance(PAYER) == before - PRICE
        service.fault["down"] = True  # the void at shutdown cannot reach the ledger either
    finally:
        await server.close()
    assert rail.doubt.pending == {cid: "settle got no usable answer"}
    service.fault["down"] = False
    again = HttpLedgerRail(service.url, key=service.keys[PAYEE], recipient=PAYEE, reconcile_interval=0,
                           journal=SqliteDoubtJournal(store))
    await again.start()
    try:
        assert list(again.doubt.pending) == [cid]  # read back from the journal
        assert await again.reconcile() == 0
        assert await again.doubt.journal.pending() == {}
    finally:
        await again.stop()
    assert service.ledger.get_transfer("refund:" + cid) is not None
    assert service.ledger.balance(PAYER) == before and service.ledger.total() == 0 and service.ledger.check() == []


async def test_a_503_problem_when_the_ledger_is_down(service: Service, tmp_path: Path):
    """LEDGER-SVC-10, IDENT-REV-03: the ledger answers 5xx: the revocation query fails, the seller
    answers 503 urn:mpp:problem:ledger-unavailable without consuming the challenge, and the same
    credential is accepted once the ledger is back."""
    app, seller, rail = http_seller(service, PAYEE, str(tmp_path / "p.db"), attempts=2)
    server = await start(app)
    token = mandate(service.principal, service.agent, scope=["GET /thing"], approval_threshold=None)
    try:
        async with aiohttp.ClientSession() as http:
            buyer = client(http, service.agent, [token])
            header = await buyer.credential("GET", str(server.make_url("/thing")))
            service.fault["down"] = True
            async with http.get(server.make_url("/thing"), headers={"Authorization": header}) as resp:
                doc = await resp.json(content_type=None)
                assert resp.status == 503 and doc["type"] == "urn:mpp:problem:ledger-unavailable", doc
                assert "Payment-Receipt" not in resp.headers
            service.fault["down"] = False
            async with http.get(server.make_url("/thing"), headers={"Authorization": header}) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        await server.close()
    assert len(service.charges()) == 1 and rail.doubt.pending == {}


async def test_session_hold_capture_release_over_http(service: Service, tmp_path: Path):
    """LEDGER-SVC-05, SESSION-LEDGER-01, SESSION-LEDGER-02, SESSION-LEDGER-03, SESSION-LEDGER-04: open
    holds the cap at the ledger service, a top-up holds the difference, close captures what the
    voucher covers and releases the rest; each call repeated moves nothing more; another seller
    cannot close it; a capture above the voucher is refused."""
    rail = HttpLedgerRail(service.url, key=service.keys[PAYEE], recipient=PAYEE, reconcile_interval=0)
    other = HttpLedgerRail(service.url, key=service.keys[PAYEE2], recipient=PAYEE2, reconcile_interval=0, attempts=1)
    await rail.start()
    await other.start()
    a, ledger = service.agent, service.ledger
    terms = SessionTerms("sess-1", REALM, PAYEE, ledger.ledger_id, "usd", 2, 1000)
    try:
        for _ in range(2):
            hold = await rail.open_session(terms, payer=PLAIN_PAYER, signer=a.did, cap=500,
                                           cap_signature=sign_cap(a, terms, account=PLAIN_PAYER, cap=500))
            assert (hold.cap, hold.status) == (500, "open")
        assert ledger.balance(holding_account("usd")) == 500
        with pytest.raises(mpp.protocol.errors.PaymentProblem) as refused:  # the cap signature is checked by the ledger
            await rail.top_up_session("sess-1", cap=900, cap_signature=sign_cap(a, terms, account=PLAIN_PAYER, cap=800))
        assert refused.value.slug == "session-voucher-invalid"
        for _ in range(2):
            hold = await rail.top_up_session("sess-1", cap=800, cap_signature=sign_cap(a, terms, account=PLAIN_PAYER, cap=800))
        assert hold.cap == 800 and ledger.balance(holding_account("usd")) == 800
        voucher = sign_voucher(a, terms, 120, 3)
        with pytest.raises(LedgerUnavailable):  # seller 2 may not touch seller 1's session: refused, nothing moved
            await other.close_session("sess-1", capture=100, voucher=voucher)
        with pytest.raises(Exception) as over:
            await rail.close_session("sess-1", capture=121, voucher=voucher)
        assert type(over.value).__name__ == "CaptureRefused"
        for _ in range(2):
            closed = await rail.close_session("sess-1", capture=100, voucher=voucher)
            assert (closed.captured, closed.released, closed.capture_ref) == (100, 700, "capture:sess-1")
    finally:
        await rail.stop()
        await other.stop()
    assert ledger.balance(PAYEE) == 100 and ledger.balance(PLAIN_PAYER) == 100_000 - 100
    assert ledger.balance(holding_account("usd")) == 0 and ledger.total() == 0 and ledger.check() == []


# -- acceptance criterion 3: one principal's budget across two sellers on the service ------------


@dataclass
class Remote:
    """A ledger service in another process (`mpp ledger serve`), as http_seller needs it."""

    url: str
    keys: dict[str, mpp.SigningKey]
    principal: mpp.SigningKey


async def _twenty_purchases_across_two_sellers(service: Service | Remote, ledger: Any, agent: mpp.SigningKey,
                                               tmp_path: Path, other: Remote | None = None) -> None:
    """Agent A (root mandate, budget 1000) and sub-agent B (a delegated mandate) buy from two
    sellers, the first on ``service``, the second on ``other`` (default: the same service): one
    purchase at each, then 18 at once, 20 purchases of 100 in all, each under the 500 ceiling,
    twice the budget together; then check what ``ledger`` (either engine, read through its async
    interface) settled."""
    P, A, B = service.principal, agent, mpp.SigningKey.generate()
    root = mandate(P, A, scope=["GET /thing"], ceiling=500, budget_amount=BUDGET, approval_threshold=None)
    sub = mandate(A, B, principal=P.did, scope=["GET /thing"], ceiling=500, budget_amount=BUDGET, approval_threshold=None,
                  max_depth=1)
    app1, _, rail1 = http_seller(service, PAYEE, str(tmp_path / "s1.db"), name="a")
    app2, _, rail2 = http_seller(other or service, PAYEE2, str(tmp_path / "s2.db"), name="b")
    s1, s2 = await start(app1), await start(app2)
    before = {a.id: a.balance for a in await ledger.accounts()}
    assert await ledger.total() == 0
    try:
        async with aiohttp.ClientSession() as http:
            buyers = [client(http, A, [root]), client(http, B, [root, sub])]
            # one purchase at each seller first (so both are seen to sell), then the other 18 at once
            results = [await buyers[0].request("GET", str(s1.make_url("/thing"))),
                       await buyers[1].request("GET", str(s2.make_url("/thing")))]
            jobs = [buyers[i % 2].request("GET", str((s1 if (i // 2) % 2 else s2).make_url("/thing"))) for i in range(18)]
            results += await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await s1.close()
        await s2.close()

    paid = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(r.status == 200 and r.paid for r in paid)
    assert all(isinstance(r, mpp.PaymentFailed) for r in refused), refused
    assert all((r.status, r.problem.get("type")) == (403, "urn:mpp:problem:budget-exceeded") for r in refused)
    assert all("ledger" in r.problem["detail"] for r in refused)  # the ledger refused, not a seller's own share
    settled = [t for t in await ledger.transfers() if t.kind == "charge"]
    assert sum(t.amount for t in settled) <= BUDGET
    assert len(paid) == BUDGET // PRICE and sum(t.amount for t in settled) == BUDGET
    assert {t.payee for t in settled} == {PAYEE, PAYEE2}
    assert await ledger.keys.mandate_spent(link_key(root), "total") == BUDGET
    after = {a.id: a.balance for a in await ledger.accounts()}
    assert after[PAYER] == before[PAYER] - BUDGET and after[PAYEE] + after[PAYEE2] == BUDGET
    assert sum(after.values()) == sum(before.values()) == 0
    assert await ledger.total() == 0 and await ledger.check() == []
    assert rail1.doubt.pending == rail2.doubt.pending == {}


async def test_budget_holds_across_two_sellers_on_the_ledger_service(service: Service, tmp_path: Path):
    """LEDGER-SVC-09, IDENT-BUD-05, LEDGER-14: two sellers, each with its own key, payee and stores,
    settle on one ledger service. Agent A (root mandate, budget 1000) and sub-agent B (a delegated
    mandate) buy concurrently from both: 20 purchases of 100, each under the 500 ceiling, twice the
    budget together. Neither seller's own share refuses; the ledger lets exactly ten through,
    settles 1000 and not one unit more, and the sum of all balances is unchanged (zero)."""
    await _twenty_purchases_across_two_sellers(service, AsyncSqliteLedgerStore(service.ledger), service.agent, tmp_path)


async def test_budget_holds_across_two_sellers_on_a_ledger_service_process(tmp_path: Path):
    """LEDGER-SVC-09, IDENT-BUD-05: the same, with the ledger service in its own process
    (`mpp ledger serve`, both sellers' keys registered on the command line)."""
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    path = str(tmp_path / "ledger.db")
    new_ledger(path, principal.did).close()
    keys = {PAYEE: mpp.SigningKey.generate(), PAYEE2: mpp.SigningKey.generate()}
    proc, url = await asyncio.to_thread(_start_ledger, "--ledger", path, *(f"--seller={k.did}={payee}" for payee, k in keys.items()))
    ledger = AsyncSqliteLedgerStore.at(path)  # a reader beside the service (WAL)
    try:
        await _twenty_purchases_across_two_sellers(Remote(url, keys, principal), ledger, agent, tmp_path)
    finally:
        await ledger.close()
        err = await asyncio.to_thread(_stop, proc)
        assert "Traceback" not in err, err


async def new_pg_ledger(url: str, principal: str) -> PgLedger:
    """The accounts of new_ledger, on PostgreSQL."""
    ledger = await PgLedger.connect(url, max_size=4)
    for account in (PAYEE, PAYER, PLAIN_PAYER):
        await ledger.create_account(account, "usd")
    await ledger.keys.allow(PAYER, principal, "owner")
    await ledger.fund(PAYER, FUNDS)
    await ledger.fund(PLAIN_PAYER, FUNDS)
    return ledger


async def test_budget_holds_across_two_ledger_service_processes_on_postgresql(pg_url: str, tmp_path: Path):
    """LEDGER-SVC-09, LEDGER-SVC-02, IDENT-BUD-05: two `mpp ledger serve` processes on one PostgreSQL
    ledger, each seller on its own service process; agents of one principal buy concurrently from
    both: the ledger settles exactly the budget and the sum of balances is unchanged (zero). A
    request accepted by one service process is refused as a replay by the other (the nonces are
    kept in the ledger's database)."""
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = await new_pg_ledger(pg_url, principal.did)
    keys = {PAYEE: mpp.SigningKey.generate(), PAYEE2: mpp.SigningKey.generate()}
    sellers = [f"--seller={k.did}={payee}" for payee, k in keys.items()]
    started = await asyncio.gather(*(asyncio.to_thread(_start_ledger, "--ledger", pg_url, *sellers) for _ in range(2)))
    (p1, url1), (p2, url2) = started
    try:
        assert url1 != url2
        await _twenty_purchases_across_two_sellers(Remote(url1, keys, principal), ledger, agent, tmp_path,
                                                   other=Remote(url2, keys, principal))
        # one signed request, sent to both service processes: the second refuses it as a replay
        header = sign_request(keys[PAYEE], ledger_id=ledger.ledger_id, method="GET", target=f"/v1/accounts/{PAYEE}", body=b"")
        async with aiohttp.ClientSession() as http:
            statuses = []
            for url in (url1, url2):
                async with http.get(f"{url}/v1/accounts/{PAYEE}", headers={"Authorization": header}) as resp:
                    statuses.append((resp.status, (await resp.json(content_type=None)).get("detail", "")))
        assert statuses[0][0] == 200 and statuses[1][0] == 401 and "nonce" in statuses[1][1], statuses
    finally:
        await ledger.close()
        for proc in (p1, p2):
            err = await asyncio.to_thread(_stop, proc)
            assert "Traceback" not in err, err


async def test_nonces_outlive_a_service_restart(tmp_path: Path):
    """LEDGER-SVC-02: the service remembers accepted nonces in the ledger's own file: a request
    replayed after the service restarted is still refused."""
    principal = mpp.SigningKey.generate()
    path = str(tmp_path / "ledger.db")
    new_ledger(path, principal.did).close()
    key = mpp.SigningKey.generate()
    answers = []
    for _ in range(2):
        ledger = SqliteLedger(path)
        app = ledger_app(ledger, sellers={key.did: PAYEE}, close_ledger=True, nonces=SqliteNonces(path))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            if not answers:
                header = sign_request(key, ledger_id=ledger.ledger_id, method="GET", target=f"/v1/accounts/{PAYEE}", body=b"")
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url(f"/v1/accounts/{PAYEE}"), headers={"Authorization": header}) as resp:
                    answers.append((resp.status, await resp.json(content_type=None)))
        finally:
            await server.close()
    assert answers[0][0] == 200 and answers[0][1]["account"]["id"] == PAYEE, answers[0]
    assert answers[1][0] == 401 and "nonce" in answers[1][1]["detail"], answers[1]


async def _open_session(http: aiohttp.ClientSession, server: TestServer, agent: mpp.SigningKey, chain: list[str], cap: int):
    url = str(server.make_url("/complete"))
    async with http.get(url) as resp:
        assert resp.status == 402
        (challenge,) = [c for c in parse_challenges(resp.headers.getall("WWW-Authenticate")) if c.intent == "session"]
    request = SessionRequest.from_challenge(challenge)
    terms = SessionTerms.of(challenge, request)
    payload = SessionPayload("open", challenge.id, agent.did, account=PAYER, cap=cap,
                             cap_signature=sign_cap(agent, terms, account=PAYER, cap=cap),
                             voucher=sign_voucher(agent, terms, 30, 1))
    header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=agent.did,
                                          extensions={"identity": I.identity_member(chain, agent, challenge, request)}))
    async with http.get(url, headers={"Authorization": header}) as resp:
        return resp.status, await resp.json(content_type=None), challenge, terms


async def _close_session(http: aiohttp.ClientSession, server: TestServer, agent: mpp.SigningKey, challenge, terms) -> int:
    payload = SessionPayload("close", challenge.id, agent.did, close_signature=sign_close(agent, terms))
    header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=agent.did))
    async with http.post(server.make_url(SESSION_PATH), headers={"Authorization": header}) as resp:
        return resp.status


async def test_session_caps_across_two_sellers_stay_within_budget(service: Service, tmp_path: Path):
    """LEDGER-SVC-09, SESSION-LEDGER-05, IDENT-BUD-05: four concurrent session opens of 400 under one
    mandate (budget 1000), two at each seller: each seller's own share admits both of its own, the
    ledger holds at most the budget (two opens, 800), the rest are refused budget-exceeded; after
    closing, the ledger sums to zero and the released caps are back in the budget."""
    P, A, ledger = service.principal, service.agent, service.ledger
    token = mandate(P, A, scope=["GET /complete"], ceiling=50, budget_amount=BUDGET, approval_threshold=50)
    app1, _, _ = http_seller(service, PAYEE, str(tmp_path / "p1.db"), routes={}, sessions=str(tmp_path / "x1.db"), name="a")
    app2, _, _ = http_seller(service, PAYEE2, str(tmp_path / "p2.db"), routes={}, sessions=str(tmp_path / "x2.db"), name="b")
    s1, s2 = await start(app1), await start(app2)
    try:
        async with aiohttp.ClientSession() as http:
            opens = await asyncio.gather(*(_open_session(http, s, A, [token], 400) for s in (s1, s2, s1, s2)))
            held = ledger.balance(holding_account("usd"))
            spent = ledger.keys.mandate_spent(link_key(token), "total")
            ok = [(s, o) for s, o in zip((s1, s2, s1, s2), opens) if o[0] == 200]
            refused = [o for o in opens if o[0] != 200]
            for server, (_, _, challenge, terms) in ok:
                assert await _close_session(http, server, A, challenge, terms) == 200
    finally:
        await s1.close()
        await s2.close()
    assert held == spent == 800 <= BUDGET and len(ok) == 2
    assert all((status, doc["type"]) == (403, "urn:mpp:problem:budget-exceeded") for status, doc, _, _ in refused), refused
    assert ledger.balance(holding_account("usd")) == 0
    assert ledger.keys.mandate_spent(link_key(token), "total") == ledger.balance(PAYEE) + ledger.balance(PAYEE2) <= BUDGET
    assert ledger.total() == 0 and ledger.check() == []


# -- the command line: `mpp ledger serve`, and `mpp seller serve` with ledger_url -----------------


def _start_ledger(*args: str, timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mpp.cli.main", "ledger", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"mpp ledger ready on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"ledger service did not start: {proc.communicate(timeout=5)[1]}")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=10)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def test_cli_ledger_serve_and_a_seller_pointed_at_it(home: Path):
    """LEDGER-SVC-10: `mpp ledger serve` with the seller's key registered; seller.toml switched from
    `ledger = "ledger.db"` to `ledger_url` + `ledger_key`; `mpp fetch` pays through it."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "mpp.cli.main", *a], capture_output=True, text=True, cwd=REPO, timeout=30)  # noqa: E731
    helped = run("ledger", "serve", "--help")
    assert helped.returncode == 0 and "ledger_url" in helped.stdout and "--seller" in helped.stdout
    made = run("ledger", "key", str(home / "seller" / "ledger.key"))
    assert made.returncode == 0, made.stderr
    did = made.stdout.strip()
    assert did.startswith("did:key:z")
    refused = run("ledger", "serve", "--ledger", str(home / "ledger.db"), "--seller", "did:key:nope=acct:seller")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "did:key" in refused.stderr

    ledger_proc, url = _start_ledger("--ledger", str(home / "ledger.db"), "--seller", f"{did}=acct:seller")
    config = home / "seller.toml"
    config.write_text(config.read_text().replace('ledger = "ledger.db"',
                                                 f'ledger_url = "{url}"\nledger_key = "seller/ledger.key"'))
    seller = None
    try:
        seller = start_seller(home)
        result = run("fetch", "--wallet", str(home / "agent"), seller.url + "/weather")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["paid"]["payer"] == "acct:buyer"
        # LEDGER-SVC-11, PRICE-USAGE-02: the sales export reconciles with the service's listing
        usage = run("seller", "usage", "--config", str(config), "--since", "1h", "--json")
        assert usage.returncode == 0, usage.stderr
        assert json.loads(usage.stdout)["totals"]["usd"]["net"] == "25"
    finally:
        if seller is not None:
            err = stop_seller(seller)
            assert "Traceback" not in err, err
        err = _stop(ledger_proc)
        assert "Traceback" not in err, err
    ledger = SqliteLedger(str(home / "ledger.db"))
    try:
        assert ledger.balance("acct:seller") == 25 and ledger.total() == 0 and ledger.check() == []
    finally:
        ledger.close()


def test_cli_ledger_commands_on_postgresql(pg_url: str):
    """The operator's ledger commands take a postgresql:// ledger as they take a file: fund,
    balance and check; a database that cannot be reached is a message and exit 2, never a traceback."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "mpp.cli.main", "ledger", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=REPO, timeout=60)

    async def make() -> None:
        ledger = await PgLedger.connect(pg_url, max_size=2)
        await ledger.create_account("acct:ops", "usd")
        await ledger.close()

    asyncio.run(make())
    funded = run("fund", "--ledger", pg_url, "acct:ops", "750")
    assert funded.returncode == 0 and "balance 750" in funded.stdout, funded.stderr
    balance = run("balance", "--ledger", pg_url, "--json")
    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout) == {"accounts": {"acct:ops": 750, "issuance:usd": -750}, "total": 0}
    checked = run("check", "--ledger", pg_url)
    assert checked.returncode == 0 and "consistent" in checked.stdout, checked.stderr
    unknown = run("balance", "--ledger", pg_url, "acct:nobody")
    assert unknown.returncode == 2 and "acct:nobody" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = run("balance", "--ledger", pg_url.rsplit("/", 1)[0] + "/no_such_database")
    assert missing.returncode == 2 and "no_such_database" in missing.stderr and "Traceback" not in missing.stderr, missing.stderr
