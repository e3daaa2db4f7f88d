"""The HTML report is one self-contained page that headless Chromium renders: a summary, then each
check with its requirements, verdict and the exchange that decided it, credentials redacted.

The evidence is recorded the way the runner records it (framework.run_checks -> CheckContext.request)
against a small local aiohttp server. Chromium is Debian's package; `make test` installs it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web

from mpp_conformance.framework import Check, CheckContext, CheckFailed, Result, Skip, Verdict, run_checks
from mpp_conformance.reports import to_html, to_json, to_junit

INSTALL_HINT = ("headless Chromium is needed to render the HTML report: install Debian's package with "
                "`apt-get update && apt-get install -y --no-install-recommends chromium` (as root), "
                "or run `make test`, which does so when it is missing")
# A credential shaped like a real one (base64url JSON), unique per run so a hit cannot be a coincidence.
SECRET_PART = secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")
CREDENTIAL = "Payment eyJjaGFsbGVuZ2UiOnsiaWQiOi" + SECRET_PART
COOKIE = "session=" + secrets.token_hex(24)


def chromium() -> str:
    path = os.environ.get("MPP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no chromium at {path}: {INSTALL_HINT}", pytrace=False)
    return path


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile), "XDG_CACHE_HOME": str(profile)}
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish in 90 s: {' '.join(cmd)}\n{exc.stderr}", pytrace=False)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}"
    return result


async def _seller(request: web.Request) -> web.Response:
    """A stand-in seller: 402 with a challenge and a problem document; never echoes the credential."""
    headers = {"WWW-Authenticate": 'Payment id="abc", realm="test", method="ledger", intent="charge", request="e30"',
               "Cache-Control": "no-store", "Set-Cookie": COOKIE}
    body = {"type": "https://paymentauth.org/problems/verification-failed", "title": "Verification failed",
            "status": 402, "detail": "the signature does not verify", "challengeId": "abc"}
    if request.headers.get("Authorization") is None:
        body.update(type="https://paymentauth.org/problems/payment-required", title="Payment required", detail="pay first")
    return web.json_response(body, status=402, headers=headers, content_type="application/problem+json")


async def _check_pass(ctx: CheckContext) -> str:
    resp = await ctx.request("GET", ctx.target)
    if resp.status != 402:
        raise CheckFailed(f"expected 402, got {resp.status}")
    return "unpaid request answered 402 with a challenge"


async def _check_fail(ctx: CheckContext) -> str:
    resp = await ctx.request("GET", ctx.target, headers={"Authorization": CREDENTIAL, "Cookie": COOKIE})
    raise CheckFailed(f"a forged credential got {resp.status} verification-failed, expected invalid-challenge")


async def _check_warn(ctx: CheckContext) -> str:
    raise CheckFailed("two credentials got 402, the draft says 400 SHOULD")


async def _check_skip(ctx: CheckContext) -> str:
    raise Skip("the target offers no POST route")


async def _check_error(ctx: CheckContext) -> str:
    raise RuntimeError("boom <script>alert(1)</script>")


CHECKS = [
    Check("demo.pass", "unpaid request gets a challenge", "core", ("CORE-CHAL-01",), _check_pass),
    Check("demo.fail", "forged credential gets invalid-challenge", "core", ("CORE-ERR-04", "CORE-BIND-07"), _check_fail),
    Check("demo.warn", "two credentials get 400", "draft", ("CORE-CRED-04",), _check_warn, draft="draft §B.4 SHOULD"),
    Check("demo.skip", "body digest is bound", "core", ("CORE-BIND-03",), _check_skip),
    Check("demo.error", "a check that crashes", "full", ("CORE-ERR-11",), _check_error),
]
VERDICTS = {"demo.pass": "pass", "demo.fail": "fail", "demo.warn": "warn", "demo.skip": "skip", "demo.error": "error"}
META = {"mode": "seller", "target": "", "profile": "core", "version": "test", "started": "2026-01-01T00:00:00Z"}


@pytest.fixture
async def results() -> list[Result]:
    """Results recorded by the runner itself, against a local server (checks are built, not registered)."""
    app = web.Application()
    app.router.add_get("/paid", _seller)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port the OS picked
    try:
        out = await run_checks(CHECKS, f"http://127.0.0.1:{port}/paid", {"method": "GET"})
    finally:
        await runner.cleanup()
    assert {r.check_id: r.verdict.value for r in out} == VERDICTS
    failed = next(r for r in out if r.check_id == "demo.fail")
    assert failed.exchanges and failed.exchanges[0].status == 402, "the failing check recorded no exchange"
    return out


class _Dom(HTMLParser):
    """What the rendered page holds: the summary table's rows and each check's <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.summary_rows: list[list[str]] = []
        self.details: list[dict] = []
        self._in_summary = self._in_detail_summary = False
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "summary":
            self._in_summary = True
        elif self._in_summary and tag == "tr":
            self._row = []
        elif self._in_summary and tag in ("td", "th"):
            self._cell = []
        elif tag == "details":
            self.details.append({"id": a.get("id"), "class": a.get("class", ""), "verdict": a.get("data-verdict"),
                                 "summary": "", "text": ""})
        elif tag == "summary" and self.details:
            self._in_detail_summary = True

    def handle_endtag(self, tag):
        if tag == "table" and self._in_summary:
            self._in_summary = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.summary_rows.append(self._row)
            self._row = None
        elif tag == "summary":
            self._in_detail_summary = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self.details:
            self.details[-1]["text"] += data
            if self._in_detail_summary:
                self.details[-1]["summary"] += data


