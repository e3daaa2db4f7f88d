"""The `session` conformance profile against our own seller (the `mpp init` home's session-priced
``GET /complete``, served as `mpp seller serve` serves it), paying with the home's wallet; and
teeth: the same seller broken in one way (BREAKERS: a voucher above the cap let through, a stale
voucher taken as the new value, a replayed sequence taken, vouchers served after close,
reservations checked on a snapshot, the cap judged before the signature, later vouchers taken
unsigned) fails the check written for that fault and no other (a check that cannot judge its own
question against such a seller skips, saying which check judges the fault)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ADAPTERS as SERVE_ADAPTERS, REPO, start_seller, stop_seller
from mpp.stores.sqlite import immediate
from _adapters import ADAPTERS, served_in_process
from mpp.cli.serve import HEADER_LIMITS
from mpp_conformance.framework import PROFILES, Verdict, checks_for, run_checks

SESSION_IDS = {
    "session.challenge-request", "session.charge-fallback", "session.open-serves", "session.request-receipt-signed",
    "session.open-other-session-id", "session.open-cap-below-request", "session.voucher-over-cap", "session.stale-voucher",
    "session.voucher-sequence", "session.voucher-other-key", "session.unknown-session", "session.insufficient",
    "session.concurrent-use", "session.close-final-receipt", "session.closed-refuses", "session.endpoint-refuses-open",
    "session.malformed-payload", "session.close-on-route", "session.check-order", "session.idempotency-retry", "session.top-up",
    "session.endpoint-http",
}
TARGET = "/complete?units=4000"  # every request uses maxUnits: cost(maxUnits) = 8, what a request reserves
NEEDS_PAYER = SESSION_IDS - {"session.challenge-request", "session.unknown-session"}


def _session_checks():
    return [c for c in checks_for("session") if c.profile == "session"]


def _report(results) -> str:
    return "\n".join(f"{r.check_id}: {r.verdict.value}: {r.message}" for r in results)


def _requirement_ids() -> set[str]:
    return {r["id"] for r in json.loads((REPO / "spec" / "requirements.json").read_text())}


def test_the_profile_registers_its_checks():
    checks = _session_checks()
    assert {c.id for c in checks} == SESSION_IDS
    assert "session" in PROFILES and {c.id for c in checks_for("session")} >= SESSION_IDS | {"core.challenge-well-formed"}
    known = _requirement_ids()
    for c in checks:
        assert c.level == "extension", c.id
        assert c.requirements and all(r.startswith("SESSION-") for r in c.requirements) and set(c.requirements) <= known, c.id


# -- breakages of the seller's session bookkeeping (one method of one object each) -------------------------

def _accepts_over_cap(seller) -> None:
    """A voucher above the cap is let through instead of refused: taken as a harmless retry (nothing
    recorded; the request is served when the value accepted before covers it)."""
    store = seller.sessions.store
    advance = store.advance

    async def advance_uncapped(session_id, voucher, now):
        state = await store.get(session_id)
        if state is not None and state.status == "open" and voucher.cumulative > state.cap:
            return state
        return await advance(session_id, voucher, now)

    store.advance = advance_uncapped


def _lowers_on_stale(seller) -> None:
    """A voucher below the authorized value replaces it (authorized goes down)."""
    store = seller.sessions.store
    advance = store.advance

    async def advance_to_latest(session_id, voucher, now):
        state = await store.get(session_id)
        if state is not None and state.status == "open" and voucher.cumulative < state.authorized:
            with immediate(store._conn) as c:
                c.execute("UPDATE sessions SET authorized=?, voucher_seq=?, voucher_sig=? WHERE id=?",
                          (max(voucher.cumulative, state.spent), voucher.sequence, voucher.signature, session_id))
            return await store.get(session_id)
        return await advance(session_id, voucher, now)

    store.advance = advance_to_latest


def _ignores_sequence(seller) -> None:
    """A higher voucher is taken whatever its sequence (a replayed or lower sequence included)."""
    store = seller.sessions.store
    advance = store.advance

    async def advance_any_sequence(session_id, voucher, now):
        state = await store.get(session_id)
        if state is not None and state.status == "open" and state.authorized < voucher.cumulative <= state.cap:
            with immediate(store._conn) as c:
                c.execute("UPDATE sessions SET authorized=?, voucher_seq=MAX(voucher_seq, ?), voucher_sig=? WHERE id=?",
                          (voucher.cumulative, voucher.sequence, voucher.signature, session_id))
            return await store.get(session_id)
        return await advance(session_id, voucher, now)

    store.advance = advance_any_sequence


def _serves_after_close(seller) -> None:
    """Close captures, releases and answers its final receipt (the same one to every later close), but
    leaves the session's record open: later vouchers are still accepted and served."""
    desk = seller.sessions
    close = desk.close
    closed: dict[str, object] = {}

    async def close_and_reopen(session_id, *, by):
        if session_id in closed:
            return closed[session_id]
        state = await close(session_id, by=by)
        closed[session_id] = state
        with immediate(desk.store._conn) as c:
            c.execute("UPDATE sessions SET status='open' WHERE id=?", (session_id,))
        return state

    desk.close = close_and_reopen


