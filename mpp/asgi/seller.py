"""The seller for ASGI (Starlette and FastAPI): a middleware over the framework-neutral engine.

    seller = Seller(realm="api.example.com", secret=..., receipt_key=..., rails=[rail], store=store)

    app = FastAPI()

    @app.get("/forecast")
    @seller.price(amount=100, currency="usd", description="one forecast")
    async def forecast(request: Request): ...

    seller.setup(app)

The price decorators and price lists are the aiohttp seller's (:class:`mpp.engine.config.SellerConfig`);
put ``@seller.price`` under the framework's route decorator, so the route holds the priced function.
The middleware finds the route a request matches in the application's route table, and hands
priced requests to :class:`mpp.engine.SellerEngine`; free ones go straight through. It serves
the JWKS, OpenAPI and session endpoints itself, and starts and stops the seller with the
application's lifespan (or, without one, at the first request).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, MutableMapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount, Route

from mpp.engine.attribution import start_request
from mpp.engine import guard
from mpp.engine.config import price_of
from mpp.engine.front import SellerFront
from mpp.engine.http import HttpRequest, HttpResponse, Served
from mpp.engine.meters import Meter
from mpp.engine.publish import JWKS_PATH, OPENAPI_PATH
from mpp.engine.purchase import Context, Payment, TaskControl
from mpp.engine.session_close import SESSION_PATH
from mpp.pricing.prices import Metered, Price

__all__ = ["Seller", "PaymentMiddleware", "payment_of", "meter_of", "start_task", "task_of", "grant_of",
           "MAX_BODY", "JWKS_PATH", "OPENAPI_PATH", "SESSION_PATH"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTEXT_KEY = "mpp.context"  # the scope entry a handler's payment, meter, task or grant is read from
SELLER_KEY = "mpp.seller"
MAX_BODY = 1024 ** 2
"""The largest priced request body read (aiohttp's default client_max_size)"""


@dataclass
class Seller(SellerFront):
    """A seller served by an ASGI application: configure it (see :class:`mpp.engine.config.SellerConfig`),
    price endpoints with :meth:`price` and :meth:`meter`, then ``setup(app)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guard = functools.partial(_guarded, self)  # priced endpoints refuse outside the middleware

    def setup(self, app: Any) -> None:
        """Mount the seller on a Starlette or FastAPI application (before it starts)."""
        app.add_middleware(PaymentMiddleware, seller=self)

    def priced_routes(self, app: Any) -> Iterable[tuple[str, str, Price | Metered]]:
        """(method, path, price) of every priced route of a Starlette or FastAPI application."""
        yield from _priced(getattr(app, "routes", ()), "")


def _guarded(seller: Seller, handler: Any) -> Any:
    """A priced endpoint that refuses (503 ``seller-misconfigured``, logged once) when the payment
    middleware did not handle the request: forgetting ``setup(app)`` never serves for free (CORE-ERR-14)."""
    def refusal() -> Response:
        guard.report_unmounted(seller, handler)
        return JSONResponse(guard.unmounted_problem(), status_code=503, media_type="application/problem+json",
                            headers={"Retry-After": guard.RETRY_AFTER, "Cache-Control": "no-store"})

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            return await handler(*args, **kwargs) if guard.mounted() else refusal()
    else:
        @functools.wraps(handler)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, **kwargs) if guard.mounted() else refusal()
    return guarded


class PaymentMiddleware:
    """The ASGI middleware: ``app.add_middleware(PaymentMiddleware, seller=seller)``, or wrap any
    ASGI application whose scope carries the Starlette application (``scope["app"]``)."""

    def __init__(self, app: ASGIApp, *, seller: Seller) -> None:
        self.app = app
        self.seller = seller
        self._started = False
        self._starting = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = guard.entered()
        try:
            await self._http(scope, receive, send)
        finally:
            guard.left(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._start(scope.get("app"))
        start_request()
        scope[SELLER_KEY] = self.seller
        own = await self._own_endpoint(scope, receive)
        if own is not None:
            return await _send_answer(send, own)
        route, routed = _match(scope)
        price = price_of(route.endpoint) if route is not None else None
        if price is None and (self.seller.price_list is None or not routed):
            return await self.app(scope, receive, send)
        body = _Body(receive)
        request = _neutral(scope, body.read)
        engine = self.seller.engine

        async def serve(context: Context) -> Served:
            scope[CONTEXT_KEY] = context
            captured = _Captured()
            if context.meter is not None:
                context.meter.sink = _Sink(send, lambda status, headers: engine.paid_headers(context, status, headers))
            await self.app(scope, body.replay, captured.send)
            if _streamed(context):
                return Served(200, native=captured)
            return Served(captured.status, list(captured.headers), captured.whole, native=captured)

        try:
            answer = await engine.handle(request, serve, price, listed=routed)
        except _TooLarge:
            return await _send_answer(send, HttpResponse(413, [("Content-Type", "text/plain; charset=utf-8")],
                                                         b"request body too large"))
        if isinstance(answer, HttpResponse):
            return await _send_answer(send, answer)
        context = scope.get(CONTEXT_KEY)
        if _streamed(context):  # the meter's stream has gone out whole (also when the engine ended it)
            return
        replaced = {name.lower() for name in answer.set_headers}
        headers = [(k, v) for k, v in answer.headers if k.lower() not in replaced] + list(answer.set_headers.items())
        if context is not None and (context.payment is not None or answer.status >= 400):
            headers = engine.paid_headers(context, answer.status, headers)
        await answer.native.replay(send, answer.status, headers)

    async def _start(self, app: Any) -> None:
        if self._started:
            return
        async with self._starting:
            if not self._started:
                await self.seller.start_serving(self.seller.priced_routes(app) if app is not None else ())
                self._started = True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application's own start-up runs first (it may open the stores), then the seller's;
        at shutdown the seller stops first."""

        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._started:
                await self.seller.stop_serving()
                self._started = False
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._start(scope.get("app"))
                except Exception as exc:  # noqa: BLE001 - reported to the server, which refuses to start
                    return await send({"type": "lifespan.startup.failed", "message": str(exc)})
            await send(message)

        await self.app(scope, on_receive, on_send)

    async def _own_endpoint(self, scope: Scope, receive: Receive) -> HttpResponse | None:
        """The seller's own endpoints: JWKS and OpenAPI (GET, HEAD), the session endpoint (POST)."""
        method, path = scope["method"], scope["path"]
        engine = self.seller.engine
        if path in (JWKS_PATH, OPENAPI_PATH):
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            answer = engine.jwks() if path == JWKS_PATH else engine.openapi(self.seller.priced_routes(scope.get("app")))
            if method == "HEAD":  # the GET's headers, its length included, without the body
                return HttpResponse(answer.status, [*answer.headers, ("Content-Length", str(len(answer.body)))])
            return answer
        if path == SESSION_PATH and self.seller.sessions is not None:
            if method != "POST":
                return _not_allowed("POST")
            try:
                return await self.seller.sessions.endpoint(_neutral(scope, _Body(receive).read))
            except _TooLarge:
                return HttpResponse(413, [("Content-Type", "text/plain; charset=utf-8")], b"request body too large")
        return None


class _TooLarge(Exception):
    """The request body is over MAX_BODY."""


class _Body:
    """The request body, read whole once for the engine and handed to the application again."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.body: bytes | None = None

    async def read(self) -> bytes:
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return self.body

    async def replay(self) -> Message:
        if self.body is None:
            return await self.receive()
        body, self.body = self.body, None
        return {"type": "http.request", "body": body, "more_body": False}


class _Captured:
    """What the application sent, held until the engine has recorded the payment."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def whole(self) -> bytes:
        return b"".join(self.chunks)

    async def replay(self, send: Send, status: int, headers: list[tuple[str, str]]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _encoded(headers)})
        await send({"type": "http.response.body", "body": self.whole, "more_body": False})


