"""Interoperability on the MCP payment transport (draft-payment-transport-mcp-00; issue 18,
acceptance criterion 2): MCP clients and servers of pympp 0.16.0 (PyPI, ``mpp.extensions.mcp``)
and mppx 0.11.0 (npm, ``McpClient.wrap``), over stdio, paying with the ``evm`` charge (EIP-3009
authorizations) on the throwaway local chain (the ``chain`` fixture: anvil with the test token).

Every test is one client process that starts its server as a stdio child (the MCP way: the
server's command after ``--``), calls one priced tool and prints one JSON line (``_peers.run_json``):
``ok``, ``result`` (the tool's text), ``receipt`` (the object in ``result._meta
["org.paymentauth/receipt"]``), ``error`` and ``elapsed_ms`` (the tool call, both legs). The
drivers: ``pympp_mcp_driver.py`` (server and client, under the interop virtualenv) and
``mppx_mcp_driver.mjs`` (client, under node with mppx and the MCP SDK from ``.mppx/``). Every test
pays from a fresh payer to a fresh recipient, so the balances it checks are its own.

What the peers do on this wire, pinned here:

* pympp's server answers an unpaid call with JSON-RPC error -32042, ``data = {"httpStatus": 402,
  "challenges": [...]}``, each challenge a JSON object with ``request`` as native JSON; it sends
  ``opaque`` as an OBJECT (``{"_mpp_nonce": ...}``), and advertises
  ``capabilities.experimental.payment = {"methods": ["evm"], "intents": ["charge"]}``.
* pympp's receipt names the challenge (``challengeId``) and the settlement, carries no JWS.
* pympp binds the authorization to its challenge by ``keccak256(JSON [id, realm])`` (our ``json``
  rule), mppx by the draft's ``keccak256(id || realm)`` (our ``draft`` rule): EVM-BIND-01, as on
  HTTP (test_evm_interop.py).
* mppx cannot pay pympp's MCP server: mppx's challenge schema takes ``opaque`` only as a string,
  so it does not recognise pympp's -32042 as a payment error and hands it back unpaid (and were
  that mended, the binding rules differ). Nothing moves.

Against ours: OUR MCP server is ``mpp/cli/mcp_shop.py --evm`` (run with this interpreter, our
environment), taking both binding rules, so pympp's client (the JSON rule) and mppx's (the
draft's) both pay it; it sends ``opaque`` as a base64url string (MCP-CHAL-01), which both take, and
its receipt is our PaymentReceipt (``challengeId`` and the seller's compact JWS in ``receipt``),
the keys in ``capabilities.experimental.payment.jwks``. OUR client is :class:`mpp.mcp.PaymentSession`
over the MCP SDK's stdio client; against pympp's server it binds by the JSON rule and takes
pympp's unsigned receipt only with ``BuyerPolicy(accept_unsigned_receipts=True)`` (CORE-BUY-12).
It must echo pympp's challenge object as it came: pympp recomputes the challenge id from the
echoed ``opaque`` object, and an echo carrying it re-encoded as a base64url string is, to pympp,
no credential at all (a fresh -32042).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

import mpp
from mpp.methods.evm.charge import BINDING_DRAFT, BINDING_JSON, EvmBuyerMethod, EvmToken, challenge_hash
from mpp.methods.evm.devchain import DECIMALS
from mpp.protocol.wire import b64url_decode

from _peers import HERE, REPO, interop_python, mppx_env, run_json

pytestmark = pytest.mark.interop

PRICE = 10_000  # base units: 0.01 of the 6-decimal test token
TOOL = "premium_echo"  # pympp's server's priced tool (pympp_mcp_driver.py), {"text": S} -> "paid: S"
OUR_TOOL = "forecast"  # our shop's (mpp/cli/mcp_shop.py), {"city": S} -> {"city", "forecast", "payer", "agent"}
OUR_REALM = "mcp-shop.test"  # mpp/cli/mcp_shop.py's default realm
TX_HASH = re.compile(r"0x[0-9a-f]{64}")
PAYMENT_REQUIRED = -32042


def hex_key(account: Any) -> str:
    return "0x" + bytes(account.key).hex()


def token_args(chain: Any) -> list[str]:
    return ["--chain-id", str(chain.chain_id), "--token", chain.token, "--token-name", chain.token_name,
            "--token-version", chain.token_version, "--decimals", str(DECIMALS)]


@dataclass(frozen=True)
class McpServerCommand:
    """A stdio MCP server, as the command a client starts it with, and the address it is paid to."""

    name: str
    argv: list[str]
    recipient: str
    realm: str


def pympp_server(chain: Any, realm: str = "pympp-mcp-interop") -> McpServerCommand:
    """pympp's MCP server pricing TOOL at PRICE, with a funded settler and a fresh recipient."""
    settler, recipient = chain.new_payer(wei=10**18), Account.create().address
    argv = [interop_python(), str(HERE / "pympp_mcp_driver.py"), "server", *token_args(chain), "--rpc", chain.rpc_url,
            "--recipient", recipient, "--settler-key", hex_key(settler), "--amount", str(PRICE), "--tool", TOOL,
            "--realm", realm]
    return McpServerCommand("pympp", argv, recipient, realm)


