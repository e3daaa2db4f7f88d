"""`mpp-conformance` as a user meets it: exit statuses (0 passed, 1 failures, 2 bad usage or a
target that cannot be checked), one line and an early stop for a dead or unpriced target, a
`--help` that says how to pay, and skips (never failures) for what the suite's payer cannot pay,
down to `--discover` against the seller `mpp init` writes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import start_seller, stop_seller
from mpp_conformance.framework import Verdict, checks_for, run_checks

FIRST_CHECK = re.compile(r"\[\s*1/\d+\]")  # the console line of the first check
CLI = str(Path(sys.executable).with_name("mpp-conformance"))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def _one_line_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert all(n in proc.stderr for n in needles), proc.stderr
    assert FIRST_CHECK.search(proc.stdout) is None, proc.stdout  # stopped before any check ran


def _dead_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- 1. exit statuses: every usage error is 2 -------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["seller", "http://127.0.0.1:9/x", "--profile", "full"], "--pay-with"),
    (["seller"], "--discover"),
    (["seller", "http://127.0.0.1:9/x", "--discover", "http://127.0.0.1:9"], "not both"),
    (["seller", "http://127.0.0.1:9/x", "--profile", "full", "--pay-with", "bogus:x"], "--pay-with"),
    (["seller", "http://127.0.0.1:9/x", "--pay-with", "ledger:/nonexistent/wallet"], "--pay-with"),
    (["seller", "http://127.0.0.1:9/x", "--profile", "identity", "--identity-keys", "/nonexistent/keys"], "--identity-keys"),
    (["buyer", "--cmd", "true"], "{url}"),
    (["buyer", "--cmd", "true {url}", "--timeout", "0"], "--timeout"),
    (["buyer", "--cmd", "true {url}", "--post-cmd", "true {url}"], "--post-cmd"),
    (["principal", "/etc/hostname/keys"], "principal"),
])
def test_usage_errors_exit_2_with_one_line(args, needle):
    _one_line_usage_error(_run(*args), needle)


def test_a_clean_run_exits_0_and_an_unwritable_report_2(served):
    clean = _run("seller", served.url + "/weather")
    assert clean.returncode == 0, clean.stdout[-2000:]
    unwritable = _run("seller", served.url + "/weather", "--json", "/nonexistent/dir/report.json")
    assert unwritable.returncode == 2 and "cannot write /nonexistent/dir/report.json" in unwritable.stderr, unwritable.stderr
    assert "Traceback" not in unwritable.stderr


async def test_a_failing_target_exits_1():
    async def bad_challenge(request: web.Request) -> web.Response:
        # A 402 with a Payment challenge that does not parse: priced (so the run goes on), non-conformant.
        return web.Response(status=402, headers={"WWW-Authenticate": 'Payment id="x"'}, text="pay")

    app = web.Application()
    app.router.add_route("*", "/x", bad_challenge)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proc = await asyncio.create_subprocess_exec(CLI, "seller", str(server.make_url("/x")),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await server.close()
    assert proc.returncode == 1, (out.decode()[-2000:], err.decode()[-2000:])
    assert FIRST_CHECK.search(out.decode())  # the checks ran: a malformed challenge is the target's failure, not a reason to stop


# -- 2. an unreachable or unpriced target: one message, exit 2 ----------------------------------

def test_a_dead_port_stops_at_once():
    port = _dead_port()
    _one_line_usage_error(_run("seller", f"http://127.0.0.1:{port}/x", "--profile", "full", "--pay-with", 'static:{"t": 1}'),
                          "cannot reach", f"127.0.0.1:{port}")


def test_an_unknown_host_stops_at_once():
    _one_line_usage_error(_run("seller", "http://mpp-conformance-nonexistent.invalid/x", timeout=60), "cannot reach")


def test_discover_on_a_dead_port_stops_at_once():
    _one_line_usage_error(_run("seller", "--discover", f"http://127.0.0.1:{_dead_port()}"), "cannot reach", "openapi.json")


def test_an_unpriced_url_stops_at_once(served):
    _one_line_usage_error(_run("seller", served.url + "/openapi.json"), "not priced", "HTTP 200")


async def test_discover_stops_before_any_check_when_a_listed_route_is_not_priced():
    async def openapi(request: web.Request) -> web.Response:
        op = {"get": {"x-payment-info": {"offers": []}}}
        return web.json_response({"openapi": "3.1.0", "paths": {"/priced": op, "/free": op}})

    async def priced(request: web.Request) -> web.Response:
        return web.Response(status=402, headers={"WWW-Authenticate": 'Payment id="x"', "Cache-Control": "no-store"})

    async def free(request: web.Request) -> web.Response:
        return web.Response(text="free")

    app = web.Application()
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/priced", priced)
    app.router.add_get("/free", free)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proc = await asyncio.create_subprocess_exec(CLI, "seller", "--discover", str(server.make_url("")).rstrip("/"),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await server.close()
    _one_line_usage_error(subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode()), "/free is not priced")


# -- 3. --help says how to pay -------------------------------------------------------------------

def test_seller_help_says_how_to_pay_a_seller_not_on_ledger():
    out = _run("seller", "--help").stdout
    assert "static:" in out and "not `ledger`" in out and "core profile" in out, out
    assert "--as owner" in out and "Exit status" in out and "2 bad usage" in out, out
    assert "seller --help" in _run("--help").stdout


# -- 4. the signed receipt's kid -------------------------------------------------------------------

async def test_signed_receipt_names_the_real_kid(served):
    async with aiohttp.ClientSession() as session:
        async with session.get(served.url + "/.well-known/jwks.json") as resp:
            kids = {k["kid"] for k in (await resp.json())["keys"]}
    check = [c for c in checks_for("full") if c.id == "full.signed-receipt"]
    [result] = await run_checks(check, served.url + "/weather", {"pay_with": f"ledger:{served.home}/agent"})
    assert result.verdict is Verdict.PASS, result.message
    assert any(f"kid {kid!r}" in result.message for kid in kids), (result.message, kids)


# -- 5. what the payer cannot pay is a skip naming the payer's reason ------------------------------

@pytest.mark.parametrize("pay_with, reason", [
    ('static:{"payload": {"t": 1}, "method": "nosuch"}', "answers method 'nosuch' only"),
    ("ledger:{home}/agent", "exceeds --max-amount 1"),
])
async def test_a_payer_that_cannot_pay_skips_every_paying_check(served, pay_with, reason):
    full = [c for c in checks_for("full") if c.profile == "full"]
    results = await run_checks(full, served.url + "/weather",
                               {"pay_with": pay_with.replace("{home}", str(served.home)), "max_amount": 1, "other_url": served.url + "/quote"})
    assert all(r.verdict is Verdict.SKIP for r in results), [(r.check_id, r.verdict, r.message) for r in results]
    assert sum(reason in r.message for r in results) >= 6, [r.message for r in results]


# -- 6. --discover against `mpp init`'s own seller passes, skipping what the wallet cannot pay -----

def _discover_full(seller, report: Path) -> tuple[subprocess.CompletedProcess, dict[str, list[dict]]]:
    proc = _run("seller", "--discover", seller.url, "--profile", "full", "--pay-with", f"ledger:{seller.home / 'agent'}",
                "--json", str(report), timeout=300)
    by_route: dict[str, list[dict]] = {}
    if report.exists():
        for r in json.loads(report.read_text())["results"]:
            by_route.setdefault(r["target"].rsplit("/", 1)[1], []).append(r)
    return proc, by_route


def test_discover_against_the_mpp_init_seller_passes_with_skips(mpp_init_home: Path, tmp_path: Path):
    """The `mpp init` agent is mandate-bound: its bare payments are refused mandate-required, and
    /agent-report and /big-report require identity; both are the payer's limitation, skipped with the way out."""
    seller = start_seller(mpp_init_home)
    try:
        proc, by_route = _discover_full(seller, tmp_path / "r.json")
    finally:
        assert "Traceback" not in stop_seller(seller)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert {"weather", "agent-report", "complete", "stream"} <= set(by_route)
    for route, results in by_route.items():
        assert not [r for r in results if r["verdict"] in ("fail", "error")], (route, results)
        paid = next(r for r in results if r["id"] == "full.paid-success")
        assert paid["verdict"] == "skip" and "the payer's limitation" in paid["message"], paid
        slug = "identity-required" if route in ("agent-report", "big-report") else "mandate-required"
        assert slug in paid["message"], paid
    assert "--as owner" in next(r for r in by_route["weather"] if r["id"] == "full.paid-success")["message"]


def test_discover_against_a_seller_where_the_key_owns_its_account(home: Path, tmp_path: Path):
    """With the key an owner of acct:buyer the full checks run and pay; only the identity route skips."""
    seller = start_seller(home)
    try:
        proc, by_route = _discover_full(seller, tmp_path / "r.json")
    finally:
        assert "Traceback" not in stop_seller(seller)
    assert proc.returncode == 0, proc.stdout[-4000:]
    verdict = {route: {r["id"]: r["verdict"] for r in results} for route, results in by_route.items()}
    for route in ("weather", "quote", "summarize", "complete", "stream"):
        assert verdict[route]["full.paid-success"] == "pass", (route, verdict[route])
    assert verdict["agent-report"]["full.paid-success"] == "skip"
