"""Throughput of the contract validation (coerce + GX + quarantine) on a 1M-row offers table.

Prints JSON: rows, seconds and rows/s of `expectations.validate_data_dir`'s per-table path, and the
same rules as plain pandas boolean masks, with the ratio (GX overhead against pandas).
Run: `python benchmarks/validation_throughput.py [--rows N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import numpy as np
import pandas as pd
from _provenance import bench_provenance

from expectations.runner import _validate_table, load_suite, validate
from pricing import schema as S


def make_offers(
    rows: int, n_items: int, rng: np.random.Generator, bad_share: float = 0.005
) -> pd.DataFrame:
    """Synthetic offers with a small share of broken rows spread over the rules."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    df = pd.DataFrame(
        {
            S.OFFER_ID: pd.Series(np.char.add("o", np.arange(rows).astype(str)), dtype="str"),
            S.TS: start + pd.to_timedelta(rng.integers(0, 60 * 86400, rows), unit="s"),
            S.USER_ID: pd.Series(
                np.char.add("u", rng.integers(0, 50_000, rows).astype(str)), dtype="str"
            ),
            S.ITEM_ID: pd.Series(
                np.char.add("i", rng.integers(0, n_items, rows).astype(str)), dtype="str"
            ),
            S.PRICE: rng.uniform(1, 100, rows).round(2),
            S.PURCHASED: rng.integers(0, 2, rows),
            S.PROPENSITY: rng.uniform(0.05, 1.0, rows),
            S.POLICY: pd.Series(["ladder@1"] * rows, dtype="str"),
        }
    )
    bad = rng.choice(rows, int(rows * bad_share), replace=False)
    quarter = np.array_split(bad, 4)
    df.loc[quarter[0], S.PRICE] = -1.0
    df.loc[quarter[1], S.PURCHASED] = 2
    df.loc[quarter[2], S.ITEM_ID] = "unknown"
    df.loc[quarter[3], S.OFFER_ID] = "o0"
    return df


def pandas_baseline(
    df: pd.DataFrame, known: set[str] | list[str], latest: pd.Timestamp
) -> np.ndarray:
    """The offers rules as boolean masks: the floor any validation library is measured against."""
    bad = np.zeros(len(df), dtype=bool)
    for col in (S.OFFER_ID, S.TS, S.USER_ID, S.ITEM_ID, S.PRICE, S.PURCHASED, S.POLICY):
        bad |= df[col].isna().to_numpy()
    bad |= df[S.OFFER_ID].duplicated(keep="first").to_numpy()
    bad |= (df[S.TS] > latest).to_numpy()
    bad |= ~df[S.ITEM_ID].isin(known).to_numpy()
    bad |= ~(df[S.PRICE] > 0).to_numpy()
    bad |= ~df[S.PURCHASED].isin([0, 1]).to_numpy()
    p = df[S.PROPENSITY]
    bad |= (p.notna() & ~((p > 0) & (p <= 1))).to_numpy()
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    df = make_offers(args.rows, args.items, rng)
    known = [f"i{i}" for i in range(args.items)]
    latest = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    params = {"known_item_ids": known, "latest_allowed_ts": latest}

    validate(df.head(100), load_suite(S.OFFERS), params)  # warm-up: GX import and context
    t0 = time.perf_counter()
    report, clean, bad, _ = _validate_table(df, S.OFFERS, params, (), threshold=0.01)
    full_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    coerced = df.copy()
    coerced[S.PRICE] = pd.to_numeric(coerced[S.PRICE], errors="coerce")
    mask = pandas_baseline(coerced, set(known), pd.Timestamp(latest))
    pandas_s = time.perf_counter() - t0

    assert bad is not None and int(mask.sum()) == len(bad), (int(mask.sum()), len(bad))
    print(
        json.dumps(
            {
                "rows": args.rows,
                "bad_rows": report.bad_rows,
                "seconds": round(full_s, 3),
                "rows_per_s": round(args.rows / full_s),
                "pandas_seconds": round(pandas_s, 3),
                "pandas_rows_per_s": round(args.rows / pandas_s),
                "overhead_vs_pandas": round(full_s / pandas_s, 2),
                "provenance": bench_provenance("validation_throughput", args),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
