"""Demand models behind one interface: what training, evaluation and the scorer call.

A demand model answers P(purchase | user history, item, price). Evaluation asks it for a grid of
prices per offer (the optimizer then picks one); the scorer asks it per quote with the user's
online state. Baselines (pooled logistic, LightGBM tuned on the validation split, and LightGBM
with the frozen MiniLM text vectors) live here; the BERT model plugs in from `lightning_modules`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import tempfile
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing import features as F
from pricing import schema as S
from pricing.keywords import QueryKeywords
from pricing.logistic import fit_logistic, predict_logistic, sigmoid
from pricing.model import DemandModel, PricingData

log = logging.getLogger(__name__)


# --- tabular baselines ---------------------------------------------------------------------------

PRICE_COLUMN = "log_price_ratio"
# The layout of models saved before the baselines learned keywords and popularity (no layout in
# their files): they still load and serve; their keyword shares read zero (no keywords saved).
LEGACY_USER_FEATURES: tuple[str, ...] = ("u_log_events", "u_log_purchases", "u_buy_rate", "u_paid_ratio", "u_cheap_share", "u_premium_share", "u_conv_low", "u_conv_high", "u_conv_gap", "u_cat_share")  # fmt: skip
LEGACY_FEATURES: tuple[str, ...] = (
    PRICE_COLUMN,
    "i_log_list_price",
    "i_margin",
    *LEGACY_USER_FEATURES,
)
_PREDICT_ROWS = 250_000  # rows (offers x grid prices) per prediction batch: bounds memory


def _ts(values: Any) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True)


def _data_end(train: PricingData, valid: PricingData | None) -> pd.Timestamp:
    """The latest offer a model is fitted or tuned on: nothing later may inform the model."""
    end = _ts(train.offers[S.TS]).max()
    if valid is not None and len(valid):
        end = max(end, _ts(valid.offers[S.TS]).max())
    return end


def _events_until(events: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    return events[(_ts(events[S.TS]) <= end).to_numpy()]


class FeatureModel(DemandModel):
    """A model over `pricing.features` columns: the shared half of the tabular baselines.

    `fit_context` learns what the features need beyond the cached feature table, from training
    data only: the search keywords (events up to the last training offer) and the catalog's item
    popularity as of the last training or validation offer (serving's view of popularity; evaluation
    reads each offer's own, as of its ts). `offer_frame` assembles every column a model may read;
    each model picks its `numeric` (and categorical) columns from it, and saves that layout.
    """

    catalog: pd.DataFrame
    keywords: QueryKeywords | None = None
    numeric: list[str]
    _frames: tuple[Any, ...] | None = None

    def set_catalog(self, items: pd.DataFrame) -> None:
        self.catalog = items.reset_index(drop=True).drop(
            columns=[F.PRICE_POSITION], errors="ignore"
        )
        self.catalog[S.ITEM_ID] = self.catalog[S.ITEM_ID].astype(str)
        # Each item's place in its category's price range, over the whole catalog, once: the
        # serving paths read it for a few candidate rows at a time.
        self.catalog[F.PRICE_POSITION] = F.price_position(self.catalog).to_numpy()
        self._frames = None

    def fit_context(self, train: PricingData, valid: PricingData | None) -> pd.DataFrame:
        """Set the catalog, learn keywords and the popularity snapshot; return the training events."""
        self.set_catalog(train.items)
        train_events = _events_until(train.events, _ts(train.offers[S.TS]).max())
        self.keywords = QueryKeywords.fit(train_events, self.catalog)
        end = _data_end(train, valid)
        # as of the day after the data's last day: a quote served after it counts that day too
        pop = F.popularity_snapshot(
            self.catalog, _events_until(train.events, end), end.floor("D") + pd.Timedelta(days=1)
        )
        for col in F.POPULARITY_FEATURES:
            self.catalog[col] = pop[col].to_numpy()
        return train_events

    def _matrix(self, feats: pd.DataFrame) -> np.ndarray:
        return feats[self.numeric].to_numpy(float)

    @abstractmethod
    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray: ...

    # --- columns ---------------------------------------------------------------------------------
    def offer_frame(self, data: PricingData) -> pd.DataFrame:
        """Every column the model may read, one row per offer of `data` (reused for the same data)."""
        c = self._frames
        if c is not None and c[0] is data.offers and c[1] is data.events and c[2] is data.features:
            return c[3]
        feats = data.features
        assert feats is not None, "feature models need PricingData.features"
        frame = feats.reset_index(drop=True).copy()
        kw = F.keyword_features(data.offers, data.events, self.keywords)
        for col in F.KEYWORD_FEATURES:
            frame[col] = kw[col].to_numpy()
        items = data.offers[S.ITEM_ID].astype(str)
        cat = self.catalog.set_index(S.ITEM_ID)
        frame[S.ITEM_ID] = items.to_numpy()
        frame[S.BRAND] = items.map(cat[S.BRAND].fillna("").astype(str)).fillna("").to_numpy()
        if S.CATEGORY not in frame:
            frame[S.CATEGORY] = items.map(cat[S.CATEGORY].astype(str)).fillna("").to_numpy()
        frame = self._add_offer_columns(frame, data)
        self._frames = (data.offers, data.events, data.features, frame)
        return frame

    def _add_offer_columns(self, frame: pd.DataFrame, data: PricingData) -> pd.DataFrame:
        """Hook: model-specific columns per offer (the text baseline's vectors)."""
        return frame

    def serving_frame(self, state: Any, item_idx: np.ndarray) -> pd.DataFrame:
        """The same columns as `offer_frame` for catalog rows `item_idx`, from a user state."""
        sums, cat_counts = state[0], state[1]
        rows = self.catalog.iloc[item_idx]
        user = F.serving_features(sums, cat_counts, rows)
        item = F.item_features(rows)
        base = pd.concat([user.reset_index(drop=True), item.reset_index(drop=True)], axis=1)
        for col in F.POPULARITY_FEATURES:
            # Catalogs saved before the snapshot existed: an item with no known history.
            base[col] = rows[col].to_numpy(float) if col in rows else F.NO_HISTORY_POPULARITY[col]
        base[S.ITEM_ID] = rows[S.ITEM_ID].astype(str).to_numpy()
        base[S.BRAND] = rows[S.BRAND].fillna("").astype(str).to_numpy() if S.BRAND in rows else ""
        base[S.CATEGORY] = rows[S.CATEGORY].astype(str).to_numpy()
        return self._add_serving_columns(base, state, item_idx)

    def _add_serving_columns(
        self, frame: pd.DataFrame, state: Any, item_idx: np.ndarray
    ) -> pd.DataFrame:
        """Hook: model-specific serving columns (the text baseline's vectors)."""
        return frame

    def _predict_over_grid(
        self, base: pd.DataFrame, lp: np.ndarray, grid: np.ndarray
    ) -> np.ndarray:
        """P(purchase) (n, G): `base` rows repeated over their grid prices, in bounded batches."""
        n, g = grid.shape
        out = np.empty((n, g))
        step = max(1, _PREDICT_ROWS // max(g, 1))
        for lo in range(0, n, step):
            part = base.iloc[lo : lo + step].reset_index(drop=True)
            rep = part.loc[part.index.repeat(g)].reset_index(drop=True)
            prices = np.asarray(grid[lo : lo + step], float).reshape(-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                rep[PRICE_COLUMN] = F.price_features(prices, np.repeat(lp[lo : lo + step], g))
            out[lo : lo + step] = self._predict_matrix(rep).reshape(-1, g)
        return out

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        out = self._predict_over_grid(self.offer_frame(data), data.list_price(), grid)
        return np.where(np.isnan(grid), np.nan, out)

    def user_state(self, events: pd.DataFrame) -> Any:
        return F.user_history_state(events, self.catalog, self.keywords)

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        item_idx = np.asarray(item_idx)
        base = self.serving_frame(state, item_idx)
        lp = self.catalog[S.LIST_PRICE].to_numpy(float)[item_idx]
        return self._predict_over_grid(base, lp, np.asarray(grid, float))

    def _layout(self) -> dict[str, Any]:
        """What `load` needs besides the weights: the columns and the learned keywords."""
        return {
            "numeric": list(self.numeric),
            "keywords": None if self.keywords is None else self.keywords.to_dict(),
        }

    def _set_layout(self, meta: dict[str, Any], legacy: list[str]) -> None:
        self.numeric = list(meta.get("numeric") or legacy)
        kw = meta.get("keywords")
        self.keywords = None if kw is None else QueryKeywords.from_dict(kw)


class LogisticDemand(FeatureModel):
    """Pooled logistic regression on log price, features, and log price x user features.

    The interactions let one pooled model bend its price slope by user, the simplest honest
    personalization baseline.
    """

    name = "logistic"

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2
        self.w: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.numeric = list(F.FEATURES + F.KEYWORD_FEATURES)
        self.interact = list(F.USER_FEATURES + F.KEYWORD_FEATURES)

    def _design(self, feats: pd.DataFrame) -> np.ndarray:
        x = self._matrix(feats)
        lpr = feats[PRICE_COLUMN].to_numpy(float)[:, None]
        user = feats[self.interact].to_numpy(float)
        return np.hstack([x, lpr * user])

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        assert train.features is not None
        self.fit_context(train, valid)
        x = self._design(self.offer_frame(train))
        self.mean, self.std = x.mean(0), x.std(0) + 1e-9
        self.w = fit_logistic(
            (x - self.mean) / self.std, train.offers[S.PURCHASED].to_numpy(float), self.l2
        )
        self._frames = None
        n_kw = 0 if self.keywords is None else len(self.keywords.cheap) + len(self.keywords.premium)
        return {"n_weights": float(len(self.w)), "n_keywords": float(n_kw)}

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        assert self.w is not None and self.mean is not None and self.std is not None
        return predict_logistic(self.w, (self._design(feats) - self.mean) / self.std)

    def save(self, path: Path) -> None:
        assert self.w is not None and self.mean is not None and self.std is not None, "fit first"
        path.mkdir(parents=True, exist_ok=True)
        # The layout rides in the npz as a JSON string (a unicode array: no pickle to load it).
        layout = json.dumps({**self._layout(), "interact": list(self.interact)})
        np.savez(
            path / "logistic.npz",
            w=self.w,
            mean=self.mean,
            std=self.std,
            l2=self.l2,
            layout=np.array(layout),
        )
        self.catalog.to_parquet(path / "catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> LogisticDemand:
        z = np.load(path / "logistic.npz")
        m = cls(l2=float(z["l2"]))
        m.w, m.mean, m.std = z["w"], z["mean"], z["std"]
        meta = json.loads(str(z["layout"])) if "layout" in z.files else {}
        m._set_layout(meta, list(LEGACY_FEATURES))
        m.interact = list(meta.get("interact") or LEGACY_USER_FEATURES)
        m.set_catalog(pd.read_parquet(path / "catalog.parquet"))
        return m


# The wide input of the neural model (wide & deep): every hand-built column the tabular baselines
# read except the price's own, which enters only through the monotone price term.
WIDE_FEATURES: tuple[str, ...] = (
    *F.ITEM_FEATURES,
    *F.POPULARITY_FEATURES,
    *F.USER_FEATURES,
    *F.KEYWORD_FEATURES,
)
_WIDE_CLIP = 8.0  # standardized values beyond this many training sds are clipped
_PER_ROW_USER_COLUMNS = frozenset({"u_cat_share"})


def _clipped(z: Any) -> Any:
    """`np.clip(np.nan_to_num(z, nan=0.0), -_WIDE_CLIP, _WIDE_CLIP)` in three ufunc calls."""
    return np.minimum(np.maximum(np.where(np.isnan(z), 0.0, z), -_WIDE_CLIP), _WIDE_CLIP)


class WideFeatures(FeatureModel):
    """The baselines' tabular features as a network input, so the network never knows less.

    The same columns the baselines read (`offer_frame` per offer in training and evaluation,
    `serving_frame` at quote time), minus the price: the user's purchase rate, paid-to-list ratio,
    conversion at low and high prices, category share, learned cheap/premium search shares, and
    the item's list price, margin and popularity as of the offer. Learned from training data only
    (keywords, popularity snapshot, standardization). Not a demand model itself: `matrix` and
    `serving_matrix` give standardized float32 rows for `BertDemand`'s price head.
    """

    name = "wide"

    def __init__(self) -> None:
        self.numeric = list(WIDE_FEATURES)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        if train.features is None:
            raise ValueError(
                "wide features need the offer feature table (PricingData.features): build it "
                "with tasks.features.build_offer_features, as training and evaluation do"
            )
        self.fit_context(train, valid)
        x = self._matrix(self.offer_frame(train))
        self.mean = np.nanmean(x, axis=0)
        self.std = np.nanstd(x, axis=0) + 1e-6
        self.mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        self._frames = None
        self._item_table = None  # the popularity snapshot is set: item columns are rebuilt
        return {"n_wide": float(len(self.numeric))}

    @property
    def dim(self) -> int:
        return len(self.numeric)

    @property
    def n_user(self) -> int:
        """How many of the last columns describe the user alone (`USER_FEATURES`, keywords)."""
        user = set(F.USER_FEATURES) | set(F.KEYWORD_FEATURES)
        n = 0
        for name in reversed(self.numeric):
            if name not in user:
                break
            n += 1
        return n

    def _standard(self, x: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.std is not None, "fit or load the wide features first"
        z = (x - self.mean) / self.std
        return np.clip(np.nan_to_num(z, nan=0.0), -_WIDE_CLIP, _WIDE_CLIP).astype(np.float32)

    def matrix(self, data: PricingData) -> np.ndarray:
        """(n_offers, dim) standardized wide rows of `data`'s offers (features as of each offer)."""
        if data.features is None:
            raise ValueError("wide features need PricingData.features for these offers")
        return self._standard(self._matrix(self.offer_frame(data)))

    def training_matrix(self, data: PricingData) -> np.ndarray:
        """The rows the network trains on, for the split `fit` saw: `matrix` here; the hybrid's
        tree columns are out of fold there (`HybridWide`)."""
        return self.matrix(data)

    @property
    def state_is_history_sums(self) -> bool:
        """Whether `user_state` is exactly the history sums and category counts, which the
        scorer can compute without pandas (`pricing.features.HistoryState`)."""
        return True

    def serving_matrix(self, state: Any, item_idx: np.ndarray) -> np.ndarray:
        """The same rows at quote time, for catalog rows `item_idx`, from `user_state(events)`.

        In numpy: the item columns are one table per loaded model, the user columns come from the
        state's sums (`pricing.features.history_columns`), the category share per row from its
        counts. `serving_matrix_frame` is the same through `serving_frame` (tests compare them).
        """
        rows = np.asarray(item_idx, np.int64)
        if self._item_table is None:
            self._build_item_table()
        assert self._item_table is not None and self._item_category is not None
        assert self.mean is not None and self.std is not None
        sums, cat_counts = state[0], state[1]
        # The states the scorer builds are in HISTORY_SUMS order: no reindex (a third of the cost).
        ordered = sums.index is F.SUMS_INDEX or sums.index.equals(F.SUMS_INDEX)
        values = (sums if ordered else sums.reindex(list(F.HISTORY_SUMS))).to_numpy(float)
        counts = (
            np.fromiter(
                (cat_counts.get(c, 0.0) for c in self._item_category[rows]), float, len(rows)
            )
            if self._row_columns
            else np.zeros(len(rows))
        )
        # numpy scalars per sum (cheaper than 1-element arrays); the category share is per row
        user = F.history_columns({k: values[j] for j, k in enumerate(F.HISTORY_SUMS)}, counts)
        x = self._item_table[rows]  # already standardized: a fancy index is a copy
        per_user = self._user_columns
        if per_user:  # one value per user, standardized once and broadcast over the rows
            u = np.array([user[self.numeric[j]] for j in per_user], float)
            x[:, per_user] = _clipped((u - self.mean[per_user]) / self.std[per_user])
        for j in self._row_columns:
            x[:, j] = _clipped((user[self.numeric[j]] - self.mean[j]) / self.std[j])
        return x

    def serving_matrix_frame(self, state: Any, item_idx: np.ndarray) -> np.ndarray:
        """`serving_matrix` through the baselines' `serving_frame` (pandas)."""
        return self._standard(self._matrix(self.serving_frame(state, np.asarray(item_idx))))

    # Built on the first quote from the fitted (or loaded) catalog: reset by `fit`, which sets the
    # catalog's popularity snapshot; `load` starts from a fresh instance.
    _item_table: np.ndarray | None = None
    _item_category: np.ndarray | None = None
    _user_columns: list[int]  # user columns with one value per user
    _row_columns: list[int]  # user columns that vary with the candidate (its category's share)

    def _build_item_table(self) -> None:
        """Every catalog row's standardized item columns (user columns filled per quote)."""
        rows = np.arange(len(self.catalog))
        empty: tuple[pd.Series, dict[str, float]] = (pd.Series(0.0, index=F.SUMS_INDEX), {})
        self._item_table = self._standard(self._matrix(self.serving_frame(empty, rows)))
        self._item_category = np.asarray(self.catalog[S.CATEGORY].astype(str).tolist(), object)
        user = set(F.USER_FEATURES) | set(F.KEYWORD_FEATURES)
        columns = [j for j, col in enumerate(self.numeric) if col in user]
        self._row_columns = [j for j in columns if self.numeric[j] in _PER_ROW_USER_COLUMNS]
        self._user_columns = [j for j in columns if j not in self._row_columns]

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        raise TypeError("WideFeatures are a network input, not a demand model")

    def save(self, path: Path) -> None:
        assert self.mean is not None and self.std is not None, "fit first"
        path.mkdir(parents=True, exist_ok=True)
        np.savez(
            path / "wide.npz",
            mean=self.mean,
            std=self.std,
            layout=np.array(json.dumps(self._layout())),
        )
        self.catalog.to_parquet(path / "wide_catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> WideFeatures:
        m = cls()
        m._load_base(path)
        return m

    def _load_base(self, path: Path) -> None:
        z = np.load(path / "wide.npz")
        self.mean, self.std = z["mean"], z["std"]
        self._set_layout(json.loads(str(z["layout"])), list(WIDE_FEATURES))
        self.set_catalog(pd.read_parquet(path / "wide_catalog.parquet"))


def _lightgbm() -> Any:
    """Import LightGBM with OpenMP's idle threads sleeping rather than spinning (unless set).

    Spinning threads make LightGBM an order of magnitude slower when its cores are shared (120
    trees on 2 busy cores: 22 s spinning, 1.8 s sleeping); on idle cores sleeping costs nothing
    measurable. Read when the OpenMP runtime loads, so it must be set before the first import.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import lightgbm as lgb

    return lgb


LGB_DEFAULTS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1e-3,  # LightGBM's 0, on the tuner's log scale: the first trial is this config
    "cat_smooth": 10.0,  # LightGBM's default, stated so the first trial uses it
    "n_estimators": 400,  # the most trees; early stopping on the validation split picks fewer
    "early_stopping_rounds": 30,
    "max_bin": 63,  # histogram bins per feature: a third faster than 255 at the same log loss here
    "deterministic": True,  # with force_row_wise and the seed: the same trees on every run
    "force_row_wise": True,
    "verbose": -1,
    "num_threads": 2,
}
# The tuner's budget: exactly `n_trials` Optuna trials (0: no tuning, the configured parameters as
# they are), each early-stopped on the validation log loss. No wall-clock limit: a budget that
# depends on how busy the machine is would give two models unequal searches and make a run
# irreproducible.
TUNE_DEFAULTS: dict[str, Any] = {"n_trials": 0}
# The search space: (low, high, log scale, integer) per LightGBM parameter.
SEARCH_SPACE: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.03, 0.2, True, False),
    "num_leaves": (8, 128, True, True),
    "min_child_samples": (10, 400, True, True),
    "feature_fraction": (0.4, 1.0, False, False),
    "bagging_fraction": (0.5, 1.0, False, False),
    "lambda_l2": (1e-3, 30.0, True, False),
    "cat_smooth": (1.0, 100.0, True, False),
}


@dataclass
class TuneResult:
    """What `train_lightgbm` found: the booster to keep and how it was chosen."""

    booster: Any
    params: dict[str, Any]  # the chosen values of the tuned parameters ({} without tuning)
    valid_logloss: float  # at the booster's best iteration (nan without a validation split)
    n_trials: int
    seconds: float


def train_lightgbm(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame | None,
    y_valid: np.ndarray | None,
    params: dict[str, Any],
    tune: dict[str, Any],
    seed: int,
) -> TuneResult:
    """Train LightGBM; with a validation split and `tune["n_trials"] > 0`, tune it with Optuna.

    The TPE sampler is seeded with `seed`, so the same data and budget give the same trials. The
    first trial is the configured parameters (tuning never does worse on validation than not
    tuning). Every trial is early-stopped on the validation log loss and the best trial's booster is
    kept as it is (no refit: the validation split only chooses parameters and the tree count; the
    test split is never seen here).
    """
    lgb = _lightgbm()
    params = dict(params)
    n_estimators = int(params.pop("n_estimators"))
    early = int(params.pop("early_stopping_rounds"))
    params["seed"] = seed
    # Built once for every trial; no pre-filter, so trials may change min_child_samples.
    dataset_params = {
        "feature_pre_filter": False,
        "verbose": -1,
        "max_bin": params.pop("max_bin", 255),
    }
    dtrain = lgb.Dataset(x_train, y_train, params=dataset_params, free_raw_data=False)
    t0 = time.perf_counter()
    if x_valid is None or y_valid is None or not len(x_valid):
        booster = lgb.train(params, dtrain, n_estimators)
        return TuneResult(booster, {}, float("nan"), 0, time.perf_counter() - t0)
    dvalid = lgb.Dataset(
        x_valid, y_valid, reference=dtrain, params=dataset_params, free_raw_data=False
    )

    def run(p: dict[str, Any]) -> tuple[Any, float]:
        b = lgb.train(
            p,
            dtrain,
            n_estimators,
            valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(early, verbose=False)],
        )
        return b, float(b.best_score["valid_0"]["binary_logloss"])

    n_trials = int(tune.get("n_trials") or 0)
    if n_trials <= 0:
        booster, score = run(params)
        return TuneResult(booster, {}, score, 0, time.perf_counter() - t0)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best: dict[str, Any] = {}

    def objective(trial: Any) -> float:
        p = dict(params)
        for key, (low, high, log, is_int) in SEARCH_SPACE.items():
            if is_int:
                p[key] = trial.suggest_int(key, int(low), int(high), log=log)
            else:
                p[key] = trial.suggest_float(key, low, high, log=log)
        booster, score = run(p)
        if not best or score < best["score"]:
            best.update(booster=booster, score=score)
        return score

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, n_trials // 3)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    start = {}
    for key, (low, high, _, is_int) in SEARCH_SPACE.items():
        if key in params:
            v = float(np.clip(float(params[key]), low, high))
            start[key] = int(round(v)) if is_int else v
    study.enqueue_trial(start)
    study.optimize(objective, n_trials=n_trials)
    return TuneResult(
        best["booster"],
        dict(study.best_params),
        float(best["score"]),
        len(study.trials),
        time.perf_counter() - t0,
    )


class LightGBMDemand(FeatureModel):
    """Gradient-boosted trees, monotone-decreasing in price, tuned on the validation split.

    Reads everything tabular the neural model sees: the hand-built features, item popularity as of
    the offer, the learned keyword shares, and item id, brand and category as categorical columns.

    Args:
        params: LightGBM parameters over `LGB_DEFAULTS`, plus `tune: {n_trials}` (the Optuna
            budget, `TUNE_DEFAULTS`; the configured parameters are the first trial).
        seed: LightGBM's and the tuner's seed.
    """

    name = "lightgbm"

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        params = dict(params or {})
        self.tune = {**TUNE_DEFAULTS, **dict(params.pop("tune", None) or {})}
        unknown = set(self.tune) - set(TUNE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown lightgbm tune keys: {sorted(unknown)}")
        self.params = {**LGB_DEFAULTS, **params}
        self.seed = seed
        self.booster: Any = None
        self.categories: list[str] = []  # levels of `category`
        self.levels: dict[str, list[str]] = {}  # levels of the other categorical columns
        # Until `fit` or `load` sets a layout: the cached features and the category.
        self.numeric = list(F.FEATURES)
        self.categorical: list[str] = [S.CATEGORY]
        self.best_params: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """The constructor's `params` that rebuild this model (saved with it)."""
        return {**self.params, "tune": dict(self.tune)}

    def _fit_extra(self, train: PricingData, train_events: pd.DataFrame) -> dict[str, float]:
        """Hook: fit what a subclass's columns need (on training data only); returns diagnostics."""
        return {}

    def _extra_numeric(self) -> list[str]:
        return []

    def _frame(self, feats: pd.DataFrame) -> pd.DataFrame:
        x = feats[self.numeric].astype(float)
        for col in self.categorical:
            levels = self.categories if col == S.CATEGORY else self.levels.get(col, [])
            x[col] = pd.Categorical(feats[col].astype(str), categories=levels)
        return x

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        assert train.features is not None
        train_events = self.fit_context(train, valid)
        diag = self._fit_extra(train, train_events)
        self.numeric = list(F.FEATURES + F.KEYWORD_FEATURES) + self._extra_numeric()
        self.categorical = [S.ITEM_ID, S.BRAND, S.CATEGORY]
        self.categories = sorted(self.catalog[S.CATEGORY].astype(str).unique().tolist())
        brands = self.catalog[S.BRAND].fillna("").astype(str) if S.BRAND in self.catalog else None
        self.levels = {
            # Items never offered in training are unknown (missing) to the trees, not a level.
            S.ITEM_ID: sorted(train.offers[S.ITEM_ID].astype(str).unique().tolist()),
            S.BRAND: sorted(brands.unique().tolist()) if brands is not None else [],
        }
        x_train = self._frame(self.offer_frame(train))
        y_train = train.offers[S.PURCHASED].to_numpy(float)
        x_valid = y_valid = None
        if valid is not None and valid.features is not None and len(valid):
            x_valid = self._frame(self.offer_frame(valid))
            y_valid = valid.offers[S.PURCHASED].to_numpy(float)
        params = dict(self.params)
        # Monotone constraint: predicted demand can never rise with price.
        params["monotone_constraints"] = [-1 if c == PRICE_COLUMN else 0 for c in x_train.columns]
        result = train_lightgbm(x_train, y_train, x_valid, y_valid, params, self.tune, self.seed)
        self.booster = result.booster
        self.best_params = dict(result.params)
        self._frames = None  # the training frames are not needed past this point
        n_kw = 0 if self.keywords is None else len(self.keywords.cheap) + len(self.keywords.premium)
        diag.update(
            {
                "best_iteration": float(
                    self.booster.best_iteration or self.booster.current_iteration()
                ),
                "valid_logloss": result.valid_logloss,
                "tune_trials": float(result.n_trials),
                "tune_seconds": result.seconds,
                "n_features": float(len(x_train.columns)),
                "n_keywords": float(n_kw),
                **{f"tuned.{k}": float(v) for k, v in self.best_params.items()},
            }
        )
        return diag

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        it = self.booster.best_iteration or None
        return np.asarray(self.booster.predict(self._frame(feats), num_iteration=it), float)

    def _meta(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "config": self.config(),
            "seed": self.seed,
            "categories": self.categories,
            "levels": self.levels,
            "categorical": self.categorical,
            "best_params": self.best_params,
            **self._layout(),
        }

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "lightgbm.txt"))
        (path / "lightgbm.json").write_text(json.dumps(self._meta()))
        self.catalog.to_parquet(path / "catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> LightGBMDemand:
        lgb = _lightgbm()
        meta = json.loads((path / "lightgbm.json").read_text())
        config = dict(meta.get("config") or meta["params"])
        if isinstance(config.get("tune"), dict):  # saved when the tuner also had a time limit
            config["tune"] = {k: v for k, v in config["tune"].items() if k != "timeout_s"}
        m = cls(config, meta["seed"])
        m.categories = meta["categories"]
        m.levels = {k: list(v) for k, v in (meta.get("levels") or {}).items()}
        m.categorical = list(meta.get("categorical") or [S.CATEGORY])
        m.best_params = dict(meta.get("best_params") or {})
        m._set_layout(meta, list(LEGACY_FEATURES))
        m.booster = lgb.Booster(model_file=str(path / "lightgbm.txt"))
        m.set_catalog(pd.read_parquet(path / "catalog.parquet"))
        m._load_extra(path)
        return m

    def _load_extra(self, path: Path) -> None:
        """Hook: read what a subclass saved beside the booster."""


TEXT_DEFAULTS: dict[str, Any] = {
    "text_encoder": "minilm",  # minilm | tiny (random-init BERT, tests only)
    "text_cache_dir": None,  # on-disk cache of encoded texts (as BERT's `text_cache_dir`)
    "text_dims": 16,  # PCA dimensions of each text block (item, recent items, recent queries)
    "recent_items": 20,  # K: the user's last K items (any event with an item) before the offer
    "recent_queries": 5,  # the user's last searches before the offer
}


@dataclass
class _Pca:
    """A linear reduction fitted on training vectors only: x -> (x - mean) @ components.T."""

    mean: np.ndarray
    components: np.ndarray  # (dims, d); zero rows past the rank of the training vectors

    @classmethod
    def fit(cls, x: np.ndarray, dims: int) -> _Pca:
        x = np.asarray(x, np.float64)
        d = x.shape[1]
        if len(x) == 0:
            return cls(np.zeros(d), np.zeros((dims, d)))
        mean = x.mean(0)
        xc = x - mean
        # Eigenvectors of the d x d scatter matrix: the SVD's right vectors, at a fraction of its
        # cost for n >> d (and far less exposed to BLAS threads fighting over shared cores).
        _, eigvec = np.linalg.eigh(xc.T @ xc)
        top = eigvec[:, ::-1].T[: min(dims, len(x) - 1, d)]
        comps = np.zeros((dims, d))
        comps[: len(top)] = top
        # SVD signs are arbitrary: fix each so its largest loading is positive (stable files).
        sign = np.sign(comps[np.arange(dims), np.abs(comps).argmax(1)])
        return cls(mean, comps * np.where(sign == 0, 1.0, sign)[:, None])

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components.T


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _window_sims(
    target: np.ndarray, table: np.ndarray, idx: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max cosine of each row of `target` (unit vectors) against its window of `table`
    rows (`idx`, -1 = none); 0 and 0 for an empty window. Chunked: bounded memory."""
    n, k = idx.shape
    mean, best = np.zeros(n), np.zeros(n)
    if not n or not k or not len(table):
        return mean, best
    for lo in range(0, n, chunk):
        w = idx[lo : lo + chunk]
        sims = np.einsum("cd,ckd->ck", target[lo : lo + chunk], table[np.maximum(w, 0)])
        valid = w >= 0
        count = valid.sum(1)
        mean[lo : lo + chunk] = np.where(valid, sims, 0.0).sum(1) / np.maximum(count, 1)
        best[lo : lo + chunk] = np.where(count > 0, np.where(valid, sims, -np.inf).max(1), 0.0)
    return mean, best


class LightGBMTextDemand(LightGBMDemand):
    """`LightGBMDemand` plus the frozen MiniLM vectors the BERT model reads.

    The same text BERT reads: each item's title, category, brand and description; per offer, the
    user's last `recent_items` items and last `recent_queries` searches strictly before it. Three
    blocks reduced to `text_dims` by PCAs fitted on training data only (items offered in training,
    queries searched before the last training offer): the item, the mean of the recent items, the
    mean of the recent queries; plus the mean and max cosine (full 384-d space) of the item
    against the recent items and against the recent queries, which carry a need or taste that
    the reduced blocks may average away. It separates "the pretrained encoder helps" from "the
    end-to-end sequence model helps". The encoder runs at fit time and afterwards only for a query
    the model has never seen (in `user_state`, off the quote path, as for BERT).

    Args:
        params: `LightGBMDemand`'s parameters plus the keys of `TEXT_DEFAULTS`.
        seed: LightGBM's and the tuner's seed.
    """

    name = "lightgbm_text"

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        params = dict(params or {})
        self.text = {k: params.pop(k, v) for k, v in TEXT_DEFAULTS.items()}
        super().__init__(params, seed)
        self._encoder: Any = None
        self.item_pca: _Pca | None = None
        self.query_pca: _Pca | None = None
        self.item_vecs = np.zeros((0, self.dims))  # catalog rows, reduced
        self.item_unit = np.zeros((0, 0), np.float32)  # catalog rows, full and unit-length
        self.queries: list[str] = []  # training queries, in the order of the two tables below
        self.query_vecs = np.zeros((0, self.dims))
        self.query_unit = np.zeros((0, 0), np.float32)
        self._query_row: dict[str, int] = {}
        self._extra: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # unseen queries, on sight

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.text}

    @property
    def dims(self) -> int:
        return int(self.text["text_dims"])

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from mlops.text import TextEncoder

            self._encoder = TextEncoder(self.text["text_encoder"], self.text["text_cache_dir"])
        return self._encoder

    def text_columns(self) -> list[str]:
        d = range(self.dims)
        return (
            [f"t_item_{k}" for k in d]
            + [f"t_recent_{k}" for k in d]
            + [f"t_query_{k}" for k in d]
            + ["t_sim_recent_mean", "t_sim_recent_max", "t_sim_query_mean", "t_sim_query_max"]
            + ["t_n_recent", "t_n_queries"]
        )

    def _extra_numeric(self) -> list[str]:
        return self.text_columns()

    def _fit_extra(self, train: PricingData, train_events: pd.DataFrame) -> dict[str, float]:
        from mlops.text import item_texts

        _lightgbm()  # before torch: LightGBM's OpenMP runtime first, with idle threads sleeping
        t0 = time.perf_counter()
        vecs = self.encoder.encode(item_texts(self.catalog))
        searches = train_events[train_events[S.EVENT_TYPE].astype(str) == S.SEARCH]
        texts = searches[S.QUERY] if S.QUERY in searches else pd.Series(dtype=object)
        queries = sorted(set(texts.dropna().astype(str)) - {""})
        qvecs = self.encoder.encode(queries)
        encode_s = time.perf_counter() - t0
        offered = self.catalog[S.ITEM_ID].isin(set(train.offers[S.ITEM_ID].astype(str)))
        self.item_pca = _Pca.fit(vecs[offered.to_numpy()], self.dims)
        self.query_pca = _Pca.fit(qvecs, self.dims)
        self.item_vecs = self.item_pca.transform(vecs)
        self.item_unit = _unit(vecs)
        self._set_queries(queries, self.query_pca.transform(qvecs), _unit(qvecs))
        return {"encode_seconds": encode_s, "n_queries": float(len(queries))}

    def _set_queries(self, queries: list[str], vecs: np.ndarray, unit: np.ndarray) -> None:
        self.queries = list(queries)
        self.query_vecs = np.asarray(vecs, np.float64).reshape(len(queries), self.dims)
        unit = np.asarray(unit, np.float32)
        # (n, d); with no queries at all (purchase-only logs: Ta Feng, The Complete Journey) the
        # width comes from the array's own shape, since reshape(0, -1) cannot infer it.
        width = unit.shape[-1] if unit.ndim == 2 else unit.size // max(len(queries), 1)
        self.query_unit = unit.reshape(len(queries), width)
        self._query_row = {q: i for i, q in enumerate(self.queries)}
        self._extra = {}

    def query_vectors(self, queries: Any) -> tuple[np.ndarray, np.ndarray]:
        """(reduced, unit-length full) vectors of `queries`; unseen ones are encoded once each."""
        q = pd.Series(list(queries), dtype=object).fillna("").astype(str).to_numpy()
        new = sorted({x for x in q if x not in self._query_row and x not in self._extra})
        if new:
            assert self.query_pca is not None, "fit or load the model first"
            full = self.encoder.encode(new)
            for text, r, u in zip(new, self.query_pca.transform(full), _unit(full), strict=True):
                self._extra[text] = (r, u)
        red = np.zeros((len(q), self.dims))
        unit = np.zeros((len(q), self.item_unit.shape[1]), np.float32)
        for i, text in enumerate(q):
            row = self._query_row.get(text)
            if row is not None:
                red[i], unit[i] = self.query_vecs[row], self.query_unit[row]
            else:
                red[i], unit[i] = self._extra[text]
        return red, unit

    def _catalog_rows(self, item_ids: Any) -> np.ndarray:
        rows = pd.Series(np.arange(len(self.catalog)), index=self.catalog[S.ITEM_ID])
        ids = pd.Series(list(item_ids), dtype=object)
        return ids.astype(str).map(rows).where(ids.notna()).fillna(-1).to_numpy(np.int64)

    def _history(self, user: np.ndarray, ts: Any, events: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each (user, ts)'s recent items (catalog rows) and searches, strictly before ts."""
        item_rows = self._catalog_rows(events[S.ITEM_ID])
        ev_i = events[item_rows >= 0]
        at = F.recent_events(
            user,
            ts,
            ev_i[S.USER_ID].astype(str).to_numpy(),
            ev_i[S.TS],
            int(self.text["recent_items"]),
        )
        known = item_rows[item_rows >= 0]
        items = np.where(at >= 0, known[np.maximum(at, 0)], -1) if len(known) else at
        is_search = (events[S.EVENT_TYPE].astype(str) == S.SEARCH).to_numpy() & (
            (events[S.QUERY].fillna("").astype(str) != "").to_numpy()
            if S.QUERY in events
            else False
        )
        ev_q = events[is_search]
        q_at = F.recent_events(
            user,
            ts,
            ev_q[S.USER_ID].astype(str).to_numpy(),
            ev_q[S.TS],
            int(self.text["recent_queries"]),
        )
        q_red, q_unit = self.query_vectors(ev_q[S.QUERY]) if len(ev_q) else self.query_vectors([])
        return {"items": items, "q_at": q_at, "q_red": q_red, "q_unit": q_unit}

    def _text_block(
        self,
        frame: pd.DataFrame,
        item_rows: np.ndarray,
        items: np.ndarray,
        q_at: np.ndarray,
        q_red: np.ndarray,
        q_unit: np.ndarray,
    ) -> pd.DataFrame:
        """The text columns for offers of catalog rows `item_rows` (-1: unknown item), given each
        row's recent items (`items`, catalog rows, -1 = none) and recent queries (`q_at` into
        `q_red`/`q_unit`, -1 = none)."""
        n, d = len(frame), self.dims
        known = item_rows >= 0
        safe = np.maximum(item_rows, 0)
        it = np.where(known[:, None], self.item_vecs[safe], 0.0)
        target = np.where(known[:, None], self.item_unit[safe], 0.0).astype(np.float32)
        rec, n_rec = _window_mean(self.item_vecs, items, d)
        uq, n_q = _window_mean(q_red, q_at, d)
        rec_mean, rec_max = _window_sims(target, self.item_unit, items)
        q_mean, q_max = _window_sims(target, q_unit, q_at)
        block = np.hstack(
            [
                it,
                rec,
                uq,
                np.column_stack([rec_mean, rec_max, q_mean, q_max, n_rec, n_q]),
            ]
        )
        assert block.shape == (n, len(self.text_columns()))
        text = pd.DataFrame(block, columns=self.text_columns(), index=frame.index)
        return pd.concat([frame, text], axis=1)

    def _add_offer_columns(self, frame: pd.DataFrame, data: PricingData) -> pd.DataFrame:
        offers = data.offers
        h = self._history(offers[S.USER_ID].astype(str).to_numpy(), offers[S.TS], data.events)
        rows = self._catalog_rows(offers[S.ITEM_ID])
        return self._text_block(frame, rows, h["items"], h["q_at"], h["q_red"], h["q_unit"])

    def user_state(self, events: pd.DataFrame) -> Any:
        """(history sums, category counts, recent items, recent queries, their reduced vectors,
        their unit vectors): what `offer_frame` finds for an offer just after the latest event.

        Fixed shapes whatever the history (-1 and zero rows pad), so the scorer's `conforms` can
        check a cached state against the cold one.
        """
        sums, cats = super().user_state(events)
        k, q = int(self.text["recent_items"]), int(self.text["recent_queries"])
        items = np.full(k, -1, np.int64)
        q_at = np.full(q, -1, np.int64)
        q_red = np.zeros((q, self.dims))
        q_unit = np.zeros((q, self.item_unit.shape[1]), np.float32)
        if len(events):
            at = _ts(events[S.TS]).max() + pd.Timedelta(1, "ns")
            ev = events.assign(**{S.USER_ID: "_"})
            h = self._history(np.array(["_"]), pd.Series([at]), ev)
            items = h["items"][0].astype(np.int64)
            pos = h["q_at"][0]
            keep = pos >= 0
            q_red[keep] = h["q_red"][pos[keep]]
            q_unit[keep] = h["q_unit"][pos[keep]]
            q_at = np.where(keep, np.arange(q), -1)
        return sums, cats, items, q_at, q_red, q_unit

    def _add_serving_columns(
        self, frame: pd.DataFrame, state: Any, item_idx: np.ndarray
    ) -> pd.DataFrame:
        n = len(frame)
        items, q_at = np.asarray(state[2], np.int64), np.asarray(state[3], np.int64)
        q_red = np.asarray(state[4], np.float64).reshape(len(q_at), self.dims)
        q_unit = np.asarray(state[5], np.float32).reshape(len(q_at), self.item_unit.shape[1])
        # A state read from a shared store is data, not trusted indices: out of range = none.
        items = np.where((items >= 0) & (items < len(self.catalog)), items, -1)
        q_at = np.where((q_at >= 0) & (q_at < len(q_at)), q_at, -1)
        return self._text_block(
            frame,
            np.asarray(item_idx, np.int64),
            np.broadcast_to(items, (n, len(items))),
            np.broadcast_to(q_at, (n, len(q_at))),
            q_red,
            q_unit,
        )

    def save(self, path: Path) -> None:
        assert self.item_pca is not None and self.query_pca is not None, "fit first"
        super().save(path)
        self._save_text(path)

    def _save_text(self, path: Path) -> None:
        assert self.item_pca is not None and self.query_pca is not None, "fit first"
        np.savez(
            path / "text.npz",
            item_vecs=self.item_vecs,
            item_unit=self.item_unit,
            query_vecs=self.query_vecs,
            query_unit=self.query_unit,
            item_mean=self.item_pca.mean,
            item_components=self.item_pca.components,
            query_mean=self.query_pca.mean,
            query_components=self.query_pca.components,
        )
        (path / "text.json").write_text(json.dumps({"queries": self.queries}))

    def _load_extra(self, path: Path) -> None:
        z = np.load(path / "text.npz")
        self.item_vecs, self.item_unit = z["item_vecs"], z["item_unit"]
        self.item_pca = _Pca(z["item_mean"], z["item_components"])
        self.query_pca = _Pca(z["query_mean"], z["query_components"])
        queries = json.loads((path / "text.json").read_text())["queries"]
        self._set_queries(queries, z["query_vecs"], z["query_unit"])


def _window_mean(table: np.ndarray, idx: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `table` rows over each row's window (`idx`, -1 = none) and the window's size."""
    n = len(idx)
    sums = np.zeros((n, dims))
    for c in range(idx.shape[1] if idx.ndim == 2 else 0):
        col = idx[:, c]
        has = col >= 0
        sums[has] += table[col[has]]
    count = (idx >= 0).sum(1).astype(float) if idx.ndim == 2 else np.zeros(n)
    return sums / np.maximum(count, 1.0)[:, None], count


class TextColumns(LightGBMTextDemand):
    """`LightGBMTextDemand`'s text block without its trees: the hybrid's wide text columns when
    its tree reads no text, or when there is no tree. Fitted on training data only, as there."""

    name = "text_columns"

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        if train.features is None:
            raise ValueError("text columns need the offer feature table (PricingData.features)")
        train_events = self.fit_context(train, valid)
        return self._fit_extra(train, train_events)

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        raise TypeError("text columns are a network input, not a demand model")

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config(), "seed": self.seed, **self._layout()}
        (path / "text_columns.json").write_text(json.dumps(meta))
        self.catalog.to_parquet(path / "catalog.parquet", index=False)
        self._save_text(path)

    @classmethod
    def load(cls, path: Path) -> TextColumns:
        meta = json.loads((path / "text_columns.json").read_text())
        m = cls(dict(meta["config"]), int(meta["seed"]))
        m._set_layout(meta, [])
        m.set_catalog(pd.read_parquet(path / "catalog.parquet"))
        m._load_extra(path)
        return m


TREES: tuple[str, ...] = ("none", "lightgbm", "lightgbm_text")
# Where the hybrid reads its tree, as price / list price: never at the quoted price, so the
# network's demand stays monotone in price by construction (see `HybridWide`).
TREE_PRICES: tuple[float, float, float] = (0.8, 1.0, 1.25)
TREE_COLUMNS: tuple[str, ...] = ("tree_logit", "tree_slope")
HYBRID_FILE = "hybrid.npz"
_P_CLIP = 1e-6  # tree probabilities are clipped to [1e-6, 1 - 1e-6] before the logit


def user_folds(users: Any, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds - 1) of each row: users, sorted then shuffled (seeded), are dealt
    round-robin, so all rows of a user share a fold and folds hold about as many users each."""
    names, codes = np.unique(np.asarray(users).astype(str), return_inverse=True)
    if len(names) < 2:
        raise ValueError("out-of-fold trees need the offers of at least two users")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_user = np.empty(len(names), np.int64)
    fold_of_user[order] = np.arange(len(names)) % int(folds)
    return fold_of_user[codes.reshape(-1)]


def _rows(data: PricingData, mask: np.ndarray, events: pd.DataFrame | None = None) -> PricingData:
    """The offers of `data` where `mask` holds (features aligned), with `events` if given."""
    idx = np.flatnonzero(mask)
    feats = None if data.features is None else data.features.iloc[idx].reset_index(drop=True)
    return PricingData(
        offers=data.offers.iloc[idx].reset_index(drop=True),
        items=data.items,
        events=data.events if events is None else events,
        features=feats,
        users=data.users,
    )


def tree_columns(prob: np.ndarray) -> np.ndarray:
    """(n, 2) hybrid tree columns from a tree's P(purchase) at `TREE_PRICES` x list (n, 3): its
    logit at the list price, and its price slope -d logit / d log price between the outer two
    (>= 0: the trees are monotone-decreasing in price)."""
    p = np.clip(np.asarray(prob, float), _P_CLIP, 1 - _P_CLIP)
    z = np.log(p) - np.log1p(-p)
    slope = (z[:, 0] - z[:, 2]) / math.log(TREE_PRICES[2] / TREE_PRICES[0])
    return np.column_stack([z[:, 1], slope])


class HybridWide(WideFeatures):
    """Wide features plus the hybrid's columns: a tree's out-of-fold prediction, and text.

    GBDT-feature stacking (GBDT + LR, DeepGBM): the price head also reads a LightGBM's logit at
    the item's list price (`tree_logit`) and its price slope between 0.8x and 1.25x list
    (`tree_slope`), so the network starts from the tree and adds what the tree cannot see (the
    behaviour sequence, the text towers, the cold-start fallback). Both are read at reference
    prices, never at the quoted one: the quoted price still enters only through the head's
    monotone term `- b log(p / list)`, b >= 0, so demand cannot rise with price whatever the tree
    says, and a quote keeps the head's (a, b) form (calibration, the numpy head, `offer_params`).

    Out of fold: on the training split, each row's tree columns come from a tree fitted on the
    other folds only: `folds` folds of users (`user_folds`; a user's rows, and with them their
    repeated baskets and near-identical history features, never straddle a tree's training and
    scoring sets), each fold's tree fitted on the other users' offers and events. Validation,
    test and serving rows read one tree fitted on the whole training split. Every tree is the
    configured class with `params` over `LGB_DEFAULTS` (and `TEXT_DEFAULTS`), untuned, early-stopped
    on the validation split as the baselines are.

    Text (`text`): `LightGBMTextDemand`'s block of PCA-reduced MiniLM vectors (the item, the
    user's recent items and searches, their similarities), from the tree itself when it is the
    text tree, else from a `TextColumns` fitted alongside. The text reads no label: no folds.

    The extra columns come first and the base wide columns after, so the base's user columns stay
    last (`n_user`, the user_category head). Standardized on the training rows' (out-of-fold)
    values, like the base columns. The serving state is the text tree's when one is used (the
    history sums, recent items and searches), else the history sums.

    Args:
        tree: "none", "lightgbm" or "lightgbm_text".
        text: add the text block.
        folds: out-of-fold folds (>= 2).
        params: LightGBM parameters over `LGB_DEFAULTS`, plus `TEXT_DEFAULTS`' keys; no `tune`.
        seed: the trees' seed and the folds'.
        encoder: a `mlops.text.TextEncoder` to share (the network's), or None for the trees' own.
    """

    name = "hybrid_wide"

    def __init__(
        self,
        tree: str = "none",
        text: bool = False,
        folds: int = 5,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        encoder: Any = None,
    ) -> None:
        super().__init__()
        if tree not in TREES:
            raise ValueError(f"unknown hybrid tree {tree!r}: one of {', '.join(TREES)}")
        if tree == "none" and not text:
            raise ValueError("a hybrid adds a tree, text or both: use WideFeatures for neither")
        if int(folds) < 2:
            raise ValueError(f"out-of-fold trees need at least 2 folds, got {folds}")
        params = dict(params or {})
        if "tune" in params:
            raise ValueError("the hybrid's trees run their parameters untuned: drop `tune`")
        self.tree_kind, self.text, self.folds = tree, bool(text), int(folds)
        self.params, self.seed, self.encoder = params, int(seed), encoder
        self.tree: LightGBMDemand | None = None
        self.text_source: LightGBMTextDemand | None = None
        self.extra_mean = np.zeros(0)
        self.extra_std = np.ones(0)
        self.row_folds: np.ndarray | None = None  # each training row's fold (after `fit`)
        self._oof: tuple[pd.DataFrame, np.ndarray] | None = None
        self._text_names = LightGBMTextDemand(self.params).text_columns() if self.text else []

    # --- layout ----------------------------------------------------------------------------------
    @property
    def extra_columns(self) -> list[str]:
        return [*(TREE_COLUMNS if self.tree_kind != "none" else ()), *self._text_names]

    @property
    def dim(self) -> int:
        return len(self.extra_columns) + len(self.numeric)

    @property
    def _state_model(self) -> LightGBMTextDemand | None:
        """The model whose `user_state` serves: one reading text needs recent items and queries."""
        if self.text_source is not None:
            return self.text_source
        return self.tree if isinstance(self.tree, LightGBMTextDemand) else None

    @property
    def state_is_history_sums(self) -> bool:
        return self._state_model is None

    def _new_tree(self) -> LightGBMDemand:
        if self.tree_kind == "lightgbm_text":
            return self._shared(LightGBMTextDemand(self.params, self.seed))
        plain = {k: v for k, v in self.params.items() if k not in TEXT_DEFAULTS}
        return LightGBMDemand(plain, self.seed)

    def _shared(self, model: Any) -> Any:
        """`model` using the shared text encoder when it is the same kind (one encoder, one cache)."""
        enc = self.encoder
        if enc is not None and getattr(enc, "kind", None) == model.text["text_encoder"]:
            model._encoder = enc
        return model

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        info = super().fit(train, valid)
        t0 = time.perf_counter()
        self.tree = None
        self.text_source = None
        if self.encoder is None and (self.text or self.tree_kind == "lightgbm_text"):
            from mlops.text import TextEncoder

            # one encoder, so one in-memory cache, for the whole-split tree and every fold's
            text = {**TEXT_DEFAULTS, **self.params}
            self.encoder = TextEncoder(text["text_encoder"], text["text_cache_dir"])
        if self.tree_kind != "none":
            self.tree = self._new_tree()
            self.tree.fit(train, valid)
        if self.text:
            if isinstance(self.tree, LightGBMTextDemand):
                self.text_source = self.tree
            else:
                source = self._shared(TextColumns(self.params, self.seed))
                source.fit(train, valid)
                self.text_source = source
        raw = self._out_of_fold(train, valid)
        mean = np.nanmean(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
        self.extra_mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.nanstd(raw, axis=0) if len(raw) else np.ones(raw.shape[1])
        self.extra_std = np.where(np.isfinite(std), std, 0.0) + 1e-6
        self._oof = (train.offers, raw)
        self._item_table = None
        info["n_extra"] = float(len(self.extra_columns))
        info["hybrid_seconds"] = time.perf_counter() - t0
        if self.tree_kind != "none":
            from pricing.metrics import roc_auc

            info["tree_oof_auc"] = roc_auc(train.offers[S.PURCHASED].to_numpy(float), raw[:, 0])
        return info

    def _out_of_fold(self, train: PricingData, valid: PricingData | None) -> np.ndarray:
        """The extra columns of the training rows, their tree columns out of fold (raw)."""
        out = np.full((len(train), len(self.extra_columns)), np.nan)
        j = 0
        if self.tree_kind != "none":
            users = train.offers[S.USER_ID].astype(str).to_numpy()
            fold = user_folds(users, self.folds, self.seed)
            self.row_folds = fold.astype(np.int16)
            event_users = train.events[S.USER_ID].astype(str).to_numpy()
            for k in range(self.folds):
                held = fold == k
                if not held.any():
                    continue  # fewer users than folds
                fitted_users = np.unique(users[~held])
                part = _rows(train, ~held, train.events[np.isin(event_users, fitted_users)])
                tree = self._new_tree()
                tree.fit(part, valid)
                out[held, :2] = self._tree_block(tree, _rows(train, held))
            j = len(TREE_COLUMNS)
        if self.text:
            assert self.text_source is not None
            out[:, j:] = self._text_block(train)
            self.text_source._frames = None  # the training frame is not needed again
        return out

    @staticmethod
    def _tree_block(tree: LightGBMDemand, data: PricingData) -> np.ndarray:
        grid = data.list_price()[:, None] * np.asarray(TREE_PRICES)[None, :]
        return tree_columns(tree.predict_grid(data, grid))

    def _text_block(self, data: PricingData) -> np.ndarray:
        assert self.text_source is not None
        return self.text_source.offer_frame(data)[self._text_names].to_numpy(float)

    # --- rows ------------------------------------------------------------------------------------
    def _standard_extra(self, x: np.ndarray) -> np.ndarray:
        return _clipped((x - self.extra_mean) / self.extra_std).astype(np.float32)

    def _extras(self, data: PricingData) -> np.ndarray:
        """The raw extra columns of `data`'s offers from the trees fitted on the whole split."""
        parts = []
        if self.tree is not None:
            parts.append(self._tree_block(self.tree, data))
        if self.text:
            parts.append(self._text_block(data))
        return np.hstack(parts) if parts else np.zeros((len(data), 0))

    def matrix(self, data: PricingData) -> np.ndarray:
        """(n_offers, dim): the extra columns (the tree fitted on the whole training split), then
        the base wide columns. `training_matrix` gives the training rows' out-of-fold version."""
        base = super().matrix(data)
        return np.hstack([self._standard_extra(self._extras(data)), base])

    def training_matrix(self, data: PricingData) -> np.ndarray:
        """The training split's rows with each row's tree columns from the fold's tree that never
        saw the row's user; only for the split `fit` saw, once (then the rows are released)."""
        if self._oof is None or self._oof[0] is not data.offers:
            raise ValueError(
                "out-of-fold tree columns exist only for the split `fit` was given, once"
            )
        raw, self._oof = self._oof[1], None
        return np.hstack([self._standard_extra(raw), super().matrix(data)])

    def _serving_extras(self, state: Any, rows: np.ndarray) -> np.ndarray:
        parts = []
        frame = None
        if self.tree is not None:
            frame = self.tree.serving_frame(state, rows)
            lp = self.tree.catalog[S.LIST_PRICE].to_numpy(float)[rows]
            grid = lp[:, None] * np.asarray(TREE_PRICES)[None, :]
            parts.append(tree_columns(self.tree._predict_over_grid(frame, lp, grid)))
        if self.text:
            assert self.text_source is not None
            if frame is None or self.text_source is not self.tree:
                frame = self.text_source.serving_frame(state, rows)
            parts.append(frame[self._text_names].to_numpy(float))
        return np.hstack(parts) if parts else np.zeros((len(rows), 0))

    def serving_matrix(self, state: Any, item_idx: np.ndarray) -> np.ndarray:
        """The quote-time rows: the trees on the user's state for the candidates (the tree at
        the reference prices, never at the quoted ones), then the base wide columns."""
        rows = np.asarray(item_idx, np.int64)
        base = super().serving_matrix(state, rows)
        return np.hstack([self._standard_extra(self._serving_extras(state, rows)), base])

    def serving_matrix_frame(self, state: Any, item_idx: np.ndarray) -> np.ndarray:
        rows = np.asarray(item_idx, np.int64)
        base = super().serving_matrix_frame(state, rows)
        return np.hstack([self._standard_extra(self._serving_extras(state, rows)), base])

    def user_state(self, events: pd.DataFrame) -> Any:
        """The text tree's state (history sums, category counts, recent items and searches)
        when a text model serves, else the history sums and category counts."""
        model = self._state_model
        return super().user_state(events) if model is None else model.user_state(events)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The base wide files, `hybrid.npz` (options and standardization), the whole-split tree
        in `tree/` and a separate text model in `wide_text/`: `save_model`'s manifest hashes them
        all, so `load_model` refuses a changed tree before LightGBM parses it."""
        super().save(path)
        meta = {
            "tree": self.tree_kind,
            "text": self.text,
            "folds": self.folds,
            "params": self.params,
            "seed": self.seed,
            "columns": self.extra_columns,
        }
        np.savez(
            path / HYBRID_FILE,
            mean=self.extra_mean,
            std=self.extra_std,
            meta=np.array(json.dumps(meta)),
        )
        if self.tree is not None:
            self.tree.save(path / "tree")
        if self.text_source is not None and self.text_source is not self.tree:
            self.text_source.save(path / "wide_text")

    @classmethod
    def load(cls, path: Path) -> HybridWide:
        z = np.load(path / HYBRID_FILE)
        meta = json.loads(str(z["meta"]))
        m = cls(meta["tree"], bool(meta["text"]), int(meta["folds"]), meta["params"], meta["seed"])
        m._load_base(path)
        m.extra_mean, m.extra_std = z["mean"], z["std"]
        if m.tree_kind == "lightgbm_text":
            m.tree = LightGBMTextDemand.load(path / "tree")
        elif m.tree_kind == "lightgbm":
            m.tree = LightGBMDemand.load(path / "tree")
        if m.text:
            tree = m.tree
            m.text_source = (
                tree
                if isinstance(tree, LightGBMTextDemand)
                else TextColumns.load(path / "wide_text")
            )
        if list(meta["columns"]) != m.extra_columns:
            raise ValueError(f"{path}: hybrid columns {meta['columns']} do not match the options")
        return m


class UniformDemand(DemandModel):
    """Item-level demand learned from the logs, the same for every shopper: the non-personalized
    policy a shop runs today (one price per item), as a baseline.

        logit P(i, p) = a_i + b_i * log(p / list_price_i),  b_i <= 0 (monotone in price)

    Offers are pooled into (item, price ratio) cells, so fitting costs the catalog's size, not
    the log's. Each category gets its own (a, b) first; each item's (a_i, b_i) is then fitted with
    a Gaussian prior centred on its category's, of strength `shrinkage` (pseudo-offers; chosen on
    the validation split's log loss among `SHRINKAGE_GRID` unless fixed). An item never offered in
    training takes its category's curve; an unknown category, the pooled curve.
    """

    name = "uniform"
    SHRINKAGE_GRID: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0)
    _NEWTON_STEPS = 25

    def __init__(self, shrinkage: float | None = None, seed: int = 0) -> None:
        self.shrinkage = shrinkage
        self.seed = seed
        self.catalog = pd.DataFrame()
        self.params = np.zeros((0, 2))  # (a, b) per catalog row

    # --- fitting ---------------------------------------------------------------------------------
    @staticmethod
    def _cells(data: PricingData, item_pos: pd.Index) -> pd.DataFrame:
        offers = data.offers
        ratio = np.round(offers[S.PRICE].to_numpy(float) / data.list_price(), 3)
        frame = pd.DataFrame(
            {
                "row": item_pos.get_indexer(pd.Index(offers[S.ITEM_ID].astype(str))),
                "x": np.log(ratio),
                "y": offers[S.PURCHASED].to_numpy(float),
            }
        )
        frame = frame[frame["row"] >= 0]
        return frame.groupby(["row", "x"], as_index=False).agg(n=("y", "size"), y=("y", "sum"))

    @classmethod
    def _fit_groups(
        cls, group: np.ndarray, x: np.ndarray, n: np.ndarray, y: np.ndarray,
        prior: np.ndarray, strength: float, n_groups: int,
    ) -> np.ndarray:  # fmt: skip
        """(a, b) per group by Newton steps on binomial cells, with a Gaussian prior at `prior`."""
        w = prior.copy()
        for _ in range(cls._NEWTON_STEPS):
            eta = w[group, 0] + w[group, 1] * x
            p = sigmoid(eta)
            r, h = n * p - y, n * p * (1.0 - p)
            g0 = np.bincount(group, r, n_groups) + strength * (w[:, 0] - prior[:, 0])
            g1 = np.bincount(group, r * x, n_groups) + strength * (w[:, 1] - prior[:, 1])
            h00 = np.bincount(group, h, n_groups) + strength + 1e-9
            h01 = np.bincount(group, h * x, n_groups)
            h11 = np.bincount(group, h * x * x, n_groups) + strength + 1e-9
            det = h00 * h11 - h01 * h01
            w[:, 0] -= (h11 * g0 - h01 * g1) / det
            w[:, 1] -= (h00 * g1 - h01 * g0) / det
        w[:, 1] = np.minimum(w[:, 1], 0.0)
        return w

    def _fit_params(self, cells: pd.DataFrame, category: np.ndarray, strength: float) -> np.ndarray:
        row, x = cells["row"].to_numpy(), cells["x"].to_numpy()
        n, y = cells["n"].to_numpy(float), cells["y"].to_numpy(float)
        rate = min(max(y.sum() / max(n.sum(), 1.0), 1e-4), 1 - 1e-4)
        pooled = self._fit_groups(
            np.zeros(len(row), dtype=np.int64), x, n, y,
            np.array([[np.log(rate / (1 - rate)), -1.0]]), 1e-3, 1,
        )  # fmt: skip
        n_cat = int(category.max()) + 1 if len(category) else 0
        by_cat = self._fit_groups(
            category[row], x, n, y, np.repeat(pooled, n_cat, axis=0), 1.0, n_cat
        )
        prior = np.where((category >= 0)[:, None], by_cat[np.maximum(category, 0)], pooled)
        return self._fit_groups(row, x, n, y, prior, strength, len(category))

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        self.catalog = train.items.reset_index(drop=True).copy()
        self.catalog[S.ITEM_ID] = self.catalog[S.ITEM_ID].astype(str)
        pos = pd.Index(self.catalog[S.ITEM_ID])
        category = (
            pd.factorize(self.catalog[S.CATEGORY].astype(str))[0]
            if S.CATEGORY in self.catalog
            else np.zeros(len(self.catalog), dtype=np.int64)
        )
        cells = self._cells(train, pos)
        grid = [self.shrinkage] if self.shrinkage is not None else list(self.SHRINKAGE_GRID)
        scores: dict[float, float] = {}
        if len(grid) > 1 and valid is not None and len(valid):
            for strength in grid:
                self.params = self._fit_params(cells, category, strength)
                prob = np.clip(self.predict(valid), 1e-7, 1 - 1e-7)
                yv = valid.offers[S.PURCHASED].to_numpy(float)
                scores[strength] = float(-np.mean(yv * np.log(prob) + (1 - yv) * np.log(1 - prob)))
            chosen = min(scores, key=lambda k: scores[k])
        else:
            # fixed, else (no validation split to choose on) the grid's middle
            chosen = grid[0] if len(grid) == 1 else self.SHRINKAGE_GRID[2]
        self.shrinkage = chosen
        self.params = self._fit_params(cells, category, chosen)
        return {
            "shrinkage": float(chosen),
            "items_fitted": float(cells["row"].nunique()),
            "cells": float(len(cells)),
            **({"valid_log_loss": scores[chosen]} if scores else {}),
        }

    # --- prediction ------------------------------------------------------------------------------
    def _curve(self, rows: np.ndarray, lp: np.ndarray, grid: np.ndarray) -> np.ndarray:
        a, b = self.params[rows, 0][:, None], self.params[rows, 1][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            eta = a + b * np.log(np.asarray(grid, float) / lp[:, None])
        return sigmoid(eta)

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        rows = pd.Index(self.catalog[S.ITEM_ID]).get_indexer(
            pd.Index(data.offers[S.ITEM_ID].astype(str))
        )
        if (rows < 0).any():
            missing = sorted(set(data.offers[S.ITEM_ID].astype(str)[rows < 0]))[:5]
            raise KeyError(f"items not in the uniform model's catalog: {missing}")
        out = self._curve(rows, data.list_price(), grid)
        return np.where(np.isnan(grid), np.nan, out)

    def user_state(self, events: pd.DataFrame) -> Any:
        return None  # nobody is priced by who they are

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        rows = np.asarray(item_idx)
        return self._curve(rows, self.catalog[S.LIST_PRICE].to_numpy(float)[rows], grid)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "uniform.npz", params=self.params, shrinkage=float(self.shrinkage or 0.0))
        self.catalog.to_parquet(path / "catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> UniformDemand:
        z = np.load(path / "uniform.npz")
        m = cls(shrinkage=float(z["shrinkage"]))
        m.params = z["params"]
        m.catalog = pd.read_parquet(path / "catalog.parquet")
        m.catalog[S.ITEM_ID] = m.catalog[S.ITEM_ID].astype(str)
        return m


# Every demand model by name, as "module:Class". Importing is lazy (BERT pulls in torch) and goes
# by this table, so this module never imports lightning_modules, which imports the interface.
CLASS_PATHS: dict[str, str] = {
    "logistic": "mlops.models:LogisticDemand",
    "uniform": "mlops.models:UniformDemand",
    "lightgbm": "mlops.models:LightGBMDemand",
    "lightgbm_text": "mlops.models:LightGBMTextDemand",
    "bert": "lightning_modules.demand:BertDemand",
}
MODELS: tuple[str, ...] = tuple(CLASS_PATHS)


def class_path(cls: type[DemandModel]) -> str:
    """`module:Class` of a model class: what a manifest records."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str) -> type[DemandModel]:
    """The `DemandModel` subclass at `module:Class`, for a path in `CLASS_PATHS` only.

    A manifest is data: it may only choose among the project's own classes, never make the loader
    import an arbitrary module.
    """
    if path not in CLASS_PATHS.values():
        raise ValueError(f"unknown model class {path!r}: not one of {sorted(CLASS_PATHS.values())}")
    module, _, qualname = path.partition(":")
    cls = getattr(importlib.import_module(module), qualname)
    if not (isinstance(cls, type) and issubclass(cls, DemandModel)):
        raise ValueError(f"{path} is not a DemandModel")
    return cls


def model_class(name: str) -> type[DemandModel]:
    """The demand-model class registered under `name`."""
    if name not in CLASS_PATHS:
        raise ValueError(f"unknown model {name!r}: choose {', '.join(MODELS)}")
    return import_class(CLASS_PATHS[name])


MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # 1 (implicit): {"model": name}; 2: + sha256 and size of every file; 3: + class
ALLOW_UNVERIFIED_ENV = "PRICING_ALLOW_UNVERIFIED_MODELS"
_CHUNK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """A saved model's files do not match its manifest (or it has none to check against).

    Raised by `load_model` before any parser (LightGBM, torch, pyarrow) opens a file: native
    parsers may crash the whole process on a truncated file instead of raising.

    Attributes:
        path: the model directory.
        file: the file that failed (relative to `path`), or the manifest itself.
        reason: what is wrong with it, in words.
    """

    def __init__(self, path: Path, file: str, reason: str) -> None:
        self.path = Path(path)
        self.file = file
        self.reason = reason
        super().__init__(f"model file {self.path / file} failed its integrity check: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Prefect, DDP)
        return (type(self), (self.path, self.file, self.reason))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `path` (recursive, POSIX relative names), manifest excluded."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(path).as_posix()
        if rel == MANIFEST or rel.startswith(f".{MANIFEST}."):
            continue
        out[rel] = {"sha256": _sha256(f), "size": f.stat().st_size}
    return out


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temp file next to `path`, fsync it, rename it over `path`, fsync the folder.

    A reader sees the old manifest, the new one, or none: never a torn one.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(model: DemandModel, path: Path) -> None:
    """Save a model and, last, its manifest: its name and class plus the sha256 and size of every file.

    The manifest is written after the model's files and atomically, so a directory whose save was
    interrupted has no manifest (or a stale one that no longer matches) and `load_model` refuses it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for new files
    model.save(path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": model.name,
        "class": class_path(type(model)),
        "files": file_digests(path),
    }
    _write_atomically(path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _allow_unverified(allow: bool | None) -> bool:
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _safe_member(path: Path, rel: str) -> Path:
    """`path / rel`, refusing names that would step outside the model directory."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise ModelIntegrityError(path, MANIFEST, f"lists an unsafe file name {rel!r}")
    return path / p


def verify_model_dir(path: Path, *, allow_unverified: bool | None = None) -> dict[str, Any]:
    """Check every file a model's manifest lists (size, then sha256); returns the manifest.

    Only `json` reads anything before the checks pass. Files not in the manifest are ignored (no
    loader reads them). A manifest without hashes (written before they were recorded) is refused
    unless `allow_unverified` is true, or, when it is None, the environment variable
    PRICING_ALLOW_UNVERIFIED_MODELS is 1/true: re-save or re-register such models instead.

    Raises:
        ModelIntegrityError: naming the first file that is missing, truncated or altered, or the
            manifest when it is missing, unreadable or has no hashes (and that is not allowed).
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ModelIntegrityError(path, MANIFEST, "missing (an interrupted save, or not a model)")
    try:
        manifest = json.loads(mpath.read_text())
        name = manifest["model"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(path, MANIFEST, f"unreadable: {exc}") from exc
    if not isinstance(name, str):
        raise ModelIntegrityError(path, MANIFEST, f"names no model class: {name!r}")
    files = manifest.get("files")
    if files is None:
        if _allow_unverified(allow_unverified):
            log.warning(
                "loading %s without an integrity check: its manifest has no file hashes (%s set)",
                path,
                ALLOW_UNVERIFIED_ENV,
            )
            return dict(manifest)
        raise ModelIntegrityError(
            path,
            MANIFEST,
            "has no file hashes (saved before they were recorded); re-save the model, or set "
            f"{ALLOW_UNVERIFIED_ENV}=1 to load it unchecked",
        )
    if not isinstance(files, dict) or not files:
        raise ModelIntegrityError(path, MANIFEST, "lists no files")
    for rel, want in sorted(files.items()):
        f = _safe_member(path, rel)
        try:
            size_want, sha_want = int(want["size"]), str(want["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError(path, MANIFEST, f"bad entry for {rel!r}: {want!r}") from exc
        if not f.is_file():
            raise ModelIntegrityError(path, rel, "missing")
        size = f.stat().st_size
        if size != size_want:
            raise ModelIntegrityError(
                path, rel, f"size {size} bytes, the manifest says {size_want} (truncated?)"
            )
        sha = _sha256(f)
        if sha != sha_want:
            raise ModelIntegrityError(
                path, rel, f"sha256 {sha[:12]}..., the manifest says {sha_want[:12]}..."
            )
    return dict(manifest)


def load_model(path: Path, *, allow_unverified: bool | None = None) -> DemandModel:
    """Load what `save_model` wrote, after `verify_model_dir` checked every file against its hash.

    The per-class `load` methods trust their directory; this is the entry point that checks it.

    Raises:
        ModelIntegrityError: a file is missing, truncated or altered, or the manifest cannot vouch
            for them (see `verify_model_dir` for manifests saved without hashes).
    """
    path = Path(path)
    manifest = verify_model_dir(path, allow_unverified=allow_unverified)
    try:
        # Manifests before format 3 name only the model; its class comes from the table.
        cls = import_class(manifest.get("class") or CLASS_PATHS.get(manifest["model"], ""))
    except ValueError as exc:
        raise ModelIntegrityError(path, MANIFEST, str(exc)) from exc
    return cls.load(path)
