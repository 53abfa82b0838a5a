"""Request and response bodies of the scorer's API (pydantic v2).

Requests are bounded so that no input reaches the pricing path (or the offer log, or the error
response) in a shape it cannot handle: numbers are finite, timestamps plausible, strings encodable
as UTF-8 (JSON allows a lone surrogate such as "\\ud800"; orjson, Redis and the response encoder do
not), and the free-form `context` small and shallow.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from pricing import schema as S

MAX_EVENTS_PER_REQUEST = 1000
MAX_CONTEXT_DEPTH = 4  # {"a": {"b": [1]}} has depth 3
MAX_CONTEXT_NODES = 256  # keys, values and list items, all levels together
MAX_CONTEXT_STRING = 1024  # characters of one key or string value
MAX_PRICE = 1e9
EVENT_TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_TS_MAX_AHEAD = timedelta(days=1)  # clock skew a client may have; later is a bad timestamp


def _encodable(v: str) -> str:
    """Reject strings that cannot be encoded as UTF-8 (lone surrogates)."""
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("string is not valid unicode (lone surrogate)") from None
    return v


Text = Annotated[str, AfterValidator(_encodable)]


def _check_context(value: Any, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"context has more than {MAX_CONTEXT_NODES} keys and values")
    if isinstance(value, str):
        if len(value) > MAX_CONTEXT_STRING:
            raise ValueError(f"context strings are limited to {MAX_CONTEXT_STRING} characters")
        _encodable(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("context numbers must be finite")
    elif isinstance(value, dict | list):
        if depth >= MAX_CONTEXT_DEPTH:
            raise ValueError(f"context is nested deeper than {MAX_CONTEXT_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_context(key, depth + 1, budget)
                _check_context(item, depth + 1, budget)
        else:
            for item in value:
                _check_context(item, depth + 1, budget)


class QuoteRequest(BaseModel):
    """A user and the candidate items the storefront is about to show."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    user_id: Text = Field(min_length=1, max_length=256)
    items: list[str] = Field(min_length=1, description="candidate item ids (catalog ids)")
    session_id: Text | None = Field(default=None, max_length=256)
    context: dict[str, Any] | None = Field(
        default=None,
        description=f"free-form, at most {MAX_CONTEXT_NODES} keys and values, "
        f"{MAX_CONTEXT_DEPTH} levels deep",
    )

    @field_validator("items")
    @classmethod
    def _items_encodable(cls, v: list[str]) -> list[str]:
        for item in v:  # one validator for the list: this runs on every quote
            if not item.isascii():
                _encodable(item)
        return v

    @field_validator("context")
    @classmethod
    def _bounded_context(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_context(v, 0, [MAX_CONTEXT_NODES + 1])
        return v


class QuotedItem(BaseModel):
    item_id: str
    price: float
    list_price: float
    purchase_probability: float
    expected_profit: float
    rank: int = Field(description="1 = highest expected value at the quoted price")
    propensity: float = Field(description="probability the policy quoted this price")
    explored: bool


class QuoteResponse(BaseModel):
    quote_id: str
    model_name: str
    model_version: str
    personalized: bool = Field(description="the user had events the model could use")
    degraded: bool = Field(description="the online store failed; the user was priced as new")
    items: list[QuotedItem] = Field(description="ranked, best first")


class EventIn(BaseModel):
    """One behaviour event (contract `events` columns; the user comes from the request)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event_type: str
    item_id: Text | None = Field(default=None, max_length=256)
    price: float | None = Field(default=None, gt=0, le=MAX_PRICE)
    query: Text | None = Field(default=None, max_length=1000)
    ts: datetime | None = Field(
        default=None, description="from 1970 to one day ahead of the scorer's clock"
    )
    session_id: Text | None = Field(default=None, max_length=256)
    event_id: Text | None = Field(default=None, max_length=256)

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in S.EVENT_TYPES:
            raise ValueError(f"event_type must be one of {list(S.EVENT_TYPES)}, got {v!r}")
        return v

    @field_validator("ts")
    @classmethod
    def _plausible_ts(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        if not EVENT_TS_MIN <= aware <= datetime.now(UTC) + EVENT_TS_MAX_AHEAD:
            raise ValueError(
                f"ts must be between {EVENT_TS_MIN.date()} and one day from now, got {v.isoformat()}"
            )
        return v


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = Field(min_length=1, max_length=256)
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsResponse(BaseModel):
    user_id: str
    accepted: int
    generation: int = Field(description="the user's history generation after this append")


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote_id: Text = Field(min_length=1, max_length=256)
    item_id: Text = Field(min_length=1, max_length=256)
    purchased: bool


class OutcomeResponse(BaseModel):
    offer_id: str
    logged: bool = True


class ReloadResponse(BaseModel):
    model_name: str
    model_version: str
    previous_version: str | None
