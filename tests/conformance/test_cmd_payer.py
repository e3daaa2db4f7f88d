"""`--pay-with cmd:PROGRAM`: a program of the user's answers each challenge with the credential's
payload (tests/conformance/_cmd_payer.py answers the test method of _static_rail.py). It pays the
full profile as `static:` does, is asked about the next challenge when it declines one (exit 3),
and a program that fails, prints garbage or hangs errs the check with one clear message."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from _static_rail import STATIC_PAYLOAD, StaticTestRail, static_seller_app
from mpp import Challenge, b64url_encode, canonical_json, parse_credential
from mpp_conformance.cli import main as conformance_main
from mpp_conformance.framework import Verdict, checks_for, run_checks
from mpp_conformance.paying import CannotPay, CommandPayer, PayerFailed, payer_from_spec

PROGRAM = Path(__file__).with_name("_cmd_payer.py")


def _cmd(mode: str = "pay") -> str:
    return "cmd:" + shlex.join([sys.executable, str(PROGRAM), mode])


def _full():
    return [c for c in checks_for("full") if c.profile == "full"]


def _report(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results)


async def _run(pay_with: str, ids: set[str] | None = None, *, app: web.Application | None = None, **options):
    app = app or static_seller_app()[0]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        checks = [c for c in _full() if ids is None or c.id in ids]
        return await run_checks(checks, str(server.make_url("/thing")),
                                {"method": "GET", "data": None, "pay_with": pay_with, "concurrency": 5, **options})
    finally:
        await server.close()


async def test_a_program_pays_the_full_profile_as_static_does():
    by_cmd = await _run(_cmd())
    by_static = await _run("static:" + json.dumps(STATIC_PAYLOAD))
    verdicts = {r.check_id: r.verdict for r in by_cmd}
    assert verdicts == {r.check_id: r.verdict for r in by_static}, _report(by_cmd) + "\n--\n" + _report(by_static)
    for cid in ("full.paid-success", "full.replay", "full.concurrent-replay", "full.other-query", "full.signed-receipt"):
        assert verdicts[cid] is Verdict.PASS, _report(by_cmd)
    assert not any(r.verdict in (Verdict.FAIL, Verdict.ERROR) for r in by_cmd), _report(by_cmd)


async def test_a_declined_challenge_asks_about_the_next():
    """The target offers `other` first, then `test`: the program declines the first (exit 3) and pays the second."""
    [result] = await _run(_cmd(), {"full.paid-success"}, app=_two_method_app())
    assert result.verdict is Verdict.PASS, result.message
    assert "test receipt" in result.message


def _two_method_app() -> web.Application:
    import secrets

    from mpp.aio.seller import Seller
    from mpp.protocol.keys import SigningKey
    from mpp.pricing.prices import Price
    from mpp.stores.payments import SqlitePaymentStore

    class OtherRail(StaticTestRail):
        name = "other"

    seller = Seller(realm="static.test", secret=secrets.token_bytes(32), receipt_key=SigningKey.generate(),
                    rails=[OtherRail(), StaticTestRail()], store=SqlitePaymentStore(":memory:"))

    async def thing(request: web.Request) -> web.Response:
        return web.json_response({"thing": "paid for"})

    app = web.Application()
    seller.add_route(app.router, "GET", "/thing", thing, Price(7, "usd", "a test thing"))
    seller.setup(app)
    return app


async def test_a_program_that_declines_everything_skips():
    app = static_seller_app(rail=type("OnlyOther", (StaticTestRail,), {"name": "other"})())[0]
    [result] = await _run(_cmd(), {"full.paid-success"}, app=app)
    assert result.verdict is Verdict.SKIP, result.message
    assert "declined (exit 3) every challenge offered: other/charge" in result.message


@pytest.mark.parametrize("mode, says", [
    ("fail", r"exited with status 1 on a test/charge challenge .*stderr: cannot sign: no key configured for this payer"),
    ("garbage", r"exited 0 but printed \d+ bytes that are not a JSON object on stdout; it must print the credential's payload"),
    ("hang", r"gave no answer within 1 s for a test/charge challenge and was stopped \(--pay-timeout\)"),
])
async def test_a_failing_program_errs_the_check_clearly(mode: str, says: str):
    results = await _run(_cmd(mode), {"full.paid-success", "full.replay"}, pay_timeout=1)
    for r in results:
        assert r.verdict is Verdict.ERROR, _report(results)
        # named by the program and its script, without its other arguments
        assert re.match(r"--pay-with cmd: the program 'python[0-9.]* _cmd_payer.py' ", r.message), r.message
        assert mode not in r.message.split("'")[1]
        assert re.search(says, r.message), r.message
        assert "Traceback" not in r.message and "not JSON" not in r.message  # never its stdout


def test_cmd_specs(tmp_path: Path):
    payer = payer_from_spec(_cmd(), timeout=2)
    assert isinstance(payer, CommandPayer) and payer.timeout == 2 and payer.argv[1] == str(PROGRAM)
    # arguments may hold a token: neither the repr nor the description shows them
    assert "argv" not in repr(payer) and "'pay'" not in repr(payer) and str(PROGRAM) not in payer.description
    for bad in ("cmd:", "cmd:   ", "cmd:'unbalanced", "cmd:/nonexistent/payer --key secret"):
        with pytest.raises(ValueError) as exc:
            payer_from_spec(bad)
        assert "--pay-with cmd" in str(exc.value) and "secret" not in str(exc.value)
    with pytest.raises(ValueError):
        payer_from_spec(_cmd(), timeout=0)


def test_the_program_reads_the_challenge_and_its_payload_is_wrapped():
    challenge = Challenge(id="abc", realm="r", method="test", intent="charge", expires="2099-01-01T00:00:00Z",
                          request=b64url_encode(canonical_json({"amount": "7", "currency": "usd", "recipient": "x"})),
                          opaque=b64url_encode(canonical_json({"nonce": "n"})), description="d", digest="sha-256=:x:")
    payer = payer_from_spec(_cmd())
    value = payer.authorize(challenge, url="http://127.0.0.1:9/thing", http_method="GET")
    credential = parse_credential(value)
    assert credential.challenge == challenge and credential.payload == STATIC_PAYLOAD
    assert credential.source == "did:example:cmd-payer"
    with pytest.raises(CannotPay):
        payer.authorize(challenge.model_copy(update={"method": "other"}), url="http://x/", http_method="GET")
    with pytest.raises(PayerFailed):  # the program asserts that it got the url and HTTP method
        payer.authorize(challenge)


def test_cli_refuses_a_program_that_is_not_there(capsys):
    with pytest.raises(SystemExit) as exc:
        conformance_main(["seller", "http://127.0.0.1:9/x", "--profile", "full", "--pay-with", "cmd:/nonexistent/payer"])
    assert exc.value.code == 2 and "is not an executable program" in str(exc.value)
