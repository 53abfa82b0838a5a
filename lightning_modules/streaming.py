"""Training batches streamed from shards, so memory is bounded by one shard instead of the data.

A shard is one user bucket: its offers, their feature rows and its events. A bucket holds every
event of its users, so each offer's history is complete inside its shard and the batches built
from a shard are exactly the ones the in-memory path (`PriceDataModule`) builds for the same
offers. Only the catalog, the vocabularies and the text vectors stay in memory.

The shard source is a list of loaders, callables that return one shard's frames. `ParquetShard`
reads the partitioned work files the Dask engine writes (`layout_shards` builds the list from a
layout), `MemoryShard` holds frames already in memory (tests, small data).

Before training, `scan_shards` makes one pass over the shards and keeps only what the model setup
needs (the training offers per shard, the search queries of the query vocabulary, the items
training shows, the purchase rate). `ShardStream` then yields ready batches, one shard at a time
per dataloader worker; see its docstring for how shards are split across ranks and workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays, rank_world, ts_ns
from pricing import io as pio
from pricing import schema as S
from pricing.partitions import user_bucket

POS = pio.ROW_POSITION
ShardFrames = tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]  # offers, features, events
ShardLoader = Callable[[], ShardFrames]
Batch = dict[str, torch.Tensor]


def _read_parquet(path: Path) -> pd.DataFrame | None:
    """A shard's file or folder in the input's row order, without the position column."""
    df = pio.read_in_order(path)
    return None if df is None else df.drop(columns=POS, errors="ignore")


@dataclass(frozen=True)
class ParquetShard:
    """Loads one shard from Parquet: offers and events as a file or a folder of files, features
    as one file with a row per offer in the offers' order (None: not read, BERT alone does not
    need them). Picklable, so dataloader workers receive paths, never data."""

    offers: Path
    events: Path
    features: Path | None = None

    def __call__(self) -> ShardFrames:
        offers = _read_parquet(Path(self.offers))
        if offers is None:
            return pio.empty_table(S.OFFERS), None, pio.empty_table(S.EVENTS)
        events = _read_parquet(Path(self.events))
        feats = None if self.features is None else _read_parquet(Path(self.features))
        if feats is not None and len(feats) != len(offers):
            raise ValueError(f"{self.features}: {len(feats)} feature rows for {len(offers)} offers")
        return offers, feats, pio.empty_table(S.EVENTS) if events is None else events


class BucketLayout(Protocol):
    """Where partitioned work files live (`tasks.partitioned.Layout` has this shape)."""

    @property
    def buckets(self) -> int: ...

    def bucket_dir(self, table: str, bucket: int) -> Path: ...

    def features_path(self, bucket: int) -> Path: ...


def layout_shards(layout: BucketLayout, features: bool = False) -> list[ParquetShard]:
    """One `ParquetShard` per user bucket of `layout` (empty buckets load as empty shards)."""
    return [
        ParquetShard(
            layout.bucket_dir(S.OFFERS, b),
            layout.bucket_dir(S.EVENTS, b),
            layout.features_path(b) if features else None,
        )
        for b in range(layout.buckets)
    ]


@dataclass(frozen=True)
class MemoryShard:
    """One shard whose frames are already in memory."""

    offers: pd.DataFrame
    events: pd.DataFrame
    features: pd.DataFrame | None = None

    def __call__(self) -> ShardFrames:
        return self.offers, self.features, self.events


def memory_shards(
    offers: pd.DataFrame,
    events: pd.DataFrame,
    n_shards: int,
    features: pd.DataFrame | None = None,
) -> list[MemoryShard]:
    """In-memory tables cut into `n_shards` user buckets (`pricing.partitions.user_bucket`, as
    the Dask engine cuts them), each keeping its rows' order."""
    o_bucket = user_bucket(offers[S.USER_ID].astype(str), n_shards)
    e_bucket = user_bucket(events[S.USER_ID].astype(str), n_shards)
    out = []
    for b in range(n_shards):
        rows = np.flatnonzero(o_bucket == b)
        out.append(
            MemoryShard(
                offers.iloc[rows].reset_index(drop=True),
                events.iloc[np.flatnonzero(e_bucket == b)].reset_index(drop=True),
                None if features is None else features.iloc[rows].reset_index(drop=True),
            )
        )
    return out


