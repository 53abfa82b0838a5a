"""Training feedback: a progress bar in a terminal, a log line per epoch, curves in the MLflow run.

Kept apart from the model so the flow decides where feedback goes: `BertDemand` shows a bar only
when stderr is a terminal; the training task adds `EpochLog` (lines in the Prefect run log) and
`ActiveRunLogger` (learning curves in the MLflow run the task opened) through the Trainer overrides.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger


def progress_bar() -> pl.Callback | None:
    """A Rich progress bar when stderr is a terminal (Lightning's tqdm bar without Rich), else None.

    Not in a log file or a Prefect worker's captured output, where a bar is noise.
    """
    if not sys.stderr.isatty():
        return None
    try:
        from pytorch_lightning.callbacks import RichProgressBar

        return RichProgressBar(leave=True)
    except (ImportError, ModuleNotFoundError):
        from pytorch_lightning.callbacks import TQDMProgressBar

        return TQDMProgressBar()


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `12s`: a duration for a log line."""
    if not math.isfinite(seconds):
        return "?"
    s = max(int(round(seconds)), 0)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class EpochLog(pl.Callback):
    """One line per epoch: mean train loss, validation loss and AUC, time taken, and an ETA.

    The ETA assumes the remaining epochs (up to `max_epochs`; early stopping may end sooner) take
    as long as the mean epoch so far; with `max_steps` set it scales by steps instead.

    Args:
        log: where lines go (the Prefect run logger's `info` in a flow, `print` elsewhere).
        label: the model's name at the start of each line.
    """

    def __init__(self, log: Callable[[str], Any], label: str = "bert") -> None:
        self._emit = log
        self.label = label
        self._t0 = self._epoch_t0 = 0.0
        self._loss_sum = 0.0
        self._loss_n = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_t0 = time.perf_counter()
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach() if hasattr(loss, "detach") else loss)
            self._loss_n += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        epoch = trainer.current_epoch + 1
        elapsed = now - self._t0
        remaining = _remaining_fraction(trainer, epoch)
        eta = elapsed / max(1.0 - remaining, 1e-9) * remaining if remaining < 1 else math.nan
        metrics = trainer.callback_metrics
        parts = [f"{self.label} epoch {epoch}/{_max_epochs(trainer)}"]
        if self._loss_n:
            parts.append(f"train/loss {self._loss_sum / self._loss_n:.4f}")
        for key in ("val/loss", "val/auc"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4f}")
        parts.append(f"{format_duration(now - self._epoch_t0)}/epoch")
        parts.append(f"ETA {format_duration(eta)}" if remaining > 0 else "last epoch")
        self._emit(", ".join(parts))


def _max_epochs(trainer: pl.Trainer) -> str:
    return str(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else "?"


def _remaining_fraction(trainer: pl.Trainer, epochs_done: int) -> float:
    """Share of the planned training still to do (0 at the end), by steps when `max_steps` binds."""
    if trainer.max_steps and trainer.max_steps > 0:
        done = trainer.global_step / trainer.max_steps
        if trainer.max_epochs and trainer.max_epochs > 0:
            done = max(done, epochs_done / trainer.max_epochs)
        return float(min(max(1.0 - done, 0.0), 1.0))
    if trainer.max_epochs and trainer.max_epochs > 0:
        return float(max(trainer.max_epochs - epochs_done, 0) / trainer.max_epochs)
    return 1.0


class ActiveRunLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into a run someone else owns (`run_id`).

    Lightning's own `finalize` marks the run FINISHED when `fit` ends; here the run belongs to the
    training task, which ends it (FINISHED or FAILED) once the model is also evaluated.
    """

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        super().__init__(tracking_uri=tracking_uri, run_id=run_id, log_model=False)

    def finalize(self, status: str = "success") -> None:
        return None


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing <a cloud service>" lines (nothing to act on here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_TIP_FILTER = _DropTips()


def quiet_lightning() -> None:
    """Silence what a user cannot act on, at its source (idempotent): Lightning's Tip lines, and
    the deprecation warning Lightning's own `_pytree` raises against the installed torch."""
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning
    )
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
