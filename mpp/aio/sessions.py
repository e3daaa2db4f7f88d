"""The buyer side of the ``session`` intent: which session challenge to accept, what each
open session holds, and which voucher (or top-up) the next request carries.

Nothing here sends a request; :class:`~mpp.aio.buyer.PaymentClient` does the I/O and asks the
:class:`SessionManager` what to put in the ``Authorization`` field. The manager's async parts are
a lock per session, so that vouchers are signed in sequence order, and what it awaits under
that lock: the agent's budget counters and the event hook (an audit log may be a database).

Vouchers are cumulative and only go up, so a voucher sent twice is harmless; the buyer still
never resends a request blindly (a 5xx or a network error after sending is OutcomeUnknown).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Mapping, Sequence

from mpp.stores.budget import BudgetLink
from mpp.buyer.core import BuyerPolicy, check_quote, origin_of
from mpp.protocol.errors import ParseError, QuoteRejected, ReceiptInvalid
from mpp.protocol.headers import format_credential, parse_receipt
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge, ChargeRequest, Credential, PaymentReceipt
from mpp.protocol.receipts import verify_receipt_jws
from mpp.intents.session import (
    INTENT,
    SessionPayload,
    SessionRequest,
    SessionTerms,
    Voucher,
    cost_of,
    sign_cap,
    sign_close,
    sign_voucher,
)

__all__ = [
    "SESSION_PATH",
    "SessionPolicy",
    "SessionOffer",
    "OpenSession",
    "SessionPlan",
    "SessionManager",
    "SSEEvent",
    "select_session",
    "check_session_quote",
    "verify_session_receipt",
    "parse_sse",
]

SESSION_PATH = "/.well-known/mpp-session"
METHOD = "ledger"
Event = Callable[..., Awaitable[None] | None]  # event(kind, **data), plain or async


@dataclass(frozen=True)
class SessionPolicy:
    """What the buyer lets a session hold, and how far its vouchers run ahead of use.

    ``max_cap``: the most one session may hold (base units); ``ahead``: how many max-cost
    requests of value a voucher keeps ahead of known spending; ``max_unit_price``: refuse a
    session quote whose ``amount`` (the price of ``per`` units) is above it; ``prefer``: which
    intent to take when a 402 offers both.
    """

    max_cap: int
    ahead: int = 2
    allow_top_up: bool = True
    max_unit_price: int | None = None
    prefer: str = "session"

    def __post_init__(self) -> None:
        if not isinstance(self.max_cap, int) or self.max_cap <= 0:
            raise ValueError("max_cap must be a positive integer in base units")
        if not isinstance(self.ahead, int) or self.ahead < 1:
            raise ValueError("ahead must be at least 1")
        if self.prefer not in ("session", "charge"):
            raise ValueError("prefer must be 'session' or 'charge'")


@dataclass(frozen=True)
class SessionOffer:
    """A session challenge we may accept, with the ledger method (key and account) to open it."""

    challenge: Challenge
    request: SessionRequest
    method: Any  # a LedgerBuyerMethod: has .key and .account


def _ledger_method(methods: Sequence[Any]) -> Any | None:
    for m in methods:
        if m.name == METHOD and isinstance(getattr(m, "key", None), SigningKey) and isinstance(getattr(m, "account", None), str):
            return m
    return None


def select_session(challenges: Sequence[Challenge], methods: Sequence[Any], policy: BuyerPolicy,
                   session_policy: SessionPolicy, now: datetime) -> tuple[SessionOffer | None, list[str]]:
    """The first ``ledger``/``session`` challenge we can open within policy, and why the others not.

    A policy refusal of the only challenge is raised (QuoteRejected), as ``select_quote`` does.
    """
    reasons: list[str] = []
    method = _ledger_method(methods)
    for challenge in challenges:
        if challenge.intent != INTENT:
            continue
        where = f"{challenge.method}/{challenge.intent}"
        if challenge.method != METHOD or method is None:
            reasons.append(f"{where}: no such method here")
            continue
        if challenge.header is not None:
            reasons.append(f"{where}: credential field {challenge.header!r} is not supported")
            continue
        try:
            request = SessionRequest.from_challenge(challenge)
        except ParseError as exc:
            reasons.append(f"{where}: {exc}")
            continue
        try:
            check_session_quote(challenge, request, policy, session_policy, now)
        except QuoteRejected as exc:
            if len(challenges) == 1:
                raise
            reasons.append(f"{where}: {exc}")
            continue
        return SessionOffer(challenge, request, method), reasons
    return None, reasons


def check_session_quote(challenge: Challenge, request: SessionRequest, policy: BuyerPolicy, session_policy: SessionPolicy,
                        now: datetime) -> None:
    """The charge rules (expiry, currency, recipient; one request's most cost against max_amount)
    plus the session's own: unit price, and a cap able to cover at least one request."""
    one_request = ChargeRequest(amount=str(request.max_request_cost), currency=request.currency, recipient=request.recipient,
                                methodDetails=request.methodDetails)
    check_quote(challenge, one_request, policy, now)
    if session_policy.max_unit_price is not None and request.unit_price > session_policy.max_unit_price:
        raise QuoteRejected("unit-price", f"price {request.amount} per {request.per} {request.unitType} is above "
                                          f"the limit {session_policy.max_unit_price}")
    if request.max_request_cost > session_policy.max_cap:
        raise QuoteRejected("max-cap", f"one request may cost {request.max_request_cost}, above the session cap limit "
                                       f"{session_policy.max_cap}")


# -- open sessions ------------------------------------------------------------------


@dataclass(eq=False)
class OpenSession:
    """What the buyer knows about one session it opened. Amounts in base units."""

    origin: tuple[str, str, int]
    url: str  # the URL the session was opened on (its origin receives SESSION_PATH posts)
    challenge: Challenge  # the opening challenge: every later credential echoes it
    request: SessionRequest
    terms: SessionTerms
    key: SigningKey
    account: str
    cap: int  # the highest cap we have signed
    cap_limit: int  # the most this session may ever hold (policy, mandate)
    voucher: Voucher  # the highest voucher we have signed
    confirmed_cap: int = 0  # the highest cap the seller has told us it holds
    spent: int = 0  # known from the seller's receipts and problems
    authorized: int = 0
    inflight: int = 0
    retired: bool = False  # no new requests; close when the last in-flight one is done
    closed: bool = False
    budget_links: tuple[BudgetLink, ...] | None = None  # reserved in the agent's BudgetStore, if any
    budget_touched: datetime | None = None
    last_used: datetime | None = None
    used_at: int = 0  # the manager's tick when last planned on: orders sessions of one origin by recency
    opened_cap: int = 0  # top-ups grow the cap by this much at a time
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    topup: asyncio.Event | None = field(default=None, repr=False)  # set while a topUp is in flight

    @property
    def id(self) -> str:
        return self.challenge.id

    @property
    def realm(self) -> str:
        return self.challenge.realm

    @property
    def max_request_cost(self) -> int:
        return self.request.max_request_cost

    @property
    def session_url(self) -> str:
        scheme, host, port = self.origin
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{SESSION_PATH}"

    def cost(self, units: int) -> int:
        return cost_of(units, self.request.unit_price, self.request.per)


@dataclass(frozen=True)
class SessionPlan:
    """What one request carries: a voucher, or a topUp (a new cap and a voucher)."""

    action: str  # "voucher" or "topUp"
    voucher: Voucher
    cap: int | None = None
    cap_signature: str | None = None


def _amount(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool):
        raise ReceiptInvalid(f"receipt {name} is not an amount")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ReceiptInvalid(f"receipt {name} {value!r} is not an amount")


def problem_amount(problem: Mapping[str, Any], name: str) -> int | None:
    try:
        return _amount(problem, name)
    except ReceiptInvalid:
        return None


def _count(claims: Mapping[str, Any], name: str) -> int:
    """A JSON integer >= 0 (``units``, ``requests``)."""
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReceiptInvalid(f"receipt {name} {value!r} is not a count")
    return value


def _price(claims: Mapping[str, Any], where: str = "receipt") -> tuple[int, int]:
    unit_price, per = _amount(claims, "unitPrice"), _amount(claims, "per")
    if unit_price <= 0 or per <= 0:
        raise ReceiptInvalid(f"{where} prices {unit_price} per {per} units")
    return unit_price, per


def _check_request_receipt(claims: Mapping[str, Any], spent: int) -> None:
    """SESSION-BUY-05: one request's receipt charges cost(units) at its own price, within spent."""
    amount, units = _amount(claims, "amount"), _count(claims, "units")
    unit_price, per = _price(claims)
    if amount != cost_of(units, unit_price, per):
        raise ReceiptInvalid(f"receipt charges {amount} for {units} units at {unit_price} per {per}, "
                             f"not their cost {cost_of(units, unit_price, per)}")
    if spent < amount:
        raise ReceiptInvalid(f"receipt says {spent} spent, less than the {amount} this request cost")


def _check_final_receipt(claims: Mapping[str, Any], session: "OpenSession", spent: int) -> None:
    """SESSION-BUY-07: what the whole session cost, line by line, against what we signed and saw.

    Each request is rounded up on its own (SESSION-REQ-03), so the total is not cost(total units):
    a line of n requests costs from cost(its units) to cost(its units) + n - 1."""
    if claims.get("final") is not True:
        raise ReceiptInvalid("close answered with a receipt that is not final")
    captured, amount, released, cap = (_amount(claims, n) for n in ("captured", "amount", "released", "cap"))
    if not captured == amount == spent:
        raise ReceiptInvalid(f"final receipt: captured {captured}, amount {amount} and spent {spent} differ")
    if spent < session.spent:
        raise ReceiptInvalid(f"final receipt says {spent} spent, less than the {session.spent} an earlier receipt said")
    if cap > session.cap or captured + released != cap:
        raise ReceiptInvalid(f"final receipt: captured {captured} + released {released} is not its cap {cap}, "
                             f"or that cap is above the {session.cap} we signed")
    lines = claims.get("lines")
    if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
        raise ReceiptInvalid("final receipt lists no usage lines")
    totals = [0, 0, 0]  # amount, units, requests
    for line in lines:
        line_amount, units, requests = _amount(line, "amount"), _count(line, "units"), _count(line, "requests")
        unit_price, per = _price(line, "a usage line")
        least = cost_of(units, unit_price, per)
        if requests == 0 or not least <= line_amount <= least + requests - 1:
            raise ReceiptInvalid(f"usage line of {requests} requests, {units} units at {unit_price} per {per} "
                                 f"charges {line_amount}, outside {least} to {least + max(requests - 1, 0)}")
        totals = [totals[0] + line_amount, totals[1] + units, totals[2] + requests]
    if totals != [captured, _count(claims, "units"), _count(claims, "requests")]:
        raise ReceiptInvalid(f"final receipt: its lines add up to {totals[0]} for {totals[1]} units in {totals[2]} "
                             f"requests, not {captured}, {claims.get('units')!r} and {claims.get('requests')!r}")


def verify_session_receipt(header: str | None, session: OpenSession, jwks: Mapping[str, Any], now: datetime, *,
                           final: bool = False) -> tuple[PaymentReceipt, dict[str, Any]]:
    """Check a session receipt's JWS, that it is for this session and within what we signed, and
    its arithmetic: a request's (SESSION-BUY-05) or, with ``final``, the whole session's (SESSION-BUY-07)."""
    if not header:
        raise ReceiptInvalid("session response carries no Payment-Receipt")
    try:
        receipt = parse_receipt(header)
    except ParseError as exc:
        raise ReceiptInvalid(f"Payment-Receipt is malformed: {exc}") from exc
    if receipt.challengeId != session.id:
        raise ReceiptInvalid("receipt names another session")
    if not receipt.receipt:
        raise ReceiptInvalid("receipt carries no signed JWS")
    claims = verify_receipt_jws(receipt.receipt, jwks, issuer=session.realm, challenge_id=session.id, now=now)
    for name, expected in (("intent", INTENT), ("reference", session.id), ("currency", session.terms.currency),
                           ("recipient", session.terms.recipient)):
        if claims.get(name) != expected:
            raise ReceiptInvalid(f"signed receipt {name} {claims.get(name)!r} differs from {expected!r}")
    if receipt.reference != session.id:
        raise ReceiptInvalid("receipt reference is not the session id")
    spent, authorized = _amount(claims, "spent"), _amount(claims, "authorized")
    if spent > session.voucher.cumulative:
        raise ReceiptInvalid(f"receipt says {spent} spent, above our highest voucher {session.voucher.cumulative}")
    if authorized > session.cap or authorized > session.voucher.cumulative:
        raise ReceiptInvalid(f"receipt says {authorized} authorized, above what we signed")
    if spent > authorized:
        raise ReceiptInvalid("receipt says more spent than authorized")
    if final:
        _check_final_receipt(claims, session, spent)
    else:
        _check_request_receipt(claims, spent)
    return receipt, claims


class SessionManager:
    """Open sessions by (origin, realm), and the voucher arithmetic.

    The voucher a request carries is ``min(cap, max(highest, spent + max_cost * slots))`` where
    ``slots`` is ``ahead``, or more when more requests are in flight on the session; a new
    voucher is signed only when that is above the last one (otherwise the last one goes again).
    """

    def __init__(self, policy: SessionPolicy, *, event: Event | None = None) -> None:
        self.policy = policy
        self._event = event or (lambda kind, **data: None)
        self._open: dict[tuple[tuple[str, str, int], str], OpenSession] = {}
        self._retired: list[OpenSession] = []
        self._ticks = 0

    async def _emit(self, kind: str, **data: Any) -> None:
        result = self._event(kind, **data)
        if result is not None and hasattr(result, "__await__"):
            await result

    def _tick(self) -> int:
        self._ticks += 1
        return self._ticks

    # -- the table ---------------------------------------------------------------

    def find(self, url: str) -> OpenSession | None:
        """The usable session for this URL's origin (the most recently used, if several realms)."""
        origin = origin_of(url)
        found = [s for (o, _), s in self._open.items() if o == origin and not s.retired]
        if not found:
            return None
        return max(found, key=lambda s: s.used_at)

    def by_id(self, session_id: str) -> OpenSession | None:
        for s in [*self._open.values(), *self._retired]:
            if s.id == session_id:
                return s
        return None

    def add(self, session: OpenSession) -> OpenSession | None:
        """Register a session; return the one it replaces (retired: the caller closes it)."""
        key = (session.origin, session.realm)
        old = self._open.get(key)
        self._open[key] = session
        session.used_at = self._tick()
        if old is not None and old is not session:
            self.retire(old)
            return old
        return None

    def retire(self, session: OpenSession) -> None:
        session.retired = True
        key = (session.origin, session.realm)
        if self._open.get(key) is session:
            del self._open[key]
        if session not in self._retired and not session.closed:
            self._retired.append(session)

    def forget(self, session: OpenSession) -> None:
        session.retired = session.closed = True
        key = (session.origin, session.realm)
        if self._open.get(key) is session:
            del self._open[key]
        if session in self._retired:
            self._retired.remove(session)

    def sessions(self) -> list[OpenSession]:
        """Every session not yet closed: open ones and retired ones awaiting their close."""
        return [*self._open.values(), *(s for s in self._retired if not s.closed)]

    # -- opening -------------------------------------------------------------------

    def initial_cap(self, offer: SessionOffer, limit: int | None = None) -> int:
        limit = self.policy.max_cap if limit is None else min(limit, self.policy.max_cap)
        return max(min(limit, offer.request.suggested_cap), offer.request.max_request_cost)

    async def begin(self, offer: SessionOffer, *, url: str, cap: int, cap_limit: int, now: datetime,
                    budget_links: Sequence[BudgetLink] | None = None) -> tuple[OpenSession, SessionPayload]:
        """The session's state and its open payload: the cap and voucher 1."""
        key, account = offer.method.key, offer.method.account
        terms = SessionTerms.of(offer.challenge, offer.request)
        first = min(cap, offer.request.max_request_cost * self.policy.ahead)
        voucher = sign_voucher(key, terms, first, 1)
        session = OpenSession(origin_of(url), url, offer.challenge, offer.request, terms, key, account, cap,
                              max(cap_limit, cap), voucher, confirmed_cap=cap, last_used=now, opened_cap=cap,
                              budget_links=tuple(budget_links) if budget_links is not None else None, budget_touched=now)
        payload = SessionPayload("open", terms.session_id, key.did, account=account, cap=cap,
                                 cap_signature=sign_cap(key, terms, account=account, cap=cap), voucher=voucher)
        await self._emit("voucher-signed", sessionId=session.id, cumulative=str(first), sequence=1, action="open")
        return session, payload

    # -- each request ----------------------------------------------------------------

    async def plan(self, session: OpenSession, now: datetime, *, required: int | None = None, identity: Any = None,
                   in_flight: bool = True) -> SessionPlan | None:
        """The voucher (or topUp) for the next request, or None if this session cannot serve it
        (cap reached, no top-up allowed): the caller retires it and opens another on the next 402.

        ``in_flight`` counts the request in ``session.inflight`` (release with :meth:`done`);
        in-band vouchers for a running stream pass False.
        """
        while True:
            async with session.lock:
                if session.retired:
                    return None
                waiting = session.topup
                want, least = self._targets(session, required, in_flight)
                if waiting is None or want <= session.confirmed_cap:
                    plan = await self._plan_locked(session, now, want, least, identity)
                    if plan is not None and in_flight:
                        session.inflight += 1
                    session.last_used = now
                    session.used_at = self._tick()
                    return plan
            await waiting.wait()  # a topUp is on its way; sign against the cap it brings

    def _targets(self, session: OpenSession, required: int | None, in_flight: bool) -> tuple[int, int]:
        m = session.max_request_cost
        slots = max(self.policy.ahead, session.inflight + (1 if in_flight else 0))
        want = max(session.voucher.cumulative, session.spent + m * slots)
        least = session.spent + m * (session.inflight + 1) if in_flight else session.spent
        if required is not None:
            want = max(want, required + m * (self.policy.ahead - 1))
            least = max(least, required)
        return want, max(least, session.voucher.cumulative)

    async def _plan_locked(self, session: OpenSession, now: datetime, want: int, least: int, identity: Any) -> SessionPlan | None:
        if want > session.cap:
            await self._grow_cap(session, now, want, least, identity)
        if least > session.cap:
            return None
        want = min(want, session.cap)
        if identity is not None and session.budget_links is not None and session.budget_touched is not None:
            ttl = self._budget_ttl(session, identity)
            if now - session.budget_touched > ttl / 4:
                await identity.extend(session.id, now, ttl)
                session.budget_touched = now
        top_up = want > session.confirmed_cap  # the seller has not confirmed the cap this voucher needs
        if want > session.voucher.cumulative:
            session.voucher = sign_voucher(session.key, session.terms, want, session.voucher.sequence + 1)
            await self._emit("voucher-signed", sessionId=session.id, cumulative=str(want), sequence=session.voucher.sequence,
                              action="topUp" if top_up else "voucher", **({"cap": str(session.cap)} if top_up else {}))
        if top_up:
            session.topup = session.topup or asyncio.Event()
            signature = sign_cap(session.key, session.terms, account=session.account, cap=session.cap)
            return SessionPlan("topUp", session.voucher, session.cap, signature)
        return SessionPlan("voucher", session.voucher)

    async def _grow_cap(self, session: OpenSession, now: datetime, want: int, least: int, identity: Any) -> None:
        """Raise the cap (within policy, the mandate and the agent's budget), as far as we may."""
        if not self.policy.allow_top_up or session.cap >= session.cap_limit:
            return
        preferred = min(session.cap_limit, max(want, session.cap + session.opened_cap))
        candidates = sorted({c for c in (preferred, min(want, session.cap_limit), min(least, session.cap_limit))
                             if c > session.cap}, reverse=True)
        for cap in candidates:
            if identity is not None and session.budget_links is not None:
                try:
                    await identity.reserve_amount(session.id, session.budget_links, cap, now, ttl=self._budget_ttl(session, identity))
                except QuoteRejected:
                    continue
                session.budget_touched = now
            session.cap = cap
            return

    @staticmethod
    def budget_ttl(request: SessionRequest, identity: Any) -> timedelta:
        """How long a session's budget reservation lives unless used again: the store's usual
        time plus the seller's idle timeout (after which the seller closes the session itself)."""
        base = getattr(identity.budget, "reservation_ttl", timedelta(minutes=10))
        return base + timedelta(seconds=request.idle_timeout)

    def _budget_ttl(self, session: OpenSession, identity: Any) -> timedelta:
        return self.budget_ttl(session.request, identity)

    def done(self, session: OpenSession, plan: SessionPlan | None, *, accepted: bool, in_flight: bool = True) -> None:
        """The request that carried ``plan`` has an answer (``accepted``: 2xx/3xx)."""
        if in_flight and plan is not None:
            session.inflight = max(0, session.inflight - 1)
        if plan is not None and plan.action == "topUp" and plan.cap is not None:
            if accepted:
                session.confirmed_cap = max(session.confirmed_cap, plan.cap)
            self._topup_settled(session)

    def _topup_settled(self, session: OpenSession) -> None:
        if session.topup is not None:
            session.topup.set()
            session.topup = None

    def observe(self, session: OpenSession, doc: Mapping[str, Any]) -> None:
        """Learn spent, authorized and cap from a verified receipt or a session problem."""
        spent, authorized, cap = (problem_amount(doc, n) for n in ("spent", "authorized", "cap"))
        if spent is not None:
            session.spent = max(session.spent, spent)
        if authorized is not None:
            session.authorized = max(session.authorized, authorized)
        if cap is not None and cap <= session.cap:
            session.confirmed_cap = max(session.confirmed_cap, cap)
            if session.topup is not None and session.confirmed_cap >= session.voucher.cumulative:
                self._topup_settled(session)

    # -- credentials -------------------------------------------------------------------

    def credential(self, session: OpenSession, plan: SessionPlan) -> str:
        payload = SessionPayload(plan.action, session.id, session.key.did, cap=plan.cap, cap_signature=plan.cap_signature,
                                 voucher=plan.voucher)
        return format_credential(Credential(challenge=session.challenge, payload=payload.as_json(), source=session.key.did))

    def close_credential(self, session: OpenSession) -> str:
        payload = SessionPayload("close", session.id, session.key.did, voucher=session.voucher,
                                 close_signature=sign_close(session.key, session.terms))
        return format_credential(Credential(challenge=session.challenge, payload=payload.as_json(), source=session.key.did))


# -- server-sent events ---------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event as the caller sees it (payment events are never passed on)."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def parse_sse(lines: Any):
    """Server-sent events from an async iterator of byte lines (aiohttp's ``resp.content``)."""
    event, data, last_id = "", [], None
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
    if data:
        yield SSEEvent(event or "message", "\n".join(data), last_id)
