"""The `core` conformance profile against our own seller: every check passes over HTTP (GET and
POST with a body), the CLI writes its three reports with no credential in them, and each check
has teeth: a seller broken in one way fails the check written for that way."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broken_sellers import CHALLENGE_TTL, short_lived_challenges
from mpp.cli.serve import HEADER_LIMITS, build_seller_app
from mpp.cli.config import load_seller_config
from mpp_conformance.framework import Verdict, checks_for, run_checks
from mpp_conformance.reports import meta_for, to_html, to_json, to_junit

CORE_IDS = {
    "core.challenge-well-formed", "core.fresh-id-per-402", "core.garbage-credential", "core.unknown-challenge-id",
    "core.tampered-request", "core.tampered-expires", "core.tampered-realm", "core.expired-echo",
    "core.two-credentials", "core.unsupported-method", "core.accept-payment", "core.large-credential",
    "core.bounded-echo", "core.no-receipt-on-errors", "core.no-5xx", "core.strict-json", "core.expired-challenge",
    "core.oversized-credential",
}
# A Payment credential as our probes build it: base64url of '{"challenge"' (or of any JSON object).
CREDENTIAL_LEAK = re.compile(r"Payment eyJ|eyJjaGFsbGVuZ2Ui")


@pytest.fixture
def home(home: Path) -> Path:
    """The shared home with challenges of CHALLENGE_TTL seconds, so core.expired-challenge runs, and quickly."""
    short_lived_challenges(home)
    return home


def _options(method: str = "GET", data: bytes | None = None) -> dict:
    return {"method": method, "data": data, "pay_with": None, "concurrency": 20}


def _requirement_ids() -> set[str]:
    return {r["id"] for r in json.loads((Path(__file__).resolve().parents[2] / "spec" / "requirements.json").read_text())}


# Checks that do not apply to a GET target without a body: they skip, saying so.
NOT_ON_GET = {"core.body-digest"}
# Checks that a plain-http loopback target cannot show: they skip on every local seller, saying so.
ON_LOOPBACK = {"core.no-plaintext-challenges"}


def _ok(r) -> bool:
    return r.verdict is Verdict.PASS or (r.verdict is Verdict.SKIP and r.check_id in NOT_ON_GET | ON_LOOPBACK)


def _failures(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results if not _ok(r))


def test_core_checks_registered_with_real_requirement_ids():
    checks = checks_for("core")
    assert CORE_IDS <= {c.id for c in checks}
    known = _requirement_ids()
    for c in checks:
        assert c.profile == "core"
        assert c.requirements, c.id
        assert set(c.requirements) <= known, (c.id, set(c.requirements) - known)


async def test_core_profile_passes_on_get(served):
    start = time.perf_counter()
    results = await run_checks(checks_for("core"), served.url + "/weather", _options())
    elapsed = time.perf_counter() - start
    assert {r.check_id for r in results} >= CORE_IDS
    assert all(_ok(r) for r in results), _failures(results)
    # the expiry check waits out one challenge (CHALLENGE_TTL seconds at most, and a margin)
    assert elapsed < 5 + CHALLENGE_TTL + 1, f"the core profile took {elapsed:.1f} s against a local seller"
    notes = {r.check_id: r.message for r in results}
    assert "invalid-challenge" in notes["core.expired-echo"]  # our seller checks the id binding first (CORE-BIND-07)
    assert "payment-expired" in notes["core.expired-challenge"], notes["core.expired-challenge"]


async def test_core_profile_passes_on_post_with_body(served):
    results = await run_checks(checks_for("core"), served.url + "/summarize",
                               _options("POST", b"Agents buy from services; every purchase is signed."))
    assert all(_ok(r) for r in results), _failures(results)


def test_cli_writes_three_reports_without_credentials(served, tmp_path: Path):
    out = {kind: tmp_path / f"report.{kind}" for kind in ("json", "xml", "html")}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mpp-conformance")), "seller", served.url + "/weather",
         "--json", str(out["json"]), "--junit", str(out["xml"]), "--html", str(out["html"])],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in out.values():
        assert path.is_file() and path.stat().st_size > 0, path
    report = json.loads(out["json"].read_text())
    ids = [r["id"] for r in report["results"]]
    assert sorted(ids) == sorted({c.id for c in checks_for("core")}), ids  # one result per check
    for r in report["results"]:
        assert r["verdict"] == "pass" or (r["verdict"] == "skip" and r["id"] in NOT_ON_GET | ON_LOOPBACK), r
        assert r["requirements"], r["id"]
        assert r["evidence"] or r["verdict"] == "skip", r["id"]
        for ex in r["evidence"]:
            for name, value in ex["request"]["headers"]:
                if name.lower() == "authorization":
                    # the scheme (at most a short word) may stay; nothing of the token does
                    assert re.fullmatch(r"(?:[A-Za-z]{0,16} )?\[redacted(?: \d+ chars)?\]", value), (r["id"], value[:40])
    for path in out.values():
        text = path.read_text()
        leak = CREDENTIAL_LEAK.search(text)
        assert leak is None, f"{path.name} holds a credential: ...{text[max(0, leak.start() - 40):leak.end() + 40]}..."
    assert CREDENTIAL_LEAK.search(proc.stdout) is None


# -- a seller broken on purpose: each check must catch the fault it is written for ------------

def _only_first_authorization(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):  # as Node's http module does: later Authorization fields are dropped
        values = request.headers.getall("Authorization", [])
        if len(values) > 1:
            headers = request.headers.copy()
            headers.popall("Authorization")
            headers["Authorization"] = values[0]
            request = request.clone(headers=headers)
        return await handler(request)
    app.middlewares.insert(0, fault)


def _receipt_on_errors(app: web.Application) -> None:
    async def fault(request, response):  # runs after the seller's own hook, which strips it
        if response.status >= 400:
            response.headers["Payment-Receipt"] = "eyJzdGF0dXMiOiJzdWNjZXNzIn0"
    app.on_response_prepare.append(fault)


def _draft_402_for_unknown_method(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):
        resp = await handler(request)
        if resp.status == 400 and b"method-unsupported" in resp.body:
            doc = json.loads(resp.body)
            doc.update(status=402, type="https://paymentauth.org/problems/invalid-challenge")
            return web.Response(status=402, body=json.dumps(doc).encode(), content_type="application/problem+json",
                                headers={k: v for k, v in resp.headers.items() if k.lower() != "content-type"})
        return resp
    app.middlewares.insert(0, fault)


def _crash_on_big_credentials(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):
        if len(request.headers.get("Authorization", "")) > 5000:
            return web.Response(status=500, text="boom")
        return await handler(request)
    app.middlewares.insert(0, fault)


def _small_header_limit(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):
        if len(request.headers.get("Authorization", "")) > 4000:
            return web.Response(status=431, text="Request Header Fields Too Large")
        return await handler(request)
    app.middlewares.insert(0, fault)


def _no_id_check(seller) -> None:
    seller.core.issuer.verify = lambda challenge, *, now, check_expiry=True: None


def _expiry_before_id(seller) -> None:
    from mpp.protocol.errors import ParseError, PaymentExpired

    original = seller.core.issuer.verify

    def verify(challenge, *, now, check_expiry=True):
        try:
            expired = check_expiry and challenge.is_expired(now)
        except ParseError:
            expired = False  # unreadable: left to the id check
        if expired:
            raise PaymentExpired("challenge has expired")
        original(challenge, now=now, check_expiry=check_expiry)
    seller.core.issuer.verify = verify


def _lax_json(seller) -> None:
    """CORE-CRED-07: a seller reading credentials with Python's default json, which takes NaN, a
    repeated member (the last wins) and any nesting; the probe is then refused later, as a payment
    that does not verify, which is what such a seller answers."""
    from mpp import b64url_decode
    from mpp.protocol.errors import MalformedCredential, VerificationFailed

    original = seller.core.verify

    def verify(header, info, now):
        try:
            json.loads(b64url_decode(header.split(" ", 1)[1].strip()))
        except (ValueError, IndexError, RecursionError):
            return original(header, info, now)
        try:
            return original(header, info, now)
        except MalformedCredential:
            raise VerificationFailed("the payment proof does not verify") from None
    seller.core.verify = verify


def _offers_probe_method_back(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):  # a malformed Accept-Payment gets no challenge for our method
        resp = await handler(request)
        if resp.status == 402 and request.headers.get("Accept-Payment", "").startswith(";"):
            headers = [(k, v.replace('method="ledger"', 'method="other"')) for k, v in resp.headers.items()]
            return web.Response(status=402, body=resp.body, headers=headers)
        return resp
    app.middlewares.insert(0, fault)


FAULTS = {
    "first-authorization-only": (_only_first_authorization, None, {"core.two-credentials"}),
    "receipt-on-errors": (_receipt_on_errors, None, {"core.no-receipt-on-errors"}),  # one result per cause
    "draft-402-for-unknown-method": (_draft_402_for_unknown_method, None, {"core.unsupported-method"}),
    "5xx-on-big-credentials": (_crash_on_big_credentials, None, {"core.no-5xx", "core.oversized-credential"}),
    "4k-header-limit": (_small_header_limit, None, {"core.large-credential"}),  # 431 is a 4xx: no-5xx is content
    "no-id-check": (None, _no_id_check, {
        "core.problem-documents", "core.unknown-challenge-id", "core.tampered-request", "core.tampered-expires", "core.tampered-realm",
        "core.expired-echo", "core.expired-challenge"}),  # no id check means no expiry check either
    "expiry-before-id": (None, _expiry_before_id, set()),  # allowed by core.expired-echo, which says so
    "malformed-accept-payment-narrowed": (_offers_probe_method_back, None, {"core.accept-payment"}),
    "lax-json": (None, _lax_json, {"core.strict-json"}),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_each_check_catches_its_fault(home: Path, fault: str):
    break_app, break_seller, expected = FAULTS[fault]
    app, seller = build_seller_app(load_seller_config(home / "seller.toml"))
    if break_app is not None:
        break_app(app)
    if break_seller is not None:
        break_seller(seller)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)
    try:
        # The expiry check waits out a challenge: only where the fault is expected to show there.
        wait = {} if "core.expired-challenge" in expected else {"expiry_wait": 0}
        results = await run_checks(checks_for("core"), str(server.make_url("/weather")), {**_options(), **wait})
    finally:
        await server.close()
    verdicts = {r.check_id: r for r in results}
    assert not [r for r in results if r.verdict is Verdict.ERROR], _failures(results)
    failed = {cid for cid, r in verdicts.items() if r.verdict is Verdict.FAIL}
    assert failed == expected, f"fault {fault}: expected {sorted(expected)} to fail, got:\n{_failures(results)}"
    if fault == "expiry-before-id":
        assert "payment-expired" in verdicts["core.expired-echo"].message
    if fault == "draft-402-for-unknown-method":
        assert "requires 400 method-unsupported" in verdicts["core.unsupported-method"].message


async def test_reports_never_hold_a_sent_credential(home: Path):
    """Record every Authorization value the seller received, then look for each in all three reports."""
    app, _ = build_seller_app(load_seller_config(home / "seller.toml"))
    received: list[str] = []

    @web.middleware
    async def record(request, handler):
        received.extend(request.headers.getall("Authorization", []))
        return await handler(request)
    app.middlewares.insert(0, record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)
    url = str(server.make_url("/weather"))
    try:
        results = await run_checks(checks_for("core"), url, _options())
    finally:
        await server.close()
    assert all(_ok(r) for r in results), _failures(results)
    tokens = {v.split(" ", 1)[1].strip() for v in received if " " in v.strip()}
    tokens = {t for t in tokens if len(t) >= 12}
    assert len(tokens) > 100
    meta = meta_for("seller", url, "core")
    for render in (to_json, to_junit, to_html):
        text = render(results, meta)
        leaked = [t for t in tokens if t in text]
        assert not leaked, f"{render.__name__}: {len(leaked)} credential(s) appear in the report"


async def test_expiry_check_skips_naming_the_ttl_when_it_exceeds_the_wait(served):
    """core.expired-challenge waits at most --expiry-wait; a longer-lived challenge is a skip that says how long it lives."""
    [check] = [c for c in checks_for("core") if c.id == "core.expired-challenge"]
    [result] = await run_checks([check], served.url + "/weather", {**_options(), "expiry_wait": 0.5})
    assert result.verdict is Verdict.SKIP, result.message
    assert re.search(r"challenges live \d s .*longer than --expiry-wait 0.5 s", result.message), result.message
