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


def split_bounds(
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    test_start: pd.Timestamp | str | None = None,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(valid_start, test_start) for offers spanning `lo` .. `hi` (see `time_split`): what a
    partitioned pipeline needs from the data to split every partition the same way."""
    if test_start is None:
        t_test = lo + (hi - lo) * (1.0 - test_fraction)
    else:
        t_test = pd.Timestamp(test_start)
        t_test = t_test.tz_localize("UTC") if t_test.tzinfo is None else t_test.tz_convert("UTC")
    return t_test - (hi - lo) * valid_fraction, t_test


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
    t_valid, t_test = split_bounds(lo, hi, test_start, test_fraction, valid_fraction)
    split = split_at(ts, t_valid, t_test)
    if len(split.train) == 0 or len(split.test) == 0:
        raise ValueError(
            f"time split leaves an empty part (train={len(split.train)}, test={len(split.test)}); "
            f"offers span {lo} .. {hi}, test starts {t_test}"
        )
    return split


def split_at(ts: pd.Series, valid_start: pd.Timestamp, test_start: pd.Timestamp) -> TimeSplit:
    """The rows of offers with timestamps `ts` (UTC) in each part, at given boundaries (empty parts
    allowed: one partition of the data may have no test offers)."""
    test = np.flatnonzero((ts >= test_start).to_numpy())
    valid = np.flatnonzero(((ts >= valid_start) & (ts < test_start)).to_numpy())
    train = np.flatnonzero((ts < valid_start).to_numpy())
    return TimeSplit(train, valid, test, valid_start, test_start)
