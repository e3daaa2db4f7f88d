"""How the buyer answers a 402, without I/O: what it accepts (``Accept-Payment``), which offer or
session it takes within its mandate and policy, and what a seller's refusal asks of it.

:func:`answer_plain` decides for a 402 without a price list (a session if one is offered and
preferred, else a charge); :func:`choose_priced` among a price list's offers (PRICE-BUY-01).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from mpp.buyer.core import (
    SUBSCRIPTION_INTENT,
    BuyerPolicy,
    OfferChoice,
    OfferPlan,
    Quote,
    check_mandate_offer,
    choose_challenge,
    select_quote,
)
from mpp.buyer.sessions import SessionOffer, SessionPolicy, select_session
from mpp.intents.session import INTENT as SESSION_INTENT
from mpp.methods import BuyerMethod
from mpp.pricing import MandateRestrictions
from mpp.protocol.errors import EXTENSION_PROBLEM_BASE, NoPayableChallenge, ParseError, QuoteRejected
from mpp.protocol.headers import format_accept_payment
from mpp.protocol.models import Challenge

__all__ = [
    "accept_payment",
    "allowed_challenges",
    "answer_plain",
    "choose_priced",
    "quote_seen",
    "seat_already_paid",
    "wants_approval",
]

_SEAT_ALREADY_PAID = EXTENSION_PROBLEM_BASE + "seat-already-paid"


def accept_payment(methods: Sequence[BuyerMethod], policy: BuyerPolicy, sessions: SessionPolicy | None) -> str:
    """The ``Accept-Payment`` field value: a charge by every method; a ledger session, first or
    last as preferred, when sessions are enabled; a subscription when recurring payments are."""
    pairs = [(m.name, "charge") for m in methods]
    if sessions is not None and any(m.name == "ledger" for m in methods):
        session = [("ledger", SESSION_INTENT)]
        pairs = session + pairs if sessions.prefer == "session" else pairs + session
    if policy.allow_recurring:
        pairs += [(m.name, SUBSCRIPTION_INTENT) for m in methods if hasattr(m, "can_pay_subscription")]
    return format_accept_payment(pairs)


def allowed_challenges(challenges: Sequence[Challenge], restrictions: MandateRestrictions | None) -> list[Challenge]:
    """The challenges of a 402 without a price list whose model (by intent) the mandate allows;
    the first refusal is raised when none is."""
    allowed: list[Challenge] = []
    refused: QuoteRejected | None = None
    for challenge in challenges:
        try:
            check_mandate_offer(challenge, restrictions, challenges)
        except QuoteRejected as exc:
            refused = refused or exc
            continue
        allowed.append(challenge)
    if not allowed and refused is not None:
        raise refused
    return allowed


def answer_plain(challenges: Sequence[Challenge], methods: Sequence[BuyerMethod], policy: BuyerPolicy,
                 sessions: SessionPolicy | None, now: datetime) -> SessionOffer | Quote:
    """A 402 without a price list (its challenges already the mandate's allowed ones): a session
    if one is offered and preferred, else a charge, else a session after all; the reasons of both
    when neither can be paid."""
    offer: SessionOffer | None = None
    reasons: list[str] = []
    if sessions is not None:
        offer, reasons = select_session(challenges, methods, policy, sessions, now)
        if offer is not None and sessions.prefer == "session":
            return offer
    try:
        return select_quote(challenges, methods, policy, now)
    except (NoPayableChallenge, QuoteRejected) as exc:
        if offer is not None:
            return offer
        if isinstance(exc, NoPayableChallenge) and reasons:
            raise NoPayableChallenge(str(exc), exc.reasons + reasons) from None
        raise


def choose_priced(challenges: Sequence[Challenge], methods: Sequence[BuyerMethod], policy: BuyerPolicy, now: datetime, *,
                  plan: OfferPlan, restrictions: MandateRestrictions | None, agent: str | None,
                  sessions: SessionPolicy | None) -> OfferChoice:
    """PRICE-BUY-01: the offer of a price list to pay (:func:`~mpp.buyer.core.choose_challenge`),
    its session offers opened within ``sessions`` (none without). Raises QuoteRejected /
    NoPayableChallenge."""

    def session_offer(challenge: Challenge) -> SessionOffer:
        assert sessions is not None
        offer, reasons = select_session([challenge], methods, policy, sessions, now)
        if offer is None:
            raise ParseError("; ".join(r.split(": ", 1)[-1] for r in reasons) or "not a session we can open")
        return offer

    return choose_challenge(challenges, methods, policy, now, plan=plan, restrictions=restrictions, agent=agent,
                            session_offer=session_offer if sessions is not None else None)


def quote_seen(quote: Quote, choice: OfferChoice | None = None) -> dict[str, Any]:
    """The ``quote-seen`` event's data for an accepted quote (and the offer it was chosen as)."""
    offer = {} if choice is None else {"model": choice.offer.model, "offer": choice.offer.offer,
                                       "priceList": choice.offer.price_list, "expectedTotal": str(choice.total)}
    return dict(challengeId=quote.challenge.id, amount=quote.request.amount, currency=quote.request.currency,
                realm=quote.challenge.realm, accepted=True, **{k: v for k, v in offer.items() if v is not None})


def seat_already_paid(quote: Quote, status: int, problem: Mapping[str, Any]) -> bool:
    """PRICE-SEAT-03: the seat's period is paid already (409); nothing moved, and the problem
    carries a seat grant to use instead, never paying the period twice."""
    return quote.challenge.intent == SUBSCRIPTION_INTENT and status == 409 and problem.get("type") == _SEAT_ALREADY_PAID


def wants_approval(status: int, problem: Mapping[str, Any]) -> bool:
    """The seller asks for the principal's approval before it takes this payment."""
    return status == 403 and str(problem.get("type", "")).endswith(":approval-required")
