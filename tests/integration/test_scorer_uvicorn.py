"""The scorer as a real uvicorn process, quoted over HTTP."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scorer.offer_log import export_offers
from scorer.process import ScorerStartError, free_port, start_scorer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log_dir = tmp_path / "offers"
    env = {
        "PRICING_OFFER_LOG_DIR": str(log_dir),
        "PRICING_ADMIN_TOKEN": "tok",
        "PRICING_ALIAS_POLL_SECONDS": "0",
        "SCORER_TOY_ITEMS": "60",
    }
    try:
        sp = start_scorer(
            "scorer.testing:toy_app_factory", env=env, cwd=tmp_path, ready_timeout_s=30
        )
    except ScorerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield sp.url, log_dir
    finally:
        sp.stop()


def test_quote_over_http(server: tuple[str, Path]) -> None:
    url, log_dir = server
    items = [f"i{k}" for k in range(50)]
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/quote", json={"user_id": "u1", "items": items, "session_id": "s"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and len(body["items"]) == 50
        assert [q["rank"] for q in body["items"]] == list(range(1, 51))
        assert (
            c.post(
                "/v1/events",
                json={"user_id": "u1", "events": [{"event_type": "view", "item_id": "i1"}]},
            ).status_code
            == 200
        )
        qid = body["quote_id"]
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i3", "purchased": True})
        assert r.status_code == 200
        assert c.post("/admin/reload", headers={"Authorization": "Bearer tok"}).status_code == 200
        assert "scorer_requests_total" in c.get("/metrics").text
    offers = export_offers(log_dir)
    assert offers["offer_id"].tolist() == [f"{qid}:i3"]


@pytest.mark.slow
def test_pricing_serve_runs_web_concurrency_workers_each_with_its_own_log_files(
    tmp_path: Path,
) -> None:
    """`pricing serve` (scorer.main.serve) starts $WEB_CONCURRENCY processes on one port; each
    claims its own offer-log writer slot in the shared directory."""
    import fcntl

    port = free_port()
    log_dir = tmp_path / "offers"
    env = {
        "WEB_CONCURRENCY": "2",
        "PRICING_OFFER_LOG_DIR": str(log_dir),
        "PRICING_ALIAS_POLL_SECONDS": "0",
        "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",  # no champion: up, not ready
    }
    code = f"from scorer.main import serve; serve(port={port}, log_level='warning')"
    sp = start_scorer(
        argv=[sys.executable, "-c", code],
        port=port,
        env=env,
        cwd=tmp_path,
        log_path=tmp_path / "serve.log",
        ready_timeout_s=None,  # no champion: it never gets ready; the test waits for its workers
    )
    try:
        deadline = time.monotonic() + 120
        held: list[int] = []
        while time.monotonic() < deadline:
            held = []
            for slot in (0, 1, 2):
                lock = log_dir / f".writer-{slot}.lock"
                if not lock.exists():
                    continue
                with open(lock, "rb") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        held.append(slot)  # a live worker holds it
            if held == [0, 1]:
                break
            time.sleep(0.2)
        assert held == [0, 1]
        while True:  # the workers answer once their startup is done
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no worker answered /healthz"
                time.sleep(0.2)
    finally:
        sp.stop(timeout_s=30)


def test_a_malformed_experiment_stops_the_scorer_with_a_clear_message(tmp_path: Path) -> None:
    env = {
        "PRICING_OFFER_LOG_DIR": str(tmp_path / "offers"),
        "PRICING_ALIAS_POLL_SECONDS": "0",
        "PRICING_EXPERIMENT": "exp-1,challenger=challenger:2",
    }
    with pytest.raises(ScorerStartError) as err:
        start_scorer("scorer.testing:toy_app_factory", env=env, cwd=tmp_path, ready_timeout_s=60)
    message = str(err.value)
    assert "exited" in message
    assert "PRICING_EXPERIMENT: the share of arm 'challenger' must be a number in [0, 1]" in message
