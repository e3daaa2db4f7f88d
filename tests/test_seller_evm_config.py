"""`mpp seller serve` taking ``evm`` payments from seller.toml's ``[evm]`` table (README "Seller
configuration: [evm]"; spec/methods/evm-seller.md): a served seller on the session's anvil chain is
paid by our PaymentClient with EvmBuyerMethod, and the receipt and the balances on chain are read
back; a bad key file, a node on another chain and an unknown key in ``[evm]`` are each refused
before serving with one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account

import mpp
from mpp.aio import PaymentClient
from mpp.cli.config import ConfigError, init_home, load_seller_config
from mpp.cli.serve import rails_for
from mpp.methods.evm.charge import EvmBuyerMethod, EvmToken
from mpp.protocol.headers import parse_receipt

from conftest import REPO, refused_in_one_line, start_seller, stop_seller

ETHER = 10 ** 18
PRICE = 25  # /weather in `mpp init`'s seller.toml: 25 base units of "usd"


def _evm_home(tmp_path: Path, chain, *, ledger: bool = False, chain_id: int | None = None, key: str | None = None,
              extra: str = "") -> tuple[Path, object]:
    """An `mpp init` home whose seller.toml has an [evm] table for the chain (and, unless ``ledger``,
    no ledger); the seller's account (funded with ether for gas)."""
    home = tmp_path / "home"
    init_home(home)
    seller = Account.create()
    chain.set_balance(seller.address, ETHER)
    (home / "seller" / "evm.key").write_text((key if key is not None else "0x" + bytes(seller.key).hex()) + "\n")
    toml = home / "seller.toml"
    text = toml.read_text()
    if not ledger:
        text = text.replace('ledger = "ledger.db"\n', "").replace('store = "ledger.db"', 'store = "seller/payments.db"')
        text = text.replace('audit_log = "ledger.db"', 'audit_log = "seller/audit.db"')
    text = text.replace("\n[[routes]]", f"""
[evm]
rpc_url = "{chain.rpc_url}"
chain_id = {chain_id if chain_id is not None else chain.chain_id}
key_file = "seller/evm.key"
{extra}
[[evm.tokens]]
currency = "usd"
address = "{chain.token}"
name = "{chain.token_name}"
version = "{chain.token_version}"
decimals = 6

[[routes]]""", 1)
    toml.write_text(text)
    return home, seller


def _serve(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpp.cli.main", "seller", "serve", "--config", str(home / "seller.toml"),
                           "--port", "0"], capture_output=True, text=True, cwd=REPO, timeout=30)


async def _pay(url: str, payer, chain) -> aiohttp.ClientResponse:
    token = EvmToken(chain.token, chain.token_name, chain.token_version, 6)
    async with aiohttp.ClientSession() as session:
        method = EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token])
        return await PaymentClient(session, [method], mpp.BuyerPolicy(max_amount=10 ** 6)).request("GET", url)


@pytest.mark.parametrize("flags", [(), ("--asgi",), ("--workers", "2")], ids=["aiohttp", "asgi", "workers"])
def test_an_evm_only_seller_is_paid_on_chain(tmp_path: Path, chain, flags):
    """No ledger, only [evm]: the served seller's /weather is paid by an EIP-3009 authorization; 200,
    an evm receipt naming the chain, the tokens moved payer to seller; evm.db beside the payment store."""
    home, seller_key = _evm_home(tmp_path, chain)
    payer = chain.new_payer(tokens=PRICE * 2)
    served = start_seller(home, *flags)
    try:
        resp = asyncio.run(_pay(served.url + "/weather", payer, chain))
        assert resp.status == 200, resp.body
        assert json.loads(resp.body)["result"]["city"] == "Lisbon"
        receipt = parse_receipt(resp.headers["Payment-Receipt"])
        assert receipt.method == "evm" and re.fullmatch(r"0x[0-9a-f]{64}", receipt.reference)
        assert receipt.to_json()["chainId"] == chain.chain_id
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(seller_key.address) == PRICE
    finally:
        err = stop_seller(served)
    assert "Traceback" not in err, err
    assert (home / "seller" / "evm.db").exists()


def test_a_seller_with_a_ledger_and_evm_offers_both(tmp_path: Path, chain):
    """The ledger stays as it is beside [evm]: two rails, the ledger's first."""
    home, seller_key = _evm_home(tmp_path, chain, ledger=True, extra='store = "evm-replays.db"')
    config = load_seller_config(home / "seller.toml")
    rails, ledger = rails_for(config)
    try:
        assert [r.name for r in rails] == ["ledger", "evm"] and ledger is not None
        assert rails[1].recipient == seller_key.address
        assert config.evm_store_location == str(home / "evm-replays.db")
    finally:
        ledger.close()


def test_a_bad_key_file_is_refused_without_printing_it(tmp_path: Path, chain):
    secret = "0x" + "ab" * 31  # one byte short
    home, _ = _evm_home(tmp_path, chain, key=secret)
    line = refused_in_one_line(_serve(home))
    assert "key_file" in line and "evm.key" in line and secret not in line and "ab" * 31 not in line
    (home / "seller" / "evm.key").unlink()
    line = refused_in_one_line(_serve(home))
    assert "key_file" in line and "cannot read" in line


def test_a_node_on_another_chain_is_refused(tmp_path: Path, chain):
    home, _ = _evm_home(tmp_path, chain, chain_id=chain.chain_id + 1)
    line = refused_in_one_line(_serve(home))
    assert f"chain_id = {chain.chain_id + 1}" in line and f"on chain {chain.chain_id}" in line


def test_a_node_that_does_not_answer_is_refused(tmp_path: Path, chain):
    home, _ = _evm_home(tmp_path, chain)
    toml = home / "seller.toml"
    toml.write_text(toml.read_text().replace(chain.rpc_url, "http://127.0.0.1:9"))
    line = refused_in_one_line(_serve(home))
    assert "rpc_url" in line and "does not answer" in line


def test_an_unknown_key_in_evm_is_refused(tmp_path: Path, chain):
    home, _ = _evm_home(tmp_path, chain, extra="chainid = 1")
    line = refused_in_one_line(_serve(home))
    assert "evm.chainid" in line and "Extra inputs are not permitted" in line


def test_config_validation_names_the_key(tmp_path: Path, chain):
    home, _ = _evm_home(tmp_path, chain)
    toml = home / "seller.toml"
    good = toml.read_text()
    for old, new, where in [(f'rpc_url = "{chain.rpc_url}"', 'rpc_url = "ws://x"', "evm.rpc_url"),
                            (f"chain_id = {chain.chain_id}", "chain_id = 0", "evm.chain_id"),
                            ('address = "', 'address = "0x12', "evm.tokens.0.address"),
                            ("key_file =", 'bindings = ["cbor"]\nkey_file =', "evm.bindings")]:
        toml.write_text(good.replace(old, new, 1))
        with pytest.raises(ConfigError, match=re.escape(where)):
            load_seller_config(toml)
    # without [evm], a ledger is still required
    toml.write_text(good.split("\n[evm]")[0] + "\n[[routes]]\npath = \"/x\"\namount = 1\n")
    with pytest.raises(ConfigError, match="or neither with an \\[evm\\] table"):
        load_seller_config(toml)
