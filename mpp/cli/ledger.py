"""`mpp ledger account create|allow|deny|members`: who may spend from a ledger account
(spec/methods/ledger.md §8, LEDGER-ACCT-*), on a ledger file or database, or over a ledger
service with an owner's key."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

from mpp.cli.common import on_ledger

__all__ = ["add_account_commands", "enrol", "is_service"]

LEDGER_HELP = ("ledger: SQLite file, postgresql:// URL, or http(s):// URL of `mpp ledger serve` (then --key) "
               "(default $MPP_HOME/ledger.db, MPP_HOME defaulting to ./mpp-home)")


def is_service(location: str | None) -> bool:
    """Whether the ledger ``location`` is an ``http(s)://`` ledger service rather than a file or database."""
    return bool(location) and location.split("://", 1)[0] in ("http", "https")  # type: ignore[union-attr]


def on_members(ledger: str | None, key_path: str | None, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``await work(ledger)`` where ``ledger`` has ``allow``, ``deny`` and ``members``: the
    ledger's own database (the operator's access), or its service as the owner whose key is
    ``key_path`` (LEDGER-SVC-13: only an owner may change or list an account's members there)."""
    if not is_service(ledger):
        return on_ledger(argparse.Namespace(ledger=ledger), work)
    if not key_path:
        raise ValueError("a ledger service acts on an owner's signature: pass --key with the key of one of "
                         "the account's owners")
    from mpp.aio.ledger_client import LedgerClient
    from mpp.protocol.keys import SigningKey

    key = SigningKey.load(Path(key_path))

    async def run() -> Any:
        async with LedgerClient(ledger, key) as client:  # type: ignore[arg-type]
            return await work(client)

    return asyncio.run(run())


def enrol(ledger: str | None, key_path: str | None, account: str, did: str, role: str) -> None:
    """Give ``did`` ``role`` on ``account``, wherever the ledger is."""
    on_members(ledger, key_path, lambda led: led.keys.allow(account, did, role))


def _print_members(account: str, members: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"account": account, "members": members}))
        return
    if not members:
        print(f"{account}: no members (nobody may spend from it)")
    for did, role in sorted(members.items(), key=lambda m: (m[1], m[0])):
        print(f"{role:<7} {did}")


def cmd_account_create(args: argparse.Namespace) -> int:
    if is_service(args.ledger):
        if args.owner is not None:
            raise ValueError("over a ledger service the account's owner is the key that signs for it (--key), not --owner")

        async def made(client):
            account = await client.create_account(args.account, args.currency)
            return account, await client.members(args.account)

        account, members = on_members(args.ledger, args.key, made)
        print(f"account {account['id']} ({account['currency']}) balance {account['balance']}")
        _print_members(account["id"], members, False)
        return 0
    async def work(ledger):
        account = await ledger.create_account(args.account, args.currency, owner=args.owner)
        return account, await ledger.keys.members(args.account)

    account, members = on_members(args.ledger, None, work)
    print(f"account {account.id} ({account.currency}) balance {account.balance}")
    _print_members(account.id, members, False)
    if args.owner is None:
        print(f"note: nobody can spend from it until `mpp ledger allow {args.account} DID --as owner` names an owner")
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    async def work(ledger):
        await ledger.keys.allow(args.account, args.did, args.role)
        return await ledger.keys.members(args.account)

    members = on_members(args.ledger, args.key, work)
    what = "an owner (spends on its own signature, roots mandates)" if args.role == "owner" else \
        "a mandate-bound agent (spends only under a mandate chain rooted in an owner)"
    print(f"{args.did} is {what} of {args.account}")
    _print_members(args.account, members, False)
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    async def work(ledger):
        await ledger.keys.deny(args.account, args.did)
        return await ledger.keys.members(args.account)

    members = on_members(args.ledger, args.key, work)
    print(f"{args.did} may no longer spend from {args.account}, directly or under any mandate")
    _print_members(args.account, members, False)
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    members = on_members(args.ledger, args.key, lambda ledger: ledger.keys.members(args.account))
    _print_members(args.account, members, args.json)
    return 0


EPILOG = """An account's members say who may spend from it (spec/methods/ledger.md, LEDGER-ACCT-*):
  owner   a principal: spends on its own signature and signs mandates that spend from it
  agent   a key that spends only under a mandate chain rooted in an owner; its bare
          signature moves nothing (the seller answers 402 mandate-required)
  denied  spends nothing, directly or anywhere in a mandate chain
On a ledger file or postgresql:// URL these act with the operator's access. On a ledger
service (--ledger http://...) allow, deny and members are signed with --key, which must be
the key of one of the account's owners; an account is created there only where the service
was started with --open-accounts, owned by the --key that asks for it.
"""


def add_account_commands(lsub: Any) -> None:
    """The account and membership subcommands of `mpp ledger`."""
    raw = argparse.RawDescriptionHelpFormatter
    t = lsub.add_parser("account", help="create an account", epilog=EPILOG, formatter_class=raw)
    asub = t.add_subparsers(dest="account_command", required=True, metavar="SUBCOMMAND")
    c = asub.add_parser("create", help="create an asset account, optionally with its first owner", epilog=EPILOG,
                        formatter_class=raw)
    c.add_argument("account", metavar="ACCOUNT", help="account id, e.g. acct:team-a")
    c.add_argument("--owner", metavar="DID", help="the principal's did:key that owns it")
    c.add_argument("--currency", default="usd", help="currency of the account (default usd)")
    c.add_argument("--ledger", help=LEDGER_HELP)
    c.add_argument("--key", metavar="KEY.pem", help="with an http(s) --ledger: the key that signs for the account and owns "
                                                    "it (where the service opens account creation: --open-accounts)")
    c.set_defaults(func=cmd_account_create)

    for name, func, helptext in (
        ("allow", cmd_allow, "enrol a DID on an account as owner or mandate-bound agent"),
        ("deny", cmd_deny, "stop a DID spending from an account, directly or under any mandate"),
        ("members", cmd_members, "list an account's owners, agents and denied DIDs"),
    ):
        t = lsub.add_parser(name, help=helptext, epilog=EPILOG, formatter_class=raw)
        t.add_argument("account", metavar="ACCOUNT")
        if name != "members":
            t.add_argument("did", metavar="DID", help="an Ed25519 did:key")
        if name == "allow":
            t.add_argument("--as", dest="role", required=True, choices=["owner", "agent"],
                           help="owner: a principal; agent: spends only under a mandate chain rooted in an owner")
        if name == "members":
            t.add_argument("--json", action="store_true", help="machine-readable output")
        t.add_argument("--ledger", help=LEDGER_HELP)
        t.add_argument("--key", metavar="KEY.pem", help="with an http(s) --ledger: the key of one of the account's owners")
        t.set_defaults(func=func)
