"""Pricing models as data (spec/pricing.md): the price list, seat periods, grants, offer choice.

Sans-I/O: the price list is parsed from text the caller read; the clock is a parameter; the
seller's stores (task states, seat periods) and the HTTP adapter live elsewhere. Today's
``Price`` (transaction) and ``Metered`` (unit) come out of the list unchanged, so the
existing seller quotes them as before; task and seat offers add a grant on top of a charge.
"""

from __future__ import annotations

import calendar
import hashlib
import heapq
import json
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Iterable, Literal, Mapping, Sequence, Union

import jwt
from jwt import PyJWKSet
from jwt.exceptions import InvalidTokenError, PyJWKError, PyJWKSetError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpp.protocol.wire import b64url_encode, canonical_json, decode_jws
from mpp.protocol.errors import RESOURCE_MAX, ExtensionProblem, ParseError, clip
from mpp.protocol.keys import SigningKey, SignatureInvalid, public_key_from_did, verify_signature
from mpp.protocol.models import CURRENCY, MAX_AMOUNT
from mpp.pricing.prices import Metered, Price
from mpp.protocol.challenge import resource_of
from mpp.intents.session import cost_of

__all__ = [
    "MODELS",
    "PERIOD_UNITS",
    "GRANT_HEADER",
    "GRANT_PROOF_HEADER",
    "SUBSCRIPTION_ID_HEADER",
    "PriceListError",
    "PriceList",
    "Route",
    "Offer",
    "TransactionOffer",
    "UnitOffer",
    "TaskOffer",
    "SeatOffer",
    "QuotedOffer",
    "load_price_list",
    "check_reload",
    "match_template",
    "period_index",
    "period_bounds",
    "subscription_id",
    "SeatRecords",
    "Grant",
    "GrantProof",
    "SeenGrantProofs",
    "issue_grant",
    "task_grant_claims",
    "seat_grant_claims",
    "verify_grant",
    "grant_proof_message",
    "sign_grant_proof",
    "parse_grant_proof",
    "verify_grant_proof",
    "MandateRestrictions",
    "restrictions_from_claims",
    "check_offer_allowed",
    "expected_total",
    "choose_offer",
    "quoted_offer",
    "UsageRecord",
    "summarize_usage",
    "PricingProblem",
    "GrantRequired",
    "GrantInvalid",
    "GrantAudience",
    "GrantExpired",
    "GrantAgent",
    "GrantTask",
    "GrantRoute",
    "GrantProofInvalid",
    "SeatAlreadyPaid",
    "ModelNotAllowed",
    "UnitPriceTooHigh",
    "PRICING_PROBLEMS",
]

MODELS = ("transaction", "unit", "task", "seat")
PERIOD_UNITS = ("hour", "day", "week", "month", "year")
GRANT_HEADER = "Payment-Grant"
GRANT_PROOF_HEADER = "Payment-Grant-Proof"
SUBSCRIPTION_ID_HEADER = "Subscription-Id"
GRANT_TYP = "mpp-grant+jwt"
GRANT_PROOF_DOMAIN = b"mpp-grant-proof-v1\n"
SUBSCRIPTION_DOMAIN = b"mpp-subscription-v1\n"
PROOF_WINDOW = 60  # seconds either way (PRICE-GRANT-03)
SEEN_PROOFS_CAPACITY = 100_000  # live grant proofs one seller process remembers (PRICE-GRANT-06)
DEFAULT_ANCHOR = datetime(2001, 1, 1, tzinfo=timezone.utc)  # a Monday, 1 January: days, weeks, months, years align
_FIXED_SECONDS = {"hour": 3600, "day": 86400, "week": 604800}
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_OFFER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+|\{[a-z_][a-z0-9_]*\}")
_TASK_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_GRANT_JTI = re.compile(r"grt_[A-Za-z0-9_-]{22}")
_ALGORITHMS = ["EdDSA"]


# -- problems (spec/pricing.md §9) ---------------------------------------------------


class PricingProblem(ExtensionProblem):
    """Problems of pricing: grants, seats, mandate model restrictions. None carries a challenge."""

    status = 403


class GrantRequired(PricingProblem):
    slug, title = "grant-required", "Grant Required"


class GrantInvalid(PricingProblem):
    slug, title = "grant-invalid", "Grant Invalid"


