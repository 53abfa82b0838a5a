"""Ta Feng builder: on tiny synthetic zips written like the real file (BOM, quoted, m/d/yyyy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from grocery_fixtures import assert_contract_tables
from grocery_fixtures import write_tafeng_zip as write_zip

from pricing import schema as S
from pricing.io import ContractError
from pricing.tafeng import (
    POLICY_NAME,
    QUARANTINE_FILE,
    R_AMOUNT,
    R_BAD_DATE,
    R_SALES,
    SOURCE_COLUMNS,
    STATS_FILE,
    build_tafeng,
    write_tafeng,
)

A, B, C, D, E = "0000123", "0000456", "0000789", "0000999", "0000555"
C1, C2, C3 = "0001", "0002", "0003"

# (date, customer, age, pin, subclass, product, amount, asset, sales)
HAND_ROWS = [
    ("11/1/2000", C1, "30-34", "115", "100", A, "2", "20", "30"),  # unit price 15, cost 10
    ("11/1/2000", C1, "30-34", "115", "200", C, "1", "5", "8"),
    ("11/1/2000", C2, "45-49", "Others", "100", A, "1", "10", "15"),
    ("11/1/2000", C2, "45-49", "Others", "100", D, "1", "30", "40"),
    ("11/2/2000", C2, "45-49", "Others", "100", B, "1", "12", "20"),
    ("11/2/2000", C3, "", "106", "100", A, "3", "27", "36"),  # promo: 12, cost 9
    ("11/2/2000", C1, "30-34", "115", "100", A, "1", "10", "15"),
    ("11/3/2000", C1, "30-34", "115", "100", B, "1", "12", "22"),
    ("11/3/2000", C3, "", "106", "100", A, "-1", "-10", "-15"),  # a return
    ("11/3/2000", C3, "", "106", "200", C, "1", "5", "0"),  # zero revenue
    ("11/10/2000", C1, "30-34", "115", "100", D, "1", "30", "40"),
    ("11/10/2000", C1, "30-34", "115", "300", E, "1", "50", "60"),  # only ever bought here
    ("13/45/2000", C2, "45-49", "Others", "100", A, "1", "10", "15"),  # bad date
]


def random_rows(seed: int, n_rows: int = 400, n_days: int = 20) -> list[tuple[str, ...]]:
    """Random purchases of 25 customers over 15 products in 4 subclasses (prices move daily)."""
    rng = np.random.default_rng(seed)
    products = [f"{i:08d}" for i in range(15)]
    subclass = {p: f"{10 + i % 4}" for i, p in enumerate(products)}
    base = {p: float(rng.integers(10, 100)) for p in products}
    rows = []
    for _ in range(n_rows):
        p = products[int(rng.integers(len(products)))]
        day = pd.Timestamp("2000-11-01") + pd.Timedelta(days=int(rng.integers(n_days)))
        amount = int(rng.integers(1, 4))
        price = round(base[p] * float(rng.choice([0.8, 1.0, 1.0, 1.1])), 0)
        rows.append(
            (
                f"{day.month}/{day.day}/{day.year}",
                f"{int(rng.integers(25)):08d}",
                "35-39",
                "115",
                subclass[p],
                p,
                str(amount),
                str(int(price * 0.8) * amount),
                str(int(price) * amount),
            )
        )
    return rows


@pytest.fixture
def hand(tmp_path: Path):
    return build_tafeng(write_zip(tmp_path / "ta_feng.csv.zip", HAND_ROWS))


@pytest.fixture
def rand(tmp_path: Path):
    return build_tafeng(write_zip(tmp_path / "rand.csv.zip", random_rows(1)), max_candidates=8)


def offers_of(result, user: str, day: str) -> pd.DataFrame:
    o = result.tables[S.OFFERS]
    return o[(o[S.USER_ID] == user) & (o[S.TS] == pd.Timestamp(day, tz="UTC"))]


def test_tables_have_contract_columns_and_types(hand) -> None:
    assert_contract_tables(hand)
    assert (hand.tables[S.ITEMS][S.LIST_PRICE] > 0).all()
    assert (hand.tables[S.ITEMS][S.UNIT_COST] >= 0).all()
    assert (hand.tables[S.EVENTS][S.EVENT_TYPE] == S.PURCHASE).all()
    assert hand.tables[S.EVENTS][S.QUERY].isna().all()
    assert (hand.tables[S.OFFERS][S.POLICY] == POLICY_NAME).all()
    assert hand.tables[S.OFFERS][S.PROPENSITY].isna().all()
    assert (hand.tables[S.USERS].columns == [S.USER_ID, S.AGE_GROUP, "pin_code"]).all()


def test_ids_keep_leading_zeros(hand) -> None:
    assert set(hand.tables[S.USERS][S.USER_ID]) == {C1, C2, C3}
    assert set(hand.tables[S.ITEMS][S.ITEM_ID]) == {A, B, C, D, E}
    assert set(hand.tables[S.EVENTS][S.ITEM_ID]) <= {A, B, C, D, E}
    ev = hand.tables[S.EVENTS]
    assert ev.loc[ev[S.USER_ID] == C1, S.SESSION_ID].iloc[0] == "0001-20001101"


def test_rejected_rows_are_counted_with_reason(hand) -> None:
    rej = hand.rejected
    assert len(rej) == 3 == hand.stats["rejected"]
    assert rej["source_row"].tolist() == [8, 9, 12]
    assert rej[S.REASON].tolist() == [R_AMOUNT, R_SALES, R_BAD_DATE]
    assert rej[S.REASON].value_counts().to_dict() == hand.stats["rejected_by_reason"]
    assert rej[S.REASON].dtype == "str"
    assert set(SOURCE_COLUMNS) <= set(rej.columns)
    # Nothing silently dropped: every source row is an event or a rejected row.
    assert hand.stats["line_items_read"] == len(HAND_ROWS)
    assert len(hand.tables[S.EVENTS]) + len(rej) == len(HAND_ROWS)


def test_unit_price_cost_and_modal_list_price(tmp_path: Path) -> None:
    # Test window after the last day: every line is training, so item figures use them all.
    res = build_tafeng(write_zip(tmp_path / "t.zip", HAND_ROWS), test_start="2000-11-11")
    items = res.tables[S.ITEMS].set_index(S.ITEM_ID)
    # A sold at 15, 15, 12, 15 a unit: the modal price, not the mean; cost 10, 10, 9, 10.
    assert items.loc[A, S.LIST_PRICE] == pytest.approx(15.0)
    assert items.loc[A, S.UNIT_COST] == pytest.approx(10.0)
    # B sold once at 20 and once at 22: a tie goes to the higher (undiscounted) price.
    assert items.loc[B, S.LIST_PRICE] == pytest.approx(22.0)
    assert res.stats["test_start"] == "2000-11-11" and res.stats["offers_test"] == 0


def test_items_first_sold_in_test_window_priced_from_their_first_day(hand) -> None:
    # The default window (last 28 days) covers all of HAND_ROWS: no product sold in training,
    # so each one's figures come from its first day of sale only.
    items = hand.tables[S.ITEMS].set_index(S.ITEM_ID)
    assert items.loc[A, S.LIST_PRICE] == pytest.approx(15.0)  # 11/1: 15 and 15
    assert items.loc[A, S.UNIT_COST] == pytest.approx(10.0)
    assert items.loc[B, S.LIST_PRICE] == pytest.approx(20.0)  # 11/2 at 20; 22 came later
    assert items.loc[B, S.UNIT_COST] == pytest.approx(12.0)
    assert items.loc[A, S.TITLE] == f"subclass 100 product {A}"
    assert items.loc[A, S.CATEGORY] == "100"
    assert items.loc[A, S.BRAND] == ""
    ev = hand.tables[S.EVENTS]
    paid = ev[(ev[S.USER_ID] == C3) & (ev[S.ITEM_ID] == A)]
    assert paid[S.PRICE].tolist() == [pytest.approx(12.0)]  # 36 / 3 units
    assert paid["quantity"].tolist() == [3.0]


def test_first_basket_has_no_offers_and_golden_candidates(hand) -> None:
    offers = hand.tables[S.OFFERS]
    assert offers_of(hand, C1, "2000-11-01").empty
    assert offers_of(hand, C2, "2000-11-01").empty
    assert offers_of(hand, C3, "2000-11-02").empty  # C3's only valid basket is its first
    assert hand.stats["first_baskets_skipped"] == 3
    # History first (most baskets, then most recent), then subclass best sellers.
    assert offers_of(hand, C1, "2000-11-02")[S.ITEM_ID].tolist() == [A, C, D]
    assert offers_of(hand, C1, "2000-11-03")[S.ITEM_ID].tolist() == [A, C, B, D]
    assert offers_of(hand, C1, "2000-11-10")[S.ITEM_ID].tolist() == [A, B, C, D]
    assert offers_of(hand, C2, "2000-11-02")[S.ITEM_ID].tolist() == [A, D]
    assert len(offers) == hand.stats["offers"] == 13
    assert offers[S.PURCHASED].sum() == hand.stats["positives"] == 3


def test_purchased_labels_match_baskets(rand) -> None:
    ev, offers = rand.tables[S.EVENTS], rand.tables[S.OFFERS]
    assert set(offers[S.PURCHASED].unique()) <= {0, 1}
    bought = set(zip(ev[S.USER_ID], ev[S.TS], ev[S.ITEM_ID], strict=True))
    expected = [
        int(k in bought)
        for k in zip(offers[S.USER_ID], offers[S.TS], offers[S.ITEM_ID], strict=True)
    ]
    assert offers[S.PURCHASED].tolist() == expected
    assert offers[S.PURCHASED].sum() > 0


def test_offers_use_no_information_from_the_future(rand) -> None:
    ev, offers = rand.tables[S.EVENTS], rand.tables[S.OFFERS]
    assert offers.groupby([S.USER_ID, S.TS]).size().max() <= 8
    first = ev.groupby(S.USER_ID)[S.TS].min()
    assert (offers[S.TS] > offers[S.USER_ID].map(first)).all()
    category = rand.tables[S.ITEMS].set_index(S.ITEM_ID)[S.CATEGORY]
    ev = ev.assign(cat=ev[S.ITEM_ID].map(category))
    for off in offers.sample(60, random_state=0).itertuples(index=False):
        before = ev[ev[S.TS] < off.ts]
        mine = before[before[S.USER_ID] == off.user_id]
        if off.item_id in set(mine[S.ITEM_ID]):
            continue  # a past product, bought strictly before
        # Otherwise a best seller, already sold before, of a subclass the user bought before.
        assert off.item_id in set(before[S.ITEM_ID])
        assert category[off.item_id] in set(mine["cat"])


def test_adding_future_days_leaves_earlier_offers_unchanged(tmp_path: Path) -> None:
    rows = random_rows(2)
    early = [r for r in rows if pd.Timestamp(r[0]) <= pd.Timestamp("2000-11-12")]
    assert 0 < len(early) < len(rows)
    full = build_tafeng(write_zip(tmp_path / "full.zip", rows), max_candidates=8)
    part = build_tafeng(write_zip(tmp_path / "part.zip", early), max_candidates=8)
    cut = pd.Timestamp("2000-11-12", tz="UTC")
    o_full = full.tables[S.OFFERS]
    o_full = o_full[o_full[S.TS] <= cut].reset_index(drop=True)
    assert len(o_full) > 0
    pd.testing.assert_frame_equal(o_full, part.tables[S.OFFERS])


def test_offer_price_is_the_last_prevailing_price_before_the_day(hand) -> None:
    def price(user: str, day: str, item: str) -> float:
        o = offers_of(hand, user, day)
        return float(o.loc[o[S.ITEM_ID] == item, S.PRICE].iloc[0])

    assert (hand.tables[S.OFFERS][S.PRICE] > 0).all()
    assert price(C1, "2000-11-10", A) == pytest.approx(13.5)  # last sale day 11/2: 15 and 12
    assert price(C1, "2000-11-03", C) == pytest.approx(8.0)  # 11/1; 11/3's line was rejected
    assert price(C1, "2000-11-02", D) == pytest.approx(40.0)
    # The offer day's own lines never set the price (the buyer's would leak the label): A on
    # 11/2 sold at 15 to C1 and 12 to C3, but C1 is offered 11/1's 15; B on 11/3 sold only to
    # C1 (at 22), and C1 is offered 11/2's 20.
    assert price(C1, "2000-11-02", A) == pytest.approx(15.0)
    assert price(C1, "2000-11-03", B) == pytest.approx(20.0)


def test_max_candidates_caps_each_basket(tmp_path: Path) -> None:
    res = build_tafeng(write_zip(tmp_path / "t.zip", HAND_ROWS), max_candidates=2)
    assert res.tables[S.OFFERS].groupby([S.USER_ID, S.TS]).size().max() <= 2
    assert offers_of(res, C1, "2000-11-10")[S.ITEM_ID].tolist() == [A, B]
    with pytest.raises(ValueError):
        build_tafeng(write_zip(tmp_path / "u.zip", HAND_ROWS), max_candidates=0)


def test_max_customers_subsample_is_deterministic(tmp_path: Path) -> None:
    src = write_zip(tmp_path / "r.zip", random_rows(3))
    a = build_tafeng(src, max_customers=10, seed=7)
    b = build_tafeng(src, max_customers=10, seed=7)
    full = build_tafeng(src)
    users = a.tables[S.USERS][S.USER_ID]
    assert len(users) == 10 == a.stats["customers"]
    assert set(users) <= set(full.tables[S.USERS][S.USER_ID])
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    assert set(a.tables[S.OFFERS][S.USER_ID]) <= set(users)
    assert set(a.tables[S.EVENTS][S.USER_ID]) <= set(users)
    # Items cover every product the kept customers' events and offers name.
    named = set(a.tables[S.EVENTS][S.ITEM_ID]) | set(a.tables[S.OFFERS][S.ITEM_ID])
    assert named <= set(a.tables[S.ITEMS][S.ITEM_ID])


def test_stats_and_test_window(hand) -> None:
    st = hand.stats
    assert st["baskets"] == 7
    assert st["customers"] == 3 and st["products"] == 5
    assert st["first_day"] == "2000-11-01" and st["last_day"] == "2000-11-10"
    assert st["test_start"] == "2000-10-14"  # last 28 days reach before the first day here
    assert st["offers_train"] + st["offers_test"] == st["offers"]
    json.dumps(st)  # serializable


def test_write_tafeng(hand, tmp_path: Path) -> None:
    paths = write_tafeng(hand, tmp_path / "out")
    for name in (S.ITEMS, S.EVENTS, S.OFFERS, S.USERS):
        back = pd.read_parquet(paths[name])
        assert len(back) == len(hand.tables[name])
    assert paths["rejected"] == tmp_path / "out" / QUARANTINE_FILE
    rej = pd.read_parquet(paths["rejected"])
    assert rej[S.REASON].tolist() == [R_AMOUNT, R_SALES, R_BAD_DATE]
    assert json.loads((tmp_path / "out" / STATS_FILE).read_text())["offers"] == 13
    users = pd.read_parquet(paths[S.USERS])
    assert C1 in set(users[S.USER_ID])


def test_missing_column_is_a_contract_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TRANSACTION_DT,CUSTOMER_ID\n11/1/2000,0001\n", encoding="utf-8-sig")
    with pytest.raises(ContractError, match="missing columns"):
        build_tafeng(bad)
