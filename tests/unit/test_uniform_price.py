"""The non-personalized references: the best uniform price per item (`uniform_prices`,
`oracle_uniform_prices`), the share of the personalization gap, and the learned uniform baseline
(`mlops.models.UniformDemand`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.models import LogisticDemand, PricingData, UniformDemand, load_model, save_model
from pricing import features as F
from pricing import schema as S
from pricing.evaluation import (
    UNIFORM_GRID,
    EvalInputs,
    evaluate_policy,
    oracle_uniform_prices,
    personalization_gap,
    uniform_prices,
)
from pricing.policy import Guardrails, price_bounds
from pricing.simulator import Market, SimConfig, simulate
from pricing.split import time_split
from pricing.stats import LIST_PRICE, ORACLE_UNIFORM
from tasks.evaluation import eval_inputs, evaluate_models, subset

G = Guardrails()  # 0.7-1.3x list, no margin floor, profit objective

# --- uniform_prices on constructed value functions -------------------------------------------------


def _step(low: float, high: float, n_grid: int = UNIFORM_GRID) -> float:
    return (high - low) / (n_grid - 1)


def test_one_price_per_item_at_the_known_optimum_of_summed_quadratics() -> None:
    # Offers of items A and B interleaved; each offer's value is -(p - target)^2, so an item's summed
    # value peaks at the mean of its offers' targets.
    items = np.array(["A", "B", "A", "B", "A"])
    targets = np.array([80.0, 110.0, 90.0, 125.0, 100.0])
    low, high = np.full(5, 70.0), np.full(5, 130.0)

    def value(grid: np.ndarray) -> np.ndarray:
        return -((grid - targets[:, None]) ** 2)

    price = uniform_prices(items, low, high, value)
    assert price.shape == (5,)
    a, b = price[items == "A"], price[items == "B"]
    assert np.all(a == a[0]) and np.all(b == b[0])  # the same price for every offer of an item
    step = _step(70.0, 130.0)
    assert abs(a[0] - 90.0) <= step / 2 + 1e-9
    assert abs(b[0] - 117.5) <= step / 2 + 1e-9
    assert np.all((price >= 70.0) & (price <= 130.0))


def test_weighted_concave_curves_and_an_optimum_outside_the_band_is_clipped() -> None:
    # Item X: 3 (p - 20)^2 + (p - 28)^2 peaks at 22 (weighted mean); item Y wants 50, its band
    # stops at 39: the best allowed price is the band's top.
    items = np.array(["X", "X", "Y", "Y"])
    targets = np.array([20.0, 28.0, 50.0, 45.0])
    weights = np.array([3.0, 1.0, 1.0, 1.0])
    low = np.array([14.0, 14.0, 21.0, 21.0])
    high = np.array([26.0, 26.0, 39.0, 39.0])

    def value(grid: np.ndarray) -> np.ndarray:
        return -weights[:, None] * (grid - targets[:, None]) ** 2

    price = uniform_prices(items, low, high, value)
    assert abs(price[0] - 22.0) <= _step(14.0, 26.0) / 2 + 1e-9
    assert price[0] == price[1]
    assert price[2] == price[3] == pytest.approx(39.0, abs=1e-9)


def test_the_band_of_an_item_is_the_intersection_of_its_offers_bands() -> None:
    items = np.array(["A", "A", "A"])
    low = np.array([70.0, 80.0, 75.0])
    high = np.array([130.0, 120.0, 110.0])

    def value(grid: np.ndarray) -> np.ndarray:  # wants as low as possible
        return -grid

    price = uniform_prices(items, low, high, value)
    assert np.all(price == pytest.approx(80.0, abs=1e-9))  # the highest floor
    up = uniform_prices(items, low, high, lambda g: g)  # wants as high as possible
    assert np.all(up == pytest.approx(110.0, abs=1e-9))  # the lowest ceiling


def test_the_global_maximum_of_a_bimodal_sum_is_found() -> None:
    # One offer peaks at 75, two at 120: the sum has a local maximum near 75 and its global one
    # at 120. A local search started at list price (100) could stop at either.
    items = np.array(["A", "A", "A"])
    targets = np.array([75.0, 120.0, 120.0])

    def value(grid: np.ndarray) -> np.ndarray:
        return np.exp(-(((grid - targets[:, None]) / 3.0) ** 2))

    price = uniform_prices(items, np.full(3, 70.0), np.full(3, 130.0), value)
    assert abs(price[0] - 120.0) <= _step(70.0, 130.0) / 2 + 1e-9


def test_nan_values_are_never_chosen() -> None:
    items = np.array(["A", "A"])

    def value(grid: np.ndarray) -> np.ndarray:
        v = -((grid - 100.0) ** 2)
        return np.where(grid > 95.0, np.nan, v)  # the true peak is NaN: the best finite is 95

    price = uniform_prices(items, np.full(2, 70.0), np.full(2, 130.0), value)
    assert price[0] <= 95.0 and price[0] > 95.0 - _step(70.0, 130.0) - 1e-9


# --- the uniform oracle on a simulated market -----------------------------------------------------


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate(SimConfig(n_users=150, n_items=30, n_days=7, seed=1))


@pytest.fixture(scope="module")
def inputs(market: Market) -> EvalInputs:
    t = market.tables
    data = PricingData(
        t[S.OFFERS].reset_index(drop=True), t[S.ITEMS], t[S.EVENTS], None, t[S.USERS]
    )
    return eval_inputs(data, market.truth)


def _total_profit(x: EvalInputs, price: np.ndarray) -> float:
    assert x.truth is not None
    return float(np.sum((price - x.unit_cost) * x.truth(price)))


def _per_item(x: EvalInputs, ratio: dict[str, float] | float, low, high) -> np.ndarray:
    assert x.item_ids is not None
    r = np.array([ratio[i] if isinstance(ratio, dict) else ratio for i in x.item_ids])
    return np.clip(r * x.list_price, low, high)


def test_the_uniform_oracle_is_one_price_per_item_inside_the_band(inputs: EvalInputs) -> None:
    price = oracle_uniform_prices(inputs, G)
    low, high, _ = price_bounds(inputs.list_price, inputs.unit_cost, G)
    assert np.all((price >= low - 1e-9) & (price <= high + 1e-9))
    per_item = pd.Series(price).groupby(inputs.item_ids).nunique()
    assert (per_item == 1).all()


def test_the_uniform_oracle_beats_every_other_uniform_price_and_not_the_personalized_oracle(
    inputs: EvalInputs,
) -> None:
    assert inputs.oracle is not None and inputs.item_ids is not None
    low, high, _ = price_bounds(inputs.list_price, inputs.unit_cost, G)
    best = _total_profit(inputs, oracle_uniform_prices(inputs, G))
    tol = 1e-6 * best  # a price between two of the 401 grid points may gain a hair
    assert best >= _total_profit(inputs, inputs.list_price) - tol
    for r in (0.7, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.3):
        assert best >= _total_profit(inputs, _per_item(inputs, r, low, high)) - tol, r
    rng = np.random.default_rng(0)
    ids = sorted(set(inputs.item_ids))
    for _ in range(20):  # any other single price per item
        ratios = dict(zip(ids, rng.uniform(0.7, 1.3, len(ids)), strict=True))
        assert best >= _total_profit(inputs, _per_item(inputs, ratios, low, high)) - tol
    personalized = _total_profit(inputs, inputs.oracle(low, high, G.objective))
    assert best <= personalized + 1e-9
    assert best > _total_profit(inputs, inputs.list_price)  # on this market list is not optimal


def test_the_uniform_oracle_needs_truth_and_items(inputs: EvalInputs) -> None:
    no_items = EvalInputs(**{**inputs.__dict__, "item_ids": None})
    with pytest.raises(ValueError, match="uniform oracle"):
        oracle_uniform_prices(no_items, G)
    no_truth = EvalInputs(**{**inputs.__dict__, "truth": None})
    with pytest.raises(ValueError, match="uniform oracle"):
        oracle_uniform_prices(no_truth, G)


def test_the_gap_share_of_policies_from_their_regrets(inputs: EvalInputs) -> None:
    assert inputs.oracle is not None
    low, high, _ = price_bounds(inputs.list_price, inputs.unit_cost, G)
    uniform = oracle_uniform_prices(inputs, G)
    ou, _ = evaluate_policy(inputs, G, None, None, prices=uniform, with_ope=False)
    exact, _ = evaluate_policy(
        inputs, G, None, None, prices=inputs.oracle(low, high, G.objective), with_ope=False
    )
    lp, _ = evaluate_policy(inputs, G, None, None, with_ope=False)
    assert exact["profit_regret"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < ou["profit_regret"] < lp["profit_regret"]
    assert personalization_gap(exact["profit_regret"], ou["profit_regret"])["gap_share"] == (
        pytest.approx(1.0)
    )
    at_uniform = personalization_gap(ou["profit_regret"], ou["profit_regret"])
    assert at_uniform == {"gap_share": 0.0, "lift_vs_uniform": 0.0}
    worse = personalization_gap(lp["profit_regret"], ou["profit_regret"])
    assert worse["gap_share"] < 0 and worse["lift_vs_uniform"] < 0
    # lift: the list policy's profit over the uniform oracle's
    assert worse["lift_vs_uniform"] == pytest.approx(
        lp["expected_profit"] / ou["expected_profit"] - 1.0, rel=1e-9
    )


# --- personalization_gap, pure ----------------------------------------------------------------------


def test_personalization_gap_values() -> None:
    assert personalization_gap(0.0, 0.2) == {
        "gap_share": 1.0,
        "lift_vs_uniform": pytest.approx(0.25),
    }
    assert personalization_gap(0.2, 0.2) == {"gap_share": 0.0, "lift_vs_uniform": 0.0}
    half = personalization_gap(0.1, 0.2)
    assert half["gap_share"] == pytest.approx(0.5)
    assert half["lift_vs_uniform"] == pytest.approx(0.9 / 0.8 - 1.0)
    worse = personalization_gap(0.3, 0.2)
    assert worse["gap_share"] == pytest.approx(-0.5)
    assert worse["lift_vs_uniform"] == pytest.approx(0.7 / 0.8 - 1.0)
    # consistent with the regrets: profit = (1 - regret) * oracle profit
    oracle_profit = 40.0
    policy, uniform = (1 - 0.1) * oracle_profit, (1 - 0.2) * oracle_profit
    assert half["gap_share"] == pytest.approx((policy - uniform) / (oracle_profit - uniform))
    assert half["lift_vs_uniform"] == pytest.approx(policy / uniform - 1.0)


def test_personalization_gap_is_nan_where_undefined() -> None:
    # a uniform price that is already the personalized optimum leaves no gap to close
    none_left = personalization_gap(0.0, 0.0)
    assert math.isnan(none_left["gap_share"]) and none_left["lift_vs_uniform"] == 0.0
    zero_profit = personalization_gap(0.5, 1.0)
    assert zero_profit["gap_share"] == pytest.approx(0.5)
    assert math.isnan(zero_profit["lift_vs_uniform"])
    for bad in (personalization_gap(math.nan, 0.2), personalization_gap(0.1, math.inf)):
        assert math.isnan(bad["gap_share"]) and math.isnan(bad["lift_vs_uniform"])


# --- evaluate_models with ground truth ----------------------------------------------------------


def test_evaluate_models_adds_the_uniform_oracle_and_gap_shares(market: Market) -> None:
    t = market.tables
    offers = t[S.OFFERS].reset_index(drop=True)
    feats = F.offer_features(offers, t[S.EVENTS], t[S.ITEMS]).reset_index(drop=True)
    full = PricingData(offers, t[S.ITEMS], t[S.EVENTS], feats, t[S.USERS])
    split = time_split(offers, None, 0.3, 0.15)
    train, valid, test = (
        subset(full, split.train),
        subset(full, split.valid),
        subset(full, split.test),
    )
    models = {"logistic": LogisticDemand(), "uniform": UniformDemand()}
    for m in models.values():
        m.fit(train, valid)
    base_rate = float(train.offers[S.PURCHASED].mean())
    train_items = set(train.offers[S.ITEM_ID].astype(str))
    metrics, curves = evaluate_models(
        models, test, market.truth, G, base_rate, train_items=train_items
    )
    assert set(metrics) == {"logistic", "uniform", LIST_PRICE, ORACLE_UNIFORM}
    ou = metrics[ORACLE_UNIFORM]
    assert ou["gap_share"] == 0.0 and ou["lift_vs_uniform"] == 0.0
    for name, m in metrics.items():
        assert "gap_share" in m and "lift_vs_uniform" in m, name
        want = personalization_gap(m["profit_regret"], ou["profit_regret"])
        assert m["gap_share"] == pytest.approx(want["gap_share"]), name
        assert m["lift_vs_uniform"] == pytest.approx(want["lift_vs_uniform"]), name
        for sl in ("cold_items", "cold_users"):
            if f"{sl}/profit_regret" in m:
                assert f"{sl}/gap_share" in m, (name, sl)
    assert metrics[LIST_PRICE]["gap_share"] < 0  # list price is not the best uniform price here
    # the reference's prices are the uniform oracle's on the evaluated offers
    test_inputs = eval_inputs(test, market.truth)
    np.testing.assert_allclose(
        curves["price"][ORACLE_UNIFORM], oracle_uniform_prices(test_inputs, G)
    )
    assert ou["profit_regret"] <= metrics[LIST_PRICE]["profit_regret"]


def test_evaluate_models_without_truth_has_no_uniform_oracle(market: Market) -> None:
    t = market.tables
    offers = t[S.OFFERS].reset_index(drop=True)
    full = PricingData(offers, t[S.ITEMS], t[S.EVENTS], None, t[S.USERS])
    split = time_split(offers, None, 0.3, 0.0)
    train, test = subset(full, split.train), subset(full, split.test)
    model = UniformDemand(shrinkage=16.0)
    model.fit(train)
    metrics, _ = evaluate_models({"uniform": model}, test, None, G, 0.1)
    assert set(metrics) == {"uniform", LIST_PRICE}
    assert all("gap_share" not in m for m in metrics.values())


# --- the learned uniform baseline -----------------------------------------------------------------

LADDER = np.array([0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
CATEGORY_CURVES = {"coffee": (-1.0, -3.0), "tea": (-2.0, -1.5), "snacks": (-0.5, -5.0)}


def _shop(seed: int = 0, per_item: int = 1200) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Items (6 per category, each with a true (a_i, b_i) near its category's) and offers whose
    purchases follow logit = a_i + b_i log(p / list), whoever the shopper is."""
    rng = np.random.default_rng(seed)
    rows, params = [], []
    for cat, (a, b) in CATEGORY_CURVES.items():
        for k in range(6):
            rows.append((f"{cat}-{k}", cat, float(rng.uniform(2.0, 20.0))))
            params.append((a + rng.normal(0, 0.15), b + rng.normal(0, 0.3)))
    items = pd.DataFrame(rows, columns=[S.ITEM_ID, S.CATEGORY, S.LIST_PRICE])
    items[S.UNIT_COST] = 0.6 * items[S.LIST_PRICE]
    truth = np.array(params)
    idx = rng.permutation(np.repeat(np.arange(len(items)), per_item))
    ratio = rng.choice(LADDER, size=len(idx))
    p = 1.0 / (1.0 + np.exp(-(truth[idx, 0] + truth[idx, 1] * np.log(ratio))))
    offers = pd.DataFrame(
        {
            S.OFFER_ID: np.arange(len(idx)).astype(str),
            S.USER_ID: rng.integers(0, 300, len(idx)).astype(str),
            S.ITEM_ID: items[S.ITEM_ID].to_numpy()[idx],
            S.PRICE: items[S.LIST_PRICE].to_numpy()[idx] * ratio,
            S.PURCHASED: (rng.random(len(idx)) < p).astype(int),
        }
    )
    return items, offers, truth