class GrantAudience(PricingProblem):
    slug, title = "grant-audience", "Grant Issued For Another Seller"


class GrantExpired(PricingProblem):
    slug, title = "grant-expired", "Grant Expired"


class GrantAgent(PricingProblem):
    slug, title = "grant-agent", "Grant Of Another Agent"


class GrantTask(PricingProblem):
    slug, title = "grant-task", "Grant Of Another Task"


class GrantRoute(PricingProblem):
    slug, title = "grant-route", "Route Not Covered By Grant"


class GrantProofInvalid(PricingProblem):
    slug, title = "grant-proof-invalid", "Grant Proof Invalid"


class SeatAlreadyPaid(PricingProblem):
    status = 409
    slug, title = "seat-already-paid", "Seat Period Already Paid"


class ModelNotAllowed(PricingProblem):
    slug, title = "model-not-allowed", "Pricing Model Not Allowed By Mandate"


class UnitPriceTooHigh(PricingProblem):
    slug, title = "unit-price-too-high", "Unit Price Above Mandate Limit"


PRICING_PROBLEMS: dict[str, type[PricingProblem]] = {
    cls.slug: cls
    for cls in (GrantRequired, GrantInvalid, GrantAudience, GrantExpired, GrantAgent, GrantTask, GrantRoute,
                GrantProofInvalid, SeatAlreadyPaid, ModelNotAllowed, UnitPriceTooHigh)
}


# -- routes and templates --------------------------------------------------------------


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if path != "/":
        for segment in path[1:].split("/"):
            if _SEGMENT.fullmatch(segment) is None:
                raise ValueError(f"path {path!r}: segment {segment!r} is neither literal text nor {{name}}")
    return path


def _route_string(value: str) -> tuple[str, str]:
    """'GET /jobs/{task}' -> ('GET', '/jobs/{task}'), refusing anything else."""
    method, sep, path = value.partition(" ")
    if not sep or method not in _METHODS:
        raise ValueError(f"{value!r} is not a route string such as 'GET /jobs/{{task}}' (METHOD, one space, path)")
    return method, _check_path(path)


def _shape(path: str) -> str:
    """A template with its parameter names dropped: '/jobs/{id}' and '/jobs/{task}' are one route."""
    return re.sub(r"\{[a-z0-9_]+\}", "{}", path)


def match_template(template: str, path: str) -> dict[str, str] | None:
    """The parameters of ``path`` under ``template`` ('/jobs/{task}' matches '/jobs/abc'), or None."""
    want, have = template.split("/"), path.split("/")
    if len(want) != len(have):
        return None
    params: dict[str, str] = {}
    for w, h in zip(want, have):
        if w.startswith("{") and w.endswith("}"):
            if not h:
                return None
            params[w[1:-1]] = h
        elif w != h:
            return None
    return params


def _route_matches(route: str, method: str, path: str) -> dict[str, str] | None:
    r_method, r_path = _route_string(route)
    return match_template(r_path, path) if r_method == method.upper() else None


# -- the price list file (pydantic models of what TOML gives) ----------------------------


_Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT)]


class _OfferBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    amount: _Amount
    currency: str | None = None
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and _OFFER_ID.fullmatch(v) is None:
            raise ValueError("must be lowercase letters, digits, '_' or '-', at most 32, starting with a letter or digit")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str | None) -> str | None:
        if v is not None and CURRENCY.fullmatch(v) is None:
            raise ValueError("must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32)")
        return v


class _TransactionDoc(_OfferBase):
    model: Literal["transaction"]


class _UnitDoc(_OfferBase):
    model: Literal["unit"]
    unit: str = Field(min_length=1, max_length=64)
    per: _Amount = 1
    max_units: _Amount = 1
    stream: bool = False
    idle_timeout: int = Field(default=300, gt=0, le=86400 * 30)
    suggested_cap: _Amount | None = None

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        if not v.isprintable():
            raise ValueError("must be a short printable name such as 'token'")
        return v

    @model_validator(mode="after")
    def _cap(self) -> "_UnitDoc":
        if self.suggested_cap is not None and self.suggested_cap < cost_of(self.max_units, self.amount, self.per):
            raise ValueError("suggested_cap must cover at least one request (the cost of max_units)")
        return self


