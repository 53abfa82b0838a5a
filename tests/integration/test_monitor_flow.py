"""The `monitor` flow: its drift report is a Prefect artifact; an alert fails the run (and emits an
event); a missing training folder is one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import task

pytestmark = [pytest.mark.integration]


def _artifacts(flow_run_id: UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=flt)}


def _fake_traffic(report: dict[str, Any]) -> Any:
    @task(name="monitor_live_traffic")
    def fake(data_dir: Path, offer_log_dir: Path) -> dict[str, Any]:
        return dict(report)

    return fake


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    out.mkdir()
    (out / "offers.parquet").write_bytes(b"")  # only its presence is checked before the task
    return out


@pytest.mark.parametrize(
    ("report", "alert"),
    [
        ({"live_offers": 500, "psi_price_ratio": 0.02, "offer_log_skipped_lines": 0}, None),
        ({"live_offers": 500, "psi_price_ratio": 0.41, "offer_log_skipped_lines": 0}, "PSI 0.410"),
    ],
)
def test_the_drift_report_is_an_artifact_and_an_alert_fails_the_run(
    prefect_harness: None,
    mlflow_store: str,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    report: dict[str, Any],
    alert: str | None,
) -> None:
    import flows.monitor as M

    monkeypatch.setattr(M, "monitor_live_traffic", _fake_traffic(report))
    state = M.monitor(str(data_dir), str(tmp_path / "offers"), return_state=True)
    markdown = _artifacts(state.state_details.flow_run_id)["drift-report"].data
    assert "psi_price_ratio" in markdown
    if alert is None:
        assert state.is_completed()
        assert state.result()["alerts"] == [] and "no alert" in markdown
    else:
        assert state.is_failed()
        assert alert in (state.message or "") and "ALERT" in markdown and alert in markdown
        with pytest.raises(M.DriftAlert, match="price mix drifted"):
            state.result()


def test_a_missing_training_folder_is_one_clear_error(
    prefect_harness: None, tmp_path: Path
) -> None:
    from flows.monitor import monitor
    from pricing.io import ContractError

    with pytest.raises(ContractError, match="no training data in"):
        monitor(str(tmp_path / "nothing"), str(tmp_path / "offers"))