def _data(offers: pd.DataFrame, items: pd.DataFrame) -> PricingData:
    return PricingData(offers.reset_index(drop=True), items, pd.DataFrame())


def _queries(items: pd.DataFrame, user: str = "u0") -> PricingData:
    q = pd.DataFrame({S.ITEM_ID: items[S.ITEM_ID], S.USER_ID: user, S.PRICE: items[S.LIST_PRICE]})
    return _data(q, items)


def _true_curves(truth: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(truth[:, :1] + truth[:, 1:] * np.log(LADDER)[None, :])))


@pytest.fixture(scope="module")
def shop() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    return _shop()


@pytest.fixture(scope="module")
def fitted(shop) -> tuple[UniformDemand, dict[str, float], PricingData, PricingData]:
    items, offers, _ = shop
    k = len(offers) * 4 // 5
    train, valid = _data(offers.iloc[:k], items), _data(offers.iloc[k:], items)
    model = UniformDemand()
    diag = model.fit(train, valid)
    return model, diag, train, valid


def test_uniform_demand_recovers_each_items_true_curve(shop, fitted) -> None:
    items, _, truth = shop
    model = fitted[0]
    grid = items[S.LIST_PRICE].to_numpy()[:, None] * LADDER[None, :]
    pred = model.predict_grid(_queries(items), grid)
    err = np.abs(pred - _true_curves(truth))
    assert err.mean() < 0.02, err.mean()
    assert err.max() < 0.1
    assert np.all(model.params[:, 1] <= 0.0)
    assert np.all(np.diff(pred, axis=1) <= 1e-12)  # never more demand at a higher price


