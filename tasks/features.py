"""Build the per-offer features once per data *and* code version, cached on disk as Parquet.

The cache key hashes the input tables and the feature code: the source of `pricing/features.py`
and `pricing/schema.py` plus the source of the `offer_features` function actually called. Prefect's
`INPUTS + TASK_SOURCE` cache policy was not used: TASK_SOURCE hashes the task function's own source
(this file), so a fix in `pricing/features.py` would still hit the old entry, and INPUTS would hash
every table through Prefect's serializer on top of our hash.

Cache files are written to a temporary file in the same folder and renamed into place
(`os.replace`, atomic on POSIX), so a run killed mid-write never leaves half a file under a valid
name; a cache file that cannot be read anyway (truncated by an older version, a full disk) counts as
a miss and is rebuilt and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pricing import features as F
from pricing import schema as S
from pricing.io import atomic_path

log = logging.getLogger(__name__)

FEATURE_MODULES: tuple[ModuleType, ...] = (F, S)


class FeatureBuild(NamedTuple):
    """What `build_features` returns: the features and where they came from."""

    features: pd.DataFrame
    key: str  # the cache key: data and feature code
    cache_hit: bool
    data_hash: str  # the tables alone: the data version recorded on each registered model


@functools.cache
def _read_source(path: str) -> bytes:
    return Path(path).read_bytes()


def _module_source(module: ModuleType) -> bytes:
    """The source file of `module`, read once per process.

    Once: the key must describe the code this process imported, not a file edited on disk since
    (which the process does not run).
    """
    return _read_source(inspect.getfile(module))


def _callable_source(fn: Any) -> bytes:
    """The source of `fn`, or its bytecode when the source is not available."""
    try:
        return inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return code.co_code if code is not None else repr(fn).encode()


def source_hash(modules: tuple[ModuleType, ...]) -> str:
    """A hash of the source files of `modules` (what changes when their code does)."""
    h = hashlib.sha256()
    for module in modules:
        h.update(module.__name__.encode())
        h.update(_module_source(module))
    return h.hexdigest()


def feature_code_hash() -> str:
    """The feature code's identity: its modules' source and the `offer_features` being called."""
    h = hashlib.sha256(source_hash(FEATURE_MODULES).encode())
    h.update(_callable_source(F.offer_features))
    h.update(repr(F.FEATURES).encode())
    return h.hexdigest()


def table_hash(df: pd.DataFrame) -> tuple[int, int]:
    """(rows, sum of row hashes mod 2**64) of one table or one partition of it: partitions' sums
    add up to the table's, in any order (`combine_table_hashes`)."""
    rows = pd.util.hash_pandas_object(df, index=False).to_numpy(np.uint64)
    return len(rows), int(rows.sum(dtype=np.uint64))


def combine_table_hashes(parts: list[tuple[int, int]]) -> tuple[int, int]:
    """The `table_hash` of a table from those of its partitions."""
    return sum(n for n, _ in parts), sum(h for _, h in parts) % 2**64


def data_hash_of(hashes: dict[str, tuple[list[str], tuple[int, int]]]) -> str:
    """The data version from each table's columns and `table_hash` (items, events, offers)."""
    h = hashlib.sha256()
    for name in (S.ITEMS, S.EVENTS, S.OFFERS):
        columns, (rows, total) = hashes[name]
        h.update(name.encode())
        h.update(repr(columns).encode())
        h.update(f"{rows}:{total}".encode())
    return h.hexdigest()[:16]


def data_hash(tables: dict[str, pd.DataFrame]) -> str:
    """A content hash of the tables features depend on: their rows, whatever their order, so the
    same data read whole or partition by partition has one version."""
    return data_hash_of(
        {
            name: (list(tables[name].columns), table_hash(tables[name]))
            for name in (S.ITEMS, S.EVENTS, S.OFFERS)
        }
    )


def cache_key(data: str, code: str) -> str:
    """The cache file's key: the data version and the feature code version."""
    return hashlib.sha256(f"{data}:{code}".encode()).hexdigest()[:16]


def _read_cache(path: Path, n_rows: int) -> pd.DataFrame | None:
    """The cached features, or None when absent or unreadable (then the caller rebuilds)."""
    if not path.exists():
        return None
    try:
        feats = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is a miss, never a crash
        log.warning("feature cache %s unreadable (%s): rebuilding", path, exc)
        return None
    if len(feats) != n_rows:
        log.warning(
            "feature cache %s has %d rows, expected %d: rebuilding", path, len(feats), n_rows
        )
        return None
    return feats


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write `df` as Parquet to `path` through a temporary file and `os.replace`.

    Readers see either the old file or the complete new one, never a partial write; two processes
    building the same key concurrently each rename a complete file (`pricing.io.atomic_path`).
    """
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def build_offer_features(tables: dict[str, pd.DataFrame], cache_dir: Path) -> FeatureBuild:
    """Features of every offer, from `cache_dir/features-<key>.parquet` when already built."""
    data = data_hash(tables)
    # features are stored by row position: the key holds the offers' order, which `data` does not
    order = pd.util.hash_pandas_object(tables[S.OFFERS][S.OFFER_ID], index=False)
    key = cache_key(
        f"{data}:{hashlib.sha256(order.to_numpy().tobytes()).hexdigest()}", feature_code_hash()
    )
    path = Path(cache_dir) / f"features-{key}.parquet"
    cached = _read_cache(path, len(tables[S.OFFERS]))
    if cached is not None:
        return FeatureBuild(cached, key, True, data)
    feats = F.offer_features(tables[S.OFFERS], tables[S.EVENTS], tables[S.ITEMS])
    feats = feats.reset_index(drop=True)
    write_atomic(feats, path)
    return FeatureBuild(feats, key, False, data)


@task(name="build_features", task_run_name="build-features", cache_policy=NO_CACHE)
def build_features(tables: dict[str, pd.DataFrame], cache_dir: Path) -> FeatureBuild:
    """The flow's feature step (see `build_offer_features`), logged."""
    result = build_offer_features(tables, cache_dir)
    get_run_logger().info(
        "features %s (%d rows): %s",
        result.key,
        len(result.features),
        "cache hit" if result.cache_hit else "built",
    )
    return result
