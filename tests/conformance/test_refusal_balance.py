"""With --pay-with ledger: the payer's balance must not move on a refusal. The suite reads it
(mpp_conformance.balance) around the refused credentials of the binding checks, full.ledger-payload
and core.expired-challenge: a seller that settles before it checks the binding fails at the refusal,
naming the movement; a balance the suite cannot read is a note, never a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broken_sellers import prepare_home, serving
from mpp_conformance.framework import Verdict, checks_for, run_checks

CHECKED = ("full.other-route", "full.other-query", "full.other-method", "full.ledger-payload", "core.expired-challenge")


async def _run(home: Path, variant: str, wallet: Path, **options):
    async with serving(home, variant) as server:
        checks = [c for c in checks_for("full") if c.id in CHECKED]
        return {r.check_id: r for r in await run_checks(checks, str(server.make_url("/weather")), {
            "method": "GET", "data": None, "pay_with": f"ledger:{wallet}", "other_url": str(server.make_url("/quote")),
            "expiry_wait": 5, **options})}


@pytest.fixture
def home(home: Path) -> Path:
    """Priced as broken_sellers.TARGETS has it, with challenges short-lived enough for core.expired-challenge."""
    prepare_home(home)
    return home


def _report(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results.values())


async def test_a_refusal_that_moves_money_fails_naming_the_amount(home: Path):
    results = await _run(home, "settles-before-binding", home / "agent")
    for cid in ("full.other-route", "full.other-query", "full.other-method"):
        r = results[cid]
        assert r.verdict is Verdict.FAIL, _report(results)
        assert "the payer's balance moved by -25 usd (acct:buyer at ledger ledger-" in r.message, r.message
        assert "a refusal must move no money (CORE-ONCE-04)" in r.message
    # refused before the binding is looked at: nothing settled, and each says the balance was compared
    for cid in ("full.ledger-payload", "core.expired-challenge"):
        assert results[cid].verdict is Verdict.PASS, _report(results)
        assert "the payer's balance did not move on the refusals" in results[cid].message


async def test_a_conforming_seller_passes_with_the_balance_compared(home: Path):
    results = await _run(home, "baseline", home / "agent")
    for r in results.values():
        assert r.verdict is Verdict.PASS, _report(results)
        assert "the payer's balance did not move on the refusals (acct:buyer at ledger ledger-" in r.message, r.message


async def test_an_unreadable_balance_is_a_note_never_a_failure(home: Path, tmp_path: Path):
    """A wallet away from its ledger, and no --payer-ledger: nothing to compare, and the messages say so."""
    wallet = tmp_path / "elsewhere" / "agent"
    shutil.copytree(home / "agent", wallet)
    results = await _run(home, "baseline", wallet)
    for r in results.values():
        assert r.verdict is Verdict.PASS, _report(results)
        assert "the payer's balance was not compared: the challenge names ledger 'ledger-" in r.message, r.message
        assert "give --payer-ledger" in r.message
    # --payer-ledger naming another ledger: not read, and said so
    other = tmp_path / "other-home"
    from conftest import owning_home

    owning_home(other)
    results = await _run(home, "baseline", wallet, payer_ledger=str(other / "ledger.db"))
    for r in results.values():
        assert r.verdict is Verdict.PASS, _report(results)
        assert "--payer-ledger: " in r.message and "the challenge names 'ledger-" in r.message, r.message
    # --payer-ledger naming the right one: compared (and, broken, caught)
    results = await _run(home, "settles-before-binding", wallet, payer_ledger=str(home / "ledger.db"))
    assert results["full.other-query"].verdict is Verdict.FAIL
    assert "balance moved by -25 usd" in results["full.other-query"].message


async def test_a_ledger_service_is_read_with_the_wallets_key_where_it_lets_it(home: Path):
    """--payer-ledger http(s)://...: the signed GET /v1/accounts/{id} with the wallet's key. Our service
    answers it only to a seller for its own payee account (LEDGER-SVC-03), so for a buyer's key it
    refuses, and that is a note naming the refusal; where the key may read it, the balance is compared."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from mpp import Challenge, b64url_encode, canonical_json
    from mpp.ledger import SqliteLedger
    from mpp.ledger.service import ledger_app
    from mpp_conformance.balance import read_balance
    from mpp_conformance.framework import CheckContext
    from mpp_conformance.paying import LedgerPayer

    payer = LedgerPayer(str(home / "agent"))
    ledger = SqliteLedger(str(home / "ledger.db"))
    request = {"amount": "25", "currency": "usd", "recipient": "acct:seller", "methodDetails": {"ledger": ledger.ledger_id}}
    challenge = Challenge(id="x", realm="r", method="ledger", intent="charge", request=b64url_encode(canonical_json(request)))
    try:
        for sellers, readable in (({}, False), ({payer.key.did: "acct:buyer"}, True)):
            server = TestServer(ledger_app(ledger, sellers=sellers), host="127.0.0.1")
            await server.start_server()
            try:
                async with aiohttp.ClientSession() as session:
                    ctx = CheckContext("http://127.0.0.1:9/x", session, {"payer_ledger": str(server.make_url(""))})
                    watch = await read_balance(ctx, payer, challenge)
                    if not readable:
                        assert watch.before is None and watch.why_not is not None
                        assert "did not let the payer's key read 'acct:buyer'" in watch.why_not, watch.why_not
                        assert "Unauthenticated" in watch.why_not
                        continue
                    assert watch.why_not is None and watch.before == ledger.balance("acct:buyer") and watch.currency == "usd"
                    await watch.unmoved("nothing")
                    ledger.fund("acct:buyer", 3)
                    with pytest.raises(AssertionError, match=r"nothing: the payer's balance moved by \+3 usd"):
                        await watch.unmoved("nothing")
            finally:
                await server.close()
    finally:
        ledger.close()
