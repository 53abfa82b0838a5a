"""What a person reads about a training run: the metrics table, the decision, the links.

The same text serves the Prefect artifacts (`publish_run_report`), the MLflow run's description and
the summary `pricing run` prints; the plain functions take the run report (the flow's result).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pricing.stats import REFERENCES

# The columns of the metrics table, in order: the policy's money first, then the fit.
KEY_METRICS = ("profit_regret", "gap_share", "log_loss", "auc", "ece")


class Stopwatch:
    """Wall time per step of a flow (`with clock("train"): ...`), for the report's `timings_s`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = time.perf_counter() - t

    def total(self) -> dict[str, float]:
        """The steps and `total` (since the stopwatch was made)."""
        return {**self.timings, "total": time.perf_counter() - self.start}


def _fmt(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "-"


def model_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: name, role, the key metrics (None when not measured), fit seconds."""
    main = report["model"]
    metrics: dict[str, dict[str, float]] = report["metrics"]
    train: dict[str, dict[str, float]] = report.get("train", {})
    names = [main, *(n for n in metrics if n != main)]
    rows = []
    for name in names:
        vals = metrics.get(name, {})
        role = "candidate" if name == main else "reference" if name in REFERENCES else "baseline"
        row: dict[str, Any] = {"model": name, "role": role}
        for k in KEY_METRICS:
            v = vals.get(k)
            row[k] = float(v) if isinstance(v, int | float) and math.isfinite(v) else None
        fit = train.get(name, {}).get("fit_seconds")
        row["fit_seconds"] = round(float(fit), 2) if fit is not None else None
        rows.append(row)
    return rows


def decision_headline(report: dict[str, Any]) -> str:
    """`version 3 of price-response: PROMOTED to champion` (or `not promoted`)."""
    verdict = "PROMOTED to champion" if report.get("promoted") else "not promoted"
    return f"version {report['model_version']} of {report['registered_model']}: {verdict}"


def decision_markdown(report: dict[str, Any]) -> str:
    """The promotion decision with its reasons and the links to MLflow (a Prefect artifact)."""
    links = report.get("links", {})
    lines = [
        f"## {decision_headline(report)}",
        "",
        ("Promoted" if report.get("promoted") else "Rejected") + " because:",
        *(f"- {r}" for r in report.get("promotion_reasons", [])),
        "",
        f"Champion before: {report.get('previous_champion') or 'none'}; decided at "
        f"{report.get('decided_at', '?')}.",
    ]
    if links:
        lines += ["", *(f"- {name}: {url}" for name, url in links.items())]
    return "\n".join(lines)


def summary_text(report: dict[str, Any]) -> str:
    """The one-screen summary `pricing run` prints: models, the decision, where to look next."""
    main, dataset = report["model"], report.get("dataset", "?")
    split = report.get("split", {})
    lines = [
        f"training run: {main} on {dataset} (train {split.get('n_train', '?')}, "
        f"test {split.get('n_test', '?')} offers)",
        "",
    ]
    rows = model_rows(report)
    width = max(len(r["model"]) for r in rows) + 2
    lines.append(f"  {'model':<{width}}" + "".join(f"{k:>16}" for k in KEY_METRICS))
    for row in rows:
        mark = "*" if row["model"] == main else " "
        lines.append(
            f"{mark} {row['model']:<{width}}" + "".join(f"{_fmt(row[k]):>16}" for k in KEY_METRICS)
        )
    lines += ["", decision_headline(report)]
    lines += [f"  - {r}" for r in report.get("promotion_reasons", [])]
    links = report.get("links", {})
    if links:
        lines.append("")
        lines += [f"{name + ':':<16}{url}" for name, url in links.items()]
    return "\n".join(lines)


@task(name="publish_run_report", task_run_name="publish-report-v{version}", cache_policy=NO_CACHE)
def publish_run_report(report: dict[str, Any], version: str) -> list[str]:
    """Prefect artifacts of the run: the metrics table and the promotion decision; their ids."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    mlflow_url = report.get("links", {}).get("MLflow run", "")
    table = create_table_artifact(
        table=model_rows(report),
        key="training-metrics",
        description=f"Test metrics of every model of this run (MLflow: {mlflow_url})",
    )
    decision = create_markdown_artifact(
        markdown=decision_markdown(report),
        key="promotion-decision",
        description=decision_headline(report),
    )
    if mlflow_url:
        get_run_logger().info("MLflow run: %s", mlflow_url)
    return [str(table), str(decision)]
