"""`mpp demo`: seller, ledger and agent on loopback, in one process, end to end.

It checks what it shows: every paid call must carry a receipt that verifies, a replayed
credential must be refused without a second transfer, an over-limit quote must be refused
before signing, and the ledger's balances must still sum to what they summed to before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]


class DemoFailure(Exception):
    pass


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailure(what)
    print(f"    ok: {what}")


def _balances(ledger) -> dict[str, int]:
    return {a.id: a.balance for a in ledger.accounts()}


def _print_balances(title: str, balances: dict[str, int]) -> None:
    print(f"  {title}:")
    for account, balance in balances.items():
        print(f"    {account:<18} {balance:>10}")
    print(f"    {'(sum)':<18} {sum(balances.values()):>10}")


async def _run(home: Path) -> None:
    import aiohttp
    from aiohttp import web

    from mpp.purchase.agent import AgentIdentity
    from mpp.aio.buyer import PaymentClient
    from mpp.cli.serve import HEADER_LIMITS, LEDGER_KEY, build_seller_app
    from mpp.cli.config import init_home, load_seller_config, load_wallet
    from mpp.cli.demo_evm import evm_part
    from mpp.cli.demo_mcp import mcp_part
    from mpp.cli.demo_pricing import pricing_part, write_price_list
    from mpp.protocol.errors import PaymentFailed, QuoteRejected
    from mpp.connect import budget_store_for
    from mpp.protocol.headers import parse_challenges
    from mpp.methods.ledger import LedgerBuyerMethod

    print(f"1. mpp init {home}")
    info = init_home(home)
    write_price_list(home)  # routes priced from a price list too (part 10)
    config = load_seller_config(info["seller_config"])
    wallet = load_wallet(info["wallet"])
    print(f"   agent {wallet.key.did}")
    print(f"   pays from {wallet.account}, at most {wallet.policy.max_amount} per purchase, under the principal's mandate"
          f" (the principal owns the account; the agent is enrolled as mandate-bound)")

    app, seller = build_seller_app(config)
    wire: list[str] = []  # every request the seller receives, for counting round trips

    @web.middleware
    async def count(request, handler):
        if request.path != "/.well-known/jwks.json":  # the buyer's one receipt-key fetch per seller is not a payment step
            wire.append(f"{request.method} {request.path}")
        return await handler(request)

    app.middlewares.insert(0, count)
    runner = web.AppRunner(app, access_log=None, **HEADER_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    ledger = app[LEDGER_KEY]
    print(f"2. seller on {base} (realm {config.realm}), embedded ledger {ledger.ledger_id}")
    before = _balances(ledger)
    _print_balances("balances before", before)
    budget = budget_store_for(wallet.budget_path)
    identity = AgentIdentity(wallet.key, wallet.mandates, budget)  # the agent buys under its mandate chain
    try:
        async with aiohttp.ClientSession() as session:
            client = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                                   identity=identity)

            print("3. an unpaid request")
            async with session.get(f"{base}/weather") as resp:
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate"))
                problem = await resp.json(content_type=None)
                print(f"   HTTP {resp.status}, Cache-Control: {resp.headers.get('Cache-Control')}, problem {problem['type']}")
                print(f"   challenge {challenges[0].id[:16]}... method={challenges[0].method} intent={challenges[0].intent}"
                      f" request={json.dumps(challenges[0].request_json, sort_keys=True)}")
                _check(resp.status == 402 and resp.headers.get("Cache-Control") == "no-store", "402 with a challenge and no-store")

            print("4. three paid calls")
            paid_total = 0
            calls = [("GET", f"{base}/weather", None), ("GET", f"{base}/quote?symbol=ACME", None),
                     ("POST", f"{base}/summarize", b"Agents buy from services; every purchase is signed and receipted.")]
            for n, (method, url, body) in enumerate(calls, 1):
                resp = await client.request(method, url, data=body)
                claims = resp.claims or {}
                print(f"   [{n}] {method} {url[len(base):]} -> HTTP {resp.status} {resp.text().strip()[:90]}")
                print(f"       receipt: {claims.get('amount')} {claims.get('currency')} to {claims.get('recipient')},"
                      f" transfer {resp.receipt.reference[:16] if resp.receipt else None}..., signed by {config.realm} (kid {seller.receipt_key.kid[:12]}...)")
                _check(resp.status == 200 and resp.paid and resp.headers.get("Cache-Control", "").startswith("private"),
                       f"call {n} paid, receipt signature verified against the seller's JWKS, Cache-Control private")
                paid_total += int(claims["amount"])

            print("5. replaying a credential")
            credential = await client.credential("GET", f"{base}/weather")
            transfers_before = len(ledger.transfers())
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as first:
                first_status = first.status
            async with session.get(f"{base}/weather", headers={"Authorization": credential}) as again:
                replay_problem = await again.json(content_type=None)
                print(f"   first use HTTP {first_status}; replay HTTP {again.status} {replay_problem['type']}")
                _check(first_status == 200 and again.status == 402 and replay_problem["type"].endswith("/invalid-challenge")
                       and "Payment-Receipt" not in again.headers, "replay refused with invalid-challenge and no receipt")
            _check(len(ledger.transfers()) == transfers_before + 1, "exactly one transfer for that credential")
            paid_total += 25

            print("6. a quote over the wallet's limit")
            try:
                await client.request("GET", f"{base}/premium-report")
            except QuoteRejected as exc:
                print(f"   refused before signing: {exc}")
                _check(exc.rule == "max-amount", "over-limit quote refused by the buyer's policy")
            else:
                raise DemoFailure("the buyer paid a quote over its limit")

            print("7. the agent's key without its mandate")
            bare = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)],
                                 dataclasses.replace(wallet.policy, max_amount=6_000))
            held = ledger.balance(wallet.account)
            try:
                await bare.request("GET", f"{base}/premium-report")
            except PaymentFailed as exc:
                print(f"   a bare signature for 5000 (no mandate, wallet limit lifted): HTTP {exc.status} {exc.problem.get('type')}")
                _check(exc.status == 402 and str(exc.problem.get("type")).endswith(":mandate-required")
                       and ledger.balance(wallet.account) == held,
                       "refused before the challenge was consumed: an agent key spends only under its mandate")
            else:
                raise DemoFailure("the agent's bare key paid outside its mandate")
            try:
                await PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)],
                                    dataclasses.replace(wallet.policy, max_amount=6_000),
                                    identity=identity).request("GET", f"{base}/premium-report")
            except QuoteRejected as exc:
                print(f"   the same with its mandate: refused before signing ({exc.detail})")
                _check(exc.rule == "ceiling", "the mandate's ceiling holds whichever way the agent tries")
            else:
                raise DemoFailure("the agent paid above its mandate's ceiling")

            paid_total += await _identity_part(session, base, home, info, config, wallet, app)

            paid_total += await _session_part(session, base, wallet, ledger, wire, identity)

            paid_total += await pricing_part(session, base, home, wallet, ledger, seller, _check, identity)

        after = _balances(ledger)
        print("11. balances")
        _print_balances("balances after", after)
        _check(sum(after.values()) == sum(before.values()), "sum of all balances unchanged")
        _check(before["acct:buyer"] - after["acct:buyer"] == paid_total == after["acct:seller"] - before["acct:seller"],
               f"buyer paid exactly {paid_total}, seller received exactly {paid_total}")
        _check(ledger.check() == [], "every transfer is two postings summing to zero")
        await evm_part(home, _check, 12)
        await mcp_part(home, _check, 13)
    finally:
        await runner.cleanup()
        await budget.close()


async def _session_part(session, base: str, wallet, ledger, wire: list[str], identity) -> int:
    """Metered usage: one session, many requests, one stream with in-band vouchers, one close."""
    from mpp.aio.buyer import PaymentClient
    from mpp.purchase.sessions import SessionPolicy
    from mpp.methods.ledger import LedgerBuyerMethod

    print("9. a metered session: /complete and /stream cost 2 usd per 1000 tokens")
    calls = 40
    units = [500 + (n * 737) % 3500 for n in range(calls)]  # what each call "uses": 500 to 3999 tokens
    buyer_before = ledger.balance(wallet.account)
    client = PaymentClient(session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                           sessions=SessionPolicy(max_cap=400), identity=identity)
    wire.clear()
    charged: list[int] = []
    async with client:
        for n, u in enumerate(units):
            resp = await client.request("GET", f"{base}/complete?units={u}")
            _ok = resp.status == 200 and resp.claims is not None and resp.claims.get("intent") == "session"
            if not _ok:
                raise DemoFailure(f"metered call {n} answered {resp.status}: {resp.text()[:200]}")
            charged.append(int(resp.claims["amount"]))
            if n == 0:
                (open_session,) = client.open_sessions
                print(f"   session {open_session.id[:16]}... opened on the first paid call: cap {open_session.cap} usd held"
                      f" at the ledger (buyer balance {buyer_before} -> {ledger.balance(wallet.account)})")
        last = resp.claims
        for_calls = len(wire)
        print(f"   {calls} calls of 500..3999 tokens, each carrying a signed cumulative voucher: "
              f"spent {last['spent']} of {last['authorized']} authorized (cap {last['cap']})")
        async with client.stream("GET", f"{base}/stream?chunks=12&units=2000") as events:
            chunks = [e async for e in events]
        stream_claims = events.claims or {}
        print(f"   a stream of {len(chunks)} chunks x 2000 tokens: charged chunk by chunk, "
              f"{stream_claims.get('amount')} usd, next vouchers sent in-band when the balance ran out")
        _check(len(chunks) == 12 and stream_claims.get("units") == 24000, "the stream was served in full and receipted")
        charged.append(int(stream_claims["amount"]))
        for_stream = len(wire) - for_calls
        finals = await client.close_sessions()
        for_close = len(wire) - for_calls - for_stream
    (final,) = finals
    print(f"   closed: captured {final['captured']}, released {final['released']} of the cap {final['cap']}; usage lines:")
    for line in final["lines"]:
        print(f"     {line['resource']:<16} {line['units']:>7} {line['unitType']}s x {line['unitPrice']}/{line['per']}"
              f" = {line['amount']:>4} usd over {line['requests']} requests")
    captured = int(final["captured"])
    _check(captured == sum(charged) == sum(int(line["amount"]) for line in final["lines"]),
           "the capture equals the usage: the sum of every request's receipt and of the final receipt's lines")
    transfers = {t.id.split(":")[0]: t.amount for t in ledger.transfers() if t.id.endswith(final["reference"])}
    _check(transfers.get("capture") == captured and transfers.get("release") == int(final["released"])
           and captured + int(final["released"]) == int(final["cap"]),
           "the ledger captured exactly the usage and released the rest of the hold")
    _check(buyer_before - ledger.balance(wallet.account) == captured, f"the buyer paid exactly {captured} for the session")
    print(f"   HTTP requests at the seller: {for_calls} for the {calls} calls (one 402, then the open rides on the first"
          f" paid call), {for_stream} for the stream ({for_stream - 1} in-band vouchers), {for_close} to close")
    _check(for_calls == calls + 1 and for_close == 1, f"{calls} metered calls took {calls + 1} requests, the close one more")
    return captured


async def _identity_part(session, base: str, home: Path, info: dict, config, wallet, app) -> int:
    """Principal, two agents and a sub-agent: attributed receipts, an approval, a budget refusal, the audit log."""
    from datetime import datetime, timedelta, timezone

    from mpp.purchase.agent import AgentIdentity
    from mpp.aio.buyer import PaymentClient
    from mpp.buyer.core import BuyerPolicy
    from mpp.protocol.errors import PaymentFailed, QuoteRejected
    from mpp.identity import issue_approval, issue_mandate
    from mpp.protocol.keys import SigningKey
    from mpp.methods.ledger import LedgerBuyerMethod
    from mpp.connect import audit_log_for, budget_store_for

    now = datetime.now(timezone.utc)
    principal = SigningKey.load(info["principal_key"])
    agent_a = wallet.key  # created by `mpp init`, holding the principal's root mandate
    agent_b, agent_c = SigningKey.generate(), SigningKey.generate()
    window = dict(not_before=now - timedelta(minutes=1), expires=now + timedelta(hours=1))
    chain_a = wallet.mandates
    chain_b = [issue_mandate(principal, subject=agent_b.did, audience=[config.realm], scope=["GET /weather*"], currency="usd",
                             ceiling=100, budget_amount=60, budget_period="day", **window)]
    # Agent A delegates a narrower mandate to sub-agent C: one route, a lower ceiling, approval above 100.
    chain_c = [*chain_a, issue_mandate(agent_a, subject=agent_c.did, audience=[config.realm], scope=["GET /agent-report"],
                                       currency="usd", ceiling=500, budget_amount=1_000, budget_period="day",
                                       approval_threshold=100, max_depth=0, principal=principal.did, **window)]
    names = {principal.did: "principal", agent_a.did: "agent-a", agent_b.did: "agent-b", agent_c.did: "sub-agent-c"}
    print("8. identity: one principal, two agents, one sub-agent")
    for did, name in names.items():
        print(f"   {name:<12} {did[:32]}...")
    approvals: list[str] = []

    def approver(problem: dict) -> str:
        print(f"   principal approves: rule {problem['rule']!r}, {problem['amount']} {problem['currency']}, quote {problem['quoteHash'][:12]}...")
        token = issue_approval(principal, agent=agent_c.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                               amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                               mandate=problem["mandate"], now=datetime.now(timezone.utc))
        approvals.append(token)
        return token

    buyer_audit = audit_log_for(str(home / "agent" / "audit.db"))
    budgets: dict[str, Any] = {}  # each agent's own counters, opened once

    def client(key, chain, budget: bool = True, hook=None) -> PaymentClient:
        store = None
        if budget:
            store = budgets.get(key.did) or budgets.setdefault(
                key.did, budget_store_for(str(home / "agent" / f"budget-{names[key.did]}.db")))
        return PaymentClient(session, [LedgerBuyerMethod(key=key, account=wallet.account)], BuyerPolicy(max_amount=1_000),
                             identity=AgentIdentity(key, chain, store, hook), on_event=buyer_audit.append)

    paid = 0
    for who, key, chain, path in (("agent-a", agent_a, chain_a, "/agent-report"), ("agent-b", agent_b, chain_b, "/weather"),
                                  ("agent-b", agent_b, chain_b, "/weather?city=Porto")):
        resp = await client(key, chain).request("GET", base + path)
        claims = resp.claims or {}
        print(f"   {who} GET {path} -> HTTP {resp.status}; receipt names agent {names.get(claims.get('agent'))},"
              f" principal {names.get(claims.get('principal'))}, mandate {str(claims.get('mandate'))[:12]}..., decision {claims.get('decision')}")
        _check(resp.paid and claims.get("agent") == key.did and claims.get("principal") == principal.did,
               f"{who}'s purchase is attributed to it and to the principal in the signed receipt")
        paid += int(claims["amount"])

    resp = await client(agent_c, chain_c, hook=approver).request("GET", base + "/agent-report")
    claims = resp.claims or {}
    print(f"   sub-agent-c GET /agent-report -> HTTP {resp.status}; decision {claims.get('decision')}, approval {str(claims.get('approval'))[:12]}...,"
          f" chain of {len(claims.get('chain', []))} mandates")
    _check(resp.paid and claims.get("decision") == "allow-with-approval" and len(approvals) == 1 and len(claims["chain"]) == 2,
           "the sub-agent's purchase above its threshold needed, and got, the principal's one-time approval")
    paid += int(claims["amount"])

    try:
        await client(agent_b, chain_b).request("GET", base + "/weather?city=Faro")
    except QuoteRejected as exc:
        print(f"   agent-b's third weather purchase: refused by its own budget counter before signing ({exc.detail})")
        _check(exc.rule == "budget", "over-budget attempt refused by the buyer")
    else:
        raise DemoFailure("agent-b spent past its budget")
    try:
        await client(agent_b, chain_b, budget=False).request("GET", base + "/weather?city=Faro")
    except PaymentFailed as exc:
        print(f"   ... and with the buyer's counter bypassed, the seller refuses: HTTP {exc.status} {exc.problem.get('type')}")
        _check(exc.status == 403 and str(exc.problem.get("type")).endswith(":budget-exceeded"),
               "over-budget attempt refused by the seller too (and the ledger holds the budget across sellers)")
    else:
        raise DemoFailure("the seller let agent-b spend past its budget")

    seller_audit = audit_log_for(config.locate(config.audit_log))
    try:
        await seller_audit.verify()
        rows = await seller_audit.purchases(principal=principal.did)
        print(f"   seller audit log: {len(rows)} purchases and refusals for the principal, chain intact, head {(await seller_audit.head())[0]}")
        for row in rows:
            # refusals are the principal's too (a refusal may know no amount): "-" for what it lacks
            print(f"     {names.get(row.get('agent'), '?'):<12} {row.get('amount') or '-':>5} {row.get('currency') or '-'}"
                  f"  {row.get('resource') or '-':<28}"
                  f" {row.get('decision') or '-':<20} {row.get('outcome')}")
        _check({names.get(r.get("agent")) for r in rows if r.get("outcome") == "settled"} == {"agent-a", "agent-b", "sub-agent-c"},
               "the seller's hash-chained audit log attributes every purchase")
        await buyer_audit.verify()
        _check((await buyer_audit.head())[0] > 0, "the buyers' audit log is intact")
    finally:
        await seller_audit.close()
        await buyer_audit.close()
        for store in budgets.values():
            await store.close()
    return paid


def run_demo(directory: str | None = None) -> int:
    """``mpp demo``: run every part of the demo in ``directory`` (a temporary one if ``None``); the exit
    status: 0 if it passed, 1 if a check failed or a file was wrong."""
    from mpp.cli.config import ConfigError

    try:
        if directory:
            asyncio.run(_run(Path(directory)))
        else:
            with tempfile.TemporaryDirectory(prefix="mpp-demo-") as tmp:
                asyncio.run(_run(Path(tmp) / "home"))
    except (DemoFailure, ConfigError) as exc:
        print(f"demo FAILED: {exc}")
        return 1
    print("demo passed")
    return 0
