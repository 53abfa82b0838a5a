"""Contract tables in a SQL database (PostgreSQL through SQLAlchemy): read a window, export a folder.

Reading (`pricing validate|run --data-url postgresql://...`): tables or views named like the
contract (items, events, offers; users optional) in the connection's schema (the first of its
`search_path`; pick another with `?options=-csearch_path%3Dshop` in the URL) are read in one
read-only REPEATABLE READ transaction, so the tables are one consistent snapshot even while the
shop keeps writing. `snapshot_database` writes what it reads as Parquet into a fresh folder of the
run, chunk by chunk as the rows stream from a server-side cursor (a large table becomes a dataset
folder `<table>/part-NNNNN.parquet`, a small one `<table>.parquet`), with `source.json`: where
from, which window, how many rows. From there validation, quarantine, Data Docs and training are
exactly those of a data folder, and the database is never written to. The folder is also the
run's record of exactly what it trained on. `export_data_dir` goes the other way (a folder into a
database, for demos and tests), also chunk by chunk.

A window (`--since`/`--until`, `DataWindow`) selects `since <= ts < until` in events and offers,
in the database when `ts` is a timestamp column; items and users are read whole. A `ts` stored as
text is filtered after reading, and a stamp that does not parse is kept so validation quarantines
it.

Errors: a missing table or a column of the wrong SQL type raises `ContractError` naming both
before any row is read (a missing *column* is reported by validation, as for a folder); a refused
or lost connection raises `DataSourceError`, which the training flow's read task retries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlops.parts import check_parts, part_columns
from pricing import io as pio
from pricing import schema as S
from pricing.io import ContractError

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

# Rows per fetch from the server-side cursor, and per Parquet part of a snapshot: bounds the
# memory of a read (and of an export) by the chunk, whatever the size of the table.
DEFAULT_CHUNKSIZE = 50_000
WINDOWED_TABLES: tuple[str, ...] = (S.EVENTS, S.OFFERS)
CONNECT_TIMEOUT_S = 10
SOURCE_FILE = "source.json"

# Called after each chunk read: (table, rows read so far in that table). Progress, and the hook a
# test uses to cut the connection in the middle of a read.
ChunkHook = Callable[[str, int], None]


class DataSourceError(ContractError):
    """The database could not be reached or the connection was lost during a read.

    Transient as far as we know, so the training flow's read task retries it; the CLI prints it as
    one line, like any ContractError.
    """


# --- URLs and engines ----------------------------------------------------------------------------


def _url(url: str) -> sa.URL:
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ContractError(f"not a database URL: {url!r} ({exc})") from exc
    # postgresql:// means psycopg2 to SQLAlchemy; the installed driver is psycopg 3.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and reports."""
    try:
        return _url(url).render_as_string(hide_password=True)
    except ContractError:
        return "<unparseable URL>"


def database_name(url: str) -> str:
    """A short name for the data set behind `url` (its database name), e.g. for MLflow."""
    return _url(url).database or "database"


def engine_for(url: str) -> sa.Engine:
    """An engine without a pool (each read is one short-lived connection, a retry a fresh one).

    PostgreSQL sessions run in UTC, so naive `timestamp` values and window bounds mean UTC, as
    the contract says.
    """
    import sqlalchemy as sa

    parsed = _url(url)
    connect_args: dict[str, Any] = {}
    is_pg = parsed.get_backend_name() == "postgresql"
    if is_pg and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise ContractError(
            f"cannot use {safe_url(url)}: {exc}. PostgreSQL URLs need psycopg (installed with "
            "this project); other databases need their SQLAlchemy driver"
        ) from exc
    if is_pg:

        @sa.event.listens_for(engine, "connect")
        def _utc(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
            dbapi_conn.commit()

    return engine


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


@contextmanager
def _connection_errors(lost: str, refused: str) -> Iterator[None]:
    """Turn driver errors into one-line messages: `lost (why)` for a connection that failed or
    broke (DataSourceError, retried), `refused (why)` for anything else the database refused."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
            raise DataSourceError(f"{lost} ({_first_line(exc)})") from exc
        raise ContractError(f"{refused} ({_first_line(exc)})") from exc


# --- the window ----------------------------------------------------------------------------------


def parse_time(text: str | dt.datetime | None, name: str = "time") -> dt.datetime | None:
    """An ISO 8601 date or time as an aware UTC datetime (a naive one is UTC, as in the contract)."""
    if text is None or text == "":
        return None
    try:
        value = text if isinstance(text, dt.datetime) else pd.Timestamp(text).to_pydatetime()
    except (ValueError, TypeError) as exc:
        raise ContractError(
            f"--{name} {text!r} is not an ISO 8601 date or time (e.g. 2026-03-01 or "
            "2026-03-01T12:00:00Z)"
        ) from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True)
class DataWindow:
    """Rows of events and offers with `since <= ts < until` (either bound may be open)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ContractError(
                f"empty window: --since {self.since.isoformat()} is not before "
                f"--until {self.until.isoformat()}"
            )

    @classmethod
    def parse(
        cls, since: str | dt.datetime | None = None, until: str | dt.datetime | None = None
    ) -> DataWindow:
        return cls(parse_time(since, "since"), parse_time(until, "until"))

    @property
    def is_open(self) -> bool:
        return self.since is None and self.until is None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }

    def mask(self, ts: pd.Series) -> pd.Series:
        """Rows inside the window; a stamp that does not parse is kept (validation blames it)."""
        parsed = pd.to_datetime(ts.astype("str"), errors="coerce", utc=True, format="mixed")
        keep = pd.Series(True, index=ts.index)
        if self.since is not None:
            keep &= ~(parsed < pd.Timestamp(self.since))
        if self.until is not None:
            keep &= ~(parsed >= pd.Timestamp(self.until))
        return keep