@dataclass
class Shards:
    """The training data as shards: what `BertDemand.fit` streams instead of a `PricingData`.

    Args:
        loaders: one callable per shard returning its (offers, features or None, events); every
            event of a shard's users must be in that shard.
        items: the catalog (kept in memory).
        train_until: training offers are those with `ts < train_until` (the validation split's
            start, as `pricing.split.split_at` cuts); None: every offer of the shards.
    """

    loaders: Sequence[ShardLoader]
    items: pd.DataFrame
    train_until: pd.Timestamp | None = None

    def __len__(self) -> int:
        return len(self.loaders)

    def load(self, k: int) -> ShardFrames:
        """Shard `k` with only its training offers (and their feature rows); all its events."""
        offers, feats, events = self.loaders[k]()
        if self.train_until is not None and len(offers):
            cut = pd.Timestamp(self.train_until)
            cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
            keep = (pd.to_datetime(offers[S.TS], utc=True) < cut).to_numpy()
            if not keep.all():
                rows = np.flatnonzero(keep)
                offers = offers.iloc[rows].reset_index(drop=True)
                feats = None if feats is None else feats.iloc[rows].reset_index(drop=True)
        return offers, feats, events


@dataclass
class ShardScan:
    """What one pass over the shards keeps for the model setup: nothing of the size of the data.

    Attributes:
        counts: training offers per shard.
        purchases: purchases among the training offers.
        queries: each search query of the shards' events and when it was first searched (the
            query vocabulary's source: only queries searched by the last offer fitted on count).
        offered: item ids of the training offers.
        first_event: per item id, its earliest event (int64 ns).
        last_offer: the last training offer (int64 ns), None without training offers.
    """

    counts: np.ndarray
    purchases: float = 0.0
    queries: dict[str, int] = field(default_factory=dict)  # query -> first search (ns UTC)
    offered: set[str] = field(default_factory=set)
    first_event: dict[str, int] = field(default_factory=dict)
    last_offer: int | None = None

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def rate(self) -> float:
        return self.purchases / self.n if self.n else float("nan")

    def seen(self, vocab: Vocab) -> np.ndarray:
        """`demand.seen_items` from the scan: items offered in training or in an event up to the
        last training offer, as 1-based vocabulary indices."""
        end = self.last_offer
        early = [i for i, t in self.first_event.items() if end is not None and t <= end]
        ids = sorted(self.offered.union(early))
        idx = vocab.item_index(ids)
        return np.unique(idx[idx > 0])


def scan_shards(shards: Shards, text: bool = True) -> ShardScan:
    """One pass over `shards`, one shard in memory at a time; `text=False` skips the queries."""
    scan = ShardScan(np.zeros(len(shards), np.int64))
    for k in range(len(shards)):
        offers, _, events = shards.load(k)
        scan.counts[k] = len(offers)
        if len(offers):
            scan.purchases += float(offers[S.PURCHASED].astype(float).sum())
            scan.offered.update(offers[S.ITEM_ID].dropna().astype(str))
            last = int(ts_ns(offers[S.TS]).max())
            scan.last_offer = last if scan.last_offer is None else max(scan.last_offer, last)
        if not len(events):
            continue
        if text and S.QUERY in events:
            search = events[S.EVENT_TYPE].astype(str) == S.SEARCH
            found = pd.DataFrame(
                {
                    "q": events.loc[search, S.QUERY].astype(object),
                    "ts": ts_ns(events.loc[search, S.TS]),
                }
            ).dropna(subset=["q"])
            found = found[found["q"].astype(str) != ""]
            for q, t in found.groupby(found["q"].astype(str))["ts"].min().items():
                old = scan.queries.get(str(q))
                scan.queries[str(q)] = int(t) if old is None else min(old, int(t))
        ev = pd.DataFrame(
            {"item": events[S.ITEM_ID].astype(object), "ts": ts_ns(events[S.TS])}
        ).dropna(subset=["item"])
        first = ev.assign(item=ev["item"].astype(str)).groupby("item")["ts"].min()
        for item, t in zip(first.index, first.to_numpy(), strict=True):
            old = scan.first_event.get(item)
            scan.first_event[item] = int(t) if old is None else min(old, int(t))
    return scan


