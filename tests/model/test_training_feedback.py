"""Feedback while BERT trains: a line per epoch with loss and ETA, learning curves in the child run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from lightning_modules.callbacks import format_duration
from mlops.config import ExperimentConfig
from mlops.models import PricingData


def test_format_duration_reads_like_a_clock() -> None:
    assert format_duration(12.4) == "12s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(float("nan")) == "?"


def test_bert_child_run_has_learning_curves_and_the_log_has_an_epoch_line_with_an_eta(
    tiny_splits: tuple[PricingData, PricingData, PricingData],
    bert_config: dict[str, Any],
    mlflow_store: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow

    from mlops import tracking
    from tasks.training import train_price_model

    train, valid, _ = tiny_splits
    cfg = ExperimentConfig(model="bert", bert={**bert_config, "max_epochs": 2})
    tracking.configure(mlflow_store)
    exp_id = tracking.experiment_id("feedback", tmp_path / "artifacts")
    with (
        caplog.at_level(logging.INFO, logger="tasks.training"),
        mlflow.start_run(experiment_id=exp_id) as parent,
    ):
        trained = train_price_model.fn(
            "bert", train, valid, cfg, {}, exp_id, parent.info.run_id, "candidate"
        )
    assert trained.run_id is not None
    client = mlflow.MlflowClient()
    child = client.get_run(trained.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["model"] == "bert" and child.info.status == "FINISHED"
    train_curve = client.get_metric_history(trained.run_id, "train/loss")
    val_curve = client.get_metric_history(trained.run_id, "val/loss")
    assert len(train_curve) >= 2 and len({m.step for m in train_curve}) == len(train_curve)
    assert len(val_curve) == 2  # one point per epoch, at its step
    assert "train.fit_seconds" in child.data.metrics and "bert.d_model" in child.data.params
    epochs = [r.getMessage() for r in caplog.records if "bert epoch" in r.getMessage()]
    assert len(epochs) == 2, caplog.text
    assert "epoch 1/2" in epochs[0] and "train/loss" in epochs[0] and "val/loss" in epochs[0]
    assert "ETA" in epochs[0] and "last epoch" in epochs[1]
