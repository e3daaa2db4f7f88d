"""Our own seller passes every profile of the suite, and each run writes all three reports."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from broken_sellers import short_lived_challenges
from conftest import ADAPTERS, start_seller, stop_seller


@pytest.fixture
def home(home: Path) -> Path:
    """The shared home with challenges of CHALLENGE_TTL seconds, so core.expired-challenge runs, and quickly."""
    short_lived_challenges(home)
    return home


@pytest.fixture
def trusted_seller(home: Path, tmp_path: Path, adapter: str):
    keys = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "mpp_conformance.cli", "principal", str(keys)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    did = next(word for word in out.stdout.split() if word.startswith("did:key:"))
    seller = start_seller(home, *ADAPTERS[adapter], "--trust-principal", did)
    try:
        yield seller, keys
    finally:
        assert "Traceback" not in stop_seller(seller)


@pytest.mark.parametrize("profile", ["draft", "core", "full", "identity"])
def test_our_seller_passes_each_profile_with_reports(trusted_seller, tmp_path: Path, profile: str):
    """CORE-CHAL-01, CORE-ONCE-01, IDENT-ERR-01: draft (paying), core, full and identity all pass against
    `mpp seller serve`, on either adapter (aiohttp, and ASGI with --asgi), with no warning either; the JSON, JUnit and HTML reports are written and readable
    and show every result's level."""
    seller, keys = trusted_seller
    url = seller.url + ("/agent-report" if profile == "identity" else "/weather")
    extra = {
        "core": [],
        "draft": ["--pay-with", f"ledger:{seller.home / 'agent'}", "--other-url", seller.url + "/quote"],
        "full": ["--pay-with", f"ledger:{seller.home / 'agent'}", "--other-url", seller.url + "/quote"],
        "identity": ["--identity-keys", str(keys)],
    }[profile]
    reports = {kind: tmp_path / f"{profile}.{kind}" for kind in ("json", "xml", "html")}
    result = subprocess.run(
        [sys.executable, "-m", "mpp_conformance.cli", "seller", url, "--profile", profile, *extra,
         "--json", str(reports["json"]), "--junit", str(reports["xml"]), "--html", str(reports["html"])],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    doc = json.loads(reports["json"].read_text())
    verdicts = {r["id"]: r["verdict"] for r in doc["results"]}
    assert doc["summary"]["fail"] == 0 and doc["summary"]["error"] == 0, verdicts
    # Our one departure from a SHOULD of the draft, on purpose (spec/core.md, Draft revision and
    # differences, row 5): two credentials get 402 malformed-credential, not 400. A warning, not a failure.
    assert {cid for cid, v in verdicts.items() if v == "warn"} == ({"draft.two-credentials"} if profile == "draft" else set())
    levels = {r["id"]: r["level"] for r in doc["results"]}
    assert set(levels.values()) <= {"MUST", "SHOULD", "extension"}
    if profile == "draft":  # only what the drafts require, each result naming the draft it tests
        assert "extension" not in levels.values() and "SHOULD" in levels.values(), levels
        assert all(r["cites"].startswith(("draft-", "RFC")) for r in doc["results"]), doc["results"][0]["cites"]
    else:
        assert {"MUST", "extension"} <= set(levels.values()), levels
    assert any(cid.startswith("core." if profile == "draft" else profile) for cid in verdicts)
    assert all(r["requirements"] for r in doc["results"])
    skipped = {cid for cid, v in verdicts.items() if v == "skip"}
    allowed_skips = {"full.other-method", "full.changed-body", "full.idempotency-retry", "identity.revoked",
                     "core.body-digest", "draft.body-digest",
                     "core.no-plaintext-challenges"}  # plain http on loopback: a local target cannot show it
    assert skipped <= allowed_skips, skipped  # GET targets: no body, no second method on these paths; loopback
    suite = ET.parse(reports["xml"]).getroot().find("testsuite")
    assert int(suite.get("tests")) == len(doc["results"]) and suite.get("failures") == "0"
    levels_in_xml = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}["level"]
                     for case in suite.iter("testcase")}
    assert levels_in_xml == {r["id"]: r["level"] for r in doc["results"]}
    page = reports["html"].read_text()
    assert page.count("data-level=") == len(doc["results"])
    assert page.startswith("<!doctype html>") and "id='summary'" in page and page.count("<details class='check'") == len(doc["results"])
    assert "Payment eyJ" not in page and "Payment eyJ" not in reports["json"].read_text()
