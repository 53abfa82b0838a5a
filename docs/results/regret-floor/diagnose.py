"""Where a BERT model's regret on the simulator comes from: its a (appeal) or its b (sensitivity).

    python docs/results/regret-floor/diagnose.py --seed 0 --model bert_wide [--set price_head=user_category]

Trains the model on seed s's market as `pricing compare --simulate` does (or loads it from
`--model-dir` when that holds one), then prices two sets of offers through the evaluation's optimizer:
the test split's offers (the items shoppers viewed, as in `pricing compare`) and the closed loop's
quote requests (`pricing.shoppers.shopper_requests`; `--shoppers taste`, the default here: items
drawn by category taste alone, as `pricing loop` served them when offdist/ was made; `browse`: the
sessions the loop's shoppers make since then). For each it prints the regret of the model, of the
model's a with the true b, and of the true a with the model's b, and the error of log b by the
user's segment and the item's brand tier. Not part of the pipeline: the diagnosis behind README's "Price sensitivity: shopper x
category".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlops.config import load_config
from mlops.models import PricingData
from pricing import features as F
from pricing import schema as S
from pricing.logistic import sigmoid
from pricing.policy import Guardrails
from pricing.shoppers import shopper_requests
from tasks.compare import load_seed_data
from tasks.data import simulate_to
from tasks.evaluation import evaluate_models, subset
from tasks.training import fit_model


class FixedCurves:
    """Demand sigmoid(a - b log(p / list)) with given (a, b) per offer of `offers`."""

    def __init__(self, offers: pd.DataFrame, list_price: np.ndarray, a: Any, b: Any) -> None:
        self.pos = pd.Index(offers[S.OFFER_ID].astype(str))
        self.lp, self.a, self.b = list_price, np.asarray(a, float), np.asarray(b, float)

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        pos = self.pos.get_indexer(data.offers[S.OFFER_ID].astype(str))
        lpr = np.log(np.asarray(grid, float) / self.lp[pos, None])
        return sigmoid(self.a[pos, None] - self.b[pos, None] * lpr)

    def predict(self, data: PricingData) -> np.ndarray:
        return self.predict_grid(data, data.offers[S.PRICE].to_numpy(float)[:, None])[:, 0]


def loop_requests(
    data: Any, shoppers: str, n: int = 1500, candidates: int = 10, seed: int = 101
) -> PricingData:
    """The loop's quote requests as offers right after the market's last event (list price)."""
    events, items = data.train.events, data.train.items
    reqs = shopper_requests(data.truth, n, candidates, np.random.default_rng(seed), shoppers)
    off = pd.DataFrame(
        [(r.user_id, i) for r in reqs for i in r.item_ids], columns=[S.USER_ID, S.ITEM_ID]
    )
    off[S.OFFER_ID] = [f"q{k}" for k in range(len(off))]
    off[S.TS] = pd.to_datetime(events[S.TS], utc=True).max() + pd.Timedelta(seconds=1)
    off[S.PRICE] = off[S.ITEM_ID].map(items.set_index(S.ITEM_ID)[S.LIST_PRICE]).to_numpy(float)
    off[S.PURCHASED], off[S.PROPENSITY], off[S.SESSION_ID] = 0, np.nan, "loop"
    feats = F.offer_features(off, events, items).reset_index(drop=True)
    return PricingData(off, items, events, feats, data.train.users)


def report(
    name: str, model: Any, offers: PricingData, data: Any, guard: Guardrails
) -> dict[str, Any]:
    truth = data.truth
    if not hasattr(model, "offer_params"):  # a baseline: its regret only
        metrics, _ = evaluate_models({"model": model}, offers, truth, guard, 0.1)
        regret = {k: round(v["profit_regret"], 5) for k, v in metrics.items()}
        return {"offers": name, "profit_regret": regret}
    a, b = model.offer_params(offers)
    u = truth.user_index(offers.offers[S.USER_ID].astype(str).to_numpy())
    i = truth.item_index(offers.offers[S.ITEM_ID].astype(str).to_numpy())
    alpha, beta = truth.params_idx(u, i)
    lp = offers.list_price()
    curves = {
        "model": FixedCurves(offers.offers, lp, a, b),
        "model a, true b": FixedCurves(offers.offers, lp, a, beta),
        "true a, model b": FixedCurves(offers.offers, lp, alpha, b),
    }
    metrics, _ = evaluate_models(curves, offers, truth, guard, 0.1)  # type: ignore[arg-type]
    err_b, err_a = np.log(b) - np.log(beta), a - alpha
    seg, tier = truth.user_segment[u], truth.item_tier[i]
    cells = []
    for s in range(len(truth.segments)):
        for t in range(len(truth.tiers)):
            k = (seg == s) & (tier == t)
            if k.any():
                cells.append(
                    {
                        "segment": truth.segments[s],
                        "tier": truth.tiers[t],
                        "n": int(k.sum()),
                        "log_b_error": round(float(err_b[k].mean()), 3),
                        "a_error": round(float(err_a[k].mean()), 3),
                    }
                )
    return {
        "offers": name,
        "profit_regret": {k: round(v["profit_regret"], 5) for k, v in metrics.items()},
        "log_b_error": {"mean": float(err_b.mean()), "sd": float(err_b.std())},
        "by_segment_and_tier": cells,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="bert_wide")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], help="bert key=value (YAML value)")
    ap.add_argument("--runs-dir", default="runs/diagnose")
    ap.add_argument("--model-dir", help="save the trained model here, or load it if it is there")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--shoppers", choices=["taste", "browse"], default="taste")
    args = ap.parse_args()
    cfg = load_config(args.config)
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = cfg.model_copy(update={"seed": args.seed, "bert": cfg.bert.model_copy(update=over)})
    runs = Path(args.runs_dir)
    data = load_seed_data(
        simulate_to(runs / f"sim-seed{args.seed}", cfg.simulate, args.seed), cfg, runs
    )
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is not None and (model_dir / "bert.json").exists():
        from lightning_modules.demand import BertDemand

        model: Any = BertDemand.load(model_dir)
    else:
        model, _ = fit_model(args.model, data.train, data.valid, cfg)
        if model_dir is not None:
            model.save(model_dir)
    test = data.test
    cap = cfg.evaluation.max_test_offers
    if cap is not None and len(test) > cap:
        test = subset(
            test, np.sort(np.random.default_rng(args.seed).choice(len(test), cap, replace=False))
        )
    guard = cfg.guardrails
    out = [
        report("test offers (views)", model, test, data, guard),
        report("loop quote requests", model, loop_requests(data, args.shoppers), data, guard),
    ]
    text = json.dumps(
        {"seed": args.seed, "model": args.model, "set": over, "reports": out}, indent=2
    )
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
