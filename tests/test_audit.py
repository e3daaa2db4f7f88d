"""The identity audit log (mpp.stores.audit) and `mpp audit show|verify`.

covers: audit log (docs/identity-design.md, "Audit log").
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import rfc8785

from mpp.stores.audit import KINDS, AuditChainBroken, AuditLog, entry_hash

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
ALICE, BOB = "did:key:z6MkAgentAlice", "did:key:z6MkAgentBob"
PRINCIPAL, OTHER = "did:key:z6MkPrincipalP", "did:key:z6MkPrincipalQ"


def mpp_cli(*args: str, env_home: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_home is not None:
        env["MPP_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "mpp.cli.main", *args], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpp: "), result.stderr
    return lines[0]


def purchase(log: AuditLog, cid: str, *, agent: str, principal: str, amount: int, outcome: str, at: datetime = T0) -> None:
    """The entries a buyer writes for one purchase: quote, decision, signature, then settlement or refusal."""
    base = {"challengeId": cid, "realm": "api.test", "resource": f"GET /data/{cid}", "amount": amount, "currency": "usd"}
    who = {"agent": agent, "principal": principal, "mandate": f"mdt_{agent[-5:]}"}
    log.append("quote-seen", base, now=at)
    if outcome == "policy-refused":
        log.append("policy-decision", {**base, **who, "decision": "deny", "rule": "ceiling", "reason": "5000 > 1000"}, now=at)
        return
    log.append("policy-decision", {**base, **who, "decision": "allow", "reason": None}, now=at)
    log.append("authorization-signed", {**base, **who}, now=at + timedelta(seconds=1))
    if outcome == "settled":
        log.append("settlement", {"challengeId": cid, "reference": f"tr_{cid}"}, now=at + timedelta(seconds=2))
        log.append("receipt", {**base, **who, "reference": f"tr_{cid}", "decision": "allow"}, now=at + timedelta(seconds=2))
    elif outcome == "refused":
        log.append("refusal", {"challengeId": cid, "status": 403, "problem": "urn:mpp:problem:budget-exceeded"}, now=at)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def filled(log_path: Path) -> Path:
    """Twelve entries: a settled purchase by Alice, one refused by the seller for Bob, one unanswered for Alice."""
    with AuditLog(str(log_path)) as log:
        purchase(log, "ch_a1", agent=ALICE, principal=PRINCIPAL, amount=25, outcome="settled")
        purchase(log, "ch_b1", agent=BOB, principal=OTHER, amount=40, outcome="refused")
        purchase(log, "ch_a2", agent=ALICE, principal=PRINCIPAL, amount=7, outcome="unknown")
        assert log.head()[0] == 12
    return log_path


def raw(path: Path, sql: str, *params) -> None:
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute(sql, params)
    conn.close()


def broken_at(path: Path) -> AuditChainBroken:
    with AuditLog(str(path)) as log, pytest.raises(AuditChainBroken) as info:
        log.verify()
    return info.value


# -- appending -----------------------------------------------------------------


def test_entries_chain_with_the_documented_hash(log_path: Path):
    """IDENT-AUD-02: seq 1..n, prev = previous hash ("" first), hash = hex SHA-256 of
    JCS({"data","kind","prev","seq","ts"}); the head row follows the last entry."""
    with AuditLog(str(log_path)) as log:
        assert log.head() == (0, "")
        log.verify()  # an empty log is intact
        written = [log.append(kind, {"challengeId": f"ch_{i}", "amount": i, "note": "é ✓"}, now=T0 + timedelta(seconds=i))
                   for i, kind in enumerate(KINDS)]
        stored = log.entries()
        assert stored == written
        assert [e.seq for e in stored] == list(range(1, len(KINDS) + 1))
        assert stored[0].prev == "" and stored[0].ts == "2026-11-26T12:00:00.000000Z"
        for before, entry in zip([None, *stored], stored):
            assert entry.prev == (before.hash if before else "")
            body = {"data": entry.data, "kind": entry.kind, "prev": entry.prev, "seq": entry.seq, "ts": entry.ts}
            assert entry.hash == hashlib.sha256(rfc8785.dumps(body)).hexdigest() == entry_hash(entry.seq, entry.ts, entry.kind, entry.data, entry.prev)
        assert log.head() == (stored[-1].seq, stored[-1].hash)
        log.verify()
        log.verify(anchor=log.head())
        log.verify(anchor=(3, stored[2].hash[:16]))


def test_append_refuses_unknown_kinds_and_non_objects(log_path: Path):
    """IDENT-AUD-01, IDENT-AUD-02: only the six kinds; data is a JSON object; timestamps are aware."""
    with AuditLog(str(log_path)) as log:
        for bad_kind in ("payment", "", "Receipt"):
            with pytest.raises(ValueError, match="kind"):
                log.append(bad_kind, {})
        with pytest.raises(ValueError):
            log.append("receipt", ["not", "an", "object"])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            log.append("receipt", {"amount": float("nan")})
        with pytest.raises(ValueError):
            log.append("receipt", {}, now=datetime(2026, 1, 1))
        assert log.entries() == [] and log.head() == (0, "")


def _append_many(path: str, worker: int, count: int, go=None) -> None:
    log = AuditLog(path)
    try:
        if go is not None:
            go.wait(30)  # a barrier: all workers start appending together, so their transactions contend
        for i in range(count):
            log.append("quote-seen", {"worker": worker, "i": i, "challengeId": f"ch_{worker}_{i}", "agent": f"did:key:w{worker}"})
            time.sleep(0.002)  # let the others in between, so the appends interleave
    finally:
        log.close()


def test_concurrent_appends_from_several_processes(log_path: Path):
    """IDENT-AUD-03: four processes appending 25 entries each to one file leave one
    unbroken chain, seq 1..100 without gaps, every entry present once."""
    AuditLog(str(log_path)).close()  # create the schema before the race
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(str(log_path), w, 25, go)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with AuditLog(str(log_path)) as log:
        log.verify()
        entries = log.entries()
        assert [e.seq for e in entries] == list(range(1, 101))
        assert sorted((e.data["worker"], e.data["i"]) for e in entries) == [(w, i) for w in range(4) for i in range(25)]
        assert log.head() == (100, entries[-1].hash)
        switches = sum(1 for a, b in zip(entries, entries[1:]) if a.data["worker"] != b.data["worker"])
        assert switches > 3, "the workers did not interleave; the test raced nothing"
        assert len(log.entries(agent="did:key:w2")) == 25


# -- tampering -----------------------------------------------------------------


def test_edited_amount_is_named(filled: Path):
    """IDENT-AUD-04: changing the amount inside one entry's data breaks that entry's hash."""
    row = sqlite3.connect(str(filled)).execute("SELECT data FROM audit WHERE seq = 5").fetchone()[0]
    data = json.loads(row)
    assert data["amount"] == 25
    raw(filled, "UPDATE audit SET data = ? WHERE seq = 5", json.dumps({**data, "amount": 1}))
    exc = broken_at(filled)
    assert (exc.seq, exc.reason) == (5, "hash mismatch: the entry was edited")


@pytest.mark.parametrize("column, value", [("data", "{not json"), ("data", "[1, 2]"), ("kind", "settlement"),
                                           ("ts", "2020-01-01T00:00:00.000000Z"), ("hash", "00" * 32)])
def test_edited_row_is_named(filled: Path, column: str, value: str):
    """IDENT-AUD-04: any edited column of a row (unparseable data included) is named by seq."""
    raw(filled, f"UPDATE audit SET {column} = ? WHERE seq = 7", value)
    assert broken_at(filled).seq == 7


def test_rewritten_entry_with_recomputed_hash_breaks_the_next_link(filled: Path):
    """IDENT-AUD-04: an edit whose hash is recomputed is caught by the next entry's prev."""
    conn = sqlite3.connect(str(filled))
    seq, ts, kind, data, prev = conn.execute("SELECT seq, ts, kind, data, prev FROM audit WHERE seq = 4").fetchone()
    forged = {**json.loads(data), "amount": 1}
    with conn:
        conn.execute("UPDATE audit SET data = ?, hash = ? WHERE seq = 4", (json.dumps(forged), entry_hash(seq, ts, kind, forged, prev)))
    conn.close()
    exc = broken_at(filled)
    assert exc.seq == 5 and "prev does not match the hash of entry 4" in exc.reason


