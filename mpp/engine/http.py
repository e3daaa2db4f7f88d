"""The engine's view of HTTP: a request and a response as plain data, whatever the framework.

An adapter (mpp.aio for aiohttp, mpp.asgi for Starlette and FastAPI) turns its framework's
request into an :class:`HttpRequest`, gives the engine a coroutine that runs the route's handler
and describes what it answered as a :class:`Served`, and turns the engine's own answers
(:class:`HttpResponse`: 402s, problems, replays) back into its framework's responses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from mpp.engine.core import RequestInfo
from mpp.pricing import SUBSCRIPTION_ID_HEADER

__all__ = ["HttpRequest", "HttpResponse", "Served", "Serve", "private_cache_control", "REPLAY_HEADERS"]

REPLAY_HEADERS = ("Content-Type", "Content-Language", "Location", "ETag")
"""The headers of a paid response kept with its body for Idempotency-Key replays."""


@dataclass
class HttpRequest:
    """One incoming request: the method, the raw path and query as sent, the headers in order
    (names as received; looked up case-insensitively) and the whole body, read only when the
    request turns out to be priced (``reader``; see :meth:`read`)."""

    method: str
    path: str
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    reader: Callable[[], Awaitable[bytes]] | None = None

    async def read(self) -> bytes:
        """The whole body, read once through the adapter's ``reader``."""
        if self.reader is not None:
            self.body, self.reader = await self.reader(), None
        return self.body

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def headers_all(self, name: str) -> tuple[str, ...]:
        """Every value of header ``name``, in order."""
        lower = name.lower()
        return tuple(v for k, v in self.headers if k.lower() == lower)

    def info(self, *, payment: bool = True) -> RequestInfo:
        """What the sans-I/O core needs (after :meth:`read`); ``payment=False`` leaves out the
        payment headers (a request served to a grant carries none)."""
        assert self.reader is None, "read() the body first"
        if not payment:
            return RequestInfo(method=self.method, path=self.path, query=self.query, body=self.body)
        return RequestInfo(method=self.method, path=self.path, query=self.query, body=self.body,
                           accept_payment=self.header("Accept-Payment"), authorization=self.headers_all("Authorization"),
                           subscription=subscription_id(self.header(SUBSCRIPTION_ID_HEADER)))


@dataclass
class HttpResponse:
    """An answer the engine gives itself: status, headers in order, the whole body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, doc: Any, headers: Sequence[tuple[str, str]] = (), *,
             content_type: str = "application/json; charset=utf-8") -> "HttpResponse":
        """A JSON document as the body."""
        return cls(status, [("Content-Type", content_type), *headers], json.dumps(doc).encode())


@dataclass
class Served:
    """What the route's handler did: its status, the headers and whole body when it answered in one
    piece (kept for Idempotency-Key replays; ``body`` is None for a streamed answer), the
    framework's own response object to pass on (``native``), and the exception it raised, if any
    (``raised``; the adapter re-raises it once the engine has refunded or recorded). The engine
    may add headers to set on it (``set_headers``: a session request's receipt)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    native: Any = None
    raised: BaseException | None = None
    set_headers: dict[str, str] = field(default_factory=dict)  # the engine's additions, for the adapter to apply


Serve = Callable[[Any], Awaitable[Served]]
"""The adapter's coroutine that runs the route's handler: given what the handler may read (the payment,
meter, task or grant: mpp.engine.purchase.Context), it answers with a Served."""


def subscription_id(value: str | None) -> str | None:
    """A well-formed Subscription-Id the buyer named, echoed into seat quotes (spec/pricing.md §3.2)."""
    if value is not None and len(value) == 26 and value.startswith("sub_") and value[4:].replace("-", "").replace("_", "").isalnum():
        return value
    return None


def private_cache_control(value: str | None) -> str:
    """A paid response's Cache-Control: no ``public`` or ``s-maxage``, and ``private`` unless it
    already says ``private`` or ``no-store`` (CORE-RCPT: a receipt is the buyer's alone)."""
    directives = [d.strip() for d in (value or "").split(",") if d.strip()]
    directives = [d for d in directives if d.lower() != "public" and not d.lower().startswith("s-maxage")]
    if not any(d.lower() in ("private", "no-store") for d in directives):
        directives.insert(0, "private")
    return ", ".join(directives)
