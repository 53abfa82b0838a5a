"""Train one demand model (the main model or a baseline) on the training split."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops.config import ExperimentConfig
from mlops.models import DemandModel, LogisticDemand, PricingData, model_class


def make_model(
    name: str, config: ExperimentConfig, trainer: dict[str, Any] | None = None
) -> DemandModel:
    """An untrained model of kind `name`, built from the experiment config."""
    if name == "logistic":
        return LogisticDemand(**config.logistic)
    if name in ("lightgbm", "lightgbm_text"):
        return model_class(name)(getattr(config, name), seed=config.seed)  # type: ignore[call-arg]
    cls = model_class(name)
    return cls(config.bert, seed=config.seed, trainer=trainer or {})  # type: ignore[call-arg]


def fit_model(
    name: str,
    train: PricingData,
    valid: PricingData | None,
    config: ExperimentConfig,
    trainer: dict[str, Any] | None = None,
) -> tuple[DemandModel, dict[str, float]]:
    """Build and fit; returns the model and its training diagnostics (with `fit_seconds`)."""
    model = make_model(name, config, trainer)
    t0 = time.perf_counter()
    diag = model.fit(train, valid)
    diag["fit_seconds"] = time.perf_counter() - t0
    return model, diag


@task(name="train_price_model", cache_policy=NO_CACHE)
def train_price_model(
    name: str,
    train: PricingData,
    valid: PricingData | None,
    config: ExperimentConfig,
    trainer: dict[str, Any] | None = None,
) -> tuple[DemandModel, dict[str, float]]:
    model, diag = fit_model(name, train, valid, config, trainer)
    get_run_logger().info("trained %s in %.1fs: %s", name, diag["fit_seconds"], diag)
    return model, diag
