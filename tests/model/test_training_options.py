"""Training options of the BERT model: padding trim, the (seed, epoch) data order, gradient
accumulation, torch.compile, the rank-zero guard and unknown-key checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch  # a hard dependency: imported, never skipped

from lightning_modules.demand import BertDemand, device_plan  # noqa: E402
from lightning_modules.price_datamodule import EpochSampler  # noqa: E402
from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays  # noqa: E402
from mlops.config import BertConfig, ExperimentConfig  # noqa: E402

NEW_KEYS = {
    "compile": False,
    "accumulate_grad_batches": 1,
    "checkpoint_dir": None,
    "resume": True,
    "pin_memory": None,
    "trim_padding": False,
}


def test_new_keys_default_to_the_old_behaviour() -> None:
    cfg = BertConfig()
    for key, value in NEW_KEYS.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize(
    ("bad", "named"),
    [({"compiled": True}, "compiled"), ({"d_model": "wide"}, "d_model"), ({"lr": -1}, "lr")],
)
def test_unknown_keys_and_wrong_types_fail_when_the_config_is_read(
    bad: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        BertDemand(bad)
    with pytest.raises(ValueError, match=named):
        ExperimentConfig.model_validate({"bert": bad})


def test_the_architecture_comes_from_one_typed_list() -> None:
    cfg = BertConfig(d_model=32, n_layers=1)
    assert set(cfg.arch()) == set(BertConfig.ARCH)
    assert cfg.arch()["d_model"] == 32 and cfg.arch()["n_layers"] == 1
    assert BertDemand(cfg).config is cfg


def test_one_device_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_plan({}) == ("gpu", True)  # a GPU box trains on its GPU, with GPU settings
    assert device_plan({"accelerator": "cpu"}) == ("cpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_plan({}) == ("cpu", False)
    assert device_plan({"accelerator": "auto", "devices": 2}) == ("cpu", False)


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    s = EpochSampler(100, batch_size=8, seed=5)
    s.set_epoch(0)
    first = list(s)
    assert sorted(first) == list(range(100)) and len(s) == 100
    s.set_epoch(1)
    second = list(s)
    assert second != first
    s.set_epoch(0)
    assert list(s) == first  # no hidden state: the global RNG is never read
    torch.manual_seed(123)
    assert list(EpochSampler(100, 8, seed=5)) == first
    # Resuming after 3 batches of epoch 0 yields exactly the rest, once.
    s.resume_at(0, 3)
    assert list(s) == first[24:]
    assert list(s) == first
    assert list(EpochSampler(5, 2, shuffle=False)) == [0, 1, 2, 3, 4]


def test_trimmed_batches_give_the_same_outputs(tiny_splits: Any) -> None:
    from lightning_modules.price_module import PriceResponseModule

    train = tiny_splits[0]
    vocab = Vocab.build(train.items, [])
    ev = event_arrays(train.events, vocab)
    padded = HistoryBatcher(ev, train.offers, vocab, max_len=64)
    trimmed = HistoryBatcher(ev, train.offers, vocab, max_len=64, trim=True)
    # Limits: a batch of short histories is cut to its longest one, never below 1 column.
    lengths = np.minimum(padded.history_length(), 64)
    short = np.flatnonzero(lengths <= 3)[:32]
    assert len(short) > 0
    assert trimmed(short)["ev_mask"].shape[1] == max(int(lengths[short].max()), 1)
    torch.manual_seed(0)
    module = PriceResponseModule(len(vocab.item_ids), len(vocab.categories), 0, 8, d_model=16)
    module.eval()
    idx = np.arange(min(len(padded), 300))
    with torch.inference_mode():
        for rows in (idx, short):
            a, b = padded(rows), trimmed(rows)
            assert b["ev_mask"].sum() == a["ev_mask"].sum()
            torch.testing.assert_close(module(a), module(b), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_accumulation_trim_and_compile_train(
    tiny_splits: Any, bert_config: dict[str, Any], tmp_path: Any
) -> None:
    train, valid, test = tiny_splits
    cfg = {
        **bert_config,
        "max_epochs": 1,
        "max_steps": 4,
        "batch_size": 64,
        "accumulate_grad_batches": 2,
        "trim_padding": True,
        "compile": "aot_eager",  # the same wiring as inductor, without minutes of C++ builds
        "checkpoint_dir": str(tmp_path),
        "checkpoint_every_n_steps": 2,
    }
    model = BertDemand(cfg, seed=0)
    diag = model.fit(train, valid)
    # 4 optimizer steps of 2 batches of 64 samples each; last.ckpt at the last step.
    assert diag["steps"] == 4
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert ckpt["PriceDataModule"] == {"epoch": 0, "batches": 8}
    # Compilation only wraps the steps: state-dict keys and predictions are the plain network's.
    assert not any("_orig_mod" in k for k in model.module.state_dict())
    probs = model.predict(test)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
