"""The sellers benchmarks/bench.py measures, one per process (this project's environment).

    python benchmarks/bench_sellers.py KIND --workdir DIR [--store URL] [--ledger URL] [--sessions URL]
                                            [--identity] [--profile FILE]

KIND is ``plain`` (a bare aiohttp handler), ``charge`` (mpp.aio.Seller on the embedded ledger),
``session`` (a metered route: the session voucher path) or ``trivial`` (our Seller with a
trivial test method instead of the ledger). Every paid route answers the same small JSON as
the plain one. Listens on 127.0.0.1 (any free port), prints ``ready {"port": N}``; on SIGTERM
prints ``stats {"calls": N}`` (requests its handler served; paid routes run it only after the
payment settled) and exits. ``MPP_BENCH_CPU`` pins the process to that CPU.

Stores and the ledger are opened by URL (``open_payment_store`` etc. below): SQLite or PostgreSQL.

DIR holds ``kit.json`` from the harness: the agent's and principal's DIDs and the mandate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

REALM = "bench.local"
PAYER = "acct:buyer"
PAYEE = "acct:seller"
FUNDS = 10**15
PRICE = 1
TRIVIAL_TOKEN = "bench"
BODY = {"ok": True, "item": "forecast", "sky": "clear"}


# -- stores by URL: the one place a PostgreSQL row needs to reach ---------------------------


def open_payment_store(url: str) -> Any:
    """The seller's payment store at ``url`` (mpp.connect: SQLite or PostgreSQL); a PostgreSQL one opens on startup."""
    from mpp.connect import payment_store_for

    return payment_store_for(url)


def open_session_store(url: str) -> Any:
    from mpp.connect import session_store_for

    return session_store_for(url)


def open_ledger(url: str) -> Any:
    """The ledger at ``url`` behind its async interface (mpp.connect.ledger_for): SQLite or PostgreSQL."""
    from mpp.connect import ledger_for

    return ledger_for(url)


async def _fund(ledger: Any, kit: dict[str, Any]) -> None:
    """The payee and the agent's funded account; a ledger that has them already (a rerun on the same
    database) keeps them."""
    from mpp.ledger import LedgerError

    for account in (PAYEE, PAYER):
        try:
            await ledger.create_account(account, "usd")
        except LedgerError:
            pass
    await ledger.keys.allow(PAYER, kit["agent"], "owner")
    await ledger.keys.allow(PAYER, kit["principal"], "owner")
    await ledger.fund(PAYER, FUNDS)


# -- the trivial test method ----------------------------------------------------------------


class TrivialRail:
    """A PaymentRail with nothing behind it: ``verify`` accepts exactly the payload
    ``{"token": "bench"}``, ``settle`` returns a Settlement without I/O. The seller around it
    still consumes each challenge exactly once in its store and signs the receipt."""

    name = "test"

    def __init__(self, recipient: str = "acct:bench") -> None:
        self.recipient = recipient

    def request_for(self, *, amount: int, currency: str, description: str | None) -> dict[str, Any]:
        request: dict[str, Any] = {"amount": str(amount), "currency": currency, "recipient": self.recipient}
        if description:
            request["description"] = description
        return request

    def verify(self, credential: Any, request: Any) -> None:
        from mpp.protocol.errors import VerificationFailed

        if credential.payload != {"token": TRIVIAL_TOKEN}:
            raise VerificationFailed("unknown token")
        return None

    async def settle(self, verified: Any, mandate: Any = None) -> Any:
        from mpp.aio.rails import Settlement

        return Settlement(reference=f"test-{verified.challenge_id}", settled_at=datetime.now(timezone.utc))

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        return set()

    async def precheck(self, verified: Any, chain: tuple[str, ...] | None) -> None:
        return None  # a test method: no payer is known to be refused before settlement

    async def refund(self, settlement: Any) -> None:
        return None


# -- the applications -----------------------------------------------------------------------


def build_app(kind: str, workdir: Path, *, store: str | None, ledger_url: str | None, sessions: str | None,
              identity: bool, counter: list[int]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        counter[0] += 1
        return web.json_response(BODY)

    app = web.Application()
    if kind == "plain":
        app.router.add_get("/item", handler)
        return app

    import mpp
    from mpp.aio import EmbeddedLedgerRail, Seller, meter_of

    kit = json.loads((workdir / "kit.json").read_text())
    secret = os.urandom(32)
    receipt_key = mpp.SigningKey.generate()
    assert store is not None, "paid sellers need --store"
    rails: list[Any]
    ledger = None
    if kind == "trivial":
        rails = [TrivialRail()]
    else:
        assert ledger_url is not None, "ledger sellers need --ledger"
        ledger = open_ledger(ledger_url)
        rail = EmbeddedLedgerRail(ledger, recipient=PAYEE)
        rails = [rail]

        async def ledger_lifecycle(app: web.Application):
            await ledger.open()
            await _fund(ledger, kit)
            async for _ in rail.lifecycle(app):  # learns the ledger id before the first challenge
                yield
            await ledger.close()

        app.cleanup_ctx.append(ledger_lifecycle)
    if ledger is not None and store == ledger_url and not store.startswith("postgres"):
        # the payment records in the embedded SQLite ledger's own database: one transaction per purchase
        from mpp.stores.payments import SqlitePaymentStore

        payment_store = SqlitePaymentStore.beside(ledger.sync)
    else:
        payment_store = open_payment_store(store)
    session_store = open_session_store(sessions) if sessions else None
    seller = Seller(realm=REALM, secret=secret, receipt_key=receipt_key, rails=rails, store=payment_store,
                    trusted_principals={kit["principal"]}, session_store=session_store)

    from mpp.connect import ensure_open

    async def open_stores(app: web.Application) -> None:
        for opened in (payment_store, session_store):
            if opened is not None:
                await ensure_open(opened)  # PostgreSQL stores make their pool here

    app.on_startup.append(open_stores)
    if kind == "session":
        # 2 per 1,000 tokens, a request uses at most 4,000 (reserves 8) and reports 1,000 (costs 2);
        # a suggested cap big enough that no top-up happens within a run: the plain voucher path.
        @seller.meter("token", 2, "usd", per=1000, max_units=4000, suggested_cap=10**9, description="bench")
        async def metered(request: web.Request) -> web.Response:
            counter[0] += 1
            meter_of(request).report(1000)
            return web.json_response(BODY)

        app.router.add_get("/item", metered)
    else:
        paid = seller.price(PRICE, "usd", "bench item", require_identity=identity)(handler)
        app.router.add_get("/item", paid)
    seller.setup(app)
    return app


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    from mpp.cli.serve import HEADER_LIMITS  # a credential with a mandate chain can pass 8 KiB

    counter = [0]
    app = build_app(args.kind, Path(args.workdir), store=args.store, ledger_url=args.ledger, sessions=args.sessions,
                    identity=args.identity, counter=counter)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **HEADER_LIMITS)
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
    return {"calls": counter[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("plain", "charge", "session", "trivial"))
    p.add_argument("--workdir", required=True)
    p.add_argument("--store", help="payment store URL (sqlite:///path)")
    p.add_argument("--ledger", help="ledger URL (sqlite:///path or postgresql://...)")
    p.add_argument("--sessions", help="session store URL (sqlite:///path)")
    p.add_argument("--identity", action="store_true", help="the route requires a mandate chain and proof")
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
            stats = asyncio.run(serve(args))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        stats = asyncio.run(serve(args))
    print("stats " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
