"""Contract tables in a SQL database (PostgreSQL through SQLAlchemy): read a window, export a folder.

Reading (`pricing validate|run --data-url postgresql://...`): tables or views named like the
contract (items, events, offers; users optional) in the connection's schema (the first of its
`search_path`; pick another with `?options=-csearch_path%3Dshop` in the URL) are read in one
read-only REPEATABLE READ transaction, so the tables are one consistent snapshot even while the
shop keeps writing. `snapshot_database` writes what it read as Parquet into a fresh folder of the
run (with `source.json`: where from, which window, how many rows); from there validation,
quarantine, Data Docs and training are exactly those of a data folder, and the database is never
written to. The folder is also the run's record of exactly what it trained on.

A window (`--since`/`--until`, `DataWindow`) selects `since <= ts < until` in events and offers,
in the database when `ts` is a timestamp column; items and users are read whole. A `ts` stored as
text is filtered after reading, and a stamp that does not parse is kept so validation quarantines
it.

Errors: a missing table or a column of the wrong SQL type raises `ContractError` naming both
before any row is read (a missing *column* is reported by validation, as for a folder); a refused
or lost connection raises `DataSourceError`, which the training flow's read task retries.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pricing import io as pio
from pricing import schema as S
from pricing.io import ContractError

if TYPE_CHECKING:
    import sqlalchemy as sa

# Rows per fetch from the server-side cursor: bounds the driver's buffer on large tables.
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


def is_database_url(text: str | None) -> bool:
    """True for a SQLAlchemy database URL (`postgresql://...`, `postgresql+psycopg://...`)."""
    return bool(text) and "://" in str(text) and not str(text).startswith("file://")


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


def _read_one(
    conn: sa.Connection,
    table: str,
    window: DataWindow,
    chunksize: int,
    on_chunk: ChunkHook | None,
) -> pd.DataFrame:
    import sqlalchemy as sa

    columns = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table)}
    check_column_types(table, columns)
    names = list(columns)
    stmt: Any = sa.select(*[sa.column(c) for c in names]).select_from(sa.table(table))
    ts_type = columns.get(S.TS)
    windowed = table in WINDOWED_TABLES and not window.is_open
    if windowed and ts_type is None:
        raise ContractError(
            f"table '{table}': column '{S.TS}' is missing, and the --since/--until window "
            "selects rows by it"
        )
    in_sql = windowed and isinstance(ts_type, sa.DateTime | sa.Date)
    if in_sql:
        ts: Any = sa.column(S.TS)
        if window.since is not None:
            stmt = stmt.where(ts >= window.since)
        if window.until is not None:
            stmt = stmt.where(ts < window.until)
    # A stable order: the same data reads as the same table (the feature cache hashes it), and
    # "the first occurrence of a duplicate id is kept" means the earliest one.
    key = S.PRIMARY_KEYS[table]
    order = [c for c in ((S.TS, key) if table in WINDOWED_TABLES else (key,)) if c in columns]
    stmt = stmt.order_by(*[sa.column(c).asc().nulls_last() for c in order])

    result = conn.execution_options(stream_results=True, max_row_buffer=chunksize).execute(stmt)
    frames: list[pd.DataFrame] = []
    rows = 0
    while batch := result.fetchmany(chunksize):
        frames.append(pd.DataFrame.from_records(batch, columns=names, coerce_float=True))
        rows += len(batch)
        if on_chunk is not None:
            on_chunk(table, rows)
    df = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({c: pd.Series(dtype=object) for c in names})
    )
    for col in S.CONTRACT[table]:
        if col.dtype == "int" and isinstance(columns.get(col.name), sa.Boolean):
            df[col.name] = df[col.name].map({True: 1, False: 0})
    if windowed and not in_sql:
        df = df.loc[window.mask(df[S.TS])].reset_index(drop=True)
    return df


def read_database(
    url: str,
    window: DataWindow | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_chunk: ChunkHook | None = None,
) -> dict[str, pd.DataFrame]:
    """Read the contract tables (items, events and offers required; users if present) from `url`.

    Raises:
        ContractError: a required table is missing, or a contract column has an unusable SQL type.
        DataSourceError: the database cannot be reached, or the connection is lost mid-read.
    """
    window = window or DataWindow()
    engine = engine_for(url)
    tables: dict[str, pd.DataFrame] = {}
    try:
        source = safe_url(url)
        with (
            _connection_errors(f"cannot read {source}", f"{source} refused the read"),
            engine.connect() as base,
        ):
            conn = base.execution_options(isolation_level="REPEATABLE READ")
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(postgresql_readonly=True)
            with conn.begin():
                present = _relations(conn)
                for table in S.TABLES:
                    if table in present:
                        with _connection_errors(
                            f"table '{table}': lost the connection to {source} while reading it",
                            f"table '{table}': the database refused the read",
                        ):
                            tables[table] = _read_one(conn, table, window, chunksize, on_chunk)
                    elif table in S.REQUIRED_TABLES:
                        raise ContractError(
                            f"table '{table}' is missing: no table or view named {table} "
                            f"in schema '{_schema_name(conn)}' of {safe_url(url)}"
                        )
    finally:
        engine.dispose()
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


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Extra columns of exotic SQL types (json, arrays, intervals) become text, never dropped."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            values = out[col].dropna()
            if len(values) and not values.map(lambda v: isinstance(v, str)).all():
                out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return out


def snapshot_database(
    url: str,
    out_dir: str | Path,
    window: DataWindow | None = None,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_chunk: ChunkHook | None = None,
) -> Snapshot:
    """Read the contract tables from `url` into `out_dir` as Parquet, all or nothing.

    The tables are written to a temporary sibling folder that is renamed into place only when
    every table was read and written: an interrupted read leaves no half snapshot behind, and a
    retry starts clean. `out_dir` must not exist yet or be empty.
    """
    window = window or DataWindow()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ContractError(f"output folder {out} is not empty: pick a new one for this read")
    tables = read_database(url, window, chunksize, on_chunk)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name, df in tables.items():
            _parquet_safe(df).to_parquet(tmp / f"{name}.parquet", index=False)
        rows = {name: len(df) for name, df in tables.items()}
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


def export_data_dir(
    data_dir: str | Path, url: str, replace: bool = False, chunksize: int = 50_000
) -> dict[str, int]:
    """Load the contract tables of `data_dir` into the database at `url`, in one transaction.

    Tables keep the folder's column types (a CSV folder's columns stay text: the database then
    holds what the shop brought, and validation of the database finds what it would find in the
    folder). Events and offers get an index on `ts` for windowed reads. With `replace`, existing
    contract tables are dropped first, and a `users` table the folder lacks is dropped too, so the
    database mirrors the folder; without it, an existing table fails the export before anything
    is written. The simulator's ground truth is not a contract table and stays in the folder.

    Returns:
        Rows written per table.
    """
    import sqlalchemy as sa

    tables = pio.read_tables(data_dir)
    engine = engine_for(url)
    rows: dict[str, int] = {}
    try:
        target = safe_url(url)
        with (
            _connection_errors(f"cannot export to {target}", f"{target} refused the export"),
            engine.begin() as conn,
        ):
            present = _relations(conn)
            clash = [t for t in S.TABLES if t in present and (t in tables or replace)]
            if clash and not replace:
                raise ContractError(
                    f"table(s) {', '.join(repr(t) for t in clash)} already exist in "
                    f"{safe_url(url)}: pass --replace to overwrite them"
                )
            prep = conn.dialect.identifier_preparer
            for name in clash:
                conn.execute(sa.text(f"DROP TABLE {prep.quote(name)}"))
            use_copy = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
            for name, df in tables.items():
                df.to_sql(
                    name,
                    conn,
                    index=False,
                    chunksize=chunksize,
                    method=_copy_rows if use_copy else "multi",
                )
                rows[name] = len(df)
                if name in WINDOWED_TABLES and S.TS in df.columns:
                    conn.execute(
                        sa.text(
                            f"CREATE INDEX {prep.quote(f'{name}_ts_idx')} "
                            f"ON {prep.quote(name)} ({prep.quote(S.TS)})"
                        )
                    )
    finally:
        engine.dispose()
    return rows
