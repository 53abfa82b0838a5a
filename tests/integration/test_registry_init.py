"""Commands that start together on an empty MLflow registry both get a working one: the schema is
created once, under a lock (a file lock next to a sqlite database, an advisory lock on PostgreSQL),
and a registry that cannot be opened is one `error:` line."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

# What a command does first with the registry: open it (`tracking.configure`), find or create its
# dataset's experiment, log a run. Each process imports MLflow, says it is ready, then waits for
# the test's "go" so that both open the empty registry at the same moment.
FIRST_USE = """
import sys, time
from pathlib import Path
import mlflow
from mlops import tracking
ready, go, uri, artifacts = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
ready.touch()
while not go.exists():
    time.sleep(0.005)
tracking.configure(uri)
exp = tracking.experiment_id("simulated", Path(artifacts))
with mlflow.start_run(experiment_id=exp):
    mlflow.log_metric("m", 1.0)
print("ok", exp)
"""


def _first_uses_at_once(
    uri: str, tmp_path: Path, wait_until: Callable[..., Any], n: int = 2
) -> list[subprocess.CompletedProcess[str]]:
    go = tmp_path / "go"
    procs = []
    for i in range(n):
        ready = tmp_path / f"ready-{i}"
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        FIRST_USE,
                        str(ready),
                        str(go),
                        uri,
                        str(tmp_path / "artifacts"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=tmp_path,
                    env={**_env(), "PYTHONPATH": str(ROOT)},
                ),
            )
        )
    wait_until(
        lambda: all(r.exists() or p.poll() is not None for r, p in procs),
        timeout=120,
        what="both processes ready",
    )
    go.touch()
    out = []
    for _, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _assert_both_used_one_registry(
    results: list[subprocess.CompletedProcess[str]], uri: str
) -> None:
    import mlflow

    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith("ok"), r.stdout
    assert len({r.stdout.split()[1] for r in results}) == 1, "both runs in one experiment"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * len(results)


def test_two_first_uses_of_an_empty_sqlite_registry_both_succeed(
    tmp_path: Path, wait_until: Callable[..., Any]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    results = _first_uses_at_once(uri, tmp_path, wait_until)
    _assert_both_used_one_registry(results, uri)
    lock = tmp_path / "mlruns" / "mlflow.db.schema.lock"
    assert lock.exists(), "the schema was created under the lock next to the database"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server. Never skipped: a missing one fails."""
    from mlops.testing_postgres import POSTGRES_MISSING, PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(POSTGRES_MISSING, pytrace=False)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_two_first_uses_of_an_empty_postgres_registry_both_succeed(
    postgres: Any, tmp_path: Path, wait_until: Callable[..., Any]
) -> None:
    uri = postgres.create_database(f"mlflow_{int(time.time() * 1000)}")
    results = _first_uses_at_once(uri, tmp_path, wait_until)
    _assert_both_used_one_registry(results, uri)


def test_a_registry_that_cannot_be_opened_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a database at the registry's path: `RegistryUnavailable` names the store; the command
    prints it as its one `error:` line, exit code 4."""
    import flows.cli
    from mlops import tracking

    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"this is not a sqlite database\n" * 100)
    uri = f"sqlite:///{bad}"
    with pytest.raises(tracking.RegistryUnavailable, match="could not be opened"):
        tracking.ensure_schema(uri)

    def open_registry(args: Any) -> int:
        tracking.configure(uri)
        return 0

    monkeypatch.setattr(flows.cli, "_cmd_bound", open_registry)
    rc = flows.cli.main(["bound", "--seeds", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 4
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: MLflow store"), err
    assert str(bad) in lines[0]
