"""Interoperability on the ``evm`` charge method (issue 19, acceptance criteria 1 and 2): our buyer
and seller against pympp 0.16.0 (PyPI) and mppx 0.11.0 (npm), paying with EIP-3009 authorizations
on the throwaway local chain (the ``chain`` fixture: anvil on loopback with the test token).

The peers run as subprocesses, in their own environments (``_peers``): pympp under the interop
virtualenv (``pympp_evm_driver.py``), mppx under node (``mppx_evm_driver.mjs``). Each seller is
started once for the module, on a free loopback port, with its own settler key (which pays the
gas of ``transferWithAuthorization``) and its own recipient; every test pays from a fresh payer,
so the balances it checks are its own.

The two SDKs bind an authorization to its challenge differently (EVM-BIND-01): mppx 0.11.0 as the
draft does (``keccak256(id || realm)``, our ``draft`` rule), pympp 0.16.0 by ``keccak256(JSON
[id, realm])`` (our ``json`` rule). The tests pin both: each seller takes its own rule and
refuses the other.

Neither SDK's receipt is ours: ``{"method", "reference", "status", "timestamp"}``, unsigned and
without ``challengeId``. :class:`mpp.aio.PaymentClient` verifies every receipt against the
seller's JWKS by default (CORE-BUY-04), so against these sellers it pays and then raises
ReceiptInvalid, carrying the paid response; with ``BuyerPolicy(accept_unsigned_receipts=True)``
(CORE-BUY-12) it takes them, checked for what they say and marked unsigned. Both are pinned.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account

import mpp
from mpp.aio import PaymentClient
from mpp.methods.evm.charge import BINDING_DRAFT, BINDING_JSON, EvmBuyerMethod, EvmToken, challenge_hash
from mpp.methods.evm.devchain import DECIMALS

from _peers import HERE, interop_python, mppx_env, run_json, started

pytestmark = pytest.mark.interop

PRICE = 10_000  # base units: 0.01 of the 6-decimal test token
TX_HASH = re.compile(r"0x[0-9a-f]{64}")


def hex_key(account: Any) -> str:
    return "0x" + bytes(account.key).hex()


def token_args(chain: Any) -> list[str]:
    return ["--chain-id", str(chain.chain_id), "--token", chain.token, "--token-name", chain.token_name,
            "--token-version", chain.token_version, "--decimals", str(DECIMALS)]


def pympp_command(*args: str) -> list[str]:
    return [interop_python(), str(HERE / "pympp_evm_driver.py"), *args]


def mppx_command(*args: str) -> list[str]:
    return ["node", str(HERE / "mppx_evm_driver.mjs"), *args]


@dataclass(frozen=True)
class PeerSeller:
    """A third-party seller running for the module: its priced URL and the address it is paid to."""

    name: str
    url: str
    recipient: str


@pytest.fixture(scope="module")
def mppx_seller(chain):
    env = mppx_env()
    settler, recipient = chain.new_payer(wei=10**18), Account.create().address
    argv = mppx_command("seller", *token_args(chain), "--rpc", chain.rpc_url, "--recipient", recipient,
                        "--settler-key", hex_key(settler), "--amount", str(PRICE))
    with started(argv, env=env) as url:
        yield PeerSeller("mppx", url, recipient)


@pytest.fixture(scope="module")
def pympp_seller(chain):
    settler, recipient = chain.new_payer(wei=10**18), Account.create().address
    argv = pympp_command("seller", *token_args(chain), "--rpc", chain.rpc_url, "--recipient", recipient,
                         "--settler-key", hex_key(settler), "--amount", str(PRICE))
    with started(argv) as url:
        yield PeerSeller("pympp", url, recipient)


def peer_seller(request: pytest.FixtureRequest, peer: str) -> PeerSeller:
    """The module's seller of ``peer`` (started on first use: a test of one peer needs only that one)."""
    return request.getfixturevalue(f"{peer}_seller")


def our_buyer(http: aiohttp.ClientSession, chain: Any, payer: Any, binding: str, *, unsigned: bool = False) -> PaymentClient:
    token = EvmToken(chain.token, chain.token_name, chain.token_version, DECIMALS)
    method = EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token], binding=binding)
    return PaymentClient(http, [method], mpp.BuyerPolicy(max_amount=PRICE, accept_unsigned_receipts=unsigned))


