"""Usage and revenue export (spec/pricing.md §8): what the seller sold in a window, from its own
records, and the check that it equals what the ledger moved to the seller's account.

Purchases come from two stores of either engine (they are passed in; opening them is the
caller's business): settled charges from the payment store, one purchase per challenge, at the
settlement time its receipt names (the ledger transfer's own time); and metered sessions from the
session store, at their close (when the capture is made), one purchase per route the session
was used on. A refund counts in the window it was made in, as the ledger counts it. Receipts
are read defensively: a receipt without ``pricing``/``priceList``/``model``
(from before price lists) is a ``transaction`` for a charge, ``unit`` for a session, price list
null.

The functions are coroutines because the stores are; nothing here needs an event loop of its own.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Protocol, Sequence

from mpp.protocol.wire import decode_jws
from mpp.protocol.errors import ParseError
from mpp.protocol.headers import parse_receipt
from mpp.ledger.core import Transfer
from mpp.protocol.models import parse_rfc3339
from mpp.pricing import UsageRecord, summarize_usage
from mpp.stores.sessions import ClosedSession
from mpp.stores.payments import SettledPayment

__all__ = [
    "GROUP_BY",
    "parse_time",
    "charge_records",
    "session_records",
    "read_usage",
    "build_report",
    "ledger_transfers",
    "ledger_net",
    "reconcile",
    "format_csv",
    "format_table",
]

GROUP_BY = ("agent", "principal", "route", "model")
"""What `mpp seller usage --by` may group sales by."""
INTENT_MODELS = {"charge": "transaction", "session": "unit", "subscription": "seat"}
_RELATIVE = re.compile(r"([0-9]{1,9})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
SETTLED_KINDS = ("charge", "capture")  # ledger transfers that pay the seller; "refund" ones pay back


class PaymentReader(Protocol):
    async def settled_between(self, since: datetime, until: datetime) -> list[SettledPayment]: ...


class SessionReader(Protocol):
    async def closed_between(self, since: datetime, until: datetime) -> list[ClosedSession]: ...


class TransferReader(Protocol):
    async def transfers(self) -> list[Transfer]: ...


# -- times ----------------------------------------------------------------------------------


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``/``--until``: an RFC 3339 date-time with offset, a date (YYYY-MM-DD, midnight
    UTC), or a span before ``now`` (``90s``, ``15m``, ``24h``, ``7d``, ``2w``). To the second, as
    the records are kept. ValueError says what is accepted."""
    text = text.strip()
    now = now or datetime.now(timezone.utc)
    relative = _RELATIVE.fullmatch(text)
    if relative:
        try:
            when = now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        except OverflowError:
            raise ValueError(f"{text!r} is not a time: the span reaches before the year 1") from None
    elif _DATE.fullmatch(text):
        try:
            when = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    else:
        try:
            when = parse_rfc3339(text)
        except ValueError:  # ParseError included
            raise ValueError(f"{text!r} is not a time: give an RFC 3339 date-time with offset "
                             "(2025-06-01T00:00:00Z), a date (2025-06-01) or a span before now (24h, 7d)") from None
    try:
        return when.astimezone(timezone.utc).replace(microsecond=0)
    except OverflowError:
        raise ValueError(f"{text!r} is not a time: out of range in UTC") from None


# -- the seller's records as purchases ------------------------------------------------------


def _claims(jws: str | None) -> dict[str, Any]:
    """The claims of a receipt JWS this seller signed and kept in its own records (not verified
    again: the store is the seller's own); {} when there is none or it does not decode."""
    try:
        return decode_jws(jws)[1] if jws else {}
    except ParseError:
        return {}


def _receipt(header: str | None) -> tuple[datetime | None, dict[str, Any]]:
    """A kept Payment-Receipt header: its timestamp and the signed receipt's claims."""
    if not header:
        return None, {}
    try:
        receipt = parse_receipt(header)
    except ValueError:  # ParseError included: an unreadable header keeps the row, not its details
        return None, {}
    return parse_rfc3339(receipt.timestamp), _claims(receipt.receipt)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _pricing(claims: Mapping[str, Any], intent: str) -> tuple[str, str, str | None]:
    """(model, offer, priceList) from a receipt's claims: the ``pricing`` member or top-level
    ``model``/``offer``/``priceList`` (PRICE-VER-01); absent, the intent's model and no list."""
    pricing = claims.get("pricing") if isinstance(claims.get("pricing"), dict) else {}
    model = _text(pricing.get("model")) or _text(claims.get("model")) or INTENT_MODELS.get(intent, "transaction")
    offer = _text(pricing.get("offer")) or _text(claims.get("offer")) or ""
    price_list = _text(claims.get("priceList")) or _text(pricing.get("priceList"))
    return model, offer, price_list


