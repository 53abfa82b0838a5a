"""Training feedback: a progress bar in a terminal, an estimate, a log line per epoch, MLflow curves.

Kept apart from the model so the flow decides where feedback goes: `BertDemand` shows a bar only
when stderr is a terminal; the training task adds `EpochLog` (lines in the Prefect run log) and
`ActiveRunLogger` (learning curves in the MLflow run the task opened) through the Trainer overrides.

One numbering everywhere: epochs are counted from 1 (`epoch 1/4`) in the bar and in the log lines.
While the bar is on screen, log lines are printed above it (`EpochProgressBar`), never into it.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import MLFlowLogger


def epoch_label(epoch: int, trainer: pl.Trainer) -> str:
    """`epoch 2/4`: the 1-based `epoch` of the planned `max_epochs` (`?` when unbounded)."""
    return f"epoch {epoch}/{_max_epochs(trainer)}"


class EpochProgressBar(RichProgressBar):
    """Lightning's Rich bar, numbered like the log lines, with log lines printed above it.

    While the bar is live, logging's terminal handlers (Prefect's console handler, Lightning's
    own) write through the bar's Rich console, which prints each line above the bar; a line
    written straight to the terminal would land inside the bar.
    """

    def __init__(self) -> None:
        super().__init__(leave=True)
        self._rerouted: list[tuple[Any, str, Any]] = []

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The bar's metrics without `v_num` (the MLflow or CSV logger's run id: noise here)."""
        metrics = dict(super().get_metrics(trainer, pl_module))
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        label = epoch_label(current_epoch + 1, self.trainer)
        return f"{label:{len(self.validation_description)}}"  # as wide as "Validation"

    def _init_progress(self, trainer: pl.Trainer) -> None:
        super()._init_progress(trainer)
        if self.progress is not None and not self._progress_stopped and not self._rerouted:
            self._rerouted = _reroute_terminal_handlers(self.progress.console)

    def _stop_progress(self) -> None:
        _restore(self._rerouted)
        self._rerouted = []
        super()._stop_progress()


def progress_bar() -> pl.Callback | None:
    """An `EpochProgressBar` when stderr is a terminal, else None.

    Not in a log file or a Prefect worker's captured output, where a bar is noise.
    """
    return EpochProgressBar() if sys.stderr.isatty() else None