class _Sink:
    """A metered handler's event stream, sent as it is written."""

    def __init__(self, send: Send, finish_headers: Callable[[int, list[tuple[str, str]]], list[tuple[str, str]]]) -> None:
        self.send = send
        self.finish_headers = finish_headers
        self.started = False

    async def start(self, headers: dict[str, str]) -> Response:
        final = self.finish_headers(200, list(headers.items()))
        await self.send({"type": "http.response.start", "status": 200, "headers": _encoded(final)})
        self.started = True
        return _AlreadySent()

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> Response:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return _AlreadySent()


class _AlreadySent(Response):
    """What a streaming handler returns: its answer has gone out through the meter."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def _not_allowed(allow: str) -> HttpResponse:
    return HttpResponse(405, [("Allow", allow), ("Content-Type", "text/plain; charset=utf-8")], b"method not allowed")


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as ASGI sends them: names lowercased, both as bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _streamed(context: Context | None) -> bool:
    """The request's metered stream has started: its answer goes out through the sink only."""
    return context is not None and context.meter is not None and getattr(context.meter.sink, "started", False)


async def _send_answer(send: Send, answer: HttpResponse) -> None:
    headers = _encoded(answer.headers)
    if not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def _neutral(scope: Scope, reader: Callable[[], Awaitable[bytes]]) -> HttpRequest:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    return HttpRequest(scope["method"], path, scope.get("query_string", b"").decode("latin-1"),
                       [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])], reader=reader)


