"""`mpp fetch`: request a URL as the agent of a wallet, paying if asked and if the wallet's policy
allows; the exit code tells the payment's outcome."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from mpp.cli.common import (EXIT_APPROVAL, EXIT_HTTP, EXIT_OK, EXIT_POLICY, EXIT_RECEIPT, EXIT_REFUSED, EXIT_UNKNOWN, err, nonneg_int,
                            pos_int)

__all__ = ["EPILOG_FETCH", "add_fetch_command", "cmd_fetch"]

EPILOG_FETCH = """exit codes:
  0  success (2xx), paid or free
  1  the server answered with an error that was not about payment, or could not be reached
     (nothing was sent or paid)
  2  bad arguments or wallet
  3  the quote broke the wallet's policy (amount, currency, recipient, expiry, origin) or its
     mandate (expired, another audience, budget spent); nothing was signed
  4  the seller refused the credential (its problem document is printed on stderr)
  5  the credential was sent but the outcome is unknown (5xx or network error): the seller's
     problem document, if any, and the challenge id are printed on stderr; before paying again
     check whether it settled (the challenge id is the ledger transfer's id and the receipt's
     reference): `mpp ledger balance ACCOUNT` for the wallet's account, or ask the seller
  6  the seller answered 2xx but its receipt did not verify
  7  the seller asks for the principal's approval; nothing was paid. With --problem-out FILE its
     problem document (and the quote) is written there: `mpp approve --problem FILE --out approval.jwt`,
     then `mpp fetch --approval approval.jwt URL` retries the same quote before it expires

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
    from mpp.purchase.sessions import SessionPolicy
    from mpp.buyer.core import OfferPlan
    from mpp.cli.config import load_wallet
    from mpp.protocol.errors import (NoPayableChallenge, OutcomeUnknown, PaymentFailed, QuoteRejected, ReceiptInvalid,
                                     SellerUnreachable)
    from mpp.methods.ledger import LedgerBuyerMethod

    if args.approval and args.approve_with:
        raise ValueError("--approval and --approve-with both answer the seller's approval request: pass one")
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

    seen_402: list[str] = []  # the last 402's WWW-Authenticate values: the quote an approval will be bound to
    asked: dict = {}  # the seller's approval-required problem, when no approver answered it
    identity, audit = _wallet_identity(wallet, args, asked)
    pending = _pending_retry(args, method) if args.approval else None

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
        async with aiohttp.ClientSession(timeout=timeout, trace_configs=[_record_402(seen_402)]) as session:
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
                    print(credential)  # newline-terminated, like every other value we print
                    return EXIT_OK
                if pending is not None:  # the very challenge the approval is bound to (IDENT-APR-05)
                    resp = await client.pay_challenge(method, args.url, pending[0], data=data, headers=headers)
                    pending[1].unlink(missing_ok=True)
                else:
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
                if asked:
                    return _approval_needed(args, wallet, method, asked, seen_402)
                err(str(exc))
                if exc.problem:
                    print(json.dumps(exc.problem, indent=2), file=sys.stderr)
                return EXIT_REFUSED
            except OutcomeUnknown as exc:
                err(f"{exc}; the payment may have settled: "
                    + exc.how_to_check_for(wallet.account))
                if exc.problem:
                    print(json.dumps(exc.problem, indent=2), file=sys.stderr)
                return EXIT_UNKNOWN
            except SellerUnreachable as exc:
                err(f"request failed: {exc}")
                return EXIT_HTTP
            except ReceiptInvalid as exc:
                err(f"paid, but the receipt is not valid: {exc}")
                return EXIT_RECEIPT
            except aiohttp.ClientError as exc:
                err(f"request failed before any payment: {exc}")
                return EXIT_HTTP
        sys.stdout.write(resp.text())
        if not resp.text().endswith("\n"):
            sys.stdout.write("\n")
        if args.receipt_out and resp.headers.get("Payment-Receipt"):
            # the raw header value, as received: what `mpp receipt verify FILE` checks
            Path(args.receipt_out).write_text(resp.headers["Payment-Receipt"] + "\n", encoding="utf-8")
        elif args.receipt_out:
            err(f"no receipt to write to {args.receipt_out}: nothing was paid for this response")
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


def _record_402(seen: list[str]):
    """An aiohttp trace that keeps the ``WWW-Authenticate`` values of the last 402 in ``seen``."""
    import aiohttp

    trace = aiohttp.TraceConfig()

    async def on_end(session, ctx, params) -> None:
        if params.response.status == 402:
            seen[:] = params.response.headers.getall("WWW-Authenticate", [])

    trace.on_request_end.append(on_end)
    return trace


def _pending_retry(args: argparse.Namespace, method: str):
    """For --approval: the saved challenge it is bound to, and the file that keeps it."""
    from mpp.cli.approvals import load_pending, read_approval

    _, claims = read_approval(args.approval)
    return load_pending(args.wallet, claims["challengeId"], method, args.url)


