"""The ``evm`` method's seller on a real chain (mpp.aio.evm_rail): anvil with the EIP-3009 test
token (the session's ``chain``), our aiohttp seller in-process, our PaymentClient with
EvmBuyerMethod as the buyer. No mocks: every payment is a transaction on the chain, every balance
read back from the token.

Problem types, as the draft's Error Responses and spec/core.md's CORE-ERR table name them: an
authorization that does not match its challenge is ``verification-failed`` (CORE-ERR-06), as is
one whose window has closed (the draft's evm error types; both peer SDKs answer so), a payer short of tokens ``payment-insufficient``
(CORE-ERR-07) found before the challenge is consumed, a credential for a used challenge
``invalid-challenge`` (CORE-ERR-04, CORE-ONCE-01), a transaction presented for a second challenge
``verification-failed`` (its proof pays another challenge; the new challenge stays usable).
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

import mpp
import mpp.aio
from mpp.aio import PaymentClient, Seller, payment_of
from mpp.aio.evm_rail import ChainMismatch, EvmRail
from mpp.aio.evm_rpc import call_data
from mpp.methods.evm.charge import (AUTHORIZATION, BINDING_DRAFT, BINDING_JSON, HASH, TRANSACTION, EvmBuyerMethod, EvmToken,
                                    authorization_typed_data, challenge_hash, did_pkh, parse_evm_request)
from mpp.protocol.headers import format_credential, parse_challenges, parse_receipt
from mpp.protocol.models import ChargeRequest, Credential
from mpp.protocol.receipts import jwks_document
from mpp.stores.evm import REFUND_DONE, SqliteEvmStore
from mpp.stores.payments import SqlitePaymentStore

ROOT = Path(__file__).resolve().parent.parent
PRICE = 25_000  # 0.025 of the 6-decimal test token
ETHER = 10 ** 18


@pytest.fixture(scope="module")
def token(chain) -> EvmToken:
    return EvmToken(chain.token, chain.token_name, chain.token_version, 6)


class Shop:
    """A running evm seller: its URL, rail, address and stores."""

    def __init__(self, server: TestServer, rail: EvmRail, store: SqlitePaymentStore) -> None:
        self.server, self.rail, self.store = server, rail, store

    def url(self, path: str = "/paid") -> str:
        return str(self.server.make_url(path))

    @property
    def address(self) -> str:
        return self.rail.recipient


@asynccontextmanager
async def evm_shop(chain, token, tmp_path: Path, *, ether: int = ETHER, trusted: frozenset[str] = frozenset(),
                   **rail_kwargs: Any):
    """A seller taking ``usd`` in the test token on the chain, with routes /paid, /crash (raises after
    payment) and /agent-report (identity required; returns the paying agent), trusting the
    principals ``trusted``."""
    key = Account.create()
    if ether:
        chain.set_balance(key.address, ether)
    options = dict(bindings=(BINDING_DRAFT,), receipt_timeout=5.0, reconcile_interval=0.0)
    rail = EvmRail(chain.rpc_url, key=key, chain_id=chain.chain_id, tokens={"usd": token},
                   store=SqliteEvmStore(str(tmp_path / f"evm-{key.address}.db")), **{**options, **rail_kwargs})
    store = SqlitePaymentStore(str(tmp_path / f"payments-{key.address}.db"))
    seller = Seller(realm="evm.test", secret=os.urandom(32), receipt_key=mpp.SigningKey.generate(), rails=[rail], store=store,
                    trusted_principals=trusted)

    @seller.price(PRICE, "usd", "paid in tokens")
    async def paid(request):
        return web.json_response({"ok": True, "payer": payment_of(request).payer})

    @seller.price(PRICE, "usd", "fails after payment")
    async def crash(request):
        raise RuntimeError("the handler broke after payment")

    @seller.price(PRICE, "usd", "for agents", require_identity=True)
    async def agent_report(request):
        return web.json_response({"agent": payment_of(request).claims.get("agent")})

    app = web.Application()
    app.router.add_get("/paid", paid)
    app.router.add_get("/crash", crash)
    app.router.add_get("/agent-report", agent_report)
    app.cleanup_ctx.append(rail.lifecycle)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Shop(server, rail, store)
    finally:
        await server.close()


def buyer(session: aiohttp.ClientSession, payer, chain, token, binding: str = BINDING_DRAFT) -> PaymentClient:
    method = EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token], binding=binding)
    return PaymentClient(session, [method], mpp.BuyerPolicy(max_amount=10 ** 9))


async def quote(session: aiohttp.ClientSession, url: str):
    """The first challenge of the seller's 402 for ``url``, and its decoded request."""
    async with session.get(url) as resp:
        assert resp.status == 402
        challenge = parse_challenges(resp.headers.getall("WWW-Authenticate"))[0]
    return challenge, ChargeRequest.from_challenge(challenge)


