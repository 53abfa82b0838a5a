"""Shared fixtures. Environment first: offline, quiet, and nothing written outside tmp dirs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_TMP = Path(tempfile.mkdtemp(prefix="pricing-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",  # torch's spinning OpenMP threads starve LightGBM (2 cores)
    }
)
os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
# Never the repository's mlruns/: every test that tracks gets its own store (see `mlflow_store`).
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP / 'mlruns' / 'mlflow.db'}"

import pytest  # noqa: E402

from pricing.simulator import Market, SimConfig, simulate, write_market  # noqa: E402

# The realistic preset: list price is far from the best prices there, so models trained on a few
# thousand offers beat it clearly (in the default shop market list price is already near its best
# uniform price, and a market this small cannot show a model beating it).
TINY = SimConfig.preset("realistic", n_users=150, n_items=40, n_days=21, seed=7)


@pytest.fixture(scope="session")
def tiny_market() -> Market:
    """A small simulated market (a few thousand offers), built once per session."""
    return simulate(TINY)


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_market: Market, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny market written as contract Parquet files plus ground truth (read-only for tests)."""
    out = tmp_path_factory.mktemp("tiny-market")
    write_market(tiny_market, out)
    return out


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh MLflow store and runs dir under tmp_path; settings re-read from the environment."""
    from mlops.settings import get_settings

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PRICING_ARTIFACT_ROOT", str(tmp_path / "mlruns" / "artifacts"))
    monkeypatch.setenv("PRICING_RUNS_DIR", str(tmp_path / "runs"))
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test in the session (it costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy (returned at once), or fail the test
    with `what` after `timeout` seconds: a generous deadline, not a window the test depends on."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"timed out after {timeout:g} s waiting for: {name}", pytrace=False)
        time.sleep(interval)


@pytest.fixture()
def wait_until() -> Callable[..., Any]:
    """`wait_until(predicate, timeout=10, what="...")`: wait on a condition, never a fixed sleep."""
    return _wait_until
