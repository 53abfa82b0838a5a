"""A small BERT price-response model trained once per session on the tiny simulated market."""

from __future__ import annotations

from typing import Any

import pytest

from mlops.models import PricingData
from pricing.simulator import Market
from pricing.split import time_split

# The tiny random-init text encoder and a small network: seconds on 2 CPU cores.
TINY_BERT: dict[str, Any] = {
    "text_encoder": "tiny",
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "max_len": 16,
    "batch_size": 128,
    "lr": 3e-3,
    "max_epochs": 8,
    "patience": 3,
    "warmup_steps": 10,
}


def splits(market: Market) -> tuple[PricingData, PricingData, PricingData]:
    """Time-split train/valid/test of a simulated market (features are not needed by BERT)."""
    from tasks.evaluation import subset

    t = market.tables
    sp = time_split(t["offers"])
    full = PricingData(t["offers"], t["items"], t["events"], None, t["users"])
    return subset(full, sp.train), subset(full, sp.valid), subset(full, sp.test)


@pytest.fixture(scope="session")
def tiny_splits(tiny_market: Market) -> tuple[PricingData, PricingData, PricingData]:
    return splits(tiny_market)


@pytest.fixture(scope="session")
def trained_bert(tiny_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = tiny_splits
    model = BertDemand(TINY_BERT, seed=0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model
