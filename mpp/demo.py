"""`mpp demo`: seller, ledger and agent on loopback, in one process, end to end.

It checks what it shows: every paid call must carry a receipt that verifies, a replayed
credential must be refused without a second transfer, an over-limit quote must be refused
before signing, and the ledger's balances must still sum to what they summed to before.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

__all__ = ["run_demo"]


class DemoFailure(Exception):
    pass


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailure(what)
    print(f"    ok: {what}")


def _balances(ledger) -> dict[str, int]:
    return {a.id: a.balance for a in ledger.accounts()}


def _print_balances(title: str, balances: dict[str, int]) -> None:
    print(f"  {title}:")
    for account, balance in balances.items():
        print(f"    {account:<18} {balance:>10}")
    print(f"    {'(sum)':<18} {sum(balances.values()):>10}")


async def _run(home: Path) -> None:
    import aiohttp
    from aiohttp import web

    from .aio.buyer import PaymentClient
    from .aio.serve import LEDGER_KEY, build_seller_app
    from .config import init_home, load_seller_config, load_wallet
    from .errors import QuoteRejected
    from .headers import parse_challenges
    from .methods.ledger import LedgerBuyerMethod

    print(f"1. mpp init {home}")
    info = init_home(home)
    config = load_seller_config(info["seller_config"])
    wallet = load_wallet(info["wallet"])
    print(f"   agent {wallet.key.did}")
    print(f"   pays from {wallet.account}, at most {wallet.policy.max_amount} per purchase")

    app, seller = build_seller_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    ledger = app[LEDGER_KEY]
    print(f"2. seller on {base} (realm {config.realm}), embedded ledger {ledger.ledger_id}")
    before = _balances(ledger)
    _print_balances("balances before", before)
    try:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)

            print("3. an unpaid request")
            async with session.get(f"{base}/weather") as resp:
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate"))
                problem = await resp.json(content_type=None)
                print(f"   HTTP {resp.status}, Cache-Control: {resp.headers.get('Cache-Control')}, problem {problem['type']}")
                print(f"   challenge {challenges[0].id[:16]}... method={challenges[0].method} intent={challenges[0].intent}"
                      f" request={json.dumps(challenges[0].request_json, sort_keys=True)}")
                _check(resp.status == 402 and resp.headers.get("Cache-Control") == "no-store", "402 with a challenge and no-store")

            print("4. three paid calls")
            paid_total = 0
            calls = [("GET", f"{base}/weather", None), ("GET", f"{base}/quote?symbol=ACME", None),
                     ("POST", f"{base}/summarize", b"Agents buy from services; every purchase is signed and receipted.")]
            for n, (method, url, body) in enumerate(calls, 1):
                resp = await client.request(method, url, data=body)
                claims = resp.claims or {}
                print(f"   [{n}] {method} {url[len(base):]} -> HTTP {resp.status} {resp.text().strip()[:90]}")
                print(f"       receipt: {claims.get('amount')} {claims.get('currency')} to {claims.get('recipient')},"
                      f" transfer {resp.receipt.reference[:16] if resp.receipt else None}..., signed by {config.realm} (kid {seller.receipt_key.kid[:12]}...)")
                _check(resp.status == 200 and resp.paid and resp.headers.get("Cache-Control", "").startswith("private"),
                       f"call {n} paid, receipt signature verified against the seller's JWKS, Cache-Control private")
                paid_total += int(claims["amount"])

            print("5. replaying a credential")
            credential = await client.credential("GET", f"{base}/weather")
            transfers_before = len(ledger.transfers())
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as first:
                first_status = first.status
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as again:
                replay_problem = await again.json(content_type=None)
                print(f"   first use HTTP {first_status}; replay HTTP {again.status} {replay_problem['type']}")
                _check(first_status == 200 and again.status == 402 and replay_problem["type"].endswith("/invalid-challenge")
                       and "Payment-Receipt" not in again.headers, "replay refused with invalid-challenge and no receipt")
            _check(len(ledger.transfers()) == transfers_before + 1, "exactly one transfer for that credential")
            paid_total += 25

            print("6. a quote over the wallet's limit")
            try:
                await client.request("GET", f"{base}/premium-report")
            except QuoteRejected as exc:
                print(f"   refused before signing: {exc}")
                _check(exc.rule == "max-amount", "over-limit quote refused by the buyer's policy")
            else:
                raise DemoFailure("the buyer paid a quote over its limit")

        after = _balances(ledger)
        print("7. balances")
        _print_balances("balances after", after)
        _check(sum(after.values()) == sum(before.values()), "sum of all balances unchanged")
        _check(before["acct:buyer"] - after["acct:buyer"] == paid_total == after["acct:seller"] - before["acct:seller"],
               f"buyer paid exactly {paid_total}, seller received exactly {paid_total}")
        _check(ledger.check() == [], "every transfer is two postings summing to zero")
    finally:
        await runner.cleanup()


def run_demo(directory: str | None = None) -> int:
    from .config import ConfigError

    try:
        if directory:
            asyncio.run(_run(Path(directory)))
        else:
            with tempfile.TemporaryDirectory(prefix="mpp-demo-") as tmp:
                asyncio.run(_run(Path(tmp) / "home"))
    except (DemoFailure, ConfigError) as exc:
        print(f"demo FAILED: {exc}")
        return 1
    print("demo passed")
    return 0
