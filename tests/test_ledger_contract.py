"""One ledger contract, two engines: every assertion here runs against the SQLite ledger (through
its async adapter) and the PostgreSQL ledger (a real server, started once per run by the
`pg_server` fixture), both opened by URL with mpp.connect.ledger_for.

"Another process" is played by a second ledger object on the same file or database (for
PostgreSQL a second connection pool, so that row and advisory locks, not this process's event
loop, keep balances and budgets whole), and, at the end, by real processes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import pytest

import mpp
from mpp import identity as I
from mpp.intents import session as S
from mpp.ledger import (
    Account,
    BudgetExhausted,
    CapSignatureInvalid,
    CaptureRefused,
    InsufficientFunds,
    MandateCharge,
    MandateRevokedError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    Transfer,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
    holding_account,
)
from mpp.ledger.aio_adapter import AsyncLedgerStore, AsyncSqliteLedgerStore
from mpp.ledger.api import AsyncLedger
from mpp.connect import ledger_for, open_ledger

from _identity_support import REALM, link_key, mandate, now

ENGINES = ["sqlite", "postgres"]
PAYER, PAYEE, OTHER = "acct:buyer", "acct:seller", "acct:other"
FUNDS = 10_000
HOLDS = holding_account("usd")


@pytest.fixture(params=ENGINES)
def location(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("pg_url")  # errors (never skips) if PostgreSQL cannot start


class Ledgers:
    """Opens ledgers on the engine under test (each call: another "process"), closes them after."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.opened: list[Any] = []

    async def open(self, **kwargs: Any):
        ledger = await open_ledger(self.location, **kwargs)
        self.opened.append(ledger)
        return ledger


@pytest.fixture
async def ledgers(location: str):
    made = Ledgers(location)
    yield made
    for ledger in made.opened:
        await ledger.close()


@pytest.fixture
def agent() -> mpp.SigningKey:
    return mpp.SigningKey.generate()


@pytest.fixture
def principal() -> mpp.SigningKey:
    return mpp.SigningKey.generate()


@pytest.fixture
async def ledger(ledgers: Ledgers, agent: mpp.SigningKey, principal: mpp.SigningKey):
    """PAYER (funded, owned by ``principal``, ``agent``'s key authorized), PAYEE, OTHER (funded)."""
    led = await ledgers.open()
    for acct in (PAYER, PAYEE, OTHER):
        await led.create_account(acct, "usd")
    await led.keys.allow(PAYER, agent.did, "owner")
    await led.keys.allow(PAYER, principal.did, "owner")
    await led.fund(PAYER, FUNDS)
    await led.fund(OTHER, FUNDS)
    yield led
    # LEDGER-03, SESSION-LEDGER-06: whatever each test did, value is neither made nor lost
    assert await led.total() == 0 and await led.check() == []


async def pay(led, tid: str, amount: int = 100, *, signer: str | None, payer: str = PAYER, payee: str = PAYEE,
              currency: str = "usd", mandate_charge: MandateCharge | None = None) -> Transfer:
    return await led.transfer(tid, payer=payer, payee=payee, amount=amount, currency=currency, signer=signer,
                              mandate=mandate_charge)


async def balances(led) -> dict[str, int]:
    return {a.id: a.balance for a in await led.accounts()}


def charge_of(*tokens: str) -> MandateCharge:
    return MandateCharge(tuple(tokens), REALM)


# -- the interface ---------------------------------------------------------------------------


async def test_ledger_kind_follows_the_url_and_keeps_its_id(location, ledgers):
    led = await ledgers.open()
    assert isinstance(led, AsyncLedger) and isinstance(led, AsyncLedgerStore)
    if location.startswith("sqlite:"):
        assert isinstance(led, AsyncSqliteLedgerStore)
    else:
        from mpp.ledger.pg import PgLedger

        assert isinstance(led, PgLedger)
    assert led.ledger_id.startswith("ledger-") and len(led.ledger_id) == len("ledger-") + 16
    second = await ledgers.open()  # another process on the same data sees the same ledger
    assert second.ledger_id == led.ledger_id
    with pytest.raises(ValueError):
        ledger_for("mysql://db/ledger")


# -- accounts, funding, transfers, refunds --------------------------------------------------


