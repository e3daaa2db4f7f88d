"""The MCP transport's seller (mpp.mcp, spec/transports/mcp.md): an MCPServer and a low-level
Server priced through the seller engine, driven in process by the SDK's own client, asserting on
what goes over the wire; credentials built by hand with the buyer's pieces; one run of
mpp/cli/mcp_shop.py over stdio."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from mcp import Client, StdioServerParameters
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
import mcp.types as mt

import mpp
from mpp import identity as I
from mpp.engine.embedded_rail import EmbeddedLedgerRail
from mpp.ledger import SqliteLedger
from mpp.mcp import (META_CREDENTIAL, META_RECEIPT, Seller, SessionsUnsupported, challenge_from_object, credential_object,
                     is_payment_demand, payment_of)
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.pricing import PriceListError, load_price_list
from mpp.protocol.headers import format_receipt, parse_credential
from mpp.protocol.models import PaymentReceipt
from mpp.protocol.wire import b64url_decode
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import REALM, claims_of, mandate

from _mcp_support import (FUNDS, OWNED, POLICY, PRINCIPAL_ACCT, ROOT, SELLER, TOOL_SCOPE, Shop,  # noqa: F401
                          now)


@pytest.fixture
def shop(tmp_path: Path):
    shop = Shop(tmp_path)
    yield shop
    shop.ledger.close()


async def demand(client: Client, tool: str, arguments: dict[str, Any] | None = None, meta: Any = None) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(tool, arguments, meta=meta)
    return raised.value


def quote_of(error: MCPError, key: mpp.SigningKey, account: str) -> mpp.Quote:
    challenges = [challenge_from_object(c) for c in error.data["challenges"]]
    return mpp.select_quote(challenges, [LedgerBuyerMethod(key=key, account=account)], POLICY, now())


def paid(authorization: str) -> dict[str, Any]:
    return {META_CREDENTIAL: credential_object(parse_credential(authorization))}


def jwks_of(client: Client) -> dict[str, Any]:
    return client.server_capabilities.experimental["payment"]["jwks"]


# -- unpaid, capability, paid, replay ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_unpaid_call_is_answered_32042_with_challenge_objects(shop, mode):
    """MCP-ERR-01, MCP-CHAL-01, MCP-TOOL-01, MCP-ERR-06: -32042 with httpStatus, the challenges as
    objects (request decoded, opaque the base64url string binding POST /tools/forecast) and the
    problem; the tool did not run."""
    async with Client(shop.server, mode=mode) as client:
        error = await demand(client, "forecast", {"city": "Oslo"})
    assert (error.code, error.message) == (-32042, "Payment Required")
    assert set(error.data) == {"httpStatus", "challenges", "problem"} and error.data["httpStatus"] == 402
    assert is_payment_demand(error.code, error.data)
    [challenge] = error.data["challenges"]
    assert {"id", "realm", "method", "intent", "request", "expires", "opaque", "digest"} <= set(challenge)
    assert (challenge["realm"], challenge["method"], challenge["intent"]) == (REALM, "ledger", "charge")
    assert challenge["request"]["amount"] == "100" and challenge["request"]["currency"] == "usd"
    assert challenge["request"]["recipient"] == SELLER
    assert isinstance(challenge["opaque"], str)
    assert json.loads(b64url_decode(challenge["opaque"]))["resource"] == "POST /tools/forecast"
    assert error.data["problem"]["type"] == "https://paymentauth.org/problems/payment-required"
    assert error.data["problem"]["status"] == 402
    assert shop.seen == []


async def test_capability_advertises_methods_intents_and_jwks(shop):
    """MCP-CAP-01: experimental.payment in the initialize result, the receipt keys among them."""
    async with Client(shop.server, mode="legacy") as client:
        payment = client.server_capabilities.experimental["payment"]
    assert payment["methods"] == {"ledger": {"intents": ["charge"]}} and payment["intents"] == ["charge"]
    assert [k["kid"] for k in payment["jwks"]["keys"]] == [k["kid"] for k in mpp.jwks_document([shop.seller.receipt_key])["keys"]]


async def test_paid_call_returns_the_result_and_a_verifiable_receipt(shop):
    """MCP-CRED-01, MCP-CRED-02, MCP-CHAL-02, MCP-RCPT-01, MCP-RCPT-03, MCP-TOOL-05: the credential
    in params._meta pays; the tool runs once and sees its payment; the receipt in result._meta
    verifies with the advertised JWKS and names POST /tools/forecast; the ledger moved 100."""
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "forecast", {"city": "Oslo"}), shop.owner, OWNED)
        result = await client.call_tool("forecast", {"city": "Oslo"}, meta=paid(mpp.sign_quote(quote)))
        jwks = jwks_of(client)
    assert not result.is_error and result.content[0].text == "sunny in Oslo"
    receipt = result.meta[META_RECEIPT]
    assert receipt["status"] == "success" and receipt["challengeId"] == quote.challenge.id and receipt["method"] == "ledger"
    _, claims = mpp.verify_receipt(format_receipt(PaymentReceipt.from_json(receipt)), quote, jwks, now())
    assert claims["resource"] == "POST /tools/forecast"
    [payment] = shop.seen
    assert payment.payer == OWNED and payment.verified.challenge_id == quote.challenge.id
    assert (shop.balance(OWNED), shop.balance(SELLER)) == (FUNDS - 100, 100)


async def test_replayed_credential_is_refused_32043_with_fresh_challenges(shop):
    """MCP-ERR-02, MCP-CRED-02: the same credential again: -32043, invalid-challenge, a fresh
    challenge, no second charge, the tool not run again."""
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "forecast", {"city": "Oslo"}), shop.owner, OWNED)
        meta = paid(mpp.sign_quote(quote))
        await client.call_tool("forecast", {"city": "Oslo"}, meta=meta)
        error = await demand(client, "forecast", {"city": "Oslo"}, meta=meta)
    assert (error.code, error.message) == (-32043, "Payment Verification Failed")
    assert set(error.data) == {"httpStatus", "challenges", "problem", "failure"} and error.data["httpStatus"] == 402
    assert error.data["problem"]["type"].endswith("/invalid-challenge")
    assert error.data["failure"]["reason"] == "invalid-challenge"
    assert [c["id"] for c in error.data["challenges"]] != [quote.challenge.id] and error.data["challenges"]
    assert is_payment_demand(error.code, error.data)
    assert len(shop.seen) == 1 and shop.balance(OWNED) == FUNDS - 100


async def test_credential_is_bound_to_the_tool_and_its_arguments(shop):
    """MCP-TOOL-02: a credential for forecast(Oslo) pays neither forecast(Bergen) nor crash."""
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "forecast", {"city": "Oslo"}), shop.owner, OWNED)
        meta = paid(mpp.sign_quote(quote))
        other_args = await demand(client, "forecast", {"city": "Bergen"}, meta=meta)
        other_tool = await demand(client, "crash", {}, meta=meta)
        # the same arguments in another order are the same body (RFC 8785): still payable
        result = await client.call_tool("forecast", {"city": "Oslo"}, meta=meta)
    assert other_args.code == other_tool.code == -32043
    assert other_tool.data["failure"]["reason"] == "invalid-challenge"
    assert META_RECEIPT in result.meta and shop.balance(OWNED) == FUNDS - 100


async def test_free_tool_runs_and_ignores_a_credential(shop):
    """MCP-TOOL-03, MCP-RCPT-02: echo is free; a credential sent with it, even a malformed one,
    is ignored; no receipt."""
    async with Client(shop.server, mode="legacy") as client:
        plain = await client.call_tool("echo", {"text": "hi"})
        with_junk = await client.call_tool("echo", {"text": "hi"}, meta={META_CREDENTIAL: "junk"})
    for result in (plain, with_junk):
        assert result.content[0].text == "hi" and META_RECEIPT not in (result.meta or {})
    assert shop.seen == [None, None] and shop.balance(SELLER) == 0


async def test_tool_failing_after_payment_is_refunded_without_receipt(shop):
    """MCP-TOOL-05, MCP-RCPT-02: a tool whose result is isError is refunded; no receipt."""
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "crash", {}), shop.owner, OWNED)
        result = await client.call_tool("crash", {}, meta=paid(mpp.sign_quote(quote)))
    assert result.is_error and META_RECEIPT not in (result.meta or {})
    assert (shop.balance(OWNED), shop.balance(SELLER)) == (FUNDS, 0)


# -- malformed credentials ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, "Payment abc", [], {}, {"challenge": "x", "payload": {}},
                                   {"challenge": {"id": "a"}, "payload": {}}])
async def test_malformed_credential_is_32602(shop, value):
    """MCP-ERR-03: a credential object that is not a credential: -32602 with its reason."""
    async with Client(shop.server, mode="legacy") as client:
        error = await demand(client, "forecast", {"city": "Oslo"}, meta={META_CREDENTIAL: value})
    assert error.code == -32602 and error.data["detail"]
    assert error.data["problem"]["type"].endswith("/malformed-credential")
    assert shop.seen == []


async def test_meta_or_arguments_not_objects_are_32602(shop):
    """MCP-ERR-04: checked before anything is priced or run (a raw request: the SDK's client
    would not send these)."""
    for params in ({"name": "forecast", "arguments": {"city": "Oslo"}, "_meta": 5},
                   {"name": "forecast", "arguments": ["Oslo"]}):
        with pytest.raises(MCPError) as raised:
            await shop.seller.start()
            try:
                await _middleware_call(shop.seller, params)
            finally:
                await shop.seller.stop()
        assert raised.value.code == -32602


# -- identity and approvals ---------------------------------------------------------------------


async def test_identity_required_tool_refuses_a_credential_without_identity(shop):
    """MCP-CRED-03, MCP-ERR-02: report requires a mandate chain: a bare credential is refused
    (-32043, identity-required); with the identity member it pays, and the tool and the receipt
    name the agent and principal."""
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "report"), shop.A, PRINCIPAL_ACCT)
        bare = await demand(client, "report", meta=paid(mpp.sign_quote(quote)))
        identity = I.identity_member(shop.chain(), shop.A, quote.challenge, quote.request)
        result = await client.call_tool("report", meta=paid(mpp.sign_quote(quote, {"identity": identity}, source=shop.A.did)))
        jwks = jwks_of(client)
    assert bare.code == -32043 and bare.data["problem"]["type"] == "urn:mpp:problem:identity-required"
    assert result.content[0].text == f"agent {shop.A.did}"
    _, claims = mpp.verify_receipt(format_receipt(PaymentReceipt.from_json(result.meta[META_RECEIPT])), quote, jwks, now())
    assert (claims["agent"], claims["principal"], claims["resource"]) == (shop.A.did, shop.P.did, "POST /tools/report")


async def test_approval_required_then_the_same_challenge_paid_with_the_approval(shop):
    """MCP-APR-01, MCP-ERR-02: pricey (300) is above the mandate's approval threshold (200):
    -32043, httpStatus 403, the approval-required problem and the presented challenge; the same
    challenge paid again with the principal's approval settles."""
    chain = shop.chain()
    async with Client(shop.server, mode="legacy") as client:
        quote = quote_of(await demand(client, "pricey"), shop.A, PRINCIPAL_ACCT)
        identity = I.identity_member(chain, shop.A, quote.challenge, quote.request)
        refused = await demand(client, "pricey", meta=paid(mpp.sign_quote(quote, {"identity": identity}, source=shop.A.did)))
        again = challenge_from_object(refused.data["challenges"][0])
        approval = I.issue_approval(shop.P, agent=shop.A.did, challenge_id=again.id, quote=I.quote_hash(again),
                                    amount=quote.request.amount, currency="usd", rule=refused.data["problem"]["rule"],
                                    mandate=claims_of(chain[-1])["jti"], now=now())
        approved = I.identity_member(chain, shop.A, quote.challenge, quote.request, approval)
        result = await client.call_tool("pricey", meta=paid(mpp.sign_quote(quote, {"identity": approved}, source=shop.A.did)))
    assert refused.code == -32043 and refused.data["httpStatus"] == 403
    assert refused.data["problem"]["type"] == "urn:mpp:problem:approval-required"
    assert again.id == quote.challenge.id and is_payment_demand(refused.code, refused.data)
    assert result.content[0].text == "expensive" and result.meta[META_RECEIPT]["challengeId"] == quote.challenge.id
    assert shop.balance(PRINCIPAL_ACCT) == FUNDS - 300


