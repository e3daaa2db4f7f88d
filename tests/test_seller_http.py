"""Black-box tests against a real `mpp seller serve` process (the `served` fixture).

Everything goes over loopback HTTP with aiohttp; the buyer side is built from the library's
public pieces (parse_challenges, LedgerBuyerMethod, format_credential, PaymentClient). When a
test needs a challenge the seller would never hand out (expired, bound to another method),
it mints one with the seller's own secret, so that exactly one thing is wrong with it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import mpp
from mpp.aio import PaymentClient
from mpp.methods.ledger import LedgerBuyerMethod

PRICES = {("GET", "/weather"): 25, ("GET", "/quote"): 100, ("POST", "/summarize"): 250, ("GET", "/premium-report"): 5000}


# -- helpers -----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def challenges(self) -> list[mpp.Challenge]:
        return mpp.parse_challenges(self.headers.getall("WWW-Authenticate"))


async def call(
    session: aiohttp.ClientSession,
    served,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    authorization: str | list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    hdrs: CIMultiDict[str] = CIMultiDict(headers or {})
    if isinstance(authorization, str):
        hdrs.add("Authorization", authorization)
    elif authorization is not None:
        for value in authorization:
            hdrs.add("Authorization", value)
    async with session.request(method, served.url + path, data=data, headers=hdrs, allow_redirects=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def quote(session, served, method: str, path: str, *, data: bytes | None = None, headers=None) -> mpp.Challenge:
    """The (first) challenge of an unpaid request."""
    reply = await call(session, served, method, path, data=data, headers=headers)
    assert reply.status == 402, reply.body
    return reply.challenges[0]


def sign(challenge: mpp.Challenge, key: mpp.SigningKey, account: str = "acct:buyer", *, extra_payload: dict | None = None) -> str:
    """A properly signed ledger credential for ``challenge`` (whatever the challenge says)."""
    request = mpp.ChargeRequest.from_challenge(challenge)
    payload, source = LedgerBuyerMethod(key=key, account=account).payload(challenge, request)
    payload.update(extra_payload or {})
    return mpp.format_credential(mpp.Credential(challenge=challenge, payload=payload, source=source))


def rebuild(challenge: mpp.Challenge, **changes: str | None) -> mpp.Challenge:
    """A new Challenge (no cached decoded fields carried over) with some parameters changed."""
    params = {**challenge.echo(), **changes}
    return mpp.Challenge(**{k: v for k, v in params.items() if v is not None})


def charges(served) -> list:
    ledger = served.ledger()
    try:
        return [t for t in ledger.transfers() if t.kind == "charge"]
    finally:
        ledger.close()


def balances(served) -> dict[str, int]:
    ledger = served.ledger()
    try:
        return {a.id: a.balance for a in ledger.accounts()}
    finally:
        ledger.close()


def assert_problem(reply: Reply, status: int, slug: str, *, used_id: str | None = None) -> dict:
    """Status, problem type, problem+json body; 402s (and method-unsupported) carry a fresh
    challenge and no-store; nothing that is refused carries a receipt."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("Content-Type", "").startswith("application/problem+json")
    doc = reply.json()
    assert doc["type"] == mpp.PROBLEM_BASE + slug, doc
    assert doc["status"] == status
    assert isinstance(doc["title"], str) and doc["title"]
    assert isinstance(doc["detail"], str) and doc["detail"]
    assert "Payment-Receipt" not in reply.headers
    if status == 402 or slug == "method-unsupported":
        assert reply.headers.get("Cache-Control") == "no-store"
        fresh = reply.challenges
        assert doc["challengeId"] == fresh[0].id
        if used_id is not None:
            assert all(c.id != used_id for c in fresh)
    return doc


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


# -- 1. unpaid -----------------------------------------------------------------


async def test_unpaid_request_gets_402_with_challenge(served, session):
    """CORE-CHAL-01, CORE-CHAL-02, CORE-ERR-01, CORE-ERR-02, CORE-ERR-10, CORE-RCPT-02, CORE-BIND-01,
    CORE-BIND-05, CHARGE-02, CORE-ONCE-04: an unpaid request is refused with a parseable
    challenge, a payment-required problem and no-store; two quotes never share an id."""
    first = await call(session, served, "GET", "/weather")
    doc = assert_problem(first, 402, "payment-required")
    assert doc["instance"] == "/weather"
    [challenge] = first.challenges
    assert challenge.method == "ledger" and challenge.intent == "charge"
    assert challenge.realm == served.config.realm
    assert challenge.expires and challenge.expires.endswith("Z")
    lifetime = challenge.expires_at - datetime.now(timezone.utc)
    assert timedelta(seconds=250) < lifetime <= timedelta(seconds=301)
    assert challenge.header is None and challenge.digest is None  # a GET binds no body
    request = mpp.ChargeRequest.from_challenge(challenge)
    assert (request.amount, request.currency, request.recipient) == ("25", "usd", "acct:seller")
    opaque = challenge.opaque_json
    assert opaque["resource"] == "GET /weather" and len(mpp.b64url_decode(opaque["nonce"])) >= 16

    second = await call(session, served, "GET", "/weather")
    assert second.challenges[0].id != challenge.id
    assert charges(served) == []


