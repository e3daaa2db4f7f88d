"""`mpp seller usage` (issue 7, spec/pricing.md §8): the seller's purchases of a window from its own
records, on either engine, and the check that they equal the ledger's transfers.

Real purchases go through an in-process seller (payment store, session store and ledger on
SQLite, or all three on PostgreSQL): charges by two agents of one principal, a purchase refunded
because its handler failed, a metered session closed with a capture, and a plain purchase with
no identity. The export, read back through fresh store objects as the command reads them, must
net exactly what the ledger moved to the seller's account in the same window.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp import identity as I
from mpp.aio import EmbeddedLedgerRail, PaymentClient, Seller, SessionPolicy
from mpp.purchase.agent import AgentIdentity
from mpp.aio.metering import meter_of
from mpp.stores.budget import BudgetStore
from mpp.protocol.headers import format_receipt
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.protocol.models import PaymentReceipt, format_rfc3339
from mpp.pricing import UsageRecord
from mpp.protocol.receipts import sign_receipt
from mpp.intents.session import cost_of
from mpp.stores.payments import PaymentRecord, SettledPayment
from mpp.connect import open_ledger, open_payment_store, open_session_store
from mpp.engine.usage import build_report, charge_records, format_csv, format_table, ledger_transfers, parse_time, read_usage, reconcile

from conftest import REPO, start_seller, stop_seller

REALM = "usage.test"
PAYEE, PAYER, PLAIN = "acct:seller", "acct:principal", "acct:plain"
FUNDS = 100_000
SUMS = ("purchases", "units", "amount", "refunded", "net")


def now() -> datetime:
    return datetime.now(timezone.utc)


def second() -> datetime:
    return now().replace(microsecond=0)


async def next_second() -> datetime:
    """Wait for the next whole second and return it: the records keep times to the second."""
    t = second() + timedelta(seconds=1)
    await asyncio.sleep((t - now()).total_seconds() + 0.01)
    return t


# -- a seller on one engine ------------------------------------------------------------------


@dataclass
class Shop:
    server: TestServer
    seller: Seller
    ledger: Any  # AsyncLedgerStore (SqliteLedger wrapped, or PgLedger)
    locations: dict[str, str]
    P: mpp.SigningKey
    A: mpp.SigningKey
    B: mpp.SigningKey
    C: mpp.SigningKey

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def export(self, since: datetime, until: datetime, by: str | None = None) -> tuple[dict, list[UsageRecord], list]:
        """What the command does: fresh stores on the seller's locations, the records of the window,
        the report and the ledger's transfers to the seller in the window."""
        payments = await open_payment_store(self.locations["payments"])
        sessions = await open_session_store(self.locations["sessions"])
        try:
            records = await read_usage(payments, sessions, since=since, until=until)
        finally:
            await payments.close()
            await sessions.close()
        transfers = await ledger_transfers(self.ledger, PAYEE, since=since, until=until)
        return build_report(records, since=since, until=until, by=by), records, transfers


