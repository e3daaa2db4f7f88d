"""One round trip per purchase on PostgreSQL (issue 16, CORE-ONCE-10): a seller whose payment
store (and audit log) share its PostgreSQL ledger's database commits a purchase (claim, transfer,
budgets, record with its receipt, audit entries) in one call of the ledger's server-side function
(mpp.ledger.pg.PgPurchaseBook). The round trips are counted on the wire (tests/_pg_wire.py), so the
path cannot quietly grow."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

import mpp
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, Seller
from mpp.ledger.book import MandateLink, Purchase, VerifiedMandate
from mpp.ledger.core import (BudgetExhausted, InsufficientFunds, MandateRequired as MandateRequiredError, MandateRevokedError,
                             OverMandate, TransferConflict, UnauthorizedSigner, UnknownAccount,
                             UnknownPayee, WrongCurrency)
from mpp.ledger.pg import PgLedger, PgPurchaseBook
from mpp.stores.audit import AsyncSqliteAuditLog, AuditChainBroken
from mpp.stores.payments import SqlitePaymentStore
from mpp.stores.pg import PgAuditLog, PgPaymentStore, create_pool

from _identity_support import (FUNDS, PAYEE, PAYER, PLAIN_PAYER, REALM, World, credential, link_key, mandate, now,
                               server_for)
from _pg_wire import WireCounter

# Round trips one purchase makes, counted on the wire once the pools' connections have prepared
# their statements: the one call, identity or not (the seller's own share of each mandate budget
# is checked in the call, after revocation: mpp.engine.mandates.check_charge_identity).
CHARGE_ROUND_TRIPS = 1
IDENTITY_ROUND_TRIPS = 1


@dataclass
class PgWorld:
    w: World
    wire: WireCounter
    ledger: PgLedger
    store: PgPaymentStore
    audit: PgAuditLog | None
    seller: Seller

    async def balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in await self.ledger.accounts()}

    async def charges(self) -> list[Any]:
        return [t for t in await self.ledger.transfers() if t.kind == "charge"]


def _app(seller: Seller, fail: bool) -> web.Application:
    app = web.Application()

    def ok():  # one function per route: the price rides on the function
        async def handler(request: web.Request) -> web.Response:
            if fail:
                raise RuntimeError("the handler broke")
            return web.json_response({"ok": True})
        return handler

    app.router.add_get("/plain", seller.price(100, "usd", "plain")(ok()))
    app.router.add_get("/thing", seller.price(100, "usd", "thing", require_identity=True)(ok()))
    seller.setup(app)
    return app


@asynccontextmanager
async def pg_world(url: str, *, audit: bool = True, fail: bool = False, book: bool = True,
                   P: mpp.SigningKey | None = None) -> AsyncIterator[PgWorld]:
    P = P or mpp.SigningKey.generate()
    async with WireCounter(url) as wire:
        ledger = await PgLedger.connect(wire.url)
        for account in (PAYEE, PAYER, PLAIN_PAYER):
            await ledger.create_account(account, "usd")
        await ledger.keys.allow(PAYER, P.did, "owner")
        await ledger.fund(PAYER, FUNDS)
        await ledger.fund(PLAIN_PAYER, FUNDS)
        rail = EmbeddedLedgerRail(ledger, recipient=PAYEE)
        await rail.start()
        store = await PgPaymentStore.connect(wire.url)
        log = await PgAuditLog.connect(wire.url) if audit else None
        seller = Seller(realm=REALM, secret=b"s" * 32, receipt_key=mpp.SigningKey.generate(), rails=[rail], store=store,
                        audit=log, trusted_principals={P.did})
        if not book:
            seller.engine.books.clear()
        server = server_for(_app(seller, fail))
        await server.start_server()
        http = aiohttp.ClientSession()
        w = World(ledger, server, http, P=P)  # type: ignore[arg-type]
        await ledger.keys.allow(PLAIN_PAYER, w.A.did, "owner")
        try:
            yield PgWorld(w, wire, ledger, store, log, seller)
        finally:
            await http.close()
            await server.close()
            if log is not None:
                await log.close()
            await store.close()
            await ledger.close()


async def plain_trips(pw: PgWorld, n: int = 3) -> list[int]:
    trips = []
    for _ in range(n):
        quote = await pw.w.quote("/plain", pw.w.A, account=PLAIN_PAYER)
        pw.wire.take()
        status, _, headers = await pw.w.send("/plain", mpp.sign_quote(quote))
        trips.append(pw.wire.take())
        assert status == 200 and "Payment-Receipt" in headers
    return trips


async def identity_trips(pw: PgWorld, n: int = 3) -> list[int]:
    chain = [mandate(pw.w.P, pw.w.A)]
    trips = []
    for _ in range(n):
        quote = await pw.w.quote("/thing", pw.w.A)
        pw.wire.take()
        status, doc, _ = await pw.w.send("/thing", credential(quote, chain, pw.w.A))
        trips.append(pw.wire.take())
        assert status == 200, doc
    return trips


async def test_a_charge_is_one_round_trip(pg_url):
    """CORE-ONCE-10: claim, transfer, record with its receipt and audit entry in one call; the
    pooled connection goes back without a reset query."""
    async with pg_world(pg_url) as pw:
        await plain_trips(pw, 2)  # warm: the connection has its statement prepared
        assert await plain_trips(pw) == [CHARGE_ROUND_TRIPS] * 3
        charges = await pw.charges()
        assert len(charges) == 5 and {c.signer for c in charges} == {pw.w.A.did}
        record = await pw.store.get(charges[-1].id)
        assert record is not None and record.state == "settled" and record.receipt and record.reference == charges[-1].id
        assert record.payer == PLAIN_PAYER and record.amount == "100" and record.currency == "usd"
        assert pw.audit is not None
        assert [e.kind for e in await pw.audit.entries()] == ["settlement"] * 5
        await pw.audit.verify()  # the hashes computed in SQL are the ones Python computes
        assert await pw.ledger.check() == [] and await pw.ledger.total() == 0


async def test_a_charge_with_identity_is_one_call(pg_url):
    """CORE-ONCE-10, IDENT-BUD-04, IDENT-BUD-05: chain ownership, revocation and both budgets
    checked and counted in the one call, the policy decision appended in it."""
    async with pg_world(pg_url) as pw:
        await identity_trips(pw, 2)
        assert await identity_trips(pw) == [IDENTITY_ROUND_TRIPS] * 3
        key = link_key(mandate(pw.w.P, pw.w.A))
        assert pw.audit is not None
        assert [e.kind for e in await pw.audit.entries()] == ["policy-decision", "settlement"] * 5
        await pw.audit.verify()
        chains = {t.signer for t in await pw.charges()}
        assert chains == {pw.w.A.did}
        pool = await pw.ledger.pool()
        assert await pool.fetchval("SELECT SUM(spent) FROM ledger_mandate_totals") == 500
        assert await pool.fetchval("SELECT SUM(spent) FROM mandate_totals") == 500
        assert await pool.fetchval("SELECT COUNT(*) FROM mandate_spend") == 5
        assert await pw.store.mandate_spent({key: "total"}) == {key: 0}  # each mandate() is a new link
        assert await pw.ledger.check() == []


async def test_the_sellers_budget_share_in_the_call(pg_url):
    """IDENT-BUD-04, IDENT-POL-01, IDENT-POL-02: the seller's own share of a budget is checked in the
    call; a purchase over it is refused budget-exceeded with nothing consumed or moved; over budget
    and above the approval threshold at once is refused for the budget, which comes first."""
    async with pg_world(pg_url) as pw:
        chain = [mandate(pw.w.P, pw.w.A, budget_amount=150)]
        quote = await pw.w.quote("/thing", pw.w.A)
        status, _, _ = await pw.w.send("/thing", credential(quote, chain, pw.w.A))
        assert status == 200
        quote = await pw.w.quote("/thing", pw.w.A)
        before = await pw.balances()
        status, doc, _ = await pw.w.send("/thing", credential(quote, chain, pw.w.A))
        assert status == 403 and doc["type"].endswith("budget-exceeded") and "at this seller" in doc["detail"], doc
        assert await pw.store.get(quote.challenge.id) is None and await pw.balances() == before
        tight = [mandate(pw.w.P, pw.w.A, budget_amount=50, approval_threshold=10)]
        quote = await pw.w.quote("/thing", pw.w.A)
        status, doc, _ = await pw.w.send("/thing", credential(quote, tight, pw.w.A))
        assert status == 403 and doc["type"].endswith("budget-exceeded"), doc
        assert await pw.store.get(quote.challenge.id) is None and await pw.balances() == before
        assert await pw.ledger.check() == []


async def test_a_failed_handler_is_one_more_call(pg_url):
    """CORE-ONCE-08: the compensating refund is one call: money, both budgets, record, audit."""
    async with pg_world(pg_url, fail=True) as pw:
        chain = [mandate(pw.w.P, pw.w.A)]
        for _ in range(2):
            quote = await pw.w.quote("/thing", pw.w.A)
            before = await pw.balances()
            pw.wire.take()
            status, _, headers = await pw.w.send("/thing", credential(quote, chain, pw.w.A))
            trips = pw.wire.take()
            assert status == 500 and "Payment-Receipt" not in headers
            record = await pw.store.get(quote.challenge.id)
            assert record is not None and record.state == "refunded" and record.failure == "handler raised"
            assert await pw.balances() == before
        assert trips == IDENTITY_ROUND_TRIPS + 1
        pool = await pw.ledger.pool()
        assert await pool.fetchval("SELECT SUM(spent) FROM ledger_mandate_totals") == 0
        assert await pool.fetchval("SELECT SUM(spent) FROM mandate_totals") == 0
        assert await pool.fetchval("SELECT COUNT(*) FROM mandate_spend") == 0
        assert pw.audit is not None
        assert [e.kind for e in await pw.audit.entries()] == ["policy-decision", "settlement", "refusal"] * 2
        await pw.audit.verify()
        book = pw.seller.engine.books["ledger"]
        await book.refund(quote.challenge.id, "again", ())  # idempotent: nothing more moves
        assert await pw.balances() == before and len(await pw.ledger.transfers()) == 2 + 2 * 2
        assert await pw.ledger.check() == []


async def test_exactly_once_under_concurrency(pg_url):
    """CORE-ONCE-01/02: the same credential sent 30 times at once pays once."""
    async with pg_world(pg_url, audit=False) as pw:
        quote = await pw.w.quote("/plain", pw.w.A, account=PLAIN_PAYER)
        auth = mpp.sign_quote(quote)
        results = await asyncio.gather(*(pw.w.send("/plain", auth) for _ in range(30)))
        assert sorted(status for status, _, _ in results) == [200] + [402] * 29
        assert len(await pw.charges()) == 1 and await pw.ledger.check() == []


async def test_who_refusals_consume_nothing(pg_url):
    """LEDGER-ACCT-05: a signer the payer account does not know, a chain whose principal does not
    own the account, a revoked mandate: refused inside the call with everything rolled back, so the
    same challenge pays once it is put right."""
    async with pg_world(pg_url) as pw:
        stranger = mpp.SigningKey.generate()
        quote = await pw.w.quote("/plain", stranger, account=PLAIN_PAYER)
        before = await pw.balances()
        status, doc, _ = await pw.w.send("/plain", mpp.sign_quote(quote))
        assert status == 402 and doc["type"].endswith("verification-failed"), doc
        assert await pw.store.get(quote.challenge.id) is None and await pw.balances() == before
        await pw.ledger.keys.allow(PLAIN_PAYER, stranger.did, "owner")
        status, _, _ = await pw.w.send("/plain", mpp.sign_quote(quote))
        assert status == 200

        token = mandate(pw.w.P, pw.w.A)
        quote = await pw.w.quote("/thing", pw.w.A, account=PLAIN_PAYER)  # P does not own acct:plain
        status, doc, _ = await pw.w.send("/thing", credential(quote, [token], pw.w.A))
        assert status == 402 and doc["type"].endswith("verification-failed"), doc
        assert await pw.store.get(quote.challenge.id) is None

        quote = await pw.w.quote("/thing", pw.w.A)
        await pw.ledger.keys.revoke(I.issue_revocation(pw.w.P, token, now=now()), token)
        before = await pw.balances()
        status, doc, _ = await pw.w.send("/thing", credential(quote, [token], pw.w.A))
        assert status == 402 and doc["type"].endswith("mandate-revoked"), doc
        assert await pw.store.get(quote.challenge.id) is None and await pw.balances() == before
        status, _, _ = await pw.w.send("/thing", credential(quote, [mandate(pw.w.P, pw.w.A)], pw.w.A))
        assert status == 200  # the same challenge, under a mandate that stands
        assert await pw.ledger.check() == []


async def test_a_money_refusal_consumes_the_challenge(pg_url):
    """IDENT-ERR-03: a balance too low consumes the challenge, its record failed, nothing moved."""
    async with pg_world(pg_url) as pw:
        await pw.ledger.create_account("acct:poor", "usd")
        await pw.ledger.keys.allow("acct:poor", pw.w.A.did, "owner")
        quote = await pw.w.quote("/plain", pw.w.A, account="acct:poor")
        before = await pw.balances()
        status, doc, _ = await pw.w.send("/plain", mpp.sign_quote(quote))
        assert status == 402 and doc["type"].endswith("payment-insufficient"), doc
        record = await pw.store.get(quote.challenge.id)
        assert record is not None and record.state == "failed" and record.receipt is None and record.reference is None
        assert record.failure == "InsufficientFunds"
        assert await pw.balances() == before
        status, doc, _ = await pw.w.send("/plain", mpp.sign_quote(quote))
        assert doc["type"].endswith("invalid-challenge")
        assert pw.audit is not None
        assert [e.kind for e in await pw.audit.entries()] == ["refusal"]


async def test_a_budget_holds_across_two_sellers(pg_url, tmp_path):
    """IDENT-BUD-06: two sellers on one ledger (one booking each purchase in one call, the other
    through the ledger's transfer with its records in SQLite), eight purchases at once under a
    mandate that affords five: five are paid, whichever seller takes them; the ledger refuses the
    rest, consuming their challenges."""
    P = mpp.SigningKey.generate()
    async with pg_world(pg_url, P=P) as pw:
        rail = EmbeddedLedgerRail(pw.ledger, recipient=PAYEE)
        await rail.start()
        other = Seller(realm=REALM, secret=b"o" * 32, receipt_key=mpp.SigningKey.generate(), rails=[rail],
                       store=SqlitePaymentStore(str(tmp_path / "other.db")), trusted_principals={P.did})
        assert other.engine.books == {} and "ledger" in pw.seller.engine.books
        server = server_for(_app(other, False))
        await server.start_server()
        try:
            w2 = World(pw.ledger, server, pw.w.session, P=P, A=pw.w.A)  # type: ignore[arg-type]
            chain = [mandate(P, pw.w.A, budget_amount=500)]
            quotes = [(pw.w, await pw.w.quote("/thing", pw.w.A)) for _ in range(4)]
            quotes += [(w2, await w2.quote("/thing", pw.w.A)) for _ in range(4)]
            results = await asyncio.gather(*(w.send("/thing", credential(q, chain, pw.w.A)) for w, q in quotes))
            statuses = [status for status, _, _ in results]
            assert statuses.count(200) == 5, results
            assert all(doc["type"].endswith("budget-exceeded") for status, doc, _ in results if status != 200), results
            key = link_key(chain[0])
            assert await pw.ledger.keys.mandate_spent(key, "total") == 500
            for w, q in quotes:  # every challenge consumed, paid or refused for money
                record = await (pw.store if w is pw.w else other.store).get(q.challenge.id)
                assert record is not None and record.state in ("settled", "delivered", "failed"), record
            assert await pw.ledger.check() == [] and await pw.ledger.total() == 0
        finally:
            await server.close()
            await other.store.close()


async def test_the_audit_chain_in_sql_is_the_one_python_computes(pg_url):
    """The hash chain extended inside the call (mpp.ledger._pg_purchase_sql) verifies as the
    Python log does, whatever the data holds; a broken chain refuses the purchase, unconsumed."""
    async with pg_world(pg_url) as pw:
        assert pw.audit is not None
        await pw.audit.append("quote-seen", {"note": "written by Python first"})
        book = pw.seller.engine.books["ledger"]
        odd = {"resource": "GET /caf\u00e9 \"quoted\"\n\t\u2028 \U0001f600", "n": 12345678901, "x": 1.5,
               "nested": {"b": [True, None]}, "\u00e9": "k"}
        assert await book.purchase(purchase("c-odd", audit=(("settlement", odd), ("receipt", {"k": "v"}))))
        entries = await pw.audit.entries()
        assert [e.kind for e in entries] == ["quote-seen", "settlement", "receipt"] and entries[1].data == odd
        await pw.audit.verify()
        await pw.audit.append("receipt", {"after": "the call"})  # Python extends what SQL wrote
        await pw.audit.verify()

        pool = await pw.ledger.pool()
        await pool.execute("UPDATE audit_head SET hash = 'x'")
        with pytest.raises(AuditChainBroken):
            await book.purchase(purchase("c-broken", audit=(("settlement", {"k": "v"}),)))
        assert await pw.store.get("c-broken") is None and await pw.ledger.get_transfer("c-broken") is None
        assert not await book.purchase(purchase("c-odd"))  # claimed before: nothing written


async def test_the_book_needs_one_database(pg_url, tmp_path):
    """The book is used when the payment store (and the audit log, if any) are built on the
    ledger's pool or from its URL; anything else keeps the several-step path."""
    other = pg_url + "?application_name=other"
    ledger = PgLedger(pg_url)
    rail = EmbeddedLedgerRail(ledger, recipient=PAYEE)
    assert isinstance(rail.book_with(PgPaymentStore(pg_url), PgAuditLog(pg_url)), PgPurchaseBook)
    assert isinstance(rail.book_with(PgPaymentStore(pg_url), None), PgPurchaseBook)
    assert rail.book_with(PgPaymentStore(other), None) is None
    assert rail.book_with(PgPaymentStore(pg_url), PgAuditLog(other)) is None
    assert rail.book_with(PgPaymentStore(pg_url), AsyncSqliteAuditLog.at(str(tmp_path / "a.db"))) is None
    assert rail.book_with(SqlitePaymentStore(str(tmp_path / "p.db")), None) is None
    with pytest.raises(ValueError):
        PgPurchaseBook(ledger, PgPaymentStore(other))
    pool = await create_pool(pg_url, max_size=2)
    try:
        shared = PgLedger(pool)
        assert PgPurchaseBook.fits(shared, PgPaymentStore(pool), PgAuditLog(pool))
        assert not PgPurchaseBook.fits(shared, PgPaymentStore(pg_url), None)
    finally:
        await pool.close()


async def test_the_functions_install_once_when_processes_start_together(pg_url):
    """The schema migration installs the functions idempotently, several ledgers opening at once."""
    ledgers = [PgLedger(pg_url, max_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(ledger.open() for ledger in ledgers))
        await ledgers[0].open()
        pool = await ledgers[0].pool()
        names = {r[0] for r in await pool.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'ledger\\_%'")}
        assert {"ledger_purchase_v1", "ledger_refund_purchase_v1", "ledger_audit_append_v1"} <= names
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_the_function_refuses_as_the_sqlite_book_does(pg_url):
    """Each refusal of mpp.ledger.book.SqliteBook, from the function: who pays rolls everything back
    (no record), money keeps the challenge consumed (record failed, ``consumed`` set)."""
    async with pg_world(pg_url, audit=False) as pw:
        book, ledger, P, A = pw.seller.engine.books["ledger"], pw.ledger, pw.w.P, pw.w.A
        agent, stranger, denied = (mpp.SigningKey.generate().did for _ in range(3))
        await ledger.keys.allow(PLAIN_PAYER, agent, "agent")
        await ledger.keys.allow(PAYER, denied, "denied")
        await ledger.void("c-voided")
        await ledger.create_account("acct:euro", "eur")
        await ledger.transfer("c-made", payer=PLAIN_PAYER, payee=PAYEE, amount=7, currency="usd", signer=None)
        pool = await ledger.pool()
        await pool.execute("INSERT INTO ledger_revocations(jti, revoker, revoked_at, token) VALUES ('k-revoked', $1, now(), 't')",
                           P.did)

        def chain(*dids: str, key: str = "k-1", currency: str = "usd", ceiling: int = 50, budget: int = 10) -> VerifiedMandate:
            return VerifiedMandate(dids, (MandateLink(key, "total", budget, currency, ceiling),))

        under = dict(payer=PAYER, signer=A.did)
        cases: list[tuple[str, dict[str, Any], type, str | None]] = [
            ("c-1", dict(payer="acct:none"), UnknownAccount, None),
            # issue 17, four causes: the payee judged first (the seller's fault), the payer's currency named
            ("c-2", dict(payee="acct:none"), UnknownPayee, None),
            ("c-2b", dict(payer="acct:none", payee="acct:none"), UnknownPayee, None),
            ("c-3", dict(currency="eur"), UnknownPayee, None),
            ("c-3b", dict(payer="acct:euro"), WrongCurrency, None),
            ("c-voided", {}, TransferConflict, None),
            ("c-made", {}, TransferConflict, None),
            ("c-4", dict(signer=agent), MandateRequiredError, None),
            ("c-5", dict(signer=stranger), UnauthorizedSigner, None),
            ("c-6", dict(under, signer=denied, mandate=chain(P.did, denied)), UnauthorizedSigner, None),
            ("c-7", dict(under, mandate=chain(A.did)), UnauthorizedSigner, None),  # A does not own acct:principal
            ("c-8", dict(under, signer=stranger, mandate=chain(P.did, A.did)), UnauthorizedSigner, None),
            ("c-9", dict(under, mandate=chain(P.did, A.did, currency="eur")), OverMandate, "currency"),
            ("c-10", dict(under, mandate=chain(P.did, A.did, ceiling=5)), OverMandate, "ceiling"),
            ("c-11", dict(under, mandate=chain(P.did, A.did, key="k-revoked")), MandateRevokedError, None),
        ]
        before = await pw.balances()
        for cid, fields, error, rule in cases:
            with pytest.raises(error) as refused:
                await book.purchase(purchase(cid, **fields))
            assert not getattr(refused.value, "consumed", False) and await pw.store.get(cid) is None, cid
            if rule is not None:
                assert refused.value.rule == rule
        assert await pw.balances() == before

        assert await book.purchase(purchase("c-ok", **under, mandate=chain(P.did, A.did)))
        with pytest.raises(OverMandate) as share:  # 7 of 10 spent at this seller: 7 more is over its share
            await book.purchase(purchase("c-over", **under, mandate=chain(P.did, A.did)))
        assert share.value.rule == "budget" and not getattr(share.value, "consumed", False)
        assert await pw.store.get("c-over") is None
        # the ledger's count is across sellers: with this seller's share forgotten (as if another
        # seller had spent the 7), the ledger refuses, and that refusal is for money
        await pool.execute("DELETE FROM mandate_spend")
        await pool.execute("DELETE FROM mandate_totals")
        with pytest.raises(BudgetExhausted) as refused:
            await book.purchase(purchase("c-over", **under, mandate=chain(P.did, A.did)))
        await ledger.create_account("acct:poor", "usd")
        with pytest.raises(InsufficientFunds) as poor:
            await book.purchase(purchase("c-poor", payer="acct:poor"))
        for cid, exc in (("c-over", refused.value), ("c-poor", poor.value)):
            record = await pw.store.get(cid)
            assert exc.consumed and record is not None and record.state == "failed" and record.receipt is None, cid
        assert await ledger.keys.mandate_spent("k-1", "total") == 7
        assert await pw.store.mandate_spent({"k-1": "total"}) == {"k-1": 0}
        assert await ledger.check() == []


async def test_a_pooled_connection_goes_back_without_a_reset_query(pg_url):
    """The stores' and the ledger's pools release a connection as it is (mpp.stores.pg._base.release_as_is)."""
    async with WireCounter(pg_url) as wire:
        store = await PgPaymentStore.connect(wire.url)
        ledger = await PgLedger.connect(wire.url)
        try:
            for pool in (await store.pool(), await ledger.pool()):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                wire.take()
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                assert wire.take() == 1
        finally:
            await store.close()
            await ledger.close()


def purchase(cid: str, **kw: Any) -> Purchase:
    fields: dict[str, Any] = dict(challenge_id=cid, resource="GET /plain", idempotency_key=None, payer=PLAIN_PAYER,
                                  payee=PAYEE, amount=7, currency="usd", signer=None,
                                  settled_at="2030-01-02T03:04:05Z", receipt="r")
    return Purchase(**(fields | kw))


async def test_round_trips_measured(pg_url):
    """What each path costs, printed (pytest -s): the several-step path, then the book."""
    for book in (False, True):
        async with pg_world(pg_url, book=book) as pw:
            await plain_trips(pw, 2)  # warm: every pool's connections have their statements prepared
            await identity_trips(pw, 2)
            print(f"book={book}: charge {await plain_trips(pw)}, identity {await identity_trips(pw)}")


async def test_one_credential_1000_times_over_3_processes_books_once(home, pg_url):
    """CORE-ONCE-01, CORE-ONCE-02 through the book: `mpp seller serve --workers 3` with its store,
    ledger and audit log on one PostgreSQL URL books each purchase in one call; one credential sent
    1,000 times at once settles once, whichever process answers, and the audit chain holds."""
    from conftest import start_seller, stop_seller
    from mpp.aio import PaymentClient
    from mpp.methods.ledger import LedgerBuyerMethod
    from test_workers_once import SUBMISSIONS, WORKERS, _ledger_on_postgres, _storm

    await asyncio.to_thread(_ledger_on_postgres, home, pg_url)
    config = home / "seller.toml"
    text = config.read_text()
    for name in ("store", "ledger", "audit_log"):
        assert f'{name} = "ledger.db"' in text
        text = text.replace(f'{name} = "ledger.db"', f'{name} = "{pg_url}"')
    config.write_text(text)
    seller = await asyncio.to_thread(start_seller, home, "--workers", str(WORKERS))
    ledger = await PgLedger.connect(pg_url, max_size=2)
    try:
        wallet = seller.wallet
        url = f"{seller.url}/weather"
        async with aiohttp.ClientSession() as http:
            client = PaymentClient(http, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy)
            auth = await client.credential("GET", url)
        statuses, workers, _ = await _storm(url, auth)
        assert statuses[200] == 1 and sum(statuses.values()) == SUBMISSIONS, statuses
        assert len(workers) >= WORKERS, dict(workers)
        assert len([t for t in await ledger.transfers() if t.kind == "charge"]) == 1
        pool = await ledger.pool()
        # booked: recorded settled in the call (the several-step path would have marked it delivered)
        assert [tuple(r) for r in await pool.fetch("SELECT state, receipt IS NOT NULL FROM payments")] == [("settled", True)]
        log = await PgAuditLog.connect(pg_url, max_size=1)
        try:
            assert [e.kind for e in await log.entries()].count("settlement") == 1
            await log.verify()
        finally:
            await log.close()
        assert await ledger.total() == 0 and await ledger.check() == []
    finally:
        await ledger.close()
        err = await asyncio.to_thread(stop_seller, seller)
    assert "Traceback" not in err, err
