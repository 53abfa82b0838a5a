"""Online experiments: sticky arm assignment, always-valid intervals per arm, and the decision rule.

Assignment (`assign_arm`): a user's arm is a pure function of (user id, experiment id, arms): the
SHA-256 of the two ids gives a number in [0, 1), and the arms own consecutive slices of [0, 1) in
the order given, each as wide as its share. The same user gets the same arm in every process and
on every replica (no Python `hash`, whose seed changes per process), different experiments hash
independently, and growing the share of the *last* arm only moves users into it.

Intervals that stay valid when looked at repeatedly. An experiment is read while it runs (every
look of the `experiment` flow, every batch of the loop), so a fixed-n 95% interval, recomputed at
each look, misses far more than 5% of the time over the run. Every interval here is instead a
*confidence sequence*: with probability >= 95% it covers the true value at every look at once, so
the decision may be taken at whatever look it becomes clear (and the experiment stopped there).

- `normal_mixture_cs`: the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy
  and Ramdas (2021, "Time-uniform central limit theory and asymptotic confidence sequences"): the
  running mean +- sd * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)), which
  is Robbins' normal-mixture boundary (Howard, Ramdas, McAuliffe and Sekhon 2021, "Time-uniform,
  nonparametric, nonasymptotic confidence sequences") with the variance estimated. Used for
  revenue and profit per quote and for the difference between arms (unbounded in principle, and
  with a scale nobody knows before the start). Valid as the sample grows; `min_n` quotes are
  needed before it says anything.
- `betting_cs`: the hedged betting confidence sequence of Waudby-Smith and Ramdas (2024,
  "Estimating means of bounded random variables by betting", the hedged capital process with the
  predictable plug-in bets), for outcomes in [0, 1]: exact at every sample size, no asymptotics.
  Used for conversion.

Arms are read from the offer log's `arm` column (with `experiment`), or, when it has none, from
`policy` (each served policy is an arm). When rows of two arms share a `pair_id` (a shadow arm
priced for the same request and item), the difference is estimated from the paired differences;
otherwise from the inverse-probability-weighted stream of both arms (each row's outcome divided by
its arm's share, the control's negated), whose mean is the difference of the arms' means.

The decision (`decide`) follows an `ExperimentRule` frozen before the start: promote the treatment
when, after the minimum sample, its interval for the rule's metric lies above the control's (the
difference's lower bound > 0) and the estimated gain is at least the smallest effect that matters;
stop it at any look when it is, with confidence, losing more than the guardrail; stop without
promotion at the maximum sample; keep running otherwise.

Off-policy estimates (what a policy would have earned on logs it did not serve) are
`pricing.ope`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S

# Offer-log columns of an experiment (besides the contract's `policy` and `propensity`).
EXPERIMENT = "experiment"
ARM = "arm"
PAIR_ID = "pair_id"  # rows of different arms priced for the same request and item
REQUEST = "request_id"  # rows quoted on one request (one page of one shopper)

METRICS: tuple[str, ...] = ("conversion", "revenue", "profit")  # per quote
PROMOTE, CONTINUE, STOP = "promote", "keep running", "stop"
ALPHA = 0.05
MIN_N = 100  # quotes before an asymptotic interval is reported (its guarantee is for large n)


# --- assignment ---------------------------------------------------------------------------------


def unit_hash(user_id: str, experiment_id: str) -> float:
    """A number in [0, 1) from SHA-256 of the experiment and user ids: the same everywhere, always."""
    digest = hashlib.sha256(f"{experiment_id}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_arms(arms: Sequence[tuple[str, float]]) -> tuple[list[str], np.ndarray]:
    if not arms:
        raise ValueError("an experiment needs at least one arm")
    names = [str(name) for name, _ in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    shares = np.array([float(share) for _, share in arms])
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f"arm shares must be finite, >= 0 and not all 0, got {shares.tolist()}")
    return names, np.cumsum(shares / shares.sum())


def assign_arm(user_id: str, experiment_id: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of `user_id` in `experiment_id`: sticky, and each arm gets its share of users.

    Args:
        user_id: the user (the unit of assignment: a user sees one arm for the whole experiment).
        experiment_id: the experiment; another id reshuffles users independently.
        arms: (name, share) in a fixed order; shares are normalized to sum to 1. An arm with share
            0 gets nobody. Ramp a challenger up by putting it last: a growing last slice only takes
            users from the others, so nobody already in it is moved out.
    """
    names, edges = _check_arms(arms)
    u = unit_hash(str(user_id), str(experiment_id))
    k = int(np.searchsorted(edges, u, side="right"))
    return names[min(k, len(names) - 1)]


