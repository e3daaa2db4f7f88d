"""Build and run the ASGI application of a seller configuration: `mpp seller serve --asgi`.

The same seller as mpp.cli.serve builds for aiohttp (the same configuration, stores, rail, price
list and stand-in service), served by Starlette through the ASGI adapter (mpp.asgi) under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mpp.asgi import Seller, grant_of, meter_of, payment_of, start_task, task_of
from mpp.cli import standin
from mpp.cli.config import RouteConfig, SellerConfig
from mpp.cli.serve import HEADER_LIMITS, rails_for, reload_price_list, seller_settings
from mpp.connect import ensure_open
from mpp.engine.config import with_price
from mpp.pricing import UnitOffer
from mpp.pricing.prices import Metered

__all__ = ["build_seller_asgi", "serve_asgi", "worker_tag", "quiet_server"]

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc), status, media_type="application/json; charset=utf-8")


def _resource(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return f"{request.method} {raw.decode('latin-1')}" + (f"?{query.decode('latin-1')}" if query else "")


def _query_int(request: Request, name: str, default: int, top: int) -> int:
    try:
        return standin.query_int(request.query_params, name, default, top)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _handler_for(route: RouteConfig | SimpleNamespace) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        body = await request.body() if route.response is None else b""
        return _json(standin.echo(_resource(request), route.response, body, payment_of(request)))

    return handler


def _metered_handler_for(route: RouteConfig | SimpleNamespace, metered: Metered) -> Callable[[Request], Any]:
    """``?units=N`` units used, or, streaming, ``?chunks=N`` chunks of ``?units`` units each."""

    async def handler(request: Request) -> Response:
        meter = meter_of(request)
        if metered.stream:
            chunks = _query_int(request, "chunks", 5, 10_000)
            units = _query_int(request, "units", min(250, metered.max_units), metered.max_units)
            return await standin.stream(meter, request, chunks, units)
        units = _query_int(request, "units", 1, metered.max_units)
        meter.report(units)
        return _json(standin.metered_doc(_resource(request), route.response, units, metered.unit))

    return handler


def _listed_handler(seller: Seller) -> Callable[[Request], Any]:
    """Every route of the price list (one catch-all, so a reloaded list may add routes)."""
    async def handler(request: Request) -> Response:
        payment, task = payment_of(request), task_of(request)
        if payment is not None and payment.terms is not None and payment.terms.model == "task":
            control = await start_task(request, "t_" + secrets.token_urlsafe(12))
            return _json(await standin.task_started(control, bool(request.query_params.get("fail"))), 201)
        if task is not None:
            doc = await standin.follow_up(task, request.method, request.url.path)
            if doc is None:
                raise HTTPException(404, "no such task")
            return _json(doc)
        plist = seller.price_list
        raw = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        route = plist.route_for(request.method, raw) if plist is not None else None
        if route is None:
            raise HTTPException(404)
        if any(isinstance(o, UnitOffer) for o in route.offers) and grant_of(request) is None:
            return await _metered_handler_for(SimpleNamespace(response=None), route.price())(request)
        body = await request.body()
        return _json(standin.echo(_resource(request), standin.listed_result(route, body), body, payment_of(request)))

    return handler


def build_seller_asgi(config: SellerConfig) -> tuple[Starlette, Seller, Callable[[], bool] | None]:
    """The Starlette application, its seller, and the price-list reload (None without a list)."""
    rails, ledger = rails_for(config)
    seller = Seller(rails=rails, **seller_settings(config, ledger))
    prices = config.resolve(config.price_list) if config.price_list is not None else None
    if prices is not None:
        seller.load_prices(prices)  # PriceListError (source:LINE: problem): refused at start
    routes = []
    for route in config.routes:
        price = route.price
        handler = _metered_handler_for(route, price) if isinstance(price, Metered) else _handler_for(route)
        routes.append(Route(route.path, with_price(handler, price), methods=[route.method]))
    if prices is not None:
        routes.append(Route("/{tail:path}", _listed_handler(seller), methods=METHODS))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # PostgreSQL or a service: learn the ledger id first (a service: void in-doubt charges); evm:
            # check the node's chain, then reconcile. An embedded SQLite ledger: closed at the end.
            for rail in rails:
                if ledger is None or rail is not rails[0]:  # rails[0]: the embedded SQLite ledger's, if any
                    await stack.enter_async_context(contextlib.asynccontextmanager(rail.lifecycle)(app))
            if ledger is not None:
                stack.callback(ledger.close)
            for store in (seller.store, seller.session_store, seller.audit, seller.pricing_store):
                await ensure_open(store)
            for made_here in (seller.pricing_store, seller.audit):  # the seller closes its payment and session stores
                if made_here is not None:
                    stack.push_async_callback(made_here.close)
            yield

    app = Starlette(routes=routes, lifespan=lifespan)
    seller.setup(app)
    return app, seller, (lambda: reload_price_list(seller, prices)) if prices is not None else None


class _Server(uvicorn.Server):
    """uvicorn, with SIGINT and SIGTERM left to the caller's loop (uvicorn's own handling re-raises
    the signal after a graceful stop, which would end the process with the signal's status)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def quiet_server(app: Any) -> uvicorn.Server:
    """uvicorn for ``app``: h11 with header fields up to the aiohttp seller's limit (credentials may
    be large), warnings only, no access log, signals left to the caller."""
    return _Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, http="h11",
                                  h11_max_incomplete_event_size=HEADER_LIMITS["max_field_size"] * 2))


async def serve_asgi(app: Starlette, sock: socket.socket, on_ready: Callable[[], None],
                     reload: Callable[[], bool] | None) -> int:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM; SIGHUP runs ``reload``. The exit status."""
    server = quiet_server(app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    loop.add_signal_handler(signal.SIGHUP, reload if reload is not None else (lambda: None))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        on_ready()
    try:
        await serving
    except SystemExit as exc:  # uvicorn's way of saying the application did not start
        return int(exc.code or 1)
    return 0 if server.started else 1


def worker_tag(app: Any, index: int) -> Any:
    """``app`` with the worker's index on every response (``MPP-Worker``, as the aiohttp workers)."""
    from mpp.aio.workers import WORKER_HEADER

    name = WORKER_HEADER.lower().encode()

    async def tagged(scope: dict, receive: Any, send: Any) -> None:
        async def tag(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (name, str(index).encode())]}
            await send(message)

        await app(scope, receive, tag if scope["type"] == "http" else send)

    return tagged
