"""Ctrl-C and SIGTERM stop a real `pricing run` while it trains: nothing registered, the MLflow run
KILLED, one `error:` line, exit code 130 or 143, and no process of the command left behind."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
# The MLflow parent run exists once its inputs are logged; training comes next. The main model's
# tuner has far more trials than the tiny market needs, so the signal lands while it trains.
TRAINING = "Task run 'log_run_inputs"
SLOW_TRAINING = {
    "model": "lightgbm",
    "baselines": ["logistic"],
    "lightgbm": {"tune": {"n_trials": 400}},
}


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (the command and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class Command:
    """`pricing <argv>` in its own session, its output read line by line on a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, ignore_sigint: bool):
        # A command started in the background by a non-interactive shell inherits "ignore SIGINT"
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: a "Ctrl-C" here reaches only it
            preexec_fn=preexec,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def saw(self, text: str) -> bool:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return any(text in line for line in self.output) or self.proc.poll() is not None

    def finish(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread drains the pipe's last lines
        self.saw("")
        return "".join(self.output)


@pytest.fixture()
def command_env(tmp_path: Path, mlflow_store: str) -> Iterator[tuple[dict[str, str], str]]:
    """The command's environment (MLflow in tmp_path) with a marker that finds its processes."""
    assert Path("/proc/self/environ").exists(), "needs /proc to look for orphaned processes"
    marker = f"PRICING_TEST_PROBE={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "MLFLOW_TRACKING_URI": mlflow_store,
            "PRICING_ARTIFACT_ROOT": str(tmp_path / "mlruns" / "artifacts"),
            "PRICING_RUNS_DIR": str(tmp_path / "runs"),
            marker.split("=")[0]: marker.split("=")[1],
        }
    )
    yield env, marker
    for pid in processes_with(marker):  # never leave them behind, even when the test fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _runs(uri: str) -> list[Any]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


@pytest.mark.parametrize(
    ("signum", "to_group", "ignore_sigint"),
    [
        # Ctrl-C at a terminal: SIGINT to the whole process group, in a command that inherited
        # "ignore SIGINT" (started with & by a script)
        (signal.SIGINT, True, True),
        (signal.SIGTERM, False, False),
    ],
    ids=["ctrl-c-to-the-group", "sigterm"],
)
def test_a_signal_stops_pricing_run_before_registration(
    signum: int,
    to_group: bool,
    ignore_sigint: bool,
    tiny_data_dir: Path,
    tmp_path: Path,
    command_env: tuple[dict[str, str], str],
    mlflow_store: str,
    wait_until: Callable[..., Any],
) -> None:
    import mlflow

    env, marker = command_env
    config = tmp_path / "slow-training.yaml"
    config.write_text(yaml.safe_dump(SLOW_TRAINING))
    argv = ["run", "--data-dir", str(tiny_data_dir), "--config", str(config)]
    cmd = Command(argv, env, tmp_path, ignore_sigint)
    wait_until(lambda: cmd.saw(TRAINING), timeout=300, what="pricing run training")
    assert cmd.proc.poll() is None, cmd.finish(1)[-3000:]
    (os.killpg if to_group else os.kill)(cmd.proc.pid, signum)
    out = cmd.finish(timeout=120)

    name = signal.Signals(signum).name
    assert cmd.proc.returncode == 128 + signum, (cmd.proc.returncode, out[-3000:])
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    assert f"interrupted ({name})" in errors[0] and "nothing registered" in errors[0], errors
    assert "Traceback" not in out, out[-3000:]

    runs = _runs(mlflow_store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["KILLED"], [r.info.status for r in runs]
    assert parents[0].info.run_id in errors[0] and "KILLED" in errors[0]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # this test's registry, whatever registry URI an earlier test left set in this process
    client = mlflow.MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    assert client.search_registered_models() == []  # no version, no alias

    wait_until(
        lambda: not processes_with(marker),
        timeout=15,
        what="every process of the command (its temporary Prefect server) to be gone",
    )
