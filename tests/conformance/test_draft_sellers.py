"""Sellers that follow the published drafts to the letter, and none of MPP's extensions
(draft_sellers.py: ``letter-a`` and ``letter-b``, each taking the other side of every choice the
drafts leave open; its docstring says which and why each is still the draft), pass
``--profile draft`` on GET and on POST, paid with ``--pay-with 'static:{"token": "letter"}'``: no
check fails or errors (a SHOULD they do not follow, letter-b's 402 for two credentials, is a
warning). Against ``--profile core`` they fail only checks of level ``extension``: departures from
MPP's profile, never from the drafts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from contextlib import asynccontextmanager

import aiohttp
import pytest
import rfc8785
from aiohttp.test_utils import TestServer

from draft_sellers import DELIVERIES, FIXTURES, PAY_WITH, PROBLEM_BASE, build_app, serving
from mpp import parse_challenges  # only to read the fixtures' challenges as the suite does
from mpp_conformance.framework import Verdict, checks_for, run_checks

BODY = b'{"to": "agent", "text": "Payments, to the letter."}'
EXPIRY_WAIT = 4  # the fixtures' challenges live 3.5 s (letter-a) and at most 4 s (letter-b)

# (HTTP method, path, body, the other priced route)
TARGETS = {
    "GET /letter": ("GET", "/letter", None, ("POST", "/letters")),
    "POST /letters": ("POST", "/letters", BODY, ("GET", "/letter")),
}


def _table(results) -> str:
    rows = [f"{r.verdict.value:5} {r.level:9} {r.check_id:32} {r.message[:300]}" for r in results]
    return "\n".join(rows)


async def _run(name: str, target: str, profile: str, pay: bool):
    method, path, body, (other_method, other_path) = TARGETS[target]
    async with serving(name) as (server, app):
        options = {"method": method, "data": body, "pay_with": PAY_WITH if pay else None,
                   "other_url": f"{other_method} {server.make_url(other_path)}", "expiry_wait": EXPIRY_WAIT}
        results = await run_checks(checks_for(profile), str(server.make_url(path)), options)
        return results, list(app[DELIVERIES])


def _payments(results) -> int:
    """The paid requests the checks made: their 2xx answers, a retry under an Idempotency-Key
    already seen (an answer replayed, §11.4) not counted again. (Receipts themselves are not read
    back from the evidence: the suite scrubs from it any text that lines up with a credential it
    sent, and a receipt's timestamp can line up with an echoed expires.)"""
    keys, count = set(), 0
    for r in results:
        for ex in r.exchanges:
            if ex.status is None or not 200 <= ex.status < 300 or ex.url.endswith("/openapi.json"):
                continue
            key = next((v for k, v in ex.request_headers if k.lower() == "idempotency-key"), None)
            count += key is None or key not in keys
            keys.add(key)
    return count


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(FIXTURES))
async def test_draft_profile_passes(name: str, target: str):
    results, deliveries = await _run(name, target, "draft", pay=True)
    bad = [r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    assert not bad, f"{name} {target}: --profile draft failed\n{_table(results)}"
    assert {r.level for r in results} <= {"MUST", "SHOULD"}
    # The paying checks ran and paid (not skipped for want of a payer), the expiry check waited it out.
    ran = {r.check_id for r in results if r.verdict is Verdict.PASS}
    assert {"full.paid-success", "full.replay", "full.concurrent-replay", "core.expired-challenge"} <= ran, _table(results)
    # Side effects only for paid requests (§11.4), and one per payment (§11.5).
    assert len(deliveries) == _payments(results), f"{len(deliveries)} deliveries\n{_table(results)}"


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(FIXTURES))
async def test_core_profile_fails_only_extensions(name: str, target: str):
    results, _ = await _run(name, target, "core", pay=False)
    errors = [r for r in results if r.verdict is Verdict.ERROR]
    assert not errors, f"{name} {target}: --profile core errored\n{_table(results)}"
    departures = [r for r in results if r.verdict is Verdict.FAIL and r.level != "extension"]
    assert not departures, f"{name} {target}: a draft-level check of --profile core failed\n{_table(results)}"
    # and they do depart from MPP's profile: no challengeId in problem documents, no JWKS
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    assert {"core.problem-documents", "core.discovery-jwks"} <= failed, _table(results)


def _decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@asynccontextmanager
async def _client(name: str, secret: bytes | None = None):
    """A fixture on loopback (its HMAC secret given) and a client session for it."""
    app = build_app(FIXTURES[name], secret)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield server, session
    finally:
        await server.close()


async def _challenge(session, url, method: str, body: bytes | None):
    """The 402 of an unpaid request, checked for the draft's shape, and its one challenge."""
    async with session.request(method, url, data=body) as resp:
        assert resp.status == 402 and resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        doc = await resp.json(content_type=None)
        # RFC 9457 members only: no challengeId (MPP's)
        assert doc == {"type": PROBLEM_BASE + "payment-required", "title": "Payment Required", "status": 402,
                       "detail": doc["detail"]}
        [challenge] = parse_challenges(resp.headers.getall("WWW-Authenticate"))
        return challenge


