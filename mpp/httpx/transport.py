"""Paying httpx transports: give one to an ``httpx.AsyncClient`` (or ``httpx.Client``) and every
request through it is paid, when the seller answers 402, by the buyer engine
(:class:`mpp.purchase.Buyer`): the offer the policy and the mandate allow, the quote checked
before anything is signed, the budget reserved, the credential sent once to the origin that asked,
the receipt verified, sessions reused, grants presented.

    transport = AsyncPaymentTransport([LedgerBuyerMethod(key=key, account="acct:me")], BuyerPolicy(max_amount=500),
                                      identity=AgentIdentity(key=key, mandates=[mandate], budget=budget))
    async with httpx.AsyncClient(transport=transport) as http:
        r = await http.get("https://api.example.com/forecast")
        payment_of(r).receipt      # the verified receipt (None if nothing was paid)
    await transport.aclose()       # closes open sessions, then the wrapped transport

A refusal is raised out of the client call as the buyer's own error (:class:`mpp.BuyerError`:
``BudgetExceeded``, ``QuoteRejected``, ``OutcomeUnknown``...), nothing signed or sent when the
policy refused. Redirects are followed by the httpx client above the transport; the first URL
of a request rides along in ``request.extensions`` so a 402 on a hop to another origin is
refused, and no credential is ever sent again on a hop (the client rebuilds the request from the
caller's headers, which never held it).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, Sequence, TypeVar

from mpp.buyer.core import BuyerPolicy
from mpp.httpx.exchange import HOP_HEADERS, HttpxExchange, SyncHttpxExchange
from mpp.methods import BuyerMethod
from mpp.purchase.client import Buyer
from mpp.purchase.exchange import PaidResponse

__all__ = ["AsyncPaymentTransport", "PaymentTransport", "payment_of", "PAYMENT_EXTENSION", "FIRST_URL_EXTENSION"]

PAYMENT_EXTENSION = "mpp.payment"
"""The response extension holding what was paid for it (:class:`~mpp.purchase.exchange.PaidResponse`)."""
FIRST_URL_EXTENSION = "mpp.first_url"
"""The request extension the transport marks with the URL a request was first made to; httpx copies a
request's extensions onto each redirect it follows."""
_DECODED = frozenset({"content-encoding", "content-length", "transfer-encoding"})
T = TypeVar("T")


def payment_of(response: Any) -> PaidResponse | None:
    """What a paying transport paid for ``response``: its receipt, verified claims, quote, session or
    grant (``None`` for a response that did not pass through one)."""
    return response.extensions.get(PAYMENT_EXTENSION)


def _default_transport(sync: bool) -> Any:
    try:
        import httpx
    except ImportError:
        import httpx2 as httpx  # type: ignore[no-redef]
    return httpx.HTTPTransport() if sync else httpx.AsyncHTTPTransport()


class _Paying:
    """What both transports share: the buyer, and how an httpx request becomes a purchase."""

    buyer: Buyer

    def _setup(self, exchange: HttpxExchange, methods: Sequence[BuyerMethod], policy: BuyerPolicy, options: dict[str, Any]) -> None:
        self.buyer = Buyer(methods, policy, exchange=exchange, **options)
        self._httpx = exchange.httpx

    async def _pay(self, request: Any, body: bytes) -> Any:
        url = str(request.url)
        first = request.extensions.setdefault(FIRST_URL_EXTENSION, url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        paid = await self.buyer.request(request.method, url, data=body or None, headers=headers,
                                        redirected_from=first if first != url else None)
        # The body was decoded when read: the response handed up carries it as it is.
        fields = [(k, v) for k, v in paid.headers.items() if k.lower() not in _DECODED]
        return self._httpx.Response(paid.status, headers=fields, content=paid.body, request=request,
                                    extensions={PAYMENT_EXTENSION: paid})


class AsyncPaymentTransport(_Paying):
    """An async httpx transport that pays (see the module). ``transport`` is the one that carries the
    bytes (default: a new ``httpx.AsyncHTTPTransport``, or httpx2's when only httpx2 is installed;
    pass an ``httpx2`` transport to use httpx2, e.g. under pydantic-ai). The other options
    (``identity``, ``sessions``, ``plan``, ``clock``, ``on_event``) are :class:`~mpp.purchase.client.Buyer`'s."""

    def __init__(self, methods: Sequence[BuyerMethod], policy: BuyerPolicy, *, transport: Any = None, **options: Any) -> None:
        self.transport = transport if transport is not None else _default_transport(sync=False)
        self._setup(HttpxExchange(self.transport), methods, policy, options)

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request``, paying a 402 once within the buyer's policy; the buyer's errors are raised."""
        return await self._pay(request, await request.aread())

    async def aclose(self) -> None:
        """Close the buyer's open sessions (their final receipts checked), then the wrapped transport."""
        try:
            await self.buyer.close_sessions()
        finally:
            await self.transport.aclose()

    async def __aenter__(self) -> "AsyncPaymentTransport":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class PaymentTransport(_Paying):
    """The sync httpx transport that pays, for ``httpx.Client``: the same buyer, run on an event loop
    of its own in a background thread (the wrapped sync ``transport`` is called from worker threads).
    Hooks (``on_event``, an identity's ``approver``) run on that loop."""

    def __init__(self, methods: Sequence[BuyerMethod], policy: BuyerPolicy, *, transport: Any = None, **options: Any) -> None:
        self.transport = transport if transport is not None else _default_transport(sync=True)
        self._setup(SyncHttpxExchange(self.transport), methods, policy, options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="mpp-httpx-buyer", daemon=True)
                self._thread.start()
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def handle_request(self, request: Any) -> Any:
        """Send ``request``, paying a 402 once within the buyer's policy; the buyer's errors are raised."""
        body = request.read()
        return self._run(lambda: self._pay(request, body))

    def close(self) -> None:
        """Close the buyer's open sessions, stop the buyer's loop, then close the wrapped transport."""
        try:
            if self._loop is not None:
                self._run(self.buyer.close_sessions)
        finally:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                assert self._thread is not None
                self._thread.join(timeout=5)
                self._loop.close()
                self._loop = None
            self.transport.close()

    def __enter__(self) -> "PaymentTransport":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
