"""Request and response bodies of the scorer's API (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pricing import schema as S

MAX_EVENTS_PER_REQUEST = 1000


class QuoteRequest(BaseModel):
    """A user and the candidate items the storefront is about to show."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    items: list[str] = Field(min_length=1, description="candidate item ids (catalog ids)")
    session_id: str | None = Field(default=None, max_length=256)
    context: dict[str, Any] | None = None


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

    model_config = ConfigDict(extra="forbid")

    event_type: str
    item_id: str | None = None
    price: float | None = Field(default=None, gt=0)
    query: str | None = Field(default=None, max_length=1000)
    ts: datetime | None = None
    session_id: str | None = Field(default=None, max_length=256)
    event_id: str | None = Field(default=None, max_length=256)

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in S.EVENT_TYPES:
            raise ValueError(f"event_type must be one of {list(S.EVENT_TYPES)}, got {v!r}")
        return v


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsResponse(BaseModel):
    user_id: str
    accepted: int
    generation: int = Field(description="the user's history generation after this append")


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1)
    purchased: bool


class OutcomeResponse(BaseModel):
    offer_id: str
    logged: bool = True


class ReloadResponse(BaseModel):
    model_name: str
    model_version: str
    previous_version: str | None
