"""An agent built with pydantic-ai pays a priced HTTP tool through mpp.httpx (issue 18).

The agent's model is pydantic-ai's own FunctionModel (no network model): it calls the tool
``forecast`` three times, then answers with what the tools returned. The tool makes its HTTP call
with the one ``httpx2.AsyncClient`` the agent was given (httpx2 is the client pydantic-ai itself
uses), whose transport pays. The mandate's budget covers two purchases: the third is refused by
the agent's own counters before anything is signed, and the tool tells the model so.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
import pytest
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import mpp
from mpp.httpx import AsyncPaymentTransport, payment_of
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.purchase.agent import AgentIdentity
from mpp.stores.budget import BudgetStore

from _identity_support import PAYER, link_key, mandate, new_ledger, now, seller_app, server_for


@dataclass
class Deps:
    http: httpx2.AsyncClient
    base: str


def build_agent() -> Agent[Deps, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]
        if len(returns) < 3:
            return ModelResponse(parts=[ToolCallPart("forecast", {"city": f"city-{len(returns)}"})])
        return ModelResponse(parts=[TextPart(" | ".join(str(p.content) for p in returns))])

    agent: Agent[Deps, str] = Agent(FunctionModel(model), deps_type=Deps)

    @agent.tool
    async def forecast(ctx: RunContext[Deps], city: str) -> str:
        """Buy one forecast for ``city`` from the paid weather service."""
        try:
            r = await ctx.deps.http.get(f"{ctx.deps.base}/thing", headers={"X-City": city})
        except mpp.BudgetExceeded as exc:
            return f"refused: budget ({exc.used} of {exc.budget} used)"
        except mpp.BuyerError as exc:
            return f"refused: {exc}"
        paid = payment_of(r)
        return f"paid {paid.quote.request.amount} ref {paid.receipt.reference} for {paid.claims['agent']}"

    return agent


async def test_pydantic_ai_agent_pays_within_its_mandate_budget(tmp_path):
    principal, agent_key = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    server = server_for(seller_app(ledger, ledger.location, [principal.did]))
    await server.start_server()
    budget = BudgetStore(str(tmp_path / "budget.db"))
    token = mandate(principal, agent_key, budget_amount=250, scope=("GET /thing",))
    events: list[str] = []
    transport = AsyncPaymentTransport([LedgerBuyerMethod(key=agent_key, account=PAYER)], mpp.BuyerPolicy(max_amount=1000),
                                      identity=AgentIdentity(agent_key, [token], budget),
                                      on_event=lambda kind, data: events.append(kind),
                                      transport=httpx2.AsyncHTTPTransport())
    try:
        async with httpx2.AsyncClient(transport=transport) as http:
            result = await build_agent().run("three forecasts please", deps=Deps(http, str(server.make_url("")).rstrip("/")))
        answers = result.output.split(" | ")
        assert len(answers) == 3
        assert all(a.startswith("paid 100 ref ") and a.endswith(agent_key.did) for a in answers[:2]), answers
        assert answers[2] == "refused: budget (200 of 250 used)"
        # Two purchases moved money, each verified; the third was never signed.
        charges = [t for t in ledger.transfers() if t.kind == "charge"]
        assert [c.amount for c in charges] == [100, 100]
        assert events.count("authorization-signed") == 2 and events.count("receipt") == 2
        assert budget.used(link_key(token), "total", now()) == 200
    finally:
        await server.close()
        budget.close()
        ledger.close()