async def test_unpaid_post_binds_body_digest(served, session):
    """CORE-BIND-03: a request with a body gets a challenge bound to its RFC 9530 digest."""
    challenge = await quote(session, served, "POST", "/summarize", data=b"some document")
    assert challenge.digest == mpp.content_digest(b"some document")
    assert challenge.opaque_json["resource"] == "POST /summarize"


# -- 2. paid ---------------------------------------------------------------------


async def test_paid_request_gets_200_and_verifiable_receipt(served, session):
    """CORE-RCPT-01, CORE-RCPT-03, CORE-DISC-01, CHARGE-03, CHARGE-06, CHARGE-07, LEDGER-17,
    CORE-ONCE-05: a paid request is served with a receipt whose JWS verifies against the
    seller's JWKS, with Cache-Control: private; exactly the quoted amount moves."""
    wallet = served.wallet
    challenge = await quote(session, served, "GET", "/weather")
    reply = await call(session, served, "GET", "/weather", authorization=sign(challenge, wallet.key))
    assert reply.status == 200, reply.body
    assert reply.headers["Cache-Control"].split(",")[0].strip() == "private"
    assert "public" not in reply.headers["Cache-Control"]
    body = reply.json()
    assert body["result"]["city"] == "Lisbon"
    assert body["paid"] == {"challengeId": challenge.id, "amount": "25", "currency": "usd", "payer": "acct:buyer"}

    receipt = mpp.parse_receipt(reply.headers["Payment-Receipt"])
    assert (receipt.status, receipt.method, receipt.challengeId) == ("success", "ledger", challenge.id)
    jwks = (await call(session, served, "GET", "/.well-known/jwks.json")).json()
    claims = mpp.verify_receipt_jws(receipt.receipt, jwks, issuer=served.config.realm, challenge_id=challenge.id)
    assert claims["jti"] == claims["challengeId"] == challenge.id
    assert claims["reference"] == receipt.reference
    assert (claims["amount"], claims["currency"], claims["recipient"]) == ("25", "usd", "acct:seller")
    assert claims["sub"] == wallet.key.did and claims["account"] == "acct:buyer"
    assert claims["resource"] == "GET /weather" and claims["method"] == "ledger" and claims["intent"] == "charge"

    [transfer] = charges(served)
    assert transfer.id == receipt.reference == challenge.id
    assert (transfer.payer, transfer.payee, transfer.amount) == ("acct:buyer", "acct:seller", 25)
    assert balances(served)["acct:seller"] == 25


async def test_payment_client_round_trip(served, session):
    """CORE-BUY-04, CHARGE-01: the library's buyer pays within policy and verifies the receipt."""
    wallet = served.wallet
    client = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)
    paid = await client.request("POST", served.url + "/summarize", data=b"a long document")
    assert paid.status == 200 and paid.paid
    assert paid.claims["amount"] == "250" and paid.claims["resource"] == "POST /summarize"
    assert json.loads(paid.body)["result"]["bytes"] == len(b"a long document")
    free = await client.request("GET", served.url + "/openapi.json")
    assert free.status == 200 and not free.paid
    assert len(charges(served)) == 1


# -- 3. replay -------------------------------------------------------------------


async def test_same_credential_twice_is_refused_without_second_transfer(served, session):
    """CORE-ONCE-01, CORE-ERR-04, CORE-RCPT-02, LEDGER-12: a used challenge gets invalid-challenge,
    a fresh challenge, no receipt, and no money moves again."""
    challenge = await quote(session, served, "GET", "/weather")
    credential = sign(challenge, served.wallet.key)
    assert (await call(session, served, "GET", "/weather", authorization=credential)).status == 200
    again = await call(session, served, "GET", "/weather", authorization=credential)
    assert_problem(again, 402, "invalid-challenge", used_id=challenge.id)
    assert len(charges(served)) == 1
    assert balances(served)["acct:buyer"] == 100_000 - 25


# -- 4. concurrency ----------------------------------------------------------------


async def test_concurrent_submissions_of_one_credential_pay_once(served, session):
    """CORE-ONCE-02, CORE-ONCE-05, LEDGER-14, CHARGE-01: 50 simultaneous copies of one credential
    produce exactly one 200 and one transfer; every other copy is invalid-challenge."""
    challenge = await quote(session, served, "GET", "/quote")
    credential = sign(challenge, served.wallet.key)
    replies = await asyncio.gather(*(call(session, served, "GET", "/quote", authorization=credential) for _ in range(50)))
    ok = [r for r in replies if r.status == 200]
    assert len(ok) == 1, sorted(r.status for r in replies)
    assert "Payment-Receipt" in ok[0].headers
    for r in replies:
        if r.status != 200:
            assert_problem(r, 402, "invalid-challenge", used_id=challenge.id)
    [transfer] = charges(served)
    assert transfer.amount == 100
    assert balances(served)["acct:buyer"] == 100_000 - 100


# -- 5. refusals -------------------------------------------------------------------