@pytest.fixture(params=["sqlite", "postgres"])
def locations(request, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {kind: f"sqlite:///{tmp_path}/{kind}.db" for kind in ("payments", "sessions", "ledger")}
    url = request.getfixturevalue("pg_url")  # errors (never skips) if PostgreSQL cannot start
    return {kind: url for kind in ("payments", "sessions", "ledger")}


@pytest.fixture
async def shop(locations: dict[str, str]):
    P, A, B, C = (mpp.SigningKey.generate() for _ in range(4))
    ledger = await open_ledger(locations["ledger"])
    for account in (PAYEE, PAYER, PLAIN):
        await ledger.create_account(account, "usd")
    await ledger.keys.allow(PAYER, P.did, "owner")
    await ledger.keys.allow(PLAIN, C.did, "owner")
    await ledger.fund(PAYER, FUNDS)
    await ledger.fund(PLAIN, FUNDS)
    rail = EmbeddedLedgerRail(ledger, recipient=PAYEE)
    await rail.start()
    seller = Seller(realm=REALM, secret=b"u" * 32, receipt_key=mpp.SigningKey.generate(), rails=[rail],
                    store=await open_payment_store(locations["payments"]),
                    session_store=await open_session_store(locations["sessions"]), session_sweep_interval=0.2,
                    trusted_principals={P.did})

    @seller.price(100, "usd", "a report", require_identity=True)
    async def report(request: web.Request) -> web.Response:
        return web.json_response({"report": True})

    @seller.price(40, "usd", "fails after payment", require_identity=True)
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "out of stock"}, status=409)  # 4xx after settlement: refunded

    @seller.price(7, "usd", "no identity needed")
    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"plain": True})

    @seller.meter("token", 2, "usd", per=1000, max_units=5000, description="completion")
    async def gen(request: web.Request) -> web.Response:
        tokens = int(request.query.get("tokens", "1000"))
        meter_of(request).report(tokens)
        return web.json_response({"tokens": tokens})

    app = web.Application()
    for path, handler in (("/report", report), ("/broken", broken), ("/plain", plain), ("/gen", gen)):
        app.router.add_get(path, handler)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Shop(server, seller, ledger, locations, P, A, B, C)
    finally:
        await server.close()
        await ledger.close()


def agent_client(http: aiohttp.ClientSession, shop: Shop, agent: mpp.SigningKey, budget: BudgetStore) -> PaymentClient:
    token = I.issue_mandate(shop.P, subject=agent.did, audience=[REALM], scope=["GET /report*", "GET /broken*", "GET /gen*"],
                            currency="usd", ceiling=500, budget_amount=10_000, not_before=now() - timedelta(minutes=1),
                            expires=now() + timedelta(days=1))
    return PaymentClient(http, [LedgerBuyerMethod(key=agent, account=PAYER)], mpp.BuyerPolicy(max_amount=500),
                         identity=AgentIdentity(agent, [token], budget), sessions=SessionPolicy(max_cap=100))


async def shop_day(shop: Shop, tmp_path: Path) -> datetime:
    """C's plain purchase, then (from the returned second on) A's and B's purchases, A's refunded
    one and A's metered session."""
    budget_a, budget_b = BudgetStore(str(tmp_path / "a.db")), BudgetStore(str(tmp_path / "b.db"))
    try:
        async with aiohttp.ClientSession() as http:
            plain = PaymentClient(http, [LedgerBuyerMethod(key=shop.C, account=PLAIN)], mpp.BuyerPolicy(max_amount=500))
            assert (await plain.request("GET", shop.url("/plain"))).status == 200
            mid = await next_second()
            async with agent_client(http, shop, shop.A, budget_a) as a, agent_client(http, shop, shop.B, budget_b) as b:
                for client in (a, a, b):
                    r = await client.request("GET", shop.url("/report"))
                    assert r.status == 200 and r.paid, r.body
                with pytest.raises(mpp.PaymentFailed) as failed:  # paid, then the handler failed: refunded
                    await a.request("GET", shop.url("/broken"))
                assert failed.value.status == 409
                for tokens in (3000, 1500):
                    r = await a.request("GET", shop.url(f"/gen?tokens={tokens}"))
                    assert r.status == 200 and r.claims["intent"] == "session", r.body
                assert len(a.open_sessions) == 1
            # leaving the client closed the session: captured at close
    finally:
        budget_a.close()
        budget_b.close()
    return mid


async def ledger_window_net(ledger, since: datetime, until: datetime) -> int:
    """Independently of mpp.engine.usage: charges and captures to the seller minus refunds from it."""
    net = 0
    for t in await ledger.transfers():
        if since <= datetime.fromisoformat(t.created_at) < until:
            if t.payee == PAYEE and t.kind in ("charge", "capture"):
                net += t.amount
            elif t.payer == PAYEE and t.kind == "refund":
                net -= t.amount
    return net


def assert_groups_sum_to_totals(report: dict) -> None:
    for currency, totals in report["totals"].items():
        rows = [r for r in report["rows"] if r["currency"] == currency]
        for name in SUMS:
            assert sum(int(r[name]) for r in rows) == int(totals[name]), (report["by"], name)


