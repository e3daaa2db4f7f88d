"""The seller's smaller findings of issue 17 (finding 12): a price-list route of `mpp seller serve`
answers what was bought (not the digest of an empty body), ``HEADER_LIMITS`` is reachable from
``mpp.aio``, and the README names ``load_price_list``'s module."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

import mpp
from mpp.cli.config import load_wallet
from mpp.methods.ledger import LedgerBuyerMethod

from _adapters import ADAPTERS, served_in_process
from conftest import REPO

PRICES = """\
version = "v1"
currency = "usd"

[[routes]]
method = "GET"
path = "/forecast"
description = "Tomorrow's forecast"

  [[routes.offers]]
  model = "transaction"
  amount = 10
"""


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_price_list_route_answers_what_was_bought(home: Path, adapter: str):
    """issue 17, finding 12: a paid GET of a price-list route on the default seller answers the
    route and its description, not ``{"bytes": 0, ...}``."""
    (home / "prices.toml").write_text(PRICES)
    toml = home / "seller.toml"
    toml.write_text(toml.read_text().replace('audit_log = "ledger.db"', 'audit_log = "ledger.db"\nprice_list = "prices.toml"'))
    server, _ = served_in_process(home, adapter)
    await server.start_server()
    agent = load_wallet(home / "agent").key
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/forecast"))
            async with session.get(url) as resp:
                assert resp.status == 402
                challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"), skip_invalid=True)
            quote = mpp.select_quote(challenges, [LedgerBuyerMethod(key=agent, account="acct:buyer")],
                                     mpp.BuyerPolicy(max_amount=1000), datetime.now(timezone.utc))
            async with session.get(url, headers={"Authorization": mpp.sign_quote(quote)}) as resp:
                assert resp.status == 200, await resp.text()
                doc = json.loads(await resp.read())
    finally:
        await server.close()
    assert "bytes" not in doc["result"]
    assert doc["result"]["route"] == "GET /forecast" and doc["result"]["description"] == "Tomorrow's forecast"
    assert doc["paid"]["amount"] == "10"


def test_header_limits_from_the_aio_package():
    """issue 17, finding 12: ``mpp.aio.HEADER_LIMITS`` after ``import mpp.aio`` alone; the old
    ``mpp.cli.serve.HEADER_LIMITS`` is the same object."""
    code = "import mpp.aio; print(mpp.aio.HEADER_LIMITS['max_field_size'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "32768", out.stderr
    import mpp.aio
    import mpp.cli.serve

    assert mpp.cli.serve.HEADER_LIMITS is mpp.aio.HEADER_LIMITS


def test_readme_names_the_module_of_load_price_list_and_header_limits():
    """issue 17, finding 12: the README says where ``load_price_list`` and ``HEADER_LIMITS`` come from."""
    readme = (REPO / "README.md").read_text()
    assert "from mpp.pricing import load_price_list" in readme
    assert "mpp.cli.serve.HEADER_LIMITS" not in readme and "mpp.aio.HEADER_LIMITS" in readme
