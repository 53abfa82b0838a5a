"""Demand models behind one interface: what training, evaluation and the scorer call.

A demand model answers P(purchase | user history, item, price). Evaluation asks it for a grid of
prices per offer (the optimizer then picks one); the scorer asks it per quote with the user's
online state. Baselines (pooled logistic, LightGBM) live here; the BERT model plugs in from
`lightning_modules`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pricing import features as F
from pricing import schema as S
from pricing.logistic import fit_logistic, predict_logistic


@dataclass
class PricingData:
    """One split as models see it: its offers, their hand-built features, and the shared tables."""

    offers: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    features: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offers)

    def list_price(self) -> np.ndarray:
        lp = self.items.set_index(S.ITEM_ID)[S.LIST_PRICE].astype(float)
        return lp.reindex(self.offers[S.ITEM_ID].astype(str)).to_numpy()

    def unit_cost(self) -> np.ndarray:
        uc = self.items.set_index(S.ITEM_ID)[S.UNIT_COST].astype(float)
        return uc.reindex(self.offers[S.ITEM_ID].astype(str)).to_numpy()


class DemandModel(ABC):
    """P(purchase) as a function of price, for offline evaluation and online serving."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        """Train; return training diagnostics worth logging."""

    @abstractmethod
    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        """Purchase probability for each offer of `data` at each price of `grid` (n, G)."""

    def predict(self, data: PricingData) -> np.ndarray:
        """Purchase probability at the offered price."""
        price = data.offers[S.PRICE].to_numpy(float)[:, None]
        return self.predict_grid(data, price)[:, 0]

    # --- serving -------------------------------------------------------------------------------
    @abstractmethod
    def user_state(self, events: pd.DataFrame) -> Any:
        """Summarize one user's recent events (contract columns) into what `demand` needs.

        Computed when the user has new events, cached by the scorer, never per quote.
        """

    @abstractmethod
    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Purchase probability (n, G) for catalog rows `item_idx` at prices `grid`, given a user state."""

    def warm(self) -> None:  # noqa: B027 - optional hook
        """Precompute whatever serving needs (item vectors); called before a model takes traffic."""

    # --- persistence ---------------------------------------------------------------------------
    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> DemandModel: ...