def our_server(chain: Any, folder: Path) -> McpServerCommand:
    """OUR MCP server, ``mpp/cli/mcp_shop.py --evm`` under this interpreter (our environment): the
    priced OUR_TOOL at PRICE in the test token, taking both binding rules; the seller's key (a fresh
    funded account: it is the recipient and pays the gas) in a key file in ``folder``."""
    seller = chain.new_payer(wei=10**18)
    key_file = folder / "seller.key"
    key_file.write_text(hex_key(seller) + "\n", encoding="ascii")
    argv = [sys.executable, "-m", "mpp.cli.mcp_shop", "--evm", "--rpc-url", chain.rpc_url, *token_args(chain),
            "--key-file", str(key_file), "--price", str(PRICE), "--tool", OUR_TOOL, "--store", str(folder / "payments.db"),
            "--binding", "draft", "--binding", "json"]
    return McpServerCommand("ours", argv, seller.address, OUR_REALM)


def call_tool(client: str, chain: Any, payer: Any, server: McpServerCommand, *extra: str) -> dict[str, Any]:
    """Run ``client`` (pympp or mppx) against ``server`` once: its JSON line."""
    if client == "pympp":
        argv, env = [interop_python(), str(HERE / "pympp_mcp_driver.py")], None
    else:
        argv, env = ["node", str(HERE / "mppx_mcp_driver.mjs")], mppx_env()
    tool, arguments = (OUR_TOOL, {"city": "Lyon"}) if server.name == "ours" else (TOOL, {"text": "hello"})
    return run_json([*argv, "client", *token_args(chain), "--payer-key", hex_key(payer), "--tool", tool,
                     "--arguments", json.dumps(arguments), *extra, "--", *server.argv], env=env)


def assert_paid_on_chain(chain: Any, reference: str, payer: str, recipient: str, before: tuple[int, int]) -> None:
    """The receipt's reference is a mined transaction, and exactly the price moved from payer to recipient."""
    assert TX_HASH.fullmatch(reference), reference
    assert int(chain.rpc("eth_getTransactionReceipt", reference)["status"], 16) == 1
    assert (chain.balance_of(payer), chain.balance_of(recipient)) == (before[0] - PRICE, before[1] + PRICE)


# -- the peers against each other -----------------------------------------------------------

def test_pympp_server_answers_an_unpaid_call_with_32042(chain):
    """The draft's unpaid answer, as pympp's server sends it: -32042 with httpStatus 402 and one evm
    charge challenge as a JSON object (request native JSON, bound to the tool's route; opaque an
    object), and the payment capability advertised at initialize. Nothing moves."""
    server, payer = pympp_server(chain), chain.new_payer(tokens=5 * PRICE)
    out = call_tool("pympp", chain, payer, server, "--unpaid")
    assert not out["ok"] and out["error"]["code"] == PAYMENT_REQUIRED, out
    assert out["capabilities"] == {"payment": {"methods": ["evm"], "intents": ["charge"]}}
    data = out["error"]["data"]
    assert data["httpStatus"] == 402 and len(data["challenges"]) == 1
    challenge = data["challenges"][0]
    assert (challenge["realm"], challenge["method"], challenge["intent"]) == (server.realm, "evm", "charge")
    request = challenge["request"]
    assert (request["amount"], request["currency"], request["recipient"]) == (str(PRICE), chain.token, server.recipient)
    assert request["methodDetails"]["chainId"] == chain.chain_id
    assert request["_mppx_scope"]["route"] == f"tool:{TOOL}"
    assert isinstance(challenge["opaque"], dict)  # what mppx's schema refuses (below)
    assert chain.balance_of(payer.address) == 5 * PRICE and chain.balance_of(server.recipient) == 0


def test_pympp_client_pays_pympp_server(chain):
    """pympp's McpClient pays pympp's MCP server over stdio: the tool's result, pympp's receipt in
    ``_meta`` (challengeId, settlement, no JWS), the token moved on chain, and the authorization's
    nonce spent is the challenge hash by the JSON rule."""
    server, payer = pympp_server(chain), chain.new_payer(tokens=5 * PRICE)
    out = call_tool("pympp", chain, payer, server)
    assert out["ok"] and out["error"] is None and out["result"] == "paid: hello", out
    receipt = out["receipt"]
    assert (receipt["status"], receipt["method"]) == ("success", "evm")
    assert receipt["settlement"] == {"amount": str(PRICE), "currency": chain.token}
    assert "receipt" not in receipt  # unsigned: no JWS rides along
    assert_paid_on_chain(chain, receipt["reference"], payer.address, server.recipient, (5 * PRICE, 0))
    assert chain.authorization_state(payer.address, challenge_hash(receipt["challengeId"], server.realm, BINDING_JSON))


