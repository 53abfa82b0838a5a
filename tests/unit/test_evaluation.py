"""Regret against the exact oracle and against the best grid price (`pricing.evaluation`)."""

from __future__ import annotations

import numpy as np
import pytest

from pricing.evaluation import EvalInputs, evaluate_policy
from pricing.policy import Guardrails, price_bounds
from pricing.simulator import Market

G = Guardrails(min_margin=0.05, grid_size=9)


def _inputs(market: Market, n: int = 400) -> EvalInputs:
    truth = market.truth
    offers = market.tables["offers"].iloc[:n]
    users = offers["user_id"].astype(str).to_numpy()
    items = offers["item_id"].astype(str).to_numpy()
    catalog = market.tables["items"].set_index("item_id").loc[items]
    cost = catalog["unit_cost"].to_numpy(float)

    def true_p(p: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return truth.purchase_probability(users, items, p)

    def oracle(lo: np.ndarray, hi: np.ndarray, objective: str) -> np.ndarray:
        return truth.oracle(users, items, lo, hi, cost, objective)[0]  # type: ignore[arg-type]

    return EvalInputs(
        list_price=catalog["list_price"].to_numpy(float),
        unit_cost=cost,
        offered_price=offers["price"].to_numpy(float),
        purchased=offers["purchased"].to_numpy(float),
        propensity=offers["propensity"].to_numpy(float),
        truth=true_p,
        oracle=oracle,
    )


def test_the_true_demand_has_zero_grid_regret_and_small_exact_regret(tiny_market: Market) -> None:
    x = _inputs(tiny_market)
    m, _ = evaluate_policy(x, G, x.truth, None, with_ope=False)
    assert m["grid_regret"] == pytest.approx(0.0, abs=1e-12)
    # The grid (9 cent prices over 0.7-1.3x) loses a little against the exact optimum: never gains.
    assert 0.0 < m["profit_regret"] < 0.02
    assert m["oracle_profit"] > m["grid_oracle_profit"]


def test_profit_regret_is_against_the_exact_optimum_inside_band_and_margin(
    tiny_market: Market,
) -> None:
    x = _inputs(tiny_market)
    m, _ = evaluate_policy(x, G, None, None)  # the list-price policy
    low, high, _ = price_bounds(x.list_price, x.unit_cost, G)
    assert x.oracle is not None and x.truth is not None
    exact = x.oracle(low, high, "profit")
    assert np.all((exact >= low - 1e-9) & (exact <= high + 1e-9))
    exact_profit = float(np.mean((exact - x.unit_cost) * x.truth(exact)))
    assert m["oracle_profit"] == pytest.approx(exact_profit, rel=1e-12)
    assert m["profit_regret"] == pytest.approx(1 - m["expected_profit"] / exact_profit, rel=1e-12)
    assert m["profit_regret"] > m["grid_regret"] > 0


def test_closed_loop_oracle_uses_the_served_band_and_margin(tiny_market: Market) -> None:
    """Shoppers quoted the exact optimum inside the served guardrails show zero live regret."""
    import pandas as pd

    from pricing.shoppers import loop_summary

    g = Guardrails(min_margin=0.6)  # binds for many items: the oracle must respect it too
    offers = tiny_market.tables["offers"].iloc[:300]
    items_tbl = tiny_market.tables["items"].set_index("item_id")
    users = offers["user_id"].astype(str).to_numpy()
    items = offers["item_id"].astype(str).to_numpy()
    lp = items_tbl.loc[items, "list_price"].to_numpy(float)
    cost = items_tbl["unit_cost"].astype(float)
    low, high, _ = price_bounds(lp, cost.loc[items].to_numpy(), g)
    price, _ = tiny_market.truth.oracle(
        users, items, low, high, unit_cost=cost.loc[items].to_numpy()
    )
    assert np.any(low > 0.7 * lp + 1e-9)  # the margin moved some floors
    quotes = pd.DataFrame(
        {"user_id": users, "item_id": items, "price": price, "purchased": 0, "propensity": 1.0}
    )
    summary = loop_summary(quotes, tiny_market.truth, cost, g)
    assert summary["live_regret_vs_continuous_oracle"] == pytest.approx(0.0, abs=1e-12)


def test_cold_start_slices_on_a_constructed_case() -> None:
    import pandas as pd

    from pricing.evaluation import cold_start_slices

    t = pd.Timestamp("2026-01-10", tz="UTC")
    offers = pd.DataFrame(
        {
            "ts": [t, t, t + pd.Timedelta(days=1), t],
            "user_id": ["u1", "u2", "u2", "u3"],
            "item_id": ["A", "C", "A", "B"],
        }
    )
    day = pd.Timedelta(days=1)
    events = pd.DataFrame(
        {
            "ts": [t - 3 * day, t - 2 * day, t - day, t - day, t - day, t, t - day],
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u2", "u3"],
            # B was seen in an event before the test window; C only appears in it
            "item_id": ["A", "A", "A", "A", "A", "C", "B"],
        }
    )
    s = cold_start_slices(offers, events, train_items={"A"})
    assert s["cold_items"].tolist() == [1]  # C: not trained on, no event before the test start
    # u1 has 3 events before; u2 has 2 before its first offer (the one at t itself doesn't count)
    # and 3 before its second; u3 has 1
    assert s["cold_users"].tolist() == [1, 3]
    # without the training items, only events before the test start count: A and B are seen
    assert cold_start_slices(offers, events)["cold_items"].tolist() == [1]
    empty = events.iloc[:0]
    assert cold_start_slices(offers, empty, {"A", "B", "C"})["cold_users"].tolist() == [0, 1, 2, 3]


def test_price_gap_per_protected_attribute_and_the_widest_for_the_gate(tiny_market: Market) -> None:
    from pricing import metrics as M

    x = _inputs(tiny_market, n=6)
    x.groups = {
        "age_group": np.array(["a", "a", "b", "b", None, None], dtype=object),
        "income": np.array(["lo", "hi", "lo", "hi", "lo", None], dtype=object),
    }
    # Even rows are very price sensitive, odd rows not: their chosen prices differ.
    sensitive = (np.arange(6) % 2 == 0)[:, None]

    def demand(grid: np.ndarray) -> np.ndarray:
        ratio = grid / x.list_price[:, None]
        return np.where(sensitive, np.exp(-40 * (ratio - 0.7)), 0.5)

    m, decision = evaluate_policy(x, G, demand, None)
    assert decision is not None
    ratio = decision.price / x.list_price
    gaps = {k: M.price_dispersion(ratio, g)["max_gap"] for k, g in x.groups.items()}
    assert m["price_gap/age_group"] == pytest.approx(gaps["age_group"])
    assert m["price_gap/income"] == pytest.approx(gaps["income"])
    assert m["price_gap/income"] > 0.2  # the sensitive rows are the "lo" incomes
    assert m["price_gap_protected"] == max(gaps.values())
