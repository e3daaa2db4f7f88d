"""The JSON Schemas of spec/schemas describe what the session code really sends and signs.

A session is opened, used, topped up, streamed and closed against the real seller
(``Seller.meter``) and the embedded ledger; every credential payload, every credential, every
``Payment-Receipt`` object and every receipt's JWS claims, per request and final, is validated
against its schema, and the charge objects beside the session still validate as before.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.aio.metering import SESSION_PATH, meter_of
from mpp.protocol.headers import format_credential, parse_challenges
from mpp.identity import PROOF_DOMAIN
from mpp.methods.ledger import SIGNING_DOMAIN, LedgerBuyerMethod
from mpp.pricing import GRANT_PROOF_DOMAIN
from mpp.protocol.models import Credential
from mpp.protocol.receipts import jwks_document, verify_receipt_jws
from mpp.intents.session import (CAP_DOMAIN, CLOSE_DOMAIN, VOUCHER_DOMAIN, SessionPayload, SessionRequest, SessionTerms,
                              cap_message, close_message, sign_cap, sign_close, sign_voucher, voucher_message)
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import PAYEE, PAYER, REALM, mandate, new_ledger
from _session_support import RawSession, SessionWorld, build_seller, make_ledger, quote, receipt_claims, send

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "spec" / "schemas"


def _schemas() -> dict[str, dict]:
    return {p.stem.removesuffix(".schema"): json.loads(p.read_text(encoding="utf-8")) for p in SCHEMAS.glob("*.json")}


def validator(name: str) -> jsonschema.Draft202012Validator:
    from referencing import Registry, Resource

    schemas = _schemas()
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    return jsonschema.Draft202012Validator(schemas[name], registry=registry)


def assert_valid(name: str, instance: object, what: str = "") -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(instance)]
    assert errors == [], (name, what, errors)


def decoded(authorization: str) -> dict:
    return mpp.decode_json_b64(authorization.split(" ", 1)[1], "credential")


def claims_of_header(world: SessionWorld, header: str) -> tuple[dict, dict]:
    """(the decoded Payment-Receipt object, the verified claims of its JWS)."""
    return mpp.parse_receipt(header).to_json(), receipt_claims(world, header)


@pytest.fixture
async def world(tmp_path: Path):
    agent = mpp.SigningKey.generate()
    ledger = make_ledger(tmp_path, agent)
    seller, app, store = build_seller(tmp_path, ledger)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield SessionWorld(server, seller, ledger, agent, http, store)
    await server.close()
    ledger.close()


async def stream_receipt(world: SessionWorld, path: str, authorization: str) -> str:
    """The Payment-Receipt field value carried by the last event of a stream."""
    events: list[tuple[str, str]] = []
    async with world.http.get(world.url(path), headers={"Authorization": authorization}) as resp:
        assert resp.status == 200
        event = "message"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, line[6:]))
                event = "message"
    assert events[-1][0] == "payment-receipt", events
    return json.loads(events[-1][1])["receipt"]


async def test_session_objects_match_the_schemas(world):
    """SESSION-REQ-02, SESSION-REQ-07, SESSION-RCPT-01, SESSION-RCPT-02, SESSION-RCPT-03,
    SESSION-STREAM-04, SESSION-CLOSE-02: the session request, the open, voucher, topUp and close
    payloads and their credentials, and the per-request (plain and streamed) and final receipts
    the real seller signs are what the schemas describe."""
    challenge, challenges = await quote(world, "/complete?tokens=1500")
    assert_valid("session-request", challenge.request_json)
    request = SessionRequest.from_challenge(challenge)
    s = RawSession(world, challenge, request, SessionTerms.of(challenge, request), world.agent, cap=100)
    key, payloads, receipts = world.agent, [], []

    async def pay(path: str, payload: SessionPayload, method: str = "GET") -> dict:
        payloads.append(payload)
        status, doc, headers = await send(world, path, s.credential(payload), method=method)
        assert status == 200, doc
        if "Payment-Receipt" in headers:
            receipts.append(("close" if payload.action == "close" else path, headers["Payment-Receipt"]))
        return doc

    await pay("/complete?tokens=1500", SessionPayload("open", s.id, key.did, account=s.account, cap=100,
                                                      cap_signature=sign_cap(key, s.terms, account=s.account, cap=100),
                                                      voucher=s.voucher(20)))
    await pay("/complete?tokens=0", SessionPayload("voucher", s.id, key.did, voucher=s.voucher(20)))  # cost(0) = 0
    await pay("/complete?tokens=999", SessionPayload("voucher", s.id, key.did, voucher=s.voucher(40)))
    await pay("/complete?tokens=5000", SessionPayload("topUp", s.id, key.did, cap=300,
                                                      cap_signature=sign_cap(key, s.terms, account=s.account, cap=300),
                                                      voucher=s.voucher(150)))
    in_band = SessionPayload("voucher", s.id, key.did, voucher=s.voucher(160))
    payloads.append(in_band)
    status, doc, _ = await send(world, SESSION_PATH, s.credential(in_band), method="POST")
    assert status == 200, doc
    streamed = SessionPayload("voucher", s.id, key.did, voucher=s.voucher(160))
    payloads.append(streamed)
    receipts.append(("/stream", await stream_receipt(world, "/stream?chunks=3&tokens=2000", s.credential(streamed))))
    body = await pay(SESSION_PATH, SessionPayload("close", s.id, key.did, close_signature=sign_close(key, s.terms),
                                                  voucher=s.voucher(170)), method="POST")

    assert [p.action for p in payloads] == ["open", "voucher", "voucher", "topUp", "voucher", "voucher", "close"]
    for payload in payloads:
        assert_valid("session-payload", payload.as_json(), payload.action)
        credential = decoded(s.credential(payload))
        assert_valid("credential", credential, payload.action)
        assert credential["challenge"]["intent"] == "session"

    assert [where for where, _ in receipts] == ["/complete?tokens=1500", "/complete?tokens=0", "/complete?tokens=999",
                                                "/complete?tokens=5000", "/stream", "close"]
    for where, header in receipts[:-1]:
        obj, claims = claims_of_header(world, header)
        assert_valid("receipt", obj, where)
        assert_valid("receipt-claims", claims, where)
        assert_valid("session-receipt-claims", claims, where)
        assert "final" not in claims and claims["resource"].startswith("GET " + where)
        assert (obj["authorized"], obj["spent"], obj["remaining"]) == (claims["authorized"], claims["spent"], claims["remaining"])
    first = receipt_claims(world, receipts[1][1])
    assert (first["units"], first["amount"]) == (0, "0")  # a request that used nothing

    obj, final = claims_of_header(world, receipts[-1][1])
    assert body["receipt"] == receipts[-1][1]
    assert_valid("receipt", obj, "final")
    assert_valid("receipt-claims", final, "final")
    assert_valid("session-receipt-claims", final, "final")
    assert final["final"] is True and obj["final"] is True and final["closedBy"] == "buyer"
    assert final["settlementRef"] == obj["settlementRef"] == "capture:" + s.id
    # what a schema cannot check: the final receipt's arithmetic (SESSION-RCPT-03)
    lines_total = sum(int(line["amount"]) for line in final["lines"])
    assert int(final["captured"]) == int(final["spent"]) == lines_total <= int(final["authorized"]) <= int(final["cap"])
    assert int(final["captured"]) + int(final["released"]) == int(final["cap"]) == 300
    assert final["requests"] == sum(line["requests"] for line in final["lines"]) == 5


async def test_session_schemas_refuse_the_other_shapes(world):
    """SESSION-REQ-07, SESSION-RCPT-02, SESSION-RCPT-03, CHARGE-07: the schemas tell a session's
    objects from a charge's: a session challenge with a charge payload, a charge challenge with a
    session payload, a payload missing a member its action needs, a per-request receipt without
    its price or resource, and a final receipt with something left over are all refused."""
    challenge, challenges = await quote(world, "/complete")
    (charge,) = [c for c in challenges if c.intent == "charge"]
    request = SessionRequest.from_challenge(challenge)
    s = RawSession(world, challenge, request, SessionTerms.of(challenge, request), world.agent, cap=100)
    key = world.agent
    open_payload = SessionPayload("open", s.id, key.did, account=s.account, cap=100,
                                  cap_signature=sign_cap(key, s.terms, account=s.account, cap=100), voucher=s.voucher(20))
    status, doc, headers = await send(world, "/complete", s.credential(open_payload))
    assert status == 200, doc
    per_request = receipt_claims(world, headers["Payment-Receipt"])
    status, doc, headers = await send(world, SESSION_PATH, s.close_credential(), method="POST")
    assert status == 200, doc
    final = receipt_claims(world, headers["Payment-Receipt"])

    charge_quote = mpp.select_quote([charge], [LedgerBuyerMethod(key=key, account="acct:buyer")],
                                    mpp.BuyerPolicy(max_amount=100), datetime.now(timezone.utc))
    charge_credential = decoded(mpp.sign_quote(charge_quote))
    session_credential = decoded(s.credential(open_payload))
    assert_valid("credential", charge_credential, "charge")
    assert not validator("credential").is_valid({**session_credential, "payload": charge_credential["payload"]})
    assert not validator("credential").is_valid({**charge_credential, "payload": session_credential["payload"]})
    for action, missing in (("open", "capSignature"), ("open", "account"), ("voucher", "voucher"), ("close", "closeSignature")):
        payload = {**open_payload.as_json(), "action": action}
        if action == "close":
            payload["closeSignature"] = sign_close(key, s.terms)
        payload.pop(missing)
        assert not validator("session-payload").is_valid(payload), (action, missing)
    assert not validator("session-payload").is_valid({**open_payload.as_json(), "voucher": {**s.voucher(30).as_json(), "sequence": "2"}})

    for name in ("receipt-claims", "session-receipt-claims"):
        for drop in ("resource", "unitPrice", "per", "unitType", "cap", "remaining"):
            assert not validator(name).is_valid({k: v for k, v in per_request.items() if k != drop}), (name, drop)
        assert not validator(name).is_valid({**final, "remaining": "1"})
        assert not validator(name).is_valid({k: v for k, v in final.items() if k != "lines"})
        assert not validator(name).is_valid({**final, "closedBy": "seller"})
        assert not validator(name).is_valid({**per_request, "units": "1"})
    # a charge's claims are not a session's, and the other way round
    charge_like = {k: v for k, v in per_request.items() if k not in ("units", "authorized", "spent", "remaining", "cap")}
    assert not validator("receipt-claims").is_valid(charge_like)
    assert not validator("receipt-claims").is_valid({**per_request, "intent": "charge"})  # jti is not the challenge id


async def test_charge_beside_a_session_still_matches_the_schemas(world):
    """CHARGE-02, CHARGE-07, LEDGER-05, SESSION-REQ-05: the charge fallback offered beside a
    session challenge is paid with a credential, a receipt and claims the charge schemas accept."""
    _, challenges = await quote(world, "/complete?tokens=2000")
    (charge,) = [c for c in challenges if c.intent == "charge"]
    assert_valid("charge-request", charge.request_json)
    q = mpp.select_quote([charge], [LedgerBuyerMethod(key=world.agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100),
                         datetime.now(timezone.utc))
    header = mpp.sign_quote(q)
    status, doc, headers = await send(world, "/complete?tokens=2000", header)
    assert status == 200, doc
    credential = decoded(header)
    assert_valid("credential", credential)
    assert_valid("ledger-payload", credential["payload"])
    obj, claims = claims_of_header(world, headers["Payment-Receipt"])
    assert_valid("receipt", obj)
    assert_valid("receipt-claims", claims)
    assert claims["intent"] == "charge" and not validator("session-receipt-claims").is_valid(claims)


async def test_session_receipts_under_a_mandate_match_the_identity_schema(tmp_path: Path):
    """SESSION-ID-01, SESSION-ID-05, IDENT-RCPT-01: a session opened with the identity extension
    carries an identity member the schema accepts, and its per-request and final receipts carry
    the identity claims (approval null) beside the session claims."""
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)], store=SqlitePaymentStore(str(tmp_path / "p.db")),
                    trusted_principals={principal.did}, session_store=SqliteSessionStore(str(tmp_path / "s.db")))

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, require_identity=True)
    async def complete(request: web.Request) -> web.Response:
        meter_of(request).report(int(request.query.get("units", "1000")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/complete", complete)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("/complete"))
            async with http.get(url) as resp:
                (challenge,) = [c for c in parse_challenges(resp.headers.getall("WWW-Authenticate")) if c.intent == "session"]
            request = SessionRequest.from_challenge(challenge)
            terms = SessionTerms.of(challenge, request)
            token = mandate(principal, agent, scope=("GET /complete",), budget_amount=1000, ceiling=50, approval_threshold=50)
            payload = SessionPayload("open", challenge.id, agent.did, account=PAYER, cap=200,
                                     cap_signature=sign_cap(agent, terms, account=PAYER, cap=200),
                                     voucher=sign_voucher(agent, terms, 30, 1))
            member = I.identity_member([token], agent, challenge, request)
            header = format_credential(Credential(challenge=challenge, payload=payload.as_json(), source=agent.did,
                                                  extensions={"identity": member}))
            credential = decoded(header)
            assert_valid("credential", credential)
            assert_valid("identity-extension", credential["identity"])
            async with http.get(url, headers={"Authorization": header}) as resp:
                assert resp.status == 200, await resp.text()
                first = resp.headers["Payment-Receipt"]
            close = SessionPayload("close", challenge.id, agent.did, close_signature=sign_close(agent, terms))
            async with http.post(str(server.make_url(SESSION_PATH)),
                                 headers={"Authorization": format_credential(Credential(challenge=challenge, payload=close.as_json(),
                                                                                        source=agent.did))}) as resp:
                assert resp.status == 200, await resp.text()
                last = resp.headers["Payment-Receipt"]
    finally:
        await server.close()
        ledger.close()
    jwks = jwks_document([seller.receipt_key])
    for what, field in (("per-request", first), ("final", last)):
        claims = verify_receipt_jws(mpp.parse_receipt(field).receipt, jwks, issuer=REALM)
        for name in ("receipt-claims", "session-receipt-claims", "identity-receipt-claims"):
            assert_valid(name, claims, what)
        assert (claims["agent"], claims["principal"], claims["approval"]) == (agent.did, principal.did, None)


def test_signed_message_prefixes_are_the_ones_identity_md_lists():
    """IDENT-KEY-05, SESSION-REQ-08, PRICE-GRANT-03: every session message starts with its own domain
    line, and IDENT-KEY-05 lists exactly the prefixes the code signs with (the grant proof and the ledger
    service's requests too)."""
    request = SessionRequest.model_validate({"amount": "2", "currency": "usd", "recipient": "acct:seller", "unitType": "token",
                                             "methodDetails": {"ledger": "l", "per": "1000", "maxUnits": "10",
                                                               "suggestedCap": "50", "idleTimeout": "60"}})
    challenge = mpp.ChallengeIssuer(b"k" * 32, "api.test").issue(method="ledger", intent="session", now=datetime.now(timezone.utc),
                                                                 request=request.model_dump(exclude_none=True))
    terms = SessionTerms.of(challenge, SessionRequest.from_challenge(challenge))
    messages = {CAP_DOMAIN: cap_message(terms, account="acct:b", cap=5), VOUCHER_DOMAIN: voucher_message(terms, cumulative=1, sequence=1),
                CLOSE_DOMAIN: close_message(terms)}
    for domain, message in messages.items():
        assert message.startswith(domain) and domain.endswith(b"\n") and message.count(b"\n") == 1
    text = next(line for line in (ROOT / "spec" / "identity.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("- **[IDENT-KEY-05]**"))
    listed = set(re.findall(r"`(mpp-[a-z-]+-v\d+)` \+ LF", text))
    from mpp.ledger.signing import DOMAIN as LEDGER_REQUEST_DOMAIN  # an account owner's key signs members requests

    domains = (PROOF_DOMAIN, SIGNING_DOMAIN, CAP_DOMAIN, VOUCHER_DOMAIN, CLOSE_DOMAIN, GRANT_PROOF_DOMAIN, LEDGER_REQUEST_DOMAIN)
    in_code = {d.rstrip(b"\n").decode() for d in domains}
    assert listed == in_code
    assert len({d.split(b"\n")[0] for d in domains}) == len(domains)
