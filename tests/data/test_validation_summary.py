"""The validation summary `pricing validate` prints: every failed table says why, no empty tables."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd

from expectations import validate_data_dir
from pricing import schema as S

Tables = dict[str, pd.DataFrame]
HEADER = re.compile(r"^table\s+expectation\s+column\s+failed$")


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_missing_required_column_says_so_and_prints_no_empty_table(
    tables: Tables, write, now: dt.datetime
) -> None:
    tables[S.OFFERS] = tables[S.OFFERS].drop(columns=[S.PURCHASED])
    report = validate_data_dir(write(tables, fmt="csv"), now=now, build_docs=False)
    lines = _lines(report.summary_text())
    [offers] = [line for line in lines if line.startswith("offers")]
    assert "FAILED: required column(s) 'purchased' missing" in offers
    assert "bad=0" not in offers  # nothing was checked row by row: no count of 0 bad rows
    assert not any(HEADER.match(line) for line in lines)  # no failed expectation: no table
    assert lines[-1] == "FAILED (1 error)"
    # every FAILED table line says why
    assert all(": " in line.split("FAILED", 1)[1] for line in lines[:-1] if "FAILED" in line)


def test_rows_over_the_threshold_name_the_share_and_list_the_failed_expectations(
    tables: Tables, write, now: dt.datetime
) -> None:
    tables[S.OFFERS].loc[[1, 2], S.PRICE] = [-1.0, 0.0]  # 2 of 8 rows
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    lines = _lines(report.summary_text())
    [offers] = [line for line in lines if line.startswith("offers ") and "rows=" in line]
    assert "bad=2 (25.00%)" in offers
    assert "FAILED: 2 of 8 rows (25.00%) break the contract, over the threshold of 1.00%" in offers
    header = next(i for i, line in enumerate(lines) if HEADER.match(line))
    rows = [line for line in lines[header + 1 : -1] if line.strip()]
    assert rows and all(line.startswith("offers") and S.PRICE in line for line in rows)


def test_a_passing_report_prints_ok_lines_and_passed(
    tables: Tables, write, now: dt.datetime
) -> None:
    report = validate_data_dir(write(tables), now=now, build_docs=False)
    lines = _lines(report.summary_text())
    assert lines[-1] == "PASSED"
    assert all(line.endswith(" ok") for line in lines[:-1])
    assert not any(HEADER.match(line) for line in lines)