def authorization(challenge, request, payer, token: EvmToken, chain_id: int, **changes: Any) -> dict[str, Any]:
    """An EIP-3009 payload for the challenge, signed by ``payer``; ``changes`` alter what is signed
    (value, to, valid_before, domain_chain_id, domain_token) while the payload states the same."""
    req = parse_evm_request(request)
    signed_token = EvmToken(changes.get("domain_token", token.address), token.name, token.version)
    fields = dict(payer=payer.address, recipient=changes.get("to", req.recipient), value=changes.get("value", req.amount),
                  valid_after=0, valid_before=changes.get("valid_before", int(challenge_expiry(challenge).timestamp())),
                  nonce=challenge_hash(challenge.id, challenge.realm, BINDING_DRAFT))
    typed = authorization_typed_data(signed_token, changes.get("domain_chain_id", chain_id), **fields)
    signature = bytes(payer.sign_message(encode_typed_data(full_message=typed)).signature)
    return {"type": AUTHORIZATION, "from": payer.address, "to": fields["recipient"], "value": str(fields["value"]),
            "validAfter": "0", "validBefore": str(fields["valid_before"]), "nonce": "0x" + fields["nonce"].hex(),
            "signature": "0x" + signature.hex()}


def challenge_expiry(challenge) -> datetime:
    return datetime.fromisoformat(challenge.expires.replace("Z", "+00:00"))


async def pay(session: aiohttp.ClientSession, url: str, challenge, payload: dict[str, Any], source: str | None = None):
    """Send a credential by hand: (status, problem or body, headers)."""
    header = format_credential(Credential(challenge=challenge, payload=payload, source=source))
    async with session.get(url, headers={"Authorization": header}) as resp:
        body = await resp.read()
        return resp.status, (json.loads(body) if body else {}), resp.headers


