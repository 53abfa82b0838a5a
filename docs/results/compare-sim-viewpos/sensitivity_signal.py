"""How much of each shopper's true price sensitivity the history features explain (simulator).

    python docs/results/compare-sim-viewpos/sensitivity_signal.py DATA_DIR

DATA_DIR: a simulated market (`pricing simulate` or a `pricing compare --simulate` seed folder, with
its `ground_truth/`). Each shopper's history sums over all their events (a diagnostic of the
information in the events, not the as-of features the models get; the keyword shares are left out
because they need fitted keywords), then a linear fit of the true standardized sensitivity on the
history features without and with the browsing position `u_view_pos`. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pricing import features as F
from pricing import schema as S


def r2(x: np.ndarray, y: np.ndarray) -> float:
    design = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(1.0 - resid.var() / y.var())


def main(data_dir: Path) -> dict[str, float]:
    events = pd.read_parquet(data_dir / "events.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    traits = pd.read_parquet(data_dir / "ground_truth" / "user_traits.parquet")
    users = events[S.USER_ID].astype(str)
    sums = F.event_sums(events, items).groupby(users).sum()
    feats = F.finalize_history(sums, np.zeros(len(sums)))
    z = traits.set_index(traits[S.USER_ID].astype(str))["sensitivity_z"].reindex(feats.index)
    ok = z.notna().to_numpy()
    others = [c for c in F.USER_FEATURES if c not in ("u_view_pos", "u_cat_share")]
    y = z.to_numpy(float)[ok]
    return {
        "shoppers": int(ok.sum()),
        "r2_other_history_features": r2(feats.loc[ok, others].to_numpy(float), y),
        "r2_with_view_position": r2(feats.loc[ok, [*others, "u_view_pos"]].to_numpy(float), y),
        "corr_view_position": float(np.corrcoef(feats.loc[ok, "u_view_pos"], y)[0, 1]),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="a simulated market with its ground_truth/")
    args = ap.parse_args()
    needed = ["events.parquet", "items.parquet", "ground_truth/user_traits.parquet"]
    missing = [n for n in needed if not (args.data_dir / n).is_file()]
    if missing:
        ap.error(f"{args.data_dir} is not a simulated market: no {', '.join(missing)}")
    print(json.dumps(main(args.data_dir), indent=2))
