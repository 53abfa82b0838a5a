"""Unit tests for pricing.ope: limits and unbiasedness on a synthetic log, then golden values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pricing.ope import (
    clustered_se,
    doubly_robust,
    dr_epsilon_greedy,
    effective_sample_size,
    epsilon_greedy_value,
    ips,
    match_prices,
    ope_estimates,
    snips,
)

N, K, REPS = 2000, 5, 200


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    """Fixed contexts with a known logging policy over a 5-price ladder and known demand."""
    rng = np.random.default_rng(0)
    lp = rng.uniform(5, 50, N)
    cost = lp * rng.uniform(0.3, 0.7, N)
    ladder = lp[:, None] * np.array([0.8, 0.9, 1.0, 1.1, 1.2])[None, :]
    a, b = rng.normal(0.0, 1.0, N), rng.uniform(1.0, 4.0, N)
    demand = 1 / (1 + np.exp(-(a[:, None] - b[:, None] * np.log(ladder / lp[:, None]))))
    q = (ladder - cost[:, None]) * demand  # true expected profit per price
    scores = rng.normal(0.0, 0.7, (N, K))
    mu = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)  # logging policy, known
    target = (np.arange(N) + rng.integers(0, 2, N)) % K  # a deterministic target policy
    true_value = float(q[np.arange(N), target].mean())
    return {
        "ladder": ladder,
        "demand": demand,
        "q": q,
        "mu": mu,
        "target": target,
        "cost": cost,
        "true_value": np.array(true_value),
    }


def replicate(
    world: dict[str, np.ndarray], rng: np.random.Generator, q_model: np.ndarray
) -> dict[str, float]:
    """One logged data set: draw logged prices from mu and outcomes from the demand, then estimate."""
    rows = np.arange(N)
    u = rng.random(N)
    logged = np.minimum((np.cumsum(world["mu"], axis=1) < u[:, None]).sum(axis=1), K - 1)
    bought = rng.random(N) < world["demand"][rows, logged]
    price = world["ladder"][rows, logged]
    r = (price - world["cost"]) * bought
    match = match_prices(world["ladder"][rows, world["target"]], price)
    return ope_estimates(
        r,
        match,
        world["mu"][rows, logged],
        q_target=q_model[rows, world["target"]],
        q_logged=q_model[rows, logged],
    )


@pytest.fixture(scope="module")
def replications(world: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    perfect = [replicate(world, rng, world["q"]) for _ in range(REPS)]
    biased = [replicate(world, rng, world["q"] * 0.5 + 1.0) for _ in range(REPS)]
    out = {
        k: np.array([e[k] for e in perfect]) for k in ("ips", "snips", "dr", "ess", "matched_share")
    }
    out["dr_biased"] = np.array([e["dr"] for e in biased])
    return out


# --- limits -------------------------------------------------------------------------------------


def test_estimates_are_unbiased_against_the_true_value(world, replications) -> None:
    v = float(world["true_value"])
    for key in ("ips", "dr", "dr_biased"):
        est = replications[key]
        se = est.std(ddof=1) / math.sqrt(REPS)
        assert abs(est.mean() - v) < 4 * se + 1e-9, key
    # SNIPS is slightly biased but close.
    assert replications["snips"].mean() == pytest.approx(v, rel=0.02)


def test_dr_with_perfect_reward_model_has_lower_variance_than_ips(replications) -> None:
    assert replications["dr"].var() < 0.8 * replications["ips"].var()
    assert replications["snips"].var() < replications["ips"].var()


def test_diagnostics_limits(replications) -> None:
    assert (replications["ess"] > 0).all() and (replications["ess"] <= N).all()
    assert ((replications["matched_share"] > 0) & (replications["matched_share"] < 1)).all()


def test_null_propensities_are_skipped_and_counted() -> None:
    r = np.array([1.0, 2.0, 3.0, 4.0])
    match = np.array([1, 1, 0, 1])
    mu = np.array([0.5, np.nan, 0.25, 0.5])
    est = ope_estimates(r, match, mu)
    assert est["n"] == 3 and est["n_skipped"] == 1
    assert est["ips"] == pytest.approx((1 / 0.5 + 4 / 0.5) / 3)
    assert math.isnan(est["dr"])
    with pytest.raises(ValueError, match="null propensity"):
        ips(r, match, mu)
    with pytest.raises(ValueError):
        ips(r, match, np.array([0.5, 0.0, 0.2, 0.5]))
    with pytest.raises(ValueError):
        snips(r, np.array([1, 2, 0, 1]), np.full(4, 0.5))


# --- golden values ------------------------------------------------------------------------------


def test_golden_values() -> None:
    r = np.array([3.0, 0.0, 5.0, 1.0])
    match = np.array([1, 0, 1, 0])
    mu = np.array([0.5, 0.2, 0.25, 1.0])
    # Weights 2, 0, 4, 0.
    assert ips(r, match, mu) == pytest.approx((6 + 20) / 4)
    assert snips(r, match, mu) == pytest.approx(26 / 6)
    assert ips(r, match, mu, max_weight=3.0) == pytest.approx((6 + 15) / 4)
    qt = np.array([2.0, 1.0, 4.0, 3.0])
    ql = np.array([2.0, 0.5, 4.0, 1.5])
    dr = doubly_robust(r, match, mu, qt, ql)
    assert dr == pytest.approx((2 + 2 * 1 + 1 + 4 + 4 * 1 + 3) / 4)
    assert effective_sample_size([2, 0, 4, 0]) == pytest.approx(36 / 20)
    assert effective_sample_size([0, 0]) == 0.0
    assert math.isnan(snips(r, np.zeros(4), mu))
    est = ope_estimates(r, match, mu, qt, ql)
    assert est == pytest.approx(
        {
            "ips": 6.5,
            "snips": 26 / 6,
            "dr": dr,
            "n": 4,
            "n_skipped": 0,
            "matched_share": 0.5,
            "ess": 1.8,
        }
    )
    assert match_prices([9.99, 10.0, np.nan], [9.99, 10.01, np.nan]).tolist() == [
        True,
        False,
        False,
    ]


# --- off-policy value of an epsilon-greedy policy -------------------------------------------------


def test_doubly_robust_value_is_right_with_a_wrong_reward_model() -> None:
    """Logged by one epsilon-greedy policy, evaluated for another: DR stays unbiased when the
    reward model is biased (the propensities are right), the reward model alone does not."""
    rng = np.random.default_rng(7)
    n, g = 200_000, 5
    grid = np.tile(np.array([8.0, 9.0, 10.0, 11.0, 12.0]), (n, 1))
    p_buy = np.tile(np.array([0.5, 0.42, 0.35, 0.28, 0.2]), (n, 1))
    true_q = (grid - 6.0) * p_buy
    eps_log, eps_target = 0.3, 0.1
    log_greedy = np.full(n, 2)
    target_greedy = np.full(n, 3)
    explore = rng.random(n) < eps_log
    col = np.where(explore, rng.integers(0, g, n), log_greedy)
    mu = (1 - eps_log) * (col == log_greedy) + eps_log / g
    price = grid[np.arange(n), col]
    reward = (price - 6.0) * (rng.random(n) < p_buy[np.arange(n), col])
    truth = float(np.mean((1 - eps_target) * true_q[:, 3] + eps_target * true_q.mean(axis=1)))
    biased = true_q * 1.3
    est = dr_epsilon_greedy(reward, price, mu, grid, biased, target_greedy, eps_target)
    assert est["dm"] == pytest.approx(truth * 1.3, rel=1e-9)
    assert est["dr"] == pytest.approx(truth, rel=0.03)
    assert est["ips"] == pytest.approx(truth, rel=0.05)
    # on-policy: every logged price has weight 1, and with the true q DR is the truth plus noise
    same = dr_epsilon_greedy(reward, price, mu, grid, true_q, log_greedy, eps_log)
    on_policy = float(np.mean((1 - eps_log) * true_q[:, 2] + eps_log * true_q.mean(axis=1)))
    assert same["dr"] == pytest.approx(on_policy, rel=0.01)
    assert same["matched_share"] == 1.0


def test_switch_and_calibration_tame_weights_and_a_reward_model_off_in_level() -> None:
    """SWITCH-DR: rows whose weight passes the threshold do not correct (the reward model speaks
    for them), rows where both policies agree still do; calibration rescales a reward model that is
    off in level to the rewards observed in the logs."""
    rng = np.random.default_rng(11)
    n, g = 100_000, 5
    grid = np.tile(np.array([8.0, 9.0, 10.0, 11.0, 12.0]), (n, 1))
    p_buy = np.tile(np.array([0.5, 0.42, 0.35, 0.28, 0.2]), (n, 1))
    true_q = (grid - 6.0) * p_buy
    eps = 0.02
    log_greedy = np.where(rng.random(n) < 0.5, 2, 3)  # the target (3) agrees on half the offers
    explore = rng.random(n) < eps
    col = np.where(explore, rng.integers(0, g, n), log_greedy)
    mu = (1 - eps) * (col == log_greedy) + eps / g
    price = grid[np.arange(n), col]
    reward = (price - 6.0) * (rng.random(n) < p_buy[np.arange(n), col])
    truth = float(np.mean((1 - eps) * true_q[:, 3] + eps * true_q.mean(axis=1)))
    target = np.full(n, 3)
    plain = dr_epsilon_greedy(reward, price, mu, grid, true_q * 1.3, target, eps)
    switched = dr_epsilon_greedy(
        reward, price, mu, grid, true_q * 1.3, target, eps, max_weight=20.0, calibrate=True
    )
    assert plain["calibration"] == 1.0 and plain["corrected_share"] == 1.0
    assert switched["calibration"] == pytest.approx(1 / 1.3, rel=0.02)
    assert switched["dm"] == pytest.approx(truth, rel=0.02)
    assert switched["dr"] == pytest.approx(truth, rel=0.02)
    assert 0.4 < switched["corrected_share"] < 1.0  # the agreeing half corrects, the rest does not


def test_clustered_standard_error_counts_groups_not_rows() -> None:
    """Rows alone: the usual standard error of a mean. Pages of 10 identical rows: the same
    information as one row a page, so the error is that of the page means, about sqrt(10) wider
    than the row count would say."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=5_000)
    assert clustered_se(x) == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=1e-12)
    pages = np.repeat(rng.normal(size=500), 10)
    page_of = np.repeat(np.arange(500), 10)
    by_row, by_page = clustered_se(pages), clustered_se(pages, page_of)
    assert by_page == pytest.approx(pages[::10].std(ddof=1) / np.sqrt(500), rel=1e-9)
    assert by_page / by_row == pytest.approx(np.sqrt(10), rel=0.05)
    assert np.isnan(clustered_se(np.ones(4), np.zeros(4)))  # one group: no error to speak of
    with pytest.raises(ValueError):
        clustered_se(x, page_of[:10])


