"""User buckets and seeded samples that do not depend on how the data is split; engine choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops import engine
from pricing import io as pio
from pricing import schema as S
from pricing.partitions import sample_positions, user_bucket


def test_a_users_bucket_is_the_same_in_any_order_and_spreads_users_evenly() -> None:
    ids = np.array([f"u{k:06d}" for k in range(20_000)])
    buckets = user_bucket(ids, 8)
    shuffled = np.random.default_rng(0).permutation(len(ids))
    assert (user_bucket(ids[shuffled], 8) == buckets[shuffled]).all()
    counts = np.bincount(buckets, minlength=8)
    assert counts.min() > 0.9 * len(ids) / 8 and counts.max() < 1.1 * len(ids) / 8
    with pytest.raises(ValueError):
        user_bucket(ids, 0)


def test_the_seeded_sample_is_the_same_rows_however_the_table_is_cut() -> None:
    ids = pd.Series([f"o{k}" for k in range(5_000)])
    whole = set(ids.iloc[sample_positions(ids, 300, seed=3)])
    parts = [ids.iloc[i::4] for i in range(4)]  # each part's own 300 lowest ranks, then the lowest
    candidates = pd.concat([p.iloc[sample_positions(p, 300, seed=3)] for p in parts])
    assert set(candidates.iloc[sample_positions(candidates, 300, seed=3)]) == whole
    assert whole != set(ids.iloc[sample_positions(ids, 300, seed=4)])
    assert len(sample_positions(ids.head(10), 300, seed=3)) == 10  # fewer rows: all of them


def test_auto_picks_dask_above_the_documented_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offers = pd.DataFrame({S.OFFER_ID: [f"o{k}" for k in range(30)]})
    for i in range(3):
        pio.write_part(offers.iloc[i * 10 : (i + 1) * 10], tmp_path, S.OFFERS, i)
    assert engine.offer_rows(tmp_path) == 30
    assert engine.resolve("auto", tmp_path) == "local"
    monkeypatch.setattr(engine, "AUTO_DASK_OFFERS", 29)
    assert engine.resolve("auto", tmp_path) == "dask"
    assert engine.resolve("local", tmp_path) == "local"
    with pytest.raises(ValueError, match="unknown engine"):
        engine.resolve("spark", tmp_path)
