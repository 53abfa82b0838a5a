"""What a quote does, independent of HTTP: the served model bundle and the pricing pipeline.

A `ServingModel` is immutable once built: the model (warmed), its catalog index and price arrays,
and its guardrails. The app swaps whole bundles, so a request keeps the bundle it started with.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops.models import DemandModel
from mlops.registry import ModelHandle
from pricing import policy as P
from pricing import schema as S
from scorer.offer_log import QUOTE_ID, OfferLog
from scorer.state import UserStore, events_frame

log = logging.getLogger(__name__)


_IO_POOL: ThreadPoolExecutor | None = None
_IO_POOL_LOCK = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """A few threads for store writes that overlap the offer log's fsync (created on first use)."""
    global _IO_POOL
    if _IO_POOL is None:
        with _IO_POOL_LOCK:
            if _IO_POOL is None:
                _IO_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-io")
    return _IO_POOL


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

    @property
    def policy(self) -> str:
        return f"{self.name}@{self.version}"


DEFAULT_EXPLORATION = 0.05  # serving's exploration share when neither operator nor model sets one


def serving_guardrails(
    registered: dict[str, Any] | None, exploration: float | None
) -> tuple[P.Guardrails, dict[str, str]]:
    """The guardrails a served model quotes with, and where each value came from.

    Precedence, per key: the operator's environment (only `PRICING_EXPLORATION` today) over the
    guardrails the model was registered with, over the defaults (`DEFAULT_EXPLORATION` for
    exploration, `Guardrails`' for the rest).
    """
    registered = dict(registered or {})
    values: dict[str, Any] = {"exploration": DEFAULT_EXPLORATION}
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
    return ServingModel(
        name=handle.name,
        version=str(handle.version),
        model=model,
        guardrails=guardrails,
        index=index,
        list_price=catalog[S.LIST_PRICE].to_numpy(dtype=float),
        unit_cost=catalog[S.UNIT_COST].to_numpy(dtype=float),
        cold_state=model.user_state(events_frame([])),
        run_id=handle.run_id,
        guardrail_sources=sources,
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


class Pricer:
    """The quote pipeline: user state -> grid -> demand -> choose -> explore -> sticky -> log."""

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
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._rng_lock = threading.Lock()  # np.random.Generator is not thread-safe

    def compute_state(self, sm: ServingModel, user_id: str) -> tuple[Any, bool]:
        """Run the user tower over the user's stored events and cache the result: (state, personalized).

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
            state = self.store.get_state(user_id, sm.policy)
            if state is not None:
                self.cache.put(user_id, sm.policy, state)
                return state, True
            # the leader's state was already stale (more events arrived): compute our own
        else:
            leader = False  # still contended: compute without the flight (rare)
        try:
            events, generation = self.store.get_events(user_id)
            if not events:
                return sm.cold_state, False
            state = sm.model.user_state(events_frame(events))
            self.store.put_state(user_id, sm.policy, state, generation)
            self.cache.put(user_id, sm.policy, state)
            return state, True
        finally:
            if leader:
                with self._inflight_lock:
                    self._inflight.pop(key, None)
                if done is not None:
                    done.set()

    def refresh(self, sm: ServingModel, user_id: str) -> bool:
        """Make the user's cached state current (the background refresher's job); True if computed."""
        if self.store.get_state(user_id, sm.policy) is not None:
            return False  # a quote got there first
        self.compute_state(sm, user_id)
        return True

    def user_state(
        self, sm: ServingModel, user_id: str, prefetched: Any | None = None
    ) -> tuple[Any, bool, bool]:
        """(state, personalized, degraded): cached per (user, version), recomputed once when stale.

        When the store fails, the process's own recent copy of the user's state is used (still
        personalized, flagged degraded), else the cold state (priced as a new user).
        """
        try:
            state = (
                prefetched if prefetched is not None else self.store.get_state(user_id, sm.policy)
            )
            if state is not None:
                self.cache.put(user_id, sm.policy, state)
                return state, True, False
            state, personalized = self.compute_state(sm, user_id)
            return state, personalized, False
        except Exception:  # noqa: BLE001 - a store outage degrades the quote, never a 5xx
            return self._degraded_state(sm, user_id)

    def _degraded_state(self, sm: ServingModel, user_id: str) -> tuple[Any, bool, bool]:
        log.warning("user store failed for user %s; pricing from the local cache", user_id)
        cached = self.cache.get(user_id, sm.policy)
        if cached is not None:
            return cached, True, True
        return sm.cold_state, False, True

    @staticmethod
    def _demand(sm: ServingModel, state: Any, idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        probs = np.asarray(sm.model.demand(state, idx, grid), dtype=float)
        if probs.shape != grid.shape:
            raise RuntimeError(
                f"model {sm.policy} returned shape {probs.shape}, expected {grid.shape}"
            )
        return probs

    def quote(
        self, sm: ServingModel, user_id: str, items: list[str], session_id: str | None
    ) -> PricedItems:
        """Price and rank `items` for the user, log the quote durably, and remember sticky prices."""
        unknown = [i for i in items if i not in sm.index]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise QuoteError(
                f"unknown item ids (not in model {sm.policy}'s catalog): {shown}{more}"
            )
        if len(set(items)) != len(items):
            raise QuoteError("duplicate item ids in the request")
        idx = np.fromiter((sm.index[i] for i in items), dtype=np.int64, count=len(items))
        lp, cost = sm.list_price[idx], sm.unit_cost[idx]
        g = sm.guardrails

        # One store round trip for the cached state and the session's last prices when the store
        # offers it (Redis); the generic protocol calls otherwise.
        prefetched, last_prices, prefetch_failed = None, None, False
        view = getattr(self.store, "get_state_and_last_prices", None)
        if view is not None:
            try:
                prefetched, last_prices = view(user_id, sm.policy, session_id, items)
            except Exception:  # noqa: BLE001 - handled below as a store outage
                prefetch_failed = True
        if prefetch_failed:
            state, personalized, degraded = self._degraded_state(sm, user_id)
        else:
            state, personalized, degraded = self.user_state(sm, user_id, prefetched)
        last = None
        if session_id is not None and not degraded:
            try:
                if last_prices is None:
                    last_prices = self.store.get_last_prices(user_id, session_id, items)
                last = np.array(last_prices, dtype=float)  # None -> NaN: no bound
            except Exception:  # noqa: BLE001
                log.warning("user store failed reading last prices")
                degraded = True

        decision = P.optimize(
            lambda grid: self._demand(sm, state, idx, grid), lp, cost, g, last_price=last
        )
        assert decision.grid is not None
        with self._rng_lock:
            price, propensity, explored = P.explore(decision, decision.grid, g.exploration, self.rng)

        prob = P.quoted_probability(decision, price)
        profit = (price - cost) * prob
        value = profit if g.objective == "profit" else price * prob
        rank = P.rank_by_value(value)

        quote_id = uuid.uuid4().hex
        ts = datetime.now(UTC).isoformat()
        policy = sm.policy
        log_rows = [
            {
                S.OFFER_ID: f"{quote_id}:{item}",
                QUOTE_ID: quote_id,
                S.TS: ts,
                S.USER_ID: user_id,
                S.SESSION_ID: session_id,
                S.ITEM_ID: item,
                S.PRICE: float(price[k]),
                S.PROPENSITY: float(propensity[k]),
                S.POLICY: policy,
                "purchase_probability": float(prob[k]),  # for live calibration (monitor flow)
            }
            for k, item in enumerate(items)
        ]
        sticky: Future[None] | None = None
        if session_id is not None and not degraded:
            # Both are blocking I/O that release the GIL: the Redis write overlaps the fsync.
            sticky = _io_pool().submit(
                self.store.set_last_price,
                user_id,
                session_id,
                dict(zip(items, price.tolist(), strict=True)),
            )
        self.offer_log.append_quotes(log_rows)
        self.book.put(quote_id, log_rows)
        if sticky is not None:
            try:
                sticky.result(timeout=5.0)
            except Exception:  # noqa: BLE001 - the quote stands; only stickiness is lost
                log.warning("user store failed writing last prices")
                degraded = True
        return PricedItems(
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
            personalized=personalized,
            degraded=degraded,
        )

    def find_quote(self, quote_id: str) -> dict[str, dict[str, Any]] | None:
        """The logged offers of a quote by item id: memory first, then the quote log; None if unknown.

        The log lookup goes through its quote-id index (no scan); `OfferLogError` when it cannot be
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

    def record_outcome(self, offer: dict[str, Any], purchased: bool) -> str:
        """Durably append the offer with its label; returns the offer id."""
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
        self.offer_log.append_outcome(row)
        return str(row[S.OFFER_ID])
