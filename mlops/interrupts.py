"""Stopping a command on SIGINT or SIGTERM: a process-wide stop flag, and what the run kept.

A signal sets the flag and raises `Interrupted` (a `KeyboardInterrupt`) in the main thread, where
the flows run. The flag outlives the exception: some code catches a `KeyboardInterrupt` and goes on
or turns it into another error (pydantic wraps it in a serialization error that Prefect would
retry; Lightning ends the fit with `SystemExit(1)`), so every change to the registry (registering a
version, moving an alias) calls `check` first and refuses once a stop was asked for.

The handlers are set for SIGINT too when the process inherited "ignore SIGINT" (a command started
in the background by a non-interactive shell): an explicit `kill -INT` still stops it.

The ledger records what the command changed before the signal (versions registered, aliases moved)
and the MLflow runs it ended KILLED, for the one line the command prints when it stops.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by signal `signum` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int, doing: str = "") -> None:
        self.signum = int(signum)
        self.doing = doing
        super().__init__(f"{self.name}{': ' + doing if doing else ''}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM: what a shell reports for a process the signal killed."""
        return 128 + self.signum

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signum, self.doing))


@dataclass
class Ledger:
    """What the command did that outlives it: kept registry changes, runs ended KILLED."""

    registered: list[str] = field(default_factory=list)  # "price-response v4"
    aliases: list[str] = field(default_factory=list)  # "price-response@champion -> v4"
    killed_runs: list[str] = field(default_factory=list)  # MLflow run ids


_lock = threading.Lock()
_signum: int | None = None
_ledger = Ledger()


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _signum


def check(doing: str) -> None:
    """Raise `Interrupted` if a stop was asked for: call before a change that must not happen after
    the signal (`doing` says which, e.g. "registering price-response")."""
    if _signum is not None:
        raise Interrupted(_signum, f"stopped before {doing}")


def ledger() -> Ledger:
    return _ledger


def record_registered(name: str, version: str) -> None:
    with _lock:
        _ledger.registered.append(f"{name} v{version}")


def record_alias(name: str, alias: str, version: str | None) -> None:
    with _lock:
        target = f"v{version}" if version is not None else "(deleted)"
        _ledger.aliases.append(f"{name}@{alias} -> {target}")


def record_killed_run(run_id: str) -> None:
    with _lock:
        if run_id not in _ledger.killed_runs:
            _ledger.killed_runs.append(run_id)


def reset() -> None:
    """Forget an earlier stop and the ledger (a new command in the same process, e.g. a test)."""
    global _signum, _ledger
    with _lock:
        _signum = None
        _ledger = Ledger()


def request(signum: int) -> None:
    """Set the stop flag (the handler does; tests may too)."""
    global _signum
    with _lock:
        if _signum is None:
            _signum = int(signum)


def _handler(signum: int, frame: Any) -> None:
    request(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handled(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while the block runs.

    The previous handlers come back afterwards. Outside the main thread (where Python cannot set
    handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_by(exc: BaseException | None) -> Interrupted | None:
    """The stop `exc` stands for, or None when it is an ordinary error.

    A stop is `Interrupted` itself, any `KeyboardInterrupt`, Prefect's `TerminationSignal` (a flow
    run swaps in its own SIGTERM handler, which raises that), or any error raised once a stop was
    asked for (a KeyboardInterrupt wrapped by a library, Lightning's `SystemExit(1)`).
    """
    if exc is None:
        return None
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Interrupted):
            request(cur.signum)
            return cur
        if _is_termination_signal(cur):
            request(int(cur.signal))  # type: ignore[attr-defined]
            return Interrupted(int(cur.signal))  # type: ignore[attr-defined]
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    if _signum is not None:
        return Interrupted(_signum)
    if isinstance(exc, KeyboardInterrupt):
        request(signal.SIGINT)
        return Interrupted(signal.SIGINT)
    return None


def _is_termination_signal(exc: BaseException) -> bool:
    mod = sys.modules.get("prefect.exceptions")
    cls = getattr(mod, "TerminationSignal", None) if mod is not None else None
    return cls is not None and isinstance(exc, cls)


def summary(command: str) -> str:
    """The line a stopped command prints: what stopped, what was kept, which runs were KILLED."""
    signum = _signum if _signum is not None else signal.SIGINT
    name = signal.Signals(signum).name
    kept: list[str] = []
    if _ledger.registered:
        kept.append("registered before the signal: " + ", ".join(_ledger.registered))
    if _ledger.aliases:
        kept.append("aliases moved before the signal: " + ", ".join(_ledger.aliases))
    changes = "; ".join(kept) if kept else "nothing registered and no alias moved"
    runs = (
        f"; MLflow run{'s' if len(_ledger.killed_runs) > 1 else ''} "
        f"{', '.join(_ledger.killed_runs)} KILLED"
        if _ledger.killed_runs
        else ""
    )
    return f"interrupted ({name}): {command} stopped; {changes}{runs}"
