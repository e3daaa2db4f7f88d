"""`mpp ledger balance|fund|check|serve|key`: the operator's commands on a ledger, and the `mpp ledger`
parser (its account and membership commands are in mpp.cli.ledger)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from mpp.cli.common import EXIT_HTTP, EXIT_OK, EXIT_USAGE, err, ledger_path, on_ledger, pos_int
from mpp.cli.ledger import add_account_commands

__all__ = ["EPILOG_LEDGER_SERVE", "add_ledger_commands", "cmd_ledger_balance", "cmd_ledger_check", "cmd_ledger_fund",
           "cmd_ledger_key", "cmd_ledger_serve"]


def cmd_ledger_balance(args: argparse.Namespace) -> int:
    """`mpp ledger balance [ACCOUNT]`: balances and their total (always 0)."""
    async def work(ledger):
        accounts = [await ledger.account(args.account)] if args.account else await ledger.accounts()
        return accounts, await ledger.total()

    accounts, total = on_ledger(args, work)
    if args.json:
        print(json.dumps({"accounts": {a.id: a.balance for a in accounts}, "total": total}))
    else:
        width = max([len(a.id) for a in accounts] + [7])
        for a in accounts:
            print(f"{a.id:<{width}}  {a.balance:>12} {a.currency}")
        print(f"{'(total)':<{width}}  {total:>12}")
    return EXIT_OK


def cmd_ledger_fund(args: argparse.Namespace) -> int:
    """`mpp ledger fund ACCOUNT AMOUNT`: credit an account from the issuance account."""
    from mpp.ledger import UnknownAccount

    async def work(ledger):
        transfer = await ledger.fund(args.account, args.amount)
        return transfer, await ledger.balance(args.account)

    try:
        transfer, balance = on_ledger(args, work)
    except UnknownAccount:
        err(f"no account {args.account!r} at this ledger: create it first with "
             f"`mpp ledger account create {args.account} --owner DID{' --ledger ' + args.ledger if args.ledger else ''}`")
        return EXIT_USAGE
    print(f"funded {args.account} with {args.amount} {transfer.currency} (transfer {transfer.id}); balance {balance}")
    return EXIT_OK


def cmd_ledger_check(args: argparse.Namespace) -> int:
    """`mpp ledger check`: verify the double-entry invariants (exit 1 if broken)."""
    async def work(ledger):
        return await ledger.check(), await ledger.total()

    problems, total = on_ledger(args, work)
    if total != 0:
        problems.append(f"balances sum to {total}, not 0")
    for p in problems:
        err(p)
    if not problems:
        print("ledger consistent: every transfer balances, every balance matches its postings, total 0")
    return EXIT_OK if not problems else EXIT_HTTP


def _seller_entries(args: argparse.Namespace) -> dict[str, str]:
    """--seller DID=ACCOUNT flags, after the [[sellers]] of --config (a flag wins for its DID)."""
    import tomllib

    from mpp.protocol.keys import public_key_from_did

    entries: list[tuple[str, str, str]] = []
    if args.config:
        try:
            raw = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{args.config}: not valid TOML: {exc}") from None
        for i, item in enumerate(raw.get("sellers", [])):
            if not isinstance(item, dict) or not isinstance(item.get("did"), str) or not isinstance(item.get("account"), str):
                raise ValueError(f"{args.config}: sellers[{i}] needs did = \"did:key:...\" and account = \"acct:...\"")
            entries.append((item["did"], item["account"], f"{args.config}: sellers[{i}]"))
    for item in args.seller:
        did, sep, account = item.partition("=")
        if not sep or not account:
            raise ValueError(f"--seller must be DID=ACCOUNT, got {item!r}")
        entries.append((did.strip(), account.strip(), f"--seller {item!r}"))
    sellers: dict[str, str] = {}
    for did, account, where in entries:
        try:
            public_key_from_did(did)
        except ValueError:
            raise ValueError(f"{where}: {did!r} is not an Ed25519 did:key (did:key:z6Mk...)") from None
        sellers[did] = account
    return sellers


def cmd_ledger_serve(args: argparse.Namespace) -> int:
    """`mpp ledger serve`: serve the ledger over HTTP to the registered sellers until SIGINT or SIGTERM."""
    import tomllib

    from aiohttp import web

    from mpp.ledger import UnknownAccount
    from mpp.ledger.nonces import nonces_for
    from mpp.ledger.service import ledger_app
    from mpp.connect import is_postgres, ledger_for

    config: dict = {}
    if args.config:
        try:
            config = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{args.config}: not valid TOML: {exc}") from None
    if args.ledger is None and isinstance(config.get("ledger"), str):
        given = config["ledger"]  # a URL as it is; a path relative to the file
        args.ledger = given if "://" in given or given.startswith("sqlite:") else str(Path(args.config).parent / given)
    sellers = _seller_entries(args)
    if not sellers:
        err("no sellers: register each seller's key and payee account with --seller DID=ACCOUNT (repeatable)")
        return EXIT_USAGE
    location = ledger_path(args)
    host = args.host or config.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(config.get("port", 8403))

    async def run() -> None:
        ledger = ledger_for(location)
        nonces = nonces_for(location)  # beside the ledger: shared by every service process on it
        try:
            await ledger.open()
            for did, account in sellers.items():
                try:
                    await ledger.account(account)
                except UnknownAccount:
                    await ledger.create_account(account, args.currency)
                    print(f"created payee account {account} ({args.currency}) for {did}", flush=True)
                    continue
                owners = sorted(d for d, role in (await ledger.keys.members(account)).items() if role == "owner")
                if owners:  # whoever owns a payee account can spend what its seller earns
                    print(f"warning: payee account {account} of {did} has owners who can spend its revenue: "
                          f"{', '.join(owners)}", file=sys.stderr, flush=True)
        except BaseException:
            await nonces.close()
            await ledger.close()
            raise
        app = ledger_app(ledger, sellers=sellers, close_ledger=True, nonces=nonces, open_accounts=args.open_accounts)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port
            shown = host if ":" not in host else f"[{host}]"
            engine = "postgresql" if is_postgres(location) else "sqlite"
            print(f"mpp ledger ready on http://{shown}:{bound} ledger={ledger.ledger_id} engine={engine} "
                  f"sellers={len(sellers)}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())
    return EXIT_OK


def cmd_ledger_key(args: argparse.Namespace) -> int:
    """`mpp ledger key PATH`: make a seller's key for a ledger service if there is none, and print its DID."""
    from mpp.protocol.keys import SigningKey

    path = Path(args.path)
    if path.exists() and not args.force:
        key = SigningKey.load(path)  # an existing key is shown, never replaced (IDENT-KEY-07)
    else:
        key = SigningKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        key.save(path, force=args.force)
    print(key.did)
    return EXIT_OK