async def test_credential_for_one_route_refused_on_another(served, session):
    """CORE-BIND-02, CORE-ERR-04: a credential for /weather does not buy /quote."""
    challenge = await quote(session, served, "GET", "/weather")
    reply = await call(session, served, "GET", "/quote", authorization=sign(challenge, served.wallet.key))
    doc = assert_problem(reply, 402, "invalid-challenge", used_id=challenge.id)
    assert mpp.ChargeRequest.from_challenge(reply.challenges[0]).amount == "100"  # the fresh one prices /quote
    assert doc["instance"] == "/quote"
    assert charges(served) == []


async def test_credential_refused_for_other_query(served, session):
    """CORE-BIND-01, CORE-BIND-02: the query is part of the bound resource."""
    challenge = await quote(session, served, "GET", "/quote?symbol=X")
    assert challenge.opaque_json["resource"] == "GET /quote?symbol=X"
    credential = sign(challenge, served.wallet.key)
    reply = await call(session, served, "GET", "/quote?symbol=Y", authorization=credential)
    assert_problem(reply, 402, "invalid-challenge", used_id=challenge.id)
    assert charges(served) == []
    # the refusal did not consume it: the right query still works
    assert (await call(session, served, "GET", "/quote?symbol=X", authorization=credential)).status == 200


async def test_get_bound_credential_refused_on_post_route(served, session):
    """CORE-BIND-02, CORE-ID-05: a genuine challenge (minted with the seller's secret) bound to
    GET /summarize does not buy POST /summarize."""
    template = await quote(session, served, "POST", "/summarize", data=b"")
    issuer = mpp.ChallengeIssuer(served.secret, served.config.realm)
    minted = issuer.issue(method="ledger", intent="charge", request=template.request_json, now=datetime.now(timezone.utc),
                          opaque={"nonce": secrets.token_urlsafe(16), "resource": "GET /summarize"})
    reply = await call(session, served, "POST", "/summarize", data=b"", authorization=sign(minted, served.wallet.key))
    assert_problem(reply, 402, "invalid-challenge", used_id=minted.id)
    # the same minting, bound to the right resource, is accepted: only the method was wrong
    right = issuer.issue(method="ledger", intent="charge", request=template.request_json, now=datetime.now(timezone.utc),
                         digest=mpp.content_digest(b""), opaque={"nonce": secrets.token_urlsafe(16), "resource": "POST /summarize"})
    ok = await call(session, served, "POST", "/summarize", data=b"", authorization=sign(right, served.wallet.key))
    assert ok.status == 200, ok.body
    assert len(charges(served)) == 1


async def test_tampered_request_refused(served, session):
    """CORE-BIND-07, CORE-ID-01, CORE-ERR-04, LEDGER-09: a re-encoded request with a lower amount
    (same id, properly signed for the new amount) is invalid-challenge."""
    challenge = await quote(session, served, "GET", "/premium-report")
    cheaper = {**challenge.request_json, "amount": "1"}
    tampered = rebuild(challenge, request=mpp.encode_json_b64(cheaper))
    reply = await call(session, served, "GET", "/premium-report", authorization=sign(tampered, served.wallet.key))
    assert_problem(reply, 402, "invalid-challenge", used_id=challenge.id)
    assert charges(served) == []


async def test_tampered_parameters_refused(served, session):
    """CORE-BIND-07, CORE-ID-01, CORE-ERR-04: changing expires, realm, intent, digest or opaque breaks
    the id binding (invalid-challenge, even when re-signed by the wallet); a changed description
    is not bound (CORE-ID-01) and still pays."""
    later = mpp.format_rfc3339(datetime.now(timezone.utc) + timedelta(days=1))
    for field in ["expires", "realm", "intent", "opaque", "digest"]:
        challenge = await quote(session, served, "GET", "/weather")
        value = {
            "expires": later,
            "realm": "evil.example",
            "intent": "subscription",
            "opaque": mpp.encode_json_b64({**challenge.opaque_json, "nonce": "AAAAAAAAAAAAAAAAAAAAAA"}),
            "digest": mpp.content_digest(b""),
        }[field]
        tampered = rebuild(challenge, **{field: value})
        reply = await call(session, served, "GET", "/weather", authorization=sign(tampered, served.wallet.key))
        assert_problem(reply, 402, "invalid-challenge", used_id=challenge.id)
    assert charges(served) == []
    challenge = await quote(session, served, "GET", "/weather")
    reworded = rebuild(challenge, description="something else entirely")
    assert (await call(session, served, "GET", "/weather", authorization=sign(reworded, served.wallet.key))).status == 200
    assert len(charges(served)) == 1


async def test_challenge_without_expires_refused(served, session):
    """CORE-BIND-06: a challenge minted with the seller's secret but without expires is refused."""
    template = await quote(session, served, "GET", "/weather")
    no_expiry = rebuild(template, expires=None)
    fields = {k: v for k, v in no_expiry.echo().items() if k not in ("id", "description")}
    no_expiry = rebuild(no_expiry, id=mpp.compute_challenge_id(served.secret, **fields))
    reply = await call(session, served, "GET", "/weather", authorization=sign(no_expiry, served.wallet.key))
    assert_problem(reply, 402, "invalid-challenge", used_id=no_expiry.id)
    assert charges(served) == []


