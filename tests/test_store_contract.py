"""One contract, two engines: every assertion here runs against the SQLite stores and the
PostgreSQL stores (a real server, started once per run by the `pg_server` fixture).

"Another process" is played by a second store object on the same file or database: for
PostgreSQL that is a second connection pool, so the row locks and unique keys, not this
process's event loop, are what keep claims single and spending within the vouchers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from mpp.protocol.errors import RequestInProgress
from mpp.identity import BudgetExceeded
from mpp.protocol.models import format_rfc3339
from mpp.intents.session import SessionCapExceeded, SessionClosed, SessionInsufficient, SessionTerms, SessionUnknown, Voucher, VoucherInvalid
from mpp.stores.sessions import INSTANCE_TTL, SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore, StateError, StoredResponse
from mpp.connect import doubt_journal_for, open_payment_store, open_session_store

ENGINES = ["sqlite", "postgres"]
NOW = datetime(2031, 5, 6, 7, 8, 9, 500_000, tzinfo=timezone.utc)


@dataclass
class Engine:
    name: str
    location: Callable[[str], str]  # store kind -> where it lives


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite", lambda kind: f"sqlite:///{tmp_path}/{kind}.db")
    url = request.getfixturevalue("pg_url")  # errors (never skips) if PostgreSQL cannot start
    return Engine("postgres", lambda kind: url)


class Stores:
    """Opens stores on the engine under test (each call: another "process") and closes them after."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.opened: list[Any] = []

    async def payments(self):
        store = await open_payment_store(self.engine.location("payments"))
        self.opened.append(store)
        return store

    async def sessions(self, **kwargs: Any):
        store = await open_session_store(self.engine.location("sessions"), **kwargs)
        self.opened.append(store)
        return store


@pytest.fixture
async def stores(engine: Engine):
    made = Stores(engine)
    yield made
    for store in made.opened:
        await store.close()


def terms(session_id: str = "sess-1") -> SessionTerms:
    return SessionTerms(session_id, "api.test", "acct:seller", "ledger-1", "usd", 2, 1000)


async def open_session(store, session_id: str = "sess-1", *, cap: int = 1000, authorized: int = 500, idle_timeout: int = 300,
                       identity: dict | None = None, now: datetime = NOW):
    await store.create(terms(session_id), payer="acct:buyer", signer="did:key:zAgent", unit_type="token", cap=cap,
                       idle_timeout=idle_timeout, identity=identity, now=now)
    await store.mark_open(session_id, cap)
    return await store.advance(session_id, Voucher(authorized, 1, "sig-1"), now) if authorized else await store.get(session_id)


# -- payments --------------------------------------------------------------------------------


async def test_claim_exactly_once(stores):
    """CORE-ONCE-01: a challenge is consumed once; the record keeps what the claim said."""
    store = await stores.payments()
    assert await store.get("c1") is None
    assert await store.claim("c1", resource="GET /x", idempotency_key="k") is True
    assert await store.claim("c1", resource="GET /x", idempotency_key="k") is False
    assert await store.claim("c1", resource="GET /other", idempotency_key=None) is False
    record = await store.get("c1")
    assert (record.challenge_id, record.resource, record.state, record.idempotency_key) == ("c1", "GET /x", "settling", "k")
    assert (record.payer, record.amount, record.receipt, record.failure) == (None, None, None, None)


async def test_concurrent_claims_of_one_id_have_one_winner(stores):
    """CORE-ONCE-02: 50 concurrent claims of one challenge, spread over two stores sharing the
    data (two seller processes), give exactly one True."""
    one, two = await stores.payments(), await stores.payments()
    results = await asyncio.gather(*(s.claim("c-hot", resource="GET /x", idempotency_key=None)
                                     for s in [one, two] * 25))
    assert sorted(results) == [False] * 49 + [True]
    assert (await two.get("c-hot")).state == "settling"


