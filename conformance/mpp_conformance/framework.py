"""Checks, their registry, the evidence they record, and the runner."""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, Iterable

import aiohttp

__all__ = ["Verdict", "Exchange", "Result", "Check", "CheckContext", "register", "checks_for", "run_checks", "CheckFailed", "redact"]


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # the check could not apply to this target (say why)
    ERROR = "error"  # the check itself could not run (network, target down)


class CheckFailed(AssertionError):
    """Raised by a check when the target departs from the spec."""


@dataclass
class Exchange:
    """One HTTP request and its response, as evidence. Credentials are redacted."""

    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: str
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": {"method": self.method, "url": self.url, "headers": self.request_headers, "body": self.request_body},
            "response": None if self.status is None else {"status": self.status, "headers": self.response_headers, "body": self.response_body},
            "error": self.error,
        }


_SECRET_HEADERS = {"authorization", "payment-authorization", "cookie", "set-cookie"}
_MAX_BODY = 4000


def redact(name: str, value: str) -> str:
    """Credentials never reach a report: keep the scheme and a short fingerprint only."""
    if name.lower() in _SECRET_HEADERS:
        scheme, _, rest = value.partition(" ")
        return f"{scheme} [redacted {len(rest)} chars]" if rest else "[redacted]"
    return value


def _text(body: bytes | str | None) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return text if len(text) <= _MAX_BODY else text[:_MAX_BODY] + f"... [{len(text) - _MAX_BODY} more chars]"


@dataclass
class Result:
    check_id: str
    title: str
    profile: str
    requirements: list[str]
    verdict: Verdict
    message: str
    duration_ms: float
    exchanges: list[Exchange] = field(default_factory=list)
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.check_id,
            "title": self.title,
            "profile": self.profile,
            "requirements": self.requirements,
            "verdict": self.verdict.value,
            "message": self.message,
            "durationMs": round(self.duration_ms, 1),
            "target": self.target,
            "evidence": [e.to_json() for e in self.exchanges],
        }


class Response:
    """What a check sees of a response: status, headers (case-insensitive), body."""

    def __init__(self, status: int, headers: "aiohttp.typedefs.LooseHeaders", body: bytes) -> None:
        from multidict import CIMultiDict

        self.status = status
        self.headers = CIMultiDict(headers)
        self.body = body

    def json(self) -> Any:
        """The body as strict JSON (CORE-CRED-07); ParseError, a ValueError, otherwise."""
        from mpp._wire import loads_strict

        return loads_strict(self.body, "the response body")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class CheckContext:
    """What a check gets: the target, an HTTP session that records evidence, the options."""

    target: str
    session: aiohttp.ClientSession
    options: dict[str, Any]
    exchanges: list[Exchange] = field(default_factory=list)

    async def request(self, method: str, url: str, *, headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
                      data: bytes | None = None, timeout: float = 15.0) -> Response:
        """Send one request (no redirects followed) and record it, redacted, as evidence."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        ex = Exchange(method, url, [(k, redact(k, v)) for k, v in hdrs], _text(data))
        self.exchanges.append(ex)
        from multidict import CIMultiDict

        try:
            async with self.session.request(method, url, headers=CIMultiDict(hdrs), data=data, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                ex.status = resp.status
                ex.response_headers = [(k, redact(k, v)) for k, v in resp.headers.items()]
                ex.response_body = _text(body)
                return Response(resp.status, resp.headers, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            ex.error = f"{type(exc).__name__}: {exc}"
            raise


CheckFn = Callable[[CheckContext], Awaitable[str | None]]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    profile: str  # "core", "full", "identity", "pricing", "buyer"
    requirements: tuple[str, ...]
    fn: CheckFn


_REGISTRY: dict[str, Check] = {}
_ID = re.compile(r"[a-z]+(\.[a-z0-9-]+)+")


def register(check_id: str, title: str, profile: str, requirements: Iterable[str]) -> Callable[[CheckFn], CheckFn]:
    """Decorator: a check returns a short note on success, raises CheckFailed on a departure, or
    raises Skip(reason) when it does not apply to the target."""
    if _ID.fullmatch(check_id) is None:
        raise ValueError(f"bad check id {check_id!r}")

    def add(fn: CheckFn) -> CheckFn:
        if check_id in _REGISTRY:
            raise ValueError(f"duplicate check id {check_id!r}")
        _REGISTRY[check_id] = Check(check_id, title, profile, tuple(requirements), fn)
        return fn

    return add


class Skip(Exception):
    """The check does not apply to this target; the message says why."""


def all_checks() -> list[Check]:
    from . import checks_core  # noqa: F401 - registration by import
    for name in ("checks_full", "checks_identity", "checks_pricing"):
        try:
            __import__(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
    return list(_REGISTRY.values())


PROFILE_INCLUDES = {"core": ("core",), "full": ("core", "full"), "identity": ("core", "identity"),
                    "pricing": ("core", "pricing")}


def checks_for(profile: str) -> list[Check]:
    wanted = PROFILE_INCLUDES.get(profile, (profile,))
    return [c for c in all_checks() if c.profile in wanted]


async def run_checks(checks: list[Check], target: str, options: dict[str, Any],
                     progress: Callable[[Result, int, int], None] | None = None) -> list[Result]:
    """Run checks one after another (each gets its own evidence), never stopping at a failure."""
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for n, chk in enumerate(checks, 1):
            ctx = CheckContext(target, session, options)
            start = time.perf_counter()
            try:
                note = await chk.fn(ctx)
                verdict, message = Verdict.PASS, note or "as the spec requires"
            except CheckFailed as exc:
                verdict, message = Verdict.FAIL, str(exc)
            except Skip as exc:
                verdict, message = Verdict.SKIP, str(exc)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                verdict, message = Verdict.ERROR, f"could not talk to the target: {type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - a check bug is reported, never fatal to the run
                verdict, message = Verdict.ERROR, f"check crashed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            result = Result(chk.id, chk.title, chk.profile, list(chk.requirements), verdict, message,
                            (time.perf_counter() - start) * 1000, ctx.exchanges, target)
            results.append(result)
            if progress is not None:
                progress(result, n, len(checks))
    return results
