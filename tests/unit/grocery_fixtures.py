"""Helpers shared by the real grocery builders' tests (Ta Feng, The Complete Journey).

Writing a Ta Feng-shaped zip, the contract checks every built table must pass, picking the offers
up to a day, and comparing a build from a source truncated at the test start with the full one.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pricing import schema as S
from pricing.grocery import GroceryTables
from pricing.tafeng import SOURCE_COLUMNS as TAFENG_COLUMNS


def write_tafeng_zip(path: Path, rows: Sequence[tuple[str, ...]]) -> Path:
    """A zip holding one csv laid out like the real Ta Feng file: BOM, every field quoted, CRLF."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(TAFENG_COLUMNS)
    writer.writerows(rows)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ta_feng_all_months_merged.csv", buf.getvalue().encode("utf-8-sig"))
    return path


def assert_contract_tables(result: GroceryTables) -> None:
    """The four tables, each with the contract's required columns first, its types, non-null
    columns filled, a unique primary key, and sorted by ts."""
    assert set(result.tables) == {S.ITEMS, S.EVENTS, S.OFFERS, S.USERS}
    for name, df in result.tables.items():
        required = S.column_names(name, required_only=True)
        assert list(df.columns[: len(required)]) == required
        for col in S.CONTRACT[name]:
            if col.name not in df.columns:
                continue
            if col.dtype == "str":
                assert df[col.name].dtype == "str", (name, col.name)
            if col.dtype == "timestamp":
                assert str(df[col.name].dt.tz) == "UTC"
            if not col.nullable:
                assert df[col.name].notna().all(), (name, col.name)
        assert df[S.PRIMARY_KEYS[name]].is_unique
        if S.TS in df.columns:
            assert df[S.TS].is_monotonic_increasing


def offers_through(result: GroceryTables, last: pd.Timestamp, inclusive: bool) -> pd.DataFrame:
    """The offers before `last` (or up to it), re-indexed from 0; a naive `last` is UTC."""
    o = result.tables[S.OFFERS]
    if last.tzinfo is None:
        last = last.tz_localize("UTC")
    keep = o[S.TS] <= last if inclusive else o[S.TS] < last
    return o[keep].reset_index(drop=True)


def assert_same_training_data(
    full: GroceryTables, part: GroceryTables, test_start: pd.Timestamp, item_figures: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A build from the source truncated at `test_start` has the full build's training offers
    (rows, order, ids, prices, labels) and item figures for every item seen in training.

    Returns:
        (the full build's training offers, the truncated build's items by item id), for the
        caller's own checks on their size.
    """
    assert part.stats["offers_test"] == 0
    o_full = offers_through(full, test_start, inclusive=False)
    assert len(o_full) == full.stats["offers_train"]
    assert o_full[S.PURCHASED].sum() > 0
    pd.testing.assert_frame_equal(o_full, part.tables[S.OFFERS])
    i_part = part.tables[S.ITEMS].set_index(S.ITEM_ID)
    i_full = full.tables[S.ITEMS].set_index(S.ITEM_ID)
    pd.testing.assert_frame_equal(i_full.loc[i_part.index, item_figures], i_part[item_figures])
    return o_full, i_part
