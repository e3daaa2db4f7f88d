"""Grants (PRICE-GRANT-01, -02): JWTs the seller signs with its receipt key, letting one agent reach the
follow-ups of a task or the routes of a seat without paying again."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Mapping

import jwt
from jwt import PyJWKSet
from jwt.exceptions import InvalidTokenError, PyJWKError, PyJWKSetError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpp.protocol.wire import decode_jws
from mpp.protocol.errors import RESOURCE_MAX, ParseError, clip
from mpp.protocol.keys import SigningKey, public_key_from_did
from mpp.pricing.periods import _epoch
from mpp.pricing.problems import GrantAgent, GrantAudience, GrantExpired, GrantInvalid, GrantRoute, GrantTask
from mpp.pricing.routes import _route_matches, _route_string
from mpp.pricing.seats import SeatOffer, subscription_id
from mpp.pricing.tasks import _TASK_ID, TaskOffer

__all__ = [
    "GRANT_HEADER",
    "GRANT_TYP",
    "Grant",
    "task_grant_claims",
    "seat_grant_claims",
    "issue_grant",
    "verify_grant",
]

GRANT_HEADER = "Payment-Grant"
"""The header carrying a grant: in the seller's response to a paid task or seat, and in the buyer's later
requests it covers."""
GRANT_TYP = "mpp-grant+jwt"
"""The JOSE `typ` of a grant JWT."""
_GRANT_JTI = re.compile(r"grt_[A-Za-z0-9_-]{22}")
_ALGORITHMS = ["EdDSA"]

# The last second datetime can hold (9999-12-31T23:59:59Z): a later iat or exp, even correctly
# signed (a seller's own key, as its buyer sees it), is no time and must not overflow.
_MAX_EPOCH = 253402300799


class _GrantClaims(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    iss: str = Field(min_length=1)
    aud: str = Field(min_length=1)
    sub: str
    jti: str
    iat: int = Field(ge=0, le=_MAX_EPOCH)
    exp: int = Field(ge=0, le=_MAX_EPOCH)
    kind: Literal["task", "seat"]
    routes: list[str] = Field(min_length=1, max_length=64)
    priceList: str
    challengeId: str = Field(min_length=1)
    task: str | None = None
    subscriptionId: str | None = None
    plan: str | None = None
    period: int | None = None

    @field_validator("sub")
    @classmethod
    def _sub(cls, v: str) -> str:
        public_key_from_did(v)
        return v

    @field_validator("jti")
    @classmethod
    def _jti(cls, v: str) -> str:
        if _GRANT_JTI.fullmatch(v) is None:
            raise ValueError("jti must be grt_ + 22 base64url characters")
        return v

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        for r in v:
            _route_string(r)
        return v

    @model_validator(mode="after")
    def _kind(self) -> "_GrantClaims":
        if self.exp <= self.iat:
            raise ValueError("exp must be after iat")
        if self.kind == "task" and (self.task is None or _TASK_ID.fullmatch(self.task) is None):
            raise ValueError("a task grant names its task")
        if self.kind == "seat" and (self.subscriptionId is None or self.plan is None or self.period is None):
            raise ValueError("a seat grant names its subscriptionId, plan and period")
        return self


@dataclass(frozen=True)
class Grant:
    """A verified grant."""

    jti: str
    kind: str
    agent: str
    realm: str
    issued_at: datetime
    expires: datetime
    routes: tuple[str, ...]
    price_list: str
    challenge_id: str
    task: str | None
    subscription_id: str | None
    plan: str | None
    period: int | None
    token: str = field(repr=False)

    def covers(self, method: str, path: str) -> bool:
        """Does one of the grant's route strings match this request (the method compared in uppercase, the
        path against the route's template)? A request it does not cover is refused ``grant-route``
        (PRICE-GRANT-02); a buyer presents the grant only where it covers (PRICE-GRANT-05)."""
        return any(_route_matches(r, method, path) is not None for r in self.routes)


def task_grant_claims(*, realm: str, agent: str, task_id: str, offer: TaskOffer, challenge_id: str,
                      now: datetime) -> dict[str, Any]:
    """The claims of a task grant (PRICE-TASK-02): the offer's follow-ups for this task, for grant_ttl."""
    iat = _epoch(now)
    return {"iss": realm, "aud": realm, "sub": agent, "jti": "grt_" + secrets.token_urlsafe(16), "iat": iat,
            "exp": iat + offer.grant_ttl, "kind": "task", "routes": offer.grant_routes(task_id),
            "priceList": offer.price_list, "challengeId": challenge_id, "task": task_id}


