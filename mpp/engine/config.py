"""A seller's configuration, framework-neutral: who it is, its keys, rails, stores and prices.

Both adapters derive from it (``mpp.aio.Seller``, ``mpp.asgi.PaymentMiddleware``'s seller), so a
seller is configured the same way whichever framework serves it. Prices are set three ways: a
price list (spec/pricing.md), or per handler with the :meth:`SellerConfig.price` and
:meth:`SellerConfig.meter` decorators, or per route with the adapter's own route table.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Collection, Sequence, TypeVar

from mpp.engine.rails import PaymentRail
from mpp.identity import DEFAULT_MAX_DEPTH
from mpp.pricing import PriceList
from mpp.pricing.prices import Metered, Price
from mpp.protocol.keys import SigningKey
from mpp.stores.audit import AsyncAuditLog, AuditLog
from mpp.stores.payments import PaymentStore
from mpp.stores.pricing import PricingStore
from mpp.stores.sessions import SessionStore

__all__ = ["SellerConfig", "PRICE_ATTR", "price_of", "with_price"]

PRICE_ATTR = "__mpp_price__"
"""Where the decorators leave a handler's price."""
H = TypeVar("H")


def price_of(handler: Any) -> Price | Metered | None:
    """The price a decorator put on ``handler``, if any."""
    return getattr(handler, PRICE_ATTR, None)


def with_price(handler: H, price: Price | Metered | None) -> H:
    """``handler`` priced at ``price`` (left as it is for None), as a new function: one handler may
    serve several routes at different prices. The decorators' effect, as a call."""
    if price is None:
        return handler
    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)  # type: ignore[arg-type]
        async def priced(*args: Any, **kwargs: Any) -> Any:
            return await handler(*args, **kwargs)  # type: ignore[operator]
    else:
        @functools.wraps(handler)  # type: ignore[arg-type]
        def priced(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, **kwargs)  # type: ignore[operator]
    return _marker(price)(priced)  # type: ignore[return-value]


@dataclass
class SellerConfig:
    """Everything a seller is configured with; the engine reads it live (``price_list`` may be
    replaced while serving)."""

    realm: str
    secret: bytes
    receipt_key: SigningKey
    rails: Sequence[PaymentRail]
    store: PaymentStore
    challenge_ttl: timedelta = timedelta(minutes=5)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    """The seller's time, by which challenges are issued and expire, mandates, approvals and grants are
    judged and receipts dated: a callable returning an aware ``datetime``; default: the system clock, in UTC."""
    title: str = "MPP seller"
    previous_receipt_keys: Sequence[SigningKey] = ()
    trusted_principals: Collection[str] = ()  # root mandate issuers this seller accepts
    max_chain_depth: int = DEFAULT_MAX_DEPTH
    audit: AsyncAuditLog | AuditLog | None = None  # any engine (mpp.connect.audit_log_for), or a SQLite AuditLog
    session_store: SessionStore | None = None  # required by metered (per-unit) routes
    session_sweep_interval: float = 1.0  # how often idle sessions are looked for and closed
    price_list: PriceList | None = None  # spec/pricing.md: prices as data; replace it with reload_prices
    pricing_store: PricingStore | None = None  # task states and paid seat periods: required by task and seat offers

    def price(self, amount: int, currency: str, description: str | None = None, *,
              require_identity: bool = False) -> Callable[[H], H]:
        """Decorator: this handler costs ``amount`` base units of ``currency`` per request;
        with ``require_identity`` only agents presenting a mandate chain may buy it."""
        return _marker(Price(amount, currency, description, require_identity), getattr(self, "guard", None))

    def meter(self, unit: str, price: int, currency: str, *, per: int = 1, max_units: int = 1,
              description: str | None = None, require_identity: bool = False, stream: bool = False,
              suggested_cap: int | None = None, idle_timeout: int = 300,
              charge_amount: int | None = None) -> Callable[[H], H]:
        """Decorator: this handler is priced per unit (``price`` base units per ``per`` units of
        ``unit``), paid through a session; a per-request ``charge`` is offered beside it."""
        return _marker(Metered(unit, price, currency, per, max_units, description, require_identity, stream,
                               suggested_cap, idle_timeout, charge_amount), getattr(self, "guard", None))


def _marker(price: Price | Metered, guard: Callable[[Any], Any] | None = None) -> Callable[[H], H]:
    """The decorator that leaves ``price`` on a handler, wrapped first by the adapter's ``guard``
    (an adapter's seller sets ``self.guard``: a priced handler outside its middleware refuses,
    mpp.engine.guard), if any."""
    def mark(handler: H) -> H:
        if guard is not None:
            handler = guard(handler)
        setattr(handler, PRICE_ATTR, price)
        return handler

    return mark
