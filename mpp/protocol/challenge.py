"""Stateless challenge ids: HMAC-SHA256 over the draft's fixed slots.

Any seller instance holding the secret can verify any challenge it (or a sibling) issued,
so no shared state is needed until the credential is consumed.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from mpp.protocol.wire import b64url_encode, encode_json_b64
from mpp.protocol.errors import InvalidChallenge, PaymentExpired
from mpp.protocol.models import Challenge, format_rfc3339

__all__ = ["MIN_SECRET_BYTES", "compute_challenge_id", "ChallengeIssuer", "BODY_METHODS", "resource_of"]

MIN_SECRET_BYTES = 32
"""The shortest HMAC secret, in bytes, a challenge issuer accepts (ChallengeIssuer raises ValueError below
it)."""
DEFAULT_HEADER = "Authorization"


def _check_secret(secret: bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"challenge secret must be at least {MIN_SECRET_BYTES} bytes")
    return bytes(secret)


def compute_challenge_id(
    secret: bytes,
    *,
    realm: str,
    method: str,
    intent: str,
    request: str,
    expires: str | None = None,
    digest: str | None = None,
    opaque: str | None = None,
    header: str | None = None,
) -> str:
    """base64url(HMAC-SHA256(secret, realm|method|intent|request|expires|digest|[header|]opaque)).

    ``request`` and ``opaque`` are the base64url strings exactly as on the wire. A ``header``
    naming the default field is the same challenge as no ``header`` (as the cross-SDK vectors say).
    """
    secret = _check_secret(secret)
    slots = [realm, method, intent, request, expires or "", digest or ""]
    if header and header != DEFAULT_HEADER:
        slots.append(header)
    slots.append(opaque or "")
    mac = hmac.new(secret, "|".join(slots).encode("utf-8"), hashlib.sha256).digest()
    return b64url_encode(mac)


class ChallengeIssuer:
    """Mints challenges for one realm and verifies the ones echoed back.

    ``previous_secrets`` keeps challenges issued before a secret rotation verifiable until
    they expire.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        ttl: timedelta = timedelta(minutes=5),
        previous_secrets: tuple[bytes, ...] = (),
    ) -> None:
        self._secret = _check_secret(secret)
        self._previous = tuple(_check_secret(s) for s in previous_secrets)
        self.realm = realm
        self.ttl = ttl

    def __repr__(self) -> str:  # never show the secret
        return f"ChallengeIssuer(realm={self.realm!r}, ttl={self.ttl!r})"

    def issue(
        self,
        *,
        method: str,
        intent: str,
        request: dict[str, Any],
        now: datetime,
        digest: str | None = None,
        opaque: dict[str, str] | None = None,
        description: str | None = None,
        not_after: datetime | None = None,
        encoded: str | None = None,
    ) -> Challenge:
        """``not_after``: the challenge expires then at the latest (a seat's period end, PRICE-SEAT-01).
        ``encoded``: ``request`` already as on the wire (a seller quoting a route's fixed request
        encodes it once)."""
        request_b64 = encoded or encode_json_b64(request)
        opaque_b64 = encode_json_b64(opaque) if opaque is not None else None
        expires_at = now + self.ttl
        if not_after is not None and not_after < expires_at:
            expires_at = not_after
        expires = format_rfc3339(expires_at)
        cid = compute_challenge_id(
            self._secret,
            realm=self.realm,
            method=method,
            intent=intent,
            request=request_b64,
            expires=expires,
            digest=digest,
            opaque=opaque_b64,
        )
        return Challenge(
            id=cid,
            realm=self.realm,
            method=method,
            intent=intent,
            request=request_b64,
            description=description,
            digest=digest,
            expires=expires,
            opaque=opaque_b64,
        )

    def verify(self, challenge: Challenge, *, now: datetime, check_expiry: bool = True) -> None:
        """Raise unless ``challenge`` is one this issuer minted, unaltered and unexpired.

        ``check_expiry=False`` is for the session intent only: a session's later vouchers echo
        the challenge it was opened on, which outlives that challenge's expiry (SESSION-VOUCHER-01).
        Returns nothing: a forgotten return value cannot be mistaken for success.
        """
        if challenge.realm != self.realm:
            raise InvalidChallenge("challenge was issued for another realm")
        fields = dict(
            realm=challenge.realm,
            method=challenge.method,
            intent=challenge.intent,
            request=challenge.request,
            expires=challenge.expires,
            digest=challenge.digest,
            opaque=challenge.opaque,
            header=challenge.header,
        )
        echoed = challenge.id.encode("utf-8")
        matched = False
        for secret in (self._secret, *self._previous):
            expected = compute_challenge_id(secret, **fields).encode("ascii")
            matched |= hmac.compare_digest(expected, echoed)
        if not matched:
            raise InvalidChallenge("challenge id does not match its parameters")
        if challenge.expires is None:
            raise InvalidChallenge("challenge carries no expiry")
        if check_expiry and challenge.is_expired(now):
            raise PaymentExpired("challenge has expired")


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose body a challenge binds by digest."""


def resource_of(method: str, path: str, query: str = "") -> str:
    """The string a challenge is bound to: HTTP method, path and query exactly as requested."""
    return f"{method.upper()} {path}" + (f"?{query}" if query else "")
