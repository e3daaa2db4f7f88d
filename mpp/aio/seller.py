"""The seller: an aiohttp middleware that prices routes, answers 402s and settles credentials.

    seller = Seller(realm="api.example.com", secret=..., receipt_key=..., rails=[rail], store=store)

    @seller.price(amount=100, currency="usd", description="one forecast")
    async def forecast(request): ...

    app = web.Application()
    app.router.add_get("/forecast", forecast)
    seller.setup(app)

Order of work for a credential: offline checks (core) -> consume the challenge (store,
exactly once) -> settle (rail, idempotent by challenge id) -> run the handler -> receipt.
A handler that fails after settlement gets the payment refunded.

Prices may also come from a price list (spec/pricing.md): ``Seller(price_list=load_price_list(...))``
prices every route the list names, one challenge per offer; ``reload_prices`` swaps the list
while the seller runs. A task offer's handler names its task with ``await start_task(request,
task_id)`` and finishes it with ``seller.finish_task``; follow-ups and seat-covered routes are
served to a valid grant and proof (``Payment-Grant``, ``Payment-Grant-Proof``) without payment.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Collection, Iterable, Sequence

from aiohttp import web
from multidict import CIMultiDict

from mpp.stores.audit import AsyncAuditLog, AsyncSqliteAuditLog, AuditLog
from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.errors import (
    RESOURCE_MAX,
    BadRequest,
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    ParseError,
    PaymentExpired,
    PaymentProblem,
    PaymentRequired,
    RequestInProgress,
    clip,
)
from mpp.protocol.headers import format_receipt, idempotency_key, parse_credential
from mpp.identity import (
    DEFAULT_MAX_DEPTH,
    ApprovalInvalid,
    MandateChain,
    MandateRevoked,
    PolicyDecision,
    evaluate_policy,
    period_key,
    verify_approval,
    verify_identity,
)
from mpp.ledger import MandateCharge
from mpp.pricing import (
    GRANT_HEADER,
    GRANT_PROOF_HEADER,
    SUBSCRIPTION_ID_HEADER,
    GrantProofInvalid,
    GrantRequired,
    PriceList,
    PriceListError,
    PricingProblem,
    Route,
    SeatAlreadyPaid,
    SeatOffer,
    SeenGrantProofs,
    TaskOffer,
    UnitOffer,
    check_offer_allowed,
    check_reload,
    issue_grant,
    load_price_list,
    parse_grant_proof,
    quoted_offer,
    seat_grant_claims,
    task_grant_claims,
    verify_grant,
    verify_grant_proof,
)
from mpp.engine.quotes import QuotedTerms, quoted_terms, route_challenges, route_payment_info, seat_subscription
from mpp.stores.pricing import PricingStore, TaskRecord
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import jwks_document, sign_receipt
from mpp.engine.core import RequestInfo, SellerCore, SessionCall, Verified
from mpp.pricing.prices import Metered, Price
from mpp.protocol.challenge import resource_of
from mpp.intents.session import INTENT as SESSION_INTENT
from mpp.intents.session import VoucherInvalid
from mpp.stores.sessions import SessionStore
from mpp.stores.payments import PaymentStore, StateError, StoredResponse
from mpp.aio.attribution import attributed, mark_attributed, start_request
from mpp.aio.metering import METER_KEY, SESSION_PATH, ChargeMeter, SessionDesk, meter_of
from mpp.aio.rails import PaymentRail, Settlement
from mpp.protocol.wire import decode_jws

__all__ = ["Seller", "Payment", "TaskControl", "SELLER_KEY", "PAYMENT_KEY", "payment_of", "meter_of", "start_task",
           "task_of", "grant_of", "JWKS_PATH", "OPENAPI_PATH", "SESSION_PATH"]

log = logging.getLogger("mpp.seller")

JWKS_PATH = "/.well-known/jwks.json"
OPENAPI_PATH = "/openapi.json"
_PRICE_ATTR = "__mpp_price__"
_REPLAY_HEADERS = ("Content-Type", "Content-Language", "Location", "ETag")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Payment:
    """What a paid handler can know about the payment that let it run."""

    verified: Verified
    settlement: Settlement
    claims: dict[str, Any]
    receipt_header: str
    refunded: bool = False
    terms: QuotedTerms | None = None  # what the quote priced, when it came from a price list
    grant: str | None = None  # the task or seat grant this purchase bought (PRICE-TASK-02, PRICE-SEAT-05)
    task_id: str | None = None
    recorded: bool = True  # the settlement is in the payment store (a task's once its handler names it)
    seat: tuple[str, int] | None = None  # (subscription id, period) recorded for this purchase

    @property
    def payer(self) -> str | None:
        return self.settlement.payer

    @property
    def source(self) -> str | None:
        return self.verified.credential.source


def payment_of(request: web.Request) -> Payment | None:
    return request.get(PAYMENT_KEY)


class TaskControl:
    """A handler's hold on one task (PRICE-TASK-02, -04): finish it, mark its result delivered."""

    def __init__(self, seller: "Seller", task_id: str) -> None:
        self.seller, self.task_id = seller, task_id

    async def record(self) -> TaskRecord | None:
        return await self.seller.task(self.task_id)

    async def succeed(self) -> bool:
        return await self.seller.finish_task(self.task_id, ok=True)

    async def fail(self, detail: str | None = None) -> bool:
        return await self.seller.finish_task(self.task_id, ok=False, detail=detail)

    async def delivered(self) -> bool:
        return await self.seller.task_delivered(self.task_id)


