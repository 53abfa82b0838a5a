"""The promotion gate: limits first (a model never beats itself), then each rule."""

from __future__ import annotations

from pricing.promotion import NotComparable, PromotionRule, decide, stored_champion_metrics

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


# --- Issue 10.1: the gate fails closed ----------------------------------------------------------

WORSE = {"profit_regret": 0.099, "log_loss": 0.31, "price_gap_protected": 0.05}
CHAMP = {"profit_regret": 0.038, "log_loss": 0.30}


def test_a_champion_without_a_comparable_metric_blocks_a_worse_challenger() -> None:
    """The incident: champion artifacts deleted, its stored record had no profit_regret at the top
    level (the whole evaluation tag), and a worse challenger won "by default"."""
    stored_tag = {"metrics": CHAMP, "dataset": "sim", "split": {}}  # what version_metrics returned
    for champion in (stored_tag, {}, NotComparable("champion v1 has no stored evaluation")):
        d = decide(WORSE, champion, SIM_REF, simulated=True)  # type: ignore[arg-type]
        assert not d.promote and not d.forced
        assert any("not comparable" in r and "--force-promote" in r for r in d.reasons)
        assert not any("by default" in r for r in d.reasons)


def test_force_promotes_past_a_non_comparable_champion_but_must_beat_the_reference() -> None:
    champion = NotComparable("champion v1 has no stored evaluation")
    d = decide(WORSE, champion, SIM_REF, simulated=True, force=True)
    assert d.promote and d.forced and any("forced by operator" in r for r in d.reasons)
    bad = decide({**WORSE, "profit_regret": 0.5}, champion, SIM_REF, simulated=True, force=True)
    assert not bad.promote and not bad.forced


def test_force_changes_nothing_against_a_comparable_champion() -> None:
    d = decide(WORSE, CHAMP, SIM_REF, simulated=True, force=True)
    assert not d.promote and not d.forced
    assert any("does not beat champion" in r for r in d.reasons)


def _record(**over: object) -> dict:
    rec = {
        "metrics": CHAMP,
        "dataset": "simulated",
        "data_hash": "abc",
        "split": {"test_start": "2024-01-22T00:00:00+00:00", "n_test": 900},
        "protocol": {"guardrails": {"band_low": 0.7}, "max_test_offers": 50000},
    }
    rec.update(over)
    return rec


def test_stored_metrics_count_only_for_the_same_dataset_split_and_protocol() -> None:
    current = _record(metrics=WORSE)
    assert stored_champion_metrics("1", _record(), current) == CHAMP
    for over in (
        {"dataset": "tafeng"},
        {"data_hash": "other"},
        {"split": {"test_start": "2024-01-20T00:00:00+00:00", "n_test": 1100}},
        {"protocol": {"guardrails": {"band_low": 0.8}, "max_test_offers": 50000}},
    ):
        got = stored_champion_metrics("1", _record(**over), current)
        assert isinstance(got, NotComparable) and next(iter(over)) in got.reason
    legacy = {k: v for k, v in _record().items() if k != "data_hash"}  # registered before hashing
    assert "no recorded data_hash" in stored_champion_metrics("1", legacy, current).reason  # type: ignore[union-attr]
    assert isinstance(stored_champion_metrics("1", None, current), NotComparable)


def test_a_mismatched_dataset_blocks_promotion() -> None:
    champion = stored_champion_metrics("1", _record(dataset="tafeng"), _record(metrics=WORSE))
    better = {**WORSE, "profit_regret": 0.01}
    d = decide(better, champion, SIM_REF, simulated=True)
    assert not d.promote and any("dataset differs" in r for r in d.reasons)


def test_fairness_not_evaluated_is_a_reason_and_the_switch_decides_whether_it_blocks() -> None:
    better = {
        "profit_regret": 0.01,
        "log_loss": 0.29,
    }  # no price_gap_protected: no protected column
    lenient = decide(better, CHAMP, SIM_REF, True, PromotionRule())
    assert lenient.promote and any("fairness not evaluated" in r for r in lenient.reasons)
    strict = decide(better, CHAMP, SIM_REF, True, PromotionRule(require_fairness=True))
    assert not strict.promote
    assert any("fairness not evaluated" in r and "blocks" in r for r in strict.reasons)
    first = decide(better, None, SIM_REF, True, PromotionRule(require_fairness=True))
    assert not first.promote
