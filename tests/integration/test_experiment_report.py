"""`pricing experiment --report-json`: the report counts the offer-log lines it skipped as broken."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pandas as pd
import pytest

from pricing import experiment as X
from pricing import schema as S
from pricing.io import write_table

pytestmark = [pytest.mark.integration]
NAME = "price-response"
BROKEN = [b'{"offer_id": "torn:i1", "ts": "2026-06-0', b"\xff\xfe not utf-8", b"[1, 2, 3]"]


def _log(log_dir: Path, n_per_arm: int) -> None:
    """An outcome log of two arms (v1 serves champion, v2 challenger), then broken lines."""
    log_dir.mkdir(parents=True)
    base = pd.Timestamp("2026-06-01", tz="UTC")
    lines = []
    for k in range(n_per_arm):
        for j, arm in enumerate(("champion", "challenger")):
            ts = base + pd.Timedelta(seconds=2 * k + j)
            row = {
                S.OFFER_ID: f"q{k}-{j}:i1",
                "quote_id": f"q{k}-{j}",
                S.TS: ts.isoformat(),
                S.USER_ID: f"u{k}",
                S.ITEM_ID: "i1",
                S.PRICE: 10.0,
                S.PROPENSITY: 0.95,
                S.POLICY: f"{NAME}@{j + 1}",
                S.PURCHASED: k % 5 == 0,
                "outcome_ts": (ts + pd.Timedelta(seconds=1)).isoformat(),
                X.EXPERIMENT: "exp-1",
                X.ARM: arm,
            }
            lines.append(orjson.dumps(row))
    (log_dir / "outcomes.jsonl").write_bytes(b"\n".join([*lines, *BROKEN]) + b"\n")


def test_the_experiment_report_counts_skipped_log_lines(
    mlflow_store: str, tmp_path: Path, prefect_harness: None
) -> None:
    import mlflow

    from flows.cli import main
    from mlops import registry, tracking

    tracking.configure(mlflow_store)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source="file:///nonexistent/model", run_id=None)
    registry.set_alias(NAME, "1", "champion")
    registry.set_alias(NAME, "2", "challenger")
    items = pd.DataFrame(
        {
            S.ITEM_ID: ["i1"],
            S.TITLE: ["one"],
            S.CATEGORY: ["c"],
            S.BRAND: ["b"],
            S.LIST_PRICE: [10.0],
            S.UNIT_COST: [6.0],
        }
    )
    write_table(items, tmp_path / "data", S.ITEMS)
    _log(tmp_path / "offer_log", 50)
    report = tmp_path / "report.json"

    rc = main(
        [
            "experiment",
            "--offer-log-dir",
            str(tmp_path / "offer_log"),
            "--data-dir",
            str(tmp_path / "data"),
            "--experiment",
            "exp-1",
            "--no-promote",
            "--report-json",
            str(report),
        ]
    )
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["offer_log_skipped_lines"] == len(BROKEN)
    assert sum(a["quotes"] for a in result["arms"]) == 100  # the broken lines are not in the arms
