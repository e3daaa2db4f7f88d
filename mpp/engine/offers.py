"""Task and seat offers (spec/pricing.md §3): grants for follow-ups and seat-covered routes,
task records and their refunds, paid seat periods."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mpp.engine.core import Verified
from mpp.engine.http import HttpRequest, HttpResponse, Serve, Served
from mpp.engine.purchase import Context, Payment, TaskControl
from mpp.engine.quotes import QuotedTerms, seat_subscription
from mpp.engine.rails import Settlement
from mpp.pricing import (
    GRANT_HEADER,
    GRANT_PROOF_HEADER,
    GrantProofInvalid,
    GrantRequired,
    PricingProblem,
    SeatAlreadyPaid,
    SeatOffer,
    SeenGrantProofs,
    TaskOffer,
    issue_grant,
    parse_grant_proof,
    seat_grant_claims,
    task_grant_claims,
    verify_grant,
    verify_grant_proof,
)
from mpp.protocol.errors import RESOURCE_MAX, InvalidChallenge, ParseError, PaymentExpired, RequestInProgress, clip
from mpp.protocol.models import format_rfc3339
from mpp.protocol.wire import decode_jws
from mpp.stores.pricing import TaskRecord

if TYPE_CHECKING:
    from mpp.engine.shop import Shop

__all__ = ["OfferDesk"]

log = logging.getLogger("mpp.seller")


class OfferDesk:
    """The task and seat side of one seller engine."""

    def __init__(self, engine: "Shop") -> None:
        self.engine = engine
        self._proofs_seen = SeenGrantProofs()  # grant proofs accepted, until they age out (PRICE-GRANT-06)

    def follow_up(self, method: str, path: str) -> tuple[TaskOffer, str] | None:
        """(task offer, task id) when the request is a follow-up of a task offer of any list this
        seller has served: a grant outlives the list it was bought under (PRICE-VER-03)."""
        for plist in reversed(self.engine.lists):
            found = plist.follow_up_for(method, path)
            if found is not None:
                return found
        return None

    async def serve_granted(self, request: HttpRequest, serve: Serve, *, task_id: str | None) -> HttpResponse | Served:
        """PRICE-TASK-03, PRICE-SEAT-06, PRICE-GRANT-02..04: a valid grant and proof, no payment, no receipt."""
        info = request.info(payment=False)
        now = self.engine.config.clock()
        try:
            grant = self._verify_grant(request, now, task_id)
        except PricingProblem as problem:  # no challenge here, so nothing of ours: nothing written (CORE-ONCE-09)
            log.debug("refused %s: %s", clip(info.resource, RESOURCE_MAX), problem.slug)
            return self.engine.problem(problem, None, info, now)
        return await serve(Context(grant=grant, task=TaskControl(self, task_id) if task_id is not None else None))

    def _verify_grant(self, request: HttpRequest, now: datetime, task_id: str | None) -> Any:
        config = self.engine.config
        token = request.header(GRANT_HEADER)
        if token is None:
            raise GrantRequired("this route is served only with a task grant",
                                route=clip(f"{request.method} {request.path}", RESOURCE_MAX))
        proof = None
        try:
            proof = parse_grant_proof(request.header(GRANT_PROOF_HEADER) or "")
        except GrantProofInvalid:
            pass
        agent = proof.agent if proof is not None else _unverified_sub(token)
        grant = verify_grant(token, [config.receipt_key, *config.previous_receipt_keys], realm=config.realm, agent=agent,
                             now=now, task_id=task_id, route=(request.method, request.path))
        if proof is None:
            raise GrantProofInvalid("Payment-Grant-Proof is missing or malformed")
        verify_grant_proof(proof, grant=grant, method=request.method, path=request.path, query=request.query,
                           body=request.body, now=now)
        self._proofs_seen.admit(grant, proof, now)  # every method: each proof carries its own nonce
        return grant

    @staticmethod
    def signer(verified: Verified) -> str:
        """The paying agent: the payment's signer (what grants are bound to)."""
        return getattr(verified.proof, "signer", None) or verified.credential.source or ""

    async def reserve_seat(self, verified: Verified, terms: QuotedTerms, now: datetime) -> tuple[str, int, datetime, datetime]:
        """PRICE-SEAT-03: record (subscription, period) before anything is consumed or moved."""
        config = self.engine.config
        assert config.pricing_store is not None and isinstance(terms.offer, SeatOffer)
        agent = self.signer(verified)
        sub, period, start, end = seat_subscription(config.realm, terms, agent)
        named = (verified.request.model_extra or {}).get("subscriptionId")
        if named is not None and named != sub:
            raise InvalidChallenge("the quote names a subscription that is not this agent's")
        if now >= end:  # PRICE-SEAT-04 (the challenge expired before the period's end already)
            raise PaymentExpired("the period quoted has ended")
        holder = await config.pricing_store.reserve_seat(sub, period, verified.challenge_id)
        if holder is None:
            return sub, period, start, end
        record = await config.store.get(holder)
        if record is None or record.state not in ("settled", "delivered"):
            raise RequestInProgress("another purchase of this period is being settled")
        grant = self.seat_grant(terms, agent, period, holder)
        raise SeatAlreadyPaid(f"period {period} of this subscription is already paid", subscriptionId=sub, period=period,
                              periodEnd=format_rfc3339(end), grant=grant)

    def seat_grant(self, terms: QuotedTerms, agent: str, period: int, challenge_id: str) -> str:
        """The Payment-Grant for a paid seat period."""
        assert isinstance(terms.offer, SeatOffer)
        config = self.engine.config
        return issue_grant(config.receipt_key, seat_grant_claims(realm=config.realm, agent=agent, offer=terms.offer,
                                                                 period=period, challenge_id=challenge_id, now=config.clock()))

    async def start_task(self, payment: Payment, task_id: str) -> TaskControl:
        """A task handler names its task: the task is recorded, its grant issued, its receipt signed."""
        config = self.engine.config
        assert payment.terms is not None and isinstance(payment.terms.offer, TaskOffer)
        if payment.task_id is not None:
            raise RuntimeError(f"this purchase already started task {payment.task_id!r}")
        if config.pricing_store is None:
            raise RuntimeError("task offers need a pricing store")
        offer, verified, settlement = payment.terms.offer, payment.verified, payment.settlement
        offer.grant_routes(task_id)  # ValueError for an invalid id (PRICE-TASK-02)
        agent = self.signer(verified)
        created = await config.pricing_store.create_task(
            task_id, challenge_id=verified.challenge_id, method=verified.credential.challenge.method, agent=agent,
            refund=offer.refund, reference=settlement.reference, payer=settlement.payer, settled_at=settlement.settled_at)
        if not created:
            raise ValueError(f"task id {task_id!r} is already used")
        claims = task_grant_claims(realm=config.realm, agent=agent, task_id=task_id, offer=offer,
                                   challenge_id=verified.challenge_id, now=config.clock())
        payment.grant = issue_grant(config.receipt_key, claims)
        payment.task_id = task_id
        payment.claims |= {"task": task_id, "grant": claims["jti"]}
        await self.engine.record_settled(payment)
        log.info("task started id=%s challenge=%s", task_id, verified.challenge_id)
        return TaskControl(self, task_id)

    async def task(self, task_id: str) -> TaskRecord | None:
        """The task's record, if this seller keeps task records."""
        store = self.engine.config.pricing_store
        return await store.get_task(task_id) if store is not None else None

    async def finish_task(self, task_id: str, *, ok: bool, detail: str | None = None) -> bool:
        """The task succeeded or failed; True if this call moved it. A failure before the result
        was delivered refunds the task's charge once when its quoted rule is ``full``
        (PRICE-TASK-04); cancellation is not a failure (PRICE-TASK-05)."""
        store = self.engine.config.pricing_store
        if store is None:
            raise RuntimeError("task offers need a pricing store")
        if ok:
            return await store.move_task(task_id, "succeeded", detail=detail)
        if not await store.move_task(task_id, "failed", detail=detail):
            return False
        record = await store.get_task(task_id)
        assert record is not None
        if record.refund == "full":
            await self._refund_task(record)
        return True

    async def refund_owed_tasks(self) -> int:
        """Complete the refunds of failed tasks that a crash (or a failing rail) interrupted
        (PRICE-TASK-04): each through the rail, idempotent by its settlement. Run at start-up;
        returns how many were completed."""
        store = self.engine.config.pricing_store
        if store is None:
            return 0
        done = 0
        for record in await store.refunds_owed():
            try:
                await self._refund_task(record)
                done += 1
            except Exception:  # noqa: BLE001 - one refund failing must not keep the others (or the seller) down
                log.exception("refund of failed task %s could not be completed; it is retried at the next start", record.task_id)
        return done

    async def start(self) -> None:
        """At start-up: open the pricing store and complete interrupted refunds."""
        store = self.engine.config.pricing_store
        if store is not None:
            opener = getattr(store, "open", None)
            if opener is not None:
                await opener()
            done = await self.refund_owed_tasks()
            if done:
                log.warning("completed %d interrupted task refund(s)", done)

    async def _refund_task(self, record: TaskRecord) -> None:
        """Through the rail, keyed by the settlement (idempotent), then the records; only the
        caller that moved the task to ``failed`` gets here."""
        engine = self.engine
        rail = engine.rails[record.method]
        settled = datetime.strptime(record.settled_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        await rail.refund(Settlement(record.reference, settled, record.payer))
        await engine.config.store.forget_mandate_spend(record.challenge_id)
        paid = await engine.config.store.get(record.challenge_id)
        if paid is not None and paid.state in ("settled", "delivered"):
            await engine.config.store.mark(record.challenge_id, "refunded", failure="task failed")
        await engine.config.pricing_store.move_task(record.task_id, "refunded")  # type: ignore[union-attr]
        await engine.audit("refusal", challengeId=record.challenge_id, problem="refunded", detail=f"task {record.task_id} failed")
        log.warning("refunded task=%s challenge=%s", record.task_id, record.challenge_id)

    async def task_delivered(self, task_id: str) -> bool:
        """A follow-up returned the task's result: from now on a failure refunds nothing."""
        store = self.engine.config.pricing_store
        if store is None:
            raise RuntimeError("task offers need a pricing store")
        return await store.move_task(task_id, "delivered")


def _unverified_sub(token: str) -> str:
    """The ``sub`` a grant claims, before it is verified: only to order the checks of
    PRICE-GRANT-02 when the proof that names the agent is missing."""
    try:
        return str(decode_jws(token)[1].get("sub", ""))
    except ParseError:
        return ""