async def test_fund_transfer_refund_postings_and_balances(ledger, agent, principal):
    """LEDGER-01, LEDGER-02, LEDGER-03, LEDGER-15: each transfer is two postings summing to zero;
    value enters from the issuance account; a refund moves the amount back once."""
    assert await ledger.account(PAYER) == Account(PAYER, "usd", FUNDS, "asset")
    assert await ledger.account("issuance:usd") == Account("issuance:usd", "usd", -2 * FUNDS, "issuance")
    assert await ledger.keys.members(PAYER) == {agent.did: "owner", principal.did: "owner"} and await ledger.keys.members(PAYEE) == {}
    funded = [t for t in await ledger.transfers() if t.kind == "fund"]
    assert [(t.payer, t.payee, t.amount) for t in funded] == [("issuance:usd", PAYER, FUNDS), ("issuance:usd", OTHER, FUNDS)]

    made = await pay(ledger, "c1", 250, signer=agent.did)
    assert isinstance(made, Transfer)
    assert (made.id, made.payer, made.payee, made.amount, made.currency, made.kind, made.signer) == (
        "c1", PAYER, PAYEE, 250, "usd", "charge", agent.did)
    assert made.created_at.endswith("Z") and len(made.created_at) == len("2031-05-06T07:08:09Z")
    assert await ledger.get_transfer("c1") == made and await ledger.get_transfer("nope") is None
    assert (await ledger.balance(PAYER), await ledger.balance(PAYEE)) == (FUNDS - 250, 250)
    assert await ledger.total() == 0 and await ledger.check() == []

    refund = await ledger.refund("c1")
    assert (refund.id, refund.payer, refund.payee, refund.amount, refund.kind) == ("refund:c1", PAYEE, PAYER, 250, "refund")
    assert await ledger.refund("c1") == refund  # once
    assert (await ledger.balance(PAYER), await ledger.balance(PAYEE)) == (FUNDS, 0)
    assert [t.kind for t in await ledger.transfers()] == ["fund", "fund", "charge", "refund"]
    with pytest.raises(UnknownAccount):
        await ledger.refund("nope")
    # only a charge is refunded: not a funding (it would send prepaid value back to issuance), not a refund
    funding = [t.id for t in await ledger.transfers() if t.kind == "fund"][0]
    for not_a_charge in (funding, "refund:c1"):
        with pytest.raises(TransferConflict, match="not a charge"):
            await ledger.refund(not_a_charge)
    assert (await ledger.balance(PAYER), await ledger.balance(PAYEE)) == (FUNDS, 0)
    # LEDGER-SVC-11: an account's transfers in a window, oldest first, to the second as stamped
    stamped = datetime.fromisoformat(made.created_at.replace("Z", "+00:00"))
    later = stamped + timedelta(minutes=5)
    assert [t.id for t in await ledger.transfers_of(PAYEE, stamped, later)] == ["c1", "refund:c1"]
    assert await ledger.transfers_of(PAYER, stamped - timedelta(days=1), later) == [
        t for t in await ledger.transfers() if PAYER in (t.payer, t.payee)]
    assert "c1" not in [t.id for t in await ledger.transfers_of(PAYEE, stamped + timedelta(microseconds=1), later)]
    assert await ledger.transfers_of(PAYEE, stamped - timedelta(minutes=5), stamped) == []  # until is exclusive

    # accounts: idempotent creation, one currency each, holding names reserved, unknown ones refused
    assert await ledger.create_account(PAYEE, "usd") == Account(PAYEE, "usd", 0, "asset")
    with pytest.raises(TransferConflict):
        await ledger.create_account(PAYEE, "eur")
    for call in (ledger.create_account(HOLDS, "usd"), ledger.fund(HOLDS, 1), ledger.keys.allow(HOLDS, agent.did, "owner")):
        with pytest.raises(ValueError):
            await call
    for call in (ledger.fund("acct:nobody", 1), ledger.keys.allow("acct:nobody", agent.did, "owner"),
                 ledger.keys.allow("acct:nobody", principal.did, "owner"), ledger.account("acct:nobody"), ledger.balance("acct:nobody")):
        with pytest.raises(UnknownAccount):
            await call
    assert [a.id for a in await ledger.accounts()] == sorted([PAYER, PAYEE, OTHER, "issuance:usd"])


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
async def test_amounts_are_positive_integers(ledger, agent, amount):
    """LEDGER-02"""
    with pytest.raises(ValueError):
        await pay(ledger, "c1", amount, signer=agent.did)
    with pytest.raises(ValueError):
        await ledger.fund(PAYER, amount)


async def test_a_payee_that_spent_the_charge_cannot_refund_it(ledger, agent):
    """LEDGER-15 on both engines: a refund the payee's balance cannot cover is InsufficientFunds
    (SQLite used to fail on its balance constraint instead), and nothing moves."""
    payee_key = mpp.SigningKey.generate()
    await ledger.keys.allow(PAYEE, payee_key.did, "owner")
    await pay(ledger, "c9", 300, signer=agent.did)
    await pay(ledger, "spent", 200, signer=payee_key.did, payer=PAYEE, payee=OTHER)
    with pytest.raises(InsufficientFunds, match="below the refund 300"):
        await ledger.refund("c9")
    assert await ledger.get_transfer("refund:c9") is None and await ledger.balance(PAYEE) == 100


