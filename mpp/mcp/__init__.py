"""The MCP payment transport (spec/transports/mcp.md): paid tool calls over the Model Context
Protocol, as draft-payment-transport-mcp-00 carries the Payment scheme over JSON-RPC.

The seller side (:mod:`mpp.mcp.server`) prices the tools of an ``MCPServer`` or a low-level MCP
``Server`` through the framework-neutral seller engine; the agent side (:mod:`mpp.mcp.client`)
pays for tool calls with the buyer engine (:mod:`mpp.purchase`), the same buyer as over aiohttp
and httpx; :mod:`mpp.mcp.wire` holds the transport's
wire objects (challenge objects, the credential in ``_meta``, error codes) for both sides.
Needs the ``mcp`` extra (``pip install 'mpp-reference[mcp]'``).
"""

from mpp.mcp.client import McpExchange, PaidToolCall, PaymentSession, server_jwks
from mpp.mcp.server import PaymentMiddleware, Seller, SessionsUnsupported, ToolNotSetUp, payment_of, run_stdio, serve_stdio
from mpp.mcp.wire import (INTERNAL_ERROR, INVALID_PARAMS, META_CREDENTIAL, META_RECEIPT, PAYMENT_REQUIRED,
                          VERIFICATION_FAILED, authorization_of, challenge_from_object, challenge_object,
                          credential_object, is_payment_demand, tool_path)

__all__ = ["PaymentSession", "PaidToolCall", "McpExchange", "server_jwks", "Seller", "PaymentMiddleware", "SessionsUnsupported", "ToolNotSetUp", "payment_of", "serve_stdio", "run_stdio",
           "META_CREDENTIAL", "META_RECEIPT", "PAYMENT_REQUIRED", "VERIFICATION_FAILED", "INVALID_PARAMS",
           "INTERNAL_ERROR", "challenge_object", "challenge_from_object", "credential_object", "authorization_of",
           "is_payment_demand", "tool_path"]
