"""The buyer's decisions, without I/O: choose a challenge, check the quote, sign, check the receipt.

Nothing is signed before every policy rule has passed; the rule that refused is named. A 402
from a price list (spec/pricing.md) carries several offers: :func:`choose_challenge` picks the
one with the lowest expected total for the planned work (:class:`OfferPlan`) among those the
mandate chain allows and the policy accepts (PRICE-BUY-01, PRICE-BUY-02, PRICE-MDT-02).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from mpp.protocol.errors import NoPayableChallenge, ParseError, QuoteRejected, ReceiptInvalid
from mpp.protocol.headers import format_credential, parse_receipt
from mpp.methods import BuyerMethod
from mpp.protocol.models import Challenge, ChargeRequest, Credential, PaymentReceipt, parse_rfc3339
from mpp.identity.restrictions import MODELS, MandateRestrictions
from mpp.pricing.choice import QuotedOffer, check_offer_allowed, choose_offer, expected_total, quoted_offer
from mpp.pricing.periods import PERIOD_UNITS
from mpp.pricing.problems import ModelNotAllowed, UnitPriceTooHigh
from mpp.pricing.seats import subscription_id
from mpp.protocol.receipts import verify_receipt_jws

__all__ = [
    "BuyerPolicy",
    "Quote",
    "OfferPlan",
    "OfferChoice",
    "SUBSCRIPTION_INTENT",
    "origin_of",
    "select_quote",
    "check_quote",
    "check_seat_quote",
    "check_mandate_offer",
    "choose_challenge",
    "is_priced",
    "check_transport",
    "MCP_STDIO_SCHEME",
    "sign_quote",
    "verify_receipt", "check_unsigned_receipt",
]

SUBSCRIPTION_INTENT = "subscription"
"""The intent of a seat's challenge (spec/pricing.md): one period per agent, paid only when the buyer's
policy sets allow_recurring."""


def origin_of(url: str) -> tuple[str, str, int]:
    """``url``'s origin as ``(scheme, host, port)``, lower-cased, the port defaulted from the scheme
    (0 for an unknown one)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class BuyerPolicy:
    """What the buyer agrees to pay without asking anyone.

    ``max_amount`` is per purchase in base units; ``currencies`` and ``recipients`` are
    allow-lists (``None`` means any); ``min_validity`` refuses quotes about to expire.
    ``accept_unsigned_receipts`` takes a draft seller's receipt that carries no JWS (see
    :func:`check_unsigned_receipt`); off by default, since nothing then proves who issued it.
    """

    max_amount: int
    currencies: frozenset[str] | None = None
    recipients: frozenset[str] | None = None
    require_expires: bool = True
    min_validity: timedelta = timedelta(seconds=2)
    allow_insecure_http: bool = False  # plain http to a non-loopback host; for tests behind TLS proxies only
    # A seat (intent ``subscription``) is a recurring commitment: refused unless the caller opts in
    # (PRICE-BUY-02). Each period is still one purchase within ``max_amount``, signed on a 402.
    allow_recurring: bool = False
    # A seller that follows the draft alone (pympp, mppx) sends an unsigned receipt: refused unless the
    # caller opts in (CORE-BUY-12); such a receipt is then checked for what it can say, and marked unsigned.
    accept_unsigned_receipts: bool = False


@dataclass(frozen=True)
class Quote:
    """One challenge the buyer may pay: the challenge, its decoded charge request and the buyer
    method that would pay it."""

    challenge: Challenge
    request: ChargeRequest
    method: BuyerMethod


MCP_STDIO_SCHEME = "mcp+stdio"
"""The scheme of an MCP server reached over stdio (spec/transports/mcp.md): a pipe to a process the
agent started, so, like loopback, nothing crosses a network (MCP-CLI-02)."""


