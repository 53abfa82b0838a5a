"""The scorer apps the load benchmark serves: the real one, and the naive design with the same model.

The naive design is the strongest alternative without online user state: every quote reads the
user's stored history (one Redis round trip, with the session's last prices), runs the user tower
over it, then the same head, grid, offer log and sticky write as the real scorer. Item vectors and
the query vocabulary's vectors are precomputed exactly as in the real scorer, and the user tower is
the real scorer's fast path (`scorer.accel`), so the two differ in one thing only: whether the
user's state is computed when their events arrive (and cached) or on every quote. Same server
stack: the same FastAPI app, fast path, worker processes and Redis.

Both are built by `app_factory` for `uvicorn --factory`, configured by environment variables:
BENCH_MODEL (`toy` or a directory written by `mlops.models.save_model`), BENCH_NAIVE (1: naive),
plus the usual PRICING_* settings and REDIS_URL.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from mlops.models import DemandModel, load_model
from mlops.registry import ModelHandle
from scorer.serving import Pricer, ServingModel, _Read


class NaivePricer(Pricer):
    """A pricer that keeps no user state: the user tower runs over the stored history per quote."""

    refreshes = False  # nothing is cached, so nothing to refresh after events

    def _read(
        self, sm: ServingModel, user_id: str, session_id: str | None, items: list[str]
    ) -> _Read:
        try:
            events, generation, last = self.store.read_history_for_quote(user_id, session_id, items)
        except Exception:  # noqa: BLE001 - a store outage degrades the quote, as in the real one
            return _Read(sm.cold_state, None, None, degraded=True, personalized=False)
        return _Read(None, generation, last, events=events)

    async def _read_async(
        self, sm: ServingModel, user_id: str, session_id: str | None, items: list[str]
    ) -> _Read:
        read_async = getattr(self.store, "read_history_for_quote_async", None)
        if read_async is None:
            return self._read(sm, user_id, session_id, items)
        try:
            events, generation, last = await read_async(user_id, session_id, items)
        except Exception:  # noqa: BLE001
            return _Read(sm.cold_state, None, None, degraded=True, personalized=False)
        return _Read(None, generation, last, events=events)

    def _state(
        self, sm: ServingModel, user_id: str, read: _Read
    ) -> tuple[Any, bool, bool, int | None]:
        if read.degraded:
            return read.state, False, True, None
        if not read.events:
            return sm.cold_state, False, False, read.generation
        return sm.user_state(read.events), True, False, read.generation

    async def _state_async(
        self, sm: ServingModel, user_id: str, read: _Read
    ) -> tuple[Any, bool, bool, int | None]:
        # The tower over the prefetched history, where the real scorer runs it (inline when it is
        # about a millisecond, else in a worker thread).
        return await self._off_loop(sm, self._state, sm, user_id, read)


def _load(spec: str) -> DemandModel:
    if spec == "toy":
        from scorer.testing import ToyDemand, toy_catalog

        return ToyDemand(toy_catalog(int(os.environ.get("SCORER_TOY_ITEMS", "200"))))
    return load_model(Path(spec))


def app_factory() -> Any:
    """The benchmark's scorer (`uvicorn naive_scorer:app_factory --factory --app-dir benchmarks`).

    Every load (startup, `POST /admin/reload`) loads the model afresh under the next version
    number, so a reload during the benchmark is a real load, warm and swap.
    """
    from scorer.app import create_app
    from scorer.main import limit_intra_op_threads

    limit_intra_op_threads()
    naive = os.environ.get("BENCH_NAIVE", "0") == "1"
    spec = os.environ.get("BENCH_MODEL", "toy")
    versions = itertools.count(1)

    def loader() -> ModelHandle:
        return ModelHandle(
            name="bench-naive" if naive else "bench",
            version=str(next(versions)),
            model=_load(spec),
            run_id=None,
            guardrails={},
        )

    return create_app(loader=loader, seed=0, pricer_cls=NaivePricer if naive else Pricer)
