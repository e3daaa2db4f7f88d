"""Buyer mode: our `mpp fetch` passes every buyer check; a buyer that pays whatever it is asked
(naive_buyer.py) passes the baseline and the checks it passes by paying, fails every refusal, and
fails each new check when a flag makes it misbehave in that check's way; the runner is bounded.
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

from mpp.cli.config import init_home
from mpp_conformance.buyer import BUYER_CHECKS, PAID, AdversarialSeller, non_loopback_address, run_buyer_checks
from mpp_conformance.framework import _SOURCE, Verdict, level_of

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = shlex.quote(sys.executable)
NAIVE = f"{PY} {shlex.quote(str(HERE / 'naive_buyer.py'))}"
IDS = [c.id for c in BUYER_CHECKS]
REFUSED = {"buyer.expired-challenge", "buyer.over-limit", "buyer.wrong-recipient", "buyer.wrong-currency",
           "buyer.foreign-credential-field", "buyer.cross-origin-redirect", "buyer.bad-receipt-signature", "buyer.no-double-pay-after-5xx",
           "buyer.description-not-relied-on", "buyer.plain-http"}
PAID_BY_NAIVE = {"buyer.baseline", "buyer.large-challenge", "buyer.unknown-parameters", "buyer.echo-id-opaque"}
PLAIN_ADDRESS = non_loopback_address()[0]  # None on a machine with loopback only: buyer.plain-http skips there
needs_plain = pytest.mark.skipif(PLAIN_ADDRESS is None, reason="this machine has no address but loopback")
# Level and draft citation of every check: the new ones each test one MUST of draft-httpauth-payment-02.
DRAFTS = {
    "buyer.baseline": None, "buyer.cross-origin-redirect": None, "buyer.bad-receipt-signature": None,
    "buyer.no-double-pay-after-5xx": None,
    "buyer.expired-challenge": "draft §5.1.2 MUST NOT", "buyer.over-limit": "draft §11.6 MUST",
    "buyer.wrong-recipient": "draft §11.6 MUST", "buyer.wrong-currency": "draft §11.6 MUST",
    "buyer.foreign-credential-field": "draft §5.2 MUST NOT",
    "buyer.large-challenge": "draft §9.4 MUST", "buyer.unknown-parameters": "draft §5.1.2 MUST; draft §9.3 MUST",
    "buyer.echo-id-opaque": "draft §5.1.1 MUST; draft §5.1.2 MUST", "buyer.body-digest": "draft §5.1.2 MUST",
    "buyer.description-not-relied-on": "draft §11.6 MUST NOT", "buyer.plain-http": "draft §11.2 MUST NOT",
}


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
    known = {r["id"]: r for r in json.loads((REPO / "spec" / "requirements.json").read_text())}
    assert IDS[0] == "buyer.baseline" and len(set(IDS)) == len(IDS) == 15
    for check in BUYER_CHECKS:
        assert check.profile == "buyer" and check.requirements
        assert all(req.startswith("CORE-") and req in known for req in check.requirements), check
        assert check.draft == DRAFTS[check.id], check
        assert check.draft is None or all(_SOURCE.fullmatch(src) for src in check.draft.split("; ")), check
        assert check.level == level_of(check.draft) == ("extension" if check.draft is None else "MUST")
    # The buyer-side digest rule had no id before these checks: it is ours now, with its provenance.
    assert known["CORE-BUY-10"]["level"] == "MUST"


def _our_buyer(wallet: Path, post: bool = False) -> str:
    data = "--data {body} " if post else ""
    return f"{PY} -m mpp.cli.main fetch --wallet {shlex.quote(str(wallet))} --no-identity {data}{{url}}"


def test_our_buyer_passes_every_check(wallet: Path, tmp_path: Path):
    report, junit = tmp_path / "buyer.json", tmp_path / "buyer.xml"
    proc = subprocess.run([sys.executable, "-m", "mpp_conformance.cli", "buyer", "--cmd", _our_buyer(wallet),
                           "--post-cmd", _our_buyer(wallet, post=True), "--timeout", "20",
                           "--json", str(report), "--junit", str(junit)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    assert doc["meta"]["mode"] == "buyer" and doc["meta"]["profile"] == "buyer"
    skipped = 0 if PLAIN_ADDRESS else 1
    assert doc["summary"] == {"pass": 15 - skipped, "fail": 0, "warn": 0, "skip": skipped, "error": 0}
    assert [r["id"] for r in doc["results"]] == IDS
    by_id = {r["id"]: r for r in doc["results"]}
    for check_id, r in by_id.items():
        assert r["level"] == ("extension" if DRAFTS[check_id] is None else "MUST"), r
        assert (r["cites"] == "extension") == (DRAFTS[check_id] is None), r
    assert by_id["buyer.large-challenge"]["cites"] == "draft-httpauth-payment-02 §9.4 MUST"
    # The refusals are policy refusals (exit 3), each naming its rule; not failures of some other kind.
    for check_id, rule in (("buyer.expired-challenge", "expiry"), ("buyer.over-limit", "max-amount"),
                           ("buyer.wrong-recipient", "recipient"), ("buyer.wrong-currency", "currency"),
                           ("buyer.cross-origin-redirect", "origin"), ("buyer.description-not-relied-on", "max-amount")) + (
                           (("buyer.plain-http", "transport"),) if PLAIN_ADDRESS else ()):
        assert f"exit 3: mpp: refused to pay ({rule})" in by_id[check_id]["message"], by_id[check_id]["message"]
    if not PLAIN_ADDRESS:
        assert by_id["buyer.plain-http"]["message"].startswith("no plain-http origin")
    assert "exit 3: mpp: no challenge can be paid" in by_id["buyer.foreign-credential-field"]["message"]
    assert "exit 6" in by_id["buyer.bad-receipt-signature"]["message"]
    assert "exit 5" in by_id["buyer.no-double-pay-after-5xx"]["message"]
    for check in PAID:
        assert "the seller verified the echo, and it exited 0" in by_id[check.id]["message"], by_id[check.id]["message"]
    assert re.search(r"a challenge of (\d+) bytes", by_id["buyer.large-challenge"]["message"])
    assert int(re.search(r"a challenge of (\d+) bytes", by_id["buyer.large-challenge"]["message"]).group(1)) >= 4096
    # The digest check POSTed: its paid request carried the body the challenge's digest binds.
    digest_evidence = by_id["buyer.body-digest"]["evidence"]
    assert [(e["request"]["method"], e["response"]["status"]) for e in digest_evidence[:2]] == [("POST", 402), ("POST", 200)]
    assert digest_evidence[0]["request"]["body"] == digest_evidence[1]["request"]["body"] != ""
    # Evidence: the baseline's 402, the paid request (credential redacted) and the JWKS fetch.
    evidence = by_id["buyer.baseline"]["evidence"]
    assert [e["response"]["status"] for e in evidence] == [402, 200, 200]
    assert evidence[2]["request"]["url"].endswith("/.well-known/jwks.json")
    auth = [v for e in evidence for k, v in e["request"]["headers"] if k.lower() == "authorization"]
    assert len(auth) == 1 and re.fullmatch(r"Payment \[redacted \d+ chars\]", auth[0])
    assert "testcase" in junit.read_text()
    assert "PASS EXT  buyer.no-double-pay-after-5xx" in proc.stdout
    assert "PASS MUST buyer.large-challenge" in proc.stdout


async def test_naive_buyer_fails_what_it_should():
    start = time.perf_counter()
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20)
    assert time.perf_counter() - start < 30
    got = verdicts(results)
    expected = {i: Verdict.PASS if i in PAID_BY_NAIVE else Verdict.FAIL for i in IDS}
    expected["buyer.body-digest"] = Verdict.SKIP  # no --post-cmd
    if PLAIN_ADDRESS is None:
        expected["buyer.plain-http"] = Verdict.SKIP
    assert got == expected, {r.check_id: r.message for r in results}
    assert set(IDS) - PAID_BY_NAIVE - {"buyer.body-digest"} == REFUSED
    messages = {r.check_id: r.message for r in results}
    assert "to the other origin" in messages["buyer.cross-origin-redirect"]
    assert "paid again with a new credential: 3 credentials" in messages["buyer.no-double-pay-after-5xx"]
    assert "reported success (exit 0)" in messages["buyer.bad-receipt-signature"]
    assert "for amount 5000 in request" in messages["buyer.description-not-relied-on"]
    assert messages["buyer.body-digest"].startswith("no --post-cmd was given")
    if PLAIN_ADDRESS:
        assert "to the plain-http origin (not loopback)" in messages["buyer.plain-http"]
    for r in results:  # no credential reaches a report, neither in evidence nor in the captured output
        assert r.level == ("extension" if DRAFTS[r.check_id] is None else "MUST") and r.draft == DRAFTS[r.check_id]
        for ex in r.exchanges:
            for name, value in ex.request_headers:
                if name.lower() == "authorization":
                    assert re.fullmatch(r"Payment \[redacted \d+ chars\]", value)
        assert "eyJ" not in r.message


# Each new check: a flag that makes the naive buyer misbehave in that check's way fails it, with a
# message naming what it did; where a flag makes it behave, the check passes.
@pytest.mark.parametrize("flags, check_id, verdict, phrase", [
    ("--max-field 4000", "buyer.large-challenge", Verdict.FAIL, "for a challenge of 4608 bytes (at least 4096) the buyer sent no credential"),
    ("--max-field 8192", "buyer.large-challenge", Verdict.PASS, "paid a challenge of 4608 bytes"),
    ("--strict-params", "buyer.unknown-parameters", Verdict.FAIL, "with unknown parameters (x-trace, hint, priority, x-vendor-ext) "
                                                                   "the buyer sent no credential"),
    ("--cut-id", "buyer.echo-id-opaque", Verdict.FAIL, "altered the id (cut it to its first 43 characters; it was issued with 63)"),
    ("--reencode-opaque", "buyer.echo-id-opaque", Verdict.FAIL, "re-encoded opaque (the same members, other bytes than the seller sent)"),
    ("--drop-long-opaque", "buyer.echo-id-opaque", Verdict.FAIL, "the buyer dropped opaque"),
    ("--max-amount 1000 --trust-description", "buyer.description-not-relied-on", Verdict.FAIL, "the buyer sent 1 credential"),
    ("--max-amount 1000", "buyer.description-not-relied-on", Verdict.PASS, "refused amount 5000 in request"),
    pytest.param("--loopback-only-http", "buyer.plain-http", Verdict.PASS, "no credential sent (exit 3", marks=needs_plain),
    pytest.param("", "buyer.plain-http", Verdict.FAIL, "the buyer sent 1 credential to the plain-http origin", marks=needs_plain),
])
async def test_each_new_check_fails_its_misbehaviour(flags: str, check_id: str, verdict: Verdict, phrase: str):
    results = await run_buyer_checks(f"{NAIVE} {flags} {{url}}", timeout=20, only=[check_id])
    assert [r.check_id for r in results] == ["buyer.baseline", check_id]
    assert results[0].verdict is Verdict.PASS, results[0].message  # every flag still pays the baseline
    assert results[1].verdict is verdict and phrase in results[1].message, results[1].message
    assert results[1].level == "MUST" and results[1].draft == DRAFTS[check_id]


@pytest.mark.parametrize("post_flags, verdict, phrase", [
    ("", Verdict.PASS, "paid a POST challenge whose digest binds the 80-byte body once"),
    ("--change-body", Verdict.FAIL, "sent its credential on a POST with a body of 87 bytes whose digest is not the challenge's "
                                    "(the challenge was issued for a body of 80 bytes)"),
])
async def test_body_digest(post_flags: str, verdict: Verdict, phrase: str):
    """CORE-BUY-10: the paid request carries the body the challenge's digest binds, byte for byte."""
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20, only=["buyer.body-digest"],
                                     post_cmd=f"{NAIVE} --data {{body}} {post_flags} {{url}}")
    assert results[1].verdict is verdict and phrase in results[1].message, results[1].message


