"""Simulated shoppers for the closed loop: who asks for a quote, and whether they buy at the price shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.ope import clustered_se
from pricing.policy import Guardrails, price_bounds
from pricing.simulator import GroundTruth, browse_session


@dataclass(frozen=True)
class ShopperRequest:
    user_id: str
    session_id: str
    item_ids: list[str]
    queries: tuple[str, ...] = ()  # what the shopper searched before asking (oldest first)


SHOPPERS = ("browse", "taste")


def shopper_requests(
    truth: GroundTruth,
    n_requests: int,
    candidates: int,
    rng: np.random.Generator,
    shoppers: str = "browse",
) -> list[ShopperRequest]:
    """Quote requests of random users, each over the `candidates` items of one session.

    `shoppers`:
        "browse": the session the market's shoppers make (`pricing.simulator.browse_session`): a
            search or two phrased by the user's price attitude and needs, then items picked by
            brand-tier affinity, prominence and what was searched. The loop's histories then grow
            the way the market's did, so what the model learned from the market still applies.
        "taste": items drawn by the user's category taste alone, no search (before 2026-12-06;
            kept to reproduce the results made with it). Brand choice then carries no signal and
            every round's histories dilute the browsing that reveals price sensitivity.
    """
    if shoppers not in SHOPPERS:
        raise ValueError(f"shoppers must be one of {SHOPPERS}, got {shoppers!r}")
    n_items = len(truth.item_ids)
    k = min(candidates, n_items)
    users = rng.integers(0, len(truth.user_ids), n_requests)
    out = []
    for r, u in enumerate(users):
        queries: tuple[str, ...] = ()
        if shoppers == "browse":
            session = browse_session(truth, int(u), k, rng)
            items, queries = session.items, session.queries
        else:  # taste-weighted item choice: weight of an item = user's taste for its category
            w = truth.user_taste[u, truth.item_category] + 1e-9
            items = rng.choice(n_items, size=k, replace=False, p=w / w.sum())
        out.append(
            ShopperRequest(
                str(truth.user_ids[u]),
                f"loop-{r:06d}",
                [str(truth.item_ids[i]) for i in items],
                queries,
            )
        )
    return out


def draw_outcomes(
    truth: GroundTruth,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    prices: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(purchased 0/1, true probability) for each shown (user, item, price)."""
    p = truth.purchase_probability(user_ids, item_ids, prices)
    return (rng.random(len(p)) < p).astype(int), p


def loop_summary(
    quotes: pd.DataFrame,
    truth: GroundTruth,
    unit_cost: pd.Series,
    guardrails: Guardrails | None = None,
) -> dict[str, float]:
    """Realized and exact expected profit of the prices served, against list price and the oracle.

    `realized_se`: the standard error of the realized mean around the expected one on these same
    shoppers (the outcomes' noise alone, from the true probabilities, with the shopper as the unit):
    how far the realized profit may fall from the expected by chance.

    The oracle is the exact best price inside the served guardrails' band and margin
    (`price_bounds`), the same interval offline evaluation's `profit_regret` uses.
    """
    g = guardrails or Guardrails()
    users = quotes[S.USER_ID].to_numpy(str)
    items = quotes[S.ITEM_ID].to_numpy(str)
    cost = unit_cost.reindex(items).to_numpy(float)
    price = quotes[S.PRICE].to_numpy(float)
    lp = truth.list_price[truth.item_index(items)]
    exp_profit = (price - cost) * truth.purchase_probability(users, items, price)
    list_profit = (lp - cost) * truth.purchase_probability(users, items, lp)
    low, high, _ = price_bounds(lp, cost, g)
    _, oracle_value = truth.oracle(users, items, low, high, unit_cost=cost)
    realized = (price - cost) * quotes[S.PURCHASED].to_numpy(float)
    return {
        "quoted_items": float(len(quotes)),
        "realized_profit_per_offer": float(realized.mean()),
        "realized_se": clustered_se(realized - exp_profit, users),
        "expected_profit_per_offer": float(exp_profit.mean()),
        "list_profit_per_offer": float(list_profit.mean()),
        "oracle_profit_per_offer": float(np.mean(oracle_value)),
        "live_uplift_vs_list": float(exp_profit.mean() / list_profit.mean() - 1.0),
        "live_regret_vs_continuous_oracle": float(1.0 - exp_profit.mean() / np.mean(oracle_value)),
        "explored_share": float((quotes[S.PROPENSITY] < 1).mean()),
    }
