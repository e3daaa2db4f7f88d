"""The `mpp` command line. Errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

EXIT_OK = 0
EXIT_HTTP = 1  # the request was answered, but not with success
EXIT_USAGE = 2
EXIT_POLICY = 3  # the buyer refused the quote; nothing was signed
EXIT_REFUSED = 4  # the seller refused the credential
EXIT_UNKNOWN = 5  # credential sent, outcome unknown: do not retry blindly
EXIT_RECEIPT = 6  # paid, but the receipt does not verify

EPILOG_FETCH = """exit codes:
  0  success (2xx), paid or free
  1  the server answered with an error that was not about payment
  2  bad arguments or wallet
  3  the quote broke the wallet's policy (amount, currency, recipient, expiry, origin); nothing was signed
  4  the seller refused the credential (its problem document is printed on stderr)
  5  the credential was sent but the outcome is unknown (5xx or network error): check before retrying
  6  the seller answered 2xx but its receipt did not verify

several offers (a seller's price list): the offer with the lowest expected total for the planned
work (--planned-requests, --planned-units) among those the mandate chain allows and the policy
accepts, or an offer of the --prefer model when there is an acceptable one; a seat (a recurring
payment per period) only with --allow-recurring. A task or seat purchase brings a grant that
covers its follow-up requests: within one run, those are made with the grant instead of paying.
"""

EPILOG_MAIN = """exit codes:
  0  success
  1  the request or check did not succeed (see the message)
  2  bad arguments, configuration, wallet or ledger
  3-6  payment outcomes of `mpp fetch` (see `mpp fetch --help`)
"""


def _err(msg: str) -> None:
    print(f"mpp: {msg}", file=sys.stderr)


# -- init ------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from mpp.cli.config import init_home

    info = init_home(args.dir, funding=args.funding, realm=args.realm, max_amount=args.max_amount, force=args.force)
    print(f"initialised {args.dir}")
    print(f"  seller config : {info['seller_config']}")
    print(f"  agent wallet  : {info['wallet']}  ({info['agent_did']})")
    funded = f"acct:buyer funded with {args.funding}" if info["funded"] else "kept, with its balances"
    print(f"  ledger        : {info['ledger']}  ({funded})")
    return EXIT_OK


# -- seller ----------------------------------------------------------------


def cmd_seller_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from mpp.cli.serve import HEADER_LIMITS, build_seller_app
    from mpp.aio.workers import on_reload_signal
    from mpp.cli.config import load_seller_config

    config = load_seller_config(args.config)
    if args.trust_principal:
        from mpp.protocol.keys import public_key_from_did

        for did in args.trust_principal:
            try:
                public_key_from_did(did)
            except ValueError:  # ParseError included
                _err(f"--trust-principal {did!r} is not an Ed25519 did:key (did:key:z6Mk...)")
                return EXIT_USAGE
        added = [did for did in args.trust_principal if did not in config.trusted_principals]
        config = config.model_copy(update={"trusted_principals": [*config.trusted_principals, *added]})
    if args.workers > 1:
        return _serve_workers(config, args)
    app, seller = build_seller_app(config)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None, **HEADER_LIMITS)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port
        host = args.host if ":" not in args.host else f"[{args.host}]"
        listed = f" price_list={seller.price_list.version}" if seller.price_list is not None else ""
        routes = len(config.routes) + (len(seller.price_list.routes) if seller.price_list is not None else 0)
        print(f"mpp seller ready on http://{host}:{port} realm={config.realm} routes={routes}{listed}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_reload_signal(app)  # SIGHUP: reload the price list (spec/pricing.md PRICE-VER-02)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
    return EXIT_OK


def _serve_workers(config, args: argparse.Namespace) -> int:
    """``--workers N``: N processes accept on one socket and share the seller's stores."""
    from mpp.cli.serve import HEADER_LIMITS, build_seller_app
    from mpp.aio.workers import bind, serve_forked

    if config.price_list is not None:  # refused here, once, rather than by every worker
        from mpp.pricing import PriceListError, load_price_list

        source = config.resolve(config.price_list)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceListError(source, [(1, f"cannot read the price list: {exc}")]) from None
        load_price_list(text, source=source)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        _err(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_USAGE
    port = sock.getsockname()[1]
    host = args.host if ":" not in args.host else f"[{args.host}]"

    def ready() -> None:
        print(f"mpp seller ready on http://{host}:{port} realm={config.realm} routes={len(config.routes)} "
              f"workers={args.workers}", flush=True)

    return serve_forked(lambda: build_seller_app(config)[0], sock, args.workers, runner_kwargs=HEADER_LIMITS, on_ready=ready)


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
            _err(f"--{name}: {exc}")
            return EXIT_USAGE
    since, until = times["since"], times["until"]
    if since >= until:
        _err(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
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
        _err(problem)
    return EXIT_HTTP if problems else EXIT_OK


# -- fetch -----------------------------------------------------------------


def _parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header must be 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def cmd_fetch(args: argparse.Namespace) -> int:
    import aiohttp

    import dataclasses

    from mpp.aio.buyer import PaymentClient
    from mpp.aio.sessions import SessionPolicy
    from mpp.buyer.core import OfferPlan
    from mpp.cli.config import load_wallet
    from mpp.protocol.errors import NoPayableChallenge, OutcomeUnknown, PaymentFailed, QuoteRejected, ReceiptInvalid
    from mpp.methods.ledger import LedgerBuyerMethod

    wallet = load_wallet(args.wallet, max_amount=args.max_amount)
    if args.allow_recurring:
        wallet = dataclasses.replace(wallet, policy=dataclasses.replace(wallet.policy, allow_recurring=True))
    plan = OfferPlan(planned_requests=args.planned_requests, planned_units=args.planned_units,
                     prefer=None if args.prefer == "cheapest" else args.prefer)
    # A unit offer is paid by a session, opened only when units are planned or preferred; one run closes it.
    sessions = SessionPolicy(max_cap=max(1, wallet.policy.max_amount)) if (
        args.planned_units is not None or args.prefer == "unit") else None
    method = args.method or ("POST" if args.data is not None else "GET")
    data = args.data.encode("utf-8") if args.data is not None else None
    headers = _parse_headers(args.header)

    identity, audit = _wallet_identity(wallet, args)

    async def run() -> int:
        from mpp.connect import ensure_open

        # Opened before anything is sent (a PostgreSQL location that cannot be reached fails here), closed after.
        stores = [s for s in (audit, identity.budget if identity is not None else None) if s is not None]
        try:
            for store in stores:
                await ensure_open(store)
            return await fetch()
        finally:
            for store in stores:
                await store.close()

    async def fetch() -> int:
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = PaymentClient(
                session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                identity=identity, on_event=(lambda kind, data: audit.append(kind, data)) if audit else None,
                plan=plan, sessions=sessions,
            )
            try:
                if args.credential_only:
                    credential = await client.credential(method, args.url, data=data)
                    if credential is None:
                        _err("the resource did not ask for payment; no credential to print")
                        return EXIT_HTTP
                    print(credential)
                    return EXIT_OK
                resp = await client.request(method, args.url, data=data, headers=headers)
                if sessions is not None:
                    await client.close_sessions()
            except QuoteRejected as exc:
                _err(f"refused to pay ({exc.rule}): {exc.detail}")
                return EXIT_POLICY
            except NoPayableChallenge as exc:
                _err(f"{exc}: " + "; ".join(exc.reasons))
                return EXIT_POLICY
            except PaymentFailed as exc:
                _err(str(exc))
                if exc.problem:
                    print(json.dumps(exc.problem, indent=2), file=sys.stderr)
                return EXIT_REFUSED
            except OutcomeUnknown as exc:
                _err(f"{exc} (challenge {exc.challenge_id}); the payment may have settled: check before retrying")
                return EXIT_UNKNOWN
            except ReceiptInvalid as exc:
                _err(f"paid, but the receipt is not valid: {exc}")
                return EXIT_RECEIPT
            except aiohttp.ClientError as exc:
                _err(f"request failed before any payment: {exc}")
                return EXIT_HTTP
        sys.stdout.write(resp.text())
        if not resp.text().endswith("\n"):
            sys.stdout.write("\n")
        if resp.receipt is not None:
            summary = {
                "verified": True,
                "challengeId": resp.receipt.challengeId,
                "reference": resp.receipt.reference,
                "method": resp.receipt.method,
                "timestamp": resp.receipt.timestamp,
                "amount": resp.claims["amount"],
                "currency": resp.claims["currency"],
                "recipient": resp.claims["recipient"],
                "resource": resp.claims.get("resource"),
                "issuer": resp.claims["iss"],
            }
            for name in ("agent", "principal", "mandate", "approval", "decision"):
                if resp.claims.get(name) is not None:
                    summary[name] = resp.claims[name]
            print("receipt: " + json.dumps(summary), file=sys.stderr)
        return EXIT_OK if resp.status < 400 else EXIT_HTTP

    return asyncio.run(run())


def _wallet_identity(wallet, args: argparse.Namespace):
    """The agent's mandate chain, budget counters, approval hook and audit log, if it has them
    (counters and log: a SQLite file or a postgresql:// URL, opened by the caller's event loop)."""
    from mpp.connect import audit_log_for, budget_store_for

    audit = audit_log_for(wallet.audit_path) if wallet.audit_path else None
    if not wallet.mandates or args.no_identity:
        return None, audit
    from datetime import datetime, timezone

    from mpp.aio.agent import AgentIdentity
    from mpp.identity import issue_approval
    from mpp.protocol.keys import SigningKey

    approver = None
    if args.approve_with:
        approver_key = SigningKey.load(args.approve_with)

        def approver(problem: dict) -> str | None:
            print(f"approving: {problem.get('rule')} rule, {problem.get('amount')} {problem.get('currency')}"
                  f" for challenge {str(problem.get('challengeId'))[:12]}...", file=sys.stderr)
            return issue_approval(approver_key, agent=wallet.key.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                  amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                  mandate=problem["mandate"], now=datetime.now(timezone.utc))

    budget = budget_store_for(wallet.budget_path) if wallet.budget_path else None
    return AgentIdentity(wallet.key, wallet.mandates, budget, approver), audit


# -- ledger ----------------------------------------------------------------


def _ledger_path(args: argparse.Namespace) -> str:
    """--ledger (a SQLite file, ``sqlite:`` URL or ``postgresql://`` URL), else $MPP_HOME/ledger.db.
    A SQLite ledger must exist already (`mpp init` makes one); PostgreSQL tables are made on first use."""
    from mpp.connect import is_postgres

    path = args.ledger or os.path.join(os.environ.get("MPP_HOME", "mpp-home"), "ledger.db")
    if is_postgres(path):
        return path
    from mpp.stores.sqlite import sqlite_path

    if not Path(sqlite_path(path)).exists():
        raise FileNotFoundError(f"no ledger at {path}; run `mpp init DIR` and pass --ledger DIR/ledger.db")
    return path


def _on_ledger(args: argparse.Namespace, work):
    """Run ``await work(ledger)`` on the ledger --ledger names (either engine), then close it."""
    from mpp.connect import open_ledger

    async def run():
        ledger = await open_ledger(_ledger_path(args))
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())


def cmd_ledger_balance(args: argparse.Namespace) -> int:
    async def work(ledger):
        accounts = [await ledger.account(args.account)] if args.account else await ledger.accounts()
        return accounts, await ledger.total()

    accounts, total = _on_ledger(args, work)
    if args.json:
        print(json.dumps({"accounts": {a.id: a.balance for a in accounts}, "total": total}))
    else:
        width = max([len(a.id) for a in accounts] + [7])
        for a in accounts:
            print(f"{a.id:<{width}}  {a.balance:>12} {a.currency}")
        print(f"{'(total)':<{width}}  {total:>12}")
    return EXIT_OK


def cmd_ledger_fund(args: argparse.Namespace) -> int:
    from mpp.ledger import UnknownAccount

    async def work(ledger):
        transfer = await ledger.fund(args.account, args.amount)
        return transfer, await ledger.balance(args.account)

    try:
        transfer, balance = _on_ledger(args, work)
    except UnknownAccount:
        _err(f"no account {args.account!r} at this ledger: create it first with "
             f"`mpp ledger account create {args.account} --owner DID{' --ledger ' + args.ledger if args.ledger else ''}`")
        return EXIT_USAGE
    print(f"funded {args.account} with {args.amount} {transfer.currency} (transfer {transfer.id}); balance {balance}")
    return EXIT_OK


def cmd_ledger_check(args: argparse.Namespace) -> int:
    async def work(ledger):
        return await ledger.check(), await ledger.total()

    problems, total = _on_ledger(args, work)
    if total != 0:
        problems.append(f"balances sum to {total}, not 0")
    for p in problems:
        _err(p)
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
        _err("no sellers: register each seller's key and payee account with --seller DID=ACCOUNT (repeatable)")
        return EXIT_USAGE
    location = _ledger_path(args)
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


# -- audit -----------------------------------------------------------------


def _audit_location(args: argparse.Namespace) -> str:
    """--log (a path, sqlite: URL or postgresql:// URL), else $MPP_HOME/audit.db; it must hold a log."""
    from mpp.stores.sqlite import sqlite_path
    from mpp.connect import is_postgres

    location = args.log or os.path.join(os.environ.get("MPP_HOME", "mpp-home"), "audit.db")
    if not is_postgres(location) and not Path(sqlite_path(location)).exists():
        raise FileNotFoundError(f"no audit log at {location}; pass --log PATH or set MPP_HOME")
    return location


async def _with_audit_log(location: str, use):
    """Run ``await use(log)`` on the audit log at ``location``, opened for it and closed after."""
    from mpp.connect import is_postgres, open_audit_log

    if is_postgres(location):
        from mpp.stores.pg.audit import audit_log_exists

        if not await audit_log_exists(location):  # reading must not create an empty log and call it intact
            raise FileNotFoundError("no audit log in that PostgreSQL database (nothing was ever appended there)")
    log = await open_audit_log(location)
    try:
        return await use(log)
    finally:
        await log.close()


def _short(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 9] + "..." + text[-6:]


def cmd_audit_show(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_audit_log(_audit_location(args), lambda log: log.purchases(agent=args.agent, principal=args.principal)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no purchases recorded")
        return EXIT_OK
    # DETAIL (last, never cut): the settlement reference, or why the purchase was refused.
    columns = (("TIME", 19), ("OUTCOME", 8), ("AMOUNT", 12), ("RESOURCE", 28), ("DECISION", 19), ("AGENT", 24), ("CHALLENGE", 16))
    print("  ".join(f"{name:<{width}}" for name, width in columns) + "  DETAIL")
    for r in rows:
        amount = "-" if r["amount"] is None else f"{r['amount']} {r['currency'] or ''}".strip()
        detail = r["reference"] if r["outcome"] == "settled" else r["reason"]
        cells = (r["ts"][:19], r["outcome"], amount, r["resource"], r["decision"], r["agent"], r["challengeId"])
        print("  ".join(f"{_short(c, w):<{w}}" for c, (_, w) in zip(cells, columns)) + f"  {detail or '-'}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from mpp.stores.audit import AuditChainBroken

    async def verify(log) -> tuple[int, str]:
        await log.verify()
        return await log.head()

    try:
        seq, digest = asyncio.run(_with_audit_log(_audit_location(args), verify))
    except AuditChainBroken as exc:
        _err(str(exc))
        return EXIT_HTTP
    print(f"audit log intact: {seq} entries, head {seq} {digest[:16] or '-'}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from mpp.cli.demo import run_demo

    return run_demo(args.dir)


# -- parser ----------------------------------------------------------------


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative integer (base units)")
    return value


def _pos_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer (base units)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpp",
        description="Machine payments over the HTTP Payment scheme: seller, buyer, ledger.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create an agent key, a funded payer account and a seller configuration")
    s.add_argument("dir", metavar="DIR", help="directory to create (must not be initialised yet, unless --force)")
    s.add_argument("--funding", type=_pos_int, default=100_000, help="initial balance of acct:buyer in base units (default 100000)")
    s.add_argument("--realm", default="mpp.local", help="the seller's realm (default mpp.local)")
    s.add_argument("--max-amount", type=_nonneg_int, default=1_000, help="the wallet's per-purchase limit (default 1000)")
    s.add_argument("--force", action="store_true", help="re-initialise DIR: replace its keys, secret, mandate and configuration")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("seller", help="run a seller, or export its usage and revenue")
    ssub = s.add_subparsers(dest="seller_command", required=True, metavar="SUBCOMMAND")
    t = ssub.add_parser("serve", help="serve the priced routes of a seller configuration")
    t.add_argument("--config", required=True, help="seller.toml written by `mpp init`")
    t.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=8402, help="port (default 8402; 0 picks a free one)")
    t.add_argument("--workers", type=_pos_int, default=1, metavar="N",
                   help="seller processes sharing the port and the stores (default 1); challenges are stateless, "
                        "and each is settled by exactly one process")
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

    s = sub.add_parser(
        "fetch",
        help="request a URL, paying if asked and if the wallet's policy allows",
        epilog=EPILOG_FETCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("url", metavar="URL")
    s.add_argument("--wallet", required=True, help="agent wallet directory (DIR/agent from `mpp init`)")
    s.add_argument("--data", help="request body; implies POST unless --method is given")
    s.add_argument("--method", choices=["GET", "POST", "PUT", "PATCH", "DELETE"], help="HTTP method")
    s.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable), e.g. 'Idempotency-Key: abc'")
    s.add_argument("--max-amount", type=_nonneg_int, help="per-purchase limit in base units (overrides the wallet's)")
    s.add_argument("--credential-only", action="store_true", help="print the Authorization value for the current quote instead of sending it")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole exchange (default 30)")
    s.add_argument("--no-identity", action="store_true", help="pay without presenting the wallet's mandate chain")
    s.add_argument("--approve-with", metavar="KEY.pem", help="principal (or approver) key that signs an approval when the seller asks for one")
    s.add_argument("--prefer", choices=["cheapest", "transaction", "unit", "task", "seat"], default="cheapest",
                   help="among several offers: this pricing model when acceptable, else the cheapest (default: cheapest)")
    s.add_argument("--planned-requests", type=_pos_int, default=1, metavar="N",
                   help="requests (or tasks) planned for the route, to compare offers by (default 1)")
    s.add_argument("--planned-units", type=_pos_int, metavar="N",
                   help="units planned in all, for unit offers (opens a session, capped by --max-amount)")
    s.add_argument("--allow-recurring", action="store_true",
                   help="allow a seat (a recurring payment per period); refused by default")
    s.set_defaults(func=cmd_fetch)

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
            t.add_argument("amount", type=_pos_int, help="base units")
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
    from mpp.cli.ledger import add_account_commands

    add_account_commands(lsub)
    t = lsub.add_parser("key", help="make a seller's key for a ledger service (if PATH does not exist) and print its DID")
    t.add_argument("path", metavar="PATH", help="the key file (PEM), e.g. seller/ledger.key")
    t.add_argument("--force", action="store_true", help="replace the key at PATH with a new one")
    t.set_defaults(func=cmd_ledger_key)

    s = sub.add_parser("audit", help="read and check the identity audit log")
    asub = s.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    for name, func, helptext in (
        ("show", cmd_audit_show, "one row per purchase: amount, resource, agent, decision, outcome"),
        ("verify", cmd_audit_verify, "check the hash chain and the head (exit 1 if broken)"),
    ):
        t = asub.add_parser(name, help=helptext)
        t.add_argument("--log", help="audit log: a SQLite file or postgresql:// URL "
                                     "(default $MPP_HOME/audit.db, MPP_HOME defaulting to ./mpp-home)")
        if name == "show":
            t.add_argument("--agent", metavar="DID", help="only purchases by this agent")
            t.add_argument("--principal", metavar="DID", help="only purchases under this principal")
            t.add_argument("--json", action="store_true", help="print a JSON list of purchases")
        t.set_defaults(func=func)

    from mpp.cli.identity import add_identity_commands

    add_identity_commands(sub)

    s = sub.add_parser("demo", help="run seller, ledger and agent on loopback: paid calls, receipts, balances")
    s.add_argument("--dir", help="keep the demo's files here (default: a temporary directory)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from jwt import PyJWTError

    from mpp.cli.config import ConfigError
    from mpp.protocol.errors import MPPError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, MPPError, FileNotFoundError, ValueError, OSError, PyJWTError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except sqlite3.Error as exc:  # --ledger, --log ... naming a file that is not such a database
        _err(f"SQLite: {exc} (is that file one of ours?)")
        return EXIT_USAGE
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "asyncpg":
            raise
        # A PostgreSQL store refused (bad password, missing database, ...): its message, not a traceback.
        _err(f"PostgreSQL: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