async def test_transfer_is_idempotent_by_id(ledger, agent):
    """LEDGER-12, CORE-ONCE-03: the same id moves value once; on other terms it is refused."""
    first = await pay(ledger, "c1", signer=agent.did)
    assert await pay(ledger, "c1", signer=agent.did) == first
    for changes in ({"amount": 101}, {"payee": OTHER}, {"currency": "eur"}):
        with pytest.raises(TransferConflict):
            await pay(ledger, "c1", **{"amount": 100, **changes}, signer=agent.did)
    assert (await ledger.balance(PAYER), await ledger.balance(PAYEE)) == (FUNDS - 100, 100)
    assert [t.id for t in await ledger.transfers() if t.kind == "charge"] == ["c1"]


async def test_refusals_change_nothing(ledger, agent):
    """LEDGER-11, LEDGER-13: an unauthorized signer, unknown accounts, another currency and an
    insufficient balance are refused, and nothing is posted."""
    before = await balances(ledger)
    with pytest.raises(InsufficientFunds):
        await pay(ledger, "c1", FUNDS + 1, signer=agent.did)
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "c1", signer=mpp.SigningKey.generate().did)
    with pytest.raises(UnauthorizedSigner):  # agent's key is authorized for PAYER, not for OTHER
        await pay(ledger, "c1", signer=agent.did, payer=OTHER)
    with pytest.raises(UnknownAccount):
        await pay(ledger, "c1", signer=None, payer="acct:nobody")
    with pytest.raises(UnknownAccount):
        await pay(ledger, "c1", signer=agent.did, payee="acct:nobody")
    with pytest.raises(UnknownAccount):
        await pay(ledger, "c1", signer=agent.did, currency="eur")
    assert await ledger.get_transfer("c1") is None and await balances(ledger) == before
    # A holding account is moved only by session operations.
    await open_(ledger, agent, 100)
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "c2", signer=None, payee=HOLDS)
    await ledger.sessions.close("sess1", capture=0, voucher=None)
    # The operator's own transfer (no signer) needs no key; an issuance account may go negative.
    assert (await pay(ledger, "c3", 7, signer=None, payer=OTHER)).signer is None


async def test_void_bars_an_unmade_transfer_and_refunds_a_made_one(ledger, agent):
    """LEDGER-SVC-06"""
    assert await ledger.void("t-unmade") is None
    assert await ledger.void("t-unmade") is None
    with pytest.raises(TransferConflict):
        await pay(ledger, "t-unmade", signer=agent.did)
    await pay(ledger, "t-made", signer=agent.did)
    with pytest.raises(TransferConflict):
        await ledger.void("t-made", payee=OTHER)
    refund = await ledger.void("t-made", payee=PAYEE)
    assert refund is not None and refund.id == "refund:t-made"
    assert await ledger.void("t-made") == refund
    assert (await ledger.balance(PAYER), await ledger.balance(PAYEE)) == (FUNDS, 0)


# -- mandate chains, budgets, revocation ----------------------------------------------------


async def test_mandate_chain_spends_within_its_budget(ledger, principal):
    """IDENT-style spending through the ledger: the payer's owner is the only trusted root, the
    chain's agent must sign, and each link's budget binds; a refund gives the budget back."""
    agent = mpp.SigningKey.generate()  # no key of the account: it spends only through the mandate
    token = mandate(principal, agent, budget_amount=1_000, ceiling=1_000)
    key = link_key(token)
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "m0", signer=agent.did)
    made = await pay(ledger, "m1", 400, signer=agent.did, mandate_charge=charge_of(token))
    assert made.signer == agent.did and await ledger.keys.mandate_spent(key, "total") == 400
    with pytest.raises(BudgetExhausted):
        await pay(ledger, "m2", 601, signer=agent.did, mandate_charge=charge_of(token))
    await pay(ledger, "m2", 600, signer=agent.did, mandate_charge=charge_of(token))
    assert await ledger.keys.mandate_spent(key, "total") == 1_000
    with pytest.raises(BudgetExhausted):
        await pay(ledger, "m3", 1, signer=agent.did, mandate_charge=charge_of(token))
    await ledger.refund("m1")
    assert await ledger.keys.mandate_spent(key, "total") == 600
    await pay(ledger, "m3", 400, signer=agent.did, mandate_charge=charge_of(token))
    assert await ledger.keys.mandate_spent(key, "total") == 1_000
    assert await ledger.keys.mandate_spent(key, "2031-01-01") == 0 and await ledger.keys.mandate_spent("nobody#x", "total") == 0

    # a sub-mandate's budget binds its agent, and counts against the root's as well
    sub_agent = mpp.SigningKey.generate()
    other_root = mandate(principal, agent, budget_amount=5_000)
    sub = mandate(agent, sub_agent, principal=principal.did, max_depth=1, budget_amount=300)
    chain = charge_of(other_root, sub)
    await pay(ledger, "s1", 200, signer=sub_agent.did, mandate_charge=chain)
    with pytest.raises(BudgetExhausted):
        await pay(ledger, "s2", 101, signer=sub_agent.did, mandate_charge=chain)
    assert await ledger.keys.mandate_spent(link_key(other_root), "total") == 200
    assert await ledger.keys.mandate_spent(link_key(sub), "total") == 200

    # refusals: someone else signing, an untrusted root, a mandate for another realm
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "x1", signer=sub_agent.did, mandate_charge=charge_of(token))
    stranger = mpp.SigningKey.generate()
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "x2", signer=agent.did, mandate_charge=charge_of(mandate(stranger, agent)))
    with pytest.raises(UnauthorizedSigner):
        await pay(ledger, "x3", signer=agent.did, mandate_charge=MandateCharge((other_root,), "elsewhere.test"))
    with pytest.raises(UnauthorizedSigner):  # OTHER has no owner: no mandate can spend from it
        await pay(ledger, "x4", signer=agent.did, payer=OTHER, mandate_charge=charge_of(other_root))
    assert [await ledger.get_transfer(t) for t in ("x1", "x2", "x3", "x4")] == [None] * 4
    assert await ledger.balance(PAYEE) == 1_200


