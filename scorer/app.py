"""The real-time scorer's app factory: `create_app` builds the runtime, the lifespan (model load,
arms, alias watch) and mounts the routes and middleware. The parts live in their own modules:

- `scorer.runtime`: what an app instance holds (`ScorerRuntime`: settings, the served model, the
  experiment's arms, the store, the offer log) and how models are loaded, swapped and watched;
- `scorer.deps`: FastAPI dependencies (`RuntimeDep`, `ModelDep`, the admin token), the request
  body limit and the error responses;
- `scorer.routes`: the thin `/v1` and operations routes; `scorer.fastpath`: the hot routes'
  plainly valid bodies without FastAPI's routing and pydantic; `scorer.docs`: /docs and /redoc
  from local assets.

The hot routes (quote, events) are async: their Redis round trips are awaited on the event loop
and their CPU work is short, so one worker process keeps many requests moving. Several worker
processes can share the port (`pricing serve` with WEB_CONCURRENCY): with Redis they share users,
states and sticky prices, and each writes its own offer-log files (see `scorer.offer_log`).
If the store is unreachable, quotes still answer (from the process's recent copy of the user's state,
else as a new user) with `degraded: true`, events answer 503, and `/readyz` stays 200 but says
`"degraded": true` with the reason: the process still prices, and taking every replica out of the
load balancer because their shared Redis is down would turn a degraded shop into a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from mlops.settings import Settings, get_settings
from scorer.deps import (
    BodyLimitMiddleware,
    InFlightLimitMiddleware,
    offer_log_error_handler,
    validation_error_handler,
)
from scorer.docs import mount_docs
from scorer.experiment import ArmSource, ExperimentConfig, ExperimentSettings
from scorer.fastpath import FastPath
from scorer.metrics import MetricsMiddleware
from scorer.offer_log import OfferLogError
from scorer.routes import ops, v1
from scorer.runtime import (
    Loader,
    ReloadStatus,
    ScorerRuntime,
    VersionProbe,
    default_loader,
    default_store,
    short_error,
)
from scorer.serving import Pricer
from scorer.state import UserStore

__all__ = ["ReloadStatus", "ScorerRuntime", "create_app", "default_store", "short_error"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    loader: Loader | None = None,
    *,
    version_probe: VersionProbe | None = None,
    store: UserStore | None = None,
    seed: int | None = None,
    pricer_cls: type[Pricer] = Pricer,
    experiment: ExperimentConfig | None = None,
    arm_source: ArmSource | None = None,
) -> FastAPI:
    """Build a scorer app. Nothing is loaded until the app starts (lifespan).

    Args:
        settings: runtime settings (default: `get_settings()`).
        loader: returns the champion `ModelHandle`, or None when there is none yet (default: the
            MLflow registry's `load_champion(settings.registered_model)`).
        version_probe: returns the champion's current version, for the alias watch (default: the
            registry's `champion_version` with the default loader; no watch with a custom loader
            unless given).
        store: the online user store (default: Redis at `settings.redis_url` when set, else
            in-process; both bounded to `settings.max_user_events`).
        seed: exploration RNG seed (default: fresh entropy per process).
        pricer_cls: the quote pipeline (a subclass changes how user states are obtained; the
            load benchmark's naive scorer uses one).
        experiment: the traffic split (default: `PRICING_EXPERIMENT`, see `scorer.experiment`;
            none when unset: the champion serves everyone, as without experiments).
        arm_source: where the arms' models come from (default: the registry's aliases of
            `settings.registered_model`).
    """
    settings = settings or get_settings()
    if loader is None:
        loader, default_probe = default_loader(settings)
        version_probe = version_probe or default_probe
    runtime = ScorerRuntime(
        settings=settings,
        loader=loader,
        version_probe=version_probe,
        store=store or default_store(settings),
        rng=np.random.default_rng(seed),
        pricer_cls=pricer_cls,
        experiment=experiment if experiment is not None else ExperimentSettings().experiment,
        arm_source=arm_source,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.open()
        await runtime.hydrate()  # a refusing store: serve degraded, retry in the background
        try:
            await runtime.reload()
        except LookupError as exc:
            runtime.not_ready_reason = str(exc)
            log.warning("starting without a model: %s", exc)
        except Exception as exc:  # noqa: BLE001 - stay up and say why on /readyz
            runtime.not_ready_reason = f"model load failed: {type(exc).__name__}: {exc}"
            log.exception("starting without a model")
        for name in runtime.arms:
            with contextlib.suppress(Exception):  # the arm is disabled, /readyz says why
                await runtime.reload_arm(name)
        watcher: asyncio.Task[Any] | None = None
        if settings.alias_poll_seconds > 0 and (runtime.version_probe is not None or runtime.arms):
            watcher = asyncio.create_task(runtime.watch_alias(settings.alias_poll_seconds))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            aclose = getattr(runtime.store, "aclose", None)
            if aclose is not None:  # the event loop's own store connection
                try:
                    await aclose()
                except Exception as exc:  # noqa: BLE001 - shutting down: say so, carry on
                    log.warning("closing the store's event-loop connection failed: %s", exc)
            runtime.close()

    app = FastAPI(
        title="personalized-pricing scorer",
        version="1",
        lifespan=lifespan,
        summary="Quotes profit-maximizing personalized prices inside guardrails.",
        docs_url=None,  # mount_docs serves both pages from local assets (no CDN)
        redoc_url=None,
    )
    mount_docs(app)
    app.state.runtime = runtime
    app.include_router(v1)
    app.include_router(ops)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(OfferLogError, offer_log_error_handler)
    # Innermost: the fast path for the hot routes sees bodies the limit already checked.
    app.add_middleware(FastPath, runtime=runtime, router=v1)
    # Added before the metrics middleware, so it runs inside it: 413s are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Inside the metrics middleware (shed requests are counted as 503s), outside everything else.
    app.add_middleware(
        InFlightLimitMiddleware, limit=settings.max_in_flight, on_shed=runtime.metrics.shed.inc
    )
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    return app
