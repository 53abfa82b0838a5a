"""Bounded bodies, bounded memory, no 5xx for any input, and the admin token (issue 10, items 5, 7).

In process with TestClient, plus one real uvicorn to show that a large body is refused while it
is being sent, not after it has been buffered.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlops.settings import Settings, get_settings
from scorer import main as scorer_main
from scorer.app import create_app
from scorer.schemas import MAX_CONTEXT_DEPTH, MAX_CONTEXT_NODES
from scorer.serving import QuoteBook
from scorer.testing import toy_handle

TOKEN = "s3cret-s3cret-s3cret"


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "offer_log_dir": tmp_path / "offers",
        "admin_token": TOKEN,
        "alias_poll_seconds": 0.0,
        "exploration": 0.0,
        "max_candidates": 20,
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(_settings(tmp_path, max_body_bytes=64 * 1024), lambda: toy_handle("1"), seed=0)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post_raw(c: TestClient, path: str, body: bytes) -> Any:
    return c.post(path, content=body, headers={"content-type": "application/json"})


# --- item 5: bodies -------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_with_the_limit(client: TestClient) -> None:
    big = b'{"user_id": "u1", "items": ["i0"], "context": {"x": "' + b"a" * 100_000 + b'"}}'
    r = _post_raw(client, "/v1/quote", big)
    assert r.status_code == 413, r.text
    assert "too large" in r.json()["detail"] and "65536" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"user_id": "u1", "items": ["i0"], "context": {"x": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}}'

    r = client.post("/v1/quote", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert client.post("/v1/quote", json={"user_id": "u1", "items": ["i0"]}).status_code == 200


def _read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_a_large_body_is_refused_before_it_is_sent(start_scorer: Callable[..., Any]) -> None:
    sp = start_scorer(PRICING_MAX_BODY_BYTES=str(1 << 20))
    host, port = sp.url.removeprefix("http://").split(":")
    # Declared 19 MB, nothing sent: the answer comes without waiting for the body.
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/quote HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 19000000\r\n\r\n"
        )
        t = time.monotonic()
        head = _read_response(s, timeout=10)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert time.monotonic() - t < 5
    # Chunked: cut off once past the limit, long before the 19 MB the client meant to send.
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/quote HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * 65536
        sent, head = 0, b""
        s.settimeout(0.05)
        while sent < 19_000_000 and not head:
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            with contextlib.suppress(TimeoutError):
                head = s.recv(65536)
        head = head or _read_response(s, timeout=10)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert sent < 4 << 20, f"the server read {sent} bytes before refusing"
    assert sp.proc.poll() is None


def test_context_is_bounded_in_depth_and_size(client: TestClient) -> None:
    ok = {"page": "home", "ab": {"variant": "b", "weights": [0.1, 0.9]}}
    r = client.post("/v1/quote", json={"user_id": "u1", "items": ["i0"], "context": ok})
    assert r.status_code == 200, r.text
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_CONTEXT_DEPTH + 1):
        node["k"] = {}
        node = node["k"]
    wide = {f"k{k}": k for k in range(MAX_CONTEXT_NODES)}
    for context, needle in ((deep, "nested deeper"), (wide, "keys and values")):
        r = client.post("/v1/quote", json={"user_id": "u1", "items": ["i0"], "context": context})
        assert r.status_code == 422 and needle in r.text, r.text


NASTY = [
    # (path, raw body): every one was a 500, or accepted, before
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "price": NaN}]}'),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "price": Infinity}]}'),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "price": -Infinity}]}'),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "price": 1e400}]}'),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "\\ud800"}]}'),
    ("/v1/events", b'{"user_id": "\\udfff", "events": [{"event_type": "view"}]}'),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "query": "\\ud83d"}]}'),
    (
        "/v1/events",
        b'{"user_id": "u1", "events": [{"event_type": "view", "ts": "9999-12-31T00:00:00Z"}]}',
    ),
    (
        "/v1/events",
        b'{"user_id": "u1", "events": [{"event_type": "view", "ts": "0001-01-01T00:00:00Z"}]}',
    ),
    ("/v1/events", b'{"user_id": "u1", "events": [{"event_type": "view", "\\ud800": 1}]}'),
    ("/v1/quote", b'{"user_id": "\\ud800", "items": ["i0"]}'),
    ("/v1/quote", b'{"user_id": "u1", "items": ["i0"], "session_id": "\\ud800"}'),
    ("/v1/quote", b'{"user_id": "u1", "items": ["\\ud800"]}'),
    ("/v1/quote", b'{"user_id": "u1", "items": ["i0"], "context": {"x": NaN}}'),
    ("/v1/quote", b'{"user_id": "u1", "items": ["i0"], "context": {"\\ud800": 1}}'),
    ("/v1/quote", b'{"user_id": "u1", "items": [NaN]}'),
    ("/v1/quote", b"[" * 50_000 + b"]" * 50_000),
    (
        "/v1/quote",
        b'{"user_id": "u1", "items": ["i0"], "context": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ),
    ("/v1/quote", b"\xff\xfe"),
    ("/v1/outcomes", b'{"quote_id": "\\ud800", "item_id": "i0", "purchased": true}'),
    ("/v1/outcomes", b'{"quote_id": "q", "item_id": "i0", "purchased": NaN}'),
]


@pytest.mark.parametrize(("path", "body"), NASTY, ids=range(len(NASTY)))
def test_no_input_gives_a_5xx(client: TestClient, path: str, body: bytes) -> None:
    r = _post_raw(client, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    r.json()  # a well-formed error body


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", ""])
def test_a_body_that_is_not_json_is_4xx(client: TestClient, content_type: str) -> None:
    r = client.post("/v1/quote", content=b"\xff\xfe\x00", headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


def test_validation_errors_say_where_without_echoing_the_input(client: TestClient) -> None:
    r = _post_raw(
        client, "/v1/events", b'{"user_id": "u1", "events": [{"event_type": "\\ud800 x"}]}'
    )
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "events", 0, "event_type"] and "input" not in err
    assert "event_type must be one of" in err["msg"]
    r = _post_raw(client, "/v1/quote", b'{"user_id": "u1", "items": [')
    assert r.status_code == 422 and "json" in r.text.lower()


def test_a_future_or_ancient_event_is_refused_a_recent_one_kept(client: TestClient) -> None:
    for ts in ("2262-01-01T00:00:00+00:00", "1900-01-01T00:00:00+00:00"):
        r = client.post(
            "/v1/events", json={"user_id": "u1", "events": [{"event_type": "view", "ts": ts}]}
        )
        assert r.status_code == 422 and "ts must be between" in r.text, r.text
    r = client.post(
        "/v1/events",
        json={"user_id": "u1", "events": [{"event_type": "view", "ts": "2025-06-01T12:00:00"}]},
    )
    assert r.status_code == 200, r.text


def test_the_quote_book_is_bounded_by_rows_not_quotes() -> None:
    book = QuoteBook(max_rows=1000)
    rows = [{"item_id": f"i{k}"} for k in range(300)]
    for q in range(100):
        book.put(f"q{q}", rows)
    assert book.rows <= 1000
    assert book.get("q99") is not None and book.get("q0") is None
    book.put("huge", [{"item_id": f"i{k}"} for k in range(1001)])  # bigger than the book
    assert book.get("huge") is None and book.rows <= 1000
    book.put("q99", rows[:10])  # a re-put replaces, and is counted once
    assert len(book.get("q99") or {}) == 10 and book.rows <= 1000


def test_an_evicted_quote_is_still_found(tmp_path: Path) -> None:
    settings = _settings(tmp_path, quote_book_max_rows=5)
    with TestClient(create_app(settings, lambda: toy_handle("1"), seed=0)) as c:
        first = c.post("/v1/quote", json={"user_id": "u1", "items": ["i0", "i1", "i2"]}).json()
        for _ in range(5):
            c.post("/v1/quote", json={"user_id": "u2", "items": ["i3", "i4", "i5"]})
        assert c.app.state.runtime.pricer.book.rows <= 5  # type: ignore[attr-defined]
        r = c.post(
            "/v1/outcomes",
            json={"quote_id": first["quote_id"], "item_id": "i2", "purchased": True},
        )
        assert r.status_code == 200, r.text


# --- item 7: the admin token ----------------------------------------------------------------------


def test_there_is_no_default_admin_token_and_reload_is_refused_without_one(
    tmp_path: Path,
) -> None:
    assert Settings.model_fields["admin_token"].default is None
    assert Settings(_env_file=None, admin_token="  ").admin_token is None
    app = create_app(_settings(tmp_path, admin_token=None), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer change-me"}, {"Authorization": "Bearer "}):
            r = c.post("/admin/reload", headers=headers)
            assert r.status_code == 403, r.text
            assert "admin token not configured" in r.json()["detail"]


def test_reload_compares_the_whole_token(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path), lambda: toy_handle("1"), seed=0)) as c:
        for wrong in ("", TOKEN[:-1], TOKEN + "x", "change-me", TOKEN.upper()):
            r = c.post("/admin/reload", headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code in (401, 403), (wrong, r.status_code)
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("token", "host", "ok"),
    [
        ("change-me", "0.0.0.0", False),
        ("change-me", "::", False),
        ("change-me", "10.1.2.3", False),
        ("change-me", "scorer.internal", False),
        ("change-me", "127.0.0.1", True),
        ("change-me", "localhost", True),
        ("change-me", "::1", True),
        (None, "0.0.0.0", True),  # no token: reload is refused, nothing to guess
        (TOKEN, "0.0.0.0", True),
    ],
)
def test_serve_refuses_the_placeholder_token_off_loopback(
    token: str | None, host: str, ok: bool
) -> None:
    settings = Settings(_env_file=None, admin_token=token)
    if ok:
        scorer_main.check_admin_token(settings, host)
    else:
        with pytest.raises(scorer_main.UnsafeSettingsError, match="change-me"):
            scorer_main.check_admin_token(settings, host)


def test_pricing_serve_exits_before_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setenv("PRICING_ADMIN_TOKEN", "change-me")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="PRICING_ADMIN_TOKEN"):
            scorer_main.serve(host="0.0.0.0")
    finally:
        get_settings.cache_clear()
