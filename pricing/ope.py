"""Off-policy evaluation: what a target pricing policy would earn, from logged offers with propensities.

The project's one home for it: IPS, SNIPS and DR of a deterministic target (offline evaluation and
the registry's gate, `ope_estimates`), and DR of an epsilon-greedy target (`dr_epsilon_greedy`: a
policy as the scorer serves it, with its exploration; the closed loop's estimate).

Deterministic target. Per logged offer: reward r (e.g. realized profit (price - cost) * purchased),
the logging propensity mu of the logged price, match = 1[target price == logged price] (the target
picks among the logging ladder's prices), and for doubly robust the reward model's prediction for
the target's price (q_target) and for the logged price (q_logged). The importance weight is
w = match / mu. The single estimators require valid propensities; `ope_estimates` drops rows with a
null propensity and reports how many it dropped.

Epsilon-greedy target: see `dr_epsilon_greedy` (with the SWITCH option: offers whose weight is too
large rely on the reward model, and a reward model rescaled to the logs' observed rewards).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def match_prices(target_price: Any, logged_price: Any, atol: float = 0.005) -> np.ndarray:
    """1[target price == logged price], to half a cent, since prices are floats."""
    t = np.asarray(target_price, dtype=float)
    lp = np.asarray(logged_price, dtype=float)
    return np.isclose(t, lp, rtol=0.0, atol=atol) & ~np.isnan(t)


def _check(r: Any, match: Any, mu: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r_arr = np.asarray(r, dtype=float).ravel()
    m_arr = np.asarray(match, dtype=float).ravel()
    mu_arr = np.asarray(mu, dtype=float).ravel()
    if not (r_arr.shape == m_arr.shape == mu_arr.shape):
        raise ValueError(
            f"r, match and mu must have the same length, got {r_arr.shape}, {m_arr.shape}, {mu_arr.shape}"
        )
    if np.isnan(mu_arr).any():
        raise ValueError(
            f"{int(np.isnan(mu_arr).sum())} rows have a null propensity; drop them first "
            "(ope_estimates does, and reports the count)"
        )
    if np.any((mu_arr <= 0) | (mu_arr > 1)):
        raise ValueError("propensities must be in (0, 1]")
    if not np.all((m_arr == 0) | (m_arr == 1)):
        raise ValueError("match must be 0/1")
    return r_arr, m_arr, mu_arr


def importance_weights(match: Any, mu: Any, max_weight: float | None = None) -> np.ndarray:
    """w = match / mu, optionally clipped at max_weight (less variance, some bias)."""
    w = np.asarray(match, dtype=float) / np.asarray(mu, dtype=float)
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    return w


def ips(r: Any, match: Any, mu: Any, max_weight: float | None = None) -> float:
    """Inverse propensity scoring: mean(w * r). Unbiased without clipping."""
    r_arr, m_arr, mu_arr = _check(r, match, mu)
    if r_arr.size == 0:
        return float("nan")
    return float(np.mean(importance_weights(m_arr, mu_arr, max_weight) * r_arr))


def snips(r: Any, match: Any, mu: Any, max_weight: float | None = None) -> float:
    """Self-normalized IPS: sum(w * r) / sum(w). Slightly biased, much less variance; nan if no match."""
    r_arr, m_arr, mu_arr = _check(r, match, mu)
    w = importance_weights(m_arr, mu_arr, max_weight)
    total = w.sum()
    return float(np.sum(w * r_arr) / total) if total > 0 else float("nan")


def doubly_robust(
    r: Any,
    match: Any,
    mu: Any,
    q_target: Any,
    q_logged: Any,
    max_weight: float | None = None,
) -> float:
    """Doubly robust: mean(q_target + w * (r - q_logged)). Unbiased if either mu or q is right."""
    r_arr, m_arr, mu_arr = _check(r, match, mu)
    qt = np.asarray(q_target, dtype=float).ravel()
    ql = np.asarray(q_logged, dtype=float).ravel()
    if qt.shape != r_arr.shape or ql.shape != r_arr.shape:
        raise ValueError("q_target and q_logged must have the same length as r")
    if r_arr.size == 0:
        return float("nan")
    w = importance_weights(m_arr, mu_arr, max_weight)
    return float(np.mean(qt + w * (r_arr - ql)))


def effective_sample_size(w: Any) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of the importance weights."""
    w_arr = np.asarray(w, dtype=float)
    sq = float(np.sum(w_arr**2))
    return float(np.sum(w_arr) ** 2 / sq) if sq > 0 else 0.0


