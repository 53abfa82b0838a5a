"""The whole `training` flow under a Prefect test server, MLflow in tmp_path, on a tiny market."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing import schema as S

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _loses_to_champion(reason: str) -> bool:
    """The starved model loses to the champion on the primary metric or on the guard metric."""
    return "does not beat champion" in reason or ("worsens" in reason and "champion" in reason)


def _config(where: Path, baselines: list[str], tolerance: float, model: str = "lightgbm") -> Path:
    """configs/default.yaml with this test's model, baselines and baseline tolerance."""
    import yaml

    raw = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    raw["model"], raw["baselines"] = model, baselines
    raw["promotion"]["baseline_tolerance"] = tolerance
    path = where / f"config-{model}-{'-'.join(baselines)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def data_dir(tiny_data_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(tiny_data_dir, out)
    return out


def test_training_registers_promotes_then_keeps_a_worse_challenger_out(
    prefect_harness: None, mlflow_store: str, data_dir: Path
) -> None:
    from flows.training import training
    from mlops import registry, tracking
    from mlops.registry import load_champion

    # The default config with the baselines this scenario names; a baseline may not take the
    # champion's place here (that path has its own test below).
    config = _config(data_dir.parent, baselines=["logistic", "lightgbm_text"], tolerance=1.0)
    first = training(data_dir=str(data_dir), model="lightgbm", config_path=str(config))
    # the report's public shape
    for key in ("model", "mlflow_run_id", "registered_model", "model_version", "promoted"):
        assert key in first
    assert set(first["split"]) >= {"test_start", "n_train", "n_test"}
    assert set(first["metrics"]) == {
        "lightgbm",
        "logistic",
        "lightgbm_text",
        "list_price",
        "oracle_uniform",
    }
    assert first["promoted_model"] == "lightgbm" and first["beaten_by"] is None
    for name in ("lightgbm", "logistic", "lightgbm_text"):
        m = first["metrics"][name]
        assert {"log_loss", "auc", "ece", "profit_regret", "uplift_vs_list"} <= set(m)
        assert 0 <= m["ece"] <= 1 and 0 <= m["auc"] <= 1
        assert m["profit_regret"] < first["metrics"]["list_price"]["profit_regret"]
        assert np.isfinite(m["ope_dr"]) and np.isfinite(m["ope_true_value"])
    assert first["model_version"] == "1" and first["promoted"] is True
    assert any("beats the reference" in r for r in first["promotion_reasons"])
    assert first["scorer_notified"] is False  # no scorer configured
    assert first["feature_cache_hit"] is False

    second = training(data_dir=str(data_dir), config_path=str(CONFIGS / "worse.yaml"))
    assert second["model_version"] == "2"
    assert second["promoted"] is False
    assert any(_loses_to_champion(r) for r in second["promotion_reasons"])
    assert second["feature_cache_hit"] is True
    tracking.configure(mlflow_store)
    assert registry.alias_version("price-response", "champion") == "1"
    assert registry.alias_version("price-response", "challenger") == "2"
    stored = registry.version_metrics("price-response", "2")
    assert stored["profit_regret"] == pytest.approx(second["metrics"]["lightgbm"]["profit_regret"])
    record = registry.version_evaluation("price-response", "2")
    assert record["dataset"] == "data" and len(record["data_hash"]) == 16
    assert record["split"] == second["split"] and "guardrails" in record["protocol"]
    assert record["data_hash"] == registry.version_evaluation("price-response", "1")["data_hash"]

    # the registered pyfunc loads and predicts for the input schema it was logged with
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model("models:/price-response@champion")
    offers = pd.read_parquet(data_dir / "offers.parquet").head(5)
    probs = pyfunc.predict(offers[[S.USER_ID, S.ITEM_ID, S.PRICE]])
    assert np.all((probs > 0) & (probs < 1))
    handle = load_champion("price-response")
    assert handle is not None and handle.version == "1" and handle.guardrails["band_low"] == 0.7

    # MLflow run has the plots, validation result and config
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "plots")}
    assert {"plots/calibration.png", "plots/demand_curves.png", "plots/profit_vs_price.png"} <= arts

    _assert_models_side_by_side(client, first, second)
    _assert_decisions_read_well(client, first, second)
    _assert_prefect_artifacts(first)


