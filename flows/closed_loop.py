"""The `closed_loop` flow: simulated shoppers against the live scorer, outcomes back as training data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pricing import schema as S
from pricing.io import read_table
from pricing.shoppers import loop_summary
from pricing.simulator import load_ground_truth
from tasks.closed_loop import export_offer_log, run_shoppers_task, served_guardrails
from tasks.validation import validate_tables


@flow(name="closed_loop", log_prints=True)
def closed_loop(
    scorer_url: str,
    data_dir: str,
    n_requests: int = 200,
    candidates: int = 10,
    seed: int = 0,
    offer_log_dir: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Drive the scorer with shoppers whose behaviour follows the simulator's ground truth.

    Reports the live policy's exact expected profit against list price and the oracle; with
    `offer_log_dir` and `out_dir`, writes and validates the next training set (old tables plus the
    logged offers, with their propensities).
    """
    truth = load_ground_truth(data_dir)
    if truth is None:
        raise ValueError(
            f"{data_dir} has no ground truth: the closed loop needs a simulated market"
        )
    quotes = run_shoppers_task(scorer_url, truth, n_requests, candidates, seed)
    items = read_table(data_dir, S.ITEMS)
    assert items is not None
    cost = items.set_index(S.ITEM_ID)[S.UNIT_COST].astype(float)
    result: dict[str, Any] = {
        "model_versions": sorted(quotes["model_version"].astype(str).unique().tolist()),
        **loop_summary(quotes, truth, cost, served_guardrails(scorer_url)),
    }
    if offer_log_dir and out_dir:
        result["next_training_set"] = export_offer_log(
            Path(data_dir), Path(offer_log_dir), Path(out_dir)
        )
        report = validate_tables(Path(out_dir), 0.01)
        result["next_training_set"]["validation_passed"] = report.passed
        result["next_training_set"]["data_dir"] = out_dir
    print(result)
    return result