async def test_payment_record_moves_only_forward(stores):
    """CHARGE-04: settling -> settled|failed; settled -> delivered|refunded; delivered -> refunded;
    anything else is a StateError and changes nothing."""
    store = await stores.payments()
    with pytest.raises(StateError):
        await store.mark("nope", "failed")
    with pytest.raises(StateError):
        await store.mark_settled("nope", payer="p", amount="1", currency="usd", reference="r", receipt="x")

    await store.claim("a", resource="GET /a", idempotency_key=None)
    for state in ("delivered", "refunded"):
        with pytest.raises(StateError):
            await store.mark("a", state)
    await store.mark_settled("a", payer="acct:buyer", amount="25", currency="usd", reference="tx-1", receipt="rcpt")
    with pytest.raises(StateError):
        await store.mark_settled("a", payer="acct:buyer", amount="25", currency="usd", reference="tx-1", receipt="rcpt")
    with pytest.raises(StateError):
        await store.mark("a", "failed")
    await store.mark("a", "delivered")
    with pytest.raises(StateError):
        await store.mark("a", "delivered")
    await store.mark("a", "refunded", failure="handler-error")
    for state in ("failed", "delivered", "refunded"):
        with pytest.raises(StateError):
            await store.mark("a", state)
    record = await store.get("a")
    assert (record.state, record.payer, record.amount, record.currency, record.reference, record.receipt, record.failure) == \
        ("refunded", "acct:buyer", "25", "usd", "tx-1", "rcpt", "handler-error")

    await store.claim("b", resource="GET /b", idempotency_key=None)
    await store.mark("b", "failed", failure="payment-insufficient")
    with pytest.raises(StateError):
        await store.mark_settled("b", payer="p", amount="1", currency="usd", reference="r", receipt="x")
    assert (await store.get("b")).state == "failed"

    await store.claim("c", resource="GET /c", idempotency_key=None)
    await store.mark_settled("c", payer="p", amount="1", currency="usd", reference="r", receipt="x")
    await store.mark("c", "refunded")  # settled -> refunded directly; failure left as it was
    assert ((await store.get("c")).state, (await store.get("c")).failure) == ("refunded", None)


async def test_responses_saved_and_replayed(stores):
    """CORE-ONCE-06: the response kept for Idempotency-Key retries round-trips byte for byte;
    saving again replaces it; another store (process) sees it."""
    store, other = await stores.payments(), await stores.payments()
    assert await store.get_response("r1") is None
    await store.claim("r1", resource="GET /x", idempotency_key="k")
    kept = StoredResponse(200, [("Content-Type", "application/json"), ("X-Twice", "1"), ("X-Twice", "2")], b"\x00{\"a\":1}\xff")
    await store.save_response("r1", kept)
    await store.save_response("r1", kept)
    assert await other.get_response("r1") == kept
    again = StoredResponse(201, [], b"")
    await store.save_response("r1", again)
    assert await store.get_response("r1") == again


async def test_mandate_spend_accounting(stores):
    """IDENT-BUD-04, IDENT-APR-06: a settled purchase counts once against each link in its period;
    a refund takes it back; an approval, once used, stays used."""
    store = await stores.payments()
    assert await store.mandate_spent({}) == {}
    for cid in ("p1", "p2"):
        await store.claim(cid, resource="GET /x", idempotency_key=None)
    links = [("iss#root", "day:2031-05-06"), ("iss#leaf", "day:2031-05-06")]
    await store.record_mandate_spend("p1", links, 100, "iss#apr_1")
    await store.record_mandate_spend("p1", links, 100, "iss#apr_1")  # a retry counts nothing twice
    await store.record_mandate_spend("p2", links[:1], 30, None)
    periods = {"iss#root": "day:2031-05-06", "iss#leaf": "day:2031-05-06", "iss#none": "day:2031-05-06"}
    assert await store.mandate_spent(periods) == {"iss#root": 130, "iss#leaf": 100, "iss#none": 0}
    assert await store.mandate_spent({"iss#root": "day:2031-05-07"}) == {"iss#root": 0}
    assert await store.approval_used("iss#apr_1") is True
    assert await store.approval_used("iss#apr_2") is False
    await store.forget_mandate_spend("p1")
    assert await store.mandate_spent(periods) == {"iss#root": 30, "iss#leaf": 0, "iss#none": 0}
    await store.forget_mandate_spend("p1")  # again: nothing more is taken back
    assert await (await stores.payments()).mandate_spent(periods) == {"iss#root": 30, "iss#leaf": 0, "iss#none": 0}
    assert await store.approval_used("iss#apr_1") is True
    big = 2**53  # mandate amounts stay within 2**53 (JSON-safe integers)
    await store.claim("p3", resource="GET /x", idempotency_key=None)
    await store.record_mandate_spend("p3", links[1:], big, None)
    await store.claim("p4", resource="GET /x", idempotency_key=None)
    await store.record_mandate_spend("p4", links[1:], big, None)
    assert (await store.mandate_spent({"iss#leaf": "day:2031-05-06"}))["iss#leaf"] == 2 * big


