"""The market simulator: exact demand and oracle, contract-shaped tables, honest behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing import schema as S
from pricing.io import read_table
from pricing.simulator import (
    LOGGING_POLICY,
    GroundTruth,
    Market,
    SimConfig,
    load_ground_truth,
    simulate,
    write_market,
)

SMALL = SimConfig(n_users=400, n_items=80, n_days=21, seed=7)
# Every cheap phrasing of both presets, the held-out ones included (pricing.simulator templates).
CHEAP_WORDS = (
    r"\b(?:cheap|deal|discount|sale|budget|coupon|best price|affordable|low cost|for less"
    r"|inexpensive)\b"
)


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def pairs(market: Market) -> pd.DataFrame:
    """Distinct (user, item) pairs that were offered, with list price and true unit cost."""
    offers = market.tables[S.OFFERS]
    out = offers[[S.USER_ID, S.ITEM_ID]].drop_duplicates().reset_index(drop=True)
    items = market.tables[S.ITEMS].set_index(S.ITEM_ID)
    out[S.LIST_PRICE] = items.loc[out[S.ITEM_ID], S.LIST_PRICE].to_numpy()
    out[S.UNIT_COST] = items.loc[out[S.ITEM_ID], S.UNIT_COST].to_numpy()
    return out


def _tiny_truth(alpha: float, beta: float, list_price: float, unit_cost: float) -> GroundTruth:
    """One user, one item, with alpha(u, i) = `alpha` and beta(u, i) = `beta` exactly."""
    return GroundTruth(
        user_ids=np.array(["u0"]),
        item_ids=np.array(["i0"]),
        intercept=alpha,
        user_beta=np.array([beta]),
        user_segment=np.array([1], dtype=np.int8),
        user_alpha=np.zeros(1),
        user_taste=np.ones((1, 1)),
        category_alpha=np.zeros((1, 1)),
        tier_affinity=np.zeros((1, 3)),
        tier_alpha=np.zeros((1, 3)),
        user_age_group=np.zeros(1, dtype=np.int8),
        user_region=np.zeros(1, dtype=np.int8),
        item_category=np.zeros(1, dtype=np.int64),
        item_tier=np.ones(1, dtype=np.int64),
        item_quality=np.zeros(1),
        list_price=np.array([list_price]),
        unit_cost=np.array([unit_cost]),
        category_sensitivity=np.ones(1),
        categories=("things",),
    )


# --- demand and oracle: limits first ------------------------------------------------------------


def test_probabilities_are_in_unit_interval_and_keep_the_shape(
    market: Market, pairs: pd.DataFrame
) -> None:
    grid = pairs[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.3, 3.0, 25)
    prob = market.truth.purchase_probability(pairs[S.USER_ID], pairs[S.ITEM_ID], grid)
    assert prob.shape == grid.shape
    assert np.all((prob >= 0) & (prob <= 1))
    at_list = market.truth.purchase_probability(
        pairs[S.USER_ID], pairs[S.ITEM_ID], pairs[S.LIST_PRICE]
    )
    assert at_list.shape == (len(pairs),)
    three = pairs[S.LIST_PRICE].to_numpy()[:, None] * np.array([0.5, 1.0, 2.0])
    np.testing.assert_array_equal(
        at_list, market.truth.purchase_probability(pairs[S.USER_ID], pairs[S.ITEM_ID], three)[:, 1]
    )
    scalar = market.truth.purchase_probability(pairs[S.USER_ID][:3], pairs[S.ITEM_ID][:3], 5.0)
    assert scalar.shape == (3,)


def test_demand_strictly_decreases_in_price_for_every_pair(
    market: Market, pairs: pd.DataFrame
) -> None:
    grid = pairs[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.5, 2.0, 31)
    prob = market.truth.purchase_probability(pairs[S.USER_ID], pairs[S.ITEM_ID], grid)
    assert np.all(np.diff(prob, axis=1) < 0)


def test_unknown_ids_raise(market: Market) -> None:
    with pytest.raises(KeyError, match="nobody"):
        market.truth.purchase_probability(["nobody"], [market.truth.item_ids[0]], [1.0])


@pytest.mark.parametrize("objective", ["profit", "revenue"])
def test_oracle_is_inside_the_band_and_no_grid_price_beats_it(
    market: Market, pairs: pd.DataFrame, objective: str
) -> None:
    sample = pairs.sample(n=min(300, len(pairs)), random_state=0)
    lp = sample[S.LIST_PRICE].to_numpy()
    rng = np.random.default_rng(1)
    low, high = lp * rng.uniform(0.5, 1.0, len(lp)), lp * rng.uniform(1.0, 1.6, len(lp))
    truth = market.truth
    price, value = truth.oracle(
        sample[S.USER_ID], sample[S.ITEM_ID], low, high, objective=objective
    )  # type: ignore[arg-type]
    assert np.all((price >= low) & (price <= high))
    grid = low[:, None] + (high - low)[:, None] * np.linspace(0.0, 1.0, 2001)
    grid_value = truth.expected_value(
        sample[S.USER_ID], sample[S.ITEM_ID], grid, objective=objective
    )  # type: ignore[arg-type]
    assert np.all(grid_value.max(axis=1) <= value + 1e-9 * np.abs(value) + 1e-12)
    # The reported value is the exact expected value at the reported price.
    again = truth.expected_value(sample[S.USER_ID], sample[S.ITEM_ID], price, objective=objective)  # type: ignore[arg-type]
    np.testing.assert_allclose(value, again, rtol=1e-12)


def test_revenue_optimal_price_never_exceeds_profit_optimal(
    market: Market, pairs: pd.DataFrame
) -> None:
    """A positive unit cost pushes the best price up: d profit/dp at the revenue optimum is -c*P' > 0."""
    lp = pairs[S.LIST_PRICE].to_numpy()
    args = (pairs[S.USER_ID], pairs[S.ITEM_ID], 0.7 * lp, 1.3 * lp)
    profit_price, _ = market.truth.oracle(*args, objective="profit")
    revenue_price, _ = market.truth.oracle(*args, objective="revenue")
    assert np.all(revenue_price <= profit_price * (1 + 1e-12))
    assert np.mean(revenue_price < profit_price - 1e-6) > 0.3