async def test_revoked_mandate_is_refused(ledger, principal):
    agent = mpp.SigningKey.generate()
    root = mandate(principal, agent, budget_amount=5_000)
    sub_agent = mpp.SigningKey.generate()
    sub = mandate(agent, sub_agent, principal=principal.did, max_depth=1, budget_amount=1_000)
    await pay(ledger, "r1", signer=sub_agent.did, mandate_charge=charge_of(root, sub))
    assert await ledger.keys.revoked([link_key(root), link_key(sub)]) == set() and await ledger.keys.revoked([]) == set()
    jti = await ledger.keys.revoke(I.issue_revocation(principal, root, now=now()), root)
    assert jti == link_key(root) and await ledger.keys.revoked([link_key(root), link_key(sub)]) == {link_key(root)}
    assert await ledger.keys.revoke(I.issue_revocation(principal, root, now=now()), root) == jti  # again: no change
    with pytest.raises(MandateRevokedError):  # revoking the root cuts off the whole chain under it
        await pay(ledger, "r2", signer=sub_agent.did, mandate_charge=charge_of(root, sub))
    with pytest.raises(MandateRevokedError):
        await pay(ledger, "r3", signer=agent.did, mandate_charge=charge_of(root))
    assert await ledger.get_transfer("r2") is None and await ledger.balance(PAYEE) == 100
    assert await pay(ledger, "r1", signer=sub_agent.did, mandate_charge=charge_of(root, sub))  # a made transfer stays


# -- sessions --------------------------------------------------------------------------------


def terms_for(led, sid: str = "sess1", **changes: Any) -> S.SessionTerms:
    fields = dict(session_id=sid, realm=REALM, recipient=PAYEE, ledger=led.ledger_id, currency="usd", unit_price=2, per=1000)
    fields.update(changes)
    return S.SessionTerms(**fields)


async def open_(led, key: mpp.SigningKey, cap: int = 1_000, *, sid: str = "sess1", payer: str = PAYER,
                mandate_charge: MandateCharge | None = None, terms: S.SessionTerms | None = None) -> SessionHold:
    terms = terms or terms_for(led, sid)
    return await led.sessions.open(terms, payer=payer, signer=key.did, cap=cap,
                                   cap_signature=S.sign_cap(key, terms, account=payer, cap=cap), mandate=mandate_charge)


async def top_up(led, key: mpp.SigningKey, cap: int, *, sid: str = "sess1") -> SessionHold:
    return await led.sessions.top_up(sid, cap=cap, cap_signature=S.sign_cap(key, terms_for(led, sid), account=PAYER, cap=cap))


def voucher(led, key: mpp.SigningKey, cumulative: int, *, sid: str = "sess1", sequence: int = 1) -> S.Voucher:
    return S.sign_voucher(key, terms_for(led, sid), cumulative, sequence)


