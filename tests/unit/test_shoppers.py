"""The closed loop's shoppers: sessions browsed the way the market's shoppers browse, the market's
funnel, and the events a round adds to the next training set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing import schema as S
from pricing.shoppers import shopper_requests
from pricing.simulator import (
    INTENTS,
    QUERY_CLASSES,
    Market,
    SimConfig,
    browse_session,
    click_probability,
    funnel,
    simulate,
)
from tasks.loop import QUERIES, REPORTED, loop_events

DEAL_SEEKER, INSENSITIVE = 2, 0  # positions in SEGMENTS


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate(SimConfig(n_users=500, n_items=300, n_days=14, seed=5))


def _tier_share(truth, users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    return pd.crosstab(truth.user_segment[users], truth.item_tier[items], normalize="index")


def test_browsing_shoppers_pick_brand_tiers_as_the_markets_shoppers_view_them(
    market: Market,
) -> None:
    truth = market.truth
    views = market.tables[S.EVENTS]
    views = views[views[S.EVENT_TYPE] == S.VIEW]
    seen = _tier_share(
        truth, truth.user_index(views[S.USER_ID]), truth.item_index(views[S.ITEM_ID])
    )
    reqs = shopper_requests(truth, 1500, 8, np.random.default_rng(0))
    users = truth.user_index(np.concatenate([[r.user_id] * len(r.item_ids) for r in reqs]))
    items = truth.item_index(np.concatenate([r.item_ids for r in reqs]))
    browsed = _tier_share(truth, users, items)
    # the same brand-tier choice as the market: deal seekers lean budget, insensitive users premium
    np.testing.assert_allclose(browsed.to_numpy(), seen.to_numpy(), atol=0.06)
    assert browsed.loc[DEAL_SEEKER, 0] > 0.45 > browsed.loc[INSENSITIVE, 0]
    assert browsed.loc[INSENSITIVE, 2] > 0.45 > browsed.loc[DEAL_SEEKER, 2]
    # the old taste-only draw carries no brand-tier signal
    taste = shopper_requests(truth, 1500, 8, np.random.default_rng(0), "taste")
    users = truth.user_index(np.concatenate([[r.user_id] * len(r.item_ids) for r in taste]))
    flat = _tier_share(truth, users, truth.item_index(np.concatenate([r.item_ids for r in taste])))
    assert abs(flat.loc[DEAL_SEEKER, 0] - flat.loc[INSENSITIVE, 0]) < 0.1
    assert all(r.queries == () for r in taste)


def test_a_session_lists_distinct_items_and_searches_as_its_user_would(market: Market) -> None:
    truth = market.truth
    rng = np.random.default_rng(1)
    cheap_words = {"cheap", "sale", "budget", "discount", "deal", "coupon", "price"}
    asked: dict[int, list[bool]] = {DEAL_SEEKER: [], INSENSITIVE: []}
    n_sessions = n_searching = 0
    for user in rng.integers(0, len(truth.user_ids), 1200):
        s = browse_session(truth, int(user), 10, rng)
        assert len(s.items) == 10 == len(set(s.items.tolist()))
        assert len(s.queries) <= 2
        n_sessions += 1
        n_searching += bool(s.queries)
        seg = int(truth.user_segment[user])
        if seg in asked:
            asked[seg] += [bool(cheap_words & set(q.split())) for q in s.queries]
    assert 0.55 < n_searching / n_sessions < 0.75  # the market's search rate (65%)
    assert np.mean(asked[DEAL_SEEKER]) > 0.4 > 0.1 > np.mean(asked[INSENSITIVE])
    # a catalog smaller than the page: every item once
    small = browse_session(truth, 0, len(truth.item_ids) + 5, rng)
    assert sorted(small.items.tolist()) == list(range(len(truth.item_ids)))
    assert len(INTENTS) > len(QUERY_CLASSES)  # the default (realistic) market searches needs too


def test_the_funnel_is_the_markets() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 0.4, 200_000)
    bought, clicked, carted = funnel(p, rng.random(len(p)), rng.random(len(p)))
    assert np.all(clicked[bought]) and np.all(carted[bought])  # a buyer clicks and carts
    assert np.all(clicked[carted])  # a cart follows a click
    rest = ~bought
    assert abs(bought.mean() - p.mean()) < 0.005
    assert abs(clicked[rest].mean() - click_probability(p[rest]).mean()) < 0.005
    assert abs(carted[rest].sum() / clicked[rest].sum() - 0.2) < 0.01


def _quotes() -> pd.DataFrame:
    ts = pd.Timestamp("2026-06-01 12:00", tz="UTC")
    return pd.DataFrame(
        {
            S.OFFER_ID: ["q0:a", "q0:b", "q1:c"],
            S.TS: [ts, ts, ts + pd.Timedelta(seconds=5)],
            S.USER_ID: ["u1", "u1", "u2"],
            S.SESSION_ID: ["s0", "s0", "s1"],
            S.ITEM_ID: ["a", "b", "c"],
            S.PRICE: [3.0, 4.0, 5.0],
            S.PURCHASED: [1, 0, 0],
            REPORTED: ["view,click,add_to_cart,purchase", "view,click", "view"],
            QUERIES: ["cheap soap\nsoap deal", "", ""],
        }
    )


def test_the_next_training_set_holds_exactly_what_the_shoppers_reported() -> None:
    quotes = _quotes()
    events = loop_events(quotes, quotes[[S.OFFER_ID, S.TS]])
    by_item = events[events[S.ITEM_ID].notna()].groupby(S.ITEM_ID)[S.EVENT_TYPE].agg(list)
    assert by_item.to_dict() == {
        "a": [S.VIEW, S.CLICK, S.ADD_TO_CART, S.PURCHASE],
        "b": [S.VIEW, S.CLICK],
        "c": [S.VIEW],
    }
    item_events = events[events[S.ITEM_ID].notna()].set_index(S.ITEM_ID)
    assert (item_events.loc["a", S.TS] == quotes[S.TS][0]).all()  # at the offer, never before it
    searches = events[events[S.EVENT_TYPE] == S.SEARCH].sort_values(S.TS)
    assert searches[S.QUERY].tolist() == ["cheap soap", "soap deal"]
    assert set(searches[S.SESSION_ID]) == {"s0"} and set(searches[S.USER_ID]) == {"u1"}
    assert (searches[S.TS] < quotes[S.TS][0]).all()  # searched before the page was shown
    assert events[S.EVENT_ID].is_unique
    assert list(events.columns) == S.column_names(S.EVENTS)


def test_an_unknown_kind_of_shopper_is_refused(market: Market) -> None:
    with pytest.raises(ValueError, match="shoppers must be one of"):
        shopper_requests(market.truth, 1, 3, np.random.default_rng(0), "random")


# --- the shop's calendar ---------------------------------------------------------------------------


def test_the_shop_clock_spreads_each_round_over_its_days_in_order() -> None:
    from datetime import UTC, datetime, timedelta

    from tasks.loop import ShopClock

    end = datetime(2026, 10, 1, tzinfo=UTC)
    wall = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    clock = ShopClock(end, 7.0, [wall, wall + timedelta(minutes=10)])
    until = wall + timedelta(minutes=30)
    ts = pd.Series(
        pd.to_datetime(
            [wall, wall + timedelta(minutes=5), wall + timedelta(minutes=5),
             wall + timedelta(minutes=10), wall + timedelta(minutes=20)],
            utc=True,
        )
    )  # fmt: skip
    shop = clock.to_shop(ts, until)
    assert shop.dtype == ts.dtype
    assert shop[0] == pd.Timestamp(end)  # round 0 starts where the market ends
    assert shop[1] == shop[2] == pd.Timestamp(end + timedelta(days=3.5))  # equal stays equal
    assert shop[3] == pd.Timestamp(clock.shop_start(1)) == pd.Timestamp(end + timedelta(days=7))
    assert shop[4] == pd.Timestamp(end + timedelta(days=10.5))  # half of round 1's 20 minutes
    assert shop.is_monotonic_increasing
    with pytest.raises(ValueError, match="outside the rounds"):
        clock.to_shop(pd.Series(pd.to_datetime([until + timedelta(seconds=1)], utc=True)), until)
    assert clock.to_shop(ts, until).equals(shop)  # a later call with the same rounds: the same


def test_the_loops_market_ends_early_enough_for_its_rounds(tmp_path) -> None:
    from datetime import UTC, datetime

    from pricing.io import read_table
    from tasks.loop import ShopClock, simulate_loop_market

    market = simulate_loop_market.fn(tmp_path / "m", 3, 150, 60, 14, 4, 1000)
    clock = ShopClock.load(market)
    offers = read_table(market, S.OFFERS)
    assert offers is not None
    per_day = len(offers) / 14
    assert clock.days_per_round == pytest.approx(1000 / per_day)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert clock.shop_start(4) <= today  # every round is in the past on the shop's calendar
    last = pd.to_datetime(offers[S.TS], utc=True).max()
    assert last <= pd.Timestamp(clock.market_end) <= last + pd.Timedelta(minutes=1)
    nominal_end = today - pd.Timedelta(days=int(np.ceil(4 * clock.days_per_round)) + 1)
    assert nominal_end <= last < nominal_end + pd.Timedelta(hours=2)
