"""Build the data contract tables (items, events, offers, users) from the real Ta Feng grocery data.

Ta Feng holds purchases only (one row per line item: customer, day, product, units, cost, revenue).
The training signal is made by pairing each basket (customer x day) with the products the customer
could have bought that day -- their own past products, then the top sellers of their usual
subclasses -- at the prevailing unit price known before that day, labelled 1 when the product is in
the basket. Everything is vectorized pandas/numpy: the full file (817k lines) builds in seconds.

No future information: everything an offer carries was known before its day.

- Offer price: the median unit price of the product's lines on the last day it sold strictly
  before the offer's day (all customers' lines of that day, the buyer's earlier ones included,
  since they were known by then). Never the offer day's own lines, so never the line of the basket
  being labelled. Every offered product sold before the day, so this always exists.
- Item `list_price` (modal unit price), `unit_cost` (median ASSET/AMOUNT) and `category` (modal
  subclass) come from the training period only: lines strictly before the test start. A product
  first sold in the test period gets them from the lines of its first day of sale alone: every
  offer of it comes on a later day (a candidate must have sold before the offer's day), so this is
  what was known as of the day before its first possible offer, whatever happens after.
- Candidates (past products, best sellers) count only days strictly before the offer's day.

Hence building from the source truncated at the test start (with the same `test_start`) gives the
same training offers and the same prices for the items seen in training as the full source.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.io import ContractError, write_table

# --- the source file ----------------------------------------------------------------------------
DT = "TRANSACTION_DT"
CUSTOMER_ID = "CUSTOMER_ID"
AGE_GROUP = "AGE_GROUP"
PIN_CODE = "PIN_CODE"
PRODUCT_SUBCLASS = "PRODUCT_SUBCLASS"
PRODUCT_ID = "PRODUCT_ID"
AMOUNT = "AMOUNT"
ASSET = "ASSET"
SALES_PRICE = "SALES_PRICE"
SOURCE_COLUMNS: tuple[str, ...] = (
    DT,
    CUSTOMER_ID,
    AGE_GROUP,
    PIN_CODE,
    PRODUCT_SUBCLASS,
    PRODUCT_ID,
    AMOUNT,
    ASSET,
    SALES_PRICE,
)
DATE_FORMAT = "%m/%d/%Y"

# --- what the builder writes --------------------------------------------------------------------
POLICY_NAME = "tafeng-observed@1"
PIN_CODE_COL = "pin_code"
QUANTITY = "quantity"  # extra events column: units on the line
SOURCE_ROW = "source_row"  # 0-based data row in the source csv (rejected rows, event ids)
TEST_DAYS = 28  # DESIGN.md: the last 4 weeks are the test window
QUARANTINE_FILE = Path("quarantine") / "tafeng_source.parquet"
STATS_FILE = "tafeng_stats.json"

# Rejection reasons, in the order they are checked (a row gets the first that applies).
R_MISSING_ID = "missing CUSTOMER_ID or PRODUCT_ID"
R_BAD_DATE = "TRANSACTION_DT is not a m/d/yyyy date"
R_BAD_NUMBER = "AMOUNT, ASSET or SALES_PRICE is not a number"
R_AMOUNT = "AMOUNT <= 0 (return or error): no unit price"
R_SALES = "SALES_PRICE <= 0 (return or error): no unit price"
R_ASSET = "ASSET < 0: no unit cost"


@dataclass
class TaFengTables:
    """The contract tables built from Ta Feng, the source rows that could not be used, and figures.

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


