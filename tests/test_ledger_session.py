"""The session intent on the embedded ledger: a cap held at open, raised by top-ups, captured
exactly and released at close, within mandate budgets, with every balance still summing to zero."""

from __future__ import annotations

from pathlib import Path

import pytest

import mpp
from mpp import identity as I
from mpp.intents import session as S
from mpp.aio import EmbeddedLedgerRail
from mpp.protocol.errors import InvalidChallenge, PaymentInsufficient, VerificationFailed
from mpp.ledger import (
    BudgetExhausted,
    CapSignatureInvalid,
    CaptureRefused,
    InsufficientFunds,
    LedgerError,
    MandateCharge,
    MandateRevokedError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    SqliteLedger,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    holding_account,
)

from _identity_support import REALM, link_key, mandate, now

PAYER, PAYEE, OTHER = "acct:buyer", "acct:seller", "acct:other"
FUNDS = 10_000
HOLDS = holding_account("usd")


@pytest.fixture
def agent() -> mpp.SigningKey:
    return mpp.SigningKey.generate()


@pytest.fixture
def principal() -> mpp.SigningKey:
    return mpp.SigningKey.generate()


@pytest.fixture
def ledger(tmp_path: Path, agent: mpp.SigningKey, principal: mpp.SigningKey) -> SqliteLedger:
    led = SqliteLedger(str(tmp_path / "ledger.db"))
    for acct in (PAYER, PAYEE, OTHER):
        led.create_account(acct, "usd")
    led.keys.allow(PAYER, agent.did, "owner")
    led.keys.allow(PAYER, principal.did, "owner")
    led.fund(PAYER, FUNDS)
    led.fund(OTHER, FUNDS)
    yield led
    assert led.total() == 0 and led.check() == []  # SESSION-LEDGER-06: whatever each test did
    led.close()


def terms_for(led: SqliteLedger, sid: str = "sess1", **changes) -> S.SessionTerms:
    fields = dict(session_id=sid, realm=REALM, recipient=PAYEE, ledger=led.ledger_id, currency="usd", unit_price=2, per=1000)
    fields.update(changes)
    return S.SessionTerms(**fields)


def open_(ledger: SqliteLedger, key: mpp.SigningKey, cap: int = 1_000, *, sid: str = "sess1", payer: str = PAYER,
          mandate_charge: MandateCharge | None = None, terms: S.SessionTerms | None = None) -> SessionHold:
    terms = terms or terms_for(ledger, sid)
    return ledger.sessions.open(terms, payer=payer, signer=key.did, cap=cap,
                                cap_signature=S.sign_cap(key, terms, account=payer, cap=cap), mandate=mandate_charge)


def top_up(ledger: SqliteLedger, key: mpp.SigningKey, cap: int, *, sid: str = "sess1") -> SessionHold:
    terms = terms_for(ledger, sid)
    return ledger.sessions.top_up(sid, cap=cap, cap_signature=S.sign_cap(key, terms, account=PAYER, cap=cap))


def voucher(ledger: SqliteLedger, key: mpp.SigningKey, cumulative: int, *, sid: str = "sess1", sequence: int = 1) -> S.Voucher:
    return S.sign_voucher(key, terms_for(ledger, sid), cumulative, sequence)


def balances(ledger: SqliteLedger) -> dict[str, int]:
    return {a.id: a.balance for a in ledger.accounts()}


# -- open -------------------------------------------------------------------------------------


def test_open_holds_the_cap_and_balances_sum_to_zero(ledger, agent):
    # SESSION-LEDGER-01, SESSION-LEDGER-06
    hold = open_(ledger, agent, 1_000)
    assert isinstance(hold, SessionHold)
    assert (hold.session_id, hold.payer, hold.payee, hold.currency, hold.signer) == ("sess1", PAYER, PAYEE, "usd", agent.did)
    assert (hold.cap, hold.captured, hold.released, hold.status) == (1_000, 0, 0, "open")
    assert ledger.balance(PAYER) == FUNDS - 1_000
    assert ledger.balance(HOLDS) == 1_000 and ledger.account(HOLDS).kind == "asset"
    assert ledger.balance(PAYEE) == 0
    held = ledger.get_transfer("hold:sess1")
    assert (held.payer, held.payee, held.amount, held.kind, held.signer) == (PAYER, HOLDS, 1_000, "hold", agent.did)
    assert ledger.sessions.get("sess1") == hold and ledger.sessions.all() == [hold]
    assert ledger.sessions.get("nope") is None
    assert ledger.total() == 0 and ledger.check() == []


