"""The buyer over aiohttp: :class:`PaymentClient`, the buyer engine (:class:`mpp.purchase.Buyer`)
carried by an aiohttp ``ClientSession``.

It never sends a credential to an origin other than the one the caller asked for, never
follows a redirect with a credential, and treats a 5xx or a network error after paying as
"outcome unknown" rather than trying again and perhaps paying twice; the decisions are the
engine's, the :class:`AiohttpExchange` below only carries the bytes.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping, Sequence

import aiohttp

from mpp.buyer.core import BuyerPolicy
from mpp.methods import BuyerMethod
from mpp.purchase.client import Buyer
from mpp.purchase.exchange import PaidResponse, TransportError

__all__ = ["PaymentClient", "AiohttpExchange", "CredentialResendBlocked"]


class PaymentClient(Buyer):
    """Pays for requests over an aiohttp ``session`` with ``methods``, within ``policy``; the other
    options (``identity``, ``sessions``, ``plan``, ``clock``, ``on_event``) are
    :class:`~mpp.purchase.client.Buyer`'s. The caller owns and closes ``session``."""

    def __init__(self, session: aiohttp.ClientSession, methods: Sequence[BuyerMethod], policy: BuyerPolicy,
                 **options: Any) -> None:
        self.session = session
        super().__init__(methods, policy, exchange=AiohttpExchange(session), **options)


class CredentialResendBlocked(aiohttp.ClientError):
    """aiohttp wanted to send the credential a second time; we do not."""


class AiohttpExchange:
    """An :class:`~mpp.purchase.exchange.Exchange` over an aiohttp ``session`` (not owned)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   follow_redirects: bool = False, once: bool = False, keep_open: bool = False,
                   omit_headers: Sequence[str] = (), max_header_bytes: int | None = None) -> PaidResponse:
        """One request through the session (see :class:`~mpp.purchase.exchange.Exchange`); aiohttp's
        errors come out as TransportError."""
        options: dict[str, Any] = {}
        if once:  # no silent resend by aiohttp's retry of idempotent requests on a dropped connection
            options["middlewares"] = (_send_once(),)
        if max_header_bytes is not None:
            options.update(max_field_size=max_header_bytes, max_line_size=max_header_bytes)
        try:
            resp = await self.session.request(method, url, data=data, headers=dict(headers or {}),
                                              allow_redirects=follow_redirects, skip_auto_headers=tuple(omit_headers), **options)
            return await _capture(resp, keep_open)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc


async def _capture(resp: aiohttp.ClientResponse, keep_open: bool) -> PaidResponse:
    """Read the response whole, or keep a 2xx event stream open for the caller."""
    history = tuple(str(h.url) for h in resp.history)
    try:
        if keep_open and 200 <= resp.status < 300 and resp.content_type == "text/event-stream":
            return PaidResponse(resp.status, resp.headers, b"", str(resp.url), stream=_Lines(resp), history=history)
        body = await resp.read()
    except BaseException:
        resp.close()
        raise
    resp.release()
    return PaidResponse(resp.status, resp.headers, body, str(resp.url), history=history)


class _Lines:
    """An open aiohttp event stream, line by line."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._resp.content:
                yield line
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._resp.close()


def _send_once():
    sent = False

    async def middleware(request: aiohttp.ClientRequest, handler):
        nonlocal sent
        if sent:
            raise CredentialResendBlocked("connection dropped after the credential was sent")
        sent = True
        return await handler(request)

    return middleware