async def test_body_other_than_bound_digest_refused(served, session):
    """CORE-BIND-04, CORE-ERR-06: POST /summarize with a body other than the one the digest bound."""
    challenge = await quote(session, served, "POST", "/summarize", data=b"document A")
    credential = sign(challenge, served.wallet.key)
    reply = await call(session, served, "POST", "/summarize", data=b"document B", authorization=credential)
    assert_problem(reply, 402, "verification-failed", used_id=challenge.id)
    assert charges(served) == []
    ok = await call(session, served, "POST", "/summarize", data=b"document A", authorization=credential)
    assert ok.status == 200 and ok.json()["result"]["summary"] == "document A"


async def test_expired_challenge_refused(served, session):
    """CORE-BIND-06, CORE-ERR-05: an intact, properly signed challenge past its expiry is payment-expired."""
    template = await quote(session, served, "GET", "/weather")
    issuer = mpp.ChallengeIssuer(served.secret, served.config.realm, ttl=timedelta(seconds=300))
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    expired = issuer.issue(method="ledger", intent="charge", request=template.request_json, now=past,
                           opaque={"nonce": secrets.token_urlsafe(16), "resource": "GET /weather"})
    assert expired.is_expired(datetime.now(timezone.utc))
    reply = await call(session, served, "GET", "/weather", authorization=sign(expired, served.wallet.key))
    assert_problem(reply, 402, "payment-expired", used_id=expired.id)
    assert charges(served) == []


