"""Seat periods (PRICE-SEAT-02) and the times pricing writes: UTC instants in RFC 3339, counted from an
anchor."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone

__all__ = [
    "PERIOD_UNITS",
    "DEFAULT_ANCHOR",
    "period_index",
    "period_bounds",
]

PERIOD_UNITS = ("hour", "day", "week", "month", "year")
"""The units a seat's period may be counted in."""
DEFAULT_ANCHOR = datetime(2001, 1, 1, tzinfo=timezone.utc)
"""A Monday, 1 January: days, weeks, months, years align."""
_FIXED_SECONDS = {"hour": 3600, "day": 86400, "week": 604800}


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return t.astimezone(timezone.utc)


def _epoch(t: datetime) -> int:
    return int(_utc(t).timestamp())


def _parse_anchor(value: str) -> datetime:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", value):
        raise ValueError(f"anchor {value!r} must be an RFC 3339 UTC instant such as '2025-01-01T00:00:00Z'")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"anchor {value!r} is not a real date and time") from None


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole calendar months, its day clamped to the month's last day;
    always computed from the anchor, so a 31st stays a 31st where the month has one."""
    years, month0 = divmod(anchor.month - 1 + months, 12)
    year = anchor.year + years
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def _check_period(unit: str, count: int) -> None:
    if unit not in PERIOD_UNITS:
        raise ValueError(f"period unit must be one of {', '.join(PERIOD_UNITS)}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("period count must be a positive integer")


def _period_start(anchor: datetime, index: int, unit: str, count: int) -> datetime:
    if unit in _FIXED_SECONDS:
        return anchor + timedelta(seconds=index * count * _FIXED_SECONDS[unit])
    return _add_months(anchor, index * count * (12 if unit == "year" else 1))


def period_index(anchor: datetime, now: datetime, unit: str, count: int = 1) -> int:
    """The index k of the period holding ``now``: start(k) <= now < start(k + 1); negative before the anchor."""
    _check_period(unit, count)
    anchor, now = _utc(anchor), _utc(now)
    if unit in _FIXED_SECONDS:
        return (now - anchor) // timedelta(seconds=count * _FIXED_SECONDS[unit])
    months = count * (12 if unit == "year" else 1)
    k = ((now.year - anchor.year) * 12 + now.month - anchor.month) // months
    while _period_start(anchor, k + 1, unit, count) <= now:
        k += 1
    while _period_start(anchor, k, unit, count) > now:
        k -= 1
    return k


def period_bounds(anchor: datetime, index: int, unit: str, count: int = 1) -> tuple[datetime, datetime]:
    """[start, end) of period ``index``."""
    _check_period(unit, count)
    anchor = _utc(anchor)
    return _period_start(anchor, index, unit, count), _period_start(anchor, index + 1, unit, count)
