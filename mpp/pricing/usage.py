"""The usage export (PRICE-USAGE-*): settled purchases as rows, per purchase or per group, with totals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

from mpp.pricing.periods import _rfc3339

__all__ = [
    "UsageRecord",
    "summarize_usage",
]


@dataclass(frozen=True)
class UsageRecord:
    """One settled purchase as the usage export lists it."""

    time: datetime
    agent: str
    principal: str | None
    route: str
    model: str
    offer: str
    price_list: str
    currency: str
    units: int
    amount: int
    refunded: int
    reference: str

    @property
    def net(self) -> int:
        """What the purchase brought in: ``amount`` minus ``refunded``, in base units."""
        return self.amount - self.refunded

    def row(self) -> dict[str, Any]:
        """The purchase as one row of the export (PRICE-USAGE-01): the time in RFC 3339, camelCase keys,
        amounts as decimal strings (PRICE-USAGE-03), an absent principal as the empty string."""
        return {"time": _rfc3339(self.time), "agent": self.agent, "principal": self.principal or "", "route": self.route,
                "model": self.model, "offer": self.offer, "priceList": self.price_list, "currency": self.currency,
                "units": self.units, "amount": str(self.amount), "refunded": str(self.refunded), "net": str(self.net),
                "reference": self.reference}


_GROUP_KEYS = {"agent": "agent", "principal": "principal", "route": "route", "model": "model"}


def summarize_usage(records: Iterable[UsageRecord], *, since: datetime, until: datetime,
                    by: str | None = None) -> dict[str, Any]:
    """Rows (per purchase, or per group with ``by``) and per-currency totals of [since, until)."""
    if by is not None and by not in _GROUP_KEYS:
        raise ValueError(f"--by must be one of {', '.join(_GROUP_KEYS)}")
    chosen = sorted((r for r in records if since <= r.time < until), key=lambda r: (r.time, r.reference))
    totals: dict[str, dict[str, int]] = {}
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for r in chosen:
        for bucket in (totals.setdefault(r.currency, {}),
                       groups.setdefault((getattr(r, _GROUP_KEYS[by]) or "" if by else "", r.currency), {})):
            for name, value in (("purchases", 1), ("units", r.units), ("amount", r.amount), ("refunded", r.refunded),
                                ("net", r.net)):
                bucket[name] = bucket.get(name, 0) + value
    def strings(sums: Mapping[str, int]) -> dict[str, Any]:
        return {k: (str(v) if k in ("amount", "refunded", "net") else v) for k, v in sums.items()}
    if by is None:
        rows = [r.row() for r in chosen]
    else:
        rows = [{by: key, "currency": currency, **strings(sums)} for (key, currency), sums in sorted(groups.items())]
    return {"since": _rfc3339(since), "until": _rfc3339(until), "by": by, "rows": rows,
            "totals": {currency: strings(sums) for currency, sums in sorted(totals.items())}}
