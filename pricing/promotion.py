"""The promotion gate: does a challenger replace the champion? Pure, so every rule is unit-tested.

The gate fails closed. A champion whose metrics cannot be compared with the challenger's (none
stored, or stored for another dataset, data version, split or evaluation protocol) blocks the
promotion with a reason, unless an operator forces it; a model is never promoted "by default".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromotionRule:
    """Primary metric decides (lower is better); the other may not worsen past `tolerance`.

    `require_fairness`: whether a challenger whose fairness could not be evaluated (the data has no
    protected-group column, so no `price_gap_protected`) is blocked. Either way the report says so.
    `baseline_tolerance`: a baseline trained and evaluated in the same run that beats the challenger
    on the primary metric by more than this (absolute) blocks it: only what wins is promoted.
    """

    primary_metric_simulated: str = "profit_regret"
    primary_metric_real: str = "log_loss"
    tolerance: float = 0.005
    min_improvement: float = 0.0
    max_price_gap: float = 0.15
    require_fairness: bool = False
    baseline_tolerance: float = 0.001
    promote_winning_baseline: bool = True  # the training flow's next step (see `decide`)


@dataclass(frozen=True)
class NotComparable:
    """A champion exists, but no metrics of it were measured on this run's test data: `reason` says why."""

    reason: str


@dataclass
class PromotionDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    primary_metric: str = ""
    forced: bool = False  # promoted only because an operator forced past a non-comparable champion
    beaten_by: str | None = None  # the run's baseline that beats the challenger, if one does


# What must be equal for a stored evaluation to count: the dataset's name, a hash of its (clean)
# tables, the split, and the evaluation protocol (guardrails, test sample, metric code).
EVALUATION_IDENTITY = ("dataset", "data_hash", "split", "protocol")


def _canonical(x: Any) -> str:
    """A JSON form for equality: a stored value has been through JSON, a fresh one has not."""
    return json.dumps(x, sort_keys=True, default=str)


