"""Accounts with owners and mandate-bound agents (spec/methods/ledger.md §8): no purchase outside
the mandate, by any route; enrolment from the command line and over the ledger service."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import HttpLedgerRail, PaymentClient, Seller
from mpp.aio.seller import SELLER_KEY
from mpp.cli.config import BUYER_ACCOUNT, init_home, load_wallet
from mpp.ledger import MandateRequired, OverMandate, SqliteLedger, TransferConflict, UnauthorizedSigner, UnknownAccount
from mpp.ledger.aio_adapter import AsyncSqliteLedgerStore
from mpp.ledger.service import ledger_app
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.ledger.pg import PgLedger
from mpp.stores.payments import SqlitePaymentStore

from _identity_support import FUNDS, PAYEE, PAYER, POLICY, REALM, World, credential, mandate, new_ledger, seller_app
from conftest import REPO, start_seller, stop_seller
from test_identity_attacks import paid, refused
from test_ledger_service import Service, _start_ledger, _stop, assert_problem

IDENT = "urn:mpp:problem:"
VERIFICATION_FAILED = "https://paymentauth.org/problems/verification-failed"

# The mandate caps one purchase at 500 (the helpers' default); /report costs 5000.
ROUTES = {"/small": (100, False), "/report": (5000, False), "/thing": (100, True)}


# -- the ledger itself, on both engines ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request, tmp_path: Path):
    if request.param == "sqlite":
        led: Any = AsyncSqliteLedgerStore.at(str(tmp_path / "ledger.db"))
    else:
        led = await PgLedger.connect(request.getfixturevalue("pg_url"), max_size=2)
    for account in (PAYER, PAYEE):
        await led.create_account(account, "usd")
    await led.fund(PAYER, FUNDS)
    yield led
    await led.close()


async def _pay(led: Any, tid: str, signer: mpp.SigningKey | None, chain: list[str] | None = None, amount: int = 100):
    charge = mpp.ledger.MandateCharge(tuple(chain), REALM) if chain else None
    return await led.transfer(tid, payer=PAYER, payee=PAYEE, amount=amount, currency="usd",
                              signer=signer.did if signer else None, mandate=charge)


async def test_owner_agent_stranger_and_denied(ledger):
    """LEDGER-ACCT-01, LEDGER-ACCT-03, LEDGER-ACCT-04, IDENT-BUD-06: an owner spends bare; an agent
    only under a chain rooted in an owner (MandateRequired bare); a stranger bare is refused, under a
    chain it may spend; a denied DID spends nothing, anywhere in a chain; nothing moves on a refusal."""
    P, A, S, Q = (mpp.SigningKey.generate() for _ in range(4))
    await ledger.keys.allow(PAYER, P.did, "owner")
    await ledger.keys.allow(PAYER, A.did, "agent")
    assert await ledger.keys.members(PAYER) == {P.did: "owner", A.did: "agent"}
    chain = [mandate(P, A)]

    for signer, error in ((A, MandateRequired), (S, UnauthorizedSigner), (Q, UnauthorizedSigner)):
        with pytest.raises(error):
            await _pay(ledger, f"bare-{signer.did[-6:]}", signer)
        with pytest.raises(error):
            await ledger.keys.spend_check(PAYER, signer=signer.did, chain=None)
    assert await ledger.balance(PAYER) == FUNDS

    await _pay(ledger, "owner-bare", P)
    await ledger.keys.spend_check(PAYER, signer=P.did, chain=None)
    await _pay(ledger, "agent-chain", A, chain)
    await _pay(ledger, "stranger-chain", S, [mandate(P, S)])  # a sub-agent the ledger never heard of
    with pytest.raises(UnauthorizedSigner, match="does not own"):  # LEDGER-ACCT-04: Q owns nothing here
        await _pay(ledger, "foreign-root", A, [mandate(Q, A)])
    with pytest.raises(UnauthorizedSigner, match="does not own"):
        await ledger.keys.spend_check(PAYER, signer=A.did, chain=(Q.did, A.did))
    assert await ledger.balance(PAYER) == FUNDS - 300

    await ledger.keys.deny(PAYER, A.did)
    with pytest.raises(UnauthorizedSigner, match="denied"):
        await _pay(ledger, "denied-agent", A, [mandate(P, A)])
    with pytest.raises(UnauthorizedSigner):
        await _pay(ledger, "denied-agent-bare", A)
    sub = mpp.SigningKey.generate()  # a denied DID in the middle of a chain cuts the whole chain
    with pytest.raises(UnauthorizedSigner, match="denied"):
        await _pay(ledger, "denied-middle", sub, [chain[0], mandate(A, sub, principal=P.did, max_depth=0)])
    await ledger.keys.allow(PAYER, Q.did, "owner")
    await ledger.keys.deny(PAYER, P.did)  # P denied: its own and its mandates' spending stop at once
    with pytest.raises(UnauthorizedSigner):
        await _pay(ledger, "denied-owner", P)
    with pytest.raises(UnauthorizedSigner):
        await _pay(ledger, "denied-root", S, [mandate(P, S)])
    assert await ledger.balance(PAYER) == FUNDS - 300 and await ledger.total() == 0 and await ledger.check() == []


async def test_roles_and_the_last_owner(ledger):
    """LEDGER-ACCT-01, LEDGER-ACCT-02: only did:key members and the table's roles; an account that
    has an owner keeps one; unknown accounts are named."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    for did, role in (("did:web:example.com", "owner"), ("not a did", "agent"), (A.did, "admin")):
        with pytest.raises(ValueError):
            await ledger.keys.allow(PAYER, did, role)
    with pytest.raises(UnknownAccount, match="acct:nobody"):
        await ledger.keys.allow("acct:nobody", A.did, "agent")
    with pytest.raises(UnknownAccount):
        await ledger.keys.spend_check("acct:nobody", signer=A.did, chain=None)
    await ledger.keys.allow(PAYER, P.did, "owner")
    for role in ("agent", "denied"):
        with pytest.raises(ValueError, match="only owner"):
            await ledger.keys.allow(PAYER, P.did, role)
    await ledger.keys.allow(PAYER, A.did, "owner")
    await ledger.keys.deny(PAYER, P.did)  # another owner remains
    assert await ledger.keys.members(PAYER) == {P.did: "denied", A.did: "owner"}
    created = await ledger.create_account("acct:new", "usd", owner=P.did)
    assert created.balance == 0 and await ledger.keys.members("acct:new") == {P.did: "owner"}


