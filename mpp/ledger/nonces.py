"""The nonces the ledger service has accepted within the replay window (LEDGER-SVC-04).

A signed request is accepted at most once: its ``(keyid, nonce)`` is remembered until its
timestamp can no longer be accepted, and a second request with the same pair is refused.
Where the pairs are kept decides what a replay can get past:

* :class:`MemoryNonces`: in this process only. A restart of the service, or a second service
  process behind the same address, forgets them: a request captured on the wire could then be
  replayed within its window (every mutating call is idempotent, so a replay repeats an answer,
  it moves no money twice; but it is still a replay).
* :class:`SqliteNonces` / :class:`PgNonces`: in the ledger's own database, shared by every
  service process on it and kept across restarts. ``mpp ledger serve`` uses these.

All three answer one question: :meth:`first_use` inserts the pair and says whether it was new.
"""

from __future__ import annotations

import collections
from typing import Protocol, runtime_checkable

from mpp.stores.sqlite import connect, immediate
from mpp.stores.pg._base import PgStoreBase

__all__ = ["NonceStore", "MemoryNonces", "SqliteNonces", "PgNonces", "nonces_for"]

# Expired pairs are deleted on every this-many-th insert: cheap, and the table stays small.
_PURGE_EVERY = 256


@runtime_checkable
class NonceStore(Protocol):
    """Where the ledger service remembers accepted ``(keyid, nonce)`` pairs (LEDGER-SVC-04)."""

    async def first_use(self, keyid: str, nonce: str, *, now: float, expires: float) -> bool:
        """Remember ``(keyid, nonce)`` until ``expires`` (epoch seconds); False if it is already remembered."""

    async def close(self) -> None:
        """Release what the store holds (its connection, or a pool it made). ``ledger_app`` calls it at
        cleanup when it closes the ledger."""


class MemoryNonces:
    """Pairs kept in this process (lost on restart; not shared between service processes)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._order: collections.deque[tuple[float, tuple[str, str]]] = collections.deque()

    async def first_use(self, keyid: str, nonce: str, *, now: float, expires: float) -> bool:
        """Remember ``(keyid, nonce)`` in this process until ``expires`` (epoch seconds); False if it is
        remembered already. Pairs expired by ``now`` are forgotten first."""
        while self._order and self._order[0][0] < now:
            _, old = self._order.popleft()
            self._seen.pop(old, None)
        key = (keyid, nonce)
        if key in self._seen:
            return False
        self._seen[key] = expires
        self._order.append((expires, key))
        return True

    async def close(self) -> None:
        """Nothing to release."""
        return None


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS service_nonces (
    keyid TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (keyid, nonce)
);
CREATE INDEX IF NOT EXISTS service_nonces_by_expiry ON service_nonces (expires)
"""


class SqliteNonces:
    """Pairs in a SQLite file (normally the ledger's own), shared by processes on that file."""

    def __init__(self, location: str) -> None:
        self._conn = connect(location, _SQLITE_SCHEMA)
        self._inserts = 0

    async def first_use(self, keyid: str, nonce: str, *, now: float, expires: float) -> bool:
        """Remember ``(keyid, nonce)`` in the file until ``expires`` (epoch seconds), in one IMMEDIATE
        transaction; False if the pair is there unexpired at ``now`` (an expired one is replaced). Every
        256th call also deletes the expired pairs."""
        self._inserts += 1
        with immediate(self._conn) as c:
            if self._inserts % _PURGE_EVERY == 0:
                c.execute("DELETE FROM service_nonces WHERE expires < ?", (now,))
            row = c.execute("SELECT expires FROM service_nonces WHERE keyid = ? AND nonce = ?", (keyid, nonce)).fetchone()
            if row is not None and row[0] >= now:
                return False
            c.execute("INSERT OR REPLACE INTO service_nonces (keyid, nonce, expires) VALUES (?, ?, ?)", (keyid, nonce, expires))
        return True

    async def close(self) -> None:
        """Close the store's own connection to the file."""
        self._conn.close()


class PgNonces(PgStoreBase):
    """Pairs in PostgreSQL (normally the ledger's database): one unique key decides, across
    every service process."""

    _SCHEMA = """
CREATE TABLE IF NOT EXISTS service_nonces (
    keyid TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (keyid, nonce)
);
CREATE INDEX IF NOT EXISTS service_nonces_by_expiry ON service_nonces (expires)
"""

    _inserts = 0

    async def first_use(self, keyid: str, nonce: str, *, now: float, expires: float) -> bool:
        """Remember ``(keyid, nonce)`` until ``expires`` (epoch seconds) in one INSERT, whose unique key
        decides across every service process; False if the pair is there unexpired at ``now`` (an
        expired leftover is taken over). Every 256th call also deletes the expired pairs."""
        pool = await self.pool()
        self._inserts += 1
        if self._inserts % _PURGE_EVERY == 0:
            await pool.execute("DELETE FROM service_nonces WHERE expires < $1", now)
        # An expired leftover of the same pair (not purged yet) is taken over; a live one wins.
        row = await pool.fetchrow(
            "INSERT INTO service_nonces (keyid, nonce, expires) VALUES ($1, $2, $3) "
            "ON CONFLICT (keyid, nonce) DO UPDATE SET expires = EXCLUDED.expires "
            "WHERE service_nonces.expires < $4 RETURNING 1", keyid, nonce, expires, now)
        return row is not None


def nonces_for(location: str) -> NonceStore:
    """Where ``mpp ledger serve`` keeps nonces: beside the ledger at ``location`` (same file or database)."""
    if location.startswith(("postgresql://", "postgres://")):
        return PgNonces(location, max_size=4)
    return SqliteNonces(location)
