"""Fine-tuning MiniLM's top layers with the network (`bert.finetune_layers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bert_fixtures import TINY_BERT

from lightning_modules.components.towers import TextTop
from mlops.models import PricingData
from mlops.text import TextEncoder, item_texts
from pricing import schema as S

TEXTS = ["organic whole milk 1l. dairy. farmco", "dark chocolate", "", "rye bread. bakery"]


def test_the_top_layers_over_their_cached_inputs_give_the_encoders_vectors() -> None:
    enc = TextEncoder("tiny")
    hidden, mask = enc.top_inputs(TEXTS, 1)
    assert hidden.dtype == np.float16 and mask.shape == hidden.shape[:2]
    top = TextTop(enc.top_layers(1), torch.from_numpy(hidden), torch.from_numpy(mask)).eval()
    with torch.no_grad():
        out = top(torch.tensor([3, 0, 1, 2])).numpy()
    # float16 inputs: equal to the frozen vectors up to rounding
    np.testing.assert_allclose(out, enc.encode(TEXTS)[[3, 0, 1, 2]], atol=2e-3)
    assert all(p.requires_grad for p in top.parameters())
    with pytest.raises(ValueError, match="layers must be in 1..1"):
        enc.top_inputs(TEXTS, 2)


@pytest.fixture(scope="module")
def finetuned(small_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = small_splits
    model = BertDemand({**TINY_BERT, "max_epochs": 2, "finetune_layers": 1, "finetune_lr": 1e-3}, 0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model


def test_fine_tuning_moves_the_item_vectors_and_bakes_them_into_the_model(finetuned: Any) -> None:
    assert finetuned.diagnostics["finetune_layers"] == 1.0
    frozen = TextEncoder("tiny").encode(item_texts(finetuned.catalog))
    baked = finetuned.net.items.item_text[1:].numpy()
    assert np.abs(baked - frozen).max() > 1e-2  # the layer trained
    assert np.abs(baked[0]).max() > 0  # the first real item has a vector
    np.testing.assert_array_equal(finetuned.net.items.item_text[0].numpy(), 0.0)  # unknown item
    # The saved network is a plain vector-table network: no BERT layer is left to run.
    assert finetuned.net.items.text_top is None
    assert not any("text_top" in k for k in finetuned.module.state_dict())


def test_a_finetuned_model_is_monotone_and_predicts_the_same_after_save_and_load(
    finetuned: Any, small_splits: Any, tmp_path: Path
) -> None:
    from mlops.models import load_model, save_model

    test = small_splits[2]
    grid = test.list_price()[:, None] * np.linspace(0.5, 1.5, 11)[None, :]
    curves = finetuned.predict_grid(test, grid)
    assert (np.diff(curves, axis=1) <= 1e-12).all()
    save_model(finetuned, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_grid(test, grid), curves, atol=1e-6)
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[0]]
    idx = np.arange(len(finetuned.catalog))
    g = finetuned.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.7, 1.3, 5)
    want = finetuned.demand(finetuned.user_state(events), idx, g)
    np.testing.assert_allclose(loaded.demand(loaded.user_state(events), idx, g), want, atol=1e-6)


def test_the_text_layers_train_at_their_own_rate() -> None:
    from lightning_modules.price_module import PriceResponseModule

    enc = TextEncoder("tiny")
    module = PriceResponseModule(4, 2, 0, enc.dim, d_model=16, lr=1e-3, finetune_lr=2e-5)
    n_rows = len(TEXTS) + 1
    module.net.items.attach_text_top(TextTop.for_items(enc, TEXTS, 1))
    opt, _ = module.build_optimizer(100)
    lrs = sorted({g["initial_lr"] for g in opt.param_groups})  # before the schedule's warm-up
    assert lrs == [2e-5, 1e-3]
    text_group = next(g for g in opt.param_groups if g["initial_lr"] == 2e-5)
    assert sum(p.numel() for p in text_group["params"]) == sum(
        p.numel() for p in module.net.items.text_top.parameters()
    )
    # Training reads the live layers; validation reads the buffer, refreshed from them.
    module.train()
    idx = torch.arange(n_rows)
    live = module.net.items.text_vectors(idx)
    assert live.requires_grad
    module.net.items.bake_text()
    module.eval()
    np.testing.assert_allclose(
        module.net.items.text_vectors(idx).detach().numpy(),
        module.net.items.text_top.eval()(idx).detach().numpy(),
        atol=1e-6,
    )


def test_a_bounded_step_runs_only_some_items_through_the_layers_and_refreshes_their_vectors() -> (
    None
):
    from lightning_modules.components.towers import ItemTower

    enc = TextEncoder("tiny")
    tower = ItemTower(len(TEXTS), 2, enc.dim, 8)
    with torch.no_grad():
        tower.item_text[1:] = torch.from_numpy(enc.encode(TEXTS))
    top = TextTop.for_items(enc, TEXTS, 1)
    tower.attach_text_top(top, items_per_step=2)
    tower.train()
    top.eval()  # no dropout: the layers' output is a fixed function of the weights
    with torch.no_grad():
        for p in top.parameters():
            p.add_(0.05 * torch.randn_like(p))  # as after some training: layers != stale vectors
    before = tower.item_text.clone()
    idx = torch.tensor([1, 2, 3, 4, 1])
    out = tower.text_vectors(idx)
    refreshed = [r for r in range(1, 5) if not torch.equal(tower.item_text[r], before[r])]
    assert len(refreshed) == 2  # two of the four items went through the layers
    with torch.no_grad():
        live = top(torch.arange(len(TEXTS) + 1))
    for pos, r in enumerate(idx.tolist()):
        want = live[r] if r in refreshed else before[r]
        torch.testing.assert_close(out[pos].detach(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tower.item_text[r], want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