async def test_export_equals_the_ledgers_transfers_and_groups_sum_to_the_totals(shop: Shop, tmp_path: Path):
    """PRICE-USAGE-01, PRICE-USAGE-02, PRICE-USAGE-03: every settled purchase is listed (charges
    by two agents of one principal, a refunded one, a session at its capture, one with no
    identity); the window's net equals the ledger's transfers to the seller's account (charges +
    captures - refunds) on either engine; group rows sum to the totals; amounts are strings."""
    start = second()
    mid = await shop_day(shop, tmp_path)
    await asyncio.sleep(0.3)
    until = await next_second()
    report, records, transfers = await shop.export(start, until)

    assert reconcile(report, records, transfers, PAYEE) == []
    totals = report["totals"]["usd"]
    net = await ledger_window_net(shop.ledger, start, until)
    captured = cost_of(3000, 2, 1000) + cost_of(1500, 2, 1000)
    assert int(totals["net"]) == net == await shop.ledger.balance(PAYEE) == 7 + 3 * 100 + captured
    assert (totals["purchases"], totals["amount"], totals["refunded"]) == (6, str(7 + 300 + 40 + captured), "40")
    assert json.loads(json.dumps(report)) == report and set(report) == {"since", "until", "by", "rows", "totals"}

    rows = report["rows"]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    for r in rows:
        assert set(r) == {"time", "agent", "principal", "route", "model", "offer", "priceList", "currency", "units", "amount",
                          "refunded", "net", "reference"}
        assert all(isinstance(r[k], str) and r[k].lstrip("-").isdigit() for k in ("amount", "refunded", "net"))
    by_route = {}
    for r in rows:
        by_route.setdefault(r["route"], []).append(r)
    assert sorted(by_route) == ["GET /broken", "GET /gen", "GET /plain", "GET /report"]
    (refunded,) = by_route["GET /broken"]
    assert (refunded["amount"], refunded["refunded"], refunded["net"], refunded["agent"]) == ("40", "40", "0", shop.A.did)
    (session,) = by_route["GET /gen"]
    assert (session["model"], session["units"], session["amount"], session["agent"], session["principal"]) == (
        "unit", 4500, str(captured), shop.A.did, shop.P.did)
    assert session["reference"] in {t.id for t in transfers if t.kind == "capture"}
    assert sorted(r["agent"] for r in by_route["GET /report"]) == sorted([shop.A.did, shop.A.did, shop.B.did])
    assert {r["principal"] for r in by_route["GET /report"]} == {shop.P.did}
    assert {r["model"] for r in by_route["GET /report"]} == {"transaction"}
    (plain,) = by_route["GET /plain"]
    assert (plain["agent"], plain["principal"], plain["units"]) == (shop.C.did, "", 0)  # issue 17, finding 12: units are metered
    charges = {t.id: t for t in transfers if t.kind == "charge"}
    assert {r["reference"] for r in rows if r["model"] == "transaction"} == set(charges)  # each purchase is its transfer

    for by in ("agent", "principal", "route", "model"):
        grouped = build_report(records, since=start, until=until, by=by)
        assert grouped["totals"] == report["totals"] and grouped["by"] == by
        assert_groups_sum_to_totals(grouped)
    by_agent = {r["agent"]: r for r in build_report(records, since=start, until=until, by="agent")["rows"]}
    assert (by_agent[shop.A.did]["purchases"], by_agent[shop.A.did]["net"]) == (4, str(200 + captured))
    assert (by_agent[shop.B.did]["net"], by_agent[shop.C.did]["net"]) == ("100", "7")
    by_principal = {r["principal"]: r["net"] for r in build_report(records, since=start, until=until, by="principal")["rows"]}
    assert by_principal == {shop.P.did: str(300 + captured), "": "7"}

    # --since excludes what settled before it, and the later window still equals the ledger's
    later, later_records, later_transfers = await shop.export(mid, until)
    assert reconcile(later, later_records, later_transfers, PAYEE) == []
    assert later["totals"]["usd"]["purchases"] == 5 and "GET /plain" not in {r["route"] for r in later["rows"]}
    assert int(later["totals"]["usd"]["net"]) == await ledger_window_net(shop.ledger, mid, until) == 300 + captured
    empty, _, none = await shop.export(until, until + timedelta(hours=1))
    assert empty["rows"] == [] and empty["totals"] == {} and none == []

    # A transfer to the seller that its records do not know: said, with its id (PRICE-USAGE-02)
    auth = await shop.ledger.transfer("stray-transfer", payer=PLAIN, payee=PAYEE, amount=5, currency="usd", signer=shop.C.did)
    after = await next_second()
    report, records, transfers = await shop.export(start, after)
    problems = reconcile(report, records, transfers, PAYEE)
    assert auth.id == "stray-transfer" and len(problems) == 2
    assert "usd:" in problems[0] and f"moved {net + 5}" in problems[0] and "stray-transfer" in problems[1]


