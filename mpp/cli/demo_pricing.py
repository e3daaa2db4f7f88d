"""The demo's pricing part (spec/pricing.md): a price list in the seller's configuration, one
route switched from per-request to per-token pricing by editing the list while the seller runs
(a quote issued before the change still honoured), a task bought once with its follow-ups free,
a seat bought for a period, and the usage export reconciled with the ledger."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

__all__ = ["PRICE_LIST", "write_price_list", "pricing_part"]

PRICE_LIST = "prices.toml"
"""The file name of the demo's price list, written beside its seller.toml."""

V1 = """\
# The seller's price list (spec/pricing.md). Edit it and send the seller SIGHUP
# (`kill -HUP <pid>`): the new version is served at once, quotes of the old one stay good.
version = "demo-1"
currency = "usd"

[[routes]]
method = "GET"
path = "/translate"
description = "Translation"

  [[routes.offers]]
  id = "per-call"
  model = "transaction"
  amount = 30

[[routes]]
method = "POST"
path = "/jobs"
description = "A batch job: pay once; status and result are free"

  [[routes.offers]]
  model = "task"
  amount = 300
  follow_ups = ["GET /jobs/{task}", "GET /jobs/{task}/result"]
  grant_ttl = 3600
  refund = "full"

[[routes]]
method = "GET"
path = "/news"
description = "News: per article, or a daily seat"

  [[routes.offers]]
  model = "transaction"
  amount = 15

  [[routes.offers]]
  model = "seat"
  plan = "news-daily"
  amount = 100
  period_unit = "day"
  covers = ["GET /news/latest"]

[[routes]]
method = "GET"
path = "/news/latest"

  [[routes.offers]]
  model = "transaction"
  amount = 15
"""

# /translate, switched from per request to per token
PER_CALL = """  [[routes.offers]]
  id = "per-call"
  model = "transaction"
  amount = 30
"""
PER_TOKEN = """  [[routes.offers]]
  id = "per-token"
  model = "unit"
  unit = "token"
  amount = 1
  per = 10
  max_units = 1000
"""


def write_price_list(home: Path) -> Path:
    """prices.toml beside seller.toml, and seller.toml pointed at it (before the seller starts)."""
    path = home / PRICE_LIST
    path.write_text(V1, encoding="utf-8")
    config = home / "seller.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("\n[[routes]]", f'\nprice_list = "{PRICE_LIST}"\n\n[[routes]]', 1), encoding="utf-8")
    return path


