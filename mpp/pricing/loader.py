"""Loading a price list (PRICE-LIST-*, PRICE-VER-02): TOML text to a ``PriceList``, or every mistake at
its ``source:LINE``."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from mpp.identity.restrictions import MODELS
from mpp.pricing.offers import Offer, TransactionOffer, UnitOffer
from mpp.pricing.periods import DEFAULT_ANCHOR, _parse_anchor
from mpp.pricing.price_list import PriceList, PriceListError, Route
from mpp.pricing.routes import _route_string, _shape
from mpp.pricing.schema import _PriceListDoc, _SeatDoc, _TaskDoc, _TransactionDoc, _UnitDoc
from mpp.pricing.seats import SeatOffer
from mpp.pricing.tasks import TaskOffer

__all__ = [
    "load_price_list",
    "check_reload",
    "check_remembered",
]

# -- where things are in the TOML text ----------------------------------------------------------


_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]*?)\s*(\]\]?)\s*(#.*)?$")
_KEY = re.compile(r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]""")


@dataclass
class _Block:
    line: int  # the header's line (1 for the top level)
    keys: dict[str, int] = field(default_factory=dict)


class _Locator:
    """Maps a location such as ('routes', 1, 'offers', 0, 'amount') to a line of the text by
    scanning it for the Nth [[routes]] and [[routes.offers]] header and the key in that block."""

    def __init__(self, text: str) -> None:
        self.top = _Block(1)
        self.routes: list[_Block] = []
        self.offers: list[list[_Block]] = []
        current: _Block | None = self.top
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:  # inside a multi-line string: nothing here is a key or header
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header and line.lstrip().startswith("["):
                name = re.sub(r"\s+", "", header.group(2))
                if header.group(1) == "[[" and name == "routes":
                    current = _Block(number)
                    self.routes.append(current)
                    self.offers.append([])
                elif header.group(1) == "[[" and name == "routes.offers" and self.routes:
                    current = _Block(number)
                    self.offers[-1].append(current)
                else:
                    current = _Block(number)  # some other table: its keys belong to no route or offer
                continue
            key = _KEY.match(line)
            if key and current is not None:
                current.keys.setdefault(key.group(1).strip("\"'"), number)
                value = line[key.end():]
                for quote in ('"""', "'''"):
                    if value.count(quote) % 2 == 1:
                        in_string = quote

    def line(self, loc: Sequence[Any]) -> int:
        block, rest = self.top, list(loc)
        if len(rest) >= 2 and rest[0] == "routes" and isinstance(rest[1], int):
            i = rest[1]
            if i >= len(self.routes):
                return self.top.keys.get("routes", 1)
            block, rest = self.routes[i], rest[2:]
            if len(rest) >= 2 and rest[0] == "offers" and isinstance(rest[1], int):
                j = rest[1]
                if j >= len(self.offers[i]):
                    return block.keys.get("offers", block.line)
                block, rest = self.offers[i][j], rest[2:]
                if rest and rest[0] in MODELS:  # the discriminated union's tag, not a key
                    rest = rest[1:]
        key = next((k for k in rest if isinstance(k, str)), None)
        return block.keys.get(key, block.line) if key is not None else block.line


def _strip_tag(loc: Sequence[Any]) -> list[Any]:
    loc = list(loc)
    if len(loc) >= 5 and loc[0] == "routes" and loc[2] == "offers" and loc[4] in MODELS:
        del loc[4]
    return loc