def test_open_is_idempotent_and_a_conflicting_open_is_refused(ledger, agent):
    # SESSION-LEDGER-04, SESSION-LEDGER-01
    first = open_(ledger, agent, 1_000)
    assert open_(ledger, agent, 1_000) == first
    assert ledger.balance(PAYER) == FUNDS - 1_000
    with pytest.raises(TransferConflict):
        open_(ledger, agent, 1_001)  # another cap
    with pytest.raises(TransferConflict):
        open_(ledger, agent, 1_000, terms=terms_for(ledger, unit_price=3))  # other terms, same id
    other = mpp.SigningKey.generate()
    ledger.keys.allow(PAYER, other.did, "owner")
    with pytest.raises(TransferConflict):
        open_(ledger, other, 1_000)  # another signer
    assert [t.id for t in ledger.transfers() if t.kind == "hold"] == ["hold:sess1"]
    assert ledger.balance(PAYER) == FUNDS - 1_000
    # Replaying the open after a top-up returns the session as it now is, holding nothing more.
    top_up(ledger, agent, 1_500)
    assert open_(ledger, agent, 1_000).cap == 1_500
    assert ledger.balance(PAYER) == FUNDS - 1_500


def test_bad_cap_signature_is_refused(ledger, agent):
    # SESSION-LEDGER-01
    terms = terms_for(ledger)
    mallory = mpp.SigningKey.generate()
    attempts = [
        S.sign_cap(mallory, terms, account=PAYER, cap=1_000),  # another key
        S.sign_cap(agent, terms, account=PAYER, cap=100),  # another cap
        S.sign_cap(agent, terms, account=OTHER, cap=1_000),  # another account
        S.sign_cap(agent, terms_for(ledger, "sess2"), account=PAYER, cap=1_000),  # another session
        S.sign_voucher(agent, terms, 1_000, 1).signature,  # a voucher is not a cap
        "not-a-signature",
    ]
    for signature in attempts:
        with pytest.raises(CapSignatureInvalid):
            ledger.sessions.open(terms, payer=PAYER, signer=agent.did, cap=1_000, cap_signature=signature)
    with pytest.raises(CapSignatureInvalid):
        ledger.sessions.open(terms, payer=PAYER, signer="did:key:zNotAKey", cap=1_000, cap_signature=attempts[0])
    assert ledger.sessions.all() == [] and ledger.balance(PAYER) == FUNDS


def test_signer_not_allowed_and_wrong_accounts_are_refused(ledger, agent):
    # SESSION-LEDGER-01
    with pytest.raises(UnauthorizedSigner):
        open_(ledger, agent, 100, payer=OTHER)  # a validly signed cap, but the key may not spend from OTHER
    with pytest.raises(UnauthorizedSigner):
        open_(ledger, mpp.SigningKey.generate(), 100)
    with pytest.raises(UnknownAccount):
        open_(ledger, agent, 100, terms=terms_for(ledger, recipient="acct:nobody"))
    with pytest.raises(UnknownAccount):
        open_(ledger, agent, 100, terms=terms_for(ledger, currency="eur"))
    with pytest.raises(UnknownAccount):
        open_(ledger, agent, 100, terms=terms_for(ledger, ledger="ledger-elsewhere"))
    with pytest.raises(UnknownAccount):
        open_(ledger, agent, 100, terms=terms_for(ledger, recipient=PAYER))
    with pytest.raises(ValueError):
        open_(ledger, agent, 0)
    assert ledger.sessions.all() == [] and ledger.balance(PAYER) == FUNDS


def test_insufficient_balance_is_refused(ledger, agent):
    # SESSION-LEDGER-01
    with pytest.raises(InsufficientFunds):
        open_(ledger, agent, FUNDS + 1)
    assert ledger.sessions.all() == [] and ledger.balance(PAYER) == FUNDS
    hold = open_(ledger, agent, FUNDS)
    assert hold.cap == FUNDS and ledger.balance(PAYER) == 0