def assign_arms(
    user_ids: Sequence[str], experiment_id: str, arms: Sequence[tuple[str, float]]
) -> np.ndarray:
    """`assign_arm` for many users (an object array of arm names, in the order of `user_ids`)."""
    names, edges = _check_arms(arms)
    u = np.array([unit_hash(str(x), str(experiment_id)) for x in user_ids])
    k = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return np.asarray(names, dtype=object)[k]


# --- confidence sequences -----------------------------------------------------------------------


def mixture_rho(t_opt: float, alpha: float = ALPHA) -> float:
    """The normal mixture's rho that makes the sequence tightest around `t_opt` observations."""
    a = -2.0 * math.log(alpha)
    return math.sqrt((a + math.log(a + 1.0)) / max(float(t_opt), 1.0))


@dataclass(frozen=True)
class Running:
    """A confidence sequence read at looks: estimate and bounds after each look's `n` observations."""

    n: np.ndarray
    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def last(self) -> tuple[float, float, float, int]:
        """(estimate, lo, hi, n) at the last look; nan estimate and infinite bounds when empty."""
        if len(self.n) == 0:
            return math.nan, -math.inf, math.inf, 0
        return float(self.estimate[-1]), float(self.lo[-1]), float(self.hi[-1]), int(self.n[-1])