class _TaskDoc(_OfferBase):
    model: Literal["task"]
    follow_ups: list[str] = Field(min_length=1, max_length=32)
    grant_ttl: int = Field(gt=0, le=86400 * 365)
    refund: Literal["full", "none"]

    @field_validator("follow_ups")
    @classmethod
    def _follow_ups(cls, v: list[str]) -> list[str]:
        for entry in v:
            _, path = _route_string(entry)
            if path.split("/").count("{task}") != 1:
                raise ValueError(f"follow-up {entry!r} must contain the path segment {{task}} exactly once")
        if len(set(v)) != len(v):
            raise ValueError("a follow-up is listed twice")
        return v


class _SeatDoc(_OfferBase):
    model: Literal["seat"]
    plan: str
    period_unit: Literal["hour", "day", "week", "month", "year"]
    period_count: int = Field(default=1, gt=0, le=1000)
    anchor: str | datetime | None = None  # a quoted RFC 3339 string or a TOML offset date-time
    covers: list[str] = Field(default=[], max_length=64)

    @field_validator("plan")
    @classmethod
    def _plan(cls, v: str) -> str:
        if _OFFER_ID.fullmatch(v) is None:
            raise ValueError("must be lowercase letters, digits, '_' or '-', at most 32, starting with a letter or digit")
        return v

    @field_validator("anchor")
    @classmethod
    def _anchor(cls, v: str | datetime | None) -> str | None:
        if isinstance(v, datetime):
            if v.utcoffset() is None:
                raise ValueError("anchor must be a UTC instant such as 2025-01-01T00:00:00Z, not a local date-time")
            return _rfc3339(v)
        if v is not None:
            _parse_anchor(v)
        return v

    @field_validator("covers")
    @classmethod
    def _covers(cls, v: list[str]) -> list[str]:
        for entry in v:
            _route_string(entry)
        return v


_OfferDoc = Annotated[Union[_TransactionDoc, _UnitDoc, _TaskDoc, _SeatDoc], Field(discriminator="model")]


class _RouteDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    method: str = "GET"
    path: str
    description: str | None = None
    require_identity: bool = False
    offers: list[_OfferDoc] = Field(min_length=1, max_length=16)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v.upper() not in _METHODS:
            raise ValueError("must be GET, POST, PUT, PATCH or DELETE")
        return v.upper()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_path(v)


class _PriceListDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str
    currency: str | None = None
    routes: list[_RouteDoc] = Field(min_length=1, max_length=1024)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if _VERSION.fullmatch(v) is None:
            raise ValueError("must be 1 to 64 of A-Z a-z 0-9 . _ : - starting with a letter or digit")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str | None) -> str | None:
        if v is not None and CURRENCY.fullmatch(v) is None:
            raise ValueError("must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32)")
        return v


# -- offers as the rest of the code sees them ---------------------------------------------


@dataclass(frozen=True)
class Offer:
    """One offer of one route. ``route`` is its route string, ``price_list`` the list's version."""

    model: ClassVar[str]
    id: str
    route: str
    price_list: str
    amount: int
    currency: str
    description: str | None

    def to_price(self, *, require_identity: bool = False) -> Price:
        """The per-request charge this offer is quoted as (transaction, task; seat: one period)."""
        return Price(self.amount, self.currency, self.description, require_identity)

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        """The ``pricing`` member of the challenge request and of x-payment-info (PRICE-MODEL-04)."""
        return {"priceList": self.price_list, "offer": self.id, "model": self.model}


@dataclass(frozen=True)
class TransactionOffer(Offer):
    model: ClassVar[str] = "transaction"


@dataclass(frozen=True)
class UnitOffer(Offer):
    model: ClassVar[str] = "unit"
    unit: str = "unit"
    per: int = 1
    max_units: int = 1
    stream: bool = False
    idle_timeout: int = 300
    suggested_cap: int | None = None

    def to_metered(self, *, require_identity: bool = False, charge_amount: int | None = None) -> Metered:
        """Today's ``Metered``; ``charge_amount`` is the route's transaction offer, if any (PRICE-MODEL-02)."""
        return Metered(self.unit, self.amount, self.currency, self.per, self.max_units, self.description,
                       require_identity, self.stream, self.suggested_cap, self.idle_timeout, charge_amount)

    def cost(self, units: int) -> int:
        return cost_of(units, self.amount, self.per)


