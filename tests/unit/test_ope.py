"""Unit tests for pricing.ope: limits and unbiasedness on a synthetic log, then golden values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pricing.ope import (
    doubly_robust,
    effective_sample_size,
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
