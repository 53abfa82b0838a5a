"""A corrupt model artifact is an error, never a crashed process (issue 10, item 2).

The fault: a `lightgbm.txt` cut in half made `lgb.Booster` segfault (or abort) inside
lib_lightgbm.so, which took down the scorer on reload, on the alias watch and at every restart, and
`pricing run` with it (rc 134, its MLflow run left RUNNING, the temporary Prefect server orphaned).
Now `load_model` checks every file against the manifest's sha256 first; the scorer keeps serving
the version it has, says why on /readyz, and backs off retrying a known-bad version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.models import LightGBMDemand, ModelIntegrityError, load_model, save_model
from mlops.registry import ModelHandle, ModelLoadError
from mlops.settings import Settings
from pricing import schema as S
from scorer.app import ReloadStatus, create_app
from scorer.state import InMemoryUserStore
from scorer.testing import small_lightgbm

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "price-response"
ADMIN = {"Authorization": "Bearer s3cret"}
ITEMS = ["i0", "i1", "i2"]
CRASH_CODES = {-11, -6, 134, 139}  # SIGSEGV / SIGABRT, as a signal or as a shell's exit code


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved versions: 1 and 3 are fine, 2 has its lightgbm.txt cut in half after the save."""
    root = tmp_path_factory.mktemp("versions")
    dirs = {v: root / f"v{v}" for v in ("1", "2", "3")}
    for seed, path in enumerate(dirs.values()):
        save_model(small_lightgbm(seed), path)
    truncate_half(dirs["2"] / "lightgbm.txt")
    return dirs


class DiskRegistry:
    """A registry over saved model directories; the alias names the champion.

    Loads go through `load_model` (the integrity check) and fail the way `load_champion` does
    (`ModelLoadError` naming the version); counts load attempts per version and alias probes.
    """

    def __init__(self, dirs: dict[str, Path], alias: str | None) -> None:
        self.dirs = dirs
        self.alias = alias
        self.attempts: Counter[str] = Counter()
        self.probes = 0

    def load(self) -> ModelHandle | None:
        version = self.alias
        if version is None:
            return None
        self.attempts[version] += 1
        try:
            model = load_model(self.dirs[version])
        except Exception as exc:
            raise ModelLoadError(NAME, version, exc) from exc
        return ModelHandle(NAME, version, model)

    def version(self) -> str | None:
        self.probes += 1
        return self.alias


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "offer_log_dir": tmp_path / "offers",
        "admin_token": "s3cret",
        "alias_poll_seconds": 0.0,  # the tests drive `check_alias` themselves
        "exploration": 0.0,
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def registry(model_dirs: dict[str, Path]) -> DiskRegistry:
    return DiskRegistry(model_dirs, alias="1")


@pytest.fixture
def client(tmp_path: Path, registry: DiskRegistry) -> Iterator[TestClient]:
    app = create_app(
        _settings(tmp_path),
        registry.load,
        version_probe=registry.version,
        store=InMemoryUserStore(),
        seed=0,
    )
    with TestClient(app) as c:
        yield c


def _served_version(c: TestClient) -> str:
    r = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS})
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _scorer_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "scorer.app" and r.levelno >= logging.ERROR]


# --- the scorer ---------------------------------------------------------------------------------


def test_reload_to_a_corrupt_version_keeps_serving_the_old_one(
    client: TestClient, registry: DiskRegistry
) -> None:
    assert _served_version(client) == "1"
    registry.alias = "2"
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 502
    assert "ModelIntegrityError" in r.json()["detail"] and r.json()["serving_version"] == "1"
    assert _served_version(client) == "1"

    ready = client.get("/readyz")
    assert ready.status_code == 200, "an older version still serves: ready, but it says so"
    body = ready.json()
    assert body["model_version"] == "1" and body["alias_target"] == "2"
    assert body["reload_failures"] == 1 and body["next_reload_retry_s"] > 0
    err = body["last_reload_error"]
    assert "v2" in err and "ModelIntegrityError" in err and "lightgbm.txt" in err
    assert "Traceback" not in err and "\n" not in err


