"""The seller for aiohttp: a middleware over the framework-neutral engine (mpp.engine).

    seller = Seller(realm="api.example.com", secret=..., receipt_key=..., rails=[rail], store=store)

    @seller.price(amount=100, currency="usd", description="one forecast")
    async def forecast(request): ...

    app = web.Application()
    app.router.add_get("/forecast", forecast)
    seller.setup(app)

What a purchase is (verify, identity, claim, settle, serve, receipt, refund) lives in
:class:`mpp.engine.SellerEngine`; this module only turns aiohttp requests and responses into the
engine's and back. Prices may also come from a price list (spec/pricing.md):
``Seller(price_list=load_price_list(...))`` prices every route the list names; ``reload_prices``
swaps the list while the seller runs. A task offer's handler names its task with ``await
start_task(request, task_id)`` and finishes it with ``seller.finish_task``; follow-ups and
seat-covered routes are served to a valid grant and proof without payment.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web
from multidict import CIMultiDict

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

__all__ = ["Seller", "HEADER_LIMITS", "Payment", "TaskControl", "SELLER_KEY", "PAYMENT_KEY", "payment_of", "meter_of", "start_task",
           "task_of", "grant_of", "JWKS_PATH", "OPENAPI_PATH", "SESSION_PATH"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADER_LIMITS = {"max_field_size": 32768, "max_line_size": 32768}
"""Header limits for ``web.AppRunner(app, **HEADER_LIMITS)``: credentials carry mandate chains and
approvals, so header fields up to 32 KiB are accepted instead of aiohttp's 8 KiB."""
_CONTEXT_KEY = web.RequestKey("mpp_context", Context) if hasattr(web, "RequestKey") else "mpp_context"


