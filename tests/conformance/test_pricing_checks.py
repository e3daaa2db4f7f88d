"""The `pricing` conformance profile against our own seller, served from a price list as `mpp seller
serve` serves it (seller.toml `price_list`), paying with the `mpp init` wallet; and teeth: the
same seller with its grant checks or its seat accounting broken fails the checks written for them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from _adapters import ADAPTERS, served_in_process
from mpp.cli.serve import HEADER_LIMITS
from mpp_conformance.framework import Verdict, checks_for, run_checks

PRICES = """\
version = "conf-1"
currency = "usd"

[[routes]]
method = "GET"
path = "/feed"

  [[routes.offers]]
  model = "transaction"
  amount = 20

  [[routes.offers]]
  model = "seat"
  plan = "daily"
  amount = 400
  period_unit = "day"
  covers = ["GET /feed/extra"]

[[routes]]
method = "GET"
path = "/feed/extra"

  [[routes.offers]]
  model = "transaction"
  amount = 5

[[routes]]
method = "POST"
path = "/jobs"

  [[routes.offers]]
  model = "task"
  amount = 300
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result"]
  grant_ttl = 600
  refund = "full"
"""

PRICING_IDS = {"pricing.offers-name-their-price-list", "pricing.discovery-lists-the-offers", "pricing.follow-up-needs-a-grant",
               "pricing.forged-grant-refused", "pricing.task-bought-once", "pricing.seat-once-per-period"}


def _pricing_checks():
    return [c for c in checks_for("pricing") if c.profile == "pricing"]


def _report(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results)


def _listed_home(home: Path) -> Path:
    (home / "prices.toml").write_text(PRICES)
    config = home / "seller.toml"
    config.write_text(config.read_text().replace('audit_log = ', 'price_list = "prices.toml"\naudit_log = ', 1))
    assert 'price_list = "prices.toml"' in config.read_text()
    return home


async def _run(home: Path, path: str, method: str, break_seller=None, adapter: str = "aiohttp"):
    server, seller = served_in_process(home, adapter)
    if break_seller is not None:
        break_seller(seller)
    await server.start_server(**HEADER_LIMITS)
    try:
        return await run_checks(_pricing_checks(), str(server.make_url(path)),
                                {"method": method, "data": None, "pay_with": f"ledger:{home}/agent"})
    finally:
        await server.close()


def test_the_profile_registers_its_checks():
    assert {c.id for c in _pricing_checks()} == PRICING_IDS
    assert all(c.requirements and all(r.startswith("PRICE-") for r in c.requirements) for c in _pricing_checks())


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_task_route_passes(home: Path, adapter: str):
    """PRICE-MODEL-03, PRICE-MODEL-04, PRICE-TASK-01..03, PRICE-GRANT-01..04: a task route of our seller
    passes every pricing check that applies; the seat check says it does not apply."""
    results = await _run(_listed_home(home), "/jobs", "POST", adapter=adapter)
    verdicts = {r.check_id: r.verdict for r in results}
    assert verdicts["pricing.seat-once-per-period"] is Verdict.SKIP, _report(results)
    assert all(v is Verdict.PASS for cid, v in verdicts.items() if cid != "pricing.seat-once-per-period"), _report(results)


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_seat_route_passes(home: Path, adapter: str):
    """PRICE-SEAT-01, PRICE-SEAT-03, PRICE-SEAT-05, PRICE-SEAT-06: a seat route passes; the task checks do not apply."""
    results = await _run(_listed_home(home), "/feed", "GET", adapter=adapter)
    verdicts = {r.check_id: r.verdict for r in results}
    task_checks = {"pricing.follow-up-needs-a-grant", "pricing.forged-grant-refused", "pricing.task-bought-once"}
    assert all(verdicts[c] is Verdict.SKIP for c in task_checks), _report(results)
    assert all(v is Verdict.PASS for cid, v in verdicts.items() if cid not in task_checks), _report(results)


async def test_without_a_price_list_the_profile_skips(home: Path):
    """A route priced inline (no price list) has no pricing member: every pricing check skips, none fails."""
    server, _ = served_in_process(home, "aiohttp")
    await server.start_server(**HEADER_LIMITS)
    try:
        results = await run_checks(_pricing_checks(), str(server.make_url("/weather")),
                                   {"method": "GET", "data": None, "pay_with": f"ledger:{home}/agent"})
    finally:
        await server.close()
    assert {r.verdict for r in results} == {Verdict.SKIP}, _report(results)


def _accept_any_grant(token, keys, *, realm, agent, now, task_id=None, route=None):
    """A broken seller's grant check: reads the claims and trusts them, signature, agent, task and route unchecked."""
    import jwt

    from mpp.pricing import Grant

    c = jwt.decode(token, options={"verify_signature": False})
    return Grant(c["jti"], c["kind"], c["sub"], c["aud"], datetime.fromtimestamp(c["iat"], timezone.utc),
                 datetime.fromtimestamp(c["exp"], timezone.utc), tuple(c.get("routes", ())), c.get("priceList", ""),
                 c.get("challengeId", ""), c.get("task"), c.get("subscriptionId"), c.get("plan"), c.get("period"), token)