@dataclass(frozen=True)
class TaskOffer(Offer):
    model: ClassVar[str] = "task"
    follow_ups: tuple[str, ...] = ()
    grant_ttl: int = 3600
    refund: str = "none"

    def grant_routes(self, task_id: str) -> list[str]:
        """The follow-ups with ``{task}`` filled in: the routes a task grant covers."""
        if not isinstance(task_id, str) or _TASK_ID.fullmatch(task_id) is None:
            raise ValueError("a task id is 1 to 128 characters of A-Z a-z 0-9 . _ ~ -")
        return [f.replace("{task}", task_id) for f in self.follow_ups]

    def follow_up_task(self, method: str, path: str) -> str | None:
        """The task id when (method, path) is one of this offer's follow-ups, else None."""
        for f in self.follow_ups:
            params = _route_matches(f, method, path)
            if params is not None:
                return params["task"]
        return None

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        return {**super().pricing_member(now), "followUps": list(self.follow_ups), "grantTtl": str(self.grant_ttl),
                "refund": self.refund}


@dataclass(frozen=True)
class SeatOffer(Offer):
    model: ClassVar[str] = "seat"
    plan: str = ""
    period_unit: str = "month"
    period_count: int = 1
    anchor: datetime = DEFAULT_ANCHOR
    covers: tuple[str, ...] = ()  # own route first

    def period_index(self, now: datetime) -> int:
        return period_index(self.anchor, now, self.period_unit, self.period_count)

    def period_bounds(self, index: int) -> tuple[datetime, datetime]:
        return period_bounds(self.anchor, index, self.period_unit, self.period_count)

    def covers_request(self, method: str, path: str) -> bool:
        return any(_route_matches(r, method, path) is not None for r in self.covers)

    def subscription_request(self, now: datetime) -> dict[str, Any]:
        """The seat-specific members of the decoded ``request`` (spec/pricing.md §3.2), for the
        period in force at ``now``; the method adds amount, currency, recipient, methodDetails."""
        k = self.period_index(now)
        start, end = self.period_bounds(k)
        return {"periodUnit": self.period_unit, "periodCount": str(self.period_count),
                "periodSeconds": str(int((end - start).total_seconds())), "subscriptionExpires": _rfc3339(end),
                "pricing": self.pricing_member(now)}

    def pricing_member(self, now: datetime | None = None) -> dict[str, Any]:
        doc = {**super().pricing_member(now), "plan": self.plan, "anchor": _rfc3339(self.anchor), "covers": list(self.covers)}
        if now is not None:
            k = self.period_index(now)
            start, end = self.period_bounds(k)
            doc.update(period=k, periodStart=_rfc3339(start), periodEnd=_rfc3339(end))
        return doc


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    description: str | None
    require_identity: bool
    offers: tuple[Offer, ...]

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def literal(self) -> bool:
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
        route = self.route_for(method, path)
        return route.offers if route else ()

    def offer(self, route: str, offer_id: str) -> Offer | None:
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


def _parse_anchor(value: str) -> datetime:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", value):
        raise ValueError(f"anchor {value!r} must be an RFC 3339 UTC instant such as '2025-01-01T00:00:00Z'")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"anchor {value!r} is not a real date and time") from None


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def check_reload(current: PriceList, new: PriceList) -> None:
    """PRICE-VER-02: a changed list needs a new version. Raise PriceListError naming the version line."""
    if new.version == current.version and new.fingerprint != current.fingerprint:
        raise PriceListError(new.source, [(new.version_line, f"version {new.version!r} is the running list's version "
                                                               "but the content differs: give the new list a new version")])


# -- seat periods (PRICE-SEAT-02) ----------------------------------------------------------


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return t.astimezone(timezone.utc)


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


def subscription_id(realm: str, plan: str, agent: str) -> str:
    """The agent's subscription to a plan at a seller: the same for every period (spec/pricing.md §3.2)."""
    digest = hashlib.sha256(SUBSCRIPTION_DOMAIN + f"{realm}\n{plan}\n{agent}".encode("utf-8")).digest()
    return "sub_" + b64url_encode(digest)[:22]