async def test_session_hold_top_up_capture_release(ledger, agent):
    """SESSION-LEDGER-01..04, SESSION-LEDGER-06: the cap is held at open, raised by a top-up,
    captured exactly and released at close; each step once."""
    hold = await open_(ledger, agent, 1_000)
    assert (hold.session_id, hold.payer, hold.payee, hold.currency, hold.signer) == ("sess1", PAYER, PAYEE, "usd", agent.did)
    assert (hold.cap, hold.captured, hold.released, hold.status) == (1_000, 0, 0, "open")
    assert await ledger.sessions.get("sess1") == hold and await ledger.sessions.all() == [hold] and await ledger.sessions.get("nope") is None
    assert (await ledger.balance(PAYER), await ledger.balance(HOLDS)) == (FUNDS - 1_000, 1_000)
    assert (await ledger.account(HOLDS)).kind == "asset" and await ledger.check() == []
    held = await ledger.get_transfer("hold:sess1")
    assert (held.payer, held.payee, held.amount, held.kind, held.signer) == (PAYER, HOLDS, 1_000, "hold", agent.did)
    assert await open_(ledger, agent, 1_000) == hold  # the same open again
    with pytest.raises(TransferConflict):
        await open_(ledger, agent, 1_001)
    with pytest.raises(TransferConflict):
        await open_(ledger, agent, 1_000, terms=terms_for(ledger, unit_price=3))

    raised = await top_up(ledger, agent, 1_600)
    assert raised.cap == 1_600 and raised.status == "open" and raised.opened_at == hold.opened_at
    assert (await ledger.get_transfer("hold:sess1:1600")).amount == 600
    assert await top_up(ledger, agent, 1_600) == raised and await top_up(ledger, agent, 900) == raised
    assert await open_(ledger, agent, 1_000) == raised  # replaying the open shows the session as it is now
    assert (await ledger.balance(PAYER), await ledger.balance(HOLDS)) == (FUNDS - 1_600, 1_600)

    with pytest.raises(TransferConflict):  # one leg of a session is never refunded alone
        await ledger.refund("hold:sess1")
    closed = await ledger.sessions.close("sess1", capture=347, voucher=voucher(ledger, agent, 400, sequence=9))
    assert isinstance(closed, SessionClose)
    assert (closed.session_id, closed.captured, closed.released) == ("sess1", 347, 1_253)
    assert (closed.capture_ref, closed.release_ref) == ("capture:sess1", "release:sess1")
    assert await balances(ledger) == {**await balances(ledger), PAYER: FUNDS - 347, PAYEE: 347, HOLDS: 0}
    capture, release = await ledger.get_transfer("capture:sess1"), await ledger.get_transfer("release:sess1")
    assert (capture.payer, capture.payee, capture.amount, capture.kind) == (HOLDS, PAYEE, 347, "capture")
    assert (release.payer, release.payee, release.amount, release.kind) == (HOLDS, PAYER, 1_253, "release")
    after = await ledger.sessions.get("sess1")
    assert (after.cap, after.captured, after.released, after.status) == (1_600, 347, 1_253, "closed")
    assert await ledger.sessions.close("sess1", capture=347, voucher=None) == closed  # the same close again
    with pytest.raises(TransferConflict):
        await ledger.sessions.close("sess1", capture=348, voucher=voucher(ledger, agent, 400))
    for ref in ("capture:sess1", "release:sess1"):
        with pytest.raises(TransferConflict):
            await ledger.refund(ref)
    with pytest.raises(SessionNotOpen):
        await top_up(ledger, agent, 2_000)

    # nothing used: everything released; the whole cap used: nothing released
    await open_(ledger, agent, 500, sid="a")
    await open_(ledger, agent, 700, sid="b")
    assert await ledger.balance(HOLDS) == 1_200 and await ledger.check() == []
    a = await ledger.sessions.close("a", capture=0, voucher=None)
    assert (a.captured, a.released, a.capture_ref, a.release_ref) == (0, 500, None, "release:a")
    b = await ledger.sessions.close("b", capture=700, voucher=voucher(ledger, agent, 700, sid="b"))
    assert (b.captured, b.released, b.capture_ref, b.release_ref) == (700, 0, "capture:b", None)
    assert [s.session_id for s in await ledger.sessions.all()] == ["sess1", "a", "b"]


async def test_session_refusals(ledger, agent):
    """SESSION-LEDGER-01, SESSION-LEDGER-02, SESSION-LEDGER-03"""
    terms = terms_for(ledger)
    mallory = mpp.SigningKey.generate()
    for signature in (S.sign_cap(mallory, terms, account=PAYER, cap=1_000), S.sign_cap(agent, terms, account=PAYER, cap=100),
                      S.sign_cap(agent, terms_for(ledger, "sess2"), account=PAYER, cap=1_000), "not-a-signature"):
        with pytest.raises(CapSignatureInvalid):
            await ledger.sessions.open(terms, payer=PAYER, signer=agent.did, cap=1_000, cap_signature=signature)
    with pytest.raises(UnauthorizedSigner):
        await open_(ledger, agent, 100, payer=OTHER)
    for changes in ({"recipient": "acct:nobody"}, {"currency": "eur"}, {"ledger": "ledger-elsewhere"}, {"recipient": PAYER}):
        with pytest.raises(UnknownAccount):
            await open_(ledger, agent, 100, terms=terms_for(ledger, **changes))
    with pytest.raises(InsufficientFunds):
        await open_(ledger, agent, FUNDS + 1)
    with pytest.raises(ValueError):
        await open_(ledger, agent, 0)
    with pytest.raises(ValueError):
        await open_(ledger, agent, 10, terms=terms_for(ledger, "a:b"))
    assert await ledger.sessions.all() == [] and await ledger.balance(PAYER) == FUNDS

    with pytest.raises(UnknownSession):
        await top_up(ledger, agent, 2_000, sid="nope")
    with pytest.raises(UnknownSession):
        await ledger.sessions.close("nope", capture=0, voucher=None)
    await open_(ledger, agent, 1_000)
    with pytest.raises(CapSignatureInvalid):
        await top_up(ledger, mallory, 2_000)
    with pytest.raises(InsufficientFunds):
        await top_up(ledger, agent, FUNDS + 1)
    for capture, v in ((300, voucher(ledger, agent, 299)), (300, voucher(ledger, mallory, 1_000)),
                       (300, voucher(ledger, agent, 1_000, sid="sess2")), (300, None), (1_001, voucher(ledger, agent, 5_000))):
        with pytest.raises(CaptureRefused):
            await ledger.sessions.close("sess1", capture=capture, voucher=v)
    with pytest.raises(ValueError):
        await ledger.sessions.close("sess1", capture=-1, voucher=None)
    hold = await ledger.sessions.get("sess1")
    assert (hold.cap, hold.status) == (1_000, "open") and await ledger.balance(HOLDS) == 1_000
    assert (await ledger.sessions.close("sess1", capture=300, voucher=voucher(ledger, agent, 300))).captured == 300


