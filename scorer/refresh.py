"""Event-driven user states: the event loop recomputes a user's state right after new events.

`POST /v1/events` marks the user dirty here; after a short debounce (so a burst of events costs
one recomputation) a task runs `compute(user)` for every dirty user, between requests. A quote that
arrives before the refresh computes the state itself, once (`Pricer` shares one computation per
user and model), and the refresher then finds it fresh and skips it.

On the event loop, not in a thread: the refresh is two Redis round trips (awaited) and a user
tower of about a millisecond (`scorer.accel`; a slower model's tower is sent to a worker thread by
the pricer). A thread doing that work holds the GIL for up to the interpreter's switch interval
(5 ms) at a time while the loop waits for it: at 10% events that was the largest part of a
quote's p99.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

from scorer.logs import RateLimitedLog
from scorer.state import failure_reason

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)


class StateRefresher:
    """Debounced recomputation of dirty users' states, as tasks on the running event loop.

    Args:
        compute: recomputes one user's state; True when it computed (exceptions are logged).
        debounce_s: how long to gather events after the first dirty mark before computing.
        max_pending: dirty users kept at most; beyond it the oldest marks are dropped (their next
            quote still computes on demand, so nothing goes stale, it only costs that quote).
    """

    def __init__(
        self,
        compute: Callable[[str], Awaitable[bool]],
        debounce_s: float = 0.005,
        max_pending: int = 100_000,
    ) -> None:
        self.compute = compute
        self.debounce_s = debounce_s
        self.max_pending = max_pending
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.computed = 0
        self.failed = 0

    def start(self) -> None:
        """Bind to the running event loop (call from it, e.g. in the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def stop(self) -> None:
        """Drop pending marks and cancel the work in progress (call on the loop)."""
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._loop = None

    def mark(self, user_id: str) -> None:
        """The user has new events: recompute their state soon."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(self.mark, user_id)
            return
        self._pending.pop(user_id, None)
        self._pending[user_id] = None
        while len(self._pending) > self.max_pending:
            self._pending.pop(next(iter(self._pending)))
        if self._timer is None and self._task is None:
            self._timer = loop.call_later(self.debounce_s, self._kick)

    def pending(self) -> int:
        return len(self._pending)

    def _kick(self) -> None:
        self._timer = None
        if self._task is None and self._loop is not None:
            self._task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                for user_id in batch:
                    try:
                        if await self.compute(user_id):
                            self.computed += 1
                    except asyncio.CancelledError:
                        raise
                    except OSError as exc:  # the store failed: a line per kind every few s
                        self.failed += 1
                        limited.warning(
                            f"refresh:{failure_reason(exc)}",
                            "background state refresh failed for user %s: %s",
                            user_id,
                            exc,
                        )
                    except Exception:  # noqa: BLE001 - one user's failure must not stop the rest
                        self.failed += 1
                        log.warning(
                            "background state refresh failed for user %s", user_id, exc_info=True
                        )
        finally:
            self._task = None
