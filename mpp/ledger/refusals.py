"""The ledger's refusals as the payment problems a buyer sees, the same whichever way a seller
reaches its ledger (in process, or the ledger service over HTTP)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from mpp.identity import BudgetExceeded, CurrencyNotAllowed, MandateRequired, MandateRevoked, OverCeiling
from mpp.intents.session import SessionClosed, SessionUnknown, VoucherInvalid
from mpp.ledger.core import (
    AuthorizationInvalid,
    BudgetExhausted,
    CapSignatureInvalid,
    InsufficientFunds,
    MandateRequired as MandateRequiredError,
    MandateRevokedError,
    OverMandate,
    SessionNotOpen,
    TransferConflict,
    UnauthorizedSigner,
    UnknownAccount,
    UnknownPayee,
    UnknownSession,
    WrongCurrency,
)
from mpp.protocol.errors import InvalidChallenge, PaymentInsufficient, SellerMisconfigured, VerificationFailed

__all__ = ["charge_refusals", "session_refusals", "seller_misconfigured", "RECIPIENT_FIX"]

log = logging.getLogger("mpp.seller")
RECIPIENT_FIX = ("create it with `mpp ledger account create {account} --currency CURRENCY --ledger LEDGER`, "
                 "or correct `recipient` or `ledger` in seller.toml")
"""The fix a seller's log names when its recipient account is missing (``str.format`` with account)."""


def seller_misconfigured(exc: UnknownPayee) -> SellerMisconfigured:
    """The seller's own account is not on its ledger (a missing recipient account, a mistyped or
    empty ledger): logged with the fix, answered as the seller's fault, not the buyer's (CORE-ERR-14)."""
    log.error("cannot take payment: %s; %s", exc, RECIPIENT_FIX.format(account="ACCOUNT"))
    return SellerMisconfigured("this seller cannot take payment right now: its own ledger account is missing "
                               "(a fault of its configuration, not of your payment); nothing was charged, "
                               "try again later")


def _payer_refusal(exc: UnknownAccount | UnauthorizedSigner | AuthorizationInvalid) -> VerificationFailed:
    """Who pays is refused: the detail says whether the account is missing, holds another currency,
    or the signer may not spend from it."""
    if isinstance(exc, WrongCurrency):
        return VerificationFailed(f"the payer account holds another currency than the quote: {exc}")
    if isinstance(exc, UnknownAccount):
        return VerificationFailed(f"the payer account is not on this seller's ledger: {exc}")
    return VerificationFailed(f"signer may not spend from that account: {exc}")


@contextmanager
def charge_refusals() -> Iterator[None]:
    """The ledger's refusals of a charge as the problems a buyer sees, whichever way the ledger is reached."""
    try:
        yield
    except MandateRequiredError as exc:
        raise MandateRequired(f"the ledger refuses: {exc}") from exc
    except OverMandate as exc:
        if exc.rule == "budget":  # the seller's own share, checked in its book (mpp.ledger.book)
            raise BudgetExceeded(str(exc), rule="budget") from exc
        problem = CurrencyNotAllowed if exc.rule == "currency" else OverCeiling
        raise problem(f"the ledger refuses: {exc}", rule=exc.rule) from exc
    except MandateRevokedError as exc:
        raise MandateRevoked("a mandate in the chain has been revoked") from exc
    except BudgetExhausted as exc:
        raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
    except InsufficientFunds as exc:
        raise PaymentInsufficient("payer account balance is too low for this charge") from exc
    except UnknownPayee as exc:
        raise seller_misconfigured(exc) from exc
    except (UnauthorizedSigner, UnknownAccount, AuthorizationInvalid) as exc:
        raise _payer_refusal(exc) from exc
    except TransferConflict as exc:
        raise InvalidChallenge("challenge id was already settled on other terms") from exc



@contextmanager
def session_refusals() -> Iterator[None]:
    """The ledger's refusals of a session open, top-up or close as the problems a buyer sees."""
    try:
        yield
    except MandateRequiredError as exc:
        raise MandateRequired(f"the ledger refuses: {exc}") from exc
    except OverMandate as exc:
        raise CurrencyNotAllowed(f"the ledger refuses: {exc}", rule=exc.rule) from exc
    except MandateRevokedError as exc:
        raise MandateRevoked("a mandate in the chain has been revoked") from exc
    except BudgetExhausted as exc:
        raise BudgetExceeded(f"the ledger refuses: {exc}", rule="budget") from exc
    except InsufficientFunds as exc:
        raise PaymentInsufficient("payer account balance is too low for this cap") from exc
    except UnknownPayee as exc:
        raise seller_misconfigured(exc) from exc
    except (UnauthorizedSigner, UnknownAccount) as exc:
        raise _payer_refusal(exc) from exc
    except CapSignatureInvalid as exc:
        raise VoucherInvalid("cap signature does not verify for the session's signer") from exc
    except TransferConflict as exc:
        raise InvalidChallenge("session was already opened or closed on other terms") from exc
    except SessionNotOpen as exc:
        raise SessionClosed("the session is closed") from exc
    except UnknownSession as exc:
        raise SessionUnknown("no such session on this ledger") from exc
