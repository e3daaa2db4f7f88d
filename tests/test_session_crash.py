"""Sessions survive a seller killed with SIGKILL (issue 5): the real `mpp seller serve` process is
killed mid-session and restarted on the same home; the highest voucher and the spending stay,
the close captures exactly once, and no value appears or disappears in the ledger.

The buyer side is hand-built (tests/_session_support.py) against the subprocess seller; the
seller's receipt key, realm and HMAC secret come from the home, so a restarted seller (on a new
port) still verifies the session's opening challenge and its receipts verify with the same key.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

import mpp
from mpp.aio.metering import SESSION_PATH
from mpp.cli.config import load_seller_config, load_wallet
from mpp.ledger import SqliteLedger
from mpp.intents.session import cost_of
from mpp.stores.sessions import INSTANCE_TTL, SqliteSessionStore

from _session_support import RawSession, open_session, receipt_claims, send
from conftest import ServedSeller, start_seller, stop_seller

# the /complete route of `mpp init`'s seller.toml: 2 usd per 1000 tokens, at most 4000 tokens a request
PRICE, PER, MAX_UNITS = 2, 1000, 4000
MAX_COST = cost_of(MAX_UNITS, PRICE, PER)  # 8: what one request reserves
BUYER, SELLER = "acct:buyer", "acct:seller"
CLOSE_PATH = SESSION_PATH


@dataclass
class Remote:
    """What the _session_support helpers need of a SessionWorld, for a seller in another process
    whose address changes on every restart."""

    home: Path
    http: aiohttp.ClientSession
    served: ServedSeller | None = None
    agent: mpp.SigningKey = field(init=False)
    seller: Any = field(init=False)  # realm, receipt_key and clock, for receipt_claims

    def __post_init__(self) -> None:
        self.agent = load_wallet(self.home / "agent").key
        config = load_seller_config(self.home / "seller.toml")
        self.seller = SimpleNamespace(realm=config.realm, receipt_key=mpp.SigningKey.load(config.resolve(config.receipt_key)),
                                      clock=lambda: datetime.now(timezone.utc))

    def url(self, path: str) -> str:
        assert self.served is not None, "no seller running"
        return self.served.url + path

    def start(self) -> None:
        assert self.served is None
        self.served = start_seller(self.home)

    def kill(self) -> None:
        """SIGKILL: no cleanup handler, no graceful shutdown, in-flight requests die with it."""
        assert self.served is not None
        self.served.process.kill()
        self.served.process.communicate(timeout=10)
        self.served = None

    def stop(self) -> None:
        assert self.served is not None
        err = stop_seller(self.served)
        self.served = None
        assert "Traceback" not in err, err

    def ledger(self) -> SqliteLedger:
        return SqliteLedger(str(self.home / "ledger.db"))

    @property
    def sessions_db(self) -> Path:
        return self.home / "sessions.db"  # beside the payment store, which mpp init keeps in ledger.db

    def session_row(self, sid: str) -> dict[str, Any]:
        with sqlite3.connect(self.sessions_db) as c:
            c.row_factory = sqlite3.Row
            row = c.execute("SELECT authorized, voucher_seq, spent, status, captured FROM sessions WHERE id=?", (sid,)).fetchone()
            return dict(row)

    def usage_rows(self, sid: str) -> dict[str, int]:
        """request id -> amount committed for it, as the seller's store has them."""
        with sqlite3.connect(self.sessions_db) as c:
            return dict(c.execute("SELECT request_id, amount FROM session_usage WHERE session_id=?", (sid,)).fetchall())

    def hold_rows(self, sid: str) -> list[tuple[str, int, str]]:
        with sqlite3.connect(self.sessions_db) as c:
            return c.execute("SELECT request_id, amount, owner FROM session_holds WHERE session_id=?", (sid,)).fetchall()


@pytest.fixture
async def remote(home: Path):
    async with aiohttp.ClientSession() as http:
        r = Remote(home, http)
        r.start()
        try:
            yield r
        finally:
            if r.served is not None:
                r.stop()


