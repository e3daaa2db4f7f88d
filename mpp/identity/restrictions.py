"""What a mandate chain allows of pricing (PRICE-MDT-01, -03): its ``models`` and ``max_unit_price``
claims, intersected over the links. Mandates check these claims when they are issued and read;
pricing refuses the offers they exclude."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping

__all__ = [
    "MODELS",
    "MandateRestrictions",
    "restrictions_from_claims",
]

MODELS = ("transaction", "unit", "task", "seat")
"""The pricing models a mandate's `models` restriction may name."""


@dataclass(frozen=True)
class MandateRestrictions:
    """What a chain allows: ``models`` None = all; ``max_unit_price`` None = no limit."""

    models: frozenset[str] | None = None
    max_unit_price: Fraction | None = None


def _unit_price_limit(value: Any) -> Fraction:
    if (not isinstance(value, dict) or set(value) - {"amount", "per"} or "amount" not in value
            or any(type(value.get(k, 1)) is not int for k in ("amount", "per"))
            or value["amount"] < 0 or value.get("per", 1) < 1):
        raise ValueError("max_unit_price must be {\"amount\": integer >= 0, \"per\": integer >= 1}")
    return Fraction(value["amount"], value.get("per", 1))


def restrictions_from_claims(links: Iterable[Mapping[str, Any]]) -> MandateRestrictions:
    """The intersection over a chain's links of their ``models`` and ``max_unit_price`` claims
    (PRICE-MDT-01); a malformed claim raises ValueError (PRICE-MDT-03: mandate-invalid)."""
    models: frozenset[str] | None = None
    limit: Fraction | None = None
    for claims in links:
        if "models" in claims:
            value = claims["models"]
            if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
                    or any(not isinstance(m, str) or m not in MODELS for m in value)):
                raise ValueError(f"models must be a non-empty array of distinct names among {', '.join(MODELS)}")
            models = frozenset(value) if models is None else models & frozenset(value)
        if "max_unit_price" in claims:
            price = _unit_price_limit(claims["max_unit_price"])
            limit = price if limit is None else min(limit, price)
    return MandateRestrictions(models, limit)