# -- sessions --------------------------------------------------------------------------------


async def test_session_create_open_and_cap(stores):
    """SESSION-OPEN-03, SESSION-VOUCHER-06, SESSION-VOUCHER-08: a session is recorded once (a second
    create returns the first), opens once, and its cap only grows."""
    store = await stores.sessions()
    assert await store.get("sess-1") is None
    identity = {"agent": "did:key:zA", "principal": "did:key:zP", "chain": ["j1"], "charged": {}}
    state, created = await store.create(terms(), payer="acct:buyer", signer="did:key:zAgent", unit_type="token", cap=800,
                                        idle_timeout=120, identity=identity, now=NOW)
    assert created is True
    assert (state.session_id, state.terms, state.payer, state.signer, state.unit_type) == \
        ("sess-1", terms(), "acct:buyer", "did:key:zAgent", "token")
    assert (state.cap, state.authorized, state.voucher, state.spent, state.status, state.idle_timeout) == (800, 0, None, 0, "opening", 120)
    assert state.identity == identity and state.opened_at == state.last_used_at == format_rfc3339(NOW)
    again, created = await store.create(terms(), payer="acct:other", signer="did:key:zOther", unit_type="token", cap=5,
                                        idle_timeout=1, identity=None, now=NOW + timedelta(seconds=5))
    assert created is False and again == state
    with pytest.raises(SessionClosed):  # opening is not usable yet
        await store.advance("sess-1", Voucher(10, 1, "s"), NOW)
    opened = await store.mark_open("sess-1", 900)
    assert (opened.status, opened.cap) == ("open", 900)
    assert (await store.mark_open("sess-1", 5000)).cap == 900  # opens once
    assert (await store.set_cap("sess-1", 700)).cap == 900
    assert (await store.set_cap("sess-1", 1200)).cap == 1200
    for call in (store.set_cap("ghost", 10), store.mark_open("ghost", 10), store.advance("ghost", Voucher(1, 1, "s"), NOW),
                 store.reserve("ghost", "r", 1, NOW), store.begin_close("ghost", NOW)):
        with pytest.raises(SessionUnknown):
            await call


async def test_voucher_advance_rules(stores):
    """SESSION-VOUCHER-02, SESSION-VOUCHER-03, SESSION-VOUCHER-04, SESSION-ERR-03: a higher voucher
    with a higher sequence raises the authorized value; equal or lower is a harmless retry; a
    higher one without a higher sequence, or above the cap, is refused and changes nothing."""
    store = await stores.sessions()
    await open_session(store, cap=1000, authorized=0)
    state = await store.advance("sess-1", Voucher(100, 1, "sig-a"), NOW)
    assert (state.authorized, state.voucher) == (100, Voucher(100, 1, "sig-a"))
    later = NOW + timedelta(seconds=30)
    for retry in (Voucher(100, 1, "sig-a"), Voucher(100, 7, "sig-x"), Voucher(50, 9, "sig-y")):
        state = await store.advance("sess-1", retry, later)
        assert (state.authorized, state.voucher) == (100, Voucher(100, 1, "sig-a"))
    assert state.last_used_at == format_rfc3339(later)
    for stale_sequence in (1, 0):
        with pytest.raises(VoucherInvalid, match="sequence above 1"):
            await store.advance("sess-1", Voucher(200, stale_sequence, "sig-b"), NOW)
    with pytest.raises(SessionCapExceeded) as over:
        await store.advance("sess-1", Voucher(1001, 5, "sig-c"), NOW)
    assert over.value.extensions == {"sessionId": "sess-1", "cap": "1000", "authorized": "100"}
    assert (await store.get("sess-1")).voucher == Voucher(100, 1, "sig-a")
    state = await store.advance("sess-1", Voucher(1000, 2, "sig-d"), NOW)  # exactly the cap
    assert (state.authorized, state.remaining) == (1000, 1000)


