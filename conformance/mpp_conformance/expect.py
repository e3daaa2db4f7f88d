"""Small assertions checks share. Each raises CheckFailed with a message a reader can act on."""

from __future__ import annotations

from typing import Any

from mpp import ParseError, parse_challenges
from mpp.protocol.errors import PROBLEM_BASE

from .base import CheckFailed, Response

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
        doc = resp.json()
    except ValueError as exc:
        fail(f"{what}: the problem document is not strict JSON ({exc})")
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not isinstance(doc.get("title"), str) \
            or doc.get("status") != resp.status:
        fail(f"{what}: the problem document lacks type/title/status matching the response")
    if slug is not None and doc["type"] != base + slug:
        fail(f"{what}: problem type is {doc['type']!r}, expected {base + slug!r}")
    return doc


def fresh_challenges(resp: Response, what: str, *, not_ids: set[str] = frozenset(), no_store: bool = False) -> list:
    """The Payment challenges of a 402, new ids only. ``no_store``: also hold it to Cache-Control:
    no-store (draft §11.10), which core.challenge-well-formed (the unpaid 402) and
    core.garbage-credential (refusals) ask, so a seller that omits it fails those two, not every check."""
    values = resp.headers.getall("WWW-Authenticate", [])
    try:
        challenges = parse_challenges(values)
    except ParseError as exc:
        fail(f"{what}: no parseable Payment challenge in WWW-Authenticate ({exc})")
    if no_store and "no-store" not in resp.headers.get("Cache-Control", ""):
        fail(f"{what}: a 402 must carry Cache-Control: no-store (got {resp.headers.get('Cache-Control')!r})")
    reused = [c.id for c in challenges if c.id in not_ids]
    if reused:
        fail(f"{what}: the 'fresh' challenge reuses id {reused[0][:16]}...")
    return challenges


def no_receipt(resp: Response, what: str) -> None:
    if "Payment-Receipt" in resp.headers:
        fail(f"{what}: a Payment-Receipt on an error response (HTTP {resp.status})")


# -- appended for the `full` profile ----------------------------------------

def problem_slug(resp: Response) -> str | None:
    """The problem type of ``resp`` (the slug when it is under PROBLEM_BASE), or None."""
    try:
        doc = resp.json()
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str):
        return None
    return kind[len(PROBLEM_BASE):] if kind.startswith(PROBLEM_BASE) else kind


def describe(resp: Response) -> str:
    """What the target did, in a few words, for a failure message (never a credential)."""
    parts = [f"HTTP {resp.status}"]
    slug = problem_slug(resp) if resp.status >= 400 else None
    if slug:
        parts.append(slug)
    if "Payment-Receipt" in resp.headers:
        parts.append("with a Payment-Receipt")
    elif 200 <= resp.status < 300:
        parts.append("without a Payment-Receipt")
    return " ".join(parts)


def refused(resp: Response, what: str, slugs: tuple[str, ...], *, expected_status: int | tuple[int, ...] = 402,
            not_ids: set[str] = frozenset(), accepted: str = "") -> str | None:
    """``resp`` refuses a credential as the draft shapes a refusal (§4.2, §11.10):
    ``expected_status``, fresh challenges (no id of ``not_ids``) on a 402; a problem
    document, when there is one, of one of ``slugs``. A receipt on a refusal (§5.3.1) is
    core.no-receipt-on-errors' finding, made once. Whether there must be a
    problem document (a SHOULD of the draft, a MUST of MPP's profile) is core.problem-documents'
    question, asked once, not every refusal's. A 2xx fails with ``accepted`` appended (what
    accepting it means). Returns the slug, or None without a problem document."""
    if 200 <= resp.status < 300:
        fail(f"{what}: the target accepted it ({describe(resp)})" + (f"; {accepted}" if accepted else ""))
    status(resp, expected_status, what)
    slug = None
    if "application/problem+json" in resp.headers.get("Content-Type", ""):
        doc = problem(resp, None, what)
        allowed = [PROBLEM_BASE + s for s in slugs]
        if doc["type"] not in allowed:
            fail(f"{what}: problem type is {doc['type']!r}, expected {' or '.join(map(repr, allowed))}")
        slug = doc["type"][len(PROBLEM_BASE):]
    if resp.status == 402 or "method-unsupported" in slugs:
        fresh_challenges(resp, what, not_ids=not_ids)
    return slug


__all__ += ["problem_slug", "describe", "refused"]
