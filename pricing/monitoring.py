"""Monitoring: data drift between the training data and live traffic, and live calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pricing import schema as S


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference` (quantile bins of the reference).

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    ref = np.asarray(reference, float)
    cur = np.asarray(current, float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0
    edges[0], edges[-1] = -np.inf, np.inf
    r = np.histogram(ref, edges)[0] / len(ref)
    c = np.histogram(cur, edges)[0] / len(cur)
    r, c = np.clip(r, 1e-6, None), np.clip(c, 1e-6, None)
    return float(np.sum((c - r) * np.log(c / r)))


def category_shift(reference: pd.Series, current: pd.Series) -> float:
    """PSI over the shares of a categorical column (e.g. event types)."""
    cats = sorted(set(reference.dropna().astype(str)) | set(current.dropna().astype(str)))
    r = reference.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    c = current.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    r, c = np.clip(r, 1e-6, None), np.clip(c, 1e-6, None)
    return float(np.sum((c - r) * np.log(c / r)))


def live_calibration(predicted: np.ndarray, purchased: np.ndarray) -> dict[str, float]:
    """Live conversion against the model's prediction, with a z-score of the gap.

    Under a calibrated model the sum of outcomes has mean sum(p) and variance sum(p(1-p)).
    """
    p = np.asarray(predicted, float)
    y = np.asarray(purchased, float)
    if len(p) == 0:
        return {
            "n": 0.0,
            "predicted_rate": float("nan"),
            "observed_rate": float("nan"),
            "z": float("nan"),
        }
    var = float(np.sum(p * (1 - p)))
    z = float((y.sum() - p.sum()) / np.sqrt(var)) if var > 0 else float("nan")
    return {
        "n": float(len(p)),
        "predicted_rate": float(p.mean()),
        "observed_rate": float(y.mean()),
        "z": z,
    }


def drift_report(
    train_offers: pd.DataFrame,
    live_offers: pd.DataFrame,
    items: pd.DataFrame,
    train_events: pd.DataFrame | None = None,
    live_events: pd.DataFrame | None = None,
) -> dict[str, float]:
    """PSI of the offered price/list ratio and, with events, of the event-type mix."""
    lp = items.set_index(S.ITEM_ID)[S.LIST_PRICE].astype(float)

    def ratio(df: pd.DataFrame) -> np.ndarray:
        return (df[S.PRICE].astype(float) / df[S.ITEM_ID].astype(str).map(lp)).to_numpy(float)

    out = {
        "psi_price_ratio": psi(ratio(train_offers), ratio(live_offers)),
        "train_purchase_rate": float(train_offers[S.PURCHASED].mean()),
        "live_purchase_rate": float(live_offers[S.PURCHASED].mean())
        if len(live_offers)
        else float("nan"),
    }
    if train_events is not None and live_events is not None and len(live_events):
        out["psi_event_types"] = category_shift(
            train_events[S.EVENT_TYPE], live_events[S.EVENT_TYPE]
        )
    return out
