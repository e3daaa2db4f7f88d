"""The protocol's messages as pydantic models: challenge, credential, receipt, charge request."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mpp.protocol.wire import decode_json_b64, encode_json_b64
from mpp.protocol.errors import ParseError, clip

__all__ = ["Challenge", "Credential", "PaymentReceipt", "ChargeRequest", "parse_rfc3339", "format_rfc3339", "MAX_AMOUNT", "CURRENCY",
           "PRICE_CURRENCY"]

MAX_AMOUNT = 2**63 - 1
"""What every ledger backend can hold in a signed 64-bit integer."""
CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}")
"""A lowercase currency code."""
PRICE_CURRENCY = re.compile(r"[a-z][a-z0-9]{0,31}|0x[0-9a-fA-F]{40}")
"""What a price's currency may be (use ``fullmatch``): a currency code, or a token's address (``0x`` and 40
hex digits, any case) for a method that pays in tokens (``evm``)."""

_ECHO_FIELDS = ("id", "realm", "method", "intent", "request", "description", "digest", "expires", "header", "opaque")


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time with an explicit offset, as an aware datetime."""
    if not isinstance(value, str) or len(value) < 20 or value[10] not in "Tt":
        raise ParseError(f"not an RFC 3339 date-time: {clip(value)!r}")
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise ParseError(f"not an RFC 3339 date-time: {clip(value)!r}") from exc
    if dt.tzinfo is None:
        raise ParseError(f"RFC 3339 date-time without offset: {clip(value)!r}")
    return dt


def format_rfc3339(when: datetime) -> str:
    """``when`` as an RFC 3339 date-time in UTC, to the second: ``YYYY-MM-DDTHH:MM:SSZ``."""
    u = when.astimezone(timezone.utc)  # to the second, in UTC (an f-string: strftime costs more, on every request)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