def _children(client: object, run_id: str) -> dict[str, object]:
    parent = client.get_run(run_id)  # type: ignore[attr-defined]
    runs = client.search_runs(  # type: ignore[attr-defined]
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    return {r.data.tags["model"]: r for r in runs}


def _assert_models_side_by_side(client: object, first: dict, second: dict) -> None:
    """One child run per model with the same metric names; the parent keeps the decision."""
    kids = _children(client, first["mlflow_run_id"])
    assert set(kids) == {"lightgbm", "logistic", "lightgbm_text", "list_price", "oracle_uniform"}
    assert {n: r.info.run_id for n, r in kids.items()} == first["mlflow_child_runs"]
    roles = {n: r.data.tags["role"] for n, r in kids.items()}
    assert roles == {
        "lightgbm": "candidate",
        "logistic": "baseline",
        "lightgbm_text": "baseline",
        "list_price": "reference",
        "oracle_uniform": "reference",
    }
    for name, run in kids.items():
        metrics = run.data.metrics
        assert {"profit_regret", "uplift_vs_list", "gap_share"} <= set(metrics), name
        assert name == "oracle_uniform" or "log_loss" in metrics, name
        assert metrics["profit_regret"] == pytest.approx(first["metrics"][name]["profit_regret"])
        assert not any(k.startswith(f"{name}/") for k in metrics), "no model prefix in a child"
        assert run.info.status == "FINISHED"
    assert "train.fit_seconds" in kids["lightgbm"].data.metrics
    assert "lightgbm.n_estimators" in kids["lightgbm"].data.params
    parent = client.get_run(first["mlflow_run_id"])  # type: ignore[attr-defined]
    assert parent.data.metrics["lightgbm/log_loss"] == pytest.approx(
        first["metrics"]["lightgbm"]["log_loss"]
    )  # the parent keeps the prefixed metrics as before
    assert parent.data.tags["decision"] == "promoted"
    assert parent.data.tags["prefect.flow_run_id"] == first["prefect_flow_run_id"]
    assert "PROMOTED" in parent.data.tags["mlflow.note.content"]
    experiment = client.get_experiment(parent.info.experiment_id)  # type: ignore[attr-defined]
    assert "child run per model" in experiment.tags["mlflow.note.content"]
    # the second run re-evaluated the champion: a child run of its own, same names
    kids2 = _children(client, second["mlflow_run_id"])
    assert "champion-v1" in kids2 and kids2["champion-v1"].data.tags["role"] == "champion"
    assert "profit_regret" in kids2["champion-v1"].data.metrics
    assert "champion" not in second["metrics"]


def _assert_decisions_read_well(client: object, first: dict, second: dict) -> None:
    """Version descriptions say why; decision times are ISO 8601."""
    from datetime import datetime

    v1 = client.get_model_version("price-response", "1")  # type: ignore[attr-defined]
    v2 = client.get_model_version("price-response", "2")  # type: ignore[attr-defined]
    assert v1.description.startswith("Promoted because:")
    assert "beats the reference" in v1.description
    assert v2.description.startswith("Rejected because:")
    assert any(_loses_to_champion(line) for line in v2.description.splitlines())
    for v, report in ((v1, first), (v2, second)):
        assert datetime.fromisoformat(v.tags["decided_at"]).tzinfo is not None
        assert v.tags["decided_at"] == report["decided_at"]
        assert f"Decided at {report['decided_at']}" in v.description
    model = client.get_registered_model("price-response")  # type: ignore[attr-defined]
    assert "`champion` alias is what the scorer serves" in model.description


def _assert_prefect_artifacts(report: dict) -> None:
    """The flow run carries the metrics table and the promotion decision as artifacts."""
    import json
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run = ArtifactFilterFlowRunId(any_=[UUID(report["prefect_flow_run_id"])])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run))
    by_key = {a.key: a for a in artifacts}
    assert {"training-metrics", "promotion-decision"} <= set(by_key)
    table = by_key["training-metrics"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["model"] for r in rows][0] == "lightgbm"
    assert {r["model"] for r in rows} == {
        "lightgbm",
        "logistic",
        "lightgbm_text",
        "list_price",
        "oracle_uniform",
    }
    decision = by_key["promotion-decision"].data
    assert "PROMOTED" in decision and "beats the reference" in decision
    assert report["links"]["MLflow run"] in decision


