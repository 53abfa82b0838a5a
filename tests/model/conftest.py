"""A small BERT price-response model trained once per session on the tiny simulated market."""

from __future__ import annotations

from typing import Any

import pytest

from mlops.models import PricingData
from pricing.simulator import Market, SimConfig, simulate
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
    "max_epochs": 6,
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


# Learning who is price-sensitive from behaviour needs more offers than the tiny market has
# (~2k training offers there; ~9k here); still a few seconds of training.
# The classic market: its discount-history signal is what the behaviour tests are about (on the
# realistic market's seed 7 the tiny BERT learns too little sensitivity spread to test it).
SMALL = SimConfig.preset("classic", n_users=400, n_items=40, n_days=28, seed=7)


@pytest.fixture(scope="session")
def small_splits() -> tuple[PricingData, PricingData, PricingData]:
    return splits(simulate(SMALL))


@pytest.fixture(scope="session")
def trained_bert(small_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    """The model whose behaviour the tests check, trained on the small market."""
    from lightning_modules.demand import BertDemand

    train, valid, _ = small_splits
    model = BertDemand(TINY_BERT, seed=0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model


@pytest.fixture()
def bert_config() -> dict[str, Any]:
    """A copy of the tiny BERT config, for tests that train their own model."""
    return dict(TINY_BERT)
