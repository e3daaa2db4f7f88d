"""What every PostgreSQL store here shares: an asyncpg pool (given, or made from a URL on first
use), its schema created once under an advisory lock, and timestamps stored the SQLite way."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import asyncpg

__all__ = ["PgStoreBase", "is_postgres_url", "create_pool", "rows_changed", "stamp"]


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, **kwargs)


def rows_changed(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 1", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


def stamp(when: datetime) -> datetime:
    """Times are kept to the second in UTC, as the SQLite stores keep them (RFC 3339 text),
    so comparisons and idle timeouts come out the same on both."""
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(timezone.utc).replace(microsecond=0)


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
                    self._pool = await create_pool(self._url, min_size=self._pool_size[0], max_size=self._pool_size[1])
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