async def pricing_part(session, base: str, home: Path, wallet, ledger, seller, check: Callable[[bool, str], None],
                       identity: Any = None) -> int:
    """The demo's pricing part, against the seller running at ``base`` from ``home``; ``check`` fails the
    demo on a false condition. Returns what the buyer paid in this part."""
    from mpp.aio.buyer import PaymentClient
    from mpp.cli.serve import reload_price_list
    from mpp.purchase.sessions import SessionPolicy
    from mpp.buyer.core import OfferPlan
    from mpp.protocol.headers import parse_challenges
    from mpp.ledger.aio_adapter import AsyncSqliteLedgerStore
    from mpp.methods.ledger import LedgerBuyerMethod
    from mpp.engine.usage import build_report, ledger_transfers, read_usage, reconcile

    charges_before = len(ledger.transfers())
    buyer_before = ledger.balance(wallet.account)
    method = [LedgerBuyerMethod(key=wallet.key, account=wallet.account)]
    paid = 0

    print(f"10. pricing as data: the seller's routes come from {PRICE_LIST} (version {seller.price_list.version})")
    for route in ("GET /translate", "POST /jobs", "GET /news"):
        verb, path = route.split(" ")
        async with session.request(verb, f"{base}{path}") as resp:
            offers = [c.request_json.get("pricing", {}) for c in parse_challenges(resp.headers.getall("WWW-Authenticate"))]
        shown = ", ".join(f"{o.get('model')} {o.get('offer')}" for o in offers)
        print(f"   {route:<15} 402 with {len(offers)} offer(s): {shown}")

    # -- one route switched from per-request to per-token while the seller runs ----------------
    client = PaymentClient(session, method, wallet.policy, identity=identity)
    first = await client.request("GET", f"{base}/translate?text=hello")
    claims = first.claims or {}
    print(f"   GET /translate -> {first.status}, receipt: {claims.get('amount')} usd, model {claims.get('model')}, "
          f"price list {claims.get('priceList')}")
    check(first.paid and claims.get("model") == "transaction" and claims.get("priceList") == "demo-1",
          "a per-request purchase under price list demo-1")
    paid += int(claims["amount"])
    early = await client.credential("GET", f"{base}/translate?text=later")  # quoted under demo-1, paid after the change

    path = home / PRICE_LIST
    path.write_text(path.read_text(encoding="utf-8").replace(PER_CALL, PER_TOKEN, 1).replace('"demo-1"', '"demo-2"', 1),
                    encoding="utf-8")
    check(reload_price_list(seller, str(path)), "the edited price list loads while the seller runs")
    print(f"   {PRICE_LIST} edited (/translate: 30 per request -> 1 per 10 tokens) and reloaded: now "
          f"{seller.price_list.version}, no restart")
    async with session.get(f"{base}/translate?text=later", headers={"Authorization": early}) as resp:
        late_receipt = resp.headers.get("Payment-Receipt")
        status = resp.status
    from mpp.protocol.headers import parse_receipt
    from mpp.protocol.receipts import jwks_document, verify_receipt_jws

    late = verify_receipt_jws(parse_receipt(late_receipt).receipt, jwks_document([seller.receipt_key]),
                              issuer=seller.realm) if late_receipt else {}
    print(f"   the quote issued under demo-1 before the change, paid now -> {status}: {late.get('amount')} usd, "
          f"price list {late.get('priceList')}")
    check(status == 200 and late.get("priceList") == "demo-1" and late.get("amount") == "30",
          "a quote of the old version is honoured as quoted")
    paid += 30
    async with session.get(f"{base}/translate") as resp:
        offers = [(c.intent, c.request_json.get("pricing", {})) for c in parse_challenges(resp.headers.getall("WWW-Authenticate"))]
    print("   GET /translate now: 402 with " + ", ".join(f"{intent} ({p.get('model')} {p.get('offer')}, {p.get('priceList')})"
                                                     for intent, p in offers))
    check(any(intent == "session" and p.get("model") == "unit" and p.get("priceList") == "demo-2" for intent, p in offers),
          "the route is now offered per token (a session), from demo-2")
    metered = PaymentClient(session, method, wallet.policy, sessions=SessionPolicy(max_cap=200), identity=identity)
    async with metered:
        tokens = [120, 480, 75, 900]
        answers = [await metered.request("GET", f"{base}/translate?units={n}") for n in tokens]
        check(all(r.status == 200 and (r.claims or {}).get("intent") == "session" for r in answers),
              "each per-token call paid by a voucher of one session")
        (final,) = await metered.close_sessions()
    captured = int(final["captured"])
    expected = sum(-(-n * 1 // 10) for n in tokens)
    print(f"   GET /translate x{len(tokens)} under demo-2 ({sum(tokens)} tokens): one session, captured {captured} usd "
          f"(= {' + '.join(str(-(-n // 10)) for n in tokens)})")
    check(captured == expected, "the unit price of the new list was charged per token")
    paid += captured

    # -- a task: one charge, follow-ups free -----------------------------------------------------
    job = await client.request("POST", f"{base}/jobs", data=b'{"input": "a large batch"}')
    task_id = json.loads(job.text())["task"]
    print(f"   POST /jobs -> {job.status}: task {task_id} for {(job.claims or {}).get('amount')} usd "
          f"(receipt names task {(job.claims or {}).get('task')})")
    check(job.paid and (job.claims or {}).get("model") == "task" and (job.claims or {}).get("task") == task_id,
          "the task was charged once and its receipt names it")
    paid += int(job.claims["amount"])
    status_resp = await client.request("GET", f"{base}/jobs/{task_id}")
    result_resp = await client.request("GET", f"{base}/jobs/{task_id}/result")
    print(f"   GET /jobs/{task_id} -> {status_resp.status} {status_resp.text().strip()}; GET .../result -> "
          f"{result_resp.status} {result_resp.text().strip()}: both on the task grant, nothing paid")
    check(not status_resp.paid and not result_resp.paid and status_resp.grant is not None and result_resp.grant is not None
          and status_resp.status == result_resp.status == 200, "the task's follow-ups were served on its grant, free")

    # -- a seat for the day ------------------------------------------------------------------------
    subscriber = PaymentClient(session, method, dataclasses.replace(wallet.policy, allow_recurring=True),
                               plan=OfferPlan(planned_requests=12), identity=identity)
    reads = [await subscriber.request("GET", f"{base}/news" if n % 2 == 0 else f"{base}/news/latest") for n in range(6)]
    seat = reads[0].claims or {}
    print(f"   GET /news with 12 reads planned: the buyer chose the seat ({seat.get('amount')} usd for the day, "
          f"subscription {seat.get('subscriptionId')}, period {seat.get('period')}) over 12 x 15 per article")
    check(reads[0].paid and seat.get("model") == "seat" and seat.get("subscriptionId"), "a seat bought for the period")
    check(all(not r.paid and r.grant is not None and r.status == 200 for r in reads[1:]),
          "the other reads of /news and /news/latest in the period were served on the seat grant, free")
    print(f"   {len(reads) - 1} more reads of /news and /news/latest: served on the seat's grant, nothing paid")
    paid += int(seat["amount"])

    # -- the usage export, reconciled with the ledger ----------------------------------------------
    # The whole demo, every part of it, ran within the last hour: the export covers all its purchases.
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)  # this second included
    since = until - timedelta(hours=1)
    records = await read_usage(seller.store, seller.session_store, since=since, until=until)
    report = build_report(records, since=since, until=until, by="model")
    transfers = await ledger_transfers(AsyncSqliteLedgerStore(ledger), "acct:seller", since=since, until=until)
    problems = reconcile(report, records, transfers, "acct:seller")
    print("   mpp seller usage --since 1h --by model (every purchase of this demo):")
    for row in report["rows"]:
        print(f"     {row.get('model'):<12} {row.get('purchases'):>3} purchase(s)  net {row.get('net'):>5} {row.get('currency')}")
    net = int(report["totals"]["usd"]["net"])
    print(f"     total net {net} usd; the ledger's transfers to acct:seller in the window: "
          f"{sum(t.amount if t.payee == 'acct:seller' else -t.amount for t in transfers)} usd")
    check(not problems, "the export reconciles with the ledger's transfers, purchase by purchase"
          + (f": {'; '.join(problems)}" if problems else ""))
    check(net == ledger.balance("acct:seller"), "the export's total equals everything the seller received on the ledger")
    check(buyer_before - ledger.balance(wallet.account) == paid, f"the buyer paid exactly {paid} in this part")
    check(len([t for t in ledger.transfers()[charges_before:] if t.kind == "charge"]) == 4,
          "four charges: two per request, one task, one seat (the session is a hold and a capture)")
    return paid