async def test_exclusive_creation_has_one_winner(ledger):
    """LEDGER-SVC-14: two exclusive creations of one account race; one makes it and owns it, the
    other is refused and owns nothing."""
    keys = [mpp.SigningKey.generate() for _ in range(4)]
    results = await asyncio.gather(*(ledger.create_account("acct:race", "usd", owner=k.did, exclusive=True) for k in keys),
                                   return_exceptions=True)
    made = [k for k, r in zip(keys, results) if not isinstance(r, BaseException)]
    assert len(made) == 1 and all(isinstance(r, TransferConflict) for r in results if isinstance(r, BaseException))
    assert await ledger.keys.members("acct:race") == {made[0].did: "owner"}


def test_sqlite_ledger_of_an_earlier_version_is_migrated(tmp_path: Path):
    """LEDGER-ACCT-06: the owner stays an owner, a key beside it becomes an agent, a key on an
    account without an owner stays able to spend bare."""
    P, A, K = (mpp.SigningKey.generate() for _ in range(3))
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:
        c.executescript("""
            CREATE TABLE accounts (id TEXT PRIMARY KEY, currency TEXT NOT NULL, kind TEXT NOT NULL, balance INTEGER NOT NULL);
            CREATE TABLE account_keys (account_id TEXT NOT NULL, did TEXT NOT NULL, PRIMARY KEY (account_id, did));
            CREATE TABLE account_owners (account_id TEXT PRIMARY KEY, principal TEXT NOT NULL);
            INSERT INTO accounts VALUES ('acct:buyer', 'usd', 'asset', 0), ('acct:solo', 'usd', 'asset', 0);
        """)
        c.execute("INSERT INTO account_owners VALUES ('acct:buyer', ?)", (P.did,))
        c.executemany("INSERT INTO account_keys VALUES (?, ?)", [("acct:buyer", A.did), ("acct:solo", K.did)])
    led = SqliteLedger(str(path))
    try:
        assert led.keys.members("acct:buyer") == {P.did: "owner", A.did: "agent"}
        assert led.keys.members("acct:solo") == {K.did: "owner"}
        tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not tables & {"account_keys", "account_owners"}
    finally:
        led.close()
    SqliteLedger(str(path)).close()  # opening again is a no-op


async def test_postgres_ledger_of_an_earlier_version_is_migrated(pg_url: str):
    """LEDGER-ACCT-06 on PostgreSQL."""
    import asyncpg

    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("""
            CREATE TABLE ledger_accounts (id TEXT PRIMARY KEY, currency TEXT NOT NULL, kind TEXT NOT NULL,
                                          balance BIGINT NOT NULL);
            CREATE TABLE ledger_account_keys (account_id TEXT NOT NULL, did TEXT NOT NULL, PRIMARY KEY (account_id, did));
            CREATE TABLE ledger_account_owners (account_id TEXT PRIMARY KEY, principal TEXT NOT NULL);
            INSERT INTO ledger_accounts VALUES ('acct:buyer', 'usd', 'asset', 0);
        """)
        await conn.execute("INSERT INTO ledger_account_owners VALUES ('acct:buyer', $1)", P.did)
        await conn.execute("INSERT INTO ledger_account_keys VALUES ('acct:buyer', $1)", A.did)
    finally:
        await conn.close()
    led = await PgLedger.connect(pg_url, max_size=2)
    try:
        assert await led.keys.members("acct:buyer") == {P.did: "owner", A.did: "agent"}
    finally:
        await led.close()


