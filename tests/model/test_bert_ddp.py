"""Two-process DDP on CPU (gloo) ends with the same weights on both ranks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402


class StateHash(pl.Callback):
    """Each rank writes a hash of its final state dict to `out/rank<k>.txt`."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        (self.out / f"rank{trainer.global_rank}.txt").write_text(h.hexdigest())


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(
    tiny_splits: Any, tmp_path: Path, bert_config: dict[str, Any]
) -> None:
    from lightning_modules.demand import BertDemand

    train, valid, test = tiny_splits
    trainer = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp_spawn",
        "callbacks": [StateHash(tmp_path)],
    }
    model = BertDemand({**bert_config, "max_epochs": 1, "max_steps": 6}, seed=0, trainer=trainer)
    diag = model.fit(train, valid)
    hashes = [(tmp_path / f"rank{k}.txt").read_text() for k in range(2)]
    assert len(hashes[0]) == 64 and hashes[0] == hashes[1]
    assert diag["samples_per_s"] > 0
    # The parent process gets the trained weights back and can predict.
    probs = model.predict(test)
    assert torch.isfinite(torch.as_tensor(probs)).all()
