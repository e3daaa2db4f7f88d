"""One contract, two engines: the buyer's budget counters (mpp.stores.budget.AsyncBudgetStore) on SQLite
(a BudgetStore behind AsyncSqliteBudgetStore) and on PostgreSQL (mpp.stores.pg.PgBudgetStore, a real
server started once per run by the `pg_server` fixture), every assertion run against both.

"Another buyer process" is played by a second store object on the same file or database, in a
thread of its own with its own event loop: two SQLite connections, or two PostgreSQL pools, so
the engine's locks, not this process's event loop, are what keep reservations within budget.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mpp.stores.budget import AsyncBudgetStore, AsyncSqliteBudgetStore, BudgetLink, BudgetRefused, ReservationFinished
from mpp.connect import budget_store_for, open_budget_store

ENGINES = ["sqlite", "postgres"]
T0 = datetime(2026, 11, 26, 12, 0, 0, 250_000, tzinfo=timezone.utc)
DAY, NEXT_DAY = "2026-11-26", "2026-11-27"
ROOT, LEAF = "mdt_root0001", "mdt_leaf0001"


@pytest.fixture(params=ENGINES)
def location(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/budget.db"
    return request.getfixturevalue("pg_url")  # errors (never skips) if PostgreSQL cannot start


@pytest.fixture
async def budgets(location: str):
    """``await budgets(**kwargs)``: another store on the same counters (another buyer process), closed after the test."""
    opened: list[AsyncBudgetStore] = []

    async def open_one(**kwargs: Any) -> AsyncBudgetStore:
        store = await open_budget_store(location, **kwargs)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def test_reserve_within_and_over_budget(budgets):
    """IDENT-BUD-01, IDENT-BUD-02: a reservation fits only if what is counted plus it stays within
    the budget; a refusal names link, budget, used and amount, and holds nothing."""
    store = await budgets()
    link = [BudgetLink(ROOT, DAY, 300)]
    await store.reserve("ch1", link, 100, now=T0)
    await store.reserve("ch2", link, 100, now=T0)
    assert await store.used(ROOT, DAY, T0) == 200
    with pytest.raises(BudgetRefused) as refused:
        await store.reserve("ch3", link, 101, now=T0)
    assert (refused.value.jti, refused.value.budget, refused.value.used, refused.value.amount) == (ROOT, 300, 200, 101)
    assert await store.used(ROOT, DAY, T0) == 200  # the refused reservation holds nothing
    await store.reserve("ch3", link, 100, now=T0)  # exactly the budget
    assert await store.used(ROOT, DAY, T0) == 300
    with pytest.raises(BudgetRefused):
        await store.reserve("ch4", link, 1, now=T0)
    assert await store.used(ROOT, NEXT_DAY, T0) == 0  # another period counts apart
    await store.reserve("ch4", [BudgetLink(ROOT, NEXT_DAY, 300)], 300, now=T0)


async def test_reservation_counts_against_every_link_or_none(budgets):
    """IDENT-BUD-01, IDENT-BUD-02: a chain's reservation is held against each link, all in one
    transaction: when one link refuses, no link holds anything."""
    store = await budgets()
    links = [BudgetLink(ROOT, DAY, 1000), BudgetLink(LEAF, DAY, 150)]
    await store.reserve("ch1", links, 100, now=T0)
    assert await store.used(ROOT, DAY, T0) == await store.used(LEAF, DAY, T0) == 100
    with pytest.raises(BudgetRefused) as refused:
        await store.reserve("ch2", links, 100, now=T0)
    assert (refused.value.jti, refused.value.used) == (LEAF, 100)
    assert await store.used(ROOT, DAY, T0) == 100  # the root link, which had room, holds nothing for ch2 either
    await store.reserve("ch2", links[:1], 900, now=T0)  # the root alone still has 900
    assert await store.used(ROOT, DAY, T0) == 1000


async def test_reserving_the_same_id_again_replaces_it(budgets):
    """IDENT-BUD-02: reserving again under one id (a session's top-up) replaces the reservation:
    the old amount does not count against the new one; lowering it frees the difference."""
    store = await budgets()
    link = [BudgetLink(ROOT, DAY, 100)]
    await store.reserve("sess", link, 60, now=T0)
    await store.reserve("sess", link, 90, now=T0)  # 90 in all, not 150
    assert await store.used(ROOT, DAY, T0) == 90
    with pytest.raises(BudgetRefused) as refused:
        await store.reserve("sess", link, 101, now=T0)
    assert refused.value.used == 0  # its own reservation is not counted against it
    with pytest.raises(BudgetRefused):
        await store.reserve("other", link, 20, now=T0)
    await store.reserve("sess", link, 30, now=T0)
    await store.reserve("other", link, 70, now=T0)
    assert await store.used(ROOT, DAY, T0) == 100


async def test_a_finished_reservation_cannot_be_reserved_again(budgets):
    """IDENT-BUD-03: a seller that reuses a challenge id cannot turn a committed (spent) or
    released reservation back into a live one: the spent amount keeps counting."""
    store = await budgets()
    link = [BudgetLink(ROOT, DAY, 1000)]
    await store.reserve("ch1", link, 400, now=T0)
    await store.commit("ch1")
    with pytest.raises(ReservationFinished, match="already committed"):
        await store.reserve("ch1", link, 10, now=T0)
    assert await store.used(ROOT, DAY, T0) == 400
    await store.reserve("ch2", link, 100, now=T0)
    await store.release("ch2")
    with pytest.raises(BudgetRefused, match="already released"):  # a kind of budget refusal for the buyer
        await store.reserve("ch2", link, 100, now=T0)
    assert await store.used(ROOT, DAY, T0) == 400


async def test_expired_reservations_stop_counting(budgets):
    """IDENT-BUD-03: a reservation with no answer counts until it expires (the store's
    reservation_ttl, or the ttl given), then as released; extend keeps a live one counting."""
    store = await budgets(reservation_ttl=timedelta(minutes=10))
    assert store.reservation_ttl == timedelta(minutes=10)
    link = [BudgetLink(ROOT, DAY, 100)]
    await store.reserve("ch1", link, 100, now=T0)
    assert await store.used(ROOT, DAY, T0 + timedelta(minutes=9)) == 100
    assert await store.used(ROOT, DAY, T0 + timedelta(minutes=10, seconds=1)) == 0
    with pytest.raises(BudgetRefused):
        await store.reserve("ch2", link, 1, now=T0 + timedelta(minutes=5))
    await store.reserve("ch2", link, 100, now=T0 + timedelta(minutes=11), ttl=timedelta(hours=1))
    assert await store.used(ROOT, DAY, T0 + timedelta(minutes=50)) == 100  # the ttl given, not the store's
    await store.extend("ch2", ttl=timedelta(hours=2), now=T0 + timedelta(minutes=30))
    assert await store.used(ROOT, DAY, T0 + timedelta(hours=2, minutes=20)) == 100
    assert await store.used(ROOT, DAY, T0 + timedelta(hours=2, minutes=31)) == 0


async def test_commit_settle_and_release(budgets):
    """IDENT-BUD-03: committed counts for good (past the expiry); released stops counting; settle
    commits exactly the amount captured; no reservation leaves committed or released."""
    store = await budgets()
    link = [BudgetLink(ROOT, DAY, 300)]
    later = T0 + timedelta(days=1)
    await store.reserve("ch1", link, 100, now=T0)
    await store.reserve("ch2", link, 100, now=T0)
    await store.commit("ch1")
    await store.release("ch2")
    assert await store.used(ROOT, DAY, T0) == 100
    assert await store.used(ROOT, DAY, later) == 100  # committed: the expiry does not matter
    await store.release("ch1")  # a committed purchase is not given back by a late release
    await store.commit("ch2")  # nor is a released one taken again by a late commit
    await store.settle("ch2", 50)
    assert await store.used(ROOT, DAY, T0) == 100
    await store.reserve("sess", link, 150, now=T0)
    await store.extend("ch1", ttl=timedelta(hours=5), now=T0)  # only reserved ones are extended: nothing changes
    await store.settle("sess", 7)  # a session captured 7 of its 150
    assert await store.used(ROOT, DAY, later) == 107
    await store.settle("sess", 150)  # settled already: stays 7
    assert await store.used(ROOT, DAY, later) == 107


def _reserve_in_another_process(location: str, ids: list[str], amount: int, budget: int, go: threading.Barrier) -> list[str]:
    """A buyer process of its own: its own store object, event loop and thread; all its reservations at once."""

    async def run() -> list[str]:
        store = await open_budget_store(location)
        link = [BudgetLink(ROOT, DAY, budget)]

        async def one(cid: str) -> str:
            try:
                await store.reserve(cid, link, amount, now=T0)
            except BudgetRefused:
                return "refused"
            return "reserved"

        try:
            go.wait(30)  # both processes start together, so their transactions contend
            return list(await asyncio.gather(*(one(cid) for cid in ids)))
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.parametrize("amount, admitted", [(1, 10), (3, 3)])
async def test_concurrent_reserves_from_two_processes_stay_within_budget(budgets, location: str, amount: int, admitted: int):
    """IDENT-BUD-02: twenty reservations racing, ten in each of two buyer processes, for a budget
    of 10: exactly as many as fit are admitted, the others are refused, and what is counted never
    passes the budget."""
    await budgets()  # the schema exists before the race
    go = threading.Barrier(2)
    batches = await asyncio.gather(*(asyncio.to_thread(_reserve_in_another_process, location, [f"p{p}-ch{i}" for i in range(10)],
                                                       amount, 10, go) for p in range(2)))
    outcomes = [o for batch in batches for o in batch]
    assert outcomes.count("reserved") == admitted and outcomes.count("refused") == 20 - admitted
    store = await budgets()
    assert await store.used(ROOT, DAY, T0) == admitted * amount <= 10


async def test_store_kind_follows_the_url(location: str, budgets):
    """The URL picks the engine (sqlite:///path or a path -> SQLite, postgresql:// -> PostgreSQL);
    both are an AsyncBudgetStore; any other scheme is refused."""
    store = await budgets()
    assert isinstance(store, AsyncBudgetStore)
    if location.startswith("sqlite"):
        assert isinstance(store, AsyncSqliteBudgetStore)
    else:
        from mpp.stores.pg import PgBudgetStore

        assert isinstance(store, PgBudgetStore)
    with pytest.raises(ValueError, match="not a SQLite location"):
        budget_store_for("mysql://db/budget")