@pytest.mark.parametrize("fault, path, method, expected", [
    ("grants-unchecked", "/jobs", "POST", {"pricing.forged-grant-refused", "pricing.task-bought-once"}),
    ("seat-paid-twice", "/feed", "GET", {"pricing.seat-once-per-period"}),
    ("proofs-replayable", "/jobs", "POST", {"pricing.task-bought-once"}),
])
async def test_a_broken_seller_fails_the_check_for_its_fault(home: Path, monkeypatch, fault: str, path: str, method: str,
                                                              expected: set[str]):
    """Teeth: a seller that trusts any grant's claims, that never finds a seat period already
    paid, or that forgets the grant proofs it accepted (PRICE-GRANT-06), fails exactly the checks
    written for that."""
    import mpp.engine.offers as seller_module

    if fault == "grants-unchecked":
        monkeypatch.setattr(seller_module, "verify_grant", _accept_any_grant)

    def breaker(seller):
        if fault == "proofs-replayable":
            monkeypatch.setattr(seller.engine.offers._proofs_seen, "admit", lambda grant, proof, now: None)
        if fault == "seat-paid-twice":
            async def never_paid(subscription_id, period, challenge_id):
                return None

            monkeypatch.setattr(seller.pricing_store, "reserve_seat", never_paid)

    results = await _run(_listed_home(home), path, method, break_seller=breaker)
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    assert failed == expected, f"fault {fault}: expected {sorted(expected)} to fail, got:\n{_report(results)}"


@pytest.mark.parametrize("path, method, paying", [("/jobs", "POST", "pricing.task-bought-once"),
                                                  ("/feed", "GET", "pricing.seat-once-per-period")])
async def test_a_mandate_bound_payer_skips_the_purchases(mpp_init_home: Path, path: str, method: str, paying: str):
    """The `mpp init` agent pays only under a mandate: the seller refuses its bare purchase
    mandate-required, the payer's limitation, so the paying check skips with the way out, never fails."""
    results = await _run(_listed_home(mpp_init_home), path, method)
    verdicts = {r.check_id: r.verdict for r in results}
    assert not {Verdict.FAIL, Verdict.ERROR} & set(verdicts.values()), _report(results)
    message = next(r.message for r in results if r.check_id == paying)
    assert verdicts[paying] is Verdict.SKIP and "mandate-required" in message and "--as owner" in message, _report(results)


@pytest.mark.parametrize("path, method, skipped", [("/jobs", "POST", {"pricing.seat-once-per-period"}),
                                                   ("/feed", "GET", {"pricing.follow-up-needs-a-grant",
                                                                     "pricing.forged-grant-refused",
                                                                     "pricing.task-bought-once"})])
def test_the_cli_runs_the_pricing_profile_against_a_served_seller(home: Path, tmp_path: Path, adapter: str, path: str,
                                                                   method: str, skipped: set[str]):
    """`mpp-conformance seller URL --profile pricing` against `mpp seller serve` with a price list, on
    either adapter (--asgi): exit 0, every pricing check passing but those of the other models."""
    import json
    import subprocess
    import sys

    from conftest import ADAPTERS as SERVE_ADAPTERS, REPO, start_seller, stop_seller

    served = start_seller(_listed_home(home), *SERVE_ADAPTERS[adapter])
    try:
        report = tmp_path / "report.json"
        proc = subprocess.run([sys.executable, "-m", "mpp_conformance.cli", "seller", served.url + path, "--profile", "pricing",
                               "--method", method, "--pay-with", f"ledger:{home}/agent", "--json", str(report)],
                              capture_output=True, text=True, cwd=REPO, timeout=240)
    finally:
        err = stop_seller(served)
    assert "Traceback" not in err, err
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdicts = {r["id"]: r["verdict"] for r in json.loads(report.read_text())["results"] if r["id"].startswith("pricing.")}
    assert set(verdicts) == PRICING_IDS
    assert {cid for cid, v in verdicts.items() if v == "skip"} == skipped, verdicts
    assert all(v == "pass" for cid, v in verdicts.items() if cid not in skipped), verdicts
