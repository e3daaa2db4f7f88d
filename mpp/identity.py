"""The identity extension, sans-I/O: mandates and their delegation chains, proof of possession,
approvals, budget periods and the seller's entitlement checks.

A mandate is a JWT (EdDSA only) a principal signs for one agent; an agent may delegate a
narrower one to a sub-agent. The credential carries the chain, root first, and the agent's
signature over the exact quote. Nothing here touches a network, a clock or a database: the
caller passes ``now``, the trusted principals, and what it has already spent.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Collection, Mapping, Sequence

import jwt
from jwt.exceptions import ExpiredSignatureError, ImmatureSignatureError, InvalidTokenError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpp.protocol.wire import b64url_encode, canonical_json, decode_jws
from mpp.protocol.errors import RESOURCE_MAX, ExtensionProblem, ParseError, clip
from mpp.protocol.keys import SignatureInvalid, SigningKey, public_key_from_did, verify_signature
from mpp.protocol.models import Challenge, ChargeRequest, Credential

__all__ = [
    "MANDATE_TYP",
    "APPROVAL_TYP",
    "PERIODS",
    "DEFAULT_MAX_DEPTH",
    "IdentityProblem",
    "IdentityRequired",
    "MandateRequired",
    "MandateInvalid",
    "MandateUntrusted",
    "MandateExpired",
    "MandateNotYetValid",
    "MandateAudience",
    "MandateRevoked",
    "DelegationInvalid",
    "DelegationTooDeep",
    "IdentityMismatch",
    "ProofInvalid",
    "ApprovalRequired",
    "ApprovalInvalid",
    "OutOfScope",
    "OverCeiling",
    "BudgetExceeded",
    "CurrencyNotAllowed",
    "IDENTITY_PROBLEMS",
    "Mandate",
    "MandateChain",
    "Approval",
    "VerifiedIdentity",
    "PolicyDecision",
    "issue_mandate",
    "decode_mandate",
    "verify_chain",
    "scope_matches",
    "is_canonical_resource",
    "pattern_within",
    "request_hash",
    "quote_hash",
    "proof_message",
    "identity_member",
    "verify_identity",
    "REVOCATION_TYP",
    "issue_revocation",
    "verify_revocation",
    "issue_approval",
    "verify_approval",
    "period_key",
    "evaluate_policy",
]

MANDATE_TYP = "mpp-mandate+jwt"
APPROVAL_TYP = "mpp-approval+jwt"
PERIODS = ("day", "week", "month", "total")
DEFAULT_MAX_DEPTH = 3
PROOF_DOMAIN = b"mpp-identity-proof-v1\n"
QUOTE_DOMAIN = b"mpp-quote-v1\n"
_ALGORITHMS = ["EdDSA"]
_PATTERN = re.compile(r"\*|[A-Z]+ /[!-~]*")  # IDENT-MDT-08: '*', or METHOD, one space, a visible-ASCII path glob
MAX_PATTERN = 256
_CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}")


# -- problems ------------------------------------------------------------------


class IdentityProblem(ExtensionProblem):
    """Problems of the identity extension: our own types, under ``urn:mpp:problem:``."""


def _problem(slug: str, title: str, status: int = 402) -> type[IdentityProblem]:
    return type(
        "".join(part.capitalize() for part in slug.split("-")),
        (IdentityProblem,),
        {"slug": slug, "title": title, "status": status, "__module__": __name__},
    )


IdentityRequired = _problem("identity-required", "Identity Required")
MandateRequired = _problem("mandate-required", "Mandate Required")
MandateInvalid = _problem("mandate-invalid", "Mandate Invalid")
MandateUntrusted = _problem("mandate-untrusted", "Mandate Issuer Not Trusted")
MandateExpired = _problem("mandate-expired", "Mandate Expired")
MandateNotYetValid = _problem("mandate-not-yet-valid", "Mandate Not Yet Valid")
MandateAudience = _problem("mandate-audience", "Mandate Not For This Seller")
MandateRevoked = _problem("mandate-revoked", "Mandate Revoked")
DelegationInvalid = _problem("delegation-invalid", "Delegation Invalid")
DelegationTooDeep = _problem("delegation-too-deep", "Delegation Too Deep")
IdentityMismatch = _problem("identity-mismatch", "Identity Mismatch")
ProofInvalid = _problem("proof-invalid", "Proof Of Possession Invalid")
ApprovalRequired = _problem("approval-required", "Approval Required", 403)
ApprovalInvalid = _problem("approval-invalid", "Approval Invalid", 403)
OutOfScope = _problem("out-of-scope", "Purchase Outside Mandate Scope", 403)
OverCeiling = _problem("over-ceiling", "Purchase Over Mandate Ceiling", 403)
BudgetExceeded = _problem("budget-exceeded", "Mandate Budget Exceeded", 403)
CurrencyNotAllowed = _problem("currency-not-allowed", "Currency Not Allowed By Mandate", 403)

IDENTITY_PROBLEMS: dict[str, type[IdentityProblem]] = {
    cls.slug: cls
    for cls in (
        IdentityRequired, MandateRequired, MandateInvalid, MandateUntrusted, MandateExpired, MandateNotYetValid, MandateAudience,
        MandateRevoked, DelegationInvalid, DelegationTooDeep, IdentityMismatch, ProofInvalid, ApprovalRequired,
        ApprovalInvalid, OutOfScope, OverCeiling, BudgetExceeded, CurrencyNotAllowed,
    )
}


# -- mandates --------------------------------------------------------------------


MAX_INT = 2**53 - 1  # every JSON implementation reads integers up to here exactly
MAX_LIST = 64
_MANDATE_JTI = re.compile(r"mdt_[A-Za-z0-9_-]{22}")
_APPROVAL_JTI = re.compile(r"apr_[A-Za-z0-9_-]{22}")
MAX_LEEWAY = 60.0


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
    models: Any = None  # PRICE-MDT-03: checked by mpp.pricing's rules in the validator below
    max_unit_price: Any = None

    @model_validator(mode="after")
    def _pricing_restrictions(self) -> "_MandateClaims":
        from mpp.pricing import restrictions_from_claims  # pricing imports seller_core; keep identity importable alone

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
            raise ValueError("currency must be a lowercase code ([a-z][a-z0-9]{0,31})")
        return v


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
    links: tuple[Mandate, ...]

    @property
    def root(self) -> Mandate:
        return self.links[0]

    @property
    def leaf(self) -> Mandate:
        return self.links[-1]

    @property
    def principal(self) -> str:
        return self.root.iss

    @property
    def agent(self) -> str:
        return self.leaf.sub

    @property
    def dids(self) -> tuple[str, ...]:
        """The principal, then every link's subject: the leaf's subject (the agent) last."""
        return (self.principal, *(link.sub for link in self.links))

    @property
    def jtis(self) -> tuple[str, ...]:
        return tuple(link.jti for link in self.links)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(link.key for link in self.links)

    @property
    def tokens(self) -> list[str]:
        return [link.token for link in self.links]

    @property
    def restrictions(self) -> Any:
        """What pricing models and unit prices the whole chain allows (PRICE-MDT-01): an
        :class:`mpp.pricing.MandateRestrictions`, the intersection over the links."""
        from mpp.pricing import restrictions_from_claims

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


def scope_matches(pattern: str, resource: str) -> bool:
    """``*`` matches any run of characters; everything else is literal. Time is bounded by
    len(pattern) * len(resource): one remembered star, no backtracking regular expression."""
    if pattern == "*":
        return True
    p = r = 0
    star, mark = -1, 0
    while r < len(resource):
        if p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, r, p + 1
        elif p < len(pattern) and pattern[p] == resource[r]:
            p, r = p + 1, r + 1
        elif star >= 0:
            mark += 1
            p, r = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_canonical_resource(resource: str) -> bool:
    """False for paths a server may route somewhere their string does not show: ``//``, ``.``
    or ``..`` segments, a backslash, or a percent-encoded unreserved character, slash or backslash."""
    _, _, target = resource.partition(" ")
    path = target.split("?", 1)[0]
    if "//" in path or "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
        return False
    for m in _ESCAPE.finditer(path):
        ch = chr(int(m.group(1), 16))
        if ch.isascii() and (ch.isalnum() or ch in "-._~/\\"):
            return False
    return True


def pattern_within(child: str, parent: str) -> bool:
    """Every resource the child pattern admits, the parent admits too.

    With ``*`` as the only wildcard this holds exactly when the child pattern, read as a
    literal string, matches the parent pattern: the child's ``*`` can only land inside one of
    the parent's ``*``.
    """
    return scope_matches(parent, child)


def _narrowing_violation(child: Mandate, parent: Mandate) -> str | None:
    if child.prn != parent.prn:
        return "prn (principal) differs from the parent's"
    if child.currency != parent.currency:
        return "currency differs from the parent's"
    if not all(any(pattern_within(c, p) for p in parent.scope) for c in child.scope):
        return "scope is wider than the parent's"
    if not set(parent.review) <= set(child.review):
        return "review patterns drop some of the parent's"
    if child.ceiling > parent.ceiling:
        return "ceiling is above the parent's"
    if child.budget_period != parent.budget_period or child.budget_amount > parent.budget_amount:
        return "budget is wider than the parent's (same period, amount at most the parent's)"
    if parent.approval_threshold is not None and (child.approval_threshold is None or child.approval_threshold > parent.approval_threshold):
        return "approval threshold is above the parent's"
    if child.nbf < parent.nbf:  # IDENT-DLG-02: the detail names the field (nbf, then exp, in table order)
        return "nbf is before the parent's (validity window wider than the parent's)"
    if child.exp > parent.exp:
        return "exp is after the parent's (validity window wider than the parent's)"
    if "*" not in parent.aud and not set(child.aud) <= set(parent.aud):
        return "audience is wider than the parent's"
    if child.max_depth > parent.max_depth - 1:
        return "max_depth is not below the parent's"
    if parent.models is not None and (child.models is None or not set(child.models) <= set(parent.models)):
        return "models names a pricing model the parent excludes"  # PRICE-MDT-01
    if parent.max_unit_price is not None and (
            child.max_unit_price is None
            or child.max_unit_price[0] * parent.max_unit_price[1] > parent.max_unit_price[0] * child.max_unit_price[1]):
        return "max_unit_price is above the parent's"
    return None


def verify_chain(
    tokens: Sequence[str],
    *,
    trusted_principals: Collection[str],
    realm: str,
    now: datetime,
    max_depth: int = DEFAULT_MAX_DEPTH,
    leeway: float = 30.0,
) -> MandateChain:
    """Verify a chain root first, link by link, in the spec's order; raise the problem that names
    the first failure."""
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise MandateInvalid("identity.mandates must be a non-empty list of JWTs")
    if len(tokens) - 1 > min(max_depth, 15):  # counted before any signature is checked
        raise DelegationTooDeep(f"chain has {len(tokens) - 1} delegations; this seller allows {max_depth}")
    links: list[Mandate] = []
    for i, token in enumerate(tokens):
        link = _mandate_of(token)
        if i == 0:
            if link.prn != link.iss:  # a claim rule (IDENT-MDT-05): step 2, before trust (IDENT-DLG-05)
                raise MandateInvalid("root mandate's prn must be its issuer")
            if link.iss not in trusted_principals:
                raise MandateUntrusted("root mandate is signed by a principal this seller does not trust")
        else:
            parent = links[-1]
            if link.iss != parent.sub:
                raise DelegationInvalid(f"link {i} is not signed by the previous link's subject")
            if link.approvers:
                raise DelegationInvalid(f"link {i} names approvers; only the root may")
            if link.jti in {l.jti for l in links}:
                raise DelegationInvalid(f"link {i} repeats a jti of the chain")
        _check_times({"exp": link.exp, "nbf": link.nbf, "iat": link.iat}, now, leeway, MandateExpired, MandateNotYetValid)
        if link.aud != ("*",) and realm not in link.aud:
            raise MandateAudience(f"mandate {clip(link.jti)} is not for realm {realm!r}")
        if i > 0:
            if links[-1].max_depth == 0:
                raise DelegationTooDeep(f"link {i} follows a mandate that allows no further delegation")
            why = _narrowing_violation(link, links[-1])
            if why:
                raise DelegationInvalid(f"link {i} {why}")
        links.append(link)
    if len(links) - 1 > links[0].max_depth:
        raise DelegationTooDeep(f"chain has {len(links) - 1} delegations; the root allows {links[0].max_depth}")
    return MandateChain(tuple(links))


# -- proof of possession ----------------------------------------------------------


def request_hash(challenge: Challenge) -> str:
    return b64url_encode(hashlib.sha256(challenge.request.encode("ascii")).digest())


def quote_hash(challenge: Challenge) -> str:
    body = {"challengeId": challenge.id, "intent": challenge.intent, "method": challenge.method,
            "realm": challenge.realm, "request": challenge.request}
    return b64url_encode(hashlib.sha256(QUOTE_DOMAIN + canonical_json(body)).digest())


def proof_message(challenge: Challenge, request: ChargeRequest, mandate: str) -> bytes:
    """``mandate`` is the leaf mandate's jti: the proof binds the quote *and* the chain it is made under."""
    body = {"amount": request.amount, "challengeId": challenge.id, "currency": request.currency, "mandate": mandate,
            "realm": challenge.realm, "requestHash": request_hash(challenge)}
    return PROOF_DOMAIN + canonical_json(body)