class SeatRecords:
    """The (subscription, period) pairs paid, in memory: the reference the seller's store follows
    (PRICE-SEAT-03). ``reserve`` before settling, ``release`` if settlement fails. The seller adds
    ``periodEnd`` and a fresh seat grant to the SeatAlreadyPaid it gets before answering."""

    def __init__(self) -> None:
        self._paid: dict[tuple[str, int], str] = {}

    def reserve(self, subscription: str, period: int, challenge_id: str) -> None:
        """Record the period for this challenge, or raise SeatAlreadyPaid (nothing is recorded)."""
        key = (subscription, period)
        if key in self._paid:
            raise SeatAlreadyPaid(f"period {period} of this subscription is already paid",
                                  subscriptionId=subscription, period=period)
        self._paid[key] = challenge_id

    def release(self, subscription: str, period: int, challenge_id: str) -> None:
        if self._paid.get((subscription, period)) == challenge_id:
            del self._paid[(subscription, period)]

    def paid(self, subscription: str, period: int) -> bool:
        return (subscription, period) in self._paid


# -- grants (PRICE-GRANT-*) ----------------------------------------------------------------


# The last second datetime can hold (9999-12-31T23:59:59Z): a later iat or exp, even correctly
# signed (a seller's own key, as its buyer sees it), is no time and must not overflow.
_MAX_EPOCH = 253402300799


