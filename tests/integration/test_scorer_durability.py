"""An acknowledged quote or outcome survives `kill -9` of the scorer: every byte of it was written to
the OS before the reply (group-committed writes included), one process or several replicas."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from scorer.offer_log import export_offers
from scorer.testing import RedisServer

pytestmark = pytest.mark.integration


def test_kill_9_loses_no_acknowledged_log_entry(start_scorer: Callable[..., Any]) -> None:
    sp = start_scorer()
    acked_quotes: dict[str, list[str]] = {}
    acked_outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=sp.url, timeout=5) as c:
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                items = [f"i{(k * 7 + n + j) % 60}" for j in range(5)]
                try:
                    r = c.post("/v1/quote", json={"user_id": f"u{k}", "items": items})
                    if r.status_code != 200:
                        continue
                    qid = r.json()["quote_id"]
                    with lock:
                        acked_quotes[qid] = items
                    bought = n % 2
                    r = c.post(
                        "/v1/outcomes",
                        json={"quote_id": qid, "item_id": items[0], "purchased": bool(bought)},
                    )
                    if r.status_code == 200:
                        with lock:
                            acked_outcomes[r.json()["offer_id"]] = bought
                except httpx.TransportError:
                    return  # the server died mid-request: that one was never acknowledged

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked_outcomes) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    sp.proc.send_signal(signal.SIGKILL)  # while requests are in flight
    sp.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    assert len(acked_outcomes) >= 100, "too little traffic before the kill to mean anything"
    offers = export_offers(sp.log_dir)
    logged = dict(zip(offers["offer_id"], offers["purchased"], strict=True))
    missing = {o for o in acked_outcomes if o not in logged}
    assert not missing, f"{len(missing)} acknowledged outcomes lost, e.g. {sorted(missing)[:3]}"
    assert all(logged[o] == bought for o, bought in acked_outcomes.items())
    quoted = set(export_offers(sp.log_dir, include_pending=True)["offer_id"])
    lost = [
        f"{q}:{i}" for q, items in acked_quotes.items() for i in items if f"{q}:{i}" not in quoted
    ]
    assert not lost, f"{len(lost)} acknowledged quoted offers lost, e.g. {lost[:3]}"

    # A new process on the same log answers outcomes for the old quotes (indexed from the file,
    # torn tail and all) and keeps the log whole.
    again = start_scorer(log_dir=sp.log_dir)
    some = list(acked_quotes.items())[:20]
    with httpx.Client(base_url=again.url, timeout=5) as c:
        for qid, items in some:
            r = c.post(
                "/v1/outcomes", json={"quote_id": qid, "item_id": items[-1], "purchased": True}
            )
            assert r.status_code == 200, r.text
        r = c.post(
            "/v1/outcomes", json={"quote_id": "never-quoted", "item_id": "i0", "purchased": True}
        )
        assert r.status_code == 404
    again.stop()
    offers = export_offers(sp.log_dir)
    assert {f"{q}:{items[-1]}" for q, items in some} <= set(offers["offer_id"])


@pytest.mark.slow
def test_kill_9_of_replicas_loses_no_acknowledged_line(
    redis_server: RedisServer, start_scorer: Callable[..., Any], tmp_path: Path
) -> None:
    """Two processes on one Redis and one log directory, quotes on one and outcomes on the other,
    each killed with -9 mid-traffic: every acknowledged line is in the merged export."""
    shared = tmp_path / "shared-offers"
    replicas = [start_scorer(redis_url=redis_server.url, log_dir=shared) for _ in range(2)]
    acked_quotes: dict[str, list[str]] = {}
    acked_outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    alive = list(replicas)

    def client(k: int) -> None:
        with httpx.Client(timeout=5) as c:
            for n in range(4000):
                if stop.is_set():
                    return
                now = list(alive)  # quote on one live replica, report the outcome to the other
                quoter, reporter = now[(k + n) % len(now)], now[(k + n + 1) % len(now)]
                items = [f"i{(k * 7 + n + j) % 60}" for j in range(5)]
                try:
                    r = c.post(
                        f"{quoter.url}/v1/quote",
                        json={"user_id": f"u{k}", "items": items, "session_id": "s"},
                    )
                    if r.status_code != 200:
                        continue
                    with lock:
                        acked_quotes[r.json()["quote_id"]] = items
                    r = c.post(
                        f"{reporter.url}/v1/outcomes",
                        json={
                            "quote_id": r.json()["quote_id"],
                            "item_id": items[0],
                            "purchased": bool(n % 2),
                        },
                    )
                    if r.status_code == 200:
                        with lock:
                            acked_outcomes[r.json()["offer_id"]] = n % 2
                except httpx.TransportError:
                    time.sleep(0.01)  # that replica is dead: this request was never acknowledged

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    # Kill one while both take traffic, then the survivor while it takes everything.
    for victim, more in zip(replicas, (60, 30), strict=True):
        deadline = time.monotonic() + 30
        start = len(acked_outcomes)
        while len(acked_outcomes) < start + more and time.monotonic() < deadline:
            time.sleep(0.02)
        if len(alive) > 1:
            alive.remove(victim)  # new requests go to the other one; those in flight die with it
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    assert len(acked_outcomes) >= 80, "too little traffic before the kills to mean anything"
    offers = export_offers(shared)
    logged = dict(zip(offers["offer_id"], offers["purchased"], strict=True))
    missing = [o for o in acked_outcomes if o not in logged]
    assert not missing, f"{len(missing)} acknowledged outcomes lost, e.g. {missing[:3]}"
    assert all(logged[o] == bought for o, bought in acked_outcomes.items())
    quoted = set(export_offers(shared, include_pending=True)["offer_id"])
    lost = [
        f"{q}:{i}" for q, items in acked_quotes.items() for i in items if f"{q}:{i}" not in quoted
    ]
    assert not lost, f"{len(lost)} acknowledged quoted offers lost, e.g. {lost[:3]}"

    # A new process on the directory answers outcomes for quotes both dead replicas made.
    again = start_scorer(redis_url=redis_server.url, log_dir=shared)
    with httpx.Client(base_url=again.url, timeout=5) as c:
        made = list(acked_quotes.items())
        for qid, items in made[:20] + made[-20:]:  # made by both replicas
            r = c.post(
                "/v1/outcomes", json={"quote_id": qid, "item_id": items[-1], "purchased": True}
            )
            assert r.status_code == 200, r.text
