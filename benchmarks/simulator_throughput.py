"""Throughput of the market simulator, against a naive per-offer Python loop.

Prints one JSON object: offers and events simulated, wall seconds, offers/s, rows/s (offers +
events) and `speedup_vs_python_loop`. The baseline draws a ladder price and a Bernoulli purchase
per offer with `random` and `math` and builds the offers DataFrame (no sessions, no item choice,
no events), times it on a small sample and extrapolates per offer, so the ratio is a lower bound
on what vectorizing buys.

    python benchmarks/simulator_throughput.py --users 20000 --days 42
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time

import pandas as pd
from _provenance import bench_provenance

from pricing import schema as S
from pricing.simulator import SimConfig, simulate


def python_loop_seconds_per_offer(n: int, config: SimConfig, seed: int = 0) -> float:
    """Seconds per offer of the obvious per-row loop: pick pair, price, P, outcome, row, table."""
    rnd = random.Random(seed)
    betas = [rnd.lognormvariate(0.5, 1.0) for _ in range(config.n_users)]
    alphas = [rnd.gauss(-3.0, 0.5) for _ in range(config.n_users)]
    list_prices = [rnd.uniform(5.0, 80.0) for _ in range(config.n_items)]
    ladder, weights = list(config.ladder), list(config.ladder_probs)
    rungs = list(range(len(ladder)))
    rows = []
    start = time.perf_counter()
    for k in range(n):
        u = rnd.randrange(config.n_users)
        i = rnd.randrange(config.n_items)
        rung = rnd.choices(rungs, weights=weights)[0]
        price = round(list_prices[i] * ladder[rung], 2)
        logit = alphas[u] - betas[u] * math.log(price / list_prices[i])
        p = 1.0 / (1.0 + math.exp(-logit))
        rows.append(
            {
                S.OFFER_ID: f"o{k:07d}",
                S.USER_ID: f"u{u:06d}",
                S.ITEM_ID: f"i{i:05d}",
                S.PRICE: price,
                S.PURCHASED: int(rnd.random() < p),
                S.PROPENSITY: weights[rung],
            }
        )
    offers = pd.DataFrame(rows)  # the simulator's time includes building its tables too
    assert len(offers) == n
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--users", type=int, default=20_000, help="simulated users (20k: ~1M offers)"
    )
    parser.add_argument("--days", type=int, default=42)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-offers", type=int, default=20_000)
    args = parser.parse_args()

    config = SimConfig(n_users=args.users, n_items=args.items, n_days=args.days, seed=args.seed)
    start = time.perf_counter()
    market = simulate(config)
    seconds = time.perf_counter() - start
    n_offers = len(market.tables[S.OFFERS])
    n_events = len(market.tables[S.EVENTS])
    per_offer_python = python_loop_seconds_per_offer(args.baseline_offers, config, args.seed)
    print(
        json.dumps(
            {
                "benchmark": "simulator_throughput",
                "users": args.users,
                "days": args.days,
                "offers": n_offers,
                "events": n_events,
                "seconds": round(seconds, 3),
                "offers_per_s": round(n_offers / seconds),
                "rows_per_s": round((n_offers + n_events) / seconds),
                "purchase_rate": round(float(market.tables[S.OFFERS][S.PURCHASED].mean()), 4),
                "python_loop_offers_per_s": round(1.0 / per_offer_python),
                "python_loop_extrapolated_seconds": round(per_offer_python * n_offers, 3),
                "speedup_vs_python_loop": round(per_offer_python * n_offers / seconds, 1),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "provenance": bench_provenance("simulator_throughput", args),
            }
        )
    )


if __name__ == "__main__":
    main()
