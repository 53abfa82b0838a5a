"""The promotion gate: does a challenger replace the champion? Pure, so every rule is unit-tested."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromotionRule:
    """Primary metric decides (lower is better); the other may not worsen past `tolerance`."""

    primary_metric_simulated: str = "profit_regret"
    primary_metric_real: str = "log_loss"
    tolerance: float = 0.005
    min_improvement: float = 0.0
    max_price_gap: float = 0.15


@dataclass
class PromotionDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    primary_metric: str = ""


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    reference: dict[str, float],
    simulated: bool,
    rule: PromotionRule = PromotionRule(),
) -> PromotionDecision:
    """Decide on a challenger from metrics computed on the same test data.

    Args:
        challenger: the new model's metrics.
        champion: the current champion's metrics on the same test data, or None if there is none.
        reference: what the first model must beat: the list-price policy on simulated data (profit
            regret), the base-rate predictor on real data (`log_loss` of a constant).
        simulated: whether ground-truth metrics exist (chooses the primary metric).
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

    ch = challenger.get(primary)
    if not _finite(ch):
        return PromotionDecision(False, reasons + [f"challenger has no {primary}"], primary)

    if champion is None:
        ref = reference.get(primary)
        if not _finite(ref):
            return PromotionDecision(False, reasons + [f"no reference {primary} to beat"], primary)
        if ch < ref - rule.min_improvement:  # type: ignore[operator]
            reasons.append(f"first model: {primary} {ch:.4f} beats the reference {ref:.4f}")
        else:
            ok = False
            reasons.append(f"first model: {primary} {ch:.4f} does not beat the reference {ref:.4f}")
        return PromotionDecision(ok, reasons, primary)

    cp = champion.get(primary)
    if not _finite(cp):
        reasons.append(f"champion has no {primary}: challenger wins by default")
        return PromotionDecision(ok, reasons, primary)
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
    return PromotionDecision(ok, reasons, primary)
