"""`mpp seller serve|usage`: run a seller from its configuration, or export its usage and revenue
(spec/pricing.md §8)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from mpp.cli.common import EXIT_HTTP, EXIT_OK, EXIT_USAGE, err, pos_int

__all__ = ["add_seller_commands", "cmd_seller_serve", "cmd_seller_usage", "StartupRefused"]


def cmd_seller_serve(args: argparse.Namespace) -> int:
    """`mpp seller serve`: serve the priced routes of a seller configuration until SIGINT or SIGTERM."""
    from aiohttp import web

    from mpp.cli.serve import HEADER_LIMITS, build_seller_app, check_embedded_ledger, check_evm
    from mpp.aio.workers import on_reload_signal
    from mpp.cli.config import load_seller_config

    config = load_seller_config(args.config)
    if args.trust_principal:
        from mpp.protocol.keys import public_key_from_did

        for did in args.trust_principal:
            try:
                public_key_from_did(did)
            except ValueError:  # ParseError included
                err(f"--trust-principal {did!r} is not an Ed25519 did:key (did:key:z6Mk...)")
                return EXIT_USAGE
        added = [did for did in args.trust_principal if did not in config.trusted_principals]
        config = config.model_copy(update={"trusted_principals": [*config.trusted_principals, *added]})
    check_embedded_ledger(config)  # a missing ledger file or recipient account: refused before serving
    check_evm(config)  # [evm]: an unreadable key file, a node that does not answer or is on another chain
    if args.asgi:
        return _serve_asgi(config, args)
    if args.workers > 1:
        return _serve_workers(config, args)
    app, seller = build_seller_app(config)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None, **HEADER_LIMITS)
        try:
            await runner.setup()  # the startup hooks: a rail that cannot start (the node moved to another chain...)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback; the caller exits 2
            await runner.cleanup()
            raise StartupRefused(f"the seller did not start: {exc}") from None
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port
        print(_ready_line(config, seller, args.host, port, 1), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_reload_signal(app)  # SIGHUP: reload the price list (spec/pricing.md PRICE-VER-02)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
    return EXIT_OK


def _ready_line(config, seller, host: str, port: int, workers: int) -> str:
    listed = f" price_list={seller.price_list.version}" if seller is not None and seller.price_list is not None else ""
    routes = len(config.routes) + (len(seller.price_list.routes) if seller is not None and seller.price_list is not None else 0)
    host = host if ":" not in host else f"[{host}]"
    return (f"mpp seller ready on http://{host}:{port} realm={config.realm} routes={routes}{listed}"
            + (f" workers={workers}" if workers > 1 else ""))


def _serve_asgi(config, args: argparse.Namespace) -> int:
    """``--asgi``: the same seller through the ASGI adapter, served by uvicorn (``--workers N`` too)."""
    from mpp.aio.workers import serve_forked

    try:
        from mpp.cli.serve_asgi import build_seller_asgi, serve_asgi, worker_tag
    except ImportError as exc:  # the asgi extra is not installed
        err(f"--asgi needs starlette and uvicorn ({exc}): pip install 'mpp-reference[asgi]'")
        return EXIT_USAGE
    if args.workers > 1:
        _check_price_list(config)
    sock = _listen(args)
    if sock is None:
        return EXIT_USAGE
    port = sock.getsockname()[1]
    if args.workers == 1:
        app, seller, reload = build_seller_asgi(config)
        ready = lambda: print(_ready_line(config, seller, args.host, port, 1), flush=True)  # noqa: E731
        return asyncio.run(serve_asgi(app, sock, ready, reload))

    async def child(sock, index: int, ready_fd: int | None) -> None:
        app, _, reload = build_seller_asgi(config)

        def ready() -> None:
            if ready_fd is not None:  # serving, and SIGHUP now reloads: tell the parent
                os.write(ready_fd, b".")
                os.close(ready_fd)

        code = await serve_asgi(worker_tag(app, index), sock, ready, reload)
        if code:
            raise RuntimeError(f"the ASGI application did not start (status {code})")

    return serve_forked(None, sock, args.workers, child=child,
                        on_ready=lambda: print(_ready_line(config, None, args.host, port, args.workers), flush=True))


def _listen(args: argparse.Namespace):
    """The listening socket of --host and --port; None (and the reason said) if it cannot be had."""
    from mpp.aio.workers import bind

    try:
        return bind(args.host, args.port)
    except OSError as exc:
        err(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return None


def _check_price_list(config) -> None:
    """Refuse a price list that does not load here, once, rather than in every worker."""
    if config.price_list is not None:
        from mpp.pricing import PriceListError, load_price_list

        source = config.resolve(config.price_list)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceListError(source, [(1, f"cannot read the price list: {exc}")]) from None
        load_price_list(text, source=source)


def _serve_workers(config, args: argparse.Namespace) -> int:
    """``--workers N``: N processes accept on one socket and share the seller's stores."""
    from mpp.cli.serve import HEADER_LIMITS, build_seller_app
    from mpp.aio.workers import serve_forked

    _check_price_list(config)
    sock = _listen(args)
    if sock is None:
        return EXIT_USAGE
    port = sock.getsockname()[1]
    return serve_forked(lambda: build_seller_app(config)[0], sock, args.workers, runner_kwargs=HEADER_LIMITS,
                        on_ready=lambda: print(_ready_line(config, None, args.host, port, args.workers), flush=True))


