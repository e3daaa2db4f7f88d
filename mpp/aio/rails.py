"""Rails: a seller-side method plus its settlement. Settlement is idempotent by challenge id."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Protocol

from ..errors import InvalidChallenge, PaymentInsufficient, VerificationFailed
from ..identity import BudgetExceeded, MandateRevoked
from ..ledger import (
    BudgetExhausted,
    CapSignatureInvalid,
    InsufficientFunds,
    MandateCharge,
    MandateRevokedError,
    SessionClose,
    SessionHold,
    SessionNotOpen,
    SqliteLedger,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownSession,
)
from ..methods import SellerMethod
from ..methods.ledger import LedgerAuthorization, LedgerSellerMethod
from ..seller_core import Verified
from ..session_core import SessionClosed, SessionTerms, SessionUnknown, Voucher, VoucherInvalid

__all__ = ["Settlement", "PaymentRail", "EmbeddedLedgerRail"]


@dataclass(frozen=True)
class Settlement:
    reference: str
    settled_at: datetime
    payer: str | None = None


class PaymentRail(SellerMethod, Protocol):
    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        """Move the money, at most once per challenge id; with ``mandate``, within its budgets
        and only if no link is revoked. Raise a PaymentProblem to refuse."""

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        """Which of these mandate ids the rail knows to be revoked."""

    async def refund(self, settlement: Settlement) -> None:
        """Give the money back (the seller could not deliver). Idempotent."""


class EmbeddedLedgerRail(LedgerSellerMethod):
    """The ``ledger`` method settled on a ledger in this process (SQLite)."""

    def __init__(self, ledger: SqliteLedger, *, recipient: str) -> None:
        super().__init__(recipient=recipient, ledger_id=ledger.ledger_id)
        self.ledger = ledger

    async def settle(self, verified: Verified, mandate: MandateCharge | None = None) -> Settlement:
        auth: LedgerAuthorization = verified.proof
        try:
            transfer = self.ledger.transfer(
                verified.challenge_id,
                payer=auth.account,
                payee=auth.recipient,
                amount=auth.amount,
                currency=auth.currency,
                signer=auth.signer,
                mandate=mandate,
            )
        except MandateRevokedError as exc:
            raise MandateRevoked("a mandate in the chain has been revoked") from exc
        except BudgetExhausted as exc:
            raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
        except InsufficientFunds as exc:
            raise PaymentInsufficient("payer account balance is too low for this charge") from exc
        except (UnauthorizedSigner, UnknownAccount) as exc:
            raise VerificationFailed("signer may not spend from that account") from exc
        except TransferConflict as exc:
            raise InvalidChallenge("challenge id was already settled on other terms") from exc
        settled = datetime.strptime(transfer.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Settlement(reference=transfer.id, settled_at=settled, payer=auth.account)

    async def refund(self, settlement: Settlement) -> None:
        self.ledger.refund(settlement.reference)

    async def revoked(self, jtis: tuple[str, ...]) -> set[str]:
        return self.ledger.revoked(jtis)

    # -- the session intent: hold at open, capture and release at close ------------------

    async def open_session(self, terms: SessionTerms, *, payer: str, signer: str, cap: int, cap_signature: str,
                           mandate: MandateCharge | None = None) -> SessionHold:
        """Hold ``cap`` from ``payer`` for the session, once per session id (the challenge id)."""
        with self._session_problems():
            return self.ledger.open_session(terms, payer=payer, signer=signer, cap=cap, cap_signature=cap_signature,
                                            mandate=mandate)

    async def top_up_session(self, session_id: str, *, cap: int, cap_signature: str) -> SessionHold:
        """Raise the session's cap to ``cap`` in total; a lower or equal cap changes nothing."""
        with self._session_problems():
            return self.ledger.top_up_session(session_id, cap=cap, cap_signature=cap_signature)

    async def close_session(self, session_id: str, *, capture: int, voucher: Voucher | None) -> SessionClose:
        """Capture what was used and release the rest. A capture the voucher does not cover raises
        CaptureRefused (a LedgerError: the seller's own bug, not the buyer's)."""
        with self._session_problems():
            return self.ledger.close_session(session_id, capture=capture, voucher=voucher)

    @staticmethod
    @contextmanager
    def _session_problems() -> Iterator[None]:
        """The ledger's session refusals as the problems a buyer sees (as settle() maps charges)."""
        try:
            yield
        except MandateRevokedError as exc:
            raise MandateRevoked("a mandate in the chain has been revoked") from exc
        except BudgetExhausted as exc:
            raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
        except InsufficientFunds as exc:
            raise PaymentInsufficient("payer account balance is too low for this cap") from exc
        except (UnauthorizedSigner, UnknownAccount) as exc:
            raise VerificationFailed("signer may not spend from that account") from exc
        except CapSignatureInvalid as exc:
            raise VoucherInvalid("cap signature does not verify for the session's signer") from exc
        except TransferConflict as exc:
            raise InvalidChallenge("session was already opened or closed on other terms") from exc
        except SessionNotOpen as exc:
            raise SessionClosed("the session is closed") from exc
        except UnknownSession as exc:
            raise SessionUnknown("no such session on this ledger") from exc
