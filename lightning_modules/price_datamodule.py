"""LightningDataModule: train/valid offers with their history windows, as tensors.

It is handed its splits (it never downloads, and never reads the users table, so protected
attributes cannot reach the model); `lightning_modules.sequences` builds the windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays


class _Positions(Dataset):
    """Offer positions 0..n-1; the collate function does the real work, vectorized per batch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loader(
    batcher: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    n: int,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    return DataLoader(
        _Positions(n),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=batcher,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class PriceDataModule(pl.LightningDataModule):
    """Train/valid offers with their histories. Handed its data; never downloads or reads users.

    Args:
        train_offers, valid_offers: contract offers (valid may be None or empty).
        events: contract events (all of them; each offer only sees its user's earlier ones).
        vocab: index spaces of the network.
        max_len: L, events per history window.
        batch_size, num_workers: DataLoader settings; pin_memory follows `pin_memory` (on for GPU).
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
    ) -> None:
        super().__init__()
        self.train_offers = train_offers.reset_index(drop=True)
        self.valid_offers = None if valid_offers is None else valid_offers.reset_index(drop=True)
        self.events = events
        self.vocab = vocab
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_batcher: HistoryBatcher | None = None
        self.valid_batcher: HistoryBatcher | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_batcher is not None:
            return
        ev = event_arrays(self.events, self.vocab)
        self.train_batcher = HistoryBatcher(ev, self.train_offers, self.vocab, self.max_len)
        if self.valid_offers is not None and len(self.valid_offers):
            self.valid_batcher = HistoryBatcher(ev, self.valid_offers, self.vocab, self.max_len)

    def train_dataloader(self) -> DataLoader:
        assert self.train_batcher is not None
        return loader(
            self.train_batcher,
            len(self.train_batcher),
            self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.valid_batcher is None:
            return []
        return loader(
            self.valid_batcher,
            len(self.valid_batcher),
            self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
