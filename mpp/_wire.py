"""Encodings shared by every header: base64url without padding and RFC 8785 JSON."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import rfc8785

from .errors import ParseError

__all__ = ["b64url_encode", "b64url_decode", "canonical_json", "encode_json_b64", "decode_json_b64"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict decoding: the URL-safe alphabet only, no padding, no whitespace."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ParseError("not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked above
        raise ParseError("not base64url") from exc


_SAFE_INT = 2**53 - 1


def _plain(value: Any) -> bool:
    """True when ``json.dumps(sort_keys=True)`` writes exactly the RFC 8785 form of ``value``:
    only None, booleans, integers within +-(2**53 - 1), strings, lists, tuples and dicts whose
    keys are ASCII strings (code point order is then UTF-16 order). Both escape the same
    characters the same way (", \\, \\b, \\f, \\n, \\r, \\t, other controls as \\u00xx) and
    leave the rest as it is. Floats and anything else take the reference implementation."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_SAFE_INT <= value <= _SAFE_INT
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) serialisation; the bytes every party hashes, signs or binds."""
    try:
        if _plain(value):  # the common case, in C: the same bytes as rfc8785.dumps (tests/test_core.py compares)
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                              allow_nan=False).encode("utf-8")
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ParseError(f"value cannot be canonicalised: {exc}") from exc


def encode_json_b64(value: dict[str, Any]) -> str:
    return b64url_encode(canonical_json(value))


def decode_json_b64(text: str, what: str) -> dict[str, Any]:
    """Decode base64url JSON that must be an object (challenge `request`, `opaque`, credentials)."""
    raw = b64url_decode(text)
    try:
        decoded = raw.decode("utf-8")
        value = json.loads(decoded)
        if "\\u" in decoded:  # a \uD800-style escape yields a lone surrogate, which is not text:
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # refuse it here, not deep inside
    except (ValueError, RecursionError) as exc:  # ValueError: also integers past Python's digit limit
        raise ParseError(f"{what} is not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise ParseError(f"{what} is not a JSON object")
    return value
