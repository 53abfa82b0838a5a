"""Off-policy evaluation of a deterministic target pricing policy from logged offers with propensities.

Per logged offer: reward r (e.g. realized profit (price - cost) * purchased), the logging propensity mu
of the logged price, match = 1[target price == logged price] (the target picks among the logging
ladder's prices), and for doubly robust the reward model's prediction for the target's price
(q_target) and for the logged price (q_logged). The importance weight is w = match / mu.

The single estimators require valid propensities; `ope_estimates` drops rows with a null propensity
and reports how many it dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
