"""The seller's decisions, without I/O: issue challenges, verify credentials, build receipts.

The aiohttp adapter feeds in a ``RequestInfo`` and the clock, and carries out what comes
back; consuming a challenge, settling and storing responses are I/O and stay there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from mpp.protocol.challenge import ChallengeIssuer
from mpp.protocol.digest import content_digest, verify_content_digest
from mpp.protocol.wire import encode_json_b64
from mpp.protocol.errors import (
    RESOURCE_MAX,
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    ParseError,
    PaymentExpired,
    PaymentProblem,
    VerificationFailed,
    clip,
)
from mpp.protocol.headers import format_challenge, parse_accept_payment, parse_credential
from mpp.methods import SellerMethod
from mpp.protocol.challenge import BODY_METHODS, resource_of
from mpp.protocol.models import CURRENCY, Challenge, ChargeRequest, Credential, format_rfc3339
from mpp.pricing.prices import Metered, Price
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, VoucherInvalid, parse_session_payload
from mpp.intents.session import INTENT as SESSION_INTENT

__all__ = ["RequestInfo", "Verified", "SessionCall", "SellerCore"]

INTENT = "charge"
SUBSCRIPTION_INTENT = "subscription"  # spec/pricing.md §3.2: a seat, one period per payment


@dataclass(frozen=True)
class RequestInfo:
    """What the core needs to know about an incoming HTTP request."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    accept_payment: str | None = None
    authorization: Sequence[str] = ()
    subscription: str | None = None  # Subscription-Id the buyer named (spec/pricing.md §3.2), echoed in seat quotes

    @property
    def resource(self) -> str:
        """What a challenge for this request is bound to: the method in uppercase, one space, the path, and
        ``?`` and the query when there is one (CORE-BIND-01)."""
        return resource_of(self.method, self.path, self.query)


@dataclass(frozen=True)
class Verified:
    """A credential that passed every offline check; next come consumption and settlement."""

    credential: Credential
    request: ChargeRequest
    proof: Any
    resource: str

    @property
    def challenge_id(self) -> str:
        """The id of the challenge the credential answers: the payment is consumed, settled and recorded
        under it."""
        return self.credential.challenge.id


@dataclass(frozen=True)
class SessionCall:
    """A session credential that passed the checks needing no session state."""

    credential: Credential
    payload: SessionPayload
    request: SessionRequest
    terms: SessionTerms
    resource: str

    @property
    def session_id(self) -> str:
        """The session the credential names: its payload's ``sessionId``, checked to be the id of the
        challenge it echoes."""
        return self.payload.session_id


def _check_binding(challenge: Challenge, info: RequestInfo) -> None:
    """The challenge was issued for this very request: method, path, query (opaque) and body (digest)."""
    opaque = challenge.opaque_json or {}
    if opaque.get("resource") != info.resource:
        raise InvalidChallenge("challenge was issued for another resource")
    if challenge.digest is not None:
        verify_content_digest(challenge.digest, info.body)
    elif info.body:
        raise VerificationFailed("request has a body but the challenge bound none")