def problem_type(doc: Any) -> str:
    return doc.get("type", "") if isinstance(doc, dict) else ""


def session_transfers(ledger: SqliteLedger, sid: str) -> dict[str, list]:
    out: dict[str, list] = {"hold": [], "capture": [], "release": []}
    for t in ledger.transfers():
        if t.id.endswith(sid) and t.kind in out:
            out[t.kind].append(t)
    return out


async def paid(remote: Remote, s: RawSession, units: int, cumulative: int, sequence: int | None = None) -> dict[str, Any]:
    """One voucher request to /complete that must be served; the verified receipt claims."""
    status, doc, headers = await send(remote, f"/complete?units={units}", s.voucher_credential(s.voucher(cumulative, sequence)))
    assert status == 200, doc
    return receipt_claims(remote, headers["Payment-Receipt"])


async def close(remote: Remote, s: RawSession) -> tuple[int, Any, dict]:
    return await send(remote, CLOSE_PATH, s.close_credential(), method="POST")


async def close_when_free(remote: Remote, s: RawSession, *, within: float) -> tuple[dict, list[str], float]:
    """Close, retrying while the seller answers 409 request-in-progress; (final claims, the
    problem types of the refused attempts, seconds until it closed)."""
    start = time.monotonic()
    refused: list[str] = []
    while True:
        status, doc, headers = await close(remote, s)
        if status == 200:
            return receipt_claims(remote, headers["Payment-Receipt"]), refused, time.monotonic() - start
        assert status == 409 and problem_type(doc) == "urn:mpp:problem:request-in-progress", (status, doc)
        refused.append(problem_type(doc))
        assert time.monotonic() - start < within, f"close still refused after {within}s: {doc}"
        await asyncio.sleep(0.5)


def assert_ledger_settled(remote: Remote, sid: str, *, captured: int, cap: int, buyer_before: int, seller_before: int) -> list:
    """SESSION-LEDGER-04, SESSION-LEDGER-06: one hold, one capture of exactly ``captured``, one
    release of the rest; the balances moved by exactly the capture and nothing else changed."""
    ledger = remote.ledger()
    try:
        moved = session_transfers(ledger, sid)
        assert [t.id for t in moved["hold"]] and len(moved["hold"]) == 1
        assert [(t.id, t.amount) for t in moved["capture"]] == ([("capture:" + sid, captured)] if captured else [])
        assert [(t.id, t.amount) for t in moved["release"]] == ([("release:" + sid, cap - captured)] if cap > captured else [])
        hold = ledger.sessions.get(sid)
        assert hold is not None and (hold.status, hold.captured, hold.released) == ("closed", captured, cap - captured)
        assert ledger.balance(BUYER) == buyer_before - captured
        assert ledger.balance(SELLER) == seller_before + captured
        assert ledger.total() == 0 and ledger.check() == []
        return ledger.transfers()
    finally:
        ledger.close()


def balances(remote: Remote) -> tuple[int, int]:
    ledger = remote.ledger()
    try:
        assert ledger.total() == 0
        return ledger.balance(BUYER), ledger.balance(SELLER)
    finally:
        ledger.close()


