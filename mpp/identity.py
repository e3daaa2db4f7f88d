"""The identity extension, sans-I/O: mandates and their delegation chains, proof of possession,
approvals, budget periods and the seller's entitlement checks.

A mandate is a JWT (EdDSA only) a principal signs for one agent; an agent may delegate a
narrower one to a sub-agent. The credential carries the chain, root first, and the agent's
signature over the exact quote. Nothing here touches a network, a clock or a database: the
caller passes ``now``, the trusted principals, and what it has already spent.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Collection, Mapping, Sequence

import jwt
from jwt.exceptions import ExpiredSignatureError, ImmatureSignatureError, InvalidTokenError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._wire import b64url_encode, canonical_json
from .errors import EXTENSION_PROBLEM_BASE, ParseError, PaymentProblem
from .keys import SignatureInvalid, SigningKey, public_key_from_did, verify_signature
from .models import Challenge, ChargeRequest, Credential

__all__ = [
    "MANDATE_TYP",
    "APPROVAL_TYP",
    "PERIODS",
    "DEFAULT_MAX_DEPTH",
    "IdentityProblem",
    "IdentityRequired",
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
_PATTERN = re.compile(r"(\*|[A-Z*]+ /\S*)")


# -- problems ------------------------------------------------------------------


class IdentityProblem(PaymentProblem):
    """Problems of the identity extension: our own types, under ``urn:mpp:problem:``."""

    @property
    def type(self) -> str:
        return EXTENSION_PROBLEM_BASE + self.slug


def _problem(slug: str, title: str, status: int = 402) -> type[IdentityProblem]:
    return type(
        "".join(part.capitalize() for part in slug.split("-")),
        (IdentityProblem,),
        {"slug": slug, "title": title, "status": status, "__module__": __name__},
    )


IdentityRequired = _problem("identity-required", "Identity Required")
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
        IdentityRequired, MandateInvalid, MandateUntrusted, MandateExpired, MandateNotYetValid, MandateAudience,
        MandateRevoked, DelegationInvalid, DelegationTooDeep, IdentityMismatch, ProofInvalid, ApprovalRequired,
        ApprovalInvalid, OutOfScope, OverCeiling, BudgetExceeded, CurrencyNotAllowed,
    )
}


# -- mandates --------------------------------------------------------------------


class _Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    amount: int = Field(ge=0, le=2**63 - 1)
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
    aud: list[str] = Field(min_length=1)
    jti: str = Field(min_length=8, max_length=128)
    iat: int
    nbf: int
    exp: int
    scope: list[str] = Field(min_length=1)
    review: list[str] = []
    currency: str
    ceiling: int = Field(ge=0, le=2**63 - 1)
    budget: _Budget
    approval_threshold: int | None = Field(default=None, ge=0)
    max_depth: int = Field(ge=0, le=16)
    approvers: list[str] = []

    @field_validator("scope", "review")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if _PATTERN.fullmatch(p) is None:
                raise ValueError(f"scope pattern {p!r} is not '*' or 'METHOD /path-glob'")
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

    @classmethod
    def _from(cls, token: str, c: _MandateClaims) -> "Mandate":
        return cls(token, c.iss, c.sub, c.prn, tuple(c.aud), c.jti, c.nbf, c.exp, tuple(c.scope), tuple(c.review),
                   c.currency, c.ceiling, c.budget.amount, c.budget.period, c.approval_threshold, c.max_depth,
                   tuple(c.approvers))


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
    def jtis(self) -> tuple[str, ...]:
        return tuple(link.jti for link in self.links)

    @property
    def tokens(self) -> list[str]:
        return [link.token for link in self.links]


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
    try:
        _MandateClaims.model_validate(claims)
    except ValidationError as exc:
        raise ValueError(f"invalid mandate: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return jwt.encode(claims, issuer.private_key, algorithm="EdDSA", headers={"typ": MANDATE_TYP, "kid": issuer.did})


def _header(token: str, typ: str, problem: type[IdentityProblem]) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > 8192:
        raise problem("not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except InvalidTokenError as exc:
        raise problem(f"not a JWS: {exc}") from None
    if header.get("alg") not in _ALGORITHMS:
        raise problem(f"algorithm {header.get('alg')!r} is refused; only EdDSA is accepted")
    if header.get("typ") != typ:
        raise problem(f"typ must be {typ!r}")
    return header


def _decode(token: str, issuer: str, *, now: datetime | None, leeway: float, problem: type[IdentityProblem],
            expired: type[IdentityProblem], immature: type[IdentityProblem],
            require: Sequence[str] = ("iss", "sub", "jti", "iat", "exp")) -> dict[str, Any]:
    try:
        key = public_key_from_did(issuer)
    except ParseError:
        raise problem("issuer is not an Ed25519 did:key") from None
    options: dict[str, Any] = {"verify_aud": False, "require": list(require)}
    if now is not None:  # pyjwt reads the wall clock; with an injected clock we check times ourselves
        options |= {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    try:
        claims = jwt.decode(token, key, algorithms=_ALGORITHMS, leeway=leeway, options=options)
    except ExpiredSignatureError:
        raise expired("token has expired") from None
    except ImmatureSignatureError:
        raise immature("token is not yet valid") from None
    except InvalidTokenError as exc:
        raise problem(f"signature or claims invalid: {type(exc).__name__}") from None
    if now is not None:
        t = now.timestamp()
        if isinstance(claims.get("exp"), int) and t > claims["exp"] + leeway:
            raise expired("token has expired")
        if isinstance(claims.get("nbf"), int) and t + leeway < claims["nbf"]:
            raise immature("token is not yet valid")
    return claims


def decode_mandate(token: str, *, now: datetime | None = None, leeway: float = 30.0) -> Mandate:
    """Check one mandate's signature (by its own ``iss``), algorithm, claims and validity window."""
    _header(token, MANDATE_TYP, MandateInvalid)
    try:
        unverified_iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except InvalidTokenError:
        raise MandateInvalid("mandate is not a JWT") from None
    if not isinstance(unverified_iss, str):
        raise MandateInvalid("mandate has no issuer")
    claims = _decode(token, unverified_iss, now=now, leeway=leeway, problem=MandateInvalid,
                     expired=MandateExpired, immature=MandateNotYetValid)
    try:
        parsed = _MandateClaims.model_validate(claims)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MandateInvalid(f"mandate claim {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if parsed.nbf > parsed.exp:
        raise MandateInvalid("mandate validity window is empty")
    return Mandate._from(token, parsed)


def scope_matches(pattern: str, resource: str) -> bool:
    """``*`` matches any run of characters; everything else is literal."""
    if pattern == "*":
        return True
    regex = "".join(".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, resource, flags=re.DOTALL) is not None


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
    if child.nbf < parent.nbf or child.exp > parent.exp:
        return "validity window is wider than the parent's"
    if "*" not in parent.aud and not set(child.aud) <= set(parent.aud):
        return "audience is wider than the parent's"
    if child.max_depth > parent.max_depth - 1:
        return "max_depth is not below the parent's"
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
    """Verify a chain root first, link by link. Raise the IdentityProblem that names the failure."""
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise MandateInvalid("identity.mandates must be a non-empty list of JWTs")
    if len(tokens) - 1 > max_depth:
        raise DelegationTooDeep(f"chain has {len(tokens) - 1} delegations; this seller allows {max_depth}")
    links: list[Mandate] = []
    for i, token in enumerate(tokens):
        link = decode_mandate(token, now=now, leeway=leeway)
        if i == 0:
            if link.iss not in trusted_principals:
                raise MandateUntrusted("root mandate is signed by a principal this seller does not trust")
            if link.prn != link.iss:
                raise MandateInvalid("root mandate's prn must be its issuer")
        else:
            parent = links[-1]
            if link.iss != parent.sub:
                raise DelegationInvalid(f"link {i} is not signed by the previous link's subject")
            if parent.max_depth < 1:  # otherwise narrowing (max_depth must drop) would name it delegation-invalid
                raise DelegationTooDeep(f"link {i} delegates below a mandate that allows no further delegation "
                                        f"(the root allows {links[0].max_depth})")
            why = _narrowing_violation(link, parent)
            if why:
                raise DelegationInvalid(f"link {i} {why}")
        if "*" not in link.aud and realm not in link.aud:
            raise MandateAudience(f"mandate {link.jti} is not for realm {realm!r}")
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


def proof_message(challenge: Challenge, request: ChargeRequest) -> bytes:
    body = {"amount": request.amount, "challengeId": challenge.id, "currency": request.currency,
            "realm": challenge.realm, "requestHash": request_hash(challenge)}
    return PROOF_DOMAIN + canonical_json(body)


def identity_member(chain_tokens: Sequence[str], key: SigningKey, challenge: Challenge, request: ChargeRequest,
                    approval: str | None = None) -> dict[str, Any]:
    """The credential's ``identity`` member: the chain and the agent's signature over this quote."""
    member: dict[str, Any] = {"mandates": list(chain_tokens), "proof": key.sign(proof_message(challenge, request))}
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
        verify_signature(chain.agent, proof_message(credential.challenge, request), proof)
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
    mandate = decode_mandate(mandate_token, now=now, leeway=10**12)
    claims = {"iss": revoker.did, "jti": "rev_" + secrets.token_urlsafe(16), "iat": int(now.timestamp()),
              "exp": mandate.exp + 1, "mandate": mandate.jti}
    return jwt.encode(claims, revoker.private_key, algorithm="EdDSA", headers={"typ": REVOCATION_TYP, "kid": revoker.did})


def verify_revocation(revocation_token: str, mandate_token: str) -> tuple[str, str]:
    """Check a revocation against the mandate it names; return (mandate jti, revoker DID).

    Only the mandate's issuer or its root principal may revoke it. Expired mandates may still
    be revoked (there is no harm), so validity windows are not checked here.
    """
    mandate = decode_mandate(mandate_token, now=datetime.fromtimestamp(0, timezone.utc), leeway=10**12)
    _header(revocation_token, REVOCATION_TYP, MandateInvalid)
    try:
        iss = jwt.decode(revocation_token, options={"verify_signature": False}).get("iss")
    except InvalidTokenError:
        raise MandateInvalid("revocation is not a JWT") from None
    if iss not in (mandate.iss, mandate.prn):
        raise MandateInvalid("only the mandate's issuer or its principal may revoke it")
    claims = _decode(revocation_token, iss, now=datetime.fromtimestamp(0, timezone.utc), leeway=10**12,
                     problem=MandateInvalid, expired=MandateInvalid, immature=MandateInvalid,
                     require=("iss", "jti", "iat", "exp", "mandate"))  # a revocation has no subject
    if claims.get("mandate") != mandate.jti:
        raise MandateInvalid("revocation names another mandate")
    return mandate.jti, iss


# -- approvals ---------------------------------------------------------------------


def issue_approval(approver: SigningKey, *, agent: str, challenge_id: str, quote: str, amount: str, currency: str,
                   rule: str, mandate: str, now: datetime, ttl: timedelta = timedelta(minutes=10)) -> str:
    claims = {"iss": approver.did, "sub": agent, "jti": "apr_" + secrets.token_urlsafe(16), "iat": int(now.timestamp()),
              "exp": int((now + ttl).timestamp()), "challengeId": challenge_id, "quoteHash": quote, "amount": amount,
              "currency": currency, "rule": rule, "mandate": mandate}
    return jwt.encode(claims, approver.private_key, algorithm="EdDSA", headers={"typ": APPROVAL_TYP, "kid": approver.did})


def verify_approval(token: str, *, chain: MandateChain, challenge: Challenge, request: ChargeRequest, now: datetime,
                    leeway: float = 30.0) -> Approval:
    """An approval counts only for this challenge, this quote, this amount, this agent, once."""
    _header(token, APPROVAL_TYP, ApprovalInvalid)
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except InvalidTokenError:
        raise ApprovalInvalid("approval is not a JWT") from None
    allowed = {chain.principal, *chain.root.approvers}
    if iss not in allowed:
        raise ApprovalInvalid("approval is not signed by the principal or one of its approvers")
    claims = _decode(token, iss, now=now, leeway=leeway, problem=ApprovalInvalid, expired=ApprovalInvalid, immature=ApprovalInvalid)
    expected = {"sub": chain.agent, "challengeId": challenge.id, "quoteHash": quote_hash(challenge),
                "amount": request.amount, "currency": request.currency}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise ApprovalInvalid(f"approval is for another {name}")
    if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("rule"), str):
        raise ApprovalInvalid("approval lacks jti or rule")
    return Approval(claims["jti"], iss, claims["rule"], token)


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
    """The seller's entitlement checks in the spec's order. ``spent`` maps each link's jti to
    what that link (itself and everything delegated below it) has already spent at this seller
    in its budget period: the seller's own share."""
    leaf, amount = chain.leaf, request.amount_int
    base = {"challengeId": challenge.id, "mandate": leaf.jti}
    if request.currency != leaf.currency:
        raise CurrencyNotAllowed(f"mandate allows {leaf.currency!r}, quote is in {request.currency!r}", rule="currency", **base)
    if not any(scope_matches(p, resource) for p in leaf.scope):
        raise OutOfScope(f"{resource} is outside the mandate's scope", rule="scope", **base)
    if amount > leaf.ceiling:
        raise OverCeiling(f"amount {amount} is above the mandate's ceiling {leaf.ceiling}", rule="ceiling", **base)
    for link in chain.links:
        if spent.get(link.jti, 0) + amount > link.budget_amount:
            raise BudgetExceeded(f"budget of mandate {link.jti} ({link.budget_amount} per {link.budget_period}) would be exceeded",
                                 rule="budget", **base)
    rule = None
    if leaf.approval_threshold is not None and amount > leaf.approval_threshold:
        rule = "threshold"
    elif any(scope_matches(p, resource) for p in leaf.review):
        rule = "review"
    if rule is None:
        return PolicyDecision("allow", None, "within mandate")
    if approval is None:
        raise ApprovalRequired(
            f"rule {rule!r} needs the principal's approval for this quote",
            rule=rule, quoteHash=quote_hash(challenge), amount=request.amount, currency=request.currency, **base,
        )
    return PolicyDecision("allow-with-approval", approval, f"rule {rule!r} approved by {approval.iss}")
