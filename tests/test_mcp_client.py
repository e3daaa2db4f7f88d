"""The MCP transport's agent side (mpp.mcp.PaymentSession, spec/transports/mcp.md MCP-CLI-*): the
buyer engine paying our MCP shop's tools, in process through the SDK's own client, and over stdio
against mpp/cli/mcp_shop.py."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

import mpp
from mpp import identity as I
from mpp.ledger import SqliteLedger
from mpp.mcp import META_RECEIPT, PaymentSession
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.purchase import AgentIdentity
from mpp.stores.budget import BudgetStore

from _identity_support import link_key, mandate
from _mcp_support import FUNDS, OWNED, PRINCIPAL_ACCT, ROOT, SELLER, TOOL_SCOPE, Shop, now


@pytest.fixture
def shop(tmp_path: Path):
    shop = Shop(tmp_path)
    yield shop
    shop.ledger.close()


@pytest.fixture
def budget(tmp_path: Path):
    store = BudgetStore(str(tmp_path / "budget.db"))
    yield store
    store.close()


def agent_session(client: Any, shop: Shop, budget: BudgetStore, *, approver: Any = None, events: list | None = None,
                  **mandate_claims: Any) -> PaymentSession:
    token = mandate(shop.P, shop.A, scope=TOOL_SCOPE, **mandate_claims)
    return PaymentSession(client, [LedgerBuyerMethod(key=shop.A, account=PRINCIPAL_ACCT)], mpp.BuyerPolicy(max_amount=1000),
                          identity=AgentIdentity(shop.A, [token], budget, approver),
                          on_event=(lambda kind, data: events.append((kind, data))) if events is not None else None)


async def test_plain_charge_is_paid_and_its_receipt_verified(shop):
    """MCP-CLI-01, MCP-CLI-03, MCP-CLI-06: -32042 answered once by the buyer engine; the receipt in _meta
    verified with the keys of the payment capability; exactly the price moved."""
    async with Client(shop.server, mode="legacy") as client:
        tools = PaymentSession(client, [LedgerBuyerMethod(key=shop.owner, account=OWNED)], mpp.BuyerPolicy(max_amount=500))
        call = await tools.pay_tool("forecast", {"city": "Oslo"})
    assert call.paid and call.result.content[0].text == "sunny in Oslo"
    assert call.payment.claims["resource"] == "POST /tools/forecast" and call.payment.claims["amount"] == "100"
    assert call.payment.receipt.challengeId == call.payment.quote.challenge.id
    assert call.result.meta[META_RECEIPT]["receipt"] == call.payment.receipt.receipt
    assert tools.tool_url("forecast") == "mcp+stdio://shop/tools/forecast"
    assert (shop.balance(OWNED), shop.balance(SELLER)) == (FUNDS - 100, 100)


async def test_identity_rides_the_credential_and_the_budget_refuses_before_signing(shop, budget):
    """MCP-CLI-01, MCP-CRED-03, IDENT-BUD-02: a tool that requires identity is paid with the agent's mandate
    chain (the receipt names agent and principal); the purchase past the mandate's budget is
    refused by our own counters, nothing signed, nothing charged."""
    events: list = []
    async with Client(shop.server, mode="legacy") as client:
        tools = agent_session(client, shop, budget, events=events, budget_amount=150)
        call = await tools.pay_tool("report")
        with pytest.raises(mpp.BudgetExceeded) as info:
            await tools.pay_tool("report")
    assert call.result.content[0].text == f"agent {shop.A.did}"
    assert (call.payment.claims["agent"], call.payment.claims["principal"]) == (shop.A.did, shop.P.did)
    assert (info.value.budget, info.value.used, info.value.amount) == (150, 100, 100)
    assert [k for k, _ in events].count("authorization-signed") == 1
    assert shop.balance(PRINCIPAL_ACCT) == FUNDS - 100


async def test_policy_refuses_a_price_above_max_amount(shop):
    """MCP-CLI-01, CORE-BUY-01 over MCP: nothing signed, the tool not run."""
    async with Client(shop.server, mode="legacy") as client:
        tools = PaymentSession(client, [LedgerBuyerMethod(key=shop.owner, account=OWNED)], mpp.BuyerPolicy(max_amount=50))
        with pytest.raises(mpp.QuoteRejected) as info:
            await tools.pay_tool("forecast", {"city": "Oslo"})
    assert info.value.rule == "max-amount" and shop.seen == [] and shop.balance(OWNED) == FUNDS


async def test_approval_is_asked_and_the_same_challenge_paid(shop, budget):
    """MCP-APR-01, MCP-CLI-02, IDENT-APR-01 over MCP: -32043 httpStatus 403 approval-required goes to the
    agent's approver; the same challenge is paid once more with the approval."""
    asked: list[dict] = []

    def approver(problem: dict) -> str:
        asked.append(problem)
        return I.issue_approval(shop.P, agent=shop.A.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                mandate=problem["mandate"], now=now())

    async with Client(shop.server, mode="legacy") as client:
        tools = agent_session(client, shop, budget, approver=approver)
        call = await tools.pay_tool("pricey")
    assert [p["type"] for p in asked] == ["urn:mpp:problem:approval-required"]
    assert call.result.content[0].text == "expensive" and call.payment.claims["approval"]
    assert call.payment.receipt.challengeId == asked[0]["challengeId"]
    assert shop.balance(PRINCIPAL_ACCT) == FUNDS - 300


