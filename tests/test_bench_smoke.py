"""The benchmark harness runs end to end and writes its figures (benchmarks/bench.py --quick).

Only shapes and types are checked: timings depend on the machine and never fail a test."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_bench_quick_writes_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--only", "plain,trivial-method", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plain" in proc.stdout and "trivial-method" in proc.stdout and "Targets" in proc.stdout
    doc = json.loads(out.read_text())

    assert set(doc["scenarios"]) == {"plain", "trivial-method"}
    for name, r in doc["scenarios"].items():
        assert "error" not in r, (name, r)
        for key in ("calls_per_s", "requests_per_s", "window_s", "seller_cpu_us_per_call"):
            assert _number(r[key]) and r[key] > 0, (name, key, r[key])
        assert _number(r["latency_ms"]["p50"]) and _number(r["latency_ms"]["p99"])
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert isinstance(r["calls"], int) and r["calls"] > 0
        assert r["failed"] == 0, r["error_samples"]
        assert r["consistent"] is True  # every paid call the buyer saw was served exactly once
        assert _number(r["ratio_to_plain"])
    assert doc["scenarios"]["plain"]["ratio_to_plain"] == 1.0
    trivial = doc["scenarios"]["trivial-method"]
    # A purchase is two HTTP requests: the 402 and the paid retry.
    assert 1.5 < trivial["requests_per_s"] / trivial["calls_per_s"] < 2.5
    assert _number(trivial["paid_request_latency_ms"]["p99"])

    latency = doc["latency_at_half_saturation"]["trivial-method"]
    for key in ("rate", "p99_ms", "plain_p99_ms", "p99_added_ms"):
        assert _number(latency[key]), (key, latency)
    goals = {t["goal"]: t for t in doc["targets"]}
    assert len(goals) == 4
    for t in goals.values():
        assert t["met"] in (True, False, None) and (t["value"] is None or _number(t["value"]))
    assert doc["meta"]["cpus"] >= 1 and doc["meta"]["quick"] is True


def test_bench_floor_rows_and_rounds(tmp_path: Path) -> None:
    """The floor rows (bench_floor.py) serve paid calls to the same buyers, --only brings a row's floor
    along, and --rounds interleaves the rounds and reports medians with their range and the floor share."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--rounds", "2", "--duration", "1.0",
         "--warmup", "0.5", "--no-latency", "--no-postgres", "--only", "charge-sqlite-identity,floor-charge-sqlite",
         "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "adding floor-charge-sqlite-identity" in proc.stdout
    assert "round 1/2" in proc.stdout and "round 2/2" in proc.stdout and "floor share" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["meta"]["rounds"] == 2
    floors = ("floor-charge-sqlite", "floor-charge-sqlite-identity")
    assert set(doc["scenarios"]) == {"charge-sqlite-identity", *floors}
    for name, r in doc["scenarios"].items():
        assert "error" not in r and not r.get("round_errors"), (name, r)
        assert r["rounds"] == 2 and len(r["calls_per_s_rounds"]) == 2 and r["median_round"] in (1, 2)
        assert 0 < r["calls_per_s_min"] <= r["calls_per_s"] <= r["calls_per_s_max"]
        assert r["calls"] > 0 and r["failed"] == 0 and r["failed_all_rounds"] == 0, r["error_samples"]
        assert r["consistent"] is True and r["seller_served"] > 0  # paid calls, each served exactly once
        assert not r["seller_stats"].get("stderr"), r["seller_stats"]
        # A purchase is two HTTP requests: the 402 and the paid retry (requests/s is the median round's,
        # calls/s the median over the rounds: compare with that round's own calls/s).
        assert 1.5 < r["requests_per_s"] / r["calls_per_s_rounds"][r["median_round"] - 1] < 2.5
    share = doc["floor_shares"]["charge-sqlite-identity"]
    assert share["floor"] == "floor-charge-sqlite-identity"
    assert _number(share["share"]) and share["share"] > 0 and _number(share["cpu_share"])
    ours, floor = doc["scenarios"]["charge-sqlite-identity"], doc["scenarios"]["floor-charge-sqlite-identity"]
    assert ours["floor_share"] == share["share"] == round(ours["calls_per_s"] / floor["calls_per_s"], 3)
    assert "charge-sqlite" not in doc["floor_shares"]  # not run: no share to give


def _bench_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench


class _Floor:
    """bench_floor.py KIND in a subprocess, its URL; stopped with SIGTERM, its stats checked."""

    def __init__(self, workdir: Path, *args: str) -> None:
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_floor.py"), *args, "--workdir", str(workdir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise AssertionError(line + self.proc.communicate(timeout=30)[1])
        self.url = f"http://127.0.0.1:{json.loads(line[6:])['port']}/item"

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        assert not err.strip(), err
        return json.loads(out.split("stats ", 1)[1])