# -- pricing: price lists, sessions, the seller's own failures -----------------------------------

LIST = """\
version = "v1"
currency = "usd"

[[routes]]
method = "POST"
path = "/tools/echo"

  [[routes.offers]]
  model = "{model}"
  amount = 42
{extra}"""


def _list(model: str = "transaction", extra: str = "") -> str:
    return LIST.format(model=model, extra=extra)


async def test_price_list_prices_a_tool(tmp_path):
    """MCP-TOOL-01: a price list's POST /tools/echo prices the tool the code left free."""
    shop = Shop(tmp_path)
    shop.seller.reload_prices(_list(), "prices.toml")
    try:
        async with Client(shop.server, mode="legacy") as client:
            error = await demand(client, "echo", {"text": "hi"})
    finally:
        shop.ledger.close()
    assert error.code == -32042 and error.data["challenges"][0]["request"]["amount"] == "42"


def test_sessions_are_refused_at_setup(tmp_path):
    """MCP-TOOL-04: no per-unit (session), task or seat price for a tool, at setup or reload."""
    shop = Shop(tmp_path)
    try:
        with pytest.raises(SessionsUnsupported, match="no sessions"):
            shop.seller.meter("token", 1, "usd")
        unit = load_price_list(_list("unit", '  unit = "token"\n'), source="unit.toml")
        with pytest.raises(SessionsUnsupported, match="unit"):
            Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(), rails=shop.seller.rails,
                   store=shop.seller.store, price_list=unit)
        with pytest.raises(PriceListError, match="unit"):
            shop.seller.reload_prices(_list("unit", '  unit = "token"\n'), "unit.toml")
        with pytest.raises(TypeError, match="price_tool"):
            shop.seller.price(1, "usd")
    finally:
        shop.ledger.close()