@dataclass
class SellerCore:
    """The seller's pure decisions over the scheme: the challenges a price is quoted with (one per
    payment method, HMAC-bound by ``issuer``) and the checks of a credential against them. No I/O;
    the engine's steps call it, and build 402 problems and receipt claims from its results."""

    issuer: ChallengeIssuer
    methods: Mapping[str, SellerMethod]
    _order: list[str] = field(init=False)
    _requests: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = field(init=False)
    _quoting: dict[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self._order = list(self.methods)
        self._requests = {}
        self._quoting = {}

    # -- quoting -----------------------------------------------------------

    def quoting(self, currency: str) -> tuple[str, ...]:
        """The methods that can quote a price in ``currency``, in our order: a method with
        ``accepts_currency`` (the ``evm`` one: the currencies it has a token for) when it says so, any
        other for a currency code (``usd``), as every price was before prices could name a token address."""
        known = self._quoting.get(currency)
        if known is not None:
            return known
        out = []
        for name in self._order:
            accepts = getattr(self.methods[name], "accepts_currency", None)
            if accepts(currency) if accepts is not None else CURRENCY.fullmatch(currency) is not None:
                out.append(name)
        if len(self._quoting) >= 1024:  # bounded: the currencies of a seller's prices are few
            self._quoting.clear()
        self._quoting[currency] = found = tuple(out)
        return found

    def offers(self, price: "Price | Metered") -> list[tuple[str, str]]:
        """(method, intent) pairs this price is offered in, in our order: sessions first; only the
        methods that can quote its currency (:meth:`quoting`). Empty: nothing here can sell it."""
        names = self.quoting(price.currency)
        if isinstance(price, Metered):
            sessions = [(n, SESSION_INTENT) for n in names if hasattr(self.methods[n], "session_request_for")]
            return sessions + [(n, INTENT) for n in names]
        return [(n, INTENT) for n in names]

    def challenges(self, price: "Price | Metered", info: RequestInfo, now: datetime) -> list[Challenge]:
        """Fresh challenges for this request, one per offer, in the client's preferred order."""
        digest = content_digest(info.body) if (info.body or info.method.upper() in BODY_METHODS) else None
        charge = price.charge_price() if isinstance(price, Metered) else price
        out = []
        for name, intent in self._negotiate(info.accept_payment, self.offers(price)):
            if intent == SESSION_INTENT:
                request = self.methods[name].session_request_for(price)  # type: ignore[attr-defined]
                encoded = None
            else:
                request, encoded = self._charge_request(name, charge)
            # The nonce makes every challenge id unique (HMAC is deterministic, and two quotes for
            # one resource in the same second would otherwise share an id, the second one "used").
            out.append(self.issuer.issue(
                method=name,
                intent=intent,
                request=request,
                now=now,
                digest=digest,
                opaque={"nonce": secrets.token_urlsafe(16), "resource": info.resource},
                description=charge.description,
                encoded=encoded,
            ))
        return out

    def charge_request(self, name: str, charge: "Price") -> dict[str, Any]:
        """The decoded request method ``name`` quotes ``charge`` with (cached): what its 402 and its
        discovery offer say, e.g. a token's address where the price says ``usd`` (CORE-DISC-02)."""
        return self._charge_request(name, charge)[0]

    def _charge_request(self, name: str, charge: "Price") -> tuple[dict[str, Any], str]:
        """The charge request a method quotes for a price, and its wire encoding: made once per
        method and terms (a seller quotes the same few prices over and over)."""
        method = self.methods[name]
        key = (name, charge.amount, charge.currency, charge.description, getattr(method, "recipient", None),
               getattr(method, "ledger_id", None))
        cached = self._requests.get(key)
        if cached is None:
            request = method.request_for(amount=charge.amount, currency=charge.currency, description=charge.description)
            cached = (request, encode_json_b64(request))
            if len(self._requests) >= 1024:  # bounded: prices from a reloaded list replace the old ones
                self._requests.clear()
            self._requests[key] = cached
        return cached
    @staticmethod
    def _negotiate(accept_payment: str | None, offers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        ranges = parse_accept_payment(accept_payment)
        if ranges is None:
            return offers
        ranked: list[tuple[float, int, tuple[str, str]]] = []
        for position, (name, intent) in enumerate(offers):
            matching = [r for r in ranges if r.matches(name, intent)]
            if not matching:
                continue
            best = max(matching, key=lambda r: r.specificity)  # the most specific range decides
            if best.q > 0:
                ranked.append((-best.q, position, (name, intent)))
        if not ranked:
            return offers  # nothing acceptable: the draft lets us send our normal set
        return [offer for _, _, offer in sorted(ranked)]

    # -- verifying ---------------------------------------------------------

    @staticmethod
    def payment_credential(info: RequestInfo) -> str | None:
        """The one Payment credential in the request, ``None`` if there is none.

        Two Payment credentials are malformed: which one the client meant is unknowable.
        """
        found = [v for v in info.authorization if v.lstrip(" \t")[:8].lower() == "payment "
                 or v.strip(" \t").lower() == "payment"]
        if len(found) > 1:
            raise MalformedCredential("more than one Payment credential in the request")
        return found[0] if found else None

    def minted_id(self, info: RequestInfo, now: datetime) -> str | None:
        """The id of the challenge the request's credential echoes when this seller minted it (its
        HMAC verifies, expired or not); ``None`` for anything else: unpaid, malformed, unknown or
        tampered. Only the former may be written down (CORE-ONCE-09); it is asked on refusal only."""
        try:
            header = self.payment_credential(info)
            if header is None:
                return None
            challenge = parse_credential(header).challenge
            self.issuer.verify(challenge, now=now, check_expiry=False)
        except (ParseError, PaymentProblem):
            return None
        return challenge.id

    def verify(self, header: str, info: RequestInfo, now: datetime) -> Verified:
        """Every check that needs no state. Raises the PaymentProblem the spec names."""
        try:
            credential = parse_credential(header)
        except ParseError as exc:
            raise MalformedCredential(f"credential is malformed: {exc}") from None
        challenge = credential.challenge
        method = self.methods.get(challenge.method)
        if method is None:
            raise MethodUnsupported(f"payment method {clip(challenge.method)!r} is not accepted here")
        if challenge.intent not in (INTENT, SUBSCRIPTION_INTENT):  # a seat pays like a charge (PRICE-SEAT-01)
            raise InvalidChallenge(f"intent {clip(challenge.intent)!r} is not offered for this credential")
        self.issuer.verify(challenge, now=now)  # InvalidChallenge / PaymentExpired
        _check_binding(challenge, info)
        try:
            request = ChargeRequest.from_challenge(challenge)
        except ParseError as exc:  # we issued it, so this means a bug or a forged secret
            raise InvalidChallenge(str(exc)) from None
        proof = method.verify(credential, request)
        return Verified(credential=credential, request=request, proof=proof, resource=info.resource)

    def verify_session(self, credential: Credential, info: RequestInfo, now: datetime) -> SessionCall:
        """Checks of a ``session`` credential that need no session state.

        ``open`` is checked like a charge credential (HMAC, expiry, resource, digest). Later
        actions echo the challenge the session was opened on: only its HMAC and that its id is
        the session's are checked, since the session outlives the challenge and spans routes
        (SESSION-VOUCHER-01); their signatures bind them to the session and this seller."""
        challenge = credential.challenge
        method = self.methods.get(challenge.method)
        if method is None or not hasattr(method, "session_request_for"):
            raise MethodUnsupported(f"payment method {clip(challenge.method)!r} offers no sessions here")
        # The id binding before the payload (CORE-ERR-13, SESSION-VOUCHER-09); the expiry counts for an open only.
        self.issuer.verify(challenge, now=now, check_expiry=False)
        payload = parse_session_payload(credential.payload)
        opening = payload.action == "open"
        if opening and challenge.is_expired(now):
            raise PaymentExpired("challenge has expired")
        if payload.session_id != challenge.id:
            raise VoucherInvalid("the credential's sessionId is not the id of the challenge it echoes")
        if credential.source is not None and credential.source != payload.signer:
            raise VerificationFailed("credential source is not the session's signer")
        if opening:
            _check_binding(challenge, info)
        try:
            request = SessionRequest.from_challenge(challenge)
        except ParseError as exc:  # we issued it, so this means a bug or a forged secret
            raise InvalidChallenge(str(exc)) from None
        method.check_session_request(request)  # type: ignore[attr-defined]
        return SessionCall(credential, payload, request, SessionTerms.of(challenge, request), info.resource)

    # -- answering ---------------------------------------------------------

    @staticmethod
    def problem_headers(challenges: Iterable[Challenge]) -> list[tuple[str, str]]:
        """The headers of a problem answer: one ``WWW-Authenticate`` per fresh challenge, then
        ``Cache-Control: no-store`` (CORE-ERR-10)."""
        headers = [("WWW-Authenticate", format_challenge(c)) for c in challenges]
        headers.append(("Cache-Control", "no-store"))
        return headers

    @staticmethod
    def problem_body(problem: PaymentProblem, challenges: Sequence[Challenge], instance: str) -> dict[str, Any]:
        """The problem document for ``problem`` (CORE-ERR-01): ``instance`` the request's path, left out when
        longer than RESOURCE_MAX rather than cut (CORE-ERR-12), and ``challengeId`` the id of the first fresh
        challenge, when there is one."""
        # instance is optional, and a shortened path would name another resource: a long one is left out (CORE-ERR-12)
        return problem.to_problem(instance=instance if len(instance) <= RESOURCE_MAX else None,
                                  challenge_id=challenges[0].id if challenges else None)

    def receipt_claims(self, verified: Verified, *, reference: str, settled_at: datetime, account: str | None) -> dict[str, Any]:
        """The claims of a charge's receipt JWS (CHARGE-07): the challenge, amount, currency, recipient and
        resource paid, the rail's ``reference`` and settlement time, ``sub`` the payer's DID (the
        credential's ``source``, else the proof's signer, else ``anonymous``) and ``account`` when the rail
        names one. The caller adds the pricing and identity claims and signs them."""
        c = verified.credential.challenge
        claims: dict[str, Any] = {
            "iss": self.issuer.realm,
            "sub": verified.credential.source or getattr(verified.proof, "signer", None)
                    or getattr(verified.proof, "payer_did", None) or "anonymous",
            "iat": int(settled_at.timestamp()),
            "jti": c.id,
            "challengeId": c.id,
            "method": c.method,
            "intent": c.intent,
            "amount": verified.request.amount,
            "currency": verified.request.currency,
            "recipient": verified.request.recipient,
            "resource": verified.resource,
            "reference": reference,
            "settledAt": format_rfc3339(settled_at),
        }
        if account is not None:
            claims["account"] = account
        return claims