class _GrantClaims(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    iss: str = Field(min_length=1)
    aud: str = Field(min_length=1)
    sub: str
    jti: str
    iat: int = Field(ge=0, le=_MAX_EPOCH)
    exp: int = Field(ge=0, le=_MAX_EPOCH)
    kind: Literal["task", "seat"]
    routes: list[str] = Field(min_length=1, max_length=64)
    priceList: str
    challengeId: str = Field(min_length=1)
    task: str | None = None
    subscriptionId: str | None = None
    plan: str | None = None
    period: int | None = None

    @field_validator("sub")
    @classmethod
    def _sub(cls, v: str) -> str:
        public_key_from_did(v)
        return v

    @field_validator("jti")
    @classmethod
    def _jti(cls, v: str) -> str:
        if _GRANT_JTI.fullmatch(v) is None:
            raise ValueError("jti must be grt_ + 22 base64url characters")
        return v

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        for r in v:
            _route_string(r)
        return v

    @model_validator(mode="after")
    def _kind(self) -> "_GrantClaims":
        if self.exp <= self.iat:
            raise ValueError("exp must be after iat")
        if self.kind == "task" and (self.task is None or _TASK_ID.fullmatch(self.task) is None):
            raise ValueError("a task grant names its task")
        if self.kind == "seat" and (self.subscriptionId is None or self.plan is None or self.period is None):
            raise ValueError("a seat grant names its subscriptionId, plan and period")
        return self


@dataclass(frozen=True)
class Grant:
    """A verified grant."""

    jti: str
    kind: str
    agent: str
    realm: str
    issued_at: datetime
    expires: datetime
    routes: tuple[str, ...]
    price_list: str
    challenge_id: str
    task: str | None
    subscription_id: str | None
    plan: str | None
    period: int | None
    token: str = field(repr=False)

    def covers(self, method: str, path: str) -> bool:
        return any(_route_matches(r, method, path) is not None for r in self.routes)


def _epoch(t: datetime) -> int:
    return int(_utc(t).timestamp())


def task_grant_claims(*, realm: str, agent: str, task_id: str, offer: TaskOffer, challenge_id: str,
                      now: datetime) -> dict[str, Any]:
    """The claims of a task grant (PRICE-TASK-02): the offer's follow-ups for this task, for grant_ttl."""
    iat = _epoch(now)
    return {"iss": realm, "aud": realm, "sub": agent, "jti": "grt_" + secrets.token_urlsafe(16), "iat": iat,
            "exp": iat + offer.grant_ttl, "kind": "task", "routes": offer.grant_routes(task_id),
            "priceList": offer.price_list, "challengeId": challenge_id, "task": task_id}


def seat_grant_claims(*, realm: str, agent: str, offer: SeatOffer, period: int, challenge_id: str,
                      now: datetime) -> dict[str, Any]:
    """The claims of a seat grant (PRICE-SEAT-05): the covered routes until the period ends."""
    _, end = offer.period_bounds(period)
    return {"iss": realm, "aud": realm, "sub": agent, "jti": "grt_" + secrets.token_urlsafe(16), "iat": _epoch(now),
            "exp": _epoch(end), "kind": "seat", "routes": list(offer.covers), "priceList": offer.price_list,
            "challengeId": challenge_id, "subscriptionId": subscription_id(realm, offer.plan, agent),
            "plan": offer.plan, "period": period}


def issue_grant(receipt_key: SigningKey, claims: Mapping[str, Any]) -> str:
    """Sign a grant with the seller's receipt key (PRICE-GRANT-01); malformed claims are refused."""
    try:
        _GrantClaims.model_validate(dict(claims))
    except ValidationError as exc:
        raise ValueError(f"grant claims are not valid: {exc.errors()[0]['msg']}") from None
    return jwt.encode(dict(claims), receipt_key.private_key, algorithm="EdDSA",
                      headers={"kid": receipt_key.kid, "typ": GRANT_TYP})


def _verification_keys(keys: Mapping[str, Any] | Iterable[SigningKey]) -> dict[str, Any]:
    """kid -> public key, from a JWKS document or from the seller's own receipt keys."""
    if isinstance(keys, Mapping):
        try:
            keyset = PyJWKSet.from_dict(dict(keys))
        except (PyJWKSetError, PyJWKError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"JWKS is unusable: {exc}") from exc
        return {k.key_id: k.key for k in keyset.keys if k.key_id}
    return {k.kid: k.public_key for k in keys}


def verify_grant(
    token: str,
    keys: Mapping[str, Any] | Iterable[SigningKey],
    *,
    realm: str,
    agent: str,
    now: datetime,
    task_id: str | None = None,
    route: tuple[str, str] | None = None,
) -> Grant:
    """Verify a presented grant in the order of PRICE-GRANT-02 and return it; raise the problem.

    ``agent`` is the DID the request's proof names; ``task_id`` the task in the follow-up's path;
    ``route`` the request's (method, path).
    """
    by_kid = _verification_keys(keys)
    try:
        header, _, _ = decode_jws(token)  # strictly, before pyjwt's lenient reading (CORE-CRED-07)
    except ParseError:
        raise GrantInvalid("grant is not a JWS") from None
    if header.get("alg") not in _ALGORITHMS or header.get("typ") != GRANT_TYP:
        raise GrantInvalid("grant must be an EdDSA JWS of type mpp-grant+jwt")
    kid = header.get("kid")
    key = by_kid.get(kid) if isinstance(kid, str) else None  # a list or object here is no key id (nor hashable)
    if key is None:
        raise GrantInvalid("grant is not signed by a key of this seller")
    try:
        raw = jwt.decode(token, key, algorithms=_ALGORITHMS,
                         options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                  "verify_aud": False, "verify_iss": False})
        claims = _GrantClaims.model_validate(raw)
    except (InvalidTokenError, ValidationError, ParseError):
        raise GrantInvalid("grant signature or claims invalid") from None
    if claims.iss != realm or claims.aud != realm:
        raise GrantAudience("grant was issued for another seller")
    if _epoch(now) >= claims.exp:
        raise GrantExpired("grant has expired", exp=claims.exp)
    if claims.sub != agent:
        raise GrantAgent("grant belongs to another agent")
    if task_id is not None and (claims.kind != "task" or claims.task != task_id):
        raise GrantTask("grant is not for this task", task=clip(task_id, RESOURCE_MAX))  # the path's: CORE-ERR-12
    grant = Grant(claims.jti, claims.kind, claims.sub, claims.aud,
                  datetime.fromtimestamp(claims.iat, timezone.utc), datetime.fromtimestamp(claims.exp, timezone.utc),
                  tuple(claims.routes), claims.priceList, claims.challengeId, claims.task, claims.subscriptionId,
                  claims.plan, claims.period, token)
    if route is not None and not grant.covers(*route):
        raise GrantRoute(f"{clip(f'{route[0].upper()} {route[1]}', RESOURCE_MAX)} is not covered by this grant")
    return grant


@dataclass(frozen=True)
class GrantProof:
    agent: str
    t: int
    nonce: str
    sig: str

    def header(self) -> str:
        return f"agent={self.agent}; t={self.t}; nonce={self.nonce}; sig={self.sig}"