async def test_seller_failure_is_32603_not_a_payment_demand(shop, tmp_path):
    """MCP-ERR-05, MCP-ERR-06: a seller whose own ledger account is missing cannot take payment:
    the engine's 503 seller-misconfigured becomes -32603, without challenges, and nothing moves."""
    broke = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                   rails=[EmbeddedLedgerRail(shop.ledger, recipient="acct:gone")], store=SqlitePaymentStore(str(tmp_path / "p.db")))
    broke.price_tool("forecast", 100, "usd")
    server = MCPServer("broke")

    @server.tool()
    async def forecast(city: str) -> str:
        return "never"

    broke.setup(server)
    async with Client(server, mode="legacy") as client:
        quote = quote_of(await demand(client, "forecast", {"city": "Oslo"}), shop.owner, OWNED)
        error = await demand(client, "forecast", {"city": "Oslo"}, meta=paid(mpp.sign_quote(quote)))
    assert error.code == -32603 and "challenges" not in error.data
    assert error.data["httpStatus"] == 503 and error.data["problem"]["type"] == "urn:mpp:problem:seller-misconfigured"
    assert not is_payment_demand(error.code, error.data) and shop.balance(OWNED) == FUNDS


def test_sdk_url_elicitation_is_not_a_payment_demand():
    """MCP-ERR-06: the SDK's own -32042 carries elicitations, not challenges."""
    from mcp.shared.exceptions import UrlElicitationRequiredError

    error = UrlElicitationRequiredError([mt.ElicitRequestURLParams(mode="url", message="log in", url="https://x.test/a",
                                                                   elicitation_id="e1")])
    assert error.code == -32042 and not is_payment_demand(error.code, error.data)
    assert not is_payment_demand(-32042, {"challenges": []}) and not is_payment_demand(-32042, None)


