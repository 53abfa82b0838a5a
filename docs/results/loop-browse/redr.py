"""Each round's DR estimate of a finished `pricing loop` run, with and without the rescale of the
reward model to the logged rewards (`--dr-calibration`), from the run's saved rounds.

    python docs/results/loop-browse/redr.py runs/loop [--json OUT]

The runs in this folder were made before commit `b90bc6d`, when the loop always rescaled; this
recomputes both values exactly as `tasks.loop.dr_estimate` does now (the rescaled value matches
the one the run reported), for the policy each round served, on the previous round's main traffic.
Round 0's estimate is list price on its own logs. Each row also has the estimate's standard error
(`dr_se`, shopper as the unit), its logged outcomes' part (`dr_se_outcomes`: the noise against the
same sessions' true value, what the loop compares with by default) and the error in those units
(`error_in_se_outcomes`). Not part of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the loop's --out folder")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    d = args.run.resolve()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d / 'mlruns' / 'mlflow.db'}"
    os.environ["PRICING_ARTIFACT_ROOT"] = str(d / "mlruns" / "artifacts")
    os.environ["PRICING_RUNS_DIR"] = str(d / "runs")

    from mlops import registry
    from mlops.config import load_config
    from mlops.settings import get_settings
    from pricing import schema as S
    from pricing.io import read_table, read_tables
    from pricing.simulator import load_ground_truth
    from scorer.offer_log import export_offers
    from tasks.evaluation import split_data, subset
    from tasks.features import build_offer_features
    from tasks.loop import dr_estimate, list_price_handle
    from tasks.training import fit_model

    details = json.loads((d / "loop-details.json").read_text())
    rounds = json.loads((d / "loop.json").read_text())["rounds"]
    registered = get_settings().registered_model
    logged = export_offers(d / "offer_log")
    ts = pd.to_datetime(logged[S.TS], utc=True)
    starts = [pd.Timestamp(r["started"]) for r in details]
    catalog = read_table(d / "market", S.ITEMS)
    truth = load_ground_truth(d / "market")
    out: list[dict[str, Any]] = []
    for k in range(len(details)):
        at = max(k, 1)  # round 0's estimate is made on round 1's data (its logs are the test)
        prev = logged[(ts >= starts[at - 1]) & (ts < starts[at])]
        experiment = d / f"round-{at - 1}" / "experiment.parquet"
        if experiment.exists():
            shown = set(pd.read_parquet(experiment)[S.OFFER_ID].astype(str))
            prev = prev[~prev[S.OFFER_ID].isin(shown)]
        cfg = load_config(d / f"round-{at}" / "config.yaml")
        guard = cfg.guardrails.to_dict()
        name, version = details[k]["policy"].split("@")
        model = (
            list_price_handle(catalog, guard)
            if k == 0
            else registry.load_version(registered, version)
        ).model
        tables = read_tables(d / f"round-{at}" / "loop")
        feats = build_offer_features(tables, d / "runs" / "cache").features
        _, train, _, test = split_data(tables, feats, cfg.split)
        keep = test.offers[S.OFFER_ID].astype(str).isin(set(prev[S.OFFER_ID].astype(str)))
        test = subset(test, np.flatnonzero(keep.to_numpy()))
        reward_model, _ = fit_model("logistic", train, None, cfg)
        from pricing.policy import Guardrails

        est = dr_estimate(
            model, guard["exploration"], test, reward_model, Guardrails.from_dict(guard), truth,
            20.0,
        )  # fmt: skip
        true = rounds[k]["true_profit_per_quote"]
        row = {
            "round": k,
            "policy": details[k]["policy"],
            "true_profit_per_quote": true,
            "realized_profit_per_quote": details[k]["realized_profit_per_offer"],
            "reported_dr": rounds[k]["ope_dr_estimate"],
            "dr_uncalibrated": est["dr_uncalibrated"],
            "dr_calibrated": est["dr_calibrated"],
            "dr_se": est["se"],  # of the estimate as fitted, shopper as the unit
            "dr_se_outcomes": est["se_outcomes"],  # its logged outcomes' part
        }
        row["error_uncalibrated"] = abs(row["dr_uncalibrated"] / true - 1)
        row["error_calibrated"] = abs(row["dr_calibrated"] / true - 1)
        row["error_in_se_outcomes"] = (row["dr_uncalibrated"] - true) / est["se_outcomes"]
        out.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
