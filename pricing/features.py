"""Hand-built features for the baselines: user history aggregates as of each offer, item and price.

Training and serving share one definition: both reduce a user's events to the same raw sums
(`HISTORY_SUMS`), then `finalize_history` turns sums into features. Training computes the sums
cumulatively and joins them to each offer strictly before its `ts` (no leakage); serving computes
them over the user's events held by the scorer.

`offer_features` (cached per data and code version by the feature task) holds only what needs no
fitting: price, item, item popularity as of the offer and user history. What a model fits on its
training split is computed by the model from the same events: the learned search keywords
(`pricing.keywords`, `KEYWORD_FEATURES` via `keyword_features`) and, for the text baseline, the
user's recent items and searches (`recent_events`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.keywords import query_terms

# Price relative to list below/above which a view counts as "on discount" / "marked up".
LOW_RATIO = 0.97
HIGH_RATIO = 1.03

HISTORY_SUMS = (
    "n_events",
    "n_views",
    "n_purchases",
    "n_searches",
    "sum_paid_ratio",
    "n_cheap",
    "n_premium",
    "n_low_views",
    "n_low_buys",
    "n_high_views",
    "n_high_buys",
    "sum_view_pos",
)

# One Index object for every history-sums Series the serving paths build: building a Series on
# a list of names converts them (a quarter of a millisecond); on this Index it does not.
SUMS_INDEX = pd.Index(list(HISTORY_SUMS))

USER_FEATURES = (
    "u_log_events",
    "u_log_purchases",
    "u_buy_rate",
    "u_paid_ratio",
    "u_conv_low",
    "u_conv_high",
    "u_conv_gap",
    "u_cat_share",
    "u_view_pos",
)
# Shares of the user's searches holding a learned cheap / premium keyword: they need a fitted
# `QueryKeywords`, so models compute them (`keyword_features`); `finalize_history` names them too.
KEYWORD_FEATURES = ("u_cheap_share", "u_premium_share")
# An item's price position: its log list price minus the median log list price of its category,
# over the whole catalog. Its mean over a shopper's views says where in each category's price range
# the shopper browses (`u_view_pos`): budget brands or premium ones, a strong behavioural sign of
# price sensitivity.
ITEM_FEATURES = ("i_log_list_price", "i_margin", "i_price_pos")
PRICE_POSITION = "i_price_pos"
# The item's events and purchases strictly before the offer: the last `POPULARITY_WINDOW`, and its
# shrunk purchase rate per view over all earlier history.
POPULARITY_FEATURES = ("i_log_events_7d", "i_log_buys_7d", "i_buy_rate")
POPULARITY_WINDOW = pd.Timedelta(days=7)
# What `item_popularity` gives an item without earlier events (a catalog saved without a snapshot).
NO_HISTORY_POPULARITY: dict[str, float] = {
    "i_log_events_7d": 0.0,
    "i_log_buys_7d": 0.0,
    "i_buy_rate": 0.1,
}
PRICE_FEATURES = ("log_price_ratio",)
FEATURES = PRICE_FEATURES + ITEM_FEATURES + POPULARITY_FEATURES + USER_FEATURES


def event_sums(events: pd.DataFrame, items: pd.DataFrame, keywords: Any = None) -> pd.DataFrame:
    """Per-event indicator columns (one row per event) whose sums are the user's history state.

    `keywords` (a fitted `pricing.keywords.QueryKeywords`) flags cheap / premium searches; without
    it `n_cheap` and `n_premium` are zero.
    """
    list_price = events[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.LIST_PRICE])
    ratio = (events[S.PRICE].astype("float64") / list_price.astype("float64")).to_numpy()
    position = events[S.ITEM_ID].map(price_position(items)).astype("float64").to_numpy()
    etype = events[S.EVENT_TYPE].astype(str).to_numpy()
    is_view = etype == S.VIEW
    is_buy = etype == S.PURCHASE
    is_search = etype == S.SEARCH
    query = (
        events[S.QUERY].fillna("").astype(str)
        if S.QUERY in events
        else pd.Series("", index=events.index)
    )
    cheap, premium = _keyword_flags(query, keywords)
    with np.errstate(invalid="ignore"):
        low = np.nan_to_num(ratio, nan=1.0) < LOW_RATIO
        high = np.nan_to_num(ratio, nan=1.0) > HIGH_RATIO
    out = pd.DataFrame(
        {
            "n_events": np.ones(len(events)),
            "n_views": is_view.astype(float),
            "n_purchases": is_buy.astype(float),
            "n_searches": is_search.astype(float),
            "sum_paid_ratio": np.where(is_buy, np.nan_to_num(ratio, nan=1.0), 0.0),
            "n_cheap": (is_search & cheap).astype(float),
            "n_premium": (is_search & premium).astype(float),
            "n_low_views": (is_view & low).astype(float),
            "n_low_buys": (is_buy & low).astype(float),
            "n_high_views": (is_view & high).astype(float),
            "n_high_buys": (is_buy & high).astype(float),
            "sum_view_pos": np.where(is_view, np.nan_to_num(position, nan=0.0), 0.0),
        },
        index=events.index,
    )
    return out


def _keyword_flags(query: pd.Series, keywords: Any) -> tuple[np.ndarray, np.ndarray]:
    if keywords is None:
        return np.zeros(len(query), bool), np.zeros(len(query), bool)
    cheap, premium = keywords.flags(query)
    return np.asarray(cheap, bool), np.asarray(premium, bool)


def finalize_history(sums: pd.DataFrame, cat_count: np.ndarray | pd.Series) -> pd.DataFrame:
    """Turn raw history sums (and the count of events in the offer item's category) into features.

    Returns `USER_FEATURES` and `KEYWORD_FEATURES` (the latter zero when the sums were built
    without keywords).

    Shrunk ratios (a prior of a few pseudo-events) keep users with short histories near the average.
    """
    cols = history_columns({k: sums[k].to_numpy(float) for k in HISTORY_SUMS}, cat_count)
    return pd.DataFrame(cols, index=sums.index)


def history_columns(
    sums: dict[str, np.ndarray], cat_count: np.ndarray | pd.Series
) -> dict[str, np.ndarray]:
    """`finalize_history` on plain arrays (one per `HISTORY_SUMS` key; they broadcast against
    `cat_count`): the serving paths' version, with no DataFrame to build."""
    n = sums["n_events"]
    views = sums["n_views"]
    buys = sums["n_purchases"]
    searches = sums["n_searches"]
    conv_low = (sums["n_low_buys"] + 0.1) / (sums["n_low_views"] + 1.0)
    conv_high = (sums["n_high_buys"] + 0.1) / (sums["n_high_views"] + 1.0)
    return {
        "u_log_events": np.log1p(n),
        "u_log_purchases": np.log1p(buys),
        "u_buy_rate": (buys + 0.1) / (views + 1.0),
        "u_paid_ratio": (sums["sum_paid_ratio"] + 2.0) / (buys + 2.0),
        "u_cheap_share": sums["n_cheap"] / (searches + 1.0),
        "u_premium_share": sums["n_premium"] / (searches + 1.0),
        "u_conv_low": conv_low,
        "u_conv_high": conv_high,
        "u_conv_gap": np.log(conv_low) - np.log(conv_high),
        "u_cat_share": np.asarray(cat_count, dtype=float) / (n + 1.0),
        "u_view_pos": sums["sum_view_pos"] / (views + 2.0),
    }


def price_position(items: pd.DataFrame) -> pd.Series:
    """Per item (indexed by item_id): its log list price minus its category's median log list
    price over the rows of `items` (0 for an item without a category or a positive list price). A
    column `i_price_pos` already in `items` (a model's catalog sets it once) is read as it is."""
    ids = pd.Index(items[S.ITEM_ID].astype(str), name=S.ITEM_ID)
    if PRICE_POSITION in items:
        return pd.Series(items[PRICE_POSITION].to_numpy(float), index=ids, name=PRICE_POSITION)
    if S.CATEGORY not in items:
        return pd.Series(0.0, index=ids, name=PRICE_POSITION)
    lp = items[S.LIST_PRICE].astype("float64")
    log_lp = pd.Series(np.log(lp.where(lp > 0).to_numpy(float)), index=items.index)
    cat = items[S.CATEGORY].astype(str).where(items[S.CATEGORY].notna())
    median = log_lp.groupby(cat).transform("median")
    pos = (log_lp - median).fillna(0.0).to_numpy(float)
    return pd.Series(pos, index=ids, name=PRICE_POSITION)


def item_features(items: pd.DataFrame) -> pd.DataFrame:
    """Per-item features indexed by item_id (the price position as `price_position` gives it)."""
    lp = items[S.LIST_PRICE].astype(float).to_numpy()
    cost = items[S.UNIT_COST].astype(float).to_numpy()
    return pd.DataFrame(
        {
            "i_log_list_price": np.log(lp),
            "i_margin": (lp - cost) / lp,
            PRICE_POSITION: price_position(items).to_numpy(),
        },
        index=pd.Index(items[S.ITEM_ID].astype(str), name=S.ITEM_ID),
    )


def price_features(price: np.ndarray, list_price: np.ndarray) -> np.ndarray:
    """log(price / list_price), the only price input every model shares."""
    return np.log(np.asarray(price, float) / np.asarray(list_price, float))


def _ts_ns(ts: Any) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (UTC): one dtype for every as-of join."""
    return pd.DatetimeIndex(pd.to_datetime(pd.Series(ts), utc=True)).as_unit("ns").asi8


def _last_before(
    key: np.ndarray, ts: np.ndarray, ev_key: np.ndarray, ev_ts: np.ndarray, values: pd.DataFrame
) -> pd.DataFrame:
    """Per query row: `values` at the latest event row with the same key strictly before its ts.

    `values` is aligned with the event arrays; among events with equal ts the last one given wins.
    Rows without an earlier event get NaN. The result is aligned with the query rows.
    """
    # Keys as one string dtype on both sides: pandas infers its string dtype for an array of str,
    # but not for an empty one (no searches in the data), and merge_asof refuses the mix.
    left = pd.DataFrame({"_row": np.arange(len(key)), "_k": pd.Series(key, dtype="str"), "_t": ts})
    right = values.reset_index(drop=True).assign(_k=pd.Series(ev_key, dtype="str"), _t=ev_ts)
    joined = pd.merge_asof(
        left.sort_values("_t", kind="stable"),
        right.sort_values("_t", kind="stable"),
        on="_t",
        by="_k",
        allow_exact_matches=False,  # strictly before: an event at the offer's own ts never counts
        direction="backward",
    )
    return joined.sort_values("_row")[list(values.columns)].reset_index(drop=True)


def _counts_before(
    key: np.ndarray, ts: np.ndarray, ev_key: np.ndarray, ev_ts: np.ndarray, counts: pd.DataFrame
) -> pd.DataFrame:
    """Per query row: the sums of `counts` over events with the same key strictly before its ts."""
    order = np.argsort(ev_ts, kind="stable")
    cum = counts.iloc[order].groupby(ev_key[order]).cumsum()
    return _last_before(key, ts, ev_key[order], ev_ts[order], cum).fillna(0.0)


DAILY_COUNTS = ("n", "views", "buys")  # what `daily_item_counts` sums per (item, day)
_NS_PER_DAY = 86_400 * 10**9


def _day(ts_ns: np.ndarray) -> np.ndarray:
    """UTC calendar day numbers (days since the epoch) of int64 nanosecond timestamps."""
    return np.floor_divide(ts_ns, _NS_PER_DAY)


def daily_item_counts(events: pd.DataFrame) -> pd.DataFrame:
    """Per (item, UTC day): the item's events, views and purchases that day (`DAILY_COUNTS`).

    The whole input of item popularity, and small (items x days): a partitioned pipeline sums the
    tables of its partitions (`combine_daily_counts`) and joins the result back to every offer.
    """
    ev = events[events[S.ITEM_ID].notna()]
    etype = ev[S.EVENT_TYPE].astype(str).to_numpy()
    frame = pd.DataFrame(
        {
            S.ITEM_ID: ev[S.ITEM_ID].astype(str).to_numpy(),
            "day": _day(_ts_ns(ev[S.TS])),
            "n": np.ones(len(ev)),
            "views": (etype == S.VIEW).astype(float),
            "buys": (etype == S.PURCHASE).astype(float),
        }
    )
    return combine_daily_counts([frame])


def combine_daily_counts(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The sum of several `daily_item_counts` tables (counts are whole numbers: the sum is exact
    in any order), sorted by (item, day)."""
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(
            {S.ITEM_ID: pd.Series(dtype="str"), "day": pd.Series(dtype="int64")}
            | {c: pd.Series(dtype="float64") for c in DAILY_COUNTS}
        )
    both = pd.concat(frames, ignore_index=True)
    out = both.groupby([S.ITEM_ID, "day"], sort=True, as_index=False)[list(DAILY_COUNTS)].sum()
    out[S.ITEM_ID] = out[S.ITEM_ID].astype("str")
    out["day"] = out["day"].astype("int64")
    return out


def item_popularity(
    offers: pd.DataFrame,
    events: pd.DataFrame | None = None,
    window: pd.Timedelta = POPULARITY_WINDOW,
    daily: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """`POPULARITY_FEATURES` of each offer's item from the item's events on UTC days before the
    offer's day.

    Counts over the trailing `window` of whole days (the 7 days before the offer's day, not all
    history) so that they mean the same early and late in the data; the purchase rate per view
    uses every earlier day and is shrunk like the user's (`u_buy_rate`). Whole days, not the
    offer's exact ts: popularity is then a function of the (item, day) counts alone
    (`daily_item_counts`, or `daily` when given), which a partitioned pipeline computes once
    for all partitions; an event on the offer's own day never counts.
    """
    if daily is None:
        if events is None:
            raise ValueError("item_popularity needs the events or their daily counts")
        daily = daily_item_counts(events)
    days = int(window / pd.Timedelta(days=1))
    key = offers[S.ITEM_ID].astype(str).to_numpy()
    day = _day(_ts_ns(offers[S.TS]))
    counts = daily[list(DAILY_COUNTS)].reset_index(drop=True)
    ev_key = daily[S.ITEM_ID].astype(str).to_numpy()
    ev_day = daily["day"].to_numpy(np.int64)
    now = _counts_before(key, day, ev_key, ev_day, counts)
    old = _counts_before(key, day - days, ev_key, ev_day, counts)
    return pd.DataFrame(
        {
            "i_log_events_7d": np.log1p((now["n"] - old["n"]).to_numpy()),
            "i_log_buys_7d": np.log1p((now["buys"] - old["buys"]).to_numpy()),
            "i_buy_rate": ((now["buys"] + 0.1) / (now["views"] + 1.0)).to_numpy(),
        },
        index=offers.index,
    )


def popularity_snapshot(items: pd.DataFrame, events: pd.DataFrame, at: Any) -> pd.DataFrame:
    """`POPULARITY_FEATURES` of every catalog item for an offer at `at` (events on days before
    `at`'s UTC day).

    What serving uses: the scorer holds no item events, so a model keeps its catalog's popularity
    as of the end of its own data.
    """
    probe = pd.DataFrame(
        {S.ITEM_ID: items[S.ITEM_ID].astype(str).to_numpy(), S.TS: pd.Timestamp(at)}
    )
    return item_popularity(probe, events).set_axis(items.index)


def keyword_features(offers: pd.DataFrame, events: pd.DataFrame, keywords: Any) -> pd.DataFrame:
    """`KEYWORD_FEATURES` of each offer: the user's searches strictly before it, flagged by `keywords`.

    The same shares `finalize_history` computes from `event_sums(..., keywords)` at serving time.
    """
    is_search = events[S.EVENT_TYPE].astype(str) == S.SEARCH
    search = events[is_search]
    query = (
        search[S.QUERY].fillna("").astype(str)
        if S.QUERY in search
        else pd.Series("", index=search.index)
    )
    cheap, premium = _keyword_flags(query, keywords)
    counts = pd.DataFrame(
        {"n": np.ones(len(search)), "cheap": cheap.astype(float), "premium": premium.astype(float)}
    )
    c = _counts_before(
        offers[S.USER_ID].astype(str).to_numpy(),
        _ts_ns(offers[S.TS]),
        search[S.USER_ID].astype(str).to_numpy(),
        _ts_ns(search[S.TS]),
        counts,
    )
    return pd.DataFrame(
        {
            "u_cheap_share": (c["cheap"] / (c["n"] + 1.0)).to_numpy(),
            "u_premium_share": (c["premium"] / (c["n"] + 1.0)).to_numpy(),
        },
        index=offers.index,
    )


def recent_events(user: np.ndarray, ts: Any, ev_user: np.ndarray, ev_ts: Any, k: int) -> np.ndarray:
    """Per query row: the positions (into the event arrays) of the user's last `k` events strictly
    before `ts`, oldest first, right-aligned; -1 where the user has fewer earlier events.

    Returns an (n, k) int64 array. Among events with equal ts the order given wins.
    """
    n = len(user)
    m = len(ev_user)
    if not m or not n or k <= 0:
        return np.full((n, max(k, 0)), -1, np.int64)
    ev_user = np.asarray(ev_user).astype(str)
    ev_ns = _ts_ns(ev_ts)
    order = np.lexsort((ev_ns, ev_user))  # by user, then time (stable within ties)
    sorted_user = ev_user[order]
    pos = pd.DataFrame(
        {
            "end": np.arange(1, m + 1, dtype=float),
            "count": pd.Series(sorted_user).groupby(sorted_user).cumcount().to_numpy() + 1.0,
        }
    )
    last = _last_before(np.asarray(user).astype(str), _ts_ns(ts), sorted_user, ev_ns[order], pos)
    end = last["end"].fillna(0).to_numpy(np.int64)
    count = np.minimum(last["count"].fillna(0).to_numpy(np.int64), k)
    cols = np.arange(k)
    at = end[:, None] - k + cols[None, :]
    valid = cols[None, :] >= (k - count)[:, None]
    return np.where(valid, order[np.clip(at, 0, m - 1)], -1)


def offer_features(
    offers: pd.DataFrame,
    events: pd.DataFrame,
    items: pd.DataFrame,
    daily: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features of each offer from the user's events strictly before the offer's ts.

    Returns a frame aligned with `offers` (same index and order) with columns `FEATURES` plus
    `category` (for models that embed it). Nothing here is fitted: the same tables give the same
    features whatever the split.

    Everything but item popularity reads only the offer's own user's events, so a partition
    holding all events and offers of a set of users gets the same features as the whole table;
    popularity reads every user's events through their `daily_item_counts`, which `daily` gives
    for the whole data when `events` is one partition of it.
    """
    items = items.assign(**{S.ITEM_ID: items[S.ITEM_ID].astype(str)})
    cat_of = items.set_index(S.ITEM_ID)[S.CATEGORY].astype(str)
    ev = events.sort_values(S.TS, kind="stable")
    sums = event_sums(ev, items)
    cum = sums.groupby(ev[S.USER_ID].to_numpy()).cumsum()
    cum[S.USER_ID] = ev[S.USER_ID].astype(str).to_numpy()
    cum[S.TS] = ev[S.TS].to_numpy()

    off = pd.DataFrame(
        {
            "_row": np.arange(len(offers)),
            S.USER_ID: offers[S.USER_ID].astype(str).to_numpy(),
            S.TS: offers[S.TS].to_numpy(),
            S.ITEM_ID: offers[S.ITEM_ID].astype(str).to_numpy(),
        }
    )
    off[S.CATEGORY] = off[S.ITEM_ID].map(cat_of).fillna("").to_numpy()
    off = off.sort_values(S.TS, kind="stable")
    joined = pd.merge_asof(
        off,
        cum.sort_values(S.TS, kind="stable"),
        on=S.TS,
        by=S.USER_ID,
        allow_exact_matches=False,  # strictly before the offer: its own view/purchase never leaks
        direction="backward",
    )
    # Count of the user's earlier events in the offer item's category.
    cat_ev = pd.DataFrame(
        {
            S.USER_ID: ev[S.USER_ID].astype(str).to_numpy(),
            S.TS: ev[S.TS].to_numpy(),
            S.CATEGORY: ev[S.ITEM_ID].map(cat_of).to_numpy(),
        }
    ).dropna(subset=[S.CATEGORY])
    cat_ev["cat_count"] = cat_ev.groupby([S.USER_ID, S.CATEGORY]).cumcount() + 1.0
    joined = pd.merge_asof(
        joined.sort_values(S.TS, kind="stable"),
        cat_ev.sort_values(S.TS, kind="stable"),
        on=S.TS,
        by=[S.USER_ID, S.CATEGORY],
        allow_exact_matches=False,
        direction="backward",
    )
    joined = joined.sort_values("_row").reset_index(drop=True)
    for col in HISTORY_SUMS:
        joined[col] = joined[col].fillna(0.0)
    feats = finalize_history(joined[list(HISTORY_SUMS)], joined["cat_count"].fillna(0.0))
    ifeat = item_features(items).reindex(joined[S.ITEM_ID])
    lp = (
        items.set_index(S.ITEM_ID)[S.LIST_PRICE].astype(float).reindex(joined[S.ITEM_ID]).to_numpy()
    )
    out = pd.DataFrame(index=offers.index)
    out["log_price_ratio"] = price_features(offers[S.PRICE].to_numpy(float), lp)
    out["i_log_list_price"] = ifeat["i_log_list_price"].to_numpy()
    out["i_margin"] = ifeat["i_margin"].to_numpy()
    out[PRICE_POSITION] = ifeat[PRICE_POSITION].to_numpy()
    pop = item_popularity(offers, events, daily=daily)
    for col in POPULARITY_FEATURES:
        out[col] = pop[col].to_numpy()
    for col in USER_FEATURES:
        out[col] = feats[col].to_numpy()
    out[S.CATEGORY] = joined[S.CATEGORY].to_numpy()
    return out


def user_history_state(
    events: pd.DataFrame, items: pd.DataFrame, keywords: Any = None
) -> tuple[pd.Series, dict[str, float]]:
    """Serving-side state of one user: raw history sums and per-category event counts.

    `keywords`: the model's fitted `QueryKeywords` (None: no keyword counts).
    """
    if len(events) == 0:
        return pd.Series(0.0, index=SUMS_INDEX), {}
    sums = event_sums(events, items, keywords).sum()
    cats = events[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.CATEGORY]).dropna().astype(str)
    return sums, {str(k): float(v) for k, v in cats.value_counts().items()}


class HistoryState:
    """`user_history_state(events_frame(events), items, keywords)` for one user's event dicts.

    The scorer's path: the same sums and category counts without building a DataFrame or
    re-indexing the catalog per call (that costs tens of milliseconds on a large catalog; this is
    a loop over the history). Lookups are dicts built once per catalog, keyword flags are cached
    per query. Pandas' rules are kept: an unknown item has no list price (ratio 1 for the
    thresholds) and no category; a price that is not a number counts as missing. The scorer
    checks it against `user_history_state` on probe users when a model version loads.
    """

    def __init__(self, items: pd.DataFrame, keywords: Any = None) -> None:
        ids = items[S.ITEM_ID].tolist()
        prices = items[S.LIST_PRICE].astype("float64").tolist()
        self._list_price = dict(zip(ids, prices, strict=True))
        self._position = dict(zip(ids, price_position(items).tolist(), strict=True))
        self._category = {
            item: str(cat)
            for item, cat in zip(ids, items[S.CATEGORY].tolist(), strict=True)
            if not pd.isna(cat)
        }
        self._cheap = set(keywords.cheap) if keywords is not None else set()
        self._premium = set(keywords.premium) if keywords is not None else set()
        self._flags: dict[str, tuple[bool, bool]] = {}

    def _query_flags(self, query: Any) -> tuple[bool, bool]:
        q = "" if query is None or query != query else str(query)  # None or NaN: no query
        hit = self._flags.get(q)
        if hit is None:
            terms = query_terms(q) if q and (self._cheap or self._premium) else set()
            hit = (bool(terms & self._cheap), bool(terms & self._premium))
            if len(self._flags) < 100_000:
                self._flags[q] = hit
        return hit

    def __call__(self, events: Sequence[Mapping[str, Any]]) -> tuple[pd.Series, dict[str, float]]:
        n = len(events)
        if n == 0:
            return pd.Series(0.0, index=SUMS_INDEX), {}
        # views, purchases, searches, cheap, premium, low views, low buys, high views, high buys
        counts = [0] * 9
        paid = [0.0] * n  # per event, as pandas sums the column (same pairwise order)
        view_pos = [0.0] * n
        cats: Counter[str] = Counter()
        lp_get, cat_get, flags = self._list_price.get, self._category.get, self._query_flags
        pos_get = self._position.get
        for k, e in enumerate(events):
            item = e.get(S.ITEM_ID)
            lp = lp_get(item) if item is not None else None
            if lp is not None:
                cat = cat_get(item)
                if cat is not None:
                    cats[cat] += 1
            kind = str(e.get(S.EVENT_TYPE))
            if kind == S.SEARCH:
                counts[2] += 1
                cheap, premium = flags(e.get(S.QUERY))
                counts[3] += cheap
                counts[4] += premium
                continue
            view, buy = kind == S.VIEW, kind == S.PURCHASE
            if not (view or buy):
                continue
            r = _ratio(_number(e.get(S.PRICE)), lp)
            if buy:
                counts[1] += 1
                paid[k] = r
            else:
                counts[0] += 1
                view_pos[k] = pos_get(item, 0.0)
            if r < LOW_RATIO:
                counts[5 + buy] += 1
            elif r > HIGH_RATIO:
                counts[7 + buy] += 1
        views, buys, searches, cheap_n, premium_n, lv, lb, hv, hb = counts
        sums = np.array(
            [
                *(n, views, buys, searches, np.array(paid).sum(), cheap_n, premium_n),
                *(lv, lb, hv, hb, np.array(view_pos).sum()),
            ],
            float,
        )
        return pd.Series(sums, index=SUMS_INDEX), {c: float(v) for c, v in cats.items()}


_FLOAT_MAX = float(np.finfo(np.float64).max)


def _number(value: Any) -> float:
    """A stored price as `pd.to_numeric(errors="coerce")` reads it: not a number is NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    if type(value) is float:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ratio(price: float, list_price: float | None) -> float:
    """`np.nan_to_num(price / list_price, nan=1.0)` for one event (no list price: NaN)."""
    if list_price is None or price != price or list_price != list_price:
        return 1.0
    if list_price == 0:  # pandas divides by zero to +-inf (or NaN for 0 / 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = float(np.float64(price) / np.float64(list_price))
    else:
        r = price / list_price
    if r != r:
        return 1.0
    if r == math.inf:
        return _FLOAT_MAX
    if r == -math.inf:
        return -_FLOAT_MAX
    return r


def serving_features(
    sums: pd.Series,
    cat_counts: dict[str, float],
    item_frame: pd.DataFrame,
) -> pd.DataFrame:
    """User features (`USER_FEATURES` + `KEYWORD_FEATURES`) for candidate items (rows of `item_frame`)."""
    n = len(item_frame)
    sums_frame = pd.DataFrame([sums.to_numpy()] * n, columns=list(HISTORY_SUMS))
    cat_count = item_frame[S.CATEGORY].astype(str).map(cat_counts).fillna(0.0).to_numpy()
    return finalize_history(sums_frame, cat_count)