def _key_of(loc: Sequence[Any]) -> str:
    strings = [k for k in loc if isinstance(k, str)]
    return strings[-1] if strings else "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence naming the key and what is wrong."""
    loc = _strip_tag(err["loc"])
    key, kind, found = _key_of(loc), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    if kind == "union_tag_invalid":
        return f"unknown model {ctx.get('tag')!r}: 'model' must be one of transaction, unit, task, seat"
    if kind == "union_tag_not_found":
        return "missing required key 'model' (transaction, unit, task or seat)"
    if kind == "int_type":
        if isinstance(found, float):
            return f"'{key}' must be an integer, found the float {found!r} (amounts are whole base units)"
        return f"'{key}' must be an integer, found {_toml_type(found)}"
    if kind in ("string_type", "bool_type", "list_type", "model_type", "dict_type"):
        wanted = {"string_type": "a string", "bool_type": "true or false", "list_type": "an array",
                  "model_type": "a table", "dict_type": "a table"}[kind]
        return f"'{key}' must be {wanted}, found {_toml_type(found)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        limit = next(iter(ctx.values()), "?")
        return f"'{key}' must be {op} {limit}, found {found!r}"
    if kind == "literal_error":
        return f"'{key}' must be one of {ctx.get('expected')}, found {found!r}"
    if kind == "too_short":
        return f"'{key}' must not be empty"
    if kind == "too_long":
        return f"'{key}' has too many entries"
    if kind == "string_too_short":
        return f"'{key}' must not be empty"
    if kind == "string_too_long":
        return f"'{key}' is too long"
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return f"'{key}': {message}" if loc and key != "(top level)" else message


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# -- loading ------------------------------------------------------------------------------
def load_price_list(text: str, *, source: str) -> PriceList:
    """Parse and validate a price list (PRICE-LIST-01 to -03); raise PriceListError naming source:LINE."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a file read with errors="surrogateescape": bytes that are not UTF-8
        raise PriceListError(source, [(text.count("\n", 0, exc.start) + 1, "not UTF-8 text")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if m:
            line, problem = int(m.group(1)), f"{message[:m.start()]} (column {m.group(2)})"
        else:
            line = max(1, len(text.splitlines()))
            problem = re.sub(r"\s*\(at end of document\)$", " (at end of document)", message)
        raise PriceListError(source, [(line, f"not valid TOML: {problem}")]) from None
    locate = _Locator(text)
    try:
        doc = _PriceListDoc.model_validate(raw)
    except ValidationError as exc:
        errors = [(locate.line(_error_loc(e)), _describe(e)) for e in exc.errors()]
        raise PriceListError(source, _dedupe(errors)) from None
    errors: list[tuple[int, str]] = []
    routes = _build(doc, locate, errors)
    if errors:
        raise PriceListError(source, _dedupe(errors))
    # Not RFC 8785: amounts up to 2**63 - 1 are valid here but past what JCS can write; sorted
    # keys make it as deterministic, and the fingerprint never leaves the process.
    content = json.dumps(doc.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    fingerprint = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return PriceList(doc.version, tuple(routes), source, fingerprint, locate.top.keys.get("version", 1))


def _error_loc(err: Mapping[str, Any]) -> list[Any]:
    loc = _strip_tag(err["loc"])
    return [*loc, "model"] if err["type"] == "union_tag_invalid" else loc  # point at the model key itself


def _dedupe(errors: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return list(dict.fromkeys(errors))


def _build(doc: _PriceListDoc, locate: _Locator, errors: list[tuple[int, str]]) -> list[Route]:
    """Cross-checks no single table can make (PRICE-LIST-02), then the offers themselves."""
    def err(loc: Sequence[Any], problem: str) -> None:
        errors.append((locate.line(loc), problem))

    seen: dict[tuple[str, str], int] = {}
    route_names: set[str] = set()
    for i, r in enumerate(doc.routes):
        shape = (r.method, _shape(r.path))
        if shape in seen:
            err(("routes", i), f"route {r.method} {r.path} is already defined at line {locate.line(('routes', seen[shape]))}")
        else:
            seen[shape] = i
        route_names.add(f"{r.method} {r.path}")

    follow_up_owner: dict[tuple[str, str], int] = {}
    plans: dict[str, tuple[tuple[Any, ...], int, int]] = {}
    routes: list[Route] = []
    for i, r in enumerate(doc.routes):
        own = f"{r.method} {r.path}"
        ids: dict[str, int] = {}
        units = 0
        offers: list[Offer] = []
        for j, o in enumerate(r.offers):
            at = ("routes", i, "offers", j)
            currency = o.currency or doc.currency
            if currency is None:
                err(at, "missing required key 'currency' (and the list sets no top-level currency)")
                continue
            offer_id = o.id or (o.plan if isinstance(o, _SeatDoc) else o.model)
            if offer_id in ids:
                err((*at, "id"), f"offer id {offer_id!r} is already used by offer {ids[offer_id] + 1} of this route; give one an 'id'")
            ids.setdefault(offer_id, j)
            common = dict(id=offer_id, route=own, price_list=doc.version, amount=o.amount, currency=currency,
                          description=o.description)
            if isinstance(o, _TransactionDoc):
                offers.append(TransactionOffer(**common))
            elif isinstance(o, _UnitDoc):
                units += 1
                if units > 1:
                    err((*at, "model"), "a route may have only one 'unit' offer")
                offers.append(UnitOffer(**common, unit=o.unit, per=o.per, max_units=o.max_units, stream=o.stream,
                                        idle_timeout=o.idle_timeout, suggested_cap=o.suggested_cap))
            elif isinstance(o, _TaskDoc):
                for f in o.follow_ups:
                    method, path = _route_string(f)
                    shape = (method, _shape(path))
                    if shape in seen:
                        err((*at, "follow_ups"), f"follow-up {f!r} is also a priced route (line {locate.line(('routes', seen[shape]))})")
                    elif shape in follow_up_owner and follow_up_owner[shape] != (i, j):
                        err((*at, "follow_ups"), f"follow-up {f!r} is already a follow-up of another task offer")
                    follow_up_owner.setdefault(shape, (i, j))
                offers.append(TaskOffer(**common, follow_ups=tuple(o.follow_ups), grant_ttl=o.grant_ttl, refund=o.refund))
            else:
                assert isinstance(o, _SeatDoc)
                for c in o.covers:
                    method, path = _route_string(c)
                    if f"{method} {path}" not in route_names:
                        err((*at, "covers"), f"covers {c!r}, which is not a route of this price list")
                covers = tuple(dict.fromkeys([own, *o.covers]))
                anchor = _parse_anchor(o.anchor) if o.anchor else DEFAULT_ANCHOR
                terms = (o.amount, currency, o.period_unit, o.period_count, anchor, frozenset(covers))
                if o.plan in plans and plans[o.plan][0] != terms:
                    first = locate.line(("routes", plans[o.plan][1], "offers", plans[o.plan][2]))
                    err((*at, "plan"), f"seat plan {o.plan!r} is offered at line {first} with other terms "
                                       "(amount, currency, period, anchor and covered routes must agree)")
                plans.setdefault(o.plan, (terms, i, j))
                offers.append(SeatOffer(**common, plan=o.plan, period_unit=o.period_unit, period_count=o.period_count,
                                        anchor=anchor, covers=covers))
        routes.append(Route(r.method, r.path, r.description, r.require_identity, tuple(offers)))
    return routes


def check_reload(current: PriceList, new: PriceList, earlier: Iterable[PriceList] = (),
                 remembered: Mapping[str, str] | None = None) -> None:
    """PRICE-VER-02: a changed list needs a new version, also against every list served before
    (``earlier``: a version name reused for other prices would make receipts ambiguous, issue 17,
    finding 11) and every version a pricing store remembers from earlier runs (``remembered``:
    version to fingerprint). Raise PriceListError naming the version line."""
    if new.version == current.version and new.fingerprint != current.fingerprint:
        raise PriceListError(new.source, [(new.version_line, f"version {new.version!r} is the running list's version "
                                                               "but the content differs: give the new list a new version")])
    for old in earlier:
        if new.version == old.version and new.fingerprint != old.fingerprint:
            raise PriceListError(new.source, [(new.version_line, f"version {new.version!r} was served earlier by this "
                                                                   "seller with other content: give the new list a new version")])
    check_remembered(new, remembered or {})


def check_remembered(plist: PriceList, remembered: Mapping[str, str], since: str | None = None) -> None:
    """PRICE-VER-02 across restarts: ``plist``'s version, if a pricing store remembers it
    (``remembered``: version to fingerprint), must have the same content. Raise PriceListError
    naming the version line (and ``since``, when the version was first served, if known)."""
    known = remembered.get(plist.version)
    if known is not None and known != plist.fingerprint:
        when = f" (first on {since})" if since else ""
        raise PriceListError(plist.source, [(plist.version_line, f"version {plist.version!r} was served by this seller "
                                                                 f"before{when} with other content (its pricing store "
                                                                 "remembers it): give this list a new version")])