async def test_malformed_credentials_refused(served, session):
    """CORE-CRED-01, CORE-CRED-02, CORE-ERR-03, CORE-ERR-11: garbage, non-JSON, truncated, padded,
    wrong-shape credentials are malformed-credential (402 with a fresh challenge)."""
    challenge = await quote(session, served, "GET", "/weather")
    valid = sign(challenge, served.wallet.key)
    token = valid.split(" ", 1)[1]
    cases = [
        "Payment !!!",
        "Payment",
        "Payment " + mpp.b64url_encode(b"this is not JSON"),
        valid[: len(valid) // 2],
        valid[:-7],
        "Payment " + token + "==",
        "Payment " + token.replace("-", "+").replace("_", "/") + ("+" if "-" not in token and "_" not in token else ""),
        "Payment " + token[:20] + " " + token[20:],
        "Payment " + mpp.b64url_encode(b"[1, 2, 3]"),
        "Payment " + mpp.b64url_encode(json.dumps({"challenge": challenge.echo()}).encode()),
        "Payment " + mpp.b64url_encode(json.dumps({"challenge": {**challenge.echo(), "id": 7}, "payload": {}}).encode()),
        "Payment " + mpp.b64url_encode(b"\xff\xfe{}"),
    ]
    for value in cases:
        reply = await call(session, served, "GET", "/weather", authorization=value)
        assert_problem(reply, 402, "malformed-credential")
        secret_part = value.partition(" ")[2].strip()
        if len(secret_part) > 8:
            assert secret_part not in reply.body.decode()  # CORE-CRED-06: never echoed back
    assert charges(served) == []
    # none of this consumed the genuine challenge
    assert (await call(session, served, "GET", "/weather", authorization=valid)).status == 200


async def test_method_is_judged_before_the_challenge_id(served, session):
    """CORE-ERR-13, CORE-ERR-08: a credential naming a method the seller does not accept gets 400
    method-unsupported although its id, expiry, resource and intent would each be refused too
    (no seller can have minted an id for a method it never offered); a malformed credential is
    still malformed-credential first, whatever method it names."""
    challenge = await quote(session, served, "GET", "/weather")
    stranger = rebuild(challenge, method="tempo", id="A" * 43, intent="charge-v9", expires="2000-01-01T00:00:00Z",
                       opaque=mpp.b64url_encode(mpp.canonical_json({"nonce": "n", "resource": "GET /elsewhere"})))
    value = mpp.format_credential(mpp.Credential(challenge=stranger, payload={"type": "transaction"}))
    reply = await call(session, served, "GET", "/weather", authorization=value)
    assert_problem(reply, 400, "method-unsupported", used_id=challenge.id)
    no_payload = mpp.b64url_encode(json.dumps({"challenge": stranger.echo()}).encode())
    reply = await call(session, served, "GET", "/weather", authorization="Payment " + no_payload)
    assert_problem(reply, 402, "malformed-credential", used_id=challenge.id)
    assert charges(served) == []


async def test_unsupported_method_gets_400_with_challenge(served, session):
    """CORE-ERR-08, CORE-ERR-10: a credential naming method "tempo" is 400 method-unsupported,
    with fresh challenges and no-store."""
    challenge = await quote(session, served, "GET", "/weather")
    tempo = rebuild(challenge, method="tempo")
    payload = {"type": "transaction", "signature": "0xdeadbeef"}
    value = mpp.format_credential(mpp.Credential(challenge=tempo, payload=payload))
    reply = await call(session, served, "GET", "/weather", authorization=value)
    assert_problem(reply, 400, "method-unsupported", used_id=challenge.id)
    assert reply.challenges[0].method == "ledger"
    assert charges(served) == []


async def test_two_payment_credentials_refused(served, session):
    """CORE-CRED-04, CORE-ERR-03: two Authorization: Payment fields are malformed; nothing settles."""
    first = await quote(session, served, "GET", "/weather")
    second = await quote(session, served, "GET", "/weather")
    key = served.wallet.key
    reply = await call(session, served, "GET", "/weather", authorization=[sign(first, key), sign(second, key)])
    assert_problem(reply, 402, "malformed-credential")
    assert charges(served) == []
    # a non-Payment Authorization next to one Payment credential is fine
    ok = await call(session, served, "GET", "/weather", authorization=["Bearer abc.def", sign(first, key)])
    assert ok.status == 200, ok.body


async def test_unauthorized_wallet_key_refused(served, session):
    """LEDGER-11, CORE-ERR-06: a correctly signed credential from a key the payer account does not
    authorize is verification-failed; nothing moves."""
    challenge = await quote(session, served, "GET", "/weather")
    stranger = mpp.SigningKey.generate()
    reply = await call(session, served, "GET", "/weather", authorization=sign(challenge, stranger))
    assert_problem(reply, 402, "verification-failed", used_id=challenge.id)
    assert charges(served) == []
    assert balances(served)["acct:buyer"] == 100_000


async def test_bad_signature_and_source_refused(served, session):
    """LEDGER-08, LEDGER-10, LEDGER-07, CORE-ERR-06: a signature over other bytes, a source that is
    not the signer, a signer that is not a did:key: verification-failed."""
    key = served.wallet.key
    challenge = await quote(session, served, "GET", "/weather")
    request = mpp.ChargeRequest.from_challenge(challenge)
    payload, source = LedgerBuyerMethod(key=key, account="acct:buyer").payload(challenge, request)
    variants = [
        ({**payload, "signature": key.sign(b"something else")}, source),
        (payload, mpp.SigningKey.generate().did),
        ({**payload, "signer": "did:web:example.com"}, None),
        ({**payload, "type": "transfer"}, source),
    ]
    for p, s in variants:
        value = mpp.format_credential(mpp.Credential(challenge=challenge, payload=p, source=s))
        assert_problem(await call(session, served, "GET", "/weather", authorization=value), 402, "verification-failed")
    assert charges(served) == []


async def test_insufficient_balance_refused_and_nothing_moves(served, session):
    """CORE-ERR-07, LEDGER-13, LEDGER-01: a payer with too little money gets payment-insufficient
    and no balance changes."""
    poor = mpp.SigningKey.generate()
    ledger = served.ledger()
    try:
        ledger.create_account("acct:poor", "usd")
        ledger.keys.allow("acct:poor", poor.did, "owner")
        ledger.fund("acct:poor", 10)
    finally:
        ledger.close()
    before = balances(served)
    client = PaymentClient(session, [LedgerBuyerMethod(key=poor, account="acct:poor")], mpp.BuyerPolicy(max_amount=10_000))
    quote_, _ = await client.quote("GET", served.url + "/premium-report")
    assert quote_ is not None and quote_.request.amount == "5000"
    reply = await call(session, served, "GET", "/premium-report", authorization=mpp.sign_quote(quote_))
    assert_problem(reply, 402, "payment-insufficient", used_id=quote_.challenge.id)
    assert balances(served) == before
    assert charges(served) == []
    ledger = served.ledger()
    try:
        assert ledger.check() == [] and ledger.total() == 0
    finally:
        ledger.close()


# -- 6. idempotency ------------------------------------------------------------------


async def test_idempotency_key_replays_original_response(served, session):
    """CORE-ONCE-06, CORE-ONCE-05, CHARGE-05: a retry with the same credential and Idempotency-Key
    gets the original status, body and receipt; the money moves once; another key is refused."""
    body = b"please summarize this"
    challenge = await quote(session, served, "POST", "/summarize", data=body)
    credential = sign(challenge, served.wallet.key)
    first = await call(session, served, "POST", "/summarize", data=body, authorization=credential, headers={"Idempotency-Key": "retry-1"})
    assert first.status == 200, first.body
    again = await call(session, served, "POST", "/summarize", data=body, authorization=credential, headers={"Idempotency-Key": "retry-1"})
    assert again.status == first.status
    assert again.body == first.body
    assert again.headers["Payment-Receipt"] == first.headers["Payment-Receipt"]
    assert again.headers["Content-Type"].startswith("application/json")
    assert "private" in again.headers["Cache-Control"]
    assert len(charges(served)) == 1

    other_key = await call(session, served, "POST", "/summarize", data=body, authorization=credential, headers={"Idempotency-Key": "retry-2"})
    assert_problem(other_key, 402, "invalid-challenge", used_id=challenge.id)
    no_key = await call(session, served, "POST", "/summarize", data=body, authorization=credential)
    assert_problem(no_key, 402, "invalid-challenge", used_id=challenge.id)
    assert len(charges(served)) == 1


async def test_bad_idempotency_key_is_400(served, session):
    """CORE-ONCE-06: an Idempotency-Key that is too long is a 400 problem; nothing is charged."""
    challenge = await quote(session, served, "GET", "/weather")
    credential = sign(challenge, served.wallet.key)
    reply = await call(session, served, "GET", "/weather", authorization=credential, headers={"Idempotency-Key": "k" * 256})
    assert reply.status == 400
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert "Payment-Receipt" not in reply.headers
    assert charges(served) == []
    assert (await call(session, served, "GET", "/weather", authorization=credential)).status == 200


@pytest.mark.parametrize("keys", [["order 42"], ["caf\u00e9-1"], ["k" * 256], ["retry-1", "retry-2"]],
                         ids=["space", "non-ascii", "too-long", "two-fields"])
async def test_idempotency_key_outside_visible_ascii_is_400_bad_request(served, session, keys):
    """CORE-ONCE-06: a space or a non-ASCII character outside an RFC 8941 string, more than 255
    characters, or two Idempotency-Key fields: 400 bad-request (its full type), nothing settled."""
    challenge = await quote(session, served, "GET", "/weather")
    credential = sign(challenge, served.wallet.key)
    hdrs: CIMultiDict[str] = CIMultiDict([("Authorization", credential)] + [("Idempotency-Key", k) for k in keys])
    async with session.get(served.url + "/weather", headers=hdrs) as resp:
        reply = Reply(resp.status, resp.headers, await resp.read())
    doc = assert_problem(reply, 400, "bad-request")
    assert doc["type"] == "https://paymentauth.org/problems/bad-request"
    assert charges(served) == []
    assert (await call(session, served, "GET", "/weather", authorization=credential)).status == 200


async def test_idempotency_key_as_rfc8941_string_with_a_space_replays(served, session):
    """CORE-ONCE-06: the sf-string form of draft-ietf-httpapi-idempotency-key-header, a space inside
    the quotes, is a key like any other: the retry replays the original, charged once."""
    challenge = await quote(session, served, "GET", "/weather")
    credential = sign(challenge, served.wallet.key)
    key = {"Idempotency-Key": '"order 42"'}
    first = await call(session, served, "GET", "/weather", authorization=credential, headers=key)
    again = await call(session, served, "GET", "/weather", authorization=credential, headers=key)
    assert first.status == again.status == 200
    assert again.headers["Payment-Receipt"] == first.headers["Payment-Receipt"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(charges(served)) == 1


# -- 7. fuzzing ----------------------------------------------------------------------

_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "obj"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, 2**64 + 1, -(2**70), rng.randint(-10**12, 10**12)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 2.5e-300, rng.uniform(-1e6, 1e6)])
    if kind == "str":
        return rng.choice(["", "ledger", "charge", "tempo", "acct:buyer", "did:key:z6Mk", "💸", "\u0000\u202e", "-1", "1e3",
                           "２５", "x" * rng.randint(0, 300), "".join(rng.choice(_B64URL_ALPHABET) for _ in range(rng.randint(1, 60)))])
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["id", "request", "payload", "challenge", "amount", "k" + str(i)]): _random_json(rng, depth + 1)
            for i in range(rng.randint(0, 4))}


