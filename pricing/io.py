"""Reading and writing contract tables (Parquet or CSV) with clear errors."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pricing import schema as S


class ContractError(Exception):
    """Input that breaks the data contract badly enough that a run cannot go on.

    The message is meant for the person who brought the data: it names the table, the column
    and what is wrong, and it is printed without a traceback by the CLI.
    """


SUFFIXES = (".parquet", ".csv")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` to write to; on success it is fsynced and renamed over
    `path` (`os.replace`, atomic on POSIX), on failure removed.

    Readers see either the old file or the complete new one, never a partial write; two processes
    writing the same path concurrently each rename a complete file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def find_table_file(data_dir: str | Path, table: str) -> Path | None:
    """The file that holds `table` in `data_dir` (`<table>.parquet` first, then `<table>.csv`)."""
    data_dir = Path(data_dir)
    for suffix in SUFFIXES:
        candidate = data_dir / f"{table}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _read_csv(path: Path, table: str) -> pd.DataFrame:
    # Read every column as text first: ids keep leading zeros, and the contract's coercion
    # (validation) decides what parses, so a bad cell becomes a quarantined row, not a crash.
    return pd.read_csv(path, dtype=str, keep_default_na=True)


def read_table(data_dir: str | Path, table: str, required: bool = True) -> pd.DataFrame | None:
    """Read one contract table from `data_dir`.

    Raises:
        ContractError: the table is required but missing, or its file cannot be read.
    """
    path = find_table_file(data_dir, table)
    if path is None:
        if required:
            raise ContractError(
                f"table '{table}' is missing: expected {table}.parquet or {table}.csv in {data_dir}"
            )
        return None
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return _read_csv(path, table)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise ContractError(
            f"table '{table}': cannot read {path} ({type(exc).__name__}: {exc}). "
            "Is the file complete and in Parquet or CSV format?"
        ) from exc


def read_tables(data_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every contract table present in `data_dir` (items, events and offers are required)."""
    tables: dict[str, pd.DataFrame] = {}
    for table in S.TABLES:
        df = read_table(data_dir, table, required=table in S.REQUIRED_TABLES)
        if df is not None:
            tables[table] = df
    return tables


def write_table(df: pd.DataFrame, data_dir: str | Path, table: str, fmt: str = "parquet") -> Path:
    """Write one table as `<data_dir>/<table>.<fmt>` and return the path."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{table}.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"unknown format {fmt!r}: use parquet or csv")
    return path
