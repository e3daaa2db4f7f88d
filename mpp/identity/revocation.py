"""Revocation: a signed statement by a mandate's issuer or principal that the mandate, and every link
delegated below it, no longer counts."""

from __future__ import annotations

import secrets
from datetime import datetime

import jwt

from mpp.protocol.keys import SigningKey
from mpp.identity.mandates import _checked_claims, _mandate_of
from mpp.identity.problems import MandateInvalid

__all__ = [
    "REVOCATION_TYP",
    "issue_revocation",
    "verify_revocation",
]

REVOCATION_TYP = "mpp-revocation+jwt"
"""The JOSE `typ` of a revocation JWT, signed by the principal that issued the mandate it revokes."""


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
