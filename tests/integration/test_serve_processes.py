"""`pricing serve` with several workers: they die with their parent, and a bad setting stops the
server before any worker starts, with one `error:` line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from scorer.process import free_port

pytestmark = pytest.mark.integration


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("REDIS_URL", "PRICING_EXPERIMENT", "PRICING_BOOTSTRAP_DATA_DIR"):
        env.pop(key, None)
    env.update(
        {
            "WEB_CONCURRENCY": "2",
            "PRICING_OFFER_LOG_DIR": str(tmp_path / "offers"),
            "PRICING_ALIAS_POLL_SECONDS": "0",
            "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",  # no champion: up, not ready
            **extra,
        }
    )
    return env


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds on restart
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_kill_9_of_pricing_serve_takes_its_workers_down_and_frees_the_port(
    tmp_path: Path, wait_until: Any
) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.fail(
            "this test reads the workers' parents from /proc: run it on Linux", pytrace=False
        )
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)],
        env=_serve_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        wait_until(lambda: _healthy(port), timeout=120, what="a worker answers /healthz")

        def two_workers() -> bool:
            workers[:] = [
                p
                for p in _children(parent.pid)
                if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            ]
            return len(workers) == 2

        wait_until(two_workers, timeout=120, what="two worker processes")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(
            lambda: not any(_alive(p) for p in workers),
            timeout=30,
            what="the workers exit after their parent was killed",
        )
        wait_until(lambda: _port_free(port), timeout=30, what="the port is free again")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # orphans left by a failed run: the test started them, it ends them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "value",
    ["exp-1,challenger=challenger:1.5", "garbage"],
)
def test_a_bad_experiment_with_two_workers_exits_at_once_with_one_error_line(
    tmp_path: Path, value: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)],
        env=_serve_env(tmp_path, PRICING_EXPERIMENT=value),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)  # a worker crash loop never ends: this fails
    finally:
        if proc.poll() is None:
            proc.terminate()  # uvicorn's supervisor stops its workers on SIGTERM
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert "PRICING_EXPERIMENT" in errors[0] and repr(value) in errors[0]
    assert "Traceback" not in out, out
    assert "Started parent process" not in out  # no worker was started


def test_a_bad_setting_names_the_variable_and_the_value(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(free_port())],
        env=_serve_env(tmp_path, PRICING_MAX_BODY_BYTES="lots"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: PRICING_MAX_BODY_BYTES='lots': Input should be a valid integer, unable to parse "
        "string as an integer"
    ]
