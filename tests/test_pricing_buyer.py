"""The buyer's side of pricing models as data (spec/pricing.md §4 to §7), against a small
in-process seller written here.

The fake seller quotes from a real price list (mpp.pricing), with real challenges (HMAC ids,
request encoding, opaque binding) and one challenge per offer each carrying its ``pricing``
member; it checks the ledger authorization of every credential, signs receipts and grants with
its receipt key, and verifies the grants and proofs it is shown with mpp.pricing. It records what
the buyer signed and presented, which is what these tests look at.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp import pricing as P
from mpp.aio import PaymentClient
from mpp.purchase.agent import AgentIdentity
from mpp.purchase.sessions import SessionPolicy
from mpp.buyer.core import OfferPlan, check_seat_quote, choose_challenge
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, QuoteRejected, ReceiptInvalid
from mpp.protocol.headers import format_receipt, parse_credential
from mpp.methods.ledger import LedgerBuyerMethod, LedgerSellerMethod
from mpp.protocol.models import ChargeRequest, PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import jwks_document, sign_receipt

REALM = "pricing.test"
SECRET = b"p" * 32

PRICE_LIST = """
version = "2025-06-01.1"
currency = "usd"

[[routes]]
path = "/weather"

  [[routes.offers]]
  model = "transaction"
  amount = 25

  [[routes.offers]]
  model = "unit"
  unit = "call"
  amount = 3
  per = 1
  max_units = 10

  [[routes.offers]]
  model = "seat"
  plan = "weather-pro"
  amount = 300
  period_unit = "day"
  covers = ["GET /forecast"]

[[routes]]
path = "/forecast"

  [[routes.offers]]
  model = "transaction"
  amount = 40

[[routes]]
path = "/seat-only"

  [[routes.offers]]
  model = "seat"
  plan = "solo"
  amount = 100
  period_unit = "day"

[[routes]]
path = "/tokens"

  [[routes.offers]]
  model = "unit"
  unit = "token"
  amount = 5
  per = 2
  max_units = 4

[[routes]]
method = "POST"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result"]
  grant_ttl = 600
  refund = "full"
