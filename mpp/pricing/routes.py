"""Route strings ('GET /jobs/{task}') and path templates: how a price list names the requests it prices."""

from __future__ import annotations

import re

__all__ = [
    "match_template",
]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+|\{[a-z_][a-z0-9_]*\}")


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if path != "/":
        for segment in path[1:].split("/"):
            if _SEGMENT.fullmatch(segment) is None:
                raise ValueError(f"path {path!r}: segment {segment!r} is neither literal text nor {{name}}")
    return path


def _route_string(value: str) -> tuple[str, str]:
    """'GET /jobs/{task}' -> ('GET', '/jobs/{task}'), refusing anything else."""
    method, sep, path = value.partition(" ")
    if not sep or method not in _METHODS:
        raise ValueError(f"{value!r} is not a route string such as 'GET /jobs/{{task}}' (METHOD, one space, path)")
    return method, _check_path(path)


def _shape(path: str) -> str:
    """A template with its parameter names dropped: '/jobs/{id}' and '/jobs/{task}' are one route."""
    return re.sub(r"\{[a-z0-9_]+\}", "{}", path)


def match_template(template: str, path: str) -> dict[str, str] | None:
    """The parameters of ``path`` under ``template`` ('/jobs/{task}' matches '/jobs/abc'), or None."""
    want, have = template.split("/"), path.split("/")
    if len(want) != len(have):
        return None
    params: dict[str, str] = {}
    for w, h in zip(want, have):
        if w.startswith("{") and w.endswith("}"):
            if not h:
                return None
            params[w[1:-1]] = h
        elif w != h:
            return None
    return params


def _route_matches(route: str, method: str, path: str) -> dict[str, str] | None:
    r_method, r_path = _route_string(route)
    return match_template(r_path, path) if r_method == method.upper() else None