def assert_paid_on_chain(chain: Any, reference: str, payer: str, recipient: str, before: tuple[int, int]) -> None:
    """The receipt's reference is a mined transaction, and exactly the price moved from payer to recipient."""
    assert TX_HASH.fullmatch(reference), reference
    assert int(chain.rpc("eth_getTransactionReceipt", reference)["status"], 16) == 1
    assert (chain.balance_of(payer), chain.balance_of(recipient)) == (before[0] - PRICE, before[1] + PRICE)


@pytest.mark.parametrize("peer, binding", [("mppx", BINDING_DRAFT), ("pympp", BINDING_JSON)])
async def test_our_buyer_pays_a_peer_seller(chain, request, peer, binding):
    """EVM-BIND-01, CORE-BUY-12, issue 19 criterion 1: our buyer (PaymentClient with EvmBuyerMethod's
    EIP-3009 signature, the peer's binding rule, and unsigned receipts accepted) pays the mppx seller by the draft's rule and the
    pympp seller by the JSON rule: 200, a receipt that decodes, the token moved on chain, and the
    authorization's nonce spent is the challenge hash by that rule."""
    seller = peer_seller(request, peer)
    payer = chain.new_payer(tokens=5 * PRICE)
    before = (chain.balance_of(payer.address), chain.balance_of(seller.recipient))
    async with aiohttp.ClientSession() as http:
        paid = await our_buyer(http, chain, payer, binding, unsigned=True).request("GET", seller.url)
    assert paid.status == 200 and paid.paid and paid.claims == {"signed": False}, paid.text()
    receipt = paid.receipt
    assert (receipt.status, receipt.method) == ("success", "evm")
    assert_paid_on_chain(chain, receipt.reference, payer.address, seller.recipient, before)
    echoed = paid.quote.challenge
    assert chain.authorization_state(payer.address, challenge_hash(echoed.id, echoed.realm, binding))


@pytest.mark.parametrize("peer, binding", [("pympp", BINDING_DRAFT), ("mppx", BINDING_JSON)])
async def test_a_peer_seller_refuses_the_other_binding_rule(chain, request, peer, binding):
    """EVM-BIND-01: pympp 0.16.0 refuses an authorization bound by the draft's rule, mppx 0.11.0 one
    bound by the JSON rule: 402 verification-failed "challenge hash mismatch", nothing moves."""
    seller = peer_seller(request, peer)
    payer, received = chain.new_payer(tokens=5 * PRICE), chain.balance_of(seller.recipient)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(mpp.PaymentFailed) as refused:
            await our_buyer(http, chain, payer, binding).request("GET", seller.url)
    assert refused.value.status == 402 and refused.value.problem_type == "verification-failed"
    assert "challenge hash mismatch" in refused.value.problem["detail"]
    assert (chain.balance_of(payer.address), chain.balance_of(seller.recipient)) == (5 * PRICE, received)


@pytest.mark.parametrize("peer, binding", [("mppx", BINDING_DRAFT), ("pympp", BINDING_JSON)])
async def test_our_payment_client_pays_then_refuses_a_peer_receipt(chain, request, peer, binding):
    """CORE-BUY-04: a peer's Payment-Receipt is not one our client can verify (unsigned, no challengeId,
    and the seller publishes no JWKS), so ``PaymentClient.request`` raises ReceiptInvalid after the
    seller settled: the token has moved. This is the documented meaning of ReceiptInvalid ("the
    payment was probably taken"), with the paid response kept on the exception; the receipt checks are
    not relaxed unless the caller opts in (CORE-BUY-12)."""
    seller = peer_seller(request, peer)
    payer = chain.new_payer(tokens=5 * PRICE)
    before = (chain.balance_of(payer.address), chain.balance_of(seller.recipient))
    async with aiohttp.ClientSession() as http:
        buyer = our_buyer(http, chain, payer, binding)
        with pytest.raises(mpp.ReceiptInvalid, match="seller JWKS answered HTTP 404") as caught:
            await buyer.request("GET", seller.url)
        assert caught.value.response.status == 200 and caught.value.response.headers.get("Payment-Receipt")
        quote, _ = await buyer.quote("GET", seller.url)
        async with http.get(seller.url, headers={"Authorization": mpp.sign_quote(quote)}) as resp:
            header = resp.headers["Payment-Receipt"]
    assert (chain.balance_of(payer.address), chain.balance_of(seller.recipient)) == (before[0] - 2 * PRICE, before[1] + 2 * PRICE)
    # With a JWKS in hand the receipt would still fail: it names no challenge and carries no JWS.
    assert set(mpp.parse_receipt(header).to_json()) == {"method", "reference", "status", "timestamp"}
    with pytest.raises(mpp.ReceiptInvalid, match="receipt names another challenge"):
        mpp.verify_receipt(header, quote, {"keys": []}, datetime.now(timezone.utc))


