"""`pricing bound`: the regret floor of the simulator (`pricing.bounds`), seed by seed, on the same
markets, test offers and guardrails as `pricing compare --simulate`, and each compared model's
distance to it.

Seed s is the market `pricing compare --simulate` builds for seed s (`simulate_to` with the config's
`simulate:` block), split by the config and subsampled to `evaluation.max_test_offers` with the same
seed, so `profit_regret` here and in that run's `seed-<s>.json` are on the same rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.config import ExperimentConfig
from mlops.provenance import provenance
from pricing import stats
from pricing.bounds import LEVELS, SensitivityOracle
from tasks.compare import evaluate_seed, load_seed_data, read_seed_reports
from tasks.data import simulate_to

BOUND_JSON, BOUND_MD = "bound.json", "bound.md"
METRICS = ("profit_regret", "cold_items/profit_regret", "cold_users/profit_regret", "log_loss")


def bound_seed(seed: int, cfg: ExperimentConfig, runs_dir: Path) -> dict[str, dict[str, float]]:
    """Metrics of the oracle at each level (`LEVELS`) on seed `seed`'s simulated market."""
    path = simulate_to(runs_dir / f"sim-seed{seed}", cfg.simulate, seed)
    data = load_seed_data(path, cfg, runs_dir)
    if data.truth is None:
        raise ValueError(f"{path} has no ground truth")
    history = pd.concat([data.train.offers, data.valid.offers, data.test.offers], ignore_index=True)
    oracles = {f"oracle_{lvl}": SensitivityOracle(data.truth, history, lvl) for lvl in LEVELS}
    # the compare flow's own evaluation step, so the rows, guardrails and slices are the same
    metrics, _ = evaluate_seed.fn(seed, oracles, data, cfg)  # type: ignore[arg-type]  # duck-typed
    return {name: metrics[name] for name in oracles}


def bound(
    seeds: list[int],
    cfg: ExperimentConfig,
    runs_dir: Path,
    out_dir: Path,
    compare_dirs: list[Path] | None = None,
) -> dict[str, Any]:
    """The floor per seed and over seeds; with `compare_dirs`, every model's regret minus the floor,
    paired seed by seed (only seeds both have). Writes `bound.json` and `bound.md` to `out_dir`."""
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        per_seed[seed] = bound_seed(seed, cfg, runs_dir)
    levels = list(next(iter(per_seed.values())))
    summary: dict[str, Any] = {
        "seeds": seeds,
        "levels": {
            lvl: {
                m: stats.mean_interval(per_seed[s][lvl].get(m, np.nan) for s in seeds).as_dict()
                for m in METRICS
            }
            for lvl in levels
        },
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "seconds": time.perf_counter() - t0,
    }
    if compare_dirs:
        gaps: dict[str, Any] = {}
        for d in compare_dirs:  # each folder one comparison; a model already seen keeps its first
            reports = read_seed_reports([d])
            common = [s for s in seeds if s in reports]
            for s in common:
                n, mine = per_seed[s]["oracle_traits"].get("n"), reports[s]["metrics"]
                theirs = next(iter(mine.values())).get("n")
                if n != theirs:
                    raise ValueError(
                        f"{d}: seed {s} was evaluated on {theirs} test offers, the floor on {n}: "
                        "not the same market, split or config"
                    )
            for model in reports[common[0]]["metrics"] if common else []:
                if model in gaps:
                    continue
                entry: dict[str, Any] = {"seeds": common}
                for m in ("profit_regret", "cold_items/profit_regret"):
                    mine_m = [reports[s]["metrics"][model].get(m, np.nan) for s in common]
                    floor = [per_seed[s]["oracle_traits"].get(m, np.nan) for s in common]
                    entry[m] = {
                        "model": stats.mean_interval(mine_m).as_dict(),
                        "above_floor": stats.paired_interval(mine_m, floor).as_dict(),
                    }
                gaps[model] = entry
        summary["compare"] = {"dirs": [str(d) for d in compare_dirs], "models": gaps}
    summary["provenance"] = provenance(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BOUND_JSON).write_text(json.dumps(stats.json_safe(summary), indent=2))
    (out_dir / BOUND_MD).write_text(markdown(summary))
    return summary


def _cell(e: dict[str, float]) -> str:
    if not np.isfinite(e["lo"]):
        return f"{e['mean']:.4f}"
    return f"{e['mean']:.4f} [{e['lo']:.4f}, {e['hi']:.4f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The floor table (mean and 95% t interval over seeds) and, with a compare run, the gaps."""
    seeds = summary["seeds"]
    lines = [
        f"Regret floor on the simulator, seeds {', '.join(map(str, seeds))} "
        "(mean [95% t interval over seeds])",
        "",
        "| level | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for lvl, row in summary["levels"].items():
        lines.append(f"| {lvl} | " + " | ".join(_cell(row[m]) for m in METRICS) + " |")
    cmp = summary.get("compare")
    if cmp:
        lines += [
            "",
            f"Models of {', '.join(cmp['dirs'])}: regret, and regret minus `oracle_traits`'s, "
            "paired by seed",
            "",
            "| model | seeds | profit_regret | above the floor | cold items | above the floor |",
            "|---|---|---|---|---|---|",
        ]
        for model, e in cmp["models"].items():
            a, c = e["profit_regret"], e["cold_items/profit_regret"]
            lines.append(
                f"| {model} | {', '.join(map(str, e['seeds']))} | {_cell(a['model'])} | {_cell(a['above_floor'])} | "
                f"{_cell(c['model'])} | {_cell(c['above_floor'])} |"
            )
    return "\n".join(lines) + "\n"