# -- the low-level server ------------------------------------------------------------------------


async def test_lowlevel_server_is_priced_the_same(shop):
    """MCP-ERR-01, MCP-RCPT-01: a low-level Server with on_call_tool, set up the same way."""
    seen = []

    async def list_tools(ctx, params):
        return mt.ListToolsResult(tools=[mt.Tool(name="forecast", input_schema={"type": "object"})])

    async def call_tool(ctx, params):
        seen.append(payment_of(ctx))
        return mt.CallToolResult(content=[mt.TextContent(type="text", text="low")])

    server = Server("low", on_list_tools=list_tools, on_call_tool=call_tool)
    shop.seller.setup(server)
    async with Client(server, mode="legacy") as client:
        assert "payment" in client.server_capabilities.experimental
        quote = quote_of(await demand(client, "forecast", {"city": "Oslo"}), shop.owner, OWNED)
        result = await client.call_tool("forecast", {"city": "Oslo"}, meta=paid(mpp.sign_quote(quote)))
    assert result.content[0].text == "low" and result.meta[META_RECEIPT]["challengeId"] == quote.challenge.id
    assert [p.payer for p in seen] == [OWNED]


# -- the credential parser: any JSON value ----------------------------------------------------------


async def _middleware_call(seller: Seller, params: dict[str, Any]) -> Any:
    from mpp.mcp import PaymentMiddleware

    async def call_next(ctx):
        return {"content": [{"type": "text", "text": "ran"}], "isError": False}

    ctx = SimpleNamespace(method="tools/call", request_id=1, params=params)
    return await PaymentMiddleware(seller)(ctx, call_next)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
