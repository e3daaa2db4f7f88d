"""The buyer client against adversarial sellers on loopback.

Each seller here is a few lines of aiohttp that misbehaves in one way; the tests check the
buyer refuses before signing, never sends a credential where it must not, and reports an
unknown outcome instead of paying twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

import mpp
from mpp.aio import PaymentClient
from mpp.methods.ledger import LedgerBuyerMethod

SECRET = b"k" * 32
NOW = datetime.now(timezone.utc)


def challenge_for(request: web.Request, *, amount: int = 100, currency: str = "usd", recipient: str = "acct:seller",
                  ttl: timedelta = timedelta(minutes=5), now: datetime | None = None) -> mpp.Challenge:
    issuer = mpp.ChallengeIssuer(SECRET, "adversary.test", ttl=ttl)
    return issuer.issue(
        method="ledger",
        intent="charge",
        request={"amount": str(amount), "currency": currency, "recipient": recipient, "methodDetails": {"ledger": "ledger-adversary"}},
        now=now or datetime.now(timezone.utc),
        opaque={"resource": f"{request.method} {request.path}"},
    )


def answer_402(challenge: mpp.Challenge) -> web.Response:
    return web.json_response(
        {"type": mpp.PROBLEM_BASE + "payment-required", "title": "Payment Required", "status": 402},
        status=402,
        headers={"WWW-Authenticate": mpp.format_challenge(challenge), "Cache-Control": "no-store"},
    )


class Recorder:
    """Counts what reached an adversarial seller."""

    def __init__(self) -> None:
        self.credentials: list[str] = []

    def saw(self, request: web.Request) -> bool:
        values = [v for v in request.headers.getall("Authorization", ()) if v.lower().startswith("payment ")]
        self.credentials.extend(values)
        return bool(values)


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def client(session: aiohttp.ClientSession, max_amount: int = 1000, **policy) -> PaymentClient:
    key = mpp.SigningKey.generate()
    return PaymentClient(session, [LedgerBuyerMethod(key=key, account="acct:buyer")], mpp.BuyerPolicy(max_amount=max_amount, **policy))


async def test_cross_origin_redirect_then_402_is_not_paid(session):
    """CORE-BUY-02: no credential goes to another origin, also not after a redirect."""
    rec = Recorder()

    async def pay_here(request):
        rec.saw(request)
        return answer_402(challenge_for(request))

    other_app = web.Application()
    other_app.router.add_get("/pay", pay_here)
    other = await serve(other_app)

    async def redirect(request):
        rec.saw(request)
        raise web.HTTPFound(str(other.make_url("/pay")))

    first_app = web.Application()
    first_app.router.add_get("/thing", redirect)
    first = await serve(first_app)
    try:
        with pytest.raises(mpp.QuoteRejected) as info:
            await client(session).request("GET", str(first.make_url("/thing")))
        assert info.value.rule == "origin"
        assert rec.credentials == []
    finally:
        await first.close()
        await other.close()


async def test_server_error_after_credential_is_outcome_unknown_and_not_retried(session):
    """CORE-BUY-05, CORE-BUY-03: a 5xx after paying is "outcome unknown"; the credential is sent once."""
    rec = Recorder()

    async def handler(request):
        if rec.saw(request):
            return web.Response(status=503, text="try later")
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.OutcomeUnknown) as info:
            await client(session).request("GET", str(server.make_url("/thing")))
        assert len(rec.credentials) == 1
        assert info.value.challenge_id
    finally:
        await server.close()


async def test_connection_dropped_after_credential_is_outcome_unknown(session):
    """CORE-BUY-05, CORE-BUY-03: a network error after paying is "outcome unknown"; aiohttp's own
    resend of idempotent requests on a dropped connection is blocked too."""
    rec = Recorder()

    async def handler(request):
        if rec.saw(request):
            request.transport.close()
            return web.Response()
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.OutcomeUnknown):
            await client(session).request("GET", str(server.make_url("/thing")))
        assert len(rec.credentials) == 1
    finally:
        await server.close()


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"amount": 5000}, "max-amount"),
        ({"currency": "eur"}, "currency"),
        ({"recipient": "acct:mallory"}, "recipient"),
        ({"ttl": timedelta(seconds=-10)}, "expiry"),
    ],
    ids=["over-limit", "wrong-currency", "wrong-recipient", "expired"],
)
async def test_quote_outside_policy_is_refused_before_signing(session, kwargs, rule):
    """CORE-BUY-01: amount, currency, recipient and expiry are checked before anything is signed."""
    rec = Recorder()

    async def handler(request):
        rec.saw(request)
        return answer_402(challenge_for(request, **kwargs))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        buyer = client(session, currencies=frozenset({"usd"}), recipients=frozenset({"acct:seller"}))
        with pytest.raises(mpp.QuoteRejected) as info:
            await buyer.request("GET", str(server.make_url("/thing")))
        assert info.value.rule == rule
        assert rec.credentials == []
    finally:
        await server.close()


async def test_receipt_signed_by_another_key_is_refused(session):
    """CORE-BUY-04, CHARGE-06: the receipt JWS must verify against the seller's published JWKS."""
    published = mpp.SigningKey.generate()
    forger = mpp.SigningKey.generate()

    async def jwks(request):
        return web.json_response(mpp.jwks_document([published]))

    async def handler(request):
        header = request.headers.get("Authorization")
        if header is None:
            return answer_402(challenge_for(request))
        credential = mpp.parse_credential(header)
        request_json = credential.challenge.request_json
        claims = {"iss": "adversary.test", "sub": credential.source, "iat": int(datetime.now(timezone.utc).timestamp()),
                  "jti": credential.challenge.id, "challengeId": credential.challenge.id, "amount": request_json["amount"],
                  "currency": request_json["currency"], "recipient": request_json["recipient"], "reference": "t1"}
        # Right kid, wrong key: only the signature gives it away.
        token = mpp.sign_receipt(forger, claims).split(".")
        header_part = mpp.b64url_encode(mpp.canonical_json({"alg": "EdDSA", "kid": published.kid}))
        forged = ".".join([header_part, token[1], token[2]])
        receipt = mpp.PaymentReceipt(status="success", method="ledger", timestamp=mpp.format_rfc3339(datetime.now(timezone.utc)),
                                     reference="t1", challengeId=credential.challenge.id, receipt=forged)
        return web.json_response({"ok": True}, headers={"Payment-Receipt": mpp.format_receipt(receipt), "Cache-Control": "private"})

    app = web.Application()
    app.router.add_get("/thing", handler)
    app.router.add_get("/.well-known/jwks.json", jwks)
    server = await serve(app)
    try:
        with pytest.raises(mpp.ReceiptInvalid):
            await client(session).request("GET", str(server.make_url("/thing")))
    finally:
        await server.close()


