"""Parse and format the three header fields of the Payment scheme.

- ``WWW-Authenticate: Payment id=..., realm=..., ...`` (one or more challenges, possibly mixed
  with other schemes, in one field value or several);
- ``Authorization: Payment <base64url JSON>`` (the credential);
- ``Payment-Receipt: <base64url JSON>``;
- ``Accept-Payment: method/intent;q=...`` (the client's preferences);
- ``Idempotency-Key`` (CORE-ONCE-06), which the seller checks before it keeps a response.

The auth-param scanner is a single left-to-right pass with no backtracking, so hostile
input (long runs of backslashes, unclosed quotes) costs linear time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from mpp.protocol.wire import b64url_encode, decode_json_b64, dumps_wire
from mpp.protocol.errors import DETAIL_MAX, BadRequest, FormatError, ParseError, clip
from mpp.protocol.models import Challenge, Credential, PaymentReceipt

__all__ = [
    "parse_challenges",
    "format_challenge",
    "parse_credential",
    "format_credential",
    "parse_receipt",
    "format_receipt",
    "parse_accept_payment",
    "format_accept_payment",
    "AcceptRange",
    "idempotency_key",
    "IDEMPOTENCY_KEY_MAX",
]

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t"
_CHALLENGE_PARAMS = ("id", "realm", "method", "intent", "request", "description", "digest", "expires", "header", "opaque")
_REQUIRED = ("id", "realm", "method", "intent", "request")
_METHOD = re.compile(r"[a-z]+(?::[a-z0-9-]+)?")
_INTENT = re.compile(r"[A-Za-z0-9-]+")
_CREDENTIAL = re.compile(r"([A-Za-z0-9!#$%&'*+.^_`|~-]+)[ ]+([A-Za-z0-9_-]+)[ \t]*")


@dataclass
class _RawChallenge:
    scheme: str
    params: list[tuple[str, str | None]]


def _skip(s: str, pos: int, chars: str) -> int:
    n = len(s)
    while pos < n and s[pos] in chars:
        pos += 1
    return pos


def _read_token(s: str, pos: int) -> tuple[str, int]:
    start = pos
    n = len(s)
    while pos < n and s[pos] in _TCHAR:
        pos += 1
    return s[start:pos], pos


def _read_quoted(s: str, pos: int) -> tuple[str | None, int]:
    """Read a quoted-string starting at the opening quote. ``None`` if it never closes."""
    out: list[str] = []
    pos += 1
    n = len(s)
    while pos < n:
        c = s[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c in "\r\n":
            raise ParseError("CR or LF inside a quoted-string")
        if c == "\\":
            pos += 1
            if pos >= n:
                break
            c = s[pos]
            if c in "\r\n":
                raise ParseError("CR or LF inside a quoted-string")
        out.append(c)
        pos += 1
    return None, n


def _skip_to_comma(s: str, pos: int) -> int:
    """Skip whatever stands between a parameter's value and the next separator.

    Stray text after a value (an unescaped quote inside a description, say) is dropped,
    which is how the cross-SDK vectors expect a parser to recover.
    """
    n = len(s)
    while pos < n and s[pos] != ",":
        if s[pos] == '"':
            _, pos = _read_quoted(s, pos)
        else:
            if s[pos] in "\r\n":
                raise ParseError("CR or LF in a header value")
            pos += 1
    return pos


def _token68_ends_at(s: str, pos: int) -> bool:
    """At ``pos`` stands '='; true if this is token68 padding, not an auth-param."""
    pos = _skip(s, pos, "=")
    pos = _skip(s, pos, _WS)
    return pos >= len(s) or s[pos] == ","


def _scan(s: str) -> list[_RawChallenge]:
    challenges: list[_RawChallenge] = []
    current: _RawChallenge | None = None
    pos, n = 0, len(s)
    while True:
        pos = _skip(s, pos, _WS + ",")
        if pos >= n:
            return challenges
        if s[pos] in "\r\n":
            raise ParseError("CR or LF in a header value")
        token, after = _read_token(s, pos)
        if not token:
            pos = _skip_to_comma(s, pos + 1)
            continue
        p = _skip(s, after, _WS)
        if p < n and s[p] == "=":
            if _token68_ends_at(s, p):
                pos = p  # token68 credentials of another scheme: nothing for us
                pos = _skip_to_comma(s, pos)
                continue
            p = _skip(s, p + 1, _WS)
            value: str | None
            if p < n and s[p] == '"':
                value, p = _read_quoted(s, p)
            else:
                value, p = _read_token(s, p)
            if current is not None:
                current.params.append((token.lower(), value))
            pos = _skip_to_comma(s, p)
        else:
            current = _RawChallenge(scheme=token, params=[])
            challenges.append(current)
            pos = after


def _build_challenge(raw: _RawChallenge) -> Challenge:
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in raw.params:
        if name in seen:
            raise ParseError(f"duplicate parameter {clip(name)!r}")
        seen.add(name)
        if value is None:
            if name in _CHALLENGE_PARAMS:
                raise ParseError(f"unterminated quoted-string in {name!r}")
            continue  # a broken unknown parameter is ignored like any unknown one
        if name in _CHALLENGE_PARAMS:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: undecodable bytes (surrogateescape) are not text
                raise ParseError(f"parameter {name!r} is not text") from None
            params[name] = value
    if not raw.params:
        raise ParseError("Payment challenge without parameters")
    for name in _REQUIRED:
        if not params.get(name):
            raise ParseError(f"missing or empty required parameter {name!r}")
    if _METHOD.fullmatch(params["method"]) is None:
        raise ParseError("method must be a lowercase ASCII identifier")
    if _INTENT.fullmatch(params["intent"]) is None:
        raise ParseError("intent must be letters, digits and hyphens")
    decode_json_b64(params["request"], "request")
    if "opaque" in params:
        decode_json_b64(params["opaque"], "opaque")
    if params.get("header") == "Authorization":
        del params["header"]  # the default field, named explicitly: same challenge
    for name in ("digest", "expires", "header", "opaque"):
        if name in params and not params[name]:
            raise ParseError(f"empty parameter {name!r}")
    return Challenge(**params)


def parse_challenges(values: str | Iterable[str], *, skip_invalid: bool = False) -> list[Challenge]:
    """Every Payment challenge in one or more ``WWW-Authenticate`` field values.

    Raises ParseError on the first malformed Payment challenge, or when there is none;
    with ``skip_invalid`` malformed ones are dropped (a buyer picks among the rest).
    """
    if isinstance(values, str):
        values = [values]
    found: list[Challenge] = []
    errors: list[str] = []
    for value in values:
        try:
            raws = _scan(value)
        except ParseError as exc:
            if not skip_invalid:
                raise
            errors.append(str(exc))
            continue
        for raw in raws:
            if raw.scheme.lower() != "payment":
                continue
            try:
                found.append(_build_challenge(raw))
            except ParseError as exc:
                if not skip_invalid:
                    raise
                errors.append(str(exc))
    if not found:
        raise ParseError("no valid Payment challenge" + (f" ({clip('; '.join(errors), DETAIL_MAX)})" if errors else ""))
    return found


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (so CR and LF too)


def _quote(name: str, value: str) -> str:
    if _CONTROL.search(value) is not None:
        raise FormatError(f"control character in parameter {name!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> str:
    """One ``WWW-Authenticate`` field value. Order: required parameters, then optional ones."""
    parts = []
    for name in _CHALLENGE_PARAMS:
        value = getattr(challenge, name)
        if value is not None:
            parts.append(f"{name}={_quote(name, value)}")
    return "Payment " + ", ".join(parts)


def parse_credential(value: str) -> Credential:
    """The ``Authorization: Payment <b64>`` credential. Raises ParseError."""
    if not isinstance(value, str):
        raise ParseError("credential must be a string")
    m = _CREDENTIAL.fullmatch(value.strip(_WS))
    if m is None:
        raise ParseError("not 'Payment <base64url>'")
    if m.group(1).lower() != "payment":
        raise ParseError("scheme is not Payment")
    doc = decode_json_b64(m.group(2), "credential")
    return Credential.from_json(doc)


def format_credential(credential: Credential) -> str:
    """The ``Authorization`` field value for ``credential``: ``Payment <base64url JSON>``."""
    return "Payment " + b64url_encode(dumps_wire(credential.to_json(), "credential"))


def parse_receipt(value: str) -> PaymentReceipt:
    """The ``Payment-Receipt`` field value. Raises ParseError."""
    if not isinstance(value, str):
        raise ParseError("receipt must be a string")
    doc = decode_json_b64(value.strip(_WS), "receipt")
    return PaymentReceipt.from_json(doc)


def format_receipt(receipt: PaymentReceipt) -> str:
    """The ``Payment-Receipt`` field value for ``receipt``: base64url JSON."""
    return b64url_encode(dumps_wire(receipt.to_json(), "receipt"))


@dataclass(frozen=True)
class AcceptRange:
    """One range of an ``Accept-Payment`` header: a method and an intent (``*`` for any) and its
    preference ``q``; the most specific matching range decides an offer's weight."""

    method: str  # "*" for any
    intent: str  # "*" for any
    q: float

    def matches(self, method: str, intent: str) -> bool:
        """Does this range cover the offer (``method``, ``intent``)? ``*`` matches anything."""
        return self.method in ("*", method) and self.intent in ("*", intent)

    @property
    def specificity(self) -> int:
        """How many of method and intent the range names rather than ``*`` (0 to 2): the most specific
        matching range decides."""
        return (self.method != "*") + (self.intent != "*")


