"""The ``ledger`` method settled by this process on a ledger it opens (SQLite, or PostgreSQL
shared by several seller processes): the rail both adapters use for an embedded ledger."""

from __future__ import annotations

import inspect
import logging
import sys
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from mpp.engine.core import Verified
from mpp.engine.rails import Settlement
from mpp.intents.session import SessionTerms, Voucher
from mpp.ledger import MandateCharge, SessionClose, SessionHold, SqliteLedger, UnknownAccount
from mpp.ledger.core import UnknownPayee
from mpp.ledger.api import AsyncLedger, as_async_ledger
from mpp.ledger.book import Purchase, SqliteBook
from mpp.ledger.refusals import RECIPIENT_FIX, charge_refusals, seller_misconfigured, session_refusals
from mpp.methods.ledger import LedgerAuthorization, LedgerSellerMethod

__all__ = ["EmbeddedLedgerRail"]

log = logging.getLogger("mpp.seller")


class EmbeddedLedgerRail(LedgerSellerMethod):
    """The ``ledger`` method settled by this process on the ledger's own database: a SqliteLedger
    (each call inline, one short transaction) or any AsyncLedger, e.g. :class:`mpp.stores.pg.PgLedger`
    shared by several seller processes. An async ledger's id is learnt in :meth:`start` (or
    :meth:`lifecycle` in ``app.cleanup_ctx``), before the first challenge names it."""

    def __init__(self, ledger: SqliteLedger | AsyncLedger, *, recipient: str) -> None:
        super().__init__(recipient=recipient, ledger_id=ledger.ledger_id if isinstance(ledger, SqliteLedger) else "")
        self.ledger = ledger
        self._ledger: AsyncLedger = as_async_ledger(ledger)
        self._recipient_seen = False  # the recipient account was found on the ledger once
        self._recipient_reported = False

    async def start(self) -> None:
        """Open the ledger and learn its id; a recipient account the ledger lacks is logged as an
        error naming the fix (every purchase would be refused until it exists, CORE-ERR-14)."""
        await self._ledger.open()
        self.ledger_id = self._ledger.ledger_id
        await self.report_missing_recipient()

    async def report_missing_recipient(self) -> None:
        """Log (once) an error naming the fix if the recipient account is not on the ledger."""
        if self._recipient_reported or await self.recipient_exists():
            return
        self._recipient_reported = True
        log.error("the recipient account %r is not on the seller's ledger: no purchase can be paid until it "
                  "exists; %s", self.recipient, RECIPIENT_FIX.format(account=self.recipient))

    async def recipient_exists(self) -> bool:
        """Is the recipient account on the ledger? Asked until the answer is yes, then remembered."""
        if not self._recipient_seen:
            try:
                await self._ledger.account(self.recipient)
            except UnknownAccount:
                return False
            self._recipient_seen = True
        return True

    async def lifecycle(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the ledger opened before the seller serves, closed after."""
        await self.start()
        yield
        await self._ledger.close()

    def book_with(self, store: Any, audit: Any) -> Any:
        """One transaction per purchase: a book when the payment store (and the audit log, if any)
        are kept in this ledger's database: SQLite (``SqlitePaymentStore.beside(ledger)``:
        :class:`mpp.ledger.book.SqliteBook`) or PostgreSQL (the same pool or URL:
        :class:`mpp.ledger.pg.PgPurchaseBook`, one round trip); else None."""
        if "mpp.ledger.pg" in sys.modules:  # a PgLedger exists only once its module is imported
            from mpp.ledger.pg import PgPurchaseBook

            if PgPurchaseBook.fits(self.ledger, store, audit):
                return PgPurchaseBook(self.ledger, store, audit)  # type: ignore[arg-type]
        audit = getattr(audit, "sync", audit)  # an AsyncSqliteAuditLog: the AuditLog it wraps
        ledger = getattr(self.ledger, "sync", self.ledger)  # an AsyncSqliteLedger: the SqliteLedger it wraps
        return SqliteBook(ledger, store, audit) if SqliteBook.fits(ledger, store, audit) else None

    async def purchase(self, book: Any, purchase: Purchase) -> bool:
        """The book's ``purchase`` (awaited, for a PostgreSQL book), its refusals as the problems a buyer sees."""
        with charge_refusals():
            claimed = book.purchase(purchase)
            return await claimed if inspect.isawaitable(claimed) else claimed

    async def refund_purchase(self, book: Any, challenge_id: str, why: str,
                              audit: tuple[tuple[str, dict[str, Any]], ...]) -> None:
        """The book's ``refund``: a booked purchase undone in one transaction."""
        done = book.refund(challenge_id, why, audit)
        if inspect.isawaitable(done):
            await done

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Make the transfer on the ledger, at most once per challenge id (its transfer id, LEDGER-12), under
        ``mandate`` when given (the ledger checks the chain's revocations and budgets in the same operation,
        IDENT-BUD-05); the settlement. A refusal is raised as the problem a buyer sees (mpp.ledger.refusals:
        PaymentInsufficient, BudgetExceeded, SellerMisconfigured for a missing payee account, among others)."""
        auth: LedgerAuthorization = verified.proof
        with charge_refusals():
            transfer = await self._ledger.transfer(
                verified.challenge_id,
                payer=auth.account,
                payee=auth.recipient,
                amount=auth.amount,
                currency=auth.currency,
                signer=auth.signer,
                mandate=mandate,
            )
        settled = datetime.strptime(transfer.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Settlement(reference=transfer.id, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        """Move the transfer ``settlement.reference`` back to the payer, at most once (``refund:<id>``,
        LEDGER-15); the ledger's errors (LedgerError) propagate."""
        await self._ledger.refund(settlement.reference)

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandates (by key, ``issuer#jti``, as
        :attr:`~mpp.identity.mandates.MandateChain.keys` gives them) the ledger has recorded as revoked; read
        on every request, never cached (IDENT-REV-03)."""
        return await self._ledger.keys.revoked(jtis)

    async def precheck(self, verified: Verified, chain: tuple[str, ...] | None) -> None:
        """Before the challenge is consumed: the seller's own account exists (else the seller's
        fault, CORE-ERR-14), then the payer may spend (LEDGER-ACCT-05)."""
        auth: LedgerAuthorization = verified.proof
        if not await self.recipient_exists():
            raise seller_misconfigured(UnknownPayee(f"no payee account {self.recipient!r} on this ledger"))
        await self.check_payer(auth.account, auth.signer, chain)

    async def check_payer(self, payer: str, signer: str, chain: tuple[str, ...] | None) -> None:
        """LEDGER-ACCT-05: may ``signer`` spend from ``payer`` (bare, or under a chain of these DIDs)?"""
        with charge_refusals():
            await self._ledger.keys.spend_check(payer, signer=signer, chain=chain)

    # -- the session intent: hold at open, capture and release at close ------------------

    async def open_session(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                           mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session, once per session id (the challenge id)."""
        with session_refusals():
            return await self._ledger.sessions.open(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature,
                                                   mandate=mandate)

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` in total; a lower or equal cap changes nothing."""
        with session_refusals():
            return await self._ledger.sessions.top_up(session_id, cap=cap, cap_signature=cap_signature)

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture what was used and release the rest. A capture the voucher does not cover raises
        CaptureRefused (a LedgerError: the seller's own bug, not the buyer's)."""
        with session_refusals():
            return await self._ledger.sessions.close(session_id, capture=capture, voucher=voucher)