def _random_b64url(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_B64URL_ALPHABET) for _ in range(n))


def _mutate_credential(rng: random.Random, doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(["challenge", "payload", "top"])
        if target == "top":
            key = rng.choice(["challenge", "payload", "source", "extra"])
            doc[key] = _random_json(rng)
        else:
            if not isinstance(doc.get(target), dict):
                doc[target] = {}
            keys = list(doc[target]) + ["header", "unknown"]
            doc[target][rng.choice(keys)] = _random_json(rng) if rng.random() < 0.7 else rng.choice(
                ["", "ledger", "charge", _random_b64url(rng, 40), mpp.encode_json_b64({"amount": "1"})])
    return doc


def _fuzz_headers(rng: random.Random, genuine: str, count: int) -> list[str]:
    base = json.loads(mpp.b64url_decode(genuine.split(" ", 1)[1]))
    out: list[str] = []
    for i in range(count):
        kind = i % 8
        if kind == 0:  # random printable junk, sometimes with a Payment prefix
            junk = "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(0, 200)))
            out.append(rng.choice(["", "Payment ", "payment ", "PAYMENT\t", "Basic ", "Payment  "]) + junk)
        elif kind == 1:  # Payment + random base64url
            out.append("Payment " + _random_b64url(rng, rng.randint(0, 400)))
        elif kind == 2:  # base64url of a random JSON value
            out.append("Payment " + mpp.b64url_encode(json.dumps(_random_json(rng)).encode()))
        elif kind in (3, 4, 5):  # valid-looking credentials with random field types
            doc = _mutate_credential(rng, base)
            out.append("Payment " + mpp.b64url_encode(json.dumps(doc).encode()))
        elif kind == 6:  # huge values, up to ~6 KB
            size = rng.randint(1000, 4400)
            choice = rng.randint(0, 2)
            if choice == 0:
                out.append("Payment " + _random_b64url(rng, size))
            elif choice == 1:
                doc = json.loads(json.dumps(base))
                doc[rng.choice(["challenge", "payload"])][rng.choice(["id", "request", "signature", "filler"])] = "A" * size
                out.append("Payment " + mpp.b64url_encode(json.dumps(doc).encode()))
            else:
                out.append("Payment " + mpp.b64url_encode(("[" * size + "]" * size).encode()[: size * 2])[:6000])
        else:  # odd encodings: bad UTF-8, NaN, duplicate keys, deep nesting, non-ASCII header text
            choice = rng.randint(0, 5)
            if choice == 0:
                out.append("Payment " + mpp.b64url_encode(bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))))
            elif choice == 1:
                out.append("Payment " + mpp.b64url_encode(b'{"challenge": NaN, "payload": Infinity}'))
            elif choice == 2:
                raw = json.dumps(base)[:-1] + ', "payload": {"type": 1}, "challenge": []}'
                out.append("Payment " + mpp.b64url_encode(raw.encode()))
            elif choice == 3:
                depth = rng.randint(200, 700)
                out.append("Payment " + mpp.b64url_encode(('{"a":' * depth + "1" + "}" * depth).encode()))
            elif choice == 4:
                out.append("Payment " + "".join(rng.choice("éü€ ñ\u00a0ÿ") for _ in range(rng.randint(1, 50))))
            else:
                out.append(genuine[: rng.randint(0, len(genuine))] + rng.choice(["", "=", "==", ".", " x", "\t"]))
    return out