"""


def now() -> datetime:
    return datetime.now(timezone.utc)


def problem(slug: str, status: int, **members: Any) -> web.Response:
    return web.json_response({"type": EXTENSION_PROBLEM_BASE + slug, "title": slug, "status": status, **members},
                             status=status, headers={"Cache-Control": "no-store"})


class FakeSeller:
    """Quotes every offer of a price list, settles ledger credentials (in memory), issues task
    and seat grants and serves the requests they cover."""

    def __init__(self, realm: str = REALM) -> None:
        self.realm = realm
        self.prices = P.load_price_list(PRICE_LIST, source="prices.toml")
        self.issuer = mpp.ChallengeIssuer(SECRET, realm)
        self.method = LedgerSellerMethod(recipient="acct:seller", ledger_id="ledger-pricing")
        self.receipt_key = mpp.SigningKey.generate()
        self.seats = P.SeatRecords()
        self.paid: list[dict[str, Any]] = []  # one per settled purchase: model, offer, amount, challenge
        self.signed: list[tuple[str, str]] = []  # (intent, pricing model) of every credential received
        self.presented: list[tuple[str, str]] = []  # (resource, grant jti) of every grant shown
        self.served_by_grant: list[str] = []
        self.subscription_ids: list[str | None] = []  # Subscription-Id of every unpaid request
        self.accept_payment: list[str | None] = []
        self.refuse_grants: str | None = None  # a grant-* slug to answer every grant with
        self.proofs_seen: set[tuple[str, int, str]] = set()
        self.tasks = 0
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(jwks_document([self.receipt_key]))

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    # -- quoting --------------------------------------------------------------------------

    def challenge(self, offer: P.Offer, request: web.Request, at: datetime) -> mpp.Challenge:
        base = self.method.request_for(amount=offer.amount, currency=offer.currency, description=offer.description)
        if isinstance(offer, P.UnitOffer):
            intent, doc = "session", self.method.session_request_for(offer.to_metered())
            doc["pricing"] = offer.pricing_member(at)
        elif isinstance(offer, P.SeatOffer):
            intent, doc = "subscription", {**base, **offer.subscription_request(at)}
            named = request.headers.get(P.SUBSCRIPTION_ID_HEADER)
            if named:
                doc["subscriptionId"] = named
        else:
            intent, doc = "charge", {**base, "pricing": offer.pricing_member(at)}
        resource = mpp.engine.core.resource_of(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string)
        return self.issuer.issue(method="ledger", intent=intent, request=doc, now=at,
                                 opaque={"nonce": secrets.token_urlsafe(8), "resource": resource})

    def answer_402(self, route: P.Route, request: web.Request) -> web.Response:
        at = now()
        headers = [("WWW-Authenticate", mpp.format_challenge(self.challenge(o, request, at))) for o in route.offers]
        resp = web.json_response({"type": mpp.PROBLEM_BASE + "payment-required", "title": "Payment Required", "status": 402},
                                 status=402)
        for name, value in headers:
            resp.headers.add(name, value)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    # -- grants ---------------------------------------------------------------------------

    def check_grant(self, request: web.Request, body: bytes, task_id: str | None) -> P.Grant:
        """PRICE-GRANT-02 and -03, with mpp.pricing; raises the PricingProblem."""
        if self.refuse_grants:
            raise P.PRICING_PROBLEMS[self.refuse_grants]("refused by the test")
        proof = P.parse_grant_proof(request.headers.get(P.GRANT_PROOF_HEADER, ""))
        method, path, query = request.method, request.rel_url.raw_path, request.rel_url.raw_query_string
        grant = P.verify_grant(request.headers[P.GRANT_HEADER], [self.receipt_key], realm=self.realm, agent=proof.agent,
                               now=now(), task_id=task_id, route=(method, path))
        P.verify_grant_proof(proof, grant=grant, method=method, path=path, query=query, body=body, now=now())
        seen = (grant.jti, proof.nonce)  # PRICE-GRANT-06
        if seen in self.proofs_seen:
            raise P.GrantProofInvalid("proof replayed")
        self.proofs_seen.add(seen)
        return grant

    def grant_header(self, claims: dict[str, Any]) -> str:
        return P.issue_grant(self.receipt_key, claims)

    # -- serving --------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        method, path = request.method, request.rel_url.raw_path
        resource = f"{method} {path}"
        follow_up = self.prices.follow_up_for(method, path)
        route = self.prices.route_for(method, path)
        if request.headers.get(P.GRANT_HEADER):
            try:
                grant = self.check_grant(request, body, follow_up[1] if follow_up else None)
            except P.PricingProblem as exc:
                return problem(exc.slug, exc.status)
            self.presented.append((resource, grant.jti))
            self.served_by_grant.append(resource)
            return web.json_response({"served": resource, "grant": grant.kind})
        if follow_up is not None:
            return problem("grant-required", 403, route=resource)
        if route is None:
            return web.json_response({"error": "not found"}, status=404)
        authorization = request.headers.get("Authorization")
        if authorization is None:
            self.subscription_ids.append(request.headers.get(P.SUBSCRIPTION_ID_HEADER))
            self.accept_payment.append(request.headers.get("Accept-Payment"))
            return self.answer_402(route, request)
        return self.settle(request, route, authorization, resource)

    def settle(self, request: web.Request, route: P.Route, authorization: str, resource: str) -> web.Response:
        credential = parse_credential(authorization)
        challenge = credential.challenge
        self.issuer.verify(challenge, now=now())
        assert (challenge.opaque_json or {}).get("resource") == resource
        pricing = challenge.request_json.get("pricing", {})
        self.signed.append((challenge.intent, pricing.get("model")))
        if challenge.intent == "session":
            # This seller runs no sessions: it records the open and answers without a receipt.
            return web.json_response({"session": "not kept"})
        request_doc = ChargeRequest.from_challenge(challenge)
        auth = self.method.verify(credential, request_doc)
        offer = next(o for o in route.offers if o.id == pricing["offer"])
        at = now()
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if isinstance(offer, P.SeatOffer):
            sub = P.subscription_id(self.realm, offer.plan, auth.signer)
            period = pricing["period"]
            seat_claims = P.seat_grant_claims(realm=self.realm, agent=auth.signer, offer=offer, period=period,
                                              challenge_id=challenge.id, now=at)
            try:
                self.seats.reserve(sub, period, challenge.id)
            except P.SeatAlreadyPaid:
                return problem("seat-already-paid", 409, subscriptionId=sub, period=period,
                               periodEnd=pricing["periodEnd"], grant=self.grant_header(seat_claims))
            headers[P.GRANT_HEADER] = self.grant_header(seat_claims)
            extra = {"subscriptionId": sub, "plan": offer.plan, "period": period}
        elif isinstance(offer, P.TaskOffer):
            self.tasks += 1
            task = f"job{self.tasks}"
            headers[P.GRANT_HEADER] = self.grant_header(P.task_grant_claims(
                realm=self.realm, agent=auth.signer, task_id=task, offer=offer, challenge_id=challenge.id, now=at))
            extra = {"task": task}
        reference = "ref_" + secrets.token_hex(6)
        self.paid.append({"model": offer.model, "offer": offer.id, "amount": offer.amount, "challenge": challenge.id,
                          "resource": resource})
        claims = {"iss": self.realm, "sub": auth.signer, "iat": int(at.timestamp()), "jti": challenge.id,
                  "challengeId": challenge.id, "method": "ledger", "intent": challenge.intent,
                  "amount": request_doc.amount, "currency": request_doc.currency, "recipient": request_doc.recipient,
                  "resource": resource, "reference": reference, "settledAt": format_rfc3339(at), **extra}
        receipt = PaymentReceipt(status="success", method="ledger", timestamp=format_rfc3339(at), reference=reference,
                                 challengeId=challenge.id, receipt=sign_receipt(self.receipt_key, claims))
        headers["Payment-Receipt"] = format_receipt(receipt)
        headers["Cache-Control"] = "private"
        return web.json_response({"served": resource, **extra}, status=201 if extra.get("task") else 200, headers=headers)


async def start(seller: FakeSeller) -> FakeSeller:
    seller.server = TestServer(seller.app(), host="127.0.0.1")
    await seller.server.start_server()
    return seller


@pytest.fixture
async def seller():
    s = await start(FakeSeller())
    yield s
    await s.server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def buyer(http: aiohttp.ClientSession, key: mpp.SigningKey | None = None, *, plan: OfferPlan | None = None,
          allow_recurring: bool = False, identity: AgentIdentity | None = None, sessions: SessionPolicy | None = None,
          clock=None, max_amount: int = 10_000) -> PaymentClient:
    key = key or (identity.key if identity is not None else mpp.SigningKey.generate())
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return PaymentClient(http, [LedgerBuyerMethod(key=key, account="acct:buyer")],
                         mpp.BuyerPolicy(max_amount=max_amount, allow_recurring=allow_recurring),
                         identity=identity, sessions=sessions, plan=plan or OfferPlan(), **kwargs)


MANDATE_TIME = datetime.now(timezone.utc)


def mandate(issuer: mpp.SigningKey, subject: mpp.SigningKey, principal: str | None = None, depth: int = 2,
            **extra: Any) -> str:
    """A mandate for ``subject`` with extra claims (``models``, ``max_unit_price``) signed in. All
    share one validity window (a chain issued across a second boundary must not widen)."""
    t = MANDATE_TIME
    token = I.issue_mandate(issuer, subject=subject.did, principal=principal, audience=[REALM], currency="usd",
                            ceiling=10_000, budget_amount=100_000, max_depth=depth, not_before=t - timedelta(minutes=1),
                            expires=t + timedelta(days=1))
    claims = {**jwt.decode(token, options={"verify_signature": False}), **extra}
    return jwt.encode(claims, issuer.private_key, algorithm="EdDSA", headers=jwt.get_unverified_header(token))


def identity_with(*links_extra: dict[str, Any]) -> AgentIdentity:
    """A chain principal -> ... -> agent, one link per dict of extra claims, root first."""
    keys = [mpp.SigningKey.generate() for _ in range(len(links_extra) + 1)]
    tokens = [mandate(keys[i], keys[i + 1], keys[0].did, depth=len(links_extra) - 1 - i, **extra)
              for i, extra in enumerate(links_extra)]
    return AgentIdentity(key=keys[-1], mandates=tokens)


# -- PRICE-BUY-01: the cheapest expected total for the planned work ------------------------------


async def test_one_request_picks_the_transaction_offer(seller, http):
    """PRICE-BUY-01, PRICE-MODEL-03/04: one planned request: 25 (transaction) beats 30 (unit at
    max_units) and 300 (seat); only the chosen offer is signed."""
    client = buyer(http, allow_recurring=True)
    resp = await client.request("GET", seller.url("/weather"))
    assert resp.status == 200 and resp.paid
    assert [p["offer"] for p in seller.paid] == ["transaction"]
    assert seller.signed == [("charge", "transaction")]


async def test_many_requests_pick_the_seat_and_its_grant_covers_the_rest(seller, http):
    """PRICE-BUY-01, PRICE-BUY-02, PRICE-SEAT-05/06, PRICE-GRANT-05: twenty planned requests: the
    seat (300) beats 20 × 25; it is paid once, and its grant, with a fresh proof each time, covers
    the other requests to the route and to the route it covers."""
    client = buyer(http, plan=OfferPlan(planned_requests=20), allow_recurring=True)
    first = await client.request("GET", seller.url("/weather"))
    assert first.paid and first.claims["plan"] == "weather-pro"
    assert seller.signed == [("subscription", "seat")]
    for _ in range(3):  # alike, in the same second: each proof has its own nonce (PRICE-GRANT-05)
        again = await client.request("GET", seller.url("/weather"))
        assert again.status == 200 and not again.paid and again.grant is not None
    covered = await client.request("GET", seller.url("/forecast"))
    assert covered.status == 200 and covered.grant is not None
    assert len(seller.paid) == 1
    assert seller.served_by_grant == ["GET /weather"] * 3 + ["GET /forecast"]
    assert "ledger/subscription" in seller.accept_payment[0]


async def test_the_plan_changes_the_choice(seller, http):
    """PRICE-BUY-01: the same 402 read under different plans: one request -> transaction; twenty
    -> seat (if recurring is allowed, else transaction); twenty with fifty units in all -> unit."""
    async with http.get(seller.url("/weather")) as resp:
        challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"))
    methods = [LedgerBuyerMethod(key=mpp.SigningKey.generate(), account="acct:buyer")]
    sessions = lambda challenge: challenge  # noqa: E731 - every session challenge openable

    def pick(plan: OfferPlan, recurring: bool = True) -> str:
        policy = mpp.BuyerPolicy(max_amount=10_000, allow_recurring=recurring)
        return choose_challenge(challenges, methods, policy, now(), plan=plan, session_offer=sessions).offer.model

    assert pick(OfferPlan()) == "transaction"
    assert pick(OfferPlan(planned_requests=20)) == "seat"
    assert pick(OfferPlan(planned_requests=20), recurring=False) == "transaction"
    assert pick(OfferPlan(planned_requests=20, planned_units=50)) == "unit"  # 150 < 300 < 500
    assert pick(OfferPlan(prefer="unit")) == "unit"  # an explicit preference wins when acceptable
    assert pick(OfferPlan(prefer="seat"), recurring=False) == "transaction"  # ... and only then


async def test_unit_offer_is_opened_as_a_session(seller, http):
    """PRICE-MODEL-02, PRICE-BUY-01: with sessions enabled and units planned, the unit offer is
    chosen and opened as a session (this seller keeps none: it only records what was signed)."""
    client = buyer(http, plan=OfferPlan(planned_requests=20, planned_units=50), sessions=SessionPolicy(max_cap=1000))
    with pytest.raises(ReceiptInvalid):
        await client.request("GET", seller.url("/weather"))
    assert seller.signed == [("session", "unit")]


# -- PRICE-BUY-02, PRICE-SEAT-*: seats are recurring commitments ---------------------------------


async def test_seat_is_never_taken_without_opting_in(seller, http):
    """PRICE-BUY-02: by default a buyer takes no recurring commitment: with twenty requests planned
    it pays per request, does not ask for subscriptions, and refuses a route offering only a seat."""
    client = buyer(http, plan=OfferPlan(planned_requests=20))
    resp = await client.request("GET", seller.url("/weather"))
    assert resp.paid and seller.signed == [("charge", "transaction")]
    assert "subscription" not in seller.accept_payment[0]
    with pytest.raises(QuoteRejected) as refused:
        await client.request("GET", seller.url("/seat-only"))
    assert refused.value.rule == "recurring"
    assert seller.signed == [("charge", "transaction")]


async def test_seat_already_paid_uses_the_returned_grant_without_paying_again(seller, http):
    """PRICE-SEAT-03: a second process of the same agent pays a seat already paid for the period:
    the seller answers 409 with a seat grant, and the buyer is served with it, paying nothing."""
    key = mpp.SigningKey.generate()
    one = buyer(http, key, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    two = buyer(http, key, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    assert (await one.request("GET", seller.url("/weather"))).paid
    resp = await two.request("GET", seller.url("/weather"))
    assert resp.status == 200 and not resp.paid and resp.grant is not None
    assert [p["model"] for p in seller.paid] == ["seat"]
    assert seller.signed == [("subscription", "seat")] * 2  # signed twice, settled once
    later = await two.request("GET", seller.url("/forecast"))  # the grant is kept for the period
    assert later.grant == resp.grant and len(seller.paid) == 1


def seat_challenge(seller: FakeSeller, **changes: Any) -> tuple[mpp.Challenge, ChargeRequest]:
    route = seller.prices.route_for("GET", "/weather")
    offer = next(o for o in route.offers if isinstance(o, P.SeatOffer))
    at = now()
    doc = {**seller.method.request_for(amount=offer.amount, currency="usd", description=None),
           **offer.subscription_request(at)}
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    challenge = seller.issuer.issue(method="ledger", intent="subscription", request=doc, now=at,
                                    opaque={"resource": "GET /weather"})
    return challenge, ChargeRequest.from_challenge(challenge)


@pytest.mark.parametrize("changes", [
    {"periodUnit": "fortnight"},
    {"periodCount": "0"},
    {"periodCount": 1},
    {"periodSeconds": "86401"},  # not the length of one day
    {"periodSeconds": None},
    {"subscriptionExpires": "2999-01-01T00:00:00Z"},  # beyond the period quoted
    {"subscriptionExpires": "2001-01-01T00:00:00Z"},  # already over
    {"subscriptionId": "sub_AAAAAAAAAAAAAAAAAAAAAA"},  # another agent's subscription
])
def test_seat_quote_checks_the_period(changes):
    """PRICE-BUY-02: periodUnit, periodCount, periodSeconds, subscriptionExpires (and the
    subscription named) are checked before a seat is signed."""
    seller = FakeSeller()
    policy = mpp.BuyerPolicy(max_amount=10_000, allow_recurring=True)
    agent = mpp.SigningKey.generate().did
    good, request = seat_challenge(seller)
    check_seat_quote(good, request, policy, now(), agent=agent)
    bad, request = seat_challenge(seller, **changes)
    with pytest.raises(QuoteRejected) as refused:
        check_seat_quote(bad, request, policy, now(), agent=agent)
    assert refused.value.rule == "seat"


def test_seat_quote_checks_the_amount_and_the_opt_in():
    """PRICE-BUY-02: the amount of a period against max_amount, and no seat without allow_recurring."""
    challenge, request = seat_challenge(FakeSeller())
    with pytest.raises(QuoteRejected) as refused:
        check_seat_quote(challenge, request, mpp.BuyerPolicy(max_amount=299, allow_recurring=True), now())
    assert refused.value.rule == "max-amount"
    with pytest.raises(QuoteRejected) as refused:
        check_seat_quote(challenge, request, mpp.BuyerPolicy(max_amount=10_000), now())
    assert refused.value.rule == "recurring"


# -- PRICE-MDT-01/02: the mandate chain restricts the models ----------------------------------------


async def test_mandate_forbidding_the_cheapest_model_chooses_another(seller, http):
    """PRICE-MDT-01, PRICE-MDT-02, PRICE-BUY-01: the root allows transaction, unit and seat, the
    agent's own link only transaction and unit: every link counts, so the seat, cheapest for
    twenty requests, is never signed (and a unit offer needs sessions, not enabled here)."""
    identity = identity_with({"models": ["transaction", "unit", "seat"]}, {"models": ["transaction", "unit"]})
    client = buyer(http, identity=identity, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    resp = await client.request("GET", seller.url("/weather"))
    assert resp.paid and seller.signed == [("charge", "transaction")]


async def test_mandate_forbidding_every_offer_refuses_before_signing(seller, http):
    """PRICE-MDT-02: a task route under a chain allowing only transactions: refused (rule "model"),
    nothing signed; events record the denial."""
    events: list[tuple[str, dict]] = []
    client = buyer(http, identity=identity_with({"models": ["transaction"]}))
    client.on_event = lambda kind, data: events.append((kind, data))
    with pytest.raises(QuoteRejected) as refused:
        await client.request("POST", seller.url("/jobs"), data=b"{}")
    assert refused.value.rule == "model"
    assert seller.signed == []
    assert ("policy-decision", "deny", "model") in [(k, d.get("decision"), d.get("rule")) for k, d in events]


async def test_unit_price_above_the_mandate_limit_is_not_signed(seller, http):
    """PRICE-MDT-02: /tokens sells at 5 per 2 tokens; a chain capping at 2 per 1 refuses it
    (rule "unit-price") before a session is opened; on /weather the limit leaves the others."""
    identity = identity_with({"max_unit_price": {"amount": 2, "per": 1}})
    client = buyer(http, identity=identity, sessions=SessionPolicy(max_cap=1000),
                   plan=OfferPlan(planned_requests=20, planned_units=20))
    with pytest.raises(QuoteRejected) as refused:
        await client.request("GET", seller.url("/tokens"))
    assert refused.value.rule == "unit-price"
    resp = await client.request("GET", seller.url("/weather"))  # unit (3 per 1) excluded: transaction
    assert resp.paid and seller.signed == [("charge", "transaction")]


async def test_identity_check_refuses_a_forbidden_model_on_its_own(seller, http):
    """PRICE-MDT-02: AgentIdentity.check, which guards every signature, refuses the model too."""
    identity = identity_with({"models": ["task"]})
    challenge, request = seat_challenge(seller)
    quote = mpp.Quote(challenge, request, LedgerBuyerMethod(key=identity.key, account="acct:buyer"))
    with pytest.raises(QuoteRejected) as refused:
        identity.check(quote, "GET", "/weather", now())
    assert refused.value.rule == "model"


# -- PRICE-GRANT-05, PRICE-TASK-*: grants go only where they belong ----------------------------------


async def test_task_grant_covers_its_follow_ups_only_and_only_at_its_origin(seller, http):
    """PRICE-TASK-01/02, PRICE-GRANT-05: the task is paid once; its follow-ups carry the grant and
    a fresh proof; another task's follow-up, an uncovered route and another origin never see it."""
    other = await start(FakeSeller())
    try:
        client = buyer(http, allow_recurring=False)
        started = await client.request("POST", seller.url("/jobs"), data=b'{"job": 1}')
        assert started.status == 201 and started.paid
        task = json.loads(started.body)["task"]
        for path in (f"/jobs/{task}", f"/jobs/{task}", f"/jobs/{task}/result"):
            resp = await client.request("GET", seller.url(path))
            assert resp.status == 200 and resp.grant is not None and not resp.paid
        assert len(seller.paid) == 1
        not_ours = await client.request("GET", seller.url("/jobs/job999"))
        assert not_ours.status == 403 and not_ours.grant is None  # grant-required: nothing sent
        elsewhere = await client.request("GET", other.url(f"/jobs/{task}"))
        assert elsewhere.status == 403 and other.presented == []
        await client.request("GET", seller.url("/forecast"))  # not covered: paid the usual way
        assert [r for r, _ in seller.presented] == [f"GET /jobs/{task}", f"GET /jobs/{task}", f"GET /jobs/{task}/result"]
        assert [p["model"] for p in seller.paid] == ["task", "transaction"]
    finally:
        await other.server.close()


