"""A small MCP shop served over stdio: one priced tool and one free tool (spec/transports/mcp.md).
The demo's MCP part and the MCP tests (ours and the interoperability ones) start it as an MCP
server; it is also the shortest complete example of :mod:`mpp.mcp`'s seller.

    python -m mpp.cli.mcp_shop --ledger shop.db --price 100                 # ledger method, embedded SQLite ledger
    python -m mpp.cli.mcp_shop --ledger shop.db --identity --trust did:key:z6Mk...
    python -m mpp.cli.mcp_shop --evm --rpc-url http://127.0.0.1:8545 --chain-id 31337 \\
        --key-file seller.key --token 0x... --token-name "Test USD" --token-version 1 --binding draft --binding json

The priced tool (``forecast`` unless ``--tool`` names another) answers with the city, the payer
and the paying agent; ``echo`` is free. The seller's receipt keys are advertised in the
capabilities (``experimental.payment.jwks``). With the ledger method the shop opens (or creates)
the SQLite ledger at ``--ledger`` and its recipient account; whoever pays prepares the payer's
account in the same file. With ``--evm`` it takes the test token on the chain at ``--rpc-url``
(the interop tests pay it with pympp and mppx on a throwaway anvil chain).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RECIPIENT", "parse_args", "build", "main"]

RECIPIENT = "acct:seller"
"""The seller's ledger account unless ``--recipient`` names another."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shop's options (``--help`` lists them); exits 2 with a message when ``--evm`` lacks one it
    needs or neither ``--ledger`` nor ``--evm`` is given."""
    parser = argparse.ArgumentParser(description="An MCP shop over stdio: one priced tool, one free tool.")
    parser.add_argument("--realm", default="mcp-shop.test", help="the seller's realm (default: %(default)s)")
    parser.add_argument("--tool", default="forecast", help="the priced tool's name (default: %(default)s)")
    parser.add_argument("--price", type=int, default=100, help="its price in base units (default: %(default)s)")
    parser.add_argument("--currency", default="usd", help="its currency (default: %(default)s)")
    parser.add_argument("--identity", action="store_true", help="the priced tool requires a mandate chain")
    parser.add_argument("--trust", action="append", default=[], metavar="DID",
                        help="a principal whose mandates are accepted (repeatable)")
    parser.add_argument("--store", help="the payment store (SQLite file; default: beside the ledger, or a temporary file)")
    ledger = parser.add_argument_group("ledger method")
    ledger.add_argument("--ledger", help="the embedded SQLite ledger's file (created if missing)")
    ledger.add_argument("--recipient", default=RECIPIENT, help="the seller's account (default: %(default)s)")
    evm = parser.add_argument_group("evm method")
    evm.add_argument("--evm", action="store_true", help="take evm payments instead of ledger ones")
    evm.add_argument("--rpc-url", help="the chain's JSON-RPC URL")
    evm.add_argument("--chain-id", type=int, help="the chain's id")
    evm.add_argument("--key-file", help="the seller's secp256k1 key, 0x and 64 hex digits on one line")
    evm.add_argument("--token", help="the ERC-20 token's address (priced as --currency)")
    evm.add_argument("--token-name", default="Test USD", help="its EIP-712 domain name (default: %(default)s)")
    evm.add_argument("--token-version", default="1", help="its EIP-712 domain version (default: %(default)s)")
    evm.add_argument("--decimals", type=int, default=6, help="its decimals (default: %(default)s)")
    evm.add_argument("--binding", action="append", choices=["draft", "json"],
                     help="a challenge-binding rule the shop accepts (repeatable; default: draft): draft is the "
                          "draft's (mppx), json pympp's (spec/methods/evm.md EVM-BIND)")
    args = parser.parse_args(argv)
    if args.evm:
        missing = [f"--{n.replace('_', '-')}" for n in ("rpc_url", "chain_id", "key_file", "token") if getattr(args, n) is None]
        if missing:
            parser.error(f"--evm needs {', '.join(missing)}")
    elif args.ledger is None:
        parser.error("give --ledger PATH (the ledger method) or --evm")
    return args


def build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The seller, its MCP server (set up, not yet running) and its rail."""
    from mcp.server.mcpserver import MCPServer

    import mpp
    from mpp.mcp import Seller, payment_of
    from mpp.stores.payments import SqlitePaymentStore

    if args.evm:
        from eth_account import Account

        from mpp.aio.evm_rail import EvmRail
        from mpp.methods.evm.charge import EvmToken
        from mpp.stores.evm import SqliteEvmStore

        key = Account.from_key(Path(args.key_file).read_text(encoding="ascii").strip())
        workdir = Path(args.store).parent if args.store else Path(tempfile.mkdtemp(prefix="mcp-shop-"))
        token = EvmToken(args.token, args.token_name, args.token_version, args.decimals)
        rail = EvmRail(args.rpc_url, key=key, chain_id=args.chain_id, tokens={args.currency: token},
                       store=SqliteEvmStore(str(workdir / "evm.db")), receipt_timeout=10.0, reconcile_interval=0.0,
                       bindings=tuple(args.binding or ["draft"]))
        store = SqlitePaymentStore(args.store or str(workdir / "payments.db"))
    else:
        from mpp.engine.embedded_rail import EmbeddedLedgerRail
        from mpp.ledger import SqliteLedger

        ledger = SqliteLedger(args.ledger)
        if all(a.id != args.recipient for a in ledger.accounts()):
            ledger.create_account(args.recipient, args.currency)
        rail = EmbeddedLedgerRail(ledger, recipient=args.recipient)
        store = SqlitePaymentStore(args.store) if args.store else SqlitePaymentStore.beside(ledger)

    seller = Seller(realm=args.realm, secret=os.urandom(32), receipt_key=mpp.SigningKey.generate(), rails=[rail],
                    store=store, trusted_principals=set(args.trust))
    server = MCPServer("mcp-shop", log_level="WARNING")

    async def priced(city: str) -> dict[str, Any]:
        payment = payment_of()
        return {"city": city, "forecast": "sunny", "payer": payment.payer if payment else None,
                "agent": payment.claims.get("agent") if payment else None}

    def echo(text: str) -> str:
        return text

    priced = seller.price_tool(args.tool, args.price, args.currency, f"one {args.tool}",
                               require_identity=args.identity)(priced)
    server.add_tool(priced, name=args.tool, description=f"a forecast, {args.price} base units of {args.currency}")
    server.add_tool(echo, name="echo", description="free: says what it is told")
    seller.setup(server)
    return seller, server, rail


async def _serve(args: argparse.Namespace) -> None:
    from mpp.mcp import serve_stdio

    _, server, rail = build(args)
    start, stop = getattr(rail, "start", None), getattr(rail, "stop", None)
    if start is not None:
        await start()  # the evm rail's node connection and reconciling round
    try:
        await serve_stdio(server)
    finally:
        if stop is not None:
            await stop()


def main(argv: list[str] | None = None) -> None:
    """Serve the shop over stdin and stdout until stdin closes."""
    import anyio

    anyio.run(_serve, parse_args(argv))


if __name__ == "__main__":
    main()