async def test_random_malformed_authorization_never_5xx(served, session):
    """CORE-ERR-11, CORE-ERR-01, CORE-ERR-03, CORE-CRED-01, CORE-CRED-02, CORE-CHAL-10: 1,000 seeded
    random Authorization values against a priced route: never a 5xx, every 4xx is a problem
    document, nothing is ever charged."""
    rng = random.Random(20240402)
    challenge = await quote(session, served, "GET", "/weather")
    genuine = sign(challenge, served.wallet.key)
    values = _fuzz_headers(rng, genuine, 1000)
    assert max(len(v) for v in values) > 4000
    limit = asyncio.Semaphore(20)
    failures: list[tuple[str, int, bytes]] = []
    kinds: collections.Counter[str] = collections.Counter()

    async def one(value: str) -> int:
        async with limit:
            reply = await call(session, served, "GET", "/weather", authorization=value)
        if reply.status >= 500 or (400 <= reply.status < 500 and not _is_problem(reply)):
            failures.append((value[:200], reply.status, reply.body[:200]))
        elif reply.status >= 400:
            kinds[reply.json()["type"].rsplit("/", 1)[-1]] += 1
        return reply.status

    statuses = await asyncio.gather(*(one(v) for v in values))
    assert not failures, failures[:5]
    # the corpus reaches past the parser: challenge binding and payload verification both run
    assert {"malformed-credential", "invalid-challenge", "verification-failed", "method-unsupported"} <= set(kinds), kinds
    assert set(statuses) <= {200, 400, 402}, sorted(set(statuses))
    # Some variants are the genuine credential plus ignorable extras (unknown members, long
    # filler fields; ~75 of the 1,000 pass the offline checks): the first of those to arrive
    # pays, once; every later one finds the challenge used; nothing else moves money.
    paid = [v for v, status in zip(values, statuses) if status == 200]
    assert len(paid) <= 1
    assert len(charges(served)) == len(paid)
    for value in paid:
        assert mpp.parse_credential(value).challenge.id == challenge.id


def _is_problem(reply: Reply) -> bool:
    if not reply.headers.get("Content-Type", "").startswith("application/problem+json"):
        return False
    try:
        doc = reply.json()
    except ValueError:
        return False
    return (isinstance(doc, dict) and doc.get("status") == reply.status and isinstance(doc.get("type"), str)
            and isinstance(doc.get("title"), str) and isinstance(doc.get("detail"), str))


# A member added to a valid, signed credential's JSON text; a lenient parser ignores it (an
# unknown member) and pays, a strict one refuses the whole credential.
NOT_STRICT_JSON = {
    "NaN": ',"x":NaN',
    "Infinity": ',"x":Infinity',
    "-Infinity": ',"x":-Infinity',
    "overflowing number": ',"x":1e400',
    "repeated member": ',"payload":{"type":"repeated"}',
    "nesting 33 deep": ',"x":' + "[" * 32 + "]" * 32,
    "nesting 5000 deep": ',"x":' + "[" * 5000 + "]" * 5000,
    "escaped lone surrogate": ',"x":"\\ud800"',
}


async def test_credentials_that_are_not_strict_json_are_malformed(served, session):
    """CORE-CRED-07, CORE-ERR-03: a correctly signed credential whose JSON text also holds NaN,
    Infinity, a repeated member, 33-deep nesting or an escaped lone surrogate is answered 402
    malformed-credential with a fresh challenge, and pays nothing; the same credential as sent
    by the buyer pays."""
    for label, extra in NOT_STRICT_JSON.items():
        challenge = await quote(session, served, "GET", "/weather")
        text = mpp.b64url_decode(sign(challenge, served.wallet.key).split(" ", 1)[1]).decode()
        if label == "repeated member":  # the real payload last: a last-wins parser would pay
            doc = json.loads(text)
            text = '{"payload":{"type":"repeated"},' + json.dumps(doc)[1:]
        else:
            text = text[:-1] + extra + "}"
        reply = await call(session, served, "GET", "/weather", authorization="Payment " + mpp.b64url_encode(text.encode()))
        assert_problem(reply, 402, "malformed-credential")
        assert "strict JSON" in reply.json()["detail"] or "deeper" in reply.json()["detail"], (label, reply.json())
    assert charges(served) == []
    challenge = await quote(session, served, "GET", "/weather")
    text = mpp.b64url_decode(sign(challenge, served.wallet.key).split(" ", 1)[1]).decode()
    nested = text[:-1] + ',"x":' + "[" * 31 + "]" * 31 + "}"  # 32 deep with the credential object: allowed
    reply = await call(session, served, "GET", "/weather", authorization="Payment " + mpp.b64url_encode(nested.encode()))
    assert reply.status == 200, reply.body
    assert len(charges(served)) == 1


