"""Opening SQLite the way every store here needs it: WAL, a busy timeout, explicit transactions."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["connect", "immediate", "sqlite_path"]


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
    path = sqlite_path(url_or_path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN ourselves, so a transaction is exactly what we wrote.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    with immediate(conn):
        for statement in _statements(schema):
            conn.execute(statement)
    return conn


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