def test_bad_data_fails_the_flow_with_a_clear_message(
    prefect_harness: None, mlflow_store: str, data_dir: Path
) -> None:
    from flows.training import training
    from tasks.validation import ValidationFailed

    offers = pd.read_parquet(data_dir / "offers.parquet")
    offers.loc[offers.index[: len(offers) // 10], S.PURCHASED] = 7  # 10% broken labels
    offers.to_parquet(data_dir / "offers.parquet", index=False)
    with pytest.raises(ValidationFailed, match="offers"):
        training(data_dir=str(data_dir), model="logistic")
    q = pd.read_parquet(data_dir / "quarantine" / "offers.parquet")
    assert len(q) == len(offers) // 10 and q["reason"].str.contains("purchased").all()


def test_an_unloadable_champion_is_compared_on_stored_metrics_or_blocks_unless_forced(
    prefect_harness: None, mlflow_store: str, data_dir: Path, tmp_path: Path
) -> None:
    """Issue 10.1: with the champion's artifacts deleted, a worse challenger was promoted."""
    import json

    import mlflow

    from flows.training import training
    from mlops import registry, tracking

    first = training(data_dir=str(data_dir), model="lightgbm")
    assert first["promoted"] and first["model_version"] == "1"
    shutil.rmtree(tmp_path / "mlruns" / "artifacts")  # the champion cannot be loaded any more

    # its stored metrics were measured on the same data, split and protocol: they count
    worse = training(data_dir=str(data_dir), config_path=str(CONFIGS / "worse.yaml"))
    assert worse["promoted"] is False
    assert any(_loses_to_champion(r) for r in worse["promotion_reasons"])
    assert not any("by default" in r for r in worse["promotion_reasons"])

    # without them the champion is not comparable: blocked, with the reason
    tracking.configure(mlflow_store)
    client = mlflow.MlflowClient()
    client.delete_model_version_tag("price-response", "1", "evaluation")
    blocked = training(data_dir=str(data_dir), model="lightgbm")
    assert blocked["promoted"] is False
    assert any("champion not comparable" in r for r in blocked["promotion_reasons"])
    assert registry.alias_version("price-response", "champion") == "1"

    # an operator forces it: promoted, and the version says so
    forced = training(data_dir=str(data_dir), model="lightgbm", force_promote=True)
    assert forced["promoted"] is True and forced["forced"] is True
    version = forced["model_version"]
    tracking.configure(mlflow_store)
    assert registry.alias_version("price-response", "champion") == version
    tag = json.loads(client.get_model_version("price-response", version).tags["forced_promotion"])
    assert tag["forced"] is True and tag["previous_champion"] == "1"


def test_a_worker_rank_ends_with_a_normal_worker_result_not_a_crash(
    prefect_harness: None, mlflow_store: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10.8: rank 1 of a DDP launch ended with SystemExit, recorded as a Crashed flow run."""
    from flows.training import training
    from mlops.models import LightGBMDemand

    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "1")

    def worker_fit(self: object, *args: object, **kwargs: object) -> None:
        raise SystemExit(0)  # what BertDemand.fit does on a worker rank once its share is trained

    monkeypatch.setattr(LightGBMDemand, "fit", worker_fit)
    state = training(data_dir=str(data_dir), model="lightgbm", return_state=True)
    assert state.is_completed(), state
    assert state.result() == {"model": "lightgbm", "rank": 1, "role": "worker", "trained": True}


def test_a_baseline_that_beats_the_candidate_is_promoted_in_its_place(
    prefect_harness: None, mlflow_store: str, data_dir: Path
) -> None:
    """Only what wins is promoted: the non-personalized candidate loses to the logistic baseline of
    its own run, is registered but not promoted (the reason names the baseline), and the baseline
    goes through the same gate and becomes the champion."""
    from flows.training import training
    from mlops import registry, tracking

    config = _config(data_dir.parent, baselines=["logistic"], tolerance=0.001, model="uniform")
    result = training(data_dir=str(data_dir), config_path=str(config))
    regret = {n: result["metrics"][n]["profit_regret"] for n in ("uniform", "logistic")}
    assert regret["logistic"] < regret["uniform"] - 0.001, regret  # the premise
    assert result["beaten_by"] == "logistic"
    assert any("baseline logistic" in r for r in result["promotion_reasons"])
    baseline = result["baseline_promotion"]
    assert baseline["model"] == "logistic" and baseline["promoted"] is True
    assert result["promoted"] is True and result["promoted_model"] == "logistic"
    tracking.configure(mlflow_store)
    assert result["model_version"] == "1"  # the candidate: registered, not promoted
    assert registry.alias_version("price-response", "champion") == baseline["model_version"] == "2"
    stored = registry.version_metrics("price-response", "2")
    assert stored["profit_regret"] == pytest.approx(regret["logistic"])