# -- top-up -----------------------------------------------------------------------------------


def test_top_up_raises_the_hold_and_a_lower_cap_changes_nothing(ledger, agent):
    # SESSION-LEDGER-02, SESSION-LEDGER-04, SESSION-LEDGER-06
    open_(ledger, agent, 1_000)
    raised = top_up(ledger, agent, 1_600)
    assert raised.cap == 1_600 and raised.status == "open"
    assert ledger.balance(PAYER) == FUNDS - 1_600 and ledger.balance(HOLDS) == 1_600
    assert ledger.get_transfer("hold:sess1:1600").amount == 600
    assert top_up(ledger, agent, 1_600) == raised  # the same top-up again
    assert top_up(ledger, agent, 900) == raised  # lower: a no-op
    assert ledger.balance(PAYER) == FUNDS - 1_600
    assert ledger.total() == 0 and ledger.check() == []


def test_top_up_refusals(ledger, agent):
    # SESSION-LEDGER-02
    with pytest.raises(UnknownSession):
        top_up(ledger, agent, 2_000, sid="nope")
    open_(ledger, agent, 1_000)
    with pytest.raises(CapSignatureInvalid):
        top_up(ledger, mpp.SigningKey.generate(), 2_000)
    with pytest.raises(CapSignatureInvalid):
        ledger.sessions.top_up("sess1", cap=2_000, cap_signature=S.sign_cap(agent, terms_for(ledger), account=PAYER, cap=3_000))
    with pytest.raises(InsufficientFunds):
        top_up(ledger, agent, FUNDS + 1)
    assert ledger.sessions.get("sess1").cap == 1_000 and ledger.balance(PAYER) == FUNDS - 1_000
    ledger.sessions.close("sess1", capture=0, voucher=None)
    with pytest.raises(SessionNotOpen):
        top_up(ledger, agent, 2_000)
    with pytest.raises(SessionNotOpen):
        top_up(ledger, agent, 500)
    assert ledger.balance(PAYER) == FUNDS


# -- close ------------------------------------------------------------------------------------


def test_close_captures_exactly_and_releases_the_rest(ledger, agent):
    # SESSION-LEDGER-03, SESSION-LEDGER-04, SESSION-LEDGER-06
    open_(ledger, agent, 1_000)
    top_up(ledger, agent, 1_200)
    closed = ledger.sessions.close("sess1", capture=347, voucher=voucher(ledger, agent, 400, sequence=9))
    assert isinstance(closed, SessionClose)
    assert (closed.session_id, closed.captured, closed.released) == ("sess1", 347, 853)
    assert (closed.capture_ref, closed.release_ref) == ("capture:sess1", "release:sess1")
    assert balances(ledger)[PAYEE] == 347 and balances(ledger)[PAYER] == FUNDS - 347 and balances(ledger)[HOLDS] == 0
    capture, release = ledger.get_transfer("capture:sess1"), ledger.get_transfer("release:sess1")
    assert (capture.payer, capture.payee, capture.amount, capture.kind) == (HOLDS, PAYEE, 347, "capture")
    assert (release.payer, release.payee, release.amount, release.kind) == (HOLDS, PAYER, 853, "release")
    hold = ledger.sessions.get("sess1")
    assert (hold.cap, hold.captured, hold.released, hold.status) == (1_200, 347, 853, "closed")

    # Idempotent: the same close (even without the voucher) returns the same record and moves nothing.
    before = balances(ledger)
    assert ledger.sessions.close("sess1", capture=347, voucher=voucher(ledger, agent, 400, sequence=9)) == closed
    assert ledger.sessions.close("sess1", capture=347, voucher=None) == closed
    with pytest.raises(TransferConflict):
        ledger.sessions.close("sess1", capture=348, voucher=voucher(ledger, agent, 400))
    assert balances(ledger) == before
    assert ledger.total() == 0 and ledger.check() == []


