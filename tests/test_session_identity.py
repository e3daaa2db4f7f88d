"""Sessions under a mandate: the open carries the identity member, the cap is held against the
mandate's budget by the ledger, receipts are attributed, refusals name their problem type."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.aio.metering import meter_of
from mpp.protocol.headers import format_credential, parse_challenges
from mpp.protocol.models import Credential
from mpp.protocol.receipts import jwks_document, verify_receipt_jws
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, sign_cap, sign_close, sign_voucher
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import PAYEE, PAYER, REALM, mandate, new_ledger

ROUTE_SCOPE = ("GET /complete",)


@pytest.fixture
async def world(tmp_path: Path):
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)], store=SqlitePaymentStore(str(tmp_path / "p.db")),
                    trusted_principals={principal.did}, session_store=SqliteSessionStore(str(tmp_path / "s.db")))

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, require_identity=True)  # one request costs at most 10
    async def complete(request: web.Request) -> web.Response:
        meter_of(request).report(int(request.query.get("units", "1000")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/complete", complete)
    app.router.add_get("/elsewhere", complete)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield {"server": server, "seller": seller, "ledger": ledger, "P": principal, "A": agent, "http": http}
    await server.close()
    ledger.close()


async def open_with(w, chain, *, cap: int, path: str = "/complete", key=None):
    key = key or w["A"]
    url = str(w["server"].make_url(path))
    async with w["http"].get(url) as resp:
        assert resp.status == 402
        (challenge,) = [c for c in parse_challenges(resp.headers.getall("WWW-Authenticate")) if c.intent == "session"]
    request = SessionRequest.from_challenge(challenge)
    terms = SessionTerms.of(challenge, request)
    payload = SessionPayload("open", challenge.id, key.did, account=PAYER, cap=cap,
                             cap_signature=sign_cap(key, terms, account=PAYER, cap=cap),
                             voucher=sign_voucher(key, terms, min(cap, 30), 1))
    member = I.identity_member(chain, key, challenge, request)
    header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=key.did,
                                          extensions={"identity": member}))
    async with w["http"].get(url, headers={"Authorization": header}) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, doc, resp.headers, challenge, terms


def claims(w, header: str) -> dict:
    receipt = mpp.parse_receipt(header)
    return verify_receipt_jws(receipt.receipt, jwks_document([w["seller"].receipt_key]), issuer=REALM)


async def close(w, challenge, terms, key):
    payload = SessionPayload("close", challenge.id, key.did, close_signature=sign_close(key, terms))
    header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=key.did))
    async with w["http"].post(str(w["server"].make_url("/.well-known/mpp-session")), headers={"Authorization": header}) as resp:
        assert resp.status == 200
        return resp.headers["Payment-Receipt"]


async def test_session_under_a_mandate_is_attributed(world):
    """SESSION-ID-05, SESSION-ID-02, SESSION-ID-03: receipts name agent, principal and mandate; the
    cap is held against the budget and the released part given back at close."""
    w = world
    token = mandate(w["P"], w["A"], scope=ROUTE_SCOPE, budget_amount=1000, ceiling=50, approval_threshold=50)
    status, doc, headers, challenge, terms = await open_with(w, [token], cap=800)
    assert status == 200, doc
    c = claims(w, headers["Payment-Receipt"])
    assert (c["agent"], c["principal"], c["intent"]) == (w["A"].did, w["P"].did, "session")
    leaf = I.verify_chain([token], trusted_principals={w["P"].did}, realm=REALM, now=I_now(), max_depth=3).leaf.key
    assert w["ledger"].keys.mandate_spent(leaf, "total") == 800  # the whole cap counts until close
    final = claims(w, await close(w, challenge, terms, w["A"]))
    assert final["final"] is True and final["captured"] == "2" and final["agent"] == w["A"].did
    assert w["ledger"].balance(PAYEE) == 2 and w["ledger"].total() == 0
    assert w["ledger"].keys.mandate_spent(leaf, "total") == 2  # only what was captured


def I_now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


async def test_cap_over_the_budget_is_refused_and_nothing_held(world):
    """SESSION-ID-02, SESSION-ID-03, SESSION-LEDGER-05: the ledger holds the cap against the budget atomically."""
    w = world
    token = mandate(w["P"], w["A"], scope=ROUTE_SCOPE, budget_amount=1000, ceiling=50, approval_threshold=50)
    before = w["ledger"].balance(PAYER)
    status, doc, headers, *_ = await open_with(w, [token], cap=1001)
    assert status == 403 and doc["type"] == "urn:mpp:problem:budget-exceeded", doc
    assert "Payment-Receipt" not in headers and w["ledger"].balance(PAYER) == before
    status, doc, headers, ch1, t1 = await open_with(w, [token], cap=700)
    assert status == 200
    status, doc, *_ = await open_with(w, [token], cap=400)  # 700 + 400 > 1000
    assert status == 403 and doc["type"] == "urn:mpp:problem:budget-exceeded"
    assert "this seller's share" in doc["detail"]  # refused by the seller's own count, before the ledger
    await close(w, ch1, t1, w["A"])  # captures 2, gives 698 back to the budget
    status, doc, *_ = await open_with(w, [token], cap=400)
    assert status == 200, doc
    assert w["ledger"].total() == 0


async def test_route_outside_the_mandate_scope_is_refused(world):
    """SESSION-ID-01: scope is judged on the route the session is opened on."""
    w = world
    token = mandate(w["P"], w["A"], scope=ROUTE_SCOPE, budget_amount=1000, ceiling=50, approval_threshold=50)
    status, doc, *_ = await open_with(w, [token], cap=100, path="/elsewhere")
    assert status == 403 and doc["type"].startswith("urn:mpp:problem:"), doc
    assert w["ledger"].balance(PAYER) == 100_000


async def test_request_cost_over_the_ceiling_is_refused(world):
    """SESSION-ID-01: the ceiling applies to the most one request may cost (10 here)."""
    w = world
    token = mandate(w["P"], w["A"], scope=ROUTE_SCOPE, budget_amount=1000, ceiling=9, approval_threshold=9)
    status, doc, *_ = await open_with(w, [token], cap=100)
    assert status == 403 and doc["type"] == "urn:mpp:problem:over-ceiling", doc


async def test_revoked_mandate_cannot_open(world):
    """SESSION-ID-01, IDENT-REV-03: revocation is checked at open, by the seller and the ledger."""
    w = world
    token = mandate(w["P"], w["A"], scope=ROUTE_SCOPE, budget_amount=1000, ceiling=50, approval_threshold=50)
    w["ledger"].keys.revoke(I.issue_revocation(w["P"], token, now=I_now()), token)
    status, doc, *_ = await open_with(w, [token], cap=100)
    assert status == 402 and doc["type"] == "urn:mpp:problem:mandate-revoked", doc


async def test_plain_open_on_an_identity_route_is_refused(world):
    """SESSION-ID-01: a route requiring identity refuses a session opened without a mandate."""
    w = world
    url = str(w["server"].make_url("/complete"))
    async with w["http"].get(url) as resp:
        (challenge,) = [c for c in parse_challenges(resp.headers.getall("WWW-Authenticate")) if c.intent == "session"]
    terms = SessionTerms.of(challenge, SessionRequest.from_challenge(challenge))
    key = w["A"]
    payload = SessionPayload("open", challenge.id, key.did, account=PAYER, cap=100,
                             cap_signature=sign_cap(key, terms, account=PAYER, cap=100), voucher=sign_voucher(key, terms, 30, 1))
    header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=key.did))
    async with w["http"].get(url, headers={"Authorization": header}) as resp:
        doc = await resp.json(content_type=None)
        assert resp.status in (402, 403) and doc["type"] == "urn:mpp:problem:identity-required", doc