# --- SQL types against the contract's logical types ----------------------------------------------

_EXPECTED = {
    "str": "text (text, varchar, char), an integer or a uuid",
    "float": "a number (double precision, real, numeric, integer) or text holding numbers",
    "int": "an integer, a boolean or text holding integers",
    "timestamp": "a timestamp (with or without time zone), a date or ISO 8601 text",
}


def _accepts(dtype: str, sql_type: Any) -> bool:
    import sqlalchemy as sa

    accepted: dict[str, tuple[type, ...]] = {
        "str": (sa.String, sa.Integer, sa.Uuid),
        "float": (sa.Numeric, sa.Float, sa.Integer, sa.String),  # text: parsed per cell, as a CSV
        "int": (sa.Integer, sa.Numeric, sa.Float, sa.Boolean, sa.String),
        "timestamp": (sa.DateTime, sa.Date, sa.String),
    }
    return isinstance(sql_type, accepted[dtype])


def check_column_types(table: str, columns: dict[str, Any]) -> None:
    """Raise ContractError naming the first contract column whose SQL type cannot hold its values."""
    for col in S.CONTRACT[table]:
        sql_type = columns.get(col.name)
        if sql_type is not None and not _accepts(col.dtype, sql_type):
            raise ContractError(
                f"table '{table}': column '{col.name}' has SQL type {_type_name(sql_type)}, "
                f"expected {_EXPECTED[col.dtype]}"
            )


def _type_name(sql_type: Any) -> str:
    try:
        return str(sql_type.compile())
    except Exception:  # noqa: BLE001 - NullType and friends cannot compile: their class names them
        return type(sql_type).__name__


# --- reading -------------------------------------------------------------------------------------


def _relations(conn: sa.Connection) -> set[str]:
    import sqlalchemy as sa

    insp = sa.inspect(conn)
    names = set(insp.get_table_names()) | set(insp.get_view_names())
    if conn.dialect.name == "postgresql":
        names |= set(insp.get_materialized_view_names())
    return names


def _schema_name(conn: sa.Connection) -> str:
    import sqlalchemy as sa

    return sa.inspect(conn).default_schema_name or "default"


def _contract_dtype(table: str, column: str) -> str | None:
    return next((c.dtype for c in S.CONTRACT[table] if c.name == column), None)


def _arrow_type(table: str, column: str, sql_type: Any) -> pa.DataType:
    """The Parquet type of one column, decided by its SQL type alone.

    Every chunk of a table is written with the same types, so the partitions of one table
    concatenate cleanly, a chunk where a column happens to be all null included. Integers stay
    integers (nullable), numbers become float64, timestamps keep whether they have a time zone
    (UTC when they do), booleans stay booleans except in a contract integer column (`purchased`),
    where they become 1/0. Everything else is text: strings and uuids, dates and times in ISO form,
    and exotic types (json, arrays, intervals, bytes) as their Python text, never dropped.
    """
    import pyarrow as pa
    import sqlalchemy as sa

    if isinstance(sql_type, sa.Boolean):
        return pa.int64() if _contract_dtype(table, column) == "int" else pa.bool_()
    if isinstance(sql_type, sa.Integer):
        return pa.int64()
    if isinstance(sql_type, sa.Numeric | sa.Float):
        return pa.float64()
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC" if sql_type.timezone else None)
    return pa.large_string()


