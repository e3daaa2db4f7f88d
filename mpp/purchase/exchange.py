"""What the buyer engine asks of an HTTP client: one request out, one answer back.

:class:`~mpp.purchase.client.Buyer` makes every decision and every check; an :class:`Exchange`
only carries bytes. Each transport supplies one: :class:`mpp.aio.AiohttpExchange` over an
aiohttp session, :class:`mpp.httpx.HttpxExchange` over any httpx transport, and the MCP client's
carrier (:mod:`mpp.mcp.client`), which speaks a tool call. An exchange raises
:class:`TransportError` (and nothing framework-specific) when no answer came, so the engine
tells "nothing sent" and "outcome unknown" apart the same way for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Protocol, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

from mpp.buyer.core import Quote
from mpp.protocol.models import PaymentReceipt

__all__ = ["Exchange", "EventLines", "PaidResponse", "TransportError", "headers_of"]


class TransportError(Exception):
    """No answer came: the connection failed, broke off or timed out, or the transport refused to
    send (a credential it would have sent twice). Whether a credential went out decides what the
    buyer makes of it: nothing paid (SellerUnreachable) or outcome unknown (OutcomeUnknown)."""


class EventLines(Protocol):
    """A kept-open ``text/event-stream`` answer, read line by line."""

    def lines(self) -> AsyncIterator[bytes]:
        """The body's lines as they arrive, each with its line end; raises TransportError if the
        stream breaks off."""
        ...

    def close(self) -> None:
        """Stop reading and let the connection go; safe to call again."""
        ...


class Exchange(Protocol):
    """Carries one request and brings back its answer, read whole (or, with ``keep_open``, a 2xx
    event stream left open). Makes no decision of its own: redirects are followed only when
    ``follow_redirects`` says so, and with ``once`` the request is never sent a second time (no
    silent retry on a dropped connection): it carries a credential."""

    async def send(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   follow_redirects: bool = False, once: bool = False, keep_open: bool = False,
                   omit_headers: Sequence[str] = (), max_header_bytes: int | None = None) -> "PaidResponse":
        """The answer; ``omit_headers`` are headers the client must not add by itself (a POST's
        default ``Content-Type``), ``max_header_bytes`` raises the limit on one header field (a final
        session receipt lists every usage line). Raises TransportError when no answer came."""
        ...


def headers_of(pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """An answer's header fields as the buyer keeps them: case-insensitive, repeated fields kept."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return CIMultiDictProxy(CIMultiDict(items))


@dataclass
class PaidResponse:
    """The final response, and what was paid for it (``receipt`` is None if nothing was paid).

    ``session`` is the id of the session that paid for it, if one did; ``grant`` the ``jti`` of
    the grant that covered it, if one did (nothing is paid then). ``stream`` is the still open
    ``text/event-stream`` (only from :meth:`~mpp.purchase.client.Buyer.stream`). ``history`` lists
    the URLs of the redirects followed before this answer, first hop first.
    """

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    receipt: PaymentReceipt | None = None
    claims: dict[str, Any] | None = None
    quote: Quote | None = None
    session: str | None = None
    grant: str | None = None
    stream: EventLines | None = field(default=None, repr=False)
    history: tuple[str, ...] = ()

    @property
    def paid(self) -> bool:
        """True when the response came with a verified receipt: something was paid for it (a charge, a seat
        or a session's use); False for an unpriced answer or a request a grant covered."""
        return self.receipt is not None

    def text(self) -> str:
        """The body decoded as UTF-8, undecodable bytes replaced (empty for a kept-open stream)."""
        return self.body.decode("utf-8", errors="replace")
