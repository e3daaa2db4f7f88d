"""The buyer side of the ``session`` intent, its async half: what each open session holds (with
a lock, so that vouchers are signed in sequence order) and the :class:`SessionManager` that signs
the voucher (or top-up) the next request carries.

Nothing here sends a request; :class:`~mpp.purchase.client.Buyer` does the I/O and asks the
:class:`SessionManager` what to put in the ``Authorization`` field. The decisions (which session
challenge, what cap, how far ahead, the receipts' arithmetic) are in :mod:`mpp.buyer.sessions` and
:mod:`mpp.buyer.session_receipts`; what the manager awaits is the lock, the agent's budget
counters and the event hook (an audit log may be a database).

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
from mpp.buyer.core import origin_of
from mpp.buyer.session_receipts import problem_amount, verify_session_receipt
from mpp.buyer.sessions import (
    SESSION_PATH,
    SessionOffer,
    SessionPlan,
    SessionPolicy,
    SessionTable,
    budget_ttl,
    cap_candidates,
    check_session_quote,
    close_credential,
    initial_cap,
    learn,
    select_session,
    session_credential,
    voucher_targets,
)
from mpp.protocol.errors import QuoteRejected
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, Voucher, cost_of, sign_cap, sign_voucher

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
    "problem_amount",
    "parse_sse",
]

Event = Callable[..., Awaitable[None] | None]  # event(kind, **data), plain or async


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
        """The session's id: the id of the challenge that opened it (SESSION-REQ-01)."""
        return self.challenge.id

    @property
    def realm(self) -> str:
        """The seller's realm, from the opening challenge."""
        return self.challenge.realm

    @property
    def max_request_cost(self) -> int:
        """The most one request on the session may cost: cost(maxUnits) at its price, in base units
        (SESSION-REQ-03)."""
        return self.request.max_request_cost

    @property
    def session_url(self) -> str:
        """The seller's session endpoint on the session's origin
        (``scheme://host:port/.well-known/mpp-session``), where vouchers, top-ups and the close are posted."""
        scheme, host, port = self.origin
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{SESSION_PATH}"

    def cost(self, units: int) -> int:
        """What ``units`` cost at the session's price, rounded up to a whole base unit (SESSION-REQ-03)."""
        return cost_of(units, self.request.unit_price, self.request.per)



class SessionManager:
    """Open sessions by (origin, realm), and the voucher arithmetic.

    The voucher a request carries is ``min(cap, max(highest, spent + max_cost * slots))`` where
    ``slots`` is ``ahead``, or more when more requests are in flight on the session; a new
    voucher is signed only when that is above the last one (otherwise the last one goes again).
    """

    def __init__(self, policy: SessionPolicy, *, event: Event | None = None) -> None:
        self.policy = policy
        self._event = event or (lambda kind, **data: None)
        self._table = SessionTable()

    async def _emit(self, kind: str, **data: Any) -> None:
        result = self._event(kind, **data)
        if result is not None and hasattr(result, "__await__"):
            await result

    # -- the table ---------------------------------------------------------------

    def find(self, url: str) -> OpenSession | None:
        """The usable session for this URL's origin (the most recently used, if several realms)."""
        return self._table.find(url)

    def by_id(self, session_id: str) -> OpenSession | None:
        """A session not yet forgotten, open or retired, by its id; None if there is none."""
        return self._table.by_id(session_id)

    def add(self, session: OpenSession) -> OpenSession | None:
        """Register a session; return the one it replaces (retired: the caller closes it)."""
        return self._table.add(session)

    def retire(self, session: OpenSession) -> None:
        """No new requests on ``session``: it is no longer found for its origin, but stays listed
        (:meth:`sessions`) until it is closed and forgotten."""
        self._table.retire(session)

    def forget(self, session: OpenSession) -> None:
        """Drop ``session`` for good, marked retired and closed: it is closed, or the seller never knew it.
        Settling its budget reservation is the caller's."""
        self._table.forget(session)

    def sessions(self) -> list[OpenSession]:
        """Every session not yet closed: open ones and retired ones awaiting their close."""
        return self._table.sessions()

    # -- opening -------------------------------------------------------------------

    def initial_cap(self, offer: SessionOffer, limit: int | None = None) -> int:
        """The cap to open ``offer``'s session with, in base units: the seller's suggested cap within
        ``limit`` (a mandate's) and the policy's ``max_cap``, but never below one request's cost."""
        return initial_cap(self.policy, offer, limit)

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
                want, least = voucher_targets(session, self.policy, required, in_flight)
                if waiting is None or want <= session.confirmed_cap:
                    plan = await self._plan_locked(session, now, want, least, identity)
                    if plan is not None and in_flight:
                        session.inflight += 1
                    session.last_used = now
                    session.used_at = self._table.tick()
                    return plan
            await waiting.wait()  # a topUp is on its way; sign against the cap it brings

    async def _plan_locked(self, session: OpenSession, now: datetime, want: int, least: int, identity: Any) -> SessionPlan | None:
        if want > session.cap:
            await self._grow_cap(session, now, want, least, identity)
        if least > session.cap:
            return None
        want = min(want, session.cap)
        if identity is not None and session.budget_links is not None and session.budget_touched is not None:
            ttl = budget_ttl(session.request, identity)
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
        for cap in cap_candidates(session, self.policy, want, least):
            if identity is not None and session.budget_links is not None:
                try:
                    await identity.reserve_amount(session.id, session.budget_links, cap, now,
                                                  ttl=budget_ttl(session.request, identity))
                except QuoteRejected:
                    continue
                session.budget_touched = now
            session.cap = cap
            return

    @staticmethod
    def budget_ttl(request: SessionRequest, identity: Any) -> timedelta:
        """How long a session's budget reservation lives unless used again: the store's usual
        time plus the seller's idle timeout (after which the seller closes the session itself)."""
        return budget_ttl(request, identity)

    def done(self, session: OpenSession, plan: SessionPlan | None, *, accepted: bool, in_flight: bool = True) -> None:
        """The request that carried ``plan`` has an answer (``accepted``: 2xx/3xx)."""
        if in_flight and plan is not None:
            session.inflight = max(0, session.inflight - 1)
        if plan is not None and plan.action == "topUp" and plan.cap is not None:
            if accepted:
                session.confirmed_cap = max(session.confirmed_cap, plan.cap)
            _topup_settled(session)

    def observe(self, session: OpenSession, doc: Mapping[str, Any]) -> None:
        """Learn spent, authorized and cap from a verified receipt or a session problem."""
        if learn(session, doc):
            _topup_settled(session)

    # -- credentials -------------------------------------------------------------------

    def credential(self, session: OpenSession, plan: SessionPlan) -> str:
        """The ``Authorization`` value of a request on ``session``: the voucher, or the topUp (new cap, its
        signature and the voucher), that ``plan`` carries."""
        return session_credential(session, plan)

    def close_credential(self, session: OpenSession) -> str:
        """The ``Authorization`` value that closes ``session``: its highest voucher and the close signature,
        to post to :attr:`OpenSession.session_url`."""
        return close_credential(session)


def _topup_settled(session: OpenSession) -> None:
    if session.topup is not None:
        session.topup.set()
        session.topup = None


# -- server-sent events ---------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event as the caller sees it (payment events are never passed on)."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The event's ``data`` parsed as JSON; json.JSONDecodeError (a ValueError) when it is not."""
        return json.loads(self.data)


async def parse_sse(lines: Any):
    """Server-sent events from an async iterator of byte lines (an open stream's ``lines()``)."""
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
