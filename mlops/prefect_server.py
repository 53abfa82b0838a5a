"""Prefect's temporary server (the one a flow starts when no PREFECT_API_URL is set) never outlives
the command that started it.

Prefect 3 starts it as a child process (`prefect.server.api.server.SubprocessASGIServer`, a
`python -m uvicorn` subprocess) and stops it from an `atexit` hook, so a command killed by a
signal's default action (SIGTERM) left it running under PID 1, and a Ctrl-C at the terminal, which
reaches the whole foreground process group, killed the server under a flow that then went on
against it. `guard()` changes how that child is started:

- in its own process group: a terminal's Ctrl-C reaches the command, which stops its flow while
  the server still records it, then stops the server on the way out;
- with `PR_SET_PDEATHSIG` (Linux): the kernel kills it when the command dies, however it dies
  (even SIGKILL). The death signal follows the thread that started the child, so it is set only
  when the main thread starts the server (it lives as long as the process; a flow called from
  the command's main thread starts it there);
- and an `atexit` hook, registered before the server starts and so run after Prefect's own stop,
  kills a server whose start was interrupted before Prefect registered its stop.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_installed = False


def _libc_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_setup(parent: int, prctl: Any) -> Any:
    """The `preexec_fn` of the server: its own process group, killed when `parent` dies."""

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the death signal was armed
                os._exit(1)

    return setup


class _ServerPopen(subprocess.Popen):  # type: ignore[type-arg]
    """`subprocess.Popen` as Prefect's server module sees it once `guard()` ran."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        prctl = _libc_prctl() if in_main else None
        kwargs.setdefault("preexec_fn", _child_setup(os.getpid(), prctl))
        super().__init__(*args, **kwargs)


class _SubprocessModule:
    """Prefect's server module's `subprocess`: the real module, but `Popen` is `_ServerPopen`."""

    Popen = _ServerPopen

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def _servers() -> list[Any]:
    mod = sys.modules.get("prefect.server.api.server")
    if mod is None:
        return []
    return list(getattr(mod.SubprocessASGIServer, "_instances", {}).values())


def kill_servers() -> None:
    """Terminate (then kill) every temporary server this process started that is still running."""
    for server in _servers():
        proc = getattr(server, "server_process", None)
        if proc is None or proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def guard() -> None:
    """Start Prefect's temporary server the way described above (idempotent).

    Nothing to do when PREFECT_API_URL names a server: no temporary one is started then (and
    Prefect's server module, seconds to import, is not imported for nothing).
    """
    global _installed
    if _installed:
        return
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    import prefect.server.api.server as server_module

    server_module.subprocess = _SubprocessModule()  # type: ignore[assignment]
    atexit.register(kill_servers)
    _installed = True
