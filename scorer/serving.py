"""What a quote does, independent of HTTP: the served model bundle and the pricing pipeline.

A `ServingModel` is immutable once built: the model (warmed), its catalog index and price arrays,
its guardrails, and the fast per-request paths `scorer.accel` checked against it. The app swaps
whole bundles, so a request keeps the bundle it started with.

The quote path (`Pricer.quote_async`, on the event loop): one store round trip for the user's
cached state, its generation and the session's last prices; the user tower only when that state
is missing or stale (in a worker thread, single-flight per user); the price grid, demand and
choice (`pricing.policy.optimize`, the one pricing function); the offer-log append, group-committed
with concurrent quotes; then the sticky-price write. Every stage is timed into `StageTimes`, so the
benchmark can show where a quote's time goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops.models import DemandModel
from mlops.registry import ModelHandle
from pricing import policy as P
from pricing import schema as S
from pricing.experiment import ARM, EXPERIMENT
from scorer.accel import Accelerated, accelerate
from scorer.logs import RateLimitedLog
from scorer.offer_log import QUOTE_ID, OfferLog
from scorer.schemas import shown as short_repr
from scorer.state import (
    STORE_UNAVAILABLE,
    Event,
    QuoteRead,
    UserStore,
    conforms,
    events_frame,
    failure_reason,
)

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

# Why this request's quote is degraded, set where the store failed (`Pricer._degraded`) and read
# when the quote is finished (`Pricer._finish`). A context variable: one per asyncio task (request)
# and per thread, so concurrent quotes never see each other's reason.
_degraded_reason: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "degraded_reason", default=None
)


ARM_SHARE = "arm_share"  # the share of users the serving arm had when the quote was made
EXPERIMENT_FIELDS: tuple[str, ...] = (EXPERIMENT, ARM, ARM_SHARE)


class QuoteError(ValueError):
    """A quote request the scorer cannot price (unknown items, duplicates); a client error."""


@dataclass(frozen=True)
class ServingModel:
    """A warmed model version with everything a quote needs precomputed."""

    name: str
    version: str
    model: DemandModel
    guardrails: P.Guardrails
    index: dict[str, int]  # item_id -> catalog row position
    list_price: np.ndarray
    unit_cost: np.ndarray
    cold_state: Any  # the state of a user with no events
    run_id: str | None = None
    guardrail_sources: dict[str, str] = field(default_factory=dict)  # key -> where it came from
    accel: Accelerated | None = None  # fast per-request paths (None: the model's own methods)
    candidates: P.CandidateTable | None = None  # the guardrail grid per catalog row, built once

    @property
    def inline_user_state(self) -> bool:
        """Whether the user tower is cheap enough (about a millisecond) to run on the event loop;
        otherwise the pricer runs it in a worker thread."""
        return self.accel is not None and self.accel.cheap_user_state

    def user_state(self, events: Sequence[Event]) -> Any:
        """The user tower over one user's events (the fast path when one was checked in)."""
        if self.accel is not None:
            return self.accel.user_state(events)
        return self.model.user_state(events_frame(events))

    def demand(self, state: Any, idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """P(purchase) (n, G) for catalog rows `idx` at prices `grid`."""
        fn = self.accel.demand if self.accel is not None else self.model.demand
        return fn(state, idx, grid)

    @property
    def policy(self) -> str:
        return f"{self.name}@{self.version}"


def serving_guardrails(
    registered: dict[str, Any] | None, exploration: float | None
) -> tuple[P.Guardrails, dict[str, str]]:
    """The guardrails a served model quotes with, and where each value came from.

    Precedence, per key: the operator's environment (only `PRICING_EXPLORATION` today) over the
    guardrails the model was registered with, over `Guardrails`' defaults (exploration:
    `pricing.policy.DEFAULT_EXPLORATION`).
    """
    registered = dict(registered or {})
    values: dict[str, Any] = {}
    sources = {k: "default" for k in P.Guardrails().to_dict()}
    for key, value in registered.items():
        if key in sources:
            values[key] = value
            sources[key] = "registered model"
    if exploration is not None:
        values["exploration"] = exploration
        sources["exploration"] = "environment (PRICING_EXPLORATION)"
    return P.Guardrails.from_dict(values, strict=False), sources


def build_serving_model(handle: ModelHandle, exploration: float | None) -> ServingModel:
    """Warm the handle's model and index its catalog; guardrails by `serving_guardrails`."""
    model = handle.model
    model.warm()
    catalog: pd.DataFrame = model.catalog  # type: ignore[attr-defined]
    ids = catalog[S.ITEM_ID].astype(str).tolist()
    index = {item_id: pos for pos, item_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError(f"model {handle.name}@{handle.version}: catalog item ids are not unique")
    guardrails, sources = serving_guardrails(handle.guardrails, exploration)
    accel = accelerate(model)
    log.info("model %s@%s serves with %s", handle.name, handle.version, accel.notes)
    list_price = catalog[S.LIST_PRICE].to_numpy(dtype=float)
    unit_cost = catalog[S.UNIT_COST].to_numpy(dtype=float)
    return ServingModel(
        name=handle.name,
        version=str(handle.version),
        model=model,
        guardrails=guardrails,
        index=index,
        list_price=list_price,
        unit_cost=unit_cost,
        cold_state=model.user_state(events_frame([])),
        run_id=handle.run_id,
        guardrail_sources=sources,
        accel=accel,
        candidates=P.CandidateTable(list_price, unit_cost, guardrails),
    )


@dataclass
class PricedItems:
    """The outcome of one quote, as arrays in request order."""

    quote_id: str
    ts: str
    item_ids: list[str]
    price: np.ndarray
    list_price: np.ndarray
    probability: np.ndarray
    expected_profit: np.ndarray
    rank: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    personalized: bool
    degraded: bool
    state_generation: int | None = None  # the history generation the user state was computed from
    degraded_reason: str | None = None  # why `degraded` (scorer.state's STORE_*); None when not
    guardrail: list[str | None] = field(default_factory=list)  # per item: the limit it sits at


class QuoteBook:
    """Recent quotes in memory, for outcome lookup without touching the disk.

    Bounded by offer rows, not by quotes: a quote holds one row (about 0.5 KB) per quoted item, so
    a cap by quote count lets 300-item quotes take 15 GB. The oldest quotes go first; an evicted
    quote is still found through the offer log's index.
    """

    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._quotes: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Offer rows held now (at most `max_rows`)."""
        return self._rows

    def put(self, quote_id: str, rows: list[dict[str, Any]]) -> None:
        by_item = {r[S.ITEM_ID]: r for r in rows}
        with self._lock:
            old = self._quotes.pop(quote_id, None)
            if old is not None:
                self._rows -= len(old)
            if len(by_item) > self.max_rows:
                return  # larger than the whole book: the offer log's index serves it
            self._quotes[quote_id] = by_item
            self._rows += len(by_item)
            while self._rows > self.max_rows:
                _, evicted = self._quotes.popitem(last=False)
                self._rows -= len(evicted)

    def get(self, quote_id: str) -> dict[str, dict[str, Any]] | None:
        with self._lock:
            return self._quotes.get(quote_id)


class StateCache:
    """A small process-local LRU of recent user states: what a quote falls back on when the store is down."""

    def __init__(self, max_states: int = 10_000) -> None:
        self.max_states = max_states
        self._states: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, user_id: str, version: str, state: Any) -> None:
        with self._lock:
            self._states[(user_id, version)] = state
            self._states.move_to_end((user_id, version))
            while len(self._states) > self.max_states:
                self._states.popitem(last=False)

    def get(self, user_id: str, version: str) -> Any | None:
        with self._lock:
            return self._states.get((user_id, version))


STAGES: tuple[str, ...] = (
    "validate",  # catalog lookups
    "store_read",  # the quote's one store round trip (state, generation, last prices)
    "user_state",  # the user tower, only when the cached state is missing or stale
    "price",  # grid + demand + choice + exploration + ranking
    "demand",  # (inside "price") the model head over the grid
    "log_rows",  # building the offer rows
    "offer_log",  # waiting for the group-committed append (queueing included)
    "sticky_write",  # the sticky-price write's round trip
    "event_append",  # POST /v1/events: the append's round trip
    "refresh",  # the background refresher's recomputation of one user's state
)


class StageTimes:
    """Per-stage time totals of the quote path (perf_counter; cheap enough to be always on).

    `snapshot()` gives seconds and counts per stage; /metrics exposes them
    (`scorer_quote_stage_*`) and the load benchmark divides by quotes, so anyone can see where a
    quote's time goes. Wall time: an awaited stage includes the other requests the loop served
    meanwhile. Updated from the loop and from worker threads without a lock (a profile, not a
    ledger: a rare lost update is fine).
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.counts = dict.fromkeys(STAGES, 0)
        self.quotes = 0

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        self.counts[stage] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "quotes": self.quotes,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "counts": dict(self.counts),
        }


@dataclass
class _Read:
    """What a quote knows after its store read."""

    state: Any | None  # None: compute it
    generation: int | None
    last: list[float | None] | None
    degraded: bool = False  # the store failed: `state` is the local fallback
    personalized: bool = True  # whether `state` is the user's own (False: the cold state)
    events: list[Event] | None = None  # prefetched history (a pricer that computes every time)
    reason: str | None = None  # why degraded (scorer.state's STORE_*)


class Pricer:
    """The quote pipeline: user state -> grid -> demand -> choose -> explore -> log -> sticky."""

    refreshes = True  # states are cached: the app refreshes them in the background after events

    def __init__(
        self,
        store: UserStore,
        offer_log: OfferLog,
        rng: np.random.Generator,
        book: QuoteBook,
        cache: StateCache | None = None,
    ) -> None:
        self.store = store
        self.offer_log = offer_log
        self.rng = rng
        self.book = book
        self.cache = cache or StateCache()
        self.stages = StageTimes()
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._rng_lock = threading.Lock()  # np.random.Generator is not thread-safe
        self._nonconforming: set[str] = set()
        self._flights: dict[tuple[str, str], asyncio.Future[tuple[Any, bool, int, bool]]] = {}

    # --- user state --------------------------------------------------------------------------------
    def _usable(self, sm: ServingModel, state: Any, user_id: str) -> bool:
        """Whether a cached state fits the served model (`conforms` to its cold state)."""
        if conforms(state, sm.cold_state):
            return True
        if sm.policy not in self._nonconforming:  # one line per model, not per quote
            self._nonconforming.add(sm.policy)
            log.warning(
                "ignoring a cached user state of the wrong type or shape for %s (user %s, %s); "
                "recomputing it from the events",
                sm.policy,
                user_id,
                type(state).__name__,
            )
        return False

    def compute_state_gen(self, sm: ServingModel, user_id: str) -> tuple[Any, bool, int]:
        """(state, personalized, generation it was computed from), cached in the store.

        Single-flight per (user, version): when the background refresher and a quote (or two quotes)
        want the same state at once, one computes and the others wait for its result.
        """
        key = (user_id, sm.policy)
        for _ in range(2):
            with self._inflight_lock:
                done = self._inflight.get(key)
                leader = done is None
                if leader:
                    done = self._inflight[key] = threading.Event()
            assert done is not None
            if leader:
                break
            done.wait(timeout=5.0)
            read = self.store.read_for_quote(user_id, sm.policy, None, ())
            if read.state is not None and self._usable(sm, read.state, user_id):
                self.cache.put(user_id, sm.policy, read.state)
                return read.state, True, read.generation
            # the leader's state was already stale (more events arrived): compute our own
        else:
            leader = False  # still contended: compute without the flight (rare)
        try:
            events, generation = self.store.get_events(user_id)
            if not events:
                return sm.cold_state, False, generation
            state = sm.user_state(events)
            self.store.put_state(user_id, sm.policy, state, generation)
            self.cache.put(user_id, sm.policy, state)
            return state, True, generation
        finally:
            if leader:
                with self._inflight_lock:
                    self._inflight.pop(key, None)
                if done is not None:
                    done.set()

    def refresh(self, sm: ServingModel, user_id: str) -> bool:
        """Make the user's cached state current (the background refresher's job); True if computed."""
        read = self.store.read_for_quote(user_id, sm.policy, None, ())
        if read.state is not None and self._usable(sm, read.state, user_id):
            return False  # a quote got there first
        self.compute_state_gen(sm, user_id)
        return True

    def _degraded(self, sm: ServingModel, user_id: str, reason: str) -> tuple[Any, bool]:
        """(state, personalized) from the process's own recent copy, else the cold state.

        Records `reason` for this request's quote; logs at most a line per reason every few
        seconds (with the count of the others), not one per quote during an outage."""
        _degraded_reason.set(reason)
        limited.warning(
            f"quote_degraded:{reason}",
            "user store failed (%s) for user %s; pricing from the local cache",
            reason,
            user_id,
        )
        cached = self.cache.get(user_id, sm.policy)
        if cached is not None:
            return cached, True
        return sm.cold_state, False

    def _read(
        self, sm: ServingModel, user_id: str, session_id: str | None, items: list[str]
    ) -> _Read:
        """The quote's one store round trip; a failing store gives a degraded read, never raises."""
        if _degraded_reason.get() is not None:
            _degraded_reason.set(None)  # left by a quote that failed on this thread
        try:
            got: QuoteRead = self.store.read_for_quote(user_id, sm.policy, session_id, items)
        except Exception as exc:  # noqa: BLE001 - a store outage degrades the quote, never a 5xx
            reason = failure_reason(exc)
            state, personalized = self._degraded(sm, user_id, reason)
            return _Read(state, None, None, True, personalized, reason=reason)
        return self._interpret(sm, user_id, got)

    def _interpret(self, sm: ServingModel, user_id: str, got: QuoteRead) -> _Read:
        """A store read as the quote sees it: a usable cached state, the cold state of a new user,
        or none (compute it)."""
        state = got.state
        if state is not None and not self._usable(sm, state, user_id):
            state = None
        if state is not None:
            self.cache.put(user_id, sm.policy, state)
        elif not got.has_history:  # a new user: the cold state, no tower and no second read
            return _Read(sm.cold_state, got.generation, got.last_prices, personalized=False)
        return _Read(state, got.generation, got.last_prices)

    def _state(
        self, sm: ServingModel, user_id: str, read: _Read
    ) -> tuple[Any, bool, bool, int | None]:
        """(state, personalized, degraded, generation) for a read whose state is missing (sync)."""
        if read.degraded:
            return read.state, read.personalized, True, None
        try:
            state, personalized, generation = self.compute_state_gen(sm, user_id)
            return state, personalized, False, generation
        except Exception as exc:  # noqa: BLE001 - a store outage degrades the quote, never a 5xx
            state, personalized = self._degraded(sm, user_id, failure_reason(exc))
            return state, personalized, True, None

    # --- user state, on the event loop ----------------------------------------------------------------
    async def _off_loop(self, sm: ServingModel, fn: Any, *args: Any) -> Any:
        """Run `fn` inline when the model's tower is cheap, else in a worker thread."""
        if sm.inline_user_state:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _compute_async(self, sm: ServingModel, user_id: str) -> tuple[Any, bool, int, bool]:
        """(state, personalized, generation, computed): one snapshot read, the tower, the
        check-and-set write, all without blocking the loop on Redis."""
        store: Any = self.store  # a store with the loop's calls (`_loop_store`)
        cached, generation, events = await store.read_state_and_history_async(user_id, sm.policy)
        if cached is not None and self._usable(sm, cached, user_id):
            self.cache.put(user_id, sm.policy, cached)
            return cached, True, generation, False
        if not events:
            return sm.cold_state, False, generation, False
        state = await self._off_loop(sm, sm.user_state, events)
        await store.put_state_async(user_id, sm.policy, state, generation)
        self.cache.put(user_id, sm.policy, state)
        return state, True, generation, True

    async def _flight(
        self, sm: ServingModel, user_id: str, at_least: int | None
    ) -> tuple[Any, bool, int, bool]:
        """`_compute_async`, once per (user, model) at a time on this loop: a refresh and the
        quotes that arrive meanwhile share one computation, unless it started from an older
        history than a quote has seen (`at_least`), which then computes its own."""
        key = (user_id, sm.policy)
        pending = self._flights.get(key)
        if pending is not None:
            state, personalized, generation, _ = await asyncio.shield(pending)
            if at_least is None or generation >= at_least:
                return state, personalized, generation, False
            return await self._compute_async(sm, user_id)
        future: asyncio.Future[tuple[Any, bool, int, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._flights[key] = future
        try:
            result = await self._compute_async(sm, user_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it too
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._flights.pop(key, None)

    def _loop_store(self) -> bool:
        return hasattr(self.store, "read_state_and_history_async") and hasattr(
            self.store, "put_state_async"
        )

    async def refresh_async(self, sm: ServingModel, user_id: str) -> bool:
        """Make the user's cached state current (the refresher's job); True if computed."""
        if not self._loop_store():
            return bool(await self._off_loop(sm, self.refresh, sm, user_id))
        return (await self._flight(sm, user_id, None))[3]

    async def _state_async(
        self, sm: ServingModel, user_id: str, read: _Read
    ) -> tuple[Any, bool, bool, int | None]:
        """(state, personalized, degraded, generation) for a quote whose read found no usable
        state: computed now (shared with a refresh in flight), or degraded when the store fails."""
        if read.degraded:
            return read.state, read.personalized, True, None
        try:
            if self._loop_store():
                state, personalized, generation, _ = await self._flight(
                    sm, user_id, read.generation
                )
            else:
                state, personalized, generation = await self._off_loop(
                    sm, self.compute_state_gen, sm, user_id
                )
            return state, personalized, False, generation
        except Exception as exc:  # noqa: BLE001 - a store outage degrades the quote, never a 5xx
            state, personalized = self._degraded(sm, user_id, failure_reason(exc))
            return state, personalized, True, None

    # --- pricing -----------------------------------------------------------------------------------
    def _index(self, sm: ServingModel, items: list[str]) -> np.ndarray:
        index = sm.index
        try:
            idx = np.fromiter((index[i] for i in items), dtype=np.int64, count=len(items))
        except KeyError:
            unknown = [i for i in items if i not in index]
            shown = ", ".join(short_repr(i) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise QuoteError(
                f"unknown item ids (not in model {sm.policy}'s catalog): {shown}{more}"
            ) from None
        if len(set(items)) != len(items):
            raise QuoteError("duplicate item ids in the request")
        return idx

    def _demand(
        self, sm: ServingModel, state: Any, idx: np.ndarray, grid: np.ndarray
    ) -> np.ndarray:
        t = time.perf_counter()
        probs = np.asarray(sm.demand(state, idx, grid), dtype=float)
        self.stages.add("demand", time.perf_counter() - t)
        if probs.shape != grid.shape:
            raise RuntimeError(
                f"model {sm.policy} returned shape {probs.shape}, expected {grid.shape}"
            )
        return probs

    def _price(
        self,
        sm: ServingModel,
        user_id: str,
        items: list[str],
        idx: np.ndarray,
        session_id: str | None,
        state: Any,
        last_prices: list[float | None] | None,
        tags: Mapping[str, Any] | None = None,
    ) -> tuple[PricedItems, list[dict[str, Any]]]:
        """The pricing itself (CPU only): grid, demand, choice, exploration, rank, log rows.

        `tags` (the experiment and arm, when the scorer splits traffic) go into every log row."""
        t = time.perf_counter()
        lp, cost = sm.list_price[idx], sm.unit_cost[idx]
        g = sm.guardrails
        last = None if last_prices is None else np.array(last_prices, dtype=float)  # None -> NaN
        candidates = None if sm.candidates is None else sm.candidates(idx, last)
        decision = P.optimize(
            lambda grid: self._demand(sm, state, idx, grid),
            lp,
            cost,
            g,
            last_price=last,
            candidates=candidates,
        )
        assert decision.grid is not None
        with self._rng_lock:
            price, propensity, explored = P.explore(
                decision, decision.grid, g.exploration, self.rng
            )
        prob = P.quoted_probability(decision, price)
        guardrail = P.binding_guardrail(decision, price, lp, cost, g, last)
        profit = (price - cost) * prob
        value = profit if g.objective == "profit" else price * prob
        rank = P.rank_by_value(value)
        t1 = time.perf_counter()
        self.stages.add("price", t1 - t)

        quote_id = uuid.uuid4().hex
        ts = datetime.now(UTC).isoformat()
        policy = sm.policy
        price_l, prop_l, prob_l = price.tolist(), propensity.tolist(), prob.tolist()
        log_rows = [
            {
                S.OFFER_ID: f"{quote_id}:{item}",
                QUOTE_ID: quote_id,
                S.TS: ts,
                S.USER_ID: user_id,
                S.SESSION_ID: session_id,
                S.ITEM_ID: item,
                S.PRICE: price_l[k],
                S.PROPENSITY: prop_l[k],
                S.POLICY: policy,
                "purchase_probability": prob_l[k],  # for live calibration (monitor flow)
                **(tags or {}),
            }
            for k, item in enumerate(items)
        ]
        self.stages.add("log_rows", time.perf_counter() - t1)
        priced = PricedItems(
            quote_id=quote_id,
            ts=ts,
            item_ids=items,
            price=price,
            list_price=lp,
            probability=prob,
            expected_profit=profit,
            rank=rank,
            propensity=propensity,
            explored=explored,
            personalized=False,
            degraded=False,
            guardrail=guardrail,
        )
        return priced, log_rows

    def _sticky(self, user_id: str, session_id: str, priced: PricedItems) -> bool:
        """Write the session's sticky prices; False when the store failed (the quote stands)."""
        t = time.perf_counter()
        try:
            self.store.set_last_price(
                user_id, session_id, dict(zip(priced.item_ids, priced.price.tolist(), strict=True))
            )
            return True
        except Exception:  # noqa: BLE001 - only stickiness is lost
            log.warning("user store failed writing last prices")
            return False
        finally:
            self.stages.add("sticky_write", time.perf_counter() - t)

    async def _read_async(
        self, sm: ServingModel, user_id: str, session_id: str | None, items: list[str]
    ) -> _Read:
        """`_read` without blocking the event loop when the store can (Redis), else `_read`."""
        read_async = getattr(self.store, "read_for_quote_async", None)
        if read_async is None:
            return self._read(sm, user_id, session_id, items)
        if _degraded_reason.get() is not None:
            _degraded_reason.set(None)
        try:
            got: QuoteRead = await read_async(user_id, sm.policy, session_id, items)
        except Exception as exc:  # noqa: BLE001 - a store outage degrades the quote, never a 5xx
            reason = failure_reason(exc)
            state, personalized = self._degraded(sm, user_id, reason)
            return _Read(state, None, None, True, personalized, reason=reason)
        return self._interpret(sm, user_id, got)

    async def _sticky_async(self, user_id: str, session_id: str, priced: PricedItems) -> bool:
        """`_sticky` without blocking the event loop when the store can."""
        write_async = getattr(self.store, "set_last_price_async", None)
        if write_async is None:
            return self._sticky(user_id, session_id, priced)
        t = time.perf_counter()
        try:
            await write_async(
                user_id, session_id, dict(zip(priced.item_ids, priced.price.tolist(), strict=True))
            )
            return True
        except Exception:  # noqa: BLE001 - only stickiness is lost
            log.warning("user store failed writing last prices")
            return False
        finally:
            self.stages.add("sticky_write", time.perf_counter() - t)

    def _timed_read(
        self, sm: ServingModel, user_id: str, session_id: str | None, items: list[str]
    ) -> _Read:
        t = time.perf_counter()
        try:
            return self._read(sm, user_id, session_id, items)
        finally:
            self.stages.add("store_read", time.perf_counter() - t)

    def _timed_state(
        self, sm: ServingModel, user_id: str, read: _Read
    ) -> tuple[Any, bool, bool, int | None]:
        t = time.perf_counter()
        try:
            return self._state(sm, user_id, read)
        finally:
            self.stages.add("user_state", time.perf_counter() - t)

    def _finish(
        self,
        priced: PricedItems,
        personalized: bool,
        degraded: bool,
        generation: int | None,
    ) -> PricedItems:
        priced.personalized, priced.degraded = personalized, degraded
        priced.state_generation = None if degraded else generation
        if degraded:  # why: where the store failed, else (the sticky write) the store's last error
            reason = _degraded_reason.get()
            if reason is not None:
                _degraded_reason.set(None)
            else:
                reason = getattr(self.store, "failure_reason", None) or STORE_UNAVAILABLE
            priced.degraded_reason = reason
        self.stages.quotes += 1
        return priced

    def quote(
        self,
        sm: ServingModel,
        user_id: str,
        items: list[str],
        session_id: str | None,
        tags: Mapping[str, Any] | None = None,
    ) -> PricedItems:
        """Price and rank `items` for the user, log the quote durably, remember sticky prices.

        The blocking version (any thread); the app serves `quote_async`, which does the same steps.
        """
        t = time.perf_counter()
        idx = self._index(sm, items)
        self.stages.add("validate", time.perf_counter() - t)
        read = self._timed_read(sm, user_id, session_id, items)
        if read.state is not None and not read.degraded:
            state, personalized, degraded = read.state, read.personalized, False
            generation = read.generation
        else:
            state, personalized, degraded, generation = self._timed_state(sm, user_id, read)
        last = read.last if session_id is not None and not degraded else None
        priced, rows = self._price(sm, user_id, items, idx, session_id, state, last, tags)
        t = time.perf_counter()
        self.offer_log.append_quotes(rows)
        self.stages.add("offer_log", time.perf_counter() - t)
        self.book.put(priced.quote_id, rows)
        if session_id is not None and not degraded:
            degraded = not self._sticky(user_id, session_id, priced)
        return self._finish(priced, personalized, degraded, generation)

    async def quote_async(
        self,
        sm: ServingModel,
        user_id: str,
        items: list[str],
        session_id: str | None,
        tags: Mapping[str, Any] | None = None,
    ) -> PricedItems:
        """`quote` on the event loop: the store round trips are awaited (the loop serves other
        requests meanwhile), the CPU work runs inline (short), the user tower (only on a cache
        miss) in a worker thread, and the offer-log append is group-committed with the other
        quotes of this loop."""
        t = time.perf_counter()
        idx = self._index(sm, items)
        t1 = time.perf_counter()
        self.stages.add("validate", t1 - t)
        read = await self._read_async(sm, user_id, session_id, items)
        t2 = time.perf_counter()
        self.stages.add("store_read", t2 - t1)
        if read.state is not None and not read.degraded:
            state, personalized, degraded = read.state, read.personalized, False
            generation = read.generation
        else:
            state, personalized, degraded, generation = await self._state_async(sm, user_id, read)
            if not read.degraded:
                self.stages.add("user_state", time.perf_counter() - t2)
        last = read.last if session_id is not None and not degraded else None
        priced, rows = self._price(sm, user_id, items, idx, session_id, state, last, tags)
        t = time.perf_counter()
        await self.offer_log.append_quotes_async(rows)
        self.stages.add("offer_log", time.perf_counter() - t)
        self.book.put(priced.quote_id, rows)
        if session_id is not None and not degraded:
            degraded = not await self._sticky_async(user_id, session_id, priced)
        return self._finish(priced, personalized, degraded, generation)

    # --- outcomes ----------------------------------------------------------------------------------
    def find_quote(self, quote_id: str) -> dict[str, dict[str, Any]] | None:
        """The logged offers of a quote by item id: memory, then this process's log, then the other
        writers' logs (a quote another replica made); None if unknown.

        The log lookups go through quote-id indexes (no scan); `OfferLogError` when a log cannot be
        read.
        """
        rows = self.book.get(quote_id)
        if rows is None:
            found = self.offer_log.find_quote(quote_id)
            if not found:
                return None
            self.book.put(quote_id, found)
            rows = {r[S.ITEM_ID]: r for r in found}
        return rows

    def record_outcome(self, offer: dict[str, Any], purchased: bool) -> tuple[str, bool]:
        """Durably append the offer with its label, unless the offer has an outcome already.

        Returns (offer id, whether it was written): a repeat of the recorded label writes nothing.
        Raises `OutcomeConflict` (nothing written) when a different label is recorded: the first
        outcome of an offer stands, whichever worker it was reported to.
        """
        row = {
            S.OFFER_ID: offer[S.OFFER_ID],
            S.TS: offer[S.TS],  # the offer's time: training joins events strictly before it
            S.USER_ID: offer[S.USER_ID],
            S.ITEM_ID: offer[S.ITEM_ID],
            S.PRICE: offer[S.PRICE],
            S.PURCHASED: int(purchased),
            S.PROPENSITY: offer[S.PROPENSITY],
            S.POLICY: offer[S.POLICY],
            QUOTE_ID: offer.get(QUOTE_ID),
            "purchase_probability": offer.get("purchase_probability"),
            "outcome_ts": datetime.now(UTC).isoformat(),
        }
        for key in EXPERIMENT_FIELDS:  # the arm the offer was made in (only when traffic is split)
            if key in offer:
                row[key] = offer[key]
        written = self.offer_log.append_outcome_once(row)
        return str(row[S.OFFER_ID]), written
