"""Fail closed: a priced handler that runs without the payment middleware refuses, never serves free.

The price decorators (:meth:`SellerConfig.price`, :meth:`SellerConfig.meter`) and the adapters'
route tables wrap a priced handler in a guard. The adapters' middleware marks the requests it
handles (:func:`entered`); a guarded handler reached by a request the middleware never saw (the
seller forgot ``seller.setup(app)``, or mounted the handler on another application) answers a
503 ``seller-misconfigured`` problem and logs once per seller why (issue 17, finding 1).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from typing import Any

from mpp.protocol.errors import SellerMisconfigured

__all__ = ["entered", "left", "mounted", "unmounted_problem", "report_unmounted", "RETRY_AFTER"]

log = logging.getLogger("mpp.seller")
_MIDDLEWARE: ContextVar[bool] = ContextVar("mpp_payment_middleware", default=False)
RETRY_AFTER = "60"
"""Seconds a buyer should wait before trying a misconfigured seller again (the 503's Retry-After)."""
UNMOUNTED_FIX = ("a priced handler ran without the payment middleware: call seller.setup(app) on the "
                 "application that serves it (nothing was served)")


def entered() -> Token[bool]:
    """The payment middleware took this request: priced handlers below it may run."""
    return _MIDDLEWARE.set(True)


def left(token: Token[bool]) -> None:
    """The payment middleware is done with the request."""
    _MIDDLEWARE.reset(token)


def mounted() -> bool:
    """True while a request runs under a seller's payment middleware."""
    return _MIDDLEWARE.get()


def unmounted_problem() -> dict[str, Any]:
    """The problem document a guarded handler answers when it runs without the middleware."""
    return SellerMisconfigured("this seller cannot take payment right now (it is misconfigured); "
                               "nothing was charged").to_problem()


def report_unmounted(seller: Any, handler: Any) -> None:
    """Log, once per seller, that a priced handler ran without the middleware and how to fix it."""
    if getattr(seller, "_reported_unmounted", False):
        return
    seller._reported_unmounted = True
    name = getattr(handler, "__qualname__", repr(handler))
    log.error("%s (handler %s)", UNMOUNTED_FIX, name)