# -- 8. discovery ----------------------------------------------------------------------


async def test_openapi_lists_priced_operations(served, session):
    """CORE-DISC-02, CORE-DISC-03: /openapi.json is free and each priced operation has an
    x-payment-info offer (charge, ledger, amount as a string) and a 402 response, agreeing
    with what the 402 quotes."""
    reply = await call(session, served, "GET", "/openapi.json")
    assert reply.status == 200
    doc = reply.json()
    assert doc["openapi"].startswith("3.")
    for (method, path), amount in PRICES.items():
        operation = doc["paths"][path][method.lower()]
        [offer] = operation["x-payment-info"]["offers"]
        assert offer["intent"] == "charge" and offer["method"] == "ledger"
        assert offer["amount"] == str(amount) and isinstance(offer["amount"], str)
        assert offer["currency"] == "usd"
        assert "402" in operation["responses"]
    challenge = await quote(session, served, "GET", "/weather")
    assert mpp.ChargeRequest.from_challenge(challenge).amount == doc["paths"]["/weather"]["get"]["x-payment-info"]["offers"][0]["amount"]


async def test_openapi_payment_info_sits_on_the_operation_object_only(served, session):
    """CORE-DISC-02: x-payment-info is a member of each priced Operation Object (paths.<path>.<method>),
    never of a Path Item or of the document root, and the document is application/json."""
    reply = await call(session, served, "GET", "/openapi.json")
    assert reply.headers["Content-Type"].startswith("application/json")
    doc = reply.json()
    assert "x-payment-info" not in doc
    operations = 0
    for path, item in doc["paths"].items():
        assert "x-payment-info" not in item, path
        for method, operation in item.items():
            assert method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}, (path, method)
            if "x-payment-info" in operation:
                operations += 1
                assert isinstance(operation["x-payment-info"]["offers"], list) and "402" in operation["responses"]
    assert operations >= len(PRICES)
    assert all("x-payment-info" in doc["paths"][path][method.lower()] for method, path in PRICES)


async def test_jwks_publishes_ed25519_key(served, session):
    """CORE-DISC-01: /.well-known/jwks.json is a JWKS with the Ed25519 receipt key."""
    reply = await call(session, served, "GET", "/.well-known/jwks.json")
    assert reply.status == 200
    jwks = reply.json()
    assert isinstance(jwks["keys"], list) and jwks["keys"]
    key = jwks["keys"][0]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
    assert key.get("kid") and isinstance(key["x"], str)
    assert "d" not in key  # never the private part
    assert key.get("alg", "EdDSA") == "EdDSA"
    head = await call(session, served, "HEAD", "/.well-known/jwks.json")
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) == len(reply.body)
    other = await call(session, served, "POST", "/.well-known/jwks.json")
    assert other.status == 405


# -- 9. Accept-Payment -------------------------------------------------------------------


async def test_accept_payment_negotiation(served, session):
    """CORE-NEG-01, CORE-NEG-02: whatever the client prefers, a priced resource answers 402 with our
    ledger challenge (on no match the draft lets the server send its normal set)."""
    for accept in ["ledger/charge", "ledger/*", "*/*;q=0.5", "tempo/charge", "ledger/*;q=0",
                   "ledger/charge;q=0, tempo/charge", "%%% not a range", ""]:
        reply = await call(session, served, "GET", "/weather", headers={"Accept-Payment": accept})
        assert_problem(reply, 402, "payment-required")
        [challenge] = reply.challenges
        assert (challenge.method, challenge.intent) == ("ledger", "charge"), accept


# -- 10. large credentials -----------------------------------------------------------------


async def test_large_credentials_are_parsed(served, session):
    """CORE-CRED-05, LEDGER-05: a credential over 4 KB (long unknown payload member) is parsed:
    with a bad signature it is a payment problem, with a good one it pays."""
    challenge = await quote(session, served, "GET", "/weather")
    key = served.wallet.key
    # signed over other bytes: refused offline, so the challenge stays unconsumed
    bad = sign(challenge, key, extra_payload={"note": "n" * 3500, "signature": key.sign(b"other bytes")})
    assert len(bad) > 4096
    reply = await call(session, served, "GET", "/weather", authorization=bad)
    assert_problem(reply, 402, "verification-failed", used_id=challenge.id)

    good = sign(challenge, key, extra_payload={"note": "n" * 3500, "nested": {"unknown": list(range(50))}})
    assert len(good) > 4096
    ok = await call(session, served, "GET", "/weather", authorization=good)
    assert ok.status == 200, ok.body
    assert len(charges(served)) == 1
