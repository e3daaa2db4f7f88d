"""The seller's side of the session intent over HTTP, driven by hand-built credentials."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import PaymentClient
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.intents.session import SessionPayload, SessionRequest, SessionTerms, cost_of, sign_cap

from _adapters import ADAPTERS
from _session_support import (MAX_UNITS, PER, PRICE, SessionWorld, build_seller, make_ledger, open_session, quote,
                              receipt_claims, send, server_for)

MAX_COST = cost_of(MAX_UNITS, PRICE, PER)


@pytest.fixture(params=ADAPTERS)
async def world(tmp_path: Path, request):
    agent = mpp.SigningKey.generate()
    ledger = make_ledger(tmp_path, agent)
    hits: list[str] = []
    seller, app, store = build_seller(tmp_path, ledger, hits=hits, adapter=request.param)
    server = server_for(app)
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield SessionWorld(server, seller, ledger, agent, http, store, hits, adapter=request.param)
    await server.close()
    ledger.close()


def problem_type(doc) -> str:
    return doc.get("type", "") if isinstance(doc, dict) else ""


async def state(world: SessionWorld, sid: str):
    return await world.store.get(sid)


async def test_metered_route_offers_session_and_charge(world):
    """SESSION-REQ-02, SESSION-REQ-05: the 402 carries a ledger/session challenge and a ledger/charge one."""
    session, challenges = await quote(world, "/complete")
    assert sorted((c.method, c.intent) for c in challenges) == [("ledger", "charge"), ("ledger", "session")]
    request = session.request_json
    assert request["amount"] == str(PRICE) and request["unitType"] == "token"
    assert request["methodDetails"]["per"] == str(PER) and request["methodDetails"]["maxUnits"] == str(MAX_UNITS)
    (charge,) = [c for c in challenges if c.intent == "charge"]
    assert charge.request_json["amount"] == str(MAX_COST)


async def test_buyer_without_sessions_pays_per_request(world):
    """SESSION-REQ-05: a charge-only buyer still pays the metered route per request."""
    client = PaymentClient(world.http, [LedgerBuyerMethod(key=world.agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100))
    paid = await client.request("GET", world.url("/complete?tokens=2000"))
    assert paid.status == 200 and paid.paid and paid.claims["intent"] == "charge"
    assert world.ledger.balance("acct:seller") == MAX_COST


async def test_open_use_close_captures_exactly_usage(world):
    """SESSION-REQ-01, SESSION-REQ-03, SESSION-OPEN-03, SESSION-USE-01, SESSION-USE-04, SESSION-CLOSE-01, SESSION-CLOSE-02,
    SESSION-VOUCHER-06, SESSION-LEDGER-03, SESSION-LEDGER-06, SESSION-RCPT-01, SESSION-RCPT-03."""
    total_before = world.ledger.total()
    s, resp, _ = await open_session(world, "/complete?tokens=1500", cap=500, first=20)
    assert resp.status == 200, await resp.text()
    claims = receipt_claims(world, resp.headers["Payment-Receipt"])
    assert claims["intent"] == "session" and claims["reference"] == s.id and claims["amount"] == "3"
    assert (claims["authorized"], claims["spent"], claims["cap"]) == ("20", "3", "500")
    assert world.ledger.balance("acct:buyer") == 10_000 - 500  # the cap is held
    for i, tokens in enumerate([1000, 2500, 999]):
        status, _, headers = await send(world, f"/complete?tokens={tokens}", s.voucher_credential(s.voucher(20 + 10 * (i + 1))))
        assert status == 200
    used = 3 + 2 + 5 + 2
    st = await state(world, s.id)
    assert st.spent == used and st.authorized == 50
    status, doc, headers = await send(world, "/.well-known/mpp-session", s.close_credential(), method="POST")
    assert status == 200, doc
    final = receipt_claims(world, headers["Payment-Receipt"])
    assert final["final"] is True and final["captured"] == str(used) and final["released"] == str(500 - used)
    lines = final["lines"]
    assert [(line["units"], line["amount"], line["requests"]) for line in lines] == [(1500 + 1000 + 2500 + 999, str(used), 4)]
    assert world.ledger.balance("acct:seller") == used
    assert world.ledger.balance("acct:buyer") == 10_000 - used
    assert world.ledger.total() == total_before == 0 and world.ledger.check() == []
    # closing again answers the same final receipt and moves nothing
    status, doc2, headers2 = await send(world, "/.well-known/mpp-session", s.close_credential(), method="POST")
    assert status == 200 and headers2["Payment-Receipt"] == headers["Payment-Receipt"]
    assert world.ledger.balance("acct:seller") == used
    # and the closed session takes no more vouchers
    status, doc, _ = await send(world, "/complete", s.voucher_credential(s.voucher(60)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-closed"


async def test_lower_or_equal_voucher_changes_nothing(world):
    """SESSION-VOUCHER-02: a voucher at or below the highest accepted is a harmless retry."""
    s, resp, _ = await open_session(world, cap=500, first=100)
    assert resp.status == 200
    before = await state(world, s.id)
    for cumulative, sequence in ((100, 1), (50, 7), (0, 9)):
        status, _, _ = await send(world, "/complete?tokens=1000", s.voucher_credential(s.voucher(cumulative, sequence)))
        assert status == 200  # still covered by the 100 accepted
        after = await state(world, s.id)
        assert (after.authorized, after.voucher) == (before.authorized, before.voucher)
    assert (await state(world, s.id)).spent == 2 + 3 * 2


async def test_higher_voucher_needs_higher_sequence(world):
    """SESSION-VOUCHER-03."""
    s, resp, _ = await open_session(world, cap=500, first=20)
    status, doc, _ = await send(world, "/complete", s.voucher_credential(s.voucher(40, 1)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    assert (await state(world, s.id)).authorized == 20


async def test_voucher_over_the_cap_is_refused(world):
    """SESSION-VOUCHER-04, SESSION-ERR-01, SESSION-ERR-03: above the cap -> session-cap-exceeded; nothing changes."""
    s, resp, _ = await open_session(world, cap=100, first=20)
    status, doc, headers = await send(world, "/complete", s.voucher_credential(s.voucher(101)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-cap-exceeded"
    assert "Payment-Receipt" not in headers and "WWW-Authenticate" in headers
    st = await state(world, s.id)
    assert (st.authorized, st.spent) == (20, 2)


async def test_voucher_signed_by_another_key_is_refused(world):
    """SESSION-VOUCHER-05: the session's signer is fixed at open."""
    s, _, _ = await open_session(world, cap=500, first=20)
    thief = mpp.SigningKey.generate()
    for credential in (s.voucher_credential(s.voucher(40, key=thief)),  # claims the agent, signed by another key
                       s.voucher_credential(s.voucher(40, key=thief), signer=thief.did)):  # names the other key
        status, doc, _ = await send(world, "/complete", credential)
        assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid", doc
    assert (await state(world, s.id)).authorized == 20


