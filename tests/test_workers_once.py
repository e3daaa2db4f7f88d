"""Exactly once across processes: one credential submitted 1,000 times at once, spread over
several `mpp seller serve --workers N` processes sharing one SQLite store, settles once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

import mpp
from mpp.aio import PaymentClient
from mpp.aio.workers import WORKER_HEADER
from mpp.methods.ledger import LedgerBuyerMethod

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


@pytest.fixture(params=["sqlite", "postgres"])
def shared_home(request, home: Path) -> Path:
    """The seller's payment and session stores in one SQLite file, or in one PostgreSQL database."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        config = home / "seller.toml"
        text = config.read_text()
        assert 'store = "seller/payments.db"' in text
        config.write_text(text.replace('store = "seller/payments.db"', f'store = "{url}"'))
    return home


async def test_one_credential_1000_times_over_3_processes_settles_once(shared_home: Path):
    """CORE-ONCE-01, CORE-ONCE-02: exactly one success and one transfer, whichever process answers,
    with the processes sharing SQLite or PostgreSQL."""
    home = shared_home
    seller = start_seller(home, "--workers", str(WORKERS))
    try:
        wallet = seller.wallet
        url = f"{seller.url}/weather"
        async with aiohttp.ClientSession() as http:
            client = PaymentClient(http, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)
            credential = await client.credential("GET", url)
        ledger = seller.ledger()
        before = len(ledger.transfers())
        statuses, workers, ok_workers = await _storm(url, credential)
        assert statuses[200] == 1, statuses
        assert sum(statuses.values()) == SUBMISSIONS and set(statuses) <= {200, 402, 409}, statuses
        assert len(workers) >= WORKERS, f"answers came from workers {dict(workers)}; expected all {WORKERS}"
        charges = [t for t in ledger.transfers()[before:] if t.kind == "charge"]
        assert len(charges) == 1 and charges[0].amount == 25
        assert ledger.total() == 0 and ledger.check() == []
        ledger.close()
    finally:
        err = stop_seller(seller)
    assert "Traceback" not in err, err
