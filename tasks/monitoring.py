"""Monitoring tasks: read the live offer log, compare it with the training data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from pricing import schema as S
from pricing.io import read_table
from pricing.monitoring import drift_report, live_calibration

PREDICTED = "purchase_probability"


def read_live_offers(offer_log_dir: Path) -> pd.DataFrame:
    """Offers with outcomes from the scorer's log, with the probability predicted at quote time.

    Read with the offer log's tolerant reader: a torn line, invalid bytes or a row without the
    offer fields is skipped, and counted in `df.attrs["skipped_lines"]`.
    """
    from scorer.offer_log import OUTCOME_TS, first_outcomes, read_outcomes

    read = read_outcomes(offer_log_dir, extra=[PREDICTED, OUTCOME_TS])
    df = first_outcomes(read.frame()).drop(columns=[OUTCOME_TS])
    df[S.PRICE] = df[S.PRICE].astype(float)
    df[S.PURCHASED] = df[S.PURCHASED].astype(int)
    df[PREDICTED] = pd.to_numeric(df[PREDICTED], errors="coerce").astype(float)
    df = df.reset_index(drop=True)
    df.attrs["skipped_lines"] = read.skipped
    return df


def monitor_report(data_dir: Path, offer_log_dir: Path) -> dict[str, Any]:
    """Drift of live prices against the training offers, and live conversion against prediction."""
    items = read_table(data_dir, S.ITEMS)
    offers = read_table(data_dir, S.OFFERS)
    assert items is not None and offers is not None
    live = read_live_offers(offer_log_dir)
    out: dict[str, Any] = {
        "live_offers": len(live),
        "offer_log_skipped_lines": int(live.attrs.get("skipped_lines", 0)),
    }
    if len(live) == 0:
        out["status"] = "no live outcomes yet"
        return out
    out.update(drift_report(offers, live, items))
    if PREDICTED in live:
        known = live[live[PREDICTED].between(0.0, 1.0)]
        out.update(
            {
                f"live_{k}": v
                for k, v in live_calibration(
                    known[PREDICTED].to_numpy(float), known[S.PURCHASED].to_numpy(float)
                ).items()
            }
        )
    return out


@task(name="monitor_live_traffic", retries=1, cache_policy=NO_CACHE)
def monitor_live_traffic(data_dir: Path, offer_log_dir: Path) -> dict[str, Any]:
    return monitor_report(data_dir, offer_log_dir)
