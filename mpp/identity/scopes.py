"""Scope patterns: ``*`` or ``METHOD /path-glob``, ``*`` the only wildcard; which resources they admit
and which patterns lie within others."""

from __future__ import annotations

import re

__all__ = [
    "scope_matches",
    "is_canonical_resource",
    "pattern_within",
]


def scope_matches(pattern: str, resource: str) -> bool:
    """``*`` matches any run of characters; everything else is literal. Time is bounded by
    len(pattern) * len(resource): one remembered star, no backtracking regular expression."""
    if pattern == "*":
        return True
    p = r = 0
    star, mark = -1, 0
    while r < len(resource):
        if p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, r, p + 1
        elif p < len(pattern) and pattern[p] == resource[r]:
            p, r = p + 1, r + 1
        elif star >= 0:
            mark += 1
            p, r = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_canonical_resource(resource: str) -> bool:
    """False for paths a server may route somewhere their string does not show: ``//``, ``.``
    or ``..`` segments, a backslash, or a percent-encoded unreserved character, slash or backslash."""
    _, _, target = resource.partition(" ")
    path = target.split("?", 1)[0]
    if "//" in path or "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
        return False
    for m in _ESCAPE.finditer(path):
        ch = chr(int(m.group(1), 16))
        if ch.isascii() and (ch.isalnum() or ch in "-._~/\\"):
            return False
    return True


def pattern_within(child: str, parent: str) -> bool:
    """Every resource the child pattern admits, the parent admits too.

    With ``*`` as the only wildcard this holds exactly when the child pattern, read as a
    literal string, matches the parent pattern: the child's ``*`` can only land inside one of
    the parent's ``*``.
    """
    return scope_matches(parent, child)