async def test_a_refusal_after_paying_is_not_paid_again(shop):
    """MCP-CLI-02, MCP-CLI-07: the seller refuses the credential (-32043 with fresh challenges: the payer's
    account cannot cover it); the client raises, and does not pay the fresh challenge."""
    poor = mpp.SigningKey.generate()
    shop.ledger.create_account("acct:poor", "usd")
    shop.ledger.keys.allow("acct:poor", poor.did, "owner")
    signed: list[str] = []
    async with Client(shop.server, mode="legacy") as client:
        tools = PaymentSession(client, [LedgerBuyerMethod(key=poor, account="acct:poor")], mpp.BuyerPolicy(max_amount=500),
                               on_event=lambda kind, data: signed.append(kind) if kind == "authorization-signed" else None)
        with pytest.raises(mpp.PaymentFailed) as info:
            await tools.pay_tool("forecast", {"city": "Oslo"})
    assert info.value.status == 402 and "insufficient" in info.value.problem["type"]
    assert signed == ["authorization-signed"] and shop.seen == []


async def test_free_tool_and_non_payment_errors_pass_through(shop):
    """MCP-CLI-04, MCP-ERR-06, MCP-CAP-02: a free tool of a server advertising payment runs unpaid; an error that carries no challenges (an
    unknown tool here, the SDK's URL elicitation elsewhere) is raised as it came, not paid."""
    async with Client(shop.server, mode="legacy") as client:
        tools = PaymentSession(client, [LedgerBuyerMethod(key=shop.owner, account=OWNED)], mpp.BuyerPolicy(max_amount=500))
        free = await tools.pay_tool("echo", {"text": "hi"})
        result = await tools.call_tool("nope", {})
    assert not free.paid and free.result.content[0].text == "hi"
    assert result.is_error  # MCPServer answers an unknown tool with an error result: no payment involved
    assert shop.balance(OWNED) == FUNDS


def test_sessions_are_refused():
    """MCP-CLI-08: the draft transport has no sessions; asking for them is a clear error."""
    from mpp.purchase import SessionPolicy

    with pytest.raises(ValueError, match="no sessions"):
        PaymentSession(object(), [], mpp.BuyerPolicy(max_amount=1), sessions=SessionPolicy(max_cap=100))


