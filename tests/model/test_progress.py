"""What a person sees while BERT trains: one epoch numbering in the bar and the log, an estimate
after the first steps, log lines above the bar (never inside it), no Lightning banners."""

from __future__ import annotations

import io
import logging
import re
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from lightning_modules import callbacks as C
from mlops.models import PricingData

EPOCH = re.compile(r"epoch (\d+)/(\d+|\?)", re.IGNORECASE)


def _trainer(**kw: Any) -> Any:
    """The Trainer attributes the feedback callbacks read."""
    base = {
        "current_epoch": 0,
        "max_epochs": 4,
        "max_steps": -1,
        "global_step": 0,
        "num_training_batches": 100,
        "accumulate_grad_batches": 1,
        "is_global_zero": True,
        "callback_metrics": {},
        "train_dataloader": None,
    }
    return SimpleNamespace(**{**base, **kw})


def test_the_bar_and_the_epoch_line_count_epochs_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = C.progress_bar()
    assert bar is not None
    lines: list[str] = []
    log = C.EpochLog(lines.append, label="bert")
    for epoch in range(4):
        trainer = _trainer(current_epoch=epoch)
        bar._trainer = trainer
        log.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
        in_bar = EPOCH.search(bar._get_train_description(epoch))
        in_log = EPOCH.search(lines[-1])
        assert in_bar and in_log, (bar._get_train_description(epoch), lines[-1])
        assert in_bar.groups() == in_log.groups() == (str(epoch + 1), "4")
    assert lines[0].startswith("bert epoch 1/4") and lines[-1].endswith("last epoch")


def test_an_estimate_follows_the_first_steps_once() -> None:
    lines: list[str] = []
    log = C.EpochLog(lines.append, label="bert_wide")
    trainer = _trainer(num_training_batches=100, max_epochs=4)
    log.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert lines == ["bert_wide: 4 epoch(s) of 100 steps; an estimate after the first 11 steps"]
    log.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    for _ in range(30):
        log.on_train_batch_end(trainer, None, {"loss": 0.5}, None, 0)  # type: ignore[arg-type]
    [estimate] = lines[1:]
    assert re.fullmatch(
        r"bert_wide: about \S+ for 4 epoch\(s\) \(400 steps at [0-9.]+ steps/s; early stopping "
        r"may end sooner\)",
        estimate,
    ), estimate


def test_max_steps_bounds_the_planned_steps() -> None:
    trainer = _trainer(num_training_batches=100, max_epochs=4, max_steps=150)
    assert C.planned_steps(trainer) == 150
    assert "(150 steps at 2.0 steps/s" in C.estimate_line("bert", trainer, 2.0)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_go_above_a_live_bar_and_back_to_the_terminal_after() -> None:
    """While the bar is live, a terminal handler's line is printed by the bar's console (above
    the bar); written straight to the terminal it would land inside the bar."""
    from rich.console import Console
    from rich.progress import Progress

    terminal, screen = _Terminal(), _Terminal()
    handler = logging.StreamHandler(terminal)
    logger = logging.getLogger("tests.progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        console = Console(file=screen, force_terminal=True, width=100)
        with Progress(console=console, auto_refresh=False) as progress:
            progress.add_task("epoch 1/4", total=10)
            undo = C._reroute_terminal_handlers(console)
            logger.warning("bert epoch 1/4, train/loss 0.3")
            C._restore(undo)
        assert terminal.getvalue() == ""
        assert "bert epoch 1/4, train/loss 0.3" in screen.getvalue()
        logger.warning("after the bar")
        assert terminal.getvalue() == "after the bar\n"
    finally:
        logger.removeHandler(handler)


BANNERS = (
    "GPU available",
    "TPU available",
    "HPU available",
    "LOCAL_RANK",
    "Loading `train_dataloader`",
    "Seed set to",
    "`Trainer.fit` stopped",
    "💡 Tip",
)


def test_a_tiny_training_run_prints_its_plan_estimate_and_epochs_but_no_lightning_banner(
    tiny_splits: tuple[PricingData, PricingData, PricingData],
    bert_config: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lightning_modules.demand import BertDemand

    train, valid, _ = tiny_splits
    lines: list[str] = []
    model = BertDemand(
        {**bert_config, "max_epochs": 2}, seed=0, trainer={"callbacks": [C.EpochLog(lines.append)]}
    )
    with caplog.at_level(logging.INFO):
        model.fit(train, valid)
    out = capfd.readouterr()
    printed = out.out + out.err + caplog.text
    assert not [b for b in BANNERS if b in printed], printed
    assert lines[0].startswith("bert: 2 epoch(s) of ") and "training rows" in lines[0]
    assert any(line.startswith("bert: about ") for line in lines), lines
    assert [EPOCH.search(line).group(0) for line in lines if " epoch " in line] == [  # type: ignore[union-attr]
        "epoch 1/2",
        "epoch 2/2",
    ]
    assert lines[-1].startswith("bert: trained 2 epoch(s) in ")