def test_deleted_middle_entry_names_the_entry_after_the_gap(filled: Path):
    """IDENT-AUD-04: a deleted entry leaves a seq gap, named by the entry after it."""
    raw(filled, "DELETE FROM audit WHERE seq = 6")
    exc = broken_at(filled)
    assert exc.seq == 7 and "entry 6 missing" in exc.reason


def test_deleted_first_entries_are_named(filled: Path):
    raw(filled, "DELETE FROM audit WHERE seq <= 2")
    exc = broken_at(filled)
    assert exc.seq == 3 and "entries 1..2 missing" in exc.reason


def test_deleted_last_entry_is_caught_by_the_head(filled: Path):
    """IDENT-AUD-04, IDENT-AUD-05: truncation is invisible in the chain but the head still names the lost
    entry; append then refuses to extend the truncated chain (it would bury the evidence)."""
    raw(filled, "DELETE FROM audit WHERE seq = 12")
    exc = broken_at(filled)
    assert exc.seq == 12 and "truncated" in exc.reason
    with AuditLog(str(filled)) as log, pytest.raises(AuditChainBroken):
        log.append("quote-seen", {"challengeId": "ch_new"})
    raw(filled, "DELETE FROM audit")
    assert broken_at(filled).seq == 1


def test_deleted_head_row_and_rows_added_behind_the_log(filled: Path):
    raw(filled, "DELETE FROM audit_head")
    assert "head row is missing" in broken_at(filled).reason
    raw(filled, "INSERT INTO audit_head (id, seq, hash) VALUES (1, 11, (SELECT hash FROM audit WHERE seq = 11))")
    exc = broken_at(filled)
    assert exc.seq == 12 and "without moving the head" in exc.reason