async def start_task(request: web.Request, task_id: str) -> TaskControl:
    """Name the task the paid request started (PRICE-TASK-02). Call it from the handler of a
    task offer's route, before the response is prepared: the response then carries the task
    grant, and the receipt the task id. ValueError for an invalid or already used id."""
    payment = payment_of(request)
    if payment is None or payment.terms is None or payment.terms.model != "task":
        raise RuntimeError("start_task is for the handler of a route bought with a task offer")
    return await request.app[SELLER_KEY]._start_task(payment, task_id)


def task_of(request: web.Request) -> TaskControl | None:
    """In a follow-up's handler: the task of the path, its grant verified."""
    return request.get(TASK_KEY)


def grant_of(request: web.Request) -> Any:
    """The verified grant (mpp.pricing.Grant) a request was served on without payment, if any."""
    return request.get(GRANT_KEY)


@dataclass
class Seller:
    realm: str
    secret: bytes
    receipt_key: SigningKey
    rails: Sequence[PaymentRail]
    store: PaymentStore
    challenge_ttl: timedelta = timedelta(minutes=5)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    title: str = "MPP seller"
    previous_receipt_keys: Sequence[SigningKey] = ()
    trusted_principals: Collection[str] = ()  # root mandate issuers this seller accepts
    max_chain_depth: int = DEFAULT_MAX_DEPTH
    audit: AsyncAuditLog | AuditLog | None = None  # any engine (mpp.connect.audit_log_for), or a SQLite AuditLog
    session_store: SessionStore | None = None  # required by metered (per-unit) routes
    session_sweep_interval: float = 1.0  # how often idle sessions are looked for and closed
    price_list: PriceList | None = None  # spec/pricing.md: prices as data; replace it with reload_prices
    pricing_store: PricingStore | None = None  # task states and paid seat periods: required by task and seat offers

    def __post_init__(self) -> None:
        if isinstance(self.audit, AuditLog):
            self.audit = AsyncSqliteAuditLog(self.audit)  # used through the one async interface; the caller closes it
        self.issuer = ChallengeIssuer(self.secret, self.realm, ttl=self.challenge_ttl)
        self.secret = b""  # held by the issuer only, so it is never printed with the seller
        self._rails = {rail.name: rail for rail in self.rails}
        for rail in self.rails:
            if hasattr(rail, "check_realm"):
                rail.check_realm(self.realm)
        self.core = SellerCore(self.issuer, self._rails)
        self._route_prices: dict[int, Price | Metered] = {}
        self.sessions = SessionDesk(self, self.session_store, sweep_interval=self.session_sweep_interval) if self.session_store else None
        self._lists: list[PriceList] = []  # every list served since start: their follow-ups stay guarded (PRICE-VER-03)
        self._proofs_seen = SeenGrantProofs()  # grant proofs accepted, until they age out (PRICE-GRANT-06)
        if self.price_list is not None:
            self._check_list(self.price_list)
            self._lists.append(self.price_list)

    def __repr__(self) -> str:
        return f"Seller(realm={self.realm!r}, rails={list(self._rails)!r})"

    # -- pricing -----------------------------------------------------------

    def reload_prices(self, text: str, source: str) -> PriceList:
        """Replace the price list while serving (PRICE-VER-02). A list that does not load, or has
        the running version with other content, raises PriceListError (``source:LINE: problem``)
        and the running list stays. Quotes and grants of earlier lists stay good (PRICE-VER-03)."""
        new = load_price_list(text, source=source)
        if self.price_list is not None:
            check_reload(self.price_list, new)
        self._check_list(new)
        self.price_list = new  # one assignment: a request sees the old list or the new one, never a mix
        if all(known.version != new.version for known in self._lists):
            self._lists.append(new)
        log.info("price list %s loaded from %s", new.version, source)
        return new

    def load_prices(self, path: str) -> PriceList:
        """``reload_prices`` from a file; an unreadable file is a PriceListError naming it."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceListError(str(path), [(1, f"cannot read the price list: {exc}")]) from None
        return self.reload_prices(text, str(path))

    def _check_list(self, plist: PriceList) -> None:
        needs = {o.model for r in plist.routes for o in r.offers}
        if needs & {"task", "seat"} and self.pricing_store is None:
            raise PriceListError(plist.source, [(1, "task and seat offers need a pricing store: "
                                                    "Seller(pricing_store=SqlitePricingStore(...))")])
        if "unit" in needs and self.session_store is None:
            raise PriceListError(plist.source, [(1, "unit offers need a session store: "
                                                    "Seller(session_store=SqliteSessionStore(...))")])

    def price(self, amount: int, currency: str, description: str | None = None, *, require_identity: bool = False) -> Callable[[Handler], Handler]:
        """Decorator: this handler costs ``amount`` base units of ``currency`` per request;
        with ``require_identity`` only agents presenting a mandate chain may buy it."""
        price = Price(amount, currency, description, require_identity)

        def mark(handler: Handler) -> Handler:
            setattr(handler, _PRICE_ATTR, price)
            return handler

        return mark

    def meter(self, unit: str, price: int, currency: str, *, per: int = 1, max_units: int = 1, description: str | None = None,
              require_identity: bool = False, stream: bool = False, suggested_cap: int | None = None,
              idle_timeout: int = 300, charge_amount: int | None = None) -> Callable[[Handler], Handler]:
        """Decorator: this handler is priced per unit (``price`` base units per ``per`` units of
        ``unit``), paid through a session; a per-request ``charge`` is offered beside it."""
        metered = Metered(unit, price, currency, per, max_units, description, require_identity, stream, suggested_cap,
                          idle_timeout, charge_amount)

        def mark(handler: Handler) -> Handler:
            setattr(handler, _PRICE_ATTR, metered)
            return handler

        return mark

    def add_route(self, router: web.UrlDispatcher, method: str, path: str, handler: Handler, price: Price | Metered | None) -> web.AbstractRoute:
        """Route-table style: register a route and its price (``None`` for a free route)."""
        route = router.add_route(method, path, handler)
        if price is not None:
            self._route_prices[id(route)] = price
        return route

    def price_for(self, request: web.Request) -> Price | Metered | None:
        route = request.match_info.route
        price = self._route_prices.get(id(route))
        if price is None:
            price = getattr(request.match_info.handler, _PRICE_ATTR, None)
        return price

    # -- wiring ------------------------------------------------------------

    def setup(self, app: web.Application) -> None:
        app[SELLER_KEY] = self
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self._on_response_prepare)
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        if self.sessions is not None:
            app.router.add_post(SESSION_PATH, self.sessions.endpoint)
            app.cleanup_ctx.append(self.sessions.sweeper)
        app.on_startup.append(self._check_metered_routes)
        app.on_startup.append(self._startup_refunds)

        async def _close_store(app: web.Application):
            yield
            await self.store.close()

        app.cleanup_ctx.append(_close_store)

    async def _check_metered_routes(self, app: web.Application) -> None:
        if self.sessions is None and any(isinstance(p, Metered) for _, _, p in self.priced_routes(app)):
            raise RuntimeError("metered routes need a session store: Seller(session_store=SqliteSessionStore(...))")

    def _session_call(self, info: RequestInfo, now: datetime) -> SessionCall | None:
        """The request's credential if it is for the session intent (checked statelessly), else None."""
        header = self.core.payment_credential(info)
        if header is None:
            return None
        try:
            credential = parse_credential(header)
        except ParseError as exc:
            raise MalformedCredential(f"credential is malformed: {exc}") from None
        if credential.challenge.intent != SESSION_INTENT:
            return None
        return self.core.verify_session(credential, info, now)

    async def _metered(self, request: web.Request, handler: Handler, metered: Metered,
                       route: Route | None = None) -> web.StreamResponse:
        body = await request.read()
        info = RequestInfo(method=request.method, path=request.rel_url.raw_path, query=request.rel_url.raw_query_string,
                           body=body, accept_payment=request.headers.get("Accept-Payment"),
                           authorization=tuple(request.headers.getall("Authorization", ())),
                           subscription=_subscription_header(request))
        now = self.clock()
        call = None
        try:
            call = self._session_call(info, now)
            if call is not None:
                if self.sessions is None:
                    raise MethodUnsupported("this seller keeps no sessions")
                if (call.terms.currency, call.terms.recipient) != (metered.currency, call.request.recipient):
                    raise VoucherInvalid("the session is in another currency than this route")
                return await self.sessions.serve(request, handler, call, metered, info)
        except PaymentProblem as problem:
            await self._refused(problem, info, now, call.session_id if call else None, intent="session")
            return self._problem(problem, route or metered, info, now)
        request[METER_KEY] = ChargeMeter(metered, info.resource)
        return await self._charge(request, handler, metered, info, now, route)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start_request()
        plist = self.price_list
        if plist is not None and request.match_info.http_exception is None:
            path = request.rel_url.raw_path
            route = plist.route_for(request.method, path)
            if route is not None:
                return await self._listed(request, handler, route)
            follow_up = self._follow_up(request.method, path)
            if follow_up is not None:
                return await self._serve_granted(request, handler, task_id=follow_up[1])
        price = self.price_for(request)
        if price is None:
            return await handler(request)
        if isinstance(price, Metered):
            return await self._metered(request, handler, price)
        body = await request.read()
        info = RequestInfo(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            body=body,
            accept_payment=request.headers.get("Accept-Payment"),
            authorization=tuple(request.headers.getall("Authorization", ())),
        )
        return await self._charge(request, handler, price, info, self.clock())

    async def _charge(self, request: web.Request, handler: Handler, price: Price | Metered, info: RequestInfo,
                      now: datetime, route: Route | None = None) -> web.StreamResponse:
        verified: Verified | None = None
        try:
            header = self.core.payment_credential(info)
            if header is None:
                raise PaymentRequired("this resource requires payment")
            verified = self.core.verify(header, info, now)
            challenge = verified.credential.challenge
            terms = quoted_terms(challenge, challenge.request_json, route.route if route else resource_of(info.method, info.path))
            if terms.model in ("task", "seat") and self.pricing_store is None:
                raise InvalidChallenge(f"this seller keeps no {terms.model} records")
            require_identity = route.require_identity if route is not None else price.require_identity
            identity = None
            if require_identity or verified.credential.extra_member("identity") is not None:
                identity = await self._check_identity(verified, price, now)
            # LEDGER-ACCT-05: a payer the rail would refuse is told so before the challenge is consumed
            precheck = getattr(self._rails[challenge.method], "precheck", None)  # a rail written before it had one: none
            if precheck is not None:
                await precheck(verified, identity.chain.dids if identity else None)
            mark_attributed()
        except PaymentProblem as problem:
            await self._refused(problem, info, now, verified.challenge_id if verified else None,
                                agent=verified.credential.source if verified else None)
            return self._problem(problem, route or price, info, now)
        return await self._settle_and_serve(request, handler, verified, price, info, now, identity, route, terms)

    async def _check_identity(self, verified: Verified, price: Price, now: datetime) -> "IdentityContext":
        """Chain, proof, revocation, approval and entitlements, all before the challenge is consumed,
        so a buyer told to get an approval can come back with the same challenge."""
        rail = self._rails[verified.credential.challenge.method]
        vid = verify_identity(
            verified.credential,
            verified.request,
            payment_signer=getattr(verified.proof, "signer", None),
            trusted_principals=self.trusted_principals,
            realm=self.realm,
            now=now,
            max_depth=self.max_chain_depth,
        )
        chain = vid.chain
        mark_attributed()  # a chain rooted in a principal we trust: what is refused from here on is audited
        if await rail.revoked(chain.keys):
            raise MandateRevoked("a mandate in the chain has been revoked")
        periods = {link.key: period_key(link.budget_period, now) for link in chain.links}
        approval = None
        if vid.approval_token is not None:
            approval = verify_approval(vid.approval_token, chain=chain, challenge=verified.credential.challenge,
                                       request=verified.request, now=now)
            if await self.store.approval_used(f"{approval.iss}#{approval.jti}"):
                raise ApprovalInvalid("approval has already been used")
        spent = await self.store.mandate_spent(periods)
        if self.sessions is not None:  # what this seller's sessions under each link hold or took counts too
            held = await self.sessions.store.mandates.held(periods)
            spent = {key: spent.get(key, 0) + held.get(key, 0) for key in periods}
        decision = evaluate_policy(chain, verified.credential.challenge, verified.request, verified.resource,
                                   spent=spent, approval=approval)
        challenge = verified.credential.challenge
        # PRICE-MDT-02: the offer quoted, judged as the buyer judges it, before the challenge is consumed
        check_offer_allowed(quoted_offer(challenge.request_json, challenge.intent), chain.restrictions)
        await self._audit("policy-decision", decision=decision.decision, reason=decision.reason, challengeId=verified.challenge_id,
                          agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti, resource=verified.resource,
                          amount=verified.request.amount, currency=verified.request.currency, realm=self.realm)
        charge = MandateCharge(tuple(chain.tokens), self.realm)
        return IdentityContext(chain, decision, charge, approval, periods)

    async def _audit(self, kind: str, **data: Any) -> None:
        if self.audit is not None:  # text may come from the request: bounded, no controls (CORE-ERR-12, IDENT-AUD-08)
            await self.audit.append(kind, {k: clip(v, RESOURCE_MAX) if isinstance(v, str) else v
                                           for k, v in data.items() if v is not None})

    async def _refused(self, problem: PaymentProblem, info: RequestInfo, now: datetime, minted: str | None = None,
                       **data: Any) -> None:
        """Note a refused request. Only a credential echoing a challenge this seller minted, from a
        requester who has shown who it is (mpp.aio.attribution), is audited; anything else is a
        stranger's and writes nothing (CORE-ONCE-09, IDENT-AUD-08), only a bounded log line."""
        minted = minted or self.core.minted_id(info, now)
        audited = minted is not None and attributed()
        log.log(logging.INFO if audited else logging.DEBUG, "refused %s: %s challenge=%s",
                clip(info.resource, RESOURCE_MAX), problem.slug, minted or "none of ours")
        if audited:
            await self._audit("refusal", problem=problem.slug, resource=info.resource, detail=problem.detail,
                              challengeId=minted, realm=self.realm, **data)

    async def _settle_and_serve(
        self,
        request: web.Request,
        handler: Handler,
        verified: Verified,
        price: Price,
        info: RequestInfo,
        now: datetime,
        identity: "IdentityContext | None" = None,
        route: Route | None = None,
        terms: QuotedTerms | None = None,
    ) -> web.StreamResponse:
        cid = verified.challenge_id
        quoting = route or price
        try:
            idem = idempotency_key(request.headers.getall("Idempotency-Key", ()))
        except BadRequest as problem:
            return self._problem(problem, quoting, info, now)
        seat = None
        if terms is not None and terms.model == "seat":
            try:
                seat = await self._reserve_seat(verified, terms, now)
            except PaymentProblem as problem:
                await self._audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource,
                                  detail=problem.detail, realm=self.realm)
                return self._problem(problem, quoting, info, now)
        if not await self.store.claim(cid, resource=verified.resource, idempotency_key=idem):
            if seat is not None:
                await self.pricing_store.release_seat(seat[0], seat[1], cid)  # type: ignore[union-attr]
            return await self._already_claimed(cid, idem, quoting, info, now)
        rail = self._rails[verified.credential.challenge.method]
        try:
            settlement = await rail.settle(verified, identity.charge if identity else None)
        except PaymentProblem as problem:
            if seat is not None:  # PRICE-SEAT-03: a period that was not paid is not recorded
                await self.pricing_store.release_seat(seat[0], seat[1], cid)  # type: ignore[union-attr]
            await self.store.mark(cid, "failed", failure=problem.slug)
            log.info("settlement refused challenge=%s problem=%s", cid, problem.slug)
            await self._audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource, detail=problem.detail)
            return self._problem(problem, quoting, info, now)
        claims = self.core.receipt_claims(
            verified, reference=settlement.reference, settled_at=settlement.settled_at, account=settlement.payer
        )
        if terms is not None:
            claims |= terms.receipt_claims()  # PRICE-VER-01
        if identity is not None:
            chain = identity.chain
            claims |= {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf.jti, "chain": list(chain.jtis),
                       "approval": identity.decision.approval.jti if identity.decision.approval else None,
                       "decision": identity.decision.decision}
            await self.store.record_mandate_spend(
                cid, list(identity.periods.items()), verified.request.amount_int,
                f"{identity.approval.iss}#{identity.approval.jti}" if identity.approval else None,
            )
        payment = Payment(verified, settlement, claims, "", terms=terms, recorded=False)
        if seat is not None:
            sub, period, start, end = seat
            payment.seat = (sub, period)
            claims |= {"subscriptionId": sub, "plan": terms.offer.plan, "period": period,  # type: ignore[union-attr]
                       "periodStart": format_rfc3339(start), "periodEnd": format_rfc3339(end)}
            payment.grant = self._seat_grant(terms, self._signer(verified), period, cid)
        request[PAYMENT_KEY] = payment
        if terms is None or terms.model != "task":  # a task's receipt waits for its id (start_task)
            await self._record_settled(payment)
        await self._audit("settlement", challengeId=cid, reference=settlement.reference, amount=verified.request.amount,
                          currency=verified.request.currency, resource=verified.resource, realm=self.realm,
                          agent=claims.get("agent", verified.credential.source), principal=claims.get("principal"),
                          mandate=claims.get("mandate"), approval=claims.get("approval"), decision=claims.get("decision"))
        log.info("settled challenge=%s reference=%s amount=%s %s", cid, settlement.reference, verified.request.amount, verified.request.currency)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 or not payment.recorded:
                await self._refund(payment, rail, f"handler raised HTTP {exc.status}" if exc.status >= 400
                                   else "handler named no task")
            else:
                await self.store.mark(cid, "delivered")
            raise
        except BaseException:
            await self._refund(payment, rail, "handler raised")
            raise
        if response.status >= 400:
            await self._refund(payment, rail, f"handler answered {response.status}")
            return response
        if not payment.recorded:  # PRICE-TASK-02: a task handler that names no task has failed
            await self._refund(payment, rail, "handler named no task (start_task)")
            raise web.HTTPInternalServerError(text="the handler started no task (start_task); the payment was refunded")
        try:
            await self.store.mark(cid, "delivered")
        except StateError:
            if payment.task_id is None:
                raise
            # the task failed already, inside its handler, and was refunded (PRICE-TASK-04)
        await self._audit("receipt", challengeId=cid, reference=settlement.reference, status=response.status,
                          agent=claims.get("agent", verified.credential.source), principal=claims.get("principal"))
        if idem is not None and isinstance(response, web.Response) and isinstance(response.body, (bytes, bytearray)):
            kept = [(k, v) for k in _REPLAY_HEADERS for v in response.headers.getall(k, ())]
            await self.store.save_response(cid, StoredResponse(response.status, kept, bytes(response.body)))
        return response

    @staticmethod
    def _signer(verified: Verified) -> str:
        """The paying agent: the payment's signer (what grants are bound to)."""
        return getattr(verified.proof, "signer", None) or verified.credential.source or ""

    async def _record_settled(self, payment: Payment) -> None:
        """Sign the receipt and record the settlement (once)."""
        if payment.recorded:
            return
        verified, settlement = payment.verified, payment.settlement
        rail = self._rails[verified.credential.challenge.method]
        receipt = PaymentReceipt(
            status="success",
            method=rail.name,
            timestamp=format_rfc3339(settlement.settled_at),
            reference=settlement.reference,
            challengeId=verified.challenge_id,
            receipt=sign_receipt(self.receipt_key, payment.claims),
            **({"subscriptionId": payment.claims["subscriptionId"]} if "subscriptionId" in payment.claims else {}),
        )
        payment.receipt_header = format_receipt(receipt)
        await self.store.mark_settled(
            verified.challenge_id,
            payer=settlement.payer or "",
            amount=verified.request.amount,
            currency=verified.request.currency,
            reference=settlement.reference,
            receipt=payment.receipt_header,
        )
        payment.recorded = True

    async def _refund(self, payment: Payment, rail: PaymentRail, why: str) -> None:
        await self._record_settled(payment)
        payment.refunded = True
        cid = payment.verified.challenge_id
        await rail.refund(payment.settlement)
        await self.store.forget_mandate_spend(cid)
        await self.store.mark(cid, "refunded", failure=why)
        if payment.seat is not None and self.pricing_store is not None:  # the period was not bought after all
            await self.pricing_store.release_seat(payment.seat[0], payment.seat[1], cid)
        if payment.task_id is not None and self.pricing_store is not None:
            await self.pricing_store.move_task(payment.task_id, "failed", detail=why)
            await self.pricing_store.move_task(payment.task_id, "refunded")
        await self._audit("refusal", challengeId=cid, problem="refunded", detail=why)
        log.warning("refunded challenge=%s: %s", cid, why)

    # -- price lists: offers, grants, tasks, seats ----------------------------

    async def _listed(self, request: web.Request, handler: Handler, route: Route) -> web.StreamResponse:
        """A request to a route of the price list: served to a grant, or quoted and paid per offer."""
        if GRANT_HEADER in request.headers:  # a seat grant covering this route (PRICE-SEAT-06)
            return await self._serve_granted(request, handler, task_id=None)
        unit = next((o for o in route.offers if isinstance(o, UnitOffer)), None)
        if unit is not None:
            return await self._metered(request, handler, route.price(), route)  # type: ignore[arg-type]
        price = route.offers[0].to_price(require_identity=route.require_identity)
        body = await request.read()
        info = RequestInfo(method=request.method, path=request.rel_url.raw_path, query=request.rel_url.raw_query_string,
                           body=body, accept_payment=request.headers.get("Accept-Payment"),
                           authorization=tuple(request.headers.getall("Authorization", ())),
                           subscription=_subscription_header(request))
        return await self._charge(request, handler, price, info, self.clock(), route)

    def _follow_up(self, method: str, path: str) -> tuple[TaskOffer, str] | None:
        """(task offer, task id) when the request is a follow-up of a task offer of any list this
        seller has served: a grant outlives the list it was bought under (PRICE-VER-03)."""
        for plist in reversed(self._lists):
            found = plist.follow_up_for(method, path)
            if found is not None:
                return found
        return None

    async def _serve_granted(self, request: web.Request, handler: Handler, *, task_id: str | None) -> web.StreamResponse:
        """PRICE-TASK-03, PRICE-SEAT-06, PRICE-GRANT-02..04: a valid grant and proof, no payment, no receipt."""
        body = await request.read()
        info = RequestInfo(method=request.method, path=request.rel_url.raw_path, query=request.rel_url.raw_query_string,
                           body=body)
        now = self.clock()
        try:
            grant = self._verify_grant(request, info, now, task_id)
        except PricingProblem as problem:  # no challenge here, so nothing of ours: nothing written (CORE-ONCE-09)
            log.debug("refused %s: %s", clip(info.resource, RESOURCE_MAX), problem.slug)
            return self._problem(problem, None, info, now)
        request[GRANT_KEY] = grant
        if task_id is not None:
            request[TASK_KEY] = TaskControl(self, task_id)
        return await handler(request)

    def _verify_grant(self, request: web.Request, info: RequestInfo, now: datetime, task_id: str | None) -> Any:
        token = request.headers.get(GRANT_HEADER)
        if token is None:
            raise GrantRequired("this route is served only with a task grant", route=clip(f"{info.method} {info.path}", RESOURCE_MAX))
        proof = None
        try:
            proof = parse_grant_proof(request.headers.get(GRANT_PROOF_HEADER, ""))
        except GrantProofInvalid:
            pass
        agent = proof.agent if proof is not None else _unverified_sub(token)
        grant = verify_grant(token, [self.receipt_key, *self.previous_receipt_keys], realm=self.realm, agent=agent,
                             now=now, task_id=task_id, route=(info.method, info.path))
        if proof is None:
            raise GrantProofInvalid("Payment-Grant-Proof is missing or malformed")
        verify_grant_proof(proof, grant=grant, method=info.method, path=info.path, query=info.query, body=info.body, now=now)
        self._proofs_seen.admit(grant, proof, now)  # every method: each proof carries its own nonce
        return grant

    async def _reserve_seat(self, verified: Verified, terms: QuotedTerms, now: datetime) -> tuple[str, int, datetime, datetime]:
        """PRICE-SEAT-03: record (subscription, period) before anything is consumed or moved."""
        assert self.pricing_store is not None and isinstance(terms.offer, SeatOffer)
        agent = self._signer(verified)
        sub, period, start, end = seat_subscription(self.realm, terms, agent)
        named = (verified.request.model_extra or {}).get("subscriptionId")
        if named is not None and named != sub:
            raise InvalidChallenge("the quote names a subscription that is not this agent's")
        if now >= end:  # PRICE-SEAT-04 (the challenge expired before the period's end already)
            raise PaymentExpired("the period quoted has ended")
        holder = await self.pricing_store.reserve_seat(sub, period, verified.challenge_id)
        if holder is None:
            return sub, period, start, end
        record = await self.store.get(holder)
        if record is None or record.state not in ("settled", "delivered"):
            raise RequestInProgress("another purchase of this period is being settled")
        grant = self._seat_grant(terms, agent, period, holder)
        raise SeatAlreadyPaid(f"period {period} of this subscription is already paid", subscriptionId=sub, period=period,
                              periodEnd=format_rfc3339(end), grant=grant)

    def _seat_grant(self, terms: QuotedTerms, agent: str, period: int, challenge_id: str) -> str:
        assert isinstance(terms.offer, SeatOffer)
        return issue_grant(self.receipt_key, seat_grant_claims(realm=self.realm, agent=agent, offer=terms.offer,
                                                               period=period, challenge_id=challenge_id, now=self.clock()))

    async def _start_task(self, payment: Payment, task_id: str) -> TaskControl:
        assert payment.terms is not None and isinstance(payment.terms.offer, TaskOffer)
        if payment.task_id is not None:
            raise RuntimeError(f"this purchase already started task {payment.task_id!r}")
        if self.pricing_store is None:
            raise RuntimeError("task offers need a pricing store")
        offer, verified, settlement = payment.terms.offer, payment.verified, payment.settlement
        offer.grant_routes(task_id)  # ValueError for an invalid id (PRICE-TASK-02)
        agent = self._signer(verified)
        created = await self.pricing_store.create_task(
            task_id, challenge_id=verified.challenge_id, method=verified.credential.challenge.method, agent=agent,
            refund=offer.refund, reference=settlement.reference, payer=settlement.payer, settled_at=settlement.settled_at)
        if not created:
            raise ValueError(f"task id {task_id!r} is already used")
        claims = task_grant_claims(realm=self.realm, agent=agent, task_id=task_id, offer=offer,
                                   challenge_id=verified.challenge_id, now=self.clock())
        payment.grant = issue_grant(self.receipt_key, claims)
        payment.task_id = task_id
        payment.claims |= {"task": task_id, "grant": claims["jti"]}
        await self._record_settled(payment)
        log.info("task started id=%s challenge=%s", task_id, verified.challenge_id)
        return TaskControl(self, task_id)

    async def task(self, task_id: str) -> TaskRecord | None:
        return await self.pricing_store.get_task(task_id) if self.pricing_store is not None else None

    async def finish_task(self, task_id: str, *, ok: bool, detail: str | None = None) -> bool:
        """The task succeeded or failed; True if this call moved it. A failure before the result
        was delivered refunds the task's charge once when its quoted rule is ``full``
        (PRICE-TASK-04); cancellation is not a failure (PRICE-TASK-05)."""
        if self.pricing_store is None:
            raise RuntimeError("task offers need a pricing store")
        if ok:
            return await self.pricing_store.move_task(task_id, "succeeded", detail=detail)
        if not await self.pricing_store.move_task(task_id, "failed", detail=detail):
            return False
        record = await self.pricing_store.get_task(task_id)
        assert record is not None
        if record.refund == "full":
            await self._refund_task(record)
        return True

    async def refund_owed_tasks(self) -> int:
        """Complete the refunds of failed tasks that a crash (or a failing rail) interrupted
        (PRICE-TASK-04): each through the rail, idempotent by its settlement. Run at start-up;
        returns how many were completed."""
        if self.pricing_store is None:
            return 0
        done = 0
        for record in await self.pricing_store.refunds_owed():
            try:
                await self._refund_task(record)
                done += 1
            except Exception:  # noqa: BLE001 - one refund failing must not keep the others (or the seller) down
                log.exception("refund of failed task %s could not be completed; it is retried at the next start", record.task_id)
        return done

    async def _startup_refunds(self, app: web.Application) -> None:
        if self.pricing_store is not None:
            opener = getattr(self.pricing_store, "open", None)
            if opener is not None:
                await opener()
            done = await self.refund_owed_tasks()
            if done:
                log.warning("completed %d interrupted task refund(s)", done)

    async def _refund_task(self, record: TaskRecord) -> None:
        """Through the rail, keyed by the settlement (idempotent), then the records; only the
        caller that moved the task to ``failed`` gets here."""
        rail = self._rails[record.method]
        settled = datetime.strptime(record.settled_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        await rail.refund(Settlement(record.reference, settled, record.payer))
        await self.store.forget_mandate_spend(record.challenge_id)
        paid = await self.store.get(record.challenge_id)
        if paid is not None and paid.state in ("settled", "delivered"):
            await self.store.mark(record.challenge_id, "refunded", failure="task failed")
        await self.pricing_store.move_task(record.task_id, "refunded")  # type: ignore[union-attr]
        await self._audit("refusal", challengeId=record.challenge_id, problem="refunded", detail=f"task {record.task_id} failed")
        log.warning("refunded task=%s challenge=%s", record.task_id, record.challenge_id)

    async def task_delivered(self, task_id: str) -> bool:
        """A follow-up returned the task's result: from now on a failure refunds nothing."""
        if self.pricing_store is None:
            raise RuntimeError("task offers need a pricing store")
        return await self.pricing_store.move_task(task_id, "delivered")

    async def _already_claimed(self, cid: str, idem: str | None, price: Price, info: RequestInfo, now: datetime) -> web.StreamResponse:
        record = await self.store.get(cid)
        if idem is not None and record is not None and record.idempotency_key is not None and hmac.compare_digest(
            record.idempotency_key.encode(), idem.encode()
        ):
            stored = await self.store.get_response(cid)
            if stored is not None:
                headers = [*stored.headers, ("Payment-Receipt", record.receipt or ""), ("Cache-Control", "private"), ("Idempotent-Replayed", "true")]
                return web.Response(status=stored.status, body=stored.body, headers=_multidict(headers))
            if record.state in ("settling", "settled"):
                return self._problem(RequestInProgress("the original paid request is still running"), price, info, now)
        return self._problem(InvalidChallenge("challenge has already been used"), price, info, now)

    def _problem(self, problem: PaymentProblem, price: Price | Metered | Route | None, info: RequestInfo,
                 now: datetime) -> web.Response:
        with_challenges = price is not None and (problem.fresh_challenge or isinstance(problem, MethodUnsupported))
        challenges = self._challenges(price, info, now) if with_challenges else []
        headers = self.core.problem_headers(challenges)  # includes Cache-Control: no-store
        body = self.core.problem_body(problem, challenges, instance=info.path)
        return web.Response(
            status=problem.status,
            body=json.dumps(body).encode(),
            content_type="application/problem+json",
            headers=_multidict(headers),
        )

    def _challenges(self, price: Price | Metered | Route, info: RequestInfo, now: datetime) -> list[Any]:
        if isinstance(price, Route):
            return route_challenges(self.core, price, info, now, subscription=info.subscription)
        return self.core.challenges(price, info, now)

    async def _on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        payment: Payment | None = request.get(PAYMENT_KEY)
        if (payment is not None and (payment.refunded or not payment.recorded)) or response.status >= 400:
            response.headers.popall("Payment-Receipt", None)
            response.headers.popall(GRANT_HEADER, None)
            return
        if payment is None:
            # Unpaid, or an Idempotency-Key replay, which carries the stored receipt itself.
            return
        if "Payment-Receipt" not in response.headers:
            response.headers["Payment-Receipt"] = payment.receipt_header
        if payment.grant is not None:
            response.headers[GRANT_HEADER] = payment.grant
        directives = [d.strip() for d in response.headers.get("Cache-Control", "").split(",") if d.strip()]
        directives = [d for d in directives if d.lower() != "public" and not d.lower().startswith("s-maxage")]
        if not any(d.lower() in ("private", "no-store") for d in directives):
            directives.insert(0, "private")
        response.headers["Cache-Control"] = ", ".join(directives)

    # -- publishing --------------------------------------------------------

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = [self.receipt_key, *self.previous_receipt_keys]
        return web.json_response(jwks_document(keys), headers={"Cache-Control": "public, max-age=300"})

    def priced_routes(self, app: web.Application) -> Iterable[tuple[str, str, Price]]:
        for route in app.router.routes():
            price = self._route_prices.get(id(route)) or getattr(route.handler, _PRICE_ATTR, None)
            if price is not None and route.method != "HEAD":
                yield route.method, route.resource.canonical, price

    async def _openapi(self, request: web.Request) -> web.Response:
        paths: dict[str, dict[str, Any]] = {}
        plist = self.price_list
        for route in plist.routes if plist is not None else ():
            paths.setdefault(route.path, {})[route.method.lower()] = {
                "summary": route.description or route.route,
                "x-payment-info": {"priceList": plist.version, "offers": route_payment_info(self.core, route, self.clock())},
                "responses": {
                    "200": {"description": "Paid response, with a Payment-Receipt header"},
                    "402": {"description": "Payment Required"},
                },
            }
        for method, path, price in self.priced_routes(request.app):
            if plist is not None and plist.route_for(method, path) is not None:
                continue  # the list prices it
            charge = price.charge_price() if isinstance(price, Metered) else price
            offers = [
                {"intent": "charge", "method": name, "amount": str(charge.amount), "currency": charge.currency}
                | ({"description": charge.description} if charge.description else {})
                for name in self._rails
            ]
            if isinstance(price, Metered):
                offers = [
                    {"intent": "session", "method": name, "amount": str(price.price), "currency": price.currency,
                     "unitType": price.unit, "per": str(price.per), "maxUnits": str(price.max_units)}
                    | ({"description": price.description} if price.description else {})
                    for name, intent in self.core.offers(price) if intent == "session"
                ] + offers
            paths.setdefault(path, {})[method.lower()] = {
                "summary": price.description or f"{method} {path}",
                "x-payment-info": {"offers": offers},
                "responses": {
                    "200": {"description": "Paid response, with a Payment-Receipt header"},
                    "402": {"description": "Payment Required"},
                },
            }
        doc = {"openapi": "3.1.0", "info": {"title": self.title, "version": "1.0.0"}, "paths": paths}
        return web.json_response(doc, headers={"Cache-Control": "max-age=300"})


@dataclass(frozen=True)
class IdentityContext:
    chain: MandateChain
    decision: PolicyDecision
    charge: MandateCharge
    approval: Any  # the verified Approval, required or not: it is used up either way
    periods: dict[str, str]  # link key -> budget period key


def _subscription_header(request: web.Request) -> str | None:
    """A well-formed Subscription-Id the buyer named, echoed into seat quotes (spec/pricing.md §3.2)."""
    value = request.headers.get(SUBSCRIPTION_ID_HEADER)
    if value is not None and len(value) == 26 and value.startswith("sub_") and value[4:].replace("-", "").replace("_", "").isalnum():
        return value
    return None


def _unverified_sub(token: str) -> str:
    """The ``sub`` a grant claims, before it is verified: only to order the checks of
    PRICE-GRANT-02 when the proof that names the agent is missing."""
    try:
        return str(decode_jws(token)[1].get("sub", ""))
    except ParseError:
        return ""


SELLER_KEY = web.AppKey("mpp_seller", Seller)
# Request key under which a paid handler finds its Payment (typed where aiohttp offers it).
PAYMENT_KEY = web.RequestKey("mpp_payment", Payment) if hasattr(web, "RequestKey") else "mpp_payment"
TASK_KEY = web.RequestKey("mpp_task", TaskControl) if hasattr(web, "RequestKey") else "mpp_task"
GRANT_KEY = web.RequestKey("mpp_grant", object) if hasattr(web, "RequestKey") else "mpp_grant"


def _multidict(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(headers)
