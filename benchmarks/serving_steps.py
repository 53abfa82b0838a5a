"""The scorer's per-request model steps of several served models, interleaved in one process.

What a served version costs per request, without the HTTP stack, Redis or a load generator (so a
shared, noisy machine affects both models alike): the two steps `scorer.accel` serves,

- `user_state(events)`: a user's state from the stored event dicts, what an event refresh runs;
- `demand(state, items, grid)`: purchase probabilities for 50 candidates over the 25-price grid,
  what every quote runs (with the wide models, plus the tabular rows of the candidates; with
  `bert_wide_ucat`, the sensitivity of the shopper by category);

for the same users, histories and candidates, the models trained as `scorer_load.py` trains them.
The rounds rotate the models' order so drift in machine speed hits all alike; each figure is the
median over rounds of the per-call mean. Each model's ratio to the first one (`--models`), and of
each to the one before it, is per step and for a request of the load benchmark's mix (90% quotes,
10% events). Also timed: the pandas history sums the wide state was built with before
`pricing.features.HistoryState`, on the same histories.

    python benchmarks/serving_steps.py [--models bert,bert_wide,bert_wide_ucat] [--rounds 15]
                                       [--calls 200] [--model-dir DIR]

Prints progress on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _provenance import bench_provenance  # noqa: E402
from scorer_load import EVENTS_SHARE, N_CANDIDATES, build_model, note  # noqa: E402

GRID = 25


def _histories(events: Any, n_users: int) -> list[list[dict[str, Any]]]:
    """The longest stored histories (the costliest refreshes), as the scorer's store holds them."""
    from pricing import schema as S

    ev = events.copy()
    ev[S.TS] = ev[S.TS].map(lambda t: t.isoformat())
    ev = ev.astype(object).where(ev.notna(), None)
    users = ev[S.USER_ID].value_counts().index[:n_users]
    return [ev[ev[S.USER_ID] == u].tail(200).to_dict("records") for u in users]


def _per_call(fn: Callable[[int], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for k in range(calls):
        fn(k)
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200, help="calls per step per round")
    ap.add_argument("--model-dir", type=Path, help="keep the trained models here and reuse them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--models",
        default="bert,bert_wide,bert_wide_ucat",
        help="comma-separated, wide models only after the first (ratios are to the first)",
    )
    args = ap.parse_args()
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    wide_kind = next((k for k in kinds if k != "bert"), None)
    if len(kinds) < 2 or wide_kind is None:
        ap.error("--models needs at least two models, one of them wide")

    from mlops.models import load_model
    from pricing import features as F
    from pricing import schema as S
    from scorer.accel import accelerate
    from scorer.state import events_frame

    workdir = args.model_dir or Path(tempfile.mkdtemp(prefix="serving-steps-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    setups: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        path, catalog, events = build_model(kind, workdir, args.seed)
        model = load_model(Path(path))
        acc = accelerate(model)
        note(f"{kind}: {acc.notes}")
        setups[kind] = {"model": model, "acc": acc}
    histories = _histories(events, 40)
    n_items = len(catalog)
    cands = [rng.choice(n_items, N_CANDIDATES, replace=False) for _ in range(64)]
    lp = catalog[S.LIST_PRICE].to_numpy(float)
    grids = [lp[c, None] * np.linspace(0.7, 1.3, GRID)[None, :] for c in cands]
    for s in setups.values():
        s["states"] = [s["acc"].user_state(h) for h in histories]
    wide = setups[wide_kind]["model"].wide
    history = F.HistoryState(wide.catalog, wide.keywords)

    times: dict[str, dict[str, list[float]]] = {k: {"user_state": [], "demand": []} for k in setups}
    pandas_sums: list[float] = []
    fast_sums: list[float] = []
    nh, nc = len(histories), len(cands)
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            acc, states = setups[kind]["acc"], setups[kind]["states"]
            times[kind]["user_state"].append(
                _per_call(lambda k, a=acc: a.user_state(histories[k % nh]), args.calls)
            )
            times[kind]["demand"].append(
                _per_call(
                    lambda k, a=acc, st=states: a.demand(st[k % nh], cands[k % nc], grids[k % nc]),
                    args.calls,
                )
            )
        pandas_sums.append(
            _per_call(
                lambda k: F.user_history_state(
                    events_frame(histories[k % nh]), wide.catalog, wide.keywords
                ),
                max(args.calls // 10, 5),
            )
        )
        fast_sums.append(_per_call(lambda k: history(histories[k % nh]), args.calls))
        note(f"round {r + 1}/{args.rounds}")

    med = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in times.items()}
    # each model against the first, and each against the one before it (bert_wide_ucat/bert_wide)
    pairs = [(kinds[0], k) for k in kinds[1:]] + [
        (kinds[i - 1], kinds[i]) for i in range(2, len(kinds))
    ]
    per_request = {
        k: (1 - EVENTS_SHARE) * m["demand"] + EVENTS_SHARE * m["user_state"] for k, m in med.items()
    }
    out = {
        "what": "per-call time of the scorer's model steps (one thread), median over interleaved rounds (us)",
        "candidates": N_CANDIDATES,
        "grid": GRID,
        "catalog_items": n_items,
        "history_events_mean": float(np.mean([len(h) for h in histories])),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "us": {k: {s: round(v, 1) for s, v in m.items()} for k, m in med.items()},
        "per_request_us": {k: round(v, 1) for k, v in per_request.items()},
        "ratios": {
            f"{k}/{base}": {
                "user_state": round(med[k]["user_state"] / med[base]["user_state"], 3),
                "demand": round(med[k]["demand"] / med[base]["demand"], 3),
                "per_request": round(per_request[k] / per_request[base], 3),
            }
            for base, k in pairs
        },
        "wide_history_sums_us": {
            "pandas (user_history_state over events_frame)": round(
                statistics.median(pandas_sums), 1
            ),
            "HistoryState (served)": round(statistics.median(fast_sums), 1),
        },
        "serving_paths": {k: s["acc"].notes for k, s in setups.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "provenance": bench_provenance("serving_steps", args),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