async def test_body_digest_needs_a_body():
    """A --post-cmd that sends no body leaves nothing to bind: the check cannot judge (ERROR), not FAIL."""
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20, only=["buyer.body-digest"],
                                     post_cmd=f"{NAIVE} {{url}} # {{body}}")
    assert results[1].verdict is Verdict.ERROR and "sent no body" in results[1].message, results[1].message


async def test_plain_http_skips_without_an_address():
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20, only=["buyer.plain-http"], plain_host="")
    assert results[1].verdict is Verdict.SKIP and results[1].message.startswith("no plain-http origin"), results[1].message
    results = await run_buyer_checks(f"{NAIVE} {{url}}", timeout=20, only=["buyer.plain-http"], plain_host="127.0.0.1")
    assert results[1].verdict is Verdict.SKIP and "127.0.0.1 is a loopback address" in results[1].message


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
    with pytest.raises(SystemExit, match=r"--post-cmd must contain \{url\} and \{body\}"):
        await run_buyer_checks("mpp fetch {url}", timeout=5, post_cmd="mpp fetch --data x {url}")


async def test_the_seller_stops():
    seller = AdversarialSeller()
    await seller.start()
    origins = [seller.seller_origin, seller.other_origin]
    assert origins[0] != origins[1] and all(o.startswith("http://127.0.0.1:") for o in origins)
    if PLAIN_ADDRESS:  # the third origin listens on the machine's own address, not on every interface
        assert seller.plain_origin.startswith(f"http://{PLAIN_ADDRESS}:") and not seller.plain_missing
        origins.append(seller.plain_origin)
    async with aiohttp.ClientSession() as session:
        async with session.get(origins[1] + "/.well-known/jwks.json") as resp:
            assert resp.status == 200 and (await resp.json())["keys"][0]["alg"] == "EdDSA"
    await seller.stop()
    async with aiohttp.ClientSession() as session:
        for origin in origins:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(origin + "/.well-known/jwks.json"):
                    pass
