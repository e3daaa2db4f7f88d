"""Encodings shared by every header: base64url without padding and RFC 8785 JSON."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from typing import Any

import rfc8785

from mpp.protocol.errors import FormatError, ParseError

__all__ = ["b64url_encode", "b64url_decode", "canonical_json", "encode_json_b64", "decode_json_b64", "loads_strict",
           "MAX_JSON_DEPTH", "decode_jws", "dumps_wire"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """``data`` as base64url without padding."""
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
    """``value`` as RFC 8785 JSON, base64url without padding."""
    return b64url_encode(canonical_json(value))


MAX_JSON_DEPTH = 32
"""Our documents nest a few levels (credential, identity, mandates: three); 32 leaves room for extensions
and stops a peer's deep nesting long before the interpreter's recursion limit."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep a different one of two same-named members read two different
    # documents from one signed text; refusing both is the only reading everyone agrees on.
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ParseError("duplicate member name")
    return value


def _no_constant(name: str) -> Any:
    raise ParseError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf: a non-finite number under another spelling
        raise ParseError("number out of range")
    return value


def _depth_within(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if type(node) is dict:
            stack.extend((v, depth + 1) for v in node.values() if type(v) in (dict, list))
        elif type(node) is list:
            stack.extend((v, depth + 1) for v in node if type(v) in (dict, list))
    return True


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _text_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest, strings left out (a text that is not JSON may
    count deeper than it would parse; it is refused either way)."""
    brackets = _BRACKETS.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(_STEP[c] for c in brackets), default=0)


def loads_strict(data: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from a peer, strictly (CORE-CRED-07): UTF-8 text only, no NaN or Infinity (nor numbers
    that overflow to them), no repeated member name, no lone surrogate, at most ``max_depth``
    nested arrays and objects. Raises ParseError naming ``what``; never anything else."""
    if not isinstance(data, (str, bytes, bytearray)):
        raise ParseError(f"{what} is not text")
    try:
        # bytes: UTF-8 only (json.loads would also guess UTF-16 and UTF-32); text: no lone surrogates
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        if text is data:
            text.encode("utf-8")
        # The depth is judged on the text, before json.loads recurses: its C parser nests as deep as the
        # interpreter's recursion limit allows, and a library that raises that limit (py_ecc, which
        # eth-account imports, sets 100000) would let a deep document overflow the C stack.
        # Fewer brackets than the bound cannot nest past it: the scan is for the rare text with many.
        if text.count("[") + text.count("{") > max_depth and _text_depth(text) > max_depth:
            raise ParseError(f"nests deeper than {max_depth} levels")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite)
        if _SURROGATE_ESCAPE.search(text):  # a lone \uD800-style escape yields a lone surrogate, not text:
            try:  # refuse it here, not deep inside
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ParseError("a lone surrogate is not text") from None
    except ParseError as exc:
        if str(exc).startswith("nests deeper"):
            raise ParseError(f"{what} {exc}") from None
        raise ParseError(f"{what} is not strict JSON: {exc}") from None
    except RecursionError:  # nesting past the interpreter's limit, before our own bound is looked at
        raise ParseError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # also UnicodeError, and integers past Python's digit limit
        raise ParseError(f"{what} is not UTF-8 JSON") from exc
    # Fewer brackets than the bound cannot nest past it: the walk is for the rare text with many.
    if text.count("[") + text.count("{") > max_depth and not _depth_within(value, max_depth):
        raise ParseError(f"{what} nests deeper than {max_depth} levels")
    return value


def dumps_wire(value: Any, what: str) -> bytes:
    """Compact UTF-8 JSON for the wire, only of what ``loads_strict`` reads back: no NaN or
    infinity, no deeper than the bound. Raises FormatError, so we never send what a strict
    peer (ourselves included) refuses."""
    if not _depth_within(value, MAX_JSON_DEPTH):
        raise FormatError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError) as exc:  # NaN or infinity; a lone surrogate (UnicodeError); not JSON data (TypeError)
        raise FormatError(f"{what} cannot be put on the wire: {exc}") from None


def decode_json_b64(text: str, what: str) -> dict[str, Any]:
    """Decode base64url JSON that must be an object (challenge `request`, `opaque`, credentials)."""
    value = loads_strict(b64url_decode(text), what)
    if not isinstance(value, dict):
        raise ParseError(f"{what} is not a JSON object")
    return value


def decode_jws(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Header, payload and signature of a compact JWS, strictly decoded and NOT verified: what a
    verifier reads before (and besides) the signature check, so every party reads the same claims."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise ParseError("not a compact JWS")
    head, body, sig = token.split(".")
    header, payload = loads_strict(b64url_decode(head), "JWS header"), loads_strict(b64url_decode(body), "JWS payload")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ParseError("JWS header and payload must be JSON objects")
    return header, payload, b64url_decode(sig)
