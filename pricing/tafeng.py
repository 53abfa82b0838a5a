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

The file has dates only, so a day is a calendar day taken as UTC. The steps shared with The Complete
Journey (candidates, prevailing prices, the training-period item figures, the tables) are in
`pricing/grocery.py`; this module reads the file, sets aside impossible rows, and makes the items
(text, costs) and users (protected age group and pin code).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pricing import grocery
from pricing import schema as S
from pricing.grocery import SOURCE_ROW, GroceryTables, modal_by_group, take
from pricing.io import ContractError

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
TEST_DAYS = 28  # the last 4 weeks are the test window (README, "Real data: Ta Feng grocery")
QUARANTINE_FILE = Path("quarantine") / "tafeng_source.parquet"
STATS_FILE = "tafeng_stats.json"
STAT_WORDS = grocery.StatWords(users="customers", category="subclass", categories="subclasses")

# Rejection reasons, in the order they are checked (a row gets the first that applies).
R_MISSING_ID = "missing CUSTOMER_ID or PRODUCT_ID"
R_BAD_DATE = "TRANSACTION_DT is not a m/d/yyyy date"
R_BAD_NUMBER = "AMOUNT, ASSET or SALES_PRICE is not a number"
R_AMOUNT = "AMOUNT <= 0 (return or error): no unit price"
R_SALES = "SALES_PRICE <= 0 (return or error): no unit price"
R_ASSET = "ASSET < 0: no unit cost"


class TaFengTables(GroceryTables):
    """The contract tables built from Ta Feng, the source rows that could not be used, and figures.

    Attributes:
        tables: items, events, offers, users, with the contract columns (sorted by ts, ids str,
            ts tz-aware UTC).
        rejected: the raw source rows that could not make a line item (`source_row` is the 0-based
            data row of the csv), with `reason`.
        stats: counts and the test-window boundaries (JSON-serializable).
    """


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
        (lines, rejected): lines carry `source_row`, `user_id` (CUSTOMER_ID), `item_id`
        (PRODUCT_ID), `category` (PRODUCT_SUBCLASS), AGE_GROUP, PIN_CODE, the parsed `local_date`
        (naive midnight), numbers, `unit_price` = SALES_PRICE/AMOUNT and `unit_cost` =
        ASSET/AMOUNT; rejected carries the raw columns, `source_row` and `reason`.
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
    checks = [
        (missing_id.to_numpy(), R_MISSING_ID),
        (day.isna().to_numpy(), R_BAD_DATE),
        (bad_number.to_numpy(), R_BAD_NUMBER),
        ((amount <= 0).to_numpy(), R_AMOUNT),
        ((sales <= 0).to_numpy(), R_SALES),
        ((asset < 0).to_numpy(), R_ASSET),
    ]
    ok, rejected = grocery.quarantine(raw, checks)
    # Column-wise selection keeps the text columns Arrow-backed (no per-row Python objects).
    lines = raw.loc[ok, [CUSTOMER_ID, AGE_GROUP, PIN_CODE, PRODUCT_SUBCLASS, PRODUCT_ID]]
    lines[PRODUCT_SUBCLASS] = lines[PRODUCT_SUBCLASS].fillna("")
    lines = lines.rename(
        columns={CUSTOMER_ID: S.USER_ID, PRODUCT_ID: S.ITEM_ID, PRODUCT_SUBCLASS: S.CATEGORY}
    )
    lines.insert(0, SOURCE_ROW, np.flatnonzero(ok).astype(np.int64))
    lines["local_date"] = day[ok]
    lines["amount"] = amount[ok].astype(float)
    lines["asset"] = asset[ok].astype(float)
    lines["sales"] = sales[ok].astype(float)
    lines = lines.reset_index(drop=True)
    lines["unit_price"] = lines["sales"] / lines["amount"]
    lines["unit_cost"] = lines["asset"] / lines["amount"]
    return lines, rejected


