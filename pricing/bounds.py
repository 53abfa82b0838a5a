"""How low can profit regret go on a simulated market? Bayes-optimal pricing that knows the truth
except each user's own price sensitivity.

A model's regret on the simulator has two parts: what it fails to learn, and what nobody could know
from the data. This module measures the second part. `SensitivityOracle` is handed the simulator's
demand function with everything in it (the intercept, every user's and item's alpha, the category
and need-word multipliers of beta) except `user_beta[u]`. It infers that one number per user the
Bayesian way, with the simulator's own prior, and prices to maximize posterior expected profit
through the same optimizer and guardrails as every model. No real model knows more than it does, so
its regret is (in expectation) a floor under any model's on that market.

Levels of knowledge about `log user_beta[u]` (`LEVELS`):

- ``offers``: the population prior (the three-segment log-normal mixture) updated with the user's
  own offers strictly before the one being priced (prices and purchases, exact likelihood).
- ``traits``: also the user's segment and the latent traits that sensitivity drives, each with the
  simulator's exact noise: `user_alpha` (slope on the standardized sensitivity, sd `_USER_ALPHA_SD`)
  and the budget/premium brand-tier affinities (slope, sd `_TIER_NOISE`). This is more than any
  model can see (it sees those traits only through noisy behaviour), so it is the floor.

The posterior lives on a grid of log beta; `predict_grid` returns the posterior mean purchase
probability, whose expected-profit maximizer is the Bayes decision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing import simulator as sim
from pricing.logistic import sigmoid

LEVELS = ("offers", "traits")


def _normal_logpdf(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


class SensitivityOracle:
    """Bayes-optimal demand for one simulated market, `user_beta` unknown (see the module doc).

    Args:
        truth: the market's ground truth.
        history: every offer the market logged (at least user, item, ts, price, purchased); an
            offer's posterior uses its user's offers strictly before it.
        level: ``offers`` or ``traits`` (`LEVELS`).
        grid_size: points of the log-beta grid.
    """

    def __init__(
        self,
        truth: sim.GroundTruth,
        history: pd.DataFrame,
        level: str = "traits",
        grid_size: int = 161,
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; choose from {LEVELS}")
        self.truth, self.level = truth, level
        med, sig = self._segments()
        lo, hi = float((med - 5 * sig).min()), float((med + 5 * sig).max())
        self.log_beta = np.linspace(lo, hi, grid_size)  # (K,)
        self._prior = self._log_prior()  # (U, K)
        self._hist = self._history_loglik(history)

    # -- prior ------------------------------------------------------------------------------------

    def _segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Each segment's median of log beta and its sd, as the market was designed."""
        t = self.truth
        return np.log(np.asarray(t.segment_sensitivity, float)), np.asarray(t.segment_spread, float)

    def _log_prior(self) -> np.ndarray:
        t, x = self.truth, self.log_beta[None, :]
        med, sig = self._segments()
        n_users = len(t.user_ids)
        if self.level == "offers":
            comp = np.stack(
                [
                    np.log(p) + _normal_logpdf(x, m, s)
                    for p, m, s in zip(sim._SEGMENT_PROBS, med, sig, strict=True)
                ]
            )  # (3, 1, K)
            return np.broadcast_to(np.logaddexp.reduce(comp, axis=0), (n_users, x.shape[1])).copy()
        seg = t.user_segment.astype(int)
        lp = _normal_logpdf(x, med[seg][:, None], sig[seg][:, None])
        # Traits that sensitivity drives, each a linear function of z = (log beta - M) / S + noise.
        z = t.sensitivity_z(np.exp(x))  # (1, K)
        lp = lp + _normal_logpdf(
            t.user_alpha[:, None], sim._ALPHA_SENSITIVITY_SLOPE * z, np.array(sim._USER_ALPHA_SD)
        )
        slope = np.array([sim._TIER_SLOPE, 0.0, -sim._TIER_SLOPE])
        aff = t.tier_alpha / sim._TIER_WEIGHT  # (U, T): the affinities themselves
        for k in np.flatnonzero(slope):
            lp = lp + _normal_logpdf(aff[:, k : k + 1], slope[k] * z, np.array(sim._TIER_NOISE))
        return lp

    # -- the user's own offers ----------------------------------------------------------------------

    def _pair_terms(
        self, offers: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per offer: user position, alpha, the beta multiplier m (beta = user_beta * m) and the
        item's list price."""
        t = self.truth
        u = t.user_index(offers[S.USER_ID].astype(str).to_numpy())
        i = t.item_index(offers[S.ITEM_ID].astype(str).to_numpy())
        alpha, beta = t.params_idx(u, i)
        return u, alpha, beta / t.user_beta[u], t.list_price[i]

    def _history_loglik(self, history: pd.DataFrame) -> dict[str, Any]:
        """Cumulative log-likelihood over the grid of each user's offers, in time order."""
        h = history.assign(_ts=pd.to_datetime(history[S.TS], utc=True)).sort_values(
            [S.USER_ID, "_ts"], kind="stable"
        )
        u, alpha, m, lp = self._pair_terms(h)
        lpr = np.log(h[S.PRICE].to_numpy(float) / lp)
        y = h[S.PURCHASED].to_numpy(float)
        beta = np.exp(self.log_beta)[None, :] * m[:, None]
        logit = alpha[:, None] - beta * lpr[:, None]
        ll = y[:, None] * _log_sigmoid(logit) + (1 - y[:, None]) * _log_sigmoid(-logit)
        cum = np.cumsum(ll, axis=0)
        # reset at each user's first row: subtract the cumulative sum just before the user's block
        first = np.r_[True, u[1:] != u[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(u)), 0))
        before = np.vstack([np.zeros((1, ll.shape[1])), cum])[start]
        return {
            "cum": cum - before,
            "frame": pd.DataFrame({"_ts": h["_ts"].to_numpy(), "_u": u, "_row": np.arange(len(u))}),
        }

    def posterior(self, offers: pd.DataFrame, u: np.ndarray | None = None) -> np.ndarray:
        """(n, K) posterior weights over the log-beta grid for each offer's user, given the prior
        and that user's offers strictly before the offer (`u`: the users' positions, if known)."""
        if u is None:
            u = self._pair_terms(offers)[0]
        q = pd.DataFrame(
            {
                "_ts": pd.to_datetime(offers[S.TS], utc=True).to_numpy(),
                "_u": u,
                "_q": np.arange(len(u)),
            }
        ).sort_values("_ts", kind="stable")
        frame = self._hist["frame"].sort_values("_ts", kind="stable")
        hit = pd.merge_asof(q, frame, on="_ts", by="_u", allow_exact_matches=False)
        logp = self._prior[u].copy()
        rows = hit["_row"].to_numpy()
        has = ~np.isnan(rows)
        qpos = hit["_q"].to_numpy()[has]
        logp[qpos] += self._hist["cum"][rows[has].astype(np.int64)]
        logp -= logp.max(axis=1, keepdims=True)
        w = np.exp(logp)
        return w / w.sum(axis=1, keepdims=True)

    # -- the DemandModel calls the evaluation makes ----------------------------------------------------

    def predict_grid(self, data: Any, grid: np.ndarray) -> np.ndarray:
        """Posterior mean P(purchase) of each offer of `data` at each price of `grid` (n, G)."""
        offers = data.offers
        grid = np.asarray(grid, dtype=float)
        u, alpha, m, lp = self._pair_terms(offers)
        w = self.posterior(offers, u)  # (n, K)
        lpr = np.log(grid / lp[:, None])  # (n, G)
        beta = np.exp(self.log_beta)  # (K,)
        out = np.empty_like(grid)
        for start in range(0, len(grid), 2048):  # (chunk, G, K) at a time
            sl = slice(start, start + 2048)
            logit = alpha[sl, None, None] - (m[sl, None, None] * beta) * lpr[sl, :, None]
            out[sl] = np.einsum("ngk,nk->ng", sigmoid(logit), w[sl])
        return out

    def predict(self, data: Any) -> np.ndarray:
        """Posterior mean P(purchase) at each offer's logged price."""
        price = data.offers[S.PRICE].to_numpy(float)
        return self.predict_grid(data, price[:, None])[:, 0]
