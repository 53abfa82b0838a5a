"""Promotion against a live scorer process: reload + smoke quote, rollback, unreachable scorer, alias watch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pricing.promotion import PromotionRule
from scorer.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "test-token"


def _wait_version(url: str, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/readyz", timeout=2).json()
            if str(last.get("model_version")) == version:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"scorer never served version {version}: last /readyz {last}")


@pytest.fixture(scope="module")
def registry(
    prefect_harness: None, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """Version 1 promoted (champion), version 2 registered only (challenger); one store per module."""
    from flows.training import training
    from mlops.settings import get_settings

    tmp = tmp_path_factory.mktemp("live")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("PRICING_ARTIFACT_ROOT", str(tmp / "mlruns" / "artifacts"))
        mp.setenv("PRICING_RUNS_DIR", str(tmp / "runs"))
        get_settings.cache_clear()
        data = tmp / "data"
        shutil.copytree(tiny_data_dir, data)
        first = training(data_dir=str(data), model="lightgbm")
        second = training(data_dir=str(data), model="logistic", promote=False)
        assert first["promoted"] and not second["promoted"]
        yield {"uri": uri, "data": data, "tmp": tmp, "first": first, "second": second}
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def scorer(registry: dict) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry["uri"],
        "PRICING_ADMIN_TOKEN": TOKEN,
        "PRICING_ALIAS_POLL_SECONDS": "1",
        "PRICING_OFFER_LOG_DIR": str(registry["tmp"] / "offer_log"),
        "PRICING_BOOTSTRAP_DATA_DIR": str(registry["data"]),
    }
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_version(url, "1")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(autouse=True)
def champion_is_version_1(registry: dict, scorer: str) -> None:
    """Each test starts from version 1 as champion, served (tests move the alias)."""
    from mlops import registry as reg
    from mlops import tracking

    tracking.configure(registry["uri"])
    reg.set_alias("price-response", "1", "champion")
    _wait_version(scorer, "1", timeout=30)


def _promote(registry: dict, scorer_url: str | None, token: str = TOKEN) -> dict:
    from tasks.registry import promote

    champion = registry["first"]["metrics"]["lightgbm"]
    better = {**champion, "profit_regret": champion["profit_regret"] / 2}
    return promote(
        "price-response", "2", better, champion, "1",
        registry["first"]["metrics"]["list_price"], True, PromotionRule(),
        scorer_url, token, ["i00001", "i00002"], "u000001",
    )  # fmt: skip


def test_promotion_reloads_the_scorer_and_checks_it_serves_the_new_version(
    registry: dict, scorer: str
) -> None:
    from mlops import registry as reg

    result = _promote(registry, scorer)
    assert result["promoted"] and result["scorer_notified"]
    assert any("serves version 2" in r for r in result["promotion_reasons"])
    assert reg.alias_version("price-response", "champion") == "2"
    q = httpx.post(f"{scorer}/v1/quote", json={"user_id": "u000001", "items": ["i00001"]}).json()
    assert q["model_version"] == "2"


def test_a_scorer_that_refuses_the_reload_rolls_the_alias_back(registry: dict, scorer: str) -> None:
    from mlops import registry as reg

    with pytest.raises(RuntimeError, match="rolled back"):
        _promote(registry, scorer, token="wrong-token")
    assert reg.alias_version("price-response", "champion") == "1"


def test_unreachable_scorer_still_moves_the_alias_and_the_scorer_catches_up_by_watching(
    registry: dict, scorer: str
) -> None:
    from mlops import registry as reg

    result = _promote(registry, f"http://127.0.0.1:{free_port()}")
    assert result["promoted"] and not result["scorer_notified"]
    assert any("unreachable" in r for r in result["promotion_reasons"])
    assert reg.alias_version("price-response", "champion") == "2"
    _wait_version(scorer, "2", timeout=30)  # the scorer polls the alias every second


def test_closed_loop_turns_live_quotes_into_a_valid_next_training_set(
    registry: dict, scorer: str, tmp_path: Path
) -> None:
    log_dir = registry["tmp"] / "offer_log"
    from flows.closed_loop import closed_loop

    out = tmp_path / "next"
    result = closed_loop(
        scorer, str(registry["data"]), n_requests=15, candidates=4, seed=3,
        offer_log_dir=str(log_dir), out_dir=str(out),
    )  # fmt: skip
    assert result["quoted_items"] == 60
    assert result["model_versions"] == ["1"]
    # limits: exact expected profit is positive and below the continuous oracle's
    assert 0 < result["expected_profit_per_offer"] <= result["oracle_profit_per_offer"] + 1e-9
    nxt = result["next_training_set"]
    assert nxt["logged_offers"] == 60 and nxt["validation_passed"]
    import pandas as pd

    offers = pd.read_parquet(out / "offers.parquet")
    logged = offers[offers["policy"].str.startswith("price-response@")]
    assert len(logged) == 60 and logged["propensity"].between(0, 1, inclusive="right").all()

    # the monitor reads the same log: live conversion against the predicted probability
    from flows.monitor import DriftAlert, alerts_of, monitor
    from tasks.monitoring import monitor_live_traffic

    report = monitor_live_traffic.fn(Path(registry["data"]), Path(log_dir))
    assert report["live_offers"] == 60
    assert 0 < report["live_predicted_rate"] < 1 and report["live_n"] == 60
    # every one of these 60 quotes explored a random ladder price: the price mix has drifted from
    # the training data's, and the monitor flow fails on that alert (after publishing its report)
    assert report["psi_price_ratio"] > 0.25
    assert any("price mix drifted" in a for a in alerts_of(report))
    with pytest.raises(DriftAlert, match="price mix drifted"):
        monitor(str(registry["data"]), str(log_dir))
