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

from ..audit import AsyncAuditLog, AsyncSqliteAuditLog, AuditLog
from ..challenge import ChallengeIssuer
from ..errors import (
    BadRequest,
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    ParseError,
    PaymentProblem,
    PaymentRequired,
    RequestInProgress,
)
from ..headers import format_receipt, parse_credential
from ..identity import (
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
from ..ledger import MandateCharge
from ..keys import SigningKey
from ..models import PaymentReceipt, format_rfc3339
from ..receipts import jwks_document, sign_receipt
from ..seller_core import Metered, Price, RequestInfo, SellerCore, SessionCall, Verified
from ..session_core import INTENT as SESSION_INTENT
from ..session_core import VoucherInvalid
from ..session_store import SessionStore
from ..store import PaymentStore, StoredResponse
from .metering import METER_KEY, SESSION_PATH, ChargeMeter, SessionDesk, meter_of
from .rails import PaymentRail, Settlement

__all__ = ["Seller", "Payment", "SELLER_KEY", "PAYMENT_KEY", "payment_of", "meter_of", "JWKS_PATH", "OPENAPI_PATH", "SESSION_PATH"]

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

    @property
    def payer(self) -> str | None:
        return self.settlement.payer

    @property
    def source(self) -> str | None:
        return self.verified.credential.source


def payment_of(request: web.Request) -> Payment | None:
    return request.get(PAYMENT_KEY)


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
    audit: AsyncAuditLog | AuditLog | None = None  # any engine (mpp.stores.audit_log_for), or a SQLite AuditLog
    session_store: SessionStore | None = None  # required by metered (per-unit) routes
    session_sweep_interval: float = 1.0  # how often idle sessions are looked for and closed

    def __post_init__(self) -> None:
        if isinstance(self.audit, AuditLog):
            self.audit = AsyncSqliteAuditLog(self.audit)  # used through the one async interface; the caller closes it
        self.issuer = ChallengeIssuer(self.secret, self.realm, ttl=self.challenge_ttl)
        self.secret = b""  # held by the issuer only, so it is never printed with the seller
        self._rails = {rail.name: rail for rail in self.rails}
        self.core = SellerCore(self.issuer, self._rails)
        self._route_prices: dict[int, Price | Metered] = {}
        self.sessions = SessionDesk(self, self.session_store, sweep_interval=self.session_sweep_interval) if self.session_store else None

    def __repr__(self) -> str:
        return f"Seller(realm={self.realm!r}, rails={list(self._rails)!r})"

    # -- pricing -----------------------------------------------------------

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

    async def _metered(self, request: web.Request, handler: Handler, metered: Metered) -> web.StreamResponse:
        body = await request.read()
        info = RequestInfo(method=request.method, path=request.rel_url.raw_path, query=request.rel_url.raw_query_string,
                           body=body, accept_payment=request.headers.get("Accept-Payment"),
                           authorization=tuple(request.headers.getall("Authorization", ())))
        now = self.clock()
        try:
            call = self._session_call(info, now)
            if call is not None:
                if self.sessions is None:
                    raise MethodUnsupported("this seller keeps no sessions")
                if (call.terms.currency, call.terms.recipient) != (metered.currency, call.request.recipient):
                    raise VoucherInvalid("the session is in another currency than this route")
                return await self.sessions.serve(request, handler, call, metered, info)
        except PaymentProblem as problem:
            await self._audit("refusal", problem=problem.slug, resource=info.resource, detail=problem.detail, intent="session")
            return self._problem(problem, metered, info, now)
        request[METER_KEY] = ChargeMeter(metered, info.resource)
        return await self._charge(request, handler, metered, info, now)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
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
                      now: datetime) -> web.StreamResponse:
        verified: Verified | None = None
        try:
            header = self.core.payment_credential(info)
            if header is None:
                raise PaymentRequired("this resource requires payment")
            verified = self.core.verify(header, info, now)
            identity = None
            if price.require_identity or verified.credential.extra_member("identity") is not None:
                identity = await self._check_identity(verified, price, now)
        except PaymentProblem as problem:
            await self._audit("refusal", problem=problem.slug, resource=info.resource, detail=problem.detail,
                              challengeId=verified.challenge_id if verified else None, realm=self.realm,
                              agent=verified.credential.source if verified else None)
            return self._problem(problem, price, info, now)
        return await self._settle_and_serve(request, handler, verified, price, info, now, identity)

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
            held = await self.sessions.store.mandate_held(periods)
            spent = {key: spent.get(key, 0) + held.get(key, 0) for key in periods}
        decision = evaluate_policy(chain, verified.credential.challenge, verified.request, verified.resource,
                                   spent=spent, approval=approval)
        await self._audit("policy-decision", decision=decision.decision, reason=decision.reason, challengeId=verified.challenge_id,
                          agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti, resource=verified.resource,
                          amount=verified.request.amount, currency=verified.request.currency, realm=self.realm)
        charge = MandateCharge(tuple(chain.tokens), self.realm)
        return IdentityContext(chain, decision, charge, approval, periods)

    async def _audit(self, kind: str, **data: Any) -> None:
        if self.audit is not None:
            await self.audit.append(kind, {k: v for k, v in data.items() if v is not None})

    async def _settle_and_serve(
        self,
        request: web.Request,
        handler: Handler,
        verified: Verified,
        price: Price,
        info: RequestInfo,
        now: datetime,
        identity: "IdentityContext | None" = None,
    ) -> web.StreamResponse:
        cid = verified.challenge_id
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and (not idem or len(idem) > 255 or not idem.isprintable()):
            return self._problem(BadRequest("Idempotency-Key must be 1 to 255 printable characters"), price, info, now)
        if not await self.store.claim(cid, resource=verified.resource, idempotency_key=idem):
            return await self._already_claimed(cid, idem, price, info, now)
        rail = self._rails[verified.credential.challenge.method]
        try:
            settlement = await rail.settle(verified, identity.charge if identity else None)
        except PaymentProblem as problem:
            await self.store.mark(cid, "failed", failure=problem.slug)
            log.info("settlement refused challenge=%s problem=%s", cid, problem.slug)
            await self._audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource, detail=problem.detail)
            return self._problem(problem, price, info, now)
        claims = self.core.receipt_claims(
            verified, reference=settlement.reference, settled_at=settlement.settled_at, account=settlement.payer
        )
        if identity is not None:
            chain = identity.chain
            claims |= {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf.jti, "chain": list(chain.jtis),
                       "approval": identity.decision.approval.jti if identity.decision.approval else None,
                       "decision": identity.decision.decision}
            await self.store.record_mandate_spend(
                cid, list(identity.periods.items()), verified.request.amount_int,
                f"{identity.approval.iss}#{identity.approval.jti}" if identity.approval else None,
            )
        receipt_header = format_receipt(
            PaymentReceipt(
                status="success",
                method=rail.name,
                timestamp=format_rfc3339(settlement.settled_at),
                reference=settlement.reference,
                challengeId=cid,
                receipt=sign_receipt(self.receipt_key, claims),
            )
        )
        await self.store.mark_settled(
            cid,
            payer=settlement.payer or "",
            amount=verified.request.amount,
            currency=verified.request.currency,
            reference=settlement.reference,
            receipt=receipt_header,
        )
        payment = Payment(verified, settlement, claims, receipt_header)
        request[PAYMENT_KEY] = payment
        await self._audit("settlement", challengeId=cid, reference=settlement.reference, amount=verified.request.amount,
                          currency=verified.request.currency, resource=verified.resource, realm=self.realm,
                          agent=claims.get("agent", verified.credential.source), principal=claims.get("principal"),
                          mandate=claims.get("mandate"), approval=claims.get("approval"), decision=claims.get("decision"))
        log.info("settled challenge=%s reference=%s amount=%s %s", cid, settlement.reference, verified.request.amount, verified.request.currency)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                await self._refund(payment, rail, f"handler raised HTTP {exc.status}")
            else:
                await self.store.mark(cid, "delivered")
            raise
        except BaseException:
            await self._refund(payment, rail, "handler raised")
            raise
        if response.status >= 400:
            await self._refund(payment, rail, f"handler answered {response.status}")
            return response
        await self.store.mark(cid, "delivered")
        await self._audit("receipt", challengeId=cid, reference=settlement.reference, status=response.status,
                          agent=claims.get("agent", verified.credential.source), principal=claims.get("principal"))
        if idem is not None and isinstance(response, web.Response) and isinstance(response.body, (bytes, bytearray)):
            kept = [(k, v) for k in _REPLAY_HEADERS for v in response.headers.getall(k, ())]
            await self.store.save_response(cid, StoredResponse(response.status, kept, bytes(response.body)))
        return response

    async def _refund(self, payment: Payment, rail: PaymentRail, why: str) -> None:
        payment.refunded = True
        cid = payment.verified.challenge_id
        await rail.refund(payment.settlement)
        await self.store.forget_mandate_spend(cid)
        await self.store.mark(cid, "refunded", failure=why)
        await self._audit("refusal", challengeId=cid, problem="refunded", detail=why)
        log.warning("refunded challenge=%s: %s", cid, why)

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

    def _problem(self, problem: PaymentProblem, price: Price | Metered | None, info: RequestInfo, now: datetime) -> web.Response:
        with_challenges = price is not None and (problem.fresh_challenge or isinstance(problem, MethodUnsupported))
        challenges = self.core.challenges(price, info, now) if with_challenges else []
        headers = self.core.problem_headers(challenges)  # includes Cache-Control: no-store
        body = self.core.problem_body(problem, challenges, instance=info.path)
        return web.Response(
            status=problem.status,
            body=json.dumps(body).encode(),
            content_type="application/problem+json",
            headers=_multidict(headers),
        )

    async def _on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        payment: Payment | None = request.get(PAYMENT_KEY)
        if (payment is not None and payment.refunded) or response.status >= 400:
            response.headers.popall("Payment-Receipt", None)
            return
        if payment is None:
            # Unpaid, or an Idempotency-Key replay, which carries the stored receipt itself.
            return
        if "Payment-Receipt" not in response.headers:
            response.headers["Payment-Receipt"] = payment.receipt_header
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
        for method, path, price in self.priced_routes(request.app):
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


SELLER_KEY = web.AppKey("mpp_seller", Seller)
# Request key under which a paid handler finds its Payment (typed where aiohttp offers it).
PAYMENT_KEY = web.RequestKey("mpp_payment", Payment) if hasattr(web, "RequestKey") else "mpp_payment"


def _multidict(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(headers)
