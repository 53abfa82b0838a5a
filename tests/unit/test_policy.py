"""Unit tests for pricing.policy: guardrail limits first, then golden values."""

from __future__ import annotations

import numpy as np
import pytest

from pricing.policy import (
    CandidateTable,
    Guardrails,
    PriceDecision,
    candidate_prices,
    choose_prices,
    explore,
    optimize,
    rank_by_value,
)


def logistic_demand(list_price: np.ndarray, a: np.ndarray, b: np.ndarray):
    """The model's price head shape: logit = a - b * log(price / list)."""

    def fn(prices: np.ndarray) -> np.ndarray:
        logit = a[:, None] - b[:, None] * np.log(prices / list_price[:, None])
        return 1.0 / (1.0 + np.exp(-logit))

    return fn


def random_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    lp = np.round(rng.lognormal(2.5, 1.2, n), 2).clip(0.05)
    cost = lp * rng.uniform(0.2, 1.2, n)
    floor = np.where(rng.random(n) < 0.3, lp * rng.uniform(0.5, 1.2, n), np.nan)
    ceiling = np.where(rng.random(n) < 0.3, lp * rng.uniform(0.8, 1.5, n), np.nan)
    last = np.where(rng.random(n) < 0.4, lp * rng.uniform(0.6, 1.4, n), np.nan)
    return {
        "list_price": lp,
        "unit_cost": cost,
        "floor": floor,
        "ceiling": ceiling,
        "last_price": last,
    }


def allowed_interval(x: dict[str, np.ndarray], g: Guardrails) -> tuple[np.ndarray, np.ndarray]:
    lo = np.fmax(
        np.fmax(g.band_low * x["list_price"], x["floor"]), x["unit_cost"] * (1 + g.min_margin)
    )
    hi = np.fmin(g.band_high * x["list_price"], x["ceiling"])
    lo = np.fmax(lo, x["last_price"] * (1 - g.max_session_change))
    hi = np.fmin(hi, x["last_price"] * (1 + g.max_session_change))
    return lo, hi


GUARDRAILS = [
    Guardrails(),
    Guardrails(ladder="99", min_margin=0.1),
    Guardrails(ladder="none", grid_size=7, band_low=0.9, band_high=1.1, max_session_change=0.02),
    Guardrails(ladder="cents", grid_size=101, band_low=0.5, band_high=2.0, min_margin=0.3),
]


# --- Guardrails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"band_low": 0.0},
        {"band_low": 1.2, "band_high": 1.1},
        {"min_margin": -1.0},
        {"ladder": "0.95"},
        {"grid_size": 1},
        {"grid_size": 2.5},
        {"max_session_change": -0.1},
        {"objective": "volume"},
        {"exploration": 1.5},
        {"max_dispersion": -0.1},
    ],
)
def test_guardrails_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Guardrails(**kwargs)


def test_guardrails_from_dict_fills_missing_and_rejects_unknown() -> None:
    assert Guardrails.from_dict({}) == Guardrails()
    assert Guardrails.from_dict(None) == Guardrails()
    g = Guardrails.from_dict({"ladder": "99", "grid_size": 11.0})
    assert g.ladder == "99" and g.grid_size == 11 and g.band_low == 0.7
    with pytest.raises(ValueError, match="unknown guardrail keys"):
        Guardrails.from_dict({"bandlow": 0.5})
    assert Guardrails.from_dict({"bandlow": 0.5}, strict=False) == Guardrails()
    assert Guardrails.from_dict(Guardrails(ladder="none").to_dict()) == Guardrails(ladder="none")


# --- candidate_prices: limits -------------------------------------------------------------------


