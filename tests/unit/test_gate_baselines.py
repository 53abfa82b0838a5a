"""The promotion gate blocks a challenger that a baseline of the same run beats
(`pricing.promotion.decide(..., baselines=...)`)."""

from __future__ import annotations

import inspect

import pytest

from mlops.config import PromotionConfig
from pricing.promotion import NotComparable, PromotionRule, decide

# The issue's run: the challenger's regret 0.0268, the logistic baseline's 0.0235, no champion yet,
# list price at 0.3675.
CHALLENGER = {"profit_regret": 0.0268, "log_loss": 0.2510, "auc": 0.70}
LOGISTIC = {"profit_regret": 0.0235, "log_loss": 0.2560, "auc": 0.68}
SIM_REF = {"profit_regret": 0.3675, "log_loss": 0.2900}
REAL_REF = {"log_loss": 0.2900}


def _blocking(reasons: list[str]) -> list[str]:
    return [r for r in reasons if "baseline" in r and r.startswith("not promoted")]


def test_the_issues_example_is_not_promoted_and_the_reason_names_the_baseline() -> None:
    d = decide(CHALLENGER, None, SIM_REF, True, baselines={"logistic": LOGISTIC})
    assert not d.promote
    assert d.primary_metric == "profit_regret"
    blocking = _blocking(d.reasons)
    assert len(blocking) == 1 and "logistic" in blocking[0]
    assert "0.0235" in blocking[0] and "0.0268" in blocking[0]
    # without the baseline the same challenger beats list price: a first model, promoted
    alone = decide(CHALLENGER, None, SIM_REF, True)
    assert alone.promote


def test_the_default_tolerance_is_the_configs() -> None:
    assert PromotionRule().baseline_tolerance == 0.001
    assert PromotionConfig().baseline_tolerance == 0.001
    # the flows build the rule from the config: every field of one is a field of the other
    rule = PromotionRule(**PromotionConfig(baseline_tolerance=0.01).model_dump())
    assert rule.baseline_tolerance == 0.01


@pytest.mark.parametrize(
    "regret",
    [
        0.0300,  # worse than the challenger
        0.0268,  # the same
        0.0262,  # better, by 0.0006: within the tolerance
        0.0259,  # better, by 0.0009: within the tolerance
    ],
)
def test_a_baseline_worse_or_within_tolerance_does_not_block(regret: float) -> None:
    base = {**LOGISTIC, "profit_regret": regret}
    d = decide(CHALLENGER, None, SIM_REF, True, baselines={"logistic": base})
    assert d.promote, d.reasons
    assert not _blocking(d.reasons)
    assert any("within" in r and "logistic" in r for r in d.reasons)


def test_just_past_the_tolerance_blocks_and_a_wider_tolerance_lets_it_through() -> None:
    base = {**LOGISTIC, "profit_regret": 0.0268 - 0.0012}
    assert not decide(CHALLENGER, None, SIM_REF, True, baselines={"logistic": base}).promote
    lenient = PromotionRule(baseline_tolerance=0.005)
    d = decide(CHALLENGER, None, SIM_REF, True, lenient, baselines={"logistic": LOGISTIC})
    assert d.promote, d.reasons


def test_the_widest_winning_baseline_is_named() -> None:
    baselines = {
        "logistic": LOGISTIC,  # beats by 0.0033
        "lightgbm": {"profit_regret": 0.0200, "log_loss": 0.25},  # beats by 0.0068
        "uniform": {"profit_regret": 0.0400, "log_loss": 0.26},  # worse
    }
    d = decide(CHALLENGER, None, SIM_REF, True, baselines=baselines)
    assert not d.promote
    blocking = _blocking(d.reasons)
    assert len(blocking) == 1 and "lightgbm" in blocking[0] and "logistic" not in blocking[0]
    # order of the mapping does not matter
    d2 = decide(CHALLENGER, None, SIM_REF, True, baselines=dict(reversed(list(baselines.items()))))
    assert _blocking(d2.reasons) == blocking


def test_a_baseline_without_the_primary_metric_is_ignored() -> None:
    baselines = {
        "logistic": {"log_loss": 0.1},  # no regret: cannot be compared
        "nan": {"profit_regret": float("nan")},
    }
    d = decide(CHALLENGER, None, SIM_REF, True, baselines=baselines)
    assert d.promote, d.reasons


def test_on_real_data_the_primary_is_log_loss() -> None:
    # The baseline's regret would block on simulated data; on real data only log loss counts.
    ch = {"log_loss": 0.2510, "auc": 0.70}
    better_regret = {"log_loss": 0.2560, "profit_regret": 0.0001}
    d = decide(ch, None, REAL_REF, False, baselines={"logistic": better_regret})
    assert d.primary_metric == "log_loss"
    assert d.promote, d.reasons
    better_loss = {"log_loss": 0.2480, "auc": 0.71}
    d = decide(ch, None, REAL_REF, False, baselines={"lightgbm": better_loss})
    assert not d.promote
    blocking = _blocking(d.reasons)
    assert len(blocking) == 1 and "lightgbm" in blocking[0] and "log_loss" in blocking[0]
    within = {"log_loss": 0.2505}  # better by 0.0005 < 0.001
    assert decide(ch, None, REAL_REF, False, baselines={"lightgbm": within}).promote


def test_a_blocking_baseline_blocks_even_when_the_challenger_beats_the_champion() -> None:
    champion = {"profit_regret": 0.0500, "log_loss": 0.2520, "auc": 0.69}
    assert decide(CHALLENGER, champion, SIM_REF, True).promote
    d = decide(CHALLENGER, champion, SIM_REF, True, baselines={"logistic": LOGISTIC})
    assert not d.promote
    assert any("< champion" in r for r in d.reasons)  # it did beat the champion
    assert any("logistic" in r for r in _blocking(d.reasons))


def test_a_blocking_baseline_blocks_a_forced_promotion_too() -> None:
    champion = NotComparable("data_hash differs")
    forced = decide(CHALLENGER, champion, SIM_REF, True, force=True)
    assert forced.promote and forced.forced
    d = decide(CHALLENGER, champion, SIM_REF, True, force=True, baselines={"logistic": LOGISTIC})
    assert not d.promote and not d.forced
    assert _blocking(d.reasons)


@pytest.mark.parametrize(
    "champion",
    [
        None,
        {"profit_regret": 0.0500, "log_loss": 0.2520},
        {"profit_regret": 0.0100, "log_loss": 0.25},
    ],
)
@pytest.mark.parametrize("simulated", [True, False])
def test_no_baselines_is_the_previous_behaviour(champion, simulated: bool) -> None:
    ref = SIM_REF if simulated else REAL_REF
    before = decide(CHALLENGER, champion, ref, simulated)
    for none in (None, {}):
        after = decide(CHALLENGER, champion, ref, simulated, baselines=none)
        assert (after.promote, after.reasons, after.primary_metric) == (
            before.promote,
            before.reasons,
            before.primary_metric,
        )
    assert not any("baseline" in r for r in before.reasons)


def test_registry_promote_passes_baselines_through() -> None:
    from tasks.registry import promote, promote_model

    param = inspect.signature(promote).parameters["baselines"]
    assert param.default is None
    fn = getattr(promote_model, "fn", promote_model)  # the Prefect task's function
    assert inspect.signature(fn).parameters["baselines"].default is None