def test_oracle_golden_values() -> None:
    # alpha = 0, beta = 2: revenue optimum solves beta (1 - P) = 1, i.e. P = 1/2, i.e. p = list.
    truth = _tiny_truth(alpha=0.0, beta=2.0, list_price=10.0, unit_cost=5.0)
    price, value = truth.oracle(["u0"], ["i0"], 1.0, 100.0, objective="revenue")
    assert price[0] == pytest.approx(10.0, rel=1e-12)
    assert value[0] == pytest.approx(5.0, rel=1e-12)
    # Profit: the first-order condition g(p) = 1 - beta (1 - c/p)(1 - P(p)) = 0 holds.
    price, value = truth.oracle(["u0"], ["i0"], 1.0, 100.0)
    p = price[0]
    prob = 1.0 / (1.0 + (p / 10.0) ** 2)
    assert 1.0 - 2.0 * (1.0 - 5.0 / p) * (1.0 - prob) == pytest.approx(0.0, abs=1e-12)
    assert value[0] == pytest.approx((p - 5.0) * prob, rel=1e-12)
    # Band edges: clipped to the ceiling or floor when the optimum lies outside.
    assert truth.oracle(["u0"], ["i0"], 1.0, 8.0)[0][0] == 8.0
    assert truth.oracle(["u0"], ["i0"], 30.0, 40.0)[0][0] == 30.0
    # beta <= 1: revenue keeps rising with price, so the ceiling wins.
    flat = _tiny_truth(alpha=0.0, beta=0.8, list_price=10.0, unit_cost=5.0)
    assert flat.oracle(["u0"], ["i0"], 1.0, 50.0, objective="revenue")[0][0] == 50.0
    with pytest.raises(ValueError):
        truth.oracle(["u0"], ["i0"], 5.0, 4.0)


