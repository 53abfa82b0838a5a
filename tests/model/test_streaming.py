"""Streamed training batches: the same samples as the in-memory path, split across ranks/workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from bert_fixtures import TINY_BERT

from lightning_modules.demand import seen_items
from lightning_modules.sequences import HistoryBatcher, Vocab, event_arrays
from lightning_modules.streaming import (
    Shards,
    ShardStream,
    StreamLoader,
    assign_ranks,
    layout_shards,
    memory_shards,
    plan_epoch,
    scan_shards,
    steps_per_epoch,
)
from mlops.models import PricingData
from pricing import schema as S
from pricing.simulator import Market
from pricing.split import time_split

MAX_LEN = 16
KEYS = ("ev_item", "ev_type", "ev_lpr", "ev_gap", "ev_query", "ev_mask", "item", "lpr", "label")


def rows(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """One hashable key per offer of a batch: every tensor's row, byte for byte."""
    arrays = [batch[k].numpy() for k in KEYS]
    return [b"|".join(a[i].tobytes() for a in arrays) for i in range(len(arrays[-1]))]


@pytest.fixture(scope="module")
def market(tiny_market: Market) -> dict[str, Any]:
    """The tiny market as shards (7: an uneven number) plus its in-memory training split."""
    t = tiny_market
    offers, events = t.tables["offers"], t.tables["events"]
    split = time_split(offers)
    train = PricingData(offers.iloc[split.train].reset_index(drop=True), t.tables["items"], events)
    shards = Shards(memory_shards(offers, events, 7), t.tables["items"], split.valid_start)
    queries = events.loc[events[S.EVENT_TYPE].astype(str) == S.SEARCH, S.QUERY]
    vocab = Vocab.build(t.tables["items"], queries.dropna().astype(str).unique().tolist())
    batcher = HistoryBatcher(event_arrays(events, vocab), train.offers, vocab, MAX_LEN)
    expected = Counter(rows(batcher(np.arange(len(batcher)))))
    return {"train": train, "shards": shards, "vocab": vocab, "expected": expected}


def test_scan_gives_the_in_memory_setup(market: dict[str, Any]) -> None:
    train, vocab = market["train"], market["vocab"]
    scan = scan_shards(market["shards"])
    assert scan.n == len(train)
    assert scan.rate == pytest.approx(train.offers[S.PURCHASED].mean())
    assert sorted(scan.queries) == vocab.queries
    np.testing.assert_array_equal(scan.seen(vocab), seen_items(train, vocab))


def test_one_epoch_streams_exactly_the_in_memory_samples(market: dict[str, Any]) -> None:
    shards, vocab = market["shards"], market["vocab"]
    stream = ShardStream(shards, scan_shards(shards).counts, vocab, MAX_LEN, 64, rank=0, world=1)
    batches = list(stream)
    assert len(batches) == len(stream)
    assert all(len(b["item"]) <= 64 for b in batches)
    assert Counter(r for b in batches for r in rows(b)) == market["expected"]
    stream.set_epoch(1)  # another epoch: the same samples in another order
    again = list(stream)
    assert Counter(r for b in again for r in rows(b)) == market["expected"]
    assert rows(again[0]) != rows(batches[0])


def test_two_ranks_two_workers_see_every_offer_once(market: dict[str, Any]) -> None:
    shards, vocab = market["shards"], market["vocab"]
    counts = scan_shards(shards).counts
    seen: Counter[bytes] = Counter()
    lengths = []
    for rank in range(2):
        stream = ShardStream(
            shards, counts, vocab, MAX_LEN, 64, num_workers=2, rank=rank, world=2, trim=True
        )
        batches = list(StreamLoader(stream, lambda: 3))
        assert len(batches) == len(stream)
        lengths.append(len(batches))
        for b in batches:  # trimmed batches: pad back to MAX_LEN to compare with the full rows
            width = b["ev_item"].shape[1]
            for k in KEYS[:6]:
                pad = torch.zeros((len(b[k]), MAX_LEN - width), dtype=b[k].dtype)
                b[k] = torch.cat([pad, b[k]], dim=1)
            seen.update(rows(b))
    assert lengths[0] == lengths[1]
    assert seen == market["expected"]