@pytest.mark.parametrize("g", GUARDRAILS)
def test_grid_respects_every_constraint_on_random_inputs(g: Guardrails) -> None:
    x = random_inputs(np.random.default_rng(0), 3000)
    grid, fallback = candidate_prices(**x, g=g, return_flags=True)
    assert grid.shape == (3000, g.grid_size)
    allowed = ~np.isnan(grid)
    assert allowed.any(axis=1).all(), "every row has at least one allowed price"
    assert (grid > 0)[allowed].all()
    # Allowed prices are strictly ascending along the row (unique, so exploration is uniform).
    for row in grid[:200]:
        vals = row[~np.isnan(row)]
        assert np.all(np.diff(vals) > 0)
    lo, hi = allowed_interval(x, g)
    ok = ~fallback
    assert (lo[ok] <= hi[ok]).all()
    inside = (grid >= lo[:, None]) & (grid <= hi[:, None])
    assert inside[ok][allowed[ok]].all(), "rounding must never leave the allowed interval"
    # Flagged rows are exactly the infeasible ones.
    assert np.array_equal(fallback, lo > hi)
    # Fallback rows never exceed the upper bounds (band_high, ceiling): the upper bounds win.
    hi_base = np.fmin(g.band_high * x["list_price"], x["ceiling"])
    assert (np.nanmax(grid, axis=1) <= hi_base)[fallback].all()


@pytest.mark.parametrize("g", GUARDRAILS)
def test_candidate_table_equals_candidate_prices(g: Guardrails) -> None:
    """The scorer's precomputed grid is `candidate_prices` exactly: every sticky case, relaxed or
    not, rows without a last price, infeasible margins, repeated and reordered rows."""
    rng = np.random.default_rng(1)
    x = random_inputs(rng, 2000)
    table = CandidateTable(x["list_price"], x["unit_cost"], g)
    for _ in range(40):
        idx = rng.choice(2000, size=int(rng.integers(1, 80)), replace=bool(rng.random() < 0.3))
        lp = x["list_price"][idx]
        # last prices near, far from (a broken sticky window) and missing
        last = lp * rng.choice([0.5, 0.75, 0.9, 1.0, 1.07, 1.3, 2.5], size=idx.size)
        last = np.where(rng.random(idx.size) < 0.3, np.nan, np.round(last, 2))
        for last_price in (None, last, np.full(idx.size, np.nan)):
            want = candidate_prices(
                lp, x["unit_cost"][idx], g, last_price=last_price, return_flags=True
            )
            got = table(idx, last_price)
            assert np.array_equal(got[0], want[0], equal_nan=True)
            assert np.array_equal(got[1], want[1])
            kept = optimize(
                lambda p: np.full(p.shape, 0.5), lp, x["unit_cost"][idx], g, candidates=got
            )
            assert np.array_equal(kept.grid, want[0], equal_nan=True)


def test_ladder_99_prices_end_in_99_and_cents_are_whole_cents() -> None:
    x = random_inputs(np.random.default_rng(1), 3000)
    lo, hi = allowed_interval(x, Guardrails(ladder="99"))
    # Rows whose interval holds no whole cent are left unrounded (the ladder falls back to none).
    has_cent = (lo > hi) | (np.floor(hi * 100 + 1e-9) >= np.ceil(lo * 100 - 1e-9))
    assert has_cent.mean() > 0.99
    grid = candidate_prices(**x, g=Guardrails(ladder="99"))[has_cent]
    p = grid[~np.isnan(grid)]
    assert np.allclose(p * 100, np.round(p * 100), atol=1e-6)
    # At or above 0.99 every price ends in .99, except rows whose interval holds no .99 price.
    grid_plain = candidate_prices(
        x["list_price"], x["unit_cost"], Guardrails(ladder="99", min_margin=-0.99)
    )
    big = grid_plain[(x["list_price"] > 5)]
    q = big[~np.isnan(big)]
    assert (np.round(q * 100) % 100 == 99).all()
    assert candidate_prices(10.0, 1.0, Guardrails(ladder="99"))[0, 0] == 7.99
    p = candidate_prices(**x, g=Guardrails(ladder="cents"))[has_cent]
    p = p[~np.isnan(p)]
    assert np.allclose(p * 100, np.round(p * 100), atol=1e-6)


