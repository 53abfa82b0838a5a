"""Log lines that repeat under a fault, rate-limited per kind of failure.

During a Redis outage every request fails the same way; a line per request buries the one line
that says what happened. `RateLimitedLog` writes the first line of a kind at once, then at most one
line per `LOG_EVERY_S` seconds for that kind, each carrying how many like it were left out since
the previous one. Kinds are small fixed strings (`quote_degraded:store_auth`, `bad_entry`), never
user ids, so the table of kinds stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

LOG_EVERY_S = 5.0


class RateLimitedLog:
    """A logger's lines, at most one per kind every `every_s` seconds, with a count of the rest.

    Thread-safe (the quote path logs from the event loop, the refresher and worker threads).
    """

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._since: dict[str, float] = {}  # kind -> when its last line was written
        self._left_out: dict[str, int] = {}  # kind -> lines left out since then
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, msg: str, *args: Any, stacklevel: int = 2) -> bool:
        """Write `msg % args` now, or count it for the kind's next line; True when written.

        The line names the caller's file and line (`stacklevel` as in `logging.Logger.log`)."""
        now = self.clock()
        with self._lock:
            since = self._since.get(kind)
            if since is not None and now - since < self.every_s:
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return False
            left_out = self._left_out.pop(kind, 0)
            self._since[kind] = now
        if left_out and since is not None:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, left_out, now - since)
        self.logger.log(level, msg, *args, stacklevel=stacklevel)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, stacklevel=3)

    def error(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, stacklevel=3)
