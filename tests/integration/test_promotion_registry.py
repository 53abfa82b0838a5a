"""The promotion step against a real MLflow registry (sqlite in tmp_path), no scorer, no Prefect.

Issue 10.1: the gate fails closed, stored metrics count only on the same data, a forced promotion
is recorded on the version, and the champion alias moves by compare-and-set.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from pricing.promotion import NotComparable, PromotionRule

pytestmark = [pytest.mark.integration]
NAME = "price-response"
REF = {"profit_regret": 0.30, "log_loss": 0.35}
CHAMP = {"profit_regret": 0.038, "log_loss": 0.30, "price_gap_protected": 0.02}
WORSE = {"profit_regret": 0.099, "log_loss": 0.31, "price_gap_protected": 0.02}
BETTER = {"profit_regret": 0.020, "log_loss": 0.30, "price_gap_protected": 0.02}
RECORD = {
    "dataset": "simulated",
    "data_hash": "0123456789abcdef",
    "split": {"test_start": "2024-01-22T00:00:00+00:00", "n_test": 900},
    "protocol": {"guardrails": {"band_low": 0.7}, "test_offers": 900, "metrics_code": "x"},
}


@pytest.fixture()
def registry(mlflow_store: str) -> Any:
    """Versions 1..3 of NAME (no artifacts needed); v1 is champion, registered with its evaluation."""
    import mlflow

    from mlops import registry as reg
    from mlops import tracking

    tracking.configure(mlflow_store)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source="file:///nonexistent/model", run_id=None)
    reg.tag_version(NAME, "1", {"evaluation": {"metrics": CHAMP, **RECORD}})
    reg.set_alias(NAME, "1", "champion")
    return client


def _promote(version: str, champion: Any, **kw: Any) -> dict[str, Any]:
    from tasks.registry import promote

    return promote(
        NAME, version, kw.pop("challenger", BETTER), champion, kw.pop("champion_version", "1"),
        REF, True, PromotionRule(), None, "tok", ["i1"], "u1", **kw,
    )  # fmt: skip


def _champion(challenger: dict[str, float]) -> Any:
    """The flow's view of a champion that could not be loaded: its stored record, if comparable."""
    from tasks.registry import champion_for_gate

    return champion_for_gate(NAME, "1", None, {"metrics": challenger, **RECORD})


# --- the gate fails closed ----------------------------------------------------------------------


def test_unloadable_champion_with_comparable_stored_metrics_keeps_a_worse_challenger_out(
    registry: Any,
) -> None:
    from mlops import registry as reg

    champion = _champion(WORSE)
    assert champion == CHAMP  # the metrics, not the whole evaluation tag
    out = _promote("2", champion, challenger=WORSE)
    assert not out["promoted"]
    assert any("does not beat champion 0.0380" in r for r in out["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == "1"


@pytest.mark.parametrize("record", ["deleted", "legacy", "other-dataset"])
def test_a_champion_without_comparable_metrics_blocks_a_worse_challenger(
    registry: Any, record: str
) -> None:
    """The incident: champion artifacts (and its record) gone, v2 at 0.099 vs 0.038 was promoted."""
    from mlops import registry as reg

    if record == "deleted":
        registry.delete_model_version_tag(NAME, "1", "evaluation")
    elif record == "legacy":  # how versions were tagged before: no data hash, no protocol
        legacy = {"metrics": CHAMP, "dataset": "simulated", "split": RECORD["split"]}
        reg.tag_version(NAME, "1", {"evaluation": legacy})
    else:
        reg.tag_version(
            NAME, "1", {"evaluation": {"metrics": CHAMP, **RECORD, "dataset": "tafeng"}}
        )
    champion = _champion(WORSE)
    assert isinstance(champion, NotComparable)
    out = _promote("2", champion, challenger=WORSE)
    assert not out["promoted"] and not out["forced"]
    assert any("champion not comparable" in r for r in out["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == "1"
    promotion = json.loads(registry.get_model_version(NAME, "2").tags["promotion"])
    assert promotion["promoted"] is False


def test_force_promote_moves_the_alias_and_records_it_on_the_version(registry: Any) -> None:
    from mlops import registry as reg

    registry.delete_model_version_tag(NAME, "1", "evaluation")
    out = _promote("2", _champion(WORSE), challenger=WORSE, force=True)
    assert out["promoted"] and out["forced"]
    assert any("forced by operator" in r for r in out["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == "2"
    tags = registry.get_model_version(NAME, "2").tags
    forced = json.loads(tags["forced_promotion"])
    assert forced["forced"] is True and forced["previous_champion"] == "1" and forced["by"]
    assert json.loads(tags["promotion"])["forced"] is True
    assert "forced_promotion" not in registry.get_model_version(NAME, "1").tags


# --- compare-and-set on the champion alias ------------------------------------------------------


def test_two_concurrent_promotions_promote_exactly_one(registry: Any) -> None:
    """Both runs evaluated against v1 and both beat it; only the first to move the alias wins."""
    from mlops import registry as reg

    barrier = threading.Barrier(2)
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            barrier.wait()
            results[version] = _promote(version, CHAMP)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    promoted = [v for v, r in results.items() if r["promoted"]]
    assert len(promoted) == 1, results
    (winner,) = promoted
    loser = results["3" if winner == "2" else "2"]
    assert loser["champion_changed"]
    assert any("champion changed" in r for r in loser["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == winner


def test_a_stale_champion_version_is_not_overwritten(registry: Any) -> None:
    from mlops import registry as reg

    reg.set_alias(NAME, "3", "champion")  # someone promoted v3 after we evaluated against v1
    out = _promote("2", CHAMP)
    assert not out["promoted"] and out["champion_changed"]
    assert any("alias now at v3" in r for r in out["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == "3"


def test_a_writer_outside_the_lock_that_moves_the_alias_mid_promotion_is_not_undone(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops import registry as reg

    set_alias = reg.set_alias

    def racing_set_alias(name: str, version: str, alias: str = "champion") -> None:
        set_alias(name, version, alias)
        set_alias(name, "3", alias)  # another host's promotion lands right after ours

    monkeypatch.setattr(reg, "set_alias", racing_set_alias)
    out = _promote("2", CHAMP)
    assert not out["promoted"] and out["champion_changed"]
    assert any("during promotion" in r for r in out["promotion_reasons"])
    assert reg.alias_version(NAME, "champion") == "3"


def test_no_admin_token_promotes_and_leaves_the_scorer_to_the_alias_watch(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no token configured the scorer is not asked (a 'Bearer None' would be refused and the
    promotion rolled back); the alias moves and the result says why nothing was notified."""
    import httpx

    from tasks.registry import promote

    def no_http(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the scorer must not be called without a token")

    monkeypatch.setattr(httpx, "post", no_http)
    out = promote(
        NAME, "2", BETTER, CHAMP, "1", REF, True, PromotionRule(),
        "http://127.0.0.1:9", None, ["i1"], "u1",
    )  # fmt: skip
    assert out["promoted"] and not out["scorer_notified"]
    assert any("no admin token" in r for r in out["promotion_reasons"])
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "2"
