"""The peer seller of benchmarks/bench.py: PyPI ``pympp`` with a trivial test method, served
through aiohttp (the same server stack as ours), guarding replay with its own SQLite store.

Runs ONLY in the side environment (.venv-interop; it needs pympp, aiohttp and aiosqlite, see
benchmarks/pympp-requirements.txt): pympp imports as ``mpp``, like this project, so this file
never imports the project.

    .venv-interop/bin/python benchmarks/bench_pympp.py --replay-db PATH [--profile FILE]

The method is ``test``/``charge``, defined as pympp's README defines custom methods (a
``mpp.methods.Method`` with pydantic request and payload models, in a ``ServerMethod``). Its
verify accepts exactly the payload ``{"token": "bench"}`` and, as a production seller must,
consumes the challenge once: ``put_if_absent`` on pympp's own ``SQLiteStore`` (pympp[sqlite],
aiosqlite), handed to the method by ``Mpp(store=...)`` like pympp's own methods get theirs. The
store's SQLite file is put in the same mode as ours (WAL, synchronous=NORMAL) so both do the
same durable work per purchase.

GET /item is priced at 1 and answers the same small JSON as the benchmark's other sellers.
Prints ``ready {"port": N}``; SIGTERM prints ``stats {"calls": N}`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from mpp import Receipt
from mpp.errors import VerificationFailedError
from mpp.methods import Method
from mpp.server import Mpp, ServerMethod, VerifyContext
from mpp.server.http import PaymentRequired, Request, Response
from mpp.stores.sqlite import SQLiteStore  # pympp's module (this runs in .venv-interop), not ours

TOKEN = "bench"
BODY = {"ok": True, "item": "forecast", "sky": "clear"}


class TestRequest(BaseModel):
    amount: str
    currency: str
    recipient: str


class TestPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str


TEST_CHARGE: Method[TestRequest, TestPayload] = Method(
    name="test", intent="charge", request_model=TestRequest, payload_model=TestPayload
)


class ReplayGuardedTest:
    """verify: the static token, then the challenge consumed exactly once in the replay store."""

    def __init__(self) -> None:
        self.store: Any = None

    def use_store(self, store: Any) -> None:
        self.store = store

    async def verify(self, context: VerifyContext) -> Receipt:
        if context.credential.payload.token != TOKEN:
            raise VerificationFailedError("unknown token")
        if not await self.store.put_if_absent(f"test:charge:{context.challenge.id}", "1"):
            raise VerificationFailedError("challenge has already been used")
        return Receipt(status="success", timestamp=datetime.now(UTC), reference=f"test-{uuid.uuid4().hex}", method="test")


def to_aiohttp(response: Response) -> web.Response:
    """pympp's framework-neutral Response as an aiohttp one (several WWW-Authenticate kept)."""
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() != "content-length"]
    return web.Response(status=response.status, body=response.body or b"", headers=headers)


def paid(handler: Any, endpoint: Any) -> Any:
    """The aiohttp counterpart of pympp's ``mpp.server.pay`` decorator."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        body = await request.read() if getattr(handler, "needs_request_body", True) else None
        result = await handler(Request(request.method, str(request.url), headers=list(request.headers.items()),
                                       body=body or None, route=request.match_info.route.resource.canonical))
        if isinstance(result, PaymentRequired):
            return to_aiohttp(result.challenge)
        return result.with_receipt(await endpoint(request))

    return wrapper


async def serve(replay_db: str) -> dict[str, Any]:
    store = await SQLiteStore.create(replay_db)
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"):  # as our stores open SQLite
        await store._db.execute(pragma)
    method = ReplayGuardedTest()
    server = Mpp(methods=ServerMethod(method=TEST_CHARGE, verify=method.verify, use_store=method.use_store),
                 realm="bench.local", secret_key=os.urandom(32).hex(), store=store)
    calls = [0]

    async def item(request: web.Request) -> web.Response:
        calls[0] += 1
        return web.json_response(BODY)

    app = web.Application()
    app.router.add_get("/item", paid(server.charge(amount="1", currency="usd", recipient="acct:bench",
                                                   description="bench item"), item))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready " + json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await runner.cleanup()
    await store.close()
    return {"calls": calls[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replay-db", required=True, help="SQLite file of consumed challenges")
    p.add_argument("--profile", help="run under cProfile and write the stats here")
    args = p.parse_args(argv)
    cpu = os.environ.get("MPP_BENCH_CPU")
    if cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            stats = asyncio.run(serve(args.replay_db))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        stats = asyncio.run(serve(args.replay_db))
    print("stats " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
