"""One contract, two engines: the identity audit log (mpp.stores.audit.AsyncAuditLog) on SQLite (an
AuditLog behind AsyncSqliteAuditLog) and on PostgreSQL (mpp.stores.pg.PgAuditLog, a real server started
once per run by the `pg_server` fixture): the same chain, the same tampering found and named the
same way, the same purchases, on both; and `mpp fetch` / `mpp audit` with postgresql:// logs.

"Another process" is played by a second log object on the same file or database, in a thread
of its own with its own event loop, so the engine's locks are what keep the chain gapless.

covers: audit log (docs/identity-design.md, "Audit log").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from mpp.stores.audit import KINDS, AsyncAuditLog, AsyncSqliteAuditLog, AuditChainBroken, entry_hash
from mpp.connect import audit_log_for, open_audit_log

ENGINES = ["sqlite", "postgres"]
T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
ALICE, BOB = "did:key:z6MkAgentAlice", "did:key:z6MkAgentBob"
PRINCIPAL, OTHER = "did:key:z6MkPrincipalP", "did:key:z6MkPrincipalQ"


@dataclass
class Engine:
    name: str
    location: str

    async def execute(self, sql: str, *params: Any) -> None:
        """Write to the log's tables behind its back (the tamperer), in SQLite's ``?`` style."""
        await self.fetch(sql, *params)

    async def fetch(self, sql: str, *params: Any) -> list[tuple]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.location[len("sqlite:///") - 1:])
            try:
                with conn:
                    return [tuple(r) for r in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        import asyncpg

        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        conn = await asyncpg.connect(self.location)
        try:
            return [tuple(r) for r in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite", f"sqlite:///{tmp_path}/audit.db")
    return Engine("postgres", request.getfixturevalue("pg_url"))  # errors (never skips) if PostgreSQL cannot start


@pytest.fixture
async def logs(engine: Engine):
    """``await logs()``: another log object on the same file or database, closed after the test."""
    opened: list[AsyncAuditLog] = []

    async def open_one() -> AsyncAuditLog:
        log = await open_audit_log(engine.location)
        opened.append(log)
        return log

    yield open_one
    for log in opened:
        await log.close()


async def purchase(log: AsyncAuditLog, cid: str, *, agent: str, principal: str, amount: int, outcome: str, at: datetime = T0) -> None:
    """The entries a buyer writes for one purchase: quote, decision, signature, then settlement or refusal."""
    base = {"challengeId": cid, "realm": "api.test", "resource": f"GET /data/{cid}", "amount": amount, "currency": "usd"}
    who = {"agent": agent, "principal": principal, "mandate": f"mdt_{agent[-5:]}"}
    await log.append("quote-seen", base, now=at)
    if outcome == "policy-refused":
        await log.append("policy-decision", {**base, **who, "decision": "deny", "rule": "ceiling", "reason": "5000 > 1000"}, now=at)
        return
    await log.append("policy-decision", {**base, **who, "decision": "allow", "reason": None}, now=at)
    await log.append("authorization-signed", {**base, **who}, now=at + timedelta(seconds=1))
    if outcome == "settled":
        await log.append("settlement", {"challengeId": cid, "reference": f"tr_{cid}"}, now=at + timedelta(seconds=2))
        await log.append("receipt", {**base, **who, "reference": f"tr_{cid}", "decision": "allow"}, now=at + timedelta(seconds=2))
    elif outcome == "refused":
        await log.append("refusal", {"challengeId": cid, "status": 403, "problem": "urn:mpp:problem:budget-exceeded"}, now=at)


@pytest.fixture
async def filled(logs) -> AsyncAuditLog:
    """Twelve entries: a settled purchase by Alice, one refused by the seller for Bob, one unanswered for Alice."""
    log = await logs()
    await purchase(log, "ch_a1", agent=ALICE, principal=PRINCIPAL, amount=25, outcome="settled")
    await purchase(log, "ch_b1", agent=BOB, principal=OTHER, amount=40, outcome="refused")
    await purchase(log, "ch_a2", agent=ALICE, principal=PRINCIPAL, amount=7, outcome="unknown")
    assert (await log.head())[0] == 12
    await log.verify()
    return log


async def broken_at(log: AsyncAuditLog) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as info:
        await log.verify()
    return info.value


# -- appending -------------------------------------------------------------------------------


async def test_entries_chain_with_the_documented_hash(logs):
    """IDENT-AUD-02: seq 1..n, prev = previous hash ("" first), hash = hex SHA-256 of
    JCS({"data","kind","prev","seq","ts"}); the head follows the last entry."""
    log = await logs()
    assert await log.head() == (0, "")
    await log.verify()  # an empty log is intact
    written = [await log.append(kind, {"challengeId": f"ch_{i}", "amount": i, "note": "é ✓"}, now=T0 + timedelta(seconds=i))
               for i, kind in enumerate(KINDS)]
    stored = await log.entries()
    assert stored == written
    assert [e.seq for e in stored] == list(range(1, len(KINDS) + 1))
    assert stored[0].prev == "" and stored[0].ts == "2026-11-26T12:00:00.000000Z"
    for before, entry in zip([None, *stored], stored):
        assert entry.prev == (before.hash if before else "")
        body = {"data": entry.data, "kind": entry.kind, "prev": entry.prev, "seq": entry.seq, "ts": entry.ts}
        assert entry.hash == hashlib.sha256(rfc8785.dumps(body)).hexdigest() == entry_hash(entry.seq, entry.ts, entry.kind, entry.data, entry.prev)
    assert await log.head() == (stored[-1].seq, stored[-1].hash)
    await log.verify(anchor=await log.head())
    await log.verify(anchor=(3, stored[2].hash[:16]))
    assert await (await logs()).entries() == stored  # another process reads the same chain


async def test_append_refuses_unknown_kinds_and_non_objects(logs):
    """IDENT-AUD-01, IDENT-AUD-02: only the listed kinds; data is a JSON object RFC 8785 can
    serialise; timestamps are aware; a refused append writes nothing."""
    log = await logs()
    for bad_kind in ("payment", "", "Receipt"):
        with pytest.raises(ValueError, match="kind"):
            await log.append(bad_kind, {})
    with pytest.raises(ValueError):
        await log.append("receipt", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await log.append("receipt", {"amount": float("nan")})
    with pytest.raises(ValueError):
        await log.append("receipt", {}, now=datetime(2026, 1, 1))
    assert await log.entries() == [] and await log.head() == (0, "")


def _append_in_another_process(location: str, worker: int, count: int, go: threading.Barrier, spread: float = 0.02) -> None:
    """A writer process of its own: its own log object, event loop and thread, all its appends at
    once, each after a random pause of up to ``spread`` seconds."""

    async def run() -> None:
        log = await open_audit_log(location)

        async def one(i: int) -> None:
            await asyncio.sleep(random.random() * spread)  # spread out, so the two writers' appends interleave
            await log.append("quote-seen", {"worker": worker, "i": i, "challengeId": f"ch_{worker}_{i}", "agent": f"did:key:w{worker}"})

        try:
            go.wait(30)
            await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            await log.close()

    asyncio.run(run())


async def test_concurrent_appenders_leave_one_gapless_chain(logs, engine: Engine):
    """IDENT-AUD-03: two processes appending 25 entries each to one log leave one unbroken
    chain, seq 1..50 without gaps, every entry present once, the head on the last."""
    await logs()  # the tables exist before the race
    go = threading.Barrier(2)
    await asyncio.gather(*(asyncio.to_thread(_append_in_another_process, engine.location, w, 25, go) for w in range(2)))
    log = await logs()
    await log.verify()
    entries = await log.entries()
    assert [e.seq for e in entries] == list(range(1, 51))
    assert sorted((e.data["worker"], e.data["i"]) for e in entries) == [(w, i) for w in range(2) for i in range(25)]
    assert await log.head() == (50, entries[-1].hash)
    switches = sum(1 for a, b in zip(entries, entries[1:]) if a.data["worker"] != b.data["worker"])
    assert switches > 3, "the writers did not interleave; the test raced nothing"
    assert len(await log.entries(agent="did:key:w1")) == 25


async def test_verify_beside_a_running_writer_sees_an_intact_log(logs, engine: Engine):
    """IDENT-AUD-04: verify reads entries and head as of one moment, so a log being appended to
    by another process while it is verified is reported intact, never as truncated."""
    reader = await logs()
    go = threading.Barrier(1)
    writer = asyncio.create_task(asyncio.to_thread(_append_in_another_process, engine.location, 0, 60, go, 0.5))
    checks = 0
    while not writer.done():
        await reader.verify()
        checks += 1
        await asyncio.sleep(0.001)
    await writer
    await reader.verify()
    assert (await reader.head())[0] == 60 and checks > 1


# -- tampering (IDENT-AUD-04, IDENT-AUD-05) -------------------------------------------------


async def test_edited_amount_is_named(filled, engine: Engine):
    """IDENT-AUD-04: changing the amount inside one entry's data breaks that entry's hash."""
    [(text,)] = await engine.fetch("SELECT data FROM audit WHERE seq = 5")
    data = json.loads(text)
    assert data["amount"] == 25
    await engine.execute("UPDATE audit SET data = ? WHERE seq = 5", json.dumps({**data, "amount": 1}))
    exc = await broken_at(filled)
    assert (exc.seq, exc.reason) == (5, "hash mismatch: the entry was edited")


@pytest.mark.parametrize("column, value", [("data", "{not json"), ("data", "[1, 2]"), ("kind", "settlement"), ("kind", "payment"),
                                           ("ts", "2020-01-01T00:00:00.000000Z"), ("hash", "00" * 32)])
async def test_edited_row_is_named(filled, engine: Engine, column: str, value: str):
    """IDENT-AUD-04: any edited column of a row (unparseable data, an unknown kind) is named by its seq."""
    await engine.execute(f"UPDATE audit SET {column} = ? WHERE seq = 7", value)
    assert (await broken_at(filled)).seq == 7


async def test_rewritten_entry_with_recomputed_hash_breaks_the_next_link(filled, engine: Engine):
    """IDENT-AUD-04: an edit whose hash is recomputed is caught by the next entry's prev."""
    [(seq, ts, kind, data, prev)] = await engine.fetch("SELECT seq, ts, kind, data, prev FROM audit WHERE seq = 4")
    forged = {**json.loads(data), "amount": 1}
    await engine.execute("UPDATE audit SET data = ?, hash = ? WHERE seq = 4", json.dumps(forged), entry_hash(seq, ts, kind, forged, prev))
    exc = await broken_at(filled)
    assert exc.seq == 5 and "prev does not match the hash of entry 4" in exc.reason


