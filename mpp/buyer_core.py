"""The buyer's decisions, without I/O: choose a challenge, check the quote, sign, check the receipt.

Nothing is signed before every policy rule has passed; the rule that refused is named.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from .errors import NoPayableChallenge, ParseError, QuoteRejected, ReceiptInvalid
from .headers import format_credential, parse_receipt
from .methods import BuyerMethod
from .models import Challenge, ChargeRequest, Credential, PaymentReceipt
from .receipts import verify_receipt_jws

__all__ = ["BuyerPolicy", "Quote", "origin_of", "select_quote", "check_quote", "check_transport", "sign_quote", "verify_receipt"]


def origin_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class BuyerPolicy:
    """What the buyer agrees to pay without asking anyone.

    ``max_amount`` is per purchase in base units; ``currencies`` and ``recipients`` are
    allow-lists (``None`` means any); ``min_validity`` refuses quotes about to expire.
    """

    max_amount: int
    currencies: frozenset[str] | None = None
    recipients: frozenset[str] | None = None
    require_expires: bool = True
    min_validity: timedelta = timedelta(seconds=2)
    allow_insecure_http: bool = False  # plain http to a non-loopback host; for tests behind TLS proxies only


@dataclass(frozen=True)
class Quote:
    challenge: Challenge
    request: ChargeRequest
    method: BuyerMethod


def check_transport(url: str, policy: BuyerPolicy) -> None:
    """Credentials travel over TLS, except to this machine (tests, demos, local sidecars)."""
    scheme, host, _ = origin_of(url)
    if scheme == "https" or policy.allow_insecure_http:
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


def sign_quote(quote: Quote, extensions: Mapping[str, Any] | None = None) -> str:
    """The ``Authorization`` field value for an accepted quote (with extension members, if any)."""
    payload, source = quote.method.payload(quote.challenge, quote.request)
    credential = Credential(challenge=quote.challenge, payload=payload, source=source, extensions=dict(extensions or {}))
    return format_credential(credential)


def verify_receipt(header: str | None, quote: Quote, jwks: Mapping[str, Any], now: datetime) -> tuple[PaymentReceipt, dict[str, Any]]:
    """Parse ``Payment-Receipt`` and check its JWS and that it is for this very quote."""
    if not header:
        raise ReceiptInvalid("response carries no Payment-Receipt")
    try:
        receipt = parse_receipt(header)
    except ParseError as exc:
        raise ReceiptInvalid(f"Payment-Receipt is malformed: {exc}") from exc
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