def test_alias_watch_backs_off_a_known_bad_version(
    client: TestClient, registry: DiskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    now = [0.0]
    runtime.reload_status.clock = lambda: now[0]
    assert runtime.reload_status.base_s == 1.0  # max(alias_poll_seconds, 1 s)
    caplog.set_level(logging.INFO, logger="scorer.app")

    registry.alias = "2"
    tried = []
    for t in range(1, 61):  # 60 polls, one a second
        now[0] = float(t)
        if client.portal.call(runtime.check_alias):
            tried.append(t)
    # 2, 4, 8, 16, 32 s after each consecutive failure: 5 attempts in 60 polls, not 60
    assert tried == [1, 3, 7, 15, 31]
    assert registry.attempts["2"] == 5 and registry.probes >= 60
    errors = _scorer_errors(caplog)
    assert len(errors) == 5, "one log line per failure"
    assert all(r.exc_info is None for r in errors), "no traceback per failure"
    assert "version 2" in errors[-1].getMessage() and "lightgbm.txt" in errors[-1].getMessage()
    assert _served_version(client) == "1"
    body = client.get("/readyz").json()
    assert body["reload_failures"] == 5 and body["next_reload_retry_s"] == pytest.approx(3.0)

    # the alias moves to another version: tried at once, and it loads
    registry.alias = "3"
    now[0] = 61.0
    assert client.portal.call(runtime.check_alias) is True
    assert _served_version(client) == "3"
    body = client.get("/readyz").json()
    assert body["alias_target"] == "3" and body["model_version"] == "3"
    assert body["last_reload_error"] is None and body["reload_failures"] == 0


def test_alias_back_on_the_served_version_clears_the_failure(
    client: TestClient, registry: DiskRegistry
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    registry.alias = "2"
    assert client.portal.call(runtime.check_alias) is True
    assert client.get("/readyz").json()["last_reload_error"] is not None
    registry.alias = "1"  # an operator rolled the alias back
    assert client.portal.call(runtime.check_alias) is False
    body = client.get("/readyz").json()
    assert body["alias_target"] == "1" and body["model_version"] == "1"
    assert body["last_reload_error"] is None and body["reload_failures"] == 0
    assert registry.attempts == Counter({"1": 1, "2": 1})


def test_startup_with_a_corrupt_champion_stays_up_and_not_ready(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    registry = DiskRegistry(model_dirs, alias="2")
    app = create_app(_settings(tmp_path), registry.load, version_probe=registry.version, seed=0)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["alias_target"] == "2"
        assert "ModelIntegrityError" in body["reason"] and "lightgbm.txt" in body["reason"]
        assert "lightgbm.txt" in body["last_reload_error"]
        assert c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS}).status_code == 503

        runtime = app.state.runtime
        assert c.portal.call(runtime.check_alias) is False, "backing off: not retried at once"
        registry.alias = "1"
        assert c.portal.call(runtime.check_alias) is True
        assert c.get("/readyz").status_code == 200
        assert _served_version(c) == "1"
    assert registry.attempts == Counter({"2": 1, "1": 1})


def test_the_watch_loop_polls_often_but_retries_a_bad_version_rarely(
    tmp_path: Path, registry: DiskRegistry, wait_until: Any
) -> None:
    """The real background watch (50 ms polls) retries the corrupt version only when its backoff
    is due. The backoff's clock is the test's, so a slow machine cannot make a retry due early;
    the polls are waited for by count, not by a fixed window."""
    app = create_app(
        _settings(tmp_path, alias_poll_seconds=0.05),
        registry.load,
        version_probe=registry.version,
        seed=0,
    )
    with TestClient(app) as c:
        runtime = app.state.runtime
        now = [0.0]
        runtime.reload_status.clock = lambda: now[0]
        registry.alias = "2"
        wait_until(lambda: registry.attempts["2"] >= 1, timeout=30, what="a first load of v2")
        probes = registry.probes
        wait_until(
            lambda: registry.probes >= probes + 10, timeout=30, what="the watch kept polling"
        )
        assert registry.attempts["2"] == 1, "10 polls, but no retry before the backoff is due"
        assert runtime.reload_status.retry_at == pytest.approx(2.0)  # 2 x max(poll, 1 s)
        assert _served_version(c) == "1"
        now[0] = 1.99
        probes = registry.probes
        wait_until(lambda: registry.probes >= probes + 5, timeout=30, what="polls at t = 1.99 s")
        assert registry.attempts["2"] == 1, "retried before its backoff was due"
        now[0] = 2.0  # due: the next poll retries it, once (then it backs off 4 s)
        wait_until(lambda: registry.attempts["2"] >= 2, timeout=30, what="the retry when due")
        probes = registry.probes
        wait_until(lambda: registry.probes >= probes + 5, timeout=30, what="polls after a retry")
        assert registry.attempts["2"] == 2
        assert _served_version(c) == "1"
        registry.alias = "3"
        wait_until(
            lambda: c.get("/readyz").json().get("model_version") == "3",
            timeout=30,
            what="the watch moves to version 3",
        )
    assert registry.attempts == Counter({"1": 1, "2": 2, "3": 1})


def test_backoff_doubles_per_consecutive_failure_up_to_a_cap() -> None:
    now = [0.0]
    status = ReloadStatus(base_s=30.0, max_s=600.0, clock=lambda: now[0])
    delays = [status.failed("7", "ModelLoadError: boom") for _ in range(6)]
    assert delays == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    assert not status.due("7") and status.due("8")
    now[0] = status.retry_at
    assert status.due("7")
    assert status.failed("8", "other") == 60.0, "another version starts over"


# --- the loader in a separate process: an exception, never a signal ----------------------------


def _run_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.slow
def test_a_truncated_lightgbm_file_raises_in_the_loader_instead_of_crashing_the_process(
    model_dirs: dict[str, Path],
) -> None:
    path = model_dirs["2"]
    # The fault, reproduced: what loading did before (LightGBM parses the file unchecked).
    raw = _run_python(
        f"""
        from pathlib import Path
        from mlops.models import LightGBMDemand
        LightGBMDemand.load(Path({str(path)!r}))
        """
    )
    assert raw.returncode != 0, "a truncated model file must not load"
    # Now: the same directory through load_model is a Python exception naming the file.
    checked = _run_python(
        f"""
        import sys
        from pathlib import Path
        from mlops.models import ModelIntegrityError, load_model
        try:
            load_model(Path({str(path)!r}))
        except ModelIntegrityError as exc:
            print(f"refused: {{exc}}", file=sys.stderr)
            sys.exit(3)
        sys.exit(0)
        """
    )
    assert checked.returncode == 3, (checked.returncode, checked.stderr[-2000:])
    assert checked.returncode not in CRASH_CODES
    assert "lightgbm.txt" in checked.stderr and "truncated" in checked.stderr
    assert "[LightGBM]" not in checked.stderr, "LightGBM never saw the file"


# --- the real MLflow registry -------------------------------------------------------------------


def _register(model: LightGBMDemand) -> str:
    import mlflow

    from mlops import tracking

    example = pd.DataFrame({S.USER_ID: ["u1"], S.ITEM_ID: ["i0"], S.PRICE: [10.0]})
    with mlflow.start_run():
        _, version = tracking.log_price_model(model, {}, example, NAME)
    return version


@pytest.mark.slow
def test_mlflow_champion_with_a_corrupt_file_fails_to_load_and_the_scorer_keeps_the_old_one(
    mlflow_store: str, tmp_path: Path
) -> None:
    from mlops import registry, tracking
    from mlops.registry import load_champion
    from mlops.settings import get_settings

    tracking.configure(mlflow_store)
    art_root = tmp_path / "mlruns" / "artifacts"
    tracking.experiment_id("corrupt", art_root)
    import mlflow

    mlflow.set_experiment("corrupt")
    v1 = _register(small_lightgbm(0))
    before = set(art_root.rglob("lightgbm.txt"))
    v2 = _register(small_lightgbm(1))
    (stored_v2,) = set(art_root.rglob("lightgbm.txt")) - before
    registry.set_alias(NAME, v1)

    settings = _settings(tmp_path)  # the tracking URI: MLFLOW_TRACKING_URI, set by mlflow_store
    get_settings.cache_clear()
    app = create_app(settings, store=InMemoryUserStore(), seed=0)  # the registry's own loader
    with TestClient(app) as c:
        assert _served_version(c) == v1
        truncate_half(stored_v2)
        registry.set_alias(NAME, v2)
        with pytest.raises(ModelLoadError) as info:
            load_champion(NAME)
        assert info.value.version == v2
        assert isinstance(info.value.__cause__, ModelIntegrityError)
        assert info.value.__cause__.file == "lightgbm.txt"

        runtime = app.state.runtime
        assert c.portal.call(runtime.check_alias) is True
        assert _served_version(c) == v1
        body = c.get("/readyz").json()
        assert body["model_version"] == v1 and body["alias_target"] == v2
        assert "lightgbm.txt" in body["last_reload_error"]


# --- `pricing run` ------------------------------------------------------------------------------

_DRIVER = """
import sys
from pathlib import Path

import flows.training
from mlops.models import load_model

corrupt = Path(sys.argv[1])


def evaluate_with_a_corrupt_model(*args, **kwargs):
    load_model(corrupt)  # an evaluation step that has to read a model from disk
    raise AssertionError("unreachable: the model is corrupt")


flows.training.evaluate_models_task = evaluate_with_a_corrupt_model
from flows.cli import main

raise SystemExit(main(sys.argv[2:]))
"""


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (the children of one test subprocess)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _pricing_run(
    tmp_path: Path, uri: str, argv: list[str], driver_args: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run `pricing <argv>` in a fresh process (its own temporary Prefect server, MLflow at `uri`).

    With `driver_args`, through `_DRIVER` (which makes evaluation read a corrupt model). Returns the
    process and the pids of any of its children still alive 15 s after it exited (killed here).
    """
    # Linux only (as the project): /proc is how orphaned processes are found; never a skip
    assert Path("/proc/self/environ").exists(), "needs /proc to look for orphaned processes"
    key, value = "PRICING_TEST_PROBE", uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PYTHONFAULTHANDLER": "1",
            "MLFLOW_TRACKING_URI": uri,
            "PRICING_ARTIFACT_ROOT": str(tmp_path / "mlruns" / "artifacts"),
            "PRICING_RUNS_DIR": str(tmp_path / "runs"),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            key: value,
        }
    )
    if driver_args is None:
        cmd = [sys.executable, "-m", "flows.cli", *argv]
    else:
        driver = tmp_path / "driver.py"
        driver.write_text(_DRIVER)
        cmd = [sys.executable, str(driver), *driver_args, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    marker = f"{key}={value}"
    deadline = time.monotonic() + 15.0
    leftovers = _processes_with(marker)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _processes_with(marker)
    for pid in leftovers:  # never leave them behind, even when the test then fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    return proc, leftovers


def _run_statuses(uri: str) -> dict[str, str]:
    """Status of each top-level run (a training run's per-model child runs left out); none RUNNING."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    return {r.info.run_name: r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags}


@pytest.mark.slow
def test_pricing_run_hitting_a_corrupt_model_fails_cleanly(
    tiny_data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Non-zero rc with one clear line, the MLflow run FAILED, no temporary Prefect server left.

    Before: rc 134 (SIGABRT in lib_lightgbm.so), the run left RUNNING, the server orphaned.
    """
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    argv = ["run", "--data-dir", str(tiny_data_dir), "--model", "lightgbm", "--no-promote"]
    proc, leftovers = _pricing_run(tmp_path, uri, argv, driver_args=[str(model_dirs["2"])])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, (proc.returncode, out[-3000:])  # not a signal, not a traceback
    assert "Starting temporary server" in out, "the flow ran under a temporary Prefect server"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lightgbm.txt" in errors[0], errors
    assert "integrity check" in errors[0]
    assert leftovers == [], "the temporary Prefect server outlived `pricing run`"
    assert list(_run_statuses(uri).values()) == ["FAILED"]


@pytest.mark.slow
def test_pricing_run_with_a_corrupt_champion_trains_on_instead_of_crashing(
    tiny_data_dir: Path, mlflow_store: str, tmp_path: Path
) -> None:
    """The issue's own case: the registered champion's lightgbm.txt is cut in half.

    The flow's contract (`flows.training._load_champion`) is that an unloadable champion does not
    block a new model (it is how a broken champion gets replaced): so the run now warns, naming the
    file, falls back to the champion's stored metrics, and finishes. Before: rc 134, RUNNING, orphan.
    """
    import mlflow

    from mlops import registry, tracking

    tracking.configure(mlflow_store)
    art_root = tmp_path / "mlruns" / "artifacts"
    tracking.experiment_id("seed", art_root)
    mlflow.set_experiment("seed")
    champion = _register(small_lightgbm(0))
    registry.set_alias(NAME, champion)
    (stored,) = art_root.rglob("lightgbm.txt")
    truncate_half(stored)

    argv = ["run", "--data-dir", str(tiny_data_dir), "--model", "logistic", "--no-promote"]
    proc, leftovers = _pricing_run(tmp_path, mlflow_store, argv)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (proc.returncode, out[-3000:])
    warning = [line for line in out.splitlines() if "could not be loaded" in line]
    assert warning and "lightgbm.txt" in warning[0] and "integrity check" in warning[0], out[-3000:]
    assert leftovers == []
    statuses = _run_statuses(mlflow_store)
    assert sorted(statuses.values()) == ["FINISHED", "FINISHED"], statuses