@pytest.mark.parametrize("identity,postgres", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["ledger", "identity", "ledger-pg", "identity-pg"])
def test_floor_receipts_verify(tmp_path: Path, identity: bool, postgres: bool, request: pytest.FixtureRequest) -> None:
    """The charge floor speaks our wire exactly, on SQLite and on PostgreSQL (its function, one call per
    purchase): mpp.aio.PaymentClient pays it and verifies its receipts (JWS against its JWKS, challenge,
    amount, recipient); a credential is good once; both legs posted and, with identity, the budget counted."""
    _bench_module().make_kit(tmp_path)
    ledger = request.getfixturevalue("pg_url") if postgres else f"sqlite:///{tmp_path}/ledger.db"
    floor = _Floor(tmp_path, "charge", "--ledger", ledger, *(["--identity"] if identity else []))
    try:
        asyncio.run(_pay_floor(tmp_path, floor.url, identity))
    finally:
        stats = floor.stop()
    assert stats == {"calls": 3}
    if postgres:
        balances, spent = asyncio.run(_pg_floor_books(ledger))
    else:
        db = sqlite3.connect(tmp_path / "ledger.db")
        balances = dict(db.execute("SELECT id, balance FROM floor_accounts").fetchall())
        spent = db.execute("SELECT mandate, period, spent FROM floor_spent").fetchall()
        db.close()
    assert balances == {"acct:seller": 3, "acct:buyer": 10**15 - 3}
    assert len(spent) == (1 if identity else 0) and all(tuple(row)[1:] == ("total", 3) for row in spent)


async def _pg_floor_books(url: str) -> tuple[dict, list]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        balances = {r["id"]: r["balance"] for r in await conn.fetch("SELECT id, balance FROM mpp_floor.accounts")}
        spent = [tuple(r) for r in await conn.fetch("SELECT mandate, period, spent FROM mpp_floor.spent")]
    finally:
        await conn.close()
    return balances, spent


async def _pay_floor(workdir: Path, url: str, identity: bool) -> None:
    import aiohttp

    import mpp
    from mpp.aio import PaymentClient
    from mpp.purchase.agent import AgentIdentity
    from mpp.methods.ledger import LedgerBuyerMethod

    kit = json.loads((workdir / "kit.json").read_text())
    key = mpp.SigningKey.load(workdir / "agent.key")
    async with aiohttp.ClientSession() as http:
        client = PaymentClient(http, [LedgerBuyerMethod(key=key, account="acct:buyer")], mpp.BuyerPolicy(max_amount=1000),
                               identity=AgentIdentity(key=key, mandates=[kit["mandate"]]) if identity else None)
        for _ in range(2):
            paid = await client.request("GET", url)
            assert paid.status == 200 and paid.paid, paid.body
            assert paid.claims is not None and paid.receipt is not None
            assert paid.claims["challengeId"] == paid.receipt.challengeId == paid.receipt.reference
            assert paid.claims["account"] == "acct:buyer" and paid.claims["amount"] == "1"
            assert paid.claims["resource"] == "GET /item"
            if identity:
                assert paid.claims["agent"] == kit["agent"] and paid.claims["principal"] == kit["principal"]
                assert paid.claims["decision"] == "allow" and len(paid.claims["chain"]) == 1
            assert json.loads(paid.body) == {"ok": True, "item": "forecast", "sky": "clear"}
        # One credential, sent twice: served once, then refused as used.
        authorization = await client.credential("GET", url)
        assert authorization is not None
        answers = []
        for _ in range(2):
            async with http.get(url, headers={"Authorization": authorization}) as resp:
                answers.append((resp.status, await resp.read(), resp.headers.get("Payment-Receipt")))
        assert answers[0][0] == 200 and answers[0][2]
        assert answers[1][0] == 402 and json.loads(answers[1][1])["type"].endswith("/invalid-challenge")


def test_floor_session_receipts_verify(tmp_path: Path) -> None:
    """The session floor serves our buyer's sessions as bench.py's session load generator sends them: the
    402's session challenge, the open (cap, its signature and voucher 1; the cap held on its ledger), then
    requests carrying vouchers, every receipt verified by mpp.aio.PaymentClient; a voucher signed by another
    key is refused (every voucher is verified); the close captures what was spent and releases the rest,
    its final receipt verified too."""
    _bench_module().make_kit(tmp_path)
    floor = _Floor(tmp_path, "session", "--ledger", f"sqlite:///{tmp_path}/ledger.db")
    try:
        finals = asyncio.run(_use_session_floor(tmp_path, floor.url))
    finally:
        stats = floor.stop()
    assert stats == {"calls": 3}
    assert len(finals) == 1
    final = finals[0]
    assert final["final"] is True and final["captured"] == final["amount"] == final["spent"] == "6"
    assert final["released"] == str(10**9 - 6) and final["requests"] == 3 and final["units"] == 3000
    db = sqlite3.connect(tmp_path / "ledger.db")
    balances = dict(db.execute("SELECT id, balance FROM floor_accounts").fetchall())
    sessions = db.execute("SELECT status, spent, requests FROM floor_sessions").fetchall()
    db.close()
    assert balances == {"acct:seller": 6, "acct:buyer": 10**15 - 6}
    assert sessions == [("closed", 6, 3)]


