"""The steps the real grocery builders share: line items to contract tables, with no future data.

`pricing/tafeng.py` (Ta Feng) and `pricing/completejourney.py` (The Complete Journey) both turn
grocery line items into the data contract tables (items, events, offers, users) the same way:
each basket (customer x local day) is offered the products the customer could have bought that
day -- its own past products, then the best sellers of its usual categories -- at the price that
prevailed before the day, labelled 1 when the product is in the basket. This module holds those
steps once; each builder keeps only what belongs to its source: reading it, its columns, which
rows are impossible, its time zone, how an offer's price follows from the prevailing price, item
text and costs, and the users table.

The builders hand over their valid line items as a frame with, per line: `source_row` (its row in
the source), `user_id` and `item_id` (text), `category`, `local_date` (the stores' calendar day, a
naive midnight), `unit_price` (paid), and the value columns a step names (e.g. `shelf_unit`).
`code_lines` adds the integer codes c (user), p (item), s (category), d (day, 0 = first) and `day`
(the local midnight of d, in UTC).

No future information, as the steps here guarantee it (the builders' docstrings state it for
their data):

- `reference_lines`: item figures come from the training lines (before the test start) only, or,
  for a product first sold in the test window, from its first day of sale alone.
- `top_products`, `build_candidates`: candidates count only days strictly before the offer's day.
- `prevailing_prices`: the median price of a product's lines on the last day it sold strictly
  before the offer's day; never the offer day's own lines, so never the basket being labelled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.io import write_table

SOURCE_ROW = "source_row"  # 0-based row in the source (rejected rows, event ids)
# Where a candidate came from (its `source`): the user's past products, or a category's best
# sellers ("subclass", Ta Feng's word for a category, for both sources).
FROM_HISTORY, FROM_CATEGORY = "history", "subclass"


@dataclass
class GroceryTables:
    """The contract tables built from a grocery source, the rows that could not be used, figures.

    Attributes:
        tables: items, events, offers, users, with the contract columns (sorted by ts, ids str,
            ts tz-aware UTC).
        rejected: the raw source rows that could not make a line item, with `source_row` and
            `reason`.
        stats: counts and the test-window boundaries (JSON-serializable).
    """

    tables: dict[str, pd.DataFrame]
    rejected: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatWords:
    """How a source's stats name its users and categories, e.g. customers, subclass, subclasses."""

    users: str
    category: str
    categories: str


@dataclass(frozen=True)
class Codebook:
    """What the integer codes of the lines stand for, and the test window.

    Attributes:
        users: user id (text) of each code c.
        products: product id (text) of each code p.
        dates: the local calendar date (naive midnight) of each day code d.
        day_ts: the local midnight that starts each day d, in UTC (an offer's `ts`).
        day_str: each day as YYYYMMDD (in basket and offer ids).
        start_date: the test window's first local date (naive).
        test_start: its local midnight, in UTC: offers at or after it are the test period.
        test_days: the default length of the test window, in days (the last days of the data).
    """

    users: pd.Index
    products: pd.Index
    dates: pd.DatetimeIndex
    day_ts: pd.DatetimeIndex
    day_str: pd.Index
    start_date: pd.Timestamp
    test_start: pd.Timestamp
    test_days: int

    @property
    def n_days(self) -> int:
        return len(self.dates)

    @property
    def n_products(self) -> int:
        return len(self.products)


# --- small vectorized helpers -------------------------------------------------------------------
def take(ids: pd.Index, codes: np.ndarray) -> pd.Series:
    """The ids at `codes`, as a str Series (vectorized, stays Arrow-backed)."""
    return pd.Series(ids.take(codes).array, dtype="str")


def modal_by_group(keys: np.ndarray, values: np.ndarray, prefer_high: bool) -> pd.Series:
    """The most frequent value per key; ties go to the highest (or lowest) value."""
    counts = pd.DataFrame({"k": keys, "v": values}).groupby(["k", "v"]).size().reset_index()
    counts.columns = ["k", "v", "n"]
    counts = counts.sort_values(["k", "n", "v"], ascending=[True, False, not prefer_high])
    return counts.drop_duplicates("k").set_index("k")["v"]


