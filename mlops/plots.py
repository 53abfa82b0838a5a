"""Figures logged with each run: calibration, demand curves of sample users, profit against price."""

from __future__ import annotations

from typing import Any

import numpy as np

from pricing.metrics import calibration_curve


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(y: np.ndarray, offer_probs: dict[str, np.ndarray], n_bins: int = 15) -> Any:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    top = 0.0
    for name, p in offer_probs.items():
        cc = calibration_curve(y, p, n_bins)
        cc = cc[cc["count"] > 0]
        ax.plot(cc["mean_pred"], cc["frac_pos"], "o-", label=name)
        top = max(top, float(cc["mean_pred"].max()), float(cc["frac_pos"].max()))
    ax.set_xlim(0, min(1, top * 1.1 + 0.01))
    ax.set_ylim(0, min(1, top * 1.1 + 0.01))
    ax.set_xlabel("predicted purchase probability")
    ax.set_ylabel("observed purchase rate")
    ax.set_title("Calibration on the test split")
    ax.legend()
    fig.tight_layout()
    return fig


def demand_figure(curves: dict[str, Any], model: str, n_pairs: int = 6, seed: int = 0) -> Any:
    """Predicted (and, on simulated data, true) demand against price for sample test offers."""
    plt = _plt()
    grid, probs = curves["grid"], curves["probs"][model]
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(grid), size=min(n_pairs, len(grid)), replace=False)
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, r in zip(axes.ravel(), rows, strict=False):
        ratio = grid[r] / curves["list_price"][r]
        ax.plot(ratio, probs[r], "o-", label=model)
        if "truth" in curves:
            ax.plot(ratio, curves["truth"][r], "k--", label="truth")
        ax.set_xlabel("price / list price")
        ax.set_ylabel("P(purchase)")
        ax.set_title(f"test offer #{r}")
    axes.ravel()[0].legend()
    fig.suptitle("Demand curves of sample users")
    fig.tight_layout()
    return fig


def profit_figure(curves: dict[str, Any], model: str, n_pairs: int = 6, seed: int = 1) -> Any:
    """Expected profit against price: the curve the optimizer maximizes, with the true one."""
    plt = _plt()
    grid, probs, cost = curves["grid"], curves["probs"][model], curves["unit_cost"]
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(grid), size=min(n_pairs, len(grid)), replace=False)
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, r in zip(axes.ravel(), rows, strict=False):
        ratio = grid[r] / curves["list_price"][r]
        ax.plot(ratio, (grid[r] - cost[r]) * probs[r], "o-", label=model)
        if "truth" in curves:
            ax.plot(ratio, (grid[r] - cost[r]) * curves["truth"][r], "k--", label="truth")
        ax.set_xlabel("price / list price")
        ax.set_ylabel("expected profit")
    axes.ravel()[0].legend()
    fig.suptitle("Expected profit against price")
    fig.tight_layout()
    return fig
