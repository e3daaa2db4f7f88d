"""Drive pympp 0.16.0's MCP payment transport (``mpp.extensions.mcp``) over stdio, paid with its
``evm`` charge (EIP-3009 authorizations) on a local chain: a server, a client.

Runs ONLY under the interop virtualenv (tests/interop/requirements.txt: ``pympp[evm]``, ``mcp``
1.30.0); it never imports this project, because both packages are called ``mpp``.

  server --rpc URL --chain-id N --token ADDR --token-name S --token-version S --decimals N
         --recipient ADDR --settler-key HEX --amount BASE_UNITS [--tool NAME] [--realm R]
      A stdio MCP server with one priced tool (default ``premium_echo``: ``{"text": S}`` answered
      ``paid: S``). pympp's documented FastMCP ``@pay`` does not work on mcp 1.30 (FastMCP takes
      no ``capabilities``, does not pass ``_meta``, and ``functools.wraps`` exposes
      ``credential``/``receipt`` as tool arguments), so the tool is served by the low-level
      ``mcp.server.Server`` with a handler put directly in ``request_handlers[CallToolRequest]``
      (the ``@server.call_tool`` decorator would turn the payment error into an ``isError``
      result). The handler calls pympp's ``verify_or_challenge``: no credential -> JSON-RPC error
      -32042 with ``data.challenges``; a refused one -> -32043 (or -32602 malformed); a good one
      -> settled by the settler (``pympp_evm_driver.Settler``: ``transferWithAuthorization`` with
      the settler's key), the result carrying pympp's receipt in
      ``_meta["org.paymentauth/receipt"]``. The capability ``experimental.payment`` is
      ``payment_capabilities(...)``. pympp binds the authorization's nonce by its own rule,
      ``keccak256(JSON [id, realm])`` (our ``json`` rule); it takes no option for it.
  client --chain-id N --token ADDR --token-name S --token-version S --decimals N --payer-key HEX
         [--tool NAME] [--arguments JSON] [--unpaid] -- COMMAND [ARG ...]
      Starts COMMAND as a stdio MCP server (with this process's environment), initializes, and
      calls the tool through pympp's ``McpClient`` (``evm.charge`` client method): on -32042 it
      signs an authorization for the first challenge it can pay and retries once with the
      credential in ``params._meta``. ``--unpaid`` calls the plain session instead (the unpaid
      answer, for the wire check). Prints one JSON line:
      ``{"ok", "result", "receipt", "error", "capabilities", "elapsed_ms"}`` -- ``result`` the
      tool result's text, ``receipt`` the ``_meta`` receipt object as sent (or null), ``error``
      null or ``{"type", "message", "code"?, "data"?}``, ``capabilities`` the server's
      ``experimental`` capabilities, ``elapsed_ms`` the tool call (both legs) in milliseconds.

Amounts on the command line are in the token's base units; pympp's handlers take display units.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mcp.types as types  # noqa: E402
from eth_account import Account  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.server.lowlevel import Server as McpServer  # noqa: E402
from mcp.server.stdio import stdio_server  # noqa: E402
from mcp.shared.exceptions import McpError  # noqa: E402

from mpp.extensions.mcp import McpClient, PaymentRequiredError, payment_capabilities, verify_or_challenge  # noqa: E402
from mpp.extensions.mcp.constants import META_RECEIPT  # noqa: E402
from mpp.methods.evm import client as evm_client  # noqa: E402
from mpp.methods.evm import server as evm_server  # noqa: E402
from mpp.server import Mpp as Server  # noqa: E402
from mpp.stores import MemoryStore  # noqa: E402
from pympp_evm_driver import Settler, add_token_args, display  # noqa: E402

DEFAULT_TOOL = "premium_echo"


# -- server ----------------------------------------------------------------------------------

def build_server(a: argparse.Namespace) -> tuple[McpServer, dict[str, Any]]:
    method = evm_server.charge(
        currency=a.token, recipient=a.recipient, chain_id=a.chain_id, decimals=a.decimals,
        authorization={"name": a.token_name, "version": a.token_version},
        settle=Settler(a.rpc, a.chain_id, a.settler_key),
        store=MemoryStore())  # the replay store, explicit: one process
    mpp = Server(methods=method, realm=a.realm, secret_key=a.secret or os.urandom(32).hex())
    priced = mpp.charge(amount=display(a.amount, a.decimals))
    server: McpServer = McpServer("pympp-mcp-interop")

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=a.tool, description=f"echoes its text; costs {a.amount} base units of {a.token}",
                           inputSchema={"type": "object", "properties": {"text": {"type": "string"}}})]

    async def call_tool(req: types.CallToolRequest) -> types.ServerResult:
        params = req.params
        if params.name != a.tool:
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}"))
        meta = params.meta.model_dump(by_alias=True, exclude_none=True) if params.meta else None
        # -32043 / -32602 (PaymentVerificationError, MalformedCredentialError) are McpErrors: the
        # low-level server sends their ErrorData as the JSON-RPC error.
        verified = await verify_or_challenge(priced, tool=a.tool, meta=meta)
        if isinstance(verified, list):
            raise PaymentRequiredError(challenges=verified)
        _credential, receipt = verified
        text = str((params.arguments or {}).get("text", ""))
        return types.ServerResult(types.CallToolResult(
            content=[types.TextContent(type="text", text=f"paid: {text}")], _meta=receipt.to_meta()))

    server.request_handlers[types.CallToolRequest] = call_tool
    return server, payment_capabilities(mpp)


async def serve(a: argparse.Namespace) -> None:
    server, experimental = build_server(a)
    options = server.create_initialization_options(experimental_capabilities=experimental)
    async with stdio_server() as (read, write):
        await server.run(read, write, options)


# -- client ----------------------------------------------------------------------------------

def error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, McpError):
        return {"type": "McpError", "code": exc.error.code, "message": exc.error.message, "data": exc.error.data}
    cause = exc.__cause__
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(cause, McpError):  # e.g. PaymentOutcomeUnknownError around the paid retry's refusal
        out.update(code=cause.error.code, data=cause.error.data, cause=cause.error.message)
    return out


async def call(a: argparse.Namespace) -> dict[str, Any]:
    method = evm_client.charge(currency=a.token, account=Account.from_key(a.payer_key), chain_id=a.chain_id,
                               decimals=a.decimals, authorization={"name": a.token_name, "version": a.token_version})
    params = StdioServerParameters(command=a.command[0], args=a.command[1:], env=dict(os.environ))
    out: dict[str, Any] = {"ok": False, "result": None, "receipt": None, "error": None, "capabilities": None,
                           "elapsed_ms": None}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        out["capabilities"] = init.capabilities.experimental
        caller = session if a.unpaid else McpClient(session, methods=[method])
        started = time.perf_counter()
        try:
            result = await caller.call_tool(a.tool, json.loads(a.arguments))
        except Exception as exc:  # report the refusal as one clean line
            out["error"] = error_json(exc)
        else:
            raw = getattr(result, "result", result)  # McpToolResult wraps the CallToolResult
            texts = [block.text for block in raw.content if isinstance(block, types.TextContent)]
            out.update(ok=not raw.isError, result="\n".join(texts), receipt=(raw.meta or {}).get(META_RECEIPT))
        out["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


def main() -> int:
    argv = sys.argv[1:]
    command: list[str] = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("server", "client"):
        s = sub.add_parser(name)
        add_token_args(s)
        s.add_argument("--tool", default=DEFAULT_TOOL)
    s = sub.choices["server"]
    s.add_argument("--rpc", required=True)
    s.add_argument("--recipient", required=True)
    s.add_argument("--settler-key", required=True)
    s.add_argument("--amount", type=int, required=True, help="base units")
    s.add_argument("--realm", default="pympp-mcp-interop", help="the challenges' realm (stdio has no host)")
    s.add_argument("--secret", help="the challenge HMAC key; default: a random one")
    s = sub.choices["client"]
    s.add_argument("--payer-key", required=True)
    s.add_argument("--arguments", default='{"text": "hello"}', help="the tool's arguments, a JSON object")
    s.add_argument("--unpaid", action="store_true", help="call without pympp's payment wrapper")
    a = p.parse_args(argv)
    if a.cmd == "server":
        if command:
            p.error("server takes no command after --")
        asyncio.run(serve(a))
        return 0
    if not command:
        p.error("client needs the server's command after --")
    a.command = command
    try:
        out = asyncio.run(call(a))
    except Exception as exc:  # the server did not start, or the session broke
        out = {"ok": False, "result": None, "receipt": None, "error": error_json(exc), "capabilities": None,
               "elapsed_ms": None}
    print(json.dumps(out, sort_keys=True, default=str), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