def test_uniform_demand_slopes_stay_non_positive_when_the_data_say_otherwise() -> None:
    items, offers, truth = _shop(seed=3, per_item=400)
    # one item whose purchases rise with price (noise, or a luxury good): the curve goes flat
    item = items[S.ITEM_ID].iloc[0]
    mask = offers[S.ITEM_ID] == item
    ratio = offers.loc[mask, S.PRICE] / items[S.LIST_PRICE].iloc[0]
    rng = np.random.default_rng(1)
    offers.loc[mask, S.PURCHASED] = (rng.random(mask.sum()) < 0.1 + 0.6 * (ratio - 0.7)).astype(int)
    model = UniformDemand(shrinkage=1.0)
    model.fit(_data(offers, items))
    assert np.all(model.params[:, 1] <= 0.0)
    assert model.params[0, 1] == 0.0
    grid = items[S.LIST_PRICE].to_numpy()[:, None] * LADDER[None, :]
    pred = model.predict_grid(_queries(items), grid)
    assert np.all(np.diff(pred, axis=1) <= 1e-12)


def test_uniform_demand_is_the_same_for_every_user(shop, fitted) -> None:
    items = shop[0]
    model = fitted[0]
    grid = items[S.LIST_PRICE].to_numpy()[:, None] * LADDER[None, :]
    a = model.predict_grid(_queries(items, "u0"), grid)
    b = model.predict_grid(_queries(items, "someone-never-seen"), grid)
    np.testing.assert_array_equal(a, b)
    # serving: no user state, and the catalog rows' curves are the same as in evaluation
    state = model.user_state(pd.DataFrame({S.USER_ID: ["u1"], S.ITEM_ID: ["coffee-0"]}))
    assert state is None
    rows = np.arange(len(items))
    np.testing.assert_allclose(model.demand(state, rows, grid), a, rtol=1e-12)


