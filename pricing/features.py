"""Hand-built features for the baselines: user history aggregates as of each offer, item and price.

Training and serving share one definition: both reduce a user's events to the same raw sums
(`HISTORY_SUMS`), then `finalize_history` turns sums into features. Training computes the sums
cumulatively and joins them to each offer strictly before its `ts` (no leakage); serving computes
them over the user's events held by the scorer.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pricing import schema as S

CHEAP_WORDS = (
    "cheap",
    "deal",
    "deals",
    "discount",
    "budget",
    "sale",
    "bargain",
    "affordable",
    "offer",
)
PREMIUM_WORDS = ("premium", "best", "luxury", "quality", "top", "pro", "finest", "gourmet")
_CHEAP_RE = re.compile(r"\b(?:" + "|".join(CHEAP_WORDS) + r")\b", re.IGNORECASE)
_PREMIUM_RE = re.compile(r"\b(?:" + "|".join(PREMIUM_WORDS) + r")\b", re.IGNORECASE)

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
)

USER_FEATURES = (
    "u_log_events",
    "u_log_purchases",
    "u_buy_rate",
    "u_paid_ratio",
    "u_cheap_share",
    "u_premium_share",
    "u_conv_low",
    "u_conv_high",
    "u_conv_gap",
    "u_cat_share",
)
ITEM_FEATURES = ("i_log_list_price", "i_margin")
PRICE_FEATURES = ("log_price_ratio",)
FEATURES = PRICE_FEATURES + ITEM_FEATURES + USER_FEATURES


def event_sums(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per-event indicator columns (one row per event) whose sums are the user's history state."""
    list_price = events[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.LIST_PRICE])
    ratio = (events[S.PRICE].astype("float64") / list_price.astype("float64")).to_numpy()
    etype = events[S.EVENT_TYPE].astype(str).to_numpy()
    is_view = etype == S.VIEW
    is_buy = etype == S.PURCHASE
    is_search = etype == S.SEARCH
    query = (
        events[S.QUERY].fillna("").astype(str)
        if S.QUERY in events
        else pd.Series("", index=events.index)
    )
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
            "n_cheap": (is_search & query.str.contains(_CHEAP_RE).to_numpy()).astype(float),
            "n_premium": (is_search & query.str.contains(_PREMIUM_RE).to_numpy()).astype(float),
            "n_low_views": (is_view & low).astype(float),
            "n_low_buys": (is_buy & low).astype(float),
            "n_high_views": (is_view & high).astype(float),
            "n_high_buys": (is_buy & high).astype(float),
        },
        index=events.index,
    )
    return out


def finalize_history(sums: pd.DataFrame, cat_count: np.ndarray | pd.Series) -> pd.DataFrame:
    """Turn raw history sums (and the count of events in the offer item's category) into features.

    Shrunk ratios (a prior of a few pseudo-events) keep users with short histories near the average.
    """
    n = sums["n_events"].to_numpy(float)
    views = sums["n_views"].to_numpy(float)
    buys = sums["n_purchases"].to_numpy(float)
    searches = sums["n_searches"].to_numpy(float)
    conv_low = (sums["n_low_buys"].to_numpy(float) + 0.1) / (
        sums["n_low_views"].to_numpy(float) + 1.0
    )
    conv_high = (sums["n_high_buys"].to_numpy(float) + 0.1) / (
        sums["n_high_views"].to_numpy(float) + 1.0
    )
    return pd.DataFrame(
        {
            "u_log_events": np.log1p(n),
            "u_log_purchases": np.log1p(buys),
            "u_buy_rate": (buys + 0.1) / (views + 1.0),
            "u_paid_ratio": (sums["sum_paid_ratio"].to_numpy(float) + 2.0) / (buys + 2.0),
            "u_cheap_share": (sums["n_cheap"].to_numpy(float)) / (searches + 1.0),
            "u_premium_share": (sums["n_premium"].to_numpy(float)) / (searches + 1.0),
            "u_conv_low": conv_low,
            "u_conv_high": conv_high,
            "u_conv_gap": np.log(conv_low) - np.log(conv_high),
            "u_cat_share": (np.asarray(cat_count, dtype=float)) / (n + 1.0),
        },
        index=sums.index,
    )


def item_features(items: pd.DataFrame) -> pd.DataFrame:
    """Per-item features indexed by item_id."""
    lp = items[S.LIST_PRICE].astype(float).to_numpy()
    cost = items[S.UNIT_COST].astype(float).to_numpy()
    return pd.DataFrame(
        {"i_log_list_price": np.log(lp), "i_margin": (lp - cost) / lp},
        index=pd.Index(items[S.ITEM_ID].astype(str), name=S.ITEM_ID),
    )


def price_features(price: np.ndarray, list_price: np.ndarray) -> np.ndarray:
    """log(price / list_price), the only price input every model shares."""
    return np.log(np.asarray(price, float) / np.asarray(list_price, float))


def offer_features(offers: pd.DataFrame, events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Features of each offer from the user's events strictly before the offer's ts.

    Returns a frame aligned with `offers` (same index and order) with columns `FEATURES` plus
    `category` (for models that embed it).
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
    for col in USER_FEATURES:
        out[col] = feats[col].to_numpy()
    out[S.CATEGORY] = joined[S.CATEGORY].to_numpy()
    return out


def user_history_state(
    events: pd.DataFrame, items: pd.DataFrame
) -> tuple[pd.Series, dict[str, float]]:
    """Serving-side state of one user: raw history sums and per-category event counts."""
    if len(events) == 0:
        return pd.Series(0.0, index=list(HISTORY_SUMS)), {}
    sums = event_sums(events, items).sum()
    cats = events[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.CATEGORY]).dropna().astype(str)
    return sums, {str(k): float(v) for k, v in cats.value_counts().items()}


def serving_features(
    sums: pd.Series,
    cat_counts: dict[str, float],
    item_frame: pd.DataFrame,
) -> pd.DataFrame:
    """User features for a set of candidate items (rows of `item_frame`: item_id, category, ...)."""
    n = len(item_frame)
    sums_frame = pd.DataFrame([sums.to_numpy()] * n, columns=list(HISTORY_SUMS))
    cat_count = item_frame[S.CATEGORY].astype(str).map(cat_counts).fillna(0.0).to_numpy()
    return finalize_history(sums_frame, cat_count)
