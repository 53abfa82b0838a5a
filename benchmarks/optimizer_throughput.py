"""Throughput of the vectorized price optimizer against a per-candidate Python loop.

Optimizes `--candidates` candidates over a `--grid`-point grid with a logistic price response (the
model's price head shape), then times a Python loop calling the optimizer one candidate at a time on a
sample, checks both give the same prices, and prints JSON.

    python benchmarks/optimizer_throughput.py [--candidates 100000] [--grid 25] [--sample 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from _provenance import bench_provenance

from pricing.policy import Guardrails, optimize


def logistic_demand(
    list_price: np.ndarray, a: np.ndarray, b: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """P(purchase) = sigmoid(a - b * log(price / list)) for each row of a (n, G) price grid."""

    def fn(prices: np.ndarray) -> np.ndarray:
        logit = a[:, None] - b[:, None] * np.log(prices / list_price[:, None])
        return 1.0 / (1.0 + np.exp(-logit))

    return fn


def run(candidates: int, grid: int, sample: int, repeats: int, seed: int) -> dict[str, float | int]:
    """Time vectorized and per-candidate optimization; return the JSON record."""
    rng = np.random.default_rng(seed)
    lp = np.round(rng.lognormal(3.0, 1.0, candidates), 2).clip(0.5)
    cost = lp * rng.uniform(0.3, 0.8, candidates)
    a, b = rng.normal(0.0, 1.0, candidates), rng.uniform(0.5, 5.0, candidates)
    last = np.where(rng.random(candidates) < 0.2, lp * rng.uniform(0.8, 1.2, candidates), np.nan)
    g = Guardrails(ladder="99", grid_size=grid, min_margin=0.05)

    best = np.inf
    decision = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        decision = optimize(logistic_demand(lp, a, b), lp, cost, g, last_price=last)
        best = min(best, time.perf_counter() - t0)
    assert decision is not None

    idx = rng.choice(candidates, size=min(sample, candidates), replace=False)
    loop_prices = np.empty(idx.shape[0])
    t0 = time.perf_counter()
    for j, i in enumerate(idx):
        one = slice(i, i + 1)
        d = optimize(
            logistic_demand(lp[one], a[one], b[one]), lp[one], cost[one], g, last_price=last[one]
        )
        loop_prices[j] = d.price[0]
    loop_per_candidate = (time.perf_counter() - t0) / idx.shape[0]
    if not np.array_equal(loop_prices, decision.price[idx]):
        raise RuntimeError("vectorized and per-candidate optimizers disagree")

    return {
        "candidates": candidates,
        "grid": grid,
        "seconds": round(best, 4),
        "candidates_per_s": round(candidates / best),
        "loop_sample": int(idx.shape[0]),
        "loop_candidates_per_s": round(1.0 / loop_per_candidate),
        "speedup_vs_python_loop": round(loop_per_candidate * candidates / best, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--grid", type=int, default=25)
    parser.add_argument(
        "--sample", type=int, default=2000, help="candidates timed in the Python loop"
    )
    parser.add_argument("--repeats", type=int, default=3, help="vectorized runs; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = run(args.candidates, args.grid, args.sample, args.repeats, args.seed)
    out["provenance"] = bench_provenance("optimizer_throughput", args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