def test_wholesale_rewrite_is_caught_only_by_an_anchor(filled: Path):
    """IDENT-AUD-05: recomputing every hash and the head defeats the chain on its own; a head
    recorded elsewhere (`head()`) catches the rewrite."""
    with AuditLog(str(filled)) as log:
        anchor = log.head()
    conn = sqlite3.connect(str(filled))
    prev = ""
    with conn:
        for seq, ts, kind, data in conn.execute("SELECT seq, ts, kind, data FROM audit ORDER BY seq").fetchall():
            value = json.loads(data)
            if value.get("amount") == 25:
                value["amount"] = 2
            digest = entry_hash(seq, ts, kind, value, prev)
            conn.execute("UPDATE audit SET data = ?, prev = ?, hash = ? WHERE seq = ?", (json.dumps(value), prev, digest, seq))
            prev = digest
        conn.execute("UPDATE audit_head SET hash = ?", (prev,))
    conn.close()
    with AuditLog(str(filled)) as log:
        log.verify()  # internally consistent: the honest limit of a hash chain in one file
        with pytest.raises(AuditChainBroken, match="anchored head"):
            log.verify(anchor=anchor)
        with pytest.raises(AuditChainBroken, match="anchored head"):
            log.verify(anchor=(anchor[0], anchor[1][:16]))
        with pytest.raises(AuditChainBroken, match="truncated"):
            log.verify(anchor=(99, anchor[1]))


# -- reading -------------------------------------------------------------------


