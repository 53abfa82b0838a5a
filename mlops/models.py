"""Demand models behind one interface: what training, evaluation and the scorer call.

A demand model answers P(purchase | user history, item, price). Evaluation asks it for a grid of
prices per offer (the optimizer then picks one); the scorer asks it per quote with the user's
online state. Baselines (pooled logistic, LightGBM) live here; the BERT model plugs in from
`lightning_modules`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pricing import features as F
from pricing import schema as S
from pricing.logistic import fit_logistic, predict_logistic

log = logging.getLogger(__name__)


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
    def load(cls, path: Path) -> DemandModel:
        """Read what `save` wrote. Trusts the directory: `load_model` checks the files first."""


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


MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 1 (implicit): {"model": name} only; 2: + sha256 and size of every file
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
    """Save a model and, last, its manifest: the class name plus the sha256 and size of every file.

    The manifest is written after the model's files and atomically, so a directory whose save was
    interrupted has no manifest (or a stale one that no longer matches) and `load_model` refuses it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for new files
    model.save(path)
    manifest = {"format": MANIFEST_FORMAT, "model": model.name, "files": file_digests(path)}
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
    return model_class(manifest["model"]).load(path)
