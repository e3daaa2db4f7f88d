"""The buyer's session decisions, without I/O: which session challenge to accept, how big a cap
and how far ahead a voucher, what the next credential carries, and what a refusal means.

The open sessions themselves (:class:`~mpp.purchase.sessions.OpenSession`, with a lock per session)
live with the transport; everything here reads and writes their plain fields only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

from mpp.buyer.core import BuyerPolicy, check_quote, origin_of
from mpp.buyer.session_receipts import problem_amount
from mpp.intents.session import INTENT, SessionPayload, SessionRequest, Voucher, sign_close
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, ParseError, QuoteRejected
from mpp.protocol.headers import format_credential
from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge, ChargeRequest, Credential

__all__ = [
    "SESSION_PATH",
    "METHOD",
    "INSUFFICIENT",
    "CLOSED",
    "UNKNOWN",
    "SESSION_PROBLEMS",
    "SessionPolicy",
    "SessionOffer",
    "SessionPlan",
    "SessionTable",
    "select_session",
    "check_session_quote",
    "initial_cap",
    "mandate_cap_limit",
    "cap_request",
    "budget_ttl",
    "voucher_targets",
    "cap_candidates",
    "learn",
    "session_credential",
    "close_credential",
    "refusal_kind",
]

SESSION_PATH = "/.well-known/mpp-session"
"""The seller's session endpoint (spec/intents/session.md): where a buyer opens, tops up and closes a
session."""
METHOD = "ledger"
"""The payment method the buyer's sessions are paid with (the ledger holds the cap)."""
INSUFFICIENT = EXTENSION_PROBLEM_BASE + "session-insufficient"
"""Problem type: the session's authorized value does not cover the request; the buyer signs a larger
voucher or tops up."""
CLOSED = EXTENSION_PROBLEM_BASE + "session-closed"
"""Problem type: the session is closed; the buyer forgets it and opens a new one."""
UNKNOWN = EXTENSION_PROBLEM_BASE + "session-unknown"
"""Problem type: the seller does not know the session (expired or never opened); the buyer opens a new one."""
SESSION_PROBLEMS = EXTENSION_PROBLEM_BASE + "session-"
"""The prefix of every session problem type: a 402 whose type starts with it is about the session, not a
new quote."""


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


@dataclass(frozen=True)
class SessionPlan:
    """What one request carries: a voucher, or a topUp (a new cap and a voucher)."""

    action: str  # "voucher" or "topUp"
    voucher: Voucher
    cap: int | None = None
    cap_signature: str | None = None


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


# -- the table of open sessions -------------------------------------------------------


class SessionTable:
    """Open sessions by (origin, realm), and the retired ones awaiting their close.

    Holds any objects with ``origin``, ``realm``, ``id``, ``retired``, ``closed`` and ``used_at``.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[tuple[str, str, int], str], Any] = {}
        self._retired: list[Any] = []
        self._ticks = 0

    def tick(self) -> int:
        """A number above every earlier one: orders sessions of one origin by recency."""
        self._ticks += 1
        return self._ticks

    def find(self, url: str) -> Any | None:
        """The usable session for this URL's origin (the most recently used, if several realms)."""
        origin = origin_of(url)
        found = [s for (o, _), s in self._open.items() if o == origin and not s.retired]
        if not found:
            return None
        return max(found, key=lambda s: s.used_at)

    def by_id(self, session_id: str) -> Any | None:
        """A session not yet forgotten, open or retired, by its id."""
        for s in [*self._open.values(), *self._retired]:
            if s.id == session_id:
                return s
        return None

    def add(self, session: Any) -> Any | None:
        """Register a session; return the one it replaces (retired: the caller closes it)."""
        key = (session.origin, session.realm)
        old = self._open.get(key)
        self._open[key] = session
        session.used_at = self.tick()
        if old is not None and old is not session:
            self.retire(old)
            return old
        return None

    def retire(self, session: Any) -> None:
        """No new requests on the session; it stays listed until it is closed."""
        session.retired = True
        key = (session.origin, session.realm)
        if self._open.get(key) is session:
            del self._open[key]
        if session not in self._retired and not session.closed:
            self._retired.append(session)

    def forget(self, session: Any) -> None:
        """The session is closed (or never was open at the seller): drop it."""
        session.retired = session.closed = True
        key = (session.origin, session.realm)
        if self._open.get(key) is session:
            del self._open[key]
        if session in self._retired:
            self._retired.remove(session)

    def sessions(self) -> list[Any]:
        """Every session not yet closed: open ones and retired ones awaiting their close."""
        return [*self._open.values(), *(s for s in self._retired if not s.closed)]


# -- caps and vouchers ---------------------------------------------------------------------


