"""History windows: offers + the user's events strictly before each offer, gathered per batch.

Histories are not materialized per offer: events are sorted by (user, ts) once, each offer keeps the
[start, end) range of its user's earlier events (np.searchsorted, side="left", so an event at the
offer's own ts is excluded), and a batch gathers its last L events in one vectorized step. Shared
by training (the datamodule), batch prediction and serving, so all three see the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from pricing import schema as S

# Event-type codes: 0 pads, then the contract's types in order (unknown types read as views).
EVENT_TYPE_CODES: dict[str, int] = {t: k + 1 for k, t in enumerate(S.EVENT_TYPES)}
N_EVENT_TYPES = len(S.EVENT_TYPES) + 1
N_GAP_BUCKETS = 24  # log2 buckets of seconds before the offer: 2^23 s is about 97 days
NO_ITEM = -1  # event item index of a search (or any event without an item); 0 = unknown item


def gap_bucket(seconds: np.ndarray) -> np.ndarray:
    """Log2-bucketed time gap: 0 for under a second, then one bucket per doubling."""
    s = np.maximum(np.nan_to_num(np.asarray(seconds, float), nan=0.0), 0.0)
    return np.minimum(np.floor(np.log2(1.0 + s)), N_GAP_BUCKETS - 1).astype(np.int64)


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
        idx = pd.Index(self.item_ids).get_indexer(
            pd.Index(pd.Series(ids, dtype=object).astype(str))
        )
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
        trim: cut the all-padding left columns of each batch (its width becomes the batch's longest
            true history, at least 1). Histories are left-padded and positions count from the
            newest event, so a trimmed batch gives the same outputs up to float noise (dropout
            aside: its masks are drawn per tensor shape) while the transformer runs on fewer tokens.
        wide: (n_offers, k) float32 wide features per offer (wide & deep), batched as "wide".
    """

    def __init__(
        self,
        events: dict[str, np.ndarray],
        offers: pd.DataFrame,
        vocab: Vocab,
        max_len: int,
        trim: bool = False,
        wide: np.ndarray | None = None,
    ) -> None:
        self.max_len = max_len
        self.trim = trim
        if wide is not None and len(wide) != len(offers):
            raise ValueError(f"{len(wide)} wide rows for {len(offers)} offers")
        self.wide = None if wide is None else np.asarray(wide, np.float32)
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
        if self.trim and len(o):
            true = np.minimum(self.end[o] - self.start[o], self.max_len)
            length = max(int(true.max()), 1)
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
        if self.wide is not None:
            batch["wide"] = self.wide[o]
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
