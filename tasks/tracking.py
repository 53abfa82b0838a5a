"""Log a training run's inputs and evaluation to the active MLflow run."""

from __future__ import annotations

import json
import os
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
from pricing.stats import REFERENCES, SLICES

# The headline metrics, in reading order: the policy's money first, then the fit. The main model's
# are also logged without a prefix on the parent run (its row in the runs table), every model's as
# `<model>/<metric>` there, and each child run logs them (its primary metric first) with the
# cold-start slices' primary metric (`cold_items/<primary>`, `cold_users/<primary>`). Everything
# the evaluation measured is in the `metrics/all.csv` table of each run (and `metrics.json`).
REPORT_METRICS = (
    "profit_regret",
    "gap_share",
    "lift_vs_uniform",
    "uplift_vs_list",
    "log_loss",
    "auc",
    "ece",
)
ALL_METRICS_TABLE = "metrics/all.csv"
# The store `make ui-mlflow` and `make up` serve when MLFLOW_TRACKING_URI is not set.
DEFAULT_STORE = "sqlite:///mlruns/mlflow.db"


def headline(primary: str, slices: bool = True) -> tuple[str, ...]:
    """The headline metric names, `primary` first, then (`slices`) its cold-start slices."""
    names = [primary, *(m for m in REPORT_METRICS if m != primary)]
    if slices:
        names += [f"{s}/{primary}" for s in SLICES]
    return tuple(names)


def primary_metric(main_metrics: dict[str, Any]) -> str:
    """The promotion rule's primary metric for these metrics: `profit_regret` when the data had
    ground truth (it is measured), else `log_loss`."""
    return "profit_regret" if finite(main_metrics).get("profit_regret") is not None else "log_loss"


def ordered(values: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    """`values` restricted to `names`, in that order."""
    return {k: values[k] for k in names if k in values}


def metrics_csv(rows: dict[str, dict[str, Any]], primary: str) -> str:
    """Every metric of every model as CSV: one row per model, the headline columns first."""
    import csv
    import io

    seen = {k for vals in rows.values() for k in finite(vals)}
    first = [k for k in headline(primary) if k in seen]
    columns = first + sorted(seen - set(first))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", *columns])
    for name, vals in rows.items():
        got = finite(vals)
        writer.writerow([name, *(repr(got[k]) if k in got else "" for k in columns)])
    return out.getvalue()


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


def prefect_store() -> str | None:
    """The sqlite file of Prefect's local database (where a temporary server keeps its runs), or
    None when Prefect uses another database."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    return text.split(":///", 1)[1] if text.startswith("sqlite") and ":///" in text else None


def prefect_run_link(flow_run_id: Any, flow_run_name: str | None) -> dict[str, str]:
    """Where the flow run can be seen afterwards: its page on the configured Prefect server, or,
    for a temporary server (`pricing run` without PREFECT_API_URL), the page `make ui-prefect`
    shows it on: the temporary server keeps its runs in the local database that one serves."""
    url = prefect_flow_run_url(flow_run_id)
    if url:
        return {"Prefect run": url}
    port = os.environ.get("PREFECT_PORT") or "4200"
    store = prefect_store()
    if not flow_run_id or store is None:
        return {"Prefect run": f"'{flow_run_name}' (not kept: Prefect's database is not local)"}
    return {
        "Prefect run": f"http://127.0.0.1:{port}/runs/flow-run/{flow_run_id}",
        "Prefect UI": f"`make ui-prefect` (or `make up`) serves it from {store}",
    }


def run_links(experiment_id: str, run_id: str, registered: str, version: str) -> dict[str, str]:
    """Where to look at a training run: MLflow's run, runs table, Compare view of its models and
    version pages, how to open the MLflow UI when no server is configured, the Prefect flow run."""
    import mlflow
    from prefect.runtime import flow_run

    from mlops import tracking

    children = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    links = {
        "MLflow run": tracking.run_url(experiment_id, run_id),
        "MLflow runs": tracking.experiment_url(experiment_id),
    }
    if children:
        ids = [c.info.run_id for c in sorted(children, key=lambda c: c.info.start_time)]
        links["MLflow compare"] = tracking.compare_url(experiment_id, ids)
    links["MLflow version"] = tracking.version_url(registered, version)
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        store = "" if uri == DEFAULT_STORE else f"MLFLOW_TRACKING_URI={uri} "
        links["MLflow UI"] = f"`{store}make ui-mlflow` (or `make up`) serves these links"
    return {**links, **prefect_run_link(flow_run.id, flow_run.name)}


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
    primary: str | None = None,
) -> dict[str, str]:
    """Each model's test metrics in its own child run, under the same names; plots on the parent.

    `model_runs` are the child runs the models were trained in; the others (the list-price policy,
    the champion re-evaluated on this test set) get a child run here. Each child run logs the
    headline metrics (`headline(primary)`, the primary metric first) and `metrics/all.csv` (every
    metric); the parent (the active run) logs the main model's headline metrics unprefixed, every
    model's as `<model>/<metric>`, and `metrics/all.csv` with a row per model. The experiment is
    tagged as a model-training experiment whose runs table shows `primary` and the decision.
    Returns every model's child run id.
    """
    import matplotlib.pyplot as plt
    import mlflow

    from mlops import plots

    parent = mlflow.active_run()
    primary = primary or primary_metric(metrics[main])
    runs = dict(model_runs or {})
    client = mlflow.MlflowClient()
    top = headline(primary, slices=False)
    for name, vals in metrics.items():
        mlflow.log_metrics({f"{name}/{k}": v for k, v in ordered(finite(vals), top).items()})
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
        _log_batch(client, runs[name], ordered(finite(vals), headline(primary)))
        client.log_text(runs[name], metrics_csv({name: vals}, primary), ALL_METRICS_TABLE)
    mlflow.log_metrics(ordered(finite(metrics[main]), top))
    mlflow.log_text(metrics_csv(metrics, primary), ALL_METRICS_TABLE)
    if parent is not None:
        set_experiment_view(experiment_id or parent.info.experiment_id, primary)
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


def runs_view(primary: str) -> dict[str, Any]:
    """The runs table's saved view: the primary metric and the decision as columns."""
    columns = [f"metrics.`{primary}`", "tags.`decision`", "tags.`model_version`", "tags.`role`"]
    return {"selectedColumns": [*columns, "attributes.`Duration`"]}


def set_experiment_view(experiment_id: str, primary: str) -> None:
    """Tag the experiment as model training (MLflow 3's `mlflow.experimentKind`), name its primary
    metric, and store the runs view that `mlops.tracking.experiment_url` opens."""
    import mlflow

    from mlops import tracking

    client = mlflow.MlflowClient()
    tags = {
        "mlflow.experimentKind": "custom_model_development",
        "mlflow.experiment.primaryMetric.name": primary,
        f"{tracking.SHARED_VIEW_TAG}{tracking.RUNS_VIEW}": json.dumps(runs_view(primary)),
    }
    for key, value in tags.items():
        client.set_experiment_tag(experiment_id, key, value)


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
    """The decision on the parent run: tags, the run's description (`summary`, Markdown, shown atop
    the run page), timings (`time/<step>`, seconds)."""
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
    "parent run: its inputs, plots and promotion decision (columns `decision`, `model_version`; "
    "the run's description has the models' table). Under it, one child run per model (the "
    "candidate, every baseline, the list-price policy and the champion re-evaluated on the same "
    "test data), all with the same headline metrics, the primary one first: expand the parent "
    "(+), select its children and press Compare. `metrics/all.csv` in each run has every metric. "
    "The tag `prefect.flow_run_id` leads back to the Prefect flow run."
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