# -- receipts of any age ----------------------------------------------------------------------


def _settled(claims: dict[str, Any], *, state: str = "delivered", timestamp: str = "2025-06-01T10:00:00Z") -> SettledPayment:
    key = mpp.SigningKey.generate()
    header = format_receipt(PaymentReceipt(status="success", method="ledger", timestamp=timestamp, reference="tx-1",
                                           challengeId="c-1", receipt=sign_receipt(key, claims)))
    record = PaymentRecord("c-1", "GET /items/42?full=1", state, None, "acct:b", "25", "usd", "tx-1", header, None)
    return SettledPayment(record, "2025-06-01T09:59:59Z", "2025-06-01T10:00:01Z")


def test_receipts_with_and_without_price_list_claims():
    """PRICE-USAGE-01, PRICE-VER-01: a receipt naming its price list, offer and model gives them;
    one from before price lists is a transaction with no price list; the time is the receipt's
    settlement timestamp; a refunded record nets zero; an unreadable receipt keeps the row."""
    base = {"iss": REALM, "sub": "did:key:zAgent", "intent": "charge", "amount": "25", "currency": "usd"}
    (old,) = charge_records([_settled(base)])
    assert (old.model, old.offer, old.price_list, old.agent, old.principal, old.route) == (
        "transaction", "", None, "did:key:zAgent", None, "GET /items/42")
    assert old.time == datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc) and old.row()["priceList"] is None
    priced = {**base, "agent": "did:key:zA", "principal": "did:key:zP", "priceList": "2025-06-01.1",
              "pricing": {"priceList": "2025-06-01.1", "offer": "job", "model": "task"}, "route": "GET /items/{id}"}
    (new,) = charge_records([_settled(priced, state="refunded")])
    assert (new.model, new.offer, new.price_list, new.agent, new.principal, new.route, new.net) == (
        "task", "job", "2025-06-01.1", "did:key:zA", "did:key:zP", "GET /items/{id}", 0)
    (top,) = charge_records([_settled({**base, "model": "seat", "priceList": "v2"})])
    assert (top.model, top.price_list) == ("seat", "v2")
    unreadable = PaymentRecord("c-1", "GET /x", "settled", None, "acct:b", "25", "usd", "tx-1", "not-a-receipt", None)
    (kept,) = charge_records([SettledPayment(unreadable, "2025-06-01T09:59:59Z", "2025-06-01T10:00:01Z")])
    assert (kept.model, kept.amount, kept.time, kept.agent) == ("transaction", 25, datetime(2025, 6, 1, 9, 59, 59, tzinfo=timezone.utc),
                                                               "acct:b")


