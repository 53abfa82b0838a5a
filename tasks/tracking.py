"""Log a training run's inputs and evaluation to the active MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.config import ExperimentConfig

# The main model's headline metrics, also logged without a prefix so runs sort by them in the UI.
REPORT_METRICS = ("log_loss", "auc", "ece", "profit_regret", "uplift_vs_list")


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> dotted MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(flatten(key, v) if isinstance(v, dict) else {key: v})
    return out


@task(name="log_run_inputs", cache_policy=NO_CACHE)
def log_run_inputs(
    cfg: ExperimentConfig,
    config_path: str | None,
    data_path: Path,
    dataset: str,
    split: dict[str, Any],
    features: dict[str, Any],
    simulated: bool,
) -> None:
    """Params (the whole config, resolved split), tags, the GX result, features and config files."""
    import mlflow

    mlflow.log_params(flatten("", cfg.model_dump(mode="json")))
    mlflow.log_params(
        {
            "data_dir": str(data_path),
            "feature_hash": features["hash"],
            **{f"resolved_split.{k}": v for k, v in split.items()},
        }
    )
    mlflow.set_tags({"dataset": dataset, "model": cfg.model, "simulated": str(simulated)})
    validation = json.loads(Path(data_path, "validation.json").read_text())
    mlflow.log_dict(validation, "validation/validation.json")
    mlflow.log_dict(features, "features/metadata.json")
    if config_path:
        mlflow.log_text(Path(config_path).read_text(), "config/experiment.yaml")
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved.json")


@task(name="log_evaluation", cache_policy=NO_CACHE)
def log_evaluation(
    metrics: dict[str, dict[str, float]],
    curves: dict[str, Any],
    main: str,
    calibration_bins: int,
) -> None:
    """Per-model metrics side by side (`<model>/<metric>`), the headline metrics, and the plots."""
    import matplotlib.pyplot as plt
    import mlflow

    from mlops import plots

    for name, vals in metrics.items():
        mlflow.log_metrics({f"{name}/{k}": float(v) for k, v in vals.items() if np.isfinite(v)})
    head = metrics[main]
    mlflow.log_metrics(
        {k: float(head[k]) for k in REPORT_METRICS if k in head and np.isfinite(head[k])}
    )
    figures = {
        "plots/calibration.png": plots.calibration_figure(
            curves["y"], curves["offer_probs"], calibration_bins
        ),
        "plots/demand_curves.png": plots.demand_figure(curves, main),
        "plots/profit_vs_price.png": plots.profit_figure(curves, main),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plt.close(fig)
    mlflow.log_dict(metrics, "metrics.json")
