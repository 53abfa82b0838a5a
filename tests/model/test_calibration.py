"""Temperature scaling of the BERT price head (`bert.calibrate`): fitted on the validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bert_fixtures import TINY_BERT

from mlops.models import PricingData
from pricing import metrics as M
from pricing import schema as S


@pytest.fixture(scope="module")
def calibrated(small_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = small_splits
    model = BertDemand({**TINY_BERT, "max_epochs": 2, "calibrate": True}, seed=0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model


def test_the_temperature_lowers_validation_log_loss_and_keeps_demand_monotone(
    calibrated: Any, small_splits: Any
) -> None:
    _, valid, test = small_splits
    t = calibrated.diagnostics["temperature"]
    assert np.isfinite(t) and 0.25 <= t <= 4.0
    y = valid.offers[S.PURCHASED].to_numpy(float)
    with_t = M.log_loss(y, calibrated.predict(valid))
    head = calibrated.net.head
    scale = float(head.scale)
    with torch.no_grad():
        head.scale.fill_(1.0)
    calibrated._ab_cache = None
    without = M.log_loss(y, calibrated.predict(valid))
    with torch.no_grad():
        head.scale.fill_(scale)
    calibrated._ab_cache = None
    assert with_t <= without + 1e-9
    grid = test.list_price()[:, None] * np.linspace(0.5, 1.5, 11)[None, :]
    assert (np.diff(calibrated.predict_grid(test, grid), axis=1) <= 1e-12).all()


def test_serving_and_a_reload_use_the_same_temperature(
    calibrated: Any, small_splits: Any, tmp_path: Path
) -> None:
    from mlops.models import load_model, save_model
    from scorer.accel import accelerate

    test = small_splits[2]
    acc = accelerate(calibrated)
    assert acc.notes["demand"] == "numpy head", acc.notes
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[0]]
    idx = np.arange(len(calibrated.catalog))
    grid = calibrated.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.7, 1.3, 5)
    state = calibrated.user_state(events)
    want = calibrated.demand(state, idx, grid)
    np.testing.assert_allclose(acc.demand(state, idx, grid), want, atol=1e-5)
    save_model(calibrated, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert float(loaded.net.head.scale) == pytest.approx(float(calibrated.net.head.scale))
    np.testing.assert_allclose(loaded.demand(loaded.user_state(events), idx, grid), want, atol=1e-6)
