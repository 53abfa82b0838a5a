"""The online user store: each user's recent events, their cached model state, and sticky prices.

The scorer keeps what a quote needs about a user here. `UserStore` is the small protocol the
service relies on; `InMemoryUserStore` serves one process (tests, the embedded default), and
`scorer.redis_store.RedisUserStore` implements the same methods for several replicas.

Freshness without races: every append bumps the user's *generation*. A state is cached together
with the generation of the events it was computed from, so a state computed from a history that
changed meanwhile is never served as fresh.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pricing import schema as S

Event = dict[str, Any]

# Why a quote was served without the user's state (`degraded_reason` on a quote, the `reason`
# label of `scorer_degraded_quotes_total`).
STORE_AUTH = "store_auth"  # the store refused the credentials (no or wrong password, no permission)
STORE_TIMEOUT = "store_timeout"  # the store did not answer in time
STORE_UNAVAILABLE = "store_unavailable"  # the store cannot be reached (refused, reset, loading)
STORE_ERROR = "store_error"  # the store answered something the scorer could not use
DEGRADED_REASONS = (STORE_AUTH, STORE_TIMEOUT, STORE_UNAVAILABLE, STORE_ERROR)


def failure_reason(exc: BaseException) -> str:
    """The degraded reason for a store call that raised `exc` (its `reason` when it carries one)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason in DEGRADED_REASONS:
        return reason
    if isinstance(exc, TimeoutError):
        return STORE_TIMEOUT
    if isinstance(exc, OSError):  # ConnectionError and the socket errors
        return STORE_UNAVAILABLE
    return STORE_ERROR


