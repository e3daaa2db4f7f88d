"""The MCP payment transport's wire objects, without I/O (spec/transports/mcp.md).

The HTTP scheme carries challenges, credentials and receipts as base64url JSON in header
fields; the MCP transport (draft-payment-transport-mcp-00) carries the same objects as native
JSON: challenges in a JSON-RPC error's ``data``, the credential in ``params._meta``, the receipt
in ``result._meta``. These functions turn one form into the other, so both sides of MCP reuse
the HTTP scheme's parsers, checks and signatures unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from mpp.protocol.errors import ParseError
from mpp.protocol.headers import format_credential
from mpp.protocol.models import Challenge, Credential
from mpp.protocol.wire import b64url_encode, encode_json_b64

__all__ = ["META_CREDENTIAL", "META_RECEIPT", "PAYMENT_REQUIRED", "VERIFICATION_FAILED", "INVALID_PARAMS",
           "INTERNAL_ERROR", "TOOLS_PREFIX", "tool_path", "challenge_object", "challenge_from_object",
           "credential_object", "authorization_of", "is_payment_demand"]

META_CREDENTIAL = "org.paymentauth/credential"
"""The ``params._meta`` key of a paid call's credential."""
META_RECEIPT = "org.paymentauth/receipt"
"""The ``result._meta`` key of a paid call's receipt."""
PAYMENT_REQUIRED = -32042
"""JSON-RPC error code: the call needs payment; ``data.challenges`` says how (MCP-ERR-01)."""
VERIFICATION_FAILED = -32043
"""JSON-RPC error code: a credential was presented and refused (MCP-ERR-02)."""
INVALID_PARAMS = -32602
"""JSON-RPC error code: the credential (or the call) is malformed (MCP-ERR-03)."""
INTERNAL_ERROR = -32603
"""JSON-RPC error code: the seller cannot take payment; not a payment demand (MCP-ERR-05)."""
TOOLS_PREFIX = "/tools/"
"""A tool is priced as ``POST /tools/<name>`` (MCP-TOOL-01)."""


def tool_path(name: str) -> str:
    """The path a tool is priced under: ``/tools/`` and the name, percent-encoded (the names MCP
    recommends, letters, digits, ``_``, ``-`` and ``.``, stay as they are)."""
    from urllib.parse import quote

    return TOOLS_PREFIX + quote(name, safe="")


def challenge_object(challenge: Challenge) -> dict[str, Any]:
    """A challenge as the MCP transport carries it: the HTTP parameters, ``request`` decoded to
    its JSON object, ``opaque`` kept as its base64url string (MCP-CHAL-01)."""
    doc: dict[str, Any] = dict(challenge.echo())
    doc["request"] = challenge.request_json
    return doc


def challenge_from_object(obj: Any) -> Challenge:
    """The HTTP challenge a JSON challenge object stands for: ``request`` (and ``opaque``, when an
    object) re-encoded as RFC 8785 JSON in base64url, the form the challenge id binds
    (MCP-CRED-02). A string ``request`` or ``opaque`` is taken as already encoded. ParseError when
    ``obj`` is not such an object."""
    if not isinstance(obj, Mapping):
        raise ParseError("challenge is not an object")
    doc = dict(obj)
    for name in ("request", "opaque"):
        value = doc.get(name)
        if isinstance(value, Mapping):
            doc[name] = encode_json_b64(dict(value))
        elif value is not None and not isinstance(value, str):
            raise ParseError(f"challenge {name!r} is neither an object nor a string")
    return Credential.from_json({"challenge": doc, "payload": {}}).challenge


def credential_object(credential: Credential) -> dict[str, Any]:
    """A credential as the MCP transport carries it in ``_meta``: the echoed challenge as a
    challenge object, ``payload``, ``source`` and the extension members (``identity``)."""
    doc = credential.to_json()
    doc["challenge"] = challenge_object(credential.challenge)
    return doc


def authorization_of(value: Any) -> str:
    """The ``Authorization`` field value an MCP credential stands for, to be judged by the seller
    engine as an HTTP credential is (MCP-CRED-02). Never raises: a value that is not a
    well-formed credential gives a field the engine refuses as ``malformed-credential``."""
    try:
        if isinstance(value, Mapping):
            doc = dict(value)
            doc["challenge"] = challenge_from_object(doc.get("challenge")).echo()
            credential = Credential.from_json(doc)
            return format_credential(credential)
    except (ParseError, ValueError, TypeError, RecursionError):
        pass  # left to the engine, which refuses it with the reason
    try:
        raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError):
        raw = b"null"
    return "Payment " + b64url_encode(raw)


def is_payment_demand(code: int, data: Any) -> bool:
    """Whether a JSON-RPC error is a payment demand: code -32042 or -32043 with a non-empty
    ``data.challenges`` list. The MCP SDK's own -32042 (URL elicitation required) carries none, and
    is not one (MCP-ERR-06)."""
    if code not in (PAYMENT_REQUIRED, VERIFICATION_FAILED) or not isinstance(data, Mapping):
        return False
    challenges = data.get("challenges")
    return isinstance(challenges, list) and len(challenges) > 0
