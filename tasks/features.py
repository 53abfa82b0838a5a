"""Build the per-offer features once per data version: cached on disk by a hash of the inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pricing import features as F
from pricing import schema as S


def table_hash(tables: dict[str, pd.DataFrame]) -> str:
    """A content hash of the tables features depend on (row-wise, order-sensitive)."""
    h = hashlib.sha256(F.__name__.encode())
    h.update(repr(F.FEATURES).encode())
    for name in (S.ITEMS, S.EVENTS, S.OFFERS):
        df = tables[name]
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def build_offer_features(
    tables: dict[str, pd.DataFrame], cache_dir: Path
) -> tuple[pd.DataFrame, str, bool]:
    """Features of every offer, from `cache_dir/features-<hash>.parquet` when already built.

    Returns (features, hash, cache_hit).
    """
    key = table_hash(tables)
    path = Path(cache_dir) / f"features-{key}.parquet"
    if path.exists():
        return pd.read_parquet(path), key, True
    feats = F.offer_features(tables[S.OFFERS], tables[S.EVENTS], tables[S.ITEMS])
    path.parent.mkdir(parents=True, exist_ok=True)
    feats.reset_index(drop=True).to_parquet(path, index=False)
    return feats.reset_index(drop=True), key, False


@task(name="build_features", cache_policy=NO_CACHE)
def build_features(
    tables: dict[str, pd.DataFrame], cache_dir: Path
) -> tuple[pd.DataFrame, str, bool]:
    feats, key, hit = build_offer_features(tables, cache_dir)
    get_run_logger().info(
        "features %s (%d rows): %s", key, len(feats), "cache hit" if hit else "built"
    )
    return feats, key, hit