def test_ladder_falls_back_to_finer_steps_inside_tight_intervals() -> None:
    g = Guardrails(ladder="99")
    # [1.20, 1.50] holds no .99 price: cents inside the interval instead.
    grid, fb = candidate_prices(1.2, 0.1, g, floor=1.2, ceiling=1.5, return_flags=True)
    vals = grid[~np.isnan(grid)]
    assert not fb.any() and (vals >= 1.2).all() and (vals <= 1.5).all()
    # [1.234, 1.236] holds no cent: unrounded, still inside.
    grid = candidate_prices(1.2, 0.1, Guardrails(ladder="cents"), floor=1.234, ceiling=1.236)
    vals = grid[~np.isnan(grid)]
    assert (vals >= 1.234).all() and (vals <= 1.236).all()


def test_infeasible_margin_above_ceiling_falls_back_to_ceiling_with_flag() -> None:
    g = Guardrails(min_margin=0.2)
    grid, fb = candidate_prices(
        [10.0, 10.0], [12.0, 5.0], g, ceiling=[11.0, np.nan], return_flags=True
    )
    assert fb.tolist() == [True, False]
    assert grid[0, 0] == 11.0 and np.isnan(grid[0, 1:]).all()
    dec = optimize(
        lambda p: np.full(p.shape, 0.5), [10.0, 10.0], [12.0, 5.0], g, ceiling=[11.0, np.nan]
    )
    assert dec.fallback.tolist() == [True, False]
    assert dec.price[0] == 11.0 and dec.expected_value[0] == pytest.approx(-0.5)


def test_sticky_window_respected_and_relaxed_only_when_disjoint() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    lp = rng.uniform(1, 100, n)
    last = lp * rng.uniform(0.7, 1.3, n)
    g = Guardrails(ladder="99", max_session_change=0.1)
    fn = logistic_demand(lp, rng.normal(0, 1, n), rng.uniform(0.5, 5, n))
    dec = optimize(fn, lp, lp * 0.5, g, last_price=last)
    ok = ~dec.fallback
    assert ok.mean() > 0.9
    assert (np.abs(dec.price - last)[ok] <= 0.1 * last[ok] + 1e-12).all()
    # Disjoint: cost forces >= 13 but the last quote was 8: the allowed price nearest 8 (13.00).
    grid, fb = candidate_prices(10.0, 13.0, Guardrails(), last_price=8.0, return_flags=True)
    assert fb[0] and np.nanmin(grid) == np.nanmax(grid) == 13.0


# --- choose / optimize: limits ------------------------------------------------------------------


def test_optimize_stays_in_bounds_and_matches_brute_force_argmax() -> None:
    rng = np.random.default_rng(3)
    x = random_inputs(rng, 2000)
    g = Guardrails(ladder="99", min_margin=0.05)
    fn = logistic_demand(x["list_price"], rng.normal(0, 1, 2000), rng.uniform(0.5, 6, 2000))
    dec = optimize(
        fn, x["list_price"], x["unit_cost"], g, x["floor"], x["ceiling"], x["last_price"]
    )
    grid = candidate_prices(**x, g=g)
    lo, hi = allowed_interval(x, g)
    ok = ~dec.fallback
    assert ((dec.price >= lo) & (dec.price <= hi))[ok].all()
    ev = (grid - x["unit_cost"][:, None]) * fn(np.where(np.isnan(grid), 1.0, grid))
    best = np.nanargmax(np.where(np.isnan(grid), np.nan, ev), axis=1)
    assert np.array_equal(dec.index, best)
    assert np.array_equal(dec.price, grid[np.arange(2000), best])
    assert np.allclose(dec.expected_value, ev[np.arange(2000), best])


def test_optimize_never_shows_nan_to_the_demand_fn() -> None:
    seen: list[np.ndarray] = []

    def fn(p: np.ndarray) -> np.ndarray:
        seen.append(p)
        return np.exp(-p / 10)

    optimize(fn, [10.0, 20.0], [9.0, 1.0], Guardrails(), ceiling=[np.nan, 15.0])
    assert len(seen) == 1 and not np.isnan(seen[0]).any()


def test_price_is_monotone_in_unit_cost() -> None:
    n = 400
    lp = np.full(n, 20.0)
    cost = np.linspace(0.0, 30.0, n)
    fn = logistic_demand(lp, np.full(n, 0.5), np.full(n, 3.0))
    for g in (
        Guardrails(),
        Guardrails(ladder="99", min_margin=0.1),
        Guardrails(ladder="none", grid_size=9),
    ):
        price = optimize(fn, lp, cost, g).price
        assert (np.diff(price) >= 0).all()