@dataclass
class Unit:
    """What one dataloader worker of one rank yields in one epoch: its shards in order, the sizes
    of its batches over their training offers (rows run on across shards), and how many times
    its last batch is yielded again (padding, only when a rank has fewer offers than steps)."""

    shards: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    repeat: int = 0

    @property
    def batches(self) -> int:
        return len(self.sizes) + self.repeat


def assign_ranks(counts: np.ndarray, world: int, seed: int) -> list[list[int]]:
    """The shards of each rank, fixed for the whole run: the non-empty shards, largest first (ties
    in a seeded order), each to the rank with the fewest offers so far.

    Raises:
        ValueError: fewer non-empty shards than ranks (a rank would have nothing to train on).
    """
    full = np.flatnonzero(np.asarray(counts) > 0)
    if len(full) < world:
        raise ValueError(
            f"{len(full)} non-empty shards for {world} ranks: need one per rank at least"
        )
    order = np.random.default_rng([seed, 0x5EED]).permutation(full)
    order = order[np.argsort(-np.asarray(counts)[order], kind="stable")]
    load = np.zeros(world, np.int64)
    ranks: list[list[int]] = [[] for _ in range(world)]
    for k in order:
        r = int(np.argmin(load))
        ranks[r].append(int(k))
        load[r] += int(counts[k])
    return ranks


def steps_per_epoch(
    counts: np.ndarray, ranks: list[list[int]], batch_size: int, workers: int
) -> int:
    """Batches every rank yields per epoch: enough for the fullest rank however its shards fall
    on its workers (each worker's last batch may be partial, hence up to workers - 1 more)."""
    steps = 0
    for shards in ranks:
        n = int(np.asarray(counts)[shards].sum())
        steps = max(steps, math.ceil(n / batch_size) + min(workers, len(shards)) - 1)
    return steps