_RANGE = re.compile(r"\s*([a-z0-9:*-]+)/([A-Za-z0-9*-]+)\s*(?:;\s*q\s*=\s*([01](?:\.[0-9]{0,3})?))?\s*")


IDEMPOTENCY_KEY_MAX = 255
"""The longest Idempotency-Key value taken, in characters (CORE-ONCE-06)."""
# CORE-ONCE-06: visible ASCII (a bare key, as most clients send one), or an RFC 8941 sf-string,
# the form draft-ietf-httpapi-idempotency-key-header gives the field, whose content may hold spaces.
_IDEMPOTENCY_KEY = re.compile(r'[\x21-\x7e]+|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"')


def idempotency_key(values: Iterable[str]) -> str | None:
    """The request's Idempotency-Key, compared as sent (no unquoting), or ``None`` without one.

    Raises ``BadRequest`` for more than one field, or a value that is not 1 to 255 characters of
    visible ASCII (0x21-0x7E) nor an sf-string (space allowed inside the quotes): a space, a
    control or a non-ASCII character such as "\u00e9" is refused, never normalised."""
    found = list(values)
    if not found:
        return None
    if len(found) > 1:
        raise BadRequest("more than one Idempotency-Key field")
    key = found[0]
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX or _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise BadRequest(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters of visible ASCII "
                         "(0x21-0x7E), or an RFC 8941 string")
    return key


def parse_accept_payment(value: str | None) -> list[AcceptRange] | None:
    """``None`` when absent or malformed (the draft lets a server ignore a malformed one)."""
    if value is None or not value.strip():
        return None
    ranges = []
    for item in value.split(","):
        m = _RANGE.fullmatch(item)
        if m is None:
            return None
        q = float(m.group(3)) if m.group(3) is not None else 1.0
        if q > 1.0:
            return None
        ranges.append(AcceptRange(m.group(1), m.group(2), q))
    return ranges


def format_accept_payment(pairs: Iterable[tuple[str, str]] | Mapping[tuple[str, str], float]) -> str:
    """An ``Accept-Payment`` field value: ``method/intent`` pairs, each with its ``q`` when given a
    mapping (``q`` 1 is left out)."""
    if isinstance(pairs, Mapping):
        return ", ".join(f"{m}/{i}" + ("" if q == 1 else f";q={q:g}") for (m, i), q in pairs.items())
    return ", ".join(f"{m}/{i}" for m, i in pairs)
