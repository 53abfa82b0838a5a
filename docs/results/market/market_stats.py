"""How far list price and the best uniform price are from the personalized oracle, per preset.

    python docs/results/market/market_stats.py [--seed 11] [--offers 20000] > docs/results/market/market_stats.json

For each preset: a market with the preset's defaults (2,000 users) and a sample of its offers;
`GroundTruth.oracle` inside the default guardrails (0.7-1.3x list, margin >= 0) and inside a wide
0.2-5x band; the best single price per item inside the guardrails knowing the truth
(`pricing.evaluation.uniform_prices`); the profit of each relative to the oracle's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mlops.provenance import provenance
from pricing import schema as S
from pricing.evaluation import uniform_prices
from pricing.policy import Guardrails, price_bounds
from pricing.simulator import PRESETS, SimConfig, simulate


def stats(preset: str, seed: int, n_offers: int) -> dict[str, float]:
    market = simulate(SimConfig.preset(preset, seed=seed))
    truth, offers = market.truth, market.tables[S.OFFERS]
    offers = offers.sample(min(n_offers, len(offers)), random_state=0)
    u = offers[S.USER_ID].astype(str).to_numpy()
    i = offers[S.ITEM_ID].astype(str).to_numpy()
    idx = truth.item_index(i)
    lp, cost = truth.list_price[idx], truth.unit_cost[idx]
    low, high, _ = price_bounds(lp, cost, Guardrails())
    p_oracle, v_oracle = truth.oracle(u, i, low, high)
    p_wide, _ = truth.oracle(u, i, 0.2 * lp, 5.0 * lp)
    p_uniform = uniform_prices(i, low, high, lambda grid: truth.expected_value(u, i, grid))
    v_list = truth.expected_value(u, i, lp).sum()
    v_uniform = truth.expected_value(u, i, p_uniform).sum()
    return {
        "offers": len(offers),
        "purchase_rate": float(market.tables[S.OFFERS][S.PURCHASED].mean()),
        "wide_band_interior_share": float(
            np.mean((p_wide > 0.2 * lp * 1.0001) & (p_wide < 5.0 * lp * 0.9999))
        ),
        "wide_band_at_5x_share": float(np.mean(p_wide >= 5.0 * lp * 0.9999)),
        "guardrail_hit_share": float(
            np.mean((p_oracle <= low * 1.0001) | (p_oracle >= high * 0.9999))
        ),
        "list_over_oracle_uniform": float(v_list / v_uniform),
        "oracle_uniform_over_oracle": float(v_uniform / v_oracle.sum()),
        "list_over_oracle": float(v_list / v_oracle.sum()),
        "mean_oracle_price_ratio": float(np.mean(p_oracle / lp)),
        "mean_uniform_price_ratio": float(np.mean(p_uniform / lp)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--offers", type=int, default=20_000)
    args = ap.parse_args()
    out = {
        "presets": {name: stats(name, args.seed, args.offers) for name in PRESETS},
        "provenance": provenance(vars(args), config_name="docs/results/market/market_stats.py"),
    }
    out["commit"] = out["provenance"]["commit"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