def _assert_no_credential(text: str, where: str) -> None:
    assert SECRET_PART not in text, f"{where}: the Authorization credential leaked"
    assert COOKIE.split("=", 1)[1] not in text, f"{where}: a cookie value leaked"


async def test_html_report_redacts_credentials(results):
    page = to_html(results, META)
    _assert_no_credential(page, "HTML report")
    assert "Authorization: Payment [redacted" in page, "the redacted Authorization header is not shown as evidence"
    assert "<script>alert(1)</script>" not in page, "check messages are not escaped"


async def test_other_reports_redact_credentials(results):
    _assert_no_credential(to_json(results, META), "JSON report")
    _assert_no_credential(to_junit(results, META), "JUnit report")
    evidence = json.loads(to_json(results, META))["results"][1]["evidence"][0]
    assert dict(evidence["request"]["headers"])["Authorization"].startswith("Payment [redacted")


async def test_html_report_renders_in_headless_chromium(results, tmp_path):
    """Chromium loads the page: its DOM has the summary table and one <details> per check with its verdict."""
    page = tmp_path / "report.html"
    page.write_text(to_html(results, META), encoding="utf-8")
    dom_text = run_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "<html" in dom_text.lower(), f"chromium dumped no DOM:\n{dom_text[:500]}"
    _assert_no_credential(dom_text, "rendered DOM")
    dom = _Dom()
    dom.feed(dom_text)

    counts = {row[0]: row[1] for row in dom.summary_rows if len(row) == 2 and row[0] != "verdict"}
    assert counts == {"pass": "1", "fail": "1", "warn": "1", "skip": "1", "error": "1"}, f"summary table: {dom.summary_rows}"

    checks = [d for d in dom.details if "check" in d["class"].split()]
    assert [d["id"] for d in checks] == [c.id for c in CHECKS], f"details elements: {checks}"
    for d in checks:
        verdict = VERDICTS[d["id"]]
        assert d["verdict"] == verdict
        assert d["summary"].strip().startswith(verdict.upper()), f"{d['id']}: summary {d['summary']!r}"
    by_id = {d["id"]: d for d in checks}
    assert "CORE-ERR-04" in by_id["demo.fail"]["text"] and "CORE-BIND-07" in by_id["demo.fail"]["text"]
    assert "HTTP 402" in by_id["demo.fail"]["text"], "the deciding response is not in the failing check's evidence"
    assert "Authorization: Payment [redacted" in by_id["demo.fail"]["text"]
    assert "(no HTTP exchange)" in by_id["demo.skip"]["text"]
    # every result shows its level; a SHOULD's departure is a warning naming the draft section it cites
    assert "extension" in by_id["demo.fail"]["summary"] and "SHOULD" in by_id["demo.warn"]["summary"]
    assert "draft-httpauth-payment-02 §B.4 SHOULD" in by_id["demo.warn"]["text"]


async def test_html_report_screenshot(results, tmp_path):
    """A headless screenshot of the page is a real, non-blank PNG of the requested size."""
    page = tmp_path / "report.html"
    page.write_text(to_html(results, META), encoding="utf-8")
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", "--hide-scrollbars", page.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 900), f"screenshot is {width}x{height}"
    assert len(data) > 5 * 1024, f"screenshot is only {len(data)} bytes: the page rendered blank"
