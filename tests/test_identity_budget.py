"""Mandate budgets hold where it matters: at the ledger across sellers whatever the buyer does,
at the buyer's own counters across buyer processes, and in the BudgetStore itself."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import PaymentClient
from mpp.purchase.agent import AgentIdentity
from mpp.stores.budget import BudgetLink, BudgetRefused, BudgetStore
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod

from _identity_support import PAYER, buyer_process, link_key, mandate, new_ledger, seller_app

PRICE, BUDGET = 100, 1000
ROUTES = {"/thing": (PRICE, True)}


def charges(ledger: SqliteLedger) -> list:
    return [t for t in ledger.transfers() if t.kind == "charge"]


async def start(app) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


# -- (a) the ledger holds the budget across sellers --------------------------------------


async def test_concurrent_purchases_across_two_sellers_stay_within_budget(tmp_path):
    """IDENT-BUD-04, IDENT-BUD-05, IDENT-ERR-03: ledger budget. Twenty concurrent purchases of 100 (each under the 500 ceiling)
    against a budget of 1000, split over two sellers that share one ledger file, one keeping its
    payment records beside the ledger (one transaction per purchase), the other a store of its own,
    with no buyer-side counter. Each seller's own share never refuses (it sees only its own
    sales); the ledger, checking every link in the transfer's transaction, lets exactly ten through."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    ledger_b = SqliteLedger(str(tmp_path / "ledger.db"))  # the second seller's own connection to the same file
    before = ledger.balance(PAYER)
    s1 = await start(seller_app(ledger, ledger.location, [P.did], routes=ROUTES))
    s2 = await start(seller_app(ledger_b, str(tmp_path / "store2.db"), [P.did], routes=ROUTES))
    token = mandate(P, A, scope=["GET /thing"], ceiling=500, budget_amount=BUDGET, approval_threshold=None)
    try:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [LedgerBuyerMethod(key=A, account=PAYER)], mpp.BuyerPolicy(max_amount=1000),
                                   identity=AgentIdentity(A, [token], budget=None))
            urls = [str((s1 if i % 2 else s2).make_url("/thing")) for i in range(20)]
            results = await asyncio.gather(*(client.request("GET", u) for u in urls), return_exceptions=True)
    finally:
        await s1.close()
        await s2.close()

    paid = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(r.status == 200 and r.paid for r in paid)
    assert all(isinstance(r, mpp.PaymentFailed) for r in refused), refused
    assert all((r.status, r.problem.get("type")) == (403, "urn:mpp:problem:budget-exceeded") for r in refused)
    assert all("WWW-Authenticate" not in r.problem for r in refused)
    assert len(paid) == BUDGET // PRICE and len(refused) == 20 - BUDGET // PRICE
    assert all("ledger" in r.problem["detail"] for r in refused)  # neither seller's own share refused

    settled = charges(ledger)
    assert sum(t.amount for t in settled) == BUDGET == len(paid) * PRICE
    assert ledger.balance(PAYER) == before - BUDGET
    assert ledger.keys.mandate_spent(link_key(token), "total") == BUDGET
    assert ledger.total() == 0 and ledger.check() == []
    ledger_b.close()
    ledger.close()


# -- (b) the buyer's own counters hold across buyer processes --------------------------------


