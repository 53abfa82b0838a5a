"""One evaluation for every model and baseline: prediction quality, policy value, OPE, fairness.

Every policy runs through the same optimizer and guardrails; where ground truth exists (the
simulator), policy value and regret are computed exactly from the true demand, not sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pricing import metrics as M
from pricing import ope
from pricing.policy import Guardrails, candidate_prices, choose_prices

TruthFn = Callable[[np.ndarray], np.ndarray]  # prices (n,) or (n, G) -> true purchase probability


@dataclass
class EvalInputs:
    """The test offers, as arrays aligned row by row."""

    list_price: np.ndarray
    unit_cost: np.ndarray
    offered_price: np.ndarray
    purchased: np.ndarray
    propensity: np.ndarray  # NaN where unknown
    groups: np.ndarray | None = None  # protected group per offer (fairness report only)
    truth: TruthFn | None = None

    def __len__(self) -> int:
        return len(self.list_price)


def pricing_grid(inputs: EvalInputs, guardrails: Guardrails) -> np.ndarray:
    """The guardrailed price grid every policy chooses from (n, G)."""
    grid = candidate_prices(inputs.list_price, inputs.unit_cost, guardrails)
    assert isinstance(grid, np.ndarray)
    return grid


def logged_action_grid(inputs: EvalInputs) -> np.ndarray:
    """Prices the logging policy could have shown each offer: the distinct logged price/list ratios.

    Off-policy estimates are only valid for a target policy that stays on the logging policy's
    support, so OPE evaluates the model's greedy choice among these.
    """
    ratios = np.unique(np.round(inputs.offered_price / inputs.list_price, 2))
    return np.round(inputs.list_price[:, None] * ratios[None, :], 2)


def _profit(price: np.ndarray, cost: np.ndarray, prob: np.ndarray, objective: str) -> np.ndarray:
    return (price - (cost if objective == "profit" else 0.0)) * prob


def evaluate_policy(
    inputs: EvalInputs,
    guardrails: Guardrails,
    grid_probs: np.ndarray | None,
    offer_probs: np.ndarray | None,
    logged_grid_probs: np.ndarray | None = None,
    calibration_bins: int = 15,
) -> dict[str, float]:
    """Metrics of one model's policy on the test offers.

    Args:
        grid_probs: the model's purchase probability on `pricing_grid(inputs, guardrails)`; None
            means the list-price policy (no model).
        offer_probs: the model's probability at each offered price (prediction metrics).
        logged_grid_probs: the model on `logged_action_grid(inputs)` (for OPE); optional.
    """
    out: dict[str, float] = {}
    y = inputs.purchased.astype(float)
    if offer_probs is not None:
        out["log_loss"] = M.log_loss(y, offer_probs)
        out["auc"] = M.roc_auc(y, offer_probs)
        out["ece"] = M.expected_calibration_error(y, offer_probs, n_bins=calibration_bins)
        out["mean_pred"] = float(np.mean(offer_probs))
    out["purchase_rate"] = float(np.mean(y))
    grid = pricing_grid(inputs, guardrails)
    if grid_probs is None:
        price = inputs.list_price.copy()
        at_bound = np.zeros(len(price), bool)
    else:
        decision = choose_prices(grid, grid_probs, inputs.unit_cost, guardrails.objective)
        price = decision.price
        at_bound = decision.at_floor | decision.at_ceiling
    out["mean_price_ratio"] = float(np.mean(price / inputs.list_price))
    out["guardrail_hit_share"] = float(np.mean(at_bound))
    if inputs.groups is not None:
        disp = M.price_dispersion(price / inputs.list_price, inputs.groups)
        out["price_gap_protected"] = float(disp["max_gap"])

    if inputs.truth is not None:
        true_grid = inputs.truth(grid)
        oracle = choose_prices(grid, true_grid, inputs.unit_cost, guardrails.objective)
        rep = M.policy_report(
            price, oracle.price, inputs.list_price, inputs.unit_cost, inputs.truth
        )
        out.update({k: float(v) for k, v in rep.items()})

    if logged_grid_probs is not None and grid_probs is not None:
        out.update(_ope(inputs, logged_grid_probs, guardrails.objective))
    return out


def _ope(inputs: EvalInputs, logged_grid_probs: np.ndarray, objective: str) -> dict[str, float]:
    """IPS / SNIPS / DR of the model's greedy policy over the logging ladder."""
    lgrid = logged_action_grid(inputs)
    target = choose_prices(lgrid, logged_grid_probs, inputs.unit_cost, objective)
    cost = inputs.unit_cost
    reward = _profit(inputs.offered_price, cost, inputs.purchased.astype(float), objective)
    match = np.isclose(target.price, np.round(inputs.offered_price, 2), atol=0.005)
    q_target = _profit(target.price, cost, target.probability, objective)
    # the model's prediction at the logged price, read off the same ladder grid
    col = np.abs(lgrid - inputs.offered_price[:, None]).argmin(1)
    p_logged = logged_grid_probs[np.arange(len(col)), col]
    q_logged = _profit(inputs.offered_price, cost, p_logged, objective)
    est = ope.ope_estimates(reward, match, inputs.propensity, q_target, q_logged)
    out = {f"ope_{k}": float(v) for k, v in est.items()}
    if inputs.truth is not None:
        true_value = float(
            np.mean(_profit(target.price, cost, inputs.truth(target.price), objective))
        )
        out["ope_true_value"] = true_value
        for k in ("ips", "snips", "dr"):
            if f"ope_{k}" in out and np.isfinite(out[f"ope_{k}"]) and true_value:
                out[f"ope_{k}_rel_error"] = abs(out[f"ope_{k}"] - true_value) / abs(true_value)
    return out


def metrics_table(metrics: dict[str, dict[str, float]], keys: list[str]) -> pd.DataFrame:
    """Models as rows, chosen metrics as columns: what README and notes show."""
    return pd.DataFrame(
        {
            m: {k: v.get(k, np.nan) for k, v in [(k, vals) for k in keys]}
            for m, vals in metrics.items()
        }
    ).T