def ope_estimates(
    r: Any,
    match: Any,
    mu: Any,
    q_target: Any | None = None,
    q_logged: Any | None = None,
    max_weight: float | None = None,
) -> dict[str, float]:
    """IPS, SNIPS and (when q_target and q_logged are given, else nan) DR, with diagnostics.

    Rows with a null propensity (e.g. Ta Feng, or offers logged before propensities existed) are
    skipped and counted in `n_skipped`.

    Returns:
        {"ips", "snips", "dr", "n" (rows used), "n_skipped", "matched_share", "ess"}.
    """
    mu_arr = np.asarray(mu, dtype=float).ravel()
    keep = ~np.isnan(mu_arr)
    r_arr = np.asarray(r, dtype=float).ravel()[keep]
    m_arr = np.asarray(match, dtype=float).ravel()[keep]
    mu_arr = mu_arr[keep]
    r_arr, m_arr, mu_arr = _check(r_arr, m_arr, mu_arr)
    n = int(r_arr.size)
    w = importance_weights(m_arr, mu_arr, max_weight)
    if q_target is not None and q_logged is not None:
        qt = np.asarray(q_target, dtype=float).ravel()[keep]
        ql = np.asarray(q_logged, dtype=float).ravel()[keep]
        dr = doubly_robust(r_arr, m_arr, mu_arr, qt, ql, max_weight)
    else:
        dr = float("nan")
    return {
        "ips": ips(r_arr, m_arr, mu_arr, max_weight),
        "snips": snips(r_arr, m_arr, mu_arr, max_weight),
        "dr": dr,
        "n": float(n),
        "n_skipped": float(int((~keep).sum())),
        "matched_share": float(m_arr.mean()) if n else float("nan"),
        "ess": effective_sample_size(w),
    }


# --- an epsilon-greedy target (the scorer's exploration; the closed loop) ------------------------------------


