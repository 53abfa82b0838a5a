"""The run's demand and profit plots: every model against the truth, each model's chosen price marked."""

from __future__ import annotations

import numpy as np
import pytest

from mlops import plots


def _curves(n: int = 8, k: int = 5) -> dict:
    rng = np.random.default_rng(0)
    list_price = rng.uniform(2, 10, n)
    grid = list_price[:, None] * np.linspace(0.7, 1.3, k)[None, :]
    probs = {
        "lightgbm": np.clip(0.6 - 0.3 * grid / list_price[:, None], 0.01, 0.99),
        "logistic": np.clip(0.5 - 0.2 * grid / list_price[:, None], 0.01, 0.99),
    }
    return {
        "grid": grid,
        "list_price": list_price,
        "unit_cost": 0.6 * list_price,
        "probs": probs,
        "price": {name: grid[:, 2 + i] for i, name in enumerate(probs)},
        "truth": np.clip(0.55 - 0.25 * grid / list_price[:, None], 0.01, 0.99),
    }


@pytest.mark.parametrize("figure", [plots.demand_figure, plots.profit_figure])
def test_every_model_truth_and_chosen_prices_are_drawn(figure: object) -> None:
    import matplotlib.pyplot as plt

    curves = _curves()
    fig = figure(curves, "lightgbm")  # type: ignore[operator]
    try:
        ax = fig.axes[0]
        labels = {line.get_label() for line in ax.get_lines()}
        assert {"lightgbm", "logistic", "truth", "list price"} <= labels
        markers = [ln for ln in ax.get_lines() if ln.get_marker() in ("*", "o")]
        assert len(markers) == 2  # one chosen price per model; the candidate's is the star
        star = next(ln for ln in markers if ln.get_marker() == "*")
        assert star.get_xdata()[0] == pytest.approx(np.linspace(0.7, 1.3, 5)[2])
        assert "star: lightgbm" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