def check_transport(url: str, policy: BuyerPolicy) -> None:
    """Credentials travel over TLS, except to this machine (tests, demos, local sidecars, an MCP
    server on stdio)."""
    scheme, host, _ = origin_of(url)
    if scheme in ("https", MCP_STDIO_SCHEME) or policy.allow_insecure_http:
        return
    if scheme == "http" and _is_loopback(host):
        return
    raise QuoteRejected("transport", f"will not send a payment credential over {scheme or 'unknown scheme'} to {host}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_quote(challenge: Challenge, request: ChargeRequest, policy: BuyerPolicy, now: datetime) -> None:
    """Raise QuoteRejected(rule, detail) unless the quote is within policy. Never reads ``description``."""
    if challenge.expires is None:
        if policy.require_expires:
            raise QuoteRejected("expiry", "challenge carries no expiry")
    else:
        try:
            expired = challenge.is_expired(now + policy.min_validity)
        except ParseError as exc:  # the parser does not check expires; a bad one is unpayable, not fatal
            raise QuoteRejected("expiry", str(exc)) from None
        if expired:
            raise QuoteRejected("expiry", f"challenge expires at {challenge.expires}")
    if request.amount_int > policy.max_amount:
        raise QuoteRejected("max-amount", f"amount {request.amount} exceeds the limit {policy.max_amount}")
    if policy.currencies is not None and request.currency not in policy.currencies:
        raise QuoteRejected("currency", f"currency {request.currency!r} is not allowed")
    if policy.recipients is not None and request.recipient not in policy.recipients:
        raise QuoteRejected("recipient", f"recipient {request.recipient!r} is not allowed")


def select_quote(
    challenges: Sequence[Challenge], methods: Sequence[BuyerMethod], policy: BuyerPolicy, now: datetime
) -> Quote:
    """The first challenge (in the seller's order) that one of our methods can pay within policy."""
    reasons: list[str] = []
    by_name = {m.name: m for m in methods}
    for challenge in challenges:
        method = by_name.get(challenge.method)
        if challenge.intent == SUBSCRIPTION_INTENT:
            # A recurring commitment is only ever taken by choose_challenge, with the seat checks.
            reasons.append(f"{challenge.method}/{challenge.intent}: a subscription is chosen only among priced offers")
            continue
        if challenge.header is not None:
            reasons.append(f"{challenge.method}/{challenge.intent}: credential field {challenge.header!r} is not supported")
            continue
        if method is None:
            reasons.append(f"{challenge.method}/{challenge.intent}: no such method here")
            continue
        try:
            request = ChargeRequest.from_challenge(challenge)
        except ParseError as exc:
            reasons.append(f"{challenge.method}/{challenge.intent}: {exc}")
            continue
        why_not = method.can_pay(challenge, request)
        if why_not is not None:
            reasons.append(f"{challenge.method}/{challenge.intent}: {why_not}")
            continue
        try:
            check_quote(challenge, request, policy, now)
        except QuoteRejected as exc:
            reasons.append(f"{challenge.method}/{challenge.intent}: {exc}")
            # a policy refusal on the only candidate is what the caller wants to see
            if len(challenges) == 1:
                raise
            continue
        return Quote(challenge, request, method)
    raise NoPayableChallenge("no challenge can be paid within policy", reasons)


def sign_quote(quote: Quote, extensions: Mapping[str, Any] | None = None, *, source: str | None = None) -> str:
    """The ``Authorization`` field value for an accepted quote (with extension members, if any).
    ``source`` replaces the method's own (the identity extension names the agent there,
    IDENT-POP-07, whatever key the method pays with)."""
    payload, method_source = quote.method.payload(quote.challenge, quote.request)
    source = source or method_source
    credential = Credential(challenge=quote.challenge, payload=payload, source=source, extensions=dict(extensions or {}))
    return format_credential(credential)


def _receipt_of(header: str | None) -> PaymentReceipt:
    """The decoded ``Payment-Receipt``; ReceiptInvalid when there is none or it does not decode."""
    if not header:
        raise ReceiptInvalid("response carries no Payment-Receipt")
    try:
        return parse_receipt(header)
    except ParseError as exc:
        raise ReceiptInvalid(f"Payment-Receipt is malformed: {exc}") from exc


def verify_receipt(header: str | None, quote: Quote, jwks: Mapping[str, Any], now: datetime) -> tuple[PaymentReceipt, dict[str, Any]]:
    """Parse ``Payment-Receipt`` and check its JWS and that it is for this very quote."""
    receipt = _receipt_of(header)
    if receipt.challengeId != quote.challenge.id:
        raise ReceiptInvalid("receipt names another challenge")
    if not receipt.receipt:
        raise ReceiptInvalid("receipt carries no signed JWS")
    claims = verify_receipt_jws(receipt.receipt, jwks, issuer=quote.challenge.realm, challenge_id=quote.challenge.id, now=now)
    for name, expected in (
        ("amount", quote.request.amount),
        ("currency", quote.request.currency),
        ("recipient", quote.request.recipient),
        ("reference", receipt.reference),
    ):
        if claims.get(name) != expected:
            raise ReceiptInvalid(f"signed receipt {name} {claims.get(name)!r} differs from {expected!r}")
    return receipt, claims


def check_unsigned_receipt(header: str | None, quote: Quote) -> PaymentReceipt:
    """A draft seller's receipt without our JWS, checked for everything it can say (CORE-BUY-12):
    it decodes, ``status`` is ``success``, ``method`` is the quote's, ``challengeId`` (when present)
    is the quote's, and ``reference`` is non-empty. Raises ReceiptInvalid. Nothing here proves the
    seller issued it: only a caller that opted in (``BuyerPolicy.accept_unsigned_receipts``) asks."""
    receipt = _receipt_of(header)
    if receipt.method != quote.challenge.method:
        raise ReceiptInvalid(f"receipt is for method {receipt.method!r}, not {quote.challenge.method!r}")
    if receipt.challengeId is not None and receipt.challengeId != quote.challenge.id:
        raise ReceiptInvalid("receipt names another challenge")
    return receipt


# -- several offers per 402 (spec/pricing.md §4, §6, §7) ------------------------------------

_MANDATE_RULES = {ModelNotAllowed: "model", UnitPriceTooHigh: "unit-price"}
_DECIMAL = re.compile(r"[1-9][0-9]{0,18}")
_DAY = 86400
# The period lengths a (periodUnit, 1) may have: calendar months and years vary (PRICE-SEAT-02).
_PERIOD_SECONDS = {"hour": (3600, 3600), "day": (_DAY, _DAY), "week": (7 * _DAY, 7 * _DAY),
                   "month": (28 * _DAY, 31 * _DAY), "year": (365 * _DAY, 366 * _DAY)}


@dataclass(frozen=True)
class OfferPlan:
    """The work the buyer plans, by which it chooses among the offers of one 402 (PRICE-BUY-01).

    ``planned_requests``: requests to the route (for a task offer: tasks started);
    ``planned_units``: units in all, for unit offers (``None``: ``planned_requests`` × the
    offer's ``maxUnits``); ``planned_periods``: seat periods; ``prefer``: a model (``transaction``,
    ``unit``, ``task``, ``seat``) taken whenever an acceptable offer of it is there, else the
    cheapest acceptable offer (``None``: always the cheapest).
    """

    planned_requests: int = 1
    planned_units: int | None = None
    planned_periods: int = 1
    prefer: str | None = None

    def __post_init__(self) -> None:
        for name in ("planned_requests", "planned_periods"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.planned_units is not None and (not isinstance(self.planned_units, int) or isinstance(self.planned_units, bool)
                                               or self.planned_units < 1):
            raise ValueError("planned_units must be a positive integer or None")
        if self.prefer is not None and self.prefer not in MODELS:
            raise ValueError(f"prefer must be one of {', '.join(MODELS)} or None (the cheapest)")

    def total(self, offer: Any) -> int:
        """What this planned work costs under ``offer``, in base units (spec/pricing.md §6): for a unit offer
        cost(``planned_units``, or ``planned_requests`` × its ``maxUnits``), for a seat ``planned_periods`` ×
        its amount, else ``planned_requests`` × its amount (a task: one charge per task started)."""
        return expected_total(offer, planned_requests=self.planned_requests, planned_units=self.planned_units,
                              planned_periods=self.planned_periods)


@dataclass(frozen=True)
class OfferChoice:
    """The offer chosen among a 402's challenges, and how to pay it: ``quote`` (a charge or a seat
    period, signed like a charge) or ``session`` (what the caller's session check returned)."""

    challenge: Challenge
    offer: QuotedOffer
    total: int
    quote: Quote | None = None
    session: Any = None


def is_priced(challenges: Sequence[Challenge]) -> bool:
    """Whether the 402 comes from a price list (a ``pricing`` member) or offers a subscription."""
    for c in challenges:
        if c.intent == SUBSCRIPTION_INTENT:
            return True
        try:
            if isinstance(c.request_json.get("pricing"), dict):
                return True
        except ParseError:
            continue
    return False


def _offer_of(challenge: Challenge, siblings: Sequence[Challenge] = ()) -> QuotedOffer:
    """The offer a challenge quotes, for the mandate's restrictions: a charge that stands in for a
    unit offer (PRICE-MODEL-02) is restricted by its unit offer's price, read from the session
    challenge of the same offer beside it when there is one."""
    offer = quoted_offer(challenge.request_json, challenge.intent)
    if offer.model == "unit" and challenge.intent != "session":
        for s in siblings:
            if s.intent == "session":
                try:
                    unit = quoted_offer(s.request_json, s.intent)
                except ParseError:
                    continue
                if unit.model == "unit" and unit.offer == offer.offer and unit.price_list == offer.price_list:
                    return unit
        return QuotedOffer("unit", offer.amount, offer.currency, offer=offer.offer, price_list=offer.price_list,
                           per=1 << 62)  # no unit price to compare: the model alone is checked
    return offer


def check_mandate_offer(challenge: Challenge, restrictions: MandateRestrictions | None,
                        siblings: Sequence[Challenge] = ()) -> None:
    """PRICE-MDT-02, the buyer's half: raise QuoteRejected("model" / "unit-price") for an offer the
    chain does not allow, before anything is reserved or signed."""
    if restrictions is None or (restrictions.models is None and restrictions.max_unit_price is None):
        return
    try:
        offer = _offer_of(challenge, siblings)
    except ParseError as exc:
        raise QuoteRejected("model", f"cannot tell the pricing model of the offer: {exc}") from None
    try:
        check_offer_allowed(offer, restrictions)
    except (ModelNotAllowed, UnitPriceTooHigh) as exc:
        raise QuoteRejected(_MANDATE_RULES[type(exc)], exc.detail) from None


def check_seat_quote(challenge: Challenge, request: ChargeRequest, policy: BuyerPolicy, now: datetime, *,
                     agent: str | None = None) -> None:
    """PRICE-BUY-02: a seat is a recurring commitment. Beside the charge rules (amount, currency,
    recipient, expiry), its period must be one the policy lets us commit to and must add up:
    ``periodUnit``, ``periodCount``, ``periodSeconds`` and ``subscriptionExpires`` (the end of the
    period quoted, no more than one period away, not before the challenge expires)."""
    if not policy.allow_recurring:
        raise QuoteRejected("recurring", "a seat is a recurring commitment and the policy allows none (allow_recurring)")
    check_quote(challenge, request, policy, now)
    doc = challenge.request_json
    unit, count, seconds = doc.get("periodUnit"), doc.get("periodCount"), doc.get("periodSeconds")
    if unit not in PERIOD_UNITS:
        raise QuoteRejected("seat", f"periodUnit {unit!r} is not one of {', '.join(PERIOD_UNITS)}")
    if not isinstance(count, str) or _DECIMAL.fullmatch(count) is None or int(count) > 1000:
        raise QuoteRejected("seat", f"periodCount {count!r} is not a decimal string of 1 to 1000")
    if not isinstance(seconds, str) or _DECIMAL.fullmatch(seconds) is None:
        raise QuoteRejected("seat", f"periodSeconds {seconds!r} is not a positive decimal string")
    low, high = _PERIOD_SECONDS[unit]
    if not low * int(count) <= int(seconds) <= high * int(count):
        raise QuoteRejected("seat", f"periodSeconds {seconds} is not the length of {count} {unit}(s)")
    try:
        end = parse_rfc3339(doc.get("subscriptionExpires"))
    except ParseError:
        raise QuoteRejected("seat", "subscriptionExpires is not an RFC 3339 date-time") from None
    if end <= now or (end - now).total_seconds() > int(seconds):
        raise QuoteRejected("seat", f"subscriptionExpires {doc['subscriptionExpires']} is not the end of the current period")
    expires = challenge.expires_at
    if expires is not None and expires > end:
        raise QuoteRejected("seat", "the challenge outlives the period it quotes")
    pricing = doc.get("pricing") if isinstance(doc.get("pricing"), dict) else {}
    period_end = pricing.get("periodEnd")
    if period_end is not None:
        try:
            same = parse_rfc3339(period_end) == end
        except ParseError:
            same = False
        if not same:
            raise QuoteRejected("seat", "pricing.periodEnd differs from subscriptionExpires")
    sub = doc.get("subscriptionId")
    if sub is not None and agent is not None:
        plan = pricing.get("plan")
        if not isinstance(plan, str) or sub != subscription_id(challenge.realm, plan, agent):
            raise QuoteRejected("seat", "subscriptionId is not this agent's subscription to the plan")


def choose_challenge(
    challenges: Sequence[Challenge],
    methods: Sequence[BuyerMethod],
    policy: BuyerPolicy,
    now: datetime,
    *,
    plan: OfferPlan = OfferPlan(),
    restrictions: MandateRestrictions | None = None,
    session_offer: Callable[[Challenge], Any] | None = None,
    agent: str | None = None,
) -> OfferChoice:
    """PRICE-BUY-01: among the offers of one 402, those the mandate chain allows and the policy
    accepts; of these the preferred model's, else the lowest expected total, ties to the earlier.

    ``session_offer`` checks a ``session`` challenge (policy, cap) and returns what opens it, or
    raises QuoteRejected / ParseError; without it session challenges are not payable here and a
    unit offer is paid by its charge. Raises QuoteRejected when offers were refused by the mandate
    or the policy (a mandate rule named first), NoPayableChallenge when none could be paid at all.
    """
    by_name = {m.name: m for m in methods}
    candidates: list[OfferChoice] = []
    views: list[QuotedOffer] = []
    refusals: list[tuple[str | None, str]] = []
    for challenge in challenges:
        where = f"{challenge.method}/{challenge.intent}"
        try:
            request_doc = challenge.request_json
            offer = quoted_offer(request_doc, challenge.intent)
        except ParseError as exc:
            refusals.append((None, f"{where}: {exc}"))
            continue
        if offer.offer:
            where += f" offer {offer.offer!r}"
        if challenge.header is not None:
            refusals.append((None, f"{where}: credential field {challenge.header!r} is not supported"))
            continue
        try:
            check_mandate_offer(challenge, restrictions, challenges)
            quote = session = None
            if challenge.intent == "session":
                if session_offer is None:
                    refusals.append((None, f"{where}: sessions are not enabled here"))
                    continue
                session = session_offer(challenge)
            else:
                method = by_name.get(challenge.method)
                if method is None:
                    refusals.append((None, f"{where}: no such method here"))
                    continue
                request = ChargeRequest.from_challenge(challenge)
                if challenge.intent == SUBSCRIPTION_INTENT:
                    can_pay = getattr(method, "can_pay_subscription", None)
                    why_not = can_pay(challenge, request) if can_pay else "this method pays no subscriptions"
                else:
                    why_not = method.can_pay(challenge, request)
                if why_not is not None:
                    refusals.append((None, f"{where}: {why_not}"))
                    continue
                if challenge.intent == SUBSCRIPTION_INTENT:
                    check_seat_quote(challenge, request, policy, now, agent=agent)
                else:
                    check_quote(challenge, request, policy, now)
                quote = Quote(challenge, request, method)
        except QuoteRejected as exc:
            refusals.append((exc.rule, f"{where}: {exc}"))
            continue
        except ParseError as exc:
            refusals.append((None, f"{where}: {exc}"))
            continue
        # A charge standing in for a unit offer costs its amount per request.
        view = offer if (offer.model != "unit" or challenge.intent == "session") else \
            QuotedOffer("transaction", offer.amount, offer.currency, offer=offer.offer, price_list=offer.price_list)
        candidates.append(OfferChoice(challenge, offer, plan.total(view), quote, session))
        views.append(view)
    if not candidates:
        reasons = [r for _, r in refusals]
        rules = [rule for rule, _ in refusals if rule is not None]
        if rules:
            mandate = [r for r in rules if r in ("model", "unit-price")]
            raise QuoteRejected((mandate or rules)[0], "no offer is acceptable: " + "; ".join(reasons))
        raise NoPayableChallenge("no challenge can be paid within policy", reasons)
    pool = [i for i, c in enumerate(candidates) if c.offer.model == plan.prefer] or list(range(len(candidates)))
    best = choose_offer([views[i] for i in pool], planned_requests=plan.planned_requests, planned_units=plan.planned_units,
                        planned_periods=plan.planned_periods, currency=views[pool[0]].currency)
    index = next(i for i in pool if views[i] is best)
    return candidates[index]