async def test_deleted_middle_entries_are_named(filled, engine: Engine):
    """IDENT-AUD-04: a deleted entry leaves a seq gap, named by the entry after it."""
    await engine.execute("DELETE FROM audit WHERE seq = 6")
    exc = await broken_at(filled)
    assert (exc.seq, exc.reason) == (7, "entry 6 missing (seq gap before this entry): deleted")
    await engine.execute("DELETE FROM audit WHERE seq <= 2")
    exc = await broken_at(filled)
    assert exc.seq == 3 and "entries 1..2 missing" in exc.reason


async def test_truncated_tail_is_caught_by_the_head(filled, engine: Engine):
    """IDENT-AUD-04, IDENT-AUD-05: truncation is invisible in the chain but the head still names the
    lost entry; append then refuses to extend the truncated chain (it would bury the evidence)."""
    await engine.execute("DELETE FROM audit WHERE seq = 12")
    exc = await broken_at(filled)
    assert exc.seq == 12 and exc.reason == "the head records 12 entries but the log ends at entry 11: truncated"
    with pytest.raises(AuditChainBroken):
        await filled.append("quote-seen", {"challengeId": "ch_new"})
    assert [e.seq for e in await filled.entries()][-1] == 11
    await engine.execute("DELETE FROM audit")
    assert (await broken_at(filled)).seq == 1


