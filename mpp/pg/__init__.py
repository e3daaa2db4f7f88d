"""PostgreSQL implementations of the seller's stores (asyncpg): the same contracts as the SQLite
ones, for several seller processes sharing one database. Each store is built from an asyncpg
pool or a ``postgresql://`` URL; see :mod:`mpp.stores` to choose an engine by URL."""

from ._base import create_pool, is_postgres_url
from .payments import PgPaymentStore
from .sessions import PgSessionStore

__all__ = ["PgPaymentStore", "PgSessionStore", "create_pool", "is_postgres_url"]