def test_purchases_group_entries_by_challenge(filled: Path):
    """IDENT-AUD-07: one row per challengeId with its parties, decision and outcome."""
    with AuditLog(str(filled)) as log:
        rows = {r["challengeId"]: r for r in log.purchases()}
        assert list(rows) == ["ch_a1", "ch_b1", "ch_a2"]
        a1 = rows["ch_a1"]
        assert a1 | {"seqs": None} == {
            "challengeId": "ch_a1", "realm": "api.test", "resource": "GET /data/ch_a1", "amount": 25, "currency": "usd",
            "agent": ALICE, "principal": PRINCIPAL, "mandate": "mdt_Alice", "approval": None, "decision": "allow",
            "reason": None, "outcome": "settled", "reference": "tr_ch_a1", "ts": "2026-11-26T12:00:00.000000Z", "seqs": None}
        assert a1["seqs"] == [1, 2, 3, 4, 5]
        assert (rows["ch_b1"]["outcome"], rows["ch_b1"]["reason"], rows["ch_b1"]["reference"]) == ("refused", "urn:mpp:problem:budget-exceeded", None)
        assert (rows["ch_a2"]["outcome"], rows["ch_a2"]["decision"]) == ("unknown", "allow")
        assert [r["challengeId"] for r in log.purchases(agent=ALICE)] == ["ch_a1", "ch_a2"]
        assert [r["challengeId"] for r in log.purchases(principal=OTHER)] == ["ch_b1"]
        assert log.purchases(agent=ALICE, principal=OTHER) == []
        assert [e.seq for e in log.entries(agent=BOB)] == [7, 8]  # entries that name Bob themselves
        assert [e.seq for e in log.entries(kind="refusal")] == [9]
        assert [e.seq for e in log.entries(principal=PRINCIPAL, kind="receipt")] == [5]
        purchase(log, "ch_a3", agent=ALICE, principal=PRINCIPAL, amount=5000, outcome="policy-refused")
        row = log.purchases(agent=ALICE)[-1]
        assert (row["challengeId"], row["decision"], row["outcome"], row["reason"]) == ("ch_a3", "deny", "refused", "ceiling: 5000 > 1000")


def test_purchase_outcomes_follow_the_buyer_and_seller_events(log_path: Path):
    """IDENT-AUD-01, IDENT-AUD-07: outcome settled/refused/unknown (and refunded) from the events the buyer
    (mpp.aio.buyer) and seller (mpp.aio.seller) append."""
    with AuditLog(str(log_path)) as log:
        def outcome(cid: str) -> tuple:
            row = next(r for r in log.purchases() if r["challengeId"] == cid)
            return row["outcome"], row["reason"]

        base = {"challengeId": "ch_x", "agent": ALICE, "amount": "900", "currency": "usd"}
        log.append("policy-decision", {**base, "decision": "allow", "reason": "within mandate"})
        log.append("authorization-signed", {"challengeId": "ch_x"})
        assert outcome("ch_x") == ("unknown", None)
        log.append("refusal", {"challengeId": "ch_x", "status": 403, "problem": "urn:mpp:problem:approval-required"})
        assert outcome("ch_x") == ("refused", "urn:mpp:problem:approval-required")
        log.append("policy-decision", {"challengeId": "ch_x", "decision": "approved", "rule": "threshold", "reason": "approval obtained"})
        assert outcome("ch_x") == ("unknown", None)
        log.append("authorization-signed", {"challengeId": "ch_x"})
        log.append("refusal", {"challengeId": "ch_x", "outcome": "unknown", "status": 503})
        assert outcome("ch_x") == ("unknown", "HTTP 503")  # the money may have moved: not "refused"
        log.append("receipt", {**base, "reference": "tr_x", "decision": "allow-with-approval", "approval": "apr_1"})
        log.append("refusal", {"challengeId": "ch_x", "status": 409, "problem": "late duplicate"})
        row = log.purchases()[0]
        assert (row["outcome"], row["approval"], row["decision"], row["reference"]) == ("settled", "apr_1", "allow-with-approval", "tr_x")

        log.append("settlement", {"challengeId": "ch_y", "reference": "tr_y", "amount": "5", "agent": BOB})
        log.append("refusal", {"challengeId": "ch_y", "problem": "refunded", "detail": "handler answered 500"})
        log.append("receipt", {"challengeId": "ch_y", "reference": "tr_y"})
        assert outcome("ch_y") == ("refunded", "refunded: handler answered 500")
        log.append("refusal", {"problem": "malformed-credential", "resource": "GET /x"})  # no challenge id: not a purchase
        assert [r["challengeId"] for r in log.purchases()] == ["ch_x", "ch_y"]
        log.verify()


