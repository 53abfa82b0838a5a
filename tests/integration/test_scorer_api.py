"""The scorer over HTTP (in-process TestClient) with a toy demand model and a fake loader."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.models import DemandModel
from mlops.registry import ModelHandle
from mlops.settings import Settings
from pricing import io as pio
from pricing import schema as S
from scorer.app import create_app
from scorer.offer_log import export_offers
from scorer.testing import ToyDemand, toy_catalog, toy_handle

ADMIN = {"Authorization": "Bearer s3cret"}


class FakeRegistry:
    """A loader whose champion tests can move, break or hold (a load in progress until `gate`
    is set; `loading` is set when a load starts)."""

    def __init__(self, handle: ModelHandle | None) -> None:
        self.handle = handle
        self.error: Exception | None = None
        self.gate: threading.Event | None = None
        self.loading = threading.Event()
        self.calls = 0

    def load(self) -> ModelHandle | None:
        self.calls += 1
        self.loading.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never released the load"
        if self.error is not None:
            raise self.error
        return self.handle

    def version(self) -> str | None:
        return self.handle.version if self.handle is not None else None


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "offer_log_dir": tmp_path / "offers",
        "admin_token": "s3cret",
        "alias_poll_seconds": 0.0,
        "exploration": 0.0,
        "max_candidates": 20,
        "max_user_events": 50,
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(toy_handle("1"))


@pytest.fixture
def client(tmp_path: Path, registry: FakeRegistry) -> Iterator[TestClient]:
    app = create_app(_settings(tmp_path), registry.load, seed=0)
    with TestClient(app) as c:
        yield c


def _quote(
    c: TestClient, user: str = "u1", items: list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    r = c.post(
        "/v1/quote", json={"user_id": user, "items": items or ["i0", "i1", "i2", "i3"], **kw}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_quote_shape_ranking_and_guardrails(client: TestClient, registry: FakeRegistry) -> None:
    items = [f"i{k}" for k in range(10)]
    body = _quote(client, items=items)
    cat = registry.handle.model.catalog.set_index(S.ITEM_ID)  # type: ignore[union-attr]
    # limits first
    assert len(body["items"]) == 10 and sorted(q["item_id"] for q in body["items"]) == sorted(items)
    for q in body["items"]:
        lp, cost = cat.loc[q["item_id"], S.LIST_PRICE], cat.loc[q["item_id"], S.UNIT_COST]
        assert 0.7 * lp - 1e-9 <= q["price"] <= 1.3 * lp + 1e-9
        assert q["price"] >= cost
        assert q["price"] == round(q["price"], 2)  # cents ladder
        assert 0.0 < q["propensity"] <= 1.0
        assert 0.0 <= q["purchase_probability"] <= 1.0
        assert q["list_price"] == pytest.approx(lp)
        assert q["expected_profit"] == pytest.approx(
            (q["price"] - cost) * q["purchase_probability"]
        )
    assert [q["rank"] for q in body["items"]] == list(range(1, 11))
    profits = [q["expected_profit"] for q in body["items"]]
    assert profits == sorted(profits, reverse=True)
    # then golden values: no exploration, so every price is the greedy one with propensity 1
    assert body["model_version"] == "1" and body["model_name"] == "toy-price-response"
    assert body["personalized"] is False and body["degraded"] is False
    assert all(q["propensity"] == 1.0 and not q["explored"] for q in body["items"])
    assert registry.handle.model.warmed  # type: ignore[union-attr]


def test_exploration_records_propensities(tmp_path: Path) -> None:
    handle = toy_handle("1", guardrails={"exploration": 0.5, "grid_size": 5})
    # no PRICING_EXPLORATION: the registered 0.5 applies (the environment's value would override it)
    app = create_app(_settings(tmp_path, exploration=None), lambda: handle, seed=1)
    with TestClient(app) as c:
        quoted = [
            q for _ in range(20) for q in _quote(c, items=[f"i{k}" for k in range(10)])["items"]
        ]
    explored = [q for q in quoted if q["explored"]]
    assert 0 < len(explored) < len(quoted)
    assert all(0.0 < q["propensity"] <= 1.0 for q in quoted)
    greedy_only = [q for q in quoted if not q["explored"]]
    # a greedy quote's price has propensity (1 - eps) + eps / n_allowed >= 0.5
    assert all(q["propensity"] >= 0.5 for q in greedy_only)
    # eps / 5: an explored price off the greedy one
    assert min(q["propensity"] for q in explored) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"user_id": "u1", "items": ["i0", "nope"]}, "nope"),
        ({"user_id": "u1", "items": []}, "items"),
        ({"user_id": "u1", "items": [f"i{k}" for k in range(21)]}, "max_candidates"),
        ({"user_id": "u1", "items": ["i0", "i0"]}, "duplicate"),
        ({"items": ["i0"]}, "user_id"),
        ({"user_id": "u1", "items": "i0"}, "items"),
        ({"user_id": "u1", "items": ["i0"], "colour": "red"}, "colour"),
    ],
)
def test_bad_quote_requests_are_4xx(
    client: TestClient, payload: dict[str, Any], needle: str
) -> None:
    r = client.post("/v1/quote", json=payload)
    assert r.status_code == 422, r.text
    assert needle in r.text


def test_malformed_json_is_4xx(client: TestClient) -> None:
    r = client.post(
        "/v1/quote",
        content=b'{"user_id": "u1", "items": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert "json" in r.text.lower()


def test_no_model_means_503_with_a_reason(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), lambda: None)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "no champion" in ready.json()["reason"]
        r = c.post("/v1/quote", json={"user_id": "u1", "items": ["i0"]})
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
        assert (
            c.post(
                "/v1/events", json={"user_id": "u1", "events": [{"event_type": "view"}]}
            ).status_code
            == 200
        )


def test_broken_model_at_startup_keeps_the_process_up(tmp_path: Path) -> None:
    def boom() -> ModelHandle:
        raise RuntimeError("artifact missing")

    with TestClient(create_app(_settings(tmp_path), boom)) as c:
        assert c.get("/healthz").status_code == 200
        assert "artifact missing" in c.get("/readyz").json()["reason"]


def _cheap_search(c: TestClient, user: str, n: int = 2) -> None:
    r = c.post(
        "/v1/events",
        json={"user_id": user, "events": [{"event_type": "search", "query": "cheap shoes"}] * n},
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == n


def test_a_cheap_search_lowers_the_price(client: TestClient) -> None:
    before = {q["item_id"]: q for q in _quote(client)["items"]}
    _cheap_search(client, "u1")
    after_body = _quote(client)
    after = {q["item_id"]: q for q in after_body["items"]}
    assert after_body["personalized"] is True
    assert all(after[i]["price"] <= before[i]["price"] for i in before)
    assert sum(after[i]["price"] < before[i]["price"] for i in before) >= 3
    other = {q["item_id"]: q["price"] for q in _quote(client, user="u2")["items"]}
    assert other == {i: q["price"] for i, q in before.items()}  # other users are untouched


def test_events_are_validated(client: TestClient) -> None:
    r = client.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": "teleport"}]})
    assert r.status_code == 422 and "event_type must be one of" in r.text
    assert client.post("/v1/events", json={"user_id": "u1", "events": []}).status_code == 422
    r = client.post(
        "/v1/events", json={"user_id": "u1", "events": [{"event_type": "view", "price": -1}]}
    )
    assert r.status_code == 422


def test_prices_are_sticky_within_a_session(client: TestClient) -> None:
    first = {q["item_id"]: q["price"] for q in _quote(client, session_id="s1")["items"]}
    _cheap_search(client, "u1", n=8)  # a big swing in sensitivity
    same = {q["item_id"]: q["price"] for q in _quote(client, session_id="s1")["items"]}
    fresh = {q["item_id"]: q["price"] for q in _quote(client, session_id="s2")["items"]}
    for item, p0 in first.items():
        assert abs(same[item] - p0) <= 0.10 * p0 + 1e-9  # max_session_change
    assert any(fresh[i] < same[i] for i in first)  # a new session is free to move further


def test_outcomes_go_to_the_offer_log(tmp_path: Path, registry: FakeRegistry) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, registry.load, seed=0)) as c:
        body = _quote(c, items=["i0", "i1"])
        qid = body["quote_id"]
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i1", "purchased": True})
        assert r.status_code == 200 and r.json()["offer_id"] == f"{qid}:i1"
        assert (
            c.post(
                "/v1/outcomes", json={"quote_id": qid, "item_id": "i0", "purchased": False}
            ).status_code
            == 200
        )
        r = c.post("/v1/outcomes", json={"quote_id": "nope", "item_id": "i1", "purchased": True})
        assert r.status_code == 404 and "unknown quote_id" in r.json()["detail"]
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i7", "purchased": True})
        assert r.status_code == 404 and "not part of quote" in r.json()["detail"]
    # a new process finds the old quote in the log, not in memory, and its recorded outcomes
    with TestClient(create_app(settings, registry.load, seed=0)) as c:
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i0", "purchased": False})
        assert r.status_code == 200 and r.json()["repeated"] is True
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i0", "purchased": True})
        assert r.status_code == 409

    offers = export_offers(settings.offer_log_dir)
    assert list(offers.columns) == S.column_names(S.OFFERS)
    assert len(offers) == 2 and offers[S.OFFER_ID].is_unique
    by_item = offers.set_index(S.ITEM_ID)
    # the first report stands
    assert by_item.loc["i1", S.PURCHASED] == 1 and by_item.loc["i0", S.PURCHASED] == 0
    quoted = {q["item_id"]: q for q in body["items"]}
    assert by_item.loc["i1", S.PRICE] == pytest.approx(quoted["i1"]["price"])
    assert by_item.loc["i1", S.PROPENSITY] == pytest.approx(quoted["i1"]["propensity"])
    assert set(offers[S.POLICY]) == {"toy-price-response@1"}
    assert set(offers[S.USER_ID]) == {"u1"}
    assert str(offers[S.TS].dt.tz) == "UTC"


def test_reload_needs_the_token_and_swaps(client: TestClient, registry: FakeRegistry) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert (
        client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 403
    )
    registry.handle = toy_handle("2")
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "toy-price-response",
        "model_version": "2",
        "previous_version": "1",
    }
    assert _quote(client)["model_version"] == "2"
    assert client.get("/readyz").json()["model_version"] == "2"


def test_failed_reload_keeps_the_old_model(client: TestClient, registry: FakeRegistry) -> None:
    registry.error = OSError("mlflow unreachable")
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 502
    assert "mlflow unreachable" in r.json()["detail"] and r.json()["serving_version"] == "1"
    registry.error, registry.handle = None, None
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 502 and "no champion" in r.json()["detail"]
    assert _quote(client)["model_version"] == "1"


def test_hot_swap_under_load_drops_nothing(
    client: TestClient, registry: FakeRegistry, wait_until: Any
) -> None:
    """Phases by what the clients saw, not by sleeps: every client answered by v1, then answered
    while v2 loads (the load holds until released), then answered by v2."""
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[str] = []
    reloaded: list[Any] = []

    def hammer(k: int) -> None:
        while not stop.is_set():
            r = client.post("/v1/quote", json={"user_id": f"u{k}", "items": ["i0", "i1", "i2"]})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen[k].append(r.json()["model_version"])

    def answered(since: list[int], n: int = 1, version: str | None = None) -> bool:
        """Each client got `n` more answers since `since` (the last of them from `version`);
        any failure ends the wait too (asserted below)."""
        more = all(
            len(v) >= m + n and (version is None or v[-1] == version)
            for v, m in zip(seen, since, strict=True)
        )
        return bool(failures) or more

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    swap = threading.Thread(
        target=lambda: reloaded.append(client.post("/admin/reload", headers=ADMIN))
    )
    registry.gate = threading.Event()
    for t in threads:
        t.start()
    try:
        wait_until(lambda: answered([0] * 4), timeout=30, what="every client answered by v1")
        registry.loading.clear()
        registry.handle = toy_handle("2")  # a slow load while traffic flows
        swap.start()
        wait_until(registry.loading.is_set, timeout=30, what="the reload starts loading v2")
        loading = [len(v) for v in seen]
        wait_until(
            lambda: answered(loading, 3), timeout=30, what="every client answered during the load"
        )
        released = [len(v) for v in seen]
        registry.gate.set()
        swap.join(timeout=60)
        wait_until(
            lambda: answered(released, 1, "2"), timeout=30, what="every client answered by v2"
        )
    finally:
        registry.gate.set()
        stop.set()
        for t in threads:
            t.join()
    assert not swap.is_alive() and reloaded and reloaded[0].status_code == 200
    assert failures == []
    for versions, n in zip(seen, released, strict=True):
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert switch >= n  # nothing from v2 before its load returned
        assert set(versions[switch:]) == {"2"}  # never back to the old model


def test_alias_watch_reloads_when_the_champion_moves(
    tmp_path: Path, registry: FakeRegistry, wait_until: Any
) -> None:
    app = create_app(
        _settings(tmp_path, alias_poll_seconds=0.05), registry.load, version_probe=registry.version
    )
    with TestClient(app) as c:
        assert _quote(c)["model_version"] == "1"
        registry.handle = toy_handle("7")
        wait_until(
            lambda: _quote(c)["model_version"] == "7",
            timeout=30,
            what="the alias watch serves version 7",
        )
        assert _quote(c)["model_version"] == "7"


def test_metrics_expose_counters(client: TestClient) -> None:
    _quote(client)
    client.post("/v1/quote", json={"user_id": "u1", "items": ["nope"]})
    client.post("/admin/reload", headers=ADMIN)
    text = client.get("/metrics").text
    assert 'scorer_requests_total{method="POST",route="/v1/quote",status="200"} 1.0' in text
    assert 'scorer_requests_total{method="POST",route="/v1/quote",status="422"} 1.0' in text
    assert (
        'scorer_request_seconds_bucket{le="0.01",method="POST",route="/v1/quote",status="200"}'
        in text
    )
    assert 'scorer_model_info{name="toy-price-response",version="1"} 1.0' in text
    assert 'scorer_reloads_total{result="ok"} 2.0' in text  # startup + admin
    assert "scorer_quoted_items_total 4.0" in text


def test_bootstrap_hydrates_known_users(tmp_path: Path, registry: FakeRegistry) -> None:
    ts = pd.date_range("2026-01-01", periods=3, freq="h", tz="UTC")
    events = pd.DataFrame(
        {
            S.EVENT_ID: ["e1", "e2", "e3"],
            S.TS: ts,
            S.USER_ID: ["known", "known", "other"],
            S.SESSION_ID: ["s", "s", "s"],
            S.EVENT_TYPE: [S.SEARCH, S.SEARCH, S.VIEW],
            S.ITEM_ID: [None, None, "i1"],
            S.QUERY: ["cheap tv", "cheap phone", None],
            S.PRICE: [np.nan, np.nan, 10.0],
        }
    )
    pio.write_table(events, tmp_path / "data", S.EVENTS)
    app = create_app(
        _settings(tmp_path, bootstrap_data_dir=tmp_path / "data"), registry.load, seed=0
    )
    with TestClient(app) as c:
        known = _quote(c, user="known")
        new = _quote(c, user="stranger")
    assert known["personalized"] is True and new["personalized"] is False
    new_price = {q["item_id"]: q["price"] for q in new["items"]}
    assert all(q["price"] <= new_price[q["item_id"]] for q in known["items"])
    assert any(q["price"] < new_price[q["item_id"]] for q in known["items"])


class _BrokenStore:
    """A store that is down (e.g. Redis unreachable)."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("store down")

        return fail


def test_store_outage_degrades_instead_of_failing(tmp_path: Path, registry: FakeRegistry) -> None:
    app = create_app(_settings(tmp_path), registry.load, store=_BrokenStore(), seed=0)  # type: ignore[arg-type]
    with TestClient(app) as c:
        body = _quote(c, session_id="s1")
        assert body["degraded"] is True and body["personalized"] is False
        r = c.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": "view"}]})
        assert r.status_code == 503 and "store" in r.json()["detail"]


def test_toy_model_is_a_demand_model() -> None:
    model = ToyDemand(toy_catalog(3))
    assert isinstance(model, DemandModel)
    grid = np.array([[1.0, 2.0, 4.0]] * 3)
    probs = model.demand(3.0, np.arange(3), grid)
    assert np.all(np.diff(probs, axis=1) < 0)  # demand falls with price
