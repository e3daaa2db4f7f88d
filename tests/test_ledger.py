"""The embedded ledger: double entry, at-most-once transfers, clean refusals."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from mpp.ledger import InsufficientFunds, SqliteLedger, TransferConflict, UnauthorizedSigner, UnknownAccount


AGENT = "did:key:z6MkfyRairR3MJjseC3WuNxxKZ4THNiXrMjjzot7bahmwSNM"  # fixed: spawned processes import this module again


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    led = SqliteLedger(str(tmp_path / "ledger.db"))
    led.create_account("acct:buyer", "usd")
    led.create_account("acct:seller", "usd")
    led.keys.allow("acct:buyer", AGENT, "owner")
    led.fund("acct:buyer", 1_000)
    yield led
    led.close()


def pay(ledger: SqliteLedger, tid: str, amount: int = 100, signer: str | None = AGENT):
    return ledger.transfer(tid, payer="acct:buyer", payee="acct:seller", amount=amount, currency="usd", signer=signer)


def test_transfer_is_two_postings_summing_to_zero(ledger):
    """LEDGER-02, LEDGER-03: every transfer is two postings that sum to zero; balances stay consistent."""
    pay(ledger, "c1")
    assert ledger.balance("acct:buyer") == 900 and ledger.balance("acct:seller") == 100
    assert ledger.total() == 0
    assert ledger.check() == []


def test_same_transfer_id_moves_money_once(ledger):
    """LEDGER-12, CORE-ONCE-03: settlement is keyed by challenge id and happens at most once."""
    first = pay(ledger, "c1")
    again = pay(ledger, "c1")
    assert again == first
    assert ledger.balance("acct:seller") == 100
    with pytest.raises(TransferConflict):
        pay(ledger, "c1", amount=101)


def test_insufficient_balance_is_a_clean_refusal(ledger):
    """LEDGER-13, LEDGER-01: insufficient balance refuses and changes nothing."""
    with pytest.raises(InsufficientFunds):
        pay(ledger, "c1", amount=1_001)
    assert ledger.balance("acct:buyer") == 1_000 and ledger.get_transfer("c1") is None


def test_unauthorized_signer_and_unknown_accounts(ledger):
    """LEDGER-11: only keys authorized for the payer account may spend from it, in its currency."""
    with pytest.raises(UnauthorizedSigner):
        pay(ledger, "c1", signer="did:key:zMallory")
    with pytest.raises(UnknownAccount):
        ledger.transfer("c2", payer="acct:nobody", payee="acct:seller", amount=1, currency="usd", signer=None)
    with pytest.raises(UnknownAccount):
        ledger.transfer("c3", payer="acct:buyer", payee="acct:seller", amount=1, currency="eur", signer=AGENT)
    assert ledger.balance("acct:buyer") == 1_000


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
def test_amounts_are_positive_integers(ledger, amount):
    """LEDGER-02: money is positive integers in base units."""
    with pytest.raises(ValueError):
        pay(ledger, "c1", amount=amount)


def test_refund_reverses_once(ledger):
    """LEDGER-15, CORE-ONCE-08: a refund after a failed delivery happens once."""
    pay(ledger, "c1")
    ledger.refund("c1")
    ledger.refund("c1")
    assert ledger.balance("acct:buyer") == 1_000 and ledger.balance("acct:seller") == 0
    assert [t.kind for t in ledger.transfers()] == ["fund", "charge", "refund"]


def _settle_in_process(path: str, tid: str, barrier, results) -> None:
    led = SqliteLedger(path)
    barrier.wait()
    try:
        pay(led, tid)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(type(exc).__name__)
    finally:
        led.close()


def test_concurrent_processes_settle_one_challenge_once(ledger, tmp_path):
    """LEDGER-14, CORE-ONCE-02: several processes settling one challenge id move the money once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_settle_in_process, args=(ledger.location, "c1", barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * 6  # idempotent: every caller sees the one transfer
    assert ledger.balance("acct:seller") == 100
    assert len([t for t in ledger.transfers() if t.kind == "charge"]) == 1
