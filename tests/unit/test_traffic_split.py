"""`PRICING_EXPERIMENT`: what the scorer reads, and what it refuses with a clear message."""

from __future__ import annotations

import pytest

from scorer.experiment import (
    ArmConfig,
    ExperimentConfigError,
    ExperimentSettings,
    effective_shares,
    parse_experiment,
    parse_share_tag,
)


def test_the_champion_gets_the_rest_and_comes_first() -> None:
    cfg = parse_experiment("exp-7, challenger=challenger:0.1, b=candidate-b:0.2")
    assert cfg.experiment_id == "exp-7"
    assert cfg.arms == (
        ArmConfig("champion", "champion", None),
        ArmConfig("challenger", "challenger", 0.1),
        ArmConfig("b", "candidate-b", 0.2),
    )
    assert effective_shares(cfg, {"challenger": 0.1, "b": 0.2}) == [
        ("champion", pytest.approx(0.7)),
        ("challenger", 0.1),
        ("b", 0.2),
    ]


def test_an_explicit_champion_share_and_a_share_from_tags() -> None:
    cfg = parse_experiment("exp;challenger=challenger;champion=champion:0.5")
    assert cfg.champion_share == 0.5 and cfg.challengers == (
        ArmConfig("challenger", "challenger", None),
    )
    assert effective_shares(cfg, {"challenger": None}) == [("champion", 0.5), ("challenger", 0.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no experiment id"),
        ("challenger=challenger:0.1", "no experiment id"),
        ("exp", "no arm besides the champion"),
        ("exp,challenger", "is not arm=alias"),
        ("exp,challenger=challenger:1.5", "must be a number in [0, 1]"),
        ("exp,challenger=challenger:nan", "must be a number in [0, 1]"),
        ("exp,challenger=challenger:abc", "must be a number in [0, 1]"),
        ("exp,a=x:0.6,b=y:0.6", "add up to 1.2 > 1"),
        ("exp,a=x:0.1,a=y:0.1", "listed twice"),
        ("exp,a=champion:0.1", "no other arm may serve it"),
        ("exp,champion=challenger:0.1", "no other arm may serve it"),
        ("exp id,a=x:0.1", "must be letters, digits"),
    ],
)
def test_bad_configurations_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ExperimentConfigError, match="PRICING_EXPERIMENT") as err:
        parse_experiment(text)
    assert message in str(err.value)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRICING_EXPERIMENT", raising=False)
    assert ExperimentSettings().experiment is None
    monkeypatch.setenv("PRICING_EXPERIMENT", "exp-9,challenger=challenger:0.2")
    cfg = ExperimentSettings().experiment
    assert cfg is not None and cfg.experiment_id == "exp-9"
    monkeypatch.setenv("PRICING_EXPERIMENT", "exp-9,challenger=challenger:2")
    with pytest.raises(ValueError, match="must be a number in"):
        ExperimentSettings()


@pytest.mark.parametrize(
    ("raw", "share"), [("0.25", 0.25), ("1", 1.0), ("x", None), ("-0.1", None), ("inf", None)]
)
def test_share_tags(raw: str, share: float | None) -> None:
    assert parse_share_tag(raw) == share