def slug(problem: dict[str, Any]) -> str:
    return str(problem.get("type", "")).rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def transfer_tx(chain, payer, to: str, amount: int, *, nonce: int | None = None) -> bytes:
    """A signed EIP-1559 transaction from ``payer`` calling the token's transfer(to, amount)."""
    base = int(chain.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    if nonce is None:
        nonce = int(chain.rpc("eth_getTransactionCount", payer.address, "pending"), 16)
    tx = {"type": 2, "chainId": chain.chain_id, "nonce": nonce, "to": chain.token, "value": 0, "gas": 100_000,
          "maxFeePerGas": 2 * base + 10 ** 9, "maxPriorityFeePerGas": 10 ** 9,
          "data": call_data("transfer(address,uint256)", to, amount)}
    return bytes(payer.sign_transaction(tx).raw_transaction)


# -- paying -------------------------------------------------------------------------------------


async def test_our_buyer_pays_our_seller_on_evm(chain, token, tmp_path):
    """EVM-REQ-01, EVM-SET-01: CORE-RCPT-01, CHARGE-07: 200 with a receipt that verifies; the token moved exactly the price,
    payer to seller; the receipt's reference is the transaction, mined, and it names the chain."""
    payer = chain.new_payer(PRICE * 4)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        resp = await buyer(session, payer, chain, token).request("GET", shop.url())
        assert resp.status == 200 and json.loads(resp.body) == {"ok": True, "payer": payer.address}
        assert chain.balance_of(payer.address) == PRICE * 3 and chain.balance_of(shop.address) == PRICE
        receipt = parse_receipt(resp.headers["Payment-Receipt"])
        reference = receipt.reference
        assert reference.startswith("0x") and len(reference) == 66 and receipt.method == "evm"
        assert receipt.to_json()["chainId"] == chain.chain_id
        mined = chain.rpc("eth_getTransactionReceipt", reference)
        assert int(mined["status"], 16) == 1 and mined["to"].lower() == chain.token.lower()
        assert mined["from"].lower() == shop.address.lower()  # the seller submitted it, and paid its gas
        claims = resp.claims
        assert claims["reference"] == reference and claims["chainId"] == chain.chain_id
        assert claims["account"] == payer.address and claims["sub"] == did_pkh(chain.chain_id, payer.address)
        assert claims["currency"] == chain.token and claims["amount"] == str(PRICE)
        schemas = {p.stem.removesuffix(".schema"): json.loads(p.read_text()) for p in (ROOT / "spec" / "schemas").glob("*.json")}
        from referencing import Registry, Resource

        registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
        jsonschema.Draft202012Validator(schemas["receipt-claims"], registry=registry).validate(claims)
        jsonschema.Draft202012Validator(schemas["receipt"], registry=registry).validate(receipt.to_json())


@pytest.mark.parametrize("rule", [BINDING_DRAFT, BINDING_JSON])
async def test_a_seller_of_both_binding_rules_takes_either(chain, token, tmp_path, rule):
    """EVM-BIND-01, EVM-BIND-02: A seller configured with both challenge-binding rules accepts a buyer of either (mppx's and
    the draft's keccak(id || realm), pympp's keccak(JSON [id, realm]))."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path, bindings=(BINDING_DRAFT, BINDING_JSON)) as shop, \
            aiohttp.ClientSession() as session:
        resp = await buyer(session, payer, chain, token, rule).request("GET", shop.url())
        assert resp.status == 200 and chain.balance_of(payer.address) == 0 and chain.balance_of(shop.address) == PRICE


async def test_a_draft_only_seller_refuses_a_json_binding_buyer(chain, token, tmp_path):
    """EVM-BIND-02: CORE-ERR-06: the nonce is not this challenge's hash under the seller's rule: 402
    verification-failed, nothing moves."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        with pytest.raises(mpp.SellerRefused) as refused:
            await buyer(session, payer, chain, token, BINDING_JSON).request("GET", shop.url())
        assert refused.value.status == 402 and refused.value.problem_type == "verification-failed"
        assert "challenge's hash" in refused.value.problem["detail"]
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0


# -- refusals -----------------------------------------------------------------------------------

ALTERED = {
    "another amount": (lambda r, other: {"value": PRICE + 1}, "verification-failed"),
    "another recipient": (lambda r, other: {"to": other}, "verification-failed"),
    "another token": (lambda r, other: {"domain_token": other}, "verification-failed"),
    "another chain": (lambda r, other: {"domain_chain_id": 1}, "verification-failed"),
    "an expired window": (lambda r, other: {"valid_before": int(datetime.now(timezone.utc).timestamp()) - 5}, "verification-failed"),
}


async def test_altered_authorizations_are_refused_and_the_challenge_stays_usable(chain, token, tmp_path):
    """EVM-AUTH-02, EVM-AUTH-03, EVM-AUTH-04, EVM-ERR-01: CORE-ERR-05, CORE-ERR-06, CORE-ONCE-04: an authorization for another amount, recipient, token
    (EIP-712 domain) or chain, or whose window has closed, is refused offline with the draft's
    problem type and a fresh challenge; nothing moves, nothing is consumed: the same challenge is
    then paid with a correct authorization."""
    payer = chain.new_payer(PRICE * len(ALTERED))
    other = Account.create().address
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        for paid, (case, (change, expected)) in enumerate(ALTERED.items()):
            challenge, request = await quote(session, shop.url())
            bad = authorization(challenge, request, payer, token, chain.chain_id, **change(request, other))
            status, problem, headers = await pay(session, shop.url(), challenge, bad)
            assert (status, slug(problem)) == (402, expected), (case, problem)
            assert headers.getall("WWW-Authenticate") and "Payment-Receipt" not in headers
            assert chain.balance_of(shop.address) == PRICE * paid, case
            good = authorization(challenge, request, payer, token, chain.chain_id)
            status, body, _ = await pay(session, shop.url(), challenge, good)
            assert status == 200, (case, body)
        assert chain.balance_of(shop.address) == PRICE * len(ALTERED) and chain.balance_of(payer.address) == 0


async def test_a_payer_short_of_tokens_is_refused_before_the_challenge_is_consumed(chain, token, tmp_path):
    """EVM-ERR-01: CORE-ERR-07: the payer's balance is read before the challenge is consumed: 402
    payment-insufficient, nothing moves; once funded, the same credential pays."""
    payer = chain.new_payer(PRICE - 1)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        credential = authorization(challenge, request, payer, token, chain.chain_id)
        status, problem, _ = await pay(session, shop.url(), challenge, credential)
        assert (status, slug(problem)) == (402, "payment-insufficient")
        assert await shop.store.get(challenge.id) is None  # not consumed
        chain.mint(payer.address, 1)
        status, _, _ = await pay(session, shop.url(), challenge, credential)
        assert status == 200 and chain.balance_of(payer.address) == 0 and chain.balance_of(shop.address) == PRICE


async def test_a_seller_without_ether_for_gas_says_so_before_consuming(chain, token, tmp_path):
    """CORE-ERR-14: a seller that cannot pay the gas of an authorization answers 503
    seller-misconfigured with Retry-After, consumes nothing, moves nothing."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path, ether=0) as shop, aiohttp.ClientSession() as session:
        with pytest.raises(mpp.SellerFault) as fault:
            await buyer(session, payer, chain, token).request("GET", shop.url())
        assert fault.value.status == 503 and fault.value.retry_after is not None
        assert chain.balance_of(payer.address) == PRICE


async def test_a_revert_found_after_the_challenge_is_consumed_is_explained_from_the_chain(chain, token, tmp_path):
    """A seller whose clock lags lets an authorization past its offline window check; the chain's
    clock has passed validBefore, so the simulation reverts: 402 verification-failed (read from the
    chain's state, not the token's words), nothing moved, and the challenge is used (CORE-ONCE-01)."""
    payer = chain.new_payer(PRICE)
    lagging = lambda: datetime.now(timezone.utc) - timedelta(hours=1)  # noqa: E731
    async with evm_shop(chain, token, tmp_path, clock=lagging) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        credential = authorization(challenge, request, payer, token, chain.chain_id,
                                   valid_before=chain.latest_timestamp() - 10)
        status, problem, _ = await pay(session, shop.url(), challenge, credential)
        assert (status, slug(problem)) == (402, "verification-failed") and "on chain" in problem["detail"]
        assert (await shop.store.get(challenge.id)).state == "failed"
        status, problem, _ = await pay(session, shop.url(), challenge, credential)
        assert (status, slug(problem)) == (402, "invalid-challenge")
        assert chain.balance_of(payer.address) == PRICE and await shop.rail.store.pending() == []


# -- replay and concurrency -----------------------------------------------------------------------


async def test_the_same_credential_twice_is_refused_as_a_used_challenge(chain, token, tmp_path):
    """EVM-SET-02, EVM-ERR-01: CORE-ONCE-01, CORE-ERR-04: the second presentation of a paid credential is 402
    invalid-challenge; the token moved once."""
    payer = chain.new_payer(PRICE * 2)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        credential = authorization(challenge, request, payer, token, chain.chain_id)
        assert (await pay(session, shop.url(), challenge, credential))[0] == 200
        status, problem, _ = await pay(session, shop.url(), challenge, credential)
        assert (status, slug(problem)) == (402, "invalid-challenge")
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == PRICE


async def test_ten_concurrent_submissions_of_one_credential_transfer_once(chain, token, tmp_path):
    """EVM-SET-02: CORE-ONCE-02: ten concurrent requests with one credential: one 200, nine invalid-challenge,
    one transfer."""
    payer = chain.new_payer(PRICE * 2)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        credential = authorization(challenge, request, payer, token, chain.chain_id)
        results = await asyncio.gather(*(pay(session, shop.url(), challenge, credential) for _ in range(10)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] + [402] * 9
        assert {slug(p) for s, p, _ in results if s == 402} == {"invalid-challenge"}
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == PRICE


async def test_fifty_concurrent_purchases_from_one_payer_are_exact(chain, token, tmp_path):
    """EVM-SET-01: Fifty purchases at once from one payer (fifty challenges), settled by one seller key: every
    one 200, no two settlements on one nonce, the balances exact."""
    payer = chain.new_payer(PRICE * 50 + 7)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        client = buyer(session, payer, chain, token)
        responses = await asyncio.gather(*(client.request("GET", shop.url()) for _ in range(50)))
        assert [r.status for r in responses] == [200] * 50
        assert len({r.receipt.reference for r in responses}) == 50
        assert chain.balance_of(payer.address) == 7 and chain.balance_of(shop.address) == PRICE * 50


# -- transaction and hash credentials -------------------------------------------------------------


async def test_a_transaction_credential_pays_once(chain, token, tmp_path):
    """EVM-TX-01, EVM-SET-02: draft §Transaction Payload: a signed EIP-1559 transfer, broadcast by the seller, pays (the payer
    pays gas); the same transaction presented for a second challenge is refused verification-failed,
    before that challenge is consumed, and nothing more moves."""
    payer = chain.new_payer(PRICE * 2, wei=ETHER)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, _ = await quote(session, shop.url())
        raw = transfer_tx(chain, payer, shop.address, PRICE)
        payload = {"type": TRANSACTION, "signature": "0x" + raw.hex()}
        status, body, headers = await pay(session, shop.url(), challenge, payload, did_pkh(chain.chain_id, payer.address))
        assert status == 200 and body["payer"] == payer.address
        reference = parse_receipt(headers["Payment-Receipt"]).reference
        assert int(chain.rpc("eth_getTransactionReceipt", reference)["status"], 16) == 1
        second, _ = await quote(session, shop.url())
        status, problem, _ = await pay(session, shop.url(), second, payload)
        assert (status, slug(problem)) == (402, "verification-failed") and "another challenge" in problem["detail"]
        assert await shop.store.get(second.id) is None
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == PRICE


async def test_a_transaction_for_another_amount_is_refused_offline(chain, token, tmp_path):
    """EVM-TX-01: CORE-ERR-06: a transfer of another amount never reaches the chain."""
    payer = chain.new_payer(PRICE * 2, wei=ETHER)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, _ = await quote(session, shop.url())
        payload = {"type": TRANSACTION, "signature": "0x" + transfer_tx(chain, payer, shop.address, PRICE + 1).hex()}
        status, problem, _ = await pay(session, shop.url(), challenge, payload)
        assert (status, slug(problem)) == (402, "verification-failed")
        assert chain.balance_of(payer.address) == PRICE * 2


async def test_hash_credentials_when_enabled(chain, token, tmp_path):
    """draft §Hash Payload: a seller that takes ``hash`` accepts the hash of a mined transfer of the
    amount to it, once: the same hash for another challenge, and the hash of a transfer of another
    amount, are refused verification-failed."""
    payer = chain.new_payer(PRICE * 3, wei=ETHER)
    async with evm_shop(chain, token, tmp_path, credential_types=(AUTHORIZATION, TRANSACTION, HASH)) as shop, \
            aiohttp.ClientSession() as session:
        mined = chain.transact("transfer(address,uint256)", shop.address, PRICE, sender=payer)
        wrong = chain.transact("transfer(address,uint256)", shop.address, PRICE - 1, sender=payer)
        first, _ = await quote(session, shop.url())
        status, body, headers = await pay(session, shop.url(), first, {"type": HASH, "hash": mined["transactionHash"]})
        assert status == 200 and body["payer"] == payer.address
        assert parse_receipt(headers["Payment-Receipt"]).reference == mined["transactionHash"]
        for tx_hash in (mined["transactionHash"], wrong["transactionHash"], "0x" + "ab" * 32):
            challenge, _ = await quote(session, shop.url())
            status, problem, _ = await pay(session, shop.url(), challenge, {"type": HASH, "hash": tx_hash})
            assert (status, slug(problem)) == (402, "verification-failed"), tx_hash


# -- refunds and outcomes unknown -----------------------------------------------------------------


async def test_a_handler_failing_after_settlement_is_refunded_on_chain_once(chain, token, tmp_path):
    """CORE-ONCE-08: the handler raises after settlement: the seller sends the amount back to the
    payer on chain; a second refund of the same settlement pays nothing more."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        with pytest.raises(mpp.OutcomeUnknown) as unknown:
            await buyer(session, payer, chain, token).request("GET", shop.url("/crash"))
        assert unknown.value.status == 500
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0
        record = await shop.store.get(unknown.value.challenge_id)
        assert record.state == "refunded"
        refund = await shop.rail.store.refund_of(record.reference)
        assert refund.state == REFUND_DONE and refund.payer == payer.address and refund.amount == PRICE
        from mpp.aio.evm_rail import EvmSettlement

        await shop.rail.refund(EvmSettlement(record.reference, datetime.now(timezone.utc), payer.address, token=chain.token,
                                             amount=PRICE))
        await shop.rail.refund(mpp.aio.Settlement(record.reference, datetime.now(timezone.utc), payer.address))
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0
        assert await shop.rail.store.refund_of(record.reference) == refund


async def test_a_transaction_not_mined_in_time_is_pending_then_refunded(chain, token, tmp_path):
    """EVM-SET-03: No receipt within the timeout (anvil not mining): 503 settlement-pending with Retry-After and
    the transaction, never 200; once it is mined, reconcile refunds it (the buyer never got the
    resource), and the payer has its tokens back."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path, receipt_timeout=0.3) as shop, aiohttp.ClientSession() as session:
        chain.rpc("evm_setAutomine", False)
        try:
            with pytest.raises(mpp.OutcomeUnknown) as unknown:
                await buyer(session, payer, chain, token).request("GET", shop.url())
            problem = unknown.value.problem
            assert unknown.value.status == 503 and problem["type"] == "urn:mpp:problem:settlement-pending"
            pending = problem["transaction"]
            assert chain.rpc("eth_getTransactionReceipt", pending) is None
            assert await shop.rail.reconcile() == 1  # still in the node's pool: kept
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", True)
        assert int(chain.rpc("eth_getTransactionReceipt", pending)["status"], 16) == 1
        assert chain.balance_of(shop.address) == PRICE
        assert await shop.rail.reconcile() == 0
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0
        assert (await shop.rail.store.refund_of(pending)).state == REFUND_DONE
        assert await shop.rail.reconcile() == 0 and chain.balance_of(payer.address) == PRICE


async def test_a_pending_transaction_is_reconciled_by_the_next_run_of_the_seller(chain, token, tmp_path):
    """EVM-SET-03 across a restart: the seller stops with a transaction pending (503 to the buyer);
    it is mined while the seller is down; the next rail on the same store and key refunds it as it
    starts, before serving, once."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path, receipt_timeout=0.3) as shop, aiohttp.ClientSession() as session:
        key, store_path = shop.rail.wallet.account, tmp_path / f"evm-{shop.address}.db"
        chain.rpc("evm_setAutomine", False)
        try:
            with pytest.raises(mpp.OutcomeUnknown) as unknown:
                await buyer(session, payer, chain, token).request("GET", shop.url())
            pending = unknown.value.problem["transaction"]
        finally:
            chain.rpc("evm_setAutomine", True)
    chain.rpc("evm_mine")  # mined while no seller runs
    assert int(chain.rpc("eth_getTransactionReceipt", pending)["status"], 16) == 1 and chain.balance_of(payer.address) == 0
    again = EvmRail(chain.rpc_url, key=key, chain_id=chain.chain_id, tokens={"usd": token}, receipt_timeout=5.0,
                    reconcile_interval=0.0, store=SqliteEvmStore(str(store_path)))
    await again.start()
    try:
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(key.address) == 0
        assert (await again.store.refund_of(pending)).state == REFUND_DONE
        assert await again.reconcile() == 0 and chain.balance_of(payer.address) == PRICE
    finally:
        await again.stop()


async def test_a_pending_transaction_that_can_no_longer_be_mined_is_dropped(chain, token, tmp_path):
    """A payer's transaction the node dropped, whose nonce another transaction then spent, can never
    be mined: reconcile drops it, and nothing moved."""
    payer = chain.new_payer(PRICE, wei=ETHER)
    async with evm_shop(chain, token, tmp_path, receipt_timeout=0.3) as shop, aiohttp.ClientSession() as session:
        challenge, _ = await quote(session, shop.url())
        raw = transfer_tx(chain, payer, shop.address, PRICE)
        chain.rpc("evm_setAutomine", False)
        try:
            status, problem, headers = await pay(session, shop.url(), challenge, {"type": TRANSACTION, "signature": "0x" + raw.hex()})
            assert (status, slug(problem)) == (503, "settlement-pending") and "Retry-After" in headers
            assert "Payment-Receipt" not in headers and problem["transaction"] == "0x" + keccak(raw).hex()
            chain.rpc("anvil_dropTransaction", problem["transaction"])
        finally:
            chain.rpc("evm_setAutomine", True)
        chain.send("0x", sender=payer, to=payer.address)  # spends the nonce
        assert await shop.rail.reconcile() == 0
        assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0


async def test_a_rail_refuses_to_start_on_another_chain(chain, token):
    """The node's eth_chainId must be the configured chain: otherwise the seller does not start."""
    rail = EvmRail(chain.rpc_url, key=Account.create(), chain_id=chain.chain_id + 1, tokens={"usd": token},
                   reconcile_interval=0)
    with pytest.raises(ChainMismatch, match=f"on chain {chain.chain_id}, not {chain.chain_id + 1}"):
        await rail.start()
    await rail.stop()


# -- a seller with two rails; a node that does not answer -------------------------------------------


async def test_a_seller_with_evm_and_a_ledger_offers_each_route_where_it_can_be_paid(chain, token, tmp_path):
    """A route in ``usd`` is offered on both rails (the evm one pays it in the token configured for
    usd), one in the token's address on evm only, one in ``eur`` on the ledger only; each buyer pays
    with its own rail."""
    from mpp.aio import EmbeddedLedgerRail
    from mpp.ledger import SqliteLedger
    from mpp.methods.ledger import LedgerBuyerMethod

    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    for account, currency in (("acct:seller", "usd"), ("acct:buyer", "usd"), ("acct:seller-eur", "eur")):
        ledger.create_account(account, currency)
    agent = mpp.SigningKey.generate()
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    ledger.fund("acct:buyer", 1_000)
    key = Account.create()
    chain.set_balance(key.address, ETHER)
    rail = EvmRail(chain.rpc_url, key=key, chain_id=chain.chain_id, tokens={"usd": token}, reconcile_interval=0)
    seller = Seller(realm="two.test", secret=os.urandom(32), receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller"), rail],
                    store=SqlitePaymentStore(str(tmp_path / "p.db")))
    def priced(currency: str):
        @seller.price(100, currency)
        async def handler(request):
            return web.json_response({"ok": True})
        return handler

    app = web.Application()
    for path, currency in (("/usd", "usd"), ("/token", chain.token), ("/eur", "eur")):
        app.router.add_get(path, priced(currency))
    app.cleanup_ctx.append(rail.lifecycle)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    payer = chain.new_payer(1_000)
    try:
        async with aiohttp.ClientSession() as session:
            offered = {}
            for path in ("/usd", "/token", "/eur"):
                async with session.get(str(server.make_url(path))) as resp:
                    offered[path] = [c.method for c in parse_challenges(resp.headers.getall("WWW-Authenticate"))]
            assert offered == {"/usd": ["ledger", "evm"], "/token": ["evm"], "/eur": ["ledger"]}
            evm_buyer = buyer(session, payer, chain, token)
            ledger_buyer = PaymentClient(session, [LedgerBuyerMethod(key=agent, account="acct:buyer")],
                                         mpp.BuyerPolicy(max_amount=1_000))
            for path in ("/usd", "/token"):
                assert (await evm_buyer.request("GET", str(server.make_url(path)))).receipt.method == "evm"
            assert (await ledger_buyer.request("GET", str(server.make_url("/usd")))).receipt.method == "ledger"
            with pytest.raises(mpp.NoPayableChallenge):
                await evm_buyer.request("GET", str(server.make_url("/eur")))
        assert chain.balance_of(key.address) == 200 and ledger.balance("acct:seller") == 100
    finally:
        await server.close()
        ledger.close()


async def test_a_node_that_does_not_answer_is_503_and_consumes_nothing(chain, token, tmp_path):
    """EVM-ERR-01: The node gives no answer before anything is sent: 503 chain-unavailable with Retry-After,
    nothing consumed or moved; the same credential pays once the node is back."""
    payer = chain.new_payer(PRICE)
    async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
        challenge, request = await quote(session, shop.url())
        credential = authorization(challenge, request, payer, token, chain.chain_id)
        shop.rail.rpc.url = "http://127.0.0.1:9"  # discard: nothing listens
        status, problem, headers = await pay(session, shop.url(), challenge, credential)
        assert (status, problem["type"]) == (503, "urn:mpp:problem:chain-unavailable") and "Retry-After" in headers
        assert await shop.store.get(challenge.id) is None
        shop.rail.rpc.url = chain.rpc_url
        assert (await pay(session, shop.url(), challenge, credential))[0] == 200
        assert chain.balance_of(shop.address) == PRICE


class SwallowingNode:
    """A real HTTP hop in front of anvil that passes every JSON-RPC call on, and for the methods in
    ``swallow`` throws the node's answer away and answers 502: a node that stops answering after it
    has taken a transaction."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.swallow = upstream, set()
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with aiohttp.ClientSession() as session, session.post(self.upstream, data=body,
                                                                    headers={"Content-Type": "application/json"}) as resp:
            answer = await resp.read()
        if json.loads(body).get("method") in self.swallow:
            return web.Response(status=502)
        return web.Response(body=answer, content_type="application/json")


async def test_a_send_without_an_answer_is_pending_and_a_mined_one_refunded(chain, token, tmp_path):
    """EVM-SET-03: The node takes the transaction and its answer is lost: 503 settlement-pending, never 200 nor a
    traceback; reconcile finds the transaction mined and refunds the payer."""
    node = SwallowingNode(chain.rpc_url)
    await node.server.start_server()
    payer = chain.new_payer(PRICE)
    try:
        async with evm_shop(chain, token, tmp_path) as shop, aiohttp.ClientSession() as session:
            shop.rail.rpc.url = str(node.server.make_url("/"))
            node.swallow.add("eth_sendRawTransaction")
            with pytest.raises(mpp.OutcomeUnknown) as unknown:
                await buyer(session, payer, chain, token).request("GET", shop.url())
            assert unknown.value.status == 503 and unknown.value.problem["type"] == "urn:mpp:problem:settlement-pending"
            mined = chain.rpc("eth_getTransactionReceipt", unknown.value.problem["transaction"])
            assert int(mined["status"], 16) == 1 and chain.balance_of(shop.address) == PRICE
            node.swallow.clear()
            assert await shop.rail.reconcile() == 0
            assert chain.balance_of(payer.address) == PRICE and chain.balance_of(shop.address) == 0
    finally:
        await node.server.close()


# -- identity on a rail the seller does not control ----------------------------------------------

async def test_identity_purchases_on_evm_are_attributed_and_held_to_the_sellers_budget_share(chain, token, tmp_path):
    """EVM-ID-01, IDENT-POP-07, IDENT-BUD-04: an agent pays on evm under a mandate in the token's
    address (EVM-REQ-02: an address in any letter case is the same currency). The credential's
    source is the agent's did:key (the payment's EIP-3009 signer is an address, never compared with
    it); the receipt names agent, principal and mandate; the seller's own store holds the mandate's
    budget: the purchase that would pass it is refused before anything moves."""
    from mpp import identity as I
    from mpp.purchase.agent import AgentIdentity

    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    now = datetime.now(timezone.utc)
    mandate = I.issue_mandate(P, subject=A.did, audience=["evm.test"], scope=["GET /agent*"], currency=token.address.lower(),
                              ceiling=PRICE, budget_amount=2 * PRICE, not_before=now - timedelta(minutes=1),
                              expires=now + timedelta(hours=1))
    payer = chain.new_payer(tokens=10 * PRICE)
    async with evm_shop(chain, token, tmp_path, trusted=frozenset({P.did})) as shop:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token])],
                                   mpp.BuyerPolicy(max_amount=PRICE), identity=AgentIdentity(A, [mandate]))
            url = shop.url("/agent-report")
            for _ in range(2):
                paid = await client.request("GET", url)
                assert paid.status == 200 and json.loads(paid.body) == {"agent": A.did}
                assert (paid.claims["sub"], paid.claims["agent"], paid.claims["principal"]) == (A.did, A.did, P.did)
            with pytest.raises(mpp.PaymentFailed) as refused:
                await client.request("GET", url)
            assert refused.value.problem_type == "budget-exceeded"
        assert chain.balance_of(payer.address) == 8 * PRICE and chain.balance_of(shop.address) == 2 * PRICE


async def test_approvals_and_the_buyers_own_budget_work_on_evm(chain, token, tmp_path):
    """EVM-ID-01, IDENT-APR-01, IDENT-BUD-01: above the mandate's approval threshold the seller asks
    for the principal's approval before consuming the challenge; the agent's approver signs one and
    the same challenge is paid on chain. The agent's own budget counters refuse the purchase past the
    budget before anything is signed."""
    from mpp import identity as I
    from mpp.purchase.agent import AgentIdentity
    from mpp.stores.budget import BudgetStore

    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    now = datetime.now(timezone.utc)
    mandate = I.issue_mandate(P, subject=A.did, audience=["evm.test"], scope=["*"], currency=token.address, ceiling=PRICE,
                              budget_amount=PRICE, approval_threshold=PRICE - 1, not_before=now - timedelta(minutes=1),
                              expires=now + timedelta(hours=1))
    payer = chain.new_payer(tokens=10 * PRICE)
    asked: list[dict] = []

    def approver(problem: dict) -> str:
        asked.append(problem)
        return I.issue_approval(P, agent=A.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                mandate=problem["mandate"], now=datetime.now(timezone.utc))

    budget = BudgetStore(str(tmp_path / "budget.db"))
    try:
        async with evm_shop(chain, token, tmp_path, trusted=frozenset({P.did})) as shop, aiohttp.ClientSession() as session:
            client = PaymentClient(session, [EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token])],
                                   mpp.BuyerPolicy(max_amount=PRICE),
                                   identity=AgentIdentity(A, [mandate], budget, approver=approver))
            url = shop.url("/agent-report")
            paid = await client.request("GET", url)
            assert paid.status == 200 and paid.claims["approval"] and paid.claims["decision"] == "allow-with-approval"
            assert len(asked) == 1 and paid.quote.challenge.id == asked[0]["challengeId"]  # the same challenge, paid
            with pytest.raises(mpp.BudgetExceeded):
                await client.request("GET", url)
            assert chain.balance_of(payer.address) == 9 * PRICE and chain.balance_of(shop.address) == PRICE
    finally:
        budget.close()
