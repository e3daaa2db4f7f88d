"""The seller's decisions, without I/O: issue challenges, verify credentials, build receipts.

The aiohttp adapter feeds in a ``RequestInfo`` and the clock, and carries out what comes
back; consuming a challenge, settling and storing responses are I/O and stay there.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from .challenge import ChallengeIssuer
from .digest import content_digest, verify_content_digest
from .errors import (
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    ParseError,
    PaymentProblem,
    VerificationFailed,
)
from .headers import format_challenge, parse_accept_payment, parse_credential
from .methods import SellerMethod
from .models import Challenge, ChargeRequest, Credential, format_rfc3339

__all__ = ["Price", "RequestInfo", "Verified", "SellerCore", "resource_of", "BODY_METHODS"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_AMOUNT = 2**63 - 1  # what every ledger backend can hold in a signed 64-bit integer
CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}")
INTENT = "charge"


@dataclass(frozen=True)
class Price:
    """What a route costs per request: integer base units, a currency, a description."""

    amount: int
    currency: str
    description: str | None = None
    require_identity: bool = False  # the identity extension (mandate chain + proof) is mandatory here

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool) or not 0 < self.amount <= MAX_AMOUNT:
            raise ValueError(f"price amount must be an integer of base units from 1 to {MAX_AMOUNT}")
        if not isinstance(self.currency, str) or CURRENCY.fullmatch(self.currency) is None:
            raise ValueError("currency must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32)")


@dataclass(frozen=True)
class RequestInfo:
    """What the core needs to know about an incoming HTTP request."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    accept_payment: str | None = None
    authorization: Sequence[str] = ()

    @property
    def resource(self) -> str:
        return resource_of(self.method, self.path, self.query)


def resource_of(method: str, path: str, query: str = "") -> str:
    """The string a challenge is bound to: HTTP method, path and query exactly as requested."""
    return f"{method.upper()} {path}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Verified:
    """A credential that passed every offline check; next come consumption and settlement."""

    credential: Credential
    request: ChargeRequest
    proof: Any
    resource: str

    @property
    def challenge_id(self) -> str:
        return self.credential.challenge.id


@dataclass
class SellerCore:
    issuer: ChallengeIssuer
    methods: Mapping[str, SellerMethod]
    _order: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._order = list(self.methods)

    # -- quoting -----------------------------------------------------------

    def challenges(self, price: Price, info: RequestInfo, now: datetime) -> list[Challenge]:
        """Fresh challenges for this request, one per method, in the client's preferred order."""
        digest = content_digest(info.body) if (info.body or info.method.upper() in BODY_METHODS) else None
        names = self._negotiate(info.accept_payment)
        # The nonce makes every challenge id unique (HMAC is deterministic, and two quotes for
        # one resource in the same second would otherwise share an id, the second one "used").
        return [
            self.issuer.issue(
                method=name,
                intent=INTENT,
                request=self.methods[name].request_for(
                    amount=price.amount, currency=price.currency, description=price.description
                ),
                now=now,
                digest=digest,
                opaque={"nonce": secrets.token_urlsafe(16), "resource": info.resource},
                description=price.description,
            )
            for name in names
        ]

    def _negotiate(self, accept_payment: str | None) -> list[str]:
        ranges = parse_accept_payment(accept_payment)
        if ranges is None:
            return self._order
        ranked: list[tuple[float, int, str]] = []
        for position, name in enumerate(self._order):
            matching = [r for r in ranges if r.matches(name, INTENT)]
            if not matching:
                continue
            best = max(matching, key=lambda r: r.specificity)  # the most specific range decides
            if best.q > 0:
                ranked.append((-best.q, position, name))
        if not ranked:
            return self._order  # nothing acceptable: the draft lets us send our normal set
        return [name for _, _, name in sorted(ranked)]

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

    def verify(self, header: str, info: RequestInfo, now: datetime) -> Verified:
        """Every check that needs no state. Raises the PaymentProblem the spec names."""
        try:
            credential = parse_credential(header)
        except ParseError as exc:
            raise MalformedCredential(f"credential is malformed: {exc}") from None
        challenge = credential.challenge
        method = self.methods.get(challenge.method)
        if method is None:
            raise MethodUnsupported(f"payment method {challenge.method!r} is not accepted here")
        if challenge.intent != INTENT:
            raise InvalidChallenge(f"intent {challenge.intent!r} is not offered here")
        self.issuer.verify(challenge, now=now)  # InvalidChallenge / PaymentExpired
        opaque = challenge.opaque_json or {}
        if opaque.get("resource") != info.resource:
            raise InvalidChallenge("challenge was issued for another resource")
        if challenge.digest is not None:
            verify_content_digest(challenge.digest, info.body)
        elif info.body:
            raise VerificationFailed("request has a body but the challenge bound none")
        try:
            request = ChargeRequest.from_challenge(challenge)
        except ParseError as exc:  # we issued it, so this means a bug or a forged secret
            raise InvalidChallenge(str(exc)) from None
        proof = method.verify(credential, request)
        return Verified(credential=credential, request=request, proof=proof, resource=info.resource)

    # -- answering ---------------------------------------------------------

    @staticmethod
    def problem_headers(challenges: Iterable[Challenge]) -> list[tuple[str, str]]:
        headers = [("WWW-Authenticate", format_challenge(c)) for c in challenges]
        headers.append(("Cache-Control", "no-store"))
        return headers

    @staticmethod
    def problem_body(problem: PaymentProblem, challenges: Sequence[Challenge], instance: str) -> dict[str, Any]:
        return problem.to_problem(instance=instance, challenge_id=challenges[0].id if challenges else None)

    def receipt_claims(self, verified: Verified, *, reference: str, settled_at: datetime, account: str | None) -> dict[str, Any]:
        c = verified.credential.challenge
        claims: dict[str, Any] = {
            "iss": self.issuer.realm,
            "sub": verified.credential.source or getattr(verified.proof, "signer", None) or "anonymous",
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
