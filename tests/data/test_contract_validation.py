"""The data contract's GX suites against good and broken fixtures (README, "The data contract")."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations import load_suite, validate, validate_data_dir
from pricing import schema as S
from pricing.io import ContractError

Tables = dict[str, pd.DataFrame]


def test_good_tables_pass_and_write_report_and_docs(
    tables: Tables, write, now: dt.datetime
) -> None:
    data_dir = write(tables)
    report = validate_data_dir(data_dir, now=now)
    assert report.passed and report.errors == []
    assert set(report.clean_tables) == set(S.TABLES)
    for name, df in tables.items():
        assert len(report.clean_tables[name]) == len(df)  # nothing dropped
        assert report.quarantined[name].empty
        pd.testing.assert_series_equal(
            report.clean_tables[name][S.PRIMARY_KEYS[name]], df[S.PRIMARY_KEYS[name]]
        )
    saved = json.loads((data_dir / "validation.json").read_text())
    assert saved["passed"] is True
    assert saved["tables"]["offers"]["rows"] == 8 and saved["tables"]["offers"]["bad_rows"] == 0
    assert report.docs_index is not None and report.docs_index.name == "index.html"
    assert report.docs_index.exists()
    assert not (data_dir / "quarantine").exists()
    assert "PASSED" in report.summary_text()


def test_csv_input_equals_parquet_input(tables: Tables, write, now: dt.datetime) -> None:
    from_parquet = validate_data_dir(write(tables), now=now, build_docs=False)
    from_csv = validate_data_dir(write(tables, fmt="csv"), now=now, build_docs=False)
    assert from_csv.passed and from_parquet.passed
    for name in S.TABLES:
        pd.testing.assert_frame_equal(from_csv.clean_tables[name], from_parquet.clean_tables[name])
    assert from_csv.clean_tables[S.ITEMS][S.ITEM_ID].tolist()[:2] == ["001", "002"]  # zeros kept


def _set(
    table: str, column: str, rows: list[int], values: list[object]
) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        df = t[table]
        if not all(isinstance(v, float | int) for v in values):
            df[column] = df[column].astype(object)
        elif any(isinstance(v, float) for v in values):
            df[column] = df[column].astype("float64")
        for r, v in zip(rows, values, strict=True):
            df.loc[r, column] = v

    return mutate


def _as_text(table: str, column: str, row: int, value: str) -> Callable[[Tables], None]:
    """Make a whole column text (as CSV brings it) with one bad cell."""

    def mutate(t: Tables) -> None:
        col = t[table][column].astype(str).astype(object)
        col[row] = value
        t[table][column] = col

    return mutate


def _append_item(**overrides: object) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        row = {
            S.ITEM_ID: "005",
            S.TITLE: "fork",
            S.CATEGORY: "cutlery",
            S.BRAND: "forge",
            S.LIST_PRICE: 2.0,
            S.UNIT_COST: 1.0,
            **overrides,
        }
        t[S.ITEMS] = pd.concat([t[S.ITEMS], pd.DataFrame([row])], ignore_index=True)

    return mutate


FUTURE = pd.Timestamp("2030-01-01", tz="UTC")

# (case id, mutation, table, column, bad row positions, words the reason must contain)
ROW_BREAKS = [
    ("null_offer_id", _set("offers", S.OFFER_ID, [0], [None]), "offers", S.OFFER_ID, [0], "null"),
    ("null_event_id", _set("events", S.EVENT_ID, [3], [None]), "events", S.EVENT_ID, [3], "null"),
    (
        "duplicate_offer_id",
        _set("offers", S.OFFER_ID, [5], ["o2"]),
        "offers",
        S.OFFER_ID,
        [5],
        "duplicate offer_id",
    ),
    (
        "duplicate_event_id",
        _set("events", S.EVENT_ID, [2, 4], ["e1", "e1"]),
        "events",
        S.EVENT_ID,
        [2, 4],
        "duplicate event_id",
    ),
    (
        "duplicate_user_id",
        _set("users", S.USER_ID, [2], ["u1"]),
        "users",
        S.USER_ID,
        [2],
        "duplicate user_id",
    ),
    (
        "negative_price",
        _set("offers", S.PRICE, [1], [-5.0]),
        "offers",
        S.PRICE,
        [1],
        "price: not > 0",
    ),
    (
        "zero_price",
        _set("offers", S.PRICE, [1, 2], [0.0, 0.0]),
        "offers",
        S.PRICE,
        [1, 2],
        "price: not > 0",
    ),
    (
        "event_price_zero",
        _set("events", S.PRICE, [1], [0.0]),
        "events",
        S.PRICE,
        [1],
        "price: not > 0",
    ),
    (
        "event_price_null_on_view",
        _set("events", S.PRICE, [5], [np.nan]),
        "events",
        S.PRICE,
        [5],
        "price: null",
    ),
    (
        "zero_list_price",
        _append_item(**{S.LIST_PRICE: 0.0, S.UNIT_COST: 0.0}),
        "items",
        S.LIST_PRICE,
        [4],
        "list_price: not > 0",
    ),
    (
        "negative_unit_cost",
        _append_item(**{S.UNIT_COST: -1.0}),
        "items",
        S.UNIT_COST,
        [4],
        "unit_cost: negative",
    ),
    (
        "purchased_not_binary",
        _set("offers", S.PURCHASED, [3], [2]),
        "offers",
        S.PURCHASED,
        [3],
        "purchased: not 0 or 1",
    ),
    (
        "purchased_fraction",
        _set("offers", S.PURCHASED, [3], [0.5]),
        "offers",
        S.PURCHASED,
        [3],
        "purchased: not an integer",
    ),
    (
        "propensity_outside",
        _set("offers", S.PROPENSITY, [0, 1], [0.0, 1.5]),
        "offers",
        S.PROPENSITY,
        [0, 1],
        "propensity: not in (0, 1]",
    ),
    (
        "unknown_event_type",
        _set("events", S.EVENT_TYPE, [2], ["buy"]),
        "events",
        S.EVENT_TYPE,
        [2],
        "event_type: not one of",
    ),
    (
        "item_null_on_view",
        _set("events", S.ITEM_ID, [1], [None]),
        "events",
        S.ITEM_ID,
        [1],
        "item_id: null on a non-search",
    ),
    (
        "event_unknown_item",
        _set("events", S.ITEM_ID, [2], ["999"]),
        "events",
        S.ITEM_ID,
        [2],
        "item_id: unknown item",
    ),
    (
        "offer_unknown_item",
        _set("offers", S.ITEM_ID, [6], ["1"]),
        "offers",
        S.ITEM_ID,
        [6],
        "item_id: unknown item",
    ),
    (
        "offer_null_user",
        _set("offers", S.USER_ID, [4], [None]),
        "offers",
        S.USER_ID,
        [4],
        "user_id: null",
    ),
    ("ts_in_future", _set("offers", S.TS, [7], [FUTURE]), "offers", S.TS, [7], "ts: in the future"),
    (
        "ts_unparseable",
        _as_text("events", S.TS, 0, "yesterday"),
        "events",
        S.TS,
        [0],
        "ts: unparseable timestamp ('yesterday')",
    ),
    (
        "price_not_a_number",
        _as_text("offers", S.PRICE, 2, "abc"),
        "offers",
        S.PRICE,
        [2],
        "price: not a number ('abc')",
    ),
]


# GX costs about 0.45 s per folder (fixed cost per expectation), so the matrix is marked slow.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutate", "table", "column", "bad_rows", "reason"),
    [case[1:] for case in ROW_BREAKS],
    ids=[case[0] for case in ROW_BREAKS],
)
def test_row_level_break_is_quarantined(
    tables: Tables,
    good_clean: Tables,
    write,
    now: dt.datetime,
    tmp_path: Path,
    mutate: Callable[[Tables], None],
    table: str,
    column: str,
    bad_rows: list[int],
    reason: str,
) -> None:
    n_good = len(tables[table])
    mutate(tables)
    data_dir = write(tables)
    report = validate_data_dir(data_dir, now=now, build_docs=False)

    # Limits first: nothing silently dropped, the bad rows and only they are quarantined.
    clean, bad = report.clean_tables[table], report.quarantined[table]
    assert len(clean) + len(bad) == len(tables[table])
    assert bad.index.tolist() == bad_rows
    assert all(reason in r for r in bad[S.REASON]), bad[S.REASON].tolist()
    other = [t for t in report.tables if t != table]
    assert all(report.quarantined[t].empty for t in other)

    # Good rows untouched: the clean table is the good fixture's clean table minus the broken rows.
    expected = (
        good_clean[table].drop(index=[r for r in bad_rows if r < n_good]).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(clean, expected)

    # Over the 1% threshold: the run fails with a message naming table, column and count.
    assert not report.passed
    [message] = report.errors
    assert f"table '{table}'" in message and column in message
    assert f"{len(bad_rows)} of {len(tables[table])} rows" in message
    assert f"{len(bad_rows)} row(s)" in message
    assert column in report.summary_text()

    # Quarantine file: original values plus the reason.
    saved = pd.read_parquet(data_dir / "quarantine" / f"{table}.parquet")
    assert saved["row"].tolist() == bad_rows and saved[S.REASON].tolist() == bad[S.REASON].tolist()
    written = json.loads((data_dir / "validation.json").read_text())["tables"][table]
    assert written["bad_rows"] == len(bad_rows) and written["passed"] is False


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_threshold_decides_pass_or_fail(tables: Tables, write, now: dt.datetime, fmt: str) -> None:
    tables[S.OFFERS].loc[[1, 2], S.PRICE] = [-1.0, 0.0]  # 2 of 8 rows = 25%
    data_dir = write(tables, fmt=fmt)
    strict = validate_data_dir(data_dir, threshold=0.25 - 1e-9, now=now, build_docs=False)
    loose = validate_data_dir(data_dir, threshold=0.25, now=now, build_docs=False)
    assert not strict.passed and strict.errors[0].startswith("table 'offers': 2 of 8 rows (25.00%)")
    assert loose.passed and loose.errors == []
    # Under the threshold the bad rows are still quarantined and counted, never dropped silently.
    assert len(loose.quarantined[S.OFFERS]) == 2 and len(loose.clean_tables[S.OFFERS]) == 6
    assert loose.tables[S.OFFERS].bad_rows == 2


def test_several_reasons_are_joined(tables: Tables, write, now: dt.datetime) -> None:
    tables[S.OFFERS].loc[0, [S.PRICE, S.PURCHASED]] = [-1.0, 3]
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    assert report.quarantined[S.OFFERS][S.REASON].tolist() == [
        "price: not > 0; purchased: not 0 or 1"
    ]


def test_unit_cost_over_list_price_is_only_a_warning(
    tables: Tables, write, now: dt.datetime
) -> None:
    tables[S.ITEMS].loc[1, S.UNIT_COST] = 20.0
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    assert report.passed
    assert report.quarantined[S.ITEMS].empty
    assert report.tables[S.ITEMS].warnings == {"unit_cost: >= list_price": 1}
    assert "(warning)" in report.summary_text()


def test_missing_column_is_a_table_level_error(tables: Tables, write, now: dt.datetime) -> None:
    tables[S.OFFERS] = tables[S.OFFERS].drop(columns=[S.PURCHASED])
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    assert not report.passed
    [message] = report.errors
    assert "table 'offers'" in message and "'purchased'" in message and "0 of 8 rows" in message
    assert S.OFFERS not in report.clean_tables and S.OFFERS not in report.quarantined
    assert report.clean_tables[S.EVENTS].shape[0] == len(
        tables[S.EVENTS]
    )  # other tables still checked


def test_wholly_wrong_type_is_caught_by_threshold(tables: Tables, write, now: dt.datetime) -> None:
    tables[S.OFFERS][S.PRICE] = "unknown"  # "n/a" would be read as null by CSV
    report = validate_data_dir(write(tables, fmt="csv"), now=now, build_docs=False)
    assert not report.passed
    [message] = report.errors
    assert "table 'offers'" in message and "price: not a number: 8 row(s)" in message
    assert report.clean_tables[S.OFFERS].empty and len(report.quarantined[S.OFFERS]) == 8


def test_empty_table_is_an_error(tables: Tables, write, now: dt.datetime) -> None:
    tables[S.EVENTS] = tables[S.EVENTS].iloc[:0]
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    assert not report.passed
    assert report.errors == ["table 'events': is empty (0 rows)"]


def test_truncated_parquet_raises_contract_error(tables: Tables, write, now: dt.datetime) -> None:
    data_dir = write(tables)
    path = data_dir / "offers.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ContractError, match="table 'offers': cannot read"):
        validate_data_dir(data_dir, now=now, build_docs=False)


def test_missing_required_table_raises_optional_does_not(
    tables: Tables, write, now: dt.datetime
) -> None:
    del tables[S.USERS]
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    assert report.passed and S.USERS not in report.tables
    del tables[S.ITEMS]
    with pytest.raises(ContractError, match="table 'items' is missing"):
        validate_data_dir(write(tables), now=now, build_docs=False)


def test_validate_helper_takes_suite_parameters(tables: Tables) -> None:
    offers = tables[S.OFFERS]
    params = {
        "known_item_ids": ["001", "002"],
        "latest_allowed_ts": dt.datetime(2024, 2, 6, tzinfo=dt.UTC),
    }
    result = validate(offers, "offers", params)
    assert not result.success
    failed = {
        (o.type, o.column): o.unexpected_positions.tolist()
        for o in result.outcomes
        if not o.success
    }
    assert failed == {
        ("expect_column_values_to_be_in_set", S.ITEM_ID): [2, 3, 6, 7],
        ("expect_column_values_to_be_between", S.TS): [5, 6, 7],
    }
    assert len(load_suite("offers").expectations) == 14