def _match(scope: Scope) -> tuple[Route | None, bool]:
    """The route the request matches fully (None, False when only the path or nothing matches)."""
    app = scope.get("app")
    return _match_in(getattr(app, "routes", ()), dict(scope))


def _match_in(routes: Iterable[Any], scope: dict[str, Any]) -> tuple[Route | None, bool]:
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if isinstance(route, Mount) and getattr(route, "routes", None):
                return _match_in(route.routes, {**scope, **child})
            return (route if isinstance(route, Route) else None), True
    return None, False


def _priced(routes: Iterable[Any], prefix: str) -> Iterable[tuple[str, str, Price | Metered]]:
    for route in routes:
        if isinstance(route, Mount) and getattr(route, "routes", None):
            yield from _priced(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            price = price_of(route.endpoint)
            for method in sorted(route.methods or ()):
                if price is not None and method != "HEAD":
                    yield method, prefix + route.path, price


def _context(request: Request) -> Context | None:
    return request.scope.get(CONTEXT_KEY)


def payment_of(request: Request) -> Payment | None:
    """The payment that let this request run, or None."""
    context = _context(request)
    return context.payment if context is not None else None


def meter_of(request: Request) -> Meter:
    """The meter of a metered route's request (LookupError on any other)."""
    context = _context(request)
    if context is None or context.meter is None:
        raise LookupError("this request was not paid through a metered route")
    return context.meter


async def start_task(request: Request, task_id: str) -> TaskControl:
    """Name the task the paid request started (PRICE-TASK-02), from the handler of a task offer's
    route: the response then carries the task grant, and the receipt the task id."""
    context = _context(request)
    if context is None or context.payment is None or context.payment.terms is None or context.payment.terms.model != "task":
        raise RuntimeError("start_task is for the handler of a route bought with a task offer")
    seller: Seller = request.scope[SELLER_KEY]
    context.task = await seller.engine.offers.start_task(context.payment, task_id)
    return context.task


def task_of(request: Request) -> TaskControl | None:
    """In a follow-up's handler: the task of the path, its grant verified."""
    context = _context(request)
    return context.task if context is not None else None


def grant_of(request: Request) -> Any:
    """The verified grant (mpp.pricing.Grant) a request was served on without payment, if any."""
    context = _context(request)
    return context.grant if context is not None else None
