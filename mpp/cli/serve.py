"""Build a seller application from a configuration file (what `mpp seller serve` runs)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from mpp.cli import standin
from mpp.cli.config import ConfigError, RouteConfig, SellerConfig, read_secret
from mpp.protocol.keys import SigningKey
from mpp.ledger import SqliteLedger, UnknownAccount
from mpp.pricing.prices import Metered
from mpp.pricing import PriceListError, UnitOffer
from mpp.connect import (audit_log_for, doubt_journal_for, ensure_open, is_postgres, ledger_for, open_ledger, payment_store_for,
                      pricing_store_for, session_store_for)
from mpp.stores.audit import AsyncSqliteAuditLog, AuditLog
from mpp.stores.payments import SqlitePaymentStore
from mpp.stores.sqlite import sqlite_path
from mpp.aio.metering import meter_of
from mpp.aio.rails import EmbeddedLedgerRail, HttpLedgerRail
from mpp.aio.seller import HEADER_LIMITS, Seller, grant_of, payment_of, start_task, task_of  # HEADER_LIMITS: its old home
from mpp.aio.workers import RELOAD_KEY

__all__ = ["build_seller_app", "seller_settings", "rail_for", "rails_for", "evm_rail_for", "check_evm", "check_embedded_ledger",
           "reload_price_list", "HEADER_LIMITS"]

LEDGER_KEY = web.AppKey("mpp_ledger", SqliteLedger)


def _handler_for(route: RouteConfig | SimpleNamespace):
    async def handler(request: web.Request) -> web.Response:
        body = await request.read() if route.response is None else b""
        return web.json_response(standin.echo(f"{request.method} {request.path_qs}", route.response, body,
                                              payment_of(request)))

    return handler


def _query_int(request: web.Request, name: str, default: int, top: int) -> int:
    try:
        return standin.query_int(request.query, name, default, top)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _metered_handler_for(route: RouteConfig | SimpleNamespace, metered: Metered):
    """A stand-in metered service: it "uses" ``?units=N`` units (at most the route's max_units),
    or, streaming, sends ``?chunks=N`` chunks of that many units each."""

    async def handler(request: web.Request) -> web.StreamResponse:
        meter = meter_of(request)
        if metered.stream:
            chunks = _query_int(request, "chunks", 5, 10_000)
            units = _query_int(request, "units", min(250, metered.max_units), metered.max_units)
            return await standin.stream(meter, request, chunks, units)
        units = _query_int(request, "units", 1, metered.max_units)
        meter.report(units)
        return web.json_response(standin.metered_doc(f"{request.method} {request.path_qs}", route.response, units,
                                                     metered.unit))

    return handler


def _listed_handler(seller: Seller):
    """The stand-in service behind every route of a price list (one catch-all, so a reloaded list
    may add routes): echoes like the inline routes; a task offer starts a task that succeeds at
    once (``?fail=1``: fails, and the quoted refund rule applies); follow-ups report the task,
    and a follow-up ending in ``/result`` delivers it; a unit offer uses ``?units=N``."""
    async def handler(request: web.Request) -> web.StreamResponse:
        payment, task = payment_of(request), task_of(request)
        if payment is not None and payment.terms is not None and payment.terms.model == "task":
            control = await start_task(request, "t_" + secrets.token_urlsafe(12))
            return web.json_response(await standin.task_started(control, bool(request.query.get("fail"))), status=201)
        if task is not None:
            doc = await standin.follow_up(task, request.method, request.path)
            if doc is None:
                raise web.HTTPNotFound(text="no such task")
            return web.json_response(doc)
        plist = seller.price_list
        route = plist.route_for(request.method, request.rel_url.raw_path) if plist is not None else None
        if route is None:
            raise web.HTTPNotFound()
        if any(isinstance(o, UnitOffer) for o in route.offers) and grant_of(request) is None:
            return await _metered_handler_for(SimpleNamespace(response=None), route.price())(request)
        body = await request.read()
        return web.json_response(standin.echo(f"{request.method} {request.path_qs}", standin.listed_result(route, body),
                                              body, payment_of(request)))

    return handler


def reload_price_list(seller: Seller, path: str) -> bool:
    """SIGHUP: load the price list file again; print the outcome (the running list stays on error)."""
    try:
        plist = seller.load_prices(path)
    except PriceListError as exc:
        kept = seller.price_list.version if seller.price_list is not None else "none"
        _say(sys.stderr, f"mpp: price list not reloaded (still serving {kept}): {exc}")
        return False
    _say(sys.stdout, f"price list {plist.version} loaded")
    return True


def _say(stream, line: str) -> None:
    stream.write(line + "\n")  # one write: the workers of `--workers N` share the stream
    stream.flush()


def rail_for(config: SellerConfig) -> tuple[EmbeddedLedgerRail | HttpLedgerRail, SqliteLedger | None]:
    """The embedded ledger (``ledger = "path"``) or a ledger service (``ledger_url`` + ``ledger_key``)."""
    if config.ledger_url is not None:
        assert config.ledger_key is not None  # SellerConfig requires it with ledger_url
        key = SigningKey.load(config.resolve(config.ledger_key))
        journal = doubt_journal_for(config.locate(config.store))  # beside the payment records
        return HttpLedgerRail(config.ledger_url, key=key, recipient=config.recipient, journal=journal), None
    assert config.ledger is not None
    if is_postgres(config.ledger):  # a ledger database shared with other seller processes
        return EmbeddedLedgerRail(ledger_for(config.ledger), recipient=config.recipient), None
    ledger = _open_sqlite_ledger(config)
    return EmbeddedLedgerRail(ledger, recipient=config.recipient), ledger


def rails_for(config: SellerConfig) -> tuple[list[Any], SqliteLedger | None]:
    """Every rail of the configuration: the ledger's (:func:`rail_for`; none for an evm-only seller),
    then the ``[evm]`` table's (:func:`evm_rail_for`); and the embedded SQLite ledger, if any."""
    rails: list[Any] = []
    ledger = None
    if config.ledger is not None or config.ledger_url is not None:
        rail, ledger = rail_for(config)
        rails.append(rail)
    if config.evm is not None:
        rails.append(evm_rail_for(config))
    return rails, ledger


def _evm_key(config: SellerConfig) -> Any:
    """The seller's secp256k1 key from ``[evm] key_file``; ConfigError (never quoting the file) if it
    cannot be read or is not a 0x-prefixed 32-byte key."""
    from eth_account import Account

    assert config.evm is not None
    path = config.resolve(config.evm.key_file)
    try:
        text = open(path, encoding="ascii").read().strip()
    except OSError as exc:
        raise ConfigError(f"[evm] key_file = {str(config.evm.key_file)!r}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        text = ""
    try:
        if not (text.startswith("0x") and len(text) == 66):
            raise ValueError
        return Account.from_key(text)
    except Exception:  # noqa: BLE001 - whatever eth-account says would quote the key
        raise ConfigError(f"[evm] key_file = {str(config.evm.key_file)!r}: {path} does not hold a 0x-prefixed "
                          f"secp256k1 private key (64 hex digits) on one line") from None


def evm_rail_for(config: SellerConfig) -> Any:
    """The :class:`~mpp.aio.evm_rail.EvmRail` of the ``[evm]`` table: its key, chain, tokens, credential
    types, bindings and store (:func:`mpp.connect.evm_store_for`)."""
    from mpp.aio.evm_rail import EvmRail
    from mpp.connect import evm_store_for
    from mpp.methods.evm.charge import EvmToken

    evm = config.evm
    assert evm is not None
    tokens = {(t.currency or t.address.lower()): EvmToken(t.address, t.name, t.version, t.decimals) for t in evm.tokens}
    return EvmRail(evm.rpc_url, key=_evm_key(config), chain_id=evm.chain_id, tokens=tokens,
                   credential_types=tuple(evm.credential_types), bindings=tuple(evm.bindings),
                   store=evm_store_for(config.evm_store_location))


def check_evm(config: SellerConfig) -> None:
    """Refuse to start (ConfigError, one line) on an ``[evm]`` table whose key file is unreadable or
    not a key, or whose node does not answer or is on another chain than ``chain_id``."""
    if config.evm is None:
        return
    _evm_key(config)
    from mpp.aio.evm_rpc import EvmRpc, EvmRpcError, EvmRpcUnavailable

    async def ask() -> int:
        rpc = EvmRpc(config.evm.rpc_url, timeout=10.0)
        try:
            return await rpc.chain_id()
        finally:
            await rpc.close()

    try:
        answered = asyncio.run(ask())
    except (EvmRpcUnavailable, EvmRpcError) as exc:
        raise ConfigError(f"[evm] rpc_url = {config.evm.rpc_url!r}: the node does not answer eth_chainId: {exc}") from None
    if answered != config.evm.chain_id:
        raise ConfigError(f"[evm] chain_id = {config.evm.chain_id}: the node at {config.evm.rpc_url} is on chain "
                          f"{answered}: point rpc_url at a node of chain {config.evm.chain_id}, or set chain_id = {answered}")


def check_embedded_ledger(config: SellerConfig) -> None:
    """Refuse to start (ConfigError naming the fix) on an embedded ledger that lacks the recipient
    account, or on a SQLite ledger file that is missing; with ``create_ledger = true`` the file and
    the account are made instead. On PostgreSQL the database is asked once, before serving (an
    unreachable server is the caller's error to report). A ledger service (``ledger_url``): nothing
    to check here; the rail logs a missing account when it starts."""
    if config.ledger is None:
        return
    if is_postgres(config.ledger):
        asyncio.run(_check_pg_ledger(config))
    else:
        _open_sqlite_ledger(config).close()


async def _check_pg_ledger(config: SellerConfig) -> None:
    """The recipient account on the PostgreSQL ledger (issue 17, finding 2; CORE-ERR-14): refused
    when missing, made when ``create_ledger = true``."""
    assert config.ledger is not None
    ledger = await open_ledger(config.ledger, min_size=1, max_size=1)
    try:
        try:
            await ledger.account(config.recipient)
            return
        except UnknownAccount:
            if config.create_ledger:
                await ledger.create_account(config.recipient, _currency_of(config))
                return
        raise ConfigError(f"recipient = {config.recipient!r}: no such account on the PostgreSQL ledger: create it "
                          f"with `mpp ledger account create {config.recipient} --currency {_currency_of(config)} "
                          f"--ledger URL` (the `ledger` URL of seller.toml), or correct `recipient` or `ledger` there, "
                          f"or set `create_ledger = true` to have it made")
    finally:
        await ledger.close()


def _open_sqlite_ledger(config: SellerConfig) -> SqliteLedger:
    """The embedded SQLite ledger, checked before serving (issue 17, finding 2; CORE-ERR-14): a
    file that does not exist is refused (a mistyped name would start an empty ledger and refuse
    every purchase) unless ``create_ledger = true``; the recipient account must be on it."""
    assert config.ledger is not None
    location = config.locate(config.ledger)
    path = sqlite_path(location)
    if not config.create_ledger and not os.path.exists(path):
        raise ConfigError(f"ledger = {config.ledger!r}: no such file {path}: correct `ledger` in seller.toml, "
                          f"or set `create_ledger = true` there to start a new, empty ledger")
    ledger = SqliteLedger(location)
    if config.create_ledger and not _has_account(ledger, config.recipient):
        ledger.create_account(config.recipient, _currency_of(config))
    if not _has_account(ledger, config.recipient):
        ledger.close()
        raise ConfigError(f"recipient = {config.recipient!r}: no such account on the ledger {path}: create it with "
                          f"`mpp ledger account create {config.recipient} --currency {_currency_of(config)} "
                          f"--ledger {path}`, or correct `recipient` or `ledger` in seller.toml")
    return ledger


def _has_account(ledger: SqliteLedger, account_id: str) -> bool:
    try:
        ledger.account(account_id)
    except UnknownAccount:
        return False
    return True


def _currency_of(config: SellerConfig) -> str:
    """The currency of the configured routes (the first one's), usd without routes."""
    return config.routes[0].currency if config.routes else "usd"


def seller_settings(config: SellerConfig, ledger: SqliteLedger | None = None) -> dict[str, Any]:
    """The seller's keyword arguments from its configuration, but its rails: the same for both adapters.

    A payment store or audit log configured at the embedded SQLite ``ledger``'s own file is kept on
    its connection: each purchase then commits in one transaction (mpp.ledger.book)."""
    return dict(
        realm=config.realm,
        secret=read_secret(config.resolve(config.secret_file)),
        receipt_key=SigningKey.load(config.resolve(config.receipt_key)),
        store=(SqlitePaymentStore.beside(ledger) if _same_file(config, config.store, ledger)
               else payment_store_for(config.locate(config.store))),
        challenge_ttl=timedelta(seconds=config.challenge_ttl),
        trusted_principals=frozenset(config.trusted_principals),
        max_chain_depth=config.max_chain_depth,
        audit=(AsyncSqliteAuditLog(AuditLog.beside(ledger)) if _same_file(config, config.audit_log, ledger)
               else audit_log_for(config.locate(config.audit_log)) if config.audit_log else None),
        session_store=session_store_for(config.sessions_location),
        pricing_store=pricing_store_for(config.pricing_location) if config.price_list is not None else None,
    )


def _same_file(config: SellerConfig, location: str | None, ledger: SqliteLedger | None) -> bool:
    if ledger is None or location is None or is_postgres(location):
        return False
    return os.path.realpath(sqlite_path(config.locate(location))) == os.path.realpath(sqlite_path(ledger.location))


def build_seller_app(config: SellerConfig) -> tuple[web.Application, Seller]:
    """The aiohttp application of a seller configuration, and its seller."""
    rails, ledger = rails_for(config)
    seller = Seller(rails=rails, **seller_settings(config, ledger))
    if config.price_list is not None:
        prices = config.resolve(config.price_list)
        seller.load_prices(prices)  # PriceListError (source:LINE: problem): refused at start
    app = web.Application()
    if ledger is not None:
        app[LEDGER_KEY] = ledger
    for rail in rails:
        # PostgreSQL or a service: learn the ledger id before serving (a service: void in-doubt charges);
        # evm: check the node's chain, then reconcile
        if not isinstance(rail, EmbeddedLedgerRail) or ledger is None:
            app.cleanup_ctx.append(rail.lifecycle)

    async def _open_stores(app: web.Application):
        # PostgreSQL stores make their pools here, before anything uses them (the seller closes them)
        await ensure_open(seller.store)
        await ensure_open(seller.session_store)
        await ensure_open(seller.audit)
        await ensure_open(seller.pricing_store)
        yield
        if seller.audit is not None:  # made here, so closed here
            await seller.audit.close()
        if seller.pricing_store is not None:
            await seller.pricing_store.close()

    app.cleanup_ctx.append(_open_stores)
    for route in config.routes:
        price = route.price
        handler = _metered_handler_for(route, price) if isinstance(price, Metered) else _handler_for(route)
        seller.add_route(app.router, route.method, route.path, handler, price)
    seller.setup(app)
    if config.price_list is not None:  # after the seller's own routes (JWKS, OpenAPI, sessions)
        app.router.add_route("*", "/{tail:.*}", _listed_handler(seller))
        app[RELOAD_KEY] = lambda: reload_price_list(seller, prices)

    async def _close_ledger(app: web.Application):
        yield
        if LEDGER_KEY in app:
            app[LEDGER_KEY].close()

    app.cleanup_ctx.append(_close_ledger)
    return app, seller
