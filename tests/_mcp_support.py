"""Shared by the MCP tests: a shop (an MCPServer whose tools are priced through mpp.mcp's seller)
with an embedded ledger, a trusted principal, an agent and an account owned outright."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

import mpp
from mpp.engine.embedded_rail import EmbeddedLedgerRail
from mpp.ledger import SqliteLedger
from mpp.mcp import Seller, payment_of
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import REALM, mandate

ROOT = Path(__file__).resolve().parent.parent
SELLER, OWNED, PRINCIPAL_ACCT = "acct:seller", "acct:buyer", "acct:principal"
FUNDS = 100_000
POLICY = mpp.BuyerPolicy(max_amount=10_000)
TOOL_SCOPE = ("POST /tools/report", "POST /tools/pricey")


def now() -> datetime:
    return datetime.now(timezone.utc)


class Shop:
    """A seller with tools forecast (100), report (100, identity), pricey (300, identity: above the
    approval threshold), crash (100, fails after payment) and echo (free), on an MCPServer."""

    def __init__(self, tmp: Path) -> None:
        self.P, self.A = mpp.SigningKey.generate(), mpp.SigningKey.generate()  # principal; agent
        self.owner = mpp.SigningKey.generate()  # owns acct:buyer outright: pays without a mandate
        ledger = self.ledger = SqliteLedger(str(tmp / "ledger.db"))
        for account in (SELLER, OWNED, PRINCIPAL_ACCT):
            ledger.create_account(account, "usd")
        ledger.keys.allow(OWNED, self.owner.did, "owner")
        ledger.keys.allow(PRINCIPAL_ACCT, self.P.did, "owner")
        ledger.fund(OWNED, FUNDS)
        ledger.fund(PRINCIPAL_ACCT, FUNDS)
        self.seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                             rails=[EmbeddedLedgerRail(ledger, recipient=SELLER)], store=SqlitePaymentStore.beside(ledger),
                             trusted_principals={self.P.did})
        self.seller.price_tool("report", 100, "usd", "for agents", require_identity=True)
        self.seller.price_tool("pricey", 300, "usd", "for agents, approved", require_identity=True)
        self.seller.price_tool("crash", 100, "usd", "fails after payment")
        self.seen: list[Any] = []
        server = self.server = MCPServer("shop")

        @server.tool()
        @self.seller.price_tool("forecast", 100, "usd", "one forecast")  # the decorator form: fails closed without setup
        async def forecast(city: str) -> str:
            payment = payment_of()
            self.seen.append(payment)
            return f"sunny in {city}"

        @server.tool()
        def report() -> str:  # a sync tool runs in a worker thread: it still sees its payment
            payment = payment_of()
            self.seen.append(payment)
            return f"agent {payment.claims.get('agent')}"

        @server.tool()
        async def pricey() -> str:
            return "expensive"

        @server.tool()
        async def crash() -> str:
            raise RuntimeError("the tool broke after payment")

        @server.tool()
        async def echo(text: str) -> str:
            self.seen.append(payment_of())
            return text

        self.seller.setup(server)

    def balance(self, account: str) -> int:
        return next(a.balance for a in self.ledger.accounts() if a.id == account)

    def chain(self) -> list[str]:
        return [mandate(self.P, self.A, scope=TOOL_SCOPE)]