async def test_deleted_head_row_and_rows_added_behind_the_log(filled, engine: Engine):
    """IDENT-AUD-04: a missing head row, and entries added without moving the head, are named."""
    await engine.execute("DELETE FROM audit_head")
    assert "head row is missing" in (await broken_at(filled)).reason
    await engine.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 11, (SELECT hash FROM audit WHERE seq = 11))")
    exc = await broken_at(filled)
    assert exc.seq == 12 and "without moving the head" in exc.reason


async def test_wholesale_rewrite_is_caught_only_by_an_anchor(filled, engine: Engine):
    """IDENT-AUD-05: recomputing every hash and the head defeats the chain on its own; a head
    recorded elsewhere (`head()`, abbreviated to 16 hex digits or not) catches the rewrite."""
    anchor = await filled.head()
    prev = ""
    for seq, ts, kind, data in await engine.fetch("SELECT seq, ts, kind, data FROM audit ORDER BY seq"):
        value = json.loads(data)
        if value.get("amount") == 25:
            value["amount"] = 2
        digest = entry_hash(seq, ts, kind, value, prev)
        await engine.execute("UPDATE audit SET data = ?, prev = ?, hash = ? WHERE seq = ?", json.dumps(value), prev, digest, seq)
        prev = digest
    await engine.execute("UPDATE audit_head SET hash = ?", prev)
    await filled.verify()  # internally consistent: the honest limit of a hash chain on its own
    with pytest.raises(AuditChainBroken, match="anchored head"):
        await filled.verify(anchor=anchor)
    with pytest.raises(AuditChainBroken, match="anchored head"):
        await filled.verify(anchor=(anchor[0], anchor[1][:16]))
    with pytest.raises(AuditChainBroken, match="truncated"):
        await filled.verify(anchor=(99, anchor[1]))


