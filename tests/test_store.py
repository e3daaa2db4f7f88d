"""The seller's payment store: a challenge is claimed by exactly one caller."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mpp.stores.payments import SqlitePaymentStore, StoredResponse


async def test_claim_once_and_keep_responses(tmp_path: Path):
    """CORE-ONCE-01, CORE-ONCE-06: consuming a challenge succeeds once; kept responses round-trip."""
    store = SqlitePaymentStore(str(tmp_path / "p.db"))
    assert await store.claim("c1", resource="GET /x", idempotency_key="k") is True
    assert await store.claim("c1", resource="GET /x", idempotency_key="k") is False
    await store.mark_settled("c1", payer="acct:buyer", amount="5", currency="usd", reference="c1", receipt="r")
    await store.save_response("c1", StoredResponse(200, [("Content-Type", "application/json")], b"{}"))
    record = await store.get("c1")
    assert record.state == "settled" and record.idempotency_key == "k" and record.receipt == "r"
    assert await store.get_response("c1") == StoredResponse(200, [("Content-Type", "application/json")], b"{}")
    await store.close()


def _claim(path: str, barrier, results) -> None:
    import asyncio

    store = SqlitePaymentStore(path)
    barrier.wait()
    results.put(asyncio.run(store.claim("c1", resource="GET /x", idempotency_key=None)))


def test_claim_across_processes_has_one_winner(tmp_path: Path):
    """CORE-ONCE-02: several seller processes sharing the SQLite file: exactly one claim wins."""
    path = str(tmp_path / "p.db")
    SqlitePaymentStore(path)  # create the schema first
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(path, barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == [False] * 7 + [True]


def _open_at_once(path: str, barrier) -> str:
    from mpp.stores.sqlite import connect

    barrier.wait()
    try:
        connect(path, "CREATE TABLE IF NOT EXISTS t (a INTEGER)").close()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return repr(exc)


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path):
    """The workers of `mpp seller serve --workers N` open their stores at the same moment; the
    switch of a new file to WAL must not fail "database is locked" for the ones that lose the race
    (it did, now and then, and a worker died at start)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        for attempt in range(8):
            barrier = manager.Barrier(4)
            with ctx.Pool(4) as pool:
                results = pool.starmap(_open_at_once, [(str(tmp_path / f"new-{attempt}.db"), barrier)] * 4)
            assert results == ["ok"] * 4, results
