"""Request-body digests per RFC 9530 (``Content-Digest`` syntax: ``sha-256=:<base64>:``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mpp.protocol.errors import VerificationFailed

__all__ = ["content_digest", "verify_content_digest"]

_ALGORITHMS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_MEMBER = re.compile(r"\s*([a-z0-9-]+)\s*=\s*:([A-Za-z0-9+/]*={0,2}):\s*")


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The ``Content-Digest`` member for ``body``: ``<algorithm>=:<base64>:`` (sha-256 or sha-512)."""
    digest = _ALGORITHMS[algorithm](body).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode('ascii')}:"


def verify_content_digest(expected: str, body: bytes) -> None:
    """Raise VerificationFailed unless ``body`` matches the digest the challenge was bound to.

    Members with algorithms we do not know are skipped; at least one known member must match
    and every known member must match.
    """
    checked = False
    for member in expected.split(","):
        m = _MEMBER.fullmatch(member)
        if m is None:
            raise VerificationFailed("challenge digest is not RFC 9530 syntax")
        algorithm = _ALGORITHMS.get(m.group(1))
        if algorithm is None:
            continue
        try:
            claimed = base64.b64decode(m.group(2), validate=True)
        except ValueError as exc:
            raise VerificationFailed("challenge digest is not base64") from exc
        if not hmac.compare_digest(claimed, algorithm(body).digest()):
            raise VerificationFailed("request body does not match the digest the challenge was issued for")
        checked = True
    if not checked:
        raise VerificationFailed("challenge digest uses no supported algorithm")
