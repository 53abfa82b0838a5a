"""Start and stop a scorer in a child process (uvicorn over real HTTP), for tests and benchmarks.

`start_scorer` runs `python -m uvicorn <app> --factory` on a free loopback port with the given
environment on top of this process's, waits until `/readyz` answers 200 (or the process exits, or
the timeout passes: `ScorerStartError` with the end of its output), and returns a `ScorerProcess`
whose `stop()` terminates it (SIGTERM, then SIGKILL after a grace period). `scorer_process` is the
same as a context manager. The integration tests' toy scorer, the latency benchmark's scorers and
the closed loop's scorer are all this one process with different apps and environments.

`die_with_parent` is the other side: a worker of a multi-process server (`pricing serve` with
WEB_CONCURRENCY) calls it so that it exits when its supervisor dies, however that happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_TAIL_CHARS = 4000


class ScorerStartError(RuntimeError):
    """The scorer process exited or did not become ready; the message ends with its output."""


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0  # where prctl is unavailable: how often a worker checks its parent


def die_with_parent() -> None:
    """In a worker process (a `multiprocessing` child: uvicorn's `--workers`), get SIGTERM when the
    parent process dies; a no-op in any other process.

    uvicorn's supervisor stops its workers when it is told to stop. When it is killed (kill -9, the
    OOM killer) nobody tells them: they keep serving the port as orphans and a restarted server
    finds the address in use. On Linux the kernel sends the signal (prctl PR_SET_PDEATHSIG);
    elsewhere a daemon thread polls `os.getppid()` every `PARENT_POLL_S`. SIGTERM is uvicorn's
    graceful shutdown: requests in flight finish, the offer log is closed. A single-process
    server (no workers) is left alone: it keeps running when the shell that started it goes.
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent.pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent.pid,), name="parent-watch", daemon=True
        ).start()


def _watch_parent(ppid: int) -> None:
    while os.getppid() == ppid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def free_port() -> int:
    """A free loopback TCP port (racy by nature; good enough for throwaway servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ScorerProcess:
    """A running scorer: its process, URL and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    host: str = "127.0.0.1"
    log_path: Path | None = None  # None: the output is piped (read it with `output()` once stopped)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What the process wrote (the log file's tail, or the pipe once it has exited)."""
        if self.log_path is not None:
            if self._log is not None:
                self._log.flush()
            try:
                return self.log_path.read_bytes()[-_TAIL_CHARS:].decode(errors="replace")
            except OSError:
                return ""
        if self.alive() or self.proc.stdout is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0, path: str = "/readyz") -> None:
        """Poll `path` until it answers 200.

        Raises:
            ScorerStartError: the process exited first, or `timeout_s` passed.
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise ScorerStartError(
                    f"the scorer exited ({self.proc.returncode}) before it was ready:\n"
                    f"{self.output()[-_TAIL_CHARS:]}"
                )
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ScorerStartError(
                    f"the scorer was not ready within {timeout_s:.0f} s:\n{self.output()}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Terminate the process (and its uvicorn workers), killing it after `timeout_s`; returns
        its exit code. Idempotent."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def scorer_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with `overrides` on top (a None value removes the variable)."""
    env = dict(os.environ)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_scorer(
    app: str = "scorer.main:app_factory",
    *,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    workers: int = 1,
    cwd: str | Path | None = None,
    app_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    uvicorn_args: Sequence[str] = ("--no-access-log",),
    argv: Sequence[str] | None = None,
    ready_timeout_s: float | None = 60.0,
) -> ScorerProcess:
    """Start `uvicorn <app> --factory` in a child process and wait until it is ready.

    Args:
        app: the app factory, `module:function` (the toy scorer: `scorer.testing:toy_app_factory`).
        env: variables on top of this process's environment (None removes one).
        port: default a free loopback port.
        workers: uvicorn worker processes sharing the port.
        cwd, app_dir: the child's working directory; a directory to import `app` from.
        log_path: append the output (stdout and stderr) to this file; default a pipe.
        uvicorn_args: more uvicorn options.
        argv: run this command instead of uvicorn (it must serve on `port`; `pricing serve`).
        ready_timeout_s: wait this long for /readyz to answer 200; None: do not wait.

    Raises:
        ScorerStartError: the process exited before it was ready, or was not ready in time (it is
            stopped then).
    """
    port = port or free_port()
    if argv is None:
        argv = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", host]
        argv += ["--port", str(port), "--workers", str(workers)]
        if app_dir is not None:
            argv += ["--app-dir", str(app_dir)]
        argv += list(uvicorn_args)
    log: IO[bytes] | None = None
    out: Any = subprocess.PIPE
    if log_path is not None:
        log_path = Path(log_path)
        log = out = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(
        list(argv), env=scorer_env(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT
    )
    sp = ScorerProcess(proc, port, host, log_path, log)
    if ready_timeout_s is not None:
        sp.wait_ready(ready_timeout_s)
    return sp


@contextmanager
def scorer_process(app: str = "scorer.main:app_factory", **kwargs: Any) -> Iterator[ScorerProcess]:
    """`start_scorer` as a context manager: the process is stopped on the way out."""
    sp = start_scorer(app, **kwargs)
    try:
        yield sp
    finally:
        sp.stop()
