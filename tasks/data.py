"""Ingest: get a data directory that holds the contract tables (simulating one if asked, or
reading a database into the run's folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.database import DEFAULT_CHUNKSIZE, ChunkHook, DataSourceError, DataWindow
from pricing.simulator import DEFAULT_PRESET, SimConfig, simulate, write_market

# A lost or refused connection is retried; a missing table or a wrong column type is not (it
# would fail the same way again, only later).
DB_READ_RETRIES = 2
DB_READ_RETRY_DELAY_S = 10.0


def simulate_to(out_dir: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Simulate a market into `out_dir` unless a complete one is already there (same config)."""
    overrides = dict(overrides or {})
    # `preset: shop|realistic|classic` in a config's `simulate:` block picks the market; keys
    # beside it (sizes, shares) override the preset's values
    cfg = SimConfig.preset(overrides.pop("preset", DEFAULT_PRESET), **{"seed": seed, **overrides})
    marker = out_dir / "simconfig.txt"
    if (
        marker.exists()
        and marker.read_text() == repr(cfg)
        and (out_dir / "offers.parquet").exists()
    ):
        return out_dir
    write_market(simulate(cfg), out_dir)
    marker.write_text(repr(cfg))
    return out_dir


@task(name="simulate_market", task_run_name="simulate-market-seed{seed}", cache_policy=NO_CACHE)
def simulate_market(out_dir: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """`simulate_to` as a flow step. No retries: it is deterministic compute, a second try fails
    the same way; the folder's `simconfig.txt` already makes a rerun with the same config free."""
    return simulate_to(out_dir, overrides, seed)


def _is_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry condition of `read_database`: only a connection problem is worth another try."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # noqa: BLE001 - an unreadable state: judge the error raised
            exc = err
    return isinstance(exc, DataSourceError)


@task(
    name="read_database",
    retries=DB_READ_RETRIES,
    retry_delay_seconds=DB_READ_RETRY_DELAY_S,
    retry_condition_fn=_is_transient,
    cache_policy=NO_CACHE,
)
def read_database(
    url: str,
    out_dir: Path,
    window: DataWindow | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_chunk: ChunkHook | None = None,
) -> Path:
    """Read the contract tables at `url` into `out_dir` (Parquet, all or nothing); return it.

    Each attempt reads every table again in one transaction, so a retry after a lost connection
    gives one consistent snapshot, never tables from two moments.
    """
    from mlops.database import snapshot_database

    return snapshot_database(url, out_dir, window, chunksize, on_chunk).data_dir