def route_of(resource: str) -> str:
    """'GET /complete?units=3' -> 'GET /complete': the route a purchase was made on."""
    return resource.split("?", 1)[0]


def _amount(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def charge_records(payments: Iterable[SettledPayment], *, since: datetime | None = None,
                   until: datetime | None = None) -> list[UsageRecord]:
    """One purchase per settled payment, at its receipt's timestamp (the settlement). A refund
    counts in the window it was made in (its record's last change), as on the ledger: a purchase
    refunded after ``until`` shows nothing refunded yet, and a refund in [since, until) of a
    purchase from before ``since`` is a row of its own at the refund's time (amount 0, units 0,
    refunded the amount). Without a window, a refund is shown with its purchase."""
    out = []
    for p in payments:
        r = p.record
        when, claims = _receipt(r.receipt)
        if when is None:
            when = parse_rfc3339(p.created_at)
        model, offer, price_list = _pricing(claims, _text(claims.get("intent")) or "charge")
        amount = _amount(r.amount)
        purchase = UsageRecord(
            time=when,
            agent=_text(claims.get("agent")) or _text(claims.get("sub")) or r.payer or "",
            principal=_text(claims.get("principal")),
            route=_text(claims.get("route")) or route_of(r.resource),
            model=model, offer=offer, price_list=price_list,  # type: ignore[arg-type]  # null without a price list
            currency=r.currency or "", units=0, amount=amount, refunded=0,  # units are metered ones; requests are purchases
            reference=r.reference or r.challenge_id,
        )
        if r.state != "refunded":
            out.append(purchase)
            continue
        refunded_at = max(when, parse_rfc3339(p.updated_at))

        def within(t: datetime) -> bool:
            return (since is None or since <= t) and (until is None or t < until)

        if not within(when):
            if within(refunded_at):
                out.append(replace(purchase, time=refunded_at, units=0, amount=0, refunded=amount))
        else:
            out.append(replace(purchase, refunded=amount) if within(refunded_at) else purchase)
    return out


def session_records(sessions: Iterable[ClosedSession]) -> list[UsageRecord]:
    """A closed session that captured something: one purchase per route it was used on, at its
    close, with the units and amounts of its usage lines (they sum to the capture; should they
    not, the difference is a purchase of its own with no route, so the totals stay the capture)."""
    out = []
    for s in sessions:
        state = s.state
        captured = state.captured or 0
        if captured <= 0:
            continue  # nothing moved: no purchase
        when = parse_rfc3339(s.closed_at)
        _, claims = _receipt(state.final_receipt)
        model, offer, price_list = _pricing(claims, "session")
        identity = state.identity or {}
        routes: dict[str, list[int]] = {}
        for line in s.lines:
            sums = routes.setdefault(route_of(line.resource), [0, 0])
            sums[0] += line.units
            sums[1] += line.amount
        rest = captured - sum(amount for _, amount in routes.values())
        if rest:
            routes.setdefault("", [0, 0])[1] += rest
        for route, (units, amount) in routes.items():
            out.append(UsageRecord(
                time=when,
                agent=_text(identity.get("agent")) or state.signer,
                principal=_text(identity.get("principal")),
                route=route, model=model, offer=offer, price_list=price_list,  # type: ignore[arg-type]
                currency=state.terms.currency, units=units, amount=amount, refunded=0,
                reference=state.settlement or state.session_id,
            ))
    return out


async def read_usage(payments: PaymentReader | None, sessions: SessionReader | None, *, since: datetime,
                     until: datetime) -> list[UsageRecord]:
    """Every purchase of [since, until) in the seller's records (either store may be None)."""
    records: list[UsageRecord] = []
    if payments is not None:
        records += charge_records(await payments.settled_between(since, until), since=since, until=until)
    if sessions is not None:
        records += session_records(await sessions.closed_between(since, until))
    return [r for r in records if since <= r.time < until]


# -- the ledger's side (PRICE-USAGE-02) ----------------------------------------------------------


async def ledger_transfers(ledger: TransferReader, payee: str, *, since: datetime, until: datetime) -> list[Transfer]:
    """The transfers of [since, until) that paid ``payee`` for a sale (charges, session captures)
    or paid back from it (refunds)."""
    out = []
    for t in await ledger.transfers():
        if (t.payee == payee and t.kind in SETTLED_KINDS) or (t.payer == payee and t.kind == "refund"):
            if since <= parse_rfc3339(t.created_at) < until:
                out.append(t)
    return out


def ledger_net(transfers: Iterable[Transfer], payee: str) -> dict[str, int]:
    """Per currency: what ``transfers`` moved to ``payee``, minus what they paid back."""
    net: dict[str, int] = {}
    for t in transfers:
        sign = 1 if t.payee == payee else -1
        net[t.currency] = net.get(t.currency, 0) + sign * t.amount
    return net


def reconcile(report: Mapping[str, Any], records: Sequence[UsageRecord], transfers: Sequence[Transfer],
              payee: str) -> list[str]:
    """PRICE-USAGE-02: one line per currency whose total net differs from the ledger's, naming
    the references found on one side only; [] when they agree."""
    ours = {currency: int(sums["net"]) for currency, sums in report["totals"].items()}
    theirs = ledger_net(transfers, payee)
    problems = [f"{currency}: the seller's records net {ours.get(currency, 0)} in [{report['since']}, {report['until']}) "
                f"but the ledger moved {theirs.get(currency, 0)} to {payee}"
                for currency in sorted(set(ours) | set(theirs)) if ours.get(currency, 0) != theirs.get(currency, 0)]
    if problems:
        known = {r.reference for r in records}
        moved = {t.id.removeprefix("refund:") for t in transfers}
        only_ledger = sorted(moved - known)
        only_records = sorted(known - moved)
        if only_ledger:
            problems.append(f"transfers with no purchase in the seller's records: {', '.join(only_ledger[:10])}")
        if only_records:
            problems.append(f"purchases with no transfer in the window: {', '.join(only_records[:10])}")
    return problems


# -- output (PRICE-USAGE-03) ---------------------------------------------------------------------

ROW_COLUMNS = ("time", "agent", "principal", "route", "model", "offer", "priceList", "currency", "units", "amount",
               "refunded", "net", "reference")
SUM_COLUMNS = ("currency", "purchases", "units", "amount", "refunded", "net")


def _columns(report: Mapping[str, Any]) -> tuple[str, ...]:
    return ROW_COLUMNS if report["by"] is None else (report["by"], *SUM_COLUMNS)


def format_csv(report: Mapping[str, Any]) -> str:
    """RFC 4180: a header line, then one line per row (CRLF, fields quoted where needed; the
    totals are the sums of the rows, not rows of their own)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    columns = _columns(report)
    writer.writerow(columns)
    for row in report["rows"]:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def _cell(value: Any, width: int = 24) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text if len(text) <= width else text[: width - 9] + "..." + text[-6:]


def format_table(report: Mapping[str, Any]) -> str:
    """For people: aligned columns (long identifiers shortened), then the totals per currency."""
    columns = _columns(report)
    if report["by"] is None:
        columns = tuple(c for c in columns if c not in ("offer", "priceList")) if not any(
            r.get("offer") or r.get("priceList") for r in report["rows"]) else columns
    if not any(r.get("units") for r in report["rows"]):  # nothing metered: requests are counted as purchases
        columns = tuple(c for c in columns if c != "units")
    numeric = {"units", "amount", "refunded", "net", "purchases"}
    table = [[c.upper() for c in columns]]
    table += [[_cell(row.get(c), 200 if c == "reference" else 24) for c in columns] for row in report["rows"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [f"usage {report['since']} .. {report['until']}" + (f" by {report['by']}" if report["by"] else "")]
    if not report["rows"]:
        lines.append("no purchases in this window")
    else:
        for r in table:
            lines.append("  ".join(cell.rjust(w) if columns[i] in numeric and r is not table[0] else cell.ljust(w)
                                   for i, (cell, w) in enumerate(zip(r, widths))).rstrip())
    for currency, sums in report["totals"].items():
        units = f"{sums['units']} units, " if sums["units"] else ""
        lines.append(f"total {currency}: {sums['purchases']} purchases, {units}amount {sums['amount']}, "
                     f"refunded {sums['refunded']}, net {sums['net']}")
    return "\n".join(lines) + "\n"


def build_report(records: Iterable[UsageRecord], *, since: datetime, until: datetime, by: str | None = None) -> dict[str, Any]:
    """The export document of PRICE-USAGE-03 (mpp.pricing.summarize_usage)."""
    return summarize_usage(records, since=since, until=until, by=by)