def _racy_reservations(seller) -> None:
    """A reservation is judged on a snapshot of the session and made later, after a pause, so requests
    checked at the same moment all pass; each is then served, and charged what the authorized value
    still holds (the store refuses to record spent above authorized), its receipt charging the full cost."""
    store = seller.sessions.store
    reserve, commit = store.reserve, store.commit

    async def reserve_later(session_id, request_id, amount, now):
        state = await store.get(session_id)
        if state is None or state.spent + store._held(store._conn, session_id, now) + amount > state.authorized:
            return await reserve(session_id, request_id, amount, now)  # refused as the real seller refuses it
        await asyncio.sleep(0.25)  # wide enough that requests sent together overlap even on a loaded machine
        with immediate(store._conn) as c:
            c.execute("INSERT INTO session_holds(session_id, request_id, amount, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                      (session_id, request_id, amount, store.instance, now.isoformat()))
        return state

    async def commit_what_fits(session_id, request_id, *, amount, **kw):
        state = await store.get(session_id)
        return await commit(session_id, request_id, amount=min(amount, max(0, state.authorized - state.spent)), **kw)

    store.reserve, store.commit = reserve_later, commit_what_fits


def _cap_before_signature(seller) -> None:
    """A later voucher above the cap is refused session-cap-exceeded before its signature is verified
    (the spec's order is signatures, then the cap): a forgery learns the cap, and gets the wrong problem."""
    from mpp.intents.session import SessionCapExceeded

    desk = seller.sessions
    accept = desk.accept

    async def accept_cap_first(call, metered):
        p = call.payload
        if p.action != "open" and p.voucher is not None:
            state = await desk.store.get(call.session_id)
            if state is not None and state.status == "open" and p.voucher.cumulative > max(state.cap, p.cap or 0):
                raise SessionCapExceeded(f"voucher for {p.voucher.cumulative} exceeds the session cap {state.cap}",
                                         sessionId=call.session_id, cap=str(state.cap))
        return await accept(call, metered)

    desk.accept = accept_cap_first


def _signatures_unchecked(seller) -> None:
    """Later vouchers are taken without verifying their signature or their signer (the open's are
    still checked). Our ledger verifies the voucher it is shown at close, so it refuses the capture of
    a session so advanced: the close of such a session fails (logged), which no check judges."""
    import mpp.aio.metering as metering

    desk = seller.sessions
    accept = desk.accept

    async def accept_unsigned(call, metered):
        if call.payload.action != "voucher":
            return await accept(call, metered)
        state = await desk._state_for(call)  # the session's existence and state only
        return await desk.store.advance(state.session_id, call.payload.voucher, seller.clock())

    desk.accept = accept_unsigned
    desk._state_for = _state_ignoring_signer(desk)


def _state_ignoring_signer(desk):
    """SessionDesk._state_for without its signer and terms checks."""
    async def state_for(call):
        state = await desk.store.get(call.session_id)
        if state is None:
            from mpp.intents.session import SessionUnknown

            raise SessionUnknown("no such session at this seller")
        if state.status != "open":
            from mpp.intents.session import SessionClosed

            raise SessionClosed(f"session is {state.status}; open a new one")
        return state

    return state_for


# fault: (breaker, the checks that fail, the checks that skip; every other check passes)
BREAKERS = {
    # session.check-order cannot see an order when one of its two faults is never refused: it skips
    "accepts-over-cap": (_accepts_over_cap, {"session.voucher-over-cap"}, {"session.check-order"}),
    "lowers-authorized-on-stale": (_lowers_on_stale, {"session.stale-voucher"}, set()),
    "ignores-sequence": (_ignores_sequence, {"session.voucher-sequence"}, set()),
    "serves-after-close": (_serves_after_close, {"session.closed-refuses"}, set()),
    "racy-reservations": (_racy_reservations, {"session.concurrent-use"}, set()),
    "cap-before-signature": (_cap_before_signature, {"session.check-order"}, set()),
    # session.check-order cannot see an order when forged vouchers are taken: it skips
    "signatures-unchecked": (_signatures_unchecked, {"session.voucher-other-key"}, {"session.check-order"}),
}
# the faults whose seller logs errors of its own (not an unhandled input): the ledger refusing a capture
LOGS_ERRORS = {"signatures-unchecked"}


async def _run(home: Path, break_seller=None, *, pay: bool = True, path: str = TARGET, adapter: str = "aiohttp"):
    server, seller = served_in_process(home, adapter)
    if break_seller is not None:
        # the breakages are written against the two-step voucher path (advance, then reserve)
        seller.sessions.vouchers_with_reservation = False
        break_seller(seller)
    await server.start_server(**HEADER_LIMITS)
    options = {"method": "GET", "data": None, "concurrency": 10}
    if pay:
        options["pay_with"] = f"ledger:{home}/agent"
    try:
        return await run_checks(_session_checks(), str(server.make_url(path)), options)
    finally:
        await server.close()


def _no_seller_errors(caplog) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(r.getMessage() for r in errors)


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_our_seller_passes_every_session_check(home: Path, caplog, adapter: str):
    """SESSION-REQ-01, SESSION-REQ-02, SESSION-REQ-05, SESSION-REQ-06, SESSION-OPEN-01, SESSION-OPEN-02,
    SESSION-OPEN-03, SESSION-VOUCHER-01..06, SESSION-USE-01..03, SESSION-CLOSE-01, SESSION-CLOSE-02,
    SESSION-RCPT-01..03, SESSION-ERR-01..03: every session check passes against our seller, and every
    session it opened is closed again: the wallet ends with only what was used taken."""
    from mpp.ledger import SqliteLedger

    ledger = SqliteLedger(str(home / "ledger.db"))
    before = ledger.balance("acct:buyer")
    results = await _run(home, adapter=adapter)
    assert {r.check_id for r in results} == SESSION_IDS
    assert all(r.verdict is Verdict.PASS for r in results), _report(results)
    assert ledger.balance("acct:buyer") < before  # the checks paid ...
    assert ledger.check() == [], "the ledger's books do not balance"
    open_holds = [h for h in ledger.sessions.all() if h.status != "closed"]
    ledger.close()
    assert not open_holds, "a session the checks opened was left holding funds"
    _no_seller_errors(caplog)


@pytest.mark.parametrize("fault", sorted(BREAKERS))
async def test_a_broken_seller_fails_the_check_for_its_fault(home: Path, fault: str, caplog):
    """Teeth: each breakage fails exactly the check written for it; every other session check passes."""
    breaker, expected, skipped = BREAKERS[fault]
    results = await _run(home, breaker)
    failed = {r.check_id for r in results if r.verdict is Verdict.FAIL}
    assert failed == expected, f"fault {fault}: expected {sorted(expected)} to fail, got:\n{_report(results)}"
    assert {r.check_id for r in results if r.verdict is Verdict.SKIP} == skipped, _report(results)
    assert all(r.verdict is Verdict.PASS for r in results if r.check_id not in expected | skipped), _report(results)
    if fault not in LOGS_ERRORS:
        _no_seller_errors(caplog)


async def test_without_a_payer_the_paying_checks_skip(home: Path):
    """Without --pay-with the checks that open sessions skip, saying so; the two that need no payment run."""
    results = await _run(home, pay=False)
    verdicts = {r.check_id: r.verdict for r in results}
    assert {c for c, v in verdicts.items() if v is Verdict.PASS} == SESSION_IDS - NEEDS_PAYER, _report(results)
    assert all(verdicts[c] is Verdict.SKIP for c in NEEDS_PAYER), _report(results)
    assert all("--pay-with" in r.message for r in results if r.check_id in NEEDS_PAYER)


async def test_a_route_without_sessions_skips_the_profile(home: Path):
    """A route priced per request offers no session challenge: every session check skips, saying so."""
    results = await _run(home, path="/weather")
    assert {r.verdict for r in results} == {Verdict.SKIP}, _report(results)
    assert all("no ledger/session challenge" in r.message for r in results), _report(results)


async def test_a_static_payer_cannot_open_sessions(home: Path):
    """The static payer signs no vouchers: the session-opening checks skip and name the way out."""
    server, _ = served_in_process(home, "aiohttp")
    await server.start_server(**HEADER_LIMITS)
    try:
        results = await run_checks([c for c in _session_checks() if c.id == "session.open-serves"], str(server.make_url(TARGET)),
                                   {"method": "GET", "data": None, "pay_with": 'static:{"token": "x"}'})
    finally:
        await server.close()
    (result,) = results
    assert result.verdict is Verdict.SKIP and "ledger:WALLET_DIR" in result.message, _report(results)


async def test_a_small_max_amount_skips_rather_than_overspends(home: Path):
    """--max-amount below the session cap the checks hold (4 × cost(maxUnits) = 32): the checks skip."""
    server, _ = served_in_process(home, "aiohttp")
    await server.start_server(**HEADER_LIMITS)
    try:
        results = await run_checks([c for c in _session_checks() if c.id == "session.open-serves"], str(server.make_url(TARGET)),
                                   {"method": "GET", "data": None, "pay_with": f"ledger:{home}/agent", "max_amount": 31})
    finally:
        await server.close()
    (result,) = results
    assert result.verdict is Verdict.SKIP and "--max-amount" in result.message, _report(results)


def test_the_cli_runs_the_session_profile_against_a_served_seller(home: Path, tmp_path: Path, adapter: str):
    """`mpp-conformance seller URL --profile session --pay-with ledger:DIR` against `mpp seller serve`:
    exit 0, every check of core and session passing or skipping, and no credential in the JSON report."""
    served = start_seller(home, *SERVE_ADAPTERS[adapter])
    try:
        report = tmp_path / "report.json"
        proc = subprocess.run([sys.executable, "-m", "mpp_conformance.cli", "seller", served.url + TARGET, "--profile", "session",
                               "--pay-with", f"ledger:{home}/agent", "--json", str(report)],
                              capture_output=True, text=True, cwd=REPO, timeout=240)
    finally:
        err = stop_seller(served)
    assert "Traceback" not in err, err
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert "Payment eyJ" not in text and "eyJjaGFsbGVuZ2Ui" not in text
    doc = json.loads(text)
    results = doc["results"] if isinstance(doc, dict) else doc
    ids = {r["id"]: r["verdict"] for r in results}
    assert {i for i in ids if i.startswith("session.")} == SESSION_IDS
    assert all(ids[i] == "pass" for i in SESSION_IDS), proc.stdout[-3000:]
