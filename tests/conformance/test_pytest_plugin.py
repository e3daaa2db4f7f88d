"""The pytest plugin runs the same checks as test items against a target given on the command line."""

from __future__ import annotations

import subprocess
import sys


def test_plugin_runs_the_checks_against_a_seller(served, tmp_path):
    """CORE-CHAL-01, CORE-ERR-02: `pytest --pyargs mpp_conformance --mpp-seller URL` gives one passing item per check."""
    junit = tmp_path / "plugin.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "mpp_conformance", "--mpp-seller", served.url + "/weather",
         "--mpp-profile", "full", "--mpp-pay-with", f"ledger:{served.home / 'agent'}", "--mpp-other-url", served.url + "/quote",
         "--mpp-expiry-wait", "5",
         "-p", "no:cacheprovider", "-q", f"--junitxml={junit}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "failed" not in result.stdout.splitlines()[-1]
    xml = junit.read_text()
    assert "test_conformance[full.replay]" in xml and "test_conformance[core.garbage-credential]" in xml


def test_plugin_adds_nothing_without_a_target(tmp_path):
    """Without --mpp-seller the plugin collects no conformance item (it never runs against nothing)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "mpp_conformance", "-p", "no:cacheprovider", "-q"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1].startswith("1 skipped"), result.stdout


def _pytest(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "mpp_conformance", "-p", "no:cacheprovider", "-q", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_plugin_stops_early_on_a_dead_target(tmp_path):
    """Like the CLI: one failure with the reason (the first item), every other item skipped, no check run."""
    # -rs, not -rfs: the short summary repeats a failure's message or not depending on the terminal width
    result = _pytest("--mpp-seller", "http://127.0.0.1:9/nothing", "-rs", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    last = out.strip().splitlines()[-1]
    assert last.startswith("1 failed") and "skipped" in last and "passed" not in last, out
    assert out.count("cannot reach GET http://127.0.0.1:9/nothing") == 1, out
    assert "see the first mpp-conformance item's failure" in out
    assert "Traceback" not in out


def test_plugin_stops_early_on_an_unpriced_target_and_a_bad_payer(served, tmp_path):
    result = _pytest("--mpp-seller", served.url + "/.well-known/jwks.json", "-rfs", cwd=tmp_path)
    assert result.returncode == 1 and "is not priced" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("1 failed"), result.stdout
    result = _pytest("--mpp-seller", served.url + "/weather", "--mpp-profile", "full", "--mpp-pay-with", "cmd:/nonexistent/payer",
                     "-rfs", cwd=tmp_path)
    assert result.returncode == 1 and "is not an executable program" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("1 failed"), result.stdout


def test_plugin_profiles_and_options(served, tmp_path):
    """--mpp-profile takes every profile of the CLI; --mpp-expiry-wait reaches core.expired-challenge."""
    from mpp_conformance.framework import PROFILES

    result = _pytest("--help", cwd=tmp_path)
    for profile in PROFILES:
        assert profile in result.stdout.split("--mpp-profile", 1)[1].split("--mpp-pay-with", 1)[0], result.stdout
    result = _pytest("--mpp-seller", served.url + "/weather", "--mpp-expiry-wait", "0", "-k", "expired-challenge", "-rs",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "longer than --expiry-wait 0 s" in result.stdout, result.stdout


def test_a_should_departure_passes_with_a_warning():
    """Verdict.WARN (a SHOULD-level check that found a departure) is a pass, with a warning and a user property."""
    import pytest

    from mpp_conformance.framework import Check, CheckFailed, Verdict
    from mpp_conformance.pytest_plugin import MppConformanceWarning, run_one

    async def departs(ctx):
        raise CheckFailed("the 402 carries no Cache-Control: no-store")

    check = Check("core.test-should", "a SHOULD-level check", "core", ("CORE-ERR-02",), departs, draft="draft §5.1.1 SHOULD")

    class Node:
        user_properties: list = []

    node = Node()
    with pytest.warns(MppConformanceWarning, match="core.test-should: the 402 carries no Cache-Control: no-store"):
        result = run_one(check, "http://127.0.0.1:9/x", {}, node)
    assert result.verdict is Verdict.WARN
    assert node.user_properties == [("mpp-conformance-warning", node.user_properties[0][1])]
    assert "SHOULD: draft-httpauth-payment-02 §5.1.1 SHOULD" in node.user_properties[0][1]
    must = Check("core.test-must", "a MUST-level check", "core", ("CORE-ERR-02",), departs, draft="draft §5.1.1 MUST")
    with pytest.raises(AssertionError, match="fail: the 402 carries no Cache-Control"):
        run_one(must, "http://127.0.0.1:9/x", {}, node)