EPILOG_LEDGER_SERVE = """Each seller signs its requests with its own Ed25519 key (the DID) and may credit only
the payee account it is registered with; a payee account that does not exist yet is
created, empty, in --currency. A seller uses the service with, in its seller.toml:

  ledger_url = "http://127.0.0.1:8403"
  ledger_key = "seller/ledger.key"      # the key whose DID is registered here

(`mpp ledger key seller/ledger.key` makes such a key and prints its DID.)

instead of ledger = "ledger.db". --ledger (or ledger = in --config) is a SQLite file or a
postgresql://user@host:port/db URL; several `mpp ledger serve` processes may share one
PostgreSQL ledger (request nonces are kept in the ledger's database, so a replay is refused by
every one of them). --config names a TOML file with any of
  ledger = "ledger.db"   host = "127.0.0.1"   port = 8403
  [[sellers]]
  did = "did:key:z6Mk..."
  account = "acct:seller"
The wire format is in spec/methods/ledger.md, section 7.
"""
"""The help text after `mpp ledger serve --help`'s options: how sellers are registered with the service."""


def add_ledger_commands(sub: Any) -> None:
    """`mpp ledger` and its subcommands."""
    s = sub.add_parser("ledger", help="inspect or fund the ledger, manage who may spend from its accounts, or serve it over HTTP")
    lsub = s.add_subparsers(dest="ledger_command", required=True, metavar="SUBCOMMAND")
    for name, func, helptext in (
        ("balance", cmd_ledger_balance, "print balances and their total (always 0)"),
        ("fund", cmd_ledger_fund, "credit an account from the issuance account"),
        ("check", cmd_ledger_check, "verify the double-entry invariants"),
    ):
        t = lsub.add_parser(name, help=helptext)
        t.add_argument("--ledger", help="ledger: SQLite file or postgresql:// URL (default $MPP_HOME/ledger.db, "
                                        "MPP_HOME defaulting to ./mpp-home)")
        if name == "balance":
            t.add_argument("account", nargs="?", help="one account (default: all)")
            t.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "fund":
            t.add_argument("account")
            t.add_argument("amount", type=pos_int, help="base units")
        t.set_defaults(func=func)

    t = lsub.add_parser("serve", help="serve the ledger over HTTP to sellers that sign their requests",
                        epilog=EPILOG_LEDGER_SERVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--ledger", help="ledger: SQLite file or postgresql:// URL (default $MPP_HOME/ledger.db, "
                                    "MPP_HOME defaulting to ./mpp-home)")
    t.add_argument("--config", metavar="TOML", help="ledger, host, port and [[sellers]] from a file")
    t.add_argument("--seller", action="append", default=[], metavar="DID=ACCOUNT",
                   help="a seller's did:key and the one payee account it may credit (repeatable)")
    t.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=None, help="port (default 8403; 0 picks a free one)")
    t.add_argument("--currency", default="usd", help="currency of payee accounts created here (default usd)")
    t.add_argument("--open-accounts", action="store_true",
                   help="let any key create an account over the service, owned by that key (default: only the operator "
                        "creates accounts, with `mpp ledger account create`)")
    t.set_defaults(func=cmd_ledger_serve)
    add_account_commands(lsub)
    t = lsub.add_parser("key", help="make a seller's key for a ledger service (if PATH does not exist) and print its DID")
    t.add_argument("path", metavar="PATH", help="the key file (PEM), e.g. seller/ledger.key")
    t.add_argument("--force", action="store_true", help="replace the key at PATH with a new one")
    t.set_defaults(func=cmd_ledger_key)