def _looks(n: int, looks: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if looks is None:
        return np.array([n], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    arr = np.asarray(looks, dtype=np.int64)
    if arr.size and (arr.min() < 1 or arr.max() > n):
        raise ValueError(f"looks must be within 1..{n}")
    return arr


def normal_mixture_cs(
    x: Sequence[float] | np.ndarray,
    alpha: float = ALPHA,
    t_opt: float = 1000.0,
    looks: Sequence[int] | np.ndarray | None = None,
    min_n: int = MIN_N,
) -> Running:
    """The asymptotic normal-mixture confidence sequence for the mean of `x` (in arrival order).

    Waudby-Smith et al. (2021), Howard et al. (2021): at t observations, mean +- sd_t *
    sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)), with rho tuned to be
    tightest at `t_opt` (`mixture_rho`). It covers the true mean at all t simultaneously with
    probability -> 1 - alpha, so it can be read at any number of looks.

    Args:
        x: outcomes in the order they arrived.
        looks: the sample sizes at which to read it (default: once, at the end).
        min_n: before this many observations the bounds are infinite (the guarantee is asymptotic;
            with a handful of zeros the plug-in sd would be 0).
    """
    arr = np.asarray(x, dtype=float)
    at = _looks(len(arr), looks)
    if at.size == 0:
        return Running(at, np.zeros(0), np.zeros(0), np.zeros(0))
    s1 = np.cumsum(arr)[at - 1]
    s2 = np.cumsum(arr * arr)[at - 1]
    t = at.astype(float)
    mean = s1 / t
    var = np.maximum(s2 / t - mean * mean, 0.0)
    rho2 = mixture_rho(t_opt, alpha) ** 2
    radius = np.sqrt(var) * np.sqrt(
        2.0 * (t * rho2 + 1.0) / (t * t * rho2) * np.log(np.sqrt(t * rho2 + 1.0) / alpha)
    )
    early = at < max(int(min_n), 2)
    lo = np.where(early, -np.inf, mean - radius)
    hi = np.where(early, np.inf, mean + radius)
    return Running(at, mean, lo, hi)


def betting_cs(
    x: Sequence[float] | np.ndarray,
    alpha: float = ALPHA,
    looks: Sequence[int] | np.ndarray | None = None,
    grid_size: int = 1000,
    c: float = 0.5,
) -> Running:
    """The hedged betting confidence sequence for the mean of outcomes in [0, 1] (Waudby-Smith and
    Ramdas 2024): exact for every sample size.

    For each candidate mean m two gamblers bet on x > m and on x < m with the predictable plug-in
    stakes lambda_t = sqrt(2 log(2/alpha) / (sd_{t-1}^2 t log(1 + t))), capped at c/m and
    c/(1 - m); m stays in the sequence while the hedged capital max(K+, K-)/2 is below 1/alpha
    (Ville's inequality bounds the chance it ever gets there when m is the true mean by alpha).
    Computed on a grid of m and widened by one grid step, so it is conservative by at most that.

    Args:
        x: outcomes in [0, 1], in arrival order.
        looks: the sample sizes at which to read it (default: once, at the end).
        grid_size: candidate means in [0, 1].
        c: the stake cap (1/2 or 3/4 in the paper).
    """
    arr = np.asarray(x, dtype=float)
    if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
        raise ValueError("betting_cs needs outcomes in [0, 1]")
    at = _looks(len(arr), looks)
    if at.size == 0:
        return Running(at, np.zeros(0), np.zeros(0), np.zeros(0))
    n = int(at.max())
    arr = arr[:n]
    t = np.arange(1, n + 1, dtype=float)
    # Predictable estimates: the mean and variance through t - 1 (with the paper's priors 1/2, 1/4).
    mu_hat = (0.5 + np.cumsum(arr)) / (t + 1.0)
    var_hat = (0.25 + np.cumsum((arr - mu_hat) ** 2)) / (t + 1.0)
    var_prev = np.concatenate([[0.25], var_hat[:-1]])
    lam = np.sqrt(2.0 * math.log(2.0 / alpha) / (var_prev * t * np.log1p(t)))
    grid = (np.arange(grid_size) + 0.5) / grid_size
    step = 1.0 / grid_size
    threshold = math.log(1.0 / alpha)
    inside = np.zeros((len(at), grid_size), dtype=bool)
    chunk = max(1, 2_000_000 // max(n, 1))
    for g0 in range(0, grid_size, chunk):
        m = grid[g0 : g0 + chunk][None, :]
        lam_up = np.minimum(lam[:, None], c / m)
        lam_dn = np.minimum(lam[:, None], c / (1.0 - m))
        dev = arr[:, None] - m
        log_up = np.cumsum(np.log1p(lam_up * dev), axis=0)[at - 1]
        log_dn = np.cumsum(np.log1p(-lam_dn * dev), axis=0)[at - 1]
        hedged = np.logaddexp(log_up, log_dn) - math.log(2.0)
        inside[:, g0 : g0 + chunk] = hedged < threshold
    lo = np.empty(len(at))
    hi = np.empty(len(at))
    for k in range(len(at)):
        kept = grid[inside[k]]
        if kept.size == 0:  # the whole grid rejected: cannot happen with probability > alpha
            m_k = float(np.mean(arr[: at[k]]))
            lo[k], hi[k] = m_k, m_k
        else:
            lo[k] = max(0.0, float(kept.min()) - step)
            hi[k] = min(1.0, float(kept.max()) + step)
    estimate = np.cumsum(arr)[at - 1] / at
    return Running(at, estimate, lo, hi)


# --- per-arm report -----------------------------------------------------------------------------


def arm_column(offers: pd.DataFrame) -> str:
    """`arm` when the log names arms, else `policy` (each served policy is an arm)."""
    if ARM in offers and offers[ARM].notna().any():
        return ARM
    return S.POLICY


def outcomes(offers: pd.DataFrame, unit_cost: pd.Series, metric: str) -> np.ndarray:
    """Per-quote outcome of `metric`: purchased (conversion), price x purchased (revenue), or
    (price - unit cost) x purchased (profit)."""
    bought = offers[S.PURCHASED].to_numpy(float)
    if metric == "conversion":
        return bought
    price = offers[S.PRICE].to_numpy(float)
    if metric == "revenue":
        return price * bought
    if metric == "profit":
        items = offers[S.ITEM_ID].astype(str)
        cost = unit_cost.reindex(items).to_numpy(float)
        if np.isnan(cost).any():
            missing = items[np.isnan(cost)].unique()[:5].tolist()
            raise ValueError(f"no unit cost for items {missing}: profit needs every item's cost")
        return (price - cost) * bought
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


def _in_time_order(offers: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in (S.TS, S.OFFER_ID) if c in offers]
    return offers.sort_values(keys, kind="stable").reset_index(drop=True) if keys else offers


def by_request(rows: pd.DataFrame, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each request's mean of every column, requests in first-arrival order, when every row names
    its request (`request_id`); otherwise the columns as they are (a row is a unit). The quotes of
    one page share its shopper, and arms are drawn per shopper, so a page is one draw, not ten."""
    if REQUEST not in rows or not len(rows) or rows[REQUEST].isna().any():
        return columns
    frame = pd.DataFrame({f"c{k}": np.asarray(c, dtype=float) for k, c in enumerate(columns)})
    means = frame.groupby(rows[REQUEST].astype(str).to_numpy(), sort=False).mean()
    return tuple(means[f"c{k}"].to_numpy() for k in range(len(columns)))


def metric_interval(
    values: np.ndarray, metric: str, alpha: float = ALPHA, t_opt: float = 1000.0
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of a metric's confidence sequence at the last look: betting for
    conversion (0/1 outcomes), the normal mixture for revenue and profit."""
    if metric == "conversion":
        est, lo, hi, _ = betting_cs(values, alpha).last()
    else:
        est, lo, hi, _ = normal_mixture_cs(values, alpha, t_opt).last()
    return est, lo, hi


def arm_table(
    offers: pd.DataFrame,
    unit_cost: pd.Series,
    alpha: float = ALPHA,
    t_opt: float = 1000.0,
) -> pd.DataFrame:
    """One row per arm: quotes, and conversion, revenue and profit per quote with their always-valid
    intervals (`<metric>`, `<metric>_lo`, `<metric>_hi`).

    When the rows name their request (`request_id`), a request is one unit (`by_request`): the
    metric is the mean over requests of each one's mean per quote (the mean per quote when pages
    are of equal size), its interval counts requests (`requests`), as the arms' difference does."""
    col = arm_column(offers)
    rows: list[dict[str, Any]] = []
    ordered = _in_time_order(offers)
    for arm, part in ordered.groupby(col, sort=True):
        row: dict[str, Any] = {"arm": str(arm), "quotes": int(len(part))}
        if S.POLICY in part:
            row["policies"] = ",".join(sorted(part[S.POLICY].astype(str).unique()))
        values = by_request(part, *(outcomes(part, unit_cost, m) for m in METRICS))
        row["requests"] = int(len(values[0]))
        for metric, v in zip(METRICS, values, strict=True):
            est, lo, hi = metric_interval(v, metric, alpha, t_opt)
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = est, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


# --- the difference between two arms ------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """Treatment minus control on one metric, with its confidence sequence at the last look.

    `n` is the sample the rule counts (quotes of the smaller arm); `control_mean` is what relative
    effects are relative to.
    """

    metric: str
    estimate: float
    lo: float
    hi: float
    n: int
    control_mean: float
    treatment_mean: float
    paired: bool

    def relative(self, x: float) -> float:
        return x / abs(self.control_mean) if self.control_mean else math.nan


def difference(
    offers: pd.DataFrame,
    unit_cost: pd.Series,
    control: str,
    treatment: str,
    metric: str = "profit",
    alpha: float = ALPHA,
    t_opt: float = 1000.0,
    shares: dict[str, float] | None = None,
) -> Difference:
    """The confidence sequence of treatment minus control on `metric`, from the two arms' rows.

    Paired when the rows share `pair_id`s (a shadow arm priced for the same request and item): the
    paired differences, in the order the pairs arrived. Otherwise the inverse-probability-weighted
    stream of both arms in arrival order: y / share for a treatment unit, -y / share for a control
    unit, whose mean is the difference of the arms' means when each unit's arm is drawn with those
    shares (`shares`, default: each arm's share of the two arms' units). A unit is a request when
    the rows name theirs (`request_id`), with its mean per quote as y: the quotes of one page share
    its shopper, and arms are drawn per shopper, so treating them as independent draws would give
    intervals several times too narrow (a closed-loop experiment between two nearly equal models
    once promoted at +59% [+11%, +106%], with 10 quotes per request and shoppers whose value
    differs by a factor of several). Otherwise a unit is a row.
    """
    col = arm_column(offers)
    ordered = _in_time_order(offers)
    ordered = ordered[ordered[col].astype(str).isin([control, treatment])].reset_index(drop=True)
    is_t = (ordered[col].astype(str) == treatment).to_numpy()
    y = outcomes(ordered, unit_cost, metric) if len(ordered) else np.zeros(0)
    n_t, n_c = int(is_t.sum()), int((~is_t).sum())
    mean_t = float(y[is_t].mean()) if n_t else math.nan
    mean_c = float(y[~is_t].mean()) if n_c else math.nan
    if PAIR_ID in ordered and n_t and n_c:
        pair = ordered[PAIR_ID]
        t_side = pd.DataFrame({"pair": pair[is_t].to_numpy(), "y_t": y[is_t]})
        c_side = pd.DataFrame({"pair": pair[~is_t].to_numpy(), "y_c": y[~is_t]})
        both = c_side.dropna(subset=["pair"]).merge(  # keeps the control's (arrival) order
            t_side.dropna(subset=["pair"]).drop_duplicates("pair"), on="pair", how="inner"
        )
        if len(both):
            d = (both["y_t"] - both["y_c"]).to_numpy(float)
            est, lo, hi, n = normal_mixture_cs(d, alpha, t_opt).last()
            return Difference(metric, est, lo, hi, n, mean_c, mean_t, True)
    if not (n_t and n_c):
        return Difference(metric, math.nan, -math.inf, math.inf, 0, mean_c, mean_t, False)
    unit_y, t_share = by_request(ordered, y, is_t.astype(float))
    unit_t = t_share > 0.5  # a request's quotes are all in its shopper's arm
    u_t, u_c = int(unit_t.sum()), int((~unit_t).sum())
    share = dict(shares or {treatment: u_t / (u_t + u_c), control: u_c / (u_t + u_c)})
    phi = np.where(unit_t, unit_y / share[treatment], -unit_y / share[control])
    running = normal_mixture_cs(phi, alpha, t_opt * 2)
    est, lo, hi, _ = running.last()
    return Difference(metric, est, lo, hi, min(n_t, n_c), mean_c, mean_t, False)


# --- the rule and the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentRule:
    """What decides an experiment, declared before it starts (and recorded with every decision).

    Attributes:
        metric: the per-quote metric that decides ("profit", "revenue" or "conversion").
        min_sample: quotes per arm before a promotion may be decided.
        min_effect: the smallest gain that matters, as a share of the control's metric: a treatment
            is promoted only if its estimated gain is at least this (and its interval is above 0).
        guardrail: stop the treatment at any look once it is, with confidence, losing more than this
            share of the control's metric (the interval's upper bound below -guardrail).
        max_sample: quotes per arm at which an undecided experiment stops (no promotion).
        alpha: 1 - the confidence of the always-valid intervals.
    """

    metric: str = "profit"
    min_sample: int = 2000
    min_effect: float = 0.01
    guardrail: float = 0.05
    max_sample: int = 20000
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not (1 <= self.min_sample <= self.max_sample):
            raise ValueError(
                f"need 1 <= min_sample <= max_sample, got {self.min_sample}, {self.max_sample}"
            )
        if not (self.min_effect >= 0 and self.guardrail > 0):
            raise ValueError("min_effect must be >= 0 and guardrail > 0")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rule_id(self) -> str:
        """A short digest of the rule: two decisions with the same id followed the same rule."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExperimentDecision:
    """What the rule says at this look, and why."""

    action: str  # PROMOTE, CONTINUE or STOP
    control: str
    treatment: str
    n: int
    difference: Difference
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def promote(self) -> bool:
        return self.action == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        d = self.difference
        return {
            "action": self.action,
            "control": self.control,
            "treatment": self.treatment,
            "n_per_arm": self.n,
            "metric": d.metric,
            "difference": d.estimate,
            "difference_lo": d.lo,
            "difference_hi": d.hi,
            "relative": d.relative(d.estimate),
            "relative_lo": d.relative(d.lo),
            "relative_hi": d.relative(d.hi),
            "control_mean": d.control_mean,
            "treatment_mean": d.treatment_mean,
            "paired": d.paired,
            "reasons": list(self.reasons),
        }


def decide(
    diff: Difference, rule: ExperimentRule, control: str, treatment: str
) -> ExperimentDecision:
    """Apply `rule` to the difference at this look: promote, keep running, or stop.

    The guardrail is checked at every look (a clear loser is stopped early); promotion only from
    `min_sample` quotes per arm on; `max_sample` ends an undecided experiment without promotion.
    """
    n = diff.n
    base = abs(diff.control_mean) if math.isfinite(diff.control_mean) else math.nan
    pct = f"{rule.metric} per quote"
    reasons = [
        f"{treatment} - {control}: {pct} {diff.estimate:+.4f} "
        f"(always-valid {1 - rule.alpha:.0%} interval [{diff.lo:+.4f}, {diff.hi:+.4f}]), "
        f"{n} quotes per arm{' (paired)' if diff.paired else ''}"
    ]

    def out(action: str, why: str) -> ExperimentDecision:
        return ExperimentDecision(action, control, treatment, n, diff, tuple(reasons + [why]))

    if math.isfinite(base) and math.isfinite(diff.hi) and diff.hi < -rule.guardrail * base:
        return out(
            STOP,
            f"guardrail: {treatment} loses more than {rule.guardrail:.1%} of the control's "
            f"{pct} (upper bound {diff.relative(diff.hi):+.2%}); stopped",
        )
    if n >= rule.min_sample and math.isfinite(diff.lo) and diff.lo > 0:
        gain = diff.relative(diff.estimate)
        if math.isfinite(gain) and gain >= rule.min_effect:
            return out(
                PROMOTE,
                f"{treatment} is better (lower bound {diff.relative(diff.lo):+.2%}) by "
                f"{gain:+.2%} >= the smallest effect that matters {rule.min_effect:.1%}: promote",
            )
        reasons.append(
            f"{treatment} is better, but by {gain:+.2%} < the smallest effect that matters "
            f"{rule.min_effect:.1%}"
        )
    if n >= rule.max_sample:
        return out(STOP, f"maximum sample {rule.max_sample} reached without a decision: stopped")
    if n < rule.min_sample:
        return out(CONTINUE, f"{n} < minimum sample {rule.min_sample}: keep running")
    return out(CONTINUE, "no decision yet: keep running")


def evaluate_experiment(
    offers: pd.DataFrame,
    unit_cost: pd.Series,
    rule: ExperimentRule,
    control: str,
    treatment: str,
    shares: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, ExperimentDecision]:
    """The per-arm table and the decision at this look (all of `offers` so far)."""
    t_opt = float(rule.min_sample)
    table = arm_table(offers, unit_cost, rule.alpha, t_opt)
    diff = difference(offers, unit_cost, control, treatment, rule.metric, rule.alpha, t_opt, shares)
    return table, decide(diff, rule, control, treatment)


def replay(
    offers: pd.DataFrame,
    unit_cost: pd.Series,
    rule: ExperimentRule,
    control: str,
    treatment: str,
    look_every: int,
) -> ExperimentDecision:
    """Run the experiment as it would have run: a look every `look_every` rows (in arrival order),
    ending at the first look that promotes or stops, else at the last look."""
    ordered = _in_time_order(offers)
    if look_every < 1:
        raise ValueError("look_every must be >= 1")
    ends = list(range(look_every, len(ordered), look_every)) + [len(ordered)]
    decision: ExperimentDecision | None = None
    for end in ends:
        diff = difference(
            ordered.iloc[:end], unit_cost, control, treatment, rule.metric, rule.alpha,
            float(rule.min_sample),
        )  # fmt: skip
        decision = decide(diff, rule, control, treatment)
        if decision.action != CONTINUE:
            return decision
    assert decision is not None
    return decision


def markdown_report(table: pd.DataFrame, decision: ExperimentDecision, rule: ExperimentRule) -> str:
    """The table and the decision as Markdown (the Prefect artifact and the version description)."""

    def cell(row: pd.Series, metric: str, digits: int) -> str:
        return (
            f"{row[metric]:.{digits}f} [{row[f'{metric}_lo']:.{digits}f}, "
            f"{row[f'{metric}_hi']:.{digits}f}]"
        )

    lines = [
        f"**Decision: {decision.action}** ({decision.treatment} against {decision.control})",
        "",
        *[f"- {r}" for r in decision.reasons],
        "",
        f"Rule `{rule.rule_id()}`: metric {rule.metric}, minimum sample {rule.min_sample}, "
        f"smallest effect {rule.min_effect:.1%}, guardrail {rule.guardrail:.1%}, "
        f"maximum sample {rule.max_sample}, alpha {rule.alpha}.",
        "",
        "| arm | quotes | requests | conversion | revenue / quote | profit / quote |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        lines.append(
            f"| {row['arm']} | {int(row['quotes'])} | {int(row['requests'])} | "
            f"{cell(row, 'conversion', 4)} | "
            f"{cell(row, 'revenue', 3)} | {cell(row, 'profit', 3)} |"
        )
    lines.append("")
    lines.append(
        "Intervals are always-valid 95% confidence sequences (conversion: betting, Waudby-Smith & "
        "Ramdas 2024; revenue and profit: normal mixture, Waudby-Smith et al. 2021 / Howard et al. "
        "2021): they hold at every look, so reading them while the experiment runs is safe. A "
        "request (one shopper's page) is one unit where the log names it."
    )
    return "\n".join(lines)