def grant_proof_message(*, agent: str, grant_id: str, method: str, path: str, query: str = "", body: bytes = b"",
                        t: int, nonce: str) -> bytes:
    """The bytes the agent signs for one follow-up request (spec/pricing.md §5)."""
    body_hash = b64url_encode(hashlib.sha256(body).digest())
    return GRANT_PROOF_DOMAIN + canonical_json({"agent": agent, "bodyHash": body_hash, "grant": grant_id, "nonce": nonce,
                                                "resource": resource_of(method, path, query), "t": t})


def sign_grant_proof(agent_key: SigningKey, *, grant_id: str, method: str, path: str, query: str = "",
                     body: bytes = b"", now: datetime, nonce: str | None = None) -> str:
    """The Payment-Grant-Proof field value for this request, with a fresh nonce (PRICE-GRANT-05):
    Ed25519 is deterministic, so without one two alike requests in a second would sign alike."""
    t = _epoch(now)
    nonce = nonce if nonce is not None else secrets.token_urlsafe(16)
    message = grant_proof_message(agent=agent_key.did, grant_id=grant_id, method=method, path=path, query=query,
                                  body=body, t=t, nonce=nonce)
    return GrantProof(agent_key.did, t, nonce, agent_key.sign(message)).header()


_PROOF = re.compile(r"agent=(did:key:z[1-9A-HJ-NP-Za-km-z]{1,120}); t=(0|[1-9][0-9]{0,15}); nonce=([A-Za-z0-9_-]{22}); "
                    r"sig=([A-Za-z0-9_-]{86})")


def parse_grant_proof(value: str) -> GrantProof:
    m = _PROOF.fullmatch(value.strip(" \t")) if isinstance(value, str) else None
    if m is None:
        raise GrantProofInvalid("Payment-Grant-Proof is malformed")
    return GrantProof(m.group(1), int(m.group(2)), m.group(3), m.group(4))


def verify_grant_proof(proof: GrantProof | str, *, grant: Grant, method: str, path: str, query: str = "",
                       body: bytes = b"", now: datetime, window: int = PROOF_WINDOW) -> None:
    """PRICE-GRANT-03: the grant's agent signed this very request within the window. Raises GrantProofInvalid."""
    if isinstance(proof, str):
        proof = parse_grant_proof(proof)
    if proof.agent != grant.agent:
        raise GrantProofInvalid("proof is not by the grant's agent")
    if abs(_epoch(now) - proof.t) > window:
        raise GrantProofInvalid("proof timestamp is outside the window")
    message = grant_proof_message(agent=proof.agent, grant_id=grant.jti, method=method, path=path, query=query,
                                  body=body, t=proof.t, nonce=proof.nonce)
    try:
        verify_signature(grant.agent, message, proof.sig)
    except SignatureInvalid:
        raise GrantProofInvalid("proof signature does not verify for this request") from None


class SeenGrantProofs:
    """The grant proofs one seller process has accepted, each until its ``t`` leaves the window
    (after that the time check refuses it anyway): PRICE-GRANT-06.

    A proof is known by its grant and nonce, which its signature binds, so a replay is caught
    however its signature is spelled. Memory is bounded: at ``capacity`` live proofs the one
    closest to expiry is forgotten to make room. Refusing new proofs instead would let one
    agent with a grant lock every other grant holder out; forgetting only matters to someone
    who replays that very proof after the seller accepted ``capacity`` newer ones within its
    window, and only agents holding grants can add entries.
    """

    def __init__(self, capacity: int = SEEN_PROOFS_CAPACITY, window: int = PROOF_WINDOW) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity, self.window = capacity, window
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []  # (expiry, key): the next to expire on top

    def __len__(self) -> int:
        return len(self._expiry)

    def admit(self, grant: Grant, proof: GrantProof, now: datetime) -> None:
        """Record a verified proof; raise GrantProofInvalid if it was accepted before."""
        clock = _epoch(now)
        while self._heap and self._heap[0][0] < clock:
            del self._expiry[heapq.heappop(self._heap)[1]]
        key = hashlib.sha256(f"{grant.jti} {proof.nonce}".encode()).digest()[:16]
        if key in self._expiry:
            raise GrantProofInvalid("this proof has already been used")
        if len(self._heap) >= self.capacity:
            del self._expiry[heapq.heappop(self._heap)[1]]
        self._expiry[key] = proof.t + self.window
        heapq.heappush(self._heap, (proof.t + self.window, key))


# -- mandate restrictions (PRICE-MDT-*) ----------------------------------------------------


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


