"""Interoperability with pympp (PyPI), the existing Python MPP SDK.

pympp imports as ``mpp`` like this project, so it lives in its own virtual environment
(``make interop-env`` builds ``.venv-interop``) and is driven through ``pympp_driver.py`` as a
subprocess. ``make test`` sets MPP_INTEROP_PYTHON; without it these tests fail, loudly.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

import mpp

from _peers import interop_python

pytestmark = pytest.mark.interop

DRIVER = Path(__file__).with_name("pympp_driver.py")


def drive(*args: str) -> dict:
    result = subprocess.run([interop_python(), str(DRIVER), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"pympp driver failed: {result.stderr}"
    return json.loads(result.stdout)


async def _unpaid(url: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            await resp.read()
            return resp


async def test_pympp_parses_our_challenges(served):
    """CORE-CHAL-02, CORE-CHAL-04: pympp reads what our seller sends, field for field."""
    for path in ("/weather", "/quote?symbol=A,B"):
        resp = await _unpaid(served.url + path)
        header = resp.headers["WWW-Authenticate"]
        ours = mpp.parse_challenges(header)[0]
        theirs = drive("parse-challenge", "--header", header)
        assert theirs["id"] == ours.id and theirs["realm"] == ours.realm
        assert theirs["method"] == ours.method and theirs["intent"] == ours.intent
        assert theirs["request"] == ours.request_json and theirs["request_b64"] == ours.request
        assert theirs["opaque"] == ours.opaque_json and theirs["opaque_b64"] == ours.opaque
        assert theirs["expires"] == ours.expires and theirs["description"] == ours.description


def test_pympp_computes_our_challenge_ids():
    """CORE-ID-01, CORE-ID-02: the same inputs give the same id in pympp and here."""
    secret = "interop-secret-that-is-at-least-32-bytes!"
    issuer = mpp.ChallengeIssuer(secret.encode(), "api.interop.test")
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    cases = [
        issuer.issue(method="ledger", intent="charge", request={"amount": "25", "currency": "usd", "recipient": "acct:seller",
                     "methodDetails": {"ledger": "ledger-1"}}, now=now, opaque={"nonce": "n1", "resource": "GET /x"}),
        issuer.issue(method="ledger", intent="charge", request={"amount": "1", "currency": "usd", "recipient": "acct:s",
                     "description": "café <b> & \"quotes\""}, now=now, digest=mpp.content_digest(b"{}"),
                     opaque={"nonce": "n2", "resource": "POST /y?a=1"}),
    ]
    for ch in cases:
        args = ["challenge-id", "--secret", secret, "--realm", ch.realm, "--method", ch.method, "--intent", ch.intent,
                "--request-json", json.dumps(ch.request_json), "--expires", ch.expires, "--opaque-json", json.dumps(ch.opaque_json)]
        if ch.digest:
            args += ["--digest", ch.digest]
        assert drive(*args)["id"] == ch.id


async def test_pympp_client_pays_our_seller_and_parses_the_receipt(served):
    """CHARGE-01, CORE-RCPT-01, LEDGER-06: pympp's own client, with a small ledger method, pays us."""
    key_pem = str(served.home / "agent" / "agent.key")
    ledger = served.ledger()
    try:
        before = ledger.balance("acct:seller")
        for args, amount in (((), 25), (("--data", '{"text": "hello"}', "--content-type", "application/json"), 250)):
            url = served.url + ("/weather" if not args else "/summarize")
            out = drive("pay", "--url", url, "--key-pem", key_pem, "--account", "acct:buyer", *args)
            assert out["status"] == 200, out
            assert out["receipt"]["status"] == "success" and out["receipt"]["method"] == "ledger"
            assert out["receipt_pympp"]["reference"] == out["receipt"]["reference"]
            # the receipt pympp received verifies with our buyer's checks too
            async with aiohttp.ClientSession() as s:
                async with s.get(served.url + "/.well-known/jwks.json") as resp:
                    jwks = await resp.json()
            claims = mpp.verify_receipt_jws(out["receipt"]["receipt"], jwks, issuer=served.config.realm,
                                            challenge_id=out["receipt"]["challengeId"])
            assert claims["amount"] == str(amount)
            before += amount
            assert ledger.balance("acct:seller") == before
        assert ledger.total() == 0
    finally:
        ledger.close()


async def test_pympp_parses_our_receipt(served):
    """CORE-RCPT-01, CORE-RCPT-04: our Payment-Receipt is a receipt to pympp."""
    wallet = served.wallet
    from mpp.aio import PaymentClient
    from mpp.methods.ledger import LedgerBuyerMethod

    async with aiohttp.ClientSession() as s:
        client = PaymentClient(s, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)
        resp = await client.request("GET", served.url + "/weather")
    theirs = drive("parse-receipt", "--header", resp.headers["Payment-Receipt"])
    assert theirs["reference"] == resp.receipt.reference
    assert theirs["status"] == "success" and theirs["method"] == "ledger"


async def test_pympp_client_without_the_extension(served):
    """IDENT-POP-02, IDENT-POP-03: a client that knows nothing of the identity extension still pays a route that
    does not require it, and gets the documented problem type on one that does; no money moves there."""
    key_pem = str(served.home / "agent" / "agent.key")
    ledger = served.ledger()
    try:
        out = drive("pay", "--url", served.url + "/weather", "--key-pem", key_pem, "--account", "acct:buyer")
        assert out["status"] == 200 and out["receipt"]["status"] == "success"
        charged = len([t for t in ledger.transfers() if t.kind == "charge"])
        out = drive("pay", "--url", served.url + "/agent-report", "--key-pem", key_pem, "--account", "acct:buyer")
        assert out["status"] == 402 and out["receipt"] is None
        assert json.loads(out["body"])["type"] == "urn:mpp:problem:identity-required"
        assert len([t for t in ledger.transfers() if t.kind == "charge"]) == charged
    finally:
        ledger.close()