class FeatureModel(DemandModel):
    """A model over `pricing.features.FEATURES` (+ category): the shared half of both baselines."""

    catalog: pd.DataFrame

    def set_catalog(self, items: pd.DataFrame) -> None:
        self.catalog = items.reset_index(drop=True).copy()
        self.catalog[S.ITEM_ID] = self.catalog[S.ITEM_ID].astype(str)

    def _matrix(self, feats: pd.DataFrame) -> np.ndarray:
        return feats[list(F.FEATURES)].to_numpy(float)

    @abstractmethod
    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray: ...

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        feats = data.features
        assert feats is not None, "feature models need PricingData.features"
        lp = data.list_price()
        n, g = grid.shape
        rep = feats.loc[feats.index.repeat(g)].reset_index(drop=True)
        rep["log_price_ratio"] = F.price_features(grid.reshape(-1), np.repeat(lp, g))
        out = self._predict_matrix(rep).reshape(n, g)
        return np.where(np.isnan(grid), np.nan, out)

    def user_state(self, events: pd.DataFrame) -> Any:
        return F.user_history_state(events, self.catalog)

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        sums, cat_counts = state
        rows = self.catalog.iloc[item_idx]
        n, g = grid.shape
        user = F.serving_features(sums, cat_counts, rows)
        item = F.item_features(rows)
        base = pd.concat([user.reset_index(drop=True), item.reset_index(drop=True)], axis=1)
        base[S.CATEGORY] = rows[S.CATEGORY].astype(str).to_numpy()
        rep = base.loc[base.index.repeat(g)].reset_index(drop=True)
        lp = rows[S.LIST_PRICE].to_numpy(float)
        rep["log_price_ratio"] = F.price_features(grid.reshape(-1), np.repeat(lp, g))
        return self._predict_matrix(rep).reshape(n, g)


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

    def _design(self, feats: pd.DataFrame) -> np.ndarray:
        x = self._matrix(feats)
        lpr = feats["log_price_ratio"].to_numpy(float)[:, None]
        user = feats[list(F.USER_FEATURES)].to_numpy(float)
        return np.hstack([x, lpr * user])

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        assert train.features is not None
        self.set_catalog(train.items)
        x = self._design(train.features)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-9
        self.w = fit_logistic(
            (x - self.mean) / self.std, train.offers[S.PURCHASED].to_numpy(float), self.l2
        )
        return {"n_weights": float(len(self.w))}

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        assert self.w is not None and self.mean is not None and self.std is not None
        return predict_logistic(self.w, (self._design(feats) - self.mean) / self.std)

    def save(self, path: Path) -> None:
        assert self.w is not None and self.mean is not None and self.std is not None, "fit first"
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "logistic.npz", w=self.w, mean=self.mean, std=self.std, l2=self.l2)
        self.catalog.to_parquet(path / "catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> LogisticDemand:
        z = np.load(path / "logistic.npz")
        m = cls(l2=float(z["l2"]))
        m.w, m.mean, m.std = z["w"], z["mean"], z["std"]
        m.set_catalog(pd.read_parquet(path / "catalog.parquet"))
        return m


class LightGBMDemand(FeatureModel):
    """Gradient-boosted trees on the hand-built features, monotone-decreasing in price."""

    name = "lightgbm"

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.params = {
            "objective": "binary",
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_child_samples": 50,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.9,
            "bagging_freq": 1,
            "n_estimators": 400,
            "early_stopping_rounds": 30,
            "verbose": -1,
            "num_threads": 2,
            **(params or {}),
        }
        self.seed = seed
        self.booster: Any = None
        self.categories: list[str] = []

    def _frame(self, feats: pd.DataFrame) -> pd.DataFrame:
        x = feats[list(F.FEATURES)].astype(float).copy()
        x[S.CATEGORY] = pd.Categorical(feats[S.CATEGORY].astype(str), categories=self.categories)
        return x

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        import lightgbm as lgb

        assert train.features is not None
        self.set_catalog(train.items)
        self.categories = sorted(self.catalog[S.CATEGORY].astype(str).unique().tolist())
        params = dict(self.params)
        n_estimators = int(params.pop("n_estimators"))
        early = int(params.pop("early_stopping_rounds"))
        # Monotone constraint: predicted demand can never rise with price.
        params["monotone_constraints"] = [-1] + [0] * (len(F.FEATURES) - 1) + [0]
        params["seed"] = self.seed
        dtrain = lgb.Dataset(self._frame(train.features), train.offers[S.PURCHASED].to_numpy(float))
        valid_sets: list[Any] = []
        callbacks: list[Any] = []
        if valid is not None and valid.features is not None and len(valid):
            dvalid = lgb.Dataset(
                self._frame(valid.features),
                valid.offers[S.PURCHASED].to_numpy(float),
                reference=dtrain,
            )
            valid_sets = [dvalid]
            callbacks = [lgb.early_stopping(early, verbose=False)]
        self.booster = lgb.train(
            params, dtrain, n_estimators, valid_sets=valid_sets, callbacks=callbacks
        )
        return {"best_iteration": float(self.booster.best_iteration or n_estimators)}

    def _predict_matrix(self, feats: pd.DataFrame) -> np.ndarray:
        it = self.booster.best_iteration or None
        return np.asarray(self.booster.predict(self._frame(feats), num_iteration=it), float)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "lightgbm.txt"))
        (path / "lightgbm.json").write_text(
            json.dumps({"params": self.params, "seed": self.seed, "categories": self.categories})
        )
        self.catalog.to_parquet(path / "catalog.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> LightGBMDemand:
        import lightgbm as lgb

        meta = json.loads((path / "lightgbm.json").read_text())
        m = cls(meta["params"], meta["seed"])
        m.categories = meta["categories"]
        m.booster = lgb.Booster(model_file=str(path / "lightgbm.txt"))
        m.set_catalog(pd.read_parquet(path / "catalog.parquet"))
        return m


def model_class(name: str) -> type[DemandModel]:
    """The demand-model class registered under `name` (BERT is imported lazily: it pulls in torch)."""
    if name == "logistic":
        return LogisticDemand
    if name == "lightgbm":
        return LightGBMDemand
    if name == "bert":
        from lightning_modules.demand import BertDemand

        return BertDemand
    raise ValueError(f"unknown model {name!r}: choose bert, lightgbm or logistic")


def save_model(model: DemandModel, path: Path) -> None:
    """Save a model with a small manifest naming its class, so `load_model` needs no other hint."""
    path.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (path / "manifest.json").write_text(json.dumps({"model": model.name}))


def load_model(path: Path) -> DemandModel:
    """Load what `save_model` wrote."""
    name = json.loads((Path(path) / "manifest.json").read_text())["model"]
    return model_class(name).load(Path(path))
