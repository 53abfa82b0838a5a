"""The promotion gate: limits first (a model never beats itself), then each rule."""

from __future__ import annotations

from pricing.promotion import PromotionRule, decide

SIM_REF = {"profit_regret": 0.30, "log_loss": 0.35}


def test_a_challenger_equal_to_the_champion_is_not_promoted() -> None:
    m = {"profit_regret": 0.03, "log_loss": 0.30, "price_gap_protected": 0.05}
    assert not decide(m, dict(m), SIM_REF, simulated=True).promote


def test_first_model_is_promoted_only_if_it_beats_list_price() -> None:
    good = decide({"profit_regret": 0.05}, None, SIM_REF, simulated=True)
    bad = decide({"profit_regret": 0.40}, None, SIM_REF, simulated=True)
    assert good.promote and "beats the reference" in good.reasons[-1]
    assert not bad.promote and "does not beat" in bad.reasons[-1]


def test_lower_regret_wins_unless_log_loss_worsens_past_tolerance() -> None:
    champ = {"profit_regret": 0.05, "log_loss": 0.300}
    rule = PromotionRule(tolerance=0.005)
    assert decide({"profit_regret": 0.03, "log_loss": 0.304}, champ, SIM_REF, True, rule).promote
    d = decide({"profit_regret": 0.03, "log_loss": 0.310}, champ, SIM_REF, True, rule)
    assert not d.promote and any("worsens" in r for r in d.reasons)


def test_real_data_uses_log_loss_then_auc() -> None:
    champ = {"log_loss": 0.20, "auc": 0.80}
    ref = {"log_loss": 0.25}
    assert decide({"log_loss": 0.19, "auc": 0.80}, champ, ref, False).promote
    d = decide({"log_loss": 0.19, "auc": 0.70}, champ, ref, False)
    assert not d.promote and d.primary_metric == "log_loss"


def test_fairness_gate_blocks_an_otherwise_better_model() -> None:
    champ = {"profit_regret": 0.05, "log_loss": 0.30}
    ch = {"profit_regret": 0.01, "log_loss": 0.29, "price_gap_protected": 0.40}
    d = decide(ch, champ, SIM_REF, True, PromotionRule(max_price_gap=0.15))
    assert not d.promote and any("fairness" in r for r in d.reasons)
