"""Signed requests to a ledger service (spec/methods/ledger.md §7), sans I/O.

A seller signs every request with its own Ed25519 key:

    Authorization: MPP-Ledger keyid="did:key:z6Mk...", ts="1767225600", nonce="<base64url>", sig="<base64url>"

over the bytes ``mpp-ledger-request-v1`` LF, then one line each for the ledger id, the method,
the request target (path and query, as sent), ``ts`` and ``nonce``, then the base64url SHA-256
of the body (no trailing LF).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from mpp.protocol.wire import b64url_encode
from mpp.protocol.errors import ParseError
from mpp.protocol.keys import SignatureInvalid, SigningKey, public_key_from_did, verify_signature

__all__ = ["SCHEME", "DOMAIN", "WINDOW", "TEXT_MAX", "printable_text", "SignedRequest", "body_digest", "signed_bytes", "sign_request",
           "parse_authorization", "verify_request"]

SCHEME = "MPP-Ledger"
"""The HTTP authentication scheme of a seller's signed request to the ledger service."""
DOMAIN = b"mpp-ledger-request-v1\n"
"""Domain separation prefix of a seller's request signature."""
WINDOW = 60
"""Seconds a request's timestamp may be away from the ledger's clock, either way."""
TEXT_MAX = 255
"""LEDGER-SVC-15: the longest id, realm, session id or ledger id the service takes (a path's {id} too)."""


def printable_text(value: object, max_len: int = TEXT_MAX) -> bool:
    """A string the service takes (LEDGER-SVC-15): 1 to ``max_len`` characters, none of them a
    control, format, surrogate, private-use, unassigned or separator character but SPACE."""
    return isinstance(value, str) and 0 < len(value) <= max_len and value.isprintable()

_PARAM = re.compile(r'\s*([a-z]+)="([^"\\\x00-\x1f\x7f]*)"\s*(,|$)')
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TS = re.compile(r"0|[1-9][0-9]{0,11}")
_SIG = re.compile(r"[A-Za-z0-9_-]{86}")
_NAMES = ("keyid", "ts", "nonce", "sig")


@dataclass(frozen=True)
class SignedRequest:
    """The parameters of a seller's ``MPP-Ledger`` Authorization header: the seller's key id, the
    timestamp and nonce that stop replays, and the Ed25519 signature (see :func:`parse_authorization`)."""

    keyid: str
    ts: int
    nonce: str
    sig: str


def body_digest(body: bytes) -> str:
    """The request body's SHA-256, base64url without padding: the last signed line."""
    return b64url_encode(hashlib.sha256(body).digest())


def signed_bytes(*, ledger_id: str, method: str, target: str, ts: int, nonce: str, body: bytes) -> bytes:
    """What the seller signs. ``target`` is the request target as sent: path and query, raw."""
    lines = (ledger_id, method.upper(), target, str(ts), nonce, body_digest(body))
    for line in lines:
        if not line.isascii() or "\n" in line or "\r" in line:
            raise ParseError("a signed line must be ASCII without line breaks")
    return DOMAIN + "\n".join(lines).encode("ascii")


def sign_request(key: SigningKey, *, ledger_id: str, method: str, target: str, body: bytes, now: float | None = None,
                 nonce: str | None = None) -> str:
    """The ``Authorization`` value for one request (a fresh nonce unless one is given)."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or b64url_encode(secrets.token_bytes(16))
    sig = key.sign(signed_bytes(ledger_id=ledger_id, method=method, target=target, ts=ts, nonce=nonce, body=body))
    return f'{SCHEME} keyid="{key.did}", ts="{ts}", nonce="{nonce}", sig="{sig}"'


def parse_authorization(value: str) -> SignedRequest:
    """Exactly the four parameters, each once, as quoted strings; ParseError otherwise."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise ParseError(f"authorization scheme is not {SCHEME}")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise ParseError("malformed authorization parameters")
        name, val = m.group(1), m.group(2)
        if name not in _NAMES or name in params:
            raise ParseError(f"unexpected or repeated parameter {name!r}")
        params[name] = val
        pos = m.end()
        if m.group(3) == "" and pos < len(rest):
            raise ParseError("malformed authorization parameters")
    if set(params) != set(_NAMES):
        raise ParseError("authorization needs keyid, ts, nonce and sig")
    if _TS.fullmatch(params["ts"]) is None:
        raise ParseError("ts must be a decimal number of seconds since the epoch")
    if _NONCE.fullmatch(params["nonce"]) is None:
        raise ParseError("nonce must be 16 to 64 base64url characters")
    if _SIG.fullmatch(params["sig"]) is None:
        raise ParseError("sig must be a base64url Ed25519 signature")
    public_key_from_did(params["keyid"])  # ParseError unless an Ed25519 did:key
    return SignedRequest(params["keyid"], int(params["ts"]), params["nonce"], params["sig"])


def verify_request(signed: SignedRequest, *, ledger_id: str, method: str, target: str, body: bytes) -> None:
    """Raise SignatureInvalid unless ``signed.sig`` is keyid's signature over this request."""
    try:
        message = signed_bytes(ledger_id=ledger_id, method=method, target=target, ts=signed.ts, nonce=signed.nonce,
                               body=body)
    except ParseError as exc:
        raise SignatureInvalid("request cannot be signed") from exc
    verify_signature(signed.keyid, message, signed.sig)