def _as_fraction(value: Fraction | int | tuple[int, int] | None) -> Fraction | None:
    if value is None or isinstance(value, Fraction):
        return value
    if isinstance(value, tuple):
        return Fraction(value[0], value[1])
    return Fraction(value)


def check_offer_allowed(offer: Any, restrictions: MandateRestrictions) -> None:
    """PRICE-MDT-02: raise ModelNotAllowed or UnitPriceTooHigh when the chain excludes the offer."""
    if restrictions.models is not None and offer.model not in restrictions.models:
        raise ModelNotAllowed(f"the mandate does not allow {offer.model!r} offers", model=offer.model)
    limit = restrictions.max_unit_price
    if limit is not None and offer.model == "unit" and offer.amount * limit.denominator > limit.numerator * offer.per:
        raise UnitPriceTooHigh(f"{offer.amount} per {offer.per} is above the mandate's unit price limit",
                               maxUnitPrice={"amount": limit.numerator, "per": limit.denominator})


# -- the buyer's choice (PRICE-BUY-01) --------------------------------------------------------


@dataclass(frozen=True)
class QuotedOffer:
    """What a buyer knows of an offer from a challenge's decoded request."""

    model: str
    amount: int
    currency: str
    per: int = 1
    max_units: int = 1
    offer: str | None = None
    price_list: str | None = None


def quoted_offer(request: Mapping[str, Any], intent: str) -> QuotedOffer:
    """Read the offer a challenge quotes: ``pricing.model`` or, without it, the intent's model."""
    pricing = request.get("pricing") if isinstance(request.get("pricing"), dict) else {}
    default = {"session": "unit", "subscription": "seat"}.get(intent, "transaction")
    model = pricing.get("model", default)
    if model not in MODELS:
        raise ParseError(f"unknown pricing model {clip(model)!r}")
    amount = request.get("amount")
    if not isinstance(amount, str) or not re.fullmatch(r"0|[1-9][0-9]{0,18}", amount):
        raise ParseError("request amount is not a decimal string")
    details = request.get("methodDetails") if isinstance(request.get("methodDetails"), dict) else {}
    def positive(name: str) -> int:
        value = details.get(name, "1")
        if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]{0,18}", value):
            raise ParseError(f"methodDetails.{name} is not a positive decimal string")
        return int(value)
    per, max_units = (positive("per"), positive("maxUnits")) if model == "unit" else (1, 1)
    return QuotedOffer(model, int(amount), str(request.get("currency")), per, max_units,
                       pricing.get("offer"), pricing.get("priceList"))


def expected_total(offer: Any, *, planned_requests: int, planned_units: int | None = None,
                   planned_periods: int = 1) -> int:
    """What the planned work costs under this offer (spec/pricing.md §6)."""
    if offer.model == "unit":
        units = planned_units if planned_units is not None else planned_requests * offer.max_units
        return cost_of(units, offer.amount, offer.per)
    if offer.model == "seat":
        return planned_periods * offer.amount
    return planned_requests * offer.amount  # transaction; task: one charge per task started


def choose_offer(
    offers: Sequence[Any],
    *,
    planned_requests: int = 1,
    planned_units: int | None = None,
    allowed_models: Iterable[str] | None = None,
    max_unit_price: Fraction | int | tuple[int, int] | None = None,
    planned_periods: int = 1,
    currency: str | None = None,
) -> Any | None:
    """The allowed offer with the lowest expected total, ties to the earlier one; None if none is allowed.

    Offers of another currency than ``currency`` (default: the first offer's) are not compared.
    """
    restrictions = MandateRestrictions(frozenset(allowed_models) if allowed_models is not None else None,
                                       _as_fraction(max_unit_price))
    best, best_total = None, None
    currency = currency or (offers[0].currency if offers else None)
    for offer in offers:
        if offer.currency != currency:
            continue
        try:
            check_offer_allowed(offer, restrictions)
        except PricingProblem:
            continue
        total = expected_total(offer, planned_requests=planned_requests, planned_units=planned_units,
                               planned_periods=planned_periods)
        if best_total is None or total < best_total:
            best, best_total = offer, total
    return best


# -- usage export (PRICE-USAGE-*) ----------------------------------------------------------


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
        return self.amount - self.refunded

    def row(self) -> dict[str, Any]:
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