@pytest.mark.parametrize("peer", ["pympp", "mppx"])
def test_a_peer_client_pays_its_own_seller(chain, request, peer):
    """Sanity of the drivers on our devchain: pympp's client pays the pympp seller, mppx's the mppx
    seller (each by its own binding rule): 200, a receipt naming the transaction, the token moved."""
    seller = peer_seller(request, peer)
    payer = chain.new_payer(tokens=5 * PRICE)
    before = (chain.balance_of(payer.address), chain.balance_of(seller.recipient))
    command, env = (pympp_command, None) if peer == "pympp" else (mppx_command, mppx_env())
    out = run_json(command("pay", *token_args(chain), "--url", seller.url, "--payer-key", hex_key(payer)), env=env)
    assert out["status"] == 200 and out["errors"] == [], out
    assert out["receipt"]["status"] == "success" and out["receipt"]["method"] == "evm"
    assert_paid_on_chain(chain, out["receipt"]["reference"], payer.address, seller.recipient, before)


# -- their clients, our seller -------------------------------------------------------------

@asynccontextmanager
async def our_evm_seller(chain: Any, folder: Path, *, key: Any) -> AsyncIterator[str]:
    """OUR evm seller (``mpp.aio.Seller`` with an ``EvmRail``) on a free loopback port, taking
    both binding rules, pricing ``GET /paid`` at PRICE; yields its URL. ``key`` is the seller's:
    its address is the recipient and pays the gas of the authorizations it submits."""
    from mpp.aio.evm_rail import EvmRail
    from mpp.stores.payments import SqlitePaymentStore

    token = EvmToken(chain.token, chain.token_name, chain.token_version, DECIMALS)
    rail = EvmRail(chain.rpc_url, key=key, chain_id=chain.chain_id, tokens={"usd": token},
                   bindings=(BINDING_DRAFT, BINDING_JSON))
    seller = mpp.aio.Seller(realm="127.0.0.1", secret=b"evm-interop-secret-of-32-bytes!!", receipt_key=mpp.SigningKey.generate(),
                            rails=[rail], store=(store := SqlitePaymentStore(str(folder / "payments.db"))))

    @seller.price(PRICE, "usd", "one evm-priced answer")
    async def paid(request: web.Request) -> web.Response:
        return web.json_response({"paid": True})

    app = web.Application()
    app.router.add_get("/paid", paid)
    app.cleanup_ctx.append(rail.lifecycle)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/paid"))
    finally:
        await server.close()
        await store.close()


@pytest.mark.parametrize("peer", ["pympp", "mppx"])
async def test_a_peer_client_pays_our_seller(chain, tmp_path, peer):
    """Issue 19 criterion 2: pympp's client (JSON binding) and mppx's (the draft's) each pay our evm
    seller, configured to take both rules: 200, a receipt naming the transaction, the token moved."""
    command, env = (pympp_command, None) if peer == "pympp" else (mppx_command, mppx_env())
    payer, seller_key = chain.new_payer(tokens=5 * PRICE), chain.new_payer(wei=10**18)
    recipient = seller_key.address
    async with our_evm_seller(chain, tmp_path, key=seller_key) as url:
        # in a thread: our seller answers on this event loop meanwhile
        out = await asyncio.to_thread(run_json, command("pay", *token_args(chain), "--url", url, "--payer-key",
                                                         hex_key(payer)), env=env)
    assert out["status"] == 200 and out["errors"] == [], out
    assert out["receipt"]["status"] == "success" and out["receipt"]["method"] == "evm"
    assert_paid_on_chain(chain, out["receipt"]["reference"], payer.address, recipient, (5 * PRICE, 0))
