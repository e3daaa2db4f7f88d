"""The buyer's errors by cause (issue 17, findings 7, 8, 9, 10 and the session hint of 12).

Each cause is raised through :class:`PaymentClient` against a real aiohttp seller on loopback:
an adversarial one of a few lines where a misbehaviour is needed, the identity test seller
(tests/_identity_support.py) where mandates, approvals and budgets are.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import aiohttp
from hypothesis import example, given, strategies as st
import pytest
from aiohttp import web

import mpp
from mpp.protocol.errors import clip
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, PaymentClient, Seller, SessionPolicy
from mpp.purchase.agent import AgentIdentity
from mpp.aio.metering import meter_of
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.protocol.models import format_rfc3339
from mpp.stores.budget import BudgetStore
from mpp.stores.payments import SqlitePaymentStore
from mpp.stores.sessions import SqliteSessionStore

from _identity_support import (FUNDS, PAYEE, PAYER, POLICY, REALM, World, claims_of, mandate, new_ledger, now, seller_app,
                               server_for)
from test_buyer import Recorder, answer_402, challenge_for, client, serve

IDENT = mpp.EXTENSION_PROBLEM_BASE


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def world(tmp_path):
    P = mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    server = server_for(seller_app(ledger, str(tmp_path / "store.db"), [P.did]))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield World(ledger, server, http, P=P)
    finally:
        await server.close()
        ledger.close()


def agent_client(world: World, chain: list[str], **identity) -> PaymentClient:
    return PaymentClient(world.session, [LedgerBuyerMethod(key=world.A, account=PAYER)], POLICY,
                         identity=AgentIdentity(world.A, chain, **identity))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- finding 10: one hierarchy, caught by cause ------------------------------------------------

async def test_a_seller_that_is_down_raises_seller_unreachable(session):
    """Issue 17, finding 10: a seller that is down raises SellerUnreachable (a BuyerError saying
    nothing was sent), not aiohttp.ClientConnectorError."""
    url = f"http://127.0.0.1:{_free_port()}/thing"
    with pytest.raises(mpp.BuyerError) as caught:
        await client(session).request("GET", url)
    assert type(caught.value) is mpp.SellerUnreachable
    assert not isinstance(caught.value, aiohttp.ClientError)
    assert caught.value.url == url and "nothing was sent or paid" in str(caught.value)


async def test_a_policy_refusal_is_caught_as_policy_refused_before_anything_is_signed(session):
    """Issue 17, finding 10: QuoteRejected and NoPayableChallenge are both PolicyRefused (nothing signed)."""
    rec = Recorder()

    async def handler(request):
        rec.saw(request)
        return answer_402(challenge_for(request, amount=5000, currency="eur"))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.PolicyRefused) as caught:
            await client(session, max_amount=100).request("GET", str(server.make_url("/thing")))
        assert isinstance(caught.value, mpp.QuoteRejected) and caught.value.rule == "max-amount"
        with pytest.raises(mpp.PolicyRefused) as caught:
            buyer = PaymentClient(session, [], mpp.BuyerPolicy(max_amount=10**6))  # no method can pay
            await buyer.request("GET", str(server.make_url("/thing")))
        assert isinstance(caught.value, mpp.NoPayableChallenge)
        assert rec.credentials == []
    finally:
        await server.close()


async def test_a_seller_refusal_carries_its_problem_and_type(session):
    """Issue 17, finding 10: a refused credential is SellerRefused (still PaymentFailed) with the
    problem document, its type's slug, and the seller's title and detail in the message."""

    async def handler(request):
        if Recorder().saw(request):
            return web.json_response({"type": mpp.PROBLEM_BASE + "verification-failed", "title": "Payment Verification Failed",
                                      "status": 402, "detail": "payer account acct:buyer does not exist"}, status=402)
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.SellerRefused) as caught:
            await client(session).request("GET", str(server.make_url("/thing")))
        exc = caught.value
        assert isinstance(exc, mpp.PaymentFailed) and not isinstance(exc, mpp.ApprovalNeeded)
        assert exc.status == 402 and exc.problem_type == "verification-failed"
        assert "payer account acct:buyer does not exist" in str(exc)
    finally:
        await server.close()


async def test_a_receipt_that_does_not_verify_is_receipt_invalid(session):
    """Issue 17, finding 10: paid, no receipt: ReceiptInvalid, a BuyerError distinct from the others."""

    async def handler(request):
        if Recorder().saw(request):
            return web.json_response({"ok": True})
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.BuyerError) as caught:
            await client(session).request("GET", str(server.make_url("/thing")))
        assert type(caught.value) is mpp.ReceiptInvalid
    finally:
        await server.close()


def _draft_seller(receipt: dict) -> web.Application:
    """A seller that follows the draft alone: its 200 carries an unsigned receipt, no JWKS."""

    async def handler(request):
        if Recorder().saw(request):
            cid = mpp.parse_credential(request.headers["Authorization"]).challenge.id
            doc = {k: (cid if v == "CID" else v) for k, v in receipt.items()}
            return web.json_response({"ok": "paid"}, headers={"Payment-Receipt": mpp.b64url_encode(json.dumps(doc).encode())})
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    return app


DRAFT_RECEIPT = {"method": "ledger", "reference": "tx-1", "status": "success", "timestamp": "2031-01-01T00:00:00Z"}


async def test_an_unsigned_draft_receipt_is_refused_by_default_and_the_paid_response_kept(session):
    """CORE-BUY-04, CORE-BUY-12: a draft seller's receipt without our JWS is ReceiptInvalid unless the
    policy takes unsigned receipts; the exception carries what the seller sent, which was paid for."""
    server = await serve(_draft_seller(DRAFT_RECEIPT))
    try:
        with pytest.raises(mpp.ReceiptInvalid) as caught:
            await client(session).request("GET", str(server.make_url("/thing")))
        kept = caught.value.response
        assert kept is not None and kept.status == 200 and json.loads(kept.body) == {"ok": "paid"}
        assert kept.quote is not None and kept.receipt is None
    finally:
        await server.close()


@pytest.mark.parametrize("receipt, taken", [
    (DRAFT_RECEIPT, True),
    ({**DRAFT_RECEIPT, "challengeId": "CID"}, True),
    ({**DRAFT_RECEIPT, "challengeId": "another"}, False),
    ({**DRAFT_RECEIPT, "method": "evm"}, False),
    ({**DRAFT_RECEIPT, "status": "pending"}, False),
])
async def test_an_unsigned_receipt_is_taken_only_when_allowed_and_then_checked(session, receipt: dict, taken: bool):
    """CORE-BUY-12: with accept_unsigned_receipts the receipt is checked for what it says (method,
    status, challengeId when present) and marked unsigned; one that contradicts the quote is still refused."""
    server = await serve(_draft_seller(receipt))
    try:
        buyer = client(session, accept_unsigned_receipts=True)
        if taken:
            paid = await buyer.request("GET", str(server.make_url("/thing")))
            assert paid.paid and paid.claims == {"signed": False} and paid.receipt.reference == "tx-1"
        else:
            with pytest.raises(mpp.ReceiptInvalid):
                await buyer.request("GET", str(server.make_url("/thing")))
    finally:
        await server.close()


# -- finding 9: outcome unknown says what the seller said and how to check ---------------------

async def test_a_5xx_problem_after_the_credential_is_outcome_unknown_with_the_sellers_problem(session):
    """Issue 17, finding 9 (CORE-BUY-05): a 503 ledger-unavailable after the credential went out is
    OutcomeUnknown carrying the status, the problem document (its title and detail also in the
    message), the challenge id, and how to check before paying again."""
    problem = {"type": IDENT + "ledger-unavailable", "title": "Ledger Unavailable", "status": 503,
               "detail": "the ledger did not answer within 5 s; the transfer may have been booked"}

    async def handler(request):
        if Recorder().saw(request):
            return web.json_response(problem, status=503, content_type="application/problem+json")
        return answer_402(challenge_for(request))

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        with pytest.raises(mpp.OutcomeUnknown) as caught:
            await client(session).request("GET", str(server.make_url("/thing")))
        exc = caught.value
        assert exc.status == 503 and exc.problem == problem
        assert "Ledger Unavailable" in str(exc) and "may have been booked" in str(exc)
        assert exc.challenge_id and exc.challenge_id in exc.how_to_check
        assert "mpp ledger balance" in exc.how_to_check
    finally:
        await server.close()


# -- approval required --------------------------------------------------------------------------

async def test_approval_required_without_an_approver_raises_approval_needed_with_what_to_approve(world):
    """Issue 17, finding 10: the seller's approval-required problem (IDENT-APR-01) becomes
    ApprovalNeeded, carrying the problem, the quote, amount, currency, resource and seller; an
    approval for that problem then lets the same client pay. Nothing moves before."""
    token = mandate(world.P, world.A)
    before = world.snapshot()
    with pytest.raises(mpp.ApprovalNeeded) as caught:
        await agent_client(world, [token]).request("GET", world.url("/pricey"))
    exc = caught.value
    assert isinstance(exc, mpp.PaymentFailed) and exc.status == 403 and exc.problem_type == "approval-required"
    assert (exc.amount, exc.currency, exc.resource) == ("300", "usd", "GET /pricey")
    assert exc.seller == world.url("/").rstrip("/") and exc.quote.challenge.id == exc.challenge_id
    assert exc.mandate and exc.rule
    assert "300 usd" in str(exc) and "GET /pricey" in str(exc)
    assert world.snapshot() == before

    def approver(problem: dict) -> str:
        return I.issue_approval(world.P, agent=world.A.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                mandate=problem["mandate"], now=now())

    paid = await agent_client(world, [token], approver=approver).request("GET", world.url("/pricey"))
    assert paid.status == 200 and paid.claims["approval"]


# -- finding 7: an expired or not yet valid mandate ---------------------------------------------

async def test_an_expired_mandate_names_the_mandate_its_expiry_and_the_fix(world):
    """Issue 17, finding 7 (IDENT-MDT-06): not pyjwt's "token has expired", but which mandate,
    when it expired (RFC 3339) and `mpp mandate issue`; nothing is signed."""
    ended = now() - timedelta(days=1)
    token = mandate(world.P, world.A, not_before=ended - timedelta(days=1), expires=ended)
    before = world.snapshot()
    with pytest.raises(mpp.QuoteRejected) as caught:
        await agent_client(world, [token]).request("GET", world.url("/thing"))
    detail = caught.value.detail
    assert caught.value.rule == "mandate"
    assert claims_of(token)["jti"] in detail and f"expired at {format_rfc3339(ended)}" in detail
    assert "mpp mandate issue" in detail and world.A.did in detail and "token has expired" not in detail
    assert world.snapshot() == before


async def test_a_mandate_not_yet_valid_names_when_it_starts(world):
    """Issue 17, finding 7 (IDENT-MDT-06): a mandate whose nbf is ahead says from when it is valid."""
    start = now() + timedelta(days=1)
    token = mandate(world.P, world.A, not_before=start, expires=start + timedelta(days=1))
    with pytest.raises(mpp.QuoteRejected) as caught:
        await agent_client(world, [token]).request("GET", world.url("/thing"))
    detail = caught.value.detail
    assert claims_of(token)["jti"] in detail and f"not valid before {format_rfc3339(start)}" in detail
    assert "token is not yet valid" not in detail


# -- finding 8: a mandate for another audience --------------------------------------------------

async def test_a_mandate_for_another_audience_names_the_rule_and_the_ways_out(world):
    """Issue 17, finding 8: on a route that does not ask for identity, a mandate whose audience is
    another seller still refuses before signing (IDENT-POP-09); the message names that rule, the
    audiences, this realm, and the ways out (`--audience REALM`, `--no-identity`)."""
    token = mandate(world.P, world.A, audience=["other.example"], scope=["GET /*"])
    before = world.snapshot()
    with pytest.raises(mpp.QuoteRejected) as caught:
        await agent_client(world, [token]).request("GET", world.url("/plain"))
    detail = caught.value.detail
    assert caught.value.rule == "mandate" and "does not cover this seller" in detail
    assert "IDENT-POP-09" in detail and "other.example" in detail and claims_of(token)["jti"] in detail
    assert f"--audience {REALM}" in detail and "--no-identity" in detail
    assert world.snapshot() == before


# -- budgets: BudgetExceeded, and what open sessions hold ---------------------------------------

async def test_a_budget_refusal_is_budget_exceeded_and_a_policy_refusal(world, tmp_path: Path):
    """Issue 17, finding 10 (IDENT-BUD-01): the agent's own counters refuse with BudgetExceeded,
    catchable as QuoteRejected("budget") and PolicyRefused, with mandate, period, budget, used,
    remaining and amount."""
    token = mandate(world.P, world.A, budget_amount=150, budget_period="total")
    store = BudgetStore(str(tmp_path / "budget.db"))
    try:
        buyer = agent_client(world, [token], budget=store)
        assert (await buyer.request("GET", world.url("/thing"))).status == 200
        with pytest.raises(mpp.PolicyRefused) as caught:
            await buyer.request("GET", world.url("/thing"))
    finally:
        store.close()
    exc = caught.value
    assert isinstance(exc, mpp.BudgetExceeded) and isinstance(exc, mpp.QuoteRejected) and exc.rule == "budget"
    assert exc.mandate.endswith("#" + claims_of(token)["jti"]) and exc.period == "total"
    assert (exc.budget, exc.used, exc.remaining, exc.amount, exc.held_by_sessions) == (150, 100, 50, 100, 0)
    assert claims_of(token)["jti"] in exc.detail and "50 left" in exc.detail and "larger --budget" in exc.detail
    assert "next period" not in exc.detail  # a "total" budget has none


async def test_a_2xx_whose_receipt_does_not_verify_still_counts_against_the_budget(session, tmp_path: Path):
    """IDENT-BUD-03: a seller that answered 2xx says it was paid, so a receipt that does not verify
    commits the reservation (the money probably moved) rather than releasing it."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    token = mandate(P, A, audience=["adversary.test"], budget_amount=1000)
    server = await serve(_draft_seller(DRAFT_RECEIPT))
    store = BudgetStore(str(tmp_path / "budget.db"))
    try:
        buyer = PaymentClient(session, [LedgerBuyerMethod(key=A, account=PAYER)], POLICY,
                              identity=AgentIdentity(A, [token], store))
        with pytest.raises(mpp.ReceiptInvalid):
            await buyer.request("GET", str(server.make_url("/thing")))
        link = f"{P.did}#{claims_of(token)['jti']}"
        assert store.used(link, "total", now()) == 100
    finally:
        store.close()
        await server.close()


