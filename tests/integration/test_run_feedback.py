"""What a training run tells its operator: each phase before it starts, and a final state that
carries the decision and the headline metrics (what `prefect deployment run --watch` ends with);
a data error printed once by the real command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pricing import schema as S

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


class _Lines(logging.Handler):
    """The messages logged to a logger, in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_flow_announces_each_phase_and_ends_with_the_decision_in_its_state(
    prefect_harness: None,
    mlflow_store: str,
    tiny_data_dir: Path,
    tmp_path: Path,
) -> None:
    import yaml

    from flows.training import headline, training

    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"model": "logistic", "baselines": ["uniform"]}))
    flow_log, said = logging.getLogger("prefect.flow_runs"), _Lines()
    flow_log.addHandler(said)
    try:
        state = training(data_dir=str(tiny_data_dir), config_path=str(config), return_state=True)
    finally:
        flow_log.removeHandler(said)
    assert state.is_completed(), state
    result = state.result()
    assert result["model"] == "logistic" and result["model_version"] == "1"
    assert state.message == headline(result)
    assert state.message.startswith("version 1 of price-response: ")
    assert "logistic: profit_regret " in state.message and "log_loss " in state.message

    phases = [
        "validating ",
        "building features ",
        "training logistic (model 1 of 2)",
        "training uniform (model 2 of 2)",
        "evaluating ",
        "registering logistic ",
        "deciding promotion ",
        "training done: version 1 of price-response",
    ]
    at = [next((i for i, m in enumerate(said.lines) if m.startswith(p)), -1) for p in phases]
    assert -1 not in at and at == sorted(at), (list(zip(phases, at, strict=True)), said.lines)
    assert said.lines[at[-1]] == f"training done: {state.message}"


def test_a_data_error_is_printed_once_and_exits_1(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`pricing run` on offers without `purchased`: Prefect's four lines about the failure stay
    off the terminal; the command's own `error:` line says it once."""
    data = tmp_path / "data"
    data.mkdir()
    for table in (S.ITEMS, S.EVENTS, S.OFFERS):
        df = pd.read_parquet(tiny_data_dir / f"{table}.parquet")
        if table == S.OFFERS:
            df = df.drop(columns=[S.PURCHASED])
        df.to_parquet(data / f"{table}.parquet")
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},  # a temporary server
        "PRICING_RUNS_DIR": str(tmp_path / "runs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    argv = ["run", "--data-dir", str(data), "--config", str(REPO / "configs" / "lightgbm.yaml")]
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert out.count("required column(s) 'purchased' missing") == 1, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "table 'offers'" in errors[0]
    assert "Traceback" not in out
    assert f"validating {data} against the data contract" in out  # the phase was announced
