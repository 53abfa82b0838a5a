"""Offers + the user's events strictly before each offer, as tensors for the price-response model.

The datamodule is handed its splits (it never downloads, and never reads the users table, so
protected attributes cannot reach the model). Histories are not materialized per offer: events
are sorted by (user, ts) once, each offer keeps the [start, end) range of its user's earlier events
(np.searchsorted, side="left", so an event at the offer's own ts is excluded), and a batch gathers
its last L events in one vectorized step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.components.towers import EVENT_TYPE_CODES, NO_ITEM, gap_bucket
from pricing import schema as S


def ts_ns(values: Any) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds (any datetime-like column or scalar list)."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


@dataclass
class Vocab:
    """Index spaces the network was built for: catalog items (1..N; 0 = unknown), categories
    (1..C; 0 = unknown) and search queries (1..Q; 0 = none)."""

    item_ids: list[str]
    categories: list[str]
    queries: list[str]
    list_price: np.ndarray  # (N + 1,), NaN at 0
    item_category: np.ndarray  # (N + 1,) category index per item index

    @classmethod
    def build(cls, items: pd.DataFrame, queries: Sequence[str]) -> Vocab:
        ids = items[S.ITEM_ID].astype(str).tolist()
        cats = sorted(items[S.CATEGORY].fillna("").astype(str).unique().tolist())
        cat_pos = {c: k + 1 for k, c in enumerate(cats)}
        item_cat = np.zeros(len(ids) + 1, np.int64)
        item_cat[1:] = [cat_pos[c] for c in items[S.CATEGORY].fillna("").astype(str)]
        lp = np.full(len(ids) + 1, np.nan)
        lp[1:] = items[S.LIST_PRICE].to_numpy(float)
        return cls(ids, cats, sorted({str(q) for q in queries if q}), lp, item_cat)

    def item_index(self, ids: Any) -> np.ndarray:
        """1-based item indices; 0 for ids outside the catalog (and for nulls)."""
        idx = pd.Index(self.item_ids).get_indexer(pd.Index(pd.Series(ids, dtype=object).astype(str)))
        return (idx + 1).astype(np.int64)

    def query_index(self, queries: Any, extra: Sequence[str] = ()) -> np.ndarray:
        """1-based query indices into `queries + extra`; 0 for none or unseen."""
        vocab = pd.Index(list(self.queries) + list(extra))
        q = pd.Series(queries, dtype=object)
        idx = vocab.get_indexer(pd.Index(q.where(q.notna(), "").astype(str)))
        return (idx + 1).astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        return {"categories": self.categories, "queries": self.queries}


def event_arrays(
    events: pd.DataFrame, vocab: Vocab, extra_queries: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Encode contract events (any order) into per-event arrays (not sorted)."""
    etype_s = events[S.EVENT_TYPE].astype(str)
    etype = etype_s.map(EVENT_TYPE_CODES).fillna(EVENT_TYPE_CODES[S.VIEW]).to_numpy(np.int64)
    item = vocab.item_index(events[S.ITEM_ID])
    no_item = events[S.ITEM_ID].isna().to_numpy() | (etype_s == S.SEARCH).to_numpy()
    item = np.where(no_item, NO_ITEM, item)
    price = pd.to_numeric(events[S.PRICE], errors="coerce").to_numpy(float)
    lp = vocab.list_price[np.maximum(item, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        lpr = np.log(price / lp)
    lpr = np.where(np.isfinite(lpr) & (item > 0), lpr, 0.0).astype(np.float32)
    query = (
        vocab.query_index(events[S.QUERY], extra_queries)
        if S.QUERY in events
        else np.zeros(len(events), np.int64)
    )
    return {
        "user": events[S.USER_ID].astype(str).to_numpy(),
        "ts": ts_ns(events[S.TS]),
        "item": item.astype(np.int64),
        "type": etype,
        "lpr": lpr,
        "query": np.where(etype == EVENT_TYPE_CODES[S.SEARCH], query, 0).astype(np.int64),
    }


class HistoryBatcher:
    """Turns a list of offer positions into a batch of tensors (a picklable DataLoader collate_fn).

    Args:
        events: `event_arrays` of every event that may precede an offer.
        offers: the offers (contract columns); `purchased` is optional (serving has no label).
        vocab: index spaces.
        max_len: L, the number of most recent events kept per offer.
    """

    def __init__(
        self,
        events: dict[str, np.ndarray],
        offers: pd.DataFrame,
        vocab: Vocab,
        max_len: int,
    ) -> None:
        self.max_len = max_len
        off_user = offers[S.USER_ID].astype(str).to_numpy()
        codes, uniques = pd.factorize(np.concatenate([events["user"], off_user]))
        ev_user, o_user = codes[: len(events["user"])], codes[len(events["user"]) :]
        o_ts = ts_ns(offers[S.TS])
        # Dense time ranks make a collision-free (user, time) int64 key for one searchsorted.
        _, rank = np.unique(np.concatenate([events["ts"], o_ts]), return_inverse=True)
        width = int(rank.max()) + 2 if len(rank) else 2
        ev_key = ev_user.astype(np.int64) * width + rank[: len(ev_user)]
        o_key = o_user.astype(np.int64) * width + rank[len(ev_user) :]
        order = np.argsort(ev_key, kind="stable")
        ev_key = ev_key[order]
        self.start = np.searchsorted(ev_key, o_user.astype(np.int64) * width, side="left")
        self.end = np.searchsorted(ev_key, o_key, side="left")  # strictly before the offer's ts

        def sorted_(a: np.ndarray, fill: Any) -> np.ndarray:
            # One sentinel row at the end so padded gathers always have something to index.
            return np.concatenate([a[order], np.asarray([fill], dtype=a.dtype)])

        self.ev_ts = sorted_(events["ts"], 0)
        self.ev_item = sorted_(events["item"], 0)
        self.ev_type = sorted_(events["type"], 0)
        self.ev_lpr = sorted_(events["lpr"], 0.0)
        self.ev_query = sorted_(events["query"], 0)
        self.o_ts = o_ts
        self.o_item = vocab.item_index(offers[S.ITEM_ID])
        price = offers[S.PRICE].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            lpr = np.log(price / vocab.list_price[self.o_item])
        self.o_lpr = np.where(np.isfinite(lpr), lpr, 0.0).astype(np.float32)
        self.o_list_price = vocab.list_price[self.o_item]
        self.label = (
            offers[S.PURCHASED].to_numpy(np.float32)
            if S.PURCHASED in offers
            else np.zeros(len(offers), np.float32)
        )

    def __len__(self) -> int:
        return len(self.o_ts)

    def history_length(self) -> np.ndarray:
        """Events strictly before each offer (before truncation to L)."""
        return self.end - self.start

    def __call__(self, idx: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        o = np.asarray(idx, dtype=np.int64)
        length = self.max_len
        pos = self.end[o, None] - length + np.arange(length)[None, :]
        mask = pos >= self.start[o, None]
        p = np.where(mask, pos, len(self.ev_ts) - 1)
        gap_s = (self.o_ts[o, None] - self.ev_ts[p]) / 1e9
        batch = {
            "ev_item": np.where(mask, self.ev_item[p], 0),
            "ev_type": np.where(mask, self.ev_type[p], 0),
            "ev_lpr": np.where(mask, self.ev_lpr[p], 0.0).astype(np.float32),
            "ev_gap": np.where(mask, gap_bucket(gap_s), 0),
            "ev_query": np.where(mask, self.ev_query[p], 0),
            "ev_mask": mask,
            "item": self.o_item[o],
            "lpr": self.o_lpr[o],
            "label": self.label[o],
        }
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


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
