"""mpp.httpx: the buyer engine behind an httpx transport (async and sync, httpx and httpx2).

A real seller on loopback (the identity test seller: embedded ledger, routes that need a mandate);
the transports pay its 402s with the same buyer as mpp.aio.PaymentClient, so these tests check
what the transport adds: the request carried both ways, the buyer's errors raised out of the
httpx call, redirects followed by httpx without a credential going anywhere it must not.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import httpx2
import pytest
from aiohttp import web

import mpp
from mpp.httpx import AsyncPaymentTransport, PaymentTransport, payment_of
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.purchase.agent import AgentIdentity
from mpp.stores.budget import BudgetStore

from _identity_support import PAYER, PLAIN_PAYER, mandate, new_ledger, seller_app, server_for


@pytest.fixture
async def world(tmp_path):
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    server = server_for(seller_app(ledger, ledger.location, [principal.did]))
    await server.start_server()
    budget = BudgetStore(str(tmp_path / "budget.db"))
    try:
        yield {"ledger": ledger, "server": server, "P": principal, "A": agent, "budget": budget}
    finally:
        await server.close()
        budget.close()
        ledger.close()


def charges(ledger) -> list:
    return [t for t in ledger.transfers() if t.kind == "charge"]


def identity_for(world, **mandate_claims) -> AgentIdentity:
    token = mandate(world["P"], world["A"], **mandate_claims)
    return AgentIdentity(world["A"], [token], world["budget"])


def methods_for(world) -> list:
    return [LedgerBuyerMethod(key=world["A"], account=PAYER)]


async def test_async_transport_pays_with_identity_and_verifies_the_receipt(world):
    """CORE-BUY-04, IDENT-POP-01 through httpx: one purchase, attributed, its receipt verified."""
    transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000), identity=identity_for(world))
    async with httpx.AsyncClient(transport=transport) as http:
        r = await http.get(str(world["server"].make_url("/thing")))
    assert r.status_code == 200 and r.json() == {"ok": "/thing"}
    paid = payment_of(r)
    assert paid is not None and paid.paid
    assert paid.claims["agent"] == world["A"].did and paid.claims["principal"] == world["P"].did
    assert paid.receipt.challengeId == paid.quote.challenge.id
    assert [c.amount for c in charges(world["ledger"])] == [100]
    assert r.headers["Payment-Receipt"]  # the seller's header, as it sent it


async def test_over_budget_purchase_is_refused_before_signing(world):
    """IDENT-BUD-02: the third purchase would pass the mandate's budget: refused by our own counters,
    raised out of the httpx call, no credential sent (two charges only)."""
    transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000),
                                      identity=identity_for(world, budget_amount=250))
    signed: list[str] = []
    transport.buyer.on_event = lambda kind, data: signed.append(data["challengeId"]) if kind == "authorization-signed" else None
    async with httpx.AsyncClient(transport=transport) as http:
        url = str(world["server"].make_url("/thing"))
        for _ in range(2):
            assert (await http.get(url)).status_code == 200
        with pytest.raises(mpp.BudgetExceeded) as info:
            await http.get(url)
    assert (info.value.budget, info.value.used, info.value.amount) == (250, 200, 100)
    assert len(signed) == 2 and len(charges(world["ledger"])) == 2


async def test_policy_refusal_signs_nothing(world):
    """CORE-BUY-01 through httpx: a quote above max_amount is refused, nothing reaches the ledger."""
    transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=50), identity=identity_for(world))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(mpp.QuoteRejected) as info:
            await http.get(str(world["server"].make_url("/thing")))
    assert info.value.rule == "max-amount"
    assert charges(world["ledger"]) == []


async def test_unpriced_answer_passes_through_unpaid(world):
    transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000))
    async with httpx.AsyncClient(transport=transport) as http:
        r = await http.get(str(world["server"].make_url("/.well-known/jwks.json")))
    assert r.status_code == 200 and "keys" in r.json()
    assert not payment_of(r).paid


async def test_cross_origin_redirect_then_402_is_not_paid(world):
    """CORE-BUY-02: httpx follows the redirect itself; the paying transport still knows the first
    URL (request extensions) and refuses a 402 from another origin; no credential goes out."""
    target = str(world["server"].make_url("/thing"))
    seen: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.extend(v for v in request.headers.getall("Authorization", ()))
        raise web.HTTPFound(target.replace("127.0.0.1", "localhost"))  # same host, another origin

    app = web.Application()
    app.router.add_get("/go", redirect)
    other = server_for(app)
    await other.start_server()
    try:
        transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000), identity=identity_for(world))
        async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
            with pytest.raises(mpp.QuoteRejected) as info:
                await http.get(str(other.make_url("/go")))
        assert info.value.rule == "origin"
        assert seen == [] and charges(world["ledger"]) == []
    finally:
        await other.close()


async def test_same_origin_redirect_then_402_is_paid(world):
    """A redirect within the origin is followed by httpx and the 402 at its end is paid once."""
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound("/plain")

    world["server"].app.router._frozen = False  # noqa: SLF001 - add a route to the running test app
    world["server"].app.router.add_get("/moved", handler)
    world["ledger"].keys.allow(PLAIN_PAYER, world["A"].did, "owner")
    transport = AsyncPaymentTransport([LedgerBuyerMethod(key=world["A"], account=PLAIN_PAYER)], mpp.BuyerPolicy(max_amount=1000))
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
        r = await http.get(str(world["server"].make_url("/moved")))
    assert r.status_code == 200 and r.json() == {"ok": "/plain"}
    assert [str(h.url).endswith("/moved") for h in r.history] == [True]
    assert payment_of(r).paid and len(charges(world["ledger"])) == 1


async def test_sync_transport_pays_from_a_plain_httpx_client(world):
    """The sync transport: httpx.Client, the same buyer on a loop of its own (budget counted too)."""
    url = str(world["server"].make_url("/thing"))
    identity = identity_for(world, budget_amount=150)

    def buy() -> tuple[int, str | None, str]:
        with PaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000), identity=identity) as transport:
            with httpx.Client(transport=transport) as http:
                r = http.get(url)
                try:
                    http.get(url)
                    refused = "no"
                except mpp.BudgetExceeded:
                    refused = "budget"
                return r.status_code, payment_of(r).claims.get("agent"), refused

    status, agent, refused = await asyncio.to_thread(buy)
    assert (status, agent, refused) == (200, world["A"].did, "budget")
    assert len(charges(world["ledger"])) == 1


async def test_httpx2_transport_is_wrapped_too(world):
    """httpx2 (the client pydantic-ai and openai-agents use): the transport is taken from its module."""
    transport = AsyncPaymentTransport(methods_for(world), mpp.BuyerPolicy(max_amount=1000), identity=identity_for(world),
                                      transport=httpx2.AsyncHTTPTransport())
    async with httpx2.AsyncClient(transport=transport) as http:
        r = await http.post(str(world["server"].make_url("/thing")), content=b"{}")
    assert r.status_code == 405  # the route is GET only: unpriced answer, nothing paid
    async with httpx2.AsyncClient(transport=transport) as http:
        r = await http.get(str(world["server"].make_url("/thing")))
    assert r.status_code == 200 and isinstance(r, httpx2.Response) and payment_of(r).paid


async def test_not_an_httpx_transport_is_refused():
    with pytest.raises(TypeError, match="not an httpx transport"):
        AsyncPaymentTransport([], mpp.BuyerPolicy(max_amount=1), transport=object())


async def test_sessions_are_reused_and_closed_through_httpx(tmp_path):
    """SESSION-* through httpx: the first 402 opens a session, later requests pay by voucher with no
    402 first, and closing the transport closes the session (final receipt verified, the rest of
    the cap released: the ledger holds exactly what was used)."""
    from mpp.purchase import SessionPolicy

    from _session_support import build_seller, make_ledger
    from _session_support import server_for as session_server

    agent = mpp.SigningKey.generate()
    ledger = make_ledger(tmp_path, agent)
    hits: list[str] = []
    _, app, _ = build_seller(tmp_path, ledger, hits=hits)
    server = session_server(app)
    await server.start_server()
    try:
        transport = AsyncPaymentTransport([LedgerBuyerMethod(key=agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=1000),
                                          sessions=SessionPolicy(max_cap=100))
        async with httpx.AsyncClient(transport=transport) as http:
            answers = [await http.get(str(server.make_url("/complete")), params={"tokens": "1000"}) for _ in range(3)]
            sessions = {payment_of(r).session for r in answers}
            assert [r.status_code for r in answers] == [200, 200, 200] and len(sessions) == 1 and None not in sessions
            assert [payment_of(r).claims["spent"] for r in answers] == ["2", "4", "6"]
            assert hits.count("GET /complete") == 4  # one 402, then each request once with its voucher
            assert transport.buyer.open_sessions
        await transport.aclose()
        assert transport.buyer.open_sessions == []
        balances = {a.id: a.balance for a in ledger.accounts()}
        assert balances["acct:seller"] == 6 and balances["acct:buyer"] == 10_000 - 6
    finally:
        await server.close()  # stops the seller, which closes its session store
        ledger.close()


async def test_server_error_after_the_credential_is_outcome_unknown_and_not_resent():
    """CORE-BUY-05, CORE-BUY-03 through httpx: a 5xx after paying is OutcomeUnknown, the
    credential went out once (httpx's own retries never resend it)."""
    credentials: list[str] = []
    issuer = mpp.ChallengeIssuer(b"k" * 32, "adversary.test")

    async def handler(request: web.Request) -> web.Response:
        sent = [v for v in request.headers.getall("Authorization", ()) if v.startswith("Payment ")]
        credentials.extend(sent)
        if sent:
            return web.Response(status=503, text="try later")
        challenge = issuer.issue(method="ledger", intent="charge", now=datetime.now(timezone.utc),
                                 request={"amount": "10", "currency": "usd", "recipient": "acct:seller",
                                          "methodDetails": {"ledger": "ledger-adversary"}})
        return web.json_response({"type": mpp.PROBLEM_BASE + "payment-required", "status": 402}, status=402,
                                 headers={"WWW-Authenticate": mpp.format_challenge(challenge)})

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = server_for(app)
    await server.start_server()
    try:
        transport = AsyncPaymentTransport([LedgerBuyerMethod(key=mpp.SigningKey.generate(), account="acct:buyer")],
                                          mpp.BuyerPolicy(max_amount=100), transport=httpx.AsyncHTTPTransport(retries=3))
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(mpp.OutcomeUnknown) as info:
                await http.get(str(server.make_url("/thing")))
        assert info.value.status == 503 and len(credentials) == 1
    finally:
        await server.close()
