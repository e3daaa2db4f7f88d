"""The seller's side of the ``session`` intent: open, vouchers, per-request charging, streaming,
close and idle close (spec/intents/session.md).

This module waits on the event loop (a stream waiting for an in-band voucher, the idle
sweeper), so it is the one engine module that imports asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mpp.engine.attribution import mark_attributed
from mpp.engine.core import RequestInfo, SellerCore, SessionCall
from mpp.engine.http import HttpRequest, HttpResponse, Serve, Served, private_cache_control
from mpp.engine.mandates import check_session_identity
from mpp.engine.meters import SessionMeter, StreamStopped, usage_route
from mpp.engine.session_close import SESSION_PATH, close_session, identity_claims, session_endpoint
from mpp.engine.purchase import Context
from mpp.intents.session import INTENT as SESSION_INTENT
from mpp.intents.session import SessionClosed, SessionInsufficient, SessionUnknown, VoucherInvalid, verify_cap, verify_voucher
from mpp.pricing import Route
from mpp.pricing.prices import Metered
from mpp.protocol.errors import BadRequest, MalformedCredential, ParseError, RequestInProgress
from mpp.protocol.headers import format_receipt, idempotency_key, parse_credential
from mpp.protocol.models import PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import sign_receipt
from mpp.stores.payments import StoredResponse
from mpp.stores.sessions import SessionState, SessionStore

if TYPE_CHECKING:
    from mpp.engine.shop import Shop

__all__ = ["SESSION_PATH", "SessionDesk"]

log = logging.getLogger("mpp.seller.sessions")
_KEPT_HEADERS = ("Content-Type", "Content-Language", "Location", "ETag", "Payment-Receipt", "Cache-Control")


class SessionDesk:
    """The seller's session bookkeeping: open, vouchers, per-request charging, close, idle close."""

    def __init__(self, engine: "Shop", store: SessionStore, *, sweep_interval: float = 1.0,
                 voucher_timeout: float = 30.0) -> None:
        self.engine = engine
        self.store = store
        self.sweep_interval = sweep_interval
        self.voucher_timeout = voucher_timeout  # how long a stream waits for an in-band voucher
        self._waiters: dict[str, asyncio.Event] = {}
        # a request's voucher accepted in its reservation's transaction (one write fewer); False: the
        # voucher accepted first (``accept``), then the reservation made, as for any other action
        self.vouchers_with_reservation = True
        # what never changes once a session is open (signer, terms, payer), by session id: a voucher
        # request is checked against it without reading the session (its status is judged in reserve)
        self._fixed: dict[str, SessionState] = {}

    @staticmethod
    def parse_session_call(core: SellerCore, info: RequestInfo, now: datetime) -> SessionCall | None:
        """The request's credential if it is for the session intent (checked statelessly), else None."""
        header = core.payment_credential(info)
        if header is None:
            return None
        try:
            credential = parse_credential(header)
        except ParseError as exc:
            raise MalformedCredential(f"credential is malformed: {exc}") from None
        if credential.challenge.intent != SESSION_INTENT:
            return None
        return core.verify_session(credential, info, now)

    def session_call(self, info: RequestInfo, now: datetime) -> SessionCall | None:
        """:meth:`parse_session_call` with this seller's core."""
        return self.parse_session_call(self.engine.core, info, now)

    # -- vouchers ------------------------------------------------------------

    async def wait_for_voucher(self, session_id: str, timeout: float) -> None:
        """Until a voucher for the session arrives, or ``timeout`` seconds."""
        event = self._waiters.setdefault(session_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            if event.is_set():
                self._waiters.pop(session_id, None)

    async def _state_for(self, call: SessionCall, *, known: bool = False) -> SessionState:
        """The session the call names, open, with its signer and terms. ``known``: from what this
        process has seen of it, when it has (a voucher request: the reservation judges its status)."""
        state = self._fixed.get(call.session_id) if known else None
        if state is None:
            state = await self.store.get(call.session_id)
            if state is None:
                raise SessionUnknown("no such session at this seller")
            if state.status != "open":
                raise SessionClosed(f"session is {state.status}; open a new one")
            if len(self._fixed) >= 10_000:  # bounded: a process serving more sessions reads the older ones again
                self._fixed.clear()
            self._fixed[call.session_id] = state
        if state.signer != call.payload.signer:
            raise VoucherInvalid("the session was opened by another key")
        if state.terms != call.terms:
            raise VoucherInvalid("the credential's terms differ from the session's")
        return state

    async def accept(self, call: SessionCall, metered: Metered | None) -> SessionState:
        """Open, top up or advance the session as the payload says; the session is usable after."""
        p = call.payload
        engine = self.engine
        now = engine.config.clock()
        if p.action == "close":
            raise VoucherInvalid("close a session with POST " + SESSION_PATH)
        if p.action == "open":
            state = await self._open(call, metered, now)
            self._fixed[state.session_id] = state
        else:
            state = await self._state_for(call)
        if p.voucher is not None:  # every signature before anything changes (SESSION-ERR-03)
            verify_voucher(state.signer, state.terms, p.voucher)
            mark_attributed()  # the session's own key signed this request
        if p.action == "topUp":
            assert p.cap is not None and p.cap_signature is not None
            verify_cap(state.signer, state.terms, account=state.payer, cap=p.cap, signature=p.cap_signature)
            if p.cap > state.cap:
                rail = engine.rails[call.credential.challenge.method]
                await rail.top_up_session(state.session_id, cap=p.cap, cap_signature=p.cap_signature)
                state = await self.store.set_cap(state.session_id, p.cap)
                await engine.audit("session-top-up", sessionId=state.session_id, cap=str(p.cap), agent=state.signer)
        if p.voucher is not None:
            state = await self.store.advance(state.session_id, p.voucher, now)
            waiter = self._waiters.pop(state.session_id, None)
            if waiter is not None:
                waiter.set()
        return state

    async def _open(self, call: SessionCall, metered: Metered | None, now: datetime) -> SessionState:
        p = call.payload
        engine = self.engine
        assert p.account is not None and p.cap is not None and p.cap_signature is not None and p.voucher is not None
        verify_cap(p.signer, call.terms, account=p.account, cap=p.cap, signature=p.cap_signature)
        verify_voucher(p.signer, call.terms, p.voucher)
        if p.cap < call.request.max_request_cost:
            raise SessionInsufficient("the cap does not cover one request", sessionId=call.session_id,
                                      required=str(call.request.max_request_cost), authorized="0", spent="0", cap=str(p.cap))
        identity, mandate, chain = None, None, None
        if (metered is not None and metered.require_identity) or call.credential.extra_member("identity") is not None:
            identity, mandate, chain = await check_session_identity(engine, call, now)
        rail = engine.rails[call.credential.challenge.method]
        # LEDGER-ACCT-05: a payer the ledger would refuse is told so before anything is recorded
        await rail.check_payer(p.account, p.signer, chain)
        mark_attributed()
        state, created = await self.store.create(
            call.terms, payer=p.account, signer=p.signer, unit_type=call.request.unitType, cap=p.cap,
            idle_timeout=call.request.idle_timeout, identity=identity, now=now)
        if not created and (state.payer, state.signer) != (p.account, p.signer):
            raise VoucherInvalid("this session was opened with another account or key")
        if state.status == "opening":
            await rail.open_session(call.terms, payer=p.account, signer=p.signer, cap=p.cap,
                                    cap_signature=p.cap_signature, mandate=mandate)
            state = await self.store.mark_open(state.session_id, p.cap)
            who = identity or {}
            await engine.audit("session-open", sessionId=state.session_id, cap=str(p.cap), currency=call.terms.currency,
                               resource=call.resource, realm=engine.config.realm, agent=who.get("agent", p.signer),
                               principal=who.get("principal"), mandate=who.get("mandate"))
            log.info("session opened id=%s cap=%s %s", state.session_id, p.cap, call.terms.currency)
        elif state.status != "open":
            raise SessionClosed(f"session is {state.status}; open a new one")
        return state

    # -- serving -------------------------------------------------------------

    async def serve(self, request: HttpRequest, serve: Serve, call: SessionCall, metered: Metered,
                    route: Route | None = None) -> HttpResponse | Served:
        """A metered route paid from a session: reserve, run the handler, commit what it used."""
        if (call.terms.currency, call.terms.recipient) != (metered.currency, call.request.recipient):
            raise VoucherInvalid("the session is in another currency than this route")
        p = call.payload
        voucher = None
        if self.vouchers_with_reservation and p.action == "voucher" and not metered.stream and p.voucher is not None:
            # the common request: the voucher checked here, accepted with the reservation, one transaction
            state = await self._state_for(call, known=True)
            verify_voucher(state.signer, state.terms, p.voucher)
            mark_attributed()  # the session's own key signed this request
            voucher = p.voucher
        else:
            state = await self.accept(call, metered)
        meter = SessionMeter(metered, call.resource, desk=self, state=state, call=call)
        if metered.stream:
            return await self._serve_stream(serve, meter)
        sid = state.session_id
        key = idempotency_key(list(request.headers_all("Idempotency-Key")))
        if key is not None:
            status, stored = await self.store.keys.claim(sid, key, call.resource)
            if status == "done":
                assert stored is not None
                return HttpResponse(stored.status, [*stored.headers, ("Idempotent-Replayed", "true")], stored.body)
            if status == "running":
                raise RequestInProgress("the original request with this Idempotency-Key is still running")
            if status == "conflict":
                raise BadRequest("this Idempotency-Key was used for another resource in this session")
        try:
            served = await self._serve_once(serve, call, metered, meter, sid, key, voucher)
        except BaseException:
            if key is not None:
                await self.store.keys.drop(sid, key)
            raise
        if key is not None and served.status >= 400:
            await self.store.keys.drop(sid, key)
        return served

    async def _serve_once(self, serve: Serve, call: SessionCall, metered: Metered, meter: SessionMeter, sid: str,
                          key: str | None = None, voucher: Any = None) -> Served:
        clock = self.engine.config.clock
        if voucher is None:
            await self.store.reserve(sid, meter.request_id, metered.max_request_cost, clock())
        else:
            await self.store.reserve(sid, meter.request_id, metered.max_request_cost, clock(), voucher=voucher)
            waiter = self._waiters.pop(sid, None)  # a stream of the session waiting for value
            if waiter is not None:
                waiter.set()
        try:
            served = await serve(Context(meter=meter))
        except BaseException:
            await self.store.release(sid, meter.request_id)  # nothing delivered, nothing charged
            raise
        if served.status >= 400 or served.raised is not None:
            await self.store.release(sid, meter.request_id)
            return served
        amount = metered.cost(meter.units)

        def render(state: SessionState) -> StoredResponse | None:
            """The receipt for the state this commit produced; and, for an Idempotency-Key, the
            response kept for retries, written in the commit's own transaction."""
            cache = next((v for k, v in served.headers if k.lower() == "cache-control"), None)
            served.set_headers |= {"Payment-Receipt": self.request_receipt(call, state, metered, meter.request_id, amount,
                                                                           meter.units),
                                   "Cache-Control": private_cache_control(cache)}
            if key is None or served.body is None:
                return None
            headers = [(k, v) for k, v in served.headers if k.lower() not in ("payment-receipt", "cache-control")]
            headers += list(served.set_headers.items())
            kept = [(name, v) for name in _KEPT_HEADERS for k, v in headers if k.lower() == name.lower()]
            return StoredResponse(served.status, kept, served.body)

        await self.store.commit(sid, meter.request_id, resource=usage_route(call.resource), unit_price=metered.price,
                                per=metered.per, units=meter.units, amount=amount, now=clock(),
                                idempotency_key=key, render=render)
        meter.charged = amount
        return served

    async def _serve_stream(self, serve: Serve, meter: SessionMeter) -> Served:
        try:
            return await serve(Context(meter=meter))
        except StreamStopped:
            return Served(200, native=await meter.stop())

    def request_receipt(self, call: SessionCall, state: SessionState, metered: Metered, request_id: str, amount: int,
                        units: int) -> str:
        """The signed receipt for one request's use of the session."""
        config = self.engine.config
        now = config.clock()
        claims: dict[str, Any] = {
            "iss": config.realm, "sub": state.signer, "iat": int(now.timestamp()), "jti": request_id,
            "challengeId": state.session_id, "method": call.credential.challenge.method, "intent": "session",
            "reference": state.session_id, "amount": str(amount), "units": units, "unitType": state.unit_type,
            "unitPrice": str(metered.price), "per": str(metered.per),
            "currency": state.terms.currency, "recipient": state.terms.recipient, "resource": call.resource,
            "authorized": str(state.authorized), "spent": str(state.spent), "remaining": str(state.remaining),
            "cap": str(state.cap), "account": state.payer,
        } | identity_claims(state)
        return format_receipt(PaymentReceipt(status="success", method=call.credential.challenge.method,
                                             timestamp=format_rfc3339(now), reference=state.session_id,
                                             challengeId=state.session_id, intent="session", authorized=str(state.authorized),
                                             spent=str(state.spent), remaining=str(state.remaining),
                                             receipt=sign_receipt(config.receipt_key, claims)))

    # -- the session endpoint and close (mpp.engine.session_close), idle close --

    async def endpoint(self, request: HttpRequest) -> HttpResponse:
        """POST /.well-known/mpp-session: in-band vouchers, top-ups and close."""
        return await session_endpoint(self, request)

    async def close(self, session_id: str, *, by: str) -> SessionState:
        """Capture exactly what was spent and release the rest, once; idempotent."""
        return await close_session(self, session_id, by=by)

    async def sweep(self) -> int:
        """Close every idle session; the number closed."""
        closed = 0
        for sid in await self.store.idle(self.engine.config.clock()):
            try:
                await self.close(sid, by="idle")
                closed += 1
            except RequestInProgress:
                continue
            except Exception:  # one bad session must not stop the sweeper; it is retried next round
                log.exception("idle close of session %s failed", sid)
        return closed

    async def sweep_forever(self) -> None:
        """The idle sweeper and this process's heartbeat, until cancelled (run it as a task)."""
        while True:
            try:
                await self.store.heartbeat(self.engine.config.clock())
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # a dropped database connection must not end the heartbeat for good
                log.exception("session sweeper round failed; retrying")
            await asyncio.sleep(self.sweep_interval)