def test_a_refund_counts_in_the_window_it_was_made_in():
    """PRICE-USAGE-02: as on the ledger, a purchase refunded after the window shows nothing refunded
    yet; a refund in the window of an earlier purchase is a row of its own (amount 0, refunded
    the amount); a window holding both shows one row netting zero."""
    base = {"iss": REALM, "sub": "did:key:zAgent", "intent": "charge", "amount": "25", "currency": "usd"}
    late = _settled(base, state="refunded")
    late = SettledPayment(late.record, late.created_at, "2025-06-01T12:00:00Z")  # refunded two hours after settling
    t = datetime(2025, 6, 1, 10, tzinfo=timezone.utc)
    h = timedelta(hours=1)
    (before,) = charge_records([late], since=t, until=t + h)
    assert (before.time, before.amount, before.refunded, before.units) == (t, 25, 0, 0)
    (after,) = charge_records([late], since=t + h, until=t + 3 * h)
    assert (after.time, after.amount, after.refunded, after.units, after.net) == (t + 2 * h, 0, 25, 0, -25)
    (both,) = charge_records([late], since=t, until=t + 3 * h)
    assert (both.time, both.amount, both.refunded) == (t, 25, 25) == (t, 25, charge_records([late])[0].refunded)
    assert charge_records([late], since=t + 3 * h, until=t + 4 * h) == []


def test_per_request_purchases_have_no_units_column():
    """issue 17, finding 12: two per-request purchases are 2 purchases and no units (units are what
    a unit offer meters, PRICE-USAGE-01 as amended): the table shows no UNITS 2, the totals no units."""
    base = {"iss": REALM, "sub": "did:key:zAgent", "intent": "charge", "amount": "25", "currency": "usd"}
    records = charge_records([_settled(base), _settled(base)])
    assert [r.units for r in records] == [0, 0]
    t = datetime(2025, 6, 1, tzinfo=timezone.utc)
    for by in (None, "route"):
        table = format_table(build_report(records, since=t, until=t + timedelta(days=1), by=by))
        assert "UNITS" not in table and " units" not in table and "total usd: 2 purchases, amount 50" in table, table


def test_times_accept_rfc3339_dates_and_spans_and_refuse_the_rest():
    """PRICE-USAGE-03 (--since/--until): RFC 3339 with offset, a date (UTC midnight) or a span
    before now, kept to the second; anything else is refused with what is accepted."""
    t = datetime(2025, 6, 2, 12, 30, 15, 700_000, tzinfo=timezone.utc)
    assert parse_time("2025-06-01T10:00:00+02:00", now=t) == datetime(2025, 6, 1, 8, tzinfo=timezone.utc)
    assert parse_time("2025-06-01", now=t) == datetime(2025, 6, 1, tzinfo=timezone.utc)
    assert parse_time("24h", now=t) == datetime(2025, 6, 1, 12, 30, 15, tzinfo=timezone.utc)
    assert parse_time("7d", now=t) == parse_time("1w", now=t) == datetime(2025, 5, 26, 12, 30, 15, tzinfo=timezone.utc)
    assert parse_time("90s", now=t) == parse_time("2025-06-02T12:28:45Z", now=t)
    for bad in ("yesterday", "2025-06-01T10:00:00", "2025-13-01", "-1d", "1y", "", "24 h", "999999999w",
                "0001-01-01T00:00:00+05:00"):
        with pytest.raises(ValueError, match="not a"):
            parse_time(bad, now=t)


def test_csv_is_rfc4180_with_a_header():
    """PRICE-USAGE-03: a header line, CRLF line ends, quoting where a field needs it."""
    t = datetime(2025, 6, 1, tzinfo=timezone.utc)
    records = [UsageRecord(t, 'did:key:z"odd,agent', None, "GET /a", "transaction", "", None, "usd", 1, 25, 0, "tx-1")]
    text = format_csv(build_report(records, since=t, until=t + timedelta(days=1)))
    assert text.startswith("time,agent,principal,route,model,offer,priceList,currency,units,amount,refunded,net,reference\r\n")
    assert '"did:key:z""odd,agent"' in text and text.endswith("\r\n")
    (row,) = list(csv.DictReader(io.StringIO(text, newline="")))
    assert (row["agent"], row["principal"], row["priceList"], row["net"]) == ('did:key:z"odd,agent', "", "", "25")


