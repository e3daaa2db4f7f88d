"""`mpp audit show|verify`: read and check the identity audit log."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from mpp.cli.common import EXIT_HTTP, EXIT_OK, err

__all__ = ["add_audit_commands", "cmd_audit_show", "cmd_audit_verify"]


def _audit_location(args: argparse.Namespace) -> str:
    """--log (a path, sqlite: URL or postgresql:// URL), else $MPP_HOME/audit.db; it must hold a log."""
    from mpp.stores.sqlite import sqlite_path
    from mpp.connect import is_postgres

    location = args.log or os.path.join(os.environ.get("MPP_HOME", "mpp-home"), "audit.db")
    if not is_postgres(location) and not Path(sqlite_path(location)).exists():
        raise FileNotFoundError(f"no audit log at {location}; pass --log PATH or set MPP_HOME")
    return location


async def _with_audit_log(location: str, use):
    """Run ``await use(log)`` on the audit log at ``location``, opened for it and closed after."""
    from mpp.connect import is_postgres, open_audit_log

    if is_postgres(location):
        from mpp.stores.pg.audit import audit_log_exists

        if not await audit_log_exists(location):  # reading must not create an empty log and call it intact
            raise FileNotFoundError("no audit log in that PostgreSQL database (nothing was ever appended there)")
    log = await open_audit_log(location)
    try:
        return await use(log)
    finally:
        await log.close()


def _short(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 9] + "..." + text[-6:]


def cmd_audit_show(args: argparse.Namespace) -> int:
    """`mpp audit show`: one row per purchase, or a JSON list with --json."""
    rows = asyncio.run(_with_audit_log(_audit_location(args), lambda log: log.purchases(agent=args.agent, principal=args.principal)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no purchases recorded")
        return EXIT_OK
    # DETAIL (last, never cut): the settlement reference, or why the purchase was refused.
    columns = (("TIME", 19), ("OUTCOME", 8), ("AMOUNT", 12), ("RESOURCE", 28), ("DECISION", 19), ("AGENT", 24), ("CHALLENGE", 16))
    print("  ".join(f"{name:<{width}}" for name, width in columns) + "  DETAIL")
    for r in rows:
        amount = "-" if r["amount"] is None else f"{r['amount']} {r['currency'] or ''}".strip()
        detail = r["reference"] if r["outcome"] == "settled" else r["reason"]
        cells = (r["ts"][:19], r["outcome"], amount, r["resource"], r["decision"], r["agent"], r["challengeId"])
        print("  ".join(f"{_short(c, w):<{w}}" for c, (_, w) in zip(cells, columns)) + f"  {detail or '-'}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """`mpp audit verify`: check the hash chain and the head (exit 1 if broken)."""
    from mpp.stores.audit import AuditChainBroken

    async def verify(log) -> tuple[int, str]:
        await log.verify()
        return await log.head()

    try:
        seq, digest = asyncio.run(_with_audit_log(_audit_location(args), verify))
    except AuditChainBroken as exc:
        err(str(exc))
        return EXIT_HTTP
    print(f"audit log intact: {seq} entries, head {seq} {digest[:16] or '-'}")
    return EXIT_OK


def add_audit_commands(sub: Any) -> None:
    """`mpp audit` and its subcommands."""
    s = sub.add_parser("audit", help="read and check the identity audit log")
    asub = s.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    for name, func, helptext in (
        ("show", cmd_audit_show, "one row per purchase: amount, resource, agent, decision, outcome"),
        ("verify", cmd_audit_verify, "check the hash chain and the head (exit 1 if broken)"),
    ):
        t = asub.add_parser(name, help=helptext)
        t.add_argument("--log", help="audit log: a SQLite file or postgresql:// URL "
                                     "(default $MPP_HOME/audit.db, MPP_HOME defaulting to ./mpp-home)")
        if name == "show":
            t.add_argument("--agent", metavar="DID", help="only purchases by this agent")
            t.add_argument("--principal", metavar="DID", help="only purchases under this principal")
            t.add_argument("--json", action="store_true", help="print a JSON list of purchases")
        t.set_defaults(func=func)
