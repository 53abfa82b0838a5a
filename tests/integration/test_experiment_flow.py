"""The `experiment` flow on planted offer logs, against a real MLflow registry in tmp_path.

A clear winner is promoted through the registry's alias mechanics and the decision is published
(Prefect artifacts, version tags and description); a log without arm columns is read by policy; a
scorer that does not serve the winner rolls the alias back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from pricing import experiment as X
from pricing import schema as S
from pricing.io import write_table

pytestmark = [pytest.mark.integration]
NAME = "price-response"


@pytest.fixture()
def registry(mlflow_store: str) -> Any:
    """Versions 1 and 2 of NAME (no artifacts needed): v1 champion, v2 challenger."""
    import mlflow

    from mlops import registry as reg
    from mlops import tracking

    tracking.configure(mlflow_store)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source="file:///nonexistent/model", run_id=None)
    reg.set_alias(NAME, "1", "champion")
    reg.set_alias(NAME, "2", "challenger")
    return client


@pytest.fixture()
def items_dir(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    items = pd.DataFrame(
        {
            S.ITEM_ID: ["i1", "i2"],
            S.TITLE: ["one", "two"],
            S.CATEGORY: ["c", "c"],
            S.BRAND: ["b", "b"],
            S.LIST_PRICE: [10.0, 5.0],
            S.UNIT_COST: [6.0, 3.0],
        }
    )
    write_table(items, out, S.ITEMS)
    return out


def write_log(
    log_dir: Path, conversion: dict[str, float], n_per_arm: int, arms: bool, seed: int = 0
) -> None:
    """An offer log's outcome file: each arm's quotes interleaved (v1 serves the first arm)."""
    rng = np.random.default_rng(seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    base = pd.Timestamp("2026-06-01", tz="UTC")
    lines = []
    for k in range(n_per_arm):
        item, price = ("i1", 10.0) if k % 3 else ("i2", 5.0)
        for j, arm in enumerate(conversion):
            row: dict[str, Any] = {
                S.OFFER_ID: f"q{k}-{j}:{item}",
                "quote_id": f"q{k}-{j}",
                S.TS: (base + pd.Timedelta(seconds=2 * k + j)).isoformat(),
                S.USER_ID: f"u{k % 997}",
                S.ITEM_ID: item,
                S.PRICE: price,
                S.PROPENSITY: 0.95,
                S.POLICY: f"{NAME}@{j + 1}",
                S.PURCHASED: int(rng.random() < conversion[arm]),
                "outcome_ts": (base + pd.Timedelta(seconds=2 * k + j + 1)).isoformat(),
            }
            if arms:
                row |= {X.EXPERIMENT: "exp-14", X.ARM: arm}
            lines.append(orjson.dumps(row))
    (log_dir / "outcomes.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_a_clear_winner_is_promoted_and_the_decision_published(
    registry: Any, items_dir: Path, tmp_path: Path, prefect_harness: None
) -> None:
    from prefect.artifacts import Artifact

    from flows.experiment import experiment
    from mlops import registry as reg

    log_dir = tmp_path / "offer_log"
    write_log(log_dir, {"champion": 0.10, "challenger": 0.16}, 4000, arms=True)
    result = experiment(
        str(log_dir), str(items_dir), experiment_id="exp-14", min_sample=1000, max_sample=8000
    )
    assert result["decision"]["action"] == X.PROMOTE
    assert result["treatment_version"] == "2"
    assert [a["arm"] for a in result["arms"]] == ["challenger", "champion"]
    assert result["promotion"]["promoted"] is True
    assert reg.alias_version(NAME, "champion") == "2"
    mv = registry.get_model_version(NAME, "2")
    assert mv.tags["experiment_decision"] == X.PROMOTE
    recorded = json.loads(mv.tags["experiment"])
    assert recorded["rule_id"] == result["rule_id"] and recorded["decision"]["action"] == X.PROMOTE
    from datetime import datetime

    assert datetime.fromisoformat(recorded["decided_at"]).tzinfo is not None  # ISO, not Unix time
    assert "Decision: promote" in mv.description
    table = Artifact.get("experiment-exp-14-arms")
    decision = Artifact.get("experiment-exp-14-decision")
    assert table is not None and decision is not None
    assert "challenger" in str(table.data) and "Decision: promote" in str(decision.data)


def test_a_log_without_arms_is_read_by_policy_and_keeps_running(
    registry: Any, items_dir: Path, tmp_path: Path, prefect_harness: None
) -> None:
    from flows.experiment import experiment
    from mlops import registry as reg

    log_dir = tmp_path / "offer_log"
    write_log(log_dir, {"a": 0.10, "b": 0.10}, 600, arms=False, seed=1)
    result = experiment(str(log_dir), str(items_dir), min_sample=1000, max_sample=8000)
    assert (result["control"], result["treatment"]) == (f"{NAME}@1", f"{NAME}@2")
    assert result["decision"]["action"] == X.CONTINUE
    assert result["promotion"]["promoted"] is False
    assert reg.alias_version(NAME, "champion") == "1"
    assert registry.get_model_version(NAME, "2").tags["experiment_decision"] == X.CONTINUE


def test_a_scorer_that_does_not_serve_the_winner_rolls_the_alias_back(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.registry
    from mlops import registry as reg
    from tasks.experiment import promote_experiment_winner

    monkeypatch.setattr(
        tasks.registry,
        "notify_scorer",
        lambda *a, **k: ("failed", "smoke quote served version 1, expected 2"),
    )
    diff = X.Difference("profit", 0.1, 0.05, 0.15, 5000, 0.4, 0.5, False)
    rule = X.ExperimentRule(min_sample=1000)
    decision = X.decide(diff, rule, "champion", "challenger")
    assert decision.promote
    with pytest.raises(RuntimeError, match="rolled back"):
        promote_experiment_winner(
            NAME, "2", "1", decision, "http://127.0.0.1:9", "tok", ["i1"], "u1"
        )
    assert reg.alias_version(NAME, "champion") == "1"
    promotion = json.loads(registry.get_model_version(NAME, "2").tags["promotion"])
    assert promotion["promoted"] is False
    assert any("rolled back" in r for r in promotion["promotion_reasons"])
