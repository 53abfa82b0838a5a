"""The stop flag (`mlops.interrupts`): once a signal came, no registration and no alias move; runs
end KILLED; the command says what it kept; Prefect's temporary server dies with its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops import interrupts

NAME = "price-response"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_stop() -> Iterator[None]:
    interrupts.reset()
    yield
    interrupts.reset()


def test_after_a_stop_no_alias_moves_and_nothing_is_registered(mlflow_store: str) -> None:
    import mlflow
    import pandas as pd

    from mlops import registry, tracking

    tracking.configure(mlflow_store)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source="file:///nonexistent/model", run_id=None)
    registry.set_alias(NAME, "1", "champion")

    interrupts.request(signal.SIGTERM)
    with pytest.raises(interrupts.Interrupted, match="before moving price-response@champion"):
        registry.set_alias(NAME, "2", "champion")
    with pytest.raises(interrupts.Interrupted):
        registry.delete_alias(NAME, "champion")
    with pytest.raises(interrupts.Interrupted, match="before registering"):
        tracking.log_price_model(None, {}, pd.DataFrame(), NAME)  # type: ignore[arg-type]
    assert registry.alias_version(NAME, "champion") == "1"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert interrupts.ledger().aliases == [f"{NAME}@champion -> v1"]  # the move before the stop


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (lambda: interrupts.Interrupted(signal.SIGINT), "KILLED"),
        (lambda: KeyboardInterrupt(), "KILLED"),
        (lambda: RuntimeError("a bug"), "FAILED"),
    ],
    ids=["stop-signal", "keyboard-interrupt", "error"],
)
def test_a_run_ends_killed_when_a_stop_ended_it_and_failed_otherwise(
    mlflow_store: str, tmp_path: Path, raised: Callable[[], BaseException], status: str
) -> None:
    import mlflow

    from mlops import tracking

    tracking.configure(mlflow_store)
    exp = tracking.experiment_id("simulated", tmp_path / "artifacts")
    started: list[Any] = []
    with pytest.raises(type(raised())), tracking.tracked_run(experiment_id=exp) as run:
        started.append(run)
        started.append(mlflow.start_run(experiment_id=exp, nested=True))
        raise raised()
    run, child = started
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == status
    assert mlflow.active_run() is None
    if status == "KILLED":
        assert client.get_run(child.info.run_id).info.status == "KILLED"
        assert interrupts.ledger().killed_runs == [run.info.run_id]


def test_prefects_termination_signal_is_a_stop() -> None:
    from prefect.exceptions import TerminationSignal

    stop = interrupts.interrupted_by(TerminationSignal(signal.SIGTERM))
    assert stop is not None and stop.exit_code == 143
    assert interrupts.requested() == signal.SIGTERM
    assert interrupts.interrupted_by(RuntimeError("after the stop")) is not None


def _command(monkeypatch: pytest.MonkeyPatch, func: Callable[[Any], int]) -> None:
    import flows.cli

    monkeypatch.setattr(flows.cli, "_cmd_bound", func)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_command_prints_one_line_and_exits_128_plus_the_signal(
    signum: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    def stopped(args: Any) -> int:
        interrupts.record_registered(NAME, "4")
        os.kill(os.getpid(), signum)  # the handler `main` set raises here
        raise AssertionError("the signal did not stop the command")

    _command(monkeypatch, stopped)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = main(["bound", "--seeds", "1", "--out", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 128 + signum
    assert err == [
        f"error: interrupted ({signal.Signals(signum).name}): pricing bound stopped; "
        f"registered before the signal: {NAME} v4"
    ]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_signal_swallowed_by_a_library_still_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    def swallowing(args: Any) -> int:
        with contextlib.suppress(KeyboardInterrupt):  # what some libraries do
            os.kill(os.getpid(), signal.SIGINT)
        return 0

    _command(monkeypatch, swallowing)
    assert main(["bound", "--seeds", "1", "--out", "unused"]) == 130
    err = capsys.readouterr().err
    assert "nothing registered and no alias moved" in err


PARENT = """
import sys, time
from mlops.prefect_server import _ServerPopen
child = _ServerPopen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_temporary_servers_process_dies_with_the_command(
    wait_until: Callable[..., Any],
) -> None:
    """Started like Prefect's temporary server: its own process group, killed with its parent."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.getpgid(child) == child != os.getpgid(parent.pid)
        parent.kill()  # SIGKILL: no atexit, no handler
        parent.wait()
        wait_until(lambda: not _alive(child), timeout=10, what="the child to die with its parent")
    finally:
        parent.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
