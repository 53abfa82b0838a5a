"""The `pricing` command's help and its end-of-run summary (no flow run: the parser and the text)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pytest

from flows.cli import _subparsers, build_parser
from tasks.report import summary_text


def _all_parsers(
    parser: argparse.ArgumentParser, path: str = "pricing"
) -> dict[str, argparse.ArgumentParser]:
    out = {path: parser}
    for action in _subparsers(parser):
        for name, sub in action.choices.items():
            out.update(_all_parsers(sub, f"{path} {name}"))
    return out


def test_every_option_of_every_subcommand_has_help_and_shows_its_default() -> None:
    parsers = _all_parsers(build_parser())
    assert {"pricing run", "pricing data tafeng", "pricing serve", "pricing loop"} <= set(parsers)
    for path, parser in parsers.items():
        if path != "pricing":
            assert parser.description, f"{path}: no description"
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{path} {action.option_strings[0]}: no help text"
            default = action.default
            if default is not None and not isinstance(default, bool):
                assert f"(default: {default})" in " ".join(text.split()), (
                    f"{path} {action.option_strings[0]}: default {default!r} not shown"
                )


def test_pricing_run_help_names_the_report_json_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "--report-json FILE" in out and "--seed SEED" in out


REPORT = {
    "model": "lightgbm",
    "dataset": "shop",
    "split": {"n_train": 2000, "n_test": 600},
    "metrics": {
        "lightgbm": {"profit_regret": 0.031, "uplift_vs_list": 0.12, "log_loss": 0.31, "auc": 0.7,
                     "ece": 0.01},
        "logistic": {"profit_regret": 0.05, "uplift_vs_list": 0.1, "log_loss": 0.33, "auc": 0.66,
                     "ece": 0.02},
        "list_price": {"profit_regret": 0.2, "uplift_vs_list": 0.0, "log_loss": 0.4,
                       "auc": float("nan"), "ece": float("nan")},
    },
    "registered_model": "price-response",
    "model_version": "3",
    "promoted": True,
    "promotion_reasons": ["beats the reference: profit_regret 0.0310 < 0.2000"],
    "links": {"MLflow run": "http://127.0.0.1:5000/#/experiments/1/runs/abc"},
}  # fmt: skip


def test_the_run_summary_fits_on_one_screen_with_models_decision_and_links() -> None:
    text = summary_text(REPORT)
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 120
    main = next(line for line in lines if line.startswith("* lightgbm"))
    assert "0.0310" in main and "0.3100" in main
    assert any(line.startswith("  list_price") and line.rstrip().endswith("-") for line in lines)
    assert "version 3 of price-response: PROMOTED to champion" in text
    assert "beats the reference" in text
    assert "http://127.0.0.1:5000/#/experiments/1/runs/abc" in text


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", (), info)


def test_an_expected_error_loses_prefects_traceback_and_others_keep_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pricing run` on data that fails validation: Prefect's log lines, then one error line."""
    from flows.cli import quiet
    from tasks.validation import ValidationFailed

    for key in ("MLFLOW_DISABLE_TELEMETRY", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    quiet()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    task_runs = logging.getLogger("prefect.task_runs")
    expected, unexpected = _record(ValidationFailed("bad")), _record(RuntimeError("bug"))
    assert all(f.filter(expected) for f in task_runs.filters if isinstance(f, logging.Filter))
    assert expected.exc_info is None
    assert all(f.filter(unexpected) for f in task_runs.filters if isinstance(f, logging.Filter))
    assert unexpected.exc_info is not None


def test_pricing_loop_passes_the_shoppers_options_to_the_flow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    import flows.loop
    from flows.cli import main

    seen: dict[str, object] = {}
    monkeypatch.setattr(flows.loop, "loop", lambda **kw: seen.update(kw) or {"rounds": []})
    assert main(["loop", "--out", str(tmp_path), "--rounds", "2"]) == 0
    assert seen["shoppers"] == "browse" and seen["same_shoppers"] is True
    assert seen["dr_calibration"] is False
    assert (seen["min_sample"], seen["max_sample"]) == (2000, 10000)  # the flow's defaults
    argv = ["loop", "--out", str(tmp_path), "--shoppers", "taste", "--fresh-shoppers"]
    assert main([*argv, "--dr-calibration"]) == 0
    assert seen["shoppers"] == "taste" and seen["same_shoppers"] is False
    assert seen["dr_calibration"] is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loop", "--shoppers", "random"])
