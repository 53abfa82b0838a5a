"""Unit tests for pricing.metrics: limits first, then golden values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sklearn_metrics

from pricing.metrics import (
    calibration_curve,
    expected_calibration_error,
    guardrail_hit_share,
    guardrail_hits,
    log_loss,
    policy_report,
    policy_value,
    price_dispersion,
    roc_auc,
)
from pricing.policy import Guardrails, optimize


def brute_force_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


# --- prediction: limits -------------------------------------------------------------------------


def test_auc_limits() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    assert roc_auc(y, y * 0.9 + 0.05) == 1.0
    assert roc_auc(y, 1 - y) == 0.0
    assert roc_auc(y, np.full(6, 0.3)) == 0.5
    assert math.isnan(roc_auc(np.ones(4), np.linspace(0, 1, 4)))
    rng = np.random.default_rng(0)
    y_rand = rng.integers(0, 2, 20_000)
    assert roc_auc(y_rand, rng.random(20_000)) == pytest.approx(0.5, abs=0.02)


def test_auc_matches_pairwise_count_and_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    p = np.round(rng.random(3000) * 0.5 + 0.3 * y, 2)  # heavy ties
    assert roc_auc(y, p) == pytest.approx(brute_force_auc(y, p), abs=1e-12)
    assert roc_auc(y, p) == pytest.approx(sklearn_metrics.roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sklearn_metrics.log_loss(y, p), abs=1e-9)


def test_log_loss_limits_and_golden() -> None:
    y = np.array([1, 0, 1, 0])
    assert log_loss(y, y) == pytest.approx(-math.log(1 - 1e-7))  # clipped, finite, near 0
    assert math.isfinite(log_loss(y, 1 - y))
    assert log_loss(y, np.full(4, 0.5)) == pytest.approx(math.log(2))
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_ece_zero_for_calibrated_bins_and_golden() -> None:
    # Each bin's mean prediction equals its positive rate.
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.0, abs=1e-15)
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(0.0)
    # Golden: two bins off by 0.25 and 0.5 with weights 1/2 each.
    y2 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert expected_calibration_error(y2, p, n_bins=10) == pytest.approx(0.25)
    p3 = np.array([0.1, 0.1, 0.9, 1.0])
    assert 0.0 <= expected_calibration_error([1, 1, 0, 0], p3) <= 1.0


def test_calibration_curve_columns_and_counts() -> None:
    p = np.array([0.0, 0.05, 0.5, 0.55, 1.0])
    y = np.array([0, 0, 1, 0, 1])
    curve = calibration_curve(y, p, n_bins=10)
    assert list(curve.columns) == ["bin", "mean_pred", "frac_pos", "count"]
    assert curve["count"].sum() == 5
    assert curve["bin"].tolist() == [0, 5, 9]  # p == 1.0 lands in the last bin
    assert curve["frac_pos"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert curve["mean_pred"].tolist() == pytest.approx([0.025, 0.525, 1.0])


# --- policy value -------------------------------------------------------------------------------


def _true_prob_fn(list_price: np.ndarray):
    def fn(prices: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(1.0 - 3.0 * np.log(prices / list_price))))

    return fn


def test_policy_report_limits() -> None:
    rng = np.random.default_rng(2)
    n = 500
    lp = rng.uniform(5, 50, n)
    cost = lp * rng.uniform(0.3, 0.8, n)
    truth = _true_prob_fn(lp)
    g = Guardrails(ladder="99")
    oracle = optimize(lambda grid: truth_grid(grid, lp), lp, cost, g).price
    noisy = optimize(lambda grid: truth_grid(grid, lp) * 0.6, lp, cost, g).price
    same = policy_report(oracle, oracle, lp, cost, truth)
    assert same["profit_regret"] == 0.0
    other = policy_report(noisy, oracle, lp, cost, truth)
    # The oracle is optimal inside the guardrails, so a different policy can only lose.
    assert 0.0 <= other["profit_regret"] < 1.0
    assert other["expected_revenue"] >= 0 and other["list_revenue"] >= 0
    assert policy_value(noisy, cost, truth(noisy), "revenue") >= 0
    assert same["uplift_vs_list"] == pytest.approx(same["oracle_profit"] / same["list_profit"] - 1)
    assert same["n"] == n


def truth_grid(grid: np.ndarray, lp: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(1.0 - 3.0 * np.log(grid / lp[:, None]))))


def test_policy_value_and_report_golden() -> None:
    prices = np.array([10.0, 20.0])
    cost = np.array([4.0, 10.0])
    probs = np.array([0.5, 0.25])
    assert policy_value(prices, cost, probs) == pytest.approx((3.0 + 2.5) / 2)
    assert policy_value(prices, cost, probs, "revenue") == pytest.approx((5.0 + 5.0) / 2)
    assert policy_value(prices, cost, probs, mean=False).tolist() == pytest.approx([3.0, 2.5])
    with pytest.raises(ValueError):
        policy_value(prices, cost, probs, "volume")

    def truth(p: np.ndarray) -> np.ndarray:
        return np.clip(1.5 - p / 10, 0, 1)  # p=5 -> 1, p=10 -> 0.5, p=8 -> 0.7

    rep = policy_report([8.0], [10.0], [5.0], [4.0], truth)
    assert rep["expected_profit"] == pytest.approx(2.8)
    assert rep["expected_revenue"] == pytest.approx(5.6)
    assert rep["oracle_profit"] == pytest.approx(3.0)
    assert rep["list_profit"] == pytest.approx(1.0)
    assert rep["profit_regret"] == pytest.approx(1 - 2.8 / 3.0)
    assert rep["uplift_vs_list"] == pytest.approx(1.8)


# --- fairness -----------------------------------------------------------------------------------


def test_price_dispersion() -> None:
    ratio = np.array([1.0, 1.2, 0.9, 0.8, 1.1, 1.0])
    groups = pd.Series(["a", "a", "b", "b", None, "c"])
    out = price_dispersion(ratio, groups)
    assert out["max_gap"] >= 0
    assert out["by_group"] == pytest.approx({"a": 1.1, "b": 0.85, "c": 1.0})
    assert out["max_gap"] == pytest.approx(0.25)
    assert out["n_missing_group"] == 1
    assert price_dispersion([1.0, 1.0], ["x", "x"])["max_gap"] == 0.0


def test_guardrail_hit_share() -> None:
    n = 4
    lp = np.full(n, 10.0)
    # Demand so steep the lowest price wins, then flat so the highest wins; a ceiling below the cost.
    dec = optimize(
        lambda p: np.where(np.arange(n)[:, None] < 2, np.exp(-5 * p), 1.0),
        lp,
        [1.0, 1.0, 1.0, 20.0],
        Guardrails(),
        ceiling=[np.nan, np.nan, np.nan, 12.0],
    )
    hits = guardrail_hits(dec)
    assert 0 <= hits["any"] <= 1
    assert hits == {"at_floor": 0.75, "at_ceiling": 0.5, "fallback": 0.25, "any": 1.0}
    assert guardrail_hit_share(dec) == 1.0
