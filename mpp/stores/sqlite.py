"""Opening SQLite the way every store here needs it: WAL, a busy timeout, explicit transactions."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["connect", "apply_schema", "immediate", "sqlite_path"]


def sqlite_path(url_or_path: str) -> str:
    """Accept ``sqlite:///abs/path``, ``sqlite:relative`` or a plain path."""
    if url_or_path.startswith("sqlite:///"):
        return "/" + url_or_path[len("sqlite:///"):].lstrip("/")
    if url_or_path.startswith("sqlite:"):
        return url_or_path[len("sqlite:"):]
    if "://" in url_or_path:
        raise ValueError(f"not a SQLite location: {url_or_path!r}")
    return url_or_path


def connect(url_or_path: str, schema: str) -> sqlite3.Connection:
    """A connection to the SQLite database at ``url_or_path`` (its directory made if missing), in WAL
    mode with a busy timeout and foreign keys on, autocommit (transactions are explicit), ``schema``
    applied."""
    path = sqlite_path(url_or_path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN ourselves, so a transaction is exactly what we wrote.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    _wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return apply_schema(conn, schema)


def apply_schema(conn: sqlite3.Connection, schema: str) -> sqlite3.Connection:
    """``schema`` (``CREATE ... IF NOT EXISTS`` statements) applied on ``conn``, in one transaction:
    how a store keeps its tables on a connection another store opened (one database, one transaction
    per purchase: :class:`mpp.ledger.book.SqliteBook`)."""
    with immediate(conn):
        for statement in _statements(schema):
            conn.execute(statement)
    return conn


def _wal(conn: sqlite3.Connection, *, timeout: float = 10.0) -> None:
    """Switch to WAL. Several processes opening a new file at once (the workers of `mpp seller
    serve --workers N`) race for the switch, and SQLite answers the losers "database is locked"
    at once, without its busy handler: retry until the winner is done."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _statements(schema: str) -> list[str]:
    return [s.strip() for s in schema.split(";") if s.strip()]


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the lock up front, so two processes cannot both read
    a balance and then both write it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
