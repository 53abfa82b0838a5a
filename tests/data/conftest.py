"""Fixtures of the GX suite tests: a tiny hand-made set of contract tables that passes every suite."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from pricing import io as pio
from pricing import schema as S

# Validation clock of the fixtures: every good timestamp lies before it.
NOW = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)


def good_tables() -> dict[str, pd.DataFrame]:
    """Four small tables that meet the contract (ids with leading zeros on purpose)."""
    ts = pd.to_datetime(
        [
            "2024-02-01 10:00",
            "2024-02-01 10:05",
            "2024-02-02 09:00",
            "2024-02-03 18:30",
            "2024-02-04 08:00",
            "2024-02-05 12:00",
        ],
        utc=True,
    ).as_unit("us")
    items = pd.DataFrame(
        {
            S.ITEM_ID: ["001", "002", "003", "004"],
            S.TITLE: ["red mug", "blue mug", "tea pot", "spoon"],
            S.CATEGORY: ["kitchen", "kitchen", "kitchen", "cutlery"],
            S.BRAND: ["acme", None, "acme", "forge"],
            S.LIST_PRICE: [10.0, 12.5, 30.0, 3.0],
            S.UNIT_COST: [4.0, 5.0, 12.0, 1.0],
        }
    )
    events = pd.DataFrame(
        {
            S.EVENT_ID: ["e1", "e2", "e3", "e4", "e5", "e6"],
            S.TS: ts,
            S.USER_ID: ["u1", "u1", "u2", "u2", "u3", "u3"],
            S.SESSION_ID: ["s1", "s1", "s2", "s2", "s3", "s3"],
            S.EVENT_TYPE: ["search", "view", "click", "add_to_cart", "purchase", "view"],
            S.ITEM_ID: [None, "001", "002", "002", "003", "004"],
            S.QUERY: ["cheap mug", None, None, None, None, None],
            S.PRICE: [None, 10.0, 12.0, 12.0, 29.0, 3.1],
        }
    )
    offers = pd.DataFrame(
        {
            S.OFFER_ID: [f"o{i}" for i in range(1, 9)],
            S.TS: pd.to_datetime([f"2024-02-0{d} 1{d}:00" for d in range(1, 9)], utc=True).as_unit(
                "us"
            ),
            S.USER_ID: ["u1", "u1", "u2", "u2", "u3", "u3", "u1", "u2"],
            S.ITEM_ID: ["001", "002", "003", "004", "001", "002", "003", "004"],
            S.PRICE: [9.99, 12.99, 29.0, 2.99, 10.5, 11.0, 31.0, 3.2],
            S.PURCHASED: [0, 1, 0, 1, 0, 0, 1, 0],
            S.PROPENSITY: [0.25, 0.5, 1.0, None, 0.2, 0.2, 0.3, 0.4],
            S.POLICY: ["ladder@1"] * 8,
        }
    )
    users = pd.DataFrame({S.USER_ID: ["u1", "u2", "u3"], S.AGE_GROUP: ["18-25", "26-40", "41+"]})
    return {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers, S.USERS: users}


def write_tables(tables: dict[str, pd.DataFrame], data_dir: Path, fmt: str = "parquet") -> Path:
    """Write the tables into `data_dir` as the contract expects them."""
    for name, df in tables.items():
        pio.write_table(df, data_dir, name, fmt=fmt)
    return data_dir


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    """A fresh copy of the good tables (tests break them in place)."""
    return good_tables()


@pytest.fixture
def now() -> dt.datetime:
    """The validation clock: every good timestamp lies before it."""
    return NOW


@pytest.fixture
def write(tmp_path: Path):
    """Write tables into a fresh folder under tmp_path and return it."""
    counter = iter(range(1000))

    def _write(tables: dict[str, pd.DataFrame], fmt: str = "parquet") -> Path:
        return write_tables(tables, tmp_path / f"data{next(counter)}", fmt=fmt)

    return _write


@pytest.fixture(scope="module")
def good_clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """The clean tables of the untouched fixture: what every good row must still look like."""
    from expectations import validate_data_dir

    data_dir = write_tables(good_tables(), tmp_path_factory.mktemp("good"))
    report = validate_data_dir(data_dir, now=NOW, build_docs=False)
    assert report.passed, report.errors
    return report.clean_tables