def test_close_with_nothing_used_releases_everything_and_capturing_the_whole_cap_releases_nothing(ledger, agent):
    # SESSION-LEDGER-03, SESSION-LEDGER-06
    open_(ledger, agent, 500, sid="a")
    open_(ledger, agent, 700, sid="b")
    assert ledger.balance(HOLDS) == 1_200 and ledger.check() == []
    a = ledger.sessions.close("a", capture=0, voucher=None)
    assert (a.captured, a.released, a.capture_ref, a.release_ref) == (0, 500, None, "release:a")
    b = ledger.sessions.close("b", capture=700, voucher=voucher(ledger, agent, 700, sid="b"))
    assert (b.captured, b.released, b.capture_ref, b.release_ref) == (700, 0, "capture:b", None)
    assert ledger.balance(PAYER) == FUNDS - 700 and ledger.balance(PAYEE) == 700 and ledger.balance(HOLDS) == 0
    with pytest.raises(UnknownSession):
        ledger.sessions.close("nope", capture=0, voucher=None)


def test_capture_not_covered_by_a_valid_voucher_is_refused(ledger, agent):
    # SESSION-LEDGER-03
    open_(ledger, agent, 1_000)
    mallory = mpp.SigningKey.generate()
    refused = [
        (300, voucher(ledger, agent, 299)),  # above the voucher
        (300, voucher(ledger, mallory, 1_000)),  # signed by another key
        (300, voucher(ledger, agent, 1_000, sid="sess2")),  # for another session
        (300, S.Voucher(1_000, 2, voucher(ledger, agent, 1_000, sequence=1).signature)),  # altered after signing
        (300, None),  # no voucher at all
        (1_001, voucher(ledger, agent, 5_000)),  # above the cap
    ]
    for capture, v in refused:
        with pytest.raises(CaptureRefused):
            ledger.sessions.close("sess1", capture=capture, voucher=v)
    assert issubclass(CaptureRefused, LedgerError)
    with pytest.raises(ValueError):
        ledger.sessions.close("sess1", capture=-1, voucher=None)
    hold = ledger.sessions.get("sess1")
    assert hold.status == "open" and ledger.balance(HOLDS) == 1_000 and ledger.balance(PAYEE) == 0
    assert ledger.sessions.close("sess1", capture=300, voucher=voucher(ledger, agent, 300)).captured == 300


def test_session_transfers_cannot_be_refunded_one_leg_at_a_time(ledger, agent):
    # SESSION-LEDGER-06
    open_(ledger, agent, 1_000)
    with pytest.raises(TransferConflict):
        ledger.refund("hold:sess1")
    ledger.sessions.close("sess1", capture=100, voucher=voucher(ledger, agent, 100))
    for ref in ("capture:sess1", "release:sess1"):
        with pytest.raises(TransferConflict):
            ledger.refund(ref)


# -- mandate budgets --------------------------------------------------------------------------


def charge_of(token: str, *more: str) -> MandateCharge:
    return MandateCharge((token, *more), REALM)


def test_mandate_budget_counts_the_cap_and_close_gives_back_the_release(ledger, agent, principal):
    # SESSION-LEDGER-05, SESSION-LEDGER-01, SESSION-LEDGER-03, SESSION-ID-02, SESSION-ID-03
    token = mandate(principal, agent, budget_amount=1_000)
    key = link_key(token)
    with pytest.raises(BudgetExhausted):
        open_(ledger, agent, 1_001, sid="big", mandate_charge=charge_of(token))
    assert ledger.keys.mandate_spent(key, "total") == 0 and ledger.sessions.get("big") is None

    open_(ledger, agent, 600, sid="s1", mandate_charge=charge_of(token))
    assert ledger.keys.mandate_spent(key, "total") == 600
    with pytest.raises(BudgetExhausted):  # together the two caps would exceed the budget
        open_(ledger, agent, 500, sid="s2", mandate_charge=charge_of(token))
    assert ledger.sessions.get("s2") is None and ledger.balance(PAYER) == FUNDS - 600

    ledger.sessions.close("s1", capture=150, voucher=voucher(ledger, agent, 150, sid="s1"))
    assert ledger.keys.mandate_spent(key, "total") == 150  # only what was captured stays spent
    open_(ledger, agent, 500, sid="s2", mandate_charge=charge_of(token))
    assert ledger.keys.mandate_spent(key, "total") == 650
    # A charge through the same mandate shares the budget with the open session's cap.
    with pytest.raises(BudgetExhausted):
        ledger.transfer("c1", payer=PAYER, payee=PAYEE, amount=351, currency="usd", signer=agent.did, mandate=charge_of(token))
    ledger.transfer("c1", payer=PAYER, payee=PAYEE, amount=350, currency="usd", signer=agent.did, mandate=charge_of(token))
    assert ledger.keys.mandate_spent(key, "total") == 1_000


