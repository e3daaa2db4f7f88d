"""The buyer's sessions: open one on the request that got the 402, send each later
request with a voucher (or a top-up) and no 402 first, answer a stream's in-band demands, and
close: POST the latest voucher and check the final receipt.

The decisions are made in :mod:`mpp.buyer.sessions`; the voucher arithmetic and the table of
open sessions are the :class:`~mpp.purchase.sessions.SessionManager`'s.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Mapping

from yarl import URL

from mpp.purchase.charges import ask_approval
from mpp.purchase.exchange import PaidResponse, TransportError
from mpp.purchase.sessions import OpenSession, SessionManager
from mpp.purchase.wire import BuyerWire, close_stream, problem_of, problem_words
from mpp.buyer.core import Quote, check_transport
from mpp.buyer.session_receipts import problem_amount, verify_session_receipt
from mpp.buyer.sessions import (
    SESSION_PROBLEMS,
    UNKNOWN,
    SessionOffer,
    SessionPlan,
    cap_request,
    mandate_cap_limit,
    refusal_kind,
)
from mpp.identity import identity_member
from mpp.intents.session import INTENT as SESSION_INTENT
from mpp.protocol.errors import DETAIL_MAX, BuyerError, OutcomeUnknown, PaymentFailed, QuoteRejected, clip
from mpp.protocol.headers import format_credential
from mpp.protocol.models import Credential

__all__ = ["SessionRunner", "CLOSE_RETRY_SECONDS", "FINAL_RECEIPT_LIMIT"]

log = logging.getLogger("mpp.buyer")
CLOSE_RETRY_SECONDS = 30.0
"""How long close keeps asking while the seller answers 409 (requests still running)"""
FINAL_RECEIPT_LIMIT = 1 << 20
"""Bytes of one header field in an answer to the session endpoint."""


class SessionRunner:
    """Opens, uses and closes the sessions of a :class:`~mpp.purchase.client.Buyer` (whose
    ``policy``, ``identity``, ``clock`` and ``accept_payment`` are read at each call); a request
    the session cannot serve goes back to the client's usual way."""

    def __init__(self, client: Any, wire: BuyerWire, manager: SessionManager) -> None:
        self._client, self._wire, self.manager = client, wire, manager

    async def open(self, method: str, first: PaidResponse, offer: SessionOffer, data: bytes | None,
                   headers: Mapping[str, str] | None, keep_open: bool) -> PaidResponse:
        """Open a session on the request that got the 402: cap, its signature and voucher 1 in one credential."""
        client, manager = self._client, self.manager
        challenge, request = offer.challenge, offer.request
        sid = challenge.id
        now = client.clock()
        await self._wire.emit("quote-seen", challengeId=sid, amount=request.amount, currency=request.currency,
                              realm=challenge.realm, accepted=True, intent=SESSION_INTENT, per=str(request.per),
                              unitType=request.unitType)
        check_transport(first.url, client.policy)
        identity = client.identity
        cap, cap_limit, budget_links = await self._admit(offer, method, first.url, now)
        session, payload = await manager.begin(offer, url=first.url, cap=cap, cap_limit=cap_limit, now=now, budget_links=budget_links)
        approval: str | None = None
        try:
            for attempt in range(2):
                extensions: dict[str, Any] = {}
                if identity is not None:
                    extensions["identity"] = identity_member(identity.mandates, identity.key, challenge, request, approval)
                credential = format_credential(Credential(challenge=challenge, payload=payload.as_json(),
                                                          source=session.key.did, extensions=extensions))
                await self._wire.emit("authorization-signed", challengeId=sid, intent=SESSION_INTENT, cap=str(cap))
                try:
                    paid = await self._wire.send(method, first.url, credential, data, headers, sid, keep_open)
                except OutcomeUnknown:
                    manager.add(session)  # it may be open: the next request's voucher finds out
                    raise
                if paid.status >= 400:
                    problem = problem_of(paid)
                    await self._wire.emit("refusal", challengeId=sid, status=paid.status, problem=problem.get("type"))
                    exc = PaymentFailed(_refusal("session open", paid.status, problem),
                                        paid.status, problem)
                    approval = await ask_approval(identity, self._wire, exc, sid) if attempt == 0 else None
                    if approval:
                        continue
                    raise exc
                break
        except (PaymentFailed, QuoteRejected):
            if identity is not None:
                await identity.release(sid)
            raise
        replaced = manager.add(session)
        await self._wire.emit("session-open", sessionId=sid, realm=challenge.realm, cap=str(cap),
                              cumulative=str(session.voucher.cumulative), unitPrice=request.amount, per=str(request.per),
                              unitType=request.unitType, currency=request.currency, recipient=request.recipient)
        if replaced is not None:
            await self._close_quietly(replaced)
        return await self._answered(session, paid, None)

    async def _admit(self, offer: SessionOffer, method: str, url: str, now: datetime) -> tuple[int, int, Any]:
        """(cap, cap limit, budget links): within policy and, with an identity, the mandate (a
        session is one purchase of up to its cap) and the agent's budget, the cap reserved."""
        manager, identity = self.manager, self._client.identity
        challenge, request, sid = offer.challenge, offer.request, offer.challenge.id
        cap_limit = manager.policy.max_cap
        if identity is None:
            return manager.initial_cap(offer), cap_limit, None
        try:
            chain = identity.chain_for(challenge.realm, now)
            cap_limit = mandate_cap_limit(chain, request, cap_limit)
            cap = manager.initial_cap(offer, cap_limit)
            as_charge = Quote(challenge, cap_request(request, cap), offer.method)
            identity.check(as_charge, method, str(URL(url).raw_path_qs), now)
            budget_links = identity.budget_links(chain, now)
            await identity.reserve_amount(sid, budget_links, cap, now, ttl=manager.budget_ttl(request, identity))
        except QuoteRejected as exc:
            await self._wire.emit("policy-decision", challengeId=sid, decision="deny", rule=exc.rule, reason=exc.detail)
            raise
        await self._wire.emit("policy-decision", challengeId=sid, decision="allow", reason="within mandate", agent=chain.agent,
                              principal=chain.principal, mandate=chain.leaf.jti, amount=str(cap), intent=SESSION_INTENT)
        return cap, cap_limit, budget_links

    async def use(self, session: OpenSession, method: str, url: str, data: bytes | None,
                  headers: Mapping[str, str] | None, keep_open: bool, *, required: int | None = None,
                  problem: dict[str, Any] | None = None) -> PaidResponse:
        """A request on an open session: a voucher (or topUp) on the first try, no 402 first."""
        client, manager = self._client, self.manager
        check_transport(url, client.policy)
        plan = await manager.plan(session, client.clock(), required=required, identity=client.identity)
        if plan is None:
            if problem is not None and required is not None and required - session.spent > session.cap_limit:
                # The seller wants more for this request than any session of ours may hold.
                raise PaymentFailed(f"seller wants {required} on the session, beyond what we let it hold", 402, problem)
            # Used up and no top-up allowed: close it; the request goes unpaid and its 402 opens another.
            manager.retire(session)
            await self._close_if_idle(session)
            return await client._request(method, url, data, headers, keep_open)
        hdrs = {"Accept-Payment": client.accept_payment, **(headers or {})}
        accepted = False
        try:
            paid = await self._wire.send(method, url, manager.credential(session, plan), data, hdrs, session.id, keep_open)
            accepted = paid.status < 400
        finally:
            manager.done(session, plan, accepted=accepted)
        try:
            if accepted:
                return await self._answered(session, paid, plan)
            return await self._refused(session, paid, method, url, data, headers, keep_open, retried=required is not None)
        finally:
            await self._close_if_idle(session)

    async def _answered(self, session: OpenSession, paid: PaidResponse, plan: SessionPlan | None) -> PaidResponse:
        """A 2xx on a session: verify its receipt (a stream's comes at its end) and learn what is spent."""
        paid.session = session.id
        header = paid.headers.get("Payment-Receipt")
        if header is None and (paid.stream is not None or plan is not None):
            # A stream's receipt comes as its last event; a route that is not metered gives none.
            return paid
        try:
            jwks = await self._wire.jwks(session.url)
            paid.receipt, paid.claims = verify_session_receipt(header, session, jwks, self._client.clock())
        except BaseException:
            close_stream(paid)
            if plan is None:  # the open itself: keep the session only to close it
                self.manager.retire(session)
            raise
        self.manager.observe(session, paid.claims)
        await self._wire.emit("receipt", challengeId=session.id, reference=paid.receipt.reference,
                              amount=str(paid.claims.get("amount")), currency=session.terms.currency, realm=session.realm,
                              intent=SESSION_INTENT, spent=str(paid.claims.get("spent")), resource=paid.claims.get("resource"))
        return paid

    async def _refused(self, session: OpenSession, paid: PaidResponse, method: str, url: str, data: bytes | None,
                       headers: Mapping[str, str] | None, keep_open: bool, *, retried: bool) -> PaidResponse:
        client = self._client
        problem = problem_of(paid)
        kind = str(problem.get("type", ""))
        await self._wire.emit("refusal", challengeId=session.id, status=paid.status, problem=kind or None)
        meaning = refusal_kind(paid.status, kind, retried=retried)
        if meaning == "insufficient":
            # Nothing was served or charged: a higher voucher (or a top-up), and this request once more.
            self.manager.observe(session, problem)
            required = problem_amount(problem, "required")
            if required is None:
                required = session.spent + session.max_request_cost
            return await self.use(session, method, url, data, headers, keep_open, required=required, problem=problem)
        if meaning in ("closed", "unknown"):
            # The seller closed the session (idle) or never knew it: the 402 carries fresh challenges.
            await self._drop(session, closed=meaning == "closed")
            return await client._answer(method, paid, client._challenges_of(paid, [paid.url], url), data, headers, keep_open)
        if meaning == "unpriced":
            # Not a session route (a charge-priced one, say): pay its fresh challenges the usual way.
            return await client._answer(method, paid, client._challenges_of(paid, [paid.url], url), data, headers, keep_open)
        if kind.startswith(SESSION_PROBLEMS):
            self.manager.retire(session)  # our vouchers are not accepted there any more: do not keep trying
        raise PaymentFailed(_refusal("session voucher", paid.status, problem), paid.status, problem)

    async def _drop(self, session: OpenSession, *, closed: bool) -> None:
        """Forget a session the seller no longer serves; for one it closed, fetch its final receipt."""
        manager = self.manager
        manager.retire(session)
        if closed and session.inflight == 0:
            await self._close_quietly(session)
            if session.closed:
                return
        manager.forget(session)
        # Unknown how much was captured: count the most it could be against our budget.
        identity = self._client.identity
        if identity is not None and session.budget_links is not None:
            await identity.settle(session.id, session.voucher.cumulative)

    async def _close_if_idle(self, session: OpenSession) -> None:
        if session.retired and not session.closed and session.inflight == 0:
            await self._close_quietly(session)

    async def _close_quietly(self, session: OpenSession) -> None:
        try:
            await self._close(session)
        except (BuyerError, TransportError) as exc:
            log.warning("closing session %s failed: %s", clip(session.id), clip(exc, DETAIL_MAX))

    async def _post(self, session: OpenSession, authorization: str) -> PaidResponse:
        # A final receipt lists every usage line, in its Payment-Receipt header too: it can
        # outgrow a client's default limit for one header field (aiohttp's is 8 KiB).
        # SESSION-CLOSE-07: the credential and nothing else: an empty body, and no Content-Type (which
        # a client may otherwise add to a POST, as aiohttp does: application/octet-stream).
        return await self._wire.send("POST", session.session_url, authorization, None,
                                     {"Accept-Payment": self._client.accept_payment}, session.id,
                                     omit_headers=("Content-Type",), max_header_bytes=FINAL_RECEIPT_LIMIT)

    async def _close(self, session: OpenSession) -> dict[str, Any] | None:
        """POST close with the latest voucher; verify the final receipt; settle our budget."""
        manager, identity = self.manager, self._client.identity
        async with session.lock:
            if session.closed:
                return None
            manager.retire(session)
            credential = manager.close_credential(session)
        paid = await self._post(session, credential)
        # 409: a request of the session is still running at the seller (or was, in a seller process
        # that died: its reservation stops counting within seconds). Closing is idempotent: try again.
        deadline = asyncio.get_running_loop().time() + CLOSE_RETRY_SECONDS
        while paid.status == 409 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
            paid = await self._post(session, credential)
        problem = problem_of(paid)
        if paid.status != 200:
            if paid.status == 402 and problem.get("type") == UNKNOWN:
                manager.forget(session)  # the seller does not know it: nothing held, nothing to capture
                if identity is not None and session.budget_links is not None:
                    await identity.settle(session.id, session.voucher.cumulative)
                return None
            await self._wire.emit("refusal", challengeId=session.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(_refusal("session close", paid.status, problem),
                                paid.status, problem)
        header = paid.headers.get("Payment-Receipt") or problem.get("receipt")
        jwks = await self._wire.jwks(session.url)
        _, claims = verify_session_receipt(header, session, jwks, self._client.clock(), final=True)
        manager.observe(session, claims)
        manager.forget(session)
        captured = int(str(claims["captured"]))
        if identity is not None and session.budget_links is not None:
            await identity.settle(session.id, captured)
        await self._wire.emit("session-close", sessionId=session.id, realm=session.realm, captured=str(captured),
                              released=str(claims.get("released")), cap=str(session.cap), reference=claims.get("settlementRef"))
        return claims

    async def close_all(self) -> list[dict[str, Any]]:
        """Close every open session; return the final receipts' claims (the first error is raised
        after every session was tried)."""
        finals: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        for session in self.manager.sessions():
            try:
                claims = await self._close(session)
            except (BuyerError, TransportError) as exc:
                log.warning("closing session %s failed: %s", clip(session.id), clip(exc, DETAIL_MAX))
                errors.append(exc)
                continue
            if claims is not None:
                finals.append(claims)
        if errors:
            raise errors[0]
        return finals

    async def in_band_voucher(self, session: OpenSession, required: int | None) -> None:
        """A running stream asks for more: POST a higher voucher (or a top-up) to the session endpoint."""
        manager = self.manager
        plan = await manager.plan(session, self._client.clock(), required=required, identity=self._client.identity,
                                  in_flight=False)
        if plan is None:
            raise PaymentFailed("the stream needs more than this session may hold", 402, {"sessionId": session.id})
        accepted = False
        try:
            paid = await self._post(session, manager.credential(session, plan))
            accepted = paid.status == 200
        finally:
            manager.done(session, plan, accepted=accepted, in_flight=False)
        problem = problem_of(paid)
        if not accepted:
            await self._wire.emit("refusal", challengeId=session.id, status=paid.status, problem=problem.get("type"))
            raise PaymentFailed(_refusal("in-band voucher", paid.status, problem),
                                paid.status, problem)
        # What the seller says here is unsigned: it may only confirm, never raise, what we believe.
        authorized = problem_amount(problem, "authorized")
        if authorized is not None and authorized <= session.voucher.cumulative:
            session.authorized = max(session.authorized, authorized)

    async def stream_receipt(self, session: OpenSession, receipt: Any) -> tuple[Any, dict[str, Any]]:
        """The ``payment-receipt`` event that ends a session stream: verified, and learnt from."""
        jwks = await self._wire.jwks(session.url)
        verified = verify_session_receipt(receipt, session, jwks, self._client.clock())
        self.manager.observe(session, verified[1])
        return verified


def _refusal(what: str, status: int, problem: dict[str, Any]) -> str:
    """A seller refusal's message: what it refused, the status, the problem type and its own words."""
    said = problem_words(problem)
    text = f"seller refused the {what}: HTTP {status} {clip(problem.get('type', ''), DETAIL_MAX)}".strip()
    return text + (f": {said}" if said else "")