CHALLENGE_KEYS = ("id", "realm", "method", "intent", "request", "expires", "digest", "opaque", "description")


@pytest.fixture(scope="module")
def parser_shop(tmp_path_factory):
    loop = asyncio.new_event_loop()
    shop = Shop(tmp_path_factory.mktemp("parser"))
    loop.run_until_complete(shop.seller.start())
    error = None
    try:
        loop.run_until_complete(_middleware_call(shop.seller, {"name": "forecast", "arguments": {"city": "Oslo"}}))
    except MCPError as exc:
        error = exc
    quote = quote_of(error, shop.owner, OWNED)
    valid = credential_object(parse_credential(mpp.sign_quote(quote)))
    yield loop, shop, valid
    loop.run_until_complete(shop.seller.stop())
    shop.ledger.close()
    loop.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON | st.tuples(st.sampled_from(("challenge", "payload", "source", "identity")), JSON)
       | st.tuples(st.sampled_from(CHALLENGE_KEYS), JSON))
def test_any_json_credential_gives_32602_or_32043(parser_shop, value):
    """MCP-ERR-03: whatever JSON value the credential object is (also a valid credential with
    one member, or one member of its challenge, replaced by any JSON value), the answer is
    -32602, -32043 or a paid result: never another error, never a crash."""
    loop, shop, valid = parser_shop
    if isinstance(value, tuple):
        name, replacement = value
        credential = json.loads(json.dumps(valid))
        target = credential["challenge"] if name in CHALLENGE_KEYS else credential
        target[name] = replacement
    else:
        credential = value
    params = {"name": "forecast", "arguments": {"city": "Oslo"}, "_meta": {META_CREDENTIAL: credential}}
    try:
        result = loop.run_until_complete(_middleware_call(shop.seller, params))
    except MCPError as exc:
        assert exc.code in (-32602, -32043), (exc.code, exc.data)
        json.dumps(exc.data)  # the error data is JSON
    else:
        assert META_RECEIPT in result["_meta"]


# -- over stdio -----------------------------------------------------------------------------------------