async def test_reserve_commit_release(stores):
    """SESSION-USE-01, SESSION-USE-03, SESSION-USE-04, SESSION-USE-05: a reservation fits in
    what is authorized and not yet spent or held; commit spends at most the reservation and
    frees the hold; release frees it with nothing spent."""
    store = await stores.sessions()
    await open_session(store, authorized=100)
    await store.reserve("sess-1", "r1", 60, NOW)
    with pytest.raises(SessionInsufficient) as short:
        await store.reserve("sess-1", "r2", 41, NOW)
    assert short.value.extensions == {"sessionId": "sess-1", "required": "101", "authorized": "100", "spent": "0", "cap": "1000"}
    await store.reserve("sess-1", "r2", 40, NOW)
    with pytest.raises(ValueError, match="more than the 60 reserved"):
        await store.commit("sess-1", "r1", resource="GET /complete", unit_price=2, per=1000, units=99, amount=61, now=NOW)
    state = await store.commit("sess-1", "r1", resource="GET /complete", unit_price=2, per=1000, units=25_000, amount=50, now=NOW)
    assert (state.spent, state.authorized) == (50, 100)
    await store.release("sess-1", "r2")  # the handler failed: nothing spent
    await store.release("sess-1", "r2")  # twice is harmless
    assert (await store.get("sess-1")).spent == 50
    await store.reserve("sess-1", "r3", 50, NOW)  # 50 spent + 50 held = 100 authorized
    await store.release("sess-1", "r3")
    # streaming: no hold, each chunk must fit in what is free
    state = await store.commit("sess-1", "s1", resource="GET /stream", unit_price=2, per=1000, units=5000, amount=10, now=NOW)
    with pytest.raises(SessionInsufficient) as chunk:
        await store.commit("sess-1", "s1", resource="GET /stream", unit_price=2, per=1000, units=30_000, amount=41, now=NOW)
    assert chunk.value.extensions["required"] == "101" and chunk.value.extensions["spent"] == "60"
    assert (await store.get("sess-1")).spent == 60 == state.spent
    # a reservation kept across chunks (release_hold=False) until the last
    await store.reserve("sess-1", "s2", 40, NOW)
    for _ in range(3):
        await store.commit("sess-1", "s2", resource="GET /stream", unit_price=2, per=1000, units=5000, amount=10, now=NOW,
                           release_hold=False)
    with pytest.raises(SessionInsufficient):  # the hold of 40 still counts
        await store.reserve("sess-1", "r4", 1, NOW)
    await store.release("sess-1", "s2")
    assert (await store.get("sess-1")).spent == 90
    with pytest.raises(SessionInsufficient):
        await store.reserve("sess-1", "r5", 11, NOW)
    zero = await store.commit("sess-1", "r6", resource="GET /complete", unit_price=2, per=1000, units=0, amount=0, now=NOW)
    assert zero.spent == 90


