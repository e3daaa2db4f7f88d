"""The buyer: an aiohttp client that answers a 402 once, within policy, and checks the receipt.

It never sends a credential to an origin other than the one the caller asked for, never
follows a redirect with a credential, and treats a 5xx or a network error after paying as
"outcome unknown" rather than trying again and perhaps paying twice.

With a :class:`~mpp.aio.sessions.SessionPolicy` it also opens ``session``s: the first 402 that
offers one opens it, later requests to the same seller carry a voucher and no 402 comes first,
and :meth:`PaymentClient.close_sessions` (or leaving ``async with client``) closes them.

A 402 from a price list (spec/pricing.md) offers several pricing models at once: the client
chooses the offer by its :class:`~mpp.buyer.core.OfferPlan` among those its mandate chain allows
and its policy accepts (a seat only with ``BuyerPolicy(allow_recurring=True)``). The grants a
task or a seat purchase brings (``Payment-Grant``) are kept per origin and presented, with a
fresh proof, on the later requests they cover instead of paying again (PRICE-GRANT-05).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

import aiohttp
from multidict import CIMultiDictProxy

from yarl import URL

from mpp.protocol.wire import loads_strict
from mpp.buyer.core import (
    SUBSCRIPTION_INTENT,
    BuyerPolicy,
    OfferChoice,
    OfferPlan,
    Quote,
    check_mandate_offer,
    check_transport,
    choose_challenge,
    is_priced,
    origin_of,
    select_quote,
    sign_quote,
    verify_receipt,
)
from mpp.protocol.errors import (
    DETAIL_MAX,
    EXTENSION_PROBLEM_BASE,
    RESOURCE_MAX,
    BuyerError,
    NoPayableChallenge,
    OutcomeUnknown,
    ParseError,
    PaymentFailed,
    QuoteRejected,
    ReceiptInvalid,
    clip,
)
from mpp.protocol.headers import format_accept_payment, format_credential, parse_challenges
from mpp.identity import identity_member
from mpp.methods import BuyerMethod
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge, ChargeRequest, Credential, PaymentReceipt
from mpp.pricing import (
    GRANT_HEADER,
    GRANT_PROOF_HEADER,
    SUBSCRIPTION_ID_HEADER,
    Grant,
    MandateRestrictions,
    PricingProblem,
    match_template,
    sign_grant_proof,
    verify_grant,
)
from mpp.intents.session import INTENT as SESSION_INTENT
from mpp.aio.agent import AgentIdentity
from mpp.aio.sessions import (
    OpenSession,
    SessionManager,
    SessionOffer,
    SessionPlan,
    SessionPolicy,
    SSEEvent,
    parse_sse,
    problem_amount,
    select_session,
    verify_session_receipt,
)

__all__ = ["PaymentClient", "PaidResponse", "PaidStream"]

log = logging.getLogger("mpp.buyer")
CLOSE_RETRY_SECONDS = 30.0  # how long close keeps asking while the seller answers 409 (requests still running)
JWKS_PATH = "/.well-known/jwks.json"
FINAL_RECEIPT_LIMIT = 1 << 20  # bytes of one header field in an answer to the session endpoint
Event = Callable[[str, dict[str, Any]], Awaitable[None] | None]  # on_event: plain or async (an audit log's append)
_INSUFFICIENT = EXTENSION_PROBLEM_BASE + "session-insufficient"
_GONE = (EXTENSION_PROBLEM_BASE + "session-closed", EXTENSION_PROBLEM_BASE + "session-unknown")
_SESSION_PROBLEMS = EXTENSION_PROBLEM_BASE + "session-"
_GRANT_PROBLEMS = EXTENSION_PROBLEM_BASE + "grant-"
_SEAT_ALREADY_PAID = EXTENSION_PROBLEM_BASE + "seat-already-paid"


@dataclass
class PaidResponse:
    """The final response, and what was paid for it (``receipt`` is None if nothing was paid).

    ``session`` is the id of the session that paid for it, if one did; ``grant`` the ``jti`` of
    the grant that covered it, if one did (nothing is paid then). ``stream`` is the still open
    aiohttp response of a ``text/event-stream`` (only from :meth:`PaymentClient.stream`).
    """

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    receipt: PaymentReceipt | None = None
    claims: dict[str, Any] | None = None
    quote: Quote | None = None
    session: str | None = None
    grant: str | None = None
    stream: aiohttp.ClientResponse | None = field(default=None, repr=False)

    @property
    def paid(self) -> bool:
        return self.receipt is not None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class PaymentClient:
    session: aiohttp.ClientSession
    methods: Sequence[BuyerMethod]
    policy: BuyerPolicy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    on_event: Event | None = None
    identity: AgentIdentity | None = None
    sessions: SessionPolicy | None = None
    # The planned work by which an offer is chosen among several (PRICE-BUY-01); default: one request.
    plan: OfferPlan = field(default_factory=OfferPlan)
    _jwks: dict[tuple[str, str, int], Mapping[str, Any]] = field(default_factory=dict)
    _manager: SessionManager | None = field(default=None, init=False, repr=False)
    # origin -> jti -> grant: a grant never leaves the origin that issued it (PRICE-GRANT-05)
    _grants: dict[tuple[str, str, int], dict[str, Grant]] = field(default_factory=dict, init=False, repr=False)
    # origin -> plan -> (routes, subscription id): named in Subscription-Id when a seat is renewed
    _subscriptions: dict[tuple[str, str, int], dict[str, tuple[tuple[str, ...], str]]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sessions is not None:
            self._manager = SessionManager(self.sessions, event=self._event)

    async def __aenter__(self) -> "PaymentClient":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.close_sessions()
        except (BuyerError, aiohttp.ClientError, TimeoutError):
            if exc is None:
                raise
            log.warning("closing sessions failed while leaving on an error", exc_info=True)

    async def _event(self, kind: str, **data: Any) -> None:
        # Awaited before going on, so an audit log records each event before the next step runs.
        if self.on_event is not None:
            await _maybe_await(self.on_event(kind, data))

    @property
    def accept_payment(self) -> str:
        pairs = [(m.name, "charge") for m in self.methods]
        if self._manager is not None and any(m.name == "ledger" for m in self.methods):
            session = [("ledger", SESSION_INTENT)]
            pairs = session + pairs if self._manager.policy.prefer == "session" else pairs + session
        if self.policy.allow_recurring:
            pairs += [(m.name, SUBSCRIPTION_INTENT) for m in self.methods if hasattr(m, "can_pay_subscription")]
        return format_accept_payment(pairs)

    @property
    def grants(self) -> list[Grant]:
        """The grants held and not yet expired, of every origin."""
        now = self.clock()
        return [g for held in self._grants.values() for g in held.values() if now < g.expires]

    @property
    def open_sessions(self) -> list[OpenSession]:
        """Sessions not yet closed (open ones, and retired ones waiting for their close)."""
        return self._manager.sessions() if self._manager is not None else []

    async def _unpaid(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                      keep_open: bool = False) -> tuple[PaidResponse, list[str]]:
        hdrs = {"Accept-Payment": self.accept_payment, **(headers or {})}
        subscription = self._subscription_for(method, url)
        if subscription is not None:
            hdrs.setdefault(SUBSCRIPTION_ID_HEADER, subscription)
        resp = await self.session.request(method, url, data=data, headers=hdrs)
        hops = [str(h.url) for h in resp.history] + [str(resp.url)]
        return await _capture(resp, keep_open), hops

    def _challenges_of(self, first: PaidResponse, hops: Sequence[str], url: str) -> list[Challenge]:
        check_transport(first.url, self.policy)
        wanted = origin_of(url)
        for hop in hops:
            if origin_of(hop) != wanted:
                raise QuoteRejected("origin", f"402 came from {hop} after a redirect away from {url}; not paying")
        try:
            return parse_challenges(first.headers.getall("WWW-Authenticate", ()), skip_invalid=True)
        except ParseError as exc:
            raise PaymentFailed(f"402 without a usable Payment challenge: {exc}", 402, None) from exc

    async def quote(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[Quote | None, PaidResponse]:
        """Make the request unpaid; if it answers 402, choose and check a challenge (nothing signed)."""
        first, hops = await self._unpaid(method, url, data, headers)
        if first.status != 402:
            return None, first
        challenges = self._challenges_of(first, hops, url)
        if is_priced(challenges):
            choice = await self._choose(challenges, self.clock(), sessions=False)
            assert choice.quote is not None
            quote = choice.quote
            await self._quote_seen(quote, choice)
        else:
            quote = select_quote(self._allowed(challenges), self.methods, self.policy, self.clock())
            await self._quote_seen(quote)
        return quote, first

    async def _quote_seen(self, quote: Quote, choice: OfferChoice | None = None) -> None:
        offer = {} if choice is None else {"model": choice.offer.model, "offer": choice.offer.offer,
                                           "priceList": choice.offer.price_list, "expectedTotal": str(choice.total)}
        await self._event("quote-seen", challengeId=quote.challenge.id, amount=quote.request.amount, currency=quote.request.currency,
                          realm=quote.challenge.realm, accepted=True, **{k: v for k, v in offer.items() if v is not None})

    async def credential(self, method: str, url: str, *, data: bytes | None = None) -> str | None:
        """The ``Authorization`` value we would send for the current quote, without sending it."""
        quote, first = await self.quote(method, url, data=data)
        if quote is None:
            return None
        if self.identity is None:
            return sign_quote(quote)
        self.identity.check(quote, method, str(URL(first.url).raw_path_qs), self.clock())
        return sign_quote(quote, {"identity": self.identity.member(quote)})

    async def request(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> PaidResponse:
        return await self._request(method, url, data, headers, keep_open=False)

    def stream(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> "PaidStream":
        """A paid ``text/event-stream``: ``async with client.stream("GET", url) as events: async for e in events``.

        Payment events (``payment-required``, ``payment-receipt``, ...) are answered here and never
        yielded; the stream's receipt is on ``events.receipt`` / ``events.claims`` at the end.
        """
        return PaidStream(self, method, url, data, headers)

    async def _request(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                       keep_open: bool) -> PaidResponse:
        grant = self._grant_for(method, url)
        if grant is not None:
            served = await self._with_grant(grant, method, url, data, headers, keep_open)
            if served is not None and served.status != 402:
                return served
            if served is not None:  # the seller wants payment after all: its 402 carries the challenges
                return await self._answer(method, served, self._challenges_of(served, [served.url], url), data, headers, keep_open)
        if self._manager is not None:
            session = self._manager.find(url)
            if session is not None:
                return await self._use_session(session, method, url, data, headers, keep_open)
        first, hops = await self._unpaid(method, url, data, headers, keep_open)
        if first.status != 402:
            return first
        return await self._answer(method, first, self._challenges_of(first, hops, url), data, headers, keep_open)

    async def _answer(self, method: str, first: PaidResponse, challenges: Sequence[Challenge], data: bytes | None,
                      headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        """Pay a 402: choose among a price list's offers; else open a session if one is offered
        and preferred, else pay by charge."""
        now = self.clock()
        if is_priced(challenges):
            return await self._answer_priced(method, first, challenges, data, headers, keep_open, now)
        challenges = self._allowed(challenges)
        offer: SessionOffer | None = None
        reasons: list[str] = []
        if self._manager is not None:
            offer, reasons = select_session(challenges, self.methods, self.policy, self._manager.policy, now)
            if offer is not None and self._manager.policy.prefer == "session":
                return await self._open_session(method, first, offer, data, headers, keep_open)
        try:
            quote = select_quote(challenges, self.methods, self.policy, now)
        except (NoPayableChallenge, QuoteRejected) as exc:
            if offer is not None:
                return await self._open_session(method, first, offer, data, headers, keep_open)
            if isinstance(exc, NoPayableChallenge) and reasons:
                raise NoPayableChallenge(str(exc), exc.reasons + reasons) from None
            raise
        await self._quote_seen(quote)
        return await self._pay_quote(method, first, quote, data, headers, keep_open)

    async def _pay_quote(self, method: str, first: PaidResponse, quote: Quote, data: bytes | None,
                         headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        if self.identity is None:
            return await self._pay(method, first, quote, sign_quote(quote), data, headers, keep_open)
        return await self._pay_with_identity(method, first, quote, data, headers, keep_open)

    # -- several offers, grants, seats (spec/pricing.md) ------------------------------------

    def _restrictions(self) -> MandateRestrictions | None:
        return self.identity.restrictions() if self.identity is not None else None

    def _allowed(self, challenges: Sequence[Challenge]) -> list[Challenge]:
        """The challenges of a 402 without a price list whose model (by intent) the mandate allows."""
        restrictions = self._restrictions()
        allowed: list[Challenge] = []
        refused: QuoteRejected | None = None
        for challenge in challenges:
            try:
                check_mandate_offer(challenge, restrictions, challenges)
            except QuoteRejected as exc:
                refused = refused or exc
                continue
            allowed.append(challenge)
        if not allowed and refused is not None:
            raise refused
        return allowed

    def _payer(self) -> str | None:
        """The DID that signs our payments: a grant is issued to it (PRICE-TASK-02, PRICE-SEAT-05)."""
        for m in self.methods:
            key = getattr(m, "key", None)
            if isinstance(key, SigningKey):
                return key.did
        return self.identity.key.did if self.identity is not None else None

    def _key_for(self, did: str) -> SigningKey | None:
        keys = [self.identity.key] if self.identity is not None else []
        keys += [k for k in (getattr(m, "key", None) for m in self.methods) if isinstance(k, SigningKey)]
        return next((k for k in keys if k.did == did), None)

    async def _choose(self, challenges: Sequence[Challenge], now: datetime, *, sessions: bool = True) -> OfferChoice:
        """PRICE-BUY-01: the offer to pay, or QuoteRejected / NoPayableChallenge (recorded as a denial)."""
        manager = self._manager if sessions else None

        def session_offer(challenge: Challenge) -> SessionOffer:
            assert manager is not None
            offer, reasons = select_session([challenge], self.methods, self.policy, manager.policy, now)
            if offer is None:
                raise ParseError("; ".join(r.split(": ", 1)[-1] for r in reasons) or "not a session we can open")
            return offer

        try:
            return choose_challenge(challenges, self.methods, self.policy, now, plan=self.plan,
                                    restrictions=self._restrictions(), agent=self._payer(),
                                    session_offer=session_offer if manager is not None else None)
        except QuoteRejected as exc:
            await self._event("policy-decision", decision="deny", rule=exc.rule, reason=exc.detail,
                              realm=challenges[0].realm if challenges else None)
            raise

    async def _answer_priced(self, method: str, first: PaidResponse, challenges: Sequence[Challenge], data: bytes | None,
                             headers: Mapping[str, str] | None, keep_open: bool, now: datetime) -> PaidResponse:
        choice = await self._choose(challenges, now)
        if choice.session is not None:
            return await self._open_session(method, first, choice.session, data, headers, keep_open)
        quote = choice.quote
        assert quote is not None
        await self._quote_seen(quote, choice)
        try:
            return await self._pay_quote(method, first, quote, data, headers, keep_open)
        except PaymentFailed as exc:
            # PRICE-SEAT-03: this period is paid already (another process of ours, say); nothing
            # moved, and the problem carries a seat grant: use it, never pay the period twice.
            if not (quote.challenge.intent == SUBSCRIPTION_INTENT and exc.status == 409
                    and exc.problem.get("type") == _SEAT_ALREADY_PAID):
                raise
            grant = await self._keep_grant(exc.problem.get("grant"), quote.challenge.realm, first.url)
            if grant is None or not grant.covers(method, URL(first.url).raw_path):
                raise
            served = await self._with_grant(grant, method, first.url, data, headers, keep_open)
            if served is None or served.status == 402:
                raise
            return served

    def _grant_for(self, method: str, url: str) -> Grant | None:
        """A grant of this origin, unexpired, covering this request (PRICE-GRANT-05)."""
        held = self._grants.get(origin_of(url))
        if not held:
            return None
        try:
            check_transport(url, self.policy)
        except QuoteRejected:
            return None
        now, path = self.clock(), URL(url).raw_path
        for jti, grant in list(held.items()):
            if now >= grant.expires:
                self._drop_grant(url, grant)
            elif grant.covers(method, path):
                return grant
        return None

    def _drop_grant(self, url: str, grant: Grant) -> None:
        self._grants.get(origin_of(url), {}).pop(grant.jti, None)

    async def _keep_grant(self, token: Any, realm: str, url: str) -> Grant | None:
        """Verify a grant the seller gave us (its receipt key, our DID, its realm) and keep it for its origin."""
        payer = self._payer()
        if not isinstance(token, str) or not token or payer is None:
            return None
        try:
            jwks = await self._seller_jwks(url)
            grant = verify_grant(token, jwks, realm=realm, agent=payer, now=self.clock())
        except (PricingProblem, ReceiptInvalid, ValueError) as exc:
            log.warning("not keeping a grant from %s: %s", clip(realm, RESOURCE_MAX), clip(exc, DETAIL_MAX))  # the seller's words (CORE-ERR-12)
            return None
        origin = origin_of(url)
        self._grants.setdefault(origin, {})[grant.jti] = grant
        if grant.kind == "seat" and grant.plan and grant.subscription_id:
            self._subscriptions.setdefault(origin, {})[grant.plan] = (grant.routes, grant.subscription_id)
        return grant

    def _subscription_for(self, method: str, url: str) -> str | None:
        """The subscription id of a seat of ours covering this request, to renew it by (spec/pricing.md §3.2)."""
        path = URL(url).raw_path
        for routes, sub in self._subscriptions.get(origin_of(url), {}).values():
            for route in routes:
                r_method, _, r_path = route.partition(" ")
                if r_method == method.upper() and match_template(r_path, path) is not None:
                    return sub
        return None

    async def _with_grant(self, grant: Grant, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
                          keep_open: bool) -> PaidResponse | None:
        """The request with the grant and a fresh proof instead of a payment; None if the seller
        refused the grant (403 grant-*): it is dropped and the caller goes the usual way."""
        key = self._key_for(grant.agent)
        if key is None:
            self._drop_grant(url, grant)
            return None
        u = URL(url)
        body = data or b""
        # A fresh nonce in every proof: two alike requests in one second are two proofs (PRICE-GRANT-05).
        proof = sign_grant_proof(key, grant_id=grant.jti, method=method, path=u.raw_path, query=u.raw_query_string,
                                 body=body, now=self.clock())
        hdrs = {"Accept-Payment": self.accept_payment, **(headers or {}), GRANT_HEADER: grant.token, GRANT_PROOF_HEADER: proof}
        # Only to the origin that issued it: no redirects with a grant.
        resp = await self.session.request(method, url, data=data, headers=hdrs, allow_redirects=False)
        served = await _capture(resp, keep_open)
        if served.status == 403 and str(_problem_of(served).get("type", "")).startswith(_GRANT_PROBLEMS):
            self._drop_grant(url, grant)
            log.info("seller refused grant %s: %s", grant.jti, clip(_problem_of(served).get("type"), RESOURCE_MAX))
            return None
        if served.status != 402:
            served.grant = grant.jti
        return served

    async def _pay_with_identity(self, method: str, first: PaidResponse, quote: Quote, data: bytes | None,
                                 headers: Mapping[str, str] | None, keep_open: bool = False) -> PaidResponse:
        """Mandate checks and budget reservation before signing; one retry with an approval if asked."""
        identity = self.identity
        assert identity is not None
        now = self.clock()
        path_qs = str(URL(first.url).raw_path_qs)
        try:
            chain = identity.check(quote, method, path_qs, now)
            await identity.reserve(chain, quote, now)
        except QuoteRejected as exc:
            await self._event("policy-decision", challengeId=quote.challenge.id, decision="deny", rule=exc.rule, reason=exc.detail)
            raise
        await self._event("policy-decision", challengeId=quote.challenge.id, decision="allow", reason="within mandate",
                          agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti)
        approval: str | None = None
        try:
            for attempt in range(2):
                credential = sign_quote(quote, {"identity": identity.member(quote, approval)})
                try:
                    paid = await self._pay(method, first, quote, credential, data, headers, keep_open)
                except PaymentFailed as exc:
                    approval = await self._approval(exc, quote.challenge.id) if attempt == 0 else None
                    if approval:
                        continue
                    raise
                await identity.commit(quote.challenge.id)
                return paid
            raise AssertionError("unreachable")  # pragma: no cover
        except (PaymentFailed, QuoteRejected, ReceiptInvalid):
            await identity.release(quote.challenge.id)
            raise
        # OutcomeUnknown keeps the reservation: the money may have moved.

    async def _approval(self, exc: PaymentFailed, challenge_id: str) -> str | None:
        """The seller wants the principal's approval: ask our approver, once."""
        identity = self.identity
        wants_approval = exc.status == 403 and str(exc.problem.get("type", "")).endswith(":approval-required")
        if not wants_approval or identity is None or identity.approver is None:
            return None
        approval = await _maybe_await(identity.approver(exc.problem))
        if approval:
            await self._event("policy-decision", challengeId=challenge_id, decision="approved",
                              rule=exc.problem.get("rule"), reason="approval obtained")
        return approval or None

    async def _send(self, method: str, url: str, authorization: str, data: bytes | None, headers: Mapping[str, str] | None,
                    challenge_id: str, keep_open: bool = False, skip_auto_headers: tuple[str, ...] = (),
                    **limits: int) -> PaidResponse:
        """Send a credential once: no redirects, no silent resend; no usable answer is OutcomeUnknown."""
        hdrs = {**(headers or {}), "Authorization": authorization}
        try:
            # The credential goes only to the URL that issued the challenge, once: no redirects,
            # and no silent resend by aiohttp's retry of idempotent requests on a dropped connection.
            resp = await self.session.request(
                method, url, data=data, headers=hdrs, allow_redirects=False, middlewares=(_send_once(),),
                skip_auto_headers=skip_auto_headers, **limits
            )
            paid = await _capture(resp, keep_open)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._event("refusal", challengeId=challenge_id, outcome="unknown", reason=str(exc))
            raise OutcomeUnknown(f"network error after sending the credential: {exc}", challenge_id) from exc
        if paid.status >= 500:
            await self._event("refusal", challengeId=challenge_id, outcome="unknown", status=paid.status)
            raise OutcomeUnknown(f"seller answered {paid.status} after the credential was sent", challenge_id)
        return paid

    async def _pay(self, method: str, first: PaidResponse, quote: Quote, authorization: str, data: bytes | None,
                   headers: Mapping[str, str] | None, keep_open: bool = False) -> PaidResponse:
        await self._event("authorization-signed", challengeId=quote.challenge.id)
        paid = await self._send(method, first.url, authorization, data, headers, quote.challenge.id, keep_open)
        paid.quote = quote
        if paid.status >= 400:
            problem = _problem_of(paid)
            await self._event("refusal", challengeId=quote.challenge.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(f"seller refused the credential: HTTP {paid.status} {problem.get('type', '')}".strip(), paid.status, problem)
        try:
            jwks = await self._seller_jwks(first.url)
            paid.receipt, paid.claims = verify_receipt(paid.headers.get("Payment-Receipt"), quote, jwks, self.clock())
        except BaseException:
            _close_stream(paid)
            raise
        # A task or a seat brings a grant for the follow-ups / the period (PRICE-TASK-02, PRICE-SEAT-05).
        await self._keep_grant(paid.headers.get(GRANT_HEADER), quote.challenge.realm, first.url)
        await self._event("receipt", challengeId=quote.challenge.id, reference=paid.receipt.reference,
                          amount=quote.request.amount, currency=quote.request.currency, realm=quote.challenge.realm,
                          agent=paid.claims.get("agent"), principal=paid.claims.get("principal"), mandate=paid.claims.get("mandate"),
                          approval=paid.claims.get("approval"), decision=paid.claims.get("decision"), resource=paid.claims.get("resource"))
        return paid

    # -- sessions ------------------------------------------------------------------------

    async def _open_session(self, method: str, first: PaidResponse, offer: SessionOffer, data: bytes | None,
                            headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        """Open a session on the request that got the 402: cap, its signature and voucher 1 in one credential."""
        manager = self._manager
        assert manager is not None
        challenge, request = offer.challenge, offer.request
        sid = challenge.id
        now = self.clock()
        await self._event("quote-seen", challengeId=sid, amount=request.amount, currency=request.currency, realm=challenge.realm,
                          accepted=True, intent=SESSION_INTENT, per=str(request.per), unitType=request.unitType)
        check_transport(first.url, self.policy)
        cap_limit = manager.policy.max_cap
        budget_links = None
        identity = self.identity
        if identity is not None:
            try:
                chain = identity.chain_for(challenge.realm, now)
                # A session is one purchase of up to its cap: keep the cap within the mandate's ceiling
                # (and its approval threshold, so no approval is needed), if one request still fits.
                for limit in (chain.leaf.ceiling, chain.leaf.approval_threshold):
                    if limit is not None and request.max_request_cost <= limit < cap_limit:
                        cap_limit = limit
                cap = manager.initial_cap(offer, cap_limit)
                as_charge = Quote(challenge, _cap_request(request, cap), offer.method)
                identity.check(as_charge, method, str(URL(first.url).raw_path_qs), now)
                budget_links = identity.budget_links(chain, now)
                await identity.reserve_amount(sid, budget_links, cap, now, ttl=manager.budget_ttl(request, identity))
            except QuoteRejected as exc:
                await self._event("policy-decision", challengeId=sid, decision="deny", rule=exc.rule, reason=exc.detail)
                raise
            await self._event("policy-decision", challengeId=sid, decision="allow", reason="within mandate", agent=chain.agent,
                              principal=chain.principal, mandate=chain.leaf.jti, amount=str(cap), intent=SESSION_INTENT)
        else:
            cap = manager.initial_cap(offer)
        session, payload = await manager.begin(offer, url=first.url, cap=cap, cap_limit=cap_limit, now=now, budget_links=budget_links)
        approval: str | None = None
        try:
            for attempt in range(2):
                extensions: dict[str, Any] = {}
                if identity is not None:
                    extensions["identity"] = identity_member(identity.mandates, identity.key, challenge, request, approval)
                credential = format_credential(Credential(challenge=challenge, payload=payload.as_json(),
                                                          source=session.key.did, extensions=extensions))
                await self._event("authorization-signed", challengeId=sid, intent=SESSION_INTENT, cap=str(cap))
                try:
                    paid = await self._send(method, first.url, credential, data, headers, sid, keep_open)
                except OutcomeUnknown:
                    manager.add(session)  # it may be open: the next request's voucher finds out
                    raise
                if paid.status >= 400:
                    problem = _problem_of(paid)
                    await self._event("refusal", challengeId=sid, status=paid.status, problem=problem.get("type"))
                    exc = PaymentFailed(f"seller refused the session open: HTTP {paid.status} {problem.get('type', '')}".strip(),
                                        paid.status, problem)
                    approval = await self._approval(exc, sid) if attempt == 0 else None
                    if approval:
                        continue
                    raise exc
                break
        except (PaymentFailed, QuoteRejected):
            if identity is not None:
                await identity.release(sid)
            raise
        replaced = manager.add(session)
        await self._event("session-open", sessionId=sid, realm=challenge.realm, cap=str(cap), cumulative=str(session.voucher.cumulative),
                          unitPrice=request.amount, per=str(request.per), unitType=request.unitType, currency=request.currency,
                          recipient=request.recipient)
        if replaced is not None:
            await self._close_quietly(replaced)
        return await self._session_answer(session, paid, None)

    async def _use_session(self, session: OpenSession, method: str, url: str, data: bytes | None,
                           headers: Mapping[str, str] | None, keep_open: bool, *, required: int | None = None,
                           problem: dict[str, Any] | None = None) -> PaidResponse:
        """A request on an open session: a voucher (or topUp) on the first try, no 402 first."""
        manager = self._manager
        assert manager is not None
        check_transport(url, self.policy)
        plan = await manager.plan(session, self.clock(), required=required, identity=self.identity)
        if plan is None:
            if problem is not None and required is not None and required - session.spent > session.cap_limit:
                # The seller wants more for this request than any session of ours may hold.
                raise PaymentFailed(f"seller wants {required} on the session, beyond what we let it hold", 402, problem)
            # Used up and no top-up allowed: close it; the request goes unpaid and its 402 opens another.
            manager.retire(session)
            await self._close_if_idle(session)
            return await self._request(method, url, data, headers, keep_open)
        hdrs = {"Accept-Payment": self.accept_payment, **(headers or {})}
        accepted = False
        try:
            paid = await self._send(method, url, manager.credential(session, plan), data, hdrs, session.id, keep_open)
            accepted = paid.status < 400
        finally:
            manager.done(session, plan, accepted=accepted)
        try:
            if accepted:
                return await self._session_answer(session, paid, plan)
            return await self._session_refused(session, paid, method, url, data, headers, keep_open, retried=required is not None)
        finally:
            await self._close_if_idle(session)

    async def _session_answer(self, session: OpenSession, paid: PaidResponse, plan: SessionPlan | None) -> PaidResponse:
        """A 2xx on a session: verify its receipt (a stream's comes at its end) and learn what is spent."""
        paid.session = session.id
        header = paid.headers.get("Payment-Receipt")
        if header is None and (paid.stream is not None or plan is not None):
            # A stream's receipt comes as its last event; a route that is not metered gives none.
            return paid
        try:
            jwks = await self._seller_jwks(session.url)
            paid.receipt, paid.claims = verify_session_receipt(header, session, jwks, self.clock())
        except BaseException:
            _close_stream(paid)
            if plan is None:  # the open itself: keep the session only to close it
                self._manager.retire(session)  # type: ignore[union-attr]
            raise
        self._manager.observe(session, paid.claims)  # type: ignore[union-attr]
        await self._event("receipt", challengeId=session.id, reference=paid.receipt.reference, amount=str(paid.claims.get("amount")),
                          currency=session.terms.currency, realm=session.realm, intent=SESSION_INTENT,
                          spent=str(paid.claims.get("spent")), resource=paid.claims.get("resource"))
        return paid

    async def _session_refused(self, session: OpenSession, paid: PaidResponse, method: str, url: str, data: bytes | None,
                               headers: Mapping[str, str] | None, keep_open: bool, *, retried: bool) -> PaidResponse:
        manager = self._manager
        assert manager is not None
        problem = _problem_of(paid)
        kind = str(problem.get("type", ""))
        await self._event("refusal", challengeId=session.id, status=paid.status, problem=kind or None)
        if paid.status == 402 and kind == _INSUFFICIENT and not retried:
            # Nothing was served or charged: a higher voucher (or a top-up), and this request once more.
            manager.observe(session, problem)
            required = problem_amount(problem, "required")
            if required is None:
                required = session.spent + session.max_request_cost
            return await self._use_session(session, method, url, data, headers, keep_open, required=required, problem=problem)
        if paid.status == 402 and kind in _GONE:
            # The seller closed the session (idle) or never knew it: the 402 carries fresh challenges.
            await self._drop(session, closed=kind == _GONE[0])
            return await self._answer(method, paid, self._challenges_of(paid, [paid.url], url), data, headers, keep_open)
        if paid.status == 402 and not kind.startswith(_SESSION_PROBLEMS):
            # Not a session route (a charge-priced one, say): pay its fresh challenges the usual way.
            return await self._answer(method, paid, self._challenges_of(paid, [paid.url], url), data, headers, keep_open)
        if kind.startswith(_SESSION_PROBLEMS):
            manager.retire(session)  # our vouchers are not accepted there any more: do not keep trying
        raise PaymentFailed(f"seller refused the session voucher: HTTP {paid.status} {kind}".strip(), paid.status, problem)

    async def _drop(self, session: OpenSession, *, closed: bool) -> None:
        """Forget a session the seller no longer serves; for one it closed, fetch its final receipt."""
        manager = self._manager
        assert manager is not None
        manager.retire(session)
        if closed and session.inflight == 0:
            await self._close_quietly(session)
            if session.closed:
                return
        manager.forget(session)
        # Unknown how much was captured: count the most it could be against our budget.
        if self.identity is not None and session.budget_links is not None:
            await self.identity.settle(session.id, session.voucher.cumulative)

    async def _close_if_idle(self, session: OpenSession) -> None:
        if session.retired and not session.closed and session.inflight == 0:
            await self._close_quietly(session)

    async def _close_quietly(self, session: OpenSession) -> None:
        try:
            await self._close_session(session)
        except (BuyerError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("closing session %s failed: %s", clip(session.id), clip(exc, DETAIL_MAX))

    async def _post_session(self, session: OpenSession, authorization: str) -> PaidResponse:
        # A final receipt lists every usage line, in its Payment-Receipt header too: it can
        # outgrow aiohttp's 8 KiB default for one header field.
        # SESSION-CLOSE-07: the credential and nothing else: an empty body, and no Content-Type (which
        # aiohttp would otherwise add to a POST as application/octet-stream).
        return await self._send("POST", session.session_url, authorization, None, {"Accept-Payment": self.accept_payment},
                                session.id, skip_auto_headers=("Content-Type",),
                                max_field_size=FINAL_RECEIPT_LIMIT, max_line_size=FINAL_RECEIPT_LIMIT)

    async def _close_session(self, session: OpenSession) -> dict[str, Any] | None:
        """POST close with the latest voucher; verify the final receipt; settle our budget."""
        manager = self._manager
        assert manager is not None
        async with session.lock:
            if session.closed:
                return None
            manager.retire(session)
            credential = manager.close_credential(session)
        paid = await self._post_session(session, credential)
        # 409: a request of the session is still running at the seller (or was, in a seller process
        # that died: its reservation stops counting within seconds). Closing is idempotent: try again.
        deadline = asyncio.get_running_loop().time() + CLOSE_RETRY_SECONDS
        while paid.status == 409 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
            paid = await self._post_session(session, credential)
        problem = _problem_of(paid)
        if paid.status != 200:
            if paid.status == 402 and problem.get("type") == _GONE[1]:
                manager.forget(session)  # the seller does not know it: nothing held, nothing to capture
                if self.identity is not None and session.budget_links is not None:
                    await self.identity.settle(session.id, session.voucher.cumulative)
                return None
            await self._event("refusal", challengeId=session.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(f"seller refused the session close: HTTP {paid.status} {problem.get('type', '')}".strip(),
                                paid.status, problem)
        header = paid.headers.get("Payment-Receipt") or problem.get("receipt")
        jwks = await self._seller_jwks(session.url)
        _, claims = verify_session_receipt(header, session, jwks, self.clock(), final=True)
        manager.observe(session, claims)
        manager.forget(session)
        captured = int(str(claims["captured"]))
        if self.identity is not None and session.budget_links is not None:
            await self.identity.settle(session.id, captured)
        await self._event("session-close", sessionId=session.id, realm=session.realm, captured=str(captured),
                          released=str(claims.get("released")), cap=str(session.cap), reference=claims.get("settlementRef"))
        return claims

    async def close_sessions(self) -> list[dict[str, Any]]:
        """Close every open session; return the final receipts' claims.

        Every session is tried; if any close fails, the first error is raised after the others
        (its budget reservation is kept: the seller's idle close may still capture).
        """
        if self._manager is None:
            return []
        finals: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        for session in self._manager.sessions():
            try:
                claims = await self._close_session(session)
            except (BuyerError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("closing session %s failed: %s", clip(session.id), clip(exc, DETAIL_MAX))
                errors.append(exc)
                continue
            if claims is not None:
                finals.append(claims)
        if errors:
            raise errors[0]
        return finals

    async def _in_band_voucher(self, session: OpenSession, required: int | None) -> None:
        """A running stream asks for more: POST a higher voucher (or a top-up) to the session endpoint."""
        manager = self._manager
        assert manager is not None
        plan = await manager.plan(session, self.clock(), required=required, identity=self.identity, in_flight=False)
        if plan is None:
            raise PaymentFailed("the stream needs more than this session may hold", 402, {"sessionId": session.id})
        accepted = False
        try:
            paid = await self._post_session(session, manager.credential(session, plan))
            accepted = paid.status == 200
        finally:
            manager.done(session, plan, accepted=accepted, in_flight=False)
        problem = _problem_of(paid)
        if not accepted:
            await self._event("refusal", challengeId=session.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(f"seller refused the in-band voucher: HTTP {paid.status} {problem.get('type', '')}".strip(),
                                paid.status, problem)
        # What the seller says here is unsigned: it may only confirm, never raise, what we believe.
        authorized = problem_amount(problem, "authorized")
        if authorized is not None and authorized <= session.voucher.cumulative:
            session.authorized = max(session.authorized, authorized)

    async def _seller_jwks(self, url: str) -> Mapping[str, Any]:
        origin = origin_of(url)
        cached = self._jwks.get(origin)
        if cached is not None:
            return cached
        scheme, host, port = origin
        jwks_url = f"{scheme}://{host}:{port}{JWKS_PATH}" if ":" not in host else f"{scheme}://[{host}]:{port}{JWKS_PATH}"
        try:
            async with self.session.get(jwks_url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ReceiptInvalid(f"seller JWKS answered HTTP {resp.status}")
                jwks = loads_strict(await resp.read(), "seller JWKS")
        except (aiohttp.ClientError, ValueError) as exc:
            raise ReceiptInvalid(f"could not fetch the seller's JWKS: {exc}") from exc
        if not isinstance(jwks, dict):
            raise ReceiptInvalid("seller JWKS is not a JSON object")
        self._jwks[origin] = jwks
        return jwks


class PaidStream:
    """A paid server-sent-event stream; see :meth:`PaymentClient.stream`.

    ``response`` is the paid response (its body is empty while the stream runs; a response that
    is not an event stream is read whole and yields no events). ``receipt``/``claims`` hold the
    receipt from the stream's ``payment-receipt`` event (or, for a charge, its header).
    """

    def __init__(self, client: PaymentClient, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None) -> None:
        self._client, self._method, self._url, self._data, self._headers = client, method, url, data, headers
        self.response: PaidResponse | None = None
        self.receipt: PaymentReceipt | None = None
        self.claims: dict[str, Any] | None = None
        self._iterator: AsyncIterator[SSEEvent] | None = None

    async def start(self) -> PaidResponse:
        if self.response is None:
            self.response = await self._client._request(self._method, self._url, self._data, self._headers, keep_open=True)
            self.receipt, self.claims = self.response.receipt, self.response.claims
        return self.response

    async def __aenter__(self) -> "PaidStream":
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        if self.response is not None:
            _close_stream(self.response)

    def __aiter__(self) -> AsyncIterator[SSEEvent]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def _events(self) -> AsyncIterator[SSEEvent]:
        client = self._client
        paid = await self.start()
        resp = paid.stream
        if resp is None:
            return
        session = client._manager.by_id(paid.session) if (client._manager is not None and paid.session) else None
        final = False
        stopped: dict[str, Any] | None = None
        try:
            async for event in parse_sse(resp.content):
                if not event.event.startswith("payment-"):
                    yield event
                    continue
                if session is None:
                    continue  # not a session stream: payment events mean nothing to us
                if event.event == "payment-required":
                    doc = _json_object(event.data)
                    client._manager.observe(session, {k: v for k, v in doc.items() if k in ("spent", "cap")})  # type: ignore[union-attr]
                    await client._in_band_voucher(session, problem_amount(doc, "required"))
                elif event.event == "payment-receipt":
                    doc = _json_object(event.data)
                    jwks = await client._seller_jwks(session.url)
                    self.receipt, self.claims = verify_session_receipt(doc.get("receipt"), session, jwks, client.clock())
                    client._manager.observe(session, self.claims)  # type: ignore[union-attr]
                    paid.receipt, paid.claims = self.receipt, self.claims
                    final = True
                elif event.event == "payment-timeout":
                    stopped = _json_object(event.data)  # the receipt for what was sent still follows
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OutcomeUnknown(f"stream broke off: {exc}", paid.session or "") from exc
        finally:
            _close_stream(paid)
        if session is not None and not final:
            raise ReceiptInvalid("the stream ended without a payment-receipt event")
        if stopped is not None:
            raise PaymentFailed("the seller stopped the stream waiting for a voucher", 402, stopped)


def _cap_request(request: Any, cap: int) -> ChargeRequest:
    """The session as one purchase of ``cap``, for the mandate checks and the budget."""
    return ChargeRequest(amount=str(cap), currency=request.currency, recipient=request.recipient, methodDetails=request.methodDetails)


async def _capture(resp: aiohttp.ClientResponse, keep_open: bool) -> PaidResponse:
    """Read the response whole, or keep a 2xx event stream open for the caller."""
    try:
        if keep_open and 200 <= resp.status < 300 and resp.content_type == "text/event-stream":
            return PaidResponse(resp.status, resp.headers, b"", str(resp.url), stream=resp)
        body = await resp.read()
    except BaseException:
        resp.close()
        raise
    resp.release()
    return PaidResponse(resp.status, resp.headers, body, str(resp.url))


def _close_stream(paid: PaidResponse) -> None:
    if paid.stream is not None:
        paid.stream.close()
        paid.stream = None


def _json_object(text: str | bytes) -> dict[str, Any]:
    """A JSON object the seller sent (problem document, payment event), strictly; {} otherwise."""
    try:
        doc = loads_strict(text, "seller's document")
    except ParseError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def _maybe_await(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value


class CredentialResendBlocked(aiohttp.ClientError):
    """aiohttp wanted to send the credential a second time; we do not."""


def _send_once():
    sent = False

    async def middleware(request: aiohttp.ClientRequest, handler):
        nonlocal sent
        if sent:
            raise CredentialResendBlocked("connection dropped after the credential was sent")
        sent = True
        return await handler(request)

    return middleware


def _problem_of(resp: PaidResponse) -> dict[str, Any]:
    return _json_object(resp.body)
