"""Drive pympp 0.16.0's ``evm`` charge (EIP-3009 authorizations) on a local chain: a seller, a client.

Runs ONLY under the interop virtualenv (tests/interop/requirements.txt: ``pympp[evm]``, Starlette,
uvicorn); it never imports this project, because both packages are called ``mpp``.

  seller --rpc URL --chain-id N --token ADDR --token-name S --token-version S --decimals N
         --recipient ADDR --settler-key HEX --amount BASE_UNITS [--port 0] [--realm R]
      One priced route, ``GET /paid``, served with pympp's own Starlette integration (``@pay``)
      on 127.0.0.1. pympp submits nothing on chain itself: its ``settle`` hook (below) calls the
      token's ``transferWithAuthorization`` with the settler's key over JSON-RPC, waits for the
      transaction's receipt and returns its hash, which becomes the receipt's ``reference``.
      Prints the route's URL as its first line once listening; SIGTERM stops it.
  pay    --url URL --chain-id N --token ADDR --token-name S --token-version S --decimals N
         --payer-key HEX
      Pays ``GET URL`` with pympp's client (``Mpp`` + ``evm.charge``). Prints one JSON line:
      ``status``, ``body``, ``receipt`` (the decoded ``Payment-Receipt``, or null) and ``errors``
      (pympp's payment-failed events: it hands back an unpaid 402 silently otherwise).

Amounts on the command line are in the token's base units; pympp's routes take display units.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from mpp.client import Mpp as Client
from mpp.methods.evm import client as evm_client
from mpp.methods.evm import server as evm_server
from mpp.server import Mpp as Server
from mpp.server import pay
from mpp.stores import MemoryStore

TRANSFER_WITH_AUTHORIZATION = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"


def display(amount: int, decimals: int) -> str:
    """Base units as pympp's display-unit amount string (``10000`` at 6 decimals is ``0.01``)."""
    return format(Decimal(amount).scaleb(-decimals).normalize(), "f")


class Settler:
    """Submits EIP-3009 authorizations with one funded key, over plain JSON-RPC."""

    def __init__(self, rpc_url: str, chain_id: int, key: str) -> None:
        self.rpc_url, self.chain_id, self.account = rpc_url, chain_id, Account.from_key(key)
        self.lock = asyncio.Lock()  # one pending transaction at a time: nonces stay in order

    async def rpc(self, client: httpx.AsyncClient, method: str, *params: Any) -> Any:
        answer = (await client.post(self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                        "params": list(params)})).json()
        if answer.get("error"):
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def __call__(self, authorization: Any) -> str:
        """pympp's ``settle`` hook: the transaction hash once mined with status 1."""
        p = authorization.payload
        signature = bytes.fromhex(p["signature"][2:])
        data = keccak(text=TRANSFER_WITH_AUTHORIZATION)[:4] + abi_encode(
            ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
            [to_checksum_address(p["from"]), to_checksum_address(p["to"]), int(p["value"]), int(p["validAfter"]),
             int(p["validBefore"]), bytes.fromhex(p["nonce"][2:]), signature[64], signature[:32], signature[32:64]])
        token = to_checksum_address(authorization.request["currency"])
        async with self.lock, httpx.AsyncClient(timeout=30) as client:
            call = {"from": self.account.address, "to": token, "data": "0x" + data.hex()}
            gas = int(await self.rpc(client, "eth_estimateGas", call), 16)  # a revert surfaces here
            nonce = int(await self.rpc(client, "eth_getTransactionCount", self.account.address, "pending"), 16)
            price = int(await self.rpc(client, "eth_gasPrice"), 16)
            tx = {"type": 2, "chainId": self.chain_id, "nonce": nonce, "to": token, "data": data, "value": 0,
                  "gas": gas * 2, "maxFeePerGas": price * 2, "maxPriorityFeePerGas": price}
            raw = self.account.sign_transaction(tx).raw_transaction
            tx_hash = await self.rpc(client, "eth_sendRawTransaction", "0x" + bytes(raw).hex())
            for _ in range(600):
                receipt = await self.rpc(client, "eth_getTransactionReceipt", tx_hash)
                if receipt:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{tx_hash} was not mined within 30 s")
        if receipt["status"] != "0x1":
            raise RuntimeError(f"transferWithAuthorization reverted: {tx_hash}")
        return tx_hash


def seller_app(a: argparse.Namespace, realm: str) -> Starlette:
    method = evm_server.charge(
        currency=a.token, recipient=a.recipient, chain_id=a.chain_id, decimals=a.decimals,
        authorization={"name": a.token_name, "version": a.token_version},
        settle=Settler(a.rpc, a.chain_id, a.settler_key),
        store=MemoryStore())  # the replay store, explicit: one process (pympp warns when it picks one itself)
    server = Server(methods=method, realm=realm, secret_key=a.secret or os.urandom(32).hex())

    @pay(server.charge(amount=display(a.amount, a.decimals)))
    async def paid(request: Any, credential: Any, receipt: Any) -> JSONResponse:
        return JSONResponse({"paid": True, "source": credential.source, "reference": receipt.reference})

    return Starlette(routes=[Route("/paid", paid, methods=["GET"])])


async def serve(a: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", a.port))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(seller_app(a, a.realm or f"{host}:{port}"), log_level="warning",
                                           access_log=False, lifespan="off"))

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"http://{host}:{port}/paid", flush=True)

    announcing = asyncio.create_task(announce())
    await server.serve(sockets=[sock])  # uvicorn stops on SIGTERM / SIGINT
    announcing.cancel()


def b64url_json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


async def pay_url(a: argparse.Namespace) -> dict[str, Any]:
    method = evm_client.charge(currency=a.token, account=Account.from_key(a.payer_key), chain_id=a.chain_id,
                               decimals=a.decimals, authorization={"name": a.token_name, "version": a.token_version})
    errors: list[str] = []
    async with Client(methods=[method]) as client:
        client.on_payment_failed(lambda event: errors.append(repr(event.get("error", event))))
        resp = await client.fetch(a.url)
    header = resp.headers.get("payment-receipt")
    return {"status": resp.status_code, "body": resp.text, "receipt": b64url_json(header) if header else None,
            "errors": errors}


def add_token_args(parser: argparse.ArgumentParser) -> None:
    """The chain and token options every driver command takes."""
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--token-name", required=True)
    parser.add_argument("--token-version", required=True)
    parser.add_argument("--decimals", type=int, required=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("seller", "pay"):
        add_token_args(sub.add_parser(name))
    s = sub.choices["seller"]
    s.add_argument("--rpc", required=True)
    s.add_argument("--recipient", required=True)
    s.add_argument("--settler-key", required=True)
    s.add_argument("--amount", type=int, required=True, help="base units")
    s.add_argument("--port", type=int, default=0, help="on 127.0.0.1; 0: a free one")
    s.add_argument("--realm", help="default: 127.0.0.1:PORT")
    s.add_argument("--secret", help="the challenge HMAC key; default: a random one")
    s = sub.choices["pay"]
    s.add_argument("--url", required=True)
    s.add_argument("--payer-key", required=True)
    a = p.parse_args()
    if a.cmd == "seller":
        asyncio.run(serve(a))
        return 0
    try:
        out = asyncio.run(pay_url(a))
    except Exception as exc:  # report pympp's refusal as one clean line
        out = {"status": None, "body": None, "receipt": None, "errors": [f"{type(exc).__name__}: {exc}"]}
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["status"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
