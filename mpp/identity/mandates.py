"""Mandates: the JWTs (EdDSA only) a principal signs for one agent, or an agent for a sub-agent,
each verified on its own: signature, header rules, claims, validity window."""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import jwt
from jwt.exceptions import InvalidTokenError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpp.protocol.wire import decode_jws
from mpp.protocol.errors import ParseError, clip
from mpp.protocol.keys import SigningKey, public_key_from_did
from mpp.identity.problems import IdentityProblem, MandateExpired, MandateInvalid, MandateNotYetValid
from mpp.identity.restrictions import MandateRestrictions, restrictions_from_claims

__all__ = [
    "MANDATE_TYP",
    "same_currency",
    "PERIODS",
    "MAX_INT",
    "MAX_LIST",
    "MAX_PATTERN",
    "MAX_LEEWAY",
    "Mandate",
    "MandateChain",
    "issue_mandate",
    "decode_mandate",
]

MANDATE_TYP = "mpp-mandate+jwt"
"""The JOSE `typ` of a mandate JWT; a token of another type is refused, so an approval or grant cannot pass
for a mandate."""
PERIODS = ("day", "week", "month", "total")
"""The budget periods a mandate may name (`total`: the whole validity)."""
_ALGORITHMS = ["EdDSA"]
_PATTERN = re.compile(r"\*|[A-Z]+ /[!-~]*")  # IDENT-MDT-08: '*', or METHOD, one space, a visible-ASCII path glob
MAX_PATTERN = 256
"""The longest scope pattern a mandate may carry, in characters."""
_CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}|0x[0-9a-fA-F]{40}")
MAX_INT = 2**53 - 1
"""Every JSON implementation reads integers up to here exactly."""
MAX_LIST = 64
"""The most entries a mandate's list claims (audiences, scopes, ...) may have: bounds the work a hostile
token causes."""
_MANDATE_JTI = re.compile(r"mdt_[A-Za-z0-9_-]{22}")
MAX_LEEWAY = 60.0
"""The most clock leeway, in seconds, a verifier may allow on a mandate's validity."""


class _Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    amount: int = Field(ge=0, le=MAX_INT)
    period: str

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        if v not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}")
        return v


