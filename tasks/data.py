"""Ingest: get a data directory that holds the contract tables (simulating one if asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from pricing.simulator import SimConfig, simulate, write_market


def simulate_to(out_dir: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Simulate a market into `out_dir` unless a complete one is already there (same config)."""
    cfg = SimConfig(**{"seed": seed, **(overrides or {})})
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


@task(name="simulate_market", retries=1)
def simulate_market(out_dir: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    return simulate_to(out_dir, overrides, seed)