def comparability(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None when `stored` was evaluated on the same data, split and protocol as `current`, else why not.

    Both are evaluation records as registered on each version: `{"metrics": ..., "dataset": ...,
    "data_hash": ..., "split": ..., "protocol": ...}`.
    """
    for key in EVALUATION_IDENTITY:
        if key not in stored:
            return f"no recorded {key}"
        a, b = stored[key], current.get(key)
        if _canonical(a) != _canonical(b):
            return f"{key} differs ({_difference(a, b)})"
    return None


def _difference(a: Any, b: Any) -> str:
    """The stored vs current values that differ, short (only the differing fields of a dict)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(k for k in set(a) | set(b) if _canonical(a.get(k)) != _canonical(b.get(k)))
        return "; ".join(f"{k}: {_difference(a.get(k), b.get(k))}" for k in keys)
    return f"{_canonical(a)[:80]} vs this run's {_canonical(b)[:80]}"


def stored_champion_metrics(
    version: str, stored: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> dict[str, float] | NotComparable:
    """The champion's stored metrics if they are comparable with this run's evaluation.

    Used when the champion itself could not be evaluated (its artifacts are gone): its numbers count
    only when they were measured on the same data, split and protocol.
    """
    if not stored:
        return NotComparable(f"champion v{version} has no stored evaluation")
    why = comparability(stored, current)
    if why is not None:
        return NotComparable(f"champion v{version}'s stored metrics are not comparable: {why}")
    metrics = stored.get("metrics")
    if not isinstance(metrics, dict):
        return NotComparable(f"champion v{version}'s stored evaluation has no metrics")
    return metrics


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _winning_baseline(
    challenger: float,
    baselines: Mapping[str, Mapping[str, float]],
    primary: str,
    tolerance: float,
    higher_is_better: bool = False,
) -> tuple[str, float] | None:
    """The baseline that beats `challenger` on `primary` by the widest margin past `tolerance`."""
    best: tuple[str, float] | None = None
    for name, metrics in baselines.items():
        value = metrics.get(primary)
        if not _finite(value):
            continue
        margin = (value - challenger) if higher_is_better else (challenger - value)  # type: ignore[operator]
        if margin > tolerance and (best is None or margin > abs(challenger - best[1])):
            best = (name, float(value))  # type: ignore[arg-type]
    return best


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | NotComparable | None,
    reference: dict[str, float],
    simulated: bool,
    rule: PromotionRule = PromotionRule(),
    force: bool = False,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> PromotionDecision:
    """Decide on a challenger from metrics computed on the same test data.

    Args:
        challenger: the new model's metrics.
        champion: the current champion's metrics on the same test data; `NotComparable` (or metrics
            without the primary metric) when a champion exists but cannot be compared; None only if
            there is no champion.
        reference: what the first model must beat: the list-price policy on simulated data (profit
            regret), the base-rate predictor on real data (`log_loss` of a constant).
        simulated: whether ground-truth metrics exist (chooses the primary metric).
        force: an operator's override (`--force-promote`) of the one rule that is about the
            champion's bookkeeping rather than the challenger: a non-comparable champion. The
            challenger is then judged like a first model (it must beat the reference) and every
            other rule still applies. It changes nothing when the champion is comparable.
        baselines: the metrics of the baselines trained and evaluated in the same run, on the same
            test data (never the references, which know the list or the truth). One that beats the
            challenger on the primary metric by more than `rule.baseline_tolerance` blocks it, and
            the reason names it (`beaten_by`). The training flow then registers that baseline and
            puts it through the same gate (`promotion.promote_winning_baseline`, on by default):
            the shop serves the best model the run measured, and the challenger's version stays
            in MLflow, not promoted, with the reason.
    """
    primary = rule.primary_metric_simulated if simulated else rule.primary_metric_real
    # The other metric guards against winning on one axis by losing on the other.
    secondary, higher_is_better = ("log_loss", False) if primary != "log_loss" else ("auc", True)
    reasons: list[str] = []
    ok = True

    gap = challenger.get("price_gap_protected")
    if _finite(gap) and gap > rule.max_price_gap:  # type: ignore[operator]
        ok = False
        reasons.append(
            f"fails fairness: price gap across protected groups {gap:.3f} > {rule.max_price_gap:.3f}"
        )
    elif _finite(gap):
        reasons.append(f"passes fairness: price gap {gap:.3f} <= {rule.max_price_gap:.3f}")
    elif rule.require_fairness:
        ok = False
        reasons.append(
            "fairness not evaluated (no protected-group column, no price_gap_protected): "
            "blocks promotion (promotion.require_fairness: true)"
        )
    else:
        reasons.append(
            "fairness not evaluated (no protected-group column, no price_gap_protected): "
            "not required (promotion.require_fairness: false)"
        )

    ch = challenger.get(primary)
    if not _finite(ch):
        return PromotionDecision(False, reasons + [f"challenger has no {primary}"], primary)

    winner = _winning_baseline(ch, baselines or {}, primary, rule.baseline_tolerance)  # type: ignore[arg-type]
    beaten_by = None if winner is None else winner[0]
    if winner is not None:
        name, value = winner
        ok = False
        reasons.append(
            f"not promoted: baseline {name} of this run beats it on {primary} "
            f"({value:.4f} against {ch:.4f}, by more than {rule.baseline_tolerance:g})"
        )
    elif baselines:
        reasons.append(
            f"{primary} {ch:.4f} within {rule.baseline_tolerance:g} of or better than every "
            f"baseline of this run ({', '.join(sorted(baselines))})"
        )

    forced = False
    if isinstance(champion, NotComparable) or (
        champion is not None and not _finite(champion.get(primary))
    ):
        why = (
            champion.reason
            if isinstance(champion, NotComparable)
            else f"champion has no {primary} on this test data"
        )
        if not force:
            reasons.append(
                f"not promoted: champion not comparable ({why}); "
                "an operator may override with --force-promote"
            )
            return PromotionDecision(False, reasons, primary, beaten_by=beaten_by)
        reasons.append(
            f"forced by operator (--force-promote) past a champion that is not comparable ({why}); "
            "the challenger must still beat the reference"
        )
        champion, forced = None, True
    elif force and champion is not None:
        reasons.append("--force-promote ignored: the champion is comparable")

    if champion is None:
        ref = reference.get(primary)
        if not _finite(ref):
            return PromotionDecision(
                False, reasons + [f"no reference {primary} to beat"], primary, beaten_by=beaten_by
            )
        what = "forced" if forced else "first model"
        if ch < ref - rule.min_improvement:  # type: ignore[operator]
            reasons.append(f"{what}: {primary} {ch:.4f} beats the reference {ref:.4f}")
        else:
            ok = False
            reasons.append(f"{what}: {primary} {ch:.4f} does not beat the reference {ref:.4f}")
        return PromotionDecision(ok, reasons, primary, forced=forced and ok, beaten_by=beaten_by)

    cp = champion[primary]
    if ch < cp - rule.min_improvement:  # type: ignore[operator]
        reasons.append(f"{primary} {ch:.4f} < champion {cp:.4f}")
    else:
        ok = False
        reasons.append(f"{primary} {ch:.4f} does not beat champion {cp:.4f}")

    cs, ps = challenger.get(secondary), champion.get(secondary)
    if _finite(cs) and _finite(ps):
        worse = (ps - cs) if higher_is_better else (cs - ps)  # type: ignore[operator]
        if worse > rule.tolerance:
            ok = False
            reasons.append(
                f"{secondary} worsens by {worse:.4f} > tolerance {rule.tolerance:.4f} "
                f"({cs:.4f} vs champion {ps:.4f})"
            )
        else:
            reasons.append(f"{secondary} {cs:.4f} within tolerance of champion {ps:.4f}")
    return PromotionDecision(ok, reasons, primary, beaten_by=beaten_by)