class StartupRefused(ValueError):
    """A startup hook of the seller's application failed (a rail that cannot start): reported as one
    line, exit 2."""


class _Stopping:
    """Something to ``close()`` that is stopped (a ledger service client)."""

    def __init__(self, rail) -> None:
        self.rail = rail

    async def close(self) -> None:
        await self.rail.stop()


def cmd_seller_usage(args: argparse.Namespace) -> int:
    """`mpp seller usage` (spec/pricing.md §8): the seller's purchases of a window from its payment
    and session stores, checked against the ledger's transfers to its payee (PRICE-USAGE-02)."""
    from datetime import datetime, timedelta, timezone

    from mpp.stores.sqlite import sqlite_path
    from mpp.cli.config import load_seller_config
    from mpp.connect import is_postgres, open_ledger, open_payment_store, open_session_store
    from mpp.engine.usage import build_report, format_csv, format_table, ledger_transfers, parse_time, read_usage, reconcile

    now = datetime.now(timezone.utc)
    times = {}
    for name in ("since", "until"):
        try:
            text = getattr(args, name)
            # without --until: up to now, this second included (the records keep times to the second)
            times[name] = parse_time(text, now=now) if text else parse_time("0s", now=now) + timedelta(seconds=1)
        except ValueError as exc:
            err(f"--{name}: {exc}")
            return EXIT_USAGE
    since, until = times["since"], times["until"]
    if since >= until:
        err(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
        return EXIT_USAGE
    config = load_seller_config(args.config)

    def present(location: str) -> bool:  # reading must not create an empty SQLite store
        return is_postgres(location) or Path(sqlite_path(location)).exists()

    async def run():
        opened = []
        try:
            stores = []
            for location, opener in ((config.locate(config.store), open_payment_store),
                                     (config.sessions_location, open_session_store)):
                stores.append(await opener(location) if present(location) else None)
                opened.append(stores[-1])
            records = await read_usage(*stores, since=since, until=until)
            if config.ledger is not None:
                location = config.locate(config.ledger)
                if not present(location):
                    raise FileNotFoundError(f"no ledger at {location} (the seller configuration's ledger)")
                ledger = await open_ledger(location)
                opened.append(ledger)
            elif config.ledger_url is None:  # evm-only: no ledger to check against
                raise ValueError("this seller has no ledger (only [evm]): `mpp seller usage` checks a ledger's "
                                 "transfers, and the chain's are not read yet")
            else:  # a ledger service: it lists this seller's own transfers (LEDGER-SVC-11)
                from mpp.aio.rails import HttpLedgerRail
                from mpp.protocol.keys import SigningKey

                assert config.ledger_url is not None and config.ledger_key is not None
                ledger = HttpLedgerRail(config.ledger_url, key=SigningKey.load(config.resolve(config.ledger_key)),
                                        recipient=config.recipient, reconcile_interval=0, attempts=2)
                await ledger.start()
                opened.append(_Stopping(ledger))
            transfers = await ledger_transfers(ledger, config.recipient, since=since, until=until)
            return records, transfers
        finally:
            for store in opened:
                if store is not None:
                    await store.close()

    records, transfers = asyncio.run(run())
    report = build_report(records, since=since, until=until, by=args.by)
    problems = reconcile(report, records, transfers, config.recipient)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        sys.stdout.write(format_csv(report))
    else:
        sys.stdout.write(format_table(report))
        if not problems:
            print(f"equal to the ledger's transfers to {config.recipient} in the window")
    for problem in problems:
        err(problem)
    return EXIT_HTTP if problems else EXIT_OK


def add_seller_commands(sub: Any) -> None:
    """`mpp seller` and its subcommands."""
    s = sub.add_parser("seller", help="run a seller, or export its usage and revenue")
    ssub = s.add_subparsers(dest="seller_command", required=True, metavar="SUBCOMMAND")
    t = ssub.add_parser("serve", help="serve the priced routes of a seller configuration",
                        epilog="Before serving, an embedded SQLite ledger is checked: a `ledger` file that does not "
                               "exist is refused (a mistyped name would start an empty ledger) unless seller.toml "
                               "sets `create_ledger = true`, which makes it with the `recipient` account; the "
                               "recipient account must be on the ledger (`mpp ledger account create ACCOUNT`), and "
                               "every `trusted_principals` entry must be an Ed25519 did:key.")
    t.add_argument("--config", required=True, help="seller.toml written by `mpp init`")
    t.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=8402, help="port (default 8402; 0 picks a free one)")
    t.add_argument("--workers", type=pos_int, default=1, metavar="N",
                   help="seller processes sharing the port and the stores (default 1); challenges are stateless, "
                        "and each is settled by exactly one process")
    t.add_argument("--asgi", action="store_true",
                   help="serve through the ASGI adapter (Starlette under uvicorn) instead of aiohttp; the same seller, "
                        "routes and stores")
    t.add_argument("--trust-principal", action="append", default=[], metavar="DID",
                   help="also accept mandates of this principal (an Ed25519 did:key; repeatable), besides trusted_principals in the configuration")
    t.set_defaults(func=cmd_seller_serve)
    t = ssub.add_parser("usage", help="usage and revenue of a window from the seller's records, checked against the ledger",
                        description="One row per purchase (or per group with --by), then the totals per currency, of "
                                    "[--since, --until). Exit 1 if the totals differ from the ledger's transfers to the "
                                    "seller's account in the window (spec/pricing.md PRICE-USAGE-02).")
    t.add_argument("--config", required=True, help="seller.toml written by `mpp init`")
    t.add_argument("--since", required=True, metavar="T",
                   help="start (inclusive): RFC 3339 (2025-06-01T00:00:00Z), a date (2025-06-01, UTC) or a span before now (24h, 7d)")
    t.add_argument("--until", metavar="T", help="end (exclusive), in the same forms (default: now, this second included)")
    t.add_argument("--by", choices=["agent", "principal", "route", "model"], help="one row per group and currency")
    form = t.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help='one JSON document {"since", "until", "by", "rows", "totals"}')
    form.add_argument("--csv", action="store_true", help="RFC 4180 CSV with a header line (rows only)")
    t.set_defaults(func=cmd_seller_usage)
