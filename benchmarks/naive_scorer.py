"""The scorer apps the load benchmark serves: the real one, and the naive way with the same model.

The naive scorer runs the same FastAPI app, pricing pipeline and offer log; only the model is
wrapped so that nothing is precomputed or cached: every quote runs BERT over the 50 candidates'
item texts and over the user's history (item texts and search queries), then the user tower, then
the head. That is what serving a text model costs without the serving split of DESIGN.md section 5.

Both are built by `app_factory` for `uvicorn --factory`, configured by environment variables:
BENCH_MODEL (`toy` or a directory written by `mlops.models.save_model`), BENCH_NAIVE (1: naive),
BENCH_TORCH_THREADS (intra-op threads; default 1 for the real scorer, torch's default for the naive
one, which needs them for BERT), plus the usual PRICING_* settings and REDIS_URL.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.models import DemandModel, PricingData, load_model
from mlops.registry import ModelHandle
from pricing import schema as S


class NaiveDemand(DemandModel):
    """Wraps a model so every `demand` call recomputes everything from raw events and texts."""

    name = "naive"

    def __init__(self, inner: DemandModel) -> None:
        self.inner = inner
        self.catalog: pd.DataFrame = inner.catalog  # type: ignore[attr-defined]
        self._bert = type(inner).__name__ == "BertDemand"

    def warm(self) -> None:
        self.inner.warm()
        if self._bert:
            self.inner.encoder._encode(["warm up"])  # type: ignore[attr-defined]

    def user_state(self, events: pd.DataFrame) -> Any:
        return events  # the raw history: all the work happens per quote

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        events: pd.DataFrame = state
        if not self._bert:
            return self.inner.demand(self.inner.user_state(events), item_idx, grid)
        import torch

        from lightning_modules.components.text import item_texts

        m: Any = self.inner
        enc = m.encoder
        # BERT over the candidates' texts, bypassing every cache.
        text = torch.from_numpy(enc._encode(item_texts(self.catalog.iloc[item_idx])))
        # BERT over the history: its items' texts and its search queries. They equal the vectors
        # the model holds (same encoder, same texts), so the user tower then reads those.
        hist_items = events[S.ITEM_ID].dropna().astype(str)
        pos = self.catalog.reset_index().set_index(S.ITEM_ID)["index"].reindex(hist_items).dropna()
        hist_texts = item_texts(self.catalog.iloc[pos.astype(int).to_numpy()]) if len(pos) else []
        queries = events.loc[events[S.EVENT_TYPE] == S.SEARCH, S.QUERY].dropna().astype(str)
        if hist_texts or len(queries):
            enc._encode([*hist_texts, *queries.tolist()])
        u = m.user_state(events)
        net = m.net
        idx = torch.as_tensor(np.asarray(item_idx, np.int64) + 1)
        with torch.inference_mode():
            tower = net.items
            iv = tower.norm(
                tower.text_proj(text) + tower.id_emb(idx) + tower.cat_emb(tower.item_category[idx])
            )
            a, b = net.head(torch.from_numpy(np.asarray(u, np.float32)).expand(len(idx), -1), iv)
        a, b = a.numpy().astype(float), b.numpy().astype(float)
        lp = self.catalog[S.LIST_PRICE].to_numpy(float)[item_idx]
        logit = a[:, None] - b[:, None] * np.log(np.asarray(grid, float) / lp[:, None])
        return 1.0 / (1.0 + np.exp(-logit))

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        raise NotImplementedError

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> NaiveDemand:
        raise NotImplementedError


def _load(spec: str) -> DemandModel:
    if spec == "toy":
        from scorer.testing import ToyDemand, toy_catalog

        return ToyDemand(toy_catalog(int(os.environ.get("SCORER_TOY_ITEMS", "200"))))
    return load_model(Path(spec))


def app_factory() -> Any:
    """The benchmark's scorer (`uvicorn naive_scorer:app_factory --factory --app-dir benchmarks`).

    Every load (startup, `POST /admin/reload`) loads the model afresh under the next version
    number, so a reload during the benchmark is a real load, warm and swap.
    """
    from scorer.app import create_app

    naive = os.environ.get("BENCH_NAIVE", "0") == "1"
    threads = os.environ.get("BENCH_TORCH_THREADS", "" if naive else "1")
    if threads:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except ImportError:
            pass
    spec = os.environ.get("BENCH_MODEL", "toy")
    versions = itertools.count(1)

    def loader() -> ModelHandle:
        model = _load(spec)
        return ModelHandle(
            name="bench-naive" if naive else "bench",
            version=str(next(versions)),
            model=NaiveDemand(model) if naive else model,
            run_id=None,
            guardrails={},
        )

    return create_app(loader=loader, seed=0)