def _paying(challenge, **headers: str) -> dict[str, str]:
    """Headers paying ``challenge`` with the test method's payload, written out by hand."""
    echo = {k: v for k, v in challenge.model_dump().items() if v is not None}
    token = base64.urlsafe_b64encode(json.dumps({"challenge": echo, "payload": {"token": "letter"}}).encode())
    return {"Authorization": "Payment " + token.decode().rstrip("="), **headers}


@pytest.mark.parametrize("name", list(FIXTURES))
async def test_choices_are_as_documented(name: str):
    """What draft_sellers.py says each fixture chooses, seen on the wire: the id is the draft's
    HMAC over the seven slots (§5.1.2.1.1), request and opaque are JCS (§5.1.1, §5.1.2), the body
    digest is RFC 9530's, the receipt has the draft's members only, and the choices differ."""
    secret = b"k" * 32
    choices = FIXTURES[name]
    async with _client(name, secret) as (server, session):
        for method, path, body in (("GET", "/letter", None), ("POST", "/letters", BODY)):
            c = await _challenge(session, server.make_url(path), method, body)
            slots = [c.realm, c.method, c.intent, c.request, c.expires or "", c.digest or "", c.opaque or ""]
            assert _decode(c.id) == hmac.new(secret, "|".join(slots).encode(), hashlib.sha256).digest()
            assert "=" not in c.id + c.request + (c.opaque or "")
            request = json.loads(_decode(c.request))
            assert _decode(c.request) == rfc8785.dumps(request)
            assert (c.method, c.intent) == (choices.method, "charge")
            assert request["amount"] == choices.prices[(method, path)] and request["currency"] == "usd"
            assert ("recipient" in request) == (choices.recipient is not None)
            fraction = r"\.\d{3}" if choices.fractional_expires else ""
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d" + fraction + "Z", c.expires)
            expected_digest = None if body is None else \
                "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
            assert c.digest == expected_digest
            if choices.opaque:
                opaque = json.loads(_decode(c.opaque))
                assert _decode(c.opaque) == rfc8785.dumps(opaque)
                assert opaque and all(isinstance(v, str) for v in opaque.values())  # a flat string map
            else:
                assert c.opaque is None
            async with session.request(method, server.make_url(path), data=body, headers=_paying(c)) as resp:
                assert resp.status == 200 and resp.headers["Cache-Control"] == "private"
                receipt = json.loads(_decode(resp.headers["Payment-Receipt"]))
                assert set(receipt) == {"status", "method", "timestamp", "reference"}  # no challengeId, no JWS
                assert (receipt["status"], receipt["method"]) == ("success", choices.method)
        async with session.get(server.make_url("/openapi.json")) as resp:
            assert resp.status == (200 if choices.discovery else 404)
            if choices.discovery:
                assert resp.headers["Content-Type"].startswith("application/json")
                doc = await resp.json()
                assert doc["openapi"].startswith("3.") and doc["info"]["title"] and doc["info"]["version"]
                for (method, path), amount in choices.prices.items():
                    op = doc["paths"][path][method.lower()]
                    assert op["x-payment-info"] == {"offers": [{"intent": "charge", "method": choices.method,
                                                                "amount": amount, "currency": "usd"}]}
                    assert "402" in op["responses"]
        async with session.get(server.make_url("/.well-known/jwks.json")) as resp:
            assert resp.status == 404  # no signed receipts, no keys to publish


@pytest.mark.parametrize("name", list(FIXTURES))
async def test_idempotency_key(name: str):
    """§11.4 SHOULD: letter-a answers a paid POST retried with the same Idempotency-Key and
    credential with the original response (no second delivery); letter-b does not read the key, so
    the retry is a used id (invalid-challenge). Another key, or none, is a used id at both."""
    async with _client(name) as (server, session):
        url = server.make_url("/letters")
        paid = _paying(await _challenge(session, url, "POST", BODY), **{"Idempotency-Key": "key-1"})
        async with session.post(url, data=BODY, headers=paid) as resp:
            assert resp.status == 200
            original = (resp.headers["Payment-Receipt"], await resp.read())
        for key in ("key-1", "key-2", None):
            headers = dict(paid, **{"Idempotency-Key": key}) if key else {"Authorization": paid["Authorization"]}
            async with session.post(url, data=BODY, headers=headers) as resp:
                if key == "key-1" and FIXTURES[name].idempotency:
                    assert resp.status == 200 and (resp.headers["Payment-Receipt"], await resp.read()) == original
                else:
                    assert resp.status == 402 and "Payment-Receipt" not in resp.headers
                    assert (await resp.json(content_type=None))["type"] == PROBLEM_BASE + "invalid-challenge"
        assert len(server.app[DELIVERIES]) == 1
