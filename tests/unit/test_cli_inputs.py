"""`pricing run` and the other flow commands check their inputs before any Prefect server starts:
one `error:` line naming what is missing, exit 2 for a usage error and 1 for data that breaks the
contract; Prefect's own lines about an expected error are not repeated on the terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flows.cli as cli
from mlops import prefect_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every attempt to set up Prefect's temporary server (none must happen)."""
    calls: list[str] = []
    monkeypatch.setattr(prefect_server, "guard", lambda: calls.append("guard"))
    if hasattr(cli, "_ERROR_ONCE"):  # Prefect's logging stays as it is
        monkeypatch.setattr(cli._ERROR_ONCE, "install", lambda setup=False: None)
    return calls


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def test_a_missing_data_folder_is_one_error_line_and_no_server(
    tmp_path: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    rc, lines = _run(["run", "--data-dir", str(missing)], capsys)
    assert rc == 2
    assert lines == [f"error: --data-dir {missing}: no such folder"]
    assert no_server == []


def test_a_folder_without_the_tables_names_the_missing_ones(
    tmp_path: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "items.csv").write_text("item_id\n")
    rc, lines = _run(["run", "--data-dir", str(tmp_path)], capsys)
    assert rc == 2 and len(lines) == 1 and no_server == []
    assert lines[0].startswith(f"error: --data-dir {tmp_path}: no events, offers tables there")


def test_a_bad_config_path_or_content_is_one_error_line(
    tiny_data_dir: Path, tmp_path: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    rc, lines = _run(["run", "--data-dir", str(tiny_data_dir), "--config", str(missing)], capsys)
    assert rc == 2 and lines == [f"error: --config {missing}: no such file"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: lightgbm\nbaselinez: [logistic]\n")
    rc, lines = _run(["run", "--data-dir", str(tiny_data_dir), "--config", str(bad)], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --config {bad}: baselinez: ")
    assert no_server == []


def test_an_unknown_model_is_one_error_line_listing_the_choices(
    tiny_data_dir: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, lines = _run(["run", "--data-dir", str(tiny_data_dir), "--model", "bertx"], capsys)
    assert rc == 2 and len(lines) == 1 and no_server == []
    assert lines[0].startswith("error: --model 'bertx' is not a model: choose ")
    assert "lightgbm" in lines[0] and "bert_wide" in lines[0]

    rc, lines = _run(["demo", "--model", "nope"], capsys)
    assert rc == 2 and lines[0].startswith("error: --model 'nope' is not a model")
    rc, lines = _run(
        ["compare", "--simulate", "--seeds", "1", "--models", "lightgbm,foo", "--out", "x"], capsys
    )
    assert rc == 2 and lines[0].startswith("error: --models 'foo' is not a model")
    assert no_server == []


def test_data_that_breaks_the_contract_exits_1_and_usage_errors_exit_2(
    tiny_data_dir: Path,
    no_server: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pricing.io import ContractError
    from tasks.validation import ValidationFailed

    def fails(exc: Exception) -> None:
        def run(args: object) -> int:
            raise exc

        monkeypatch.setattr(cli, "_cmd_run", run)

    argv = ["run", "--data-dir", str(tiny_data_dir), "--model", "lightgbm"]
    fails(ValidationFailed("data in d fails the contract: table 'offers': ..."))
    rc, lines = _run(argv, capsys)
    assert rc == 1 and lines[-1] == "error: data in d fails the contract: table 'offers': ..."
    assert lines[0].startswith("pricing run: data ")  # the inputs were checked, then it started
    fails(ContractError("table 'items' is missing"))
    rc, lines = _run(argv, capsys)
    assert rc == 2 and lines[-1] == "error: table 'items' is missing"


def _record(name: str, level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, (), info)


def test_prefects_four_lines_about_an_expected_error_stay_off_the_terminal() -> None:
    """What `pricing run` printed for one missing table: the task's failure, its state, the flow's
    failure, its state, then `main`'s error line. Only the last one remains on the terminal."""
    from pricing.io import ContractError

    exc = ContractError("table 'items' is missing: expected items.parquet in data/x")
    text = str(exc)
    records = [
        ("prefect.task_runs", logging.ERROR, f"Task run failed with exception: {exc!r}", exc),
        (
            "prefect.task_runs",
            logging.ERROR,
            f'Finished in state Failed("Task run encountered an exception ContractError: {text}")',
            None,
        ),
        (
            "prefect.flow_runs",
            logging.ERROR,
            f"Encountered exception during execution: {exc!r}",
            exc,
        ),
        (
            "prefect.flow_runs",
            logging.INFO,
            f'Finished in state Failed("Flow run encountered an exception: ContractError: {text}")',
            None,
        ),
    ]
    logger_filter, console = cli._NoTracebackForExpected(), cli._ErrorOnce()
    for name, level, msg, err in records:
        record = _record(name, level, msg, err)
        assert logger_filter.filter(record)  # the API log keeps it (without the traceback)
        assert not console.filter(record), msg
    kept = [
        _record("prefect.flow_runs", logging.INFO, "Beginning flow run 'x' for flow 'training'"),
        _record("prefect.task_runs", logging.ERROR, "failed", RuntimeError("a bug")),
    ]
    for record in kept:
        logger_filter.filter(record)
        assert console.filter(record)
    assert kept[1].exc_info is not None  # an unexpected error keeps its traceback


def test_the_command_line_ends_fast_on_a_missing_folder(tmp_path: Path) -> None:
    """The real command: no Prefect server line, one error line, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # none to reuse
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--data-dir", str(tmp_path / "nope")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --data-dir {tmp_path / 'nope'}: no such folder"
    ]
    assert "temporary server" not in proc.stdout + proc.stderr