def plan_epoch(
    counts: np.ndarray,
    shards: list[int],
    steps: int,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    rank: int,
) -> list[Unit]:
    """The units (one per worker) of one rank in one epoch, `steps` batches in all.

    The rank's shards are shuffled by (seed, epoch, rank) and dealt in that order, each to the
    worker with the fewest offers so far. Each worker cuts its offers into full batches and one
    partial batch; if the rank then has fewer than `steps` batches, its largest batches are
    halved one at a time until it has (every offer still yielded exactly once). Only a rank with
    fewer offers than `steps` cannot get there: its first worker repeats its last batch.
    """
    counts = np.asarray(counts)
    order = np.random.default_rng([seed, epoch, rank, 0xE90C]).permutation(np.asarray(shards, int))
    units = [Unit() for _ in range(max(workers, 1))]
    load = np.zeros(len(units), np.int64)
    for k in order:
        w = int(np.argmin(load))
        units[w].shards.append(int(k))
        load[w] += int(counts[k])
    for u, n in zip(units, load, strict=True):
        u.sizes = [batch_size] * (int(n) // batch_size) + (
            [int(n) % batch_size] if n % batch_size else []
        )
    extra = steps - sum(len(u.sizes) for u in units)
    while extra > 0:
        best: tuple[int, int, int] | None = None  # (size, unit, position)
        for ui, u in enumerate(units):
            for j, s in enumerate(u.sizes):
                if s >= 2 and (best is None or s > best[0]):
                    best = (s, ui, j)
        if best is None:
            break
        s, ui, j = best
        units[ui].sizes[j : j + 1] = [s - s // 2, s // 2]
        extra -= 1
    if extra > 0:
        first = next(u for u in units if u.sizes)
        first.repeat = extra
    if extra < 0:
        raise AssertionError(f"rank {rank} has {steps - extra} batches for {steps} steps")
    return units


def _concat(pieces: list[Batch]) -> Batch:
    """One batch from pieces built by different shards' batchers: histories (left-padded) are
    padded on the left to the widest piece, then every tensor is concatenated."""
    if len(pieces) == 1:
        return pieces[0]
    out: Batch = {}
    for key in pieces[0]:
        parts = [p[key] for p in pieces]
        if key.startswith("ev_"):
            width = max(t.shape[1] for t in parts)
            padded = []
            for t in parts:
                if t.shape[1] < width:
                    pad = torch.zeros((t.shape[0], width - t.shape[1]), dtype=t.dtype)
                    t = torch.cat([pad, t], dim=1)
                padded.append(t)
            parts = padded
        out[key] = torch.cat(parts)
    return out


class ShardStream(IterableDataset):
    """Ready training batches from shards, one shard in memory at a time per dataloader worker.

    Every batch holds the tensors `HistoryBatcher` builds for its offers in the in-memory path
    (the same vocabulary, `max_len`, trimming and event encoding; each shard has its users' whole
    history). Use it with `stream_loader` (batch_size=None: the dataset batches).

    Splitting: the non-empty shards go to ranks once for the run (`assign_ranks`, balanced by
    training offers); each epoch a rank shuffles its shards and deals them to its dataloader
    workers; each worker reads its shards one after the other, shuffles each shard's rows, and
    cuts the rows into batches that run on across its shards. So every training offer is yielded
    exactly once per epoch across all ranks and workers. DDP needs the same number of steps on
    every rank: each rank yields `len(self)` batches (`steps_per_epoch`, the fullest rank's
    count plus room for each worker's partial last batch); a rank with fewer batches halves its
    largest ones until it has that many. Only when a rank holds fewer offers than steps (shards of
    very different sizes) does it pad, by repeating its last batch.

    Order: a function of (seed, epoch) alone; `set_epoch` is called before every pass (by
    `stream_loader`, whose workers are started per epoch so they receive it), and `resume_at`
    skips the batches a resumed run has already trained on (shards wholly inside them are not
    even read).

    Args:
        shards: the training shards.
        counts: training offers per shard (`ShardScan.counts`).
        vocab, max_len, trim: as for `HistoryBatcher`.
        batch_size: offers per batch (fewer in a worker's last batch and in halved batches).
        seed: the data-order seed.
        sequence: False feeds no events (the no-history ablation).
        num_workers: the dataloader's workers (the step count allows for their partial batches).
        wide: (offers, features, events) -> the shard's wide rows, or None for no wide input.
        rank, world: this process's rank and the world size; None: from torch.distributed.
    """

    def __init__(
        self,
        shards: Shards,
        counts: np.ndarray,
        vocab: Vocab,
        max_len: int,
        batch_size: int,
        seed: int = 0,
        trim: bool = False,
        sequence: bool = True,
        num_workers: int = 0,
        wide: Callable[[pd.DataFrame, pd.DataFrame | None, pd.DataFrame], np.ndarray] | None = None,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        if len(counts) != len(shards):
            raise ValueError(f"{len(counts)} counts for {len(shards)} shards")
        self.shards = shards
        self.counts = np.asarray(counts, np.int64)
        self.vocab = vocab
        self.max_len = max_len
        self.batch_size = max(int(batch_size), 1)
        self.seed = seed
        self.trim = trim
        self.sequence = sequence
        self.num_workers = num_workers
        self.wide = wide
        self.rank, self.world = rank, world
        self.epoch = 0
        self.resume_epoch = -1
        self.resume_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass over `epoch` start after this rank's first `batches` batches."""
        self.resume_epoch, self.resume_batches = int(epoch), int(batches)

    def _rank_world(self) -> tuple[int, int]:
        rank, world = rank_world()
        return (rank if self.rank is None else self.rank), (
            world if self.world is None else self.world
        )

    def ranks(self) -> list[list[int]]:
        """The shards of every rank (fixed for the run)."""
        return assign_ranks(self.counts, self._rank_world()[1], self.seed)

    def __len__(self) -> int:
        workers = max(self.num_workers, 1)
        return steps_per_epoch(self.counts, self.ranks(), self.batch_size, workers)

    def plan(self, epoch: int | None = None) -> list[Unit]:
        """This rank's units (one per worker) of `epoch` (default: the current one)."""
        rank, _ = self._rank_world()
        ranks = self.ranks()
        workers = max(self.num_workers, 1)
        steps = steps_per_epoch(self.counts, ranks, self.batch_size, workers)
        epoch = self.epoch if epoch is None else epoch
        return plan_epoch(
            self.counts, ranks[rank], steps, self.batch_size, workers, self.seed, epoch, rank
        )

    def schedule(self, units: list[Unit]) -> tuple[list[int], list[int]]:
        """(batches each unit skips, the unit each worker serves) for this pass.

        The DataLoader takes batches from its workers round robin, skipping workers that are done.
        A resumed pass skips the rank's first `resume_batches` batches in that order and hands the
        units still running to workers starting from the one whose turn is next, so the batches
        after the restore come in the order the uninterrupted run would have taken them.
        """
        skip = [0] * len(units)
        left = self.resume_batches if self.epoch == self.resume_epoch else 0
        active = [w for w, u in enumerate(units) if u.batches]
        pos = 0
        while left > 0 and active:
            w = active[pos]
            skip[w] += 1
            left -= 1
            if skip[w] == units[w].batches:
                active.pop(pos)
                pos = pos % len(active) if active else 0
            else:
                pos = (pos + 1) % len(active)
        return skip, active[pos:] + active[:pos]

    def _batcher(self, k: int) -> HistoryBatcher:
        offers, feats, events = self.shards.load(k)
        if not self.sequence:
            events = events.iloc[:0]
        wide = None if self.wide is None else self.wide(offers, feats, events)
        batcher = HistoryBatcher(
            event_arrays(events, self.vocab), offers, self.vocab, self.max_len, self.trim, wide
        )
        if len(batcher) != self.counts[k]:
            raise RuntimeError(
                f"shard {k} has {len(batcher)} training offers, {self.counts[k]} when scanned"
            )
        return batcher

    def _rows(self, k: int) -> np.ndarray:
        """Shard `k`'s rows in this epoch's order."""
        rng = np.random.default_rng([self.seed, self.epoch, k, 0x5B0F])
        return rng.permutation(int(self.counts[k]))

    def unit_batches(self, unit: Unit, skip: int = 0) -> Iterator[Batch]:
        """The batches of one unit from its `skip`-th on."""
        if not unit.sizes:
            return
        bounds = np.concatenate([[0], np.cumsum(unit.sizes)])
        b = min(skip, len(unit.sizes) - 1)  # a resumed pass inside the repeats rebuilds the last
        row0 = 0  # the unit's row at which the current shard starts
        pending: list[Batch] = []
        last: Batch | None = None
        for k in unit.shards:
            n = int(self.counts[k])
            if b >= len(unit.sizes) or row0 + n <= bounds[b]:
                row0 += n  # wholly inside skipped batches: not even read
                continue
            batcher = self._batcher(k)
            rows = self._rows(k)
            while b < len(unit.sizes):
                start, stop = max(int(bounds[b]), row0), min(int(bounds[b + 1]), row0 + n)
                if stop > start:
                    pending.append(batcher(rows[start - row0 : stop - row0]))
                if stop < bounds[b + 1]:
                    break  # the batch runs on into the next shard
                last, pending = _concat(pending), []
                if b >= skip:
                    yield last
                b += 1
            row0 += n
            del batcher
        for i in range(unit.repeat):
            if len(unit.sizes) + i >= skip and last is not None:
                yield last

    def __iter__(self) -> Iterator[Batch]:
        units = self.plan()
        skips, serve = self.schedule(units)
        self.resume_epoch = -1  # only the first pass after a restore is partial
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != len(units):
            raise ValueError(
                f"the stream was sized for {len(units)} workers, the loader has {workers}"
            )
        if worker < len(serve):
            u = serve[worker]
            yield from self.unit_batches(units[u], skips[u])


class StreamLoader(DataLoader):
    """The DataLoader of a `ShardStream`: sets the stream's epoch before each pass.

    Workers are not persistent: they start at every pass and so receive the stream with the
    epoch (and the resume point) set.
    """

    def __init__(
        self,
        stream: ShardStream,
        epoch: Callable[[], int],
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            stream,
            batch_size=None,
            num_workers=stream.num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )
        self._epoch = epoch

    def __iter__(self) -> Any:
        cast(ShardStream, self.dataset).set_epoch(self._epoch())
        return super().__iter__()