def identity_member(chain_tokens: Sequence[str], key: SigningKey, challenge: Challenge, request: ChargeRequest,
                    approval: str | None = None) -> dict[str, Any]:
    """The credential's ``identity`` member: the chain and the agent's signature over this quote."""
    leaf = jwt.decode(chain_tokens[-1], options={"verify_signature": False}).get("jti", "")
    member: dict[str, Any] = {"mandates": list(chain_tokens), "proof": key.sign(proof_message(challenge, request, leaf))}
    if approval is not None:
        member["approval"] = approval
    return member


@dataclass(frozen=True)
class Approval:
    jti: str
    iss: str
    rule: str
    token: str


@dataclass(frozen=True)
class VerifiedIdentity:
    chain: MandateChain
    approval_token: str | None


def verify_identity(
    credential: Credential,
    request: ChargeRequest,
    *,
    payment_signer: str | None,
    trusted_principals: Collection[str],
    realm: str,
    now: datetime,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> VerifiedIdentity:
    """Chain, subject binding and proof of possession. Revocation and policy come after."""
    member = credential.extra_member("identity")
    if member is None:
        raise IdentityRequired("this resource requires the identity extension: a mandate chain and a proof")
    if not isinstance(member, dict):
        raise MandateInvalid("identity member must be an object")
    chain = verify_chain(member.get("mandates"), trusted_principals=trusted_principals, realm=realm, now=now, max_depth=max_depth)
    if credential.source != chain.agent:
        raise IdentityMismatch("credential source is not the mandate's subject")
    if payment_signer is not None and payment_signer != chain.agent:
        raise IdentityMismatch("the payment was signed by a key other than the mandate's subject")
    proof = member.get("proof")
    if not isinstance(proof, str):
        raise ProofInvalid("identity.proof is missing")
    try:
        verify_signature(chain.agent, proof_message(credential.challenge, request, chain.leaf.jti), proof)
    except SignatureInvalid:
        raise ProofInvalid("proof of possession does not verify for this quote") from None
    approval = member.get("approval")
    if approval is not None and not isinstance(approval, str):
        raise ApprovalInvalid("identity.approval must be a JWT")
    return VerifiedIdentity(chain, approval)


# -- revocation ----------------------------------------------------------------------

REVOCATION_TYP = "mpp-revocation+jwt"


def issue_revocation(revoker: SigningKey, mandate_token: str, *, now: datetime) -> str:
    """A signed statement that the mandate (and so every link delegated below it) is revoked."""
    mandate = _mandate_of(mandate_token)
    claims = {"iss": revoker.did, "jti": "rev_" + secrets.token_urlsafe(16), "iat": int(now.timestamp()),
              "exp": mandate.exp + 1, "mandate": mandate.jti, "mandateIssuer": mandate.iss}
    return jwt.encode(claims, revoker.private_key, algorithm="EdDSA", headers={"typ": REVOCATION_TYP, "kid": revoker.did})


def verify_revocation(revocation_token: str, mandate_token: str) -> tuple[str, str]:
    """Check a revocation against the mandate it names; return (the mandate's key, revoker DID).

    Only the mandate's issuer or its root principal may revoke it, and the revocation names the
    mandate by issuer and jti together. Expired mandates may still be revoked (no harm done).
    """
    mandate = _mandate_of(mandate_token)
    claims = _checked_claims(revocation_token, REVOCATION_TYP, MandateInvalid)
    if claims["iss"] not in (mandate.iss, mandate.prn):
        raise MandateInvalid("only the mandate's issuer or its principal may revoke it")
    if claims.get("mandate") != mandate.jti or claims.get("mandateIssuer") != mandate.iss:
        raise MandateInvalid("revocation names another mandate")
    return mandate.key, claims["iss"]


# -- approvals ---------------------------------------------------------------------


def issue_approval(approver: SigningKey, *, agent: str, challenge_id: str, quote: str, amount: str, currency: str,
                   rule: str, mandate: str, now: datetime, ttl: timedelta = timedelta(minutes=10)) -> str:
    claims = {"iss": approver.did, "sub": agent, "jti": "apr_" + secrets.token_urlsafe(16), "iat": int(now.timestamp()),
              "exp": int((now + ttl).timestamp()), "challengeId": challenge_id, "quoteHash": quote, "amount": amount,
              "currency": currency, "rule": rule, "mandate": mandate}
    return jwt.encode(claims, approver.private_key, algorithm="EdDSA", headers={"typ": APPROVAL_TYP, "kid": approver.did})


def verify_approval(token: str, *, chain: MandateChain, challenge: Challenge, request: ChargeRequest, now: datetime,
                    leeway: float = 30.0) -> Approval:
    """An approval counts only for this challenge, this quote, this amount, this agent's mandate, once."""
    claims = _checked_claims(token, APPROVAL_TYP, ApprovalInvalid)
    if claims["iss"] not in {chain.principal, *chain.root.approvers}:
        raise ApprovalInvalid("approval is not signed by the principal or one of its approvers")
    for name in ("iat", "exp"):
        if type(claims.get(name)) is not int or not 0 <= claims[name] <= MAX_INT:  # JSON true is no integer
            raise ApprovalInvalid(f"approval {name} must be an integer")
    if not isinstance(claims.get("jti"), str) or _APPROVAL_JTI.fullmatch(claims["jti"]) is None:
        raise ApprovalInvalid("approval jti must be 'apr_' and 22 base64url characters")
    if claims.get("rule") not in ("threshold", "review"):
        raise ApprovalInvalid("approval names no rule (threshold or review)")
    _check_times({"exp": claims["exp"], "nbf": 0, "iat": claims["iat"]}, now, leeway, ApprovalInvalid, ApprovalInvalid)
    expected = {"sub": chain.agent, "mandate": chain.leaf.jti, "challengeId": challenge.id,
                "quoteHash": quote_hash(challenge), "amount": request.amount, "currency": request.currency}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise ApprovalInvalid(f"approval is for another {name}")
    return Approval(claims["jti"], claims["iss"], claims["rule"], token)


# -- budgets and policy --------------------------------------------------------------


def period_key(period: str, now: datetime) -> str:
    now = now.astimezone(timezone.utc)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return now.strftime("%Y-%m")
    if period == "total":
        return "total"
    raise ValueError(f"unknown budget period {period!r}")


@dataclass(frozen=True)
class PolicyDecision:
    decision: str  # "allow" or "allow-with-approval"
    approval: Approval | None
    reason: str


def evaluate_policy(
    chain: MandateChain,
    challenge: Challenge,
    request: ChargeRequest,
    resource: str,
    *,
    spent: Mapping[str, int],
    approval: Approval | None,
) -> PolicyDecision:
    """The seller's entitlement checks in the spec's order. ``spent`` maps each link's key to
    what that link (itself and everything delegated below it) has already spent at this seller
    in its budget period: the seller's own share."""
    leaf, amount = chain.leaf, request.amount_int
    base = {"challengeId": challenge.id, "mandate": leaf.jti}
    canonical = is_canonical_resource(resource)
    if request.currency != leaf.currency:
        raise CurrencyNotAllowed(f"mandate allows {leaf.currency!r}, quote is in {request.currency!r}", rule="currency", **base)
    if not any(p == "*" or (canonical and scope_matches(p, resource)) for p in leaf.scope):
        raise OutOfScope(f"{clip(resource, RESOURCE_MAX)} is outside the mandate's scope", rule="scope", **base)
    if amount > leaf.ceiling:
        raise OverCeiling(f"amount {amount} is above the mandate's ceiling {leaf.ceiling}", rule="ceiling", **base)
    for link in chain.links:
        if spent.get(link.key, 0) + amount > link.budget_amount:
            raise BudgetExceeded(f"budget of mandate {clip(link.jti)} ({link.budget_amount} per {link.budget_period}) would be exceeded",
                                 rule="budget", **base)
    rule = None
    if leaf.approval_threshold is not None and amount > leaf.approval_threshold:
        rule = "threshold"
    elif leaf.review and (not canonical or any(scope_matches(p, resource) for p in leaf.review)):
        rule = "review"
    if rule is None:
        return PolicyDecision("allow", None, "within mandate")
    if approval is None:
        raise ApprovalRequired(
            f"rule {rule!r} needs the principal's approval for this quote",
            rule=rule, quoteHash=quote_hash(challenge), amount=request.amount, currency=request.currency, **base,
        )
    return PolicyDecision("allow-with-approval", approval, f"rule {rule!r} approved by {approval.iss}")