@runtime_checkable
class UserStore(Protocol):
    """What the scorer needs from an online user store (thread-safe implementations only)."""

    def append_events(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        """Append events (contract `events` columns) to the user's bounded history; return its generation."""
        ...

    def get_events(self, user_id: str) -> tuple[list[Event], int]:
        """The user's recent events, oldest first, and the generation they correspond to."""
        ...

    def get_state(self, user_id: str, model_version: str) -> Any | None:
        """The cached state for a model version, or None when missing or stale."""
        ...

    def put_state(self, user_id: str, model_version: str, state: Any, generation: int) -> None:
        """Cache a state computed from the events of `generation` (dropped if events moved on)."""
        ...

    def mark_stale(self, user_id: str) -> None:
        """Invalidate every cached state of the user (new events arrived)."""
        ...

    def get_last_price(self, user_id: str, session_id: str, item_id: str) -> float | None:
        """The last price quoted to the user for the item within the session, if any."""
        ...

    def get_last_prices(
        self, user_id: str, session_id: str, item_ids: Sequence[str]
    ) -> list[float | None]:
        """`get_last_price` for many items at once (one round trip for a networked store)."""
        ...

    def set_last_price(self, user_id: str, session_id: str, prices: Mapping[str, float]) -> None:
        """Remember the prices just quoted (item_id -> price) within the session."""
        ...

    def read_for_quote(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> QuoteRead:
        """What a quote reads, at once: the cached state (None when missing or stale), the
        user's current generation, and the session's last prices (None without a session)."""
        ...

    def read_history_for_quote(
        self, user_id: str, session_id: str | None, item_ids: Sequence[str]
    ) -> tuple[list[Event], int, list[float | None] | None]:
        """`get_events` and the session's last prices at once (for a scorer that caches no
        state and runs the user tower on every quote)."""
        ...

    def hydrate_user(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> bool:
        """Append `events` only if the user has no history yet, atomically (so replicas that start
        together never load a user twice); True when they were appended."""
        ...


@dataclass(frozen=True)
class QuoteRead:
    """A quote's one read of the store."""

    state: Any | None  # the cached state of the current generation; None: compute it
    generation: int  # the user's history generation the state (if any) was computed from
    last_prices: list[float | None] | None  # per item, None without a session
    has_history: bool = True  # False: the user has no events at all (priced as new, no tower)


@dataclass
class _User:
    events: deque[Event]
    generation: int = 0
    # model version -> (generation it was computed from, state)
    states: dict[str, tuple[int, Any]] = field(default_factory=dict)


class InMemoryUserStore:
    """A process-local `UserStore`: a bounded deque of events per user, guarded by one lock.

    Args:
        max_user_events: how many recent events to keep per user (older ones fall off).
        max_last_prices: how many (user, session, item) sticky prices to remember (LRU).
    """

    def __init__(self, max_user_events: int = 200, max_last_prices: int = 1_000_000) -> None:
        self.max_user_events = max_user_events
        self.max_last_prices = max_last_prices
        self._users: dict[str, _User] = {}
        self._last: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def _user(self, user_id: str) -> _User:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(deque(maxlen=self.max_user_events))
        return user

    def append_events(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        with self._lock:
            user = self._user(user_id)
            user.events.extend(dict(e) for e in events)
            user.generation += 1
            return user.generation

    def get_events(self, user_id: str) -> tuple[list[Event], int]:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                return [], 0
            return list(user.events), user.generation

    def get_state(self, user_id: str, model_version: str) -> Any | None:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                return None
            cached = user.states.get(model_version)
            if cached is None or cached[0] != user.generation:
                return None
            return cached[1]

    def put_state(self, user_id: str, model_version: str, state: Any, generation: int) -> None:
        with self._lock:
            user = self._user(user_id)
            if generation == user.generation:
                user.states[model_version] = (generation, state)

    def mark_stale(self, user_id: str) -> None:
        with self._lock:
            user = self._users.get(user_id)
            if user is not None:
                user.generation += 1
                user.states.clear()

    def get_last_price(self, user_id: str, session_id: str, item_id: str) -> float | None:
        with self._lock:
            return self._last.get((user_id, session_id, item_id))

    def get_last_prices(
        self, user_id: str, session_id: str, item_ids: Sequence[str]
    ) -> list[float | None]:
        with self._lock:
            return [self._last.get((user_id, session_id, i)) for i in item_ids]

    def set_last_price(self, user_id: str, session_id: str, prices: Mapping[str, float]) -> None:
        with self._lock:
            for item_id, price in prices.items():
                key = (user_id, session_id, item_id)
                self._last[key] = float(price)
                self._last.move_to_end(key)
            while len(self._last) > self.max_last_prices:
                self._last.popitem(last=False)

    def read_for_quote(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> QuoteRead:
        with self._lock:
            user = self._users.get(user_id)
            generation = user.generation if user is not None else 0
            cached = user.states.get(model_version) if user is not None else None
            state = cached[1] if cached is not None and cached[0] == generation else None
            last = (
                [self._last.get((user_id, session_id, i)) for i in item_ids]
                if session_id is not None
                else None
            )
            return QuoteRead(state, generation, last, user is not None and bool(user.events))

    def read_history_for_quote(
        self, user_id: str, session_id: str | None, item_ids: Sequence[str]
    ) -> tuple[list[Event], int, list[float | None] | None]:
        with self._lock:
            user = self._users.get(user_id)
            events, generation = (list(user.events), user.generation) if user else ([], 0)
            last = (
                [self._last.get((user_id, session_id, i)) for i in item_ids]
                if session_id is not None
                else None
            )
            return events, generation, last

    def hydrate_user(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> bool:
        with self._lock:
            user = self._users.get(user_id)
            if user is not None and user.events:
                return False
            user = self._user(user_id)
            user.events.extend(dict(e) for e in events)
            user.generation += 1
            return True

    def n_users(self) -> int:
        """How many users have a history here."""
        with self._lock:
            return len(self._users)


def _finite_number(x: Any) -> bool:
    return (
        isinstance(x, int | float | np.integer | np.floating)
        and not isinstance(x, bool | np.bool_)
        and math.isfinite(float(x))
    )


def conforms(state: Any, template: Any) -> bool:
    """Whether `state` has the type and shape of `template` (the served model's cold state).

    A state read from a shared store may have been written by another model (a stale deploy, a
    bug) or by anyone who can write to Redis: it can decode cleanly and still be the wrong thing,
    a 5-float vector where BERT needs 64, a NaN where a sensitivity belongs. Such a state must be a
    cache miss (recomputed from the events), never a 5xx or a quote priced from garbage. Checked:
    numbers are finite numbers; arrays and tensors have the template's shape and finite numeric
    values; tuples and lists have its length, element by element; a Series has its index; a dict
    has scalar keys and finite numeric values when the template's are numeric (or it is empty).
    """
    if isinstance(template, bool | np.bool_):
        return isinstance(state, bool | np.bool_)
    if isinstance(template, int | float | np.integer | np.floating):
        return _finite_number(state)
    if isinstance(template, np.ndarray):
        if not isinstance(state, np.ndarray) or state.shape != template.shape:
            return False
        if template.dtype.kind not in "biuf":
            return state.dtype == template.dtype
        return state.dtype.kind in "biuf" and bool(np.isfinite(state).all())
    if type(template).__module__ == "torch" and type(template).__name__ == "Tensor":
        return type(state) is type(template) and conforms(
            state.detach().cpu().numpy(), template.detach().cpu().numpy()
        )
    if isinstance(template, tuple | list):
        return (
            type(state) is type(template)
            and len(state) == len(template)
            and all(conforms(s, t) for s, t in zip(state, template, strict=True))
        )
    if isinstance(template, pd.Series):
        return (
            isinstance(state, pd.Series)
            and state.index.equals(template.index)
            and conforms(state.to_numpy(), template.to_numpy())
        )
    if isinstance(template, dict):
        if not isinstance(state, dict):
            return False
        numeric = not template or all(_finite_number(v) for v in template.values())
        return all(isinstance(k, str | int | float | bool) for k in state) and (
            not numeric or all(_finite_number(v) for v in state.values())
        )
    return type(state) is type(template)


EVENT_COLUMNS: tuple[str, ...] = tuple(S.column_names(S.EVENTS))


def events_frame(events: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Events (dicts) as a contract `events` DataFrame, the input of `DemandModel.user_state`."""
    df = pd.DataFrame(list(events), columns=list(EVENT_COLUMNS))
    df[S.TS] = pd.to_datetime(df[S.TS], utc=True, format="ISO8601")
    df[S.PRICE] = pd.to_numeric(df[S.PRICE], errors="coerce").astype(float)
    return df


def hydrate(store: UserStore, events: pd.DataFrame, max_user_events: int) -> int:
    """Load each user's last `max_user_events` events from a contract events table into `store`.

    Returns how many users were loaded. Runs once at startup so users known from the training
    data get personalized prices from their first quote; users the store already has a history
    for are skipped, so replicas starting against one Redis neither duplicate events nor mark
    cached states stale.
    """
    if len(events) == 0:
        return 0
    df = events.copy()
    df[S.TS] = pd.to_datetime(df[S.TS], utc=True, format="ISO8601")
    df = df.sort_values(S.TS, kind="stable").groupby(S.USER_ID, sort=False).tail(max_user_events)
    cols = [c for c in EVENT_COLUMNS if c in df.columns]
    df = df[cols].astype(object).where(df[cols].notna(), None)
    df[S.TS] = df[S.TS].map(lambda t: t.isoformat() if t is not None else None)
    n = 0
    for user_id, group in df.groupby(S.USER_ID, sort=False):
        records: list[dict[str, Any]] = group.to_dict("records")  # type: ignore[assignment]
        # Skipped when a shared store (Redis) already knows the user: another replica hydrated
        # it, perhaps at this very moment (the check and the append are one atomic step).
        n += store.hydrate_user(str(user_id), records)
    return n


# Events per user bucket when hydrating from a partitioned events table: a bucket is read whole.
HYDRATE_BUCKET_ROWS = 1_000_000


def hydrate_data_dir(
    store: UserStore, data_dir: str | Path, max_user_events: int, work_dir: str | Path
) -> int:
    """`hydrate` from the events table of `data_dir`, as a stream when it is partitioned.

    A single file is read whole, as before. A folder of parts is read part by part: each part's
    rows go to one Parquet file per user bucket under `work_dir` (a user's events, wherever they
    were, end up in one bucket), then each bucket is hydrated and removed. Memory is bounded by a
    part and a bucket (about `HYDRATE_BUCKET_ROWS` events), not by the table.
    """
    import pyarrow.parquet as pq

    from mlops.parts import check_parts
    from pricing import io as pio
    from pricing.partitions import user_bucket

    path = pio.find_table_file(data_dir, S.EVENTS)
    if path is None:
        pio.read_table(data_dir, S.EVENTS)  # raises the contract's "table is missing" error
        return 0
    parts = pio.table_parts(path)
    if len(parts) == 1:
        return hydrate(store, pio.read_part(parts[0], S.EVENTS), max_user_events)
    check_parts(parts, S.EVENTS)
    rows = sum(
        pq.ParquetFile(p).metadata.num_rows if p.suffix == ".parquet" else HYDRATE_BUCKET_ROWS
        for p in parts
    )
    buckets = max(1, -(-rows // HYDRATE_BUCKET_ROWS))
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        for i, part in enumerate(parts):
            df = pio.read_part(part, S.EVENTS)
            df[S.TS] = pd.to_datetime(df[S.TS], utc=True, format="ISO8601")
            bucket = user_bucket(df[S.USER_ID], buckets)
            for b in np.unique(bucket):
                target = work / f"b={int(b):05d}" / f"part-{i:05d}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                df.loc[bucket == b].to_parquet(target, index=False)
        n = 0
        for folder in sorted(work.iterdir()):
            files = sorted(folder.glob("*.parquet"))
            events = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            n += hydrate(store, events, max_user_events)
            shutil.rmtree(folder)
        return n
    finally:
        shutil.rmtree(work, ignore_errors=True)