# -- reading ---------------------------------------------------------------------------------


async def test_purchases_and_entries_filters(filled):
    """IDENT-AUD-07: one row per challengeId with its parties, decision and outcome; entries and
    purchases filtered by agent, principal and kind."""
    rows = {r["challengeId"]: r for r in await filled.purchases()}
    assert list(rows) == ["ch_a1", "ch_b1", "ch_a2"]
    assert rows["ch_a1"] | {"seqs": None} == {
        "challengeId": "ch_a1", "realm": "api.test", "resource": "GET /data/ch_a1", "amount": 25, "currency": "usd",
        "agent": ALICE, "principal": PRINCIPAL, "mandate": "mdt_Alice", "approval": None, "decision": "allow",
        "reason": None, "outcome": "settled", "reference": "tr_ch_a1", "ts": "2026-11-26T12:00:00.000000Z", "seqs": None}
    assert rows["ch_a1"]["seqs"] == [1, 2, 3, 4, 5]
    assert (rows["ch_b1"]["outcome"], rows["ch_b1"]["reason"], rows["ch_b1"]["reference"]) == ("refused", "urn:mpp:problem:budget-exceeded", None)
    assert (rows["ch_a2"]["outcome"], rows["ch_a2"]["decision"]) == ("unknown", "allow")
    assert [r["challengeId"] for r in await filled.purchases(agent=ALICE)] == ["ch_a1", "ch_a2"]
    assert [r["challengeId"] for r in await filled.purchases(principal=OTHER)] == ["ch_b1"]
    assert await filled.purchases(agent=ALICE, principal=OTHER) == []
    assert [e.seq for e in await filled.entries(agent=BOB)] == [7, 8]  # entries that name Bob themselves
    assert [e.seq for e in await filled.entries(kind="refusal")] == [9]
    assert [e.seq for e in await filled.entries(principal=PRINCIPAL, kind="receipt")] == [5]
    await purchase(filled, "ch_a3", agent=ALICE, principal=PRINCIPAL, amount=5000, outcome="policy-refused")
    row = (await filled.purchases(agent=ALICE))[-1]
    assert (row["challengeId"], row["decision"], row["outcome"], row["reason"]) == ("ch_a3", "deny", "refused", "ceiling: 5000 > 1000")
    await filled.append("refusal", {"challengeId": "ch_a1", "problem": "refunded", "detail": "handler answered 500"})
    assert [(r["outcome"], r["reason"]) for r in await filled.purchases(agent=ALICE)][0] == ("refunded", "refunded: handler answered 500")