async def test_voucher_for_another_session_is_refused(world):
    """SESSION-VOUCHER-05: a voucher of session A cannot advance session B, nor be sent as B's."""
    a, _, _ = await open_session(world, cap=500, first=20)
    b, _, _ = await open_session(world, cap=500, first=20)
    foreign = a.voucher(300, 5, terms=b.terms)  # a genuine voucher of B, echoed with A's challenge
    status, doc, _ = await send(world, "/complete", a.voucher_credential(foreign))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    status, doc, _ = await send(world, "/complete", a.voucher_credential(a.voucher(300), session_id=b.id))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    assert (await state(world, a.id)).authorized == 20 and (await state(world, b.id)).authorized == 20


async def test_voucher_for_another_seller_is_refused(world, tmp_path):
    """SESSION-VOUCHER-01, SESSION-VOUCHER-05: seller B does not honour a session opened at seller A, nor A's terms."""
    seller_b, app_b, store_b = build_seller(tmp_path, world.ledger, realm="other.test", name="b", adapter=world.adapter)
    server_b = server_for(app_b)
    await server_b.start_server()
    try:
        s, _, _ = await open_session(world, cap=500, first=20)
        world_b = SessionWorld(server_b, seller_b, world.ledger, world.agent, world.http, store_b)
        b_challenge, _ = await quote(world_b, "/complete")
        from mpp.intents.session import SessionRequest

        b_terms = SessionTerms.of(b_challenge, SessionRequest.from_challenge(b_challenge))
        # A's session credential sent to B: B did not mint that challenge
        status, doc, _ = await send(world_b, "/complete", s.voucher_credential(s.voucher(40)))
        assert status == 402 and "invalid-challenge" in problem_type(doc)
        # A voucher signed for B's terms but echoing A's session at A
        forged = s.voucher(60, terms=SessionTerms(**{**b_terms.__dict__, "session_id": s.id}))
        status, doc, _ = await send(world, "/complete", s.voucher_credential(forged))
        assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
        assert (await state(world, s.id)).authorized == 20
    finally:
        await server_b.close()


