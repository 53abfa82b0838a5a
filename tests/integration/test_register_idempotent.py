"""Issue 9.4: `register_model` retries are safe: a retry reuses the run's model version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pricing.simulator import Market

pytestmark = [pytest.mark.integration]
NAME = "price-response"
RECORD = {"dataset": "simulated", "data_hash": "0123456789abcdef", "split": {}, "protocol": {}}


def test_a_register_retry_after_a_failed_tag_reuses_the_runs_version(
    mlflow_store: str, tiny_market: Market, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect retries `register_model` (retries=2); the first attempt created the version, then
    tagging it failed. The retry must not register a second version for the same run."""
    import mlflow

    from mlops import registry, tracking
    from mlops.models import LogisticDemand, PricingData
    from pricing import features as F
    from pricing import schema as S
    from tasks.registry import input_example, register

    tracking.configure(mlflow_store)
    t = tiny_market.tables
    data = PricingData(
        t[S.OFFERS], t[S.ITEMS], t[S.EVENTS], F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
    )
    model = LogisticDemand()
    model.fit(data)
    exp = tracking.experiment_id("simulated", tmp_path / "artifacts")
    with mlflow.start_run(experiment_id=exp) as run:
        run_id = run.info.run_id
    tag_version, calls = registry.tag_version, {"n": 0}

    def flaky_tag_version(name: str, version: str, tags: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("registry went away while tagging")
        tag_version(name, version, tags)

    monkeypatch.setattr(registry, "tag_version", flaky_tag_version)
    evaluation = {"metrics": {"log_loss": 0.3}, **RECORD}
    args = (model, run_id, NAME, {"band_low": 0.7}, input_example(t[S.OFFERS]), evaluation)
    with pytest.raises(ConnectionError):
        register(*args)  # attempt 1: version created, tag failed
    version = register(*args)  # attempt 2: what Prefect's retry runs

    versions = mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert [(str(mv.version), mv.run_id) for mv in versions] == [(version, run_id)]
    assert registry.version_evaluation(NAME, version)["data_hash"] == RECORD["data_hash"]
    assert registry.version_metrics(NAME, version) == {"log_loss": 0.3}
    assert registry.alias_version(NAME, "challenger") == version
