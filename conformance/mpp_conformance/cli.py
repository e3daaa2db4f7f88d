"""`mpp-conformance`: run the checks against a seller (or a buyer) and write the reports."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Sequence

from .checks_core import DEFAULT_EXPIRY_WAIT
from .framework import PROFILES, Result, Verdict, checks_for, run_checks
from .reports import ConsoleProgress, meta_for, summary, to_html, to_json, to_junit
from .usage import UsageError

__all__ = ["main"]


def _write_reports(args: argparse.Namespace, results: list[Result], meta: dict) -> None:
    for path, render in ((args.json, to_json), (args.junit, to_junit), (args.html, to_html)):
        if path:
            try:
                Path(path).write_text(render(results, meta), encoding="utf-8")
            except OSError as exc:  # a report path the user named that cannot be written: their usage
                raise UsageError(f"mpp-conformance: cannot write {path}: {exc.strerror or exc}") from None
            print(f"wrote {path}")


def _finish(results: list[Result]) -> int:
    counts = summary(results)
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['warn']} warnings (SHOULD), {counts['skip']} skipped, "
          f"{counts['error']} errors")
    return 0 if not any(r.verdict in (Verdict.FAIL, Verdict.ERROR) for r in results) else 1


def cmd_seller(args: argparse.Namespace) -> int:
    from .discover import check_target, discover_targets

    options = {"method": args.method, "data": args.data.encode() if args.data is not None else None,
               "pay_with": args.pay_with, "concurrency": args.concurrency,
               "identity_keys": args.identity_keys, "account": args.account,
               "other_url": args.other_url, "max_amount": args.max_amount, "expiry_wait": args.expiry_wait,
               "pay_timeout": args.pay_timeout, "payer_ledger": args.payer_ledger}
    if args.profile == "full" and not args.pay_with:
        raise UsageError("mpp-conformance: --profile full needs --pay-with (ledger:WALLET_DIR, evm:FILE, static:JSON or cmd:PROGRAM; see --help)")
    if args.pay_with:
        from .paying import payer_from_spec

        try:
            payer_from_spec(args.pay_with, max_amount=args.max_amount, timeout=args.pay_timeout)
        except ValueError as exc:
            raise UsageError(f"mpp-conformance: {exc}")
    if args.identity_keys:
        from .principal import load_keys

        try:
            load_keys(args.identity_keys)
        except (OSError, ValueError) as exc:
            raise UsageError(f"mpp-conformance: --identity-keys: {exc}")
    targets = asyncio.run(discover_targets(args.discover)) if args.discover else [(args.url, args.method, None)]
    if not targets:
        raise UsageError(f"mpp-conformance: {args.discover}/openapi.json lists no priced operation (x-payment-info)")
    runs = [(url, dict(options, method=method or options["method"], data=data if data is not None else options["data"]))
            for url, method, data in targets]
    # A dead or unpriced target would turn every check into the same error: stop with one line, and
    # before any check runs (with --discover, before the first route's checks).
    for url, opts in runs:
        asyncio.run(check_target(url, opts["method"].upper(), opts["data"]))
    results: list[Result] = []
    for url, opts in runs:
        print(f"== {opts['method']} {url} (profile {args.profile})")
        results += asyncio.run(run_checks(checks_for(args.profile), url, opts, ConsoleProgress()))
    _write_reports(args, results, meta_for("seller", args.url or args.discover, args.profile))
    return _finish(results)


def cmd_buyer(args: argparse.Namespace) -> int:
    from .buyer import run_buyer_checks

    results = asyncio.run(run_buyer_checks(args.cmd, progress=ConsoleProgress(), timeout=args.timeout, post_cmd=args.post_cmd,
                                           plain_host=args.plain_http_address))
    _write_reports(args, results, meta_for("buyer", args.cmd, "buyer"))
    return _finish(results)


def _cmd_principal(args: argparse.Namespace) -> int:
    from .principal import cmd_principal

    try:
        return cmd_principal(args)
    except (OSError, ValueError) as exc:  # an unwritable DIR, or a key file that is not one
        raise UsageError(f"mpp-conformance principal: {exc}") from None


# Shown by `mpp-conformance seller --help`: the one question the options cannot answer alone is how
# to pay a seller that does not take our `ledger` method.
_SELLER_EPILOG = """\
Paying (profiles full and pricing):
  --pay-with ledger:WALLET_DIR
      pays challenges of MPP's `ledger` method with the key of an `mpp init` wallet, bare (no
      mandate): the target's ledger must list that key as an owner of its account
      (mpp ledger allow acct:buyer DID --as owner --ledger ...).
      Refusals must move no money: around each check's refused credentials the suite reads the
      payer's balance at the ledger the challenge names (--payer-ledger, or the ledger.db beside an
      `mpp init` wallet) and fails a check whose refusal moved it, naming the amount; when it
      cannot read it, the check's message says so and nothing is compared.
  --pay-with evm:PAYER.json
      pays challenges of the `evm` method (charge, draft-evm-charge-00) with EIP-3009 authorizations
      signed by the key in PAYER.json: {"privateKey": "0x...", "chainId": 31337, "tokens":
      [{"address": "0x...", "name": "...", "version": "...", "decimals": 6}], "binding": "draft"}
      (binding: the nonce's challenge-hash rule, draft or json). Amounts above --max-amount are
      refused.
  --pay-with 'static:{"token": "test"}'   (or static:@payload.json)
      for a seller whose methods are not `ledger`: answers the target's challenge with that fixed
      payload, for a test method of the target that accepts it. To answer one method only, wrap it:
      'static:{"payload": {"token": "test"}, "method": "test", "source": "did:key:..."}'.
  --pay-with 'cmd:PROGRAM [ARG...]'
      any other method, signed by a program of yours: PROGRAM (split like a shell command line,
      run without a shell) runs once per challenge. Its stdin: one JSON object, the challenge as
      sent (id, realm, method, intent, request, expires, digest, opaque, description), request
      decoded as requestJson, and the url and httpMethod being paid. Its stdout: the credential's
      payload, one JSON object (or {"payload": {...}, "source": "did:..."}); the suite builds the
      credential around it. Exit 0 answers; exit 3 declines: it is asked about the target's next
      challenge, and a check whose challenges it all declines is skipped. Any other exit status,
      output that is not a JSON object, or no answer within --pay-timeout seconds (default 30; it
      is then killed) is the check's ERROR, naming the program, its status and its stderr.
  Otherwise (a real rail the suite cannot sign for): give the target a test method that accepts a
  fixed payload and use static:, or run the core profile, which pays nothing.
  Checks whose payment the payer cannot make (another method, a session-only offer, a route that
  requires the identity extension, a ledger that wants a mandate) are skipped with the reason.

Exit status: 0 no check failed (skips allowed), 1 a check failed or errored, 2 bad usage or a
target that cannot be checked (unreachable, or not priced: no 402 with a Payment challenge).
"""


def _profile_listing() -> str:
    """The checks of each profile, with their level: the last part of `seller --help`."""
    import textwrap

    from .framework import all_checks

    groups: dict[str, list] = {}
    for chk in all_checks():
        groups.setdefault(chk.profile, []).append(chk)
    lines = ["", "Checks (level: MUST and SHOULD cite a draft; EXT is MPP's own profile and cites its spec ids):"]
    for profile in PROFILES:
        ids = [f"{c.id} [{'EXT' if c.level == 'extension' else c.level}]" for c in checks_for(profile)]
        lines.append(f"  --profile {profile} ({len(ids)} checks):")
        if profile not in ("draft", "core"):  # core and the group's own checks
            ids = ["core"] + [f"{c.id} [{'EXT' if c.level == 'extension' else c.level}]" for c in groups.get(profile, [])]
        lines += textwrap.wrap(", ".join(ids), width=100, initial_indent="      ", subsequent_indent="      ",
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpp-conformance", description="Check a Payment-scheme seller or buyer against the MPP spec. "
                                "`mpp-conformance seller --help` says how to pay a seller (--pay-with).")
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    s = sub.add_parser("seller", help="probe a seller over HTTP", epilog=_SELLER_EPILOG + _profile_listing(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("url", nargs="?", metavar="URL", help="a priced resource")
    s.add_argument("--discover", metavar="BASE", help="read BASE/openapi.json and probe every priced operation")
    s.add_argument("--profile", choices=list(PROFILES), default="core",
                   help="draft (only what the published drafts require: MUST fails, SHOULD warns; pays when --pay-with "
                        "is given), core (MPP's profile, no payment: the draft's MUSTs and MPP's stricter extensions), "
                        "full (core + the paying checks), identity (mandate attacks), pricing (a price-list route: offers, "
                        "task and seat grants), session (the session intent); the checks of each are listed below")
    s.add_argument("--pay-with", metavar="SPEC", help="how the paying profiles pay: ledger:WALLET_DIR (our ledger method), evm:FILE (EIP-3009 on an evm chain), "
                   "static:JSON / static:@FILE (a fixed payload, for any other method) or cmd:PROGRAM (a program of "
                   "yours answers each challenge); see 'Paying' below")
    s.add_argument("--payer-ledger", metavar="LOCATION",
                   help="with --pay-with ledger: where the suite reads the payer's balance, to check that refusals move no "
                        "money: the ledger's SQLite file (read-only) or its service's http(s) URL (default: the ledger "
                        "beside an `mpp init` wallet, or wallet.json's 'ledger'); unreadable, the comparison is skipped")
    s.add_argument("--pay-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="the longest a cmd: payer program may take to answer one challenge (default %(default)g)")
    s.add_argument("--method", default="GET", help="HTTP method of URL (default GET)")
    s.add_argument("--data", help="request body for URL")
    s.add_argument("--concurrency", type=int, default=20, help="parallel submissions in the concurrent replay check (default 20)")
    s.add_argument("--other-url", metavar="URL", help="a second priced URL of the target ('URL' or 'METHOD URL'), "
                   "for the full profile's route-binding check")
    s.add_argument("--max-amount", type=int, default=10_000, metavar="N",
                   help="the most (base units) the ledger payer pays for one request (default 10000)")
    s.add_argument("--expiry-wait", type=float, default=DEFAULT_EXPIRY_WAIT, metavar="SECONDS",
                   help="the longest the expiry check waits for a challenge to expire (default %(default)g); "
                        "a target whose challenges live longer has that check skipped")
    s.add_argument("--identity-keys", metavar="DIR", help="the suite's principal and agent keys (`mpp-conformance principal DIR`); "
                   "without them the identity checks that need a trusted principal skip")
    s.add_argument("--account", default="acct:buyer", help="payer account named in the identity checks' ledger payloads (default acct:buyer)")
    b = sub.add_parser("buyer", help="run an adversarial seller on loopback and drive a buyer command against it")
    b.add_argument("--cmd", required=True, help="buyer command; {url} is replaced by the resource URL (see the README)")
    b.add_argument("--timeout", type=float, default=30.0, help="seconds per buyer invocation")
    b.add_argument("--post-cmd", metavar="CMD", help="buyer command that POSTs {body} to {url}, for buyer.body-digest "
                   "(skipped without it), e.g. \"mpp fetch --wallet W --no-identity --data {body} {url}\"")
    b.add_argument("--plain-http-address", metavar="ADDR", help="an address of this machine that is not loopback, where "
                   "buyer.plain-http serves plain http (default: found automatically; '' skips that check)")
    k = sub.add_parser("principal", help="create the suite's principal and agent keys for the identity profile")
    k.add_argument("dir", metavar="DIR", help="directory for principal.key, agent.key, other-agent.key, untrusted.key (kept if present)")
    k.set_defaults(func=_cmd_principal)
    for sp in (s, b):
        sp.add_argument("--json", metavar="FILE")
        sp.add_argument("--junit", metavar="FILE")
        sp.add_argument("--html", metavar="FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.mode == "seller" and not (args.url or args.discover):
            raise UsageError("mpp-conformance: give a priced URL or --discover BASE")
        if args.mode == "seller" and args.url and args.discover:
            raise UsageError("mpp-conformance: give a priced URL or --discover BASE, not both")
        return args.func(args) if hasattr(args, "func") else (cmd_seller(args) if args.mode == "seller" else cmd_buyer(args))
    except UsageError as exc:
        # Printed here, then re-raised: its code (2) is the exit status, and callers of main() that
        # expect a SystemExit with the message (the pytest plugin, tests) still get one.
        print(exc, file=sys.stderr)
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