def initial_cap(policy: SessionPolicy, offer: SessionOffer, limit: int | None = None) -> int:
    """The cap to open with: the seller's suggestion within our limit, at least one request's cost."""
    limit = policy.max_cap if limit is None else min(limit, policy.max_cap)
    return max(min(limit, offer.request.suggested_cap), offer.request.max_request_cost)


def mandate_cap_limit(chain: Any, request: SessionRequest, cap_limit: int) -> int:
    """A session is one purchase of up to its cap: keep the cap within the mandate's ceiling (and
    its approval threshold, so no approval is needed), if one request still fits."""
    for limit in (chain.leaf.ceiling, chain.leaf.approval_threshold):
        if limit is not None and request.max_request_cost <= limit < cap_limit:
            cap_limit = limit
    return cap_limit


def cap_request(request: Any, cap: int) -> ChargeRequest:
    """The session as one purchase of ``cap``, for the mandate checks and the budget."""
    return ChargeRequest(amount=str(cap), currency=request.currency, recipient=request.recipient, methodDetails=request.methodDetails)


def budget_ttl(request: SessionRequest, identity: Any) -> timedelta:
    """How long a session's budget reservation lives unless used again: the store's usual
    time plus the seller's idle timeout (after which the seller closes the session itself)."""
    base = getattr(identity.budget, "reservation_ttl", timedelta(minutes=10))
    return base + timedelta(seconds=request.idle_timeout)


def voucher_targets(session: Any, policy: SessionPolicy, required: int | None, in_flight: bool) -> tuple[int, int]:
    """(want, least): the voucher the next request should carry, and the least it may carry.

    ``want = max(highest, spent + max_cost * slots)``, ``slots`` being ``ahead`` or more when more
    requests are in flight; a seller's ``required`` raises both.
    """
    m = session.max_request_cost
    slots = max(policy.ahead, session.inflight + (1 if in_flight else 0))
    want = max(session.voucher.cumulative, session.spent + m * slots)
    least = session.spent + m * (session.inflight + 1) if in_flight else session.spent
    if required is not None:
        want = max(want, required + m * (policy.ahead - 1))
        least = max(least, required)
    return want, max(least, session.voucher.cumulative)


def cap_candidates(session: Any, policy: SessionPolicy, want: int, least: int) -> list[int]:
    """The caps to try, highest first, when a voucher needs more than the session's cap (none
    when top-ups are off or the cap is at its limit)."""
    if not policy.allow_top_up or session.cap >= session.cap_limit:
        return []
    preferred = min(session.cap_limit, max(want, session.cap + session.opened_cap))
    return sorted({c for c in (preferred, min(want, session.cap_limit), min(least, session.cap_limit))
                   if c > session.cap}, reverse=True)


def learn(session: Any, doc: Mapping[str, Any]) -> bool:
    """Learn spent, authorized and cap from a verified receipt or a session problem; True when the
    seller now confirms a cap covering our highest voucher (a pending top-up is settled)."""
    spent, authorized, cap = (problem_amount(doc, n) for n in ("spent", "authorized", "cap"))
    if spent is not None:
        session.spent = max(session.spent, spent)
    if authorized is not None:
        session.authorized = max(session.authorized, authorized)
    if cap is not None and cap <= session.cap:
        session.confirmed_cap = max(session.confirmed_cap, cap)
        return session.confirmed_cap >= session.voucher.cumulative
    return False


def session_credential(session: Any, plan: SessionPlan) -> str:
    """The ``Authorization`` value of a request on the session: its voucher (or topUp)."""
    payload = SessionPayload(plan.action, session.id, session.key.did, cap=plan.cap, cap_signature=plan.cap_signature,
                             voucher=plan.voucher)
    return format_credential(Credential(challenge=session.challenge, payload=payload.as_json(), source=session.key.did))


def close_credential(session: Any) -> str:
    """The ``Authorization`` value that closes the session with its highest voucher."""
    payload = SessionPayload("close", session.id, session.key.did, voucher=session.voucher,
                             close_signature=sign_close(session.key, session.terms))
    return format_credential(Credential(challenge=session.challenge, payload=payload.as_json(), source=session.key.did))


def refusal_kind(status: int, problem_type: str, *, retried: bool) -> str:
    """What a refused session request means: ``insufficient`` (sign higher, try once more),
    ``closed`` / ``unknown`` (the seller no longer serves it: pay the 402's fresh challenges),
    ``unpriced`` (not a session route: pay its challenges), or ``refused``."""
    if status == 402 and problem_type == INSUFFICIENT and not retried:
        return "insufficient"
    if status == 402 and problem_type in (CLOSED, UNKNOWN):
        return "closed" if problem_type == CLOSED else "unknown"
    if status == 402 and not problem_type.startswith(SESSION_PROBLEMS):
        return "unpriced"
    return "refused"