def _as_text(value: Any) -> str | None:
    """One cell of a text column: a string as it is, a null as null, anything else as str()."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _arrow_column(values: pd.Series, type_: pa.DataType) -> pa.Array:
    """One column of a chunk as `type_` (nulls stay nulls whatever pandas made of them)."""
    import pyarrow as pa

    if pa.types.is_large_string(type_):
        if values.dtype != object and pd.api.types.is_string_dtype(values.dtype):
            return pa.array(values, type=type_, from_pandas=True)
        return pa.array([_as_text(v) for v in values.tolist()], type=type_)
    if pa.types.is_timestamp(type_):
        stamps = pd.to_datetime(values, utc=True)
        if type_.tz is None:
            stamps = stamps.dt.tz_localize(None)
        return pa.array(stamps, type=type_, from_pandas=True)
    if pa.types.is_floating(type_) and values.dtype == object:
        values = values.astype("float64")  # Decimal, None
    return pa.array(values, type=type_, from_pandas=True)


class _TableRead:
    """One contract table of the database: its query, its Parquet schema, its rows chunk by chunk.

    The rows come in a stable order (by `ts` then the key in events and offers, by the key in the
    others): the same data reads as the same table (the feature cache hashes it), and "the first
    occurrence of a duplicate id is kept" means the earliest one.
    """

    def __init__(self, conn: sa.Connection, table: str, window: DataWindow) -> None:
        import pyarrow as pa
        import sqlalchemy as sa

        columns = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table)}
        check_column_types(table, columns)
        ts_type = columns.get(S.TS)
        windowed = table in WINDOWED_TABLES and not window.is_open
        if windowed and ts_type is None:
            raise ContractError(
                f"table '{table}': column '{S.TS}' is missing, and the --since/--until window "
                "selects rows by it"
            )
        stmt: Any = sa.select(*[sa.column(c) for c in columns]).select_from(sa.table(table))
        in_sql = windowed and isinstance(ts_type, sa.DateTime | sa.Date)
        if in_sql:
            ts: Any = sa.column(S.TS)
            if window.since is not None:
                stmt = stmt.where(ts >= window.since)
            if window.until is not None:
                stmt = stmt.where(ts < window.until)
        key = S.PRIMARY_KEYS[table]
        order = [c for c in ((S.TS, key) if table in WINDOWED_TABLES else (key,)) if c in columns]
        self.conn, self.table, self.window = conn, table, window
        self.stmt = stmt.order_by(*[sa.column(c).asc().nulls_last() for c in order])
        self.sql_types = columns
        self.names = list(columns)
        self.schema = pa.schema([(n, _arrow_type(table, n, t)) for n, t in columns.items()])
        # A text `ts` cannot be compared in SQL: the window is applied to each chunk instead.
        self.filter_after = windowed and not in_sql
        self.bool_to_int = [
            c.name
            for c in S.CONTRACT[table]
            if c.dtype == "int" and isinstance(columns.get(c.name), sa.Boolean)
        ]

    def chunks(
        self, chunksize: int, on_chunk: ChunkHook | None = None
    ) -> Generator[pa.Table, None, None]:
        """The rows as Arrow tables of `self.schema`, at most `chunksize` rows each, fetched from
        a server-side cursor: memory is bounded by the chunk, never by the table."""
        result = self.conn.execution_options(stream_results=True, max_row_buffer=chunksize).execute(
            self.stmt
        )
        rows = 0
        while batch := result.fetchmany(chunksize):
            rows += len(batch)
            chunk = self._to_arrow(
                pd.DataFrame.from_records(batch, columns=self.names, coerce_float=True)
            )
            if on_chunk is not None:
                on_chunk(self.table, rows)
            yield chunk

    def _to_arrow(self, df: pd.DataFrame) -> pa.Table:
        import pyarrow as pa

        for name in self.bool_to_int:
            df[name] = df[name].map({True: 1, False: 0})
        if self.filter_after:
            df = df.loc[self.window.mask(df[S.TS])]
        arrays = []
        for field in self.schema:
            try:
                arrays.append(_arrow_column(df[field.name], field.type))
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ContractError(
                    f"table '{self.table}': column '{field.name}' "
                    f"({_type_name(self.sql_types[field.name])}) holds a value that cannot be "
                    f"stored as {field.type} ({exc})"
                ) from exc
        return pa.Table.from_arrays(arrays, schema=self.schema)


@contextmanager
def _reading(url: str) -> Iterator[tuple[sa.Connection, list[str]]]:
    """One read-only REPEATABLE READ transaction on `url` (SERIALIZABLE on SQLite, which has no
    other), and the contract tables present there.

    Raises:
        ContractError: a required table is missing (before any row is read).
        DataSourceError: the database cannot be reached.
    """
    engine = engine_for(url)
    source = safe_url(url)
    try:
        with (
            _connection_errors(f"cannot read {source}", f"{source} refused the read"),
            engine.connect() as base,
        ):
            level = "SERIALIZABLE" if base.dialect.name == "sqlite" else "REPEATABLE READ"
            conn = base.execution_options(isolation_level=level)
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(postgresql_readonly=True)
            with conn.begin():
                present = _relations(conn)
                for table in S.REQUIRED_TABLES:
                    if table not in present:
                        raise ContractError(
                            f"table '{table}' is missing: no table or view named {table} "
                            f"in schema '{_schema_name(conn)}' of {source}"
                        )
                yield conn, [t for t in S.TABLES if t in present]
    finally:
        engine.dispose()


def _table_errors(table: str, url: str) -> contextlib.AbstractContextManager[None]:
    return _connection_errors(
        f"table '{table}': lost the connection to {safe_url(url)} while reading it",
        f"table '{table}': the database refused the read",
    )


def read_database(
    url: str,
    window: DataWindow | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_chunk: ChunkHook | None = None,
) -> dict[str, pd.DataFrame]:
    """Read the contract tables (items, events and offers required; users if present) from `url`
    into memory, with the column types a snapshot of them would have.

    Every table is held whole: for small reads and checks. Training reads through
    `snapshot_database`, which holds one chunk at a time.

    Raises:
        ContractError: a required table is missing, or a contract column has an unusable SQL type.
        DataSourceError: the database cannot be reached, or the connection is lost mid-read.
    """
    import pyarrow as pa

    window = window or DataWindow()
    tables: dict[str, pd.DataFrame] = {}
    with _reading(url) as (conn, present):
        for table in present:
            with _table_errors(table, url):
                read = _TableRead(conn, table, window)
                with contextlib.closing(read.chunks(chunksize, on_chunk)) as chunks:
                    whole = pa.concat_tables([read.schema.empty_table(), *chunks])
            tables[table] = whole.to_pandas()
    return tables


@dataclass(frozen=True)
class Snapshot:
    """What `snapshot_database` wrote: the folder, its row counts, and where they came from."""

    data_dir: Path
    rows: dict[str, int]
    source: str
    window: DataWindow


def default_snapshot_dir(runs_dir: str | Path, url: str) -> Path:
    """A new folder `<runs_dir>/data/<database>-<UTC time>` for one read of `url`."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(runs_dir) / "data" / f"{database_name(url)}-{stamp}"


