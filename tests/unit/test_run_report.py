"""What a person reads about a training run: the MLflow bookkeeping (headline metrics, the table of
every metric, the experiment's runs view), the Prefect artifacts' text, and the links' ports."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tasks import report as R
from tasks import tracking as T

REPORT: dict[str, Any] = {
    "model": "lightgbm",
    "dataset": "sim",
    "split": {"n_train": 2000, "n_test": 600},
    "metrics": {
        "lightgbm": {"profit_regret": 0.12, "gap_share": 0.61, "uplift_vs_list": 0.5386,
                     "expected_profit": 1.374, "log_loss": 0.31, "auc": 0.71},
        "list_price": {"profit_regret": 0.35, "uplift_vs_list": 0.0, "auc": float("nan")},
    },
    "train": {"lightgbm": {"fit_seconds": 0.02680402737999188}},
    "registered_model": "price-response",
    "model_version": "3",
    "promoted": True,
    "promotion_reasons": ["first model: profit_regret 0.1200 beats the reference | 0.3500"],
    "decided_at": "2026-12-01T11:05:57+00:00",
    "links": {"MLflow run": "http://127.0.0.1:5300/#/experiments/1/runs/abc",
              "MLflow UI": "`make ui-mlflow` (or `make up`) serves these links"},
}  # fmt: skip


def test_the_metrics_table_is_rounded_with_units() -> None:
    rows = R.display_rows(REPORT, currency="EUR")
    assert [r["model"] for r in rows] == ["lightgbm", "list_price"]
    main = rows[0]
    assert main["profit_regret"] == "12.0 %" and main["gap_share"] == "61.0 %"
    assert main["uplift_vs_list"] == "+53.9 %" and main["expected_profit"] == "1.37 EUR"
    assert main["log_loss"] == "0.3100" and main["auc"] == "0.710"
    assert main["fit time"] == "27 ms"
    assert rows[1]["auc"] == "-" and rows[1]["fit time"] == "-"
    assert R.duration(12.34) == "12.3 s" and R.duration(245) == "4 min 05 s"


def test_the_run_description_is_valid_markdown_with_a_table() -> None:
    text = R.summary_markdown(REPORT)
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(REPORT["metrics"])  # header, alignment, one row per model
    assert len({line.count(" | ") for line in table if not line.startswith("|:")}) == 1
    assert table[2].startswith("| **lightgbm** | candidate | 12.0 % |")
    assert not any(line.startswith("* ") for line in lines), "a starred line is a bullet"
    assert "beats the reference \\| 0.3500" in text  # a pipe cannot break the table
    assert "[MLflow run](http://127.0.0.1:5300/#/experiments/1/runs/abc)" in text


def test_the_decision_artifact_has_no_heading_and_its_card_carries_the_reasons() -> None:
    body, brief = R.decision_markdown(REPORT), R.decision_brief(REPORT)
    assert not re.search(r"^#", body, flags=re.M)
    assert body.startswith(brief) and "**version 3 of price-response: PROMOTED" in brief
    assert "- first model: profit_regret" in brief
    assert "- [MLflow run](http://127.0.0.1:5300/" in body
    assert "- MLflow UI: `make ui-mlflow`" in body  # not a URL: plain text


def test_headline_metrics_put_the_primary_first_and_slices_last() -> None:
    assert T.headline("profit_regret")[:2] == ("profit_regret", "gap_share")
    assert T.headline("log_loss")[0] == "log_loss"
    assert T.headline("profit_regret")[-2:] == (
        "cold_items/profit_regret",
        "cold_users/profit_regret",
    )
    assert T.primary_metric({"profit_regret": float("nan"), "log_loss": 0.3}) == "log_loss"


def test_links_follow_the_configured_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow

    from mlops import tracking

    monkeypatch.setenv("MLFLOW_PORT", "5300")
    monkeypatch.setenv("PREFECT_PORT", "4500")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        runs = tracking.experiment_url("7")
        run = tracking.run_url("7", "abc")
    finally:
        mlflow.set_tracking_uri(previous)
    assert runs == (
        "http://127.0.0.1:5300/#/experiments/7/runs"
        "?workflowType=machine_learning&viewStateShareKey=training-runs"
    )
    assert run == "http://127.0.0.1:5300/#/experiments/7/runs/abc?workflowType=machine_learning"
    # a temporary server has no UI of its own (a test session's Prefect server would have one)
    monkeypatch.setattr(T, "prefect_flow_run_url", lambda flow_run_id: None)
    links = T.prefect_run_link("1234", "happy-run")
    assert links["Prefect run"] == "http://127.0.0.1:4500/runs/flow-run/1234"
    assert re.search(r"`make ui-prefect` .*serves it from /\S+\.db$", links["Prefect UI"])


def test_evaluation_logs_headline_metrics_and_a_table_of_every_metric(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    from mlops import plots, tracking

    monkeypatch.setattr(plots, "calibration_figure", lambda *a: plt.figure())
    monkeypatch.setattr(plots, "demand_figure", lambda *a: plt.figure())
    monkeypatch.setattr(plots, "profit_figure", lambda *a: plt.figure())
    extra = {f"ope_extra_{i}": float(i) for i in range(30)}
    metrics = {
        name: {"profit_regret": regret, "log_loss": 0.3, "auc": 0.7, "gap_share": 0.5,
               "uplift_vs_list": 0.2, "cold_items/profit_regret": 0.2, "cold_items/n": 9.0,
               "expected_revenue": 4.0, **extra}
        for name, regret in (("lightgbm", 0.1), ("logistic", 0.2), ("list_price", 0.4))
    }  # fmt: skip
    curves = {"y": None, "offer_probs": None}
    tracking.configure(mlflow_store)
    exp = tracking.experiment_id("sim", Path(mlflow_store.removeprefix("sqlite:///")).parent)
    with mlflow.start_run(experiment_id=exp) as parent:
        runs = T.log_evaluation.fn(
            metrics, curves, "lightgbm", 10, None, exp, None, "profit_regret"
        )
    client = mlflow.MlflowClient()
    top = {"profit_regret", "gap_share", "uplift_vs_list", "log_loss", "auc"}
    got = client.get_run(parent.info.run_id).data.metrics
    assert set(got) == top | {f"{m}/{k}" for m in metrics for k in top}
    child = client.get_run(runs["logistic"])
    assert set(child.data.metrics) == top | {"cold_items/profit_regret"}
    path = client.download_artifacts(runs["logistic"], T.ALL_METRICS_TABLE)
    (row,) = csv.DictReader(io.StringIO(Path(path).read_text()))
    assert row["model"] == "logistic" and float(row["ope_extra_29"]) == 29.0
    assert list(row)[1] == "profit_regret"
    table = client.download_artifacts(parent.info.run_id, T.ALL_METRICS_TABLE)
    assert len(Path(table).read_text().splitlines()) == 1 + len(metrics)
    tags = client.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.experiment.primaryMetric.name"] == "profit_regret"
    view = json.loads(tags[f"{tracking.SHARED_VIEW_TAG}{tracking.RUNS_VIEW}"])
    assert view["selectedColumns"][:2] == ["metrics.`profit_regret`", "tags.`decision`"]
