"""A small BERT price-response model trained once per session on the tiny simulated market."""

from __future__ import annotations

from typing import Any

import pytest
from bert_fixtures import SMALL, TINY_BERT

from mlops.models import PricingData
from pricing.simulator import Market, simulate
from pricing.split import time_split


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