def _approval_needed(args: argparse.Namespace, wallet, method: str, problem: dict, seen_402: list[str]) -> int:
    """The seller wants the principal's approval (IDENT-APR-01): say so, keep the quote with
    --problem-out, and exit 7."""
    from mpp.cli.approvals import APPROVAL_RETRY_HINT, find_challenge, save_pending
    from mpp.protocol.headers import format_challenge

    what = f"{problem.get('amount')} {problem.get('currency')} ({problem.get('rule')} rule)"
    challenge = find_challenge(seen_402, str(problem.get("challengeId")))
    if not args.problem_out:
        err(f"the seller asks for the principal's approval of {what}; nothing was paid. Rerun with "
            "--problem-out problem.json to keep the quote for `mpp approve`, or pass --approve-with KEY")
        print(json.dumps(problem, indent=2), file=sys.stderr)
        return EXIT_APPROVAL
    doc = dict(problem)
    if challenge is not None:
        quote = {"url": args.url, "method": method, "agent": wallet.key.did, "challenge": format_challenge(challenge)}
        doc["quote"] = quote  # added by `mpp fetch`: what the approver checks and sees (IDENT-APR-07)
        save_pending(args.wallet, quote)
    Path(args.problem_out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    err(f"the seller asks for the principal's approval of {what}; nothing was paid. Problem written to "
        f"{args.problem_out}: " + APPROVAL_RETRY_HINT.format(problem=args.problem_out, wallet=args.wallet, url=args.url))
    return EXIT_APPROVAL


def _wallet_identity(wallet, args: argparse.Namespace, asked: dict):
    """The agent's mandate chain, budget counters, approval hook and audit log, if it has them
    (counters and log: a SQLite file or a postgresql:// URL, opened by the caller's event loop).
    Without an approver (--approve-with, --approval), the seller's approval-required problem is
    kept in ``asked`` for the caller to report."""
    from mpp.connect import audit_log_for, budget_store_for

    audit = audit_log_for(wallet.audit_path) if wallet.audit_path else None
    if not wallet.mandates or args.no_identity:
        return None, audit
    from datetime import datetime, timezone

    from mpp.purchase.agent import AgentIdentity
    from mpp.identity import issue_approval
    from mpp.protocol.keys import SigningKey

    def approver(problem: dict) -> None:
        asked.update(problem)
        return None

    if args.approval:
        from mpp.cli.approvals import read_approval

        token, claims = read_approval(args.approval)

        def approver(problem: dict) -> str | None:  # only for the challenge it was signed for
            if problem.get("challengeId") == claims["challengeId"]:
                return token
            asked.update(problem)
            return None
    elif args.approve_with:
        approver_key = SigningKey.load(args.approve_with)

        def approver(problem: dict) -> str | None:
            print(f"approving: {problem.get('rule')} rule, {problem.get('amount')} {problem.get('currency')}"
                  f" for challenge {str(problem.get('challengeId'))[:12]}...", file=sys.stderr)
            return issue_approval(approver_key, agent=wallet.key.did, challenge_id=problem["challengeId"], quote=problem["quoteHash"],
                                  amount=problem["amount"], currency=problem["currency"], rule=problem["rule"],
                                  mandate=problem["mandate"], now=datetime.now(timezone.utc))

    budget = budget_store_for(wallet.budget_path) if wallet.budget_path else None
    if args.problem_out and not args.approve_with:
        from mpp.cli.approvals import HoldWhileAsked

        return HoldWhileAsked(wallet.key, wallet.mandates, budget, approver, asked=asked), audit
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
    s.add_argument("--wallet", required=True, help="agent wallet directory (DIR/agent from `mpp init`; its wallet.json works too)")
    s.add_argument("--data", help="request body; implies POST unless --method is given")
    s.add_argument("--method", choices=["GET", "POST", "PUT", "PATCH", "DELETE"], help="HTTP method")
    s.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable), e.g. 'Idempotency-Key: abc'")
    s.add_argument("--max-amount", type=nonneg_int, help="per-purchase limit in base units (overrides the wallet's)")
    s.add_argument("--credential-only", action="store_true", help="print the Authorization value for the current quote instead of sending it")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole exchange (default 30)")
    s.add_argument("--no-identity", action="store_true", help="pay without presenting the wallet's mandate chain")
    s.add_argument("--approve-with", metavar="KEY.pem", help="principal (or approver) key that signs an approval when the seller asks for one")
    s.add_argument("--problem-out", metavar="FILE", help="when the seller asks for an approval (exit 7): write its problem "
                                                         "document, with the quote, here for `mpp approve --problem FILE`")
    s.add_argument("--approval", metavar="FILE|JWT", help="an approval from `mpp approve`: retry the quote it was signed for "
                                                          "(kept in the wallet by --problem-out) with it")
    s.add_argument("--receipt-out", metavar="FILE", help="write the raw Payment-Receipt value here, for `mpp receipt verify FILE`")
    s.add_argument("--prefer", choices=["cheapest", "transaction", "unit", "task", "seat"], default="cheapest",
                   help="among several offers: this pricing model when acceptable, else the cheapest (default: cheapest)")
    s.add_argument("--planned-requests", type=pos_int, default=1, metavar="N",
                   help="requests (or tasks) planned for the route, to compare offers by (default 1)")
    s.add_argument("--planned-units", type=pos_int, metavar="N",
                   help="units planned in all, for unit offers (opens a session, capped by --max-amount)")
    s.add_argument("--allow-recurring", action="store_true",
                   help="allow a seat (a recurring payment per period); refused by default")
    s.set_defaults(func=cmd_fetch)