def seat_grant_claims(*, realm: str, agent: str, offer: SeatOffer, period: int, challenge_id: str,
                      now: datetime) -> dict[str, Any]:
    """The claims of a seat grant (PRICE-SEAT-05): the covered routes until the period ends."""
    _, end = offer.period_bounds(period)
    return {"iss": realm, "aud": realm, "sub": agent, "jti": "grt_" + secrets.token_urlsafe(16), "iat": _epoch(now),
            "exp": _epoch(end), "kind": "seat", "routes": list(offer.covers), "priceList": offer.price_list,
            "challengeId": challenge_id, "subscriptionId": subscription_id(realm, offer.plan, agent),
            "plan": offer.plan, "period": period}


def issue_grant(receipt_key: SigningKey, claims: Mapping[str, Any]) -> str:
    """Sign a grant with the seller's receipt key (PRICE-GRANT-01); malformed claims are refused."""
    try:
        _GrantClaims.model_validate(dict(claims))
    except ValidationError as exc:
        raise ValueError(f"grant claims are not valid: {exc.errors()[0]['msg']}") from None
    return jwt.encode(dict(claims), receipt_key.private_key, algorithm="EdDSA",
                      headers={"kid": receipt_key.kid, "typ": GRANT_TYP})


def _verification_keys(keys: Mapping[str, Any] | Iterable[SigningKey]) -> dict[str, Any]:
    """kid -> public key, from a JWKS document or from the seller's own receipt keys."""
    if isinstance(keys, Mapping):
        try:
            keyset = PyJWKSet.from_dict(dict(keys))
        except (PyJWKSetError, PyJWKError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"JWKS is unusable: {exc}") from exc
        return {k.key_id: k.key for k in keyset.keys if k.key_id}
    return {k.kid: k.public_key for k in keys}


def verify_grant(
    token: str,
    keys: Mapping[str, Any] | Iterable[SigningKey],
    *,
    realm: str,
    agent: str,
    now: datetime,
    task_id: str | None = None,
    route: tuple[str, str] | None = None,
) -> Grant:
    """Verify a presented grant in the order of PRICE-GRANT-02 and return it; raise the problem.

    ``agent`` is the DID the request's proof names; ``task_id`` the task in the follow-up's path;
    ``route`` the request's (method, path).
    """
    by_kid = _verification_keys(keys)
    try:
        header, _, _ = decode_jws(token)  # strictly, before pyjwt's lenient reading (CORE-CRED-07)
    except ParseError:
        raise GrantInvalid("grant is not a JWS") from None
    if header.get("alg") not in _ALGORITHMS or header.get("typ") != GRANT_TYP:
        raise GrantInvalid("grant must be an EdDSA JWS of type mpp-grant+jwt")
    kid = header.get("kid")
    key = by_kid.get(kid) if isinstance(kid, str) else None  # a list or object here is no key id (nor hashable)
    if key is None:
        raise GrantInvalid("grant is not signed by a key of this seller")
    try:
        raw = jwt.decode(token, key, algorithms=_ALGORITHMS,
                         options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                  "verify_aud": False, "verify_iss": False})
        claims = _GrantClaims.model_validate(raw)
    except (InvalidTokenError, ValidationError, ParseError):
        raise GrantInvalid("grant signature or claims invalid") from None
    if claims.iss != realm or claims.aud != realm:
        raise GrantAudience("grant was issued for another seller")
    if _epoch(now) >= claims.exp:
        raise GrantExpired("grant has expired", exp=claims.exp)
    if claims.sub != agent:
        raise GrantAgent("grant belongs to another agent")
    if task_id is not None and (claims.kind != "task" or claims.task != task_id):
        raise GrantTask("grant is not for this task", task=clip(task_id, RESOURCE_MAX))  # the path's: CORE-ERR-12
    grant = Grant(claims.jti, claims.kind, claims.sub, claims.aud,
                  datetime.fromtimestamp(claims.iat, timezone.utc), datetime.fromtimestamp(claims.exp, timezone.utc),
                  tuple(claims.routes), claims.priceList, claims.challengeId, claims.task, claims.subscriptionId,
                  claims.plan, claims.period, token)
    if route is not None and not grant.covers(*route):
        raise GrantRoute(f"{clip(f'{route[0].upper()} {route[1]}', RESOURCE_MAX)} is not covered by this grant")
    return grant