@dataclass
class Seller(SellerFront):
    """A seller served by aiohttp: configure it (see :class:`mpp.engine.config.SellerConfig`),
    price handlers with :meth:`price` and :meth:`meter` or :meth:`add_route`, then ``setup(app)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._route_prices: dict[int, Price | Metered] = {}
        self.guard = functools.partial(_guarded, self)  # priced handlers refuse outside the middleware

    def add_route(self, router: web.UrlDispatcher, method: str, path: str, handler: Handler,
                  price: Price | Metered | None) -> web.AbstractRoute:
        """Route-table style: register a route and its price (``None`` for a free route)."""
        route = router.add_route(method, path, self.guard(handler) if price is not None else handler)
        if price is not None:
            self._route_prices[id(route)] = price
        return route

    def price_for(self, request: web.Request) -> Price | Metered | None:
        """The price of the route the request matched: its route-table price, else its handler's."""
        price = self._route_prices.get(id(request.match_info.route))
        return price if price is not None else price_of(request.match_info.handler)

    def priced_routes(self, app: web.Application) -> Iterable[tuple[str, str, Price | Metered]]:
        """(method, path, price) of every priced route of ``app``."""
        for route in app.router.routes():
            price = self._route_prices.get(id(route)) or price_of(route.handler)
            if price is not None and route.method != "HEAD":
                yield route.method, route.resource.canonical, price

    # -- wiring ------------------------------------------------------------------

    def setup(self, app: web.Application) -> None:
        """Mount the seller on ``app``: the middleware, the receipt hook, the JWKS, OpenAPI and
        session endpoints, and start-up and clean-up."""
        app[SELLER_KEY] = self
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self._on_response_prepare)
        app.router.add_get(JWKS_PATH, self._publish)
        app.router.add_get(OPENAPI_PATH, self._publish)
        if self.sessions is not None:
            app.router.add_post(SESSION_PATH, self._session_endpoint)
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app: web.Application):
        await self.start_serving(self.priced_routes(app))
        yield
        await self.stop_serving()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request through the engine: free ones straight to the handler."""
        token = guard.entered()
        try:
            return await _through_engine(self, request, handler)
        finally:
            guard.left(token)

    async def _on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        context: Context | None = request.get(_CONTEXT_KEY)
        if context is None or (context.payment is None and response.status < 400):
            return
        headers = self.engine.paid_headers(context, response.status, list(response.headers.items()))
        response.headers.clear()
        response.headers.extend(headers)

    async def _publish(self, request: web.Request) -> web.Response:
        if request.path == JWKS_PATH:
            return _response(self.engine.jwks())
        return _response(self.engine.openapi(self.priced_routes(request.app)))

    async def _session_endpoint(self, request: web.Request) -> web.Response:
        assert self.sessions is not None
        return _response(await self.sessions.endpoint(_neutral(request)))


def _guarded(seller: Seller, handler: Any) -> Any:
    """A priced handler that refuses (503 ``seller-misconfigured``, logged once) when no payment
    middleware handled the request: forgetting ``setup(app)`` never serves for free (CORE-ERR-14)."""
    if not inspect.iscoroutinefunction(handler):
        return handler

    @functools.wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        if not guard.mounted():
            guard.report_unmounted(seller, handler)
            return web.json_response(guard.unmounted_problem(), status=503, content_type="application/problem+json",
                                     headers={"Retry-After": guard.RETRY_AFTER, "Cache-Control": "no-store"})
        return await handler(*args, **kwargs)

    return guarded


async def _through_engine(seller: Seller, request: web.Request, handler: Handler) -> web.StreamResponse:
    """The middleware's work: free requests straight to the handler, priced ones through the engine."""
    start_request()
    routed = request.match_info.http_exception is None
    price = seller.price_for(request)
    if price is None and (seller.price_list is None or not routed):
        return await handler(request)

    async def serve(context: Context) -> Served:
        request[_CONTEXT_KEY] = context
        if context.payment is not None:
            request[PAYMENT_KEY] = context.payment
        if context.meter is not None:
            context.meter.sink = _Sink(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            return Served(exc.status, native=exc, raised=exc)
        body = response.body if isinstance(response, web.Response) and isinstance(response.body, (bytes, bytearray)) else None
        return Served(response.status, list(response.headers.items()), bytes(body) if body is not None else None,
                      native=response)

    answer = await seller.engine.handle(_neutral(request), serve, price, listed=routed)
    return _native(answer)


class _Sink:
    """A metered handler's event stream, as an aiohttp StreamResponse."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def start(self, headers: dict[str, str]) -> web.StreamResponse:
        self.response = web.StreamResponse(headers=headers)
        await self.response.prepare(self.request)
        return self.response

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def end(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response


def _neutral(request: web.Request) -> HttpRequest:
    return HttpRequest(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                       list(request.headers.items()), reader=request.read)


def _response(answer: HttpResponse) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=CIMultiDict(answer.headers))


def _native(answer: HttpResponse | Served) -> web.StreamResponse:
    if isinstance(answer, HttpResponse):
        return _response(answer)
    if answer.raised is not None:
        raise answer.raised
    response = answer.native
    for name, value in answer.set_headers.items():
        response.headers[name] = value
    return response


def _context(request: web.Request) -> Context | None:
    return request.get(_CONTEXT_KEY)


def payment_of(request: web.Request) -> Payment | None:
    """The payment that let this request run, or None."""
    context = _context(request)
    return context.payment if context is not None else None


def meter_of(request: web.Request) -> Meter:
    """The meter of a metered route's request (LookupError on any other)."""
    context = _context(request)
    if context is None or context.meter is None:
        raise LookupError("this request was not paid through a metered route")
    return context.meter


async def start_task(request: web.Request, task_id: str) -> TaskControl:
    """Name the task the paid request started (PRICE-TASK-02). Call it from the handler of a
    task offer's route, before the response is prepared: the response then carries the task
    grant, and the receipt the task id. ValueError for an invalid or already used id."""
    context = _context(request)
    if context is None or context.payment is None or context.payment.terms is None or context.payment.terms.model != "task":
        raise RuntimeError("start_task is for the handler of a route bought with a task offer")
    seller = request.app[SELLER_KEY]
    context.task = await seller.engine.offers.start_task(context.payment, task_id)
    return context.task


def task_of(request: web.Request) -> TaskControl | None:
    """In a follow-up's handler: the task of the path, its grant verified."""
    context = _context(request)
    return context.task if context is not None else None


def grant_of(request: web.Request) -> Any:
    """The verified grant (mpp.pricing.Grant) a request was served on without payment, if any."""
    context = _context(request)
    return context.grant if context is not None else None


SELLER_KEY = web.AppKey("mpp_seller", Seller)
"""The aiohttp application key under which `Seller.setup` stores the seller, for handlers and startup hooks
that need it."""
PAYMENT_KEY = web.RequestKey("mpp_payment", Payment) if hasattr(web, "RequestKey") else "mpp_payment"
"""Request key under which a paid handler finds its Payment (payment_of(request) reads it too)."""
