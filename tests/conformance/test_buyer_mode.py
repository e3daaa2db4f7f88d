"""Buyer mode: our `mpp fetch` passes every buyer check; a buyer that pays whatever it is asked
(naive_buyer.py) passes the baseline and fails every other check; the runner is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from mpp.config import init_home
from mpp_conformance.buyer import BUYER_CHECKS, AdversarialSeller, run_buyer_checks
from mpp_conformance.framework import Verdict

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = shlex.quote(sys.executable)
NAIVE = f"{PY} {shlex.quote(str(HERE / 'naive_buyer.py'))}"
IDS = [c.id for c in BUYER_CHECKS]
REFUSED = {"buyer.expired-challenge", "buyer.over-limit", "buyer.wrong-recipient", "buyer.wrong-currency",
           "buyer.foreign-credential-field", "buyer.cross-origin-redirect", "buyer.bad-receipt-signature", "buyer.no-double-pay-after-5xx"}


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mpp init`'s agent wallet (limit 1000, usd only), pinned to the recipient acct:seller."""
    home = tmp_path_factory.mktemp("buyer-mode") / "home"
    init_home(home)
    meta_path = home / "agent" / "wallet.json"
    meta = json.loads(meta_path.read_text())
    assert meta["max_amount"] == 1000 and meta["currencies"] == ["usd"]
    meta["recipients"] = ["acct:seller"]
    meta_path.write_text(json.dumps(meta))
    return home / "agent"


def verdicts(results) -> dict[str, Verdict]:
    return {r.check_id: r.verdict for r in results}


def test_checks_cite_known_buyer_requirements():
    known = {r["id"] for r in json.loads((REPO / "spec" / "requirements.json").read_text())}
    assert IDS[0] == "buyer.baseline" and len(set(IDS)) == len(IDS) == 9
    for check in BUYER_CHECKS:
        assert check.profile == "buyer" and check.requirements
        assert all(req.startswith("CORE-BUY-") and req in known for req in check.requirements), check