async def test_redirect_after_credential_is_not_followed(session):
    """CORE-BUY-03: the credential is never carried across a redirect."""
    rec = Recorder()

    async def elsewhere(request):
        rec.saw(request)
        return web.Response(text="elsewhere")

    other_app = web.Application()
    other_app.router.add_get("/x", elsewhere)
    other = await serve(other_app)

    async def handler(request):
        if request.headers.get("Authorization"):
            raise web.HTTPFound(str(other.make_url("/x")))
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.ReceiptInvalid):  # a 302 carries no receipt: paid-for content never arrived
            await client(session).request("GET", str(server.make_url("/thing")))
        assert rec.credentials == []
    finally:
        await server.close()
        await other.close()


async def test_unpaid_resource_passes_through(session):
    async def handler(request):
        return web.Response(text="free")

    app = web.Application()
    app.router.add_get("/free", handler)
    server = await serve(app)
    try:
        resp = await client(session).request("GET", str(server.make_url("/free")))
        assert resp.status == 200 and resp.text() == "free" and not resp.paid
    finally:
        await server.close()


async def test_plain_http_to_a_remote_host_is_refused(session):
    """CORE-BUY-07: no credential over plain http except to loopback."""
    assert mpp.check_transport("http://127.0.0.1:8000/x", mpp.BuyerPolicy(max_amount=1)) is None
    assert mpp.check_transport("http://[::1]:8000/x", mpp.BuyerPolicy(max_amount=1)) is None
    assert mpp.check_transport("https://api.example.com/x", mpp.BuyerPolicy(max_amount=1)) is None
    with pytest.raises(mpp.QuoteRejected) as info:
        mpp.check_transport("http://api.example.com/x", mpp.BuyerPolicy(max_amount=1))
    assert info.value.rule == "transport"


async def test_challenge_selecting_another_header_is_not_answered(session):
    """CORE-BUY-08, CORE-BUY-09: a challenge asking for Payment-Authorization is skipped; a payable sibling is chosen."""
    rec = Recorder()

    async def handler(request):
        if rec.saw(request):
            return web.Response(status=503)
        good = challenge_for(request)
        odd = good.model_copy(update={"header": "Payment-Authorization", "id": good.id + "x"})
        return web.Response(status=402, headers=CIMultiDict([("WWW-Authenticate", mpp.format_challenge(odd)), ("WWW-Authenticate", mpp.format_challenge(good))]))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.OutcomeUnknown):
            await client(session).request("GET", str(server.make_url("/thing")))
        assert len(rec.credentials) == 1
        assert mpp.parse_credential(rec.credentials[0]).challenge.header is None
    finally:
        await server.close()
