"""The per-request purchase (intents ``charge`` and ``subscription``): verify, claim, settle,
serve, receipt; a handler that fails after settlement gets the payment refunded.

Order of work for a credential: offline checks (the sans-I/O core) -> identity and policy ->
what the rail would refuse -> consume the challenge (the payment store, exactly once) -> settle
(the rail, idempotent by challenge id) -> run the handler -> receipt.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mpp.engine.attribution import attributed_to, mark_attributed
from mpp.engine.core import RequestInfo, Verified
from mpp.engine.http import REPLAY_HEADERS, HttpRequest, HttpResponse, Serve, Served
from mpp.engine.mandates import check_charge_identity
from mpp.engine.offers import OfferDesk
from mpp.engine.purchase import Context, IdentityContext, Payment
from mpp.engine.quotes import QuotedTerms, quoted_terms
from mpp.identity import BudgetExceeded
from mpp.engine.rails import PaymentRail, Settlement
from mpp.ledger.book import MandateLink, Purchase, VerifiedMandate
from mpp.pricing import Route
from mpp.pricing.prices import Metered, Price
from mpp.protocol.challenge import resource_of
from mpp.protocol.errors import (RESOURCE_MAX, BadRequest, InvalidChallenge, PaymentProblem, PaymentRequired, RequestInProgress,
                                 SellerMisconfigured, clip)
from mpp.protocol.headers import idempotency_key
from mpp.protocol.models import format_rfc3339
from mpp.stores.payments import StateError, StoredResponse

if TYPE_CHECKING:
    from mpp.engine.shop import Shop

__all__ = ["ChargeStep"]

log = logging.getLogger("mpp.seller")


class ChargeStep:
    """The charge path of one seller engine."""

    def __init__(self, engine: "Shop", offers: OfferDesk) -> None:
        self.engine = engine
        self.offers = offers

    async def run(self, request: HttpRequest, serve: Serve, price: Price | Metered, info: RequestInfo, now: datetime,
                  route: Route | None = None, *, meter: Any = None) -> HttpResponse | Served:
        """A request to a route priced per request: a 402, a refusal, or the paid handler's answer."""
        engine = self.engine
        verified: Verified | None = None
        if route is None and not engine.core.offers(price):  # start-up refuses these; a route added later is not seen there
            log.error("no rail can quote %s %s in %r: not served (CORE-ERR-14)", info.method, clip(info.path, RESOURCE_MAX),
                      price.currency)
            return engine.problem(SellerMisconfigured("this seller has no payment method for this route's price"), None,
                                  info, now)
        try:
            header = engine.core.payment_credential(info)
            if header is None:
                raise PaymentRequired("this resource requires payment")
            verified = engine.core.verify(header, info, now)
            identity, terms = await self.admit(verified, price, info, now, route)
        except PaymentProblem as problem:
            await engine.refused(problem, info, now, verified.challenge_id if verified else None,
                                 agent=verified.credential.source if verified else None)
            return engine.problem(problem, route or price, info, now)
        return await self.settle_and_serve(request, serve, verified, price, info, now, identity, route, terms, meter)

    async def admit(self, verified: Verified, price: Price | Metered, info: RequestInfo, now: datetime,
                    route: Route | None) -> tuple[IdentityContext | None, QuotedTerms]:
        """Every check of a verified credential that needs no write: the quoted terms, identity and
        policy, and what the rail already knows it would refuse (LEDGER-ACCT-05), all before the
        challenge is consumed, so a buyer told to put something right can retry the same challenge."""
        engine = self.engine
        challenge = verified.credential.challenge
        terms = quoted_terms(challenge, challenge.request_json, route.route if route else resource_of(info.method, info.path))
        if terms.model in ("task", "seat") and engine.config.pricing_store is None:
            raise InvalidChallenge(f"this seller keeps no {terms.model} records")
        require_identity = route.require_identity if route is not None else price.require_identity
        in_book = self.book_for(verified, terms) is not None
        identity = None
        if require_identity or verified.credential.extra_member("identity") is not None:
            identity = await check_charge_identity(engine, verified, now, in_book=in_book)
        precheck = getattr(engine.rails[challenge.method], "precheck", None)  # a rail written before it had one: none
        if in_book:  # the book checks who pays inside its transaction, consuming nothing if it refuses
            return identity, terms
        if precheck is not None:
            await precheck(verified, identity.chain.dids if identity else None)
        mark_attributed()
        return identity, terms

    def book_for(self, verified: Verified, terms: QuotedTerms | None) -> Any:
        """The book this purchase commits in, in one transaction (mpp.ledger.book); None for a rail
        without one, and for tasks and seats, whose records are kept apart (mpp.stores.pricing)."""
        if terms is not None and terms.model in ("task", "seat"):
            return None
        return self.engine.books.get(verified.credential.challenge.method)

    async def settle_and_serve(self, request: HttpRequest, serve: Serve, verified: Verified, price: Price | Metered,
                               info: RequestInfo, now: datetime, identity: IdentityContext | None, route: Route | None,
                               terms: QuotedTerms | None, meter: Any = None) -> HttpResponse | Served:
        """Claim the challenge, settle, run the handler, and keep or refund the payment by how it went."""
        engine = self.engine
        cid = verified.challenge_id
        quoting = route or price
        try:
            idem = idempotency_key(list(request.headers_all("Idempotency-Key")))
        except BadRequest as problem:
            return engine.problem(problem, quoting, info, now)
        seat = None
        if terms is not None and terms.model == "seat":
            try:
                seat = await self.offers.reserve_seat(verified, terms, now)
            except PaymentProblem as problem:
                await engine.audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource,
                                   detail=problem.detail, realm=engine.config.realm)
                return engine.problem(problem, quoting, info, now)
        book = self.book_for(verified, terms)
        if book is not None:
            return await self._purchase_in_one(book, serve, verified, info, now, identity, quoting, terms, idem, meter)
        store = engine.config.store
        if not await store.claim(cid, resource=verified.resource, idempotency_key=idem):
            if seat is not None:
                await engine.config.pricing_store.release_seat(seat[0], seat[1], cid)  # type: ignore[union-attr]
            return await self.already_claimed(cid, idem, quoting, info, now)
        rail = engine.rails[verified.credential.challenge.method]
        try:
            settlement = await rail.settle(verified, identity.charge if identity else None)
        except PaymentProblem as problem:
            if seat is not None:  # PRICE-SEAT-03: a period that was not paid is not recorded
                await engine.config.pricing_store.release_seat(seat[0], seat[1], cid)  # type: ignore[union-attr]
            await store.mark(cid, "failed", failure=problem.slug)
            log.info("settlement refused challenge=%s problem=%s", cid, problem.slug)
            await engine.audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource, detail=problem.detail)
            return engine.problem(problem, quoting, info, now)
        payment = await self._paid(verified, settlement, terms, identity, seat)
        return await self._serve_paid(serve, payment, rail, idem, meter)

    async def _purchase_in_one(self, book: Any, serve: Serve, verified: Verified, info: RequestInfo, now: datetime,
                               identity: IdentityContext | None, quoting: Any, terms: QuotedTerms | None,
                               idem: str | None, meter: Any) -> HttpResponse | Served:
        """Claim, transfer, budgets, payment record and audit entries in one write transaction
        (CORE-ONCE-10); then the handler, and a refund in one more if it fails."""
        engine = self.engine
        cid = verified.challenge_id
        auth = verified.proof
        rail = engine.rails[verified.credential.challenge.method]
        settled_at = datetime.now(timezone.utc).replace(microsecond=0)  # the ledger's clock, to the second
        settlement = Settlement(reference=cid, settled_at=settled_at, payer=auth.account)
        claims = self._claims(verified, settlement, terms, identity)
        payment = Payment(verified, settlement, claims, "", terms=terms, book=book)
        payment.receipt_header = engine.receipt_header(payment)
        mandate = None
        if identity is not None:
            mandate = VerifiedMandate(identity.chain.dids, tuple(
                MandateLink(link.key, identity.periods[link.key], link.budget_amount, link.currency, link.ceiling)
                for link in identity.chain.links))
        purchase = Purchase(
            challenge_id=cid, resource=verified.resource, idempotency_key=idem, payer=auth.account, payee=auth.recipient,
            amount=auth.amount, currency=auth.currency, signer=auth.signer, settled_at=format_rfc3339(settled_at),
            receipt=payment.receipt_header, mandate=mandate,
            approval=f"{identity.approval.iss}#{identity.approval.jti}" if identity and identity.approval else None,
            audit=(*(identity.audit if identity else ()), ("settlement", engine.audit_data(self._settlement_entry(payment)))),
        )
        try:
            claimed = await rail.purchase(book, purchase)
        except PaymentProblem as problem:
            if identity is not None and isinstance(problem, BudgetExceeded):  # the members the policy's own refusal has
                problem.extensions.setdefault("challengeId", cid)
                problem.extensions.setdefault("mandate", identity.chain.leaf.jti)
            if not getattr(problem.__cause__, "consumed", False):  # refused for who pays: nothing consumed (LEDGER-ACCT-05)
                await engine.refused(problem, info, now, cid, agent=verified.credential.source)
                return engine.problem(problem, quoting, info, now)
            mark_attributed()  # the ledger accepted the payer: its refusals are written down
            log.info("settlement refused challenge=%s problem=%s", cid, problem.slug)
            await engine.audit("refusal", problem=problem.slug, challengeId=cid, resource=verified.resource,
                               detail=problem.detail, realm=engine.config.realm, **attributed_to())
            return engine.problem(problem, quoting, info, now)
        mark_attributed()
        if not claimed:
            return await self.already_claimed(cid, idem, quoting, info, now)
        log.info("settled challenge=%s reference=%s amount=%s %s", cid, cid, verified.request.amount, verified.request.currency)
        return await self._serve_paid(serve, payment, rail, idem, meter, booked=True)

    def _claims(self, verified: Verified, settlement: Any, terms: QuotedTerms | None,
                identity: IdentityContext | None) -> dict[str, Any]:
        """What the receipt says: the settlement, the quoted terms, who paid under which mandate."""
        claims = self.engine.core.receipt_claims(verified, reference=settlement.reference,
                                                 settled_at=settlement.settled_at, account=settlement.payer)
        claims |= {k: v for k, v in getattr(settlement, "receipt_members", {}).items() if k not in claims}
        if terms is not None:
            claims |= terms.receipt_claims()  # PRICE-VER-01
        if identity is not None:
            chain = identity.chain
            claims |= {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf.jti, "chain": list(chain.jtis),
                       "approval": identity.decision.approval.jti if identity.decision.approval else None,
                       "decision": identity.decision.decision}
        return claims

    def _settlement_entry(self, payment: Payment) -> dict[str, Any]:
        verified, claims = payment.verified, payment.claims
        return dict(challengeId=verified.challenge_id, reference=payment.settlement.reference, amount=verified.request.amount,
                    currency=verified.request.currency, resource=verified.resource, realm=self.engine.config.realm,
                    agent=claims.get("agent", verified.credential.source), principal=claims.get("principal"),
                    mandate=claims.get("mandate"), approval=claims.get("approval"), decision=claims.get("decision"))

    async def _paid(self, verified: Verified, settlement: Any, terms: QuotedTerms | None,
                    identity: IdentityContext | None, seat: Any) -> Payment:
        """The settled payment: its receipt claims, its mandate spend, its seat grant, and (unless a
        task's receipt waits for its id) its record."""
        engine = self.engine
        cid = verified.challenge_id
        claims = self._claims(verified, settlement, terms, identity)
        if identity is not None:
            await engine.config.store.record_mandate_spend(
                cid, list(identity.periods.items()), verified.request.amount_int,
                f"{identity.approval.iss}#{identity.approval.jti}" if identity.approval else None,
            )
        payment = Payment(verified, settlement, claims, "", terms=terms, recorded=False)
        if seat is not None:
            sub, period, start, end = seat
            payment.seat = (sub, period)
            claims |= {"subscriptionId": sub, "plan": terms.offer.plan, "period": period,  # type: ignore[union-attr]
                       "periodStart": format_rfc3339(start), "periodEnd": format_rfc3339(end)}
            payment.grant = self.offers.seat_grant(terms, self.offers.signer(verified), period, cid)  # type: ignore[arg-type]
        if terms is None or terms.model != "task":  # a task's receipt waits for its id (start_task)
            await self.engine.record_settled(payment)
        await engine.audit("settlement", **self._settlement_entry(payment))
        log.info("settled challenge=%s reference=%s amount=%s %s", cid, settlement.reference, verified.request.amount,
                 verified.request.currency)
        return payment

    async def _serve_paid(self, serve: Serve, payment: Payment, rail: PaymentRail, idem: str | None,
                          meter: Any, *, booked: bool = False) -> HttpResponse | Served:
        """Run the handler on a settled payment; refund when it fails or names no task it owes.
        ``booked``: the purchase committed in one transaction (mpp.ledger.book), whose record and
        audit entry stand for the delivery too: a success writes nothing more."""
        store = self.engine.config.store
        cid = payment.verified.challenge_id
        try:
            served = await serve(Context(payment=payment, meter=meter))
        except BaseException:
            await self.refund(payment, rail, "handler raised")
            raise
        if served.raised is not None:  # an HTTP exception the framework turns into a response
            if served.status >= 400 or not payment.recorded:
                await self.refund(payment, rail, f"handler raised HTTP {served.status}" if served.status >= 400
                                  else "handler named no task")
            elif not booked:
                await store.mark(cid, "delivered")
            return served
        if served.status >= 400:
            await self.refund(payment, rail, f"handler answered {served.status}")
            return served
        if not payment.recorded:  # PRICE-TASK-02: a task handler that names no task has failed
            await self.refund(payment, rail, "handler named no task (start_task)")
            return HttpResponse(500, [("Content-Type", "text/plain; charset=utf-8")],
                                b"the handler started no task (start_task); the payment was refunded")
        if not booked:
            try:
                await store.mark(cid, "delivered")
            except StateError:
                if payment.task_id is None:
                    raise
                # the task failed already, inside its handler, and was refunded (PRICE-TASK-04)
            claims = payment.claims
            await self.engine.audit("receipt", challengeId=cid, reference=payment.settlement.reference, status=served.status,
                                    agent=claims.get("agent", payment.verified.credential.source),
                                    principal=claims.get("principal"))
        if idem is not None and served.body is not None:
            kept = [(name, v) for name in REPLAY_HEADERS for k, v in served.headers if k.lower() == name.lower()]
            await store.save_response(cid, StoredResponse(served.status, kept, served.body))
        return served

    async def refund(self, payment: Payment, rail: PaymentRail, why: str) -> None:
        """Give a settled payment back, and undo what it bought (mandate spend, seat, task)."""
        engine = self.engine
        store, pricing = engine.config.store, engine.config.pricing_store
        payment.refunded = True
        cid = payment.verified.challenge_id
        if payment.book is not None:  # the whole purchase undone in one transaction
            entry = engine.audit_data(dict(challengeId=cid, problem="refunded", detail=why))
            await rail.refund_purchase(payment.book, cid, why, (("refusal", entry),))  # type: ignore[attr-defined]
            log.warning("refunded challenge=%s: %s", cid, why)
            return
        await self.engine.record_settled(payment)
        await rail.refund(payment.settlement)
        await store.forget_mandate_spend(cid)
        await store.mark(cid, "refunded", failure=why)
        if payment.seat is not None and pricing is not None:  # the period was not bought after all
            await pricing.release_seat(payment.seat[0], payment.seat[1], cid)
        if payment.task_id is not None and pricing is not None:
            await pricing.move_task(payment.task_id, "failed", detail=why)
            await pricing.move_task(payment.task_id, "refunded")
        await engine.audit("refusal", challengeId=cid, problem="refunded", detail=why)
        log.warning("refunded challenge=%s: %s", cid, why)

    async def already_claimed(self, cid: str, idem: str | None, price: Price | Metered | Route, info: RequestInfo,
                              now: datetime) -> HttpResponse:
        """A challenge used before: the stored answer to the same Idempotency-Key, else a refusal."""
        engine = self.engine
        record = await engine.config.store.get(cid)
        if idem is not None and record is not None and record.idempotency_key is not None and hmac.compare_digest(
            record.idempotency_key.encode(), idem.encode()
        ):
            stored = await engine.config.store.get_response(cid)
            if stored is not None:
                headers = [*stored.headers, ("Payment-Receipt", record.receipt or ""), ("Cache-Control", "private"),
                           ("Idempotent-Replayed", "true")]
                return HttpResponse(stored.status, headers, stored.body)
            if record.state in ("settling", "settled"):
                return engine.problem(RequestInProgress("the original paid request is still running"), price, info, now)
        return engine.problem(InvalidChallenge("challenge has already been used"), price, info, now)