# -- command line --------------------------------------------------------------


def test_cli_verify_untouched_and_broken(filled: Path):
    """IDENT-AUD-04, IDENT-AUD-07: `mpp audit verify` exits 0 with the head on an intact log, 1 with one
    `mpp: audit log broken at entry N: ...` line on a broken one, 2 without a log."""
    with AuditLog(str(filled)) as log:
        seq, digest = log.head()
    ok = mpp_cli("audit", "verify", "--log", str(filled))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"audit log intact: 12 entries, head {seq} {digest[:16]}"
    via_home = mpp_cli("audit", "verify", env_home=filled.parent)  # default: $MPP_HOME/audit.db
    assert via_home.returncode == 0 and via_home.stdout == ok.stdout

    raw(filled, "DELETE FROM audit WHERE seq = 6")
    bad = mpp_cli("audit", "verify", "--log", str(filled))
    assert bad.returncode == 1 and bad.stdout == ""
    assert one_error_line(bad) == "mpp: audit log broken at entry 7: entry 6 missing (seq gap before this entry): deleted"

    missing = mpp_cli("audit", "verify", "--log", str(filled.parent / "nope.db"))
    assert missing.returncode == 2 and "no audit log at" in one_error_line(missing)
    assert not (filled.parent / "nope.db").exists()


def test_cli_show_filters_and_prints(filled: Path):
    """IDENT-AUD-07: `mpp audit show` lists purchases, `--agent`/`--principal` filter, `--json` is a JSON list."""
    shown = mpp_cli("audit", "show", "--log", str(filled), "--agent", ALICE, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert isinstance(rows, list) and [r["challengeId"] for r in rows] == ["ch_a1", "ch_a2"]
    assert all(r["agent"] == ALICE for r in rows)
    by_principal = json.loads(mpp_cli("audit", "show", "--log", str(filled), "--principal", OTHER, "--json").stdout)
    assert [(r["challengeId"], r["outcome"]) for r in by_principal] == [("ch_b1", "refused")]

    table = mpp_cli("audit", "show", "--log", str(filled))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "OUTCOME", "AMOUNT", "RESOURCE", "DECISION", "AGENT", "CHALLENGE", "DETAIL"]
    assert len(lines) == 4
    assert lines[1].split()[1:4] == ["settled", "25", "usd"] and lines[1].split()[-2:] == ["ch_a1", "tr_ch_a1"]
    assert lines[2].split()[1] == "refused" and lines[2].endswith("  urn:mpp:problem:budget-exceeded")
    assert lines[3].split()[1] == "unknown" and lines[3].endswith("  -")
    none = mpp_cli("audit", "show", "--log", str(filled), "--agent", "did:key:nobody")
    assert none.returncode == 0 and none.stdout.strip() == "no purchases recorded"


def test_appended_hashes_are_the_jcs_of_the_entry(tmp_path):
    """IDENT-AUD-02: the hash written around the stored RFC 8785 text is entry_hash of the entry read
    back, for data with non-ASCII text, escapes, nesting and numbers."""
    from mpp.stores.audit import entry_hash

    with AuditLog(str(tmp_path / "a.db")) as log:
        for data in ({"resource": "GET /é?q=\"x\"\\n", "amount": "25", "n": 7, "list": [1, {"b": None, "a": True}]},
                     {}, {"detail": "tab\tnew\nline \u2028 \U0001f600"}):
            entry = log.append("refusal", data)
            assert entry.hash == entry_hash(entry.seq, entry.ts, entry.kind, entry.data, entry.prev)
        log.verify()
