"""Train one demand model (the main model or a baseline) on the training split."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mlops.config import ExperimentConfig
from mlops.models import DemandModel, LogisticDemand, PricingData, UniformDemand, model_class


class TrainedModel(NamedTuple):
    """What `train_price_model` returns: the model, its training diagnostics and its MLflow run."""

    model: DemandModel
    diagnostics: dict[str, float]
    run_id: str | None  # the model's child run (None when trained without tracking)


def make_model(
    name: str, config: ExperimentConfig, trainer: dict[str, Any] | None = None
) -> DemandModel:
    """An untrained model of kind `name` (or a variant's kind), built from the experiment config."""
    base, block = config.base_model(name), config.model_block(name)
    if base == "logistic":
        return LogisticDemand(**block)
    if base == "uniform":
        return UniformDemand(**block, seed=config.seed)
    if base in ("lightgbm", "lightgbm_text"):
        return model_class(base)(block, seed=config.seed)  # type: ignore[call-arg]
    cls = model_class(base)
    return cls(block, seed=config.seed, trainer=trainer or {})  # type: ignore[call-arg]


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


def model_params(name: str, config: ExperimentConfig) -> dict[str, Any]:
    """The config block of model `name`, as dotted params (`lightgbm.num_leaves`), for its run."""
    from tasks.tracking import flatten

    base = config.base_model(name)
    block = config.model_block(name)
    if isinstance(block, BaseModel):  # a typed block (`bert`: BertConfig)
        block = block.model_dump(mode="json")
    params = flatten(base, block) if isinstance(block, dict) else {}
    variant = {"variant_of": base} if base != name else {}
    return {"model": name, "seed": config.seed, **variant, **params}


def _run_logger() -> Any:
    """The Prefect run's logger; this module's logger when called outside a run (`.fn` in tests)."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def training_feedback(name: str, run_id: str | None) -> dict[str, Any]:
    """Trainer overrides for a Lightning model: an epoch line in the run log, curves in `run_id`."""
    from lightning_modules.callbacks import ActiveRunLogger, EpochLog

    out: dict[str, Any] = {"callbacks": [EpochLog(_run_logger().info, label=name)]}
    if run_id is not None:
        import mlflow

        out["logger"] = ActiveRunLogger(run_id, mlflow.get_tracking_uri())
    return out


@task(name="train_price_model", task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_price_model(
    name: str,
    train: PricingData,
    valid: PricingData | None,
    config: ExperimentConfig,
    trainer: dict[str, Any] | None = None,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
    role: str = "candidate",
) -> TrainedModel:
    """Train model `name`; with `parent_run_id`, inside its own child run of the training run.

    The child run (named after the model, tagged `role`: candidate or baseline) gets the model's
    config as params, its training diagnostics as `train.<key>` and, for a Lightning model, the
    learning curves (`train/loss`, `val/loss` per step); the evaluation adds the test metrics under
    the same names in every child, so MLflow's Compare view lines the models up.
    """
    log = _run_logger()
    if parent_run_id is None:
        model, diag = fit_model(name, train, valid, config, trainer)
        log.info("trained %s in %.1fs", name, diag["fit_seconds"])
        return TrainedModel(model, diag, None)
    import mlflow

    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        parent_run_id=parent_run_id,
        nested=True,
        tags={"model": name, "role": role, "kind": "model"},
    ) as run:
        run_id = run.info.run_id
        mlflow.log_params(model_params(name, config))
        overrides = dict(trainer or {})
        if config.base_model(name) == "bert":
            extra = training_feedback(name, run_id)
            overrides["callbacks"] = [*overrides.get("callbacks", []), *extra["callbacks"]]
            overrides.setdefault("logger", extra.get("logger"))
        model, diag = fit_model(name, train, valid, config, overrides)
        mlflow.log_metrics({f"train.{k}": float(v) for k, v in diag.items()})
    log.info("trained %s in %.1fs (MLflow child run %s)", name, diag["fit_seconds"], run_id)
    return TrainedModel(model, diag, run_id)
