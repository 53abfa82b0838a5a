"""Statistics over seeds: Student-t intervals, paired differences, verdicts, the compare summary.

One seed of the evaluation is one draw: a new simulated market (and training seed), or a new
training seed on fixed real data. A model's metric over N seeds gets the interval
mean ± t_{0.975, N-1} · sd / √N. A model against the best baseline is compared *paired*: the
per-seed difference (model minus baseline, on the same market and test offers) and its t interval,
which removes the seed-to-seed variation both share. README's wording rule: a model is "better"
only where that paired interval excludes zero in the good direction.

The t quantile is computed here, without scipy (`pricing/` imports numpy, pandas and the standard
library only): the Student-t CDF through the regularized incomplete beta function (a continued
fraction, as in Numerical Recipes' `betacf`), inverted by bisection. It agrees with scipy to 1e-10
for the degrees of freedom a seed count gives (checked in tests/unit/test_stats.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LIST_PRICE = "list_price"  # the list-price policy: a reference, never the best baseline
ORACLE_UNIFORM = "oracle_uniform"  # the best price per item knowing the truth: a reference too
REFERENCES = (LIST_PRICE, ORACLE_UNIFORM)
LEVEL = 0.95
# Metric-key prefixes of the evaluation's cold-start slices (`cold_items/log_loss`, ...).
SLICES = ("cold_items", "cold_users")

# Which way is good, per metric; metrics not listed are descriptive (price ratio, purchase rate,
# oracle profit, counts; revenue, which the profit objective does not maximize) and get no verdict.
HIGHER_IS_BETTER: dict[str, bool] = {
    "profit_regret": False,
    "grid_regret": False,
    "log_loss": False,
    "ece": False,
    "price_gap_protected": False,
    "ope_ips_rel_error": False,
    "ope_snips_rel_error": False,
    "ope_dr_rel_error": False,
    "auc": True,
    "uplift_vs_list": True,
    "gap_share": True,
    "lift_vs_uniform": True,
    "expected_profit": True,
    "ope_ips": True,
    "ope_snips": True,
    "ope_dr": True,
    "ope_true_value": True,
}
# What a person reads first (the Markdown table and the plot), after the primary metric.
HEADLINE = ("profit_regret", "gap_share", "lift_vs_uniform", "log_loss", "auc", "ece")

BETTER, WORSE, NO_DIFFERENCE, NOT_AVAILABLE = "better", "worse", "no difference", "n/a"


# --- the t distribution ---------------------------------------------------------------------------


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (e.g. t_{0.975, 4} = 2.776)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: t_{0.9995, 1} is about 637, so this stops quickly
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --- intervals and verdicts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its two-sided t interval; `lo`, `hi` are nan with fewer than 2 values."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi}


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    return arr[np.isfinite(arr)]


def mean_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{(1+level)/2, n-1} · sd/√n over the finite `values` (sd with n-1 in the denominator).

    With one finite value the interval is undefined (lo = hi = nan); with none, all are nan.
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(x))
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(0.5 + level / 2.0, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_interval(
    model: Sequence[float], baseline: Sequence[float], level: float = LEVEL
) -> Interval:
    """The t interval of the per-seed difference model - baseline (seeds where both are finite)."""
    if len(model) != len(baseline):
        raise ValueError(f"paired values need the same seeds, got {len(model)} and {len(baseline)}")
    diff = np.asarray(model, dtype=float) - np.asarray(baseline, dtype=float)
    return mean_interval(diff, level)


def verdict(lo: float, hi: float, higher_is_better: bool | None) -> str:
    """ "better" / "worse" only where the paired interval [lo, hi] excludes zero, else "no difference".

    "n/a" when the interval is undefined (one seed) or the metric has no good direction.
    """
    if higher_is_better is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return NOT_AVAILABLE
    if lo > 0:
        return BETTER if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


# --- test-sample noise: a bootstrap over users -------------------------------------------------------

BOOTSTRAP_METRICS = ("log_loss", "auc")
BOOTSTRAP_DRAWS = 400


def _weighted_auc(y: np.ndarray, group: np.ndarray, n_groups: int, w: np.ndarray) -> float:
    """AUC with row weights `w`; `group` ranks the rows' scores (ties share a group)."""
    pos = np.bincount(group, w * y, n_groups)
    neg = np.bincount(group, w * (1.0 - y), n_groups)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return math.nan
    below = np.cumsum(neg) - neg  # negatives scored strictly lower
    return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def user_bootstrap(
    users: Sequence[Any],
    y: np.ndarray,
    probs: Mapping[str, np.ndarray],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Each model's log loss and AUC on `draws` resamples of the test set's users.

    Users are drawn with replacement and bring all their offers (offers of one user are not
    independent); every model sees the same resamples, so differences between models are paired.
    What it measures is test-sample noise: how much the figures would move on other users.

    Returns:
        `{"unit": "user", "draws": B, "users": U, "log_loss": {model: [B]}, "auc": {model: [B]}}`.
    """
    codes, uniq = pd.factorize(pd.Series(list(users)).astype(str))
    n_users = len(uniq)
    y = np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=draws).astype(float)
    n_offers = np.bincount(codes, minlength=n_users).astype(float)
    out: dict[str, Any] = {"unit": "user", "draws": draws, "users": n_users}
    out.update({m: {} for m in BOOTSTRAP_METRICS})
    for name, p in probs.items():
        p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        per_user = np.bincount(codes, loss, n_users)
        out["log_loss"][name] = list(counts @ per_user / (counts @ n_offers))
        group = pd.Series(p).rank(method="dense").to_numpy().astype(np.int64) - 1
        n_groups = int(group.max()) + 1 if len(group) else 0
        out["auc"][name] = [
            _weighted_auc(y, group, n_groups, counts[b][codes]) for b in range(draws)
        ]
    return out


def _normal_quantile(p: float) -> float:
    return t_quantile(p, 1e7)


def combine_bootstrap(
    summary: dict[str, Any],
    per_seed: PerSeed,
    boots: Mapping[int, Mapping[str, Any]],
    level: float = LEVEL,
) -> dict[str, Any]:
    """Widen a fixed-data summary's intervals to cover test-sample noise as well as training seeds.

    On fixed data every seed is tested on the same users, so their sampling noise does not average
    out over seeds. For a model's metric, or a paired difference, with per-seed values x_s and a
    user-bootstrap sd b_s per seed: se = sqrt(var(x) / n + mean(b_s^2)), interval mean ± z se
    (normal z). The seed-only t interval stays as `lo_seeds`/`hi_seeds`; verdicts are recomputed.
    `summary["intervals_cover"]` says which it is.
    """
    seeds = [s for s in summary["seeds"] if s in boots]
    if not seeds or len(seeds) != len(summary["seeds"]):
        return summary
    z = _normal_quantile(0.5 + level / 2.0)

    def widen(entry: dict[str, Any], x: np.ndarray, sds: np.ndarray) -> None:
        n = len(x)
        var_seeds = float(np.var(x, ddof=1)) / n if n > 1 else 0.0
        se = math.sqrt(var_seeds + float(np.mean(sds**2)))
        mean = float(np.mean(x))
        entry["lo_seeds"], entry["hi_seeds"] = entry.get("lo"), entry.get("hi")
        entry["mean"], entry["lo"], entry["hi"] = mean, mean - z * se, mean + z * se
        entry["bootstrap_sd"] = float(np.sqrt(np.mean(sds**2)))

    def draws(seed: int, metric: str, name: str) -> np.ndarray | None:
        d = boots[seed].get(metric, {}).get(name)
        return None if d is None else np.asarray(d, dtype=float)

    for metric in BOOTSTRAP_METRICS:
        for name, by_metric in summary["models"].items():
            ds = [draws(s, metric, name) for s in seeds]
            if metric in by_metric and all(d is not None for d in ds):
                x = np.asarray([per_seed[s][name][metric] for s in seeds], dtype=float)
                sds = np.asarray([np.nanstd(d, ddof=1) for d in ds if d is not None])
                widen(by_metric[metric], x, sds)
        for name, by_metric in summary["paired"].items():
            entry = by_metric.get(metric)
            if entry is None:
                continue
            vs = entry["vs"]
            pairs = [(draws(s, metric, name), draws(s, metric, vs)) for s in seeds]
            if any(a is None or b is None for a, b in pairs):
                continue
            x = np.asarray(
                [per_seed[s][name][metric] - per_seed[s][vs][metric] for s in seeds], dtype=float
            )
            sds = np.asarray([np.nanstd(a - b, ddof=1) for a, b in pairs])  # type: ignore[operator]
            widen(entry, x, sds)
            summary["verdicts"][name][metric] = verdict(
                entry["lo"], entry["hi"], HIGHER_IS_BETTER[metric]
            )
    draws_n = int(next(iter(boots.values())).get("draws", 0))
    summary["intervals_cover"] = (
        f"training seeds ({len(seeds)}) and test users (bootstrap over users, {draws_n} draws) "
        "for log loss and AUC; training seeds only for the other metrics"
    )
    return summary


def not_worse(
    summary: dict[str, Any], margins: Mapping[str, float]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Non-inferiority of each model against the best baseline, with margins declared before the
    run (`evaluation.not_worse_margins`, in the metric's units, in its bad direction): "not worse"
    where the paired interval's bad end stays inside the margin (for log loss, hi < +margin)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_metric in summary["paired"].items():
        if name in REFERENCES:
            continue
        for metric, margin in margins.items():
            entry = by_metric.get(metric)
            if entry is None or metric not in HIGHER_IS_BETTER:
                continue
            lo, hi = entry["lo"], entry["hi"]
            if not (math.isfinite(lo) and math.isfinite(hi)):
                holds = None
            elif HIGHER_IS_BETTER[metric]:
                holds = bool(lo > -margin)
            else:
                holds = bool(hi < margin)
            out.setdefault(name, {})[metric] = {
                "vs": entry["vs"], "margin": margin, "lo": lo, "hi": hi, "not_worse": holds,
            }  # fmt: skip
    return out


# --- the compare summary --------------------------------------------------------------------------

PerSeed = Mapping[int, Mapping[str, Mapping[str, float]]]  # seed -> model -> metric -> value


def _split_keys(per_seed: PerSeed) -> tuple[list[str], dict[str, list[str]]]:
    """Model names (first-seen order) and each model's plain (non-slice) metric names."""
    models: dict[str, list[str]] = {}
    for by_model in per_seed.values():
        for name, metrics in by_model.items():
            keys = models.setdefault(name, [])
            for k, v in metrics.items():
                if "/" not in k and k not in keys and isinstance(v, int | float):
                    keys.append(k)
    return list(models), models


def best_baseline(
    means: Mapping[str, float],
    main: str,
    higher_is_better: bool = False,
    not_baselines: Sequence[str] = (),
) -> str:
    """The model other than `main` and the references (`REFERENCES`) with the best mean primary
    metric.

    `not_baselines` are compared but never the reference (the main model's own variants: an
    ablation is not a baseline). Falls back to list price when there is no other baseline (or
    none has a finite value).
    """
    skip = {main, *REFERENCES, *not_baselines}
    candidates = {k: v for k, v in means.items() if k not in skip and math.isfinite(v)}
    if not candidates:
        return LIST_PRICE
    pick = max if higher_is_better else min
    return pick(candidates, key=lambda k: candidates[k])


def summarize(
    per_seed: PerSeed,
    main: str,
    primary: str,
    level: float = LEVEL,
    not_baselines: Sequence[str] = (),
) -> dict[str, Any]:
    """The compare summary (what `compare.json` holds; nan where undefined).

    `{"primary", "seeds", "main", "best_baseline", "level", "models", "paired", "slices",
    "slices_paired", "ablations", "metric_direction", "verdicts"}`: per model and metric the mean, t interval and per-seed values;
    per model other than the best baseline, the paired difference against it for every metric with
    a good direction; the cold-start slices' means over seeds (empty when the evaluation has none)
    and, on each slice, the main model's paired difference against every other model; and per
    ablation (`not_baselines`: the main model's variants), the variant minus the main model on
    every directed metric, slices included.
    """
    seeds = list(per_seed)
    names, metric_names = _split_keys(per_seed)

    def values(name: str, metric: str) -> list[float]:
        return [float(per_seed[s].get(name, {}).get(metric, math.nan)) for s in seeds]

    models: dict[str, dict[str, Any]] = {}
    for name in names:
        models[name] = {}
        for metric in metric_names[name]:
            vals = values(name, metric)
            models[name][metric] = {**mean_interval(vals, level).as_dict(), "per_seed": vals}

    primary_up = HIGHER_IS_BETTER.get(primary, False)
    means = {n: models[n].get(primary, {}).get("mean", math.nan) for n in names}
    best = best_baseline(means, main, primary_up, not_baselines)

    paired: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, str]] = {}
    directed = [m for m in metric_names.get(best, []) if m in HIGHER_IS_BETTER]
    for name in names:
        if name == best:
            continue
        paired[name], verdicts[name] = {}, {}
        for metric in directed:
            if metric not in models[name]:
                continue
            iv = paired_interval(values(name, metric), values(best, metric), level)
            paired[name][metric] = {"vs": best, **iv.as_dict()}
            verdicts[name][metric] = verdict(iv.lo, iv.hi, HIGHER_IS_BETTER[metric])

    slices: dict[str, dict[str, dict[str, float]]] = {}
    for prefix in SLICES:
        for name in names:
            keys = {
                k for s in seeds for k in per_seed[s].get(name, {}) if k.startswith(f"{prefix}/")
            }
            for key in sorted(keys):
                x = _finite(values(name, key))
                mean = float(np.mean(x)) if len(x) else math.nan
                slices.setdefault(prefix, {}).setdefault(name, {})[key.split("/", 1)[1]] = mean

    slices_paired = _paired_slices(per_seed, seeds, names, main, level)
    ablations = _paired_ablations(
        per_seed, seeds, [n for n in not_baselines if n in names], main, level
    )
    metrics_seen = {m for ms in metric_names.values() for m in ms}
    return {
        "primary": primary,
        "seeds": seeds,
        "main": main,
        "best_baseline": best,
        "level": level,
        "models": models,
        "paired": paired,
        "slices": slices,
        "slices_paired": slices_paired,
        "ablations": ablations,
        "metric_direction": {
            m: {"higher_is_better": up} for m, up in HIGHER_IS_BETTER.items() if m in metrics_seen
        },
        "verdicts": verdicts,
    }