# -- the command ---------------------------------------------------------------------------------


def mpp_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command; stdout is decoded without newline translation (CSV lines end in CRLF)."""
    result = subprocess.run([sys.executable, "-m", "mpp.cli.main", *args], capture_output=True, cwd=REPO, timeout=60)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_cli_seller_usage_json_csv_and_bad_arguments(home: Path):
    """PRICE-USAGE-02, PRICE-USAGE-03: after a paid `mpp fetch`, `mpp seller usage --json` prints one
    document whose net equals the seller's ledger account, `--csv` the same rows as RFC 4180, the
    table says it matched the ledger; a bad --since or --by is one line and exit 2, no traceback."""
    config = str(home / "seller.toml")
    seller = start_seller(home)
    try:
        for path in ("/weather", "/quote"):
            paid = mpp_cli("fetch", "--wallet", str(home / "agent"), seller.url + path)
            assert paid.returncode == 0, paid.stderr
        result = mpp_cli("seller", "usage", "--config", config, "--since", "1h", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert set(doc) == {"since", "until", "by", "rows", "totals"} and doc["by"] is None
        # rows are in time order to the second, then by reference: two purchases in one second may come either way
        assert sorted(r["route"] for r in doc["rows"]) == ["GET /quote", "GET /weather"]
        assert [(r["time"], r["reference"]) for r in doc["rows"]] == sorted((r["time"], r["reference"]) for r in doc["rows"])
        # issue 17, finding 12: two per-request purchases are 2 purchases and 0 (metered) units
        assert doc["totals"] == {"usd": {"purchases": 2, "units": 0, "amount": "125", "refunded": "0", "net": "125"}}
        ledger = seller.ledger()
        try:
            assert ledger.balance("acct:seller") == 125
            assert {r["reference"] for r in doc["rows"]} == {t.id for t in ledger.transfers() if t.kind == "charge"}
        finally:
            ledger.close()
        assert {r["agent"] for r in doc["rows"]} == {seller.wallet.key.did}

        grouped = mpp_cli("seller", "usage", "--config", config, "--since", "1h", "--by", "route", "--csv")
        assert grouped.returncode == 0, grouped.stderr
        assert grouped.stdout.startswith("route,currency,purchases,units,amount,refunded,net\r\n")
        rows = list(csv.DictReader(io.StringIO(grouped.stdout, newline="")))
        assert {r["route"]: r["net"] for r in rows} == {"GET /weather": "25", "GET /quote": "100"}
        flat = list(csv.DictReader(io.StringIO(mpp_cli("seller", "usage", "--config", config, "--since", "1h", "--csv").stdout,
                                                newline="")))
        assert [r["reference"] for r in flat] == [r["reference"] for r in doc["rows"]]

        table = mpp_cli("seller", "usage", "--config", config, "--since", "2000-01-01")
        assert table.returncode == 0 and "total usd: 2 purchases" in table.stdout and "equal to the ledger" in table.stdout
        later = mpp_cli("seller", "usage", "--config", config, "--since", format_rfc3339(now() + timedelta(hours=1)),
                        "--until", format_rfc3339(now() + timedelta(hours=2)), "--json")
        assert later.returncode == 0 and json.loads(later.stdout)["rows"] == []
    finally:
        err = stop_seller(seller)
        assert "Traceback" not in err, err
    for bad in (("--since", "yesterday"), ("--since", "1h", "--until", "2h"), ("--since", "2025-02-30")):
        result = mpp_cli("seller", "usage", "--config", config, *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("mpp: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for bad in (("--since", "1h", "--by", "colour"), ("--since", "1h", "--json", "--csv"), ()):
        result = mpp_cli("seller", "usage", "--config", config, *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr and "usage:" in result.stderr
    missing = mpp_cli("seller", "usage", "--config", str(home / "nope.toml"), "--since", "1h")
    assert missing.returncode == 2 and missing.stderr.startswith("mpp: ") and "Traceback" not in missing.stderr