async def test_insufficient_value_asks_for_a_voucher(world):
    """SESSION-USE-03: a request the accepted value cannot cover is refused before the handler runs."""
    s, _, _ = await open_session(world, cap=500, first=MAX_COST)  # covers the first request only
    status, doc, headers = await send(world, "/complete", s.voucher_credential(s.voucher(MAX_COST)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-insufficient"
    assert doc["sessionId"] == s.id and int(doc["required"]) > int(doc["authorized"])
    assert "Payment-Receipt" not in headers


async def test_failed_handler_charges_nothing(world):
    """SESSION-USE-05: an error answer releases the reservation; nothing is spent."""
    s, _, _ = await open_session(world, cap=500, first=100)
    status, _, headers = await send(world, "/fails", s.voucher_credential(s.voucher(100, 1)))
    assert status == 503 and "Payment-Receipt" not in headers
    assert (await state(world, s.id)).spent == 2


async def test_concurrent_requests_never_spend_beyond_the_voucher(world):
    """SESSION-USE-02: 30 concurrent requests against a voucher that covers 7 of them."""
    s, _, _ = await open_session(world, "/complete?tokens=5000", cap=1000, first=MAX_COST)
    authorized = MAX_COST * 8
    voucher = s.voucher(authorized)
    results = await asyncio.gather(*(send(world, "/complete?tokens=5000", s.voucher_credential(voucher)) for _ in range(30)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 402]
    assert len(ok) + len(refused) == 30 and len(ok) == 7
    assert all(problem_type(r[1]) == "urn:mpp:problem:session-insufficient" for r in refused)
    st = await state(world, s.id)
    assert st.spent == MAX_COST * 8 == st.authorized


async def test_stream_asks_for_the_next_voucher_in_band(world):
    """SESSION-STREAM-01, SESSION-STREAM-02, SESSION-STREAM-03, SESSION-STREAM-04: the stream pauses
    with payment-required, a voucher POSTed to the session endpoint resumes it, and it ends with a
    signed receipt."""
    s, resp, _ = await open_session(world, cap=500, first=10)
    assert resp.status == 200
    events: list[tuple[str, str]] = []
    async with world.http.get(world.url("/stream?chunks=6&tokens=2000"),
                              headers={"Authorization": s.voucher_credential(s.voucher(10))}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        event = "message"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, line[6:]))
                if event == "payment-required":
                    status, doc, _ = await send(world, "/.well-known/mpp-session",
                                                s.voucher_credential(s.voucher(40)), method="POST")
                    assert status == 200, doc
                event = "message"
    kinds = [e for e, _ in events]
    assert kinds.count("message") == 6 and kinds.count("payment-required") == 1 and kinds[-1] == "payment-receipt"
    import json

    claims = receipt_claims(world, json.loads(events[-1][1])["receipt"])
    assert claims["units"] == 12000 and claims["amount"] == "24"
    assert (await state(world, s.id)).spent == 2 + 24  # the open request, then the stream


async def test_stream_without_voucher_stops_cleanly(world, caplog):
    """SESSION-STREAM-02, SESSION-STREAM-04: no voucher in time -> payment-timeout, a receipt for what was sent, no more content."""
    world.seller.sessions.voucher_timeout = 0.3
    s, resp, _ = await open_session(world, cap=500, first=MAX_COST)
    assert resp.status == 200  # spends 2 of the 10 accepted
    async with world.http.get(world.url("/stream?chunks=6&tokens=1000"),
                              headers={"Authorization": s.voucher_credential(s.voucher(MAX_COST, 1))}) as resp:
        text = await resp.text()
    assert text.count("data: chunk") == 4 and "event: payment-timeout" in text and text.rstrip().splitlines()[-2] == "event: payment-receipt"
    assert (await state(world, s.id)).spent == MAX_COST
    # the handler let StreamStopped through: the engine ended the stream, and nothing failed after it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_idle_session_is_closed_and_released(tmp_path):
    """SESSION-CLOSE-03: a session idle past its timeout is closed by the seller; the rest released."""
    agent = mpp.SigningKey.generate()
    ledger = make_ledger(tmp_path, agent)
    seller, app, store = build_seller(tmp_path, ledger, idle_timeout=1, sweep=0.1)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            world = SessionWorld(server, seller, ledger, agent, http, store)
            s, resp, _ = await open_session(world, cap=300, first=10)
            assert resp.status == 200
            for _ in range(40):
                await asyncio.sleep(0.1)
                st = await store.get(s.id)
                if st.status == "closed":
                    break
            assert st.status == "closed" and st.captured == 2 and st.released == 298
            assert ledger.balance("acct:buyer") == 10_000 - 2 and ledger.balance("acct:seller") == 2
            assert ledger.total() == 0
            assert receipt_claims(world, st.final_receipt)["closedBy"] == "idle"
    finally:
        await server.close()
        ledger.close()


async def test_open_with_a_forged_cap_signature_holds_nothing(world):
    """SESSION-OPEN-02: the cap signature must be the signer's over these terms."""
    challenge, _ = await quote(world, "/complete")
    from mpp.intents.session import SessionRequest

    req = SessionRequest.from_challenge(challenge)
    terms = SessionTerms.of(challenge, req)
    other = mpp.SigningKey.generate()
    from _session_support import RawSession

    s = RawSession(world, challenge, req, terms, world.agent, cap=500)
    payload = SessionPayload("open", s.id, world.agent.did, account="acct:buyer", cap=500,
                             cap_signature=sign_cap(other, terms, account="acct:buyer", cap=500), voucher=s.voucher(10))
    status, doc, _ = await send(world, "/complete", s.credential(payload))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    assert world.ledger.balance("acct:buyer") == 10_000 and await world.store.get(s.id) is None


async def test_idempotency_key_retry_is_not_charged_twice(world):
    """SESSION-USE-06: a retry with the same credential and Idempotency-Key gets the original
    response and receipt and is not charged again; another resource under that key is refused."""
    s, _, _ = await open_session(world, cap=500, first=100)
    credential = s.voucher_credential(s.voucher(100, 1))
    headers = {"Authorization": credential, "Idempotency-Key": "job-1"}
    async with world.http.get(world.url("/complete?tokens=3000"), headers=headers) as first:
        body1, receipt1 = await first.read(), first.headers["Payment-Receipt"]
    spent = (await state(world, s.id)).spent
    async with world.http.get(world.url("/complete?tokens=3000"), headers=headers) as again:
        assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
        assert await again.read() == body1 and again.headers["Payment-Receipt"] == receipt1
    assert (await state(world, s.id)).spent == spent == 2 + 6
    async with world.http.get(world.url("/complete?tokens=10"), headers=headers) as other:
        assert other.status == 400
    assert (await state(world, s.id)).spent == spent


async def test_open_gets_every_core_check(world):
    """SESSION-OPEN-01, SESSION-REQ-04: an open is checked like a charge credential: expiry,
    resource binding, sessionId = challenge id; a repeated open never holds twice."""
    from datetime import timedelta

    from _session_support import RawSession

    challenge, _ = await quote(world, "/complete?tokens=1000")
    request = SessionRequest.from_challenge(challenge)
    s = RawSession(world, challenge, request, SessionTerms.of(challenge, request), world.agent, cap=300)

    def open_payload(session_id: str = s.id) -> SessionPayload:
        return SessionPayload("open", session_id, world.agent.did, account="acct:buyer", cap=300,
                              cap_signature=sign_cap(world.agent, s.terms, account="acct:buyer", cap=300),
                              voucher=s.voucher(20, 1))

    status, doc, _ = await send(world, "/complete?tokens=2000", s.credential(open_payload()))  # another query
    assert status == 402 and doc["type"].endswith("/invalid-challenge")
    status, doc, _ = await send(world, "/complete?tokens=1000", s.credential(open_payload("not-the-challenge-id")))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    status, doc, _ = await send(world, "/.well-known/mpp-session", s.credential(open_payload()), method="POST")
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    clock = world.seller.clock
    world.seller.clock = lambda: clock() + timedelta(minutes=10)
    try:
        status, doc, _ = await send(world, "/complete?tokens=1000", s.credential(open_payload()))
        assert status == 402 and doc["type"].endswith("/payment-expired")
    finally:
        world.seller.clock = clock
    assert world.ledger.balance("acct:buyer") == 10_000 and await world.store.get(s.id) is None
    status, _, _ = await send(world, "/complete?tokens=1000", s.credential(open_payload()))
    assert status == 200 and world.ledger.balance("acct:buyer") == 10_000 - 300
    status, _, _ = await send(world, "/complete?tokens=1000", s.credential(open_payload()))  # a retried open
    assert status == 200 and world.ledger.balance("acct:buyer") == 10_000 - 300  # held once
    intruder = mpp.SigningKey.generate()
    world.ledger.keys.allow("acct:buyer", intruder.did, "owner")
    other = SessionPayload("open", s.id, intruder.did, account="acct:buyer", cap=300,
                           cap_signature=sign_cap(intruder, s.terms, account="acct:buyer", cap=300),
                           voucher=s.voucher(20, 1, key=intruder))
    status, doc, _ = await send(world, "/complete?tokens=1000", s.credential(other))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"


async def test_session_credential_id_is_judged_before_its_payload(world):
    """CORE-ERR-13, SESSION-VOUCHER-09: a session credential with a forged id and a malformed payload
    is an invalid challenge, on a priced route and at the session endpoint; with an unknown method,
    method-unsupported comes first of all."""
    from mpp.protocol.headers import format_credential
    from mpp.protocol.models import Credential

    challenge, _ = await quote(world, "/complete?tokens=1000")
    forged = challenge.model_copy(update={"id": "A" * 43})
    junk = {"type": "session", "action": "teleport"}
    for path, method in (("/complete?tokens=1000", "GET"), ("/.well-known/mpp-session", "POST")):
        status, doc, _ = await send(world, path, format_credential(Credential(challenge=forged, payload=junk)), method=method)
        assert status == 402 and problem_type(doc).endswith("/invalid-challenge"), (path, doc)
    tempo = forged.model_copy(update={"method": "tempo"})
    status, doc, _ = await send(world, "/complete?tokens=1000", format_credential(Credential(challenge=tempo, payload=junk)))
    assert status == 400 and problem_type(doc).endswith("/method-unsupported"), doc


async def test_session_endpoint_problems_carry_no_challenge(world):
    """SESSION-ERR-02: the session endpoint prices nothing."""
    s, _, _ = await open_session(world, cap=300, first=20)
    status, doc, headers = await send(world, "/.well-known/mpp-session", s.voucher_credential(s.voucher(301)), method="POST")
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-cap-exceeded"
    assert "WWW-Authenticate" not in headers and "challengeId" not in doc
    status, doc, headers = await send(world, "/.well-known/mpp-session", "Payment garbage", method="POST")
    assert status in (400, 402) and "WWW-Authenticate" not in headers


async def test_session_endpoint_ignores_body_content_type_and_query(world):
    """SESSION-CLOSE-07: a voucher and a close POSTed to the session endpoint with a body, a content
    type and a query are judged on the credential alone; the answers are application/json; the
    endpoint takes POST only."""
    s, _, _ = await open_session(world, cap=300, first=20)
    junk = [("application/json", b'{"action": "open", "cap": "999999"}'), ("text/plain", b"close please"),
            ("application/octet-stream", bytes(range(256)))]
    for content_type, body in junk[:2]:
        headers = {"Authorization": s.voucher_credential(s.voucher(30)), "Content-Type": content_type}
        async with world.http.post(world.url("/.well-known/mpp-session?action=open"), data=body, headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "application/json", await resp.text()
            assert (await resp.json())["authorized"] == "30"
    content_type, body = junk[2]
    headers = {"Authorization": s.close_credential(), "Content-Type": content_type}
    async with world.http.post(world.url("/.well-known/mpp-session?x=1"), data=body, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "application/json", await resp.text()
        doc = await resp.json()
        assert doc["sessionId"] == s.id and doc["receipt"] == resp.headers["Payment-Receipt"]
    assert (await state(world, s.id)).cap == 300
    async with world.http.get(world.url("/.well-known/mpp-session"), headers={"Authorization": s.close_credential()}) as resp:
        assert resp.status == 405


async def test_route_in_another_currency_refuses_the_session(world):
    """SESSION-VOUCHER-07: a session in usd cannot pay a route priced in eur."""
    s, _, _ = await open_session(world, cap=300, first=50)
    status, doc, _ = await send(world, "/euro", s.voucher_credential(s.voucher(50, 1)))
    assert status == 402 and problem_type(doc) == "urn:mpp:problem:session-voucher-invalid"
    assert (await state(world, s.id)).spent == 2


async def test_close_stops_a_running_stream(world):
    """SESSION-STREAM-05, SESSION-REQ-06: once the session is closing, a stream delivers nothing more
    and ends with its receipt; nothing is spent after the capture."""
    s, _, _ = await open_session(world, cap=500, first=200)
    seen: list[str] = []
    async with world.http.get(world.url("/stream?chunks=50&tokens=1000&delay=0.02"),
                              headers={"Authorization": s.voucher_credential(s.voucher(200, 1))}) as resp:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            seen.append(line)
            if line == "data: chunk 2":
                status, doc, _ = await send(world, "/.well-known/mpp-session", s.close_credential(), method="POST")
                assert status == 200, doc
    chunks = [line for line in seen if line.startswith("data: chunk")]
    assert 3 <= len(chunks) < 50 and "event: payment-receipt" in seen
    st = await state(world, s.id)
    assert st.status == "closed" and st.captured == st.spent and world.ledger.total() == 0
