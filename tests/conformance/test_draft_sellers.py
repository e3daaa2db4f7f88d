"""Sellers that follow the published drafts to the letter, and none of MPP's extensions
(draft_sellers.py: ``letter-a`` and ``letter-b``, each taking the other side of every choice the
drafts leave open), pass ``--profile draft`` on GET and on POST: no check fails or errors (a SHOULD
they do not follow is a warning). Against ``--profile core`` they fail only checks of level
``extension``: departures from MPP's profile, never from the drafts.
"""

from __future__ import annotations

import json

import pytest

from draft_sellers import DELIVERIES, FIXTURES, PAY_WITH, serving
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


def _paid_2xx(results) -> int:
    """2xx answers the checks recorded (every one of them a paid request)."""
    return sum(1 for r in results for ex in r.exchanges if ex.status is not None and 200 <= ex.status < 300
               and ex.url.rsplit("/", 1)[-1] not in ("openapi.json", "jwks.json"))


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
    # Side effects only for paid requests (§11.4): one delivery per 2xx the checks saw.
    assert len(deliveries) == _paid_2xx(results), f"{len(deliveries)} deliveries\n{_table(results)}"


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


@pytest.mark.parametrize("name", list(FIXTURES))
async def test_choices_are_as_documented(name: str):
    """What draft_sellers.py says each fixture chooses, seen on the wire: the id is the draft's
    HMAC over the seven slots (§5.1.2.1.1), request and opaque are JCS, and the choices differ."""
    import base64
    import hashlib
    import hmac
    import re

    import aiohttp
    import rfc8785

    from draft_sellers import build_app
    from aiohttp.test_utils import TestServer
    from mpp import parse_challenges

    secret = b"k" * 32
    choices = FIXTURES[name]
    server = TestServer(build_app(choices, secret), host="127.0.0.1")
    await server.start_server()

    def decode(value: str) -> bytes:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))

    try:
        async with aiohttp.ClientSession() as session:
            for method, path, body in (("GET", "/letter", None), ("POST", "/letters", BODY)):
                async with session.request(method, server.make_url(path), data=body) as resp:
                    assert resp.status == 402
                    assert resp.headers["Cache-Control"] == "no-store"
                    assert resp.headers["Content-Type"].startswith("application/problem+json")
                    doc = await resp.json(content_type=None)
                    assert doc == {"type": "https://paymentauth.org/problems/payment-required", "title": "Payment Required",
                                   "status": 402, "detail": doc["detail"]}  # no challengeId: MPP's member
                    [c] = parse_challenges(resp.headers.getall("WWW-Authenticate"))
                slots = [c.realm, c.method, c.intent, c.request, c.expires or "", c.digest or "", c.opaque or ""]
                expected = hmac.new(secret, "|".join(slots).encode(), hashlib.sha256).digest()
                assert decode(c.id) == expected and "=" not in c.id
                request = json.loads(decode(c.request))
                assert decode(c.request) == rfc8785.dumps(request)
                assert request["amount"] == choices.prices[(method, path)] and request["currency"] == "usd"
                assert ("recipient" in request) == (choices.recipient is not None)
                assert c.method == choices.method and c.intent == "charge"
                fraction = r"\.\d{3}" if choices.fractional_expires else ""
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d" + fraction + "Z", c.expires)
                if body is None:
                    assert c.digest is None
                else:
                    assert c.digest == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
                echo = {k: v for k, v in c.model_dump().items() if v is not None}
                token = base64.urlsafe_b64encode(json.dumps({"challenge": echo, "payload": {"token": "letter"}}).encode())
                paid = {"Authorization": "Payment " + token.decode().rstrip("=")}
                async with session.request(method, server.make_url(path), data=body, headers=paid) as resp:
                    assert resp.status == 200 and resp.headers["Cache-Control"] == "private"
                    receipt = json.loads(decode(resp.headers["Payment-Receipt"]))
                    assert set(receipt) == {"status", "method", "timestamp", "reference"}  # no challengeId, no JWS
                    assert receipt["status"] == "success" and receipt["method"] == choices.method
                if choices.opaque:
                    opaque = json.loads(decode(c.opaque))
                    assert decode(c.opaque) == rfc8785.dumps(opaque)
                    assert opaque and all(isinstance(v, str) for v in opaque.values())  # a flat string map
                else:
                    assert c.opaque is None
            async with session.get(server.make_url("/openapi.json")) as resp:
                assert resp.status == (200 if choices.discovery else 404)
                if choices.discovery:
                    doc = await resp.json()
                    for (method, path), amount in choices.prices.items():
                        op = doc["paths"][path][method.lower()]
                        assert op["x-payment-info"]["offers"] == [{"intent": "charge", "method": choices.method,
                                                                   "amount": amount, "currency": "usd"}]
                        assert "402" in op["responses"]
            async with session.get(server.make_url("/.well-known/jwks.json")) as resp:
                assert resp.status == 404  # no signed receipts, no keys to publish
    finally:
        await server.close()