def clustered_se(values: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Standard error of `values`' mean when whole groups, not single rows, are the independent
    draws (cluster-robust: sum over groups of the squared summed deviations, with the G / (G - 1)
    small-sample factor). None: every row its own group."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return math.nan
    dev = x - x.mean()
    if groups is None:
        sums = dev
    else:
        codes = pd.factorize(np.asarray(groups))[0]
        if len(codes) != n:
            raise ValueError("groups must have one entry per value")
        sums = np.bincount(codes, weights=dev)
    g = len(sums)
    if g < 2:
        return math.nan
    return float(math.sqrt(g / (g - 1) * np.sum(sums * sums)) / n)


def epsilon_greedy_value(q_grid: Any, greedy_index: Any, epsilon: float) -> np.ndarray:
    """Per row, the expected reward of the epsilon-greedy policy under the reward table `q_grid`:
    (1 - epsilon) q(greedy) + epsilon mean(q over the allowed (non-NaN) grid prices), as
    `pricing.policy.explore` draws them."""
    q = np.asarray(q_grid, dtype=float)
    gi = np.asarray(greedy_index, dtype=np.int64)
    greedy = q[np.arange(len(q)), gi]
    return (1.0 - epsilon) * greedy + epsilon * np.nanmean(q, axis=1)


def dr_epsilon_greedy(
    reward: np.ndarray,
    logged_price: np.ndarray,
    propensity: np.ndarray,
    grid: np.ndarray,
    q_grid: np.ndarray,
    greedy_index: np.ndarray,
    epsilon: float,
    q_logged: np.ndarray | None = None,
    max_weight: float | None = None,
    calibrate: bool = False,
    atol: float = 0.005,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Doubly robust value of an epsilon-greedy pricing policy from logged offers.

    The target quotes its greedy grid price with probability 1 - epsilon and a uniform allowed grid
    price otherwise (the scorer's `pricing.policy.explore`), so for each logged offer
    pi(logged price) = (1 - epsilon) [logged = greedy] + epsilon / n_allowed [logged on the grid],
    and DR = mean(sum_a pi(a) q(a) + w (r - q(logged))), w = pi / mu.

    Two options for logs that overlap little with the target (a new policy against logs of an
    epsilon-greedy one with a small epsilon has weights up to n_allowed / epsilon, which no sample
    of a few thousand quotes can average):
    - `max_weight` (SWITCH-DR, Wang, Agarwal and Dudik 2017): a row whose weight exceeds it adds no
      correction; the reward model alone speaks for it. Rows where the two policies agree (weight
      about 1) still correct the reward model.
    - `calibrate`: scale the reward model by sum(r) / sum(q(logged)) over the logs, so its level
      matches the rewards actually observed on these contexts (a model fitted on other shoppers
      can be off in level by 10-20% while its price response is right).

    Args:
        reward: realized reward per logged offer ((price - cost) x purchased for profit).
        logged_price, propensity: the logged price and its logging propensity mu (in (0, 1]).
        grid: (n, G) the target's allowed prices per offer (NaN where not allowed).
        q_grid: (n, G) the reward model's expected reward at each grid price.
        greedy_index: (n,) the target's greedy column in `grid`.
        epsilon: the target's exploration share.
        q_logged: the reward model at the logged price (default: read from `q_grid`, 0 off the
            grid); needed for `calibrate` when logged prices can be off the target's grid.
        max_weight: the SWITCH threshold; None: every row corrects (unbiased, high variance).
        calibrate: rescale the reward model to the logs' observed rewards first.
        groups: the unit rows are drawn in (e.g. the shopper: one page's quotes share its
            shopper); the standard error treats groups, not rows, as independent. None: rows.

    Returns:
        {"dr", "se" (its standard error from the logs, clustered by `groups`: how far it may fall
        from the policy's value on other shoppers like these; it leaves out the reward model's
        own fitting error and any bias the model keeps where rows do not correct it),
        "se_outcomes" (the part from the logged outcomes alone, the correction term's: how far it
        may fall from the policy's value on these same contexts), "dm" (the reward model alone,
        after calibration), "ips" (no reward model), "calibration" (the scale applied),
        "corrected_share" (rows that corrected the model), "matched_share" (offers whose logged
        price the target could quote), "ess" (effective sample size of the weights used), "n"}.
    """
    r = np.asarray(reward, dtype=float)
    mu = np.asarray(propensity, dtype=float)
    lp = np.asarray(logged_price, dtype=float)
    grid = np.asarray(grid, dtype=float)
    q_grid = np.asarray(q_grid, dtype=float)
    n = len(r)
    if not (len(mu) == len(lp) == n == grid.shape[0] == q_grid.shape[0] == len(greedy_index)):
        raise ValueError("reward, prices, propensities, grid, q_grid and greedy_index must align")
    keys = (
        "dr",
        "se",
        "se_outcomes",
        "dm",
        "ips",
        "calibration",
        "corrected_share",
        "matched_share",
        "ess",
    )
    if n == 0:
        return {k: math.nan for k in keys} | {"n": 0.0}
    if np.any(~np.isfinite(mu) | (mu <= 0) | (mu > 1)):
        raise ValueError("propensities must be in (0, 1]")
    allowed = ~np.isnan(grid)
    n_allowed = allowed.sum(axis=1)
    rows = np.arange(n)
    gi = np.asarray(greedy_index, dtype=np.int64)
    on_grid = allowed & np.isclose(grid, lp[:, None], rtol=0.0, atol=atol)
    logged_col = np.where(on_grid.any(axis=1), np.argmax(on_grid, axis=1), -1)
    matched = logged_col >= 0
    is_greedy = matched & (logged_col == gi)
    pi_logged = np.where(matched, epsilon / np.maximum(n_allowed, 1), 0.0)
    pi_logged = pi_logged + (1.0 - epsilon) * is_greedy
    w = pi_logged / mu
    if q_logged is None:
        q_log = np.where(matched, q_grid[rows, np.maximum(logged_col, 0)], 0.0)
    else:
        q_log = np.asarray(q_logged, dtype=float)
    scale = 1.0
    if calibrate:
        total = float(np.sum(q_log))
        scale = float(np.sum(r)) / total if total > 0 else 1.0
    q_grid, q_log = q_grid * scale, q_log * scale
    use = np.ones(n, dtype=bool) if max_weight is None else w <= max_weight
    w_used = np.where(use, w, 0.0)
    dm = epsilon_greedy_value(np.where(allowed, q_grid, np.nan), gi, epsilon)
    sq = float(np.sum(w_used * w_used))
    correction = w_used * (r - q_log)
    terms = dm + correction
    return {
        "dr": float(np.mean(terms)),
        "se": clustered_se(terms, groups),
        "se_outcomes": clustered_se(correction, groups),
        "dm": float(np.mean(dm)),
        "ips": float(np.mean(w * r)),
        "calibration": scale,
        "corrected_share": float(np.mean(w_used > 0)),
        "matched_share": float(np.mean(pi_logged > 0)),
        "ess": float(np.sum(w_used) ** 2 / sq) if sq > 0 else 0.0,
        "n": float(n),
    }