# -- a seller in front of the ledger: nothing consumed, nothing moved -----------------------------


@pytest.fixture
async def world(tmp_path: Path):
    """A seller trusting P; P owns PAYER; agent A is enrolled as mandate-bound, with a mandate of P
    whose ceiling is 500 and scope any GET."""
    P = mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), P.did)
    server = TestServer(seller_app(ledger, str(tmp_path / "store.db"), [P.did], routes=ROUTES), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            w = World(ledger, server, session, P=P)
            ledger.keys.allow(PAYER, w.A.did, "agent")
            yield w
    finally:
        await server.close()
        ledger.close()


def _mandate(w: World) -> str:
    return mandate(w.P, w.A, scope=["GET /*"])


async def test_bare_agent_credential_is_mandate_required_then_the_same_challenge_pays(world):
    """LEDGER-ACCT-03, LEDGER-ACCT-05, IDENT-BUD-06: a hand-built credential signed by the agent's key
    without its mandate is refused 402 mandate-required before the challenge is consumed and with
    nothing moved, whatever the price; the same challenge then pays with the mandate where the
    mandate allows it, and is refused by the mandate where it does not."""
    small = await world.quote("/small", world.A)
    await refused(world, "/small", mpp.sign_quote(small), "mandate-required", 402)
    await paid(world, "/small", credential(small, [_mandate(world)], world.A))

    report = await world.quote("/report", world.A)
    await refused(world, "/report", mpp.sign_quote(report), "mandate-required", 402)
    await refused(world, "/report", credential(report, [_mandate(world)], world.A), "over-ceiling", 403)
    assert world.ledger.balance(PAYER) == FUNDS - 100


async def test_library_without_identity_cannot_spend(world):
    """LEDGER-ACCT-03: the buyer library without an identity, policy wide open: refused, nothing moved."""
    client = PaymentClient(world.session, [LedgerBuyerMethod(key=world.A, account=PAYER)], POLICY)
    with pytest.raises(mpp.PaymentFailed) as caught:
        await client.request("GET", world.url("/report"))
    assert caught.value.status == 402 and caught.value.problem["type"] == IDENT + "mandate-required"
    assert world.ledger.balance(PAYER) == FUNDS and world.charges() == []


async def test_a_mandated_buyer_presents_its_chain_and_signs_nothing_outside_it(world, tmp_path: Path):
    """IDENT-POP-09: the buyer with a mandate presents it on a route that does not require one (the
    receipt names agent and principal), and at a seller outside the mandate's audience it refuses
    before signing: nothing is sent, nothing moves."""
    from mpp.purchase.agent import AgentIdentity

    def buyer(chain: list[str]) -> PaymentClient:
        return PaymentClient(world.session, [LedgerBuyerMethod(key=world.A, account=PAYER)], POLICY,
                             identity=AgentIdentity(world.A, chain))

    paid_ = await buyer([_mandate(world)]).request("GET", world.url("/small"))
    assert paid_.status == 200 and (paid_.claims["agent"], paid_.claims["principal"]) == (world.A.did, world.P.did)
    elsewhere = [mandate(world.P, world.A, audience=["other.example"], scope=["GET /*"])]
    before = world.snapshot()
    with pytest.raises(mpp.QuoteRejected) as caught:
        await buyer(elsewhere).request("GET", world.url("/small"))
    assert caught.value.rule == "mandate" and "does not cover this seller" in caught.value.detail
    assert world.snapshot() == before


async def test_strangers_and_unowned_roots_are_told_before_the_challenge_is_consumed(world):
    """LEDGER-ACCT-05: a key the account does not know, and a chain whose principal the seller trusts
    but the ledger does not list as an owner, are refused before the challenge is consumed; once
    the principal is enrolled as an owner the very same challenge pays."""
    stranger = await world.quote("/small", world.C)
    doc = await refused(world, "/small", mpp.sign_quote(stranger), VERIFICATION_FAILED, 402)
    assert "may not spend" in doc["detail"]

    P2 = mpp.SigningKey.generate()
    world.server.app[SELLER_KEY].trusted_principals.add(P2.did)  # a principal the seller trusts, unknown to the ledger
    q = await world.quote("/small", world.A)
    chain = [mandate(P2, world.A, scope=["GET /*"])]
    doc = await refused(world, "/small", credential(q, chain, world.A), VERIFICATION_FAILED, 402)
    assert "does not own" in doc["detail"]
    world.ledger.keys.allow(PAYER, P2.did, "owner")
    await paid(world, "/small", credential(q, chain, world.A))


async def test_denied_agent_is_refused_even_with_its_mandate(world):
    """LEDGER-ACCT-04: deny cuts the agent off at once, whatever mandates it holds."""
    world.ledger.keys.deny(PAYER, world.A.did)
    q = await world.quote("/small", world.A)
    doc = await refused(world, "/small", credential(q, [_mandate(world)], world.A), VERIFICATION_FAILED, 402)
    assert "denied" in doc["detail"]


# -- the ledger service: bare authorizations, spend checks, members signed by an owner ------------


@pytest.fixture
async def service(tmp_path: Path):
    """A ledger service: P owns PAYER and A is its agent; one seller registered for PAYEE."""
    from mpp.ledger.nonces import MemoryNonces

    principal, agent = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    ledger.keys.allow(PAYER, agent.did, "agent")
    keys = {PAYEE: mpp.SigningKey.generate()}
    nonces = MemoryNonces()
    server = TestServer(ledger_app(ledger, sellers={keys[PAYEE].did: PAYEE}, nonces=nonces), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        svc = Service(ledger, server, http, keys, principal, agent)
        svc.fault["nonces"] = nonces
        yield svc
    await server.close()
    ledger.close()


async def test_service_refuses_a_bare_agent_authorization(service):
    """LEDGER-ACCT-03, IDENT-POP-10 at a ledger service: a seller settling the agent's authorization
    without its chain (as a seller that ignores the extension would) gets 403 MandateRequired and
    nothing moves (LEDGER-16 passes: the signature itself is genuine)."""
    status, doc, _ = await service.call("POST", "/v1/transfers", service.transfer_body("bare-1", amount=5000, payer=PAYER))
    assert_problem(status, doc, 403, "MandateRequired")
    assert service.charges() == [] and service.ledger.balance(PAYER) == FUNDS


async def test_service_refuses_a_charge_above_the_chains_ceiling(service):
    """LEDGER-ACCT-07 at a ledger service: a registered seller posting the agent's genuine
    authorization for 5000 with its chain (ceiling 500) gets 403 OverMandate; nothing moves."""
    body = service.transfer_body("over-1", amount=5000, payer=PAYER)
    body["mandate"] = {"tokens": [mandate(service.principal, service.agent)], "realm": REALM}
    status, doc, _ = await service.call("POST", "/v1/transfers", body)
    assert_problem(status, doc, 403, "OverMandate")
    assert service.charges() == [] and service.ledger.balance(PAYER) == FUNDS


async def test_service_spend_check(service):
    """LEDGER-SVC-12: allowed, mandate-required, a stranger, an unowned root, an unknown account;
    nothing is recorded by any of them."""
    P, A = service.principal, service.agent
    transfers = service.ledger.transfers()
    cases = [
        ({"payer": PAYER, "signer": P.did, "chain": None}, 200, None),
        ({"payer": PAYER, "signer": A.did, "chain": [P.did, A.did]}, 200, None),
        ({"payer": PAYER, "signer": A.did, "chain": None}, 403, "MandateRequired"),
        ({"payer": PAYER, "signer": mpp.SigningKey.generate().did, "chain": None}, 403, "UnauthorizedSigner"),
        ({"payer": PAYER, "signer": A.did, "chain": [A.did, A.did]}, 403, "UnauthorizedSigner"),
        ({"payer": "acct:nobody", "signer": A.did, "chain": None}, 404, "UnknownAccount"),
        ({"payer": PAYER, "signer": A.did, "chain": "nope"}, 400, "InvalidRequest"),
        ({"payer": PAYER, "signer": A.did, "chain": [P.did, P.did]}, 403, "UnauthorizedSigner"),  # the signer is the leaf
    ]
    for body, status, error in cases:
        got, doc, _ = await service.call("POST", "/v1/spend-check", body)
        if error is None:
            assert got == 200 and doc["allowed"] is True, doc
        else:
            assert_problem(got, doc, status, error)
    assert service.ledger.transfers() == transfers
    assert service.fault["nonces"]._seen == {}  # read-only: not even a nonce is kept (a seller asks about strangers)


async def test_service_members_are_changed_only_by_an_owner(service):
    """LEDGER-SVC-13: an owner enrols and denies over the service; a seller's key, an agent, a
    stranger and an unknown account get the same 403 and leave no nonce behind; the last owner stays."""
    P, A = service.principal, service.agent
    newcomer = mpp.SigningKey.generate()
    nonces = service.fault["nonces"]
    path = f"/v1/accounts/{PAYER}/members"
    for key in (service.keys[PAYEE], A, newcomer):
        before = len(nonces._seen)
        status, doc, _ = await service.call("POST", path, {"did": newcomer.did, "role": "owner"}, key=key)
        assert_problem(status, doc, 403, "Forbidden")
        status, doc, _ = await service.call("GET", path, key=key)
        assert_problem(status, doc, 403, "Forbidden")
        assert len(nonces._seen) == before  # a stranger's request wrote nothing
    status, doc, _ = await service.call("GET", "/v1/accounts/acct:nobody/members", key=P)
    assert_problem(status, doc, 403, "Forbidden")

    status, doc, _ = await service.call("POST", path, {"did": newcomer.did, "role": "agent"}, key=P)
    assert status == 200 and doc["members"] == {P.did: "owner", A.did: "agent", newcomer.did: "agent"}, doc
    status, doc, _ = await service.call("POST", path, {"did": A.did, "role": "denied"}, key=P)
    assert status == 200 and doc["members"][A.did] == "denied"
    status, doc, _ = await service.call("POST", path, {"did": P.did, "role": "denied"}, key=P)
    assert_problem(status, doc, 400, "InvalidRequest")
    for bad in ({"did": "did:web:x", "role": "agent"}, {"did": newcomer.did, "role": "admin"}, {"did": newcomer.did}):
        status, doc, _ = await service.call("POST", path, bad, key=P)
        assert_problem(status, doc, 400, "InvalidRequest")
    assert service.ledger.keys.members(PAYER)[P.did] == "owner"


@pytest.mark.parametrize("open_accounts", [False, True])
async def test_accounts_created_over_the_service_only_where_it_is_open(tmp_path: Path, open_accounts: bool):
    """LEDGER-SVC-14: closed by default (403, no nonce recorded); where open, the key that signs owns
    the new account alone; an id that exists is refused with its members untouched, and so are a
    registered seller's payee account and the ledger's reserved ids."""
    from mpp.ledger.nonces import MemoryNonces

    principal = mpp.SigningKey.generate()
    ledger = new_ledger(str(tmp_path / "ledger.db"), principal.did)
    nonces = MemoryNonces()
    later = mpp.SigningKey.generate()  # a seller whose payee account does not exist yet
    server = TestServer(ledger_app(ledger, sellers={later.did: "acct:later"}, nonces=nonces, open_accounts=open_accounts),
                        host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            svc = Service(ledger, server, http, {}, principal, principal)
            newcomer = mpp.SigningKey.generate()
            status, doc, _ = await svc.call("POST", "/v1/accounts", {"id": "acct:new", "currency": "usd"}, key=newcomer)
            if not open_accounts:
                assert_problem(status, doc, 403, "Forbidden")
                assert nonces._seen == {} and [a.id for a in ledger.accounts() if a.id == "acct:new"] == []
                return
            assert status == 200 and doc["members"] == {newcomer.did: "owner"} and doc["account"]["balance"] == "0", doc
            status, doc, _ = await svc.call("POST", "/v1/accounts", {"id": PAYER, "currency": "usd"}, key=newcomer)
            assert_problem(status, doc, 409, "TransferConflict")
            assert ledger.keys.members(PAYER) == {principal.did: "owner"}
            status, doc, _ = await svc.call("POST", "/v1/accounts", {"id": "acct:later", "currency": "usd"}, key=newcomer)
            assert_problem(status, doc, 403, "Forbidden")  # nobody squats a seller's payee account
            for reserved in ("holds:usd", "issuance:eur"):
                status, doc, _ = await svc.call("POST", "/v1/accounts", {"id": reserved, "currency": "eur"}, key=newcomer)
                assert_problem(status, doc, 400, "InvalidRequest")
            # the command line does the same (in a thread: the service runs on this event loop)
            newcomer.save(tmp_path / "newcomer.key")
            made = await asyncio.to_thread(ok, "ledger", "account", "create", "acct:cli", "--ledger", svc.url,
                                           "--key", tmp_path / "newcomer.key")
            assert "acct:cli" in made.stdout and ledger.keys.members("acct:cli") == {newcomer.did: "owner"}
    finally:
        await server.close()
        ledger.close()


async def test_seller_on_the_service_tells_the_buyer_before_consuming(service, tmp_path: Path):
    """LEDGER-ACCT-05 through LEDGER-SVC-12: a seller on the service answers a bare agent credential
    402 mandate-required without consuming the challenge; the same challenge then pays with the mandate."""
    rail = HttpLedgerRail(service.url, key=service.keys[PAYEE], recipient=PAYEE, reconcile_interval=0)
    seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(), rails=[rail],
                    store=SqlitePaymentStore(str(tmp_path / "store.db")), trusted_principals={service.principal.did})
    app = web.Application()

    @seller.price(100, "usd")
    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/small", small)
    seller.setup(app)
    app.cleanup_ctx.append(rail.lifecycle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        world = World(service.ledger, server, service.http, P=service.principal, A=service.agent)
        q = await world.quote("/small", world.A)
        await refused(world, "/small", mpp.sign_quote(q), "mandate-required", 402)
        await paid(world, "/small", credential(q, [mandate(world.P, world.A, scope=["GET /*"])], world.A))
        assert service.ledger.balance(PAYER) == FUNDS - 100
    finally:
        await server.close()


# -- the command line ------------------------------------------------------------------------------


def mpp_cli(*args: object, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpp.cli.main", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def ok(*args: object) -> subprocess.CompletedProcess[str]:
    result = mpp_cli(*args)
    assert result.returncode == 0, (args, result.stderr)
    return result


def error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def test_mpp_init_enrols_the_agent_as_mandate_bound(mpp_init_home: Path):
    """LEDGER-ACCT-01: `mpp init` makes the principal the owner of acct:buyer and the agent an agent."""
    wallet = load_wallet(mpp_init_home / "agent")
    listed = json.loads(ok("ledger", "members", BUYER_ACCOUNT, "--ledger", mpp_init_home / "ledger.db", "--json").stdout)
    roles = listed["members"]
    assert roles[wallet.key.did] == "agent"
    assert sorted(roles.values()) == ["agent", "owner"]


def test_fetch_without_identity_cannot_step_outside_the_mandate(mpp_init_home: Path):
    """LEDGER-ACCT-03 (issue 12, AC1): `mpp fetch --no-identity` with a wide --max-amount is refused
    mandate-required (exit 4) with nothing moved; with the mandate it is refused before signing
    (exit 3, above the ceiling); a route inside the mandate is bought."""
    seller = start_seller(mpp_init_home)
    try:
        wallet, ledger_db = mpp_init_home / "agent", mpp_init_home / "ledger.db"
        before = json.loads(ok("ledger", "balance", "--ledger", ledger_db, "--json").stdout)
        bare = mpp_cli("fetch", "--wallet", wallet, "--max-amount", "6000", "--no-identity", seller.url + "/premium-report")
        assert bare.returncode == 4, bare.stderr
        problem = json.loads(bare.stderr.partition("\n")[2])
        assert problem["type"] == IDENT + "mandate-required" and problem["status"] == 402
        over = mpp_cli("fetch", "--wallet", wallet, "--max-amount", "6000", seller.url + "/premium-report")
        assert over.returncode == 3 and "ceiling" in over.stderr, over.stderr
        assert json.loads(ok("ledger", "balance", "--ledger", ledger_db, "--json").stdout) == before
        ok("fetch", "--wallet", wallet, seller.url + "/weather")
    finally:
        assert "Traceback" not in stop_seller(seller)


def _new_principal_and_agent(home: Path, ledger: str, owner_key: Path | None) -> tuple[str, str, Path]:
    """`mpp principal init`, enrolled as an owner of acct:buyer with `mpp ledger allow` (signed by
    ``owner_key`` when ``ledger`` is a service); `mpp agent init` enrolled as its agent; a mandate
    for it attached. Returns (principal DID, agent DID, wallet)."""
    principal_dir, agent_dir = home.parent / "p-new", home.parent / "a-new"
    p_did = ok("principal", "init", principal_dir).stdout.split()[1]
    signed = ["--key", owner_key] if owner_key else []
    ok("ledger", "allow", BUYER_ACCOUNT, p_did, "--as", "owner", "--ledger", ledger, *signed)
    enrol = ["--owner-key", principal_dir / "principal.key"] if owner_key else []
    made = ok("agent", "init", agent_dir, "--account", BUYER_ACCOUNT, "--ledger", ledger, *enrol)
    assert "enrolled at" in made.stdout
    a_did = made.stdout.split()[1]
    ok("mandate", "issue", "--issuer", principal_dir / "principal.key", "--subject", a_did, "--audience", "mpp.local",
       "--scope", "GET /*", "--ceiling", "500", "--budget", "2000", "--out", home.parent / "m-new.json")
    ok("agent", "init", agent_dir, "--account", BUYER_ACCOUNT, "--mandate", home.parent / "m-new.json")
    config = home / "seller.toml"
    config.write_text(config.read_text().replace("trusted_principals = [", f'trusted_principals = ["{p_did}", '))
    return p_did, a_did, agent_dir


def _buys_identity_route(home: Path, wallet: Path, p_did: str, a_did: str) -> None:
    """`mpp fetch` of a route that requires identity: 200, and the verified receipt names both."""
    seller = start_seller(home)
    try:
        bought = ok("fetch", "--wallet", wallet, seller.url + "/agent-report")
        [line] = [ln for ln in bought.stderr.splitlines() if ln.startswith("receipt: ")]
        claims = json.loads(line.removeprefix("receipt: "))
        assert (claims["agent"], claims["principal"]) == (a_did, p_did), claims
    finally:
        assert "Traceback" not in stop_seller(seller)


def test_fresh_principal_enrolled_from_the_command_line_buys(mpp_init_home: Path):
    """LEDGER-ACCT-02 (issue 12, AC2): a fresh principal enrolled as owner with `mpp ledger allow`,
    trusted by the seller, mandates a fresh agent (`mpp agent init --ledger`), which buys an
    identity route; the seller's records name both."""
    p_did, a_did, wallet = _new_principal_and_agent(mpp_init_home, str(mpp_init_home / "ledger.db"), None)
    _buys_identity_route(mpp_init_home, wallet, p_did, a_did)


def test_fresh_principal_enrolled_over_the_ledger_service_buys(mpp_init_home: Path):
    """LEDGER-SVC-13 (issue 12, AC2): the same with the seller on `mpp ledger serve`, the enrolment
    done over the service with owners' signatures."""
    home = mpp_init_home
    seller_did = ok("ledger", "key", home / "seller" / "ledger.key").stdout.strip()
    proc, url = _start_ledger("--ledger", str(home / "ledger.db"), "--seller", f"{seller_did}=acct:seller")
    try:
        config = home / "seller.toml"
        config.write_text(config.read_text().replace('ledger = "ledger.db"',
                                                     f'ledger_url = "{url}"\nledger_key = "seller/ledger.key"'))
        # the seller's key is no owner: it cannot enrol anyone
        refused_ = mpp_cli("ledger", "allow", BUYER_ACCOUNT, seller_did, "--as", "owner", "--ledger", url,
                           "--key", home / "seller" / "ledger.key")
        assert "Forbidden" in error_line(refused_)
        assert "--key" in error_line(mpp_cli("ledger", "members", BUYER_ACCOUNT, "--ledger", url))
        closed = mpp_cli("ledger", "account", "create", "acct:mine", "--ledger", url, "--key", home / "principal" / "principal.key")
        assert "Forbidden" in error_line(closed) and "--open-accounts" not in closed.stdout
        p_did, a_did, wallet = _new_principal_and_agent(home, url, home / "principal" / "principal.key")
        _buys_identity_route(home, wallet, p_did, a_did)
    finally:
        assert "Traceback" not in _stop(proc)


def test_ledger_account_commands_and_their_errors(tmp_path: Path):
    """LEDGER-ACCT-01: `mpp ledger account create|allow|deny|members`; `mpp ledger fund` on a missing
    account names the command that creates it; bad input is one line and exit 2."""
    init_home(tmp_path / "home")
    led = tmp_path / "home" / "ledger.db"
    owner, agent = mpp.SigningKey.generate().did, mpp.SigningKey.generate().did
    missing = mpp_cli("ledger", "fund", "acct:team", "100", "--ledger", led)
    assert "mpp ledger account create acct:team" in error_line(missing)
    made = ok("ledger", "account", "create", "acct:team", "--owner", owner, "--ledger", led)
    assert "acct:team" in made.stdout and owner in made.stdout
    ok("ledger", "fund", "acct:team", "100", "--ledger", led)
    ok("ledger", "allow", "acct:team", agent, "--as", "agent", "--ledger", led)
    ok("ledger", "deny", "acct:team", agent, "--ledger", led)
    listed = json.loads(ok("ledger", "members", "acct:team", "--ledger", led, "--json").stdout)
    assert listed == {"account": "acct:team", "members": {owner: "owner", agent: "denied"}}
    assert "only owner" in error_line(mpp_cli("ledger", "deny", "acct:team", owner, "--ledger", led))
    assert "did:key" in error_line(mpp_cli("ledger", "allow", "acct:team", "did:web:x", "--as", "agent", "--ledger", led))
    assert "acct:nope" in error_line(mpp_cli("ledger", "allow", "acct:nope", agent, "--as", "agent", "--ledger", led))
    assert "--as" in error_line(mpp_cli("ledger", "allow", "acct:team", agent, "--ledger", led))
    not_a_ledger = tmp_path / "notes.txt"
    not_a_ledger.write_text("not a database\n" * 100)
    assert "SQLite" in error_line(mpp_cli("ledger", "members", "acct:team", "--ledger", not_a_ledger))
    assert "--key" in error_line(mpp_cli("ledger", "account", "create", "acct:x", "--owner", owner, "--ledger", "http://127.0.0.1:9"))


def test_demo_shows_a_refused_bare_key_purchase():
    """Issue 12, AC5: `mpp demo` passes and shows the agent's bare key refused (LEDGER-ACCT-03)."""
    result = mpp_cli("demo", timeout=240)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("demo passed"), result.stdout[-2000:] + result.stderr
    part = result.stdout.partition("7. the agent's key without its mandate")[2].partition("\n8. ")[0]
    assert "HTTP 402 urn:mpp:problem:mandate-required" in part and "ok: refused before the challenge was consumed" in part
    # issue 17, finding 12: the steps are numbered 1, 2, 3, ... in the order they are printed
    steps = [int(m) for m in re.findall(r"^(\d+)\. ", result.stdout, re.M)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 10, steps
    # issue 19: the demo pays an evm route on a throwaway chain, exactly, and refuses the replay
    evm = result.stdout.partition("12. the evm method: a seller on")[2]
    assert "ok: paid on chain: the receipt's reference is a mined transaction" in evm, result.stdout[-3000:]
    assert "ok: a replayed evm credential is refused" in evm and "ok: on chain the payer paid exactly 50000" in evm


async def test_the_demo_skips_the_evm_part_with_one_line_without_anvil(tmp_path: Path, monkeypatch, capsys):
    """issue 19: without anvil the evm part says so, with the way to install it, and the demo goes on."""
    from mpp.cli import demo_evm
    from mpp.methods.evm import devchain

    def missing():
        raise devchain.ChainUnavailable("anvil is not installed: run `make anvil`\n(more detail)")

    monkeypatch.setattr(devchain, "find_anvil", missing)
    assert await demo_evm.evm_part(tmp_path, lambda ok, what: None, 12) is False
    assert capsys.readouterr().out == "12. the evm method: skipped: anvil is not installed: run `make anvil`\n"


async def test_a_rail_written_before_precheck_still_sells(tmp_path: Path):
    """LEDGER-ACCT-05 asks the ledger rails; a payment rail of the plug-in interface written before
    `precheck` existed is not asked, and still sells (no 5xx, CORE-ERR-11)."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "conformance"))
    from _static_rail import STATIC_PAYLOAD, StaticTestRail, static_seller_app

    class OlderRail:
        def __init__(self) -> None:
            self._rail = StaticTestRail()

        def __getattr__(self, name: str):
            if name == "precheck":
                raise AttributeError(name)
            return getattr(self._rail, name)

    app, _ = static_seller_app(str(tmp_path / "store.db"), rail=OlderRail())  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/thing")) as resp:
                challenge = mpp.parse_challenges(resp.headers.getall("WWW-Authenticate"))[0]
            credential = mpp.format_credential(mpp.Credential(challenge=challenge, payload=dict(STATIC_PAYLOAD)))
            async with http.get(server.make_url("/thing"), headers={"Authorization": credential}) as resp:
                assert resp.status == 200 and resp.headers.get("Payment-Receipt")
    finally:
        await server.close()


async def test_the_ledger_holds_the_mandates_ceiling_and_currency(ledger):
    """LEDGER-ACCT-07: whatever a seller checked, a charge above a link's ceiling, or in another
    currency than the mandate's, is refused by the ledger itself, nothing moved."""
    P, A = mpp.SigningKey.generate(), mpp.SigningKey.generate()
    await ledger.keys.allow(PAYER, P.did, "owner")
    await ledger.keys.allow(PAYER, A.did, "agent")
    chain = [mandate(P, A)]  # ceiling 500, usd
    with pytest.raises(OverMandate, match="ceiling") as caught:
        await _pay(ledger, "over", A, chain, amount=501)
    assert caught.value.rule == "ceiling"
    await ledger.create_account("acct:eur", "eur", owner=P.did)
    await ledger.create_account("acct:seller-eur", "eur")
    await ledger.fund("acct:eur", 1_000)
    with pytest.raises(OverMandate) as caught:
        await ledger.transfer("eur-1", payer="acct:eur", payee="acct:seller-eur", amount=100, currency="eur", signer=A.did,
                              mandate=mpp.ledger.MandateCharge(tuple(chain), REALM))
    assert caught.value.rule == "currency"
    await _pay(ledger, "at-ceiling", A, chain, amount=500)
    assert await ledger.balance(PAYER) == FUNDS - 500 and await ledger.balance("acct:eur") == 1_000


async def test_member_and_account_ids_have_one_spelling(ledger):
    """LEDGER-ACCT-01: a DID spelt with whitespace is refused (base58 decoders skip it, so it would be
    a second name for one key); the ledger's own accounts take no members; account ids and
    currencies are checked."""
    A = mpp.SigningKey.generate()
    for alias in (A.did + " ", A.did + "\n", "\t" + A.did):
        with pytest.raises(ValueError):
            await ledger.keys.allow(PAYER, alias, "agent")
    await ledger.fund(PAYER, 1)  # makes issuance:usd
    with pytest.raises(ValueError, match="own issuance account"):
        await ledger.keys.allow("issuance:usd", A.did, "owner")
    for bad_id, currency in (("", "usd"), ("acct:\x01x", "usd"), (" acct:x", "usd"), ("issuance:eur", "eur"),
                             ("holds:usd", "usd"), ("acct:x", ""), ("acct:x", "USD")):
        with pytest.raises(ValueError):
            await ledger.create_account(bad_id, currency)
