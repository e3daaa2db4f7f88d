"""The demo's MCP part (spec/transports/mcp.md): an agent pays for a tool of an MCP server.

The server is :mod:`mpp.cli.mcp_shop`, started as a child process and spoken to over stdio, as
agents start MCP servers; its ``forecast`` tool is priced and requires a mandate. The agent holds
a mandate with a budget of two forecasts: its first, unpaid call is answered -32042 with the
challenge, :class:`mpp.mcp.PaymentSession` pays two calls (the receipts, from ``result._meta``,
verified with the keys the server advertises), and the third is refused by the agent's own
budget before anything is signed. The shop's ledger moves by exactly what was paid.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

__all__ = ["MCP_PRICE", "mcp_part"]

MCP_PRICE = 150
"""What the demo's MCP tool costs, in base units of ``usd``."""
_FUNDS = 10_000
_PAYER = "acct:principal"
_SELLER = "acct:seller"


async def mcp_part(home: Path, check: Callable[[bool, str], None], number: int) -> None:
    """Run the part, numbered ``number`` in the demo's output, in ``home`` (its own ledger file)."""
    from mcp import ClientSession, MCPError, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from mpp.buyer.core import BuyerPolicy
    from mpp.identity import issue_mandate
    from mpp.ledger import SqliteLedger
    from mpp.mcp import PaymentSession
    from mpp.methods.ledger import LedgerBuyerMethod
    from mpp.protocol.errors import BudgetExceeded
    from mpp.protocol.keys import SigningKey
    from mpp.purchase import AgentIdentity
    from mpp.stores.budget import BudgetStore

    principal, agent = SigningKey.generate(), SigningKey.generate()
    ledger_path = str(home / "mcp-ledger.db")
    ledger = SqliteLedger(ledger_path)
    try:
        for account in (_SELLER, _PAYER):
            ledger.create_account(account, "usd")
        ledger.keys.allow(_PAYER, principal.did, "owner")
        ledger.fund(_PAYER, _FUNDS)
    finally:
        ledger.close()
    now = datetime.now(timezone.utc)
    mandate = issue_mandate(principal, subject=agent.did, audience=["mcp-shop.test"], scope=("POST /tools/forecast",),
                            currency="usd", ceiling=500, budget_amount=2 * MCP_PRICE, budget_period="total",
                            not_before=now - timedelta(minutes=1), expires=now + timedelta(hours=1))
    server = StdioServerParameters(command=sys.executable, cwd=str(home), args=[
        "-m", "mpp.cli.mcp_shop", "--ledger", ledger_path, "--price", str(MCP_PRICE), "--identity", "--trust", principal.did])
    print(f"{number}. MCP: an agent pays for a tool of an MCP server (python -m mpp.cli.mcp_shop, over stdio)")
    budget = BudgetStore(str(home / "mcp-budget.db"))
    try:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            try:
                await session.call_tool("forecast", {"city": "Lyon"})
            except MCPError as exc:
                [challenge] = exc.data["challenges"]
                print(f"   unpaid tools/call: JSON-RPC error {exc.code}, challenge for {challenge['request']['amount']} "
                      f"{challenge['request']['currency']} ({challenge['method']}, realm {challenge['realm']})")
                check(exc.code == -32042, "an unpaid call of a priced tool is answered -32042 with its challenge")
            else:
                check(False, "an unpaid call of a priced tool is answered -32042")
            tools = PaymentSession(session, [LedgerBuyerMethod(key=agent, account=_PAYER)], BuyerPolicy(max_amount=500),
                                   identity=AgentIdentity(agent, [mandate], budget))
            for city in ("Lyon", "Oslo"):
                call = await tools.pay_tool("forecast", {"city": city})
                result = call.result.structured_content or {}
                print(f"   paid {call.payment.quote.request.amount} usd: {result.get('city')} {result.get('forecast')}, "
                      f"receipt {call.payment.receipt.reference} (signed; agent {str(call.payment.claims['agent'])[:24]}...)")
                check(call.paid and call.payment.claims["principal"] == principal.did,
                      "the receipt in result._meta verifies and names the agent and its principal")
            try:
                await tools.pay_tool("forecast", {"city": "Rome"})
            except BudgetExceeded as exc:
                print(f"   third call: budget {exc.used} of {exc.budget} used")
                check(exc.used == 2 * MCP_PRICE, "the mandate's budget holds over MCP: the third call refused before signing")
            else:
                check(False, "the mandate's budget holds over MCP")
    finally:
        budget.close()
    ledger = SqliteLedger(ledger_path)
    try:
        balances = {a.id: a.balance for a in ledger.accounts()}
    finally:
        ledger.close()
    check(balances[_SELLER] == 2 * MCP_PRICE and balances[_PAYER] == _FUNDS - 2 * MCP_PRICE,
          f"the MCP shop's ledger moved exactly {2 * MCP_PRICE}: two calls paid, the third refused")
