"""The session endpoint (in-band vouchers, top-ups, close) and the close itself: capture what
was spent, release the rest, sign the final receipt (spec/intents/session.md)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from mpp.engine.attribution import mark_attributed, start_request
from mpp.engine.core import RequestInfo, SessionCall
from mpp.engine.http import HttpRequest, HttpResponse
from mpp.intents.session import SessionUnknown, VoucherInvalid, verify_close, verify_voucher
from mpp.protocol.errors import ParseError, PaymentProblem
from mpp.protocol.headers import format_receipt, parse_credential
from mpp.protocol.models import PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import sign_receipt
from mpp.stores.sessions import SessionState

__all__ = ["SessionKeeper", "SESSION_PATH", "session_endpoint", "close_session", "identity_claims"]

log = logging.getLogger("mpp.seller.sessions")
SESSION_PATH = "/.well-known/mpp-session"
"""The seller's session endpoint, where a buyer closes a session (and the idle timeout's close is
recorded)."""


class SessionKeeper(Protocol):
    """What the endpoint and the close need of the engine's session desk
    (:class:`~mpp.engine.sessions.SessionDesk`)."""

    store: Any
    engine: Any

    def session_call(self, info: RequestInfo, now: Any) -> SessionCall | None:
        """The request's session credential, checked as far as no session state is needed
        (:meth:`~mpp.engine.core.SellerCore.verify_session`), or None when there is no credential or it is
        not for the session intent. Raises the PaymentProblem of the first check that fails."""

    async def accept(self, call: SessionCall, metered: Any) -> SessionState:
        """Open, top up or advance the session as ``call``'s payload says, every signature verified before
        anything changes; the session's state after it. ``metered`` is the route's price (for an open; None
        at the session endpoint). Raises the session problems (SessionUnknown, SessionClosed, VoucherInvalid
        and the rest)."""

    async def close(self, session_id: str, *, by: str) -> SessionState:
        """Capture exactly what was spent, release the rest and sign the final receipt, once; idempotent (a
        closed session's state comes back as it is). ``by`` is who closed it (``buyer`` or ``idle``). Raises
        SessionUnknown for a session this seller never opened, RequestInProgress while one of its requests
        runs."""


async def session_endpoint(desk: SessionKeeper, request: HttpRequest) -> HttpResponse:
    """POST to the session path: a voucher or top-up advances the session; a close closes it."""
    start_request()
    engine = desk.engine
    await request.read()
    info = request.info()
    now = engine.config.clock()
    call = None
    try:
        header = engine.core.payment_credential(info)
        if header is not None and _action_of(header) == "open":
            raise VoucherInvalid("open a session on the priced route it was offered for")
        call = desk.session_call(info, now)
        if call is None:
            raise VoucherInvalid(f"{SESSION_PATH} takes a session credential (action voucher, topUp or close)")
        if call.payload.action == "close":
            state = await desk.store.get(call.session_id)
            if state is None:
                raise SessionUnknown("no such session at this seller")
            if state.signer != call.payload.signer or state.terms != call.terms:
                raise VoucherInvalid("the session was opened by another key or on other terms")
            assert call.payload.close_signature is not None
            verify_close(state.signer, state.terms, call.payload.close_signature)
            mark_attributed()
            if call.payload.voucher is not None and state.status == "open":
                verify_voucher(state.signer, state.terms, call.payload.voucher)
                await desk.store.advance(state.session_id, call.payload.voucher, now)
            state = await desk.close(call.session_id, by="buyer")
            receipt = state.final_receipt or ""
            body = {"sessionId": state.session_id, "captured": str(state.captured), "released": str(state.released),
                    "receipt": receipt}
            return HttpResponse.json(200, body, [("Payment-Receipt", receipt), ("Cache-Control", "private")])
        if call.payload.action == "open":
            raise VoucherInvalid("open a session on the priced route it was offered for")
        state = await desk.accept(call, None)
        body = {"sessionId": state.session_id, "authorized": str(state.authorized), "spent": str(state.spent),
                "cap": str(state.cap)}
        return HttpResponse.json(200, body, [("Cache-Control", "no-store")])
    except PaymentProblem as problem:
        await engine.refused(problem, info, now, call.session_id if call else None)
        return engine.problem(problem, None, info, now)


async def close_session(desk: SessionKeeper, session_id: str, *, by: str) -> SessionState:
    """Capture exactly what was spent and release the rest, once; idempotent."""
    engine = desk.engine
    config = engine.config
    now = config.clock()
    state = await desk.store.get(session_id)
    if state is None:
        raise SessionUnknown("no such session at this seller")
    if state.status == "closed":
        return state
    opened = state.status != "opening"
    state = await desk.store.begin_close(session_id, now)  # RequestInProgress while requests run
    rail = engine.rails.get("ledger") or next(iter(engine.rails.values()))
    capture = state.spent
    if opened or capture:
        result = await rail.close_session(session_id, capture=capture, voucher=state.voucher)
        captured, released, reference = result.captured, result.released, result.capture_ref or "none"
    else:  # a crash between recording the open and holding it: nothing was ever held
        try:
            result = await rail.close_session(session_id, capture=0, voucher=None)
            captured, released, reference = result.captured, result.released, result.capture_ref or "none"
        except SessionUnknown:
            captured, released, reference = 0, 0, "none"
    lines = await desk.store.usage(session_id)
    claims: dict[str, Any] = {
        "iss": config.realm, "sub": state.signer, "iat": int(now.timestamp()), "jti": "close:" + session_id,
        "challengeId": session_id, "method": "ledger", "intent": "session", "reference": session_id, "final": True,
        "closedBy": by, "currency": state.terms.currency, "recipient": state.terms.recipient, "account": state.payer,
        "cap": str(state.cap), "authorized": str(state.authorized), "spent": str(state.spent), "remaining": "0",
        "captured": str(captured), "released": str(released), "settlementRef": reference,
        "amount": str(captured), "lines": [line.as_json() for line in lines],
        "units": sum(line.units for line in lines), "requests": sum(line.requests for line in lines),
    } | identity_claims(state)
    header = format_receipt(PaymentReceipt(status="success", method="ledger", timestamp=format_rfc3339(now),
                                           reference=session_id, challengeId=session_id, intent="session",
                                           authorized=str(state.authorized), spent=str(state.spent), remaining="0",
                                           settlementRef=reference, final=True,
                                           receipt=sign_receipt(config.receipt_key, claims)))
    state = await desk.store.finish_close(session_id, captured=captured, released=released, settlement=reference,
                                          final_receipt=header, now=now)
    who = state.identity or {}
    await engine.audit("session-close", sessionId=session_id, captured=str(captured), released=str(released), by=by,
                       reference=reference, currency=state.terms.currency, realm=config.realm,
                       agent=who.get("agent", state.signer), principal=who.get("principal"))
    log.info("session closed id=%s by=%s captured=%s released=%s", session_id, by, captured, released)
    return state


def _action_of(header: str) -> Any:
    try:
        payload = parse_credential(header).payload
    except ParseError:
        return None  # the full check reports it
    return payload.get("action") if isinstance(payload, dict) else None


def identity_claims(state: SessionState) -> dict[str, Any]:
    """What a session receipt says about the identity the session was opened under."""
    if not state.identity:
        return {}
    claims = {k: state.identity[k] for k in ("agent", "principal", "mandate", "chain", "decision") if k in state.identity}
    return claims | {"approval": None}  # sessions are opened within the mandate, never on an approval