async def test_stdio_shop_is_paid_over_stdio(tmp_path):
    """MCP-ERR-01, MCP-RCPT-01, MCP-RCPT-03, MCP-CAP-01: mpp/cli/mcp_shop.py as a subprocess, driven
    by the SDK's stdio client: -32042, a paid call with a verified receipt, the free tool."""
    ledger = SqliteLedger(str(tmp_path / "shop.db"))
    ledger.create_account(SELLER, "usd")
    ledger.create_account(OWNED, "usd")
    owner = mpp.SigningKey.generate()
    ledger.keys.allow(OWNED, owner.did, "owner")
    ledger.fund(OWNED, FUNDS)
    ledger.close()
    params = StdioServerParameters(command=sys.executable, args=["-m", "mpp.cli.mcp_shop", "--ledger",
                                                                str(tmp_path / "shop.db"), "--price", "250"], cwd=str(tmp_path))
    async with Client(params, mode="legacy") as client:
        jwks = jwks_of(client)
        error = await demand(client, "forecast", {"city": "Oslo"})
        quote = quote_of(error, owner, OWNED)
        result = await client.call_tool("forecast", {"city": "Oslo"}, meta=paid(mpp.sign_quote(quote)))
        free = await client.call_tool("echo", {"text": "hi"})
    assert error.code == -32042 and error.data["challenges"][0]["request"]["amount"] == "250"
    assert result.structured_content["payer"] == OWNED
    mpp.verify_receipt(format_receipt(PaymentReceipt.from_json(result.meta[META_RECEIPT])), quote, jwks, now())
    assert free.content[0].text == "hi" and META_RECEIPT not in (free.meta or {})
    ledger = SqliteLedger(str(tmp_path / "shop.db"))
    try:
        assert next(a.balance for a in ledger.accounts() if a.id == SELLER) == 250
    finally:
        ledger.close()


async def test_stdio_shop_takes_evm_payments(chain, tmp_path):
    """MCP-ERR-01, MCP-RCPT-01, MCP-CRED-02: mpp/cli/mcp_shop.py --evm on the throwaway chain (what
    the interop tests pay with pympp and mppx): an evm challenge, paid with our evm buyer method
    (an EIP-3009 authorization), settled on chain, the receipt verified."""
    from eth_account import Account

    from mpp.methods.evm.charge import EvmBuyerMethod, EvmToken

    key = Account.create()
    chain.set_balance(key.address, 10 ** 18)
    (tmp_path / "seller.key").write_text("0x" + key.key.hex().removeprefix("0x"))
    payer = chain.new_payer(1000)
    token = EvmToken(chain.token, chain.token_name, chain.token_version, 6)
    params = StdioServerParameters(command=sys.executable, args=[
        "-m", "mpp.cli.mcp_shop", "--evm", "--rpc-url", chain.rpc_url, "--chain-id", str(chain.chain_id),
        "--key-file", str(tmp_path / "seller.key"), "--token", chain.token, "--token-name", chain.token_name,
        "--token-version", chain.token_version, "--price", "250", "--store", str(tmp_path / "payments.db")], cwd=str(tmp_path))
    async with Client(params, mode="legacy") as client:
        assert client.server_capabilities.experimental["payment"]["methods"] == {"evm": {"intents": ["charge"]}}
        error = await demand(client, "forecast", {"city": "Oslo"})
        challenges = [challenge_from_object(c) for c in error.data["challenges"]]
        quote = mpp.select_quote(challenges, [EvmBuyerMethod(account=payer, chain_id=chain.chain_id, tokens=[token])],
                                 POLICY, now())
        result = await client.call_tool("forecast", {"city": "Oslo"}, meta=paid(mpp.sign_quote(quote)))
        jwks = jwks_of(client)
    assert error.code == -32042 and error.data["challenges"][0]["method"] == "evm"
    mpp.verify_receipt(format_receipt(PaymentReceipt.from_json(result.meta[META_RECEIPT])), quote, jwks, now())
    assert chain.balance_of(key.address) == 250 and chain.balance_of(payer.address) == 750


async def test_a_priced_tool_fails_closed_when_setup_was_forgotten(shop):
    """MCP-TOOL-05: a tool priced with the decorator form refuses to run on a server that was not set
    up for payment (an error result; the exception names the fix), instead of serving its priced call free."""
    from mcp.server.mcpserver import MCPServer

    bare = MCPServer("forgot")
    ran: list[str] = []

    @bare.tool()
    @shop.seller.price_tool("forecast", 100, "usd")
    async def forecast(city: str) -> str:
        ran.append(city)
        return "free?"

    async with Client(bare, mode="legacy") as client:
        result = await client.call_tool("forecast", {"city": "Oslo"})
    assert result.is_error and result.content[0].text == "Error executing tool forecast"  # the SDK hides the reason
    assert ran == [] and shop.balance(SELLER) == 0
    from mpp.mcp import ToolNotSetUp

    with pytest.raises(ToolNotSetUp, match="not set up for payment"):  # the reason, as the server's log shows it
        await forecast(city="Oslo")
