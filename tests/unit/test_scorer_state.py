"""The scorer's online user store and durable offer log, without HTTP."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing import schema as S
from scorer import state as scorer_state
from scorer.offer_log import OUTCOMES_FILE, QUOTES_FILE, OfferLog, OfferLogError, export_offers
from scorer.state import (
    InMemoryUserStore,
    UserStore,
    conforms,
    events_frame,
    hydrate,
    hydrate_data_dir,
)


def _event(k: int, user: str = "u1", etype: str = S.VIEW, query: str | None = None) -> dict:
    return {
        S.EVENT_ID: f"e{k}",
        S.TS: f"2026-01-01T00:00:{k % 60:02d}+00:00",
        S.USER_ID: user,
        S.SESSION_ID: "s1",
        S.EVENT_TYPE: etype,
        S.ITEM_ID: None if etype == S.SEARCH else f"i{k}",
        S.QUERY: query,
        S.PRICE: None if etype == S.SEARCH else 10.0 + k,
    }


def test_store_satisfies_protocol() -> None:
    assert isinstance(InMemoryUserStore(), UserStore)


def test_history_is_bounded_and_ordered() -> None:
    store = InMemoryUserStore(max_user_events=3)
    store.append_events("u1", [_event(k) for k in range(5)])
    events, generation = store.get_events("u1")
    assert len(events) == 3
    assert generation == 1
    assert [e[S.EVENT_ID] for e in events] == ["e2", "e3", "e4"]
    assert store.get_events("nobody") == ([], 0)


def test_state_cache_by_version_and_staleness() -> None:
    store = InMemoryUserStore()
    generation = store.append_events("u1", [_event(0)])
    assert store.get_state("u1", "1") is None
    store.put_state("u1", "1", "state-v1", generation)
    assert store.get_state("u1", "1") == "state-v1"
    assert store.get_state("u1", "2") is None  # cached per model version
    store.mark_stale("u1")
    assert store.get_state("u1", "1") is None


def test_state_computed_from_old_events_is_not_cached() -> None:
    store = InMemoryUserStore()
    _, generation = store.get_events("u1")
    store.append_events("u1", [_event(0)])  # arrives while the old state is being computed
    store.put_state("u1", "1", "old", generation)
    assert store.get_state("u1", "1") is None


def test_last_price_is_per_session_and_lru_bounded() -> None:
    store = InMemoryUserStore(max_last_prices=2)
    store.set_last_price("u1", "s1", {"a": 1.0, "b": 2.0})
    assert store.get_last_price("u1", "s1", "a") == 1.0
    assert store.get_last_price("u1", "s2", "a") is None
    store.set_last_price("u1", "s1", {"c": 3.0})
    assert store.get_last_price("u1", "s1", "a") is None  # evicted, oldest first
    assert store.get_last_price("u1", "s1", "c") == 3.0


def test_events_frame_has_contract_columns() -> None:
    df = events_frame([_event(0), _event(1, etype=S.SEARCH, query="cheap")])
    assert list(df.columns) == S.column_names(S.EVENTS)
    assert str(df[S.TS].dt.tz) == "UTC"
    assert df[S.PRICE].isna().tolist() == [False, True]
    assert len(events_frame([])) == 0


def test_hydrate_keeps_each_users_last_events() -> None:
    rows = [_event(k, user="u1") for k in range(5)] + [_event(k, user="u2") for k in range(5, 7)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # out of order on purpose
    store = InMemoryUserStore(max_user_events=3)
    assert hydrate(store, df, max_user_events=3) == 2
    events, _ = store.get_events("u1")
    assert [e[S.EVENT_ID] for e in events] == ["e2", "e3", "e4"]
    assert len(store.get_events("u2")[0]) == 2
    assert events[0][S.ITEM_ID] == "i2" and events[0][S.QUERY] is None
    assert events_frame(events)[S.TS].is_monotonic_increasing


def test_hydrating_from_a_partitioned_events_table_streams_each_user_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pricing import io as pio

    users = [f"u{k % 7}" for k in range(60)]  # every user's events spread over the three parts
    df = pd.DataFrame([_event(k, user=u) for k, u in enumerate(users)])
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 3)):
        pio.write_part(df.iloc[rows], tmp_path / "data", S.EVENTS, i)
    monkeypatch.setattr(scorer_state, "HYDRATE_BUCKET_ROWS", 20)  # three user buckets
    streamed, whole = InMemoryUserStore(max_user_events=4), InMemoryUserStore(max_user_events=4)
    work = tmp_path / "work"
    assert hydrate_data_dir(streamed, tmp_path / "data", 4, work) == 7
    assert hydrate(whole, df, 4) == 7
    for u in sorted(set(users)):
        assert streamed.get_events(u)[0] == whole.get_events(u)[0]
    assert not work.exists()  # the buckets are removed


def _quote_rows(quote_id: str, items: list[str]) -> list[dict]:
    return [
        {
            S.OFFER_ID: f"{quote_id}:{i}",
            "quote_id": quote_id,
            S.TS: "2026-01-01T00:00:00+00:00",
            S.USER_ID: "u1",
            S.ITEM_ID: i,
            S.PRICE: 9.99,
            S.PROPENSITY: 0.95,
            S.POLICY: "toy@1",
        }
        for i in items
    ]


def test_offer_log_round_trip_and_export(tmp_path) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_quote_rows("q1", ["a", "b"]))
    log.append_quotes(_quote_rows("q2", ["a"]))
    assert [r[S.ITEM_ID] for r in log.find_quote("q1")] == ["a", "b"]
    assert log.find_quote("nope") == []
    row = {**_quote_rows("q1", ["b"])[0], S.PURCHASED: 1}
    log.append_outcome(row)
    log.append_outcome({**row, S.PURCHASED: 0})  # written unchecked: the first report still wins
    log.close()

    offers = export_offers(tmp_path)
    assert list(offers.columns) == S.column_names(S.OFFERS)
    assert len(offers) == 1
    assert offers[S.PURCHASED].tolist() == [1]
    assert offers[S.OFFER_ID].tolist() == ["q1:b"]
    assert str(offers[S.TS].dt.tz) == "UTC"
    pending = export_offers(tmp_path, include_pending=True)
    assert sorted(pending[S.OFFER_ID]) == ["q1:a", "q1:b", "q2:a"]
    assert pending[S.PURCHASED].tolist().count(0) == 2  # q1:b was bought


def test_export_of_an_empty_log_has_contract_columns(tmp_path) -> None:
    offers = export_offers(tmp_path)
    assert list(offers.columns) == S.column_names(S.OFFERS)
    assert len(offers) == 0


def test_export_skips_a_torn_last_line(tmp_path) -> None:
    log = OfferLog(tmp_path)
    log.append_outcome({**_quote_rows("q1", ["a"])[0], S.PURCHASED: 1})
    log.close()
    with open(tmp_path / OUTCOMES_FILE, "a") as f:
        f.write('{"offer_id": "q9:a", "ts"')  # a crash mid-write, never acknowledged
    assert export_offers(tmp_path)[S.OFFER_ID].tolist() == ["q1:a"]


def test_concurrent_appends_are_all_durable_and_whole(tmp_path) -> None:
    log = OfferLog(tmp_path)

    def work(t: int) -> None:
        for k in range(50):
            log.append_quotes(_quote_rows(f"q{t}-{k}", ["a", "b"]))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = (tmp_path / QUOTES_FILE).read_text().splitlines()
    assert len(lines) == 4 * 50 * 2
    assert len({json.loads(line)[S.OFFER_ID] for line in lines}) == len(lines)
    log.close()


@pytest.mark.parametrize("n", [0, 1])
def test_find_quote_in_fresh_log(tmp_path, n: int) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_quote_rows("q1", ["a"] * n))
    assert len(log.find_quote("q1")) == n
    log.close()


# --- issue 13: the store's quote read, atomic hydration, states that do not fit the model ---------


def test_the_quote_read_says_state_generation_history_and_last_prices() -> None:
    store = InMemoryUserStore()
    new = store.read_for_quote("u1", "toy@1", "s1", ["a", "b"])
    assert (new.state, new.generation, new.last_prices, new.has_history) == (
        None,
        0,
        [None, None],
        False,
    )
    generation = store.append_events("u1", [_event(0)])
    store.put_state("u1", "toy@1", 4.0, generation)
    store.set_last_price("u1", "s1", {"a": 9.5})
    got = store.read_for_quote("u1", "toy@1", "s1", ["a", "b"])
    assert (got.state, got.generation, got.last_prices, got.has_history) == (
        4.0,
        generation,
        [9.5, None],
        True,
    )
    assert store.read_for_quote("u1", "toy@1", None, ["a"]).last_prices is None
    store.append_events("u1", [_event(1)])  # a newer history: the cached state is stale
    assert store.read_for_quote("u1", "toy@1", None, []).state is None


def test_hydration_loads_a_user_once_even_when_replicas_race() -> None:
    store = InMemoryUserStore()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def replica() -> None:
        barrier.wait()
        results.append(store.hydrate_user("u1", [_event(k) for k in range(3)]))

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert len(store.get_events("u1")[0]) == 3
    assert store.hydrate_user("u1", [_event(9)]) is False  # known users are never reloaded


def _bert_like() -> np.ndarray:
    return np.zeros(64, np.float32)


@pytest.mark.parametrize(
    ("state", "template", "fits"),
    [
        (3.5, 3.0, True),
        (np.float64(2.0), 3.0, True),
        (float("nan"), 3.0, False),
        ("3.0", 3.0, False),
        (np.ones(5, np.float32), 3.0, False),
        (np.ones(64, np.float32), _bert_like(), True),
        (np.ones(64, np.float64), _bert_like(), True),
        (np.ones(5, np.float32), _bert_like(), False),  # another model's vector
        (np.ones((1, 64), np.float32), _bert_like(), False),
        (np.full(64, np.nan, np.float32), _bert_like(), False),
        (3.0, _bert_like(), False),
        (
            (pd.Series([1.0, 2.0], index=["a", "b"]), {"c1": 2.0}),
            (pd.Series([0.0, 0.0], index=["a", "b"]), {}),
            True,
        ),
        ((pd.Series([1.0], index=["a"]), {}), (pd.Series([0.0, 0.0], index=["a", "b"]), {}), False),
        (
            (pd.Series([1.0, 2.0], index=["a", "b"]), {"c1": "x"}),
            (pd.Series([0.0, 0.0], index=["a", "b"]), {}),
            False,
        ),
        ([1.0, 2.0], (1.0, 2.0), False),
    ],
)
def test_a_state_fits_the_model_only_with_its_type_and_shape(state, template, fits: bool) -> None:
    assert conforms(state, template) is fits


def test_every_models_computed_states_fit_its_cold_state(tiny_market) -> None:
    from mlops.models import LogisticDemand, PricingData
    from pricing import features as F
    from scorer.testing import ToyDemand, toy_catalog

    t = tiny_market.tables
    data = PricingData(t[S.OFFERS], t[S.ITEMS], t[S.EVENTS])
    data.features = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
    logistic = LogisticDemand()
    logistic.fit(data)
    users = t[S.EVENTS][S.USER_ID].drop_duplicates().head(20)
    for model in (logistic, ToyDemand(toy_catalog(10))):
        cold = model.user_state(events_frame([]))
        for user in users:
            events = t[S.EVENTS][t[S.EVENTS][S.USER_ID] == user]
            assert conforms(model.user_state(events), cold), (type(model).__name__, user)


# --- issue 13: one writer slot per process, merged readers, group commit ---------------------------


def test_each_writer_gets_its_own_files_and_readers_merge_them(tmp_path) -> None:
    a, b = OfferLog(tmp_path), OfferLog(tmp_path)
    assert (a.slot, b.slot) == (0, 1)
    assert a.quotes_path.name == QUOTES_FILE and b.quotes_path.name == "quotes.1.jsonl"
    a.append_quotes(_quote_rows("qa", ["x", "y"]))
    b.append_quotes(_quote_rows("qb", ["x"]))
    # an outcome for A's quote, reported to B, lands in B's file
    offer = {r[S.ITEM_ID]: r for r in b.find_quote("qa")}["y"]
    b.append_outcome({**offer, S.PURCHASED: 1, "outcome_ts": "2026-01-02T00:00:00+00:00"})
    a.append_outcome(
        {**a.find_quote("qb")[0], S.PURCHASED: 0, "outcome_ts": "2026-01-02T00:00:01+00:00"}
    )
    assert [r[S.ITEM_ID] for r in a.find_quote("qa")] == ["x", "y"]
    # later contradicting reports to either writer do not flip it, whatever the file order
    b.append_outcome({**offer, S.PURCHASED: 0, "outcome_ts": "2026-01-02T00:00:02+00:00"})
    a.append_outcome({**offer, S.PURCHASED: 1, "outcome_ts": "2026-01-02T00:00:03+00:00"})
    for log in (a, b):
        log.close()
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "outcomes.1.jsonl",
        "outcomes.jsonl",
        "quotes.1.jsonl",
        "quotes.jsonl",
    ]
    offers = export_offers(tmp_path)
    assert dict(zip(offers[S.OFFER_ID], offers[S.PURCHASED], strict=True)) == {
        "qa:y": 1,
        "qb:x": 0,
    }
    pending = export_offers(tmp_path, include_pending=True)
    assert sorted(pending[S.OFFER_ID]) == ["qa:x", "qa:y", "qb:x"]
    again = OfferLog(tmp_path)  # a restarted process takes slot 0 back, and its file
    assert again.slot == 0 and [r[S.ITEM_ID] for r in again.find_quote("qb")] == ["x"]
    again.close()


def test_concurrent_quotes_on_the_event_loop_share_batched_writes(tmp_path) -> None:
    log = OfferLog(tmp_path)

    async def many() -> None:
        await asyncio.gather(
            *(log.append_quotes_async(_quote_rows(f"q{k}", ["a", "b"])) for k in range(200))
        )

    asyncio.run(many())
    batches, records = log.batch_stats
    assert records == 200 and batches < 200  # fewer writes than appends
    for k in (0, 77, 199):  # indexed as written, offsets and all
        assert [r[S.ITEM_ID] for r in log.find_quote(f"q{k}")] == ["a", "b"]
    log.close()
    lines = (tmp_path / QUOTES_FILE).read_text().splitlines()
    assert len(lines) == 400 and len({json.loads(x)[S.OFFER_ID] for x in lines}) == 400


def test_a_failed_batch_answers_every_caller_and_leaves_whole_lines(tmp_path, monkeypatch) -> None:
    log = OfferLog(tmp_path)
    real = os.write
    fail = {"on": False, "calls": 0}

    def flaky(fd: int, data: bytes) -> int:
        if fail["on"] and fd == log._quotes._fd:
            fail["calls"] += 1
            if fail["calls"] == 1:  # a third of the batch gets in, then the disk is full
                return real(fd, bytes(data)[: len(data) // 3])
            fail["on"] = False
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", flaky)

    async def batch(prefix: str) -> list[BaseException | None]:
        return await asyncio.gather(
            *(log.append_quotes_async(_quote_rows(f"{prefix}{k}", ["a"])) for k in range(10)),
            return_exceptions=True,
        )

    async def run() -> tuple[list, list]:
        first = await batch("ok")
        fail["on"] = True
        return first, await batch("bad")

    first, second = asyncio.run(run())
    assert all(r is None for r in first)
    assert all(isinstance(r, OfferLogError) for r in second)  # nobody in the batch acknowledged
    asyncio.run(batch("after"))
    log.close()
    rows = [json.loads(x) for x in (tmp_path / QUOTES_FILE).read_text().splitlines()]
    assert [r["quote_id"][:2] for r in rows] == ["ok"] * 10 + ["af"] * 10


_KILL_CHILD = """
import asyncio, os, signal, sys
from scorer.offer_log import OfferLog

