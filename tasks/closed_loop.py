"""Closed loop: simulated shoppers hit the live scorer; their outcomes flow back as new offers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from pricing import schema as S
from pricing.io import read_table, write_table
from pricing.policy import Guardrails
from pricing.shoppers import draw_outcomes, shopper_requests
from pricing.simulator import GroundTruth


def served_guardrails(scorer_url: str) -> Guardrails:
    """The guardrails the live scorer quotes with (from its `/readyz`), for the loop's oracle."""
    r = httpx.get(f"{scorer_url.rstrip('/')}/readyz", timeout=10.0)
    r.raise_for_status()
    return Guardrails.from_dict(r.json().get("guardrails"), strict=False)


def run_shoppers(
    scorer_url: str, truth: GroundTruth, n_requests: int, candidates: int, seed: int
) -> pd.DataFrame:
    """Ask for quotes, decide purchases from the true demand, report outcomes and the behaviour.

    Returns one row per quoted item with the price, propensity, model version and outcome.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=scorer_url, timeout=30.0) as client:
        for req in shopper_requests(truth, n_requests, candidates, rng):
            r = client.post(
                "/v1/quote",
                json={"user_id": req.user_id, "items": req.item_ids, "session_id": req.session_id},
            )
            r.raise_for_status()
            quote = r.json()
            items = [it["item_id"] for it in quote["items"]]
            prices = np.array([it["price"] for it in quote["items"]])
            users = np.full(len(items), req.user_id)
            bought, _ = draw_outcomes(truth, users, np.array(items), prices, rng)
            events = []
            for it, b in zip(quote["items"], bought, strict=True):
                client.post(
                    "/v1/outcomes",
                    json={
                        "quote_id": quote["quote_id"],
                        "item_id": it["item_id"],
                        "purchased": bool(b),
                    },
                ).raise_for_status()
                events.append(
                    {
                        "event_type": S.VIEW,
                        "item_id": it["item_id"],
                        "price": it["price"],
                        "session_id": req.session_id,
                    }
                )
                if b:
                    events.append(
                        {
                            "event_type": S.PURCHASE,
                            "item_id": it["item_id"],
                            "price": it["price"],
                            "session_id": req.session_id,
                        }
                    )
                rows.append(
                    {
                        "quote_id": quote["quote_id"],
                        S.USER_ID: req.user_id,
                        S.ITEM_ID: it["item_id"],
                        S.PRICE: it["price"],
                        S.PROPENSITY: it["propensity"],
                        S.PURCHASED: int(b),
                        "model_version": quote["model_version"],
                    }
                )
            client.post(
                "/v1/events", json={"user_id": req.user_id, "events": events}
            ).raise_for_status()
    return pd.DataFrame(rows)


@task(name="run_shoppers", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def run_shoppers_task(*args: Any, **kwargs: Any) -> pd.DataFrame:
    return run_shoppers(*args, **kwargs)


def next_training_set(data_dir: Path, offer_log_dir: Path, out_dir: Path) -> dict[str, int]:
    """The next data directory: the catalog and history as they were, plus the logged offers."""
    from scorer.offer_log import export_offers

    new = export_offers(offer_log_dir)
    old = read_table(data_dir, S.OFFERS)
    assert old is not None
    offers = pd.concat([old, new[old.columns.intersection(new.columns)]], ignore_index=True)
    for table in (S.ITEMS, S.EVENTS, S.USERS):
        df = read_table(data_dir, table, required=table != S.USERS)
        if df is not None:
            write_table(df, out_dir, table)
    write_table(offers, out_dir, S.OFFERS)
    gt = Path(data_dir) / "ground_truth"
    if gt.exists():
        import shutil

        shutil.copytree(gt, out_dir / "ground_truth", dirs_exist_ok=True)
    return {
        "logged_offers": len(new),
        "offers": len(offers),
        # lines of the offer log that were not valid offer rows (torn, bad bytes, missing fields)
        "skipped_log_lines": int(new.attrs.get("skipped_lines", 0)),
    }


@task(name="export_offer_log", retries=1, cache_policy=NO_CACHE)
def export_offer_log(data_dir: Path, offer_log_dir: Path, out_dir: Path) -> dict[str, int]:
    return next_training_set(data_dir, offer_log_dir, out_dir)
