"""The files of a partitioned table, checked from their Parquet footers or CSV headers alone.

`pricing.io` reads tables (pandas only); these checks read no rows, so a folder of large
partitions is checked before any of them is loaded (the Dask engine, database export, the scorer's
bootstrap).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pricing import schema as S
from pricing.io import ContractError


def part_columns(path: Path, table: str) -> list[str]:
    """The column names of one file of `table`, from its footer or header (no rows are read).

    Raises:
        ContractError: the file cannot be read (truncated, not Parquet or CSV), naming it.
    """
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, dtype=str, nrows=0).columns)
    except Exception as exc:  # noqa: BLE001 - the same message as a failed read
        raise ContractError(
            f"table '{table}': cannot read {path} ({type(exc).__name__}: {exc}). "
            "Is the file complete and in Parquet or CSV format?"
        ) from exc


def check_parts(parts: list[Path], table: str) -> None:
    """Every partition of a dataset folder holds the contract's required columns.

    Raises:
        ContractError: a partition lacks a required column, or cannot be read (naming the file).
    """
    if len(parts) < 2:
        return
    required = S.column_names(table, required_only=True)
    for part in parts:
        missing = [c for c in required if c not in part_columns(part, table)]
        if missing:
            raise ContractError(
                f"table '{table}': partition {part} lacks required column(s) "
                f"{', '.join(repr(c) for c in missing)}; every file of {part.parent} must hold them"
            )