async def test_killed_between_requests_keeps_voucher_and_spend_and_captures_once(remote: Remote):
    """SESSION-USE-04, SESSION-CLOSE-02, SESSION-CLOSE-05, SESSION-CLOSE-06, SESSION-VOUCHER-02, SESSION-VOUCHER-03,
    SESSION-LEDGER-04, SESSION-LEDGER-06: a seller SIGKILLed right
    after a response and restarted keeps the highest voucher (and its sequence) and the spending; the
    buyer goes on with no new open; close captures exactly the receipted amounts, once, even when
    asked again after another kill and restart."""
    buyer_before, seller_before = balances(remote)
    cap = 300
    s, resp, body = await open_session(remote, "/complete?units=1500", cap=cap, first=MAX_COST)
    assert resp.status == 200, body
    amounts = [int(receipt_claims(remote, resp.headers["Payment-Receipt"])["amount"])]
    assert amounts == [cost_of(1500, PRICE, PER)]
    cumulative = MAX_COST
    for units in (1000, 2500, 999, 4000, 0, 3001):
        cumulative += 10
        claims = await paid(remote, s, units, cumulative)
        amounts.append(int(claims["amount"]))
        assert claims["amount"] == str(cost_of(units, PRICE, PER))
        assert (claims["spent"], claims["authorized"]) == (str(sum(amounts)), str(cumulative))
    last_sequence = s.sequence

    remote.kill()  # right after a response was received: nothing in flight
    row = remote.session_row(s.id)
    assert (row["authorized"], row["voucher_seq"], row["spent"], row["status"]) == (cumulative, last_sequence, sum(amounts), "open")
    assert remote.hold_rows(s.id) == []
    remote.start()  # a new port; same secret, receipt key and stores

    # an older voucher (lower cumulative, old sequence) is a harmless retry, still covered by what was accepted
    claims = await paid(remote, s, 1000, MAX_COST, 1)
    amounts.append(int(claims["amount"]))
    assert (claims["authorized"], claims["spent"]) == (str(cumulative), str(sum(amounts)))
    # the persisted sequence still binds: a higher voucher reusing the last sequence is refused, nothing changes
    status, doc, _ = await send(remote, "/complete?units=1000", s.voucher_credential(s.voucher(cumulative + 50, last_sequence)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid", doc
    assert remote.session_row(s.id)["authorized"] == cumulative
    # and a new higher voucher with a higher sequence is honoured
    cumulative += 10
    claims = await paid(remote, s, 2000, cumulative)
    amounts.append(int(claims["amount"]))
    assert (claims["authorized"], claims["spent"]) == (str(cumulative), str(sum(amounts)))

    status, doc, headers = await close(remote, s)
    assert status == 200, doc
    final_header = headers["Payment-Receipt"]
    final = receipt_claims(remote, final_header)
    captured = sum(amounts)
    assert final["final"] is True and final["captured"] == str(captured) and final["released"] == str(cap - captured)
    assert final["requests"] == len(amounts)
    transfers = assert_ledger_settled(remote, s.id, captured=captured, cap=cap, buyer_before=buyer_before, seller_before=seller_before)

    # killed again and restarted: a second close answers the same final receipt and moves nothing
    remote.kill()
    remote.start()
    status, doc, headers = await close(remote, s)
    assert status == 200 and headers["Payment-Receipt"] == final_header, doc
    assert assert_ledger_settled(remote, s.id, captured=captured, cap=cap, buyer_before=buyer_before,
                                 seller_before=seller_before) == transfers
    status, doc, _ = await send(remote, "/complete", s.voucher_credential(s.voucher(cumulative + 10)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-closed", doc


def subset_sums(values: list[int]) -> set[int]:
    sums = {0}
    for v in values:
        sums |= {x + v for x in sums}
    return sums


@dataclass
class Outcome:
    received: dict[str, int] = field(default_factory=dict)  # receipt jti (the seller's request id) -> amount
    answered_vouchers: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # units of the requests whose answer never came
    errors: list[str] = field(default_factory=list)


async def test_killed_with_requests_in_flight_loses_no_spend_and_captures_once(remote: Remote):
    """SESSION-USE-04, SESSION-CLOSE-02, SESSION-CLOSE-05, SESSION-LEDGER-04, SESSION-LEDGER-06: 20
    buyers' requests are in flight on one session when the seller is SIGKILLed.

    What must hold after the restart, and why:
    - every request the buyer got a receipt for is in the seller's usage with the same amount
      (the spend is committed before the response is released), so spent >= the receipted sum;
    - anything spent beyond that belongs to requests whose answer was lost in the kill: at most
      one per buyer, and spent - received is exactly the sum of the costs of some subset of those
      lost requests (each lost request was either committed in full, or not at all);
    - the authorized value is at least the highest voucher the buyer got an answer for;
    - the holds the dead process left behind stop counting once its heartbeat is older than
      INSTANCE_TTL, so they hold up a close for at most that long;
    - close captures exactly the persisted spent, once; the ledger's sum is unchanged.
    """
    buyer_before, seller_before = balances(remote)
    rng = random.Random()
    cap, first = 20_000, 200
    s, resp, body = await open_session(remote, "/complete?units=1000", cap=cap, first=first)
    assert resp.status == 200, body
    out = Outcome()
    opened = receipt_claims(remote, resp.headers["Payment-Receipt"])
    out.received[opened["jti"]] = int(opened["amount"])
    out.answered_vouchers.append(first)

    # vouchers advance by 10 a request (a request costs at most 8), issued in order with their sequence
    issued = {"cumulative": first}
    killed = asyncio.Event()

    def next_voucher() -> tuple[int, int]:
        issued["cumulative"] += 10
        s.sequence += 1
        return issued["cumulative"], s.sequence

    async def buyer() -> None:
        while True:
            units = rng.randint(0, MAX_UNITS)
            cumulative, sequence = next_voucher()
            assert cumulative <= cap, "the test ran out of cap before the kill"
            credential = s.voucher_credential(s.voucher(cumulative, sequence))
            try:
                status, doc, headers = await send(remote, f"/complete?units={units}", credential)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                assert killed.is_set(), f"request failed before the kill: {exc!r}"
                out.lost.append(units)  # sent (or refused) while the seller died: answer unknown
                return
            if status != 200:
                out.errors.append(f"{status} {doc}")
                return
            claims = receipt_claims(remote, headers["Payment-Receipt"])
            assert claims["amount"] == str(cost_of(units, PRICE, PER))
            out.received[claims["jti"]] = int(claims["amount"])
            out.answered_vouchers.append(cumulative)

    tasks = [asyncio.create_task(buyer()) for _ in range(20)]
    await asyncio.sleep(rng.uniform(0.05, 0.3))
    killed.set()
    remote.served.process.kill()  # type: ignore[union-attr]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    remote.kill()  # reap it
    assert out.errors == []
    assert 0 < len(out.lost) <= 20

    # the store as the dead seller left it
    row = remote.session_row(s.id)
    usage = remote.usage_rows(s.id)
    orphans = remote.hold_rows(s.id)
    received = sum(out.received.values())
    assert row["status"] == "open"
    assert row["spent"] == sum(usage.values())
    for jti, amount in out.received.items():  # no receipted spend lost
        assert usage.get(jti) == amount, (jti, amount, usage.get(jti))
    unanswered = {rid: amount for rid, amount in usage.items() if rid not in out.received}
    assert len(unanswered) <= len(out.lost), (unanswered, out.lost)
    assert row["spent"] - received in subset_sums([cost_of(u, PRICE, PER) for u in out.lost]), (row["spent"], received, out.lost)
    assert max(out.answered_vouchers) <= row["authorized"] <= issued["cumulative"]
    assert all(amount == MAX_COST for _, amount, _ in orphans) and len(orphans) <= len(out.lost) - len(unanswered)

    remote.start()
    # the session goes on: a fresh voucher well above everything issued is honoured
    cumulative, sequence = next_voucher()
    cumulative += 200  # above the dead process's reservations (at most 20 x 8) too
    claims = await paid(remote, s, 1000, cumulative, sequence)
    spent = row["spent"] + cost_of(1000, PRICE, PER)
    assert (claims["spent"], claims["authorized"]) == (str(spent), str(cumulative))

    final, refused, waited = await close_when_free(remote, s, within=INSTANCE_TTL.total_seconds() + 10)
    if orphans:  # the dead process's reservations held the close up until its heartbeat went stale
        assert refused, "a close went through while the dead seller's reservations still counted"
    assert final["captured"] == str(spent) and final["released"] == str(cap - spent)
    assert remote.session_row(s.id)["captured"] == spent
    assert_ledger_settled(remote, s.id, captured=spent, cap=cap, buyer_before=buyer_before, seller_before=seller_before)
    print(f"requests answered={len(out.received)} lost={len(out.lost)} committed-unanswered={len(unanswered)} "
          f"orphan holds={len(orphans)} close refused {len(refused)}x, closed after {waited:.1f}s")


@pytest.mark.parametrize("crash_point", ["after-begin-close", "after-ledger-close"])
async def test_killed_inside_close_finishes_the_close_once(remote: Remote, crash_point: str):
    """SESSION-CLOSE-02, SESSION-CLOSE-05, SESSION-CLOSE-06, SESSION-LEDGER-04, SESSION-LEDGER-06: a seller
    killed inside a close (after
    the store stopped spending, or after the ledger already captured) finishes it on the next close
    after a restart, capturing exactly once.

    The two crash points are hard to hit from outside, so the test kills the seller and then makes
    the store (and the ledger) changes the dead seller would have made, with the same calls."""
    buyer_before, seller_before = balances(remote)
    cap = 200
    s, resp, body = await open_session(remote, "/complete?units=1000", cap=cap, first=MAX_COST)
    assert resp.status == 200, body
    spent = int(receipt_claims(remote, resp.headers["Payment-Receipt"])["amount"])
    for i, units in enumerate((3000, 1234)):
        spent += int((await paid(remote, s, units, MAX_COST + 10 * (i + 1)))["amount"])
    remote.kill()

    store = SqliteSessionStore(str(remote.sessions_db))
    try:
        state = await store.begin_close(s.id, datetime.now(timezone.utc))
        assert (state.status, state.spent) == ("closing", spent)
        if crash_point == "after-ledger-close":
            ledger = remote.ledger()
            try:
                done = ledger.sessions.close(s.id, capture=state.spent, voucher=state.voucher)
                assert done.captured == spent
            finally:
                ledger.close()
    finally:
        await store.close()

    remote.start()
    # nothing more is spent on a session whose close has begun
    status, doc, _ = await send(remote, "/complete?units=1000", s.voucher_credential(s.voucher(MAX_COST + 100)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-closed", doc
    status, doc, headers = await close(remote, s)
    assert status == 200, doc
    final = receipt_claims(remote, headers["Payment-Receipt"])
    assert final["final"] is True and (final["captured"], final["released"]) == (str(spent), str(cap - spent))
    assert remote.session_row(s.id)["status"] == "closed"
    transfers = assert_ledger_settled(remote, s.id, captured=spent, cap=cap, buyer_before=buyer_before, seller_before=seller_before)
    status, doc, again = await close(remote, s)
    assert status == 200 and again["Payment-Receipt"] == headers["Payment-Receipt"]
    assert assert_ledger_settled(remote, s.id, captured=spent, cap=cap, buyer_before=buyer_before,
                                 seller_before=seller_before) == transfers


async def test_idempotency_key_of_a_killed_request_is_not_in_progress_forever(remote: Remote):
    """SESSION-USE-06, CORE-ONCE-07, SESSION-CLOSE-05: 409 request-in-progress is for a retry that arrives
    "while the original is still running". A seller killed between claiming a request's key and
    saving (or dropping) its response leaves the key marked running; once that process is gone for
    longer than INSTANCE_TTL (after which its reservations no longer count either), the original
    is not running anywhere, and a retry must get an answer other than 409.

    A real SIGKILL among 20 concurrent keyed requests leaves such a key in most runs; to be
    deterministic this test kills the seller, then claims the key through the store the way the dead
    seller did (after a heartbeat of its own, so an owner-aware store sees a dead owner)."""
    s, resp, body = await open_session(remote, "/complete?units=1000", cap=300, first=100)
    assert resp.status == 200, body
    remote.kill()
    store = SqliteSessionStore(str(remote.sessions_db))
    try:
        await store.heartbeat(datetime.now(timezone.utc))
        assert await store.keys.claim(s.id, "lost-1", "GET /complete?units=1000") == ("new", None)
    finally:
        await store.close()
    await asyncio.sleep(INSTANCE_TTL.total_seconds() + 1.5)  # the claiming process is now long gone
    remote.start()
    async with remote.http.get(remote.url("/complete?units=1000"),
                               headers={"Authorization": s.voucher_credential(s.voucher(110)), "Idempotency-Key": "lost-1"}) as r:
        doc = await r.text()
        assert r.status == 200, doc  # taken over and served; the dead claim never committed, so this is the one charge