def _metered_seller(tmp_path: Path, name: str, ledger, principal: str) -> web.Application:
    """An identity seller with a metered route /complete (a session) and a 300 charge at /thing."""
    seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)],
                    store=SqlitePaymentStore(str(tmp_path / f"{name}-p.db")), trusted_principals={principal},
                    session_store=SqliteSessionStore(str(tmp_path / f"{name}-s.db")))

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, require_identity=True)  # a request costs at most 10
    async def complete(request: web.Request) -> web.Response:
        meter_of(request).report(1000)
        return web.json_response({"ok": True})

    @seller.price(300, "usd", "/thing", require_identity=True)
    async def thing(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/complete", complete)
    app.router.add_get("/thing", thing)
    seller.setup(app)
    return app


async def test_a_budget_refusal_says_what_open_sessions_hold_and_how_to_free_it(tmp_path: Path):
    """Issue 17, finding 12 (open session caps eat the mandate budget): when the client's open
    sessions hold part of the refused budget, BudgetExceeded says how much and that closing them
    frees it; after close_sessions() the same purchase goes through."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    first = await serve(_metered_seller(tmp_path, "first", ledger, P.did))
    second = await serve(_metered_seller(tmp_path, "second", ledger, P.did))
    store = BudgetStore(str(tmp_path / "budget.db"))
    token = mandate(P, A, scope=["GET /complete", "GET /thing"], budget_amount=1000, ceiling=800, approval_threshold=800)
    try:
        async with aiohttp.ClientSession() as http:
            buyer = PaymentClient(http, [LedgerBuyerMethod(key=A, account=PAYER)], POLICY,
                                  identity=AgentIdentity(A, [token], store), sessions=SessionPolicy(max_cap=800))
            assert (await buyer.request("GET", str(first.make_url("/complete")))).status == 200
            (open_session,) = buyer.open_sessions
            assert open_session.cap > 700  # the cap is reserved whole: 300 more does not fit in 1000
            with pytest.raises(mpp.BudgetExceeded) as caught:
                await buyer.request("GET", str(second.make_url("/thing")))
            exc = caught.value
            assert (exc.held_by_sessions, exc.open_sessions) == (open_session.cap - open_session.spent, 1)
            assert f"{exc.held_by_sessions} of it is held by 1 open session(s)" in exc.detail
            assert "close_sessions()" in exc.detail
            await buyer.close_sessions()
            assert (await buyer.request("GET", str(second.make_url("/thing")))).status == 200
    finally:
        store.close()
        await first.close()
        await second.close()
        ledger.close()


# -- `mpp fetch`: the same causes as messages and exit codes ------------------------------------

async def _mpp_fetch(*args: str) -> tuple[int, str]:
    """Run `mpp fetch` in a subprocess without blocking this loop (the seller runs on it)."""
    import asyncio
    import sys

    from conftest import REPO

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mpp.cli.main", "fetch", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, stderr.decode()


@pytest.fixture
def wallet(tmp_path: Path) -> Path:
    import subprocess
    import sys

    from conftest import REPO

    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "mpp.cli.main", "init", str(home)], check=True, capture_output=True, cwd=REPO)
    return home / "agent"


async def test_mpp_fetch_reports_an_unknown_outcome_with_the_sellers_problem_and_how_to_check(wallet: Path):
    """Issue 17, finding 9: after a 503 ledger-unavailable, `mpp fetch` exits 5 and prints the seller's
    title and detail, the challenge id, the command to check (with the wallet's account) and the
    problem document; no traceback."""
    problem = {"type": IDENT + "ledger-unavailable", "title": "Ledger Unavailable", "status": 503,
               "detail": "the ledger did not answer within 5 s"}
    seen: list[str] = []

    async def handler(request):
        if Recorder().saw(request):
            return web.json_response(problem, status=503, content_type="application/problem+json")
        challenge = challenge_for(request, amount=10)
        seen.append(challenge.id)
        return answer_402(challenge)

    app = web.Application()
    app.router.add_get("/thing", handler)
    server = await serve(app)
    try:
        code, stderr = await _mpp_fetch("--wallet", str(wallet), "--no-identity", str(server.make_url("/thing")))
    finally:
        await server.close()
    assert code == 5, stderr
    assert "Traceback" not in stderr
    first = stderr.splitlines()[0]
    assert first.startswith("mpp: ") and "Ledger Unavailable" in first and "did not answer within 5 s" in first
    assert seen[-1] in first and "mpp ledger balance acct:buyer" in first
    assert '"ledger-unavailable"' in stderr or IDENT + "ledger-unavailable" in stderr


async def test_mpp_fetch_of_a_seller_that_is_down_is_one_line_and_exit_1(wallet: Path):
    """Issue 17, finding 10: a seller that is down is one `mpp:` line saying nothing was paid, exit 1."""
    code, stderr = await _mpp_fetch("--wallet", str(wallet), f"http://127.0.0.1:{_free_port()}/thing")
    assert code == 1 and "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("mpp: request failed: could not reach") and "nothing was sent or paid" in line


# -- the seller's words in our messages: whatever it sends ---------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_PROBLEM = st.dictionaries(st.sampled_from(["type", "title", "detail", "status", "rule", "challengeId", "amount", "x"]),
                           _JSON | st.text(alphabet=st.characters(), min_size=0, max_size=2000), max_size=8)


@given(problem=_PROBLEM, status=st.sampled_from([400, 402, 403, 409, 500, 503]))
@example(problem={"type": "urn:mpp:problem:approval-required", "rule": {"x": [1]}, "amount": None, "detail": "a\nb\u202e"},
         status=403)
def test_any_problem_document_makes_a_bounded_one_line_message(problem, status):
    """Issue 17, findings 9 and 10 (CORE-ERR-12): the seller's problem document is untrusted input;
    whatever it holds, the refusal or unknown-outcome message we build from it is one line of
    bounded length, the exception keeps the document, and problem_type is a string."""
    from mpp.purchase.wire import problem_words
    from mpp.purchase.charges import seller_refusal
    from mpp.buyer.core import Quote
    from mpp.protocol.models import ChargeRequest

    issuer = mpp.ChallengeIssuer(b"k" * 32, "adversary.test")
    challenge = issuer.issue(method="ledger", intent="charge", now=now(),
                             request={"amount": "10", "currency": "usd", "recipient": "acct:seller"})
    quote = Quote(challenge, ChargeRequest.from_challenge(challenge), LedgerBuyerMethod(key=KEY, account="acct:buyer"))
    said = problem_words(problem)
    assert _one_line(said) and len(said) <= 2 * 512 + 2
    exc = seller_refusal("GET", "http://127.0.0.1:1/x?y=1", quote, status, problem)
    assert isinstance(exc, mpp.SellerRefused) and exc.problem == problem and isinstance(exc.problem_type, str)
    if isinstance(exc, mpp.ApprovalNeeded):  # what an approver is shown is what we would sign
        assert (exc.amount, exc.currency, exc.challenge_id, exc.resource) == ("10", "usd", challenge.id, "GET /x?y=1")
    assert _one_line(str(exc)) and len(str(exc)) < 2000
    from mpp.purchase.session_runner import _refusal  # the session refusals' message (open, voucher, close)

    session_message = _refusal("session open", status, problem)
    assert _one_line(session_message) and len(session_message) < 2000
    detail = problem.get("detail")
    if isinstance(detail, str) and detail and not isinstance(exc, mpp.ApprovalNeeded):
        assert clip(detail, 512) in str(exc) and clip(detail, 512) in session_message
    unknown = mpp.OutcomeUnknown("seller answered 503" + (f": {said}" if said else ""), challenge.id, status=503, problem=problem)
    assert challenge.id in unknown.how_to_check


KEY = mpp.SigningKey.generate()


def _one_line(text: str) -> bool:
    """No control, format or separator character (what clip removes): no forged lines or reordering."""
    import unicodedata

    return all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in text)