log = OfferLog(sys.argv[1])
real = os.write
writes = 0


def dying_write(fd, data):
    global writes
    if fd == log._quotes._fd:
        writes += 1
        if writes == int(sys.argv[2]):  # half of this batch reaches the file, then kill -9
            real(fd, bytes(data)[: len(data) // 2 + 7])  # (never on a line boundary)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(fd, data)


os.write = dying_write


def rows(q):
    return [{"offer_id": f"{q}:{i}", "quote_id": q, "ts": "2026-01-01T00:00:00+00:00",
             "user_id": "u", "item_id": i, "price": 1.0, "propensity": 1.0, "policy": "p"}
            for i in ("a", "b", "c")]


async def quote(q):
    await log.append_quotes_async(rows(q))
    print(q, flush=True)  # acknowledged: only after the batch's write returned


async def main():
    for wave in range(100):
        await asyncio.gather(*(quote(f"w{wave}q{k}") for k in range(8)))


asyncio.run(main())
"""


@pytest.mark.parametrize("kill_at", [1, 5, 23])
def test_kill_9_during_a_batched_write_loses_no_acknowledged_line(tmp_path, kill_at: int) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _KILL_CHILD, str(tmp_path), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    acked = set(out.stdout.split())
    assert len(acked) == 8 * (kill_at - 1)  # every batch before the torn one, none of it
    data = (tmp_path / QUOTES_FILE).read_bytes()
    assert not data.endswith(b"\n")  # the torn batch is on disk, half written
    logged = export_offers(tmp_path, include_pending=True)
    quoted = set(logged["offer_id"].str.split(":").str[0])
    assert acked <= quoted  # no acknowledged quote lost
    assert logged.attrs["skipped_lines"] <= 1  # the torn line only
    again = OfferLog(tmp_path)  # the next process starts on a fresh line
    again.append_quotes(_quote_rows("after", ["a"]))
    assert [r[S.ITEM_ID] for r in again.find_quote("after")] == ["a"]
    again.close()
    assert "after:a" in set(export_offers(tmp_path, include_pending=True)["offer_id"])


def test_group_commit_with_fsync_always_syncs_before_answering(tmp_path, monkeypatch) -> None:
    log = OfferLog(tmp_path, fsync="always")
    fsyncs: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        fsyncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)

    async def many() -> None:
        await asyncio.gather(
            *(log.append_quotes_async(_quote_rows(f"q{k}", ["a"])) for k in range(50))
        )
        appender = log._quotes
        assert appender._synced == appender._written  # every answered batch is on disk

    asyncio.run(many())
    batches, _ = log.batch_stats
    assert 1 <= len(fsyncs) <= batches  # at most one fsync per batched write, often fewer
    log.close()