async def test_concurrent_reserves_never_exceed_the_voucher(stores):
    """SESSION-USE-02: 30 concurrent reservations over two seller processes sharing the store
    never set aside more than the accepted voucher; commits keep spent within it."""
    one, two = await stores.sessions(), await stores.sessions()
    await open_session(one, authorized=100)
    outcomes = await asyncio.gather(*(store.reserve("sess-1", f"r{i}", 7, NOW) for i, store in enumerate([one, two] * 15)),
                                    return_exceptions=True)
    won = [f"r{i}" for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
    assert all(isinstance(o, SessionInsufficient) for o in outcomes if isinstance(o, BaseException)), outcomes
    assert len(won) == 100 // 7  # 14 holds of 7 = 98 <= 100 < 105
    states = await asyncio.gather(*(s.commit("sess-1", rid, resource="GET /complete", unit_price=2, per=1000, units=3500, amount=7,
                                             now=NOW) for rid, s in zip(won, [two, one] * 15)))
    assert max(s.spent for s in states) == 98 == (await one.get("sess-1")).spent
    # streaming commits (no hold) racing for the last 2
    results = await asyncio.gather(*(s.commit("sess-1", f"c{i}", resource="GET /stream", unit_price=2, per=1000, units=500,
                                              amount=1, now=NOW) for i, s in enumerate([one, two] * 5)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert (await two.get("sess-1")).spent == 100


async def test_close_waits_for_running_requests_and_stops_spending(stores):
    """SESSION-CLOSE-01, SESSION-CLOSE-02, SESSION-STREAM-05, SESSION-VOUCHER-06: a close refuses
    while a reservation is live, then stops all spending; the final figures are kept and a
    second close changes nothing."""
    store = await stores.sessions()
    await open_session(store, authorized=100)
    await store.reserve("sess-1", "r1", 30, NOW)
    with pytest.raises(RequestInProgress):
        await store.begin_close("sess-1", NOW)
    assert (await store.get("sess-1")).status == "open"
    await store.commit("sess-1", "r1", resource="GET /complete", unit_price=2, per=1000, units=10_000, amount=20, now=NOW)
    closing = await store.begin_close("sess-1", NOW)
    assert (closing.status, closing.spent) == ("closing", 20)
    assert await store.begin_close("sess-1", NOW) == closing
    for call in (store.reserve("sess-1", "r2", 1, NOW), store.advance("sess-1", Voucher(200, 2, "s2"), NOW), store.set_cap("sess-1", 5000),
                 store.commit("sess-1", "s1", resource="GET /stream", unit_price=2, per=1000, units=500, amount=1, now=NOW)):
        with pytest.raises(SessionClosed, match="session is closing"):
            await call
    done = await store.finish_close("sess-1", captured=20, released=980, settlement="tx-9", final_receipt="jws", now=NOW)
    assert (done.status, done.captured, done.released, done.settlement, done.final_receipt, done.spent) == \
        ("closed", 20, 980, "tx-9", "jws", 20)
    again = await store.finish_close("sess-1", captured=99, released=1, settlement="other", final_receipt="other", now=NOW)
    assert again == done
    assert await store.begin_close("sess-1", NOW) == done
    assert await store.mark_open("sess-1", 5000) == done
    with pytest.raises(SessionClosed, match="session is closed"):
        await store.reserve("sess-1", "r3", 1, NOW)


async def test_usage_lines(stores):
    """SESSION-USE-04: one usage line per resource and price, summing units, amounts and requests,
    in order of first use; a streamed request's chunks add to its own line."""
    store = await stores.sessions()
    await open_session(store, cap=10_000, authorized=10_000)
    assert await store.usage("sess-1") == []
    t = [NOW + timedelta(seconds=i) for i in range(5)]
    await store.commit("sess-1", "a1", resource="GET /complete", unit_price=2, per=1000, units=1000, amount=2, now=t[0])
    await store.commit("sess-1", "b1", resource="GET /stream", unit_price=3, per=1000, units=500, amount=2, now=t[1])
    await store.commit("sess-1", "b1", resource="GET /stream", unit_price=3, per=1000, units=500, amount=1, now=t[2])
    await store.commit("sess-1", "a2", resource="GET /complete", unit_price=2, per=1000, units=3000, amount=6, now=t[3])
    await store.commit("sess-1", "c1", resource="GET /complete", unit_price=5, per=1000, units=1000, amount=5, now=t[4])
    lines = [line.as_json() for line in await store.usage("sess-1")]
    assert lines == [
        {"resource": "GET /complete", "unitType": "token", "unitPrice": "2", "per": "1000", "units": 4000, "amount": "8", "requests": 2},
        {"resource": "GET /stream", "unitType": "token", "unitPrice": "3", "per": "1000", "units": 1000, "amount": "3", "requests": 1},
        {"resource": "GET /complete", "unitType": "token", "unitPrice": "5", "per": "1000", "units": 1000, "amount": "5", "requests": 1},
    ]
    assert (await store.get("sess-1")).spent == 16
    assert await store.usage("ghost") == []


async def test_idempotency_keys_under_a_session(stores):
    """SESSION-USE-06, CORE-ONCE-07: a key is new once, running until saved, then replays its
    response; another resource under the key conflicts; a failed first request drops it."""
    store, other = await stores.sessions(), await stores.sessions()
    await open_session(store)
    results = await asyncio.gather(*(s.keys.claim("sess-1", "k1", "GET /complete?units=5") for s in [store, other] * 10))
    assert sorted(status for status, _ in results) == ["new"] + ["running"] * 19
    assert await store.keys.claim("sess-1", "k1", "GET /complete?units=6") == ("conflict", None)
    kept = StoredResponse(200, [("Content-Type", "application/json")], b'{"units":5}\x00')
    await store.keys.save("sess-1", "k1", kept)
    await store.keys.drop("sess-1", "k1")  # a finished key is not dropped
    assert await other.keys.claim("sess-1", "k1", "GET /complete?units=5") == ("done", kept)
    assert await other.keys.claim("sess-1", "k1", "GET /other") == ("conflict", None)
    assert await store.keys.claim("sess-1", "k2", "GET /x") == ("new", None)
    await store.keys.drop("sess-1", "k2")
    assert await other.keys.claim("sess-1", "k2", "GET /y") == ("new", None)
    await open_session(store, "sess-2")  # keys are per session
    assert await store.keys.claim("sess-2", "k1", "GET /x") == ("new", None)


async def test_commit_keeps_the_idempotent_response_in_its_own_transaction(stores):
    """SESSION-USE-06, SESSION-USE-04: the response kept for an Idempotency-Key is rendered from the
    committed state and written in the commit's transaction: a retry finds the charged request's
    response, or (the commit failed) no charge at all."""
    store, other = await stores.sessions(), await stores.sessions()
    await open_session(store, authorized=100)
    seen: list[int] = []

    def render(state) -> StoredResponse:
        seen.append(state.spent)
        return StoredResponse(200, [("Payment-Receipt", f"spent={state.spent}")], b"ok")

    assert await store.keys.claim("sess-1", "k1", "GET /complete") == ("new", None)
    await store.reserve("sess-1", "r1", 30, NOW)
    state = await store.commit("sess-1", "r1", resource="GET /complete", unit_price=2, per=1000, units=10_000, amount=20,
                               now=NOW, idempotency_key="k1", render=render)
    assert seen == [20] and state.spent == 20
    assert await other.keys.claim("sess-1", "k1", "GET /complete") == \
        ("done", StoredResponse(200, [("Payment-Receipt", "spent=20")], b"ok"))

    def broken(state):
        raise RuntimeError("rendering failed")

    assert await store.keys.claim("sess-1", "k2", "GET /complete") == ("new", None)
    await store.reserve("sess-1", "r2", 30, NOW)
    with pytest.raises(RuntimeError):
        await store.commit("sess-1", "r2", resource="GET /complete", unit_price=2, per=1000, units=10_000, amount=20, now=NOW,
                           idempotency_key="k2", render=broken)
    assert (await store.get("sess-1")).spent == 20  # nothing of the failed commit stayed
    assert [line.amount for line in await store.usage("sess-1")] == [20]
    assert await other.keys.claim("sess-1", "k2", "GET /complete") == ("running", None)
    state = await store.commit("sess-1", "r2", resource="GET /complete", unit_price=2, per=1000, units=5000, amount=10, now=NOW,
                               idempotency_key="k2", render=lambda state: None)  # nothing to keep (a stream)
    assert state.spent == 30 and await other.keys.claim("sess-1", "k2", "GET /complete") == ("running", None)


async def test_a_dead_process_running_key_is_taken_over(stores):
    """SESSION-USE-06, SESSION-CLOSE-05: a key left running by a process that stopped beating is
    taken over by the retry (once); a live owner's key stays running."""
    a = await stores.sessions()
    b = await stores.sessions(instance_ttl=timedelta(0))  # to b, every other process looks dead
    await open_session(a)
    assert await a.keys.claim("sess-1", "k", "GET /complete") == ("new", None)
    assert await b.keys.claim("sess-1", "k", "GET /complete") == ("new", None)  # taken over
    assert await a.keys.claim("sess-1", "k", "GET /complete") == ("running", None)  # b is alive to a
    assert await a.keys.claim("sess-1", "k", "GET /other") == ("conflict", None)
    await b.keys.save("sess-1", "k", StoredResponse(200, [], b"done"))
    assert await b.keys.claim("sess-1", "k", "GET /complete") == ("done", StoredResponse(200, [], b"done"))


async def test_reservations_of_a_silent_process_stop_counting(stores):
    """SESSION-CLOSE-05: a reservation belongs to its process; once that process has not beaten
    for the instance TTL, its holds neither count against the voucher nor hold up a close."""
    ttl = timedelta(seconds=15)
    a, b = await stores.sessions(instance_ttl=ttl), await stores.sessions(instance_ttl=ttl)
    assert a.instance != b.instance and a.instance_ttl == ttl
    await open_session(a, authorized=100)
    await a.reserve("sess-1", "held-by-a", 80, NOW)
    with pytest.raises(SessionInsufficient):
        await b.reserve("sess-1", "b1", 30, NOW + timedelta(seconds=10))
    await a.heartbeat(NOW + timedelta(seconds=12))  # a is alive: its hold counts 15 s past that beat
    with pytest.raises(SessionInsufficient):
        await b.reserve("sess-1", "b1", 30, NOW + timedelta(seconds=26))
    with pytest.raises(RequestInProgress):
        await b.begin_close("sess-1", NOW + timedelta(seconds=26))
    later = NOW + timedelta(seconds=28)  # a silent for more than the TTL
    await b.reserve("sess-1", "b1", 100, later)
    await b.release("sess-1", "b1")
    assert (await b.begin_close("sess-1", later)).status == "closing"
    assert INSTANCE_TTL == timedelta(seconds=15)


async def test_idle_sessions(stores):
    """SESSION-CLOSE-03: a session unused for its idle timeout is listed for closing (as are
    sessions left opening or closing); use resets the clock; closed sessions are not listed."""
    store = await stores.sessions()
    await open_session(store, "s-idle", idle_timeout=60)
    await open_session(store, "s-busy", idle_timeout=60)
    await store.create(terms("s-opening"), payer="acct:buyer", signer="did:key:zA", unit_type="token", cap=10, idle_timeout=60,
                       identity=None, now=NOW)
    await open_session(store, "s-closed", idle_timeout=60)
    await store.begin_close("s-closed", NOW)
    await store.finish_close("s-closed", captured=0, released=1000, settlement="tx", final_receipt="r", now=NOW)
    assert await store.idle(NOW + timedelta(seconds=59)) == []
    await store.advance("s-busy", Voucher(500, 1, "sig-1"), NOW + timedelta(seconds=30))
    # stored to the second: NOW is 07:08:09.5, so 60 s after the stored 07:08:09
    assert sorted(await store.idle(NOW + timedelta(seconds=59.5))) == ["s-idle", "s-opening"]
    assert sorted(await store.idle(NOW + timedelta(seconds=90))) == ["s-busy", "s-idle", "s-opening"]


async def test_session_caps_count_against_mandate_links(stores):
    """SESSION-ID-02: a session's cap counts against this seller's share of each mandate link's
    budget (its capture once closed); concurrent opens under one link never exceed it."""
    one, two = await stores.sessions(), await stores.sessions()
    period = "day:2031-05-06"

    def identity(charged: int = 0) -> dict:
        return {"agent": "did:key:zA", "links": [["iss#root", period, 1000], ["iss#leaf", period, 5000]],
                "charged": {"iss#root": charged}}

    await open_session(one, "m1", cap=600, identity=identity())
    with pytest.raises(BudgetExceeded, match="iss#root"):
        await one.create(terms("m2"), payer="acct:buyer", signer="did:key:zA", unit_type="token", cap=500, idle_timeout=60,
                         identity=identity(), now=NOW)
    with pytest.raises(BudgetExceeded):  # the caller's own charges under the link count too
        await one.create(terms("m2"), payer="acct:buyer", signer="did:key:zA", unit_type="token", cap=300, idle_timeout=60,
                         identity=identity(charged=101), now=NOW)
    assert await two.get("m2") is None
    await open_session(two, "m2", cap=300, authorized=100, identity=identity(charged=100))
    assert await one.mandates.held({"iss#root": period, "iss#leaf": period, "iss#x": period}) == \
        {"iss#root": 900, "iss#leaf": 900, "iss#x": 0}
    assert await one.mandates.held({"iss#root": "day:2031-05-07"}) == {"iss#root": 0}
    # re-creating an existing session is not counted against itself
    again, created = await two.create(terms("m1"), payer="acct:buyer", signer="did:key:zAgent", unit_type="token", cap=600,
                                      idle_timeout=60, identity=identity(), now=NOW)
    assert created is False and again.cap == 600
    # nor refused for a budget that its own cap and later charges now fill: a repeated open returns it
    again, created = await two.create(terms("m1"), payer="acct:buyer", signer="did:key:zAgent", unit_type="token", cap=600,
                                      idle_timeout=60, identity=identity(charged=900), now=NOW)
    assert created is False and again.session_id == "m1"
    await one.begin_close("m1", NOW)
    await one.finish_close("m1", captured=150, released=450, settlement="tx", final_receipt="r", now=NOW)
    assert (await two.mandates.held({"iss#root": period}))["iss#root"] == 450
    # 12 concurrent opens of 200 each, over two processes, for the 550 left: exactly 2 fit
    outcomes = await asyncio.gather(*(s.create(terms(f"c{i}"), payer="acct:buyer", signer="did:key:zA", unit_type="token", cap=200,
                                               idle_timeout=60, identity=identity(), now=NOW)
                                      for i, s in enumerate([one, two] * 6)), return_exceptions=True)
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 2
    assert all(isinstance(o, BudgetExceeded) for o in outcomes if isinstance(o, BaseException)), outcomes
    assert (await one.mandates.held({"iss#root": period}))["iss#root"] == 850


# -- choosing the engine -------------------------------------------------------------------


async def test_in_doubt_journal_is_shared_and_outlives_its_writer(engine):
    """LEDGER-SVC-10: a transfer noted in doubt by one seller process (store object) is seen by
    another on the same store, and by a new one after the first closed; the first reason is kept;
    removed once voided."""
    first = doubt_journal_for(engine.location("payments"))
    second = doubt_journal_for(engine.location("payments"))
    try:
        await first.add("t-1", "settle got no usable answer")
        await first.add("t-2", "refund got no answer")
        await first.add("t-1", "a later reason")
        assert await second.pending() == {"t-1": "settle got no usable answer", "t-2": "refund got no answer"}
        await first.close()
        third = doubt_journal_for(engine.location("payments"))
        await third.remove("t-1")
        await third.remove("t-unknown")  # nothing to remove: no error
        assert await second.pending() == {"t-2": "refund got no answer"}
        await third.close()
    finally:
        await second.close()


async def test_store_kind_follows_the_url(engine, stores):
    """The URL picks the engine: sqlite:///path or a plain path -> SQLite, postgresql:// -> PostgreSQL."""
    payments, sessions = await stores.payments(), await stores.sessions()
    if engine.name == "sqlite":
        assert isinstance(payments, SqlitePaymentStore) and isinstance(sessions, SqliteSessionStore)
    else:
        from mpp.stores.pg import PgPaymentStore, PgSessionStore

        assert isinstance(payments, PgPaymentStore) and isinstance(sessions, PgSessionStore)


def test_unknown_store_urls_are_refused(tmp_path: Path):
    from mpp.cli.config import ConfigError, init_home, load_seller_config
    from mpp.connect import check_location, payment_store_for

    with pytest.raises(ValueError, match="not a SQLite location"):
        payment_store_for("mysql://db/x")
    assert check_location("postgresql://u@h/db") == "postgresql://u@h/db"
    init_home(tmp_path / "home")
    toml = tmp_path / "home" / "seller.toml"
    toml.write_text(toml.read_text().replace('store = "ledger.db"', 'store = "redis://x"'))
    with pytest.raises(ConfigError, match="store"):
        load_seller_config(toml)
    toml.write_text(toml.read_text().replace('store = "redis://x"', 'store = "sqlite:seller/p.db"'))
    config = load_seller_config(toml)
    assert config.locate(config.store) == str(tmp_path / "home" / "seller" / "p.db")
    assert config.sessions_location == str(tmp_path / "home" / "seller" / "sessions.db")


# -- several processes, and a served seller, on PostgreSQL -----------------------------------


def _claim_in_process(url: str, barrier, results) -> None:
    async def claim() -> bool:
        store = await open_payment_store(url)
        try:
            barrier.wait()
            return await store.claim("c-multi", resource="GET /x", idempotency_key=None)
        finally:
            await store.close()

    results.put(asyncio.run(claim()))


def test_claim_across_processes_on_postgres_has_one_winner(pg_url: str):
    """CORE-ONCE-02: seller processes sharing one PostgreSQL database: exactly one claim wins."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(pg_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(results.get(timeout=5) for _ in procs) == [False] * 3 + [True]


async def test_seller_serves_from_postgres(tmp_path: Path, pg_url: str):
    """CHARGE-01, SESSION-OPEN-03: `store = "postgresql://..."` in seller.toml: a paid charge and a
    metered session call are recorded in PostgreSQL (sessions default to the same database)."""
    import aiohttp
    import asyncpg

    from conftest import owning_home, start_seller, stop_seller
    from mpp.aio import PaymentClient, SessionPolicy
    from mpp.methods.ledger import LedgerBuyerMethod

    home = owning_home(tmp_path / "home")  # the test pays bare (no identity)
    toml = home / "seller.toml"
    toml.write_text(toml.read_text().replace('store = "ledger.db"', f'store = "{pg_url}"'))
    seller = start_seller(home)
    failure: BaseException | None = None
    try:
        wallet = seller.wallet
        async with aiohttp.ClientSession() as http:
            client = PaymentClient(http, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                                   sessions=SessionPolicy(max_cap=400))
            async with client:
                paid = await client.request("GET", seller.url + "/weather")
                assert paid.status == 200 and paid.paid and paid.claims["amount"] == "25"
                metered = await client.request("GET", seller.url + "/complete?units=1000")
                assert metered.status == 200, metered.body
    except BaseException as exc:  # reported with the seller's log below
        failure = exc
    err = stop_seller(seller)
    assert failure is None and "Traceback" not in err, f"{failure!r}\nseller log:\n{err}"
    assert not (home / "sessions.db").exists()  # the sessions follow the payment store to PostgreSQL
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE state='delivered'") == 1
        assert await conn.fetchval("SELECT status FROM sessions") == "closed"
        assert await conn.fetchval("SELECT sum(amount) FROM session_usage") == 2
    finally:
        await conn.close()
