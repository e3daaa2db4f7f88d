"""PostgreSQL implementations of the seller's stores, the buyer's budget counters
and the audit log (asyncpg): the same
contracts as the SQLite ones, for several processes sharing one database. Each store is built
from an asyncpg pool or a ``postgresql://`` URL; see :mod:`mpp.connect` to choose an engine by URL.
The ledger's PostgreSQL implementation is :class:`mpp.ledger.pg.PgLedger`."""

from mpp.stores.pg._base import create_pool, is_postgres_url
from mpp.stores.pg.audit import PgAuditLog
from mpp.stores.pg.budget import PgBudgetStore
from mpp.stores.pg.doubt import PgDoubtJournal
from mpp.stores.pg.payments import PgPaymentStore
from mpp.stores.pg.sessions import PgSessionStore

__all__ = ["PgAuditLog", "PgBudgetStore", "PgDoubtJournal", "PgPaymentStore", "PgSessionStore", "create_pool", "is_postgres_url"]
