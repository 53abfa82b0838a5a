"""Two scorer processes sharing one Redis: one user's history, state and sticky prices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from scorer.testing import RedisServer

pytestmark = pytest.mark.integration

ITEMS = [f"i{k}" for k in range(20)]


def _prices(url: str, session: str, user: str = "u1") -> dict[str, float]:
    r = httpx.post(
        f"{url}/v1/quote", json={"user_id": user, "items": ITEMS, "session_id": session}, timeout=10
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degraded"] is False
    return {q["item_id"]: q["price"] for q in body["items"]}


def test_sticky_prices_across_two_processes(
    redis_server: RedisServer, start_scorer: Callable[..., Any]
) -> None:
    a = start_scorer(redis_url=redis_server.url)
    b = start_scorer(redis_url=redis_server.url)
    first_a = _prices(a.url, "s1")
    assert _prices(b.url, "s1") == first_a  # same user, same session: the same price anywhere
    # a big swing in the user's sensitivity, told to process A only
    r = httpx.post(
        f"{a.url}/v1/events",
        json={"user_id": "u1", "events": [{"event_type": "search", "query": "cheap"}] * 8},
        timeout=10,
    )
    assert r.status_code == 200
    same_b = _prices(b.url, "s1")  # B sees the new history through Redis ...
    fresh_b = _prices(b.url, "s2")
    for item, p0 in first_a.items():  # ... but keeps A's price within the session's band
        assert abs(same_b[item] - p0) <= 0.10 * p0 + 1e-9
    assert any(same_b[i] < first_a[i] for i in ITEMS)  # it did move, within the band
    assert any(fresh_b[i] < same_b[i] for i in ITEMS)  # a new session moves further
    # A continues from the price B quoted last, not from its own: one band per session, shared
    next_a = _prices(a.url, "s1")
    for item, p1 in same_b.items():
        assert abs(next_a[item] - p1) <= 0.10 * p1 + 1e-9
