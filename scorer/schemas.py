"""Request and response bodies of the scorer's API (pydantic v2).

Requests are bounded so that no input reaches the pricing path (or the offer log, or the error
response) in a shape it cannot handle: numbers are finite, timestamps plausible, strings encodable
as UTF-8 (JSON allows a lone surrogate such as "\\ud800"; orjson, Redis and the response encoder do
not), and the free-form `context` small and shallow.

Ids (user, item, session, event and quote ids) are at most `MAX_ID_LENGTH` characters and hold no
control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F): they end up in the offer
log, Redis keys, the next training set and log lines, where a NUL or a newline is a bug waiting.
An error message names a client's value only through `shown`: a short, escaped prefix.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from pricing import schema as S

MAX_EVENTS_PER_REQUEST = 1000
MAX_CONTEXT_DEPTH = 4  # {"a": {"b": [1]}} has depth 3
MAX_CONTEXT_NODES = 256  # keys, values and list items, all levels together
MAX_CONTEXT_STRING = 1024  # characters of one key or string value
MAX_PRICE = 1e9
EVENT_TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_TS_MAX_AHEAD = timedelta(days=1)  # clock skew a client may have; later is a bad timestamp
MAX_ID_LENGTH = 256  # characters of any id: user, item, session, event, quote
SHOWN_CHARS = 64  # characters of a client's value an error message may quote

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Written as escapes in error text, so an error body never carries markup (`<script>`) from input.
_MARKUP = str.maketrans({"<": "\\x3c", ">": "\\x3e", "&": "\\x26"})


def escape_markup(text: str) -> str:
    """`text` with `<`, `>` and `&` written as Python escapes (`\\x3c`...): readable, never markup."""
    return text.translate(_MARKUP)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an error message may quote it: the repr of at most `limit` characters
    (control characters, lone surrogates and `<>&` escaped), and the full length when cut."""
    text = value if isinstance(value, str) else str(value)
    out = repr(text[:limit]).translate(_MARKUP)
    return f"{out}... ({len(text)} characters)" if len(text) > limit else out


def _encodable(v: str) -> str:
    """Reject strings that cannot be encoded as UTF-8 (lone surrogates)."""
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("string is not valid unicode (lone surrogate)") from None
    return v


Text = Annotated[str, AfterValidator(_encodable)]


def id_problem(v: str) -> str | None:
    """Why `v` is not an acceptable id (too long, a control character, not UTF-8), else None."""
    if len(v) > MAX_ID_LENGTH:
        return f"ids are limited to {MAX_ID_LENGTH} characters, got {len(v)}"
    if not (v.isascii() and v.isprintable()):  # (printable ASCII: the common id, decided here)
        bad = _CONTROL.search(v)
        if bad is not None:
            return (
                f"ids must not contain control characters, found {shown(bad.group())} "
                f"at position {bad.start()}"
            )
        if not _utf8_ok(v):
            return "string is not valid unicode (lone surrogate)"
    return None


def _valid_id(v: str) -> str:
    problem = id_problem(v)
    if problem is not None:
        raise ValueError(problem)
    return v