class Challenge(BaseModel):
    """One ``WWW-Authenticate: Payment`` challenge, as on the wire (``request`` stays encoded,
    because the challenge id binds the encoded form)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    realm: str
    method: str
    intent: str
    request: str
    description: str | None = None
    digest: str | None = None
    expires: str | None = None
    header: str | None = None
    opaque: str | None = None

    @cached_property
    def request_json(self) -> dict[str, Any]:
        return decode_json_b64(self.request, "request")

    @cached_property
    def opaque_json(self) -> dict[str, Any] | None:
        return None if self.opaque is None else decode_json_b64(self.opaque, "opaque")

    @cached_property
    def expires_at(self) -> datetime | None:
        return None if self.expires is None else parse_rfc3339(self.expires)

    def is_expired(self, now: datetime) -> bool:
        """True when the challenge has ``expires`` and ``now`` is at or after it (CORE-BIND-06); without
        ``expires`` it never expires here (the seller refuses such a challenge elsewhere). ParseError for an
        ``expires`` that is not RFC 3339."""
        expires = self.expires_at
        return expires is not None and now >= expires

    def echo(self) -> dict[str, str]:
        """The parameters a credential echoes back, in wire order."""
        return {name: getattr(self, name) for name in _ECHO_FIELDS if getattr(self, name) is not None}


class Credential(BaseModel):
    """The decoded ``Authorization: Payment`` credential."""

    model_config = ConfigDict(frozen=True)

    challenge: Challenge
    payload: dict[str, Any]
    source: str | None = None
    # Members this version of the scheme does not define (extensions such as ``identity``),
    # kept so that extensions can read them; receivers that do not know them ignore them.
    extensions: dict[str, Any] = {}

    def extra_member(self, name: str) -> Any:
        """A top-level member the scheme does not define (``identity``, ...), as sent; None when absent."""
        return self.extensions.get(name)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Credential":
        """A credential from its decoded JSON object, checked as CORE-CRED-02 requires: ``challenge`` with
        non-empty string ``id``, ``realm``, ``method``, ``intent`` and ``request`` and string optional
        members, ``request`` (and ``opaque``) decodable, ``payload`` an object, ``source`` a string if
        present; other members are kept in ``extensions``. Raises ParseError."""
        challenge = doc.get("challenge")
        if not isinstance(challenge, dict):
            raise ParseError("credential has no challenge object")
        for name in ("id", "realm", "method", "intent", "request"):
            if not isinstance(challenge.get(name), str) or not challenge[name]:
                raise ParseError(f"credential challenge lacks {name!r}")
        echoed = {}
        for name in _ECHO_FIELDS:
            if name in challenge:
                if not isinstance(challenge[name], str):
                    raise ParseError(f"credential challenge field {name!r} is not a string")
                echoed[name] = challenge[name]
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise ParseError("credential has no payload object")
        source = doc.get("source")
        if source is not None and not isinstance(source, str):
            raise ParseError("credential source is not a string")
        extensions = {k: v for k, v in doc.items() if k not in ("challenge", "payload", "source")}
        # every field checked above, as the models would: built without validating twice (on every paid request)
        built = cls.model_construct(challenge=Challenge.model_construct(**echoed), payload=payload, source=source,
                                    extensions=extensions)
        built.challenge.request_json  # noqa: B018 - refuse an undecodable request now
        if built.challenge.opaque is not None:
            built.challenge.opaque_json  # noqa: B018
        return built

    def to_json(self) -> dict[str, Any]:
        """The JSON object a credential token encodes: the echoed challenge in wire order, ``payload``,
        ``source`` when set, and the extension members."""
        doc: dict[str, Any] = {"challenge": self.challenge.echo(), "payload": self.payload}
        if self.source is not None:
            doc["source"] = self.source
        doc.update(self.extensions)
        return doc


class PaymentReceipt(BaseModel):
    """The decoded ``Payment-Receipt`` header: the draft's four fields plus ours."""

    model_config = ConfigDict(frozen=True, extra="allow")

    status: str
    method: str
    timestamp: str
    reference: str
    challengeId: str | None = None
    receipt: str | None = None  # compact JWS signed by the seller

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "PaymentReceipt":
        """A receipt from its decoded JSON object (CORE-RCPT-04): ``status`` ``success``, non-empty string
        ``method``, ``timestamp`` (RFC 3339 with offset) and ``reference``; unknown members kept. Raises
        ParseError."""
        for name in ("status", "method", "timestamp", "reference"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise ParseError(f"receipt lacks {name!r}")
        if doc["status"] != "success":
            raise ParseError("receipt status is not 'success'")
        parse_rfc3339(doc["timestamp"])
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise ParseError(f"receipt fields have the wrong types: {exc.error_count()} errors") from exc

    def to_json(self) -> dict[str, Any]:
        """The receipt as its JSON object; ``challengeId`` and ``receipt`` are left out when unset."""
        doc = self.model_dump()
        for name in ("challengeId", "receipt"):  # ours are absent when unset; members we do not know keep their nulls
            if doc[name] is None:
                del doc[name]
        return doc


class ChargeRequest(BaseModel):
    """The decoded ``request`` of a ``charge`` challenge: amount in base units as a string."""

    model_config = ConfigDict(frozen=True, extra="allow")

    amount: str
    currency: str
    recipient: str
    description: str | None = None
    methodDetails: dict[str, Any] | None = None

    @field_validator("amount")
    @classmethod
    def _integer_amount(cls, value: str) -> str:
        if not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0"):
            raise ValueError("amount must be a non-negative integer in base units, as a decimal string")
        return value

    @property
    def amount_int(self) -> int:
        """``amount`` as an integer of base units."""
        return int(self.amount)

    @classmethod
    def from_challenge(cls, challenge: Challenge) -> "ChargeRequest":
        """The challenge's decoded ``request`` as a charge request; ParseError when it does not decode or is
        not one (a member missing, an amount that is not a decimal integer string)."""
        try:
            return cls.model_validate(challenge.request_json)
        except ValidationError as exc:
            raise ParseError("request is not a valid charge request") from exc

    def encode(self) -> str:
        """The request as a challenge carries it: RFC 8785 JSON, base64url without padding, unset members
        left out."""
        return encode_json_b64(self.model_dump(exclude_none=True))
