"""Evaluation metrics: prediction quality, ground-truth policy value and regret, fairness.

All functions take arrays and return numbers (or a small DataFrame/dict), so the evaluation task, the
promotion gate and the tests share one implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pricing.policy import PriceDecision


def _pair(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y and p must have the same length, got {y_arr.shape} and {p_arr.shape}")
    return y_arr, p_arr


# --- prediction ---------------------------------------------------------------------------------


def log_loss(y: Any, p: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; p is clipped to [eps, 1 - eps] so one confident miss stays finite."""
    y_arr, p_arr = _pair(y, p)
    if y_arr.size == 0:
        return float("nan")
    q = np.clip(p_arr, eps, 1.0 - eps)
    return float(-np.mean(y_arr * np.log(q) + (1.0 - y_arr) * np.log1p(-q)))


def roc_auc(y: Any, p: Any) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic with tied scores averaged; nan with one class."""
    y_arr, p_arr = _pair(y, p)
    pos = y_arr > 0.5
    n_pos = int(pos.sum())
    n_neg = y_arr.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(p_arr).rank(method="average").to_numpy()
    # Subtract before dividing, in float64 sums of exact half-integers, to keep ~1e-15 precision.
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # Equal-width bins on [0, 1]; p == 1 goes in the last bin.
    return np.clip(np.floor(np.clip(p, 0.0, 1.0) * n_bins).astype(np.int64), 0, n_bins - 1)


def calibration_curve(y: Any, p: Any, n_bins: int = 15) -> pd.DataFrame:
    """Per non-empty equal-width bin: mean prediction, observed positive rate and count."""
    y_arr, p_arr = _pair(y, p)
    df = pd.DataFrame({"bin": _bin_index(p_arr, n_bins), "p": p_arr, "y": y_arr})
    out = (
        df.groupby("bin", sort=True)
        .agg(mean_pred=("p", "mean"), frac_pos=("y", "mean"), count=("y", "size"))
        .reset_index()
    )
    return out[["bin", "mean_pred", "frac_pos", "count"]]


def expected_calibration_error(y: Any, p: Any, n_bins: int = 15) -> float:
    """Count-weighted mean of |observed rate - mean prediction| over equal-width bins."""
    y_arr, p_arr = _pair(y, p)
    if y_arr.size == 0:
        return float("nan")
    curve = calibration_curve(y_arr, p_arr, n_bins)
    w = curve["count"].to_numpy(dtype=float) / y_arr.size
    gap = np.abs(curve["frac_pos"].to_numpy() - curve["mean_pred"].to_numpy())
    return float(np.sum(w * gap))


# --- policy value on the simulator (exact, from the true demand) --------------------------------


def policy_value(
    prices: Any,
    unit_cost: Any,
    true_probs: Any,
    objective: str = "profit",
    *,
    mean: bool = True,
) -> float | np.ndarray:
    """Expected profit (price - cost) * P or revenue price * P, averaged per pair (or per pair if mean=False)."""
    price = np.asarray(prices, dtype=float)
    prob = np.asarray(true_probs, dtype=float)
    cost = np.broadcast_to(np.asarray(unit_cost, dtype=float), price.shape)
    if prob.shape != price.shape:
        raise ValueError(
            f"prices and true_probs must have the same shape, got {price.shape}, {prob.shape}"
        )
    if objective == "profit":
        value = (price - cost) * prob
    elif objective == "revenue":
        value = price * prob
    else:
        raise ValueError(f"objective must be 'profit' or 'revenue', got {objective!r}")
    if not mean:
        return value
    return float(np.mean(value)) if value.size else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def policy_report(
    policy_prices: Any,
    oracle_prices: Any,
    list_prices: Any,
    unit_cost: Any,
    true_prob_fn: Callable[[np.ndarray], np.ndarray],
    grid_oracle_prices: Any | None = None,
) -> dict[str, float]:
    """Ground-truth value of a policy against the oracle (same guardrails) and against list price.

    `true_prob_fn(prices (n,)) -> probs (n,)` is the simulator's true demand for the evaluated pairs.
    Values are expected per pair; ratios are nan when their denominator is not positive.

    Args:
        oracle_prices: the exact best prices inside the guardrails (the continuous optimum).
        grid_oracle_prices: the best allowed grid prices, when the policy chooses from a grid.

    Returns:
        expected_profit, expected_revenue, oracle_profit, oracle_revenue, list_profit, list_revenue,
        profit_regret (1 - policy/oracle profit: the share of the oracle's profit lost),
        uplift_vs_list (policy/list profit - 1), n; with `grid_oracle_prices` also
        grid_oracle_profit, grid_oracle_revenue and grid_regret (1 - policy/grid oracle profit).
    """
    out: dict[str, float] = {}
    named = [("", policy_prices), ("oracle_", oracle_prices), ("list_", list_prices)]
    if grid_oracle_prices is not None:
        named.append(("grid_oracle_", grid_oracle_prices))
    for name, prices in named:
        price = np.asarray(prices, dtype=float)
        prob = np.asarray(true_prob_fn(price), dtype=float)
        profit = policy_value(price, unit_cost, prob, "profit")
        revenue = policy_value(price, unit_cost, prob, "revenue")
        out[f"{name or 'expected_'}profit"] = float(profit)
        out[f"{name or 'expected_'}revenue"] = float(revenue)
    out["profit_regret"] = 1.0 - _ratio(out["expected_profit"], out["oracle_profit"])
    if grid_oracle_prices is not None:
        out["grid_regret"] = 1.0 - _ratio(out["expected_profit"], out["grid_oracle_profit"])
    out["uplift_vs_list"] = _ratio(out["expected_profit"], out["list_profit"]) - 1.0
    out["n"] = float(np.asarray(policy_prices).size)
    return out


# --- fairness -----------------------------------------------------------------------------------


def price_dispersion(price_ratio: Any, groups: Any) -> dict[str, Any]:
    """Mean price/list ratio per protected group and the largest gap between group means.

    Rows with a missing group are left out of the group means and counted in `n_missing_group`.

    Returns:
        {"by_group": {group: mean ratio}, "max_gap": max - min of the group means (0 with one group,
        nan with none), "n_missing_group": int}
    """
    ratio = pd.Series(np.asarray(price_ratio, dtype=float))
    grp = pd.Series(pd.array(np.asarray(groups, dtype=object)))
    if len(ratio) != len(grp):
        raise ValueError(
            f"price_ratio and groups must have the same length, got {len(ratio)}, {len(grp)}"
        )
    missing = grp.isna()
    means = ratio[~missing].groupby(grp[~missing].astype(str)).mean()
    max_gap = float(means.max() - means.min()) if len(means) else float("nan")
    return {
        "by_group": {str(k): float(v) for k, v in means.items()},
        "max_gap": max_gap,
        "n_missing_group": int(missing.sum()),
    }


def guardrail_hits(decision: PriceDecision) -> dict[str, float]:
    """Share of quotes at the lowest / highest allowed price, relaxed by a fallback, or any of these."""
    n = len(decision)
    if n == 0:
        return {
            "at_floor": float("nan"),
            "at_ceiling": float("nan"),
            "fallback": float("nan"),
            "any": float("nan"),
        }
    floor = np.asarray(decision.at_floor, dtype=bool)
    ceil = np.asarray(decision.at_ceiling, dtype=bool)
    fb = np.asarray(decision.fallback, dtype=bool)
    return {
        "at_floor": float(floor.mean()),
        "at_ceiling": float(ceil.mean()),
        "fallback": float(fb.mean()),
        "any": float((floor | ceil | fb).mean()),
    }


def guardrail_hit_share(decision: PriceDecision) -> float:
    """Share of quotes whose price sits on a guardrail (lowest or highest allowed price, or a fallback)."""
    return guardrail_hits(decision)["any"]