# --- source rows to line items ------------------------------------------------------------------
def quarantine(
    raw: pd.DataFrame, checks: Sequence[tuple[np.ndarray, str]]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Set aside the rows no line item can come from, each with the first reason that applies.

    Args:
        raw: the source rows, indexed 0..n-1.
        checks: (mask of rows that fail, reason) in the order they are checked.

    Returns:
        (ok, rejected): the mask of usable rows; the others' raw columns with `source_row` first
        and `reason` (str) last.
    """
    reason = np.select([bad for bad, _ in checks], [why for _, why in checks], default="")
    bad = reason != ""
    rejected = raw.loc[bad].copy()
    rejected.insert(0, SOURCE_ROW, np.flatnonzero(bad).astype(np.int64))
    rejected[S.REASON] = pd.Series(reason[bad], index=rejected.index, dtype="str")
    return ~bad, rejected.reset_index(drop=True)


def window_start(
    test_start: str | pd.Timestamp | None, last_date: pd.Timestamp, test_days: int, tz: str
) -> pd.Timestamp:
    """The test window's first local date (naive): given, or the first of the last `test_days`.

    A naive `test_start` is a local date; an aware one is converted to the local clock. The time
    of day is dropped.
    """
    if test_start is None:
        return last_date - pd.Timedelta(days=test_days - 1)
    t = pd.Timestamp(test_start)
    if t.tzinfo is not None:
        t = t.tz_convert(tz).tz_localize(None)
    return t.normalize()


def code_lines(
    lines: pd.DataFrame, tz: str, test_start: str | pd.Timestamp | None, test_days: int
) -> Codebook:
    """Add the integer codes c, p, s, d and `day` to `lines` (in place); say what they stand for.

    Users, items and categories are coded in sorted order, days from the first `local_date` (naive
    midnights on the stores' clock `tz`). `test_start` and `test_days` as in `window_start`.
    """
    first_date = lines["local_date"].min()
    lines["d"] = (lines["local_date"] - first_date).dt.days.astype(np.int64)
    n_days = int(lines["d"].max()) + 1
    p_codes, product_ids = pd.factorize(lines[S.ITEM_ID], sort=True)
    c_codes, user_ids = pd.factorize(lines[S.USER_ID], sort=True)
    s_codes, _ = pd.factorize(lines[S.CATEGORY], sort=True)
    lines["p"], lines["c"], lines["s"] = p_codes, c_codes, s_codes

    dates = pd.DatetimeIndex(first_date + pd.to_timedelta(np.arange(n_days), unit="D"))
    day_ts = dates.tz_localize(tz).tz_convert("UTC")  # local midnights, as UTC
    start_date = window_start(test_start, dates[-1], test_days, tz)
    lines["day"] = day_ts[lines["d"].to_numpy()]
    return Codebook(
        users=user_ids,
        products=product_ids,
        dates=dates,
        day_ts=day_ts,
        day_str=pd.Index(dates.strftime("%Y%m%d"), dtype="str"),
        start_date=start_date,
        test_start=pd.Timestamp(start_date).tz_localize(tz).tz_convert("UTC"),
        test_days=test_days,
    )


def lines_of(lines: pd.DataFrame, kept: np.ndarray, n_users: int) -> pd.DataFrame:
    """The lines of the kept user codes (all lines when every user is kept)."""
    return lines[lines["c"].isin(kept)] if len(kept) < n_users else lines


# --- item figures from the past only --------------------------------------------------------------
def reference_lines(lines: pd.DataFrame, test_start: pd.Timestamp) -> pd.DataFrame:
    """The lines that item figures may use: training lines, or the first sale day's for new items.

    A product sold before `test_start` uses only its lines before it; a product first sold on or
    after it uses only the lines of its first day of sale (it cannot be offered before the next
    day, so no offer of it sees later lines through its item row).
    """
    p = lines["p"]
    train = lines["day"] < test_start
    seen_in_train = train.groupby(p).transform("any")
    first_sale = lines["d"] == lines.groupby("p")["d"].transform("min")
    return lines[train | (~seen_in_train & first_sale)]


def modal_list_price(ref: pd.DataFrame, price: str, n_products: int) -> np.ndarray:
    """Each product code's list price: the modal `price` of its reference lines (2 dp).

    Ties go to the higher price, since promotions cut prices, not raise them. At least a cent: a
    unit price under half a cent would round to 0, and the contract wants list_price > 0.
    """
    modal = modal_by_group(ref["p"].to_numpy(), ref[price].round(2).to_numpy(), prefer_high=True)
    return modal.reindex(np.arange(n_products)).clip(lower=0.01).to_numpy(dtype=float)


# --- market figures known before each day -------------------------------------------------------
def top_products(lines: pd.DataFrame, n_days: int, depth: int) -> pd.DataFrame:
    """For each (category, day), its `depth` best sellers by lines sold strictly before that day.

    Counting only earlier days keeps the candidate set free of the future. Ties go to the lower
    product code; only products sold before the day count. Computed one category at a time, so
    that products x days (68k x 366 on The Complete Journey) never become one long table.

    Returns:
        Columns s, d, p, rank (0 = best).
    """
    sp = lines[["s", "p"]].drop_duplicates().sort_values(["s", "p"]).reset_index(drop=True)
    row = pd.Series(np.arange(len(sp)), index=pd.MultiIndex.from_frame(sp))
    k = row.reindex(pd.MultiIndex.from_frame(lines[["s", "p"]])).to_numpy()
    counts = np.zeros((len(sp), n_days), dtype=np.int32)
    np.add.at(counts, (k, lines["d"].to_numpy()), 1)
    before = np.cumsum(counts, axis=1, dtype=np.int32)
    before -= counts  # lines sold on days < d
    del counts
    s_of, p_of = sp["s"].to_numpy(), sp["p"].to_numpy()
    bounds = np.flatnonzero(np.diff(s_of, prepend=-1, append=-1))
    parts: list[pd.DataFrame] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        block = before[lo:hi]
        order = np.argsort(-block, axis=0, kind="stable")[:depth]  # stable: ties by product code
        n = np.take_along_axis(block, order, axis=0)
        rank, d = np.nonzero(n > 0)
        parts.append(
            pd.DataFrame(
                {
                    "s": np.full(len(d), s_of[lo], dtype=np.int64),
                    "d": d.astype(np.int64),
                    "p": p_of[lo + order[rank, d]].astype(np.int64),
                    "rank": rank.astype(np.int64),
                }
            )
        )
    if not parts:
        return pd.DataFrame({"s": [], "d": [], "p": [], "rank": []}, dtype=np.int64)
    return pd.concat(parts, ignore_index=True)


def prevailing_prices(
    lines: pd.DataFrame, cand: pd.DataFrame, price: str, fallback: np.ndarray
) -> np.ndarray:
    """The price of product p known before day d, for each candidate (p, d) (2 dp).

    The median `price` of p's lines (all customers) on the last day before d it sold, else
    `fallback[p]` (p never sold before d: no candidate names it then). Day d's own lines never
    count, so an offer's price cannot carry its basket's label.
    """
    daily = lines.groupby(["p", "d"], as_index=False).agg(price=(price, "median"))
    left = pd.DataFrame(
        {"row": np.arange(len(cand)), "p": cand["p"].to_numpy(), "d": cand["d"].to_numpy()}
    )
    joined = pd.merge_asof(
        left.sort_values("d", kind="stable"),
        daily.sort_values("d", kind="stable"),
        on="d",
        by="p",
        allow_exact_matches=False,  # the offer day's own lines never count
        direction="backward",
    ).sort_values("row")
    known = np.round(joined["price"].to_numpy(dtype=float), 2)
    return np.where(np.isnan(known), fallback[cand["p"].to_numpy()], known)


# --- candidates ---------------------------------------------------------------------------------
def build_candidates(
    lines: pd.DataFrame, top: pd.DataFrame, n_products: int, max_candidates: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The offer set of every basket that has history, with labels.

    Candidates of basket (c, d): first c's products bought on days < d (most baskets first, then
    most recent, then id), then the top sellers before d of c's usual categories (categories c
    bought on days < d, most used first), taken round-robin (the best of each category, then the
    second best, ...), never repeating a product, capped at `max_candidates`. A customer's first
    basket has no history and gets no offers.

    Returns:
        (candidates, counts): candidates has c, d, p, order (position in the offer set), source
        ("history" or "subclass": a category's best seller), purchased; counts has basket figures
        for the stats.
    """
    # One row per (customer, day, product): a basket holds a product once, whatever its lines.
    bought = lines.drop_duplicates(["c", "d", "p"])[["c", "d", "p", "s"]]
    baskets = bought[["c", "d"]].drop_duplicates().sort_values(["c", "d"]).reset_index(drop=True)
    baskets["b"] = np.arange(len(baskets), dtype=np.int64)
    bought = bought.merge(baskets, on=["c", "d"])
    basket_keys = bought["b"].to_numpy() * n_products + bought["p"].to_numpy()

    # Each basket against each earlier purchase of the same customer: strictly earlier days only.
    hist = baskets.merge(
        bought[["c", "d", "p", "s"]].rename(columns={"d": "dh"}), on="c", how="inner"
    )
    hist = hist[hist["dh"] < hist["d"]]

    past = hist.groupby(["b", "p"], sort=False).agg(n=("dh", "size"), last=("dh", "max"))
    past = past.reset_index().sort_values(
        ["b", "n", "last", "p"], ascending=[True, False, False, True]
    )
    past["order"] = past.groupby("b").cumcount()
    past_keys = past["b"].to_numpy() * n_products + past["p"].to_numpy()
    past = past[past["order"] < max_candidates]
    n_past = past.groupby("b").size()

    # Baskets with history and room left get category top sellers.
    subs = hist.groupby(["b", "s"], sort=False).agg(n=("dh", "size"), last=("dh", "max"))
    subs = subs.reset_index().sort_values(
        ["b", "n", "last", "s"], ascending=[True, False, False, True]
    )
    subs["srank"] = subs.groupby("b").cumcount()
    room = (max_candidates - n_past.reindex(subs["b"]).fillna(0)).to_numpy()
    subs["room"] = room
    subs = subs[subs["srank"] < subs["room"]].merge(baskets[["b", "d"]], on="b")

    taken = np.asarray(past_keys)
    picked: list[pd.DataFrame] = []
    active = subs[["b", "d", "s", "srank", "room"]]
    filled = pd.Series(0, index=pd.Index([], dtype=np.int64), dtype=np.int64)
    room_by_basket = subs.groupby("b")["room"].first()
    top_by_rank = dict(tuple(top.groupby("rank")[["s", "d", "p"]]))
    # One vectorized round per depth: at most max_candidates rounds, over shrinking pairs.
    for r in range(max_candidates):
        if active.empty or r not in top_by_rank:
            break
        m = active.merge(top_by_rank[r], on=["s", "d"])
        # A category with no product at this depth has none deeper either: drop its pairs.
        active = active.merge(m[["b", "s"]], on=["b", "s"])
        m = m.sort_values(["b", "srank"])
        keys = m["b"].to_numpy() * n_products + m["p"].to_numpy()
        # Hash-based isin: numpy's would sort or tabulate the whole (sparse, huge-range) key set.
        fresh = ~(pd.Series(keys).isin(taken) | pd.Series(keys).duplicated()).to_numpy()
        m = m[fresh].copy()
        taken = np.concatenate([taken, keys[fresh]])
        m["round"] = r
        picked.append(m)
        filled = filled.add(m.groupby("b").size(), fill_value=0).astype(np.int64)
        done = filled.index[filled.to_numpy() >= room_by_basket.reindex(filled.index).to_numpy()]
        active = active[~active["b"].isin(done)]

    if picked:
        sub = pd.concat(picked, ignore_index=True).sort_values(["b", "round", "srank"])
        sub["order"] = sub.groupby("b").cumcount()
        sub = sub[sub["order"] < sub["room"]]
        sub["order"] = sub["order"] + n_past.reindex(sub["b"]).fillna(0).to_numpy(dtype=np.int64)
    else:
        sub = pd.DataFrame({"b": [], "p": [], "order": []}, dtype=np.int64)

    cand = pd.concat(
        [
            past[["b", "p", "order"]].assign(source=FROM_HISTORY),
            sub[["b", "p", "order"]].assign(source=FROM_CATEGORY),
        ],
        ignore_index=True,
    ).astype({"b": np.int64, "p": np.int64, "order": np.int64})
    cand = cand.merge(baskets, on="b")
    cand_keys = cand["b"].to_numpy() * n_products + cand["p"].to_numpy()
    cand["purchased"] = pd.Series(cand_keys).isin(basket_keys).to_numpy().astype(np.int64)

    first_day = baskets.groupby("c")["d"].transform("min")
    later = baskets["d"] > first_day
    later_bought = bought[bought["b"].isin(baskets.loc[later, "b"])]
    counts = {
        "baskets": int(len(baskets)),
        "first_baskets_skipped": int((~later).sum()),
        "baskets_with_offers": int(cand["b"].nunique()),
        "basket_products_after_first": int(len(later_bought)),
        "basket_products_covered": int(cand["purchased"].sum()),
    }
    return cand[["c", "d", "p", "order", "source", "purchased"]], counts


def offer_candidates(
    lines: pd.DataFrame,
    top: pd.DataFrame,
    n_products: int,
    max_candidates: int,
    pairs_per_chunk: int | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """`build_candidates`, sorted as the offers table is (day, customer, position).

    With `pairs_per_chunk`, customers are taken in groups of about that many baskets x earlier
    purchases (129M pairs on the full Complete Journey), to bound the memory. Candidates are per
    customer, so the result is the same as one call.
    """
    if pairs_per_chunk is None:
        cand, totals = build_candidates(lines, top, n_products, max_candidates)
    else:
        bought = lines.drop_duplicates(["c", "d", "p"])
        per_c = bought.groupby("c").agg(n=("p", "size"), days=("d", "nunique"))
        load = (per_c["n"] * per_c["days"]).cumsum()
        chunk_of_c = pd.Series((load.to_numpy() - 1) // pairs_per_chunk, index=per_c.index)
        parts: list[pd.DataFrame] = []
        totals = {}
        for _, chunk in lines.groupby(lines["c"].map(chunk_of_c).to_numpy(), sort=True):
            cats = chunk["s"].unique()
            part, counts = build_candidates(
                chunk, top[top["s"].isin(cats)], n_products, max_candidates
            )
            parts.append(part)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + int(value)
        cand = (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(
                {"c": [], "d": [], "p": [], "order": [], "source": [], "purchased": []}
            )
        )
    return cand.sort_values(["d", "c", "order"]).reset_index(drop=True), totals


# --- the contract tables ------------------------------------------------------------------------
def purchase_events(
    mine: pd.DataFrame,
    book: Codebook,
    id_prefix: str,
    ts: Any = None,
    session: pd.Series | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The events table: one purchase per line item, at its unit price paid (`unit_price`, 2 dp).

    Args:
        mine: the kept users' lines.
        book: what their codes stand for.
        id_prefix: event ids are this + `source_row`.
        ts: each line's time; None: the local midnight of its day (the source has no time).
        session: each line's session; None: its basket, "<user>-<YYYYMMDD>".
        extra: source-specific columns, after the contract ones.
    """
    user = take(book.users, mine["c"].to_numpy())
    day = mine["d"].to_numpy()
    events = pd.DataFrame(
        {
            S.EVENT_ID: id_prefix + pd.Series(mine[SOURCE_ROW].to_numpy()).astype("str"),
            S.TS: book.day_ts[day] if ts is None else ts,
            S.USER_ID: user,
            S.SESSION_ID: user + "-" + take(book.day_str, day) if session is None else session,
            S.EVENT_TYPE: pd.Series([S.PURCHASE] * len(mine), dtype="str"),
            S.ITEM_ID: take(book.products, mine["p"].to_numpy()),
            S.QUERY: pd.Series([None] * len(mine), dtype="str"),
            S.PRICE: mine["unit_price"].round(2).to_numpy(),
            **(extra or {}),
        }
    )
    return events.sort_values(S.TS, kind="stable").reset_index(drop=True)


def offer_table(
    cand: pd.DataFrame,
    book: Codebook,
    price: np.ndarray,
    policy: str,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The offers table: each candidate at `price`, at its day's local midnight, with its label.

    Offer ids are "<user>-<YYYYMMDD>-<item>"; the propensity is unknown (NaN: observational data);
    `extra` adds source-specific columns after the contract ones.
    """
    user = take(book.users, cand["c"].to_numpy())
    item = take(book.products, cand["p"].to_numpy())
    day = cand["d"].to_numpy()
    return pd.DataFrame(
        {
            S.OFFER_ID: user + "-" + take(book.day_str, day) + "-" + item,
            S.TS: book.day_ts[day],
            S.USER_ID: user,
            S.ITEM_ID: item,
            S.PRICE: price,
            S.PURCHASED: cand["purchased"].to_numpy(dtype=np.int64),
            S.PROPENSITY: np.full(len(cand), np.nan),
            S.POLICY: pd.Series([policy] * len(cand), dtype="str"),
            **(extra or {}),
        }
    )


def used_items(items_all: pd.DataFrame, mine: pd.DataFrame, cand: pd.DataFrame) -> pd.DataFrame:
    """The item rows (one per product code) that the kept users' events or offers name."""
    used = np.union1d(mine["p"].unique(), cand["p"].unique())
    return items_all.iloc[used].reset_index(drop=True)


def summary_stats(
    result: GroceryTables,
    lines: pd.DataFrame,
    book: Codebook,
    cand: pd.DataFrame,
    counts: Mapping[str, int],
    words: StatWords,
) -> dict[str, Any]:
    """The figures every grocery build reports (JSON-ready); the builder adds its own.

    Counts of valid and rejected lines (by reason), users, products, categories, days, events,
    baskets (`counts`), offers (by where the candidate came from), positives, and the test window.
    """
    offers = result.tables[S.OFFERS]
    in_test = offers[S.TS] >= book.test_start
    rejected = result.rejected
    return {
        "line_items_valid": int(len(lines)),
        "rejected": int(len(rejected)),
        "rejected_by_reason": {
            str(k): int(v) for k, v in rejected[S.REASON].value_counts().items()
        },
        f"{words.users}_total": int(len(book.users)),
        words.users: int(len(result.tables[S.USERS])),
        "products_total": int(book.n_products),
        "products": int(len(result.tables[S.ITEMS])),
        words.categories: int(lines["s"].nunique()),
        "days": book.n_days,
        "first_day": book.dates[0].date().isoformat(),
        "last_day": book.dates[-1].date().isoformat(),
        "events": int(len(result.tables[S.EVENTS])),
        **counts,
        "offers": int(len(offers)),
        "offers_from_history": int((cand["source"] == FROM_HISTORY).sum()),
        f"offers_from_{words.category}": int((cand["source"] == FROM_CATEGORY).sum()),
        "positives": int(offers[S.PURCHASED].sum()),
        "positive_rate": float(offers[S.PURCHASED].mean()) if len(offers) else 0.0,
        "test_days": book.test_days,
        "offers_train": int((~in_test).sum()),
        "offers_test": int(in_test.sum()),
        "positives_test": int(offers.loc[in_test, S.PURCHASED].sum()),
    }


def write_tables(
    result: GroceryTables, out_dir: str | Path, quarantine_file: Path, stats_file: str
) -> dict[str, Path]:
    """Write the tables (Parquet), the rejected source rows (quarantine) and the stats (JSON).

    Returns:
        The written paths by table name, plus "rejected" and "stats".
    """
    out_dir = Path(out_dir)
    paths = {name: write_table(df, out_dir, name) for name, df in result.tables.items()}
    quarantine_path = out_dir / quarantine_file
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    result.rejected.to_parquet(quarantine_path, index=False)
    paths["rejected"] = quarantine_path
    stats_path = out_dir / stats_file
    stats_path.write_text(json.dumps(result.stats, indent=2, sort_keys=True, default=str) + "\n")
    paths["stats"] = stats_path
    return paths


def disjoint_from(
    codes: np.ndarray,
    size: int | None,
    seed: int,
    exclude_seed: int | None,
    sample: Callable[[np.ndarray, int, int], np.ndarray],
) -> np.ndarray:
    """`codes` without the same-size sample that `exclude_seed` draws (`sample(codes, size, seed)`),
    so a sample drawn from the rest shares nothing with it: a confirmation on customers a choice
    never saw. No `exclude_seed`: `codes` unchanged."""
    if exclude_seed is None:
        return codes
    if size is None:
        raise ValueError("exclude_seed needs a sample size (the size of both samples)")
    if exclude_seed == seed:
        raise ValueError(f"exclude_seed {exclude_seed} is the sample's own seed")
    return np.setdiff1d(codes, sample(codes, size, exclude_seed))