def test_top_up_counts_against_every_link_and_close_releases_on_every_link(ledger, agent, principal):
    # SESSION-LEDGER-05, SESSION-LEDGER-02, SESSION-ID-04
    sub_agent = mpp.SigningKey.generate()
    root = mandate(principal, agent, budget_amount=5_000)
    sub = mandate(agent, sub_agent, principal=principal.did, max_depth=1, budget_amount=1_000)
    chain = charge_of(root, sub)
    open_(ledger, sub_agent, 400, mandate_charge=chain)
    assert (ledger.keys.mandate_spent(link_key(root), "total"), ledger.keys.mandate_spent(link_key(sub), "total")) == (400, 400)
    with pytest.raises(BudgetExhausted):  # the sub-mandate's 1000, not the root's 5000, binds
        top_up(ledger, sub_agent, 1_001)
    assert ledger.sessions.get("sess1").cap == 400
    top_up(ledger, sub_agent, 1_000)
    assert (ledger.keys.mandate_spent(link_key(root), "total"), ledger.keys.mandate_spent(link_key(sub), "total")) == (1_000, 1_000)
    ledger.sessions.close("sess1", capture=250, voucher=voucher(ledger, sub_agent, 250))
    assert (ledger.keys.mandate_spent(link_key(root), "total"), ledger.keys.mandate_spent(link_key(sub), "total")) == (250, 250)
    # The chain's agent must be the session's signer; the account's own keys do not stand in for it.
    with pytest.raises(UnauthorizedSigner):
        open_(ledger, agent, 100, sid="s2", mandate_charge=chain)


def test_revoked_mandate_is_refused_at_open_and_top_up(ledger, agent, principal):
    # SESSION-LEDGER-05, SESSION-LEDGER-01, SESSION-LEDGER-02, SESSION-ID-04
    token = mandate(principal, agent, budget_amount=5_000)
    open_(ledger, agent, 300, sid="s1", mandate_charge=charge_of(token))
    ledger.keys.revoke(I.issue_revocation(principal, token, now=now()), token)
    with pytest.raises(MandateRevokedError):
        open_(ledger, agent, 300, sid="s2", mandate_charge=charge_of(token))
    with pytest.raises(MandateRevokedError):
        top_up(ledger, agent, 600, sid="s1")
    assert ledger.sessions.get("s2") is None and ledger.sessions.get("s1").cap == 300
    # Closing still settles what was used and gives the rest back.
    closed = ledger.sessions.close("s1", capture=100, voucher=voucher(ledger, agent, 100, sid="s1"))
    assert (closed.captured, closed.released) == (100, 200)
    assert ledger.keys.mandate_spent(link_key(token), "total") == 100


def test_mandate_from_an_untrusted_root_is_refused(ledger, agent):
    # SESSION-LEDGER-05
    stranger = mpp.SigningKey.generate()  # not the payer account's owner
    with pytest.raises(UnauthorizedSigner):
        open_(ledger, agent, 100, mandate_charge=charge_of(mandate(stranger, agent)))
    assert ledger.sessions.all() == []


# -- the rail maps refusals to problems -------------------------------------------------------