def test_optimal_prices_are_heterogeneous_and_mostly_interior(
    market: Market, pairs: pd.DataFrame
) -> None:
    """The default (shop) market: every shopper reacts to price, so the best price inside a wide
    0.2-5x band is interior for >= 95% of pairs and at the 0.7-1.3x guardrails for <= 20%; less
    sensitive segments' optima sit above deal seekers'."""
    lp = pairs[S.LIST_PRICE].to_numpy()
    u, i = pairs[S.USER_ID], pairs[S.ITEM_ID]
    wide, _ = market.truth.oracle(u, i, 0.2 * lp, 5.0 * lp)
    assert np.mean((wide > 0.2 * lp * 1.0001) & (wide < 5.0 * lp * 0.9999)) >= 0.95
    price, _ = market.truth.oracle(u, i, 0.7 * lp, 1.3 * lp)
    ratio = price / lp
    at_guardrail = np.isclose(ratio, 0.7) | np.isclose(ratio, 1.3)
    assert np.mean(at_guardrail) <= 0.20
    segment = (
        market.truth.user_traits().set_index(S.USER_ID).loc[pairs[S.USER_ID], "segment"].to_numpy()
    )
    means = {
        name: ratio[segment == name].mean() for name in ("insensitive", "regular", "deal_seeker")
    }
    assert means["insensitive"] > means["regular"] > means["deal_seeker"]


def test_realistic_preset_puts_many_optima_at_the_guardrails() -> None:
    """The realistic preset keeps the wide spread: ceilings for insensitive users, floors for deal
    seekers."""
    m = simulate(SimConfig.preset("realistic", n_users=400, n_items=80, n_days=21, seed=7))
    offers = m.tables[S.OFFERS].drop_duplicates([S.USER_ID, S.ITEM_ID])
    lp = m.truth.list_price[m.truth.item_index(offers[S.ITEM_ID])]
    price, _ = m.truth.oracle(offers[S.USER_ID], offers[S.ITEM_ID], 0.7 * lp, 1.3 * lp)
    ratio = price / lp
    segment = (
        m.truth.user_traits().set_index(S.USER_ID).loc[offers[S.USER_ID], "segment"].to_numpy()
    )
    floor, ceiling = np.isclose(ratio, 0.7), np.isclose(ratio, 1.3)
    assert 0.3 < np.mean(~floor & ~ceiling) < 0.8
    assert np.mean(ceiling[segment == "insensitive"]) > 0.9
    assert np.mean(floor[segment == "deal_seeker"]) > 0.1


# --- tables -----------------------------------------------------------------------------------


def _check_dtype(series: pd.Series, dtype: str) -> None:
    if dtype == "str":
        assert pd.api.types.is_string_dtype(series), series.name
    elif dtype == "float":
        assert pd.api.types.is_float_dtype(series), series.name
    elif dtype == "int":
        assert pd.api.types.is_integer_dtype(series), series.name
    else:
        assert isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dtype.tz) == "UTC", (
            series.name
        )


def test_tables_follow_the_contract(market: Market) -> None:
    for table, columns in S.CONTRACT.items():
        df = market.tables[table]
        assert list(df.columns[: len(columns)]) == [c.name for c in columns]
        for col in columns:
            _check_dtype(df[col.name], col.dtype)
            if not col.nullable:
                assert df[col.name].notna().all(), (table, col.name)
        assert df[S.PRIMARY_KEYS[table]].is_unique
    for table in (S.EVENTS, S.OFFERS):
        assert market.tables[table][S.TS].is_monotonic_increasing


