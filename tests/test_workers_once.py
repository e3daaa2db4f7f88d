"""Exactly once across processes: one credential submitted 1,000 times at once, spread over
several `mpp seller serve --workers N` processes sharing one SQLite store and ledger, or one
PostgreSQL database for the stores and the ledger, settles once."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

import mpp
from mpp.aio import PaymentClient
from mpp.aio.workers import WORKER_HEADER
from mpp.cli.config import load_wallet
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.ledger.pg import PgLedger
from mpp.connect import open_ledger

from conftest import start_seller, stop_seller

SUBMISSIONS = 1000
WORKERS = 3


async def _storm(url: str, credential: str) -> tuple[Counter, Counter, list[int]]:
    statuses: Counter = Counter()
    workers: Counter = Counter()
    ok_workers: list[int] = []
    connector = aiohttp.TCPConnector(limit=200, force_close=True)  # a new connection each: the kernel spreads them
    async with aiohttp.ClientSession(connector=connector) as http:
        start = asyncio.Event()

        async def one() -> None:
            await start.wait()
            async with http.get(url, headers={"Authorization": credential}) as resp:
                await resp.read()
                statuses[resp.status] += 1
                worker = int(resp.headers[WORKER_HEADER])
                workers[worker] += 1
                if resp.status == 200:
                    ok_workers.append(worker)

        tasks = [asyncio.create_task(one()) for _ in range(SUBMISSIONS)]
        await asyncio.sleep(0.05)
        start.set()
        await asyncio.gather(*tasks)
    return statuses, workers, ok_workers


@dataclass
class Shared:
    home: Path
    ledger: str  # where the seller processes' ledger is


def _ledger_on_postgres(home: Path, url: str) -> None:
    """The accounts `mpp init` made in ledger.db, made again in a PostgreSQL ledger at ``url``."""
    wallet = load_wallet(home / "agent")
    sqlite = SqliteLedger(str(home / "ledger.db"))
    try:
        members, funds = sqlite.keys.members(wallet.account), sqlite.balance(wallet.account)
        accounts = [(a.id, a.currency) for a in sqlite.accounts() if a.kind == "asset"]
    finally:
        sqlite.close()

    async def build() -> None:
        ledger = await PgLedger.connect(url, max_size=2)
        try:
            for account, currency in accounts:
                await ledger.create_account(account, currency)
            for did, role in members.items():
                await ledger.keys.allow(wallet.account, did, role)
            await ledger.fund(wallet.account, funds)
        finally:
            await ledger.close()

    asyncio.run(build())


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request, home: Path) -> Shared:
    """The seller's stores and ledger in SQLite files, or all in one PostgreSQL database."""
    if request.param == "sqlite":
        return Shared(home, str(home / "ledger.db"))
    url = request.getfixturevalue("pg_url")
    _ledger_on_postgres(home, url)
    config = home / "seller.toml"
    text = config.read_text()
    assert 'store = "ledger.db"' in text and 'ledger = "ledger.db"' in text
    config.write_text(text.replace('store = "ledger.db"', f'store = "{url}"')
                      .replace('ledger = "ledger.db"', f'ledger = "{url}"'))
    return Shared(home, url)


async def test_one_credential_1000_times_over_3_processes_settles_once(shared: Shared):
    """CORE-ONCE-01, CORE-ONCE-02: exactly one success and one transfer, whichever process answers,
    with the processes sharing SQLite, or PostgreSQL for the stores and the ledger."""
    seller = start_seller(shared.home, "--workers", str(WORKERS))
    ledger = await open_ledger(shared.ledger)
    try:
        wallet = seller.wallet
        url = f"{seller.url}/weather"
        async with aiohttp.ClientSession() as http:
            client = PaymentClient(http, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)
            credential = await client.credential("GET", url)
        before = len(await ledger.transfers())
        statuses, workers, ok_workers = await _storm(url, credential)
        assert statuses[200] == 1, statuses
        assert sum(statuses.values()) == SUBMISSIONS and set(statuses) <= {200, 402, 409}, statuses
        assert len(workers) >= WORKERS, f"answers came from workers {dict(workers)}; expected all {WORKERS}"
        charges = [t for t in (await ledger.transfers())[before:] if t.kind == "charge"]
        assert len(charges) == 1 and charges[0].amount == 25
        assert await ledger.total() == 0 and await ledger.check() == []
    finally:
        await ledger.close()
        err = stop_seller(seller)
    assert "Traceback" not in err, err
