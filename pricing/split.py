"""Time-based splits: train on the past, validate on the recent past, test on the future."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pricing import schema as S


@dataclass(frozen=True)
class TimeSplit:
    """Row positions of each part of an offers table and the boundaries between them."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_start: pd.Timestamp
    test_start: pd.Timestamp

    def summary(self) -> dict[str, object]:
        return {
            "test_start": self.test_start.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "n_train": int(len(self.train)),
            "n_valid": int(len(self.valid)),
            "n_test": int(len(self.test)),
        }


def time_split(
    offers: pd.DataFrame,
    test_start: pd.Timestamp | str | None = None,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
) -> TimeSplit:
    """Split offers by `ts`: test from `test_start` (default: the last `test_fraction` of the time
    span), validation the `valid_fraction` of the span just before it, train the rest.

    Raises:
        ValueError: a part would be empty.
    """
    ts = pd.to_datetime(offers[S.TS], utc=True)
    lo, hi = ts.min(), ts.max()
    if test_start is None:
        t_test = lo + (hi - lo) * (1.0 - test_fraction)
    else:
        t_test = pd.Timestamp(test_start)
        t_test = t_test.tz_localize("UTC") if t_test.tzinfo is None else t_test.tz_convert("UTC")
    t_valid = t_test - (hi - lo) * valid_fraction
    test = np.flatnonzero((ts >= t_test).to_numpy())
    valid = np.flatnonzero(((ts >= t_valid) & (ts < t_test)).to_numpy())
    train = np.flatnonzero((ts < t_valid).to_numpy())
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"time split leaves an empty part (train={len(train)}, test={len(test)}); "
            f"offers span {lo} .. {hi}, test starts {t_test}"
        )
    return TimeSplit(train, valid, test, t_valid, t_test)
