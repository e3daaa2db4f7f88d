"""The price list file as TOML gives it (spec/pricing.md §2): pydantic models, each refusing what one table
alone can get wrong. ``load_price_list`` validates with them; nothing here is public."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mpp.protocol.models import MAX_AMOUNT, PRICE_CURRENCY
from mpp.intents.session import cost_of
from mpp.pricing.periods import _parse_anchor, _rfc3339
from mpp.pricing.routes import _METHODS, _check_path, _route_string

__all__: list[str] = []

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_OFFER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

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
        if v is not None and PRICE_CURRENCY.fullmatch(v) is None:
            raise ValueError("must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32) or a token's "
                             "address (0x and 40 hex digits)")
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
        if v is not None and PRICE_CURRENCY.fullmatch(v) is None:
            raise ValueError("must be a lowercase code such as 'usd' (a-z then a-z/0-9, at most 32) or a token's "
                             "address (0x and 40 hex digits)")
        return v