def read_source(source: str | Path) -> pd.DataFrame:
    """Read the Ta Feng csv (or the zip holding it) as text, so ids keep their leading zeros.

    Raises:
        ContractError: the file cannot be read or lacks a Ta Feng column.
    """
    try:
        # Only an empty cell is missing: "NA"-like ids would otherwise turn into NaN.
        raw = pd.read_csv(
            source, dtype=str, encoding="utf-8-sig", keep_default_na=False, na_values=[""]
        )
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise ContractError(
            f"Ta Feng source {source}: cannot read it ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [c for c in SOURCE_COLUMNS if c not in raw.columns]
    if missing:
        raise ContractError(
            f"Ta Feng source {source}: missing columns {missing}; found {list(raw.columns)}"
        )
    return raw


def split_lines(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the raw rows into line items with unit price and cost; set aside rows that can't be.

    Returns:
        (lines, rejected): lines carry `source_row`, the parsed `day` (UTC midnight), numbers,
        `unit_price` = SALES_PRICE/AMOUNT and `unit_cost` = ASSET/AMOUNT; rejected carries the raw
        columns, `source_row` and `reason`.
    """
    raw = raw.reset_index(drop=True)
    # Parse each distinct date once: a few hundred strings instead of 817k.
    dt_codes, dt_uniques = pd.factorize(raw[DT])
    dt_parsed = pd.to_datetime(pd.Series(dt_uniques), format=DATE_FORMAT, errors="coerce")
    day = pd.Series(dt_parsed.to_numpy()[dt_codes], index=raw.index)
    day[dt_codes < 0] = pd.NaT
    amount = pd.to_numeric(raw[AMOUNT], errors="coerce")
    asset = pd.to_numeric(raw[ASSET], errors="coerce")
    sales = pd.to_numeric(raw[SALES_PRICE], errors="coerce")
    missing_id = (
        raw[CUSTOMER_ID].isna()
        | raw[PRODUCT_ID].isna()
        | raw[CUSTOMER_ID].str.strip().eq("")
        | raw[PRODUCT_ID].str.strip().eq("")
    )
    bad_number = amount.isna() | asset.isna() | sales.isna()
    conditions = [
        missing_id.to_numpy(),
        day.isna().to_numpy(),
        bad_number.to_numpy(),
        (amount <= 0).to_numpy(),
        (sales <= 0).to_numpy(),
        (asset < 0).to_numpy(),
    ]
    reasons = [R_MISSING_ID, R_BAD_DATE, R_BAD_NUMBER, R_AMOUNT, R_SALES, R_ASSET]
    reason = np.select(conditions, reasons, default="")
    bad = reason != ""

    rejected = raw.loc[bad].copy()
    rejected.insert(0, SOURCE_ROW, np.flatnonzero(bad).astype(np.int64))
    rejected[S.REASON] = pd.Series(reason[bad], index=rejected.index, dtype="str")
    rejected = rejected.reset_index(drop=True)

    ok = ~bad
    # Column-wise selection keeps the text columns Arrow-backed (no per-row Python objects).
    lines = raw.loc[ok, [CUSTOMER_ID, AGE_GROUP, PIN_CODE, PRODUCT_SUBCLASS, PRODUCT_ID]]
    lines[PRODUCT_SUBCLASS] = lines[PRODUCT_SUBCLASS].fillna("")
    lines.insert(0, SOURCE_ROW, np.flatnonzero(ok).astype(np.int64))
    lines["day"] = day[ok].dt.tz_localize("UTC")
    lines["amount"] = amount[ok].astype(float)
    lines["asset"] = asset[ok].astype(float)
    lines["sales"] = sales[ok].astype(float)
    lines = lines.reset_index(drop=True)
    lines["unit_price"] = lines["sales"] / lines["amount"]
    lines["unit_cost"] = lines["asset"] / lines["amount"]
    return lines, rejected


def _take(ids: pd.Index, codes: np.ndarray) -> pd.Series:
    """The ids at `codes`, as a str Series (vectorized, stays Arrow-backed)."""
    return pd.Series(ids.take(codes).array, dtype="str")


def _modal_by_group(keys: np.ndarray, values: np.ndarray, prefer_high: bool) -> pd.Series:
    """The most frequent value per key; ties go to the highest (or lowest) value."""
    counts = pd.DataFrame({"k": keys, "v": values}).groupby(["k", "v"]).size().reset_index()
    counts.columns = ["k", "v", "n"]
    counts = counts.sort_values(["k", "n", "v"], ascending=[True, False, not prefer_high])
    return counts.drop_duplicates("k").set_index("k")["v"]


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


def build_items(ref: pd.DataFrame, product_ids: pd.Index) -> pd.DataFrame:
    """One row per product code (0..n-1, in `product_ids` order): text, modal list price, cost.

    `ref` holds the lines each product's figures may use (see `reference_lines`). The list price
    is their modal unit price (2 dp; ties to the higher price, since promotions cut prices, not
    raise them); the unit cost is their median ASSET/AMOUNT; the category their modal subclass.
    """
    p = ref["p"].to_numpy()
    list_price = _modal_by_group(p, ref["unit_price"].round(2).to_numpy(), prefer_high=True)
    # A unit price under half a cent would round to 0; the contract wants list_price > 0.
    list_price = list_price.clip(lower=0.01)
    unit_cost = ref.groupby("p")["unit_cost"].median().round(2)
    category = _modal_by_group(p, ref[PRODUCT_SUBCLASS].to_numpy(), prefer_high=False)
    codes = np.arange(len(product_ids))
    ids = _take(product_ids, codes)
    cat = pd.Series(category.reindex(codes).to_numpy(), dtype="str")
    return pd.DataFrame(
        {
            S.ITEM_ID: ids,
            S.TITLE: "subclass " + cat + " product " + ids,
            S.CATEGORY: cat,
            S.BRAND: pd.Series([""] * len(ids), dtype="str"),
            S.LIST_PRICE: list_price.reindex(codes).to_numpy(dtype=float),
            S.UNIT_COST: unit_cost.reindex(codes).to_numpy(dtype=float),
        }
    )


def prevailing_prices(
    lines: pd.DataFrame, n_products: int, n_days: int, list_price: np.ndarray
) -> np.ndarray:
    """(product x day) grid of the prevailing price known before each day (2 dp).

    Cell (p, d) is the median unit price of p's lines on the last day before d that p sold (all
    customers), else p's list price (p never sold before d: no offer can name it then). Day d's
    own lines never count, so an offer's price cannot carry its basket's label.
    """
    daily = lines.groupby(["p", "d"])["unit_price"].median()
    grid = np.full((n_products, n_days), np.nan)
    grid[daily.index.get_level_values(0), daily.index.get_level_values(1)] = daily.to_numpy()
    grid = pd.DataFrame(grid).ffill(axis=1).to_numpy()
    before = np.concatenate([np.full((n_products, 1), np.nan), grid[:, :-1]], axis=1)
    before = np.where(np.isnan(before), list_price[:, None], before)
    return np.round(before, 2)


def offer_prices(cand: pd.DataFrame, before: np.ndarray) -> np.ndarray:
    """The price of each candidate (c, d, p): the prevailing price of p known before day d."""
    return before[cand["p"].to_numpy(), cand["d"].to_numpy()].copy()


def subclass_top_products(lines: pd.DataFrame, n_days: int, depth: int) -> pd.DataFrame:
    """For each (subclass, day), its `depth` best sellers counted strictly before that day.

    Counting only earlier days keeps the candidate set free of the future. Returns columns
    s, d, p, rank (0 = best), with only products sold at least once before the day.
    """
    sp = lines[["s", "p"]].drop_duplicates().reset_index(drop=True)
    sp["k"] = np.arange(len(sp))
    k = lines[["s", "p", "d"]].merge(sp, on=["s", "p"])
    per_day = np.zeros((len(sp), n_days), dtype=np.int64)
    np.add.at(per_day, (k["k"].to_numpy(), k["d"].to_numpy()), 1)
    before = np.cumsum(per_day, axis=1) - per_day  # lines sold on days < d
    kk, dd = np.nonzero(before)
    top = pd.DataFrame(
        {
            "s": sp["s"].to_numpy()[kk],
            "d": dd.astype(np.int64),
            "p": sp["p"].to_numpy()[kk],
            "n": before[kk, dd],
        }
    )
    top = top.sort_values(["s", "d", "n", "p"], ascending=[True, True, False, True])
    top["rank"] = top.groupby(["s", "d"]).cumcount()
    return top.loc[top["rank"] < depth, ["s", "d", "p", "rank"]].reset_index(drop=True)


def build_candidates(
    lines: pd.DataFrame, top: pd.DataFrame, n_products: int, max_candidates: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The offer set of every basket that has history, with labels.

    Candidates of basket (c, d): first c's products bought on days < d (most baskets first, then
    most recent, then id), then the top sellers before d of c's usual subclasses (subclasses c
    bought on days < d, most used first), taken round-robin (the best of each subclass, then the
    second best, ...), never repeating a product, capped at `max_candidates`. A customer's first
    basket has no history and gets no offers.

    Returns:
        (candidates, counts): candidates has c, d, p, order (position in the offer set), source
        ("history" or "subclass"), purchased; counts has basket figures for the stats.
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

    # Baskets with history and room left get subclass top sellers.
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
        # A subclass with no product at this depth has none deeper either: drop its pairs.
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
            past[["b", "p", "order"]].assign(source="history"),
            sub[["b", "p", "order"]].assign(source="subclass"),
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


def _sample_customers(customers: np.ndarray, max_customers: int | None, seed: int) -> np.ndarray:
    """The customer codes kept: all, or a seeded random subsample (sorted)."""
    if max_customers is None or max_customers >= len(customers):
        return customers
    if max_customers < 1:
        raise ValueError(f"max_customers must be >= 1, got {max_customers}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(customers, size=max_customers, replace=False))


def _test_start(test_start: str | pd.Timestamp | None, last_day: pd.Timestamp) -> pd.Timestamp:
    """The test window's first day (UTC midnight): given, or the last `TEST_DAYS` days' first."""
    if test_start is None:
        return last_day - pd.Timedelta(days=TEST_DAYS - 1)
    t = pd.Timestamp(test_start)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.normalize()


def build_tafeng(
    source: str | Path,
    max_customers: int | None = None,
    seed: int = 0,
    max_candidates: int = 30,
    test_start: str | pd.Timestamp | None = None,
) -> TaFengTables:
    """Build items, events, offers and users from the Ta Feng csv (or its zip).

    Market-level figures (item prices, prevailing prices, subclass best sellers) come from every
    valid line, each only from what was known before it is used (module docstring); events,
    offers and users only from the kept customers.

    Args:
        source: the Ta Feng file (`ta_feng.csv.zip` or the csv inside it).
        max_customers: keep a seeded random subsample of this many customers (None: all).
        seed: seed of the subsample.
        max_candidates: offers per basket at most.
        test_start: first day of the test window (a date, UTC; the time of day is dropped).
            None: the last `TEST_DAYS` days of the source. Item prices use only lines before it;
            pass it to build a truncated source with the same training period.

    Raises:
        ContractError: the file cannot be read, lacks columns, or has no usable line.
    """
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    t0 = time.perf_counter()
    raw = read_source(source)
    lines, rejected = split_lines(raw)
    if lines.empty:
        raise ContractError(f"Ta Feng source {source}: no usable line item ({len(raw)} rows read)")

    first_day = lines["day"].min()
    lines["d"] = (lines["day"] - first_day).dt.days.astype(np.int64)
    n_days = int(lines["d"].max()) + 1
    p_codes, product_ids = pd.factorize(lines[PRODUCT_ID], sort=True)
    c_codes, customer_ids = pd.factorize(lines[CUSTOMER_ID], sort=True)
    s_codes, _ = pd.factorize(lines[PRODUCT_SUBCLASS], sort=True)
    lines["p"], lines["c"], lines["s"] = p_codes, c_codes, s_codes
    n_products = len(product_ids)

    day_ts = pd.DatetimeIndex(first_day + pd.to_timedelta(np.arange(n_days), unit="D"))
    day_str = pd.Index(day_ts.strftime("%Y%m%d"), dtype="str")
    t_start = _test_start(test_start, day_ts[-1])

    items_all = build_items(reference_lines(lines, t_start), product_ids)
    before = prevailing_prices(lines, n_products, n_days, items_all[S.LIST_PRICE].to_numpy())
    top = subclass_top_products(lines, n_days, max_candidates)

    kept = _sample_customers(np.arange(len(customer_ids)), max_customers, seed)
    mine = lines[lines["c"].isin(kept)] if len(kept) < len(customer_ids) else lines

    # --- events: one purchase per line item, at the price paid ---------------------------------
    ev_user = _take(customer_ids, mine["c"].to_numpy())
    ev_day = mine["d"].to_numpy()
    events = pd.DataFrame(
        {
            S.EVENT_ID: "tf-" + pd.Series(mine[SOURCE_ROW].to_numpy()).astype("str"),
            S.TS: day_ts[ev_day],
            S.USER_ID: ev_user,
            S.SESSION_ID: ev_user + "-" + _take(day_str, ev_day),
            S.EVENT_TYPE: pd.Series([S.PURCHASE] * len(mine), dtype="str"),
            S.ITEM_ID: _take(product_ids, mine["p"].to_numpy()),
            S.QUERY: pd.Series([None] * len(mine), dtype="str"),
            S.PRICE: mine["unit_price"].round(2).to_numpy(),
            QUANTITY: mine["amount"].to_numpy(),
        }
    )
    events = events.sort_values(S.TS, kind="stable").reset_index(drop=True)

    # --- offers: candidate products of each basket at the price prevailing before the day -----
    cand, counts = build_candidates(mine, top, n_products, max_candidates)
    cand = cand.sort_values(["d", "c", "order"]).reset_index(drop=True)
    of_user = _take(customer_ids, cand["c"].to_numpy())
    of_item = _take(product_ids, cand["p"].to_numpy())
    of_day = cand["d"].to_numpy()
    offers = pd.DataFrame(
        {
            S.OFFER_ID: of_user + "-" + _take(day_str, of_day) + "-" + of_item,
            S.TS: day_ts[of_day],
            S.USER_ID: of_user,
            S.ITEM_ID: of_item,
            S.PRICE: offer_prices(cand, before),
            S.PURCHASED: cand["purchased"].to_numpy(dtype=np.int64),
            S.PROPENSITY: np.full(len(cand), np.nan),
            S.POLICY: pd.Series([POLICY_NAME] * len(cand), dtype="str"),
        }
    )

    # --- users: protected age group and pin code ----------------------------------------------
    user_rows = mine.sort_values(SOURCE_ROW).drop_duplicates("c")
    users = pd.DataFrame(
        {
            S.USER_ID: _take(customer_ids, user_rows["c"].to_numpy()),
            S.AGE_GROUP: pd.Series(user_rows[AGE_GROUP].to_numpy(), dtype="str"),
            PIN_CODE_COL: pd.Series(user_rows[PIN_CODE].to_numpy(), dtype="str"),
        }
    ).sort_values(S.USER_ID, ignore_index=True)

    used = np.union1d(mine["p"].unique(), cand["p"].unique())
    items = items_all.iloc[used].reset_index(drop=True)

    in_test = offers[S.TS] >= t_start
    stats: dict[str, Any] = {
        "source": str(source),
        "line_items_read": int(len(raw)),
        "line_items_valid": int(len(lines)),
        "rejected": int(len(rejected)),
        "rejected_by_reason": {
            str(k): int(v) for k, v in rejected[S.REASON].value_counts().items()
        },
        "customers_total": int(len(customer_ids)),
        "customers": int(len(users)),
        "products_total": int(n_products),
        "products": int(len(items)),
        "subclasses": int(lines["s"].nunique()),
        "days": n_days,
        "first_day": day_ts[0].date().isoformat(),
        "last_day": day_ts[-1].date().isoformat(),
        "events": int(len(events)),
        **counts,
        "offers": int(len(offers)),
        "offers_from_history": int((cand["source"] == "history").sum()),
        "offers_from_subclass": int((cand["source"] == "subclass").sum()),
        "positives": int(offers[S.PURCHASED].sum()),
        "positive_rate": float(offers[S.PURCHASED].mean()) if len(offers) else 0.0,
        "test_days": TEST_DAYS,
        "test_start": t_start.date().isoformat(),
        "offers_train": int((~in_test).sum()),
        "offers_test": int(in_test.sum()),
        "positives_test": int(offers.loc[in_test, S.PURCHASED].sum()),
        "max_candidates": max_candidates,
        "max_customers": max_customers,
        "seed": seed,
        "policy": POLICY_NAME,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    tables = {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers, S.USERS: users}
    return TaFengTables(tables=tables, rejected=rejected, stats=stats)


def write_tafeng(result: TaFengTables, out_dir: str | Path) -> dict[str, Path]:
    """Write the tables (Parquet), the rejected source rows (quarantine) and the stats (JSON).

    Returns:
        The written paths by table name, plus "rejected" and "stats".
    """
    out_dir = Path(out_dir)
    paths = {name: write_table(df, out_dir, name) for name, df in result.tables.items()}
    quarantine = out_dir / QUARANTINE_FILE
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    result.rejected.to_parquet(quarantine, index=False)
    paths["rejected"] = quarantine
    stats_path = out_dir / STATS_FILE
    stats_path.write_text(json.dumps(result.stats, indent=2, sort_keys=True) + "\n")
    paths["stats"] = stats_path
    return paths
