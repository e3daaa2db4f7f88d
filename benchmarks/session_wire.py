"""How many HTTP requests reach the seller for N paid calls: per-request ``charge`` against a
``session`` (one 402, one open carried by the first paid call, vouchers riding on every later
call, one close). Counted at the server, on loopback, in one run.

    .venv/bin/python benchmarks/session_wire.py [--calls 100] [--json out.json]

Prints a table and writes JSON. Issue 5's target: at most calls + 2 requests with a session,
against 2 x calls with charge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

import mpp
from mpp.aio import EmbeddedLedgerRail, PaymentClient, Seller
from mpp.aio.metering import meter_of
from mpp.purchase.sessions import SessionPolicy
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore


async def run(calls: int, workdir: Path) -> dict:
    ledger = SqliteLedger(str(workdir / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account("acct:buyer", "usd")
    agent = mpp.SigningKey.generate()
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    ledger.fund("acct:buyer", 10_000_000)
    seller = Seller(realm="bench.local", secret=b"b" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")], store=SqlitePaymentStore(str(workdir / "p.db")),
                    session_store=SqliteSessionStore(str(workdir / "s.db")))
    wire: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler):
        wire.append(f"{request.method} {request.path}")
        return await handler(request)

    @seller.meter("token", 2, "usd", per=1000, max_units=4000, description="completion")
    async def complete(request: web.Request) -> web.Response:
        meter_of(request).report(1500)
        return web.json_response({"tokens": 1500})

    app = web.Application(middlewares=[count])
    app.router.add_get("/complete", complete)
    seller.setup(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/complete"
    results = {}
    try:
        for mode in ("charge", "session"):
            wire.clear()
            before = ledger.balance("acct:seller")
            started = time.perf_counter()
            async with aiohttp.ClientSession() as http:
                sessions = SessionPolicy(max_cap=100_000) if mode == "session" else None
                client = PaymentClient(http, [LedgerBuyerMethod(key=agent, account="acct:buyer")],
                                       mpp.BuyerPolicy(max_amount=1_000), sessions=sessions)
                async with client:
                    for _ in range(calls):
                        paid = await client.request("GET", url)
                        if paid.status != 200:
                            raise SystemExit(f"{mode}: call answered {paid.status}: {paid.text()[:200]}")
            elapsed = time.perf_counter() - started
            paid_requests = [w for w in wire if w.startswith("GET /complete")]
            other = [w for w in wire if not w.startswith("GET /complete") and not w.endswith("/jwks.json")]
            results[mode] = {
                "calls": calls,
                "requests_on_wire": len(paid_requests) + len(other),
                "jwks_fetches": sum(1 for w in wire if w.endswith("/jwks.json")),
                "charged": ledger.balance("acct:seller") - before,
                "seconds": round(elapsed, 3),
            }
    finally:
        await runner.cleanup()
        ledger.close()
    assert ledger is not None
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100, help="paid calls per mode (default 100)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mpp-bench-") as tmp:
        results = asyncio.run(run(args.calls, Path(tmp)))
    charge, session = results["charge"], results["session"]
    print(f"{'mode':<9} {'calls':>6} {'payment requests':>17} {'per call':>9} {'+ JWKS':>7} {'all requests':>13} "
          f"{'charged':>8} {'seconds':>8}")
    for mode, r in results.items():
        print(f"{mode:<9} {r['calls']:>6} {r['requests_on_wire']:>17} {r['requests_on_wire'] / r['calls']:>9.2f} "
              f"{r['jwks_fetches']:>7} {r['requests_on_wire'] + r['jwks_fetches']:>13} {r['charged']:>8} {r['seconds']:>8.2f}")
    ratio = session["requests_on_wire"] / charge["requests_on_wire"]
    print(f"session / charge requests: {ratio:.3f}  (target: session <= calls + 2 = {args.calls + 2}; "
          f"{'met' if session['requests_on_wire'] <= args.calls + 2 else 'NOT met'})")
    print("Payment requests are every request the paid calls caused (402s, paid calls, the close); the buyer also "
          "fetches the seller's JWKS once to verify receipts (cached per seller), shown apart.")
    if args.json:
        args.json.write_text(json.dumps({"calls": args.calls, "results": results, "session_over_charge": ratio}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
