"""Experiment configuration: versioned YAML files validated into typed models, logged with each run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """Time split: test from `test_start` (or the last `test_fraction` of the span); validation before it."""

    test_start: datetime | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)


class GuardrailsConfig(_Strict):
    band_low: float = 0.7
    band_high: float = 1.3
    min_margin: float = 0.0
    ladder: Literal["cents", "99", "none"] = "cents"
    grid_size: int = 25
    max_session_change: float = 0.10
    objective: Literal["profit", "revenue"] = "profit"
    exploration: float = 0.0


class PromotionConfig(_Strict):
    """The gate a challenger must pass to become champion."""

    primary_metric_simulated: str = "profit_regret"
    primary_metric_real: str = "log_loss"
    tolerance: float = 0.005  # how much worse the other metric may get (absolute)
    min_improvement: float = 0.0
    max_price_gap: float = 0.15  # fairness: max gap of mean price/list between protected groups
    # Whether a challenger whose fairness was not evaluated (no protected-group column) is blocked.
    require_fairness: bool = False


class ValidationConfig(_Strict):
    max_bad_share: float = 0.01


class EvaluationConfig(_Strict):
    max_test_offers: int | None = (
        50_000  # policy metrics on a seeded sample when the test set is larger
    )
    calibration_bins: int = 15


class ExperimentConfig(_Strict):
    """Everything that defines one training run. Unknown keys are errors, so typos fail loudly."""

    name: str = "default"
    model: str = "lightgbm"
    baselines: list[str] = Field(default_factory=lambda: ["logistic", "lightgbm"])
    seed: int = 0
    registered_model: str | None = None  # default: settings.registered_model
    split: SplitConfig = Field(default_factory=SplitConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    # LightGBM parameters over `mlops.models.LGB_DEFAULTS`, plus `tune: {n_trials, timeout_s}`: the
    # seeded Optuna budget on the validation split (`TUNE_DEFAULTS`: no tuning).
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    # The same for LightGBM with the frozen MiniLM vectors, plus `mlops.models.TEXT_DEFAULTS`' keys.
    lightgbm_text: dict[str, Any] = Field(default_factory=dict)
    logistic: dict[str, Any] = Field(default_factory=lambda: {"l2": 1.0})
    bert: dict[str, Any] = Field(default_factory=dict)
    simulate: dict[str, Any] = Field(default_factory=dict)  # SimConfig overrides for --simulate


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (default: configs/default.yaml) and apply flat overrides."""
    path = Path(path) if path else CONFIG_DIR / "default.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return ExperimentConfig.model_validate(raw)