def test_our_buyer_passes_every_check(wallet: Path, tmp_path: Path):
    cmd = f"{PY} -m mpp.cli fetch --wallet {shlex.quote(str(wallet))} --no-identity {{url}}"
    report, junit = tmp_path / "buyer.json", tmp_path / "buyer.xml"
    proc = subprocess.run([sys.executable, "-m", "mpp_conformance.cli", "buyer", "--cmd", cmd, "--timeout", "20",
                           "--json", str(report), "--junit", str(junit)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    assert doc["meta"]["mode"] == "buyer" and doc["meta"]["profile"] == "buyer"
    assert doc["summary"] == {"pass": 9, "fail": 0, "warn": 0, "skip": 0, "error": 0}
    assert [r["id"] for r in doc["results"]] == IDS
    by_id = {r["id"]: r for r in doc["results"]}
    # The refusals are policy refusals (exit 3), each naming its rule; not failures of some other kind.
    for check_id, rule in (("buyer.expired-challenge", "expiry"), ("buyer.over-limit", "max-amount"),
                           ("buyer.wrong-recipient", "recipient"), ("buyer.wrong-currency", "currency"),
                           ("buyer.cross-origin-redirect", "origin")):
        assert f"exit 3: mpp: refused to pay ({rule})" in by_id[check_id]["message"], by_id[check_id]["message"]
    assert "exit 3: mpp: no challenge can be paid" in by_id["buyer.foreign-credential-field"]["message"]
    assert "exit 6" in by_id["buyer.bad-receipt-signature"]["message"]
    assert "exit 5" in by_id["buyer.no-double-pay-after-5xx"]["message"]
    # Evidence: the baseline's 402, the paid request (credential redacted) and the JWKS fetch.
    evidence = by_id["buyer.baseline"]["evidence"]
    assert [e["response"]["status"] for e in evidence] == [402, 200, 200]
    assert evidence[2]["request"]["url"].endswith("/.well-known/jwks.json")
    auth = [v for e in evidence for k, v in e["request"]["headers"] if k.lower() == "authorization"]
    assert len(auth) == 1 and re.fullmatch(r"Payment \[redacted \d+ chars\]", auth[0])
    assert "testcase" in junit.read_text()
    assert re.search(r"\[9/9\] PASS \S+ +buyer.no-double-pay-after-5xx", proc.stdout), proc.stdout


async def test_naive_buyer_fails_what_it_should():
    start = time.perf_counter()
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20)
    assert time.perf_counter() - start < 20
    got = verdicts(results)
    assert got == {i: (Verdict.PASS if i == "buyer.baseline" else Verdict.FAIL) for i in IDS}, \
        {r.check_id: r.message for r in results}
    assert set(IDS) - {"buyer.baseline"} == REFUSED
    messages = {r.check_id: r.message for r in results}
    assert "to the other origin" in messages["buyer.cross-origin-redirect"]
    assert "paid again with a new credential: 3 credentials" in messages["buyer.no-double-pay-after-5xx"]
    assert "reported success (exit 0)" in messages["buyer.bad-receipt-signature"]
    for r in results:  # no credential reaches a report, neither in evidence nor in the captured output
        for ex in r.exchanges:
            for name, value in ex.request_headers:
                if name.lower() == "authorization":
                    assert re.fullmatch(r"Payment \[redacted \d+ chars\]", value)
        assert "eyJ" not in r.message


@pytest.mark.parametrize("flag, verdict, phrase", [
    ("--resend-same", Verdict.FAIL, "resent the same credential without an Idempotency-Key"),
    ("--resend-idempotent", Verdict.PASS, "retried it 2 times with an Idempotency-Key"),
])
async def test_resending_the_same_credential(flag: str, verdict: Verdict, phrase: str):
    """CORE-BUY-05 allows one kind of retry: the same credential with an Idempotency-Key."""
    results = await run_buyer_checks(f"{NAIVE} {flag} {{url}}", timeout=20, only=["buyer.no-double-pay-after-5xx"])
    assert [r.check_id for r in results] == ["buyer.baseline", "buyer.no-double-pay-after-5xx"]
    assert results[0].verdict is Verdict.PASS
    assert results[1].verdict is verdict and phrase in results[1].message, results[1].message


async def test_a_buyer_that_cannot_pay_fails_the_baseline_and_proves_nothing_else():
    seen = []
    results = await run_buyer_checks(f"{PY} -c 'import sys; sys.exit(1)' {{url}}", timeout=20,
                                     progress=lambda r, n, total: seen.append((r.check_id, n, total)))
    assert results[0].verdict is Verdict.FAIL and "sent 0 credentials" in results[0].message
    assert all(r.verdict is Verdict.ERROR and r.message.startswith("baseline failed") for r in results[1:])
    assert seen == [(i, n, len(IDS)) for n, i in enumerate(IDS, 1)]


async def test_a_hanging_buyer_is_killed_after_the_timeout(tmp_path: Path):
    marker = tmp_path / "still-running"
    script = f"import time, pathlib; time.sleep(1.5); pathlib.Path({str(marker)!r}).write_text('x')"
    start = time.perf_counter()
    results = await run_buyer_checks(f"{PY} -c {shlex.quote(script)} {{url}}", timeout=0.3)
    assert time.perf_counter() - start < 1.5
    assert results[0].verdict is Verdict.ERROR and "killed after the timeout" in results[0].message
    assert all(r.verdict is Verdict.ERROR for r in results)
    await asyncio.sleep(1.6)
    assert not marker.exists(), "the buyer command outlived its timeout"


async def test_command_must_name_the_url():
    with pytest.raises(SystemExit, match=r"\{url\}"):
        await run_buyer_checks("mpp fetch http://example.test/", timeout=5)


async def test_the_seller_stops():
    seller = AdversarialSeller()
    await seller.start()
    origins = [seller.seller_origin, seller.other_origin]
    assert origins[0] != origins[1] and all(o.startswith("http://127.0.0.1:") for o in origins)
    async with aiohttp.ClientSession() as session:
        async with session.get(origins[1] + "/.well-known/jwks.json") as resp:
            assert resp.status == 200 and (await resp.json())["keys"][0]["alg"] == "EdDSA"
    await seller.stop()
    async with aiohttp.ClientSession() as session:
        for origin in origins:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(origin + "/.well-known/jwks.json"):
                    pass
