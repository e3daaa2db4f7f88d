"""A pympp seller: the third-party Python target of the conformance suite.

Runs ONLY in its own virtualenv (conformance/targets/.venv-pympp-seller, built by run.py from
pympp-seller-requirements.txt): PyPI ``pympp`` imports as ``mpp``, like this project, so the two
never share an environment, and this file never imports the project.

The server is pympp's own framework integration, as its README shows it: Starlette routes
decorated with ``mpp.server.pay``, served by uvicorn. pympp ships no rail that works offline, so
the seller prices its routes with one custom method, ``test``/``charge``, defined the way
pympp's README says custom methods are (a ``mpp.methods.Method`` with pydantic request and
payload models, wrapped in a ``mpp.server.ServerMethod``). Its verification accepts exactly the
payload ``{"token": "conformance"}`` and settles nothing.

Replay protection is switched on as pympp documents it. In pympp the replay store belongs to the
methods: the store given to ``Mpp(store=...)`` goes to each method that has none of its own
(``Mpp``'s docstring), which takes it through its ``use_store`` hook (``ServerMethod``'s
docstring); pympp's own Tempo and EVM charges work so, and fall back to an in-process
``MemoryStore`` when given none. The README tells sellers to keep one atomic replay store shared
by all their workers and replicas; this target is one process, so the store is pympp's
``mpp.stores.MemoryStore`` (its in-memory backend for development and testing; ``SQLiteStore``
and ``RedisStore`` are the production ones). Like the built-in methods, the test method claims a
key with ``put_if_absent`` before it answers success and raises pympp's
``CredentialReplayedError`` when the key is taken. The key is the challenge id: the payload is
the same fixed token for every purchase, so the challenge is what one payment consumes (mppx's
Tempo charge keys its proof credentials the same way). Everything else is pympp's default:
challenge expiry (5 minutes), problem documents.

  GET  /paid    priced at 1 (test/charge)
  POST /paid    priced at 1, the request body bound to the challenge with pympp's ``body`` option
  GET  /other   priced the same as /paid (a second route, for the route-binding check)
  POST /other   likewise

Prints one line ``ready http://127.0.0.1:PORT`` once listening; SIGTERM (or SIGINT) stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import uuid
from datetime import UTC, datetime

import uvicorn
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mpp import Credential, Receipt
from mpp.errors import CredentialReplayedError, VerificationFailedError
from mpp.methods import Method
from mpp.server import Mpp, ServerMethod, VerifyContext, pay
from mpp.store import Store
from mpp.stores import MemoryStore

ACCEPTED_PAYLOAD = {"token": "conformance"}


class TestRequest(BaseModel):
    """The quote: the three fields every charge request carries."""

    amount: str
    currency: str
    recipient: str


class TestPayload(BaseModel):
    """The credential payload: one token (other members are ignored, as pydantic does)."""

    model_config = ConfigDict(extra="ignore")
    token: str


TEST_CHARGE: Method[TestRequest, TestPayload] = Method(
    name="test", intent="charge", request_model=TestRequest, payload_model=TestPayload
)


def test_method() -> ServerMethod:
    """The test/charge server method, with a replay store slot that ``Mpp(store=...)`` fills."""
    stores: list[Store] = []

    def use_store(store: Store) -> None:  # pympp calls this from Mpp(store=...)
        if not stores:
            stores.append(store)

    async def verify(context: VerifyContext) -> Receipt:
        payload = context.credential.payload
        if payload.token != ACCEPTED_PAYLOAD["token"]:
            raise VerificationFailedError("unknown token")
        if stores and not await stores[0].put_if_absent(f"test:charge:{context.challenge.id}", "used"):
            raise CredentialReplayedError("Credential has already been used")
        return Receipt(status="success", timestamp=datetime.now(UTC), reference=f"test-{uuid.uuid4().hex}", method="test")

    return ServerMethod(method=TEST_CHARGE, verify=verify, use_store=use_store)


def build_app(secret_key: str, realm: str) -> Starlette:
    # The replay store, as pympp's Mpp takes it: shared by every method without its own.
    server = Mpp(methods=test_method(), realm=realm, secret_key=secret_key, store=MemoryStore())
    defaults = {"amount": "1", "currency": "usd", "recipient": "acct:pympp-seller"}

    @pay(server.charge(**defaults, description="pympp conformance target, GET"))
    async def paid_get(request: Request, credential: Credential, receipt: Receipt) -> JSONResponse:
        return JSONResponse({"paid": True, "method": request.method, "reference": receipt.reference})

    # pympp binds a body only when the route says so: a callable reading the request.
    @pay(server.charge(**defaults, description="pympp conformance target, POST", body=lambda r: r.body or b""))
    async def paid_post(request: Request, credential: Credential, receipt: Receipt) -> JSONResponse:
        return JSONResponse({"paid": True, "method": request.method, "reference": receipt.reference})

    @pay(server.charge(**defaults, description="pympp conformance target, GET (other route)"))
    async def other_get(request: Request, credential: Credential, receipt: Receipt) -> JSONResponse:
        return JSONResponse({"paid": True, "method": request.method, "reference": receipt.reference})

    @pay(server.charge(**defaults, description="pympp conformance target, POST (other route)", body=lambda r: r.body or b""))
    async def other_post(request: Request, credential: Credential, receipt: Receipt) -> JSONResponse:
        return JSONResponse({"paid": True, "method": request.method, "reference": receipt.reference})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/paid", paid_get, methods=["GET"]),
        Route("/paid", paid_post, methods=["POST"]),
        Route("/other", other_get, methods=["GET"]),
        Route("/other", other_post, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])


async def serve(port: int, secret_key: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    host, port = sock.getsockname()
    app = build_app(secret_key, realm=f"{host}:{port}")
    # uvicorn installs its own SIGTERM/SIGINT handlers and shuts down gracefully.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.02)
        print(f"ready http://{host}:{port}", flush=True)

    task = asyncio.create_task(announce())
    await server.serve(sockets=[sock])
    task.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    a = p.parse_args()
    # A fresh secret per run unless one is given; pympp requires one (>= 32 bytes recommended).
    secret = os.environ.get("MPP_SECRET_KEY") or os.urandom(32).hex()
    asyncio.run(serve(a.port, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
