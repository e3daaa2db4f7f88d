"""IDENT-AUD-01: the audit log's kinds are exactly the spec's list, and every kind the buyer and the
seller write is one the spec lists for that party."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import mpp
from mpp.aio import EmbeddedLedgerRail, PaymentClient, Seller
from mpp.aio.metering import meter_of
from mpp.purchase.sessions import SessionPolicy
from mpp.stores.audit import KINDS, AuditLog
from mpp.ledger import SqliteLedger
from mpp.methods.ledger import LedgerBuyerMethod
from mpp.stores.sessions import SqliteSessionStore
from mpp.stores.payments import SqlitePaymentStore

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([a-z-]+)` \| ([a-z, ]+) \|")


def spec_kinds() -> dict[str, set[str]]:
    """The kind table of spec/identity.md §10, in order: kind -> the parties that write it."""
    text = (ROOT / "spec" / "identity.md").read_text(encoding="utf-8")
    section = text.split("## 10. Audit log", 1)[1].split("\n## ", 1)[0]
    table = section.split("| kind | written by |", 1)[1]
    kinds = {}
    for line in table.splitlines()[2:]:  # past the rest of the header line and the |---| line
        m = ROW.match(line)
        if m is None:
            break
        kinds[m.group(1)] = {w.strip() for w in m.group(2).split(",")}
    return kinds


def test_the_code_knows_exactly_the_spec_kinds():
    """IDENT-AUD-01: mpp.stores.audit.KINDS (what an append accepts) is the spec's list, in its order."""
    assert len(spec_kinds()) >= 6, spec_kinds()
    assert list(KINDS) == list(spec_kinds())


def _literal_kinds(pattern: str, *files: Path) -> set[str]:
    return {k for f in files for k in re.findall(pattern, f.read_text(encoding="utf-8"))}


def test_every_kind_written_in_the_source_is_listed_for_its_writer():
    """IDENT-AUD-01: every kind the seller appends (the engine's one entry point, ``audit``) is listed as
    written by the seller; every event the buyer raises (its wire's ``emit``, and the session
    table's ``_emit``, both its audit log's append) as written by the buyer. Catches paths the
    flow test below does not take (refunds, failed tasks, identity refusals)."""
    spec = spec_kinds()
    mpp_dir = ROOT / "mpp"
    seller = _literal_kinds(r"\.audit\(\s*\"([a-z-]+)\"", *(mpp_dir / "engine").glob("*.py"))
    buyer = _literal_kinds(r"(?:self\._wire|wire|self)\.emit\(\s*\"([a-z-]+)\"",
                           *(mpp_dir / "purchase" / f for f in ("client.py", "wire.py", "charges.py", "session_runner.py")))
    buyer |= _literal_kinds(r"self\._emit\(\s*\"([a-z-]+)\"", mpp_dir / "purchase" / "sessions.py")
    assert {"settlement", "refusal", "session-open", "session-close"} <= seller  # the search finds the calls
    assert {"quote-seen", "authorization-signed", "voucher-signed"} <= buyer
    assert {k for k in seller if "seller" not in spec.get(k, ())} == set()
    assert {k for k in buyer if "buyer" not in spec.get(k, ())} == set()


async def test_charge_and_session_flows_write_only_spec_kinds(tmp_path: Path):
    """IDENT-AUD-01: a buyer and a seller run a charge, a refused credential and a metered session
    with a top-up and a close; every entry either log holds has a kind the spec lists for it."""
    agent = mpp.SigningKey.generate()
    ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    ledger.create_account("acct:seller", "usd")
    ledger.create_account("acct:buyer", "usd")
    ledger.keys.allow("acct:buyer", agent.did, "owner")
    ledger.fund("acct:buyer", 10_000)
    poor = mpp.SigningKey.generate()  # may spend from an account too poor for the purchase
    ledger.create_account("acct:poor", "usd", owner=poor.did)
    ledger.fund("acct:poor", 1)
    seller_log, buyer_log = AuditLog(str(tmp_path / "seller-audit.db")), AuditLog(str(tmp_path / "buyer-audit.db"))
    seller = Seller(realm="audit.test", secret=b"k" * 32, receipt_key=mpp.SigningKey.generate(),
                    rails=[EmbeddedLedgerRail(ledger, recipient="acct:seller")],
                    store=SqlitePaymentStore(str(tmp_path / "payments.db")),
                    session_store=SqliteSessionStore(str(tmp_path / "sessions.db")), audit=seller_log)

    @seller.price(5, "usd", "a paid thing")
    async def paid(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @seller.meter("token", 1, "usd", per=1, max_units=2, description="metered", suggested_cap=10)
    async def metered(request: web.Request) -> web.Response:
        meter_of(request).report(2)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/paid", paid)
    app.router.add_get("/metered", metered)
    seller.setup(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            charge = PaymentClient(http, [LedgerBuyerMethod(key=agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100),
                                   on_event=buyer_log.append)
            assert (await charge.request("GET", str(server.make_url("/paid")))).status == 200
            short = PaymentClient(http, [LedgerBuyerMethod(key=poor, account="acct:poor")], mpp.BuyerPolicy(max_amount=100))
            with pytest.raises(mpp.PaymentFailed):  # a payer the ledger knows, refused at settlement: a refusal entry
                await short.request("GET", str(server.make_url("/paid")))
            session = PaymentClient(http, [LedgerBuyerMethod(key=agent, account="acct:buyer")], mpp.BuyerPolicy(max_amount=100),
                                    on_event=buyer_log.append, sessions=SessionPolicy(max_cap=40))
            for _ in range(12):
                assert (await session.request("GET", str(server.make_url("/metered")))).status == 200
            assert len(await session.close_sessions()) == 1
    finally:
        await server.close()
    seller_kinds = {e.kind for e in seller_log.entries()}
    buyer_kinds = {e.kind for e in buyer_log.entries()}
    seller_log.close()
    buyer_log.close()
    ledger.close()
    # the flow reached the session kinds on both sides, so the check below is not vacuous
    assert {"settlement", "receipt", "refusal", "session-open", "session-top-up", "session-close"} <= seller_kinds, seller_kinds
    assert {"quote-seen", "authorization-signed", "receipt", "session-open", "voucher-signed", "session-close"} <= buyer_kinds, buyer_kinds
    spec = spec_kinds()
    assert {k for k in seller_kinds if "seller" not in spec.get(k, ())} == set()
    assert {k for k in buyer_kinds if "buyer" not in spec.get(k, ())} == set()
