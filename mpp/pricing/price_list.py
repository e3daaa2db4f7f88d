"""A loaded price list: its routes, each with its offers, and the error that refuses a list."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpp.pricing.offers import Offer, TransactionOffer, UnitOffer
from mpp.pricing.prices import Metered, Price
from mpp.pricing.routes import match_template
from mpp.pricing.tasks import TaskOffer

__all__ = [
    "Route",
    "PriceList",
    "PriceListError",
]


@dataclass(frozen=True)
class Route:
    """One priced route (method and path template) and its offers."""

    method: str
    path: str
    description: str | None
    require_identity: bool
    offers: tuple[Offer, ...]

    @property
    def route(self) -> str:
        """The route string, ``METHOD /path/{param}``, by which grants and offers name the route."""
        return f"{self.method} {self.path}"

    @property
    def literal(self) -> bool:
        """True when the path has no ``{param}`` segment: a literal route is chosen before a template
        (PRICE-LIST-04)."""
        return "{" not in self.path

    def price(self) -> Price | Metered:
        """Today's single price for this route: the unit offer (with the transaction offer as its
        charge, PRICE-MODEL-02), else the first charge-quoted offer. For the existing seller."""
        unit = next((o for o in self.offers if isinstance(o, UnitOffer)), None)
        charge = next((o for o in self.offers if isinstance(o, TransactionOffer)), None)
        if unit is not None:
            return unit.to_metered(require_identity=self.require_identity, charge_amount=charge.amount if charge else None)
        return self.offers[0].to_price(require_identity=self.require_identity)


@dataclass(frozen=True)
class PriceList:
    """A validated price list: its version and routes, the text's source and fingerprint."""

    version: str
    routes: tuple[Route, ...]
    source: str
    fingerprint: str = field(repr=False, default="")  # SHA-256 of the validated content (check_reload)
    version_line: int = field(repr=False, default=1)

    def route_for(self, method: str, path: str) -> Route | None:
        """The route pricing (method, path): literal routes before templates (PRICE-LIST-04)."""
        method = method.upper()
        candidates = [r for r in self.routes if r.method == method and match_template(r.path, path) is not None]
        candidates.sort(key=lambda r: not r.literal)
        return candidates[0] if candidates else None

    def offers_for(self, method: str, path: str) -> tuple[Offer, ...]:
        """The offers of the route pricing (method, path) (:meth:`route_for`); empty when the list does not
        price it."""
        route = self.route_for(method, path)
        return route.offers if route else ()

    def offer(self, route: str, offer_id: str) -> Offer | None:
        """The offer ``offer_id`` of the route whose route string is ``route``; None when the list has no
        such route or offer."""
        for r in self.routes:
            if r.route == route:
                return next((o for o in r.offers if o.id == offer_id), None)
        return None

    def follow_up_for(self, method: str, path: str) -> tuple[TaskOffer, str] | None:
        """(task offer, task id) when (method, path) is a task follow-up (PRICE-TASK-03)."""
        for r in self.routes:
            for o in r.offers:
                if isinstance(o, TaskOffer):
                    task = o.follow_up_task(method, path)
                    if task is not None:
                        return o, task
        return None


class PriceListError(ValueError):
    """The price list is refused; ``str()`` is ``source:LINE: problem`` for each mistake, joined by '; '.

    ``errors`` lists (line, problem) in line order; ``line`` is the first.
    """

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = sorted(errors)
        self.line = self.errors[0][0]
        super().__init__("; ".join(f"{source}:{line}: {problem}" for line, problem in self.errors))
