"""The `mpp` command line: its parser and `main`, the entry point. Errors are one line on stderr and a
non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Sequence

from mpp.cli.audit import add_audit_commands
from mpp.cli.common import EXIT_OK, EXIT_USAGE, err, nonneg_int, pos_int
from mpp.cli.fetch import add_fetch_command
from mpp.cli.identity import add_identity_commands
from mpp.cli.ledger_admin import add_ledger_commands
from mpp.cli.seller import add_seller_commands

__all__ = ["build_parser", "main"]

EPILOG_MAIN = """exit codes:
  0  success
  1  the request or check did not succeed (see the message)
  2  bad arguments, configuration, wallet or ledger
  3-7  payment outcomes of `mpp fetch` (see `mpp fetch --help`)
"""


def cmd_init(args: argparse.Namespace) -> int:
    """`mpp init DIR`: an agent key, a funded payer account and a seller configuration."""
    from mpp.cli.config import init_home

    info = init_home(args.dir, funding=args.funding, realm=args.realm, max_amount=args.max_amount, force=args.force)
    print(f"initialised {args.dir}")
    print(f"  principal     : {info['principal_did']}")
    print(f"                  key {info['principal_key']}; owns acct:buyer, signs mandates and approvals")
    print(f"  agent         : {info['agent_did']}")
    print(f"                  wallet {info['wallet']}; mandate-bound agent of acct:buyer, approval above "
          f"{info['approval_threshold']}")
    print(f"  receipt key   : {info['receipt_did']}  (the seller's; served at /.well-known/jwks.json)")
    print(f"  seller config : {info['seller_config']}  (trusts the principal)")
    funded = f"acct:buyer funded with {args.funding}" if info["funded"] else "kept, with its balances"
    print(f"  ledger        : {info['ledger']}  ({funded})")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """`mpp demo`: seller, ledger and agent on loopback."""
    from mpp.cli.demo import run_demo

    return run_demo(args.dir)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every `mpp` command; each parsed namespace has ``func``, the command to run."""
    p = argparse.ArgumentParser(
        prog="mpp",
        description="Machine payments over the HTTP Payment scheme: seller, buyer, ledger.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create an agent key, a funded payer account and a seller configuration")
    s.add_argument("dir", metavar="DIR", help="directory to create (must not be initialised yet, unless --force)")
    s.add_argument("--funding", type=pos_int, default=100_000, help="initial balance of acct:buyer in base units (default 100000)")
    s.add_argument("--realm", default="mpp.local", help="the seller's realm (default mpp.local)")
    s.add_argument("--max-amount", type=nonneg_int, default=1_000, help="the wallet's per-purchase limit (default 1000)")
    s.add_argument("--force", action="store_true", help="re-initialise DIR: replace its keys, secret, mandate and configuration")
    s.set_defaults(func=cmd_init)

    add_seller_commands(sub)
    add_fetch_command(sub)
    add_ledger_commands(sub)
    add_audit_commands(sub)
    add_identity_commands(sub)

    s = sub.add_parser("demo", help="run seller, ledger and agent on loopback: paid calls, receipts, balances")
    s.add_argument("--dir", help="keep the demo's files here (default: a temporary directory)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mpp ARGV` (default: the process's arguments) and return its exit code."""
    from jwt import PyJWTError

    from mpp.cli.config import ConfigError
    from mpp.protocol.errors import MPPError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, MPPError, FileNotFoundError, ValueError, OSError, PyJWTError) as exc:
        err(str(exc))
        return EXIT_USAGE
    except sqlite3.Error as exc:  # --ledger, --log ... naming a file that is not such a database
        err(f"SQLite: {exc} (is that file one of ours?)")
        return EXIT_USAGE
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "asyncpg":
            raise
        # A PostgreSQL store refused (bad password, missing database, ...): its message, not a traceback.
        err(f"PostgreSQL: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
