"""The `monitor` flow: data drift and live conversion against prediction, logged to MLflow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import flow

from mlops import tracking
from mlops.settings import get_settings
from tasks.monitoring import monitor_live_traffic

# Alert thresholds: PSI > 0.25 is a large shift; |z| > 4 means live conversion is off the prediction.
PSI_ALERT = 0.25
Z_ALERT = 4.0


@flow(name="monitor", log_prints=True)
def monitor(data_dir: str, offer_log_dir: str) -> dict[str, Any]:
    """Compare live traffic (the scorer's offer log) with the data the champion was trained on."""
    report = monitor_live_traffic(Path(data_dir), Path(offer_log_dir))
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
    report["alerts"] = alerts
    settings = get_settings()
    tracking.configure(settings.tracking_uri)
    import mlflow

    with mlflow.start_run(
        experiment_id=tracking.experiment_id("monitoring", settings.artifact_root)
    ):
        mlflow.log_metrics({k: float(v) for k, v in report.items() if isinstance(v, (int, float))})
        mlflow.set_tag("alerts", "; ".join(alerts) or "none")
    print(report)
    return report