def test_an_item_never_offered_in_training_takes_its_categorys_curve(shop) -> None:
    items, offers, truth = shop
    new = pd.DataFrame(
        {
            S.ITEM_ID: ["tea-new", "tea-new2", "snacks-new"],
            S.CATEGORY: ["tea", "tea", "snacks"],
            S.LIST_PRICE: [5.0, 12.0, 8.0],
            S.UNIT_COST: [3.0, 7.0, 5.0],
        }
    )
    catalog = pd.concat([items, new], ignore_index=True)
    model = UniformDemand(shrinkage=16.0)
    model.fit(_data(offers, catalog))
    q = _queries(new)
    grid = new[S.LIST_PRICE].to_numpy()[:, None] * LADDER[None, :]
    pred = model.predict_grid(q, grid)
    assert np.all(np.isfinite(pred)) and np.all((pred > 0) & (pred < 1))
    # two cold items of one category: the same curve (in price / list terms)
    np.testing.assert_allclose(pred[0], pred[1], rtol=1e-6)
    assert np.abs(pred[0] - pred[2]).max() > 0.05  # another category, another curve
    # ... close to the category's true centre
    for row, cat in ((0, "tea"), (2, "snacks")):
        a, b = CATEGORY_CURVES[cat]
        centre = 1.0 / (1.0 + np.exp(-(a + b * np.log(LADDER))))
        assert np.abs(pred[row] - centre).mean() < 0.03, cat


