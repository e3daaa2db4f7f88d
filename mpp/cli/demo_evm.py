"""The demo's ``evm`` part (spec/methods/evm.md): a second seller, paid in an ERC-20 token on a
throwaway local chain (anvil, mpp.methods.evm.devchain) instead of the ledger. An agent pays it
with an EIP-3009 authorization; the seller submits it, waits for the transaction, and serves with
a signed receipt whose reference is the transaction hash. A replayed credential is refused and
the token balances on chain move by exactly what was paid.

Without anvil the part is skipped with one line saying how to install it (``make anvil``; ``make
demo`` does it first), so ``mpp demo`` still runs where only Python is."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable

__all__ = ["EVM_PRICE", "evm_part"]

EVM_PRICE = 25_000
"""What the demo's evm route costs: 0.025 of the test token (6 decimals), in base units."""


async def evm_part(home: Path, check: Callable[[bool, str], None], number: int) -> bool:
    """Run the part, numbered ``number`` in the demo's output; False when it was skipped (no anvil)."""
    from mpp.methods.evm.devchain import ChainUnavailable, find_anvil

    try:
        find_anvil()
    except ChainUnavailable as exc:
        print(f"{number}. the evm method: skipped: {str(exc).splitlines()[0]}")
        return False
    from mpp.methods.evm.devchain import throwaway_chain

    with throwaway_chain() as chain:
        await _pay_on_chain(home, chain, check, number)
    return True


async def _pay_on_chain(home: Path, chain, check: Callable[[bool, str], None], number: int) -> None:
    import aiohttp
    from aiohttp import web
    from eth_account import Account

    from mpp.aio import PaymentClient, Seller
    from mpp.aio.evm_rail import EvmRail
    from mpp.buyer.core import BuyerPolicy
    from mpp.methods.evm.charge import BINDING_DRAFT, BINDING_JSON, EvmBuyerMethod, EvmToken
    from mpp.methods.evm.devchain import DECIMALS
    from mpp.protocol.keys import SigningKey
    from mpp.stores.payments import SqlitePaymentStore

    token = EvmToken(chain.token, chain.token_name, chain.token_version, DECIMALS)
    seller_key = Account.create()
    chain.set_balance(seller_key.address, 10**18)  # gas for submitting the authorizations it is paid with
    payer = chain.new_payer(tokens=10 * EVM_PRICE)
    rail = EvmRail(chain.rpc_url, key=seller_key, chain_id=chain.chain_id, tokens={"usd": token},
                   bindings=(BINDING_DRAFT, BINDING_JSON))
    seller = Seller(realm="evm.demo", secret=secrets.token_bytes(32), receipt_key=SigningKey.generate(), rails=[rail],
                    store=SqlitePaymentStore(str(home / "evm-payments.db")))

    @seller.price(EVM_PRICE, "usd", "Weather, paid on chain")
    async def weather(request: web.Request) -> web.Response:
        return web.json_response({"forecast": "sunny", "paid": "on chain"})

    app = web.Application()
    app.router.add_get("/weather", weather)
    seller.setup(app)
    app.cleanup_ctx.append(rail.lifecycle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    print(f"{number}. the evm method: a seller on {base} paid in token {token.address} on a local chain "
          f"(anvil, chain {chain.chain_id})")
    before = (chain.balance_of(payer.address), chain.balance_of(seller_key.address))
    try:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token])],
                                   BuyerPolicy(max_amount=EVM_PRICE, currencies=frozenset({token.address})))
            paid = await client.request("GET", f"{base}/weather")
            tx = chain.rpc("eth_getTransactionReceipt", paid.receipt.reference) if paid.receipt else None
            print(f"   GET /weather -> HTTP {paid.status} {paid.text().strip()[:60]}")
            print(f"   paid with an EIP-3009 authorization from {payer.address[:10]}...; the seller submitted it: "
                  f"transaction {paid.receipt.reference[:18] if paid.receipt else None}... in block "
                  f"{int(tx['blockNumber'], 16) if tx else None}")
            check(paid.status == 200 and paid.paid and tx is not None and int(tx["status"], 16) == 1,
                  "paid on chain: the receipt's reference is a mined transaction, its JWS verified")
            credential = await client.credential("GET", f"{base}/weather")
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as first:
                first_status = first.status
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as again:
                problem = await again.json(content_type=None)
            print(f"   the same authorization twice: HTTP {first_status}, then HTTP {again.status} {problem.get('type')}")
            check(first_status == 200 and again.status == 402 and str(problem.get("type")).endswith("/invalid-challenge"),
                  "a replayed evm credential is refused")
    finally:
        await runner.cleanup()
    after = (chain.balance_of(payer.address), chain.balance_of(seller_key.address))
    print(f"   token balances: payer {before[0]} -> {after[0]}, seller {before[1]} -> {after[1]}")
    check(before[0] - after[0] == 2 * EVM_PRICE == after[1] - before[1],
          f"on chain the payer paid exactly {2 * EVM_PRICE} and the seller received exactly {2 * EVM_PRICE}")