def _paired_entry(
    per_seed: PerSeed, seeds: list[int], model: str, vs: str, key: str, level: float
) -> dict[str, Any] | None:
    """`model` minus `vs` on metric `key` (a slice metric as `slice/metric`), paired over the seeds
    where both values are finite: `{"mean", "lo", "hi", "verdict"}`, or None where no seed has
    both."""
    a = np.asarray([float(per_seed[s].get(model, {}).get(key, math.nan)) for s in seeds])
    b = np.asarray([float(per_seed[s].get(vs, {}).get(key, math.nan)) for s in seeds])
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None
    iv = paired_interval(a[both], b[both], level)
    return {**iv.as_dict(), "verdict": verdict(iv.lo, iv.hi, HIGHER_IS_BETTER[key.split("/")[-1]])}


def _paired_slices(
    per_seed: PerSeed, seeds: list[int], names: list[str], main: str, level: float
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """On each cold-start slice, the main model minus every other model, per directed metric.

    `{slice: {other: {metric: {"model", "vs", "mean", "lo", "hi", "verdict"}}}}`: the per-seed
    difference on the slice's offers (seeds where both values are finite), so "better on cold items"
    is claimed only where the interval excludes zero, as for the whole test set.
    """
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for prefix in SLICES:
        keys = sorted(
            k
            for k in {k for s in seeds for k in per_seed[s].get(main, {})}
            if k.startswith(f"{prefix}/") and k.split("/", 1)[1] in HIGHER_IS_BETTER
        )
        for other in names:
            if other == main:
                continue
            for key in keys:
                entry = _paired_entry(per_seed, seeds, main, other, key, level)
                if entry is not None:
                    metric = key.split("/", 1)[1]
                    by_metric = out.setdefault(prefix, {}).setdefault(other, {})
                    by_metric[metric] = {"model": main, "vs": other, **entry}
    return out


def _paired_ablations(
    per_seed: PerSeed, seeds: list[int], ablations: list[str], main: str, level: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each ablation minus the main model, per seed, on every directed metric (slice metrics as
    `slice/metric`): `{ablation: {metric: {"vs", "mean", "lo", "hi", "verdict"}}}`, the verdict
    saying whether the ablation is better or worse than the full model. Seeds where either value
    is missing are left out of that metric's difference."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = sorted({k for s in seeds for k in per_seed[s].get(main, {})})
    directed = [k for k in keys if k.split("/", 1)[-1] in HIGHER_IS_BETTER]
    for name in ablations:
        for key in directed:
            entry = _paired_entry(per_seed, seeds, name, main, key, level)
            if entry is not None:
                out.setdefault(name, {})[key] = {"vs": main, **entry}
    return out


def headline_metrics(summary: Mapping[str, Any]) -> list[str]:
    """The primary metric, then the other headline metrics that some model reports."""
    seen = {m for metrics in summary["models"].values() for m in metrics}
    order = [summary["primary"], *HEADLINE]
    return [m for i, m in enumerate(order) if m in seen and m not in order[:i]]


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "n/a"


def _fmt_interval(entry: Mapping[str, float]) -> str:
    mean, lo, hi = entry["mean"], entry["lo"], entry["hi"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{_fmt(mean)} [n/a]"
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _paired_table(
    title: str,
    label: str,
    by_name: Mapping[str, Mapping[str, Mapping[str, Any]]],
    columns: Sequence[tuple[str, str]],
) -> list[str]:
    """A Markdown table of paired differences: one row per name, one "interval verdict" cell per
    (header, key) column, blank where the name has no entry for the key."""
    lines = [title, "", f"| {label} | " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for name, by_key in by_name.items():
        row = [
            f"{_fmt_interval(e)} {e['verdict']}" if (e := by_key.get(k)) else "" for _, k in columns
        ]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return [*lines, ""]


def markdown_table(summary: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """The summary as Markdown: mean [95% interval] per model and metric, the paired difference
    against the best baseline, and the verdict the README's wording rule allows."""
    metrics = list(metrics) if metrics is not None else headline_metrics(summary)
    best, n = summary["best_baseline"], len(summary["seeds"])
    pct = f"{summary.get('level', LEVEL):.0%}"
    lines = [
        f"# Compare over {n} seed{'s' if n != 1 else ''}",
        "",
        f"Primary metric: `{summary['primary']}`. Main model: `{summary['main']}`. "
        f"Best baseline: `{best}`. Intervals: {pct} Student-t over seeds"
        + (" (n/a with one seed)." if n < 2 else "."),
        *(
            [f"Intervals cover {summary['intervals_cover']} (mean ± z·se)."]
            if summary.get("intervals_cover")
            else []
        ),
        'Paired: the per-seed difference model minus best baseline; "better" only where its '
        "interval excludes zero in the metric's good direction.",
        "",
        f"| metric | model | mean [{pct} CI] | paired vs `{best}` | verdict |",
        "|---|---|---|---|---|",
    ]
    for metric in metrics:
        for name, by_metric in summary["models"].items():
            if metric not in by_metric:
                continue
            if name == best:
                paired, word = "(reference)", ""
            elif metric in summary["paired"].get(name, {}):
                paired = _fmt_interval(summary["paired"][name][metric])
                word = summary["verdicts"][name][metric]
            else:
                paired, word = "", "n/a"
            lines.append(
                f"| {metric} | {name} | {_fmt_interval(by_metric[metric])} | {paired} | {word} |"
            )
    nw = summary.get("not_worse") or {}
    if nw:
        lines += ["", f"## Not worse than `{best}` (margins declared in the config)", ""]
        lines += [
            "| model | metric | paired interval | margin | not worse |",
            "|---|---|---|---|---|",
        ]
        for name, by_metric in nw.items():
            for metric, e in by_metric.items():
                word = {True: "yes", False: "no", None: "n/a"}[e["not_worse"]]
                iv = f"[{_fmt(e['lo'])}, {_fmt(e['hi'])}]"
                lines.append(f"| {name} | {metric} | {iv} | {e['margin']:g} | {word} |")
    if summary["slices"]:
        lines += ["", "## Cold-start slices (means over seeds)", ""]
        for slice_name, by_model in summary["slices"].items():
            keys = sorted({k for vals in by_model.values() for k in vals})
            lines += [f"### {slice_name}", "", "| model | " + " | ".join(keys) + " |"]
            lines.append("|---|" + "---|" * len(keys))
            for name, vals in by_model.items():
                cells = " | ".join(_fmt(vals.get(k, math.nan)) for k in keys)
                lines.append(f"| {name} | {cells} |")
            lines.append("")
    for slice_name, by_other in summary.get("slices_paired", {}).items():
        shown = [k for k in metrics if any(k in m for m in by_other.values())]
        if not shown:
            continue
        title = f"### {slice_name}: `{summary['main']}` minus each model, paired over seeds"
        lines += _paired_table(title, "vs", by_other, [(k, k) for k in shown])
    ablations = summary.get("ablations", {})
    for slice_name in ("", *SLICES):
        prefix = f"{slice_name}/" if slice_name else ""
        shown = [m for m in metrics if any(f"{prefix}{m}" in v for v in ablations.values())]
        if not shown:
            continue
        where = f" on {slice_name}" if slice_name else ""
        title = f"## Ablations{where}: each variant minus `{summary['main']}`, paired over seeds"
        lines += _paired_table(title, "variant", ablations, [(m, f"{prefix}{m}") for m in shown])
    differing = summary.get("joined_differing", [])
    if differing:
        kept = sorted({(d["seed"], d["model"], d["kept"]) for d in differing})
        lines += [
            "Joined runs: where a seed's model was in two runs with different figures (a tuner "
            "with a time budget is not deterministic), the first run's were kept: "
            + "; ".join(f"seed {s} {m} from {k}" for s, m, k in kept)
            + ".",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None, so it can be written as strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
