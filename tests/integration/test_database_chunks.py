"""Snapshots and exports go chunk by chunk: checked on SQLite files (no server needed).

The PostgreSQL side (server-side cursors, COPY, column types) is in test_database_source.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlops.database import export_data_dir, read_database, snapshot_database
from pricing import io as pio
from pricing import schema as S
from pricing.io import ContractError

pytestmark = pytest.mark.integration


@pytest.fixture()
def shop(tiny_data_dir: Path, tmp_path: Path) -> str:
    """A SQLite file holding the tiny market; returns its URL."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    export_data_dir(tiny_data_dir, url)
    return url


def test_a_sqlite_snapshot_in_parts_reads_back_as_the_whole_table(
    shop: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    # items hold exactly 40 rows: one full chunk is still the single file of a small table
    snap = snapshot_database(shop, tmp_path / "parts", chunksize=40)
    whole = read_database(shop)
    assert (snap.data_dir / "items.parquet").is_file() and not (snap.data_dir / S.ITEMS).exists()
    offers = pio.table_parts(snap.data_dir / S.OFFERS)
    assert len(offers) == -(-snap.rows[S.OFFERS] // 40) > 1
    assert {pq.read_metadata(f).num_rows for f in offers[:-1]} == {40}
    for table in S.TABLES:
        got = pio.read_table(snap.data_dir, table)
        pd.testing.assert_frame_equal(got, whole[table])
        source = pd.read_parquet(tiny_data_dir / f"{table}.parquet")
        assert len(got) == len(source) == snap.rows[table]


def test_an_empty_table_is_one_typed_file(shop: str, tmp_path: Path) -> None:
    with sqlite3.connect(shop.removeprefix("sqlite:///")) as conn:
        conn.execute("delete from users")
    snap = snapshot_database(shop, tmp_path / "snap", chunksize=100)
    assert snap.rows[S.USERS] == 0
    schema = pq.read_schema(snap.data_dir / "users.parquet")
    assert str(schema.field(S.USER_ID).type) == "large_string"


def test_a_folder_of_csv_parts_exports_chunk_by_chunk(tiny_data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    for table in (S.ITEMS, S.OFFERS):
        pio.write_table(pd.read_parquet(tiny_data_dir / f"{table}.parquet"), folder, table, "csv")
    events = pd.read_parquet(tiny_data_dir / "events.parquet")
    (folder / S.EVENTS).mkdir()
    for i, start in enumerate(range(0, len(events), 1000)):
        events.iloc[start : start + 1000].to_csv(
            folder / S.EVENTS / f"part-{i:05d}.csv", index=False
        )

    url = f"sqlite:///{tmp_path / 'csv.db'}"
    rows = export_data_dir(folder, url, chunksize=300)
    assert rows == {S.ITEMS: 40, S.EVENTS: len(events), S.OFFERS: rows[S.OFFERS]}
    back = read_database(url)
    assert sorted(back[S.EVENTS][S.EVENT_ID]) == sorted(events[S.EVENT_ID].astype(str))
    assert pd.api.types.is_string_dtype(back[S.EVENTS][S.PRICE])  # a CSV folder's columns stay text

    with pytest.raises(ContractError, match="already exist"):
        export_data_dir(folder, url)
    (folder / "items.csv").unlink()
    with pytest.raises(ContractError, match="table 'items' is missing: expected items.parquet"):
        export_data_dir(folder, f"sqlite:///{tmp_path / 'other.db'}")
    assert not (tmp_path / "other.db").exists()  # refused before connecting
