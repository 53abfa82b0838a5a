"""The `monitor` flow: data drift and live conversion against prediction, logged to MLflow.

Each run publishes its drift report as a Prefect artifact (`drift-report`). When an alert fires, it
emits the event `pricing.monitor.alert` (an automation can act on it: notify, retrain) and the run
ends Failed with the alerts as its message, so a red run in the UI means "look at the traffic".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops import tracking
from mlops.settings import get_settings
from pricing import schema as S
from pricing.io import ContractError, find_table_file
from tasks.monitoring import monitor_live_traffic

# Alert thresholds: PSI > 0.25 is a large shift; |z| > 4 means live conversion is off the prediction.
PSI_ALERT = 0.25
Z_ALERT = 4.0
ALERT_EVENT = "pricing.monitor.alert"


class DriftAlert(RuntimeError):
    """An alert fired: the run fails with this message (the report is already published)."""


def alerts_of(report: dict[str, Any]) -> list[str]:
    """The alerts a report raises, one sentence each (empty: nothing to look at)."""
    alerts = []
    if report.get("psi_price_ratio", 0) > PSI_ALERT:
        alerts.append(f"price mix drifted: PSI {report['psi_price_ratio']:.3f} > {PSI_ALERT}")
    skipped = report.get("offer_log_skipped_lines", 0)
    if skipped:
        alerts.append(f"offer log: {skipped} unreadable or incomplete lines skipped")
    z = report.get("live_z", float("nan"))
    if isinstance(z, float) and math.isfinite(z) and abs(z) > Z_ALERT:
        alerts.append(
            f"live conversion {report['live_observed_rate']:.4f} vs predicted "
            f"{report['live_predicted_rate']:.4f} (z = {z:.1f})"
        )
    return alerts


def drift_markdown(report: dict[str, Any], data_dir: str, offer_log_dir: str) -> str:
    """The report as Markdown: the verdict, the alerts, every number."""
    alerts = report.get("alerts", [])
    lines = [
        f"## Live traffic: {'ALERT' if alerts else 'no alert'}",
        "",
        f"Training data `{data_dir}` against the offer log `{offer_log_dir}` "
        f"(thresholds: PSI > {PSI_ALERT}, |z| > {Z_ALERT}).",
        "",
        *(f"- **{a}**" for a in alerts),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for key, value in report.items():
        if key == "alerts":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


@task(name="log_monitoring_run", cache_policy=NO_CACHE)
def log_monitoring_run(report: dict[str, Any]) -> str:
    """The report's numbers and alerts in a run of the `monitoring` experiment; its run id."""
    settings = get_settings()
    tracking.configure(settings.tracking_uri)
    import mlflow

    with tracking.tracked_run(
        experiment_id=tracking.experiment_id("monitoring", settings.artifact_root)
    ) as run:
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in report.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
        mlflow.set_tag("alerts", "; ".join(report.get("alerts", [])) or "none")
        return str(run.info.run_id)


@task(name="publish_drift_report", cache_policy=NO_CACHE)
def publish_drift_report(report: dict[str, Any], data_dir: str, offer_log_dir: str) -> None:
    """The drift report as the run's artifact; an event per alerting run for automations."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    alerts = report.get("alerts", [])
    create_markdown_artifact(
        markdown=drift_markdown(report, data_dir, offer_log_dir),
        key="drift-report",
        description="; ".join(alerts) or "no alert",
    )
    if alerts:
        emit_event(
            event=ALERT_EVENT,
            resource={"prefect.resource.id": f"pricing.monitor.{Path(data_dir).resolve().name}"},
            payload={"alerts": alerts, "data_dir": data_dir, "offer_log_dir": offer_log_dir},
        )


@flow(name="monitor", log_prints=True)
def monitor(data_dir: str, offer_log_dir: str) -> dict[str, Any]:
    """Compare live traffic (the scorer's offer log) with the data the champion was trained on.

    Returns the report when no alert fires; fails with the alerts (after publishing the report and
    emitting `pricing.monitor.alert`) when one does.
    """
    if find_table_file(data_dir, S.OFFERS) is None:
        raise ContractError(
            f"no training data in {data_dir} (offers table missing): run the training flow on "
            "it first, e.g. `pricing demo` or `pricing simulate --out data/sim`"
        )
    report = monitor_live_traffic(Path(data_dir), Path(offer_log_dir))
    report["alerts"] = alerts_of(report)
    report["mlflow_run_id"] = log_monitoring_run(report)
    publish_drift_report(report, data_dir, offer_log_dir)
    if report["alerts"]:
        raise DriftAlert("; ".join(report["alerts"]))
    get_run_logger().info("live traffic: no alert (%d live offers)", report.get("live_offers", 0))
    return report
