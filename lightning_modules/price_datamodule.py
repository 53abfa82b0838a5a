"""LightningDataModule: train/valid offers with their history windows, as tensors.

It is handed its splits (it never downloads, and never reads the users table, so protected
attributes cannot reach the model); `lightning_modules.sequences` builds the windows. Training
offers come either in memory (the default) or streamed from shards (`train_stream`, see
`lightning_modules.streaming`), one shard at a time.

The training order is a function of (seed, epoch) only, sharded by rank under DDP, and the
datamodule's state (epoch, batches done) travels in checkpoints, so a resumed run, even one killed
mid-epoch, sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays, rank_world
from lightning_modules.streaming import ShardStream, StreamLoader


class _Positions(Dataset):
    """Offer positions 0..n-1; the collate function does the real work, vectorized per batch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class EpochSampler(Sampler[int]):
    """Positions in an order fixed by (seed, epoch), this rank's shard, minus the batches done.

    Lightning calls `set_epoch` before every epoch (and we turn its own DistributedSampler off):
    the order then depends on nothing but the seed and the epoch, never on the global RNG, which
    dropout also draws from. Like DistributedSampler, the order is padded by wrapping around to a
    multiple of the world size so every rank runs the same number of steps.

    Args:
        n: dataset size.
        batch_size: positions per batch (to skip whole batches on resume).
        shuffle: permute per epoch (training) or keep 0..n-1 (validation).
        seed: the permutation seed.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.resume_epoch = -1  # skip `resume_batches` batches when iterating this epoch
        self.resume_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass over `epoch` start after its first `batches` batches."""
        self.resume_epoch, self.resume_batches = epoch, batches

    def __len__(self) -> int:
        # The full shard, also when resuming: Lightning sizes the LR schedule from it.
        return math.ceil(self.n / rank_world()[1])

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = math.ceil(self.n / world) * world
        if total > self.n and self.n:
            order = torch.cat([order, order[: total - self.n]])
        shard = order[rank:total:world]
        if self.epoch == self.resume_epoch:
            shard = shard[self.resume_batches * self.batch_size :]
            self.resume_epoch = -1  # only the first pass after a restore is partial
        return iter(shard.tolist())


def loader(
    batcher: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    n: int,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    sampler: Sampler[int] | None = None,
    seed: int = 0,
) -> DataLoader:
    """Batches of `batcher(positions)`; `sampler` (if given) replaces `shuffle`.

    The loader's own generator seeds worker processes, so iterating it never draws from the global
    RNG (which would shift dropout masks between an uninterrupted and a resumed run).
    """
    return DataLoader(
        _Positions(n),
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        collate_fn=batcher,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


class PriceDataModule(pl.LightningDataModule):
    """Train/valid offers with their histories. Handed its data; never downloads or reads users.

    Args:
        train_offers, valid_offers: contract offers (valid may be None or empty).
        events: contract events (all of them; each offer only sees its user's earlier ones).
        vocab: index spaces of the network.
        max_len: L, events per history window.
        batch_size, num_workers: DataLoader settings; pin_memory follows `pin_memory` (on for GPU).
        seed: the data-order seed (the order of epoch e is a function of (seed, e)).
        trim_padding: cut each batch to its longest true history (see `HistoryBatcher`).
        train_wide, valid_wide: wide features per offer (wide & deep), or None.
        train_stream: stream the training batches from shards instead (`train_offers` is then
            ignored and `events` only serves the validation offers).
    """

    def __init__(
        self,
        train_offers: pd.DataFrame,
        valid_offers: pd.DataFrame | None,
        events: pd.DataFrame,
        vocab: Vocab,
        max_len: int = 32,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        eval_batch_size: int = 2048,
        seed: int = 0,
        trim_padding: bool = False,
        train_wide: np.ndarray | None = None,
        valid_wide: np.ndarray | None = None,
        train_stream: ShardStream | None = None,
    ) -> None:
        super().__init__()
        self.train_stream = train_stream
        self.train_wide, self.valid_wide = train_wide, valid_wide
        self.train_offers = train_offers.reset_index(drop=True)
        self.valid_offers = None if valid_offers is None else valid_offers.reset_index(drop=True)
        self.events = events
        self.vocab = vocab
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.trim_padding = trim_padding
        self.train_sampler: EpochSampler | None = None
        self._resume: dict[str, int] | None = None
        self.train_batcher: HistoryBatcher | None = None
        self.valid_batcher: HistoryBatcher | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_batcher is not None or self.valid_batcher is not None:
            return
        has_valid = self.valid_offers is not None and len(self.valid_offers) > 0
        if self.train_stream is not None and not has_valid:
            return
        ev = event_arrays(self.events, self.vocab)
        trim = self.trim_padding
        if self.train_stream is None:
            self.train_batcher = HistoryBatcher(
                ev, self.train_offers, self.vocab, self.max_len, trim, self.train_wide
            )
        if self.valid_offers is not None and has_valid:
            self.valid_batcher = HistoryBatcher(
                ev, self.valid_offers, self.vocab, self.max_len, trim, self.valid_wide
            )

    def train_dataloader(self) -> DataLoader:
        if self.train_stream is not None:
            if self._resume is not None:
                self.train_stream.resume_at(self._resume["epoch"], self._resume["batches"])
                self._resume = None
            return StreamLoader(
                self.train_stream, self._current_epoch, pin_memory=self.pin_memory, seed=self.seed
            )
        assert self.train_batcher is not None
        n = len(self.train_batcher)
        self.train_sampler = EpochSampler(n, self.batch_size, shuffle=True, seed=self.seed)
        if self._resume is not None:
            self.train_sampler.resume_at(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        return loader(
            self.train_batcher,
            n,
            self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            sampler=self.train_sampler,
            seed=self.seed,
        )

    def _current_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.valid_batcher is None:
            return []
        n = len(self.valid_batcher)
        return loader(
            self.valid_batcher,
            n,
            self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            sampler=EpochSampler(n, self.eval_batch_size, shuffle=False),
            seed=self.seed,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the data: the epoch and the batches this rank has finished."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current  # a _ProcessedTracker
        return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the data order where the checkpoint left it (applied to the next train loader)."""
        if state_dict:
            self._resume = {
                "epoch": int(state_dict["epoch"]),
                "batches": int(state_dict["batches"]),
            }
