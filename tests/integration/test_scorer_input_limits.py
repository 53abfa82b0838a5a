"""Ids are bounded and free of control characters, error bodies quote at most a short escaped
prefix of the input, and a body not declared as JSON is 415: on the fast path and the model path
alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mlops.settings import Settings
from scorer.app import create_app
from scorer.fastpath import FastPath
from scorer.schemas import (
    MAX_ID_LENGTH,
    EventsRequest,
    QuoteRequest,
    fast_events,
    fast_quote,
    shown,
)
from scorer.testing import toy_handle

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert(1)</script>" + "x" * 500_000  # a 500 KB id


def _app(tmp_path: Path, fast: bool = True) -> FastAPI:
    settings = Settings(
        offer_log_dir=tmp_path / "offers",
        admin_token="s3cret",
        alias_poll_seconds=0.0,
        exploration=0.0,
        max_body_bytes=2 * 1024 * 1024,
    )
    app = create_app(settings, lambda: toy_handle("1"), seed=0)
    if not fast:  # the routes and their pydantic models alone
        app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPath]
    return app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app(tmp_path), raise_server_exceptions=False) as c:
        yield c


def _assert_short_and_inert(r: Any) -> None:
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 2000, len(r.content)
    assert "<script>" not in r.text and "x" * 100 not in r.text


# A context sends a quote to the model path; a plain body takes the fast path.
SLOW = {"context": {"page": "home"}}


@pytest.mark.parametrize("extra", [{}, SLOW], ids=["fast", "model"])
def test_a_huge_hostile_id_is_refused_without_being_echoed(
    client: TestClient, extra: dict[str, Any]
) -> None:
    r = client.post("/v1/quote", json={"user_id": "u1", "items": ["i0", HOSTILE], **extra})
    _assert_short_and_inert(r)
    assert f"ids are limited to {MAX_ID_LENGTH} characters" in r.text
    r = client.post("/v1/quote", json={"user_id": HOSTILE, "items": ["i0"], **extra})
    _assert_short_and_inert(r)
    event = {"event_type": "view", "item_id": HOSTILE}
    _assert_short_and_inert(client.post("/v1/events", json={"user_id": "u1", "events": [event]}))
    r = client.post("/v1/events", json={"user_id": "u1", "events": [{"event_type": HOSTILE}]})
    _assert_short_and_inert(r)
    r = client.post("/v1/outcomes", json={"quote_id": HOSTILE, "item_id": "i0", "purchased": True})
    _assert_short_and_inert(r)


def test_an_unknown_id_is_quoted_as_a_short_escaped_prefix(client: TestClient) -> None:
    odd = "<script>" + "y" * (MAX_ID_LENGTH - 8)  # as long as an id may be, unknown to the model
    r = client.post("/v1/quote", json={"user_id": "u1", "items": ["i0", odd]})
    assert r.status_code == 422 and "unknown item ids" in r.json()["detail"], r.text
    assert "<script>" not in r.text and "y" * 100 not in r.text
    assert "\\x3cscript\\x3e" in r.json()["detail"]  # recognisable, but not markup
    r = client.post("/v1/outcomes", json={"quote_id": odd, "item_id": "i0", "purchased": True})
    assert r.status_code == 404 and "<script>" not in r.text and len(r.content) < 300


def test_an_unknown_key_is_named_by_a_short_escaped_prefix(client: TestClient) -> None:
    r = client.post("/v1/quote", json={"user_id": "u1", "items": ["i0"], HOSTILE: 1})
    _assert_short_and_inert(r)
    assert r.json()["detail"][0]["msg"] == "Extra inputs are not permitted"


def test_shown_is_a_short_escaped_prefix() -> None:
    assert shown("abc") == "'abc'"
    assert shown("a\x00<b>&") == "'a\\x00\\x3cb\\x3e\\x26'"
    long = shown("z" * 10_000)
    assert long.startswith("'" + "z" * 64 + "'") and long.endswith("(10000 characters)")


CONTROL_IDS = ["u\x00", "u\n1", "\x1b[31mred", "u\x7f", "u\x85"]


@pytest.mark.parametrize("bad", CONTROL_IDS, ids=range(len(CONTROL_IDS)))
@pytest.mark.parametrize("extra", [{}, SLOW], ids=["fast", "model"])
def test_control_characters_in_ids_are_refused(
    client: TestClient, bad: str, extra: dict[str, Any]
) -> None:
    for body in (
        {"user_id": bad, "items": ["i0"]},
        {"user_id": "u1", "items": ["i0", bad]},
        {"user_id": "u1", "items": ["i0"], "session_id": bad},
    ):
        r = client.post("/v1/quote", json={**body, **extra})
        assert r.status_code == 422, (body, r.text)
        assert "control characters" in r.text, r.text
    for event in ({"item_id": bad}, {"session_id": bad}, {"event_id": bad}):
        r = client.post(
            "/v1/events", json={"user_id": "u1", "events": [{"event_type": "view", **event}]}
        )
        assert r.status_code == 422 and "control characters" in r.text, (event, r.text)
    r = client.post("/v1/events", json={"user_id": bad, "events": [{"event_type": "view"}]})
    assert r.status_code == 422 and "control characters" in r.text, r.text
    for outcome in ({"quote_id": bad, "item_id": "i0"}, {"quote_id": "q", "item_id": bad}):
        r = client.post("/v1/outcomes", json={**outcome, "purchased": True})
        assert r.status_code == 422 and "control characters" in r.text, (outcome, r.text)


def test_printable_unicode_ids_are_still_served(client: TestClient) -> None:
    r = client.post("/v1/quote", json={"user_id": "ü-ser ✓", "items": ["i0"], "session_id": "s"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/quote", json={"user_id": "u" * MAX_ID_LENGTH, "items": ["i0"]})
    assert r.status_code == 200, r.text


PARITY: list[Any] = [
    {"user_id": "u\x00", "items": ["i0"]},
    {"user_id": "u1", "items": ["i\n0"]},
    {"user_id": "u1", "items": ["i" * (MAX_ID_LENGTH + 1)]},
    {"user_id": "u1", "items": ["i" * MAX_ID_LENGTH]},
    {"user_id": "u1", "items": ["i0"], "session_id": "s\x9f"},
    {"user_id": "u1", "items": ["ï0"], "session_id": "sé"},
]
EVENT_PARITY: list[Any] = [
    {"user_id": "u\x00", "events": [{"event_type": "view"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "item_id": "i\t0"}]},
    {"user_id": "u1", "events": [{"event_type": "view", "event_id": "e" * 257}]},
    {"user_id": "u1", "events": [{"event_type": "search", "query": "tab\tin a query"}]},
]


@pytest.mark.parametrize("body", PARITY, ids=range(len(PARITY)))
def test_the_fast_quote_parser_refuses_what_the_model_refuses(body: Any) -> None:
    fast = fast_quote(body, max_items=500)
    try:
        model = QuoteRequest.model_validate(body)
    except ValidationError:
        assert fast is None
        return
    assert fast == (model.user_id, model.items, model.session_id)


@pytest.mark.parametrize("body", EVENT_PARITY, ids=range(len(EVENT_PARITY)))
def test_the_fast_events_parser_refuses_what_the_model_refuses(body: Any) -> None:
    fast = fast_events(body)
    try:
        model = EventsRequest.model_validate(body)
    except ValidationError:
        assert fast is None
        return
    assert fast is not None and fast[0] == model.user_id


BODIES = {
    "/v1/quote": b'{"user_id": "u1", "items": ["i0"]}',
    "/v1/events": b'{"user_id": "u1", "events": [{"event_type": "view"}]}',
    "/v1/outcomes": b'{"quote_id": "q", "item_id": "i0", "purchased": true}',
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "model"])
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""]
)
def test_a_body_not_declared_as_json_is_415(tmp_path: Path, fast: bool, content_type: str) -> None:
    with TestClient(_app(tmp_path, fast=fast)) as c:
        for path, body in BODIES.items():
            r = c.post(path, content=body, headers={"content-type": content_type})
            assert r.status_code == 415, (path, r.status_code, r.text)
            assert "application/json" in r.json()["detail"]
        # JSON, JSON with a charset and a +json type are served
        for ok in ("application/json", "application/json; charset=utf-8", "application/x+json"):
            r = c.post("/v1/quote", content=BODIES["/v1/quote"], headers={"content-type": ok})
            assert r.status_code == 200, (ok, r.text)
        metrics = c.get("/metrics").text
    assert 'route="/v1/quote",status="415"' in metrics


def test_a_hostile_content_type_is_not_echoed(client: TestClient) -> None:
    r = client.post(
        "/v1/quote",
        content=BODIES["/v1/quote"],
        headers={"content-type": "text/<script>" + "a" * 5000},
    )
    assert r.status_code == 415 and "<script>" not in r.text and len(r.content) < 300
