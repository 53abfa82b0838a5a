"""Partitions of the data by user, and seeded samples that do not depend on how data is split.

A user bucket holds all events and offers of a set of users (`user_bucket`): every feature but item
popularity reads only the offer's own user's history, so a bucket is a complete unit of work.
`sample_rank` gives each row a seeded pseudo-random rank from its id alone: the k lowest ranks are
the same k rows whether the table is read whole or bucket by bucket, so one seeded sample serves
both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# pandas' default hash key: fixed, so a bucket or a rank is the same in every process and machine.
_HASH_KEY = "0123456789123456"


def _hash(values: Any, salt: str = "") -> np.ndarray:
    text = pd.Series(values, copy=False).astype("str").to_numpy(dtype=object)
    if salt:
        text = np.char.add(salt, text.astype(str)).astype(object)
    return pd.util.hash_array(text, hash_key=_HASH_KEY, categorize=False)


def user_bucket(user_ids: Any, buckets: int) -> np.ndarray:
    """The bucket (0 .. buckets-1) of each user id: a hash of the id, the same everywhere."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    return (_hash(user_ids) % np.uint64(buckets)).astype(np.int64)


def sample_rank(ids: Any, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 rank per id (a hash of seed and id)."""
    return _hash(ids, salt=f"{int(seed)}:")


def sample_positions(ids: Any, k: int, seed: int) -> np.ndarray:
    """Positions (sorted) of the `k` rows with the lowest `sample_rank`: a seeded sample of `k`
    rows that is the same set however the rows are split or ordered (ids are unique)."""
    ranks = sample_rank(ids, seed)
    if k >= len(ranks):
        return np.arange(len(ranks))
    return np.sort(np.argsort(ranks, kind="stable")[:k])
