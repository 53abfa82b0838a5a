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
# The row-order column of partitioned work files: input partition << 32 | row in it, so sorting by
# it restores the order a table is read in whole.
ROW_POSITION = "_pos"
_EMPTY_DTYPES = {
    "str": "str",
    "float": "float64",
    "int": "int64",
    "timestamp": "datetime64[us, UTC]",
}


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
    """Where `table` lives in `data_dir`: `<table>.parquet`, `<table>.csv`, or a partitioned
    dataset folder `<table>/` (many Parquet or CSV files, read in name order), in that order."""
    data_dir = Path(data_dir)
    for suffix in SUFFIXES:
        candidate = data_dir / f"{table}{suffix}"
        if candidate.exists():
            return candidate
    folder = data_dir / table
    if folder.is_dir() and table_parts(folder):
        return folder
    return None


def table_parts(path: str | Path) -> list[Path]:
    """The files of one table: the file itself, or a dataset folder's `*.parquet` / `*.csv` files
    in name order (hidden files, such as an unfinished write's temporary file, are not parts)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(
        f
        for f in path.iterdir()
        if f.is_file() and f.suffix in SUFFIXES and not f.name.startswith((".", "_"))
    )


def _read_csv(path: Path, table: str) -> pd.DataFrame:
    # Read every column as text first: ids keep leading zeros, and the contract's coercion
    # (validation) decides what parses, so a bad cell becomes a quarantined row, not a crash.
    return pd.read_csv(path, dtype=str, keep_default_na=True)


def read_part(path: Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One file of `table` (a whole table or one partition of it).

    Raises:
        ContractError: the file cannot be read (truncated, not Parquet or CSV), naming the file.
    """
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path, columns=columns)
        df = _read_csv(path, table)
        return df if columns is None else df[columns]
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise ContractError(
            f"table '{table}': cannot read {path} ({type(exc).__name__}: {exc}). "
            "Is the file complete and in Parquet or CSV format?"
        ) from exc


def require_columns(df: pd.DataFrame, path: Path, table: str) -> None:
    """One partition of a folder holds the contract's required columns.

    A partition without one would otherwise read as nulls in that column (every row of it
    quarantined); this names the file instead.

    Raises:
        ContractError: a required column is missing from the partition `path`.
    """
    missing = [c for c in S.column_names(table, required_only=True) if c not in df.columns]
    if missing:
        raise ContractError(
            f"table '{table}': partition {path} lacks required column(s) "
            f"{', '.join(repr(c) for c in missing)}; every file of {path.parent} must hold them"
        )


def read_table(data_dir: str | Path, table: str, required: bool = True) -> pd.DataFrame | None:
    """Read one contract table from `data_dir` (a partitioned folder's files concatenated in name
    order: row positions run on from one file to the next).

    Raises:
        ContractError: the table is required but missing, a file cannot be read, or a partition
            lacks a required column.
    """
    path = find_table_file(data_dir, table)
    if path is None:
        if required:
            raise ContractError(
                f"table '{table}' is missing: expected {table}.parquet, {table}.csv or a "
                f"{table}/ folder of Parquet files in {data_dir}"
            )
        return None
    parts = table_parts(path)
    if len(parts) == 1:
        return read_part(parts[0], table)
    frames = []
    for part in parts:
        frames.append(read_part(part, table))
        require_columns(frames[-1], part, table)
    return pd.concat(frames, ignore_index=True)


def read_tables(data_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every contract table present in `data_dir` (items, events and offers are required)."""
    tables: dict[str, pd.DataFrame] = {}
    for table in S.TABLES:
        df = read_table(data_dir, table, required=table in S.REQUIRED_TABLES)
        if df is not None:
            tables[table] = df
    return tables


def part_name(index: int) -> str:
    """The file name of partition `index` of a dataset folder (name order is partition order)."""
    return f"part-{index:05d}.parquet"


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


def write_part(df: pd.DataFrame, data_dir: str | Path, table: str, index: int) -> Path:
    """Write partition `index` of `table` as `<data_dir>/<table>/part-NNNNN.parquet`, atomically
    (a reader never sees half a partition), and return its path."""
    path = Path(data_dir) / table / part_name(index)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def empty_table(table: str) -> pd.DataFrame:
    """A frame with the contract's columns of `table` (their logical types) and no rows."""
    return pd.DataFrame(
        {c.name: pd.Series(dtype=_EMPTY_DTYPES[c.dtype]) for c in S.CONTRACT[table]}
    )


def read_in_order(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A Parquet file, or every `*.parquet` of a folder, sorted by `ROW_POSITION` (kept), or None
    when there is none."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    frames = [pd.read_parquet(f, columns=columns) for f in files]
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if ROW_POSITION in df:
        df = df.sort_values(ROW_POSITION, kind="stable")
    return df.reset_index(drop=True)
