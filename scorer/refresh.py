"""Event-driven user states: a background thread recomputes a user's state soon after new events.

`POST /v1/events` marks the user dirty here; the thread waits a short debounce (so a burst of
events costs one recomputation), then runs the user tower for every dirty user, off the request
path. A quote that arrives before the refresh computes the state itself, once (single-flight in
`Pricer.compute_state`), and the refresher then finds it fresh and skips it.

A thread rather than an asyncio task: the user tower is CPU work (torch releases the GIL in its
kernels), and the store client is synchronous.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class StateRefresher:
    """Debounced background recomputation of dirty users' states.

    Args:
        compute: recomputes one user's state (exceptions are logged, never raised).
        debounce_s: how long to gather events after the first dirty mark before computing.
        max_pending: dirty users kept at most; beyond it the oldest marks are dropped (their next
            quote still computes on demand, so nothing goes stale, it only costs that quote).
    """

    def __init__(
        self,
        compute: Callable[[str], object],
        debounce_s: float = 0.005,
        max_pending: int = 100_000,
    ) -> None:
        self.compute = compute
        self.debounce_s = debounce_s
        self.max_pending = max_pending
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.computed = 0
        self.failed = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="state-refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def mark(self, user_id: str) -> None:
        """The user has new events: recompute their state soon."""
        with self._cond:
            self._pending.pop(user_id, None)
            self._pending[user_id] = None
            while len(self._pending) > self.max_pending:
                self._pending.pop(next(iter(self._pending)))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                # Debounce: let a burst of events for the same users land before computing.
                self._cond.wait(self.debounce_s)
                if self._stopping:
                    return
                batch = list(self._pending)
                self._pending.clear()
            for user_id in batch:
                try:
                    if self.compute(user_id):
                        self.computed += 1
                except Exception:  # noqa: BLE001 - one user's failure must not stop the worker
                    self.failed += 1
                    log.warning(
                        "background state refresh failed for user %s", user_id, exc_info=True
                    )