def test_revenue_price_never_above_profit_price() -> None:
    rng = np.random.default_rng(4)
    x = random_inputs(rng, 2000)
    fn = logistic_demand(x["list_price"], rng.normal(0, 1, 2000), rng.uniform(0.2, 6, 2000))
    args = (x["list_price"], x["unit_cost"])
    kw = {"floor": x["floor"], "ceiling": x["ceiling"], "last_price": x["last_price"]}
    p_profit = optimize(fn, *args, Guardrails(objective="profit"), **kw).price
    p_revenue = optimize(fn, *args, Guardrails(objective="revenue"), **kw).price
    assert (p_revenue <= p_profit).all()
    assert (p_revenue < p_profit).mean() > 0.1


def test_choose_prices_ties_nan_and_guardrail_flags() -> None:
    grid = np.array(
        [[1.0, 2.0, np.nan, 4.0], [1.0, np.nan, 3.0, np.nan], [np.nan, 5.0, np.nan, np.nan]]
    )
    probs = np.array([[0.8, 0.4, 9.9, 0.2], [0.1, 9.9, 0.5, 9.9], [0.0, 0.3, 0.0, 0.0]])
    dec = choose_prices(grid, probs, 0.0, objective="revenue")
    # Row 0: revenue 0.8, 0.8, -, 0.8 -> tie goes to the lowest price.
    assert dec.price.tolist() == [1.0, 3.0, 5.0]
    assert dec.index.tolist() == [0, 2, 1]
    assert dec.at_floor.tolist() == [True, False, True]
    assert dec.at_ceiling.tolist() == [False, True, True]
    assert dec.expected_value == pytest.approx([0.8, 1.5, 1.5])
    assert dec.probability == pytest.approx([0.8, 0.5, 0.3])
    assert not dec.fallback.any()
    with pytest.raises(ValueError):
        choose_prices(grid, probs[:, :2], 0.0)


def test_rank_by_value() -> None:
    assert rank_by_value(np.array([0.3, np.nan, 1.2, 0.3, -1.0])).tolist() == [2, 5, 1, 3, 4]
    assert rank_by_value(np.array([])).tolist() == []


# --- exploration --------------------------------------------------------------------------------


def test_exploration_propensities_are_exact_and_match_frequencies() -> None:
    g = Guardrails(grid_size=9, ladder="none")
    n = 40_000
    lp = np.full(n, 10.0)
    fn = logistic_demand(lp, np.full(n, 0.0), np.full(n, 2.0))
    grid = candidate_prices(lp, 5.0, g, ceiling=12.5)  # 8 of 9 positions allowed
    dec = choose_prices(grid, fn(np.where(np.isnan(grid), 10.0, grid)), 5.0)
    eps = 0.3
    price, prop, explored = explore(dec, grid, eps, np.random.default_rng(5))
    allowed = grid[0][~np.isnan(grid[0])]
    assert len(allowed) == 8
    # Limits: every quoted price is allowed; propensities are in (0, 1] and sum to 1 over the prices.
    assert np.isin(price, allowed).all()
    assert ((prop > 0) & (prop <= 1)).all()
    by_price = {p: prop[price == p][0] for p in np.unique(price)}
    assert len(by_price) == 8
    assert sum(by_price.values()) == pytest.approx(1.0, abs=1e-12)
    greedy = dec.price[0]
    assert by_price[greedy] == pytest.approx(1 - eps + eps / 8)
    # Golden: empirical frequencies match the propensities (binomial sd <= 0.0025 here).
    for p, q in by_price.items():
        assert (price == p).mean() == pytest.approx(q, abs=0.012)
    assert explored.mean() == pytest.approx(eps, abs=0.012)


