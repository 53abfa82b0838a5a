"""Cold start in the BERT model: items training never showed are served by text and category."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from bert_fixtures import TINY_BERT

from mlops.models import PricingData
from pricing import schema as S


@pytest.fixture(scope="module")
def cold_model(small_splits: tuple[PricingData, PricingData, PricingData]) -> tuple[Any, str]:
    """Trained without any offer or event of one item, which stays in the catalog."""
    from lightning_modules.demand import BertDemand

    train, valid, _ = small_splits
    cold = str(train.offers[S.ITEM_ID].astype(str).value_counts().index[-1])
    keep_o = train.offers[S.ITEM_ID].astype(str) != cold
    keep_e = train.events[S.ITEM_ID].astype(str) != cold
    without = PricingData(train.offers[keep_o], train.items, train.events[keep_e])
    model = BertDemand({**TINY_BERT, "max_epochs": 2, "id_dropout": 0.2}, seed=0)
    model.diagnostics = model.fit(without, valid)  # type: ignore[attr-defined]
    return model, cold


def test_an_item_training_never_showed_is_flagged_cold_and_its_id_embedding_is_unused(
    cold_model: tuple[Any, str],
) -> None:
    model, cold = cold_model
    k = int(model.vocab.item_index([cold])[0])
    items = model.net.items
    assert model.diagnostics["cold_items"] >= 1
    assert items.item_seen[k] == 0 and items.item_seen.sum() >= len(model.vocab.item_ids) - 5
    warm = int(torch.nonzero(items.item_seen)[0, 0])
    idx = torch.tensor([k, warm])
    # An untrained id row must not matter for a cold item (not a constant: LayerNorm removes one).
    shift = torch.randn(2, items.id_emb.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = items(idx).clone()
        items.id_emb.weight[idx] += shift
        after = items(idx)
        items.id_emb.weight[idx] -= shift
    assert torch.allclose(before[0], after[0], atol=1e-6)  # cold: text + category only
    assert not torch.allclose(before[1], after[1], atol=1e-3)  # warm: the id embedding counts


def test_the_cold_item_gets_a_monotone_demand_curve_in_serving(cold_model: tuple[Any, str]) -> None:
    model, cold = cold_model
    row = int(np.flatnonzero(model.catalog[S.ITEM_ID].astype(str).to_numpy() == cold)[0])
    lp = float(model.catalog[S.LIST_PRICE].iloc[row])
    probs = model.demand(
        model.user_state(
            model.catalog.iloc[:0].assign(
                **{S.USER_ID: [], S.TS: [], S.EVENT_TYPE: [], S.PRICE: []}
            )
        ),
        np.array([row]),
        lp * np.linspace(0.5, 1.5, 11)[None, :],
    )
    assert np.isfinite(probs).all() and (np.diff(probs, axis=1) <= 1e-12).all()


def test_models_saved_before_the_cold_start_flag_load_with_every_item_seen(
    cold_model: tuple[Any, str],
) -> None:
    from lightning_modules.price_module import PriceResponseModule

    model, _ = cold_model
    state = {k: v for k, v in model.module.state_dict().items() if not k.endswith("item_seen")}
    old = PriceResponseModule(**dict(model.module.hparams))
    old.load_state_dict(state)  # strict: the missing buffer is filled, nothing else
    assert bool((old.net.items.item_seen == 1).all())
