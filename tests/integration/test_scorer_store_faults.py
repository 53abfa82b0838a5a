"""The scorer against a Redis that misbehaves: refuses the credentials, holds keys of the wrong type
or value, goes away under load. Quotes say truthfully why they are degraded, a bad entry is a miss
that is rebuilt (never a per-user 503), and an outage is a few log lines, not one per request."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis

from pricing import io as pio
from pricing import schema as S
from scorer.redis_store import RedisUserStore, StoreUnavailable
from scorer.testing import RedisServer

pytestmark = pytest.mark.integration

ITEMS = [f"i{k}" for k in range(10)]
PASSWORD = "s3cret"


def _quote(url: str, user: str, session: str | None = None) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/v1/quote",
        json={"user_id": user, "items": ITEMS, "session_id": session},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _event(url: str, user: str, query: str = "cheap") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/events",
        json={"user_id": user, "events": [{"event_type": "search", "query": query}]},
        timeout=10,
    )


def _metric(url: str, name: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(rf'^{name}{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _no_password(server: RedisServer) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


# --- a Redis that refuses the credentials -----------------------------------------------------------


def test_every_quote_says_degraded_store_auth_while_redis_refuses_the_credentials(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    with RedisServer(redis_server.binary, password=PASSWORD) as secured:
        owner = RedisUserStore.from_url(secured.url)  # the operator's view, with the password
        owner.append_events("known", [{"event_type": "search", "query": "cheap"}] * 3)
        scorer = start_scorer(redis_url=_no_password(secured))
        quotes = [_quote(scorer.url, user, session) for user in ("known", "new") * 3
                  for session in (None, "s1")]  # fmt: skip
        assert [q["degraded"] for q in quotes] == [True] * len(quotes)
        assert all(q["state_generation"] is None for q in quotes)
        assert [q.get("degraded_reason") for q in quotes] == ["store_auth"] * len(quotes)
        assert _metric(scorer.url, "scorer_degraded_quotes_total", "store_auth") == len(quotes)
        r = _event(scorer.url, "known")
        assert r.status_code == 503 and "user store unavailable" in r.json()["detail"]
        ready = httpx.get(f"{scorer.url}/readyz", timeout=10).json()
        assert ready["degraded"] is True and "Authentication" in ready["store"]
        owner.close()


def test_wrong_password_is_store_auth_too(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    with RedisServer(redis_server.binary, password=PASSWORD) as secured:
        scorer = start_scorer(redis_url=f"redis://:wrong@127.0.0.1:{secured.port}/0")
        quotes = [_quote(scorer.url, "u1") for _ in range(3)]
        assert [q["degraded"] for q in quotes] == [True] * 3
        assert [q.get("degraded_reason") for q in quotes] == ["store_auth"] * 3


def test_quotes_of_a_healthy_store_are_not_degraded_and_have_no_reason(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    scorer = start_scorer(redis_url=redis_server.url)
    assert _event(scorer.url, "u1").status_code == 200
    for session in (None, "s1"):
        q = _quote(scorer.url, "u1", session)
        assert q["degraded"] is False and q["degraded_reason"] is None


def _events_table(folder: Path) -> Path:
    ts = pd.date_range("2026-01-01", periods=2, freq="h", tz="UTC")
    events = pd.DataFrame(
        {
            S.EVENT_ID: ["e1", "e2"],
            S.TS: ts,
            S.USER_ID: ["known", "known"],
            S.SESSION_ID: ["s", "s"],
            S.EVENT_TYPE: [S.SEARCH, S.SEARCH],
            S.ITEM_ID: [None, None],
            S.QUERY: ["cheap tv", "cheap phone"],
            S.PRICE: [np.nan, np.nan],
        }
    )
    pio.write_table(events, folder, S.EVENTS)
    return folder


def test_startup_hydration_against_a_refusing_redis_starts_degraded_and_retries(
    redis_server: RedisServer, start_scorer: Callable[..., Any], tmp_path: Path, wait_until: Any
) -> None:
    data = _events_table(tmp_path / "data")
    with RedisServer(redis_server.binary, password=PASSWORD) as secured:
        # ready (a model is loaded) although the store refused the hydration: no startup crash
        scorer = start_scorer(redis_url=_no_password(secured), PRICING_BOOTSTRAP_DATA_DIR=str(data))
        ready = httpx.get(f"{scorer.url}/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["degraded"] is True
        q = _quote(scorer.url, "known")
        assert q["degraded"] is True and q["degraded_reason"] == "store_auth"

        # The operator lifts the password: the background retry hydrates the known user.
        admin = redis.Redis(host="127.0.0.1", port=secured.port, password=PASSWORD)
        admin.config_set("requirepass", "")
        admin.close()
        plain = RedisUserStore.from_url(_no_password(secured))
        wait_until(
            lambda: len(plain.get_events("known")[0]) == 2,
            timeout=60,
            what="the background hydration loaded the known user",
        )
        wait_until(
            lambda: httpx.get(f"{scorer.url}/readyz", timeout=10).json()["degraded"] is False,
            timeout=30,
            what="/readyz no longer degraded once hydrated",
        )
        known, new = _quote(scorer.url, "known"), _quote(scorer.url, "stranger")
        assert known["degraded"] is False and known["personalized"] is True
        assert new["degraded"] is False and new["personalized"] is False
        plain.close()


# --- keys of the wrong type or value ----------------------------------------------------------------


def _keys(user: str) -> tuple[str, str]:
    k = f"pricing:{{{len(user)}:{user}}}"
    return f"{k}:ev", f"{k}:gen"


@pytest.mark.parametrize(
    "corrupt",
    ["generation_is_a_list", "generation_is_not_a_number", "events_is_a_string"],
)
def test_a_bad_entry_is_a_miss_the_event_post_repairs(
    redis_server: RedisServer, start_scorer: Callable[..., Any], corrupt: str
) -> None:
    scorer = start_scorer(redis_url=redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    ev, gen = _keys("u1")
    assert _event(scorer.url, "u1", "cheap").status_code == 200
    if corrupt == "generation_is_a_list":
        raw.delete(gen)
        raw.rpush(gen, "x")
    elif corrupt == "generation_is_not_a_number":
        raw.set(gen, "not-a-number")
    else:
        raw.delete(ev)
        raw.set(ev, "not a list")
    raw.expire(gen, 30 * 24 * 3600)

    r = _event(scorer.url, "u1", "cheap")
    assert r.status_code == 200, r.text
    generation = r.json()["generation"]
    assert raw.type(gen) == b"string" and int(raw.get(gen) or 0) == generation
    assert raw.type(ev) == b"list"
    kept = 1 if corrupt == "events_is_a_string" else 2  # the history that remained, plus the new
    assert raw.llen(ev) == kept
    q = _quote(scorer.url, "u1", "s1")
    assert q["degraded"] is False and q["personalized"] is True
    assert q["state_generation"] == generation
    assert _event(scorer.url, "u1", "premium").json()["generation"] == generation + 1
    raw.close()


def test_a_bad_entry_never_degrades_a_quote(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    """Without any event POST: the quote's own state computation repairs the user."""
    scorer = start_scorer(redis_url=redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    assert _event(scorer.url, "u2", "cheap").status_code == 200
    ev, gen = _keys("u2")
    raw.delete(gen)
    raw.rpush(gen, "x")  # a generation of the wrong type: the state cannot be cached against it
    raw.hset("pricing:{2:u2}:lp:s1", "i1", "x")  # a sticky-price field that is not a number
    raw.delete("pricing:{2:u2}:lp:s2")
    raw.set("pricing:{2:u2}:lp:s2", "not a hash")  # a sticky-price key of the wrong type
    for session in ("s1", "s2", "s2", None):
        q = _quote(scorer.url, "u2", session)
        assert q["degraded"] is False and q["personalized"] is True, q
    assert raw.type(gen) == b"string" and raw.type("pricing:{2:u2}:lp:s2") == b"hash"
    raw.close()


def test_store_repairs_bad_entries_in_its_blocking_calls(redis_server: RedisServer) -> None:
    store = RedisUserStore.from_url(redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    store.append_events("u1", [{"event_type": "view", "item_id": "i1"}])
    ev, gen = _keys("u1")
    raw.delete(gen)
    raw.rpush(gen, "x")
    events, generation = store.get_events("u1")  # repaired: a fresh generation
    assert len(events) == 1 and generation > 1
    store.put_state("u1", "m@1", 1.5, generation)
    assert store.get_state("u1", "m@1") == 1.5
    raw.set(gen, "garbage")
    store.mark_stale("u1")
    assert store.get_state("u1", "m@1") is None  # a fresh generation: no old state is current
    raw.delete(ev)
    raw.sadd(ev, "x")
    assert store.append_events("u1", [{"event_type": "view", "item_id": "i2"}]) > generation
    assert [e["item_id"] for e in store.get_events("u1")[0]] == ["i2"]
    raw.delete(ev, gen)
    raw.rpush(gen, "x")  # hydration of a user whose generation key is bad
    assert store.hydrate_user("u1", [{"event_type": "view", "item_id": "i3"}]) is True
    assert len(store.get_events("u1")[0]) == 1
    store.close()
    raw.close()


# --- an outage is a few log lines -------------------------------------------------------------------


def test_an_outage_logs_a_count_every_few_seconds_not_a_line_per_request(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    scorer = start_scorer(redis_url=redis_server.url)
    assert _event(scorer.url, "u1").status_code == 200
    redis_server.stop()
    n = 150
    start = time.monotonic()
    reasons = set()
    with httpx.Client(base_url=scorer.url, timeout=10) as c:
        for k in range(n):
            q = c.post("/v1/quote", json={"user_id": f"u{k}", "items": ITEMS})
            assert q.status_code == 200 and q.json()["degraded"] is True
            reasons.add(q.json().get("degraded_reason"))
            e = c.post("/v1/events", json={"user_id": f"u{k}", "events": [{"event_type": "view"}]})
            assert e.status_code == 503
    elapsed = time.monotonic() - start
    scorer.stop()
    lines = scorer.output().splitlines()
    quote_lines = [line for line in lines if "pricing from the local cache" in line]
    event_lines = [line for line in lines if "user store failed appending events" in line]
    # the first of each kind at once, then at most one every 5 s
    most = int(elapsed // 5) + 1
    assert 1 <= len(quote_lines) <= most, quote_lines
    assert 1 <= len(event_lines) <= most, event_lines
    assert "store_unavailable" in quote_lines[0] and reasons == {"store_unavailable"}


def test_a_store_call_refused_for_auth_raises_with_its_reason(redis_server: RedisServer) -> None:
    with RedisServer(redis_server.binary, password=PASSWORD) as secured:
        store = RedisUserStore.from_url(_no_password(secured), retry_after=3600)
        with pytest.raises(StoreUnavailable) as err:
            store.get_events("u1")
        assert err.value.reason == "store_auth"
        with pytest.raises(StoreUnavailable, match="retrying shortly") as err:
            store.get_events("u1")  # the open breaker keeps the reason
        assert err.value.reason == "store_auth" and store.failure_reason == "store_auth"
        store.close()
