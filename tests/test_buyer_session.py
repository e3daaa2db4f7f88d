"""The buyer's session manager (issue 5): open on the first session challenge, reuse it with
vouchers and no 402 round trip, keep vouchers ahead of use, top up, recover from the seller's
session problems, stream with in-band vouchers, and close with a verified final receipt.

Most tests run against ``FakeSessionSeller``: a small aiohttp seller written here to the design
in notes/session-design.md, with knobs to misbehave. The end-to-end tests at the bottom run
against the real seller (``Seller.meter``) and the embedded ledger.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

import mpp
from mpp import identity as I
from mpp.aio import PaymentClient, SessionPolicy
from mpp.purchase.agent import AgentIdentity
from mpp.purchase.sessions import SESSION_PATH, SessionManager, SessionOffer, select_session
from mpp.stores.budget import BudgetStore
from mpp.protocol.challenge import compute_challenge_id
from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod
from mpp.intents.session import (
    SessionRequest,
    SessionTerms,
    Voucher,
    cost_of,
    parse_session_payload,
    verify_cap,
    verify_close,
    verify_voucher,
)

SECRET = b"f" * 32
REALM = "fake.test"
PAYEE = "acct:seller"
LEDGER = "ledger-fake"
PROBLEM = mpp.EXTENSION_PROBLEM_BASE


def now() -> datetime:
    return datetime.now(timezone.utc)


# -- a fake seller, to the design ---------------------------------------------------------


@dataclass
class FakeSession:
    terms: SessionTerms
    request: SessionRequest
    signer: str
    account: str
    cap: int
    highest: int
    sequence: int
    spent: int = 0
    reserved: int = 0
    closed: bool = False
    final: str | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    voucher_arrived: asyncio.Event = field(default_factory=asyncio.Event)


class FakeSessionSeller:
    """Metered routes priced ``unit_price`` per ``per`` units; ``/gen?units=N`` uses N units,
    ``/stream?chunks=C&units=N`` streams C chunks of N units, ``/flat`` is charge-only, ``/free`` free."""

    def __init__(self, *, unit_price: int = 2, per: int = 1000, max_units: int = 1000, suggested_cap: int = 100,
                 idle_timeout: int = 60, trusted: tuple[str, ...] = ()) -> None:
        self.issuer = mpp.ChallengeIssuer(SECRET, REALM)
        self.receipt_key = mpp.SigningKey.generate()
        self.unit_price, self.per, self.max_units = unit_price, per, max_units
        self.suggested_cap, self.idle_timeout = suggested_cap, idle_timeout
        self.trusted = trusted
        self.sessions: dict[str, FakeSession] = {}
        self.counted: list[str] = []  # every request but the JWKS: "<METHOD> <path> <action or ->"
        self.actions: list[tuple[str, int | None, int | None]] = []  # (action, cumulative, cap) of each credential
        self.identities: list[Any] = []  # verified identity chains of opens
        self.session_posts: list[tuple[str | None, bytes]] = []  # (Content-Type, body) of each session-endpoint request
        # knobs
        self.hold_back = 0  # pretend this much is reserved by someone else's request in flight
        self.hold_back_times = 0  # ... for this many requests
        self.fail_5xx_once = False
        self.lie_spent = 0  # add this to the spent a receipt claims
        self.lie_amount = 0  # add this to the amount a request's receipt claims
        self.tamper_final: Any = None  # called with the final receipt's claims before they are signed
        self.charge = LedgerSellerMethod(recipient=PAYEE, ledger_id=LEDGER)
        self.server: TestServer | None = None

    # wiring

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/gen", self.gen)
        app.router.add_get("/other", self.gen)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/flat", self.flat)
        app.router.add_get("/free", self.free)
        app.router.add_post(SESSION_PATH, self.session_endpoint)
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        return app

    async def start(self) -> "FakeSessionSeller":
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        return self

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(mpp.jwks_document([self.receipt_key]))

    def cost(self, units: int) -> int:
        return cost_of(units, self.unit_price, self.per)

    def line(self, resource: str, units: int, amount: int) -> dict[str, Any]:
        """One request's usage line (the real seller sums a route's requests into one line)."""
        return {"resource": resource, "unitType": "token", "unitPrice": str(self.unit_price), "per": str(self.per),
                "units": units, "amount": str(amount), "requests": 1}

    # challenges and problems

    def challenges(self, request: web.Request, *, session: bool = True) -> list[mpp.Challenge]:
        opaque = {"nonce": secrets.token_urlsafe(8), "resource": f"{request.method} {request.path_qs}"}
        out = []
        if session:
            out.append(self.issuer.issue(method="ledger", intent="session", now=now(), opaque=opaque, request={
                "amount": str(self.unit_price), "currency": "usd", "recipient": PAYEE, "unitType": "token",
                "methodDetails": {"ledger": LEDGER, "per": str(self.per), "maxUnits": str(self.max_units),
                                  "suggestedCap": str(self.suggested_cap), "idleTimeout": str(self.idle_timeout)}}))
        price = self.cost(self.max_units) if session else 5
        out.append(self.issuer.issue(method="ledger", intent="charge", now=now(), opaque=opaque,
                                     request=self.charge.request_for(amount=price, currency="usd", description=None)))
        return out

    def problem(self, request: web.Request, slug: str, *, session: bool = True, **members: Any) -> web.Response:
        headers = CIMultiDict([("Cache-Control", "no-store")])
        for c in self.challenges(request, session=session):
            headers.add("WWW-Authenticate", mpp.format_challenge(c))
        base = mpp.PROBLEM_BASE if slug == "payment-required" else PROBLEM
        body = {"type": base + slug, "title": slug, "status": 402, **members}
        return web.Response(status=402, body=json.dumps(body), content_type="application/problem+json", headers=headers)

    def count(self, request: web.Request, action: str = "-") -> None:
        self.counted.append(f"{request.method} {request.path} {action}")

    # receipts

    def receipt(self, s: FakeSession, *, amount: int, units: int, resource: str, final: bool = False) -> str:
        spent = s.spent + self.lie_spent
        claims: dict[str, Any] = {
            "iss": REALM, "sub": s.signer, "iat": int(now().timestamp()), "jti": secrets.token_urlsafe(12),
            "challengeId": s.terms.session_id, "method": "ledger", "intent": "session", "reference": s.terms.session_id,
            "amount": str(amount), "units": units, "unitType": "token", "currency": "usd", "recipient": PAYEE,
            "resource": resource, "authorized": str(s.highest), "spent": str(spent), "remaining": str(s.highest - spent),
            "cap": str(s.cap), "unitPrice": str(self.unit_price), "per": str(self.per),
        }
        if final:  # the claims of session.md §9's final receipt (SESSION-RCPT-03)
            for name in ("resource", "unitType", "unitPrice", "per"):
                del claims[name]
            claims |= {"final": True, "captured": str(spent), "released": str(s.cap - spent), "settlementRef": "set_" + s.terms.session_id[:8],
                       "lines": s.lines, "requests": sum(line["requests"] for line in s.lines), "remaining": "0",
                       "closedBy": "buyer"}
            if self.tamper_final is not None:
                self.tamper_final(claims)
        else:
            claims["amount"] = str(amount + self.lie_amount)
        return mpp.format_receipt(mpp.PaymentReceipt(status="success", method="ledger", timestamp=mpp.format_rfc3339(now()),
                                                     reference=s.terms.session_id, challengeId=s.terms.session_id,
                                                     receipt=mpp.sign_receipt(self.receipt_key, claims)))

    # the credential

    def credential_of(self, request: web.Request) -> mpp.Credential | None:
        values = [v for v in request.headers.getall("Authorization", ()) if v.lower().startswith("payment ")]
        return mpp.parse_credential(values[0]) if values else None

    def session_call(self, request: web.Request, credential: mpp.Credential) -> tuple[FakeSession | None, str | None, web.Response | None]:
        """Apply an open, voucher or topUp; return (session, action, refusal)."""
        payload = parse_session_payload(credential.payload)
        c = credential.challenge
        v = payload.voucher
        self.actions.append((payload.action, v.cumulative if v else None, payload.cap))
        if payload.action == "open":
            self.issuer.verify(c, now=now())
            assert c.opaque_json["resource"] == f"{request.method} {request.path_qs}"
            sreq = SessionRequest.from_challenge(c)
            terms = SessionTerms.of(c, sreq)
            verify_cap(payload.signer, terms, account=payload.account, cap=payload.cap, signature=payload.cap_signature)
            verify_voucher(payload.signer, terms, v)
            assert v.sequence == 1 and v.cumulative <= payload.cap
            if credential.extra_member("identity") is not None:
                vid = I.verify_identity(credential, sreq, payment_signer=payload.signer, trusted_principals=set(self.trusted),
                                        realm=REALM, now=now())
                self.identities.append(vid.chain)
            s = FakeSession(terms, sreq, payload.signer, payload.account, payload.cap, v.cumulative, 1)
            self.sessions[c.id] = s
            return s, "open", None
        expected = compute_challenge_id(SECRET, realm=c.realm, method=c.method, intent=c.intent, request=c.request,
                                        expires=c.expires, digest=c.digest, opaque=c.opaque)
        assert expected == c.id == payload.session_id and c.intent == "session"
        s = self.sessions.get(c.id)
        if s is None:
            return None, payload.action, self.problem(request, "session-unknown")
        if s.closed:
            return None, payload.action, self.problem(request, "session-closed")
        assert payload.signer == s.signer
        if payload.action == "topUp":
            verify_cap(s.signer, s.terms, account=s.account, cap=payload.cap, signature=payload.cap_signature)
            assert payload.cap >= s.cap
            s.cap = payload.cap
        if v is not None:
            if v.cumulative > s.cap:
                return s, payload.action, self.problem(request, "session-cap-exceeded", cap=str(s.cap))
            verify_voucher(s.signer, s.terms, v)
            if v.cumulative > s.highest:
                if v.sequence <= s.sequence:
                    return s, payload.action, self.problem(request, "session-voucher-invalid")
                s.highest, s.sequence = v.cumulative, v.sequence
                s.voucher_arrived.set()
        return s, payload.action, None

    # routes

    async def free(self, request: web.Request) -> web.Response:
        self.count(request)
        return web.json_response({"free": True})

    async def flat(self, request: web.Request) -> web.Response:
        credential = self.credential_of(request)
        self.count(request, credential.challenge.intent if credential else "-")
        if credential is None or credential.challenge.intent != "charge":
            return self.problem(request, "payment-required", session=False)
        self.issuer.verify(credential.challenge, now=now())
        creq = mpp.ChargeRequest.from_challenge(credential.challenge)
        auth = self.charge.verify(credential, creq)
        ref = "chg_" + credential.challenge.id[:10]
        claims = {"iss": REALM, "sub": auth.signer, "iat": int(now().timestamp()), "jti": secrets.token_urlsafe(8),
                  "challengeId": credential.challenge.id, "amount": creq.amount, "currency": creq.currency,
                  "recipient": creq.recipient, "reference": ref}
        receipt = mpp.format_receipt(mpp.PaymentReceipt(status="success", method="ledger", timestamp=mpp.format_rfc3339(now()),
                                                        reference=ref, challengeId=credential.challenge.id,
                                                        receipt=mpp.sign_receipt(self.receipt_key, claims)))
        return web.json_response({"flat": True}, headers={"Payment-Receipt": receipt})

    async def gen(self, request: web.Request) -> web.Response:
        credential = self.credential_of(request)
        if credential is None:
            self.count(request)
            return self.problem(request, "payment-required")
        if credential.challenge.intent == "charge":
            self.count(request, "charge")
            return await self.flat(request)
        s, action, refusal = self.session_call(request, credential)
        self.count(request, action or "-")
        if refusal is not None:
            return refusal
        assert s is not None
        if self.fail_5xx_once:
            self.fail_5xx_once = False
            return web.Response(status=503)
        need = self.cost(self.max_units)
        held = self.hold_back if self.hold_back_times > 0 else 0
        if s.highest - s.spent - s.reserved - held < need:
            self.hold_back_times = max(0, self.hold_back_times - 1)
            return self.problem(request, "session-insufficient", sessionId=s.terms.session_id,
                                required=str(s.spent + s.reserved + held + need), authorized=str(s.highest),
                                spent=str(s.spent), cap=str(s.cap))
        self.hold_back_times = max(0, self.hold_back_times - 1)
        s.reserved += need
        try:
            await asyncio.sleep(0)  # let concurrent requests interleave
            units = int(request.query.get("units", self.max_units))
            cost = self.cost(units)
            s.spent += cost
            s.lines.append(self.line(f"GET {request.path}", units, cost))
        finally:
            s.reserved -= need
        receipt = self.receipt(s, amount=cost, units=units, resource=f"GET {request.path_qs}")
        return web.json_response({"units": units}, headers={"Payment-Receipt": receipt})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        credential = self.credential_of(request)
        if credential is None:
            self.count(request)
            return self.problem(request, "payment-required")
        s, action, refusal = self.session_call(request, credential)
        self.count(request, action or "-")
        if refusal is not None:
            return refusal
        assert s is not None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        units = int(request.query.get("units", "100"))
        total, sent = 0, 0
        for i in range(int(request.query.get("chunks", "5"))):
            cost = self.cost(sent + units) - self.cost(sent)
            while s.highest - s.spent < cost:
                s.voucher_arrived.clear()
                doc = {"sessionId": s.terms.session_id, "required": str(s.spent + cost), "authorized": str(s.highest),
                       "spent": str(s.spent), "cap": str(s.cap)}
                await resp.write(f"event: payment-required\ndata: {json.dumps(doc)}\n\n".encode())
                try:
                    await asyncio.wait_for(s.voucher_arrived.wait(), 5)
                except TimeoutError:
                    await resp.write(b"event: payment-timeout\ndata: {}\n\n")
                    return resp
            s.spent += cost
            total += cost
            sent += units
            await resp.write(f"data: chunk {i}\n\n".encode())
        s.lines.append(self.line("GET /stream", sent, total))
        receipt = self.receipt(s, amount=total, units=sent, resource=f"GET {request.path_qs}")
        await resp.write(f"event: payment-receipt\ndata: {json.dumps({'receipt': receipt})}\n\n".encode())
        return resp

    async def session_endpoint(self, request: web.Request) -> web.Response:
        credential = self.credential_of(request)
        assert credential is not None
        payload = parse_session_payload(credential.payload)
        self.count(request, payload.action)
        self.session_posts.append((request.headers.get("Content-Type"), await request.read()))
        if payload.action == "close":
            s = self.sessions.get(payload.session_id)
            if s is None:
                return self.problem(request, "session-unknown")
            verify_close(s.signer, s.terms, payload.close_signature)
            if payload.voucher is not None and payload.voucher.cumulative > s.highest:
                verify_voucher(s.signer, s.terms, payload.voucher)
                s.highest = payload.voucher.cumulative
            if s.final is None:
                s.closed = True
                s.final = self.receipt(s, amount=s.spent, units=sum(line["units"] for line in s.lines), resource="session", final=True)
            return web.json_response({"receipt": s.final}, headers={"Payment-Receipt": s.final})
        s, _, refusal = self.session_call(request, credential)
        if refusal is not None:
            return refusal
        assert s is not None
        return web.json_response({"authorized": str(s.highest), "spent": str(s.spent)})


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def seller():
    fake = await FakeSessionSeller().start()
    try:
        yield fake
    finally:
        assert fake.server is not None
        await fake.server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def buyer(http: aiohttp.ClientSession, *, key: mpp.SigningKey | None = None, sessions: SessionPolicy | None = None,
          events: list | None = None, identity: AgentIdentity | None = None, **policy: Any) -> PaymentClient:
    key = key or mpp.SigningKey.generate()
    on_event = (lambda kind, data: events.append((kind, data))) if events is not None else None
    return PaymentClient(http, [LedgerBuyerMethod(key=key, account="acct:buyer")], mpp.BuyerPolicy(max_amount=policy.pop("max_amount", 1000), **policy),
                         on_event=on_event, identity=identity, sessions=sessions)


def kinds(events: list, kind: str) -> list[dict]:
    return [d for k, d in events if k == kind]


# -- choosing and opening ----------------------------------------------------------------


async def test_accept_payment_lists_session_only_when_enabled(http):
    assert "ledger/session" not in buyer(http).accept_payment
    assert buyer(http, sessions=SessionPolicy(max_cap=100)).accept_payment == "ledger/session, ledger/charge"
    assert buyer(http, sessions=SessionPolicy(max_cap=100, prefer="charge")).accept_payment == "ledger/charge, ledger/session"


async def test_first_402_opens_a_session_and_later_requests_reuse_it(seller, http):
    """SESSION-BUY-01, SESSION-BUY-02, SESSION-BUY-03: Open on the 402 (open + voucher 1 on the
    retried request), then vouchers with no 402 first."""
    events: list = []
    client = buyer(http, sessions=SessionPolicy(max_cap=100), events=events)
    first = await client.request("GET", seller.url("/gen?units=500"))
    assert first.status == 200 and first.paid and first.session is not None
    assert first.claims["intent"] == "session" and first.claims["spent"] == "1"
    sid = first.session
    s = seller.sessions[sid]
    assert s.cap == 100  # min(max_cap, suggestedCap)
    assert seller.actions[0] == ("open", 4, 100)  # cumulative = maxCost (2) * ahead (2)
    for _ in range(4):
        r = await client.request("GET", seller.url("/gen"))
        assert r.status == 200 and r.session == sid
    await client.request("GET", seller.url("/other"))  # another route of the same seller: same session
    assert seller.counted[0] == "GET /gen -" and all(a != "-" for a in seller.counted[1:])
    assert len(seller.counted) == 1 + 6
    assert [a for a, *_ in seller.actions] == ["open"] + ["voucher"] * 5
    # vouchers stay `ahead` max-cost requests ahead of what the last receipt said was spent
    assert all(cum == spent_before + 2 * 2 for (_, cum, _), spent_before in zip(seller.actions[1:], [1, 3, 5, 7, 9]))
    assert len(kinds(events, "session-open")) == 1
    assert kinds(events, "session-open")[0]["cap"] == "100"
    assert [d["sequence"] for d in kinds(events, "voucher-signed")] == [1, 2, 3, 4, 5, 6]


async def test_hundred_calls_are_102_requests(seller, http):
    """SESSION-BUY-02, SESSION-BUY-06: Issue 5: 1 (402) + 100 + 1 (close) HTTP requests at the seller."""
    seller.suggested_cap = 10_000
    async with buyer(http, sessions=SessionPolicy(max_cap=10_000)) as client:
        for _ in range(100):
            r = await client.request("GET", seller.url("/gen"))
            assert r.status == 200 and r.paid
    assert len(seller.counted) == 102
    assert seller.counted[-1] == f"POST {SESSION_PATH} close"
    s = next(iter(seller.sessions.values()))
    assert s.closed and s.spent == 200 and s.highest >= 200


async def test_close_is_posted_with_an_empty_body_and_no_content_type(seller, http):
    """SESSION-CLOSE-07: the buyer's close goes to the session endpoint as POST with the credential
    in Authorization, an empty body and no Content-Type."""
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen?units=10"))
    await client.close_sessions()
    assert seller.counted[-1] == f"POST {SESSION_PATH} close"
    assert seller.session_posts == [(None, b"")]


async def test_final_receipt_charges_each_request_rounded_up_not_the_cost_of_all_units(seller, http):
    """SESSION-BUY-07, SESSION-RCPT-03: 4100 and 3700 units at 2 per 1000 cost 9 + 8 = 17, while
    cost(7800) = 16: the final receipt's amount is captured, the sum of the requests' amounts, and
    the buyer accepts it; each line stays within cost(units) and cost(units) + requests - 1."""
    seller.max_units, seller.suggested_cap = 5000, 100
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    for units in (4100, 3700):
        r = await client.request("GET", seller.url(f"/gen?units={units}"))
        assert r.claims["amount"] == str(cost_of(units, 2, 1000))
    [final] = await client.close_sessions()
    assert (final["amount"], final["captured"], final["units"], final["requests"]) == ("17", "17", 7800, 2)
    assert cost_of(7800, 2, 1000) == 16


async def test_request_receipt_whose_amount_is_not_the_cost_of_its_units_is_refused(seller, http):
    """SESSION-BUY-05: a per-request receipt charging more than cost(units) at its own unitPrice and per."""
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen?units=1000"))
    seller.lie_amount = 1
    with pytest.raises(mpp.ReceiptInvalid, match="not their cost"):
        await client.request("GET", seller.url("/gen?units=1000"))


def _set(**members: Any):
    def tamper(claims: dict[str, Any]) -> None:
        claims.update(members)
    return tamper


def _line_amount(amount: str):
    def tamper(claims: dict[str, Any]) -> None:
        claims["lines"][0]["amount"] = amount
    return tamper


@pytest.mark.parametrize("tamper, why", [
    (_set(released="0"), "released"),  # captured + released is not the cap
    (_set(amount="999"), "differ"),  # amount is captured
    (_set(units=1), "add up"),  # units is the sum of the lines'
    (_set(requests=9), "add up"),  # so is requests
    (_line_amount("1"), "outside"),  # below cost(units) of its line
    (_line_amount("9"), "outside"),  # above cost(units) + requests - 1
    (_set(final=False), "not final"),
], ids=["released", "amount", "units", "requests", "line-below", "line-above", "not-final"])
async def test_final_receipt_that_does_not_add_up_is_refused(seller, http, tamper, why):
    """SESSION-BUY-07: a final receipt whose captured, released, cap, units, requests or lines do not
    agree, or whose line charges outside what per-request rounding allows, is not verified."""
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen?units=1000"))
    seller.tamper_final = tamper
    with pytest.raises(mpp.ReceiptInvalid, match=why):
        await client.close_sessions()


async def test_final_receipt_spending_less_than_an_earlier_receipt_said_is_refused(seller, http):
    """SESSION-BUY-07: close waits for every request, so the final spent is at least the spent of
    every receipt the buyer verified before it."""
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen?units=1000"))
    await client.request("GET", seller.url("/gen?units=1000"))

    def undercount(claims: dict[str, Any]) -> None:
        claims.update(spent="2", captured="2", amount="2", released=str(int(claims["cap"]) - 2), units=1000, requests=1,
                      lines=claims["lines"][:1])
    seller.tamper_final = undercount
    with pytest.raises(mpp.ReceiptInvalid, match="earlier receipt"):
        await client.close_sessions()


async def test_close_sessions_returns_verified_final_receipts(seller, http):
    # SESSION-BUY-06
    events: list = []
    client = buyer(http, sessions=SessionPolicy(max_cap=100), events=events)
    for units in (1000, 250, 1):
        await client.request("GET", seller.url(f"/gen?units={units}"))
    finals = await client.close_sessions()
    assert len(finals) == 1
    final = finals[0]
    assert final["final"] is True and final["captured"] == final["spent"] == str(2 + 1 + 1)
    assert len(final["lines"]) == 3
    assert kinds(events, "session-close")[0]["captured"] == "4"
    assert client.open_sessions == []
    assert await client.close_sessions() == []  # nothing left to close
    # a request after close opens a new session
    await client.request("GET", seller.url("/gen"))
    assert len(seller.sessions) == 2


async def test_without_sessions_the_buyer_pays_by_charge(seller, http):
    # SESSION-REQ-05
    client = buyer(http)
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200 and r.paid and r.session is None
    assert r.quote is not None and r.quote.challenge.intent == "charge"
    assert seller.sessions == {} and "ledger/session" not in client.accept_payment


async def test_prefer_charge_pays_by_charge_when_both_are_offered(seller, http):
    client = buyer(http, sessions=SessionPolicy(max_cap=100, prefer="charge"))
    r = await client.request("GET", seller.url("/gen"))
    assert r.quote is not None and r.quote.challenge.intent == "charge" and seller.sessions == {}


async def test_session_refused_by_policy_falls_back_to_charge(seller, http):
    """SESSION-BUY-01: max_unit_price refuses the session quote; the charge beside it is paid instead."""
    client = buyer(http, sessions=SessionPolicy(max_cap=100, max_unit_price=1))
    r = await client.request("GET", seller.url("/gen"))
    assert r.quote is not None and r.quote.challenge.intent == "charge" and seller.sessions == {}


async def test_select_session_rules(seller, http):
    # SESSION-BUY-01
    async with http.get(seller.url("/gen")) as resp:
        challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"))
    methods = [LedgerBuyerMethod(key=mpp.SigningKey.generate(), account="acct:buyer")]
    policy = mpp.BuyerPolicy(max_amount=1000)
    offer, _ = select_session(challenges, methods, policy, SessionPolicy(max_cap=100), now())
    assert isinstance(offer, SessionOffer) and offer.request.max_request_cost == 2
    for sp, bp, rule in [
        (SessionPolicy(max_cap=100, max_unit_price=1), policy, "unit-price"),
        (SessionPolicy(max_cap=1), policy, "max-cap"),
        (SessionPolicy(max_cap=100), mpp.BuyerPolicy(max_amount=1), "max-amount"),
        (SessionPolicy(max_cap=100), mpp.BuyerPolicy(max_amount=100, currencies=frozenset({"eur"})), "currency"),
    ]:
        offer, reasons = select_session(challenges, methods, bp, sp, now())
        assert offer is None and rule in reasons[0]
        with pytest.raises(mpp.QuoteRejected) as info:
            select_session(challenges[:1], methods, bp, sp, now())
        assert info.value.rule == rule


# -- keeping vouchers ahead, insufficient, top-up ------------------------------------------


async def test_insufficient_signs_a_higher_voucher_and_retries_once(seller, http):
    # SESSION-BUY-04
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    seller.hold_back, seller.hold_back_times = 10, 1  # someone else's request holds 10 of the authorized value
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200 and r.paid
    assert seller.counted[-2:] == ["GET /gen voucher", "GET /gen voucher"]
    # the retry's voucher covers `required` (2 spent + 10 held + 2) and one more max-cost request ahead
    assert seller.actions[-1][1] == 2 + 10 + 2 + 2
    assert len(seller.counted) == 4


async def test_insufficient_twice_is_a_payment_failure(seller, http):
    # SESSION-BUY-04
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    seller.hold_back, seller.hold_back_times = 10_000, 5
    with pytest.raises(mpp.PaymentFailed) as info:
        await client.request("GET", seller.url("/gen"))
    assert info.value.problem["type"] == PROBLEM + "session-insufficient"
    assert len(seller.counted) == 3  # 402, open, voucher: the insufficient retry needs more than the cap may hold


async def test_top_up_when_the_cap_is_reached(seller, http):
    """SESSION-BUY-03, SESSION-BUY-04: Cap 10 (suggested), policy up to 30: the voucher outgrows the
    cap, a topUp raises it on a request that is served all the same; no extra HTTP request."""
    seller.suggested_cap = 10
    events: list = []
    client = buyer(http, sessions=SessionPolicy(max_cap=30), events=events)
    for _ in range(12):
        r = await client.request("GET", seller.url("/gen"))
        assert r.status == 200
    s = next(iter(seller.sessions.values()))
    topups = [a for a in seller.actions if a[0] == "topUp"]
    assert topups and topups[0][2] == 20 and s.cap == 30  # grows by the opening cap, up to max_cap
    assert len(seller.counted) == 1 + 12
    assert s.spent == 24 and s.highest <= 30
    assert any(d.get("action") == "topUp" for d in kinds(events, "voucher-signed"))
    finals = await client.close_sessions()
    assert finals[0]["captured"] == "24"


async def test_cap_reached_without_top_up_closes_and_opens_another(seller, http):
    # SESSION-BUY-03
    seller.suggested_cap = 10
    client = buyer(http, sessions=SessionPolicy(max_cap=10, allow_top_up=False))
    for _ in range(8):
        r = await client.request("GET", seller.url("/gen"))
        assert r.status == 200 and r.paid
    assert len(seller.sessions) == 2
    first, second = seller.sessions.values()
    assert first.closed and first.spent == 10 and first.highest == 10  # used to the cap, then closed
    assert not second.closed and second.spent == 6
    assert f"POST {SESSION_PATH} close" in seller.counted
    assert len(seller.counted) == 8 + 2 + 1  # 8 served, two 402s, one close
    finals = await client.close_sessions()
    assert [f["captured"] for f in finals] == ["6"]


async def test_concurrent_requests_on_one_session(seller, http):
    # SESSION-BUY-03
    seller.suggested_cap = 10_000
    client = buyer(http, sessions=SessionPolicy(max_cap=10_000))
    await client.request("GET", seller.url("/gen"))
    results = await asyncio.gather(*(client.request("GET", seller.url("/gen")) for _ in range(20)))
    assert all(r.status == 200 and r.paid for r in results)
    s = next(iter(seller.sessions.values()))
    assert s.spent == 42
    retries = len(seller.counted) - 22
    assert retries <= 20  # at most one retry each
    sequences = [a for a in seller.actions if a[0] == "voucher"]
    assert sequences  # vouchers only went up (the fake seller refuses a lower sequence for a higher amount)
    finals = await client.close_sessions()
    assert finals[0]["captured"] == "42"


# -- the seller's session problems ----------------------------------------------------------


async def test_session_closed_by_the_seller_reopens_and_fetches_the_old_final_receipt(seller, http):
    events: list = []
    client = buyer(http, sessions=SessionPolicy(max_cap=100), events=events)
    await client.request("GET", seller.url("/gen"))
    old = next(iter(seller.sessions.values()))
    old.closed = True  # the seller's idle sweep closed it
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200 and r.paid and r.session != old.terms.session_id
    assert seller.counted[2:] == ["GET /gen voucher", f"POST {SESSION_PATH} close", "GET /gen open"]
    assert kinds(events, "session-close")[0]["sessionId"] == old.terms.session_id


async def test_session_unknown_is_forgotten_and_a_new_one_opened(seller, http):
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    seller.sessions.clear()  # the seller lost it
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200 and r.paid
    assert seller.counted[2:] == ["GET /gen voucher", "GET /gen open"]
    assert len(client.open_sessions) == 1


async def test_server_error_after_a_voucher_is_outcome_unknown_and_the_session_lives_on(seller, http):
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    seller.fail_5xx_once = True
    with pytest.raises(mpp.OutcomeUnknown) as info:
        await client.request("GET", seller.url("/gen"))
    sid = next(iter(seller.sessions))
    assert info.value.challenge_id == sid
    assert len(seller.counted) == 3  # sent once, not retried
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200 and r.session == sid


async def test_receipt_claiming_more_than_our_voucher_is_refused(seller, http):
    # SESSION-BUY-05
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    seller.lie_spent = 50
    with pytest.raises(mpp.ReceiptInvalid, match="spent"):
        await client.request("GET", seller.url("/gen"))


async def test_charge_only_route_on_a_session_seller_is_paid_by_charge(seller, http):
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    r = await client.request("GET", seller.url("/flat"))
    assert r.status == 200 and r.paid and r.quote is not None and r.quote.challenge.intent == "charge"
    free = await client.request("GET", seller.url("/free"))
    assert free.status == 200 and not free.paid
    assert len(client.open_sessions) == 1


# -- streams -------------------------------------------------------------------------------


async def test_stream_answers_payment_required_in_band_and_verifies_the_receipt(seller, http):
    """SESSION-STREAM-03, SESSION-BUY-04, SESSION-BUY-05: Each chunk costs 2; the open voucher
    covers 4: the seller asks in-band, the buyer POSTs higher vouchers to the session endpoint; the
    caller sees only the content events."""
    seller.suggested_cap = 1000
    client = buyer(http, sessions=SessionPolicy(max_cap=1000, ahead=1))
    async with client.stream("GET", seller.url("/stream?chunks=6&units=1000")) as events:
        got = [e async for e in events]
    assert [e.data for e in got] == [f"chunk {i}" for i in range(6)]
    assert all(e.event == "message" for e in got)
    assert events.claims is not None and events.claims["spent"] == "12" and events.claims["amount"] == "12"
    in_band = [c for c in seller.counted if c.startswith("POST")]
    assert in_band and all(c.endswith("voucher") for c in in_band)
    # the session serves ordinary requests afterwards, and closes with the stream counted
    r = await client.request("GET", seller.url("/gen"))
    assert r.status == 200
    finals = await client.close_sessions()
    assert finals[0]["captured"] == "14"


async def test_stream_on_an_open_session_needs_no_402(seller, http):
    # SESSION-BUY-02
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    await client.request("GET", seller.url("/gen"))
    async with client.stream("GET", seller.url("/stream?chunks=2&units=100")) as events:
        assert [e.data async for e in events] == ["chunk 0", "chunk 1"]
    assert seller.counted[2] == "GET /stream voucher"


async def test_stream_needing_more_than_the_policy_allows_stops_with_payment_failed(seller, http):
    # SESSION-BUY-03, SESSION-BUY-04
    seller.suggested_cap = 4
    client = buyer(http, sessions=SessionPolicy(max_cap=4, ahead=1, allow_top_up=False))
    got = []
    with pytest.raises(mpp.PaymentFailed, match="more than this session may hold"):
        async with client.stream("GET", seller.url("/stream?chunks=6&units=1000")) as events:
            async for e in events:
                got.append(e.data)
    assert got == ["chunk 0", "chunk 1"]  # 2 + 2 = the cap; nothing signed beyond it
    assert max(cum for _, cum, _ in seller.actions if cum is not None) == 4


async def test_receipt_claiming_more_authorized_than_our_cap_is_refused(seller, http):
    # SESSION-BUY-05
    client = buyer(http, sessions=SessionPolicy(max_cap=100))
    r = await client.request("GET", seller.url("/gen"))
    seller.sessions[r.session].highest = 500  # a seller that says it holds more than we ever signed
    with pytest.raises(mpp.ReceiptInvalid, match="authorized"):
        await client.request("GET", seller.url("/gen"))


# -- the agent's identity and budget ------------------------------------------------------


async def test_identity_reserves_the_cap_and_commits_exactly_the_capture(tmp_path, http):
    # SESSION-ID-01, SESSION-ID-02, SESSION-ID-03
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    fake = await FakeSessionSeller(trusted=(P.did,)).start()
    token = I.issue_mandate(P, subject=A.did, audience=[REALM], scope=["*"], currency="usd", ceiling=60, budget_amount=1000,
                            not_before=now() - timedelta(minutes=1), expires=now() + timedelta(days=1))
    store = BudgetStore(str(tmp_path / "budget.db"))
    link = f"{P.did}#{json.loads(mpp.b64url_decode(token.split('.')[1]))['jti']}"
    try:
        events: list = []
        client = buyer(http, key=A, sessions=SessionPolicy(max_cap=100), identity=AgentIdentity(A, [token], store), events=events)
        await client.request("GET", fake.url("/gen"))
        assert fake.identities and fake.identities[0].agent == A.did  # the open carried a verifiable identity member
        assert fake.sessions[next(iter(fake.sessions))].cap == 60  # kept within the mandate's ceiling
        assert store.used(link, "total", now()) == 60  # the cap is reserved
        assert kinds(events, "policy-decision")[0]["amount"] == "60"
        for _ in range(3):
            await client.request("GET", fake.url("/gen"))
        finals = await client.close_sessions()
        assert finals[0]["captured"] == "8"
        assert store.used(link, "total", now()) == 8  # exactly the capture; the rest released
    finally:
        store.close()
        assert fake.server is not None
        await fake.server.close()


async def test_identity_budget_too_small_for_one_request_refuses_before_signing(tmp_path, http):
    # SESSION-BUY-01, SESSION-ID-02
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    fake = await FakeSessionSeller(trusted=(P.did,)).start()
    token = I.issue_mandate(P, subject=A.did, audience=[REALM], currency="usd", ceiling=60, budget_amount=1,
                            not_before=now() - timedelta(minutes=1), expires=now() + timedelta(days=1))
    store = BudgetStore(str(tmp_path / "budget.db"))
    try:
        client = buyer(http, key=A, sessions=SessionPolicy(max_cap=100, prefer="session"), identity=AgentIdentity(A, [token], store))
        with pytest.raises(mpp.QuoteRejected):
            await client.request("GET", fake.url("/gen"))
        assert fake.sessions == {} and fake.actions == []
    finally:
        store.close()
        assert fake.server is not None
        await fake.server.close()


# -- the manager without HTTP ---------------------------------------------------------------


async def test_voucher_arithmetic():
    """SESSION-BUY-03: cumulative = min(cap, max(highest, spent + maxCost * ahead)); equal -> the
    same voucher again."""
    issuer = mpp.ChallengeIssuer(SECRET, REALM)
    challenge = issuer.issue(method="ledger", intent="session", now=now(), request={
        "amount": "3", "currency": "usd", "recipient": PAYEE, "unitType": "row",
        "methodDetails": {"ledger": LEDGER, "per": "1", "maxUnits": "10", "suggestedCap": "100", "idleTimeout": "60"}})
    offer = SessionOffer(challenge, SessionRequest.from_challenge(challenge),
                         LedgerBuyerMethod(key=mpp.SigningKey.generate(), account="acct:b"))
    m = SessionManager(SessionPolicy(max_cap=100, ahead=3, allow_top_up=False))
    s, payload = await m.begin(offer, url="http://127.0.0.1:1/x", cap=m.initial_cap(offer), cap_limit=100, now=now())
    assert (s.cap, payload.voucher.cumulative) == (100, 90)  # suggested cap; max cost 30 * ahead 3
    plan = await m.plan(s, now())
    assert plan.action == "voucher" and plan.voucher.sequence == 1  # 0 + 90 is not above 90: the same voucher
    m.done(s, plan, accepted=True)
    m.observe(s, {"spent": "20", "authorized": "90", "cap": "100"})
    plan = await m.plan(s, now())
    assert (plan.voucher.cumulative, plan.voucher.sequence) == (100, 2)  # 20 + 90 capped at 100
    m.done(s, plan, accepted=True)
    m.observe(s, {"spent": "75"})
    assert await m.plan(s, now()) is None  # 75 + 30 > cap and no top-up: used up
    assert isinstance(plan.voucher, Voucher)


# -- end to end, against the real seller (mpp.aio.Seller.meter) and the embedded ledger ------------

from mpp.aio import EmbeddedLedgerRail, Seller  # noqa: E402
from mpp.aio.metering import meter_of  # noqa: E402
from mpp.ledger import SqliteLedger  # noqa: E402
from mpp.stores.sessions import SqliteSessionStore  # noqa: E402
from mpp.stores.payments import SqlitePaymentStore  # noqa: E402

E2E_REALM = "e2e.test"
FUNDS = 100_000


@dataclass
class RealWorld:
    server: TestServer
    seller: Seller
    ledger: SqliteLedger
    hits: list[str]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in self.ledger.accounts()}


async def real_world(tmp_path, *, payer: str = "acct:buyer", agent: mpp.SigningKey | None = None, principal: str | None = None,
                     suggested_cap: int | None = None, idle_timeout: int = 300, trusted: tuple[str, ...] = ()) -> RealWorld:
    """Metered /gen (2 per 1000 tokens, at most 5000 a request: cost 10), a metered /stream, a
    charge-priced /flat, a free /free; ``hits`` counts every request but the JWKS."""
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account(PAYEE, "usd")
    ledger.create_account(payer, "usd")
    if principal is not None:
        ledger.keys.allow(payer, principal, "owner")
    if agent is not None:
        ledger.keys.allow(payer, agent.did, "owner")
    ledger.fund(payer, FUNDS)
    seller = Seller(realm=E2E_REALM, secret=b"e" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)], store=SqlitePaymentStore(str(tmp_path / "payments.db")),
                    session_store=SqliteSessionStore(str(tmp_path / "sessions.db")), session_sweep_interval=0.2,
                    trusted_principals=set(trusted))

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, suggested_cap=suggested_cap, idle_timeout=idle_timeout)
    async def gen(request: web.Request) -> web.Response:
        tokens = int(request.query.get("tokens", "1000"))
        meter_of(request).report(tokens)
        return web.json_response({"tokens": tokens})

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, stream=True, suggested_cap=suggested_cap, idle_timeout=idle_timeout)
    async def stream(request: web.Request) -> web.StreamResponse:
        meter = meter_of(request)
        await meter.start(request)
        for i in range(int(request.query.get("chunks", "5"))):
            await meter.send(f"chunk {i}", units=int(request.query.get("tokens", "1000")))
        return await meter.finish()

    @seller.price(5, "usd", "flat")
    async def flat(request: web.Request) -> web.Response:
        return web.json_response({"flat": True})

    async def free(request: web.Request) -> web.Response:
        return web.json_response({"free": True})

    hits: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler):
        if request.path != "/.well-known/jwks.json":
            hits.append(f"{request.method} {request.path}")
        return await handler(request)

    app = web.Application(middlewares=[count])
    for path, handler in (("/gen", gen), ("/gen2", gen), ("/stream", stream), ("/flat", flat), ("/free", free)):
        app.router.add_get(path, handler)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return RealWorld(server, seller, ledger, hits)


@pytest.fixture
async def world(tmp_path):
    w = await real_world(tmp_path)
    try:
        yield w
    finally:
        await w.server.close()
        w.ledger.close()


def e2e_buyer(http, key: mpp.SigningKey | None = None, *, account: str = "acct:buyer", **kwargs: Any) -> PaymentClient:
    key = key or mpp.SigningKey.generate()
    events = kwargs.pop("events", None)
    on_event = (lambda kind, data: events.append((kind, data))) if events is not None else None
    return PaymentClient(http, [LedgerBuyerMethod(key=key, account=account)], mpp.BuyerPolicy(max_amount=100),
                         on_event=on_event, **kwargs)


async def authorized_buyer(world: RealWorld, http, **kwargs: Any) -> PaymentClient:
    key = mpp.SigningKey.generate()
    world.ledger.keys.allow("acct:buyer", key.did, "owner")
    return e2e_buyer(http, key, **kwargs)


async def test_e2e_hundred_calls_are_102_requests_and_the_ledger_moves_exactly_the_use(world, http):
    """SESSION-BUY-02, SESSION-BUY-06: Issue 5: 100 paid calls = 1 (402) + 100 + 1 (close) HTTP
    requests; the ledger captures exactly what was used and releases the rest of the cap."""
    async with await authorized_buyer(world, http, sessions=SessionPolicy(max_cap=5000)) as client:
        for i in range(100):
            r = await client.request("GET", world.url(f"/gen?tokens={1000 + i}"))
            assert r.status == 200 and r.paid and r.claims["intent"] == "session"
        (session,) = client.open_sessions
        sid = session.id
    assert len(world.hits) == 102
    assert world.hits[0] == world.hits[1] == "GET /gen" and world.hits[-1] == f"POST {SESSION_PATH}"
    used = sum(cost_of(1000 + i, 2, 1000) for i in range(100))
    balances = world.balances()
    assert balances["acct:buyer"] == FUNDS - used and balances[PAYEE] == used
    assert world.ledger.total() == 0 and world.ledger.check() == []
    assert (await world.seller.session_store.get(sid)).status == "closed"


async def test_e2e_reuse_across_routes_and_close_returns_the_final_receipt(world, http):
    # SESSION-BUY-02, SESSION-BUY-06, SESSION-RCPT-03
    events: list = []
    client = await authorized_buyer(world, http, sessions=SessionPolicy(max_cap=1000), events=events)
    a = await client.request("GET", world.url("/gen?tokens=5000"))
    b = await client.request("GET", world.url("/gen2?tokens=2500"))
    assert a.session == b.session and world.hits == ["GET /gen", "GET /gen", "GET /gen2"]
    finals = await client.close_sessions()
    (final,) = finals
    assert final["final"] is True and final["captured"] == final["spent"] == "15"
    assert final["released"] == str(1000 - 15)
    assert {line["resource"] for line in final["lines"]} == {"GET /gen", "GET /gen2"}
    assert [d["captured"] for d in kinds(events, "session-close")] == ["15"]
    assert world.balances()["acct:buyer"] == FUNDS - 15 and world.ledger.check() == []
    assert await client.close_sessions() == []


async def test_e2e_insufficient_sends_a_higher_voucher_and_retries_once(world, http):
    """SESSION-BUY-04, SESSION-USE-03: The buyer's view of spent is stale (a lost receipt, say): its
    voucher does not cover the reservation; the seller's session-insufficient names what is
    required; one retry serves it."""
    client = await authorized_buyer(world, http, sessions=SessionPolicy(max_cap=1000, ahead=1))
    for _ in range(3):
        await client.request("GET", world.url("/gen?tokens=5000"))
    (session,) = client.open_sessions
    assert session.spent == 30 and session.voucher.cumulative == 30
    session.spent = 0  # as if the last receipts never arrived
    before = len(world.hits)
    r = await client.request("GET", world.url("/gen?tokens=5000"))
    assert r.status == 200 and r.paid
    assert len(world.hits) == before + 2  # the refused try and its one retry
    assert session.voucher.cumulative == 40 and session.spent == 40


async def test_e2e_top_up_when_the_cap_is_reached(tmp_path, http):
    # SESSION-VOUCHER-08, SESSION-BUY-03
    w = await real_world(tmp_path, suggested_cap=30)
    try:
        events: list = []
        w.ledger.keys.allow("acct:buyer", (key := mpp.SigningKey.generate()).did, "owner")
        async with e2e_buyer(http, key, sessions=SessionPolicy(max_cap=100), events=events) as client:
            for _ in range(8):
                r = await client.request("GET", w.url("/gen?tokens=5000"))
                assert r.status == 200
            (session,) = client.open_sessions
            assert session.cap > 30 and session.confirmed_cap == session.cap
            sid = session.id
        assert len(w.hits) == 1 + 8 + 1  # top-ups rode on served requests
        assert any(d.get("action") == "topUp" for d in kinds(events, "voucher-signed"))
        hold = w.ledger.sessions.get(sid)
        assert hold is not None and hold.cap == session.cap
        assert w.balances()["acct:buyer"] == FUNDS - 80 and w.ledger.check() == []
    finally:
        await w.server.close()
        w.ledger.close()


async def test_e2e_cap_reached_without_top_up_opens_a_new_session(tmp_path, http):
    # SESSION-BUY-03
    w = await real_world(tmp_path, suggested_cap=30)
    try:
        w.ledger.keys.allow("acct:buyer", (key := mpp.SigningKey.generate()).did, "owner")
        async with e2e_buyer(http, key, sessions=SessionPolicy(max_cap=30, allow_top_up=False)) as client:
            for _ in range(5):
                assert (await client.request("GET", w.url("/gen?tokens=5000"))).status == 200
        # 3 requests fill a cap of 30; the 4th closes it and opens another on a fresh 402
        assert w.hits.count(f"POST {SESSION_PATH}") == 2 and w.hits.count("GET /gen") == 5 + 2
        assert w.balances()["acct:buyer"] == FUNDS - 50 and w.ledger.check() == []
    finally:
        await w.server.close()
        w.ledger.close()


async def test_e2e_stream_with_in_band_vouchers(world, http):
    # SESSION-STREAM-03, SESSION-BUY-02
    client = await authorized_buyer(world, http, sessions=SessionPolicy(max_cap=1000, ahead=1))
    async with client.stream("GET", world.url("/stream?chunks=8&tokens=5000")) as events:
        chunks = [e.data async for e in events]
    assert chunks == [f"chunk {i}" for i in range(8)]
    assert events.claims is not None and events.claims["amount"] == "80" and events.claims["spent"] == "80"
    assert world.hits.count(f"POST {SESSION_PATH}") >= 1  # the in-band vouchers
    r = await client.request("GET", world.url("/gen?tokens=1000"))  # same session, no 402
    assert r.session == events.response.session
    (final,) = await client.close_sessions()
    assert final["captured"] == "82"


async def test_e2e_buyer_without_sessions_pays_by_charge(world, http):
    # SESSION-REQ-05
    client = await authorized_buyer(world, http)
    r = await client.request("GET", world.url("/gen?tokens=1000"))
    assert r.status == 200 and r.paid and r.quote is not None and r.quote.challenge.intent == "charge"
    assert r.session is None and world.hits == ["GET /gen", "GET /gen"]
    assert world.balances()["acct:buyer"] == FUNDS - 10  # the charge covers max_units


async def test_e2e_charge_route_and_free_route_beside_an_open_session(world, http):
    client = await authorized_buyer(world, http, sessions=SessionPolicy(max_cap=1000))
    await client.request("GET", world.url("/gen"))
    flat = await client.request("GET", world.url("/flat"))
    assert flat.status == 200 and flat.paid and flat.quote.challenge.intent == "charge"
    free = await client.request("GET", world.url("/free"))
    assert free.status == 200 and not free.paid
    assert len(client.open_sessions) == 1
    (final,) = await client.close_sessions()
    assert final["captured"] == "2"


async def test_e2e_seller_idle_close_then_a_new_session(tmp_path, http):
    # SESSION-CLOSE-03, SESSION-CLOSE-02
    w = await real_world(tmp_path, idle_timeout=1)
    try:
        events: list = []
        w.ledger.keys.allow("acct:buyer", (key := mpp.SigningKey.generate()).did, "owner")
        client = e2e_buyer(http, key, sessions=SessionPolicy(max_cap=100), events=events)
        first = await client.request("GET", w.url("/gen"))
        for _ in range(40):
            await asyncio.sleep(0.1)
            if (await w.seller.session_store.get(first.session)).status == "closed":
                break
        second = await client.request("GET", w.url("/gen"))
        assert second.status == 200 and second.session != first.session
        assert kinds(events, "session-close")[0]["sessionId"] == first.session  # its final receipt was fetched
        await client.close_sessions()
        assert w.balances()["acct:buyer"] == FUNDS - 4 and w.ledger.check() == []
    finally:
        await w.server.close()
        w.ledger.close()


async def test_e2e_identity_reserves_the_cap_and_commits_exactly_the_capture(tmp_path, http):
    # SESSION-ID-01, SESSION-ID-02, SESSION-ID-03, SESSION-ID-05
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    w = await real_world(tmp_path, payer="acct:principal", principal=P.did, trusted=(P.did,))
    token = I.issue_mandate(P, subject=A.did, audience=[E2E_REALM], scope=["GET /gen*"], currency="usd", ceiling=200,
                            budget_amount=1000, not_before=now() - timedelta(minutes=1), expires=now() + timedelta(days=1))
    link = f"{P.did}#{json.loads(mpp.b64url_decode(token.split('.')[1]))['jti']}"
    store = BudgetStore(str(tmp_path / "budget.db"))
    try:
        async with e2e_buyer(http, A, account="acct:principal", sessions=SessionPolicy(max_cap=500),
                             identity=AgentIdentity(A, [token], store)) as client:
            r = await client.request("GET", w.url("/gen?tokens=5000"))
            assert r.claims["agent"] == A.did and r.claims["principal"] == P.did
            (session,) = client.open_sessions
            assert session.cap == 200  # the mandate's ceiling
            assert store.used(link, "total", now()) == 200
            assert w.ledger.keys.mandate_spent(link, "total") == 200  # the ledger counts the held cap too
            await client.request("GET", w.url("/gen2?tokens=1000"))
        assert store.used(link, "total", now()) == 12
        assert w.ledger.keys.mandate_spent(link, "total") == 12
        assert w.ledger.check() == []
    finally:
        store.close()
        await w.server.close()
        w.ledger.close()


def test_budget_store_session_reservations(tmp_path):
    """SESSION-ID-02, SESSION-ID-03: Re-reserving under one id replaces it (a top-up); settle
    commits exactly the capture."""
    from mpp.stores.budget import BudgetLink, BudgetRefused

    store = BudgetStore(str(tmp_path / "b.db"))
    try:
        link = [BudgetLink("p#m", "total", 100)]
        t = now()
        store.reserve("sess", link, 60, now=t, ttl=timedelta(hours=1))
        store.reserve("sess", link, 90, now=t)  # top-up: 90 in all, not 150
        assert store.used("p#m", "total", t) == 90
        with pytest.raises(BudgetRefused):
            store.reserve("other", link, 20, now=t)
        store.extend("sess", ttl=timedelta(hours=2), now=t)
        assert store.used("p#m", "total", t + timedelta(minutes=90)) == 90  # still held
        store.settle("sess", 7)
        assert store.used("p#m", "total", t + timedelta(days=1)) == 7  # committed for good, the rest released
    finally:
        store.close()