async def test_session_caps_count_against_mandate_budgets(ledger, agent, principal):
    """SESSION-LEDGER-05: the cap (a top-up: the increase) counts against every link with the
    hold; close gives the release back; a revoked mandate opens and tops up nothing."""
    sub_agent = mpp.SigningKey.generate()
    root = mandate(principal, agent, budget_amount=5_000)
    sub = mandate(agent, sub_agent, principal=principal.did, max_depth=1, budget_amount=1_000)
    chain = charge_of(root, sub)
    with pytest.raises(BudgetExhausted):
        await open_(ledger, sub_agent, 1_001, mandate_charge=chain)
    await open_(ledger, sub_agent, 400, mandate_charge=chain)
    spent = lambda: asyncio.gather(ledger.keys.mandate_spent(link_key(root), "total"), ledger.keys.mandate_spent(link_key(sub), "total"))
    assert await spent() == [400, 400]
    with pytest.raises(BudgetExhausted):
        await top_up(ledger, sub_agent, 1_001)
    await top_up(ledger, sub_agent, 900)
    assert await spent() == [900, 900]
    with pytest.raises(BudgetExhausted):  # a charge shares the budget with the open session's cap
        await pay(ledger, "c1", 101, signer=sub_agent.did, mandate_charge=chain)
    await pay(ledger, "c1", 100, signer=sub_agent.did, mandate_charge=chain)
    await ledger.sessions.close("sess1", capture=250, voucher=voucher(ledger, sub_agent, 250))
    assert await spent() == [350, 350]  # only what was captured stays spent
    with pytest.raises(UnauthorizedSigner):  # the chain's agent must be the session's signer
        await open_(ledger, agent, 100, sid="s2", mandate_charge=chain)

    await open_(ledger, sub_agent, 300, sid="s3", mandate_charge=chain)
    await ledger.keys.revoke(I.issue_revocation(agent, sub, now=now()), sub)
    with pytest.raises(MandateRevokedError):
        await open_(ledger, sub_agent, 100, sid="s4", mandate_charge=chain)
    with pytest.raises(MandateRevokedError):
        await top_up(ledger, sub_agent, 400, sid="s3")
    closed = await ledger.sessions.close("s3", capture=100, voucher=voucher(ledger, sub_agent, 100, sid="s3"))
    assert (closed.captured, closed.released) == (100, 200)  # closing still settles and gives back
    assert await spent() == [450, 450] and await ledger.sessions.get("s4") is None


