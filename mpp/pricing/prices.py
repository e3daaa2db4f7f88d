"""What a route costs: a price per request, or a price per unit of usage paid through a session."""

from __future__ import annotations

from dataclasses import dataclass

from mpp.intents.session import cost_of
from mpp.protocol.models import MAX_AMOUNT, PRICE_CURRENCY

__all__ = ["Price", "Metered"]


@dataclass(frozen=True)
class Price:
    """What a route costs per request: integer base units, a currency (a code such as ``usd``, or a
    token's address on a method that pays in tokens, ``evm``), a description."""

    amount: int
    currency: str
    description: str | None = None
    require_identity: bool = False  # the identity extension (mandate chain + proof) is mandatory here

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool) or not 0 < self.amount <= MAX_AMOUNT:
            raise ValueError(f"price amount must be an integer of base units from 1 to {MAX_AMOUNT}")
        if not isinstance(self.currency, str) or PRICE_CURRENCY.fullmatch(self.currency) is None:
            raise ValueError("currency must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32) "
                             "or a token's address (0x and 40 hex digits)")


@dataclass(frozen=True)
class Metered:
    """A route priced per unit of usage (intent ``session``), e.g. 2 base units per 1000 tokens.

    ``max_units`` is the most one non-streaming request may use: that much is reserved from
    the session before the handler runs, and it prices the ``charge`` offered alongside for
    buyers without sessions (``charge_amount`` overrides that price). A streaming route is
    charged chunk by chunk instead, and asks for the next voucher in-band.
    """

    unit: str
    price: int
    currency: str
    per: int = 1
    max_units: int = 1
    description: str | None = None
    require_identity: bool = False
    stream: bool = False
    suggested_cap: int | None = None
    idle_timeout: int = 300
    charge_amount: int | None = None

    def __post_init__(self) -> None:
        Price(self.price, self.currency)  # same rules for the unit price and the currency
        for name in ("per", "max_units", "idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_AMOUNT:
                raise ValueError(f"{name} must be a positive integer")
        if not isinstance(self.unit, str) or not self.unit or len(self.unit) > 64 or not self.unit.isprintable():
            raise ValueError("unit must be a short printable name such as 'token'")
        if self.suggested_cap is not None and self.suggested_cap < self.max_request_cost:
            raise ValueError("suggested_cap must cover at least one request (the cost of max_units)")

    @property
    def max_request_cost(self) -> int:
        """The most one non-streaming request may cost: cost(``max_units``), in base units; what is reserved
        from the session before the handler runs (SESSION-USE-01)."""
        return cost_of(self.max_units, self.price, self.per)

    @property
    def cap_hint(self) -> int:
        """The cap suggested to buyers (``suggestedCap``), in base units: ``suggested_cap``, or 100 requests'
        worth (100 × :attr:`max_request_cost`)."""
        return self.suggested_cap or self.max_request_cost * 100

    def charge_price(self) -> Price:
        """The per-request ``charge`` offered beside the session (SESSION-REQ-05)."""
        return Price(self.charge_amount or self.max_request_cost, self.currency, self.description, self.require_identity)

    def cost(self, units: int) -> int:
        """What ``units`` cost at this price, rounded up to a whole base unit (SESSION-REQ-03)."""
        return cost_of(units, self.price, self.per)
