"""LightningModule for the price-response network: BCE on `purchased`, AdamW, val loss and AUC."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC

from lightning_modules.components.towers import PriceResponseNet


def _numpy_state_out(state: Any) -> tuple[Any, ...]:
    name, keys, pos, has_gauss, cached = state
    return (
        str(name),
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    )


def _numpy_state_in(state: Any) -> tuple[Any, ...]:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


class PriceResponseModule(pl.LightningModule):
    """Built from plain hyperparameters, so `save_hyperparameters()` / `load_from_checkpoint()` work.

    The frozen text vectors live in the network's buffers (filled by `set_text_vectors` before
    training) and travel in the state dict, so a checkpoint needs no text encoder to load.
    Checkpoints also carry every RNG state, so a resumed run draws the same dropout masks as an
    uninterrupted one. `compile_net()` makes training and validation steps run a `torch.compile`d
    view of the network; the plain network (and the state dict) stay as they are.
    """

    def __init__(
        self,
        n_items: int,
        n_categories: int,
        n_queries: int,
        text_dim: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 32,
        dropout: float = 0.1,
        head_hidden: int = 64,
        a_init: float = -2.0,
        ff_mult: int = 4,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        cosine: bool = True,
        n_wide: int = 0,
        id_dropout: float = 0.0,
        price_head: str = "mlp",
        n_user_wide: int = 0,
        finetune_lr: float = 5e-5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = PriceResponseNet(
            n_items,
            n_categories,
            n_queries,
            text_dim,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            max_len=max_len,
            dropout=dropout,
            head_hidden=head_hidden,
            a_init=a_init,
            ff_mult=ff_mult,
            n_wide=n_wide,
            id_dropout=id_dropout,
            price_head=price_head,
            n_user_wide=n_user_wide,
        )
        self.val_auc = BinaryAUROC()
        self._compile = False
        self._compiled: Any = None

    def compile_net(self, enabled: bool = True, **options: Any) -> None:
        """Run the steps through `torch.compile(net, **options)` (built lazily, on the device)."""
        self._compile, self._compile_options = enabled, options
        self._compiled = None

    def _step_net(self) -> Any:
        if not self._compile:
            return self.net
        if self._compiled is None:
            # Kept out of the module tree (plain __dict__ entry): no duplicate state-dict keys,
            # and DDP/checkpointing see only the plain network, whose parameters it shares.
            self.__dict__["_compiled"] = torch.compile(self.net, **self._compile_options)
        return self._compiled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_compiled"] = None  # rebuilt per process (ddp_spawn pickles the module)
        return state

    def set_text_vectors(
        self,
        item_text: torch.Tensor,
        item_category: torch.Tensor,
        query_text: torch.Tensor,
        item_seen: torch.Tensor | None = None,
    ) -> None:
        """Copy the precomputed (frozen) text vectors (and which items training shows) in."""
        with torch.no_grad():
            self.net.items.item_text.copy_(item_text)
            self.net.items.item_category.copy_(item_category)
            self.net.query_text.copy_(query_text)
            if item_seen is not None:
                self.net.items.item_seen.copy_(item_seen)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a, b = self._step_net()(batch)
        return self.net.logit(a, b, batch["lpr"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the RNG states (python, numpy, torch CPU and CUDA) with the weights."""
        rng: dict[str, Any] = {
            "python": random.getstate(),
            # Plain types and tensors only: Lightning loads checkpoints with weights_only=True.
            "numpy": _numpy_state_out(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            # This rank's own device: every rank is seeded alike and draws alike, so rank 0's
            # state (the one written) is every rank's state.
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["rng_states"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG states `on_save_checkpoint` stored (when resuming a run)."""
        rng = checkpoint.get("rng_states")
        if not rng:
            return
        random.setstate(rng["python"])
        np.random.set_state(_numpy_state_in(rng["numpy"]))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            # Restored before the module moves to its device: set the current device's generator.
            torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())

    def on_validation_epoch_start(self) -> None:
        """Validation reads the item-text buffer: refresh it from the fine-tuned text top."""
        self.net.items.bake_text()

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self(batch).float()
        return F.binary_cross_entropy_with_logits(logit, batch["label"].float()), logit

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logit = self._loss(batch)
        n = len(batch["label"])
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.val_auc.update(torch.sigmoid(logit), batch["label"].long())
        self.log("val/auc", self.val_auc, batch_size=n)

    def build_optimizer(self, total_steps: int, fused: bool | None = None) -> tuple[Any, Any]:
        """AdamW (no decay on embeddings, norms, biases) and its per-step LR schedule (or None).

        Public so a plain PyTorch loop (benchmarks/train_throughput.py) trains with exactly the
        optimizer the Trainer uses. `fused` defaults to on for CUDA parameters.
        """
        hp: Any = self.hparams  # an AttributeDict of __init__'s arguments
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        text: list[torch.nn.Parameter] = []  # fine-tuned MiniLM layers: their own (small) rate
        for name, p in self.named_parameters():
            if ".text_top." in f".{name}":
                text.append(p)
            # Embedding tables, norms and biases are not shrunk toward zero.
            elif p.ndim < 2 or "emb" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if text:
            groups.append({"params": text, "weight_decay": 0.01, "lr": hp.finetune_lr})
        if fused is None:
            fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(groups, lr=hp.lr, fused=fused)
        if not hp.cosine:
            return opt, None
        total = max(int(total_steps), 1)
        warm = min(hp.warmup_steps, max(total // 10, 1))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def configure_optimizers(self) -> Any:
        opt, sched = self.build_optimizer(int(self.trainer.estimated_stepping_batches))
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