async def _use_session_floor(workdir: Path, url: str) -> list[dict]:
    import aiohttp

    import mpp
    from mpp.aio import PaymentClient, SessionPolicy
    from mpp.buyer.sessions import SessionPlan, session_credential
    from mpp.intents.session import sign_voucher
    from mpp.methods.ledger import LedgerBuyerMethod

    key = mpp.SigningKey.load(workdir / "agent.key")
    async with aiohttp.ClientSession() as http:
        client = PaymentClient(http, [LedgerBuyerMethod(key=key, account="acct:buyer")], mpp.BuyerPolicy(max_amount=1000),
                               sessions=SessionPolicy(max_cap=10**9))
        ids = set()
        for n in range(1, 4):
            paid = await client.request("GET", url)
            assert paid.status == 200 and paid.session is not None and paid.receipt is not None, paid.body
            assert paid.claims is not None and paid.claims["intent"] == "session"
            assert paid.claims["amount"] == "2" and paid.claims["units"] == 1000 and paid.claims["spent"] == str(2 * n)
            assert paid.claims["account"] == "acct:buyer" and paid.claims["cap"] == str(10**9)
            assert json.loads(paid.body) == {"ok": True, "item": "forecast", "sky": "clear"}
            ids.add(paid.session)
        assert len(ids) == 1  # opened once, then vouchers
        db = sqlite3.connect(workdir / "ledger.db")
        assert db.execute("SELECT balance FROM floor_accounts WHERE id = 'acct:buyer'").fetchone() == (10**15 - 10**9,)
        db.close()
        # A voucher signed by another key for this session: refused, nothing served.
        session = client._runner.manager.find(url)
        forged = sign_voucher(mpp.SigningKey.generate(), session.terms, session.voucher.cumulative + 8,
                              session.voucher.sequence + 1)
        async with http.get(url, headers={"Authorization": session_credential(session, SessionPlan("voucher", forged))}) as resp:
            assert resp.status == 402
            assert json.loads(await resp.read())["type"] == "urn:mpp:problem:session-voucher-invalid"
        return await client.close_sessions()


def test_bench_session_and_postgres_floors(tmp_path: Path) -> None:
    """The new floors in the harness: floor-session-voucher (brought along by session-voucher), and
    floor-charge-pg and floor-charge-pg-identity on the harness's throwaway PostgreSQL; each serves paid
    calls with 0 failures (every session closed after the window), and session-voucher gets its floor share.
    --no-postgres leaves the PostgreSQL floors out too."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--duration", "1.0", "--warmup", "0.5",
         "--no-latency", "--only", "session-voucher,floor-charge-pg,floor-charge-pg-identity", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "adding floor-session-voucher" in proc.stdout and "throwaway PostgreSQL" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc["scenarios"]) == {"session-voucher", "floor-session-voucher", "floor-charge-pg", "floor-charge-pg-identity"}
    for name, r in doc["scenarios"].items():
        assert "error" not in r, (name, r)
        assert r["calls"] > 0 and r["failed"] == 0, (name, r["error_samples"])
        assert r["consistent"] is True and r["seller_served"] > 0, name
        assert not r["seller_stats"].get("stderr"), (name, r["seller_stats"])
        assert r["database_server"] is name.startswith("floor-charge-pg")
        per_call = r["requests_per_s"] / r["calls_per_s"]
        if "session" in name:
            assert r["session_close_failures"] == 0, name
            assert per_call < 1.5, (name, per_call)  # one request per call: the voucher rides on it
        else:
            assert 1.5 < per_call < 2.5, (name, per_call)
    assert set(doc["floor_shares"]) == {"session-voucher"}
    share = doc["floor_shares"]["session-voucher"]
    assert share["floor"] == "floor-session-voucher" and _number(share["share"]) and share["share"] > 0
    assert _number(share["cpu_share"])

    refused = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--no-postgres", "--only", "floor-charge-pg",
         "--json", str(tmp_path / "none.json")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert refused.returncode == 2 and "--no-postgres leaves out" in refused.stderr and "floor-charge-pg" in refused.stderr


@pytest.mark.interop
def test_bench_pympp_peer_runs(tmp_path: Path) -> None:
    """The pympp peer row (benchmarks/bench_pympp.py in the interop environment, where `mpp` is pympp)
    is measured, not reported NOT RUN: its imports name pympp's modules, never ours."""
    import os

    python = os.environ.get("MPP_INTEROP_PYTHON")
    assert python, "MPP_INTEROP_PYTHON is not set to the interop environment's python: run `make test`"
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--no-latency", "--only", "pympp-trivial",
         "--interop-python", python, "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads(out.read_text())["scenarios"]["pympp-trivial"]
    assert "error" not in row, row
    assert _number(row["calls_per_s"]) and row["calls_per_s"] > 0 and row["failed"] == 0, row