def test_uneven_shards_give_every_rank_the_same_steps() -> None:
    counts = np.array([1000, 30, 25, 0, 3])
    ranks = assign_ranks(counts, 2, seed=0)
    assert sorted(sum(ranks, [])) == [0, 1, 2, 4]  # empty shards go nowhere
    steps = steps_per_epoch(counts, ranks, 128, workers=2)
    for r, shards in enumerate(ranks):
        units = plan_epoch(counts, shards, steps, 128, 2, seed=0, epoch=0, rank=r)
        assert sum(u.batches for u in units) == steps
        assert sum(sum(u.sizes) for u in units) == counts[shards].sum()  # each offer once...
        if counts[shards].sum() < steps:  # ...padded by repeats only when a rank has too few
            assert sum(u.repeat for u in units) == steps - counts[shards].sum()
    with pytest.raises(ValueError, match="non-empty shards"):
        assign_ranks(np.array([5, 0]), 2, seed=0)


def test_resume_skips_the_batches_done(market: dict[str, Any]) -> None:
    shards, vocab = market["shards"], market["vocab"]
    counts = scan_shards(shards).counts
    stream = ShardStream(shards, counts, vocab, MAX_LEN, 64, rank=0, world=1)
    stream.set_epoch(2)
    full = [rows(b) for b in stream]
    stream.resume_at(2, 5)
    assert [rows(b) for b in stream] == full[5:]
    assert len(list(stream)) == len(full)  # only the first pass after a restore is partial
    # with workers: the resumed loader takes the rest in the uninterrupted loader's order
    stream = ShardStream(shards, counts, vocab, MAX_LEN, 64, num_workers=2, rank=0, world=1)
    full = [rows(b) for b in StreamLoader(stream, lambda: 2)]
    stream.resume_at(2, 7)
    assert [rows(b) for b in StreamLoader(stream, lambda: 2)] == full[7:]


def test_parquet_shards_load_the_bucket_files(tiny_market: Market, tmp_path: Path) -> None:
    from tasks.partitioned import POS, Layout

    offers, events = tiny_market.tables["offers"], tiny_market.tables["events"]
    layout = Layout(tmp_path, 3)
    for table, df in ((S.OFFERS, offers), (S.EVENTS, events)):
        for b, shard in enumerate(memory_shards(df, df, 3)):  # the same bucketing both ways
            part = shard.offers.assign(**{POS: np.arange(len(shard.offers))})
            out = layout.bucket_dir(table, b)
            out.mkdir(parents=True)
            part.iloc[::-1].to_parquet(out / "part-00000.parquet", index=False)  # _pos restores
    for loaded, mem in zip(layout_shards(layout), memory_shards(offers, events, 3), strict=True):
        o, f, e = loaded()
        assert f is None
        pd.testing.assert_frame_equal(o, mem.offers, check_dtype=False)
        pd.testing.assert_frame_equal(e, mem.events, check_dtype=False)


def test_short_streamed_fit_gives_a_usable_model(
    tiny_splits: tuple[PricingData, PricingData, PricingData], market: dict[str, Any]
) -> None:
    from lightning_modules.demand import BertDemand

    _, valid, test = tiny_splits
    model = BertDemand({**TINY_BERT, "max_epochs": 2}, seed=0)
    diag = model.fit(market["shards"], valid)
    steps = -(-len(market["train"]) // TINY_BERT["batch_size"])  # one rank, no workers
    assert diag["steps"] == 2 * steps
    assert np.isfinite(diag["best_val_loss"])  # validation ran, in memory
    p = model.predict(test)
    assert p.shape == (len(test),) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    # The query vocabulary holds what was searched up to the last offer the fit saw (the
    # validation split's), as in memory: no query first searched after it.
    from lightning_modules.demand import searched_queries

    events = market["train"].events
    end = pd.to_datetime(valid.offers[S.TS], utc=True).max()
    want = Vocab.build(
        market["train"].items, searched_queries(events, end).dropna().astype(str).unique().tolist()
    )
    assert model.vocab is not None and model.vocab.queries == want.queries
    assert set(model.vocab.queries) < set(market["vocab"].queries)  # later searches left out
