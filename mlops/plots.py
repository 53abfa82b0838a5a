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


def _curve_at(ratio: np.ndarray, values: np.ndarray, x: float) -> float:
    """`values` at price ratio `x`, read off the curve (grid positions that are NaN left out)."""
    ok = np.isfinite(ratio) & np.isfinite(values)
    if not ok.any() or not np.isfinite(x):
        return float("nan")
    order = np.argsort(ratio[ok])
    return float(np.interp(x, ratio[ok][order], values[ok][order]))


def _per_offer_figure(
    curves: dict[str, Any],
    main: str,
    value: Any,
    ylabel: str,
    title: str,
    n_pairs: int,
    seed: int,
) -> Any:
    """One panel per sample test offer: every model's curve, the truth, each model's chosen price.

    `value(row, probs)` turns purchase probabilities on the grid into the plotted quantity. The main
    model is drawn thicker; the dotted vertical line is the list price (the list-price policy's pick).
    """
    plt = _plt()
    grid = curves["grid"]
    names = [main, *(n for n in curves["probs"] if n != main)]
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(grid), size=min(n_pairs, len(grid)), replace=False)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, r in zip(axes.ravel(), rows, strict=False):
        ratio = grid[r] / curves["list_price"][r]
        for name in names:
            y = value(r, curves["probs"][name][r])
            main_line = name == main
            ax.plot(
                ratio, y, "-", color=colors[name], lw=2.2 if main_line else 1.1,
                alpha=1.0 if main_line else 0.8, label=name,
            )  # fmt: skip
            chosen = curves.get("price", {}).get(name)
            if chosen is not None:
                x = float(chosen[r] / curves["list_price"][r])
                ax.plot(
                    x, _curve_at(ratio, y, x), marker="*" if main_line else "o",
                    ms=13 if main_line else 6, color=colors[name], mec="k", mew=0.6, ls="none",
                )  # fmt: skip
        if "truth" in curves:
            ax.plot(ratio, value(r, curves["truth"][r]), "k--", lw=1.2, label="truth")
        ax.axvline(1.0, color="0.5", ls=":", lw=1, label="list price")
        ax.set_xlabel("price / list price")
        ax.set_ylabel(ylabel)
        ax.set_title(f"test offer #{r}")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.suptitle(f"{title} (markers: each model's chosen price; star: {main})")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def demand_figure(curves: dict[str, Any], model: str, n_pairs: int = 6, seed: int = 0) -> Any:
    """Predicted demand of every model (and, on simulated data, the truth) against price."""
    return _per_offer_figure(
        curves, model, lambda r, p: p, "P(purchase)", "Demand curves of sample test offers",
        n_pairs, seed,
    )  # fmt: skip


def profit_figure(curves: dict[str, Any], model: str, n_pairs: int = 6, seed: int = 1) -> Any:
    """Expected profit against price: the curve each model's optimizer maximizes, and the true one."""
    grid, cost = curves["grid"], curves["unit_cost"]
    return _per_offer_figure(
        curves, model, lambda r, p: (grid[r] - cost[r]) * p, "expected profit",
        "Expected profit against price", n_pairs, seed,
    )  # fmt: skip
