"""Shared by the identity tests: an in-process seller whose routes need a mandate, one trusted
principal, a funded account it owns, and helpers to craft credentials by hand."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mpp
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.engine.config import with_price
from mpp.pricing.prices import Price
from mpp.stores.payments import SqlitePaymentStore

from _adapters import SELLERS, AsgiTestServer

REALM = "id.test"
PAYER = "acct:principal"
PLAIN_PAYER = "acct:plain"
PAYEE = "acct:seller"
FUNDS = 100_000
POLICY = mpp.BuyerPolicy(max_amount=10**9)

# route -> (price, require_identity)
ROUTES = {
    "/thing": (100, True),
    "/pricey": (300, True),  # above the default approval threshold (200)
    "/huge": (800, True),  # above the default ceiling (500)
    "/other": (100, True),  # outside the default scope
    "/plain": (100, False),  # no identity needed
}
DEFAULT_SCOPE = ("GET /thing", "GET /pricey", "GET /huge")


def now() -> datetime:
    return datetime.now(timezone.utc)


def seller_app(ledger: SqliteLedger, store_location: str, trusted: Sequence[str], *, max_chain_depth: int = 2,
               routes: dict[str, tuple[int, bool]] = ROUTES, adapter: str = "aiohttp") -> Any:
    """The identity test seller: an aiohttp application, or with ``adapter="asgi"`` a Starlette one.
    ``store_location`` the ledger's own file: the payment records kept beside the ledger, each
    purchase one transaction (mpp.ledger.book); any other file: a store of its own."""
    store = (SqlitePaymentStore.beside(ledger) if store_location == ledger.location
             else SqlitePaymentStore(store_location))
    seller = SELLERS[adapter](realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(),
                              rails=[EmbeddedLedgerRail(ledger, recipient=PAYEE)], store=store,
                              trusted_principals=set(trusted), max_chain_depth=max_chain_depth)
    if adapter == "asgi":
        return _asgi_app(seller, routes)
    app = web.Application()
    for path, (amount, require) in routes.items():
        @seller.price(amount, "usd", path, require_identity=require)
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"ok": request.path})

        app.router.add_get(path, handler)
    seller.setup(app)
    return app


def _asgi_app(seller: Any, routes: dict[str, tuple[int, bool]]) -> Starlette:
    def echo():  # one function per route: the price rides on the function
        async def handler(request: Request) -> JSONResponse:
            return JSONResponse({"ok": request.url.path})

        return handler

    app = Starlette(routes=[Route(path, with_price(echo(), Price(amount, "usd", path, require)))
                            for path, (amount, require) in routes.items()])
    seller.setup(app)
    return app


def server_for(app: Any) -> Any:
    """An in-process server for either adapter's application."""
    return TestServer(app, host="127.0.0.1") if isinstance(app, web.Application) else AsgiTestServer(app)


def new_ledger(location: str, principal: str) -> SqliteLedger:
    ledger = SqliteLedger(location)
    ledger.create_account(PAYEE, "usd")
    ledger.create_account(PAYER, "usd")
    ledger.create_account(PLAIN_PAYER, "usd")
    ledger.keys.allow(PAYER, principal, "owner")
    ledger.fund(PAYER, FUNDS)
    ledger.fund(PLAIN_PAYER, FUNDS)
    return ledger


# Every mandate of a run shares one validity window unless a test overrides it: a chain issued
# across a second boundary would otherwise give the child a later `exp` than its parent, which
# is a widening (IDENT-DLG-02) and fails the chain now and then.
MANDATE_TIME = now()


def mandate(issuer: mpp.SigningKey, subject: mpp.SigningKey | str, **overrides: Any) -> str:
    t = MANDATE_TIME
    claims: dict[str, Any] = dict(
        audience=[REALM], scope=DEFAULT_SCOPE, currency="usd", ceiling=500, budget_amount=5000, budget_period="total",
        approval_threshold=200, max_depth=2, not_before=t - timedelta(minutes=5), expires=t + timedelta(days=1),
    )
    claims.update(overrides)
    sub = subject if isinstance(subject, str) else subject.did
    return I.issue_mandate(issuer, subject=sub, **claims)


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


