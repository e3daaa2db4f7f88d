"""The `full` conformance profile (the checks that pay) against our own seller, over HTTP, paying
with the `mpp init` wallet (`--pay-with ledger:DIR`); the `static:` payer against a seller whose
test rail accepts a fixed payload; the payer specs; and teeth: a seller broken in one way fails
the check written for that way."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from _static_rail import STATIC_PAYLOAD, static_seller_app
from broken_sellers import short_lived_challenges
from conftest import start_seller, stop_seller
from mpp import parse_credential
from mpp.cli.serve import HEADER_LIMITS, build_seller_app
from mpp.cli.config import load_seller_config
from mpp_conformance.cli import main as conformance_main
from mpp_conformance.framework import Verdict, checks_for, run_checks
from mpp_conformance.paying import CannotPay, LedgerPayer, StaticPayer, payer_from_spec

FULL_IDS = {
    "full.paid-success", "full.replay", "full.concurrent-replay", "full.other-route", "full.other-query",
    "full.other-method", "full.changed-body", "full.idempotency-retry", "full.signed-receipt", "full.ledger-payload",
    "full.receipt-fields", "core.body-digest", "full.replay-answer", "full.other-field",
}
CREDENTIAL_LEAK = re.compile(r"Payment eyJ|eyJjaGFsbGVuZ2Ui")
BODY = b"Agents buy from services; every purchase is signed."
WEATHER, SUMMARIZE = 25, 250  # prices of the `mpp init` routes


@pytest.fixture
def home(home: Path) -> Path:
    """The shared home with challenges of CHALLENGE_TTL seconds, so core.expired-challenge runs, and quickly."""
    short_lived_challenges(home)
    return home


def _full():
    """The paying checks, and core.body-digest (whether a body is bound at all: full.changed-body
    tests the binding only where there is one)."""
    return [c for c in checks_for("full") if c.profile == "full" or c.id == "core.body-digest"]


def _options(pay_with: str | None, method: str = "GET", data: bytes | None = None, **more) -> dict:
    return {"method": method, "data": data, "pay_with": pay_with, "concurrency": 20, **more}


def _verdicts(results) -> dict[str, Verdict]:
    return {r.check_id: r.verdict for r in results}


def _report(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results)


def _requirement_ids() -> set[str]:
    return {r["id"] for r in json.loads((Path(__file__).resolve().parents[2] / "spec" / "requirements.json").read_text())}


def test_full_checks_registered_with_real_requirement_ids():
    checks = _full()
    assert {c.id for c in checks} == FULL_IDS
    assert {c.id for c in checks_for("full")} >= FULL_IDS | {"core.challenge-well-formed"}  # full includes core
    known = _requirement_ids()
    for c in checks:
        assert c.requirements and set(c.requirements) <= known, (c.id, set(c.requirements) - known)


# -- our seller, paid with the `mpp init` wallet ------------------------------------------

async def test_full_profile_on_get(served):
    balance = served.ledger().balance("acct:buyer")
    start = time.perf_counter()
    results = await run_checks(_full(), served.url + "/weather",
                               _options(f"ledger:{served.home}/agent", other_url=served.url + "/quote"))
    elapsed = time.perf_counter() - start
    verdicts = _verdicts(results)
    skipped = {"full.other-method", "full.changed-body", "full.idempotency-retry", "core.body-digest"}
    assert all(verdicts[i] is Verdict.PASS for i in FULL_IDS - skipped), _report(results)
    assert all(verdicts[i] is Verdict.SKIP for i in skipped), _report(results)
    notes = {r.check_id: r.message for r in results}
    assert "405" in notes["full.other-method"]  # the path has no POST: nothing to pay for there
    assert "19" in notes["full.concurrent-replay"]
    # Paid exactly once in paid-success, signed-receipt, ledger-payload, replay, concurrent-replay, and after
    # the refusals of other-route and other-query (the genuine credential); the refused credentials cost nothing.
    assert served.ledger().balance("acct:buyer") == balance - 10 * WEATHER  # and once each in receipt-fields, replay-answer, other-field
    assert elapsed < 5, f"the full checks took {elapsed:.1f} s against a local seller"


async def test_full_profile_on_post_with_body(served):
    balance = served.ledger().balance("acct:buyer")
    results = await run_checks(_full(), served.url + "/summarize",
                               _options(f"ledger:{served.home}/agent", "POST", BODY, other_url="GET " + served.url + "/weather"))
    verdicts = _verdicts(results)
    assert all(verdicts[i] is Verdict.PASS for i in FULL_IDS - {"full.other-method"}), _report(results)
    assert verdicts["full.other-method"] is Verdict.SKIP, _report(results)
    # paid-success, signed-receipt, ledger-payload, replay, concurrent-replay, idempotency-retry, and other-route,
    # other-query and changed-body after their refusals: one charge each, none for the idempotent retry
    assert served.ledger().balance("acct:buyer") == balance - 12 * SUMMARIZE  # and once each in receipt-fields, replay-answer, other-field


def _add_route(home: Path, method: str, path: str, amount: int) -> None:
    with (home / "seller.toml").open("a") as fh:
        fh.write(f'\n[[routes]]\nmethod = "{method}"\npath = "{path}"\namount = {amount}\ncurrency = "usd"\n'
                 'response = { "same" = "path, other method" }\n')


async def test_other_method_is_checked_where_both_methods_are_priced(home: Path):
    _add_route(home, "POST", "/weather", 30)
    seller = start_seller(home)
    try:
        for method, data in (("GET", None), ("POST", BODY)):
            [result] = await run_checks([c for c in _full() if c.id == "full.other-method"], seller.url + "/weather",
                                        _options(f"ledger:{home}/agent", method, data))
            assert result.verdict is Verdict.PASS, result.message
            assert "invalid-challenge" in result.message
    finally:
        assert "Traceback" not in stop_seller(seller)


async def test_quote_above_max_amount_is_not_paid(served):
    balance = served.ledger().balance("acct:buyer")
    results = await run_checks([c for c in _full() if c.id in ("full.paid-success", "full.replay")],
                               served.url + "/premium-report", _options(f"ledger:{served.home}/agent", max_amount=1000))
    for r in results:
        assert r.verdict is Verdict.SKIP, _report(results)
        assert "exceeds --max-amount 1000" in r.message and "5000" in r.message
    assert served.ledger().balance("acct:buyer") == balance


async def test_without_pay_with_the_full_checks_skip(served):
    results = await run_checks([c for c in _full() if c.profile == "full"], served.url + "/weather", _options(None))
    assert all(r.verdict is Verdict.SKIP and "--pay-with" in r.message for r in results), _report(results)


def test_cli_full_profile_exits_zero(served, tmp_path: Path):
    report = tmp_path / "full.json"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mpp-conformance")), "seller", served.url + "/weather", "--profile", "full",
         "--pay-with", f"ledger:{served.home}/agent", "--other-url", served.url + "/quote", "--json", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["id"]: r for r in json.loads(report.read_text())["results"]}
    assert FULL_IDS <= set(results)
    assert results["full.other-route"]["verdict"] == "pass"
    assert any(i.startswith("core.") for i in results)
    assert CREDENTIAL_LEAK.search(report.read_text()) is None
    assert CREDENTIAL_LEAK.search(proc.stdout) is None


@pytest.mark.parametrize("spec", ["bogus:x", "ledger:", "static:not json", "static:[1]", "static:@/nonexistent/file"])
def test_cli_refuses_a_bad_pay_with(spec: str, capsys):
    with pytest.raises(SystemExit) as exc:
        conformance_main(["seller", "http://127.0.0.1:9/x", "--profile", "full", "--pay-with", spec])
    assert "--pay-with" in str(exc.value)


# -- the static payer, against a seller whose test rail accepts one fixed payload ---------

async def _static_results(pay_with: str, ids: set[str] | None = None):
    app, _ = static_seller_app()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        checks = [c for c in _full() if ids is None or c.id in ids]
        return await run_checks(checks, str(server.make_url("/thing")), _options(pay_with))
    finally:
        await server.close()


async def test_static_payer_pays_a_test_rail():
    results = await _static_results("static:" + json.dumps(STATIC_PAYLOAD))
    verdicts = _verdicts(results)
    for cid in ("full.paid-success", "full.replay", "full.concurrent-replay", "full.other-query"):
        assert verdicts[cid] is Verdict.PASS, _report(results)
    assert verdicts["full.other-route"] is Verdict.SKIP  # no --other-url


async def test_static_payer_wrapper_shape_and_file(tmp_path: Path):
    path = tmp_path / "payload.json"
    path.write_text(json.dumps({"payload": STATIC_PAYLOAD, "source": "did:example:tester", "method": "test"}))
    [result] = await _static_results(f"static:@{path}", {"full.paid-success"})
    assert result.verdict is Verdict.PASS, result.message
    [result] = await _static_results(json.dumps({"payload": STATIC_PAYLOAD, "method": "ledger"}).join(["static:", ""]),
                                     {"full.paid-success"})
    assert result.verdict is Verdict.SKIP and "'ledger' only" in result.message


async def test_wrong_static_payload_fails_saying_what_the_target_did():
    [result] = await _static_results('static:{"token": "wrong"}', {"full.paid-success"})
    assert result.verdict is Verdict.FAIL
    assert "HTTP 402 verification-failed" in result.message, result.message
    assert "wrong" not in result.message  # the payload never reaches a message


def test_payer_specs(home: Path):
    payer = payer_from_spec(f"ledger:{home}/agent")
    assert isinstance(payer, LedgerPayer) and payer.max_amount == 10_000 and payer.account == "acct:buyer"
    assert payer_from_spec(f"ledger:{home}/agent", max_amount=5).max_amount == 5
    plain = payer_from_spec('static:{"token": "test"}')
    assert isinstance(plain, StaticPayer) and plain.payload == {"token": "test"} and plain.source is None
    wrapped = payer_from_spec('static:{"payload": {"token": "test"}, "source": "did:example:x"}')
    assert wrapped.payload == {"token": "test"} and wrapped.source == "did:example:x"
    # "payload" beside other members is a payload member, not the wrapper
    odd = payer_from_spec('static:{"payload": {"a": 1}, "nonce": "n"}')
    assert odd.payload == {"payload": {"a": 1}, "nonce": "n"}
    for bad in ("", "ledger", "ledger:", "wallet:/x", f"ledger:{home}/nowhere", "static:", "static:{", "static:42",
                'static:{"payload": {}, "source": 7}', "static:@" + str(home / "missing.json")):
        with pytest.raises(ValueError):
            payer_from_spec(bad)
    with pytest.raises(ValueError):
        payer_from_spec(f"ledger:{home}/agent", max_amount=-1)


def test_static_payer_echoes_the_challenge_as_received():
    from mpp import Challenge, b64url_encode, canonical_json

    challenge = Challenge(id="abc", realm="r", method="test", intent="charge", expires="2099-01-01T00:00:00Z",
                          request=b64url_encode(canonical_json({"amount": "1", "currency": "usd", "recipient": "x"})),
                          opaque=b64url_encode(canonical_json({"nonce": "n", "resource": "GET /"})), description="d")
    value = payer_from_spec('static:{"payload": {"token": "test"}, "source": "did:example:x"}').authorize(challenge)
    credential = parse_credential(value)
    assert credential.challenge == challenge and credential.payload == {"token": "test"} and credential.source == "did:example:x"
    with pytest.raises(CannotPay):
        payer_from_spec('static:{"payload": {}, "method": "other"}').authorize(challenge)


# -- teeth: a seller broken on purpose fails the check written for its fault ---------------

def _no_route_binding(seller) -> None:
    """Verify against the resource the credential claims, not the one requested."""
    original = seller.core.verify

    def verify(header, info, now):
        try:
            claimed = (parse_credential(header).challenge.opaque_json or {}).get("resource", "")
            method, _, target = claimed.partition(" ")
            path, _, query = target.partition("?")
            info = dataclasses.replace(info, method=method, path=path, query=query)
        except Exception:  # noqa: BLE001 - malformed: left to the real verify
            pass
        return original(header, info, now)
    seller.core.verify = verify


def _query_dropped(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):  # a proxy that strips the query before the payment layer
        if request.rel_url.query_string:
            request = request.clone(rel_url=request.rel_url.with_query(None))
        return await handler(request)
    app.middlewares.insert(0, fault)


def _claim_always(seller) -> None:
    """The store records the first use but never refuses a later one (and tolerates the repeats)."""
    from mpp.stores.payments import StateError

    store = seller.store

    def tolerant(original):
        async def call(*args, **kwargs):
            try:
                return await original(*args, **kwargs)
            except StateError:
                return None
        return call

    claim = tolerant(store.claim)

    async def always(challenge_id, *, resource, idempotency_key):
        await claim(challenge_id, resource=resource, idempotency_key=idempotency_key)
        return True
    store.claim, store.mark, store.mark_settled = always, tolerant(store.mark), tolerant(store.mark_settled)
    seller.engine.books.clear()  # the claim made by the store, not inside a book's one transaction


def _public_receipts(app: web.Application) -> None:
    async def fault(request, response):  # runs after the seller's own hook
        if "Payment-Receipt" in response.headers:
            response.headers["Cache-Control"] = "public, max-age=60"
    app.on_response_prepare.append(fault)


def _no_digest_check(seller) -> None:
    import mpp.engine.core

    mpp.engine.core.verify_content_digest = lambda expected, body: None


def _no_digest_issued(seller) -> None:
    original = seller.core.issuer.issue
    seller.core.issuer.issue = lambda **kw: original(**{**kw, "digest": None})


def _replay_unmarked(app: web.Application) -> None:
    async def fault(request, response):
        response.headers.popall("Idempotent-Replayed", None)
    app.on_response_prepare.append(fault)


def _replay_charges_again(app: web.Application) -> None:
    @web.middleware
    async def fault(request, handler):  # replays answer with a receipt of another reference
        resp = await handler(request)
        if resp.headers.get("Idempotent-Replayed") == "true":
            from mpp import format_receipt, parse_receipt

            receipt = parse_receipt(resp.headers["Payment-Receipt"])
            resp.headers["Payment-Receipt"] = format_receipt(receipt.model_copy(update={"reference": "second-charge"}))
        return resp
    app.middlewares.insert(0, fault)


GET, POST = ("GET", None), ("POST", BODY)
FAULTS = {
    "no-route-binding": (None, _no_route_binding, GET, {"full.other-route", "full.other-query", "full.other-method"}),
    "query-dropped": (_query_dropped, None, GET, {"full.other-query"}),
    "challenge-reusable": (None, _claim_always, GET, {"full.replay", "full.concurrent-replay"}),
    "public-receipts": (_public_receipts, None, GET, {"full.paid-success"}),  # one result per cause
    "no-digest-check": (None, _no_digest_check, POST, {"full.changed-body"}),
    "no-digest-issued": (None, _no_digest_issued, POST, {
        "core.body-digest", "full.paid-success", "full.replay", "full.replay-answer", "full.concurrent-replay", "full.other-field",
        "full.idempotency-retry",
        "full.signed-receipt", "full.ledger-payload", "full.receipt-fields",
        # the genuine credential these send after their refusal cannot pay either (CORE-ONCE-04's probe)
        "full.other-route", "full.other-query", "full.other-method"}),
    "replay-unmarked": (_replay_unmarked, None, POST, {"full.idempotency-retry"}),
    "replay-charges-again": (_replay_charges_again, None, POST, {"full.idempotency-retry"}),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_each_check_catches_its_fault(home: Path, fault: str, monkeypatch):
    import mpp.engine.core

    monkeypatch.setattr(mpp.engine.core, "verify_content_digest", mpp.engine.core.verify_content_digest)  # restored after
    break_app, break_seller, (method, data), expected = FAULTS[fault]
    _add_route(home, "POST", "/weather", 30)
    _add_route(home, "GET", "/summarize", 30)
    app, seller = build_seller_app(load_seller_config(home / "seller.toml"))
    if break_app is not None:
        break_app(app)
    if break_seller is not None:
        break_seller(seller)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)
    path, other = ("/weather", "/quote") if method == "GET" else ("/summarize", "POST " + str(server.make_url("/weather")))
    try:
        results = await run_checks(_full(), str(server.make_url(path)),
                                   _options(f"ledger:{home}/agent", method, data,
                                            other_url=other if " " in other else str(server.make_url(other))))
    finally:
        await server.close()
    assert not [r for r in results if r.verdict is Verdict.ERROR], _report(results)
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    assert failed == expected, f"fault {fault}: expected {sorted(expected)} to fail, got:\n{_report(results)}"
    messages = {r.check_id: r.message for r in results}
    if fault == "no-digest-issued":
        assert "carries no digest" in messages["core.body-digest"]
        assert "core.body-digest" in messages["full.changed-body"]  # a skip that names the check about it
    if fault in ("no-route-binding", "query-dropped"):
        assert "the target accepted it (HTTP 200" in messages["full.other-query"]
    if fault == "challenge-reusable":
        assert "succeeded" in messages["full.concurrent-replay"]
    for r in results:
        assert CREDENTIAL_LEAK.search(r.message) is None
