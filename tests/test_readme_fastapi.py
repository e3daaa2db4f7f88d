"""The README's FastAPI seller runs as written: extracted from README.md, served by uvicorn in its
own process, paid by our buyer, its receipt verified against the keys it publishes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import mpp
from mpp.aio import PaymentClient
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


def fastapi_example() -> str:
    """The first Python block after the README's sentence introducing the FastAPI seller."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split("The same seller in FastAPI", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_example_is_the_fastapi_seller():
    source = fastapi_example()
    assert "FastAPI()" in source and "from mpp.asgi import" in source and "seller.setup(app)" in source


@pytest.fixture
def running_example(tmp_path: Path):
    (tmp_path / "weather.py").write_text(fastapi_example(), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "weather:app", "--host", "127.0.0.1", "--port", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url, seen = None, []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = LISTENING.search(line)
        url = match.group(1) if match else None
    if url is None:
        proc.kill()
        pytest.fail("the README's FastAPI example did not start:\n" + "".join(seen) + proc.stdout.read())
    try:
        yield url, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert "Traceback" not in out, out


async def test_the_readme_fastapi_seller_is_paid(running_example):
    """An unpaid call gets 402 with a challenge; our buyer pays it; the handler sees the payer; the
    receipt verifies against the JWKS the app publishes; the ledger moved exactly the price."""
    url, folder = running_example
    agent = mpp.SigningKey.generate()
    ledger = SqliteLedger(str(folder / "ledger.db"))  # the example's own ledger, shared through SQLite
    try:
        ledger.create_account("acct:buyer", "usd", owner=agent.did)
        ledger.fund("acct:buyer", 1_000)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/weather") as unpaid:
                assert unpaid.status == 402 and unpaid.headers["WWW-Authenticate"].startswith("Payment ")
            client = PaymentClient(http, [LedgerBuyerMethod(key=agent, account="acct:buyer")],
                                   mpp.BuyerPolicy(max_amount=100, currencies=frozenset({"usd"})))
            resp = await client.request("GET", url + "/weather")
            assert resp.status == 200 and resp.paid
            assert json.loads(resp.text()) == {"sky": "clear", "paid_by": "acct:buyer"}
            assert resp.claims["amount"] == "25" and resp.claims["resource"] == "GET /weather"
            async with http.get(url + "/openapi.json") as doc:
                assert (await doc.json())["paths"]["/weather"]["get"]["x-payment-info"]
        assert ledger.balance("acct:buyer") == 975 and ledger.balance("acct:seller") == 25
    finally:
        ledger.close()
