"""Approvals: the principal's (or an approver's) signature letting one quote through a threshold or
review rule of the mandate."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from mpp.protocol.keys import SigningKey
from mpp.protocol.models import Challenge, ChargeRequest
from mpp.identity.mandates import MAX_INT, MandateChain, _check_times, _checked_claims
from mpp.identity.problems import ApprovalInvalid
from mpp.identity.proofs import quote_hash

__all__ = [
    "APPROVAL_TYP",
    "Approval",
    "issue_approval",
    "verify_approval",
]

APPROVAL_TYP = "mpp-approval+jwt"
"""The JOSE `typ` of an approval JWT; a token of another type is refused, so a mandate cannot pass for an
approval."""
_APPROVAL_JTI = re.compile(r"apr_[A-Za-z0-9_-]{22}")


@dataclass(frozen=True)
class Approval:
    """A verified approval: its jti, its signer and the rule it lets through."""

    jti: str
    iss: str
    rule: str
    token: str


def issue_approval(approver: SigningKey, *, agent: str, challenge_id: str, quote: str, amount: str, currency: str,
                   rule: str, mandate: str, now: datetime, ttl: timedelta = timedelta(minutes=10)) -> str:
    """Sign an approval of one quote (challenge, quote hash, amount, currency) under ``rule``, for
    ``agent`` buying under the leaf mandate ``mandate``."""
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
