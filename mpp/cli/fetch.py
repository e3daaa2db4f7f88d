"""`mpp fetch`: request a URL as the agent of a wallet, paying if asked and if the wallet's policy
allows; the exit code tells the payment's outcome."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Sequence

from mpp.cli.common import (EXIT_HTTP, EXIT_OK, EXIT_POLICY, EXIT_RECEIPT, EXIT_REFUSED, EXIT_UNKNOWN, err, nonneg_int,
                            pos_int)

__all__ = ["EPILOG_FETCH", "add_fetch_command", "cmd_fetch"]

EPILOG_FETCH = """exit codes:
  0  success (2xx), paid or free
  1  the server answered with an error that was not about payment
  2  bad arguments or wallet
  3  the quote broke the wallet's policy (amount, currency, recipient, expiry, origin); nothing was signed
  4  the seller refused the credential (its problem document is printed on stderr)
  5  the credential was sent but the outcome is unknown (5xx or network error): check before retrying
  6  the seller answered 2xx but its receipt did not verify

several offers (a seller's price list): the offer with the lowest expected total for the planned
work (--planned-requests, --planned-units) among those the mandate chain allows and the policy
accepts, or an offer of the --prefer model when there is an acceptable one; a seat (a recurring
payment per period) only with --allow-recurring. A task or seat purchase brings a grant that
covers its follow-up requests: within one run, those are made with the grant instead of paying.
"""
"""The exit codes of `mpp fetch`, as `mpp fetch --help` lists them."""


def _parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header must be 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def cmd_fetch(args: argparse.Namespace) -> int:
    """`mpp fetch URL`: one request, paid if need be; the body on stdout, the receipt on stderr."""
    import aiohttp

    import dataclasses

    from mpp.aio.buyer import PaymentClient
    from mpp.aio.sessions import SessionPolicy
    from mpp.buyer.core import OfferPlan
    from mpp.cli.config import load_wallet
    from mpp.protocol.errors import NoPayableChallenge, OutcomeUnknown, PaymentFailed, QuoteRejected, ReceiptInvalid
    from mpp.methods.ledger import LedgerBuyerMethod

    wallet = load_wallet(args.wallet, max_amount=args.max_amount)
    if args.allow_recurring:
        wallet = dataclasses.replace(wallet, policy=dataclasses.replace(wallet.policy, allow_recurring=True))
    plan = OfferPlan(planned_requests=args.planned_requests, planned_units=args.planned_units,
                     prefer=None if args.prefer == "cheapest" else args.prefer)
    # A unit offer is paid by a session, opened only when units are planned or preferred; one run closes it.
    sessions = SessionPolicy(max_cap=max(1, wallet.policy.max_amount)) if (
        args.planned_units is not None or args.prefer == "unit") else None
    method = args.method or ("POST" if args.data is not None else "GET")
    data = args.data.encode("utf-8") if args.data is not None else None
    headers = _parse_headers(args.header)

    identity, audit = _wallet_identity(wallet, args)

    async def run() -> int:
        from mpp.connect import ensure_open

        # Opened before anything is sent (a PostgreSQL location that cannot be reached fails here), closed after.
        stores = [s for s in (audit, identity.budget if identity is not None else None) if s is not None]
        try:
            for store in stores:
                await ensure_open(store)
            return await fetch()
        finally:
            for store in stores:
                await store.close()

    async def fetch() -> int:
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = PaymentClient(
                session, [LedgerBuyerMethod(key=wallet.key, account=wallet.account)], wallet.policy,
                identity=identity, on_event=(lambda kind, data: audit.append(kind, data)) if audit else None,
                plan=plan, sessions=sessions,
            )
            try:
                if args.credential_only:
                    credential = await client.credential(method, args.url, data=data)
                    if credential is None:
                        err("the resource did not ask for payment; no credential to print")
                        return EXIT_HTTP
                    print(credential)
                    return EXIT_OK
                resp = await client.request(method, args.url, data=data, headers=headers)
                if sessions is not None:
                    await client.close_sessions()
            except QuoteRejected as exc:
                err(f"refused to pay ({exc.rule}): {exc.detail}")
                return EXIT_POLICY
            except NoPayableChallenge as exc:
                err(f"{exc}: " + "; ".join(exc.reasons))
                return EXIT_POLICY
            except PaymentFailed as exc:
                err(str(exc))
                if exc.problem:
                    print(json.dumps(exc.problem, indent=2), file=sys.stderr)
                return EXIT_REFUSED
            except OutcomeUnknown as exc:
                err(f"{exc} (challenge {exc.challenge_id}); the payment may have settled: check before retrying")
                return EXIT_UNKNOWN
            except ReceiptInvalid as exc:
                err(f"paid, but the receipt is not valid: {exc}")
                return EXIT_RECEIPT
            except aiohttp.ClientError as exc:
                err(f"request failed before any payment: {exc}")
                return EXIT_HTTP
        sys.stdout.write(resp.text())
        if not resp.text().endswith("\n"):
            sys.stdout.write("\n")
        if resp.receipt is not None:
            summary = {
                "verified": True,
                "challengeId": resp.receipt.challengeId,
                "reference": resp.receipt.reference,
                "method": resp.receipt.method,
                "timestamp": resp.receipt.timestamp,
                "amount": resp.claims["amount"],
                "currency": resp.claims["currency"],
                "recipient": resp.claims["recipient"],
                "resource": resp.claims.get("resource"),
                "issuer": resp.claims["iss"],
            }
            for name in ("agent", "principal", "mandate", "approval", "decision"):
                if resp.claims.get(name) is not None:
                    summary[name] = resp.claims[name]
            print("receipt: " + json.dumps(summary), file=sys.stderr)
        return EXIT_OK if resp.status < 400 else EXIT_HTTP

    return asyncio.run(run())


def _wallet_identity(wallet, args: argparse.Namespace):
    """The agent's mandate chain, budget counters, approval hook and audit log, if it has them
    (counters and log: a SQLite file or a postgresql:// URL, opened by the caller's event loop)."""
    from mpp.connect import audit_log_for, budget_store_for

    audit = audit_log_for(wallet.audit_path) if wallet.audit_path else None
    if not wallet.mandates or args.no_identity:
        return None, audit
    from datetime import datetime, timezone

    from mpp.aio.agent import AgentIdentity
    from mpp.identity import issue_approval
    from mpp.protocol.keys import SigningKey

    approver = None
    if args.approve_with:
        approver_key = SigningKey.load(args.approve_with)

        def approver(problem: dict) -> str | None:
            print(f"approving: {problem.get('rule')} rule, {problem.get('amount')} {problem.get('currency')}"
                  f" for challenge {str(problem.get('challengeId'))[:12]}...", file=sys.stderr)
            return issue_approval(approver_key, agent=wallet.key.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                  amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                  mandate=problem["mandate"], now=datetime.now(timezone.utc))

    budget = budget_store_for(wallet.budget_path) if wallet.budget_path else None
    return AgentIdentity(wallet.key, wallet.mandates, budget, approver), audit


def add_fetch_command(sub: Any) -> None:
    """`mpp fetch`."""
    s = sub.add_parser(
        "fetch",
        help="request a URL, paying if asked and if the wallet's policy allows",
        epilog=EPILOG_FETCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("url", metavar="URL")
    s.add_argument("--wallet", required=True, help="agent wallet directory (DIR/agent from `mpp init`)")
    s.add_argument("--data", help="request body; implies POST unless --method is given")
    s.add_argument("--method", choices=["GET", "POST", "PUT", "PATCH", "DELETE"], help="HTTP method")
    s.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable), e.g. 'Idempotency-Key: abc'")
    s.add_argument("--max-amount", type=nonneg_int, help="per-purchase limit in base units (overrides the wallet's)")
    s.add_argument("--credential-only", action="store_true", help="print the Authorization value for the current quote instead of sending it")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole exchange (default 30)")
    s.add_argument("--no-identity", action="store_true", help="pay without presenting the wallet's mandate chain")
    s.add_argument("--approve-with", metavar="KEY.pem", help="principal (or approver) key that signs an approval when the seller asks for one")
    s.add_argument("--prefer", choices=["cheapest", "transaction", "unit", "task", "seat"], default="cheapest",
                   help="among several offers: this pricing model when acceptable, else the cheapest (default: cheapest)")
    s.add_argument("--planned-requests", type=pos_int, default=1, metavar="N",
                   help="requests (or tasks) planned for the route, to compare offers by (default 1)")
    s.add_argument("--planned-units", type=pos_int, metavar="N",
                   help="units planned in all, for unit offers (opens a session, capped by --max-amount)")
    s.add_argument("--allow-recurring", action="store_true",
                   help="allow a seat (a recurring payment per period); refused by default")
    s.set_defaults(func=cmd_fetch)