def test_mppx_client_cannot_pay_pympp_server(chain):
    """mppx's McpClient.wrap does not pay pympp's MCP server: pympp sends the challenge's ``opaque``
    as an object, mppx's challenge schema takes a string, so mppx does not take the -32042 for a
    payment error and hands it back as it came. Nothing is signed, nothing moves."""
    server, payer = pympp_server(chain), chain.new_payer(tokens=5 * PRICE)
    out = call_tool("mppx", chain, payer, server)
    assert not out["ok"] and out["error"]["code"] == PAYMENT_REQUIRED, out
    assert isinstance(out["error"]["data"]["challenges"][0]["opaque"], dict)
    assert chain.balance_of(payer.address) == 5 * PRICE and chain.balance_of(server.recipient) == 0


# -- their clients, our server --------------------------------------------------------------

def test_our_server_answers_an_unpaid_call_as_the_peers_read_it(chain, tmp_path):
    """What pympp's client reads from our server's unpaid answer: -32042, httpStatus 402, one evm
    charge challenge as a JSON object with ``request`` native JSON and ``opaque`` a base64url string
    (MCP-CHAL-01), the problem document beside; the receipt keys in the payment capability."""
    server, payer = our_server(chain, tmp_path), chain.new_payer(tokens=5 * PRICE)
    out = call_tool("pympp", chain, payer, server, "--unpaid")
    assert not out["ok"] and out["error"]["code"] == PAYMENT_REQUIRED, out
    assert out["capabilities"]["payment"]["jwks"]["keys"]
    data = out["error"]["data"]
    assert data["httpStatus"] == 402 and data["problem"]["status"] == 402
    (challenge,) = data["challenges"]
    assert (challenge["realm"], challenge["method"], challenge["intent"]) == (OUR_REALM, "evm", "charge")
    assert (challenge["request"]["amount"], challenge["request"]["recipient"]) == (str(PRICE), server.recipient)
    assert isinstance(challenge["opaque"], str)
    assert chain.balance_of(payer.address) == 5 * PRICE and chain.balance_of(server.recipient) == 0


@pytest.mark.parametrize("client, binding", [("pympp", BINDING_JSON), ("mppx", BINDING_DRAFT)])
def test_a_peer_client_pays_our_server(chain, tmp_path, client, binding):
    """Issue 18 criterion 2: pympp's McpClient (the JSON rule) and mppx's McpClient.wrap (the
    draft's) each pay our MCP server's priced tool over stdio: the tool ran for that payer, our
    receipt in ``_meta`` (challengeId, the seller's JWS signed by a key of the advertised JWKS), the
    token moved on chain, and the authorization's nonce spent is the challenge hash by the client's
    rule."""
    server, payer = our_server(chain, tmp_path), chain.new_payer(tokens=5 * PRICE)
    out = call_tool(client, chain, payer, server)
    assert out["ok"] and out["error"] is None, out
    assert json.loads(out["result"])["city"] == "Lyon"
    assert json.loads(out["result"])["payer"].lower() == payer.address.lower()
    receipt = out["receipt"]
    assert (receipt["status"], receipt["method"]) == ("success", "evm")
    header, _, _ = receipt["receipt"].split(".")  # the seller's compact JWS
    kid = json.loads(b64url_decode(header))["kid"]
    assert kid in {key["kid"] for key in out["capabilities"]["payment"]["jwks"]["keys"]}
    assert_paid_on_chain(chain, receipt["reference"], payer.address, server.recipient, (5 * PRICE, 0))
    assert chain.authorization_state(payer.address, challenge_hash(receipt["challengeId"], OUR_REALM, binding))


# -- our client, their server ---------------------------------------------------------------

async def test_our_client_pays_pympp_server(chain):
    """Issue 18 criterion 2, the other way: our MCP client (:class:`mpp.mcp.PaymentSession` over the
    MCP SDK's stdio client, EvmBuyerMethod with pympp's JSON rule, unsigned receipts accepted) pays
    pympp's MCP server: the tool's result, pympp's receipt taken as unsigned, the token moved.
    MCP-CLI-09: pympp recomputes the challenge id from the echoed ``opaque`` object, so this pays
    only because our credential echoes the challenge object as it came."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from mpp.mcp import PaymentSession

    server, payer = pympp_server(chain), chain.new_payer(tokens=5 * PRICE)
    token = EvmToken(chain.token, chain.token_name, chain.token_version, DECIMALS)
    method = EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token], binding=BINDING_JSON)
    policy = mpp.BuyerPolicy(max_amount=PRICE, accept_unsigned_receipts=True)
    params = StdioServerParameters(command=server.argv[0], args=server.argv[1:])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        call = await PaymentSession(session, [method], policy).pay_tool(TOOL, {"text": "hello"})
    assert call.paid and call.payment.claims == {"signed": False}
    assert [block.text for block in call.result.content] == ["paid: hello"]
    receipt = call.payment.receipt
    assert (receipt.status, receipt.method) == ("success", "evm")
    assert_paid_on_chain(chain, receipt.reference, payer.address, server.recipient, (5 * PRICE, 0))
    assert chain.authorization_state(payer.address, challenge_hash(receipt.challengeId, server.realm, BINDING_JSON))
