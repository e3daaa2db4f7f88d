"""The conformance suite's ``draft`` and ``core`` profiles pass against our seller taking the
``evm`` method (issue 19, criterion 4): an aiohttp seller with an EvmRail on the throwaway chain,
paid by the suite with ``--pay-with evm:FILE`` (EIP-3009 authorizations signed by the payer key in
the file). Only the skips a GET route on loopback must have are allowed; the money the checks paid
moved exactly, on chain. CHARGE-02 (a token address is a currency), EVM-REQ-01."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account

import mpp
from mpp.aio import HEADER_LIMITS, Seller
from mpp.aio.evm_rail import EvmRail
from mpp.methods.evm.charge import BINDING_DRAFT, BINDING_JSON, EvmToken
from mpp.methods.evm.devchain import DECIMALS
from mpp.stores.evm import SqliteEvmStore
from mpp.stores.payments import SqlitePaymentStore
from mpp_conformance.framework import Verdict, checks_for, run_checks

PRICE = 5_000  # under the suite's default --max-amount (10,000)
TTL = 3  # seconds a challenge lives, so core.expired-challenge runs quickly
ALLOWED_SKIPS = {"core.body-digest", "draft.body-digest", "full.changed-body", "core.no-plaintext-challenges"}  # GET on loopback


@pytest.mark.parametrize("profile, binding", [("draft", BINDING_DRAFT), ("core", BINDING_JSON)])
async def test_our_evm_seller_passes_the_draft_and_core_profiles(chain, tmp_path: Path, profile: str, binding: str):
    token = EvmToken(chain.token, chain.token_name, chain.token_version, DECIMALS)
    key = Account.create()
    chain.set_balance(key.address, 10 ** 18)
    payer = chain.new_payer(tokens=200 * PRICE)
    rail = EvmRail(chain.rpc_url, key=key, chain_id=chain.chain_id, tokens={"usd": token}, receipt_timeout=5.0,
                   reconcile_interval=0.0, bindings=(BINDING_DRAFT, BINDING_JSON), store=SqliteEvmStore(str(tmp_path / "evm.db")))
    seller = Seller(realm="evm.conformance", secret=os.urandom(32), receipt_key=mpp.SigningKey.generate(), rails=[rail],
                    store=SqlitePaymentStore(str(tmp_path / "payments.db")), challenge_ttl=timedelta(seconds=TTL))

    @seller.price(PRICE, "usd", "weather, paid in tokens")
    async def weather(request):
        return web.json_response({"forecast": "sunny"})

    @seller.price(PRICE, "usd", "a quote, paid in tokens")
    async def quote(request):
        return web.json_response({"quote": 1})

    app = web.Application()
    app.router.add_get("/weather", weather)
    app.router.add_get("/quote", quote)
    app.cleanup_ctx.append(rail.lifecycle)
    seller.setup(app)
    payer_file = tmp_path / "payer.json"
    payer_file.write_text(json.dumps({"privateKey": "0x" + bytes(payer.key).hex(), "chainId": chain.chain_id, "binding": binding,
                                      "tokens": [{"address": token.address, "name": token.name, "version": token.version,
                                                  "decimals": DECIMALS}]}))
    server = TestServer(app, host="127.0.0.1", **HEADER_LIMITS)
    await server.start_server()
    before = chain.balance_of(payer.address)
    try:
        results = await run_checks(checks_for(profile), str(server.make_url("/weather")), {
            "method": "GET", "pay_with": f"evm:{payer_file}", "other_url": f"GET {server.make_url('/quote')}",
            "expiry_wait": TTL + 1, "concurrency": 10,
        })
    finally:
        await server.close()
    table = "\n".join(f"{r.verdict.value:5} {r.check_id:34} {r.message[:200]}" for r in results)
    bad = [r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    assert not bad, table
    assert {r.check_id for r in results if r.verdict is Verdict.SKIP} <= ALLOWED_SKIPS, table
    paid = before - chain.balance_of(payer.address)
    assert paid > 0 and paid % PRICE == 0 and chain.balance_of(key.address) == paid, (paid, table)