def test_table_values(market: Market) -> None:
    items, events, offers = (market.tables[t] for t in (S.ITEMS, S.EVENTS, S.OFFERS))
    assert (items[S.LIST_PRICE] > 0).all()
    assert np.allclose(items[S.LIST_PRICE], items[S.LIST_PRICE].round(2))
    ratio = items[S.UNIT_COST] / items[S.LIST_PRICE]
    assert ratio.between(0.44, 0.76).all()
    assert items[S.CATEGORY].nunique() >= 10
    assert items.apply(lambda r: r[S.TITLE].startswith(r[S.BRAND]), axis=1).all()

    assert set(offers[S.PURCHASED].unique()) <= {0, 1}
    assert ((offers[S.PROPENSITY] > 0) & (offers[S.PROPENSITY] <= 1)).all()
    assert (offers[S.POLICY] == LOGGING_POLICY).all()
    assert 0.05 <= offers[S.PURCHASED].mean() <= 0.15
    assert set(events[S.EVENT_TYPE].unique()) == set(S.EVENT_TYPES)

    search = events[S.EVENT_TYPE] == S.SEARCH
    assert events.loc[search, S.ITEM_ID].isna().all() and events.loc[search, S.PRICE].isna().all()
    assert events.loc[search, S.QUERY].notna().all()
    assert (
        events.loc[~search, S.ITEM_ID].notna().all() and events.loc[~search, S.PRICE].notna().all()
    )
    assert events.loc[~search, S.QUERY].isna().all()
    assert set(market.tables[S.USERS][S.AGE_GROUP].unique()) == {
        "18-24",
        "25-34",
        "35-44",
        "45-54",
        "55-64",
        "65+",
    }


def test_default_config_has_the_documented_size() -> None:
    config = SimConfig()
    expected_offers = (
        config.n_users
        * config.sessions_per_user_week
        * config.n_days
        / 7
        * config.offers_per_session
    )
    assert 80_000 < expected_offers < 120_000


def test_ladder_propensities_match_the_prices(market: Market) -> None:
    assert sum(SMALL.ladder_probs) == pytest.approx(1.0, abs=1e-12)
    offers = market.tables[S.OFFERS]
    lp = market.tables[S.ITEMS].set_index(S.ITEM_ID).loc[offers[S.ITEM_ID], S.LIST_PRICE].to_numpy()
    multiplier = offers[S.PRICE].to_numpy() / lp
    rung = np.abs(multiplier[:, None] - np.asarray(SMALL.ladder)).argmin(axis=1)
    assert np.all(np.abs(multiplier - np.asarray(SMALL.ladder)[rung]) < 0.01 / lp + 1e-9)
    np.testing.assert_allclose(offers[S.PROPENSITY], np.asarray(SMALL.ladder_probs)[rung])
    share = np.bincount(rung, minlength=len(SMALL.ladder)) / len(rung)
    np.testing.assert_allclose(share, SMALL.ladder_probs, atol=0.02)


def test_each_offer_is_a_view_and_its_purchase_comes_later(market: Market) -> None:
    events, offers = market.tables[S.EVENTS], market.tables[S.OFFERS]
    key = [S.TS, S.USER_ID, S.ITEM_ID, S.PRICE]
    views = events[events[S.EVENT_TYPE] == S.VIEW]
    assert len(views) == len(offers)
    matched = offers.merge(views[key], on=key, how="left", indicator=True)
    assert (matched["_merge"] == "both").all()
    buys = events[events[S.EVENT_TYPE] == S.PURCHASE]
    bought = offers[offers[S.PURCHASED] == 1]
    assert len(buys) == len(bought)
    # Pair each purchase with its offer: the user's latest view of that item at that price before it.
    joined = pd.merge_asof(
        buys.sort_values(S.TS)[[S.TS, S.USER_ID, S.ITEM_ID, S.PRICE]].rename(
            columns={S.TS: "buy_ts"}
        ),
        bought.sort_values(S.TS)[[S.TS, S.USER_ID, S.ITEM_ID, S.PRICE]].assign(
            offer_ts=lambda d: d[S.TS]
        ),
        left_on="buy_ts",
        right_on=S.TS,
        by=[S.USER_ID, S.ITEM_ID, S.PRICE],
        allow_exact_matches=False,
    )
    assert joined["offer_ts"].notna().all()
    gap = (joined["buy_ts"] - joined["offer_ts"]).dt.total_seconds()
    assert ((gap > 0) & (gap < 120)).all()


# --- behaviour reveals the latent traits ------------------------------------------------------