class _MandateClaims(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    iss: str
    sub: str
    prn: str
    aud: list[str] = Field(min_length=1, max_length=MAX_LIST)
    jti: str
    iat: int = Field(ge=0, le=MAX_INT)
    nbf: int = Field(ge=0, le=MAX_INT)
    exp: int = Field(ge=0, le=MAX_INT)
    scope: list[str] = Field(min_length=1, max_length=MAX_LIST)
    review: list[str] = Field(default=[], max_length=MAX_LIST)
    currency: str
    ceiling: int = Field(ge=0, le=MAX_INT)
    budget: _Budget
    approval_threshold: int | None = Field(default=None, ge=0, le=MAX_INT)
    max_depth: int = Field(ge=0, le=15)
    approvers: list[str] = Field(default=[], max_length=MAX_LIST)
    models: Any = None  # PRICE-MDT-03: checked by restrictions_from_claims in the validator below
    max_unit_price: Any = None

    @model_validator(mode="after")
    def _pricing_restrictions(self) -> "_MandateClaims":
        present = {k: getattr(self, k) for k in ("models", "max_unit_price") if k in self.model_fields_set}
        restrictions_from_claims([present])  # ValueError -> a validation error -> mandate-invalid
        return self

    @field_validator("sub", "prn")
    @classmethod
    def _did(cls, v: str) -> str:
        public_key_from_did(v)  # IDENT-KEY-01: an Ed25519 did:key, nothing else (ParseError is a ValueError)
        return v

    @field_validator("approvers")
    @classmethod
    def _dids(cls, v: list[str]) -> list[str]:
        for did in v:
            public_key_from_did(did)
        return v

    @field_validator("jti")
    @classmethod
    def _jti(cls, v: str) -> str:
        if _MANDATE_JTI.fullmatch(v) is None:
            raise ValueError("jti must be 'mdt_' and 22 base64url characters")
        return v

    @field_validator("aud")
    @classmethod
    def _aud(cls, v: list[str]) -> list[str]:
        if "*" in v and v != ["*"]:
            raise ValueError("aud is either [\"*\"] alone or a list of realms")
        return v

    @field_validator("scope", "review")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if len(p) > MAX_PATTERN or _PATTERN.fullmatch(p) is None:
                raise ValueError(f"scope pattern {p[:40]!r} is not '*' or 'METHOD /path-glob' of at most {MAX_PATTERN} characters")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if _CURRENCY.fullmatch(v) is None:
            raise ValueError("currency must be a lowercase code ([a-z][a-z0-9]{0,31}) or a token's address (0x and 40 hex digits)")
        return v


def same_currency(a: str, b: str) -> bool:
    """Whether two currencies are the same: codes as written; token addresses (``0x`` and 40 hex
    digits) by their 20 bytes, whatever their letter case (EIP-55 or not, EVM-REQ-02)."""
    if a.startswith("0x") and b.startswith("0x"):
        return a.lower() == b.lower()
    return a == b


@dataclass(frozen=True)
class Mandate:
    """One verified link of a chain."""

    token: str
    iss: str
    sub: str
    prn: str
    aud: tuple[str, ...]
    jti: str
    nbf: int
    exp: int
    scope: tuple[str, ...]
    review: tuple[str, ...]
    currency: str
    ceiling: int
    budget_amount: int
    budget_period: str
    approval_threshold: int | None
    max_depth: int
    approvers: tuple[str, ...]
    iat: int = 0
    models: tuple[str, ...] | None = None  # PRICE-MDT: the only pricing models allowed; None = all
    max_unit_price: tuple[int, int] | None = None  # (amount, per): the highest unit price allowed

    @property
    def pricing_claims(self) -> dict[str, Any]:
        """The link's ``models`` and ``max_unit_price`` claims as issued (absent ones left out)."""
        claims: dict[str, Any] = {}
        if self.models is not None:
            claims["models"] = list(self.models)
        if self.max_unit_price is not None:
            claims["max_unit_price"] = {"amount": self.max_unit_price[0], "per": self.max_unit_price[1]}
        return claims

    @property
    def key(self) -> str:
        """What revocations, budgets and approvals are counted under: (issuer, jti), so that one
        issuer's choice of jti can never touch another issuer's mandate."""
        return f"{self.iss}#{self.jti}"

    @classmethod
    def _from(cls, token: str, c: _MandateClaims) -> "Mandate":
        return cls(token, c.iss, c.sub, c.prn, tuple(c.aud), c.jti, c.nbf, c.exp, tuple(c.scope), tuple(c.review),
                   c.currency, c.ceiling, c.budget.amount, c.budget.period, c.approval_threshold, c.max_depth,
                   tuple(c.approvers), c.iat,
                   tuple(c.models) if "models" in c.model_fields_set else None,
                   (c.max_unit_price["amount"], c.max_unit_price.get("per", 1)) if "max_unit_price" in c.model_fields_set else None)


@dataclass(frozen=True)
class MandateChain:
    """A verified chain, root first: the principal's mandate, then each delegation."""

    links: tuple[Mandate, ...]

    @property
    def root(self) -> Mandate:
        """The first link: the mandate the principal issued."""
        return self.links[0]

    @property
    def leaf(self) -> Mandate:
        """The last link: the mandate of the agent that pays, the narrowest of the chain (IDENT-DLG-02)."""
        return self.links[-1]

    @property
    def principal(self) -> str:
        """The principal's DID: the root's issuer."""
        return self.root.iss

    @property
    def agent(self) -> str:
        """The agent's DID: the leaf's subject, whose key signs the payment and the proof."""
        return self.leaf.sub

    @property
    def dids(self) -> tuple[str, ...]:
        """The principal, then every link's subject: the leaf's subject (the agent) last."""
        return (self.principal, *(link.sub for link in self.links))

    @property
    def jtis(self) -> tuple[str, ...]:
        """Every link's ``jti``, root first."""
        return tuple(link.jti for link in self.links)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every link's key (``issuer#jti``), root first: what revocations, budgets and approvals are counted
        under."""
        return tuple(link.key for link in self.links)

    @property
    def tokens(self) -> list[str]:
        """The mandate JWTs the chain was verified from, root first (a credential's ``identity.mandates``)."""
        return [link.token for link in self.links]

    @property
    def restrictions(self) -> MandateRestrictions:
        """What pricing models and unit prices the whole chain allows (PRICE-MDT-01): the
        intersection over the links."""
        return restrictions_from_claims(link.pricing_claims for link in self.links)


def issue_mandate(
    issuer: SigningKey,
    *,
    subject: str,
    audience: Sequence[str] = ("*",),
    scope: Sequence[str] = ("*",),
    currency: str,
    ceiling: int,
    budget_amount: int,
    budget_period: str = "total",
    approval_threshold: int | None = None,
    review: Sequence[str] = (),
    max_depth: int = 0,
    not_before: datetime,
    expires: datetime,
    principal: str | None = None,
    approvers: Sequence[str] = (),
    jti: str | None = None,
    models: Sequence[str] | None = None,
    max_unit_price: Mapping[str, int] | None = None,
) -> str:
    """Sign a mandate for ``subject``. ``principal`` defaults to the issuer (a root mandate)."""
    claims: dict[str, Any] = {
        "iss": issuer.did,
        "sub": subject,
        "prn": principal or issuer.did,
        "aud": list(audience),
        "jti": jti or "mdt_" + secrets.token_urlsafe(16),
        "iat": int(not_before.timestamp()),
        "nbf": int(not_before.timestamp()),
        "exp": int(expires.timestamp()),
        "scope": list(scope),
        "currency": currency,
        "ceiling": ceiling,
        "budget": {"amount": budget_amount, "period": budget_period},
        "max_depth": max_depth,
    }
    if review:
        claims["review"] = list(review)
    if approval_threshold is not None:
        claims["approval_threshold"] = approval_threshold
    if approvers:
        claims["approvers"] = list(approvers)
    if models is not None:
        claims["models"] = list(models)
    if max_unit_price is not None:
        claims["max_unit_price"] = dict(max_unit_price)
    try:
        _MandateClaims.model_validate(claims)
    except ValidationError as exc:
        raise ValueError(f"invalid mandate: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return jwt.encode(claims, issuer.private_key, algorithm="EdDSA", headers={"typ": MANDATE_TYP, "kid": issuer.did})


def _checked_claims(token: str, typ: str, problem: type[IdentityProblem]) -> dict[str, Any]:
    """Structure, header rules and the Ed25519 signature under the key of ``iss``.

    The header never chooses the algorithm or the key: only EdDSA, only the issuer's did:key.
    Times are not checked here (the caller does, with its injected clock).
    """
    if not isinstance(token, str) or len(token) > 16384 or token.count(".") != 2:
        raise problem("not a compact JWS")
    try:
        header, payload, signature = decode_jws(token)
    except ParseError as exc:
        raise problem(f"not a well-formed JWS (base64url strict JSON objects): {exc}") from None
    if header.get("alg") not in _ALGORITHMS:
        raise problem(f"algorithm {clip(header.get('alg'))!r} is refused; only EdDSA is accepted")
    if header.get("typ") != typ:
        raise problem(f"typ must be {typ!r}")
    if "crit" in header:
        raise problem("critical header parameters are not supported")
    iss = payload.get("iss")
    if not isinstance(iss, str) or header.get("kid") != iss:
        raise problem("kid must equal the iss claim")
    if len(signature) != 64:
        raise problem("an Ed25519 signature is 64 bytes")
    try:
        key = public_key_from_did(iss)
    except ParseError:
        raise problem("issuer is not an Ed25519 did:key") from None
    try:
        jwt.decode(token, key, algorithms=_ALGORITHMS,
                   options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False})
    except InvalidTokenError as exc:
        raise problem(f"signature does not verify: {type(exc).__name__}") from None
    return payload


def _check_times(claims: dict[str, Any], now: datetime, leeway: float, expired: type[IdentityProblem],
                 immature: type[IdentityProblem]) -> None:
    t, leeway = now.timestamp(), min(leeway, MAX_LEEWAY)
    if claims["exp"] <= t - leeway:
        raise expired("token has expired")
    if claims["nbf"] > t + leeway or claims.get("iat", 0) > t + leeway:
        raise immature("token is not yet valid")


def _mandate_of(token: str) -> Mandate:
    """One mandate's signature and claims (no times, no trust: the callers check those, every time)."""
    if not isinstance(token, str) or len(token) > 16384:
        raise MandateInvalid("not a compact JWS")
    return _verified_mandate(token)


@functools.lru_cache(maxsize=1024)
def _verified_mandate(token: str) -> Mandate:
    """Pure in the token's text (the key is the issuer's did:key, named in the token), and an
    agent presents the same chain on every purchase, so the seller and its embedded ledger verify
    each link's signature once per process, not twice per purchase. Only successes are cached
    (an exception leaves the cache untouched); times, trust, audience, narrowing and revocation
    are checked on every use by the callers."""
    claims = _checked_claims(token, MANDATE_TYP, MandateInvalid)
    try:
        parsed = _MandateClaims.model_validate(claims)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MandateInvalid(f"mandate claim {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if parsed.nbf >= parsed.exp:
        raise MandateInvalid("mandate validity window is empty (nbf must be before exp)")
    return Mandate._from(token, parsed)


def decode_mandate(token: str, *, now: datetime | None = None, leeway: float = 30.0) -> Mandate:
    """One mandate: signature (by its own ``iss``), algorithm, claims, and the validity window at ``now``."""
    mandate = _mandate_of(token)
    if now is not None:
        _check_times({"exp": mandate.exp, "nbf": mandate.nbf, "iat": mandate.iat}, now, leeway, MandateExpired, MandateNotYetValid)
    return mandate