async def test_buyer_processes_sharing_a_budget_store_stay_within_budget(tmp_path):
    """IDENT-BUD-02, IDENT-BUD-03: buyer budget. Four buyer processes, five concurrent purchases of 100 each, one
    BudgetStore file, a budget of 1000: the reservations admit exactly ten, the other ten are
    refused before anything is signed (QuoteRejected rule 'budget'), and the ledger agrees."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    before = ledger.balance(PAYER)
    token = mandate(P, A, scope=["GET /thing"], ceiling=500, budget_amount=BUDGET, approval_threshold=None)
    key_path, budget_path = tmp_path / "agent.pem", tmp_path / "budget.db"
    A.save(key_path)
    BudgetStore(str(budget_path)).close()  # create the schema once, before the buyers race
    server = await start(seller_app(ledger, str(tmp_path / "store.db"), [P.did], routes=ROUTES))
    try:
        url = str(server.make_url("/thing"))
        args = [(url, str(key_path), token, str(budget_path), 5)] * 4
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            # the seller keeps serving on this event loop while the buyers run
            per_process = await asyncio.wait_for(asyncio.to_thread(pool.starmap, buyer_process, args), timeout=60)
    finally:
        await server.close()

    outcomes = [o for batch in per_process for o in batch]
    assert len(outcomes) == 20
    assert not [o for o in outcomes if o.startswith("other")], outcomes
    assert outcomes.count("paid") == BUDGET // PRICE
    assert outcomes.count("budget") == 20 - BUDGET // PRICE

    key = link_key(token)
    store = BudgetStore(str(budget_path))
    try:
        assert store.used(key, "total", datetime.now(timezone.utc)) == BUDGET
    finally:
        store.close()
    assert sum(t.amount for t in charges(ledger)) == BUDGET
    assert ledger.balance(PAYER) == before - BUDGET
    assert ledger.keys.mandate_spent(key, "total") == BUDGET
    assert ledger.total() == 0
    ledger.close()


# -- (c) the BudgetStore ------------------------------------------------------------------


T0 = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
DAY = "2026-11-26"


@pytest.fixture
def store(tmp_path):
    s = BudgetStore(str(tmp_path / "budget.db"), reservation_ttl=timedelta(minutes=10))
    yield s
    s.close()


def test_reserve_commit_release(store):
    """IDENT-BUD-02, IDENT-BUD-03: buyer budget. A reservation counts; committing keeps it; releasing a reserved one frees it."""
    link = [BudgetLink("mdt_root0001", DAY, 300)]
    store.reserve("ch1", link, 100, now=T0)
    store.reserve("ch2", link, 100, now=T0)
    assert store.used("mdt_root0001", DAY, T0) == 200
    store.commit("ch1")
    store.release("ch2")
    assert store.used("mdt_root0001", DAY, T0) == 100
    store.release("ch1")  # a committed purchase is not given back by a late release
    assert store.used("mdt_root0001", DAY, T0) == 100
    store.reserve("ch3", link, 200, now=T0)
    with pytest.raises(BudgetRefused) as exc:
        store.reserve("ch4", link, 1, now=T0)
    assert (exc.value.jti, exc.value.budget, exc.value.used, exc.value.amount) == ("mdt_root0001", 300, 300, 1)


def test_reservation_counts_against_every_link(store):
    """IDENT-BUD-01, IDENT-BUD-02: buyer budget. A chain's reservation is held against each link."""
    links = [BudgetLink("mdt_root0001", DAY, 1000), BudgetLink("mdt_leaf0001", DAY, 150)]
    store.reserve("ch1", links, 100, now=T0)
    assert store.used("mdt_root0001", DAY, T0) == store.used("mdt_leaf0001", DAY, T0) == 100
    with pytest.raises(BudgetRefused) as exc:
        store.reserve("ch2", links, 100, now=T0)
    assert exc.value.jti == "mdt_leaf0001"


def test_refusal_holds_nothing(store):
    """IDENT-BUD-02: buyer budget. When one link refuses, no link keeps a reservation."""
    links = [BudgetLink("mdt_root0001", DAY, 1000), BudgetLink("mdt_leaf0001", DAY, 50)]
    with pytest.raises(BudgetRefused):
        store.reserve("ch1", links, 100, now=T0)
    assert store.used("mdt_root0001", DAY, T0) == 0
    assert store.used("mdt_leaf0001", DAY, T0) == 0
    store.reserve("ch2", [links[0]], 1000, now=T0)  # the whole root budget is still there
    assert store.used("mdt_root0001", DAY, T0) == 1000


def test_outcome_unknown_reservation_expires_after_its_ttl(store):
    """IDENT-BUD-03: buyer budget. A reservation neither committed nor released (outcome unknown)
    counts until its TTL, then stops counting; a committed one never expires."""
    link = [BudgetLink("mdt_root0001", DAY, 100)]
    store.reserve("unknown", link, 100, now=T0)
    later = T0 + timedelta(minutes=9, seconds=59)
    assert store.used("mdt_root0001", DAY, later) == 100
    with pytest.raises(BudgetRefused):
        store.reserve("ch2", link, 100, now=later)
    after = T0 + timedelta(minutes=10, seconds=1)
    assert store.used("mdt_root0001", DAY, after) == 0
    store.reserve("ch3", link, 100, now=after)
    store.commit("ch3")
    assert store.used("mdt_root0001", DAY, after + timedelta(days=365)) == 100


def test_periods_are_separate(store):
    """IDENT-BUD-01: buyer budget. A day's reservations do not count against the next day."""
    store.reserve("ch1", [BudgetLink("mdt_root0001", DAY, 100)], 100, now=T0)
    store.commit("ch1")
    store.reserve("ch2", [BudgetLink("mdt_root0001", "2026-11-27", 100)], 100, now=T0 + timedelta(days=1))
    assert store.used("mdt_root0001", DAY, T0) == 100
    assert store.used("mdt_root0001", "2026-11-27", T0 + timedelta(days=1)) == 100