async def test_budget_running_totals_agree_with_the_transfers(location, ledgers, ledger, agent, principal):
    """Budgets are checked against a running total per (link, period), kept in the transfer's own
    transaction: after charges, refunds, voids, session holds, top-ups, captures and releases it
    equals what the transfers say each link has spent (and check() compares it with the spend rows);
    a ledger written before the totals existed gets them counted from its rows when it is opened."""
    sub_agent = mpp.SigningKey.generate()
    root = mandate(principal, agent, budget_amount=5_000, ceiling=5_000)
    sub = mandate(agent, sub_agent, principal=principal.did, max_depth=1, budget_amount=3_000, ceiling=3_000)
    direct, chain = charge_of(root), charge_of(root, sub)
    charges = {"c1": (120, direct), "c2": (230, chain), "c3": (340, chain), "c4": (450, direct), "c5": (60, chain)}
    for tid, (amount, through) in charges.items():
        await pay(ledger, tid, amount, signer=(agent if through is direct else sub_agent).did, mandate_charge=through)
    await ledger.refund("c2")
    await ledger.refund("c2")  # once
    assert await ledger.void("c4", payee=PAYEE) is not None
    assert await ledger.void("c9") is None  # never made: nothing to give back
    await open_(ledger, sub_agent, 400, sid="s1", mandate_charge=chain)
    await top_up(ledger, sub_agent, 700, sid="s1")
    await ledger.sessions.close("s1", capture=250, voucher=voucher(ledger, sub_agent, 250, sid="s1"))
    await open_(ledger, sub_agent, 300, sid="s2", mandate_charge=chain)  # still open: its cap counts
    await open_(ledger, sub_agent, 200, sid="s3", mandate_charge=chain)
    await ledger.sessions.close("s3", capture=0, voucher=None)  # all released

    made = {t.id: t for t in await ledger.transfers()}
    expected = {link_key(root): 0, link_key(sub): 0}
    for tid, (amount, through) in charges.items():
        if "refund:" + tid not in made:
            for token in through.tokens:
                expected[link_key(token)] += made[tid].amount
    for sid in ("s1", "s2", "s3"):
        held = sum(t.amount for t in made.values() if t.kind == "hold" and t.id.split(":")[1] == sid)
        if (closed := made.get("capture:" + sid)) is not None or "release:" + sid in made:
            held = closed.amount if closed is not None else 0
        for key in expected:
            expected[key] += held
    assert expected == {link_key(root): 120 + 340 + 60 + 250 + 300, link_key(sub): 340 + 60 + 250 + 300}
    assert {key: await ledger.keys.mandate_spent(key, "total") for key in expected} == expected
    assert await ledger.check() == []
    with pytest.raises(BudgetExhausted):  # the budget binds at the running total
        await pay(ledger, "c6", 3_000 - expected[link_key(sub)] + 1, signer=sub_agent.did, mandate_charge=chain)
    await pay(ledger, "c6", 3_000 - expected[link_key(sub)], signer=sub_agent.did, mandate_charge=chain)
    assert await ledger.keys.mandate_spent(link_key(sub), "total") == 3_000

    # a ledger from before the running totals: none kept yet, counted from the rows on opening
    if location.startswith("sqlite:"):
        import sqlite3

        raw = sqlite3.connect(location[len("sqlite:///") - 1:])
        with raw:
            raw.execute("DELETE FROM mandate_totals")
            raw.execute("DELETE FROM meta WHERE key='mandate_totals'")
        raw.close()
    else:
        import asyncpg

        raw = await asyncpg.connect(location)
        await raw.execute("DELETE FROM ledger_mandate_totals; DELETE FROM ledger_meta WHERE key='mandate_totals'")
        await raw.close()
    reopened = await ledgers.open()
    expected[link_key(root)] += 3_000 - 340 - 60 - 250 - 300
    expected[link_key(sub)] = 3_000
    assert {key: await reopened.keys.mandate_spent(key, "total") for key in expected} == expected
    assert await reopened.check() == [] and await ledger.keys.mandate_spent(link_key(sub), "total") == 3_000


# -- concurrency -----------------------------------------------------------------------------

BUDGET = 1_000


async def test_concurrent_purchases_under_one_mandate_stay_within_budget(ledgers, ledger, principal):
    """LEDGER-14, LEDGER-SVC-09: 40 concurrent purchases of 50 under a budget of 1000 (twice
    over), through two ledger objects (two processes' pools), from two accounts of the mandate's
    principal to two payees (so that no account's lock serializes them, only the budget's):
    exactly the budget is settled."""
    second = await ledgers.open()
    await second.create_account("acct:buyer2", "usd")
    await second.keys.allow("acct:buyer2", principal.did, "owner")
    await second.fund("acct:buyer2", FUNDS)
    agent = mpp.SigningKey.generate()
    token = mandate(principal, agent, budget_amount=BUDGET)

    async def buy(i: int) -> str:
        led, payer, payee = (ledger, PAYER, PAYEE) if i % 2 else (second, "acct:buyer2", OTHER)
        try:
            await pay(led, f"p{i}", 50, signer=agent.did, payer=payer, payee=payee, mandate_charge=charge_of(token))
        except BudgetExhausted:
            return "budget"
        return "paid"

    outcomes = await asyncio.gather(*(buy(i) for i in range(40)))
    assert sorted(outcomes) == ["budget"] * 20 + ["paid"] * 20
    assert await ledger.keys.mandate_spent(link_key(token), "total") == BUDGET
    assert await second.balance(PAYER) + await second.balance("acct:buyer2") == 2 * FUNDS - BUDGET
    assert await ledger.balance(PAYEE) + await ledger.balance(OTHER) == FUNDS + BUDGET


async def test_concurrent_repeats_of_one_transfer_move_value_once(ledgers, ledger, agent):
    """LEDGER-12, LEDGER-14: 20 concurrent submissions of one id over two ledger objects give one
    transfer; a concurrent submission on other terms is refused."""
    second = await ledgers.open()
    results = await asyncio.gather(*(pay(led, "hot", 100, signer=agent.did) for led in [ledger, second] * 10),
                                   pay(second, "hot", 99, signer=agent.did), return_exceptions=True)
    made = [r for r in results if isinstance(r, Transfer)]
    assert len({(t.id, t.amount, t.created_at) for t in made}) == 1
    winner = made[0].amount  # whichever terms came first; every submission on the others is refused
    assert len(made) == (20 if winner == 100 else 1)
    assert all(isinstance(r, TransferConflict) for r in results if not isinstance(r, Transfer))
    assert (await ledger.balance(PAYEE), len(await second.transfers())) == (winner, 3)


