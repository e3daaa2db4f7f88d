"""The seller for MCP servers: paid tool calls over the framework-neutral seller engine.

    seller = Seller(realm="tools.example.com", secret=..., receipt_key=..., rails=[rail], store=store)
    server = MCPServer("weather")          # or the low-level mcp.server.lowlevel.Server

    @server.tool()
    @seller.price_tool("forecast", 100, "usd", "one forecast")
    async def forecast(city: str) -> str:
        payment = payment_of()             # who paid: payment.payer, payment.claims["agent"], ...
        ...

    seller.setup(server)
    run_stdio(server)                      # or serve it over any MCP transport

Each ``tools/call`` of a priced tool is the request ``POST /tools/<name>`` to the engine, its
arguments the JSON body (RFC 8785), so per-tool prices, a price list and required identity work
as for an HTTP route (spec/transports/mcp.md, MCP-TOOL-01). The engine's answers become
JSON-RPC: a 402 the error -32042 with the challenges, a refused credential -32043, a malformed
one -32602, the seller's own failure -32603; a paid call's result carries the receipt in
``_meta``. ``setup`` installs a server middleware (so it serves the high-level ``MCPServer`` and
the low-level ``Server`` alike), advertises ``capabilities.experimental.payment`` and starts and
stops the seller with the server's lifespan.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping

from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from mpp.engine.attribution import start_request
from mpp.engine.front import SellerFront
from mpp.engine.http import HttpRequest, HttpResponse, Served
from mpp.engine.purchase import Context, Payment
from mpp.mcp.wire import (INTERNAL_ERROR, INVALID_PARAMS, META_CREDENTIAL, META_RECEIPT, PAYMENT_REQUIRED, TOOLS_PREFIX,
                          VERIFICATION_FAILED, authorization_of, challenge_from_object, challenge_object, tool_path)
from mpp.pricing import PriceList
from mpp.pricing.prices import Metered, Price
from mpp.protocol.errors import ParseError
from mpp.protocol.headers import parse_challenges
from mpp.protocol.wire import canonical_json, decode_json_b64

__all__ = ["Seller", "PaymentMiddleware", "payment_of", "serve_stdio", "run_stdio", "SessionsUnsupported", "ToolNotSetUp"]

CallNext = Callable[[Any], Awaitable[Any]]
_CONTEXT: ContextVar[Context | None] = ContextVar("mpp_mcp_context", default=None)
_MALFORMED = "malformed-credential"


class SessionsUnsupported(ValueError):
    """A tool was priced with an offer the MCP transport cannot carry: per-unit (sessions), task or
    seat offers need HTTP headers or a stream (MCP-TOOL-04)."""


@dataclass
class Seller(SellerFront):
    """A seller for MCP servers: configure it as any seller (:class:`mpp.engine.config.SellerConfig`),
    price tools with :meth:`price_tool` (or a price list's ``POST /tools/<name>`` routes), then
    ``setup(server)``."""

    def __post_init__(self) -> None:
        if self.price_list is not None:  # before the engine, whose own refusal would not name MCP
            check_tool_offers(self.price_list)
        super().__post_init__()
        self.tools: dict[str, Price] = {}
        self._serving = 0
        self._starting = asyncio.Lock()
        self._set_up: set[int] = set()

    def price_tool(self, name: str, amount: int, currency: str, description: str | None = None, *,
                   require_identity: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Tool ``name`` costs ``amount`` base units of ``currency`` per call; with ``require_identity``
        only agents presenting a mandate chain may buy it (a mandate's scope names it as
        ``POST /tools/<name>``).

        Returns a decorator for the tool's function (put it under ``@server.tool()``): the function
        then refuses to run unless the payment middleware handled the call, so a server whose
        ``setup`` was forgotten fails closed (an error result) instead of giving the tool away."""
        if not isinstance(name, str) or not name:
            raise ValueError("a tool name is a non-empty string")
        self.tools[name] = Price(amount, currency, description, require_identity)
        return functools.partial(_paid_only, name)

    def price(self, *args: Any, **kwargs: Any) -> Any:
        """Not for MCP: tools are priced by name (:meth:`price_tool`)."""
        raise TypeError("an MCP seller prices tools by name: seller.price_tool(name, amount, currency, ...)")

    def meter(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: the MCP transport has no sessions, so no tool is priced per unit (MCP-TOOL-04)."""
        raise SessionsUnsupported("the MCP payment transport has no sessions: a tool cannot be priced per unit; "
                                  "price it per call with price_tool")

    def reload_prices(self, text: str, source: str) -> PriceList:
        """As :meth:`SellerFront.reload_prices`, refusing (and keeping the running list) a list that
        prices a tool with an offer MCP cannot carry (MCP-TOOL-04)."""
        from mpp.pricing import PriceListError, load_price_list

        try:
            check_tool_offers(load_price_list(text, source=source))
        except SessionsUnsupported as exc:
            raise PriceListError(source, [(1, str(exc))]) from None
        return super().reload_prices(text, source)

    def priced_tools(self) -> Iterable[tuple[str, str, Price | Metered]]:
        """(method, path, price) of every tool priced with :meth:`price_tool`."""
        return [("POST", tool_path(name), price) for name, price in self.tools.items()]

    def capability(self) -> dict[str, Any]:
        """``capabilities.experimental.payment``: the methods with their intents (the draft's
        shape), the intents, and the receipt keys as a JWKS (MCP-CAP-01)."""
        methods = list(self.engine.rails)
        return {"methods": {m: {"intents": ["charge"]} for m in methods}, "intents": ["charge"],
                "jwks": json.loads(self.engine.jwks().body)}

    # -- wiring ----------------------------------------------------------------

    def setup(self, server: Any) -> None:
        """Price the tools of ``server`` (an ``MCPServer`` or a low-level ``Server``), before it runs:
        install the payment middleware, advertise the capability, start and stop the seller with
        the server's lifespan. Refuses (SessionsUnsupported) a price list that prices a tool per unit."""
        low = lowlevel_server(server)
        if id(low) in self._set_up:
            return
        if self.price_list is not None:
            check_tool_offers(self.price_list)
        low.middleware.append(PaymentMiddleware(self))
        inner = low.lifespan

        @asynccontextmanager
        async def lifespan(s: Any) -> AsyncIterator[Any]:
            async with inner(s) as state:  # the server's own start-up first (it may open stores), then the seller's
                await self.start()
                try:
                    yield state
                finally:
                    await self.stop()

        low.lifespan = lifespan
        self._set_up.add(id(low))

    async def start(self) -> None:
        """Start serving (once however many connections the server runs; see :meth:`stop`)."""
        async with self._starting:
            if self._serving == 0:
                await self.start_serving(self.priced_tools())
            self._serving += 1

    async def stop(self) -> None:
        """One connection's lifespan ended; the seller stops with the last."""
        async with self._starting:
            self._serving -= 1
            if self._serving == 0:
                await self.stop_serving()


def lowlevel_server(server: Any) -> Server:
    """The low-level ``Server`` under ``server``: itself, or an ``MCPServer``'s (the SDK keeps it in
    a private attribute; mcp is pinned for that, pyproject.toml)."""
    if isinstance(server, Server):
        return server
    low = getattr(server, "_lowlevel_server", None)
    if not isinstance(low, Server):
        raise TypeError(f"not an MCP server: {type(server).__name__} (expected mcp's MCPServer or lowlevel Server)")
    return low


def check_tool_offers(plist: PriceList) -> None:
    """Refuse (SessionsUnsupported) a price list pricing a ``POST /tools/...`` route with anything
    but transaction offers (MCP-TOOL-04)."""
    for route in plist.routes:
        if route.method == "POST" and route.path.startswith(TOOLS_PREFIX):
            models = sorted({o.model for o in route.offers} - {"transaction"})
            if models:
                raise SessionsUnsupported(f"{route.route}: the MCP payment transport carries only per-call (transaction) "
                                          f"offers, not {', '.join(models)} (no sessions, no grants)")


def payment_of(*_: Any) -> Payment | None:
    """In a tool's handler: the payment that let this call run (``payer``, ``source``, ``claims`` with
    ``agent`` and ``principal`` when the buyer showed a mandate), or None for a free call. Any
    argument (the handler's context, for symmetry with the HTTP adapters) is ignored."""
    context = _CONTEXT.get()
    return context.payment if context is not None else None


class ToolNotSetUp(RuntimeError):
    """A priced tool's function ran without the payment middleware: ``seller.setup(server)`` was not
    called for the server serving it. Nothing was paid, so the tool does not run."""


def _paid_only(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` refusing to run outside a call the payment middleware handled (see :meth:`Seller.price_tool`)."""

    def check() -> None:
        if _CONTEXT.get() is None:
            raise ToolNotSetUp(f"tool {name!r} is priced but this server was not set up for payment: call "
                               f"seller.setup(server) before serving it; the tool did not run")

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            check()
            return await fn(*args, **kwargs)

        return guarded_async

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check()
        return fn(*args, **kwargs)

    return guarded


class PaymentMiddleware:
    """The MCP server middleware (``server.middleware``) that prices ``tools/call``; installed by
    :meth:`Seller.setup`."""

    def __init__(self, seller: Seller) -> None:
        self.seller = seller

    async def __call__(self, ctx: Any, call_next: CallNext) -> Any:
        method = ctx.method
        if method in ("initialize", "server/discover"):
            return self._advertise(await call_next(ctx))
        params = ctx.params
        if method != "tools/call" or ctx.request_id is None or not isinstance(params, Mapping) \
                or not isinstance(params.get("name"), str):
            return await call_next(ctx)  # what is not a well-formed tool call is the SDK's to refuse
        return await self.call_tool(ctx, call_next, params)

    def _advertise(self, result: Any) -> Any:
        result = _wire(result)
        if isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
            caps = result["capabilities"]
            experimental = dict(caps.get("experimental") or {})
            experimental["payment"] = self.seller.capability()
            caps["experimental"] = experimental
        return result

    async def call_tool(self, ctx: Any, call_next: CallNext, params: Mapping[str, Any]) -> Any:
        """One ``tools/call``: through the engine as ``POST /tools/<name>``, its answer mapped."""
        seller = self.seller
        if not seller._serving:  # served without the lifespan (a custom runner): start now, as the ASGI adapter does
            await seller.start()
        start_request()
        name = params["name"]
        arguments = params.get("arguments")
        meta = params.get("_meta")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise MCPError(INVALID_PARAMS, "Invalid params", {"detail": "arguments is not an object"})
        if meta is not None and not isinstance(meta, Mapping):
            raise MCPError(INVALID_PARAMS, "Invalid params", {"detail": "_meta is not an object"})
        presented = meta is not None and META_CREDENTIAL in meta
        path = tool_path(name)
        headers = [("Content-Type", "application/json")]
        if presented:
            headers.append(("Authorization", authorization_of(meta[META_CREDENTIAL])))  # type: ignore[index]
        self._refuse_unsold(path)

        async def read() -> bytes:
            try:
                return canonical_json(dict(arguments or {}))
            except ParseError as exc:
                raise _BadArguments(str(exc)) from None

        request = HttpRequest("POST", path, "", headers, reader=read)
        served: dict[str, Any] = {}

        async def serve(context: Context) -> Served:
            served["context"] = context
            token = _CONTEXT.set(context)
            try:
                result = _wire(await call_next(ctx))
            finally:
                _CONTEXT.reset(token)
            failed = isinstance(result, dict) and result.get("isError") is True
            return Served(500 if failed else 200, native=result)  # a failed tool is refunded, as a 5xx route is

        try:
            answer = await seller.engine.handle(request, serve, seller.tools.get(name), listed=True)
        except _BadArguments as exc:
            raise MCPError(INVALID_PARAMS, "Invalid params", {"detail": f"arguments: {exc}"}) from None
        if isinstance(answer, HttpResponse):
            raise refusal(answer, meta[META_CREDENTIAL] if presented else None, presented)  # type: ignore[index]
        result = answer.native
        payment = served["context"].payment if "context" in served else None
        if payment is not None and not payment.refunded and payment.recorded and answer.status < 400 \
                and isinstance(result, dict):
            result = dict(result)
            result["_meta"] = {**(result.get("_meta") or {}), META_RECEIPT: decode_json_b64(payment.receipt_header, "receipt")}
        return result

    def _refuse_unsold(self, path: str) -> None:
        """A price list reloaded with a unit, task or seat offer for this tool is refused at reload;
        should one get through, the call fails closed rather than open a session (MCP-TOOL-04)."""
        plist = self.seller.price_list
        route = plist.route_for("POST", path) if plist is not None else None
        if route is not None and any(o.model != "transaction" for o in route.offers):
            raise MCPError(INTERNAL_ERROR, "Internal error", {"detail": "this tool is priced with an offer the MCP "
                                                                        "transport cannot carry"})


class _BadArguments(Exception):
    """The arguments of a priced call cannot be canonicalised (a number outside I-JSON's range)."""


def refusal(answer: HttpResponse, credential: Any, presented: bool) -> MCPError:
    """The JSON-RPC error for an engine's refusal (MCP-ERR-01..05): -32042 for an unpaid call's 402,
    -32602 for a malformed credential, -32043 for any other refusal of a presented credential,
    -32603 for the seller's own failure (a 5xx), which is never a payment demand."""
    try:
        problem = json.loads(answer.body) if answer.body else None
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = None
    fields = [v for k, v in answer.headers if k.lower() == "www-authenticate"]
    try:
        challenges = [challenge_object(c) for c in parse_challenges(fields, skip_invalid=True)] if fields else []
    except ParseError:  # the engine's own challenges always parse; a refusal without any carries none
        challenges = []
    status = answer.status
    if status >= 500 or status < 400:
        return MCPError(INTERNAL_ERROR, "Internal error", {"httpStatus": status, "problem": problem})
    slug = str((problem or {}).get("type", "")).rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    data: dict[str, Any] = {"httpStatus": status, "challenges": challenges, "problem": problem}
    if not presented:
        if status == 402 and challenges:
            return MCPError(PAYMENT_REQUIRED, "Payment Required", data)
        return MCPError(INTERNAL_ERROR, "Internal error", {"httpStatus": status, "problem": problem})
    detail = (problem or {}).get("detail")
    if slug == _MALFORMED:
        return MCPError(INVALID_PARAMS, "Invalid params", {"detail": detail, **data})
    if not challenges and status == 403:  # nothing was consumed: the same challenge stays payable (an approval)
        try:
            challenges = [challenge_object(challenge_from_object(credential.get("challenge")))]
        except (ParseError, AttributeError):
            challenges = []
        data["challenges"] = challenges
    data["failure"] = {"reason": slug, "detail": detail}
    return MCPError(VERIFICATION_FAILED, "Payment Verification Failed", data)


def _wire(result: Any) -> Any:
    """A handler's result as its wire dict (the SDK's runner gives one already)."""
    if isinstance(result, BaseModel):
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return result


async def serve_stdio(server: Any, seller: Seller | None = None) -> None:
    """Serve ``server`` (an ``MCPServer`` or a low-level ``Server``) over stdin and stdout until
    stdin closes; with ``seller``, set it up on the server first."""
    if seller is not None:
        seller.setup(server)
    low = lowlevel_server(server)
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await low.run(read_stream, write_stream, low.create_initialization_options())


def run_stdio(server: Any, seller: Seller | None = None) -> None:
    """:func:`serve_stdio` as a program's main call (it runs the event loop)."""
    import anyio

    anyio.run(serve_stdio, server, seller)