def _terminal_handlers() -> list[logging.Handler]:
    """Every logging handler (the root's and each logger's) that writes to a terminal."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    seen: dict[int, logging.Handler] = {}
    for lg in loggers:
        for h in lg.handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                isatty = getattr(stream, "isatty", None)
                if callable(isatty) and isatty():
                    seen.setdefault(id(h), h)
    return list(seen.values())


def _reroute_terminal_handlers(console: Any) -> list[tuple[Any, str, Any]]:
    """Point the terminal handlers at `console` (Rich prints above its live display); what to undo.

    A handler that prints through its own Rich console (Prefect's) has that console's file
    rerouted too.
    """
    from rich.console import Console

    undo: list[tuple[Any, str, Any]] = []
    for h in _terminal_handlers():
        assert isinstance(h, logging.StreamHandler)
        proxy: Any = _LinesAbove(console, h.stream)
        own = getattr(h, "console", None)
        if isinstance(own, Console):
            undo.append((own, "file", own.file))
            own.file = proxy
        undo.append((h, "stream", h.setStream(proxy)))
    return undo


class _LinesAbove(io.TextIOBase):
    """A terminal stream whose complete lines a live Rich `console` prints above its display.

    Rich's own `FileProxy` does this for `sys.stdout`/`sys.stderr`, but a Rich console (Prefect's
    handler prints through one) unwraps a `FileProxy` to the file behind it, and it wraps long
    lines at the terminal's width; this one is used as it is and never wraps (`soft_wrap`).
    """

    def __init__(self, console: Any, file: Any) -> None:
        super().__init__()
        self._console, self._file, self._partial = console, file, ""

    @property
    def rich_proxied_file(self) -> Any:  # what a Rich console writing here unwraps this to
        return self

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._file, "encoding", None) or "utf-8")

    def write(self, text: str) -> int:
        from rich.text import Text

        *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            self._console.print(Text("\n").join(Text.from_ansi(x) for x in lines), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            from rich.text import Text

            self._console.print(Text.from_ansi(self._partial), soft_wrap=True)
            self._partial = ""

    def isatty(self) -> bool:
        return bool(self._file.isatty())

    def fileno(self) -> int:
        return int(self._file.fileno())


def _restore(undo: list[tuple[Any, str, Any]]) -> None:
    for obj, attr, value in reversed(undo):
        if attr == "stream":
            proxy = obj.setStream(value)
            if proxy is not None and hasattr(proxy, "flush"):
                proxy.flush()
        else:
            setattr(obj, attr, value)


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


# How many training steps the estimate is timed on: 10% of an epoch, at least 1, at most 20. The
# first step (warm-up: the first batch, lazy allocations) is not timed.
ESTIMATE_MAX_STEPS = 20
ESTIMATE_EPOCH_SHARE = 0.1


class EpochLog(pl.Callback):
    """What training will take, then one line per epoch: loss, validation loss and AUC, an ETA.

    At the start, the plan (`bert: 4 epochs of 300 steps (76800 training rows)`); after the first
    steps, an estimate timed on them (`bert: about 3m20s for 4 epochs (1200 steps at 6.0
    steps/s)`); after each epoch, its line (`bert epoch 1/4, ...`). The ETA assumes the remaining
    epochs (up to `max_epochs`; early stopping may end sooner) take as long as the mean epoch so
    far; with `max_steps` set it scales by steps instead.

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
        self._steps = 0  # training steps (batches) so far, over every epoch
        self._timer_start = 0.0  # the end of the first step
        self._estimate_at = 0  # the step after which the estimate is printed (0: none)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._steps, self._estimate_at = 0, 0
        per_epoch = trainer.num_training_batches
        total = planned_steps(trainer)
        if math.isfinite(per_epoch) and per_epoch > 0 and total >= 2:
            timed = min(ESTIMATE_MAX_STEPS, max(1, math.ceil(ESTIMATE_EPOCH_SHARE * per_epoch)))
            self._estimate_at = min(1 + timed, int(total))
        if not trainer.is_global_zero:
            return
        rows = _dataset_size(trainer)
        plan = (
            f"{self.label}: {_max_epochs(trainer)} epoch(s) of "
            f"{int(per_epoch) if math.isfinite(per_epoch) else '?'} steps"
            + (f" ({rows} training rows)" if rows is not None else "")
        )
        if self._estimate_at:
            plan += f"; an estimate after the first {self._estimate_at} steps"
        self._emit(plan)

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
        self._steps += 1
        if self._steps == 1:
            self._timer_start = time.perf_counter()
        elif self._steps == self._estimate_at and trainer.is_global_zero:
            rate = (self._steps - 1) / max(time.perf_counter() - self._timer_start, 1e-9)
            self._emit(estimate_line(self.label, trainer, rate))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        epoch = trainer.current_epoch + 1
        elapsed = now - self._t0
        remaining = _remaining_fraction(trainer, epoch)
        eta = elapsed / max(1.0 - remaining, 1e-9) * remaining if remaining < 1 else math.nan
        metrics = trainer.callback_metrics
        parts = [f"{self.label} {epoch_label(epoch, trainer)}"]
        if self._loss_n:
            parts.append(f"train/loss {self._loss_sum / self._loss_n:.4f}")
        for key in ("val/loss", "val/auc"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4f}")
        parts.append(f"{format_duration(now - self._epoch_t0)}/epoch")
        parts.append(f"ETA {format_duration(eta)}" if remaining > 0 else "last epoch")
        self._emit(", ".join(parts))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epochs = trainer.current_epoch  # epochs completed (Lightning counts the last one)
        planned = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        line = (
            f"{self.label}: trained {epochs} epoch(s) in "
            f"{format_duration(time.perf_counter() - self._t0)}"
        )
        if planned is not None and epochs < planned:
            line += f" (stopped early: {epochs} of {planned})"
        self._emit(line)


def planned_steps(trainer: pl.Trainer) -> float:
    """Training steps (batches) the run plans: every epoch's, or fewer when `max_steps` binds."""
    per_epoch = trainer.num_training_batches
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf
    total = per_epoch * epochs if per_epoch else 0.0
    if trainer.max_steps and trainer.max_steps > 0:
        total = min(total, trainer.max_steps * max(trainer.accumulate_grad_batches, 1))
    return float(total)


def estimate_line(label: str, trainer: pl.Trainer, rate: float) -> str:
    """`bert: about 3m20s for 4 epochs (1200 steps at 6.0 steps/s)`, from the timed steps' `rate`."""
    total = planned_steps(trainer)
    epochs = _max_epochs(trainer)
    if not math.isfinite(total):
        return f"{label}: {rate:.1f} steps/s; {epochs} epochs of unknown length"
    return (
        f"{label}: about {format_duration(total / rate)} for {epochs} epoch(s) "
        f"({int(total)} steps at {rate:.1f} steps/s; early stopping may end sooner)"
    )


def _dataset_size(trainer: pl.Trainer) -> int | None:
    loader = trainer.train_dataloader
    try:
        return len(loader.dataset) if loader is not None else None  # type: ignore[union-attr,arg-type]
    except (TypeError, AttributeError):
        return None


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


# Lightning's lines a user cannot act on: cloud-service tips, which accelerators exist (the run's
# device is decided by `demand.device_plan` and shown in the diagnostics), the CUDA device list,
# how it sizes the learning-rate schedule, the seed, and why `fit` returned.
NOISE_PREFIXES = (
    "💡 Tip",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "LOCAL_RANK:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "`Trainer.fit` stopped:",  # EpochLog's last line says how training ended
    "Seed set to",
)
NOISY_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",
    "lightning_fabric.accelerators.cuda",
    "lightning_fabric.utilities.seed",
)


class _DropNoise(logging.Filter):
    """Drops the log records that start with one of `NOISE_PREFIXES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_PREFIXES)


_NOISE_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Silence what a user cannot act on, at its source (idempotent): Lightning's `NOISE_PREFIXES`
    lines, and the deprecation warning Lightning's own `_pytree` raises against the installed torch."""
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning
    )
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