PROCESSES, IDS, AMOUNT, PROCESS_FUNDS = 3, 60, 7, 300
SHOPS, PURCHASES = 6, 14  # per process: PURCHASES of 50 under one mandate, over SHOPS payers and payees


def _hammer(location: str, signer: str, ids: list[str], token: str, agent: str, barrier, results) -> None:
    """One process, two workloads at once against the shared ledger: every id in ``ids`` from
    PAYER (the same ids as the other processes), and PURCHASES under ``token`` from the
    principal's accounts m0.. to the payees shop0.. (ids of this process's own)."""

    async def run() -> tuple[list[tuple[str, str]], list[str]]:
        led = await open_ledger(location)
        try:
            barrier.wait(30)

            async def one(tid: str) -> tuple[str, str]:
                try:
                    made = await led.transfer(tid, payer=PAYER, payee=PAYEE, amount=AMOUNT, currency="usd", signer=signer)
                except InsufficientFunds:
                    return tid, "insufficient"
                return tid, f"made {made.created_at}"

            async def buy(k: int) -> str:
                try:
                    await led.transfer(f"{os.getpid()}-{k}", payer=f"acct:m{k % SHOPS}", payee=f"acct:shop{(k + 1) % SHOPS}",
                                       amount=50, currency="usd", signer=agent, mandate=charge_of(token))
                except BudgetExhausted:
                    return "budget"
                return "paid"

            transfers, purchases = await asyncio.gather(asyncio.gather(*(one(t) for t in ids)),
                                                        asyncio.gather(*(buy(k) for k in range(PURCHASES))))
            return list(transfers), list(purchases)
        finally:
            await led.close()

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


async def test_processes_never_overdraw_never_overspend_and_transfer_once(location, ledgers, agent, principal):
    """LEDGER-14, CORE-ONCE-02, LEDGER-SVC-09: three processes each submit the same 60
    transfers of 7 (in their own orders, concurrently) from an account holding 300: each id moves
    value at most once, every process sees the same transfer per id, the balance never goes below
    zero. Meanwhile they make 42 purchases of 50 under one mandate (budget 1000), from six
    accounts of its principal to six payees, so that only the mandate's own lock keeps them in
    budget: exactly the budget is settled."""
    led = await ledgers.open()
    for acct in (PAYER, PAYEE):
        await led.create_account(acct, "usd")
    await led.keys.allow(PAYER, agent.did, "owner")
    await led.fund(PAYER, PROCESS_FUNDS)
    buyer = mpp.SigningKey.generate()
    token = mandate(principal, buyer, budget_amount=BUDGET)
    for k in range(SHOPS):
        await led.create_account(f"acct:m{k}", "usd")
        await led.create_account(f"acct:shop{k}", "usd")
        await led.keys.allow(f"acct:m{k}", principal.did, "owner")
        await led.fund(f"acct:m{k}", BUDGET)

    ids = [f"t{i}" for i in range(IDS)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_hammer,
                         args=(location, agent.did, random.sample(ids, len(ids)), token, buyer.did, barrier, results))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        reports = [await asyncio.to_thread(results.get, True, 60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
    assert all(isinstance(r, tuple) for r in reports), reports

    outcome: dict[str, set[str]] = {}
    for transfers, _ in reports:
        for tid, what in transfers:
            outcome.setdefault(tid, set()).add(what)
    assert all(len(seen) == 1 for seen in outcome.values()), outcome  # every process saw the same fate per id
    charges = [t for t in await led.transfers() if t.kind == "charge" and t.payer == PAYER]
    made = PROCESS_FUNDS // AMOUNT
    assert len(charges) == len({t.id for t in charges}) == made
    assert {t.id for t in charges} == {tid for tid, seen in outcome.items() if next(iter(seen)).startswith("made")}
    assert (await led.balance(PAYER), await led.balance(PAYEE)) == (PROCESS_FUNDS - made * AMOUNT, made * AMOUNT)

    purchases = [what for _, bought in reports for what in bought]
    assert sorted(purchases) == ["budget"] * (PROCESSES * PURCHASES - BUDGET // 50) + ["paid"] * (BUDGET // 50)
    assert await led.keys.mandate_spent(link_key(token), "total") == BUDGET
    assert sum([await led.balance(f"acct:shop{k}") for k in range(SHOPS)]) == BUDGET
    assert await led.total() == 0 and await led.check() == []


async def test_funding_is_idempotent_by_reference(ledger):
    """LEDGER-03: a funding repeated under its reference is the first one; other terms are refused
    (on SQLite this used to escape as a database integrity error)."""
    first = await ledger.fund(OTHER, 7, reference="fund-once")
    assert await ledger.fund(OTHER, 7, reference="fund-once") == first
    with pytest.raises(TransferConflict):
        await ledger.fund(OTHER, 8, reference="fund-once")
    assert await ledger.balance(OTHER) == FUNDS + 7
