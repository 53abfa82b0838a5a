"""Log a training run's inputs and evaluation to the active MLflow run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.config import ExperimentConfig
from pricing.stats import REFERENCES

# The main model's headline metrics, also logged without a prefix so runs sort by them in the UI.
REPORT_METRICS = (
    "log_loss",
    "auc",
    "ece",
    "profit_regret",
    "gap_share",
    "lift_vs_uniform",
    "uplift_vs_list",
)


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> dotted MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(flatten(key, v) if isinstance(v, dict) else {key: v})
    return out


def prefect_links() -> dict[str, str]:
    """Tags that lead from the MLflow run back to the Prefect flow run that made it."""
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": flow_run.name}
    url = prefect_flow_run_url(flow_run.id)
    if url:
        tags["prefect.flow_run_url"] = url
    return {k: v for k, v in tags.items() if v}


def prefect_flow_run_url(flow_run_id: Any) -> str | None:
    """The flow run's page in the Prefect UI; None without a UI (a temporary server has none)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base and flow_run_id else None


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
    mlflow.set_tags(
        {
            "dataset": dataset,
            "model": cfg.model,
            "simulated": str(simulated),
            "kind": "training",
            **prefect_links(),
        }
    )
    validation = json.loads(Path(data_path, "validation.json").read_text())
    mlflow.log_dict(validation, "validation/validation.json")
    mlflow.log_dict(features, "features/metadata.json")
    if config_path:
        mlflow.log_text(Path(config_path).read_text(), "config/experiment.yaml")
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved.json")


def finite(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of `values` as floats (MLflow rejects None; nan means "not measured")."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = float(v)
    return out


def _model_role(name: str, main: str) -> str:
    if name == main:
        return "candidate"
    if name == "champion":
        return "champion"
    if name in REFERENCES:
        return "reference"
    return "baseline"


@task(name="log_evaluation", cache_policy=NO_CACHE)
def log_evaluation(
    metrics: dict[str, dict[str, float]],
    curves: dict[str, Any],
    main: str,
    calibration_bins: int,
    model_runs: dict[str, str] | None = None,
    experiment_id: str | None = None,
    champion_version: str | None = None,
) -> dict[str, str]:
    """Each model's test metrics in its own child run, under the same names; plots on the parent.

    `model_runs` are the child runs the models were trained in; the others (the list-price policy,
    the champion re-evaluated on this test set) get a child run here. The parent (the active run)
    keeps `<model>/<metric>` for every model and the main model's headline metrics unprefixed, as
    before. Returns every model's child run id.
    """
    import matplotlib.pyplot as plt
    import mlflow

    from mlops import plots

    parent = mlflow.active_run()
    runs = dict(model_runs or {})
    client = mlflow.MlflowClient()
    for name, vals in metrics.items():
        mlflow.log_metrics({f"{name}/{k}": v for k, v in finite(vals).items()})
        if parent is None:
            continue
        if name not in runs:
            label = f"champion-v{champion_version}" if name == "champion" else name
            child = client.create_run(
                experiment_id or parent.info.experiment_id,
                run_name=label,
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    "model": label,
                    "role": _model_role(name, main),
                    "kind": "model",
                },
            )
            runs[name] = child.info.run_id
            client.set_terminated(runs[name])
        _log_batch(client, runs[name], finite(vals))
    head = metrics[main]
    mlflow.log_metrics({k: v for k, v in finite(head).items() if k in REPORT_METRICS})
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
    return runs


def _log_batch(client: Any, run_id: str, values: dict[str, float]) -> None:
    """Metrics into a run that need not be the active one, 1000 at a time (MLflow's batch limit)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in values.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


@task(name="log_decision", cache_policy=NO_CACHE)
def log_decision(
    version: str, promotion: dict[str, Any], timings: dict[str, float], summary: str
) -> None:
    """The decision on the parent run: tags, the run's description (shown atop the run page), timings."""
    import mlflow

    mlflow.set_tags(
        {
            "promoted": str(promotion["promoted"]),
            "model_version": version,
            "decision": "promoted" if promotion["promoted"] else "rejected",
            "mlflow.note.content": summary,
        }
    )
    mlflow.log_metrics({f"time/{k}": v for k, v in timings.items()})


EXPERIMENT_NOTE = (
    "Training runs on the `{dataset}` data. Each `pricing run` (or `training` flow run) is one "
    "parent run: its inputs, plots and promotion decision (tags `decision`, `model_version`; the "
    "run's description). Under it, one child run per model (the candidate, every baseline, the "
    "list-price policy and the champion re-evaluated on the same test data), all with the same "
    "metric names: expand the parent, select its children and press Compare. The tag "
    "`prefect.flow_run_id` leads back to the Prefect flow run."
)


class TrainingRun(NamedTuple):
    """The MLflow parent run of a training flow run."""

    experiment_id: str
    run_id: str


@contextmanager
def training_run(
    tracking_uri: str, artifact_root: Path, dataset: str, model: str
) -> Iterator[TrainingRun]:
    """The parent run of one training flow run, in the dataset's experiment.

    Ended FINISHED when the block completes, FAILED when it raises and KILLED when a stop signal
    (SIGINT, SIGTERM) ended it (`mlops.tracking.tracked_run`), so a run is never left RUNNING.
    """
    from mlops import tracking

    tracking.configure(tracking_uri)
    exp_id = tracking.experiment_id(
        dataset, artifact_root, description=EXPERIMENT_NOTE.format(dataset=dataset)
    )
    name = f"{model}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    with tracking.tracked_run(experiment_id=exp_id, run_name=name) as run:
        yield TrainingRun(exp_id, run.info.run_id)
