"""The buyer engine's :class:`~mpp.purchase.exchange.Exchange` over an httpx transport.

Works with ``httpx`` and with its successor ``httpx2`` (which pydantic-ai and openai-agents use):
the module is the one the wrapped transport comes from, so nothing here imports either by name.
Redirects are never followed here: a transport sits below the httpx client, which follows them
itself (and calls the paying transport again for each hop). Answers are read whole: a paid
event stream whose session asks for vouchers in-band needs :meth:`mpp.aio.PaymentClient.stream`.
"""

from __future__ import annotations

import asyncio
import sys
from types import ModuleType
from typing import Any, Mapping, Sequence

from mpp.purchase.exchange import PaidResponse, TransportError, headers_of

__all__ = ["HttpxExchange", "SyncHttpxExchange", "httpx_module", "HOP_HEADERS"]

HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Header fields of the caller's request that the exchange recomputes for the request it sends."""


def httpx_module(transport: Any) -> ModuleType:
    """The httpx package (``httpx`` or ``httpx2``) a transport object belongs to."""
    name = type(transport).__module__.split(".")[0]
    module = sys.modules.get(name)
    if module is None or not hasattr(module, "Request") or not hasattr(module, "Response"):
        raise TypeError(f"{type(transport).__qualname__} is not an httpx transport (module {name!r})")
    return module


class HttpxExchange:
    """Sends the buyer's requests through an async httpx transport (``handle_async_request``)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.httpx = httpx_module(transport)

    def _request(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None) -> Any:
        fields = {k: v for k, v in (headers or {}).items() if k.lower() not in HOP_HEADERS}
        return self.httpx.Request(method, url, headers=fields, content=data)

    async def send(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   follow_redirects: bool = False, once: bool = False, keep_open: bool = False,
                   omit_headers: Sequence[str] = (), max_header_bytes: int | None = None) -> PaidResponse:
        """One request, its answer read whole (``keep_open`` is not taken up). The httpx client above
        follows redirects, so none is followed here; httpx transports do not resend a request that
        reached the server, so ``once`` holds as it is. Raises TransportError."""
        request = self._request(method, url, data, headers)
        try:
            response = await self.transport.handle_async_request(request)
        except self.httpx.TransportError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        try:
            body = await response.aread()
        except self.httpx.TransportError as exc:
            await response.aclose()
            raise TransportError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            await response.aclose()
            raise
        await response.aclose()
        return PaidResponse(response.status_code, headers_of(response.headers.multi_items()), body, url)


class SyncHttpxExchange(HttpxExchange):
    """The same over a sync httpx transport (``handle_request``): each request runs in a worker
    thread, so the buyer engine's loop (the sync paying transport's own) is never blocked."""

    async def send(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   follow_redirects: bool = False, once: bool = False, keep_open: bool = False,
                   omit_headers: Sequence[str] = (), max_header_bytes: int | None = None) -> PaidResponse:
        """As :meth:`HttpxExchange.send`; the answer is always read whole."""
        request = self._request(method, url, data, headers)

        def exchange() -> tuple[int, list[tuple[str, str]], bytes]:
            response = self.transport.handle_request(request)
            try:
                return response.status_code, response.headers.multi_items(), response.read()
            finally:
                response.close()

        try:
            status, fields, body = await asyncio.to_thread(exchange)
        except self.httpx.TransportError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        return PaidResponse(status, headers_of(fields), body, url)