def test_uniform_demand_round_trips_exactly(tmp_path: Path, shop, fitted) -> None:
    items = shop[0]
    model, _, _, valid = fitted
    grid = items[S.LIST_PRICE].to_numpy()[:, None] * LADDER[None, :]
    q = _queries(items)
    model.save(tmp_path / "plain")
    back = UniformDemand.load(tmp_path / "plain")
    np.testing.assert_array_equal(back.predict_grid(q, grid), model.predict_grid(q, grid))
    np.testing.assert_array_equal(back.predict(valid), model.predict(valid))
    assert back.shrinkage == model.shrinkage
    save_model(model, tmp_path / "managed")  # the manifest and class table know the model
    loaded = load_model(tmp_path / "managed")
    assert isinstance(loaded, UniformDemand)
    np.testing.assert_array_equal(loaded.predict_grid(q, grid), model.predict_grid(q, grid))


def test_fit_picks_the_shrinkage_with_the_best_validation_log_loss(shop, fitted) -> None:
    items, offers, _ = shop
    model, diag, train, valid = fitted
    assert diag["shrinkage"] in UniformDemand.SHRINKAGE_GRID
    assert model.shrinkage == diag["shrinkage"]
    assert diag["items_fitted"] == len(items)
    y = valid.offers[S.PURCHASED].to_numpy(float)
    losses = {}
    for s in UniformDemand.SHRINKAGE_GRID:
        m = UniformDemand(shrinkage=s)
        d = m.fit(train, valid)
        assert d["shrinkage"] == s and "valid_log_loss" not in d  # fixed: nothing chosen
        p = np.clip(m.predict(valid), 1e-7, 1 - 1e-7)
        losses[s] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert diag["shrinkage"] == min(losses, key=lambda s: losses[s])
    assert diag["valid_log_loss"] == pytest.approx(losses[diag["shrinkage"]], rel=1e-9)


def test_fit_without_a_validation_split_uses_the_middle_of_the_grid(shop) -> None:
    items, offers, _ = shop
    model = UniformDemand()
    diag = model.fit(_data(offers.iloc[:2000], items))
    assert diag["shrinkage"] == UniformDemand.SHRINKAGE_GRID[2]
    assert "valid_log_loss" not in diag


def test_an_item_outside_the_catalog_is_an_error(shop, fitted) -> None:
    items = shop[0]
    model = fitted[0]
    q = pd.DataFrame({S.ITEM_ID: ["nope"], S.USER_ID: ["u"], S.PRICE: [1.0]})
    other = pd.concat(
        [items, pd.DataFrame({S.ITEM_ID: ["nope"], S.CATEGORY: ["tea"], S.LIST_PRICE: [1.0]})]
    )
    with pytest.raises(KeyError, match="nope"):
        model.predict(_data(q, other))
