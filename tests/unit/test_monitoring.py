from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing.monitoring import category_shift, live_calibration, psi


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, rng.normal(size=20_000)) < 0.01
    small, large = psi(ref, rng.normal(0.2, 1, 20_000)), psi(ref, rng.normal(1.0, 1, 20_000))
    assert 0 < small < large and large > 0.25


def test_category_shift_zero_for_equal_mix() -> None:
    a = pd.Series(["view"] * 80 + ["purchase"] * 20)
    assert category_shift(a, a.sample(frac=1, random_state=0)) == pytest.approx(0, abs=1e-12)
    assert category_shift(a, pd.Series(["view"] * 50 + ["purchase"] * 50)) > 0.1


def test_live_calibration_z_is_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.3, 50_000)
    y = rng.random(len(p)) < p
    assert abs(live_calibration(p, y)["z"]) < 4
    assert live_calibration(p * 2, y)["z"] < -20
