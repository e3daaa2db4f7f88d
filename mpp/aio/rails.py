"""Rails: a seller-side method plus its settlement. Settlement is idempotent by challenge id.

:class:`EmbeddedLedgerRail` (:mod:`mpp.engine.embedded_rail`) settles on a ledger this process
opens; :class:`HttpLedgerRail` (:mod:`mpp.aio.ledger_rail`) at the ledger service over HTTP.
"""

from mpp.aio.ledger_rail import HttpLedgerRail, LedgerUnavailable
from mpp.engine.embedded_rail import EmbeddedLedgerRail
from mpp.engine.rails import PaymentRail, Settlement

__all__ = ["Settlement", "PaymentRail", "EmbeddedLedgerRail", "HttpLedgerRail", "LedgerUnavailable"]
