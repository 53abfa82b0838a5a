"""Temperature scaling of the BERT price head (`bert.calibrate`): fitted on the validation split,
checked on the test split, a later time slice that neither training nor the temperature saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bert_fixtures import TINY_BERT

from mlops.models import PricingData
from pricing import features as F
from pricing import metrics as M
from pricing import schema as S
from pricing.logistic import sigmoid


def _logits(model: Any, data: PricingData) -> tuple[np.ndarray, np.ndarray]:
    """Per offer of `data`, the calibrated model's logit at the offered price, and the label."""
    a, b = model.offer_params(data)  # both already multiplied by the head's scale
    lpr = F.price_features(data.offers[S.PRICE].to_numpy(float), data.list_price())
    return a - b * lpr, data.offers[S.PURCHASED].to_numpy(float)


@pytest.fixture(scope="module")
def calibrated(small_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = small_splits
    model = BertDemand({**TINY_BERT, "max_epochs": 2, "calibrate": True}, seed=0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model


def test_the_temperature_calibrates_held_out_offers_and_keeps_demand_monotone(
    calibrated: Any, small_splits: Any
) -> None:
    """On the validation rows the fit never does worse than no temperature (it falls back to 1),
    so they prove nothing: the checks are on the test split. There the fitted temperature must be
    about the best one for those unseen offers (a temperature 1.5x off costs this model about
    0.03 in log loss and triples its calibration error), and no worse than none."""
    _, _, test = small_splits
    t = calibrated.diagnostics["temperature"]
    assert np.isfinite(t) and 0.25 <= t <= 4.0
    assert t == pytest.approx(1.0 / float(calibrated.net.head.scale))
    z, y = _logits(calibrated, test)  # held out: the temperature's and the weights' unseen rows
    assert len(y) > 1000 and np.isfinite(z).all()
    p = sigmoid(z)
    with_t = M.log_loss(y, p)
    without = M.log_loss(y, sigmoid(z * t))  # the head's scale undone: no temperature
    rescaled = [M.log_loss(y, sigmoid(z * k)) for k in np.exp(np.linspace(-1.4, 1.4, 57))]
    assert with_t <= without + 2e-3, f"the temperature hurts held-out offers: {with_t} > {without}"
    assert with_t <= min(rescaled) + 5e-3, "the fitted temperature is far from the held-out best"
    assert abs(p.mean() - y.mean()) <= 0.015, f"mean {p.mean():.4f} vs rate {y.mean():.4f}"
    assert M.expected_calibration_error(y, p) <= 0.03
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
