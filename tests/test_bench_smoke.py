"""The benchmark harness runs end to end and writes its figures (benchmarks/bench.py --quick).

Only shapes and types are checked: timings depend on the machine and never fail a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