async def test_rail_maps_session_refusals_to_problems(ledger, agent, principal):
    # SESSION-LEDGER-01, SESSION-LEDGER-02, SESSION-LEDGER-03, SESSION-LEDGER-04, SESSION-LEDGER-05, SESSION-OPEN-03
    rail = EmbeddedLedgerRail(ledger, recipient=PAYEE)
    terms = terms_for(ledger)

    async def rail_open(cap: int, sid: str = "sess1", key: mpp.SigningKey = agent, payer: str = PAYER, **kw):
        t = terms_for(ledger, sid)
        return await rail.open_session(t, payer=payer, signer=key.did, cap=cap,
                                       cap_signature=S.sign_cap(key, t, account=payer, cap=cap), **kw)

    with pytest.raises(S.VoucherInvalid):
        await rail.open_session(terms, payer=PAYER, signer=agent.did, cap=100,
                                cap_signature=S.sign_cap(agent, terms, account=PAYER, cap=99))
    with pytest.raises(PaymentInsufficient):
        await rail_open(FUNDS + 1)
    with pytest.raises(VerificationFailed):
        await rail_open(100, payer=OTHER)
    with pytest.raises(S.SessionUnknown):
        await rail.top_up_session("nope", cap=100, cap_signature="x")
    with pytest.raises(S.SessionUnknown):
        await rail.close_session("nope", capture=0, voucher=None)

    hold = await rail_open(1_000)
    assert hold.cap == 1_000
    with pytest.raises(InvalidChallenge):
        await rail_open(999)
    raised = await rail.top_up_session("sess1", cap=1_500, cap_signature=S.sign_cap(agent, terms, account=PAYER, cap=1_500))
    assert raised.cap == 1_500
    with pytest.raises(CaptureRefused):  # the seller's bug, not a buyer-facing problem
        await rail.close_session("sess1", capture=10, voucher=voucher(ledger, agent, 9))
    closed = await rail.close_session("sess1", capture=10, voucher=voucher(ledger, agent, 10))
    assert (closed.captured, closed.released) == (10, 1_490)
    with pytest.raises(InvalidChallenge):
        await rail.close_session("sess1", capture=11, voucher=voucher(ledger, agent, 11))
    with pytest.raises(S.SessionClosed):
        await rail.top_up_session("sess1", cap=2_000, cap_signature=S.sign_cap(agent, terms, account=PAYER, cap=2_000))

    token = mandate(principal, agent, budget_amount=1_000)
    with pytest.raises(I.BudgetExceeded):
        await rail_open(1_001, sid="m1", mandate=charge_of(token))
    await rail_open(100, sid="m2", mandate=charge_of(token))
    ledger.keys.revoke(I.issue_revocation(principal, token, now=now()), token)
    with pytest.raises(I.MandateRevoked):
        await rail_open(100, sid="m3", mandate=charge_of(token))


def test_release_goes_back_to_the_period_each_hold_was_counted_in(ledger, agent, principal, monkeypatch):
    # SESSION-LEDGER-05, SESSION-LEDGER-02
    token = mandate(principal, agent, budget_amount=1_000, budget_period="day")
    key = link_key(token)
    monkeypatch.setattr(I, "period_key", lambda period, when: "2030-01-01")
    open_(ledger, agent, 600, mandate_charge=charge_of(token))
    monkeypatch.setattr(I, "period_key", lambda period, when: "2030-01-02")
    top_up(ledger, agent, 1_000)  # the increase counts in the day it was held
    assert (ledger.keys.mandate_spent(key, "2030-01-01"), ledger.keys.mandate_spent(key, "2030-01-02")) == (600, 400)
    ledger.sessions.close("sess1", capture=250, voucher=voucher(ledger, agent, 250))
    # The latest hold is released first: what was used stays counted in the day the session opened.
    assert (ledger.keys.mandate_spent(key, "2030-01-01"), ledger.keys.mandate_spent(key, "2030-01-02")) == (250, 0)


def test_no_key_may_spend_from_the_holding_account(ledger, agent):
    # SESSION-LEDGER-06
    open_(ledger, agent, 1_000)
    with pytest.raises(ValueError):
        ledger.keys.allow(HOLDS, agent.did, "owner")
    with pytest.raises(ValueError):
        ledger.fund(HOLDS, 5)
    with pytest.raises(ValueError):
        ledger.create_account("holds:eur", "eur")
    with pytest.raises(UnauthorizedSigner):
        ledger.transfer("t1", payer=HOLDS, payee=PAYEE, amount=5, currency="usd", signer=None)
    with pytest.raises(UnauthorizedSigner):
        ledger.transfer("t2", payer=PAYER, payee=HOLDS, amount=5, currency="usd", signer=agent.did)
    assert ledger.balance(HOLDS) == 1_000