# An id: at most MAX_ID_LENGTH characters (also declared per field, for the OpenAPI schema), no
# control characters, valid unicode.
Id = Annotated[str, AfterValidator(_valid_id)]


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

    user_id: Id = Field(min_length=1, max_length=MAX_ID_LENGTH)
    items: list[str] = Field(
        min_length=1,
        description=f"candidate item ids (catalog ids; each at most {MAX_ID_LENGTH} characters, "
        "no control characters)",
    )
    session_id: Id | None = Field(default=None, max_length=MAX_ID_LENGTH)
    context: dict[str, Any] | None = Field(
        default=None,
        description=f"free-form, at most {MAX_CONTEXT_NODES} keys and values, "
        f"{MAX_CONTEXT_DEPTH} levels deep",
    )

    @field_validator("items")
    @classmethod
    def _items_are_ids(cls, v: list[str]) -> list[str]:
        for k, item in enumerate(v):  # one validator for the list: this runs on every quote
            problem = id_problem(item)
            if problem is not None:
                raise ValueError(f"item {k}: {problem}")
        return v

    @field_validator("context")
    @classmethod
    def _bounded_context(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_context(v, 0, [MAX_CONTEXT_NODES + 1])
        return v


class QuotedItem(BaseModel):
    """One candidate's price. Money is in the response's `currency`, per unit of the item."""

    item_id: str = Field(description="the candidate, as sent")
    price: float = Field(
        description="the price to show, in `currency` per unit: inside the guardrails the model "
        "was evaluated with (band around list price, minimum margin, price ladder) and, within a "
        "session, within `max_session_change` of this user's last price for the item"
    )
    list_price: float = Field(description="the catalog's list price, in `currency`")
    purchase_probability: float = Field(
        description="the model's probability that this user buys this item at `price` (0-1)"
    )
    expected_profit: float = Field(
        description="(price - unit cost) x purchase_probability, in `currency` per showing: "
        "what the ranking orders by"
    )
    rank: int = Field(description="1 = highest expected profit at the quoted price")
    propensity: float = Field(
        description="the probability (0-1] that the pricing policy shows this price to this user "
        "for this item: 1 - exploration when it is the model's best price, plus the share of a "
        "uniform draw over the allowed prices. Logged with the quote, it is what lets the next "
        "model and new policies be evaluated offline from these logs (inverse-propensity "
        "weighting); a storefront only needs to show `price`"
    )
    explored: bool = Field(
        description="this price came from the exploration draw (a random allowed price, about "
        "`exploration` of items), not the model's best price"
    )
    guardrail: (
        Literal["band_high", "band_low", "min_margin", "max_session_change", "relaxed"] | None
    ) = Field(
        default=None,
        description="the limit the price sits at, null when inside every limit: the band's "
        "ceiling (band_high) or floor (band_low) around list price, the minimum margin over "
        "unit cost (min_margin), the session's sticky window (max_session_change), or "
        "relaxed when the limits contradicted each other and the ceiling won",
    )


class QuoteResponse(BaseModel):
    quote_id: str = Field(
        description="this quote's id: send it with each item's outcome (POST /v1/outcomes)"
    )
    model_name: str = Field(description="the registered model that priced it")
    model_version: str = Field(description="its registry version")
    currency: str = Field(
        description="ISO 4217 code of every money field (the catalog's currency, "
        "PRICING_CURRENCY, default USD; the scorer never converts)"
    )
    state_generation: int | None = Field(
        default=None,
        description="how many of the user's event appends the model's view of the user "
        "includes (null for a new or degraded user): a client that just posted events can "
        "check that this quote saw them (`generation` of POST /v1/events)",
    )
    personalized: bool = Field(description="the user had events the model could use")
    degraded: bool = Field(
        description="the online store failed: the user was priced from this process's recent "
        "copy of their state, else as new"
    )
    degraded_reason: (
        Literal["store_auth", "store_timeout", "store_unavailable", "store_error"] | None
    ) = Field(
        default=None,
        description="why `degraded` (null when not): the store refused the credentials "
        "(store_auth), did not answer in time (store_timeout), could not be reached "
        "(store_unavailable), or answered something unusable (store_error)",
    )
    items: list[QuotedItem] = Field(description="ranked, best first")
    experiment: str | None = Field(
        default=None, description="the experiment splitting traffic (absent without one)"
    )
    arm: str | None = Field(
        default=None, description="the user's arm in it (sticky per user; absent without one)"
    )


class EventIn(BaseModel):
    """One behaviour event (contract `events` columns; the user comes from the request)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event_type: str
    item_id: Id | None = Field(default=None, max_length=MAX_ID_LENGTH)
    price: float | None = Field(default=None, gt=0, le=MAX_PRICE)
    query: Text | None = Field(default=None, max_length=1000)
    ts: datetime | None = Field(
        default=None, description="from 1970 to one day ahead of the scorer's clock"
    )
    session_id: Id | None = Field(default=None, max_length=MAX_ID_LENGTH)
    event_id: Id | None = Field(default=None, max_length=MAX_ID_LENGTH)

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in S.EVENT_TYPES:
            raise ValueError(f"event_type must be one of {list(S.EVENT_TYPES)}, got {shown(v)}")
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

    user_id: Id = Field(min_length=1, max_length=MAX_ID_LENGTH)
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsResponse(BaseModel):
    user_id: str
    accepted: int
    generation: int = Field(description="the user's history generation after this append")


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote_id: Id = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: Id = Field(min_length=1, max_length=MAX_ID_LENGTH)
    purchased: bool


class OutcomeResponse(BaseModel):
    offer_id: str
    logged: bool = True
    repeated: bool = Field(
        default=False,
        description="this outcome was already recorded with the same label; nothing new was "
        "written (a conflicting label is refused with 409)",
    )


class ReloadResponse(BaseModel):
    model_name: str
    model_version: str
    previous_version: str | None
    arm: str | None = Field(
        default=None, description="the experiment arm reloaded (null: champion)"
    )


# --- the fast path: the common well-formed request, without pydantic -------------------------------
#
# The quote and event routes see thousands of requests a second; building pydantic models for a
# 50-item quote costs more than pricing it. `fast_quote` and `fast_events` accept only bodies whose
# every field is plainly valid under the models above (a strict subset of what they accept), and
# return None for anything else: the request then goes through FastAPI and the models, which give
# the same answer and the same errors as always. So a body is never accepted here that the models
# would refuse, nor read differently.

_QUOTE_KEYS = frozenset({"user_id", "items", "session_id", "context"})
_EVENT_KEYS = frozenset({"event_type", "item_id", "price", "query", "ts", "session_id", "event_id"})
_EVENT_TYPES = frozenset(S.EVENT_TYPES)
_PLAIN_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def _plain_str(v: Any, max_length: int, min_length: int = 0) -> bool:
    return type(v) is str and min_length <= len(v) <= max_length and (v.isascii() or _utf8_ok(v))


def _plain_id(v: Any, min_length: int = 0) -> bool:
    return type(v) is str and min_length <= len(v) and id_problem(v) is None


def _utf8_ok(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fast_quote(data: Any, max_items: int) -> tuple[str, list[str], str | None] | None:
    """(user_id, items, session_id) of a plainly valid quote body, else None (use the model).

    `max_items` bounds the work here; longer lists go to the model (and the route's own limit).
    """
    if type(data) is not dict or not data.keys() <= _QUOTE_KEYS:
        return None
    if data.get("context") is not None:  # free-form: the model checks its bounds
        return None
    user_id, items, session_id = data.get("user_id"), data.get("items"), data.get("session_id")
    if not _plain_id(user_id, 1):
        return None
    if type(items) is not list or not 1 <= len(items) <= max_items:
        return None
    for item in items:
        if type(item) is not str or id_problem(item) is not None:
            return None
    if session_id is not None and not _plain_id(session_id):
        return None
    return user_id, items, session_id  # type: ignore[return-value]  # (checked just above)


def _fast_ts(v: Any, now: datetime) -> datetime | None | bool:
    """The event time of a plain ISO timestamp with an offset; False when not plain or refused."""
    if v is None:
        return None
    if type(v) is not str or not _PLAIN_TS.match(v):
        return False
    ts = datetime.fromisoformat(v)
    if not EVENT_TS_MIN <= ts <= now + EVENT_TS_MAX_AHEAD:
        return False
    return ts


def fast_events(data: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """(user_id, events as plain dicts with `ts` a datetime or None) of a plainly valid events
    body, else None (use the model)."""
    if type(data) is not dict or data.keys() != {"user_id", "events"}:
        return None
    user_id, events = data["user_id"], data["events"]
    if not _plain_id(user_id, 1):
        return None
    if type(events) is not list or not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        return None
    now = datetime.now(UTC)
    out = []
    for e in events:
        if type(e) is not dict or not e.keys() <= _EVENT_KEYS:
            return None
        if e.get("event_type") not in _EVENT_TYPES:
            return None
        price = e.get("price")
        if price is not None:
            if type(price) not in (int, float) or not (0 < price <= MAX_PRICE):
                return None  # (NaN fails the comparison too)
            price = float(price)
        for name in ("item_id", "session_id"):
            v = e.get(name)
            if v is not None and not _plain_id(v):
                return None
        query = e.get("query")
        if query is not None and not _plain_str(query, 1000):
            return None
        event_id = e.get("event_id")
        if event_id is not None and not _plain_id(event_id):
            return None
        ts = _fast_ts(e.get("ts"), now)
        if ts is False:
            return None
        out.append(
            {
                "event_type": e["event_type"],
                "item_id": e.get("item_id"),
                "price": price,
                "query": e.get("query"),
                "ts": ts,
                "session_id": e.get("session_id"),
                "event_id": event_id,
            }
        )
    return user_id, out
