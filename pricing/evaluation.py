"""One evaluation for every model and baseline: prediction quality, policy value, OPE, fairness.

Every policy's prices come from `pricing.policy.optimize`, the function the scorer quotes with, inside
the same guardrails. Where ground truth exists (the simulator), policy value and regret are computed
exactly from the true demand, not sampled:

- `profit_regret` (the promotion gate's policy metric): 1 - policy profit / the profit of the exact
  continuous optimum inside the same band and margin (`GroundTruth.oracle` over `price_bounds`);
- `grid_regret`: the same against the best allowed grid price, i.e. what a perfect demand model
  would reach on this grid and ladder. `profit_regret - grid_regret` is the cost of the grid itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pricing import metrics as M
from pricing import ope
from pricing import schema as S
from pricing.policy import Guardrails, PriceDecision, optimize, price_bounds

TruthFn = Callable[[np.ndarray], np.ndarray]  # prices (n,) or (n, G) -> true purchase probability
DemandFn = Callable[[np.ndarray], np.ndarray]  # prices (n, G) -> a model's purchase probability
# (low (n,), high (n,), objective) -> the exact best price in [low, high] per offer
OracleFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


@dataclass
class EvalInputs:
    """The test offers, as arrays aligned row by row."""

    list_price: np.ndarray
    unit_cost: np.ndarray
    offered_price: np.ndarray
    purchased: np.ndarray
    propensity: np.ndarray  # NaN where unknown
    # protected attribute -> each offer's group (fairness report only, never a model input)
    groups: dict[str, np.ndarray] | None = None
    truth: TruthFn | None = None
    oracle: OracleFn | None = None
    item_ids: np.ndarray | None = None  # the offers' items (the uniform-price reference)

    def __len__(self) -> int:
        return len(self.list_price)

    def subset(self, idx: np.ndarray) -> EvalInputs:
        """Rows `idx` (a slice of the test set); truth and oracle still answer for those rows."""
        idx = np.asarray(idx, dtype=np.int64)
        n = len(self)
        truth = oracle = None
        if self.truth is not None:
            full_truth = self.truth

            def truth(prices: np.ndarray) -> np.ndarray:
                full = np.full((n, *np.shape(prices)[1:]), np.nan)
                full[idx] = prices
                return full_truth(full)[idx]

        if self.oracle is not None:
            full_oracle, lp = self.oracle, self.list_price

            def oracle(low: np.ndarray, high: np.ndarray, objective: str) -> np.ndarray:
                lo_full, hi_full = lp.copy(), lp.copy()  # any valid band for rows not asked about
                lo_full[idx], hi_full[idx] = low, high
                return full_oracle(lo_full, hi_full, objective)[idx]

        return EvalInputs(
            list_price=self.list_price[idx],
            unit_cost=self.unit_cost[idx],
            offered_price=self.offered_price[idx],
            purchased=self.purchased[idx],
            propensity=self.propensity[idx],
            groups=None if self.groups is None else {k: v[idx] for k, v in self.groups.items()},
            truth=truth,
            oracle=oracle,
            item_ids=None if self.item_ids is None else self.item_ids[idx],
        )


def choose(inputs: EvalInputs, guardrails: Guardrails, demand_fn: DemandFn) -> PriceDecision:
    """The policy's decision on the test offers: exactly what the scorer would quote (no exploration,
    no session history)."""
    return optimize(demand_fn, inputs.list_price, inputs.unit_cost, guardrails)


def logged_action_grid(inputs: EvalInputs) -> np.ndarray:
    """Prices the logging policy could have shown each offer: the distinct logged price/list ratios.

    Off-policy estimates are only valid for a target policy that stays on the logging policy's
    support, so OPE evaluates the model's greedy choice among these.
    """
    ratios = np.unique(np.round(inputs.offered_price / inputs.list_price, 2))
    return np.round(inputs.list_price[:, None] * ratios[None, :], 2)


UNIFORM_GRID = 401  # prices per item band the best uniform price is searched over


def uniform_prices(
    item_ids: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    value_fn: Callable[[np.ndarray], np.ndarray],
    n_grid: int = UNIFORM_GRID,
) -> np.ndarray:
    """One price per item for all its offers: the price in the item's allowed band that maximizes
    the item's summed value (`value_fn`: prices (n, G) -> expected profit per offer).

    The band of an item is the intersection of its offers' bands (the same band when it depends only
    on list price and cost). The sum of unimodal curves need not be unimodal, so the search is a grid
    of `n_grid` prices over the band (steps of 0.15% of list price in a 0.7-1.3x band).
    """
    codes, uniq = pd.factorize(pd.Series(np.asarray(item_ids)).astype(str))
    k = len(uniq)
    lo = pd.Series(low).groupby(codes).max().reindex(range(k)).to_numpy(float)
    hi = pd.Series(high).groupby(codes).min().reindex(range(k)).to_numpy(float)
    hi = np.maximum(hi, lo)
    t = np.linspace(0.0, 1.0, n_grid)
    item_grid = lo[:, None] + (hi - lo)[:, None] * t[None, :]
    value = np.nan_to_num(np.asarray(value_fn(item_grid[codes]), dtype=float), nan=-np.inf)
    sums = pd.DataFrame(value).groupby(codes).sum().reindex(range(k)).to_numpy(float)
    best = item_grid[np.arange(k), np.argmax(sums, axis=1)]
    return best[codes]


COLD_USER_EVENTS = 3  # a user with fewer events than this before the offer is a cold user
SLICE_METRICS = ("log_loss", "auc", "ece", "profit_regret", "grid_regret", "expected_profit")


def _ns(ts: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds (an empty column has no datetime dtype to compare)."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    return pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]").astype("int64").to_numpy()


def cold_start_slices(
    offers: pd.DataFrame,
    events: pd.DataFrame,
    train_items: Collection[str] | None = None,
    min_events: int = COLD_USER_EVENTS,
) -> dict[str, np.ndarray]:
    """Row positions of the test offers in each cold-start slice.

    - `cold_items`: offers on items unseen in training: not in `train_items` (the training offers'
      items) and with no event before the first test offer; without `train_items`, events only.
    - `cold_users`: offers whose user had fewer than `min_events` events strictly before the offer.
    """
    ts = pd.to_datetime(offers[S.TS], utc=True)
    ev_ts = pd.to_datetime(events[S.TS], utc=True)
    item = offers[S.ITEM_ID].astype(str)
    seen = set(events.loc[(ev_ts < ts.min()).to_numpy(), S.ITEM_ID].dropna().astype(str))
    if train_items is not None:
        seen |= {str(i) for i in train_items}
    cold_items = np.flatnonzero(~item.isin(seen).to_numpy())

    ev = pd.DataFrame({"_ts": _ns(ev_ts), "_u": events[S.USER_ID].astype(str).to_numpy()})
    ev = ev.sort_values("_ts", kind="stable")
    ev["_n"] = ev.groupby("_u").cumcount() + 1  # events of this user up to and including this one
    q = pd.DataFrame(
        {
            "_ts": _ns(ts),
            "_u": offers[S.USER_ID].astype(str).to_numpy(),
            "_row": np.arange(len(offers)),
        }
    ).sort_values("_ts", kind="stable")
    n_before = np.zeros(len(offers), dtype=np.int64)
    if len(ev) and len(q):
        # strictly before the offer: the last event with ts < offer ts
        counts = pd.merge_asof(q, ev, on="_ts", by="_u", allow_exact_matches=False)
        n_before[counts["_row"].to_numpy()] = counts["_n"].fillna(0).to_numpy(dtype=np.int64)
    return {"cold_items": cold_items, "cold_users": np.flatnonzero(n_before < min_events)}


def _profit(price: np.ndarray, cost: np.ndarray, prob: np.ndarray, objective: str) -> np.ndarray:
    return (price - (cost if objective == "profit" else 0.0)) * prob


def evaluate_policy(
    inputs: EvalInputs,
    guardrails: Guardrails,
    demand_fn: DemandFn | None,
    offer_probs: np.ndarray | None,
    *,
    with_ope: bool = True,
    calibration_bins: int = 15,
    prices: np.ndarray | None = None,
) -> tuple[dict[str, float], PriceDecision | None]:
    """Metrics of one model's policy on the test offers, and its decision (None without a model).

    Args:
        demand_fn: the model's purchase probability on a price grid; None means a fixed policy:
            `prices` (a reference such as the best uniform price), else list price.
        offer_probs: the model's probability at each offered price (prediction metrics, and the
            doubly robust estimate's reward model at the logged price).
        with_ope: also estimate the policy's value off-policy from the logged propensities.
    """
    out: dict[str, float] = {}
    y = inputs.purchased.astype(float)
    if offer_probs is not None:
        out["log_loss"] = M.log_loss(y, offer_probs)
        out["auc"] = M.roc_auc(y, offer_probs)
        out["ece"] = M.expected_calibration_error(y, offer_probs, n_bins=calibration_bins)
        out["mean_pred"] = float(np.mean(offer_probs))
    out["purchase_rate"] = float(np.mean(y))
    decision = None
    if demand_fn is None:
        price = inputs.list_price.copy() if prices is None else np.asarray(prices, float)
        out["guardrail_hit_share"] = 0.0
    else:
        decision = choose(inputs, guardrails, demand_fn)
        price = decision.price
        out["guardrail_hit_share"] = M.guardrail_hit_share(decision)
    out["mean_price_ratio"] = float(np.mean(price / inputs.list_price))
    if inputs.groups:
        # price_gap/<attribute> per protected attribute; price_gap_protected is the widest of them
        # (what the promotion gate's fairness check compares with its cap)
        gaps = {
            attr: float(M.price_dispersion(price / inputs.list_price, grp)["max_gap"])
            for attr, grp in inputs.groups.items()
        }
        out.update({f"price_gap/{attr}": gap for attr, gap in gaps.items()})
        out["price_gap_protected"] = float(np.nanmax(list(gaps.values())))

    if inputs.truth is not None:
        out.update(_policy_value(inputs, guardrails, price))

    if with_ope and demand_fn is not None and offer_probs is not None:
        out.update(_ope(inputs, guardrails, demand_fn, offer_probs))
    return out, decision


def oracle_uniform_prices(inputs: EvalInputs, guardrails: Guardrails) -> np.ndarray:
    """The best single price per item inside the guardrails, knowing the true demand: what the
    best non-personalized policy could earn on these offers (a reference, like list price)."""
    if inputs.truth is None or inputs.item_ids is None:
        raise ValueError("the uniform oracle needs the true demand and the offers' items")
    truth = inputs.truth
    low, high, _ = price_bounds(inputs.list_price, inputs.unit_cost, guardrails)
    cost = np.zeros(len(inputs)) if guardrails.objective == "revenue" else inputs.unit_cost

    def value(grid: np.ndarray) -> np.ndarray:
        return (grid - cost[:, None]) * truth(grid)

    return uniform_prices(inputs.item_ids, low, high, value)


def personalization_gap(regret: float, uniform_regret: float) -> dict[str, float]:
    """A policy against the best uniform price, from the two profit regrets (same oracle).

    `gap_share`: the share of the personalization gap closed, (policy - uniform) / (oracle -
    uniform) profit; 1 is the personalized oracle, 0 the best uniform price, < 0 worse than it.
    `lift_vs_uniform`: policy / uniform profit - 1.
    """
    out = {"gap_share": float("nan"), "lift_vs_uniform": float("nan")}
    if np.isfinite(regret) and np.isfinite(uniform_regret):
        if uniform_regret > 0:
            out["gap_share"] = float((uniform_regret - regret) / uniform_regret)
        if uniform_regret < 1:
            out["lift_vs_uniform"] = float((1.0 - regret) / (1.0 - uniform_regret) - 1.0)
    return out


def _policy_value(
    inputs: EvalInputs, guardrails: Guardrails, price: np.ndarray
) -> dict[str, float]:
    """Exact value and regret of `price` against the continuous and the grid oracle."""
    assert inputs.truth is not None
    grid_oracle = choose(inputs, guardrails, inputs.truth).price
    if inputs.oracle is not None:
        low, high, _ = price_bounds(inputs.list_price, inputs.unit_cost, guardrails)
        oracle_price = inputs.oracle(low, high, guardrails.objective)
    else:  # no exact optimizer for this truth: the grid oracle is the best we know
        oracle_price = grid_oracle
    rep = M.policy_report(
        price,
        oracle_price,
        inputs.list_price,
        inputs.unit_cost,
        inputs.truth,
        grid_oracle_prices=grid_oracle,
    )
    return {k: float(v) for k, v in rep.items()}


def _ope(
    inputs: EvalInputs, guardrails: Guardrails, demand_fn: DemandFn, offer_probs: np.ndarray
) -> dict[str, float]:
    """IPS / SNIPS / DR of the model's greedy policy over the logging ladder."""
    objective = guardrails.objective
    target = optimize(
        demand_fn, inputs.list_price, inputs.unit_cost, guardrails, grid=logged_action_grid(inputs)
    )
    cost = inputs.unit_cost
    reward = _profit(inputs.offered_price, cost, inputs.purchased.astype(float), objective)
    match = ope.match_prices(target.price, inputs.offered_price)
    q_target = np.nan_to_num(_profit(target.price, cost, target.probability, objective))
    q_logged = _profit(inputs.offered_price, cost, np.asarray(offer_probs, dtype=float), objective)
    est = ope.ope_estimates(reward, match, inputs.propensity, q_target, q_logged)
    out = {f"ope_{k}": float(v) for k, v in est.items()}
    if inputs.truth is not None:
        has = ~np.isnan(target.price)
        value = np.zeros(len(inputs))
        value[has] = _profit(
            target.price[has], cost[has], inputs.truth(target.price)[has], objective
        )
        true_value = float(np.mean(value))
        out["ope_true_value"] = true_value
        for k in ("ips", "snips", "dr"):
            if f"ope_{k}" in out and np.isfinite(out[f"ope_{k}"]) and true_value:
                out[f"ope_{k}_rel_error"] = abs(out[f"ope_{k}"] - true_value) / abs(true_value)
    return out