async def test_expired_grant_is_not_sent(seller, http):
    """PRICE-GRANT-05: only while exp has not passed (the buyer's clock past the task grant's 600 s)."""
    offset = timedelta(0)
    client = buyer(http, clock=lambda: now() + offset)
    task = json.loads((await client.request("POST", seller.url("/jobs"), data=b"{}")).body)["task"]
    offset = timedelta(seconds=601)
    resp = await client.request("GET", seller.url(f"/jobs/{task}"))
    assert resp.status == 403 and resp.grant is None and seller.presented == []
    assert client.grants == []


async def test_refused_grant_is_dropped_and_the_request_paid_the_usual_way(seller, http):
    """PRICE-GRANT-05, PRICE-SEAT-06: a seller answering 403 grant-* makes the buyer drop the
    grant and fall back: the unpaid request gets a 402, which is paid; the grant is not sent again.
    The renewal request names the subscription (Subscription-Id)."""
    client = buyer(http, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    seat = await client.request("GET", seller.url("/weather"))
    sub = seat.claims["subscriptionId"]
    seller.refuse_grants = "grant-expired"
    resp = await client.request("GET", seller.url("/forecast"))
    assert resp.status == 200 and resp.paid and resp.grant is None
    assert [p["model"] for p in seller.paid] == ["seat", "transaction"]
    assert seller.subscription_ids[-1] == sub
    seller.refuse_grants = None
    again = await client.request("GET", seller.url("/forecast"))
    assert again.paid and again.grant is None and seller.presented == []


async def test_grant_of_another_seller_is_not_kept(seller, http):
    """PRICE-GRANT-05: a Payment-Grant the buyer cannot verify with the seller's keys is ignored."""
    client = buyer(http)
    forged = FakeSeller()
    original = seller.grant_header
    seller.grant_header = forged.grant_header  # signed with a key not in the seller's JWKS
    try:
        started = await client.request("POST", seller.url("/jobs"), data=b"{}")
    finally:
        seller.grant_header = original
    assert started.paid and client.grants == []


def test_offer_plan_is_validated():
    with pytest.raises(ValueError):
        OfferPlan(planned_requests=0)
    with pytest.raises(ValueError):
        OfferPlan(prefer="cheapest")
    assert dataclasses.replace(OfferPlan(), planned_units=5).planned_units == 5


def test_fetch_help_documents_the_offer_options():
    """PRICE-BUY-01, PRICE-BUY-02: `mpp fetch` says how it chooses among offers and that seats need opting in."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mpp.cli.main", "fetch", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--prefer", "--planned-requests", "--planned-units", "--allow-recurring"):
        assert option in out
    assert "only with --allow-recurring" in out


# -- end to end: the real Seller with a price list ---------------------------------------------------

E2E_PRICES = """
version = "e2e.1"
currency = "usd"

[[routes]]
path = "/weather"

  [[routes.offers]]
  model = "transaction"
  amount = 25

  [[routes.offers]]
  model = "seat"
  plan = "weather-pro"
  amount = 300
  period_unit = "day"
  covers = ["GET /forecast"]

[[routes]]
path = "/forecast"

  [[routes.offers]]
  model = "transaction"
  amount = 40

[[routes]]
method = "POST"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 500
  follow_ups = ["GET /jobs/{task}"]
  grant_ttl = 600
  refund = "none"
"""


@pytest.fixture
async def real_seller(tmp_path):
    from mpp.aio import EmbeddedLedgerRail, Seller
    from mpp.aio.seller import start_task
    from mpp.ledger import SqliteLedger
    from mpp.stores.pricing import SqlitePricingStore
    from mpp.stores.payments import SqlitePaymentStore

    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account("acct:buyer", "usd")
    ledger.fund("acct:buyer", 100_000)
    agent = mpp.SigningKey.generate()
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    seller = Seller(realm=REALM, secret=SECRET, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                    store=SqlitePaymentStore(str(tmp_path / "payments.db")),
                    price_list=P.load_price_list(E2E_PRICES, source="e2e.toml"),
                    pricing_store=SqlitePricingStore(str(tmp_path / "pricing.db")))
    jobs = 0

    async def served(request: web.Request) -> web.Response:
        return web.json_response({"served": request.path})

    async def start_job(request: web.Request) -> web.Response:
        nonlocal jobs
        jobs += 1
        await start_task(request, f"job{jobs}")
        return web.json_response({"task": f"job{jobs}"}, status=201)

    app = web.Application()
    for path in ("/weather", "/forecast", "/jobs/{task}"):
        app.router.add_get(path, served)
    app.router.add_post("/jobs", start_job)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, ledger, agent
    await server.close()
    ledger.close()


async def test_e2e_against_the_real_seller(real_seller, http):
    """PRICE-BUY-01, PRICE-BUY-02, PRICE-SEAT-05/06, PRICE-TASK-01/02, PRICE-GRANT-04/05 end to end:
    one request pays the transaction; with twenty planned and recurring allowed the seat is paid
    once and its grant serves the covered routes; a task's follow-ups go with its grant."""
    server, ledger, key = real_seller
    url = lambda path: str(server.make_url(path))  # noqa: E731
    one = await buyer(http, key).request("GET", url("/weather"))
    assert one.paid and one.claims["amount"] == "25"
    client = buyer(http, key, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    seat = await client.request("GET", url("/weather"))
    assert seat.paid and seat.claims["amount"] == "300"
    for path in ("/weather", "/forecast"):
        resp = await client.request("GET", url(path))
        assert resp.status == 200 and resp.grant is not None and not resp.paid
    started = await client.request("POST", url("/jobs"), data=b"{}")
    assert started.status == 201 and started.paid
    task = json.loads(started.body)["task"]
    poll = await client.request("GET", url(f"/jobs/{task}"))
    assert poll.status == 200 and poll.grant is not None
    # A second process of the same agent, holding no grant: the period is paid already (PRICE-SEAT-03).
    other = buyer(http, key, allow_recurring=True, plan=OfferPlan(planned_requests=20))
    forecast = await other.request("GET", url("/forecast?city=x"))  # offers no seat: paid per request
    assert forecast.status == 200 and forecast.paid
    again = await other.request("GET", url("/weather"))
    assert again.status == 200 and not again.paid and again.grant is not None
    charges = sorted(t.amount for t in ledger.transfers() if t.kind == "charge")
    assert charges == [25, 40, 300, 500]
