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
