"""The scorer's online user store and durable offer log, without HTTP."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from pricing import schema as S
from scorer.offer_log import OUTCOMES_FILE, QUOTES_FILE, OfferLog, export_offers
from scorer.state import InMemoryUserStore, UserStore, events_frame, hydrate


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
    log.append_outcome({**row, S.PURCHASED: 0})  # a correction: the last report wins
    log.close()

    offers = export_offers(tmp_path)
    assert list(offers.columns) == S.column_names(S.OFFERS)
    assert len(offers) == 1
    assert offers[S.PURCHASED].tolist() == [0]
    assert offers[S.OFFER_ID].tolist() == ["q1:b"]
    assert str(offers[S.TS].dt.tz) == "UTC"
    pending = export_offers(tmp_path, include_pending=True)
    assert sorted(pending[S.OFFER_ID]) == ["q1:a", "q1:b", "q2:a"]
    assert pending[S.PURCHASED].tolist().count(0) == 3


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