def test_no_exploration_keeps_greedy_with_propensity_one() -> None:
    grid = candidate_prices([10.0, 50.0], [5.0, 20.0], Guardrails())
    dec = choose_prices(grid, np.exp(-np.nan_to_num(grid) / 20), [5.0, 20.0])
    price, prop, explored = explore(dec, grid, 0.0, np.random.default_rng(0))
    assert np.array_equal(price, dec.price) and (prop == 1.0).all() and not explored.any()
    with pytest.raises(ValueError):
        explore(dec, grid, 1.5, np.random.default_rng(0))
    # Same seed, same quotes.
    a = explore(dec, grid, 0.5, np.random.default_rng(7))
    b = explore(dec, grid, 0.5, np.random.default_rng(7))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


# --- golden values ------------------------------------------------------------------------------


def test_golden_grid_and_choice() -> None:
    grid = candidate_prices(10.0, 5.0, Guardrails())
    assert grid[0].tolist() == pytest.approx(np.arange(7.0, 13.0001, 0.25).tolist())
    # Linear demand 2 - 0.15 p: profit (p - 5)(2 - 0.15 p) peaks at p = 9.1667 -> grid 9.25.
    dec = optimize(lambda p: 2 - 0.15 * p, 10.0, 5.0, Guardrails())
    assert dec.price[0] == 9.25 and dec.index[0] == 9
    assert dec.expected_value[0] == pytest.approx((9.25 - 5) * (2 - 0.15 * 9.25))
    assert isinstance(dec, PriceDecision) and len(dec) == 1


def analytic_optimum(a: float, b: float, c: float) -> float:
    """argmax_p (p - c) * sigmoid(a - b p), from 1 = b (p - c)(1 - sigmoid), by bisection."""
    lo, hi = c, c + 100.0 / b
    for _ in range(200):
        mid = (lo + hi) / 2
        s = 1 / (1 + np.exp(-(a - b * mid)))
        lo, hi = (mid, hi) if b * (mid - c) * (1 - s) < 1 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize(("a", "b", "c"), [(4.0, 0.5, 3.0), (8.0, 1.0, 2.0), (2.0, 0.3, 6.0)])
def test_fine_grid_approaches_analytic_optimum(a: float, b: float, c: float) -> None:
    p_star = analytic_optimum(a, b, c)
    lp = p_star / 1.05  # put the optimum inside the band, off-centre
    g = Guardrails(ladder="none", grid_size=4001)
    dec = optimize(lambda p: 1 / (1 + np.exp(-(a - b * p))), lp, c, g)
    step = (g.band_high - g.band_low) * lp / (g.grid_size - 1)
    assert abs(dec.price[0] - p_star) <= step
    assert not dec.at_floor[0] and not dec.at_ceiling[0]


def test_binding_guardrail_names_the_limit_each_price_sits_at() -> None:
    from pricing.policy import binding_guardrail

    g = Guardrails(exploration=0.0, min_margin=0.1)
    lp = np.full(6, 10.0)
    cost = np.array([1.0, 1.0, 7.5, 1.0, 1.0, 14.0])
    last = np.array([np.nan, np.nan, np.nan, 10.0, 10.0, np.nan])
    # price-blind (wants the top), price-averse (wants the bottom), the margin's floor above the
    # band's, the sticky window cutting the top, the same from below, cost above the ceiling
    a = np.array([0.0, -5.0, -5.0, 0.0, -5.0, 0.0])
    b = np.array([0.0, 20.0, 20.0, 0.0, 20.0, 1.0])

    def demand(p: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(a[:, None] - b[:, None] * np.log(p / lp[:, None]))))

    d = optimize(demand, lp, cost, g, last_price=last)
    got = binding_guardrail(d, d.price, lp, cost, g, last)
    assert got == [
        "band_high",
        "band_low",
        "min_margin",
        "max_session_change",
        "max_session_change",
        "relaxed",
    ]
    assert d.price[0] == 13.0 and d.price[1] == 7.0 and d.price[2] == 8.25
    assert d.price[3] == 11.0 and d.price[4] == 9.0
    # a price strictly inside every limit sits at none
    inside = np.array([10.0, 10.0, 10.0, 10.0, 10.0, d.price[5]])
    assert binding_guardrail(d, inside, lp, cost, g, last)[:5] == [None] * 5
