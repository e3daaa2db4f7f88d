"""Signed receipts: a compact JWS (EdDSA) by the seller, verifiable offline with its JWKS."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping

import jwt
from jwt import PyJWKSet
from jwt.exceptions import InvalidTokenError, PyJWKError, PyJWKSetError

from mpp.protocol.wire import b64url_encode, decode_jws
from mpp.protocol.errors import ParseError, ReceiptInvalid
from mpp.protocol.keys import SigningKey

__all__ = ["sign_receipt", "verify_receipt_jws", "jwks_document"]

_ALGORITHMS = ["EdDSA"]
_REQUIRED_CLAIMS = ["iss", "sub", "iat", "jti", "challengeId", "amount", "currency", "reference"]


def jwks_document(keys: list[SigningKey]) -> dict[str, Any]:
    """The JWKS document publishing ``keys``' public halves."""
    return {"keys": [k.jwk() for k in keys]}


_HEADERS: dict[str, str] = {}  # kid -> the encoded protected header: the same for every receipt of a key


def sign_receipt(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """A receipt: ``claims`` as a compact JWS signed with ``key`` (EdDSA, ``typ`` mpp-receipt+jwt).

    Signed with ``cryptography`` directly: on every paid response, the protected header is encoded
    once per key and the claims once (pyjwt's encoder would check and re-encode both each time);
    the token is the same compact JWS any JWS library verifies (tests/test_core.py checks it with pyjwt)."""
    header = _HEADERS.get(key.kid)
    if header is None:
        header = _HEADERS[key.kid] = b64url_encode(json.dumps(
            {"alg": "EdDSA", "kid": key.kid, "typ": "mpp-receipt+jwt"}, separators=(",", ":")).encode())
    signing_input = header + "." + b64url_encode(json.dumps(dict(claims), separators=(",", ":"), allow_nan=False).encode())
    return signing_input + "." + b64url_encode(key.private_key.sign(signing_input.encode("ascii")))


def verify_receipt_jws(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    challenge_id: str | None = None,
    now: datetime | None = None,
    leeway: float = 60.0,
) -> dict[str, Any]:
    """Verify a receipt JWS against a JWKS and return its claims; raise ReceiptInvalid.

    Only EdDSA is accepted; the key is chosen by ``kid`` from the JWKS and never from the token.
    """
    try:
        keyset = PyJWKSet.from_dict(dict(jwks))
    except (PyJWKSetError, PyJWKError, KeyError, TypeError, ValueError) as exc:
        raise ReceiptInvalid(f"seller JWKS is unusable: {exc}") from exc
    try:
        header, _, _ = decode_jws(token)  # strictly, before pyjwt's lenient reading (CORE-CRED-07)
    except ParseError as exc:
        raise ReceiptInvalid(f"receipt is not a JWS: {exc}") from None
    if header.get("alg") not in _ALGORITHMS:
        raise ReceiptInvalid(f"receipt algorithm {header.get('alg')!r} is not EdDSA")
    kid = header.get("kid")
    candidates = [k for k in keyset.keys if k.key_id == kid]
    if not candidates:
        raise ReceiptInvalid("receipt key id is not in the seller's JWKS")
    try:
        claims = jwt.decode(
            token,
            candidates[0].key,
            algorithms=_ALGORITHMS,
            issuer=issuer,
            leeway=leeway,
            options={"require": _REQUIRED_CLAIMS, "verify_iat": now is None},
        )
    except InvalidTokenError as exc:
        raise ReceiptInvalid(f"receipt signature or claims invalid: {exc}") from exc
    if challenge_id is not None and claims.get("challengeId") != challenge_id:
        raise ReceiptInvalid("receipt names another challenge")
    return claims