async def test_log_kind_follows_the_url(engine: Engine, logs):
    """The URL picks the engine (sqlite:///path or a path -> SQLite, postgresql:// -> PostgreSQL);
    both are an AsyncAuditLog; any other scheme is refused."""
    log = await logs()
    assert isinstance(log, AsyncAuditLog)
    if engine.name == "sqlite":
        assert isinstance(log, AsyncSqliteAuditLog)
    else:
        from mpp.stores.pg import PgAuditLog

        assert isinstance(log, PgAuditLog)
    with pytest.raises(ValueError, match="not a SQLite location"):
        audit_log_for("mysql://db/audit")


# -- the CLI and a served seller, with postgresql:// logs and counters --------------------------


def test_wallet_and_seller_keep_their_logs_and_budget_in_postgres(tmp_path: Path, pg_server: str):
    """IDENT-AUD-01, IDENT-AUD-07, IDENT-BUD-03: `audit_log = "postgresql://..."` in seller.toml and
    `"budget"`/`"audit"` URLs in wallet.json: `mpp fetch` pays with identity, the seller's and the
    buyer's logs and the buyer's counters live in PostgreSQL, and `mpp audit show|verify --log URL`
    read them; a database with no log is refused with one line, and nothing is created in it."""
    import asyncpg

    from conftest import start_seller, stop_seller
    from mpp.cli.config import init_home
    from mpp.stores.pg.server import create_database
    from test_cli_identity import mpp_cli, ok, one_line_error, receipt_line

    seller_db, wallet_db, empty_db = (create_database(pg_server) for _ in range(3))
    home = tmp_path / "home"
    init_home(home)
    toml = home / "seller.toml"
    toml.write_text(toml.read_text().replace('audit_log = "ledger.db"', f'audit_log = "{seller_db}"'))
    meta_path = home / "agent" / "wallet.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "budget": wallet_db, "audit": wallet_db}))
    seller = start_seller(home)
    try:
        paid = ok("fetch", "--wallet", home / "agent", seller.url + "/agent-report", real=True)
        receipt = receipt_line(paid)
    finally:
        err = stop_seller(seller)
    assert "Traceback" not in err, err
    assert not (home / "seller" / "audit.db").exists() and not (home / "agent" / "audit.db").exists()
    assert not (home / "agent" / "budget.db").exists()

    rows = json.loads(ok("audit", "show", "--log", seller_db, "--json").stdout)
    assert [(r["challengeId"], r["agent"], r["outcome"], r["amount"]) for r in rows] == [
        (receipt["challengeId"], receipt["agent"], "settled", "150")]
    assert ok("audit", "verify", "--log", seller_db).stdout.startswith("audit log intact: ")
    mine = json.loads(ok("audit", "show", "--log", wallet_db, "--json").stdout)
    assert [(r["challengeId"], r["outcome"]) for r in mine] == [(receipt["challengeId"], "settled")]
    kinds_seen = ok("audit", "verify", "--log", wallet_db).stdout
    assert kinds_seen.startswith("audit log intact: ")

    async def wallet_counters() -> list[tuple]:
        conn = await asyncpg.connect(wallet_db)
        try:
            return [tuple(r) for r in await conn.fetch("SELECT challenge_id, amount, state FROM budget_reservations")]
        finally:
            await conn.close()

    assert {(cid, amount, state) for cid, amount, state in asyncio.run(wallet_counters())} == {(receipt["challengeId"], 150, "committed")}

    missing = mpp_cli("audit", "verify", "--log", empty_db)
    assert "no audit log in that PostgreSQL database" in one_line_error(missing, code=2)

    async def tables() -> int:
        conn = await asyncpg.connect(empty_db)
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()

    assert asyncio.run(tables()) == 0
