"""The agent's side of the MCP payment transport: an MCP client session that pays for tools.

    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = PaymentSession(session, [LedgerBuyerMethod(key=key, account="acct:me")], BuyerPolicy(max_amount=500),
                               identity=AgentIdentity(key, [mandate], budget))
        call = await tools.pay_tool("forecast", {"city": "Lyon"})
        call.result                 # the CallToolResult
        call.payment.receipt        # the verified receipt (None for a free tool)

A priced tool answers the unpaid call with JSON-RPC error -32042 and its challenges; the buyer
engine (:class:`mpp.purchase.Buyer`, the same as over aiohttp and httpx) chooses an offer its
policy and mandate allow, checks the quote, reserves the budget, signs, and calls the tool once
more with the credential in ``params._meta``; the receipt in ``result._meta`` is verified with the
keys the server advertises in its payment capability (spec/transports/mcp.md, MCP-CLI-*). The
carrier below turns each tool call into the HTTP exchange the engine knows: ``POST /tools/<name>``
with the arguments as the body, -32042 as a 402 with its challenges, -32043 as the refusal it
stands for, a result as a 200 with its receipt.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import anyio
from mcp import ClientSession, MCPError
from mcp.types import CallToolResult

from mpp.buyer.core import MCP_STDIO_SCHEME, BuyerPolicy
from mpp.mcp.wire import (INTERNAL_ERROR, INVALID_PARAMS, META_CREDENTIAL, META_RECEIPT, TOOLS_PREFIX, challenge_from_object,
                          credential_object, is_payment_demand, tool_path)
from mpp.methods import BuyerMethod
from mpp.protocol.errors import ParseError
from mpp.protocol.headers import format_challenge, parse_credential
from mpp.protocol.wire import dumps_wire, b64url_encode
from mpp.purchase.client import Buyer
from mpp.purchase.exchange import PaidResponse, TransportError, headers_of
from mpp.purchase.wire import JWKS_PATH

__all__ = ["PaymentSession", "PaidToolCall", "McpExchange", "server_jwks", "KEPT_CHALLENGES"]

_CAPABILITY = "payment"
KEPT_CHALLENGES = 256
"""How many received challenge objects an exchange keeps to echo them as sent (the newest)."""


@dataclass
class PaidToolCall:
    """A tool's result and what was paid for it: ``payment.receipt`` and ``payment.claims`` (None and
    ``paid`` False for a tool that asked for nothing), ``payment.quote`` the quote paid."""

    result: CallToolResult
    payment: PaidResponse

    @property
    def paid(self) -> bool:
        """True when the call came with a verified receipt."""
        return self.payment.paid


def server_jwks(session: ClientSession) -> dict[str, Any] | None:
    """The receipt keys a server advertises in ``capabilities.experimental.payment.jwks`` (MCP-CAP-01, MCP-CLI-03),
    or None."""
    capabilities = session.server_capabilities
    experimental = getattr(capabilities, "experimental", None) or {}
    payment = experimental.get(_CAPABILITY) if isinstance(experimental, Mapping) else None
    jwks = payment.get("jwks") if isinstance(payment, Mapping) else None
    return dict(jwks) if isinstance(jwks, Mapping) else None


class McpExchange:
    """Carries the buyer engine's requests as tool calls of one MCP ``session`` (see the module):
    only ``POST /tools/<name>`` and the receipt keys (``GET /.well-known/jwks.json``) exist.

    The challenge objects received are kept (the latest :data:`KEPT_CHALLENGES`) so that a credential
    echoes its challenge exactly as the server sent it (MCP-CLI-09): a server may recompute the id
    from the echoed form (pympp does, from an ``opaque`` it sends as an object)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self._received: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def send(self, method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   follow_redirects: bool = False, once: bool = False, keep_open: bool = False,
                   omit_headers: Sequence[str] = (), max_header_bytes: int | None = None) -> PaidResponse:
        """The tool call ``url`` names, with the credential of an ``Authorization`` header in ``_meta``;
        its answer as the engine reads HTTP. A JSON-RPC error that is no payment answer to an unpaid call
        (an unknown tool, the SDK's own URL elicitation) is raised as it came. Raises TransportError
        when the connection is gone."""
        path = urlsplit(url).path
        if method == "GET" and path == JWKS_PATH:
            jwks = server_jwks(self.session)
            return _answer(200, jwks, url) if jwks is not None else _answer(404, {"title": "no payment.jwks capability"}, url)
        if method != "POST" or not path.startswith(TOOLS_PREFIX):
            return _answer(404, {"title": f"an MCP server has no {method} {path}"}, url)
        name = unquote(path[len(TOOLS_PREFIX):])
        arguments = json.loads(data) if data else None
        authorization = (headers or {}).get("Authorization")
        meta = {META_CREDENTIAL: self._credential(authorization)} if authorization else None
        try:
            result = await self.session.call_tool(name, arguments, meta=meta)
        except MCPError as exc:
            return self._refusal(exc, url, paid=authorization is not None)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            raise TransportError(f"the MCP connection is gone: {type(exc).__name__}") from exc
        fields: list[tuple[str, str]] = []
        receipt = (result.meta or {}).get(META_RECEIPT)
        if isinstance(receipt, Mapping):  # the HTTP header form, so the receipt checks are the HTTP ones
            fields.append(("Payment-Receipt", b64url_encode(dumps_wire(dict(receipt), "receipt"))))
        return PaidResponse(200, headers_of(fields), result.model_dump_json(by_alias=True, exclude_none=True).encode(), url)


    def _credential(self, authorization: str) -> dict[str, Any]:
        """The credential object for ``authorization``, its challenge as the server sent it."""
        doc = credential_object(parse_credential(authorization))
        received = self._received.get(doc["challenge"]["id"])
        if received is not None:
            doc["challenge"] = dict(received)
        return doc

    def _refusal(self, exc: MCPError, url: str, *, paid: bool) -> PaidResponse:
        """A JSON-RPC error as the HTTP answer it stands for (MCP-CLI-04, MCP-CLI-07): a payment demand
        (its challenges as ``WWW-Authenticate`` fields, its ``httpStatus``, its problem), or, after a
        credential went out, a refusal (-32602: 400) or a failure whose outcome is unknown (any other
        code: its ``httpStatus`` or 500)."""
        data = exc.data if isinstance(exc.data, Mapping) else {}
        problem = data.get("problem") if isinstance(data.get("problem"), Mapping) else {"title": exc.message}
        status = data.get("httpStatus")
        if is_payment_demand(exc.code, data):
            fields = []
            for obj in data["challenges"]:
                try:
                    challenge = challenge_from_object(obj)
                except (ParseError, ValueError):
                    continue  # an unusable challenge among others: the engine picks among the rest
                fields.append(("WWW-Authenticate", format_challenge(challenge)))
                self._received[challenge.id] = dict(obj)
                self._received.move_to_end(challenge.id)
                while len(self._received) > KEPT_CHALLENGES:
                    self._received.popitem(last=False)
            code = status if isinstance(status, int) and 400 <= status < 500 else 402
            return _answer(code, problem, url, fields)
        if not paid:
            raise exc  # not a payment answer: the caller's to handle, as without payment
        if isinstance(status, int) and 400 <= status < 600:
            return _answer(status, problem, url)
        return _answer(400 if exc.code == INVALID_PARAMS else 500 if exc.code == INTERNAL_ERROR else 502, problem, url)