def test_doubly_robust_standard_error_matches_the_spread_over_repeated_logs() -> None:
    """The DR's `se`, clustered by shopper (pages of 5 quotes, each page's shopper buying more or
    less than average), is the spread of the estimate over independent logs of the same policy."""
    n_pages, per, g = 400, 5, 5
    n = n_pages * per
    grid = np.tile(np.array([8.0, 9.0, 10.0, 11.0, 12.0]), (n, 1))
    base = np.array([0.5, 0.42, 0.35, 0.28, 0.2])
    eps_log, eps_target = 0.3, 0.1
    log_greedy, target = np.full(n, 2), np.full(n, 3)
    shopper = np.repeat(np.arange(n_pages), per)
    estimates, ses = [], []
    for rep in range(300):
        rng = np.random.default_rng(1_000 + rep)
        lift = np.repeat(rng.uniform(0.5, 1.5, n_pages), per)  # the shopper's own appetite
        p_buy = np.clip(base[None, :] * lift[:, None], 0, 1)
        explore = rng.random(n) < eps_log
        col = np.where(explore, rng.integers(0, g, n), log_greedy)
        mu = (1 - eps_log) * (col == log_greedy) + eps_log / g
        price = grid[np.arange(n), col]
        reward = (price - 6.0) * (rng.random(n) < p_buy[np.arange(n), col])
        q = (grid - 6.0) * base[None, :]  # the reward model knows the average shopper only
        est = dr_epsilon_greedy(
            reward, price, mu, grid, q, target, eps_target, groups=shopper
        )  # fmt: skip
        estimates.append(est["dr"])
        ses.append(est["se"])
    spread = float(np.std(estimates, ddof=1))
    assert float(np.mean(ses)) == pytest.approx(spread, rel=0.15)
    # The same shoppers every time, only their outcomes redrawn, and a reward model that knows
    # each shopper: `se_outcomes` is the spread around those shoppers' value.
    lift = np.repeat(np.random.default_rng(5).uniform(0.5, 1.5, n_pages), per)
    p_buy = np.clip(base[None, :] * lift[:, None], 0, 1)
    q = (grid - 6.0) * p_buy
    estimates, ses = [], []
    for rep in range(300):
        rng = np.random.default_rng(5_000 + rep)
        explore = rng.random(n) < eps_log
        col = np.where(explore, rng.integers(0, g, n), log_greedy)
        mu = (1 - eps_log) * (col == log_greedy) + eps_log / g
        price = grid[np.arange(n), col]
        reward = (price - 6.0) * (rng.random(n) < p_buy[np.arange(n), col])
        est = dr_epsilon_greedy(reward, price, mu, grid, q, target, eps_target, groups=shopper)
        estimates.append(est["dr"])
        ses.append(est["se_outcomes"])
    spread = float(np.std(estimates, ddof=1))
    assert float(np.mean(ses)) == pytest.approx(spread, rel=0.15)


def test_epsilon_greedy_value_mixes_the_greedy_price_and_the_allowed_ones() -> None:
    q = np.array([[1.0, 2.0, np.nan, 4.0], [3.0, 1.0, 1.0, 1.0]])  # NaN: a price not allowed
    greedy = np.array([3, 0])
    assert epsilon_greedy_value(q, greedy, 0.0).tolist() == [4.0, 3.0]  # greedy alone
    assert epsilon_greedy_value(q, greedy, 1.0) == pytest.approx([7 / 3, 1.5])  # uniform
    assert epsilon_greedy_value(q, greedy, 0.2) == pytest.approx([0.8 * 4 + 0.2 * 7 / 3, 2.7])
