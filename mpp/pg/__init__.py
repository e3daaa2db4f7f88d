"""PostgreSQL implementations of the seller's stores, the ledger, the buyer's budget counters
and the audit log (asyncpg): the same
contracts as the SQLite ones, for several processes sharing one database. Each store is built
from an asyncpg pool or a ``postgresql://`` URL; see :mod:`mpp.stores` to choose an engine by URL."""

from ._base import create_pool, is_postgres_url
from .audit import PgAuditLog
from .budget import PgBudgetStore
from .doubt import PgDoubtJournal
from .ledger import PgLedger
from .payments import PgPaymentStore
from .sessions import PgSessionStore

__all__ = ["PgAuditLog", "PgBudgetStore", "PgDoubtJournal", "PgLedger", "PgPaymentStore", "PgSessionStore", "create_pool", "is_postgres_url"]
