"""The scorer's /docs and /redoc work offline: every asset they load is served by the scorer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlops.settings import Settings
from scorer.app import create_app
from scorer.testing import toy_handle

# src="...", href="...", and the url: '...' of Swagger UI's config and ReDoc's spec-url
_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(offer_log_dir=tmp_path / "offers", alias_poll_seconds=0.0)
    with TestClient(create_app(settings, lambda: toy_handle("1"), seed=0)) as c:
        yield c


def _urls(html: str) -> list[str]:
    return [a or b for a, b in _URL.findall(html)]


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"javascript": 1, "css": 1, "png": 1}),
        ("/redoc", {"javascript": 1, "png": 1}),
    ],
)
def test_docs_pages_load_only_local_assets(
    client: TestClient, page: str, assets: dict[str, int]
) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = _urls(r.text)
    assert urls, "the page references its assets"
    external = [u for u in urls if not u.startswith("/") or u.startswith("//")]
    assert external == [], f"{page} loads from outside the scorer: {external}"
    assert "http://" not in r.text and "https://" not in r.text and "cdn" not in r.text.lower()
    assert "/openapi.json" in urls

    found: dict[str, int] = {}
    for url in urls:
        got = client.get(url)
        assert got.status_code == 200, f"{url}: {got.status_code}"
        if url == "/openapi.json":
            assert got.json()["info"]["title"] == "personalized-pricing scorer"
            continue
        kind = next(k for k in ("javascript", "css", "png") if k in got.headers["content-type"])
        found[kind] = found.get(kind, 0) + 1
        if kind == "javascript":  # the real bundle, not a stub
            assert len(got.content) > 500_000 and b"function" in got.content[:5000]
        if kind == "css":
            assert len(got.content) > 50_000 and b".swagger-ui" in got.content
    assert found == assets


def test_swagger_oauth2_redirect_and_no_cdn_docs_left(client: TestClient) -> None:
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert '"validatorUrl": null' in client.get("/docs").text
    routes = [getattr(r, "path", "") for r in client.app.routes]  # type: ignore[attr-defined]
    assert routes.count("/docs") == 1 and routes.count("/redoc") == 1
    assert client.get("/docs-assets/nope.js").status_code == 404
    assert client.get("/docs-assets/../pyproject.toml").status_code == 404


def test_every_quote_field_is_described_and_the_answer_matches_the_schema(
    client: TestClient,
) -> None:
    """A shop engineer reads the quote from /openapi.json alone: every field says what it is
    (money in the stated currency, what propensity and state_generation are for), and a real
    answer has exactly the documented fields, each item naming the guardrail it sits at."""
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("QuoteResponse", "QuotedItem"):
        props = spec[name]["properties"]
        undescribed = [k for k, v in props.items() if not v.get("description")]
        assert undescribed == [], f"{name}: {undescribed} have no description"
    item = spec["QuotedItem"]["properties"]
    assert "currency" in item["price"]["description"]
    assert "offline" in item["propensity"]["description"]
    assert "generation" in spec["QuoteResponse"]["properties"]["state_generation"]["description"]

    r = client.post(
        "/v1/quote", json={"user_id": "u1", "items": ["i0", "i1", "i2", "i3"], "session_id": "s"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["currency"] == "USD"
    assert set(body) <= set(spec["QuoteResponse"]["properties"])
    allowed = {None, *item["guardrail"]["anyOf"][0]["enum"]}
    for it in body["items"]:
        assert set(it) == set(item)
        assert it["guardrail"] in allowed