def test_deal_seekers_pay_less_relative_to_list() -> None:
    # The realistic preset's wide spread of sensitivity (in the shop market the segments' purchase
    # prices differ by a few points only: everyone there reacts to price).
    market = simulate(SimConfig.preset("realistic", n_users=400, n_items=80, n_days=21, seed=7))
    offers = market.tables[S.OFFERS]
    traits = market.truth.user_traits().set_index(S.USER_ID)
    bought = offers[offers[S.PURCHASED] == 1]
    lp = market.tables[S.ITEMS].set_index(S.ITEM_ID).loc[bought[S.ITEM_ID], S.LIST_PRICE].to_numpy()
    ratio = (
        pd.Series(bought[S.PRICE].to_numpy() / lp)
        .groupby(traits.loc[bought[S.USER_ID], "segment"].to_numpy())
        .mean()
    )
    assert ratio["deal_seeker"] < ratio["regular"] < ratio["insensitive"]
    assert ratio["insensitive"] - ratio["deal_seeker"] > 0.08


def test_sensitive_users_search_cheap_words_more(market: Market) -> None:
    events = market.tables[S.EVENTS]
    traits = market.truth.user_traits().set_index(S.USER_ID)
    search = events[events[S.EVENT_TYPE] == S.SEARCH]
    cheap = search[S.QUERY].str.contains(CHEAP_WORDS, regex=True).to_numpy()
    segment = traits.loc[search[S.USER_ID], "segment"].to_numpy()
    assert cheap[segment == "deal_seeker"].mean() > 0.5
    assert cheap[segment == "insensitive"].mean() < 0.15


def test_age_groups_differ_mildly_in_sensitivity() -> None:
    # Users only (one day of behaviour): enough of them for group means to be stable.
    traits = simulate(SimConfig(n_users=5000, n_items=20, n_days=1)).truth.user_traits()
    by_age = traits.groupby(S.AGE_GROUP)["sensitivity_z"].mean()
    assert by_age["18-24"] > by_age["45-54"] + 0.2
    assert (by_age.abs() < 0.6).all()  # mild: every group spans all segments
    shares = pd.crosstab(traits[S.AGE_GROUP], traits["segment"], normalize="index")
    assert (shares > 0.1).all().all()


# --- reproducibility and files ------------------------------------------------------------------


def test_same_seed_same_market_other_seed_other_market(market: Market) -> None:
    again = simulate(SMALL)
    for table in S.TABLES:
        pd.testing.assert_frame_equal(market.tables[table], again.tables[table])
    np.testing.assert_array_equal(market.truth.user_beta, again.truth.user_beta)
    other = simulate(SimConfig(n_users=400, n_items=80, n_days=21, seed=8))
    assert not np.array_equal(market.truth.user_beta, other.truth.user_beta)
    assert not market.tables[S.OFFERS][S.PRICE].equals(other.tables[S.OFFERS][S.PRICE])


def test_write_and_load_round_trip(market: Market, pairs: pd.DataFrame, tmp_path: Path) -> None:
    assert load_ground_truth(tmp_path) is None
    paths = write_market(market, tmp_path)
    assert set(paths) == {*S.TABLES, "ground_truth"}
    offers = read_table(tmp_path, S.OFFERS)
    assert offers is not None and len(offers) == len(market.tables[S.OFFERS])
    loaded = load_ground_truth(tmp_path)
    assert loaded is not None
    grid = pairs[S.LIST_PRICE].to_numpy()[:, None] * np.array([0.7, 1.0, 1.3])
    args = (pairs[S.USER_ID], pairs[S.ITEM_ID])
    np.testing.assert_array_equal(
        market.truth.purchase_probability(*args, grid), loaded.purchase_probability(*args, grid)
    )
    pd.testing.assert_frame_equal(market.truth.user_traits(), loaded.user_traits())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ladder_probs": (0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0)},
        {"ladder": (0.9, 1.0), "ladder_probs": (0.3, 0.6)},
        {"n_items": 5},
        {"offers_per_session": 0.5},
    ],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)
