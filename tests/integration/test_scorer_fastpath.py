"""Issue 13's hot path: the fast body parsers, state generations, states that do not fit the model,
group commit under concurrent quotes, and the BERT fast paths against the model itself."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mlops.registry import ModelHandle
from mlops.settings import Settings
from pricing import schema as S
from scorer.accel import BertNumpyHead, BertUserState, accelerate, generic
from scorer.app import create_app
from scorer.redis_store import RedisUserStore, encode_state
from scorer.schemas import EventsRequest, QuoteRequest, fast_events, fast_quote
from scorer.state import events_frame
from scorer.testing import RedisServer, toy_handle

pytestmark = pytest.mark.integration

ITEMS = [f"i{k}" for k in range(8)]


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "offer_log_dir": tmp_path / "offers",
        "admin_token": "s3cret-s3cret",
        "alias_poll_seconds": 0.0,
        "exploration": 0.0,
    }
    return Settings(**{**base, **kw})


# --- the fast parsers accept a strict subset of what the models accept, read the same way --------

QUOTES: list[Any] = [
    {"user_id": "u1", "items": ["i0", "i1"]},
    {"user_id": "u1", "items": ["i0"], "session_id": "s"},
    {"user_id": "ü-ser", "items": ["ï0"], "session_id": None, "context": None},
    {"user_id": "", "items": ["i0"]},
    {"user_id": "u" * 257, "items": ["i0"]},
    {"user_id": "u1", "items": []},
    {"user_id": "u1", "items": "i0"},
    {"user_id": "u1", "items": ["i0", 3]},
    {"user_id": 7, "items": ["i0"]},
    {"user_id": "u1", "items": ["i0"], "session_id": 5},
    {"user_id": "u1", "items": ["i0"], "extra": 1},
    {"user_id": "u1", "items": ["i0"], "context": {"page": "home"}},
    {"user_id": "\ud800", "items": ["i0"]},
    {"user_id": "u1", "items": ["\udfff"]},
    ["u1"],
]
EVENTS: list[Any] = [
    {"user_id": "u1", "events": [{"event_type": "view", "item_id": "i1", "price": 12}]},
    {"user_id": "u1", "events": [{"event_type": "search", "query": "cheap tv"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "ts": "2026-01-02T03:04:05.25Z"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "ts": "2026-01-02T03:04:05+05:30"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "ts": "2026-01-02T03:04:05"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "ts": 1767225600}]},
    {"user_id": "u1", "events": [{"event_type": "view", "ts": "9999-01-01T00:00:00Z"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "price": 0}]},
    {"user_id": "u1", "events": [{"event_type": "view", "price": 2e9}]},
    {"user_id": "u1", "events": [{"event_type": "view", "price": "12"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "price": True}]},
    {"user_id": "u1", "events": [{"event_type": "teleport"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "colour": "red"}]},
    {"user_id": "u1", "events": []},
    {"user_id": "u1", "events": [{"event_type": "view", "event_id": "e1", "session_id": "s"}]},
]


@pytest.mark.parametrize("body", QUOTES, ids=range(len(QUOTES)))
def test_the_fast_quote_parser_never_accepts_what_the_model_refuses(body: Any) -> None:
    fast = fast_quote(body, max_items=500)
    try:
        model = QuoteRequest.model_validate(body)
    except ValidationError:
        assert fast is None
        return
    if fast is not None:
        assert fast == (model.user_id, model.items, model.session_id)


@pytest.mark.parametrize("body", EVENTS, ids=range(len(EVENTS)))
def test_the_fast_events_parser_never_accepts_what_the_model_refuses(body: Any) -> None:
    fast = fast_events(body)
    try:
        model = EventsRequest.model_validate(body)
    except ValidationError:
        assert fast is None
        return
    if fast is not None:
        assert fast == (model.user_id, [e.model_dump() for e in model.events])
        assert [e["ts"] for e in fast[1]] == [e.ts for e in model.events]  # same instants
        assert [e["ts"] and e["ts"].isoformat() for e in fast[1]] == [
            e.ts and e.ts.isoformat() for e in model.events
        ]


def test_plain_requests_take_the_fast_path_and_answer_like_the_model_path(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        fast = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS})
        # a non-null context is left to the pydantic model: the route's path, same pricing
        routed = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS, "context": {"a": 1}})
        assert fast.status_code == routed.status_code == 200
        strip = ("quote_id",)
        assert {k: v for k, v in fast.json().items() if k not in strip} == {
            k: v for k, v in routed.json().items() if k not in strip
        }
        r = c.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": "view"}]})
        assert r.status_code == 200 and set(r.json()) == {"user_id", "accepted", "generation"}
        # errors still come from the models, in their shape
        bad = c.post("/v1/quote", json={"user_id": "u1", "items": ["nope"]})
        assert bad.status_code == 422 and "unknown item ids" in bad.json()["detail"]
        metrics = c.get("/metrics").text
    assert 'scorer_requests_total{method="POST",route="/v1/quote",status="200"} 2.0' in metrics
    assert 'route="/v1/events",status="200"' in metrics
    assert "scorer_quote_stage_seconds_total" in metrics and "scorer_worker{" in metrics


def test_a_quote_says_which_history_generation_it_was_priced_from(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        first = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS}).json()
        assert first["state_generation"] == 0 and first["personalized"] is False
        ev = {"event_type": "search", "query": "cheap tv"}
        gen = c.post("/v1/events", json={"user_id": "u1", "events": [ev]}).json()["generation"]
        after = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS}).json()
        assert after["state_generation"] >= gen and after["personalized"] is True
        p0 = {q["item_id"]: q["purchase_probability"] for q in first["items"]}
        p1 = {q["item_id"]: q["purchase_probability"] for q in after["items"]}
        assert p0 != p1  # exploration off: the new state shows in every price's probability


def _plant(store: RedisUserStore, user: str, model: str, state: Any) -> None:
    k = store._k(user)
    gen = int(store.client.get(f"{k}:gen") or 0)
    store.client.set(f"{k}:st:{model}", struct.pack("<q", gen) + encode_state(state))


@pytest.mark.parametrize(
    "planted", [np.ones(5, np.float32), float("nan"), (1.0, 2.0)], ids=["vector", "nan", "tuple"]
)
def test_a_decodable_state_of_the_wrong_shape_is_a_miss(
    tmp_path: Path,
    redis_server: RedisServer,
    planted: Any,
    caplog: pytest.LogCaptureFixture,
    wait_until: Any,
) -> None:
    app = create_app(
        _settings(tmp_path, redis_url=redis_server.url), lambda: toy_handle("1"), seed=0
    )
    with TestClient(app) as c:
        runtime = app.state.runtime
        ev = {"event_type": "search", "query": "cheap tv"}
        c.post("/v1/events", json={"user_id": "u1", "events": [ev] * 2})
        key = runtime.current.policy
        # the refresher's own recomputation first: one still in flight would overwrite the plant
        wait_until(
            lambda: runtime.refresher.computed >= 1,
            timeout=30,
            what="the refresher computes u1's state",
        )
        _plant(runtime.store, "u1", key, planted)
        r = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS})
        assert r.status_code == 200, r.text
        assert r.json()["personalized"] is True and r.json()["degraded"] is False
        assert runtime.store.get_state("u1", key) == pytest.approx(7.0)  # recomputed, rewritten
    assert "wrong type or shape" in caplog.text


def test_concurrent_quotes_share_offer_log_writes(tmp_path: Path) -> None:
    # 60 at once in one worker: above the default load-shedding bound, which is not what this tests
    app = create_app(_settings(tmp_path, max_in_flight=100), lambda: toy_handle("1"), seed=0)

    async def run() -> tuple[list[int], tuple[int, int]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                answers = await asyncio.gather(
                    *(
                        c.post("/v1/quote", json={"user_id": f"u{k}", "items": ITEMS})
                        for k in range(60)
                    )
                )
            return [a.status_code for a in answers], app.state.runtime.offer_log.batch_stats

    statuses, (batches, quotes) = asyncio.run(run())
    assert statuses == [200] * 60
    assert quotes == 60 and batches < 60


# --- BERT: the fast paths are the model's own numbers ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tiny_market: Any) -> Any:
    """A BertDemand fitted for a few steps (the numbers need not be good, only the model's own)."""
    from lightning_modules.demand import BertDemand
    from mlops.models import PricingData

    t = tiny_market.tables
    model = BertDemand(
        {
            "text_encoder": "tiny",
            "d_model": 16,
            "n_layers": 1,
            "n_heads": 2,
            "max_len": 12,
            "head_hidden": 8,
            "max_epochs": 1,
            "max_steps": 3,
            "batch_size": 256,
        },
        seed=0,
    )
    model.fit(PricingData(t[S.OFFERS], t[S.ITEMS], t[S.EVENTS]))
    model.warm()
    return model


def _histories(events: pd.DataFrame, n: int) -> list[list[dict[str, Any]]]:
    ev = events.copy()
    ev[S.TS] = ev[S.TS].map(lambda t: t.isoformat())
    ev = ev.astype(object).where(ev.notna(), None)
    users = ev[S.USER_ID].drop_duplicates().head(n)
    return [ev[ev[S.USER_ID] == u].to_dict("records") for u in users]


@pytest.mark.slow
def test_the_bert_fast_paths_match_the_model(tiny_bert: Any, tiny_market: Any) -> None:
    accel = accelerate(tiny_bert)
    assert accel.notes == {"user_state": "numpy tokens + numpy transformer", "demand": "numpy head"}
    reference = generic(tiny_bert)
    histories = _histories(tiny_market.tables[S.EVENTS], 25)
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    histories += [
        # an unseen search query (BERT encodes it once), ties in time, an unknown item
        [
            {S.EVENT_TYPE: S.SEARCH, S.QUERY: "a query nobody typed", S.TS: t0.isoformat()},
            {S.EVENT_TYPE: S.VIEW, S.ITEM_ID: "nope", S.PRICE: 3.0, S.TS: t0.isoformat()},
        ],
        # nanosecond timestamps and a text price: the model's own path serves these
        [
            {
                S.EVENT_TYPE: S.VIEW,
                S.ITEM_ID: "i1",
                S.PRICE: "4.5",
                S.TS: "2026-03-01T00:00:00.123456789+00:00",
            }
        ],
    ]
    torch_tower = BertUserState(tiny_bert)
    torch_tower.numpy_tower = None  # the numpy tokens with the model's own transformer
    for events in histories:
        got, want = accel.user_state(events), reference.user_state(events)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(torch_tower(events), want, rtol=0, atol=1e-5)
    idx = np.arange(len(tiny_bert.catalog))
    grid = tiny_bert.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.5, 1.5, 7)
    for events in histories[:5]:
        state = accel.user_state(events)
        np.testing.assert_allclose(
            accel.demand(state, idx, grid), tiny_bert.demand(state, idx, grid), rtol=0, atol=1e-6
        )


