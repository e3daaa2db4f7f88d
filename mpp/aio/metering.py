"""The seller's side of the ``session`` intent: per-unit routes, vouchers, streaming, close.

A handler of a metered route reports what it used through its meter:

    @seller.meter(unit="token", price=2, per=1000, currency="usd", max_units=4000)
    async def complete(request):
        text, tokens = generate(...)
        meter_of(request).report(tokens)
        return web.json_response({"text": text})

and a streaming one charges each chunk before sending it:

    @seller.meter(unit="token", price=2, per=1000, currency="usd", stream=True)
    async def stream(request):
        meter = meter_of(request)
        await meter.start(request)
        for chunk, tokens in generate_stream(...):
            await meter.send(chunk, units=tokens)  # asks for the next voucher in-band when short
        return await meter.finish()

The same handler serves a buyer that paid by ``charge``: its meter only checks the units
against what the charge covered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from multidict import CIMultiDict

from mpp.protocol.errors import BadRequest, PaymentProblem, RequestInProgress
from mpp.protocol.errors import ParseError
from mpp.protocol.headers import format_receipt, idempotency_key, parse_credential
from mpp.aio.attribution import mark_attributed, start_request
from mpp.identity import MandateRevoked, evaluate_policy, period_key, verify_identity
from mpp.pricing import check_offer_allowed, quoted_offer
from mpp.ledger import MandateCharge
from mpp.protocol.models import ChargeRequest, PaymentReceipt, format_rfc3339
from mpp.protocol.receipts import sign_receipt
from mpp.engine.core import RequestInfo, SessionCall
from mpp.pricing.prices import Metered
from mpp.intents.session import (
    SessionClosed,
    SessionInsufficient,
    SessionUnknown,
    VoucherInvalid,
    verify_cap,
    verify_close,
    verify_voucher,
)
from mpp.stores.sessions import SessionState, SessionStore
from mpp.stores.payments import StoredResponse

if TYPE_CHECKING:
    from mpp.aio.seller import Seller

__all__ = ["SESSION_PATH", "Meter", "ChargeMeter", "SessionMeter", "StreamStopped", "meter_of", "METER_KEY", "SessionDesk"]

log = logging.getLogger("mpp.seller.sessions")
SESSION_PATH = "/.well-known/mpp-session"
_KEPT_HEADERS = ("Content-Type", "Content-Language", "Location", "ETag", "Payment-Receipt", "Cache-Control")


class StreamStopped(Exception):
    """The buyer did not send the next voucher in time; the stream has been ended cleanly."""


def meter_of(request: web.Request) -> "Meter":
    meter = request.get(METER_KEY)
    if meter is None:
        raise LookupError("this request was not paid through a metered route")
    return meter


@dataclass
class Meter:
    """What a metered handler reports its usage to."""

    metered: Metered
    resource: str  # what the receipt names: method, path and query
    units: int = 0
    response: web.StreamResponse | None = None

    def report(self, units: int) -> None:
        """Add ``units`` of use by this (non-streaming) request; at most ``max_units`` in all."""
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ValueError("units must be a non-negative integer")
        if self.units + units > self.metered.max_units:
            raise ValueError(f"a request of this route may use at most {self.metered.max_units} {self.metered.unit}")
        self.units += units

    async def start(self, request: web.Request, *, headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Begin a server-sent events response."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "private, no-cache",
                                               **(headers or {})})
        await response.prepare(request)
        self.response = response
        return response

    async def _event(self, event: str | None, data: str) -> None:
        assert self.response is not None, "call start() first"
        lines = [f"event: {event}"] if event else []
        lines += [f"data: {line}" for line in data.split("\n")]
        await self.response.write(("\n".join(lines) + "\n\n").encode())

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        raise NotImplementedError

    async def finish(self) -> web.StreamResponse:
        raise NotImplementedError


@dataclass
class ChargeMeter(Meter):
    """The route was paid by ``charge``: the price covered ``max_units``, and that is all."""

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        if self.units + units > self.metered.max_units:
            await self._event("payment-exhausted", json.dumps({"units": self.units, "maxUnits": self.metered.max_units}))
            raise StreamStopped("the charge covered no more units")
        self.units += units
        await self._event(event, data)

    async def finish(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response


@dataclass
class SessionMeter(Meter):
    desk: "SessionDesk | None" = None
    state: SessionState | None = None
    call: SessionCall | None = None
    request_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    charged: int = 0  # base units committed for this request so far

    async def send(self, data: str, *, units: int, event: str | None = None) -> None:
        """Charge ``units`` and then send ``data``; when the session's accepted value is short,
        ask for a voucher in-band and wait for it, instead of failing the stream."""
        assert self.desk is not None and self.state is not None
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ValueError("units must be a non-negative integer")
        amount = self.metered.cost(self.units + units) - self.charged
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.desk.voucher_timeout
        asked = False
        while True:
            try:
                self.state = await self.desk.store.commit(
                    self.state.session_id, self.request_id, resource=_route(self.resource), unit_price=self.metered.price,
                    per=self.metered.per, units=units, amount=amount, now=self.desk.seller.clock())
                break
            except SessionClosed:  # closed while streaming: stop, with a receipt for what was sent
                await self._send_receipt()
                raise StreamStopped("the session was closed") from None
            except SessionInsufficient as short:
                if not asked:
                    await self._event("payment-required", json.dumps({k: short.extensions[k] for k in
                                                                      ("sessionId", "required", "authorized", "spent", "cap")}))
                    asked = True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._event("payment-timeout", json.dumps({"sessionId": self.state.session_id}))
                    await self._send_receipt()
                    raise StreamStopped("no voucher arrived in time") from None
                await self.desk.wait_for_voucher(self.state.session_id, min(remaining, 0.5))
        self.units += units
        self.charged += amount
        await self._event(event, data)

    async def _send_receipt(self) -> None:
        assert self.desk is not None and self.state is not None and self.call is not None
        header = self.desk.request_receipt(self.call, self.state, self.metered, self.request_id, self.charged, self.units)
        await self._event("payment-receipt", json.dumps({"receipt": header}))

    async def finish(self) -> web.StreamResponse:
        assert self.response is not None
        await self._send_receipt()
        await self.response.write_eof()
        return self.response


class SessionDesk:
    """The seller's session bookkeeping: open, vouchers, per-request charging, close, idle close."""

    def __init__(self, seller: "Seller", store: SessionStore, *, sweep_interval: float = 1.0,
                 voucher_timeout: float = 30.0) -> None:
        self.seller = seller
        self.store = store
        self.sweep_interval = sweep_interval
        self.voucher_timeout = voucher_timeout  # how long a stream waits for an in-band voucher
        self._waiters: dict[str, asyncio.Event] = {}

    # -- vouchers ------------------------------------------------------------

    async def wait_for_voucher(self, session_id: str, timeout: float) -> None:
        event = self._waiters.setdefault(session_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            if event.is_set():
                self._waiters.pop(session_id, None)

    def _voucher_arrived(self, session_id: str) -> None:
        event = self._waiters.pop(session_id, None)
        if event is not None:
            event.set()

    async def _state_for(self, call: SessionCall) -> SessionState:
        state = await self.store.get(call.session_id)
        if state is None:
            raise SessionUnknown("no such session at this seller")
        if state.status != "open":
            raise SessionClosed(f"session is {state.status}; open a new one")
        if state.signer != call.payload.signer:
            raise VoucherInvalid("the session was opened by another key")
        if state.terms != call.terms:
            raise VoucherInvalid("the credential's terms differ from the session's")
        return state

    async def accept(self, call: SessionCall, metered: Metered | None) -> SessionState:
        """Open, top up or advance the session as the payload says; the session is usable after."""
        p = call.payload
        now = self.seller.clock()
        if p.action == "close":
            raise VoucherInvalid("close a session with POST " + SESSION_PATH)
        if p.action == "open":
            state = await self._open(call, metered, now)
        else:
            state = await self._state_for(call)
        if p.voucher is not None:  # every signature before anything changes (SESSION-ERR-03)
            verify_voucher(state.signer, state.terms, p.voucher)
            mark_attributed()  # the session's own key signed this request
        if p.action == "topUp":
            assert p.cap is not None and p.cap_signature is not None
            verify_cap(state.signer, state.terms, account=state.payer, cap=p.cap, signature=p.cap_signature)
            if p.cap > state.cap:
                rail = self.seller._rails[call.credential.challenge.method]
                await rail.top_up_session(state.session_id, cap=p.cap, cap_signature=p.cap_signature)
                state = await self.store.set_cap(state.session_id, p.cap)
                await self.seller._audit("session-top-up", sessionId=state.session_id, cap=str(p.cap), agent=state.signer)
        if p.voucher is not None:
            state = await self.store.advance(state.session_id, p.voucher, now)
            self._voucher_arrived(state.session_id)
        return state

    async def _open(self, call: SessionCall, metered: Metered | None, now: datetime) -> SessionState:
        p = call.payload
        assert p.account is not None and p.cap is not None and p.cap_signature is not None and p.voucher is not None
        verify_cap(p.signer, call.terms, account=p.account, cap=p.cap, signature=p.cap_signature)
        verify_voucher(p.signer, call.terms, p.voucher)
        if p.cap < call.request.max_request_cost:
            raise SessionInsufficient("the cap does not cover one request", sessionId=call.session_id,
                                      required=str(call.request.max_request_cost), authorized="0", spent="0", cap=str(p.cap))
        identity, mandate = None, None
        wants_identity = (metered is not None and metered.require_identity) or call.credential.extra_member("identity") is not None
        chain = None
        if wants_identity:
            identity, mandate, chain = await self._check_identity(call, now)
        # LEDGER-ACCT-05: a payer the ledger would refuse is told so before anything is recorded
        await self.seller._rails[call.credential.challenge.method].check_payer(p.account, p.signer, chain)
        mark_attributed()
        state, created = await self.store.create(
            call.terms, payer=p.account, signer=p.signer, unit_type=call.request.unitType, cap=p.cap,
            idle_timeout=call.request.idle_timeout, identity=identity, now=now)
        if not created and (state.payer, state.signer) != (p.account, p.signer):
            raise VoucherInvalid("this session was opened with another account or key")
        if state.status == "opening":
            rail = self.seller._rails[call.credential.challenge.method]
            await rail.open_session(call.terms, payer=p.account, signer=p.signer, cap=p.cap,
                                    cap_signature=p.cap_signature, mandate=mandate)
            state = await self.store.mark_open(state.session_id, p.cap)
            await self.seller._audit("session-open", sessionId=state.session_id, cap=str(p.cap), currency=call.terms.currency,
                                     resource=call.resource, realm=self.seller.realm, agent=(identity or {}).get("agent", p.signer),
                                     principal=(identity or {}).get("principal"), mandate=(identity or {}).get("mandate"))
            log.info("session opened id=%s cap=%s %s", state.session_id, p.cap, call.terms.currency)
        elif state.status != "open":
            raise SessionClosed(f"session is {state.status}; open a new one")
        return state

    async def _check_identity(self, call: SessionCall, now: datetime) -> tuple[dict[str, Any], MandateCharge, tuple[str, ...]]:
        """The mandate chain and proof over the opening challenge (SESSION-ID-01).

        Scope, currency, ceiling and approval threshold are judged per request, on the most one
        request may cost; the budget is judged on the cap, atomically by the ledger's hold."""
        seller = self.seller
        vid = verify_identity(call.credential, call.request, payment_signer=call.payload.signer,  # type: ignore[arg-type]
                              trusted_principals=seller.trusted_principals, realm=seller.realm, now=now,
                              max_depth=seller.max_chain_depth)
        chain = vid.chain
        mark_attributed()
        rail = seller._rails[call.credential.challenge.method]
        if await rail.revoked(chain.keys):
            raise MandateRevoked("a mandate in the chain has been revoked")
        at_stake = ChargeRequest(amount=str(call.request.max_request_cost), currency=call.terms.currency,
                                 recipient=call.terms.recipient)
        periods = {link.key: period_key(link.budget_period, now) for link in chain.links}
        charged = await seller.store.mandate_spent(periods)  # this seller's charges under each link
        held = await self.store.mandates.held(periods)  # and its sessions'
        spent = {key: charged.get(key, 0) + held.get(key, 0) for key in periods}
        decision = evaluate_policy(chain, call.credential.challenge, at_stake, call.resource, spent=spent, approval=None)
        # PRICE-MDT-02: a unit offer the chain excludes, or above its unit price, is refused before anything is held
        check_offer_allowed(quoted_offer(call.credential.challenge.request_json, call.credential.challenge.intent),
                            chain.restrictions)
        await seller._audit("policy-decision", decision=decision.decision, reason=decision.reason, challengeId=call.session_id,
                            agent=chain.agent, principal=chain.principal, mandate=chain.leaf.jti, resource=call.resource,
                            amount=str(call.payload.cap), currency=call.terms.currency, realm=seller.realm, intent="session")
        identity = {"agent": chain.agent, "principal": chain.principal, "mandate": chain.leaf.jti, "chain": list(chain.jtis),
                    "decision": decision.decision, "charged": charged,
                    "links": [[link.key, periods[link.key], link.budget_amount] for link in chain.links]}
        return identity, MandateCharge(tuple(chain.tokens), seller.realm), chain.dids

    # -- serving -------------------------------------------------------------

    async def serve(self, request: web.Request, handler: Any, call: SessionCall, metered: Metered,
                    info: RequestInfo) -> web.StreamResponse:
        state = await self.accept(call, metered)
        meter = SessionMeter(metered, call.resource, desk=self, state=state, call=call)
        request[METER_KEY] = meter
        if metered.stream:
            return await self._serve_stream(request, handler, meter)
        sid = state.session_id
        key = idempotency_key(request.headers.getall("Idempotency-Key", ()))
        if key is not None:
            status, stored = await self.store.keys.claim(sid, key, call.resource)
            if status == "done":
                assert stored is not None
                return web.Response(status=stored.status, body=stored.body,
                                    headers=CIMultiDict([*stored.headers, ("Idempotent-Replayed", "true")]))
            if status == "running":
                raise RequestInProgress("the original request with this Idempotency-Key is still running")
            if status == "conflict":
                raise BadRequest("this Idempotency-Key was used for another resource in this session")
        try:
            response = await self._serve_once(request, handler, call, metered, meter, sid, key)
        except BaseException:
            if key is not None:
                await self.store.keys.drop(sid, key)
            raise
        if key is not None and response.status >= 400:
            await self.store.keys.drop(sid, key)
        return response

    async def _serve_once(self, request: web.Request, handler: Any, call: SessionCall, metered: Metered,
                          meter: "SessionMeter", sid: str, key: str | None = None) -> web.StreamResponse:
        await self.store.reserve(sid, meter.request_id, metered.max_request_cost, self.seller.clock())
        try:
            response = await handler(request)
        except BaseException:
            await self.store.release(sid, meter.request_id)  # nothing delivered, nothing charged
            raise
        if response.status >= 400:
            await self.store.release(sid, meter.request_id)
            return response
        amount = metered.cost(meter.units)

        def render(state: SessionState) -> StoredResponse | None:
            """The receipt for the state this commit produced; and, for an Idempotency-Key, the
            response kept for retries, written in the commit's own transaction."""
            response.headers["Payment-Receipt"] = self.request_receipt(call, state, metered, meter.request_id, amount,
                                                                       meter.units)
            _private(response)
            if key is None or not isinstance(response, web.Response) or not isinstance(response.body, (bytes, bytearray)):
                return None
            kept = [(k, v) for k in _KEPT_HEADERS for v in response.headers.getall(k, ())]
            return StoredResponse(response.status, kept, bytes(response.body))

        await self.store.commit(sid, meter.request_id, resource=_route(call.resource), unit_price=metered.price,
                                per=metered.per, units=meter.units, amount=amount, now=self.seller.clock(),
                                idempotency_key=key, render=render)
        meter.charged = amount
        return response

    async def _serve_stream(self, request: web.Request, handler: Any, meter: SessionMeter) -> web.StreamResponse:
        try:
            response = await handler(request)
        except StreamStopped:
            assert meter.response is not None
            await meter.response.write_eof()
            return meter.response
        return response

    def request_receipt(self, call: SessionCall, state: SessionState, metered: Metered, request_id: str, amount: int,
                        units: int) -> str:
        seller = self.seller
        now = seller.clock()
        claims: dict[str, Any] = {
            "iss": seller.realm, "sub": state.signer, "iat": int(now.timestamp()), "jti": request_id,
            "challengeId": state.session_id, "method": call.credential.challenge.method, "intent": "session",
            "reference": state.session_id, "amount": str(amount), "units": units, "unitType": state.unit_type,
            "unitPrice": str(metered.price), "per": str(metered.per),
            "currency": state.terms.currency, "recipient": state.terms.recipient, "resource": call.resource,
            "authorized": str(state.authorized), "spent": str(state.spent), "remaining": str(state.remaining),
            "cap": str(state.cap), "account": state.payer,
        } | _identity_claims(state)
        return format_receipt(PaymentReceipt(status="success", method=call.credential.challenge.method,
                                             timestamp=format_rfc3339(now), reference=state.session_id,
                                             challengeId=state.session_id, intent="session", authorized=str(state.authorized),
                                             spent=str(state.spent), remaining=str(state.remaining),
                                             receipt=sign_receipt(seller.receipt_key, claims)))

    # -- the session endpoint: in-band vouchers and close ------------------------

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        start_request()
        seller = self.seller
        info = RequestInfo(method=request.method, path=request.rel_url.raw_path, query=request.rel_url.raw_query_string,
                           body=await request.read(), authorization=tuple(request.headers.getall("Authorization", ())))
        now = seller.clock()
        call = None
        try:
            header = seller.core.payment_credential(info)
            if header is not None and _action_of(header) == "open":
                raise VoucherInvalid("open a session on the priced route it was offered for")
            call = seller._session_call(info, now)
            if call is None:
                raise VoucherInvalid(f"{SESSION_PATH} takes a session credential (action voucher, topUp or close)")
            if call.payload.action == "close":
                state = await self.store.get(call.session_id)
                if state is None:
                    raise SessionUnknown("no such session at this seller")
                if state.signer != call.payload.signer or state.terms != call.terms:
                    raise VoucherInvalid("the session was opened by another key or on other terms")
                assert call.payload.close_signature is not None
                verify_close(state.signer, state.terms, call.payload.close_signature)
                mark_attributed()
                if call.payload.voucher is not None and state.status == "open":
                    verify_voucher(state.signer, state.terms, call.payload.voucher)
                    await self.store.advance(state.session_id, call.payload.voucher, now)
                state = await self.close(call.session_id, by="buyer")
                header = state.final_receipt or ""
                body = {"sessionId": state.session_id, "captured": str(state.captured), "released": str(state.released),
                        "receipt": header}
                return web.json_response(body, headers={"Payment-Receipt": header, "Cache-Control": "private"})
            if call.payload.action == "open":
                raise VoucherInvalid("open a session on the priced route it was offered for")
            state = await self.accept(call, None)
            body = {"sessionId": state.session_id, "authorized": str(state.authorized), "spent": str(state.spent),
                    "cap": str(state.cap)}
            return web.json_response(body, headers={"Cache-Control": "no-store"})
        except PaymentProblem as problem:
            await seller._refused(problem, info, now, call.session_id if call else None)
            return seller._problem(problem, None, info, now)

    async def close(self, session_id: str, *, by: str) -> SessionState:
        """Capture exactly what was spent and release the rest, once; idempotent."""
        seller = self.seller
        now = seller.clock()
        state = await self.store.get(session_id)
        if state is None:
            raise SessionUnknown("no such session at this seller")
        if state.status == "closed":
            return state
        opened = state.status != "opening"
        state = await self.store.begin_close(session_id, now)  # RequestInProgress while requests run
        rail = seller._rails.get("ledger") or next(iter(seller._rails.values()))
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
        lines = await self.store.usage(session_id)
        claims: dict[str, Any] = {
            "iss": seller.realm, "sub": state.signer, "iat": int(now.timestamp()), "jti": "close:" + session_id,
            "challengeId": session_id, "method": "ledger", "intent": "session", "reference": session_id, "final": True,
            "closedBy": by, "currency": state.terms.currency, "recipient": state.terms.recipient, "account": state.payer,
            "cap": str(state.cap), "authorized": str(state.authorized), "spent": str(state.spent), "remaining": "0",
            "captured": str(captured), "released": str(released), "settlementRef": reference,
            "amount": str(captured), "lines": [line.as_json() for line in lines],
            "units": sum(line.units for line in lines), "requests": sum(line.requests for line in lines),
        } | _identity_claims(state)
        header = format_receipt(PaymentReceipt(status="success", method="ledger", timestamp=format_rfc3339(now),
                                               reference=session_id, challengeId=session_id, intent="session",
                                               authorized=str(state.authorized), spent=str(state.spent), remaining="0",
                                               settlementRef=reference, final=True,
                                               receipt=sign_receipt(seller.receipt_key, claims)))
        state = await self.store.finish_close(session_id, captured=captured, released=released, settlement=reference,
                                              final_receipt=header, now=now)
        await seller._audit("session-close", sessionId=session_id, captured=str(captured), released=str(released), by=by,
                            reference=reference, currency=state.terms.currency, realm=seller.realm,
                            agent=(state.identity or {}).get("agent", state.signer), principal=(state.identity or {}).get("principal"))
        log.info("session closed id=%s by=%s captured=%s released=%s", session_id, by, captured, released)
        return state

    async def sweep(self) -> int:
        """Close every idle session; the number closed."""
        closed = 0
        for sid in await self.store.idle(self.seller.clock()):
            try:
                await self.close(sid, by="idle")
                closed += 1
            except RequestInProgress:
                continue
            except Exception:  # one bad session must not stop the sweeper; it is retried next round
                log.exception("idle close of session %s failed", sid)
        return closed

    async def sweeper(self, app: web.Application):
        async def loop() -> None:
            while True:
                try:
                    await self.store.heartbeat(self.seller.clock())
                    await self.sweep()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a dropped database connection must not end the heartbeat for good
                    log.exception("session sweeper round failed; retrying")
                await asyncio.sleep(self.sweep_interval)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await self.store.close()


def _action_of(header: str) -> Any:
    try:
        payload = parse_credential(header).payload
    except ParseError:
        return None  # the full check reports it
    return payload.get("action") if isinstance(payload, dict) else None


def _route(resource: str) -> str:
    """A usage line is per route: the resource without its query."""
    return resource.partition("?")[0]


def _identity_claims(state: SessionState) -> dict[str, Any]:
    if not state.identity:
        return {}
    claims = {k: state.identity[k] for k in ("agent", "principal", "mandate", "chain", "decision") if k in state.identity}
    return claims | {"approval": None}  # sessions are opened within the mandate, never on an approval


def _private(response: web.StreamResponse) -> None:
    directives = [d.strip() for d in response.headers.get("Cache-Control", "").split(",") if d.strip()]
    directives = [d for d in directives if d.lower() != "public" and not d.lower().startswith("s-maxage")]
    if not any(d.lower() in ("private", "no-store") for d in directives):
        directives.insert(0, "private")
    response.headers["Cache-Control"] = ", ".join(directives)


# Request key under which a metered handler finds its Meter (typed where aiohttp offers it).
METER_KEY: Any = web.RequestKey("mpp_meter", Meter) if hasattr(web, "RequestKey") else "mpp_meter"