async def test_our_client_pays_our_server_over_stdio_with_identity(tmp_path, budget):
    """MCP-CLI-01, MCP-CLI-05: mpp/cli/mcp_shop.py in a child process over stdio, its tool requiring
    identity: our PaymentSession pays it with the agent's mandate; the ledger moved the price."""
    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = SqliteLedger(str(tmp_path / "shop.db"))
    ledger.create_account(SELLER, "usd")
    ledger.create_account(PRINCIPAL_ACCT, "usd")
    ledger.keys.allow(PRINCIPAL_ACCT, principal.did, "owner")
    ledger.fund(PRINCIPAL_ACCT, FUNDS)
    ledger.close()
    token = I.issue_mandate(principal, subject=agent.did, audience=["mcp-shop.test"], scope=("POST /tools/forecast",),
                            currency="usd", ceiling=500, budget_amount=1000, budget_period="total",
                            not_before=now() - timedelta(minutes=5), expires=now() + timedelta(hours=1))
    params = StdioServerParameters(command=sys.executable, args=[
        "-m", "mpp.cli.mcp_shop", "--ledger", str(tmp_path / "shop.db"), "--price", "250", "--identity",
        "--trust", principal.did], cwd=str(tmp_path))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = PaymentSession(session, [LedgerBuyerMethod(key=agent, account=PRINCIPAL_ACCT)], mpp.BuyerPolicy(max_amount=500),
                               identity=AgentIdentity(agent, [token], budget))
        call = await tools.pay_tool("forecast", {"city": "Oslo"})
        with pytest.raises(MCPError):
            await session.call_tool("forecast", {"city": "Oslo"})  # unpaid, by the plain session: -32042
    assert call.paid and call.payment.claims["agent"] == agent.did and call.payment.claims["principal"] == principal.did
    assert budget.used(link_key(token), "total", now()) == 250
    ledger = SqliteLedger(str(tmp_path / "shop.db"))
    try:
        assert next(a.balance for a in ledger.accounts() if a.id == SELLER) == 250
    finally:
        ledger.close()


# -- what the server sends is untrusted: any JSON in the error data or the result's _meta ------------


class _Scripted:
    """An MCP session whose tools/call answers are given by the test (the parser under test is the
    client's reading of them, not the SDK), with a real challenge first so the buyer gets to pay."""

    def __init__(self, first: Any, then: Any) -> None:
        self.answers = [first, then]
        self.server_capabilities = None
        self.server_info = None

    async def call_tool(self, name: str, arguments: Any = None, *, meta: Any = None) -> Any:
        answer = self.answers.pop(0) if self.answers else MCPError(-32603, "no more answers")
        if isinstance(answer, BaseException):
            raise answer
        return answer


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from mcp.types import CallToolResult, TextContent  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=16)


def _challenge_object() -> dict[str, Any]:
    issuer = mpp.ChallengeIssuer(b"k" * 32, "scripted.test")
    challenge = issuer.issue(method="ledger", intent="charge", now=now(),
                             request={"amount": "10", "currency": "usd", "recipient": "acct:seller",
                                      "methodDetails": {"ledger": "ledger-scripted"}})
    from mpp.mcp import challenge_object

    return challenge_object(challenge)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.sampled_from([-32042, -32043, -32602, -32603, -32000]), data=JSON, receipt=JSON,
       challenges=st.lists(JSON, max_size=2), first_junk=st.booleans())
async def test_any_server_answer_gives_a_buyer_error_or_the_mcp_error(code, data, receipt, challenges, first_junk):
    """MCP-CLI-04, MCP-CLI-07: whatever a server puts in an error's data (challenges among it) or a
    result's _meta, the client answers with the buyer's own error, the server's MCP error as it came,
    or a verified result; never another exception."""
    key = mpp.SigningKey.generate()
    demand_data = {"httpStatus": 402, "challenges": [*challenges, *([] if first_junk else [_challenge_object()])]}
    if isinstance(data, dict):
        data = {**data, "challenges": challenges} if code in (-32042, -32043) else data
    then = (MCPError(code, "refused", data) if code != -32000 else
            CallToolResult(content=[TextContent(type="text", text="ok")], _meta={META_RECEIPT: receipt}))
    session = _Scripted(MCPError(-32042, "Payment Required", demand_data), then)
    tools = PaymentSession(session, [LedgerBuyerMethod(key=key, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100))
    with pytest.raises((mpp.BuyerError, MCPError)):  # a scripted receipt never verifies: nothing is "paid"
        await tools.pay_tool("tool", {"x": 1})
    if not first_junk:
        assert session.answers == []  # the valid challenge was paid: the server's second answer was read