@pytest.mark.slow
def test_a_fast_path_that_disagrees_is_not_served(
    tiny_bert: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BertNumpyHead, "ab", lambda self, s, i: (np.zeros(len(i)), np.ones(len(i))))
    monkeypatch.setattr(
        BertUserState, "arrays", lambda self, e: (_ for _ in ()).throw(KeyError("x"))
    )
    accel = accelerate(tiny_bert)
    assert accel.notes["demand"].startswith("model (numpy head disagreed")
    assert accel.notes["user_state"].startswith("model (fast path")


@pytest.mark.slow
def test_a_bert_scorer_treats_another_models_vector_as_a_miss(
    tiny_bert: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    handle = ModelHandle("bert-tiny", "1", tiny_bert, None, {})
    app = create_app(_settings(tmp_path, redis_url=redis_server.url), lambda: handle, seed=0)
    items = tiny_bert.catalog[S.ITEM_ID].astype(str).tolist()[:10]
    with TestClient(app) as c:
        runtime = app.state.runtime
        assert c.get("/readyz").json()["serving_paths"]["demand"] == "numpy head"
        ev = {"event_type": "view", "item_id": items[0], "price": 5.0}
        c.post("/v1/events", json={"user_id": "u1", "events": [ev]})
        key = runtime.current.policy
        _plant(runtime.store, "u1", key, np.ones(5, np.float32))  # a 5-float vector
        r = c.post("/v1/quote", json={"user_id": "u1", "items": items})
        assert r.status_code == 200 and r.json()["personalized"] is True, r.text
        state = runtime.store.get_state("u1", key)
        assert state.shape == runtime.current.cold_state.shape  # recomputed, the model's shape
        events, _ = runtime.store.get_events("u1")
        np.testing.assert_allclose(
            state, tiny_bert.user_state(events_frame(events)), rtol=0, atol=1e-5
        )


# --- the quote path's Redis client on the event loop ---------------------------------------------


def test_the_event_loop_client_authenticates_like_the_url_says(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with RedisServer(redis_server.binary, password="s3cr:t/p@ss") as secured:
        url = secured.url.replace("/0", "/3")  # a password and a database other than 0
        app = create_app(_settings(tmp_path, redis_url=url), lambda: toy_handle("1"), seed=0)
        with TestClient(app) as c:
            ev = {"event_type": "search", "query": "cheap tv"}
            c.post("/v1/events", json={"user_id": "u1", "events": [ev]})
            body = c.post(
                "/v1/quote", json={"user_id": "u1", "items": ITEMS, "session_id": "s"}
            ).json()
            assert body["degraded"] is False and body["personalized"] is True
        keys = app.state.runtime.store.client.keys("*")
        assert any(b":lp:s" in k for k in keys)  # the sticky write went to db 3 too


def test_a_hung_redis_degrades_quotes_without_stalling_the_loop(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked by what happened, not by how long it took (a busy machine stretches any window):
    /healthz answers while every quote still waits on Redis, all the quotes share one timeout,
    and after it the breaker answers without sending anything to Redis."""
    import os
    import signal

    from scorer import redis_async

    # A 2 s Redis timeout is the generous deadline /healthz must beat while 20 quotes wait; the
    # breaker stays open for the rest of the test once it trips.
    store = RedisUserStore.from_url(redis_server.url, timeout=2.0, retry_after=3600.0)
    app = create_app(
        _settings(tmp_path, redis_url=redis_server.url),
        lambda: toy_handle("1"),
        store=store,
        seed=0,
    )
    sent_after_failure: list[bool] = []  # per request sent to Redis: did one fail before it?
    timeouts: list[int] = []  # per connection dropped because Redis did not answer in time
    failed = [False]
    execute, abort = redis_async.AsyncRedis.execute, redis_async._Connection.abort

    async def watched_execute(self: Any, packed: bytes, n: int) -> list[Any]:
        sent_after_failure.append(failed[0])
        try:
            return await execute(self, packed, n)
        except Exception:
            failed[0] = True
            raise

    def watched_abort(self: Any, error: Exception) -> None:
        if isinstance(error, TimeoutError) and not self.closed:
            timeouts.append(1)
        abort(self, error)

    monkeypatch.setattr(redis_async.AsyncRedis, "execute", watched_execute)
    monkeypatch.setattr(redis_async._Connection, "abort", watched_abort)

    async def run() -> tuple[list[Any], int, bool]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS})  # connected
                assert sent_after_failure == [False]
                os.kill(redis_server.proc.pid, signal.SIGSTOP)  # alive, silent
                try:
                    quotes = asyncio.gather(
                        *(
                            c.post("/v1/quote", json={"user_id": f"u{k}", "items": ITEMS})
                            for k in range(20)
                        )
                    )
                    health = await c.get("/healthz")
                    # answered while the quotes wait on Redis: none has had its answer, and no
                    # Redis call has failed yet (a blocked loop would have waited one out first)
                    during = not quotes.done() and store.last_error is None and not timeouts
                    answers = await quotes
                    # Redis still hung: the next quote is the breaker's, sent nowhere
                    answers.append(
                        await c.post("/v1/quote", json={"user_id": "u99", "items": ITEMS})
                    )
                finally:
                    os.kill(redis_server.proc.pid, signal.SIGCONT)
                return [a.json() for a in answers], health.status_code, during

    answers, health_status, health_during_the_wait = asyncio.run(run())
    assert health_status == 200
    assert health_during_the_wait, "/healthz waited for the quotes' Redis calls: a stalled loop"
    assert all(a["degraded"] is True for a in answers)
    assert len(sent_after_failure) >= 21  # the first quote and then each of the 20 went to Redis
    assert timeouts == [1], (
        f"{len(timeouts)} Redis timeouts, not one shared by the quotes, then the breaker"
    )
    assert True not in sent_after_failure, "sent to Redis after a timeout: the breaker is not open"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_event_loop_client_on_both_loops(redis_server: RedisServer, loop: str) -> None:
    """What uvicorn runs (uvloop) and what tests run (asyncio): replies in order, error replies as
    values, a dead connection retried once on a fresh one, a timeout fails fast."""
    import os
    import signal

    import hiredis
    import uvloop

    from scorer.redis_async import AsyncRedis

    def packed(*commands: tuple[Any, ...]) -> bytes:
        return b"".join(hiredis.pack_command(c) for c in commands)

    client = AsyncRedis({"host": "127.0.0.1", "port": redis_server.port}, timeout=0.25)

    async def run() -> None:
        one = client.execute(packed(("SET", "k", "1"), ("GET", "k")), 2)
        two = client.execute(packed(("INCR", "k"), ("HGET", "k", "f")), 2)
        first, second = await asyncio.gather(one, two)
        assert first == [b"OK", b"1"]
        assert second[0] == 2 and isinstance(second[1], hiredis.ReplyError)  # WRONGTYPE
        redis_server.restart()  # the connection dies; the next call reconnects once
        assert await client.execute(packed(("PING",)), 1) == [b"PONG"]
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                await client.execute(packed(("PING",)), 1)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert await client.execute(packed(("PING",)), 1) == [b"PONG"]
        client.close()

    if loop == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())


def test_concurrent_quotes_after_an_event_share_one_tower_run(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh and the quotes that need the same user's new state compute it once (the
    refresher runs on the event loop; the toy's pandas tower in a worker thread), and every quote
    reflects the event."""
    import threading

    from scorer.testing import ToyDemand

    calls: list[int] = []
    real = ToyDemand.user_state

    def counted(self: ToyDemand, events: pd.DataFrame) -> float:
        calls.append(threading.get_ident())
        return real(self, events)

    monkeypatch.setattr(ToyDemand, "user_state", counted)
    app = create_app(
        _settings(tmp_path, redis_url=redis_server.url), lambda: toy_handle("1"), seed=0
    )

    async def run() -> tuple[list[Any], int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                calls.clear()
                ev = {"event_type": "search", "query": "cheap tv"}
                r = await c.post("/v1/events", json={"user_id": "u1", "events": [ev]})
                generation = r.json()["generation"]
                answers = await asyncio.gather(
                    *(
                        c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS})
                        for _ in range(10)
                    )
                )
                # the refresher's turn (it finds the state fresh): wait until it has drained,
                # so a tower run it made would be counted below
                refresher = app.state.runtime.refresher
                deadline = asyncio.get_running_loop().time() + 30
                while refresher.pending() or refresher._timer or refresher._task:
                    assert asyncio.get_running_loop().time() < deadline, "refresher never idle"
                    await asyncio.sleep(0.005)
            return [a.json() for a in answers], generation

    answers, generation = asyncio.run(run())
    assert all(a["state_generation"] >= generation and a["personalized"] for a in answers)
    assert len(calls) == 1  # one tower run for ten quotes and a refresh
    assert app.state.runtime.refresher.failed == 0


def test_a_burst_past_the_in_flight_bound_is_shed_and_the_rest_served(tmp_path: Path) -> None:
    """60 quotes at once into a worker bounded at 32 in work: the first 32 are answered, the rest
    get 503 at once with Retry-After, and nothing shed reaches the offer log."""
    app = create_app(_settings(tmp_path, max_in_flight=32), lambda: toy_handle("1"), seed=0)

    async def run() -> tuple[list[httpx.Response], tuple[int, int]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                answers = await asyncio.gather(
                    *(
                        c.post("/v1/quote", json={"user_id": f"u{k}", "items": ITEMS})
                        for k in range(60)
                    )
                )
            return list(answers), app.state.runtime.offer_log.batch_stats

    answers, (_, quotes) = asyncio.run(run())
    ok = [a for a in answers if a.status_code == 200]
    shed = [a for a in answers if a.status_code == 503]
    assert len(ok) + len(shed) == 60 and len(ok) >= 32 and shed
    assert all(a.headers["retry-after"] == "1" for a in shed)
    assert all("overloaded" in a.json()["detail"] for a in shed)
    assert quotes == len(ok)
