"""What every PostgreSQL store here shares: an asyncpg pool (given, or made from a URL on first
use), its schema created once under an advisory lock, and timestamps stored the SQLite way."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import asyncpg

__all__ = ["PgStoreBase", "is_postgres_url", "create_pool", "release_as_is", "rows_changed", "same_database", "stamp"]


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """An asyncpg pool. ``reset=release_as_is`` for a pool only these stores use (see there)."""
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, **kwargs)


async def release_as_is(conn: asyncpg.Connection) -> None:
    """A pool's ``reset``: a connection goes back to the pool without asyncpg's reset query
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), one round trip less per
    acquire. asyncpg still rolls back a transaction left open and drops listeners before calling
    this. Safe only for a pool whose users leave no session state on a connection, as the stores
    and the ledger here do: every lock they take is transaction-scoped (``pg_advisory_xact_lock``,
    row and table locks), every cursor lives inside a transaction, and none of them LISTENs, SETs
    a setting or makes a temporary table or prepared statement by SQL. A pool the caller passes
    in is used as the caller made it."""
    return None


def rows_changed(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 1", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


def stamp(when: datetime) -> datetime:
    """Times are kept to the second in UTC, as the SQLite stores keep them (RFC 3339 text),
    so comparisons and idle timeouts come out the same on both."""
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(timezone.utc).replace(microsecond=0)


def same_database(one: "PgStoreBase", other: "PgStoreBase") -> bool:
    """Whether two stores are kept in one database, as far as can be told before either is open:
    both built on the one pool, or from the same URL text (two spellings of one database count as
    two: what shares a database is configured with one URL)."""
    if one._url is not None:
        return one._url == other._url
    return one._pool is not None and one._pool is other._pool


class PgStoreBase:
    """Built from an asyncpg pool (the caller owns it) or a ``postgresql://`` URL (the store
    makes a pool on :meth:`open`, or on first use, and closes it in :meth:`close`)."""

    _SCHEMA: str = ""
    _LOCK_NAME: str = "mpp.schema"

    def __init__(self, pool: asyncpg.Pool | str, *, min_size: int = 1, max_size: int = 10) -> None:
        if isinstance(pool, str):
            if not is_postgres_url(pool):
                raise ValueError(f"not a PostgreSQL URL: {pool!r}")
            self._url: str | None = pool
            self._pool: asyncpg.Pool | None = None
        else:
            self._url, self._pool = None, pool
        self._owns_pool = self._url is not None
        self._pool_size = (min_size, max_size)
        self._ready = False
        self._opening: asyncio.Lock | None = None

    @classmethod
    async def connect(cls, pool: asyncpg.Pool | str, **kwargs: Any):
        """A store that is open: pool made and schema in place."""
        store = cls(pool, **kwargs)
        await store.open()
        return store

    async def open(self):
        """Make the pool (when built from a URL) and create the tables if missing. Idempotent."""
        if self._ready:
            return self
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self._ready:
                if self._pool is None:
                    assert self._url is not None
                    self._pool = await create_pool(self._url, min_size=self._pool_size[0], max_size=self._pool_size[1],
                                                   reset=release_as_is)  # ours alone: no session state is left on it
                async with self._pool.acquire() as conn, conn.transaction():
                    # Several processes may start at once: CREATE TABLE IF NOT EXISTS is not safe
                    # against itself in PostgreSQL, so schema creation takes turns.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._LOCK_NAME)
                    await conn.execute(self._SCHEMA)
                self._ready = True
        return self

    async def pool(self) -> asyncpg.Pool:
        if not self._ready:
            await self.open()
        assert self._pool is not None
        return self._pool

    async def close(self) -> None:
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            self._ready = False
            await pool.close()
