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
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--rounds", "2", "--duration", "0.5",
         "--warmup", "0.2", "--no-latency", "--no-postgres", "--only", "charge-sqlite-identity,floor-charge-sqlite",
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
        # A purchase is two HTTP requests: the 402 and the paid retry.
        assert 1.5 < r["requests_per_s"] / r["calls_per_s"] < 2.5
    share = doc["floor_shares"]["charge-sqlite-identity"]
    assert share["floor"] == "floor-charge-sqlite-identity"
    assert _number(share["share"]) and share["share"] > 0 and _number(share["cpu_share"])
    ours, floor = doc["scenarios"]["charge-sqlite-identity"], doc["scenarios"]["floor-charge-sqlite-identity"]
    assert ours["floor_share"] == share["share"] == round(ours["calls_per_s"] / floor["calls_per_s"], 3)
    assert "charge-sqlite" not in doc["floor_shares"]  # not run: no share to give


@pytest.mark.parametrize("identity", [False, True], ids=["ledger", "identity"])
def test_floor_receipts_verify(tmp_path: Path, identity: bool) -> None:
    """The floor speaks our wire exactly: mpp.aio.PaymentClient pays it and verifies its receipts
    (JWS against its JWKS, challenge, amount, recipient); a credential is good once; both legs posted."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    bench.make_kit(tmp_path)
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_floor.py"), "floor", "--workdir", str(tmp_path),
           "--ledger", f"sqlite:///{tmp_path}/ledger.db"] + (["--identity"] if identity else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), line
        url = f"http://127.0.0.1:{json.loads(line[6:])['port']}/item"
        asyncio.run(_pay_floor(tmp_path, url, identity))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.split("stats ", 1)[1]) == {"calls": 3}, out
    assert not err.strip(), err
    db = sqlite3.connect(tmp_path / "ledger.db")
    balances = dict(db.execute("SELECT id, balance FROM floor_accounts").fetchall())
    spent = db.execute("SELECT mandate, period, spent FROM floor_spent").fetchall()
    db.close()
    assert balances == {"acct:seller": 3, "acct:buyer": 10**15 - 3}
    assert len(spent) == (1 if identity else 0) and all(row[1:] == ("total", 3) for row in spent)


async def _pay_floor(workdir: Path, url: str, identity: bool) -> None:
    import aiohttp

    import mpp
    from mpp.aio import PaymentClient
    from mpp.aio.agent import AgentIdentity
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