class _PartWriter:
    """One table's chunks written to `folder` as they come, about `part_rows` rows per file.

    A table larger than one part becomes a dataset folder `<table>/part-00000.parquet`, ... in read
    order (what `pricing.io.read_table` concatenates back); a table that fits in one part is the
    single file `<table>.parquet`, as small tables always were. At most one part is held in memory.
    """

    def __init__(self, folder: Path, table: str, schema: pa.Schema, part_rows: int) -> None:
        self.folder, self.table, self.schema = folder, table, schema
        self.part_rows = max(1, part_rows)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0
        self.rows = 0

    def add(self, chunk: pa.Table) -> None:
        if chunk.num_rows == 0:
            return
        self.pending.append(chunk)
        self.pending_rows += chunk.num_rows
        self.rows += chunk.num_rows
        if self.pending_rows >= self.part_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.folder / self.table / pio.part_name(self.parts)
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.concat_tables(self.pending), path)
        self.parts += 1
        self.pending, self.pending_rows = [], 0

    def close(self) -> int:
        """Write what is left; return the table's row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        single = self.folder / f"{self.table}.parquet"
        if self.parts == 0:
            pq.write_table(pa.concat_tables([self.schema.empty_table(), *self.pending]), single)
            return self.rows
        if self.pending:
            self._flush()
        if self.parts == 1:
            os.replace(self.folder / self.table / pio.part_name(0), single)
            (self.folder / self.table).rmdir()
        return self.rows


def snapshot_database(
    url: str,
    out_dir: str | Path,
    window: DataWindow | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_chunk: ChunkHook | None = None,
) -> Snapshot:
    """Read the contract tables from `url` into `out_dir` as Parquet, chunk by chunk, all or nothing.

    Each chunk fetched from the database (`chunksize` rows) is written as it arrives: a table of
    more than one chunk becomes a dataset folder `<table>/part-NNNNN.parquet` (one part per chunk,
    in read order), a smaller one the file `<table>.parquet`. Memory is bounded by the chunk, not
    by the table. The parts of one table share one schema, fixed by the SQL column types.

    The tables are written to a temporary sibling folder that is renamed into place only when
    every table was read and written: an interrupted read leaves no half snapshot behind, and a
    retry starts clean. `out_dir` must not exist yet or be empty.

    Raises:
        ContractError: a required table is missing, or a contract column has an unusable SQL type.
        DataSourceError: the database cannot be reached, or the connection is lost mid-read.
    """
    window = window or DataWindow()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ContractError(f"output folder {out} is not empty: pick a new one for this read")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    rows: dict[str, int] = {}
    try:
        with _reading(url) as (conn, present):
            for table in present:
                with _table_errors(table, url):
                    read = _TableRead(conn, table, window)
                    writer = _PartWriter(tmp, table, read.schema, chunksize)
                    with contextlib.closing(read.chunks(chunksize, on_chunk)) as chunks:
                        for chunk in chunks:
                            writer.add(chunk)
                rows[table] = writer.close()
        meta = {
            "source": safe_url(url),
            "window": window.to_dict(),
            "rows": rows,
            "read_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Snapshot(out, rows, safe_url(url), window)


# --- export: a data folder into a database -------------------------------------------------------


def _copy_rows(table: Any, conn: Any, keys: list[str], data_iter: Any) -> int:
    """pandas `to_sql` method: COPY FROM STDIN through psycopg 3 (tens of times faster than INSERTs)."""
    prep = conn.dialect.identifier_preparer
    target = (
        prep.quote(table.name)
        if not table.schema
        else f"{prep.quote(table.schema)}.{prep.quote(table.name)}"
    )
    cols = ", ".join(prep.quote(k) for k in keys)
    n = 0
    cur = conn.connection.driver_connection.cursor()
    with cur, cur.copy(f"COPY {target} ({cols}) FROM STDIN") as copy:
        for row in data_iter:
            copy.write_row(row)
            n += 1
    return n


def _unreadable(path: Path, table: str, exc: Exception) -> ContractError:
    return ContractError(
        f"table '{table}': cannot read {path} ({type(exc).__name__}: {exc}). "
        "Is the file complete and in Parquet or CSV format?"
    )


def _part_schema(path: Path, table: str) -> pa.Schema:
    """The columns and types of one file of `table`, from its footer or header (no rows read).

    A CSV file's columns are all text (as `pricing.io` reads them); a pandas index stored in a
    Parquet file is not a column (pandas reads it back as the index).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix != ".parquet":
        return pa.schema([(c, pa.large_string()) for c in part_columns(path, table)])
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing problem
        raise _unreadable(path, table, exc) from exc
    index = {
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    fields = [f for f in schema if f.name not in index]
    return pa.schema(fields)


@dataclass(frozen=True)
class _FolderTable:
    """One contract table of a data folder: its files in order, and the one schema they share."""

    name: str
    parts: list[Path]
    schema: pa.Schema


def _folder_table(data_dir: str | Path, table: str) -> _FolderTable | None:
    """Check one table of `data_dir` without reading its rows: every partition holds the required
    columns, and the partitions agree on each column's type (an integer column that is float in
    a partition with nulls, or all null in one, is fine: the wider type wins).

    Raises:
        ContractError: a required table is missing, a file cannot be read, a partition lacks a
            required column, or two partitions store a column as incompatible types.
    """
    import pyarrow as pa

    path = pio.find_table_file(data_dir, table)
    if path is None:
        if table in S.REQUIRED_TABLES:
            pio.read_table(data_dir, table)  # raises the missing-table error, reads nothing
        return None
    parts = pio.table_parts(path)
    check_parts(parts, table)
    schemas = [_part_schema(p, table) for p in parts]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ContractError(
            f"table '{table}': the files of {path} store a column as different types ({exc}); "
            "every partition must hold each column as the same type"
        ) from exc
    return _FolderTable(table, parts, schema)


def _pandas_type(type_: pa.DataType) -> Any:
    """Integers and booleans as pandas' nullable types, so a null keeps an integer column integer."""
    import pyarrow as pa

    if pa.types.is_unsigned_integer(type_) and type_.bit_width == 64:
        return pd.UInt64Dtype()
    if pa.types.is_integer(type_):
        return pd.Int64Dtype()
    if pa.types.is_boolean(type_):
        return pd.BooleanDtype()
    return None


def _aligned(data: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """`data` with exactly the columns of `schema`, in its order and types (a column a partition
    lacks is null there), as a DataFrame."""
    import pyarrow as pa

    columns = [
        data.column(f.name).cast(f.type)
        if f.name in data.column_names
        else pa.nulls(len(data), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema).to_pandas(types_mapper=_pandas_type)


def _batches(
    part: Path, table: str, schema: pa.Schema, rows: int
) -> Generator[pd.DataFrame, None, None]:
    """One file of `table` as DataFrames of at most `rows` rows, in the folder's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if part.suffix == ".parquet":
            with pq.ParquetFile(part) as pf:
                names = [n for n in schema.names if n in pf.schema_arrow.names]
                for batch in pf.iter_batches(batch_size=rows, columns=names):
                    yield _aligned(pa.Table.from_batches([batch]), schema)
        else:
            with pd.read_csv(part, dtype=str, keep_default_na=True, chunksize=rows) as reader:
                for df in reader:
                    yield _aligned(pa.Table.from_pandas(df, preserve_index=False), schema)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable(part, table, exc) from exc


def export_data_dir(
    data_dir: str | Path, url: str, replace: bool = False, chunksize: int = DEFAULT_CHUNKSIZE
) -> dict[str, int]:
    """Load the contract tables of `data_dir` into the database at `url`, in one transaction.

    Tables keep the folder's column types (a CSV folder's columns stay text: the database then
    holds what the shop brought, and validation of the database finds what it would find in the
    folder; an integer column with nulls stays integer). Events and offers get an index on `ts`
    for windowed reads. With `replace`, existing contract tables are dropped first, and a `users`
    table the folder lacks is dropped too, so the database mirrors the folder; without it, an
    existing table fails the export before anything is written. The simulator's ground truth is
    not a contract table and stays in the folder.

    A table is read and written `chunksize` rows at a time, file after file of a partitioned
    folder, so memory is bounded by the chunk, never by the table. Every file's columns and types
    are checked before anything is written.

    Returns:
        Rows written per table.
    """
    import sqlalchemy as sa

    plans = [p for p in (_folder_table(data_dir, t) for t in S.TABLES) if p is not None]
    engine = engine_for(url)
    rows: dict[str, int] = {}
    try:
        target = safe_url(url)
        with (
            _connection_errors(f"cannot export to {target}", f"{target} refused the export"),
            engine.begin() as conn,
        ):
            present = _relations(conn)
            names = {p.name for p in plans}
            clash = [t for t in S.TABLES if t in present and (t in names or replace)]
            if clash and not replace:
                raise ContractError(
                    f"table(s) {', '.join(repr(t) for t in clash)} already exist in "
                    f"{safe_url(url)}: pass --replace to overwrite them"
                )
            prep = conn.dialect.identifier_preparer
            for name in clash:
                conn.execute(sa.text(f"DROP TABLE {prep.quote(name)}"))
            use_copy = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
            method: Any = _copy_rows if use_copy else "multi"
            for plan in plans:
                # Created from the whole folder's schema, not from its first rows: a column that
                # is all null in the first file still gets its type.
                _aligned(plan.schema.empty_table(), plan.schema).to_sql(
                    plan.name, conn, index=False
                )
                rows[plan.name] = 0
                for part in plan.parts:
                    batches = _batches(part, plan.name, plan.schema, chunksize)
                    with contextlib.closing(batches):
                        for df in batches:
                            df.to_sql(
                                plan.name,
                                conn,
                                index=False,
                                if_exists="append",
                                chunksize=chunksize,
                                method=method,
                            )
                            rows[plan.name] += len(df)
                if plan.name in WINDOWED_TABLES and S.TS in plan.schema.names:
                    conn.execute(
                        sa.text(
                            f"CREATE INDEX {prep.quote(f'{plan.name}_ts_idx')} "
                            f"ON {prep.quote(plan.name)} ({prep.quote(S.TS)})"
                        )
                    )
    finally:
        engine.dispose()
    return rows
