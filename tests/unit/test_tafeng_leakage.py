"""Ta Feng builder uses no future information: not the test window, not the offer's own day.

Runs on a generated Ta Feng-shaped zip (BOM, quoted, m/d/yyyy) of 50 days whose prices move
from day to day, so that any use of later lines would show up in item or offer prices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from grocery_fixtures import assert_same_training_data, offers_through
from grocery_fixtures import write_tafeng_zip as write_zip

from pricing import schema as S
from pricing.tafeng import build_tafeng

N_DAYS = 50
FIRST_DAY = pd.Timestamp("2000-11-01")
ITEM_FIGURES = [S.TITLE, S.CATEGORY, S.LIST_PRICE, S.UNIT_COST]
Row = tuple[str, ...]


def tafeng_rows(seed: int, n_rows: int = 1200) -> list[Row]:
    """Purchases of 30 customers over 16 products in 4 subclasses, 50 days; prices drift and
    products 12-15 only start selling in the last 3 weeks (so some items are new in the test)."""
    rng = np.random.default_rng(seed)
    products = [f"{i:08d}" for i in range(16)]
    base = {p: float(rng.integers(10, 100)) for p in products}
    rows = []
    for _ in range(n_rows):
        i = int(rng.integers(len(products)))
        d = int(rng.integers(N_DAYS - 20 if i >= 12 else 0, N_DAYS))
        day = FIRST_DAY + pd.Timedelta(days=d)
        drift = 1.0 + 0.3 * d / N_DAYS  # prices rise over time: later lines differ from earlier
        unit = round(base[products[i]] * drift * float(rng.choice([0.8, 1.0, 1.0, 1.1])))
        amount = int(rng.integers(1, 4))
        rows.append(
            (
                f"{day.month}/{day.day}/{day.year}",
                f"{int(rng.integers(30)):08d}",
                "35-39",
                "115",
                f"{10 + i % 4}",
                products[i],
                str(amount),
                str(int(unit * 0.8) * amount),
                str(unit * amount),
            )
        )
    return rows


def day_of(row: Row) -> pd.Timestamp:
    return pd.Timestamp(row[0])


def test_source_truncated_at_test_start_builds_the_same_training_data(tmp_path: Path) -> None:
    rows = tafeng_rows(0)
    full = build_tafeng(write_zip(tmp_path / "full.zip", rows), max_candidates=8)
    test_start = pd.Timestamp(full.stats["test_start"])
    early = [r for r in rows if day_of(r) < test_start]
    assert 0 < len(early) < len(rows)
    part = build_tafeng(
        write_zip(tmp_path / "part.zip", early),
        max_candidates=8,
        test_start=full.stats["test_start"],
    )
    assert part.stats["test_start"] == full.stats["test_start"]

    # Same training offers (rows, order, ids, prices, labels); same item figures for every item
    # seen in training.
    o_full, i_part = assert_same_training_data(full, part, test_start, ITEM_FIGURES)
    assert len(o_full) > 100
    assert len(i_part) >= 10

    # The check has teeth: using the test-window lines too would move some of those prices.
    after_last = (pd.Timestamp(full.stats["last_day"]) + pd.Timedelta(days=1)).date().isoformat()
    leaky = build_tafeng(write_zip(tmp_path / "all.zip", rows), test_start=after_last)
    i_leaky = leaky.tables[S.ITEMS].set_index(S.ITEM_ID).loc[i_part.index]
    assert (i_leaky[S.LIST_PRICE] != i_part[S.LIST_PRICE]).any()
    assert (i_leaky[S.UNIT_COST] != i_part[S.UNIT_COST]).any()


def test_items_new_in_test_window_priced_from_their_first_sale_day(tmp_path: Path) -> None:
    rows = tafeng_rows(1)
    full = build_tafeng(write_zip(tmp_path / "full.zip", rows), max_candidates=8)
    test_start = pd.Timestamp(full.stats["test_start"])
    new = {r[5] for r in rows} - {r[5] for r in rows if day_of(r) < test_start}
    assert new
    items = full.tables[S.ITEMS].set_index(S.ITEM_ID)
    for item in new:
        mine = [r for r in rows if r[5] == item]
        first = min(day_of(r) for r in mine)
        # Only the first day's lines: their prices are the same when later days are dropped.
        first_rows = [r for r in rows if day_of(r) <= first]
        alone = build_tafeng(write_zip(tmp_path / f"{item}.zip", first_rows))
        expect = alone.tables[S.ITEMS].set_index(S.ITEM_ID).loc[item, ITEM_FIGURES]
        pd.testing.assert_series_equal(items.loc[item, ITEM_FIGURES], expect)
        # And every offer of it comes after that day.
        o = full.tables[S.OFFERS]
        assert (o.loc[o[S.ITEM_ID] == item, S.TS].dt.tz_localize(None) > first).all()


def test_offer_price_never_depends_on_lines_of_its_own_day_or_later(tmp_path: Path) -> None:
    rows = tafeng_rows(2)
    src = write_zip(tmp_path / "src.zip", rows)
    test_start = build_tafeng(src).stats["test_start"]  # fixed, so item figures stay put
    base = build_tafeng(src, max_candidates=8, test_start=test_start)
    for cut in (5, 12, 25, 40, 49):
        cut_day = FIRST_DAY + pd.Timedelta(days=cut)
        # Every line from the offer day on sells at triple the price (revenue x3, same units).
        moved = [r[:8] + (str(3 * int(r[8])),) if day_of(r) >= cut_day else r for r in rows]
        other = build_tafeng(
            write_zip(tmp_path / f"m{cut}.zip", moved), max_candidates=8, test_start=test_start
        )
        a = offers_through(base, cut_day, inclusive=True)
        assert (a[S.TS].dt.tz_localize(None) == cut_day).any()
        pd.testing.assert_frame_equal(a, offers_through(other, cut_day, inclusive=True))


def test_offer_price_is_the_median_of_the_last_sale_day_before_it(tmp_path: Path) -> None:
    res = build_tafeng(write_zip(tmp_path / "src.zip", tafeng_rows(3)), max_candidates=8)
    ev, offers = res.tables[S.EVENTS], res.tables[S.OFFERS]
    daily = ev.groupby([S.ITEM_ID, S.TS])[S.PRICE].median()  # all customers are kept
    for off in offers.sample(150, random_state=0).itertuples(index=False):
        days = daily.loc[off.item_id]
        earlier = days[days.index < off.ts]
        assert len(earlier) > 0  # an offered product always sold before the day
        assert off.price == round(float(earlier.iloc[-1]), 2)