def build_items(ref: pd.DataFrame, product_ids: pd.Index) -> pd.DataFrame:
    """One row per product code (0..n-1, in `product_ids` order): text, modal list price, cost.

    `ref` holds the lines each product's figures may use (`grocery.reference_lines`). The list
    price is their modal unit price (`grocery.modal_list_price`); the unit cost is their median
    ASSET/AMOUNT; the category their modal subclass.
    """
    codes = np.arange(len(product_ids))
    unit_cost = ref.groupby("p")["unit_cost"].median().round(2)
    category = modal_by_group(ref["p"].to_numpy(), ref[S.CATEGORY].to_numpy(), prefer_high=False)
    ids = take(product_ids, codes)
    cat = pd.Series(category.reindex(codes).to_numpy(), dtype="str")
    return pd.DataFrame(
        {
            S.ITEM_ID: ids,
            S.TITLE: "subclass " + cat + " product " + ids,
            S.CATEGORY: cat,
            S.BRAND: pd.Series([""] * len(ids), dtype="str"),
            S.LIST_PRICE: grocery.modal_list_price(ref, "unit_price", len(product_ids)),
            S.UNIT_COST: unit_cost.reindex(codes).to_numpy(dtype=float),
        }
    )


def _sample_customers(
    customers: np.ndarray, max_customers: int | None, seed: int, exclude_seed: int | None = None
) -> np.ndarray:
    """The customer codes kept: all, or a seeded random subsample (sorted).

    `exclude_seed`: first leave out the sample of the same size drawn with that seed, so the two
    samples share no customer (a confirmation on customers a choice never saw).
    """
    if max_customers is not None and max_customers < 1:
        raise ValueError(f"max_customers must be >= 1, got {max_customers}")
    customers = grocery.disjoint_from(
        customers, max_customers, seed, exclude_seed, _sample_customers
    )
    if max_customers is None or max_customers >= len(customers):
        return customers
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(customers, size=max_customers, replace=False))


def build_tafeng(
    source: str | Path,
    max_customers: int | None = None,
    seed: int = 0,
    max_candidates: int = 30,
    exclude_seed: int | None = None,
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
        exclude_seed: leave out the customers of the same-size sample with this seed (disjoint).
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
    book = grocery.code_lines(lines, "UTC", test_start, TEST_DAYS)  # a day is a UTC date
    items_all = build_items(grocery.reference_lines(lines, book.test_start), book.products)
    top = grocery.top_products(lines, book.n_days, max_candidates)
    kept = _sample_customers(np.arange(len(book.users)), max_customers, seed, exclude_seed)
    mine = grocery.lines_of(lines, kept, len(book.users))

    # Events: one purchase per line item, at the price paid, on the day's basket.
    events = grocery.purchase_events(mine, book, "tf-", extra={QUANTITY: mine["amount"].to_numpy()})
    # Offers: candidate products of each basket at the price prevailing before the day.
    cand, counts = grocery.offer_candidates(mine, top, book.n_products, max_candidates)
    list_price = items_all[S.LIST_PRICE].to_numpy()
    price = grocery.prevailing_prices(lines, cand, "unit_price", list_price)
    offers = grocery.offer_table(cand, book, price, POLICY_NAME)

    # Users: protected age group and pin code, from each customer's first line.
    user_rows = mine.sort_values(SOURCE_ROW).drop_duplicates("c")
    users = pd.DataFrame(
        {
            S.USER_ID: take(book.users, user_rows["c"].to_numpy()),
            S.AGE_GROUP: pd.Series(user_rows[AGE_GROUP].to_numpy(), dtype="str"),
            PIN_CODE_COL: pd.Series(user_rows[PIN_CODE].to_numpy(), dtype="str"),
        }
    ).sort_values(S.USER_ID, ignore_index=True)

    items = grocery.used_items(items_all, mine, cand)
    tables = {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers, S.USERS: users}
    result = TaFengTables(tables=tables, rejected=rejected)
    result.stats = {
        "source": str(source),
        "line_items_read": int(len(raw)),
        **grocery.summary_stats(result, lines, book, cand, counts, STAT_WORDS),
        "test_start": book.start_date.date().isoformat(),
        "max_candidates": max_candidates,
        "max_customers": max_customers,
        "seed": seed,
        "exclude_seed": exclude_seed,
        "policy": POLICY_NAME,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return result


def write_tafeng(result: TaFengTables, out_dir: str | Path) -> dict[str, Path]:
    """Write the tables, `QUARANTINE_FILE` and `STATS_FILE` into `out_dir`; return their paths."""
    return grocery.write_tables(result, out_dir, QUARANTINE_FILE, STATS_FILE)
