"""What the `mpp` command modules share: exit codes, the one-line error, argument types, and the
ledger that --ledger names."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

__all__ = [
    "EXIT_APPROVAL", "EXIT_HTTP", "EXIT_OK", "EXIT_POLICY", "EXIT_RECEIPT", "EXIT_REFUSED", "EXIT_UNKNOWN", "EXIT_USAGE",
    "err", "ledger_path", "nonneg_int", "on_ledger", "pos_int",
]

EXIT_OK = 0
"""Exit code: success (a 2xx answer, paid or free)."""
EXIT_HTTP = 1
"""The request was answered, but not with success."""
EXIT_USAGE = 2
"""Exit code: bad usage or configuration (the message names the option or file to fix)."""
EXIT_POLICY = 3
"""The buyer refused the quote; nothing was signed."""
EXIT_REFUSED = 4
"""The seller refused the credential."""
EXIT_UNKNOWN = 5
"""Credential sent, outcome unknown: do not retry blindly."""
EXIT_RECEIPT = 6
"""Paid, but the receipt does not verify."""
EXIT_APPROVAL = 7
"""The seller asks for the principal's approval; nothing was paid (IDENT-APR-01)."""


def err(msg: str) -> None:
    """Print ``mpp: msg`` on stderr."""
    print(f"mpp: {msg}", file=sys.stderr)


def nonneg_int(text: str) -> int:
    """An argument type: an integer >= 0 (base units)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative integer (base units)")
    return value


def pos_int(text: str) -> int:
    """An argument type: an integer > 0 (base units)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer (base units)")
    return value


# argparse names the type in its error ("invalid _pos_int value: 'x'"): the names it has always shown
nonneg_int.__name__, pos_int.__name__ = "_nonneg_int", "_pos_int"


def ledger_path(args: argparse.Namespace) -> str:
    """--ledger (a SQLite file, ``sqlite:`` URL or ``postgresql://`` URL), else $MPP_HOME/ledger.db.
    A SQLite ledger must exist already (`mpp init` makes one); PostgreSQL tables are made on first use."""
    from mpp.connect import is_postgres

    path = args.ledger or os.path.join(os.environ.get("MPP_HOME", "mpp-home"), "ledger.db")
    if is_postgres(path):
        return path
    from mpp.stores.sqlite import sqlite_path

    if not Path(sqlite_path(path)).exists():
        raise FileNotFoundError(f"no ledger at {path}; run `mpp init DIR` and pass --ledger DIR/ledger.db")
    return path


def on_ledger(args: argparse.Namespace, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``await work(ledger)`` on the ledger --ledger names (either engine), then close it."""
    from mpp.connect import open_ledger

    async def run():
        ledger = await open_ledger(ledger_path(args))
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())
