"""Small assertions checks share. Each raises CheckFailed with a message a reader can act on."""

from __future__ import annotations

import json
from typing import Any

from mpp import ParseError, parse_challenges
from mpp.errors import PROBLEM_BASE

from .framework import CheckFailed, Response

__all__ = ["fail", "status", "problem", "fresh_challenges", "no_receipt", "no_5xx", "PROBLEM_BASE"]


def fail(message: str) -> None:
    raise CheckFailed(message)


def no_5xx(resp: Response, what: str) -> None:
    if resp.status >= 500:
        fail(f"{what}: the target answered {resp.status}; bad input must never produce a 5xx")


def status(resp: Response, expected: int | tuple[int, ...], what: str) -> None:
    no_5xx(resp, what)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if resp.status not in allowed:
        fail(f"{what}: expected HTTP {' or '.join(map(str, allowed))}, got {resp.status}")


def problem(resp: Response, slug: str | None, what: str, *, base: str = PROBLEM_BASE) -> dict[str, Any]:
    """The body is an RFC 9457 problem document (and of type ``slug`` when given)."""
    ctype = resp.headers.get("Content-Type", "")
    if "application/problem+json" not in ctype:
        fail(f"{what}: Content-Type is {ctype!r}, not application/problem+json")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        fail(f"{what}: the problem document is not JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not isinstance(doc.get("title"), str) \
            or doc.get("status") != resp.status:
        fail(f"{what}: the problem document lacks type/title/status matching the response")
    if slug is not None and doc["type"] != base + slug:
        fail(f"{what}: problem type is {doc['type']!r}, expected {base + slug!r}")
    return doc


def fresh_challenges(resp: Response, what: str, *, not_ids: set[str] = frozenset()) -> list:
    values = resp.headers.getall("WWW-Authenticate", [])
    try:
        challenges = parse_challenges(values)
    except ParseError as exc:
        fail(f"{what}: no parseable Payment challenge in WWW-Authenticate ({exc})")
    if "no-store" not in resp.headers.get("Cache-Control", ""):
        fail(f"{what}: a 402 must carry Cache-Control: no-store (got {resp.headers.get('Cache-Control')!r})")
    reused = [c.id for c in challenges if c.id in not_ids]
    if reused:
        fail(f"{what}: the 'fresh' challenge reuses id {reused[0][:16]}...")
    return challenges


def no_receipt(resp: Response, what: str) -> None:
    if "Payment-Receipt" in resp.headers:
        fail(f"{what}: a Payment-Receipt on an error response (HTTP {resp.status})")