def _answer(status: int, doc: Any, url: str, fields: Sequence[tuple[str, str]] = ()) -> PaidResponse:
    return PaidResponse(status, headers_of(list(fields)), json.dumps(doc).encode(), url)


class PaymentSession:
    """Pays for the tool calls of an initialized MCP ``session`` with ``methods``, within ``policy``;
    the other options (``identity``, ``plan``, ``clock``, ``on_event``) are :class:`~mpp.purchase.client.Buyer`'s.
    ``server`` names the server's origin, ``mcp+stdio://<name>`` (default: the name it gave when
    initializing); a server reached over HTTP is better named by its ``https://`` URL.

    There are no ``session`` (pay-as-you-go) payments over MCP: the draft transport has none
    (MCP-TOOL-04, MCP-CLI-08)."""

    def __init__(self, session: ClientSession, methods: Sequence[BuyerMethod], policy: BuyerPolicy, *,
                 server: str | None = None, **options: Any) -> None:
        if options.get("sessions") is not None:
            raise ValueError("the MCP payment transport has no sessions (MCP-TOOL-04, MCP-CLI-08): pay tools by charge")
        self.session = session
        self.origin = (server or f"{MCP_STDIO_SCHEME}://{_host(session)}").rstrip("/")
        self.buyer = Buyer(methods, policy, exchange=McpExchange(session), **options)

    def tool_url(self, name: str) -> str:
        """The URL the buyer engine knows tool ``name`` by: the server's origin and ``/tools/<name>``."""
        return self.origin + tool_path(name)

    async def pay_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> PaidToolCall:
        """Call tool ``name``, paying once if it asks (-32042) and the policy, mandate chain and budget
        allow. Raises the buyer's errors (:class:`mpp.BuyerError`) as :meth:`Buyer.request` does, and an
        MCP error that is not about payment as it came."""
        body = json.dumps(dict(arguments or {}), separators=(",", ":")).encode()
        paid = await self.buyer.request("POST", self.tool_url(name), data=body)
        if paid.status != 200:  # an answer no payment explains (a 402 is the engine's, refused earlier)
            raise MCPError(INTERNAL_ERROR, f"tool {name!r} answered {paid.status}: {paid.text()[:200]}")
        return PaidToolCall(CallToolResult.model_validate_json(paid.body), paid)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> CallToolResult:
        """As :meth:`pay_tool`, the result alone (a drop-in for ``ClientSession.call_tool``)."""
        return (await self.pay_tool(name, arguments)).result


def _host(session: ClientSession) -> str:
    info = getattr(session, "server_info", None)
    name = getattr(info, "name", None) or "mcp-server"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name.lower())[:63] or "mcp-server"