def link_key(token: str) -> str:
    """What budgets and revocations are counted under: (issuer, jti)."""
    claims = claims_of(token)
    return f"{claims['iss']}#{claims['jti']}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class World:
    """One seller on 127.0.0.1, its ledger, the trusted principal P and agents A, B, C."""

    ledger: SqliteLedger
    server: TestServer
    session: aiohttp.ClientSession
    P: mpp.SigningKey = field(default_factory=mpp.SigningKey.generate)
    A: mpp.SigningKey = field(default_factory=mpp.SigningKey.generate)
    B: mpp.SigningKey = field(default_factory=mpp.SigningKey.generate)
    C: mpp.SigningKey = field(default_factory=mpp.SigningKey.generate)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def quote(self, path: str, payer: mpp.SigningKey, account: str = PAYER) -> mpp.Quote:
        """GET unpaid, parse the 402, pick the ledger challenge for ``payer``'s key."""
        async with self.session.get(self.url(path)) as resp:
            assert resp.status == 402, resp.status
            challenges = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"), skip_invalid=True)
        return mpp.select_quote(challenges, [LedgerBuyerMethod(key=payer, account=account)], POLICY, now())

    async def send(self, path: str, authorization: str) -> tuple[int, dict[str, Any], Any]:
        async with self.session.get(self.url(path), headers={"Authorization": authorization}) as resp:
            body = await resp.read()
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            return resp.status, doc, resp.headers

    def snapshot(self) -> tuple[tuple[str, int], ...]:
        return tuple((a.id, a.balance) for a in self.ledger.accounts())

    def charges(self) -> list[Any]:
        return [t for t in self.ledger.transfers() if t.kind == "charge"]


def credential(quote: mpp.Quote, chain: Sequence[str], agent: mpp.SigningKey, *, approval: str | None = None,
               proof_quote: mpp.Quote | None = None) -> str:
    """A credential with an identity member; the proof may be made over another quote."""
    pq = proof_quote or quote
    return mpp.sign_quote(quote, {"identity": I.identity_member(chain, agent, pq.challenge, pq.request, approval)})


def rewrite_credential(authorization: str, **changes: Any) -> str:
    """Re-encode an Authorization value with top-level members changed (None removes one)."""
    scheme, _, token = authorization.partition(" ")
    doc = json.loads(b64url_decode(token.strip()))
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return f"{scheme} {b64url(json.dumps(doc, separators=(',', ':')).encode())}"


# -- a buyer in another process (multiprocessing spawn imports this module by name) ----------


def buyer_process(url: str, key_path: str, mandate_token: str, budget_path: str, purchases: int) -> list[str]:
    """Make ``purchases`` concurrent purchases of ``url`` with a PaymentClient whose budget
    counters live in the shared BudgetStore file. Returns one outcome per purchase:
    "paid", "budget" (refused by our own counters) or "other: ...". """
    return asyncio.run(_buy(url, key_path, mandate_token, budget_path, purchases))


async def _buy(url: str, key_path: str, mandate_token: str, budget_path: str, purchases: int) -> list[str]:
    from mpp.aio import PaymentClient
    from mpp.purchase.agent import AgentIdentity
    from mpp.stores.budget import BudgetStore

    key = mpp.SigningKey.load(key_path)
    budget = BudgetStore(budget_path)
    outcomes: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [LedgerBuyerMethod(key=key, account=PAYER)], mpp.BuyerPolicy(max_amount=1000),
                                   identity=AgentIdentity(key, [mandate_token], budget))

            async def one() -> str:
                try:
                    resp = await client.request("GET", url)
                except mpp.QuoteRejected as exc:
                    return "budget" if exc.rule == "budget" else f"other: {exc}"
                except Exception as exc:  # noqa: BLE001 - reported to the parent test
                    return f"other: {type(exc).__name__}: {exc}"
                return "paid" if resp.status == 200 and resp.paid else f"other: HTTP {resp.status}"

            outcomes = list(await asyncio.gather(*(one() for _ in range(purchases))))
    finally:
        budget.close()
    return outcomes
