"""The real-time scorer: FastAPI app factory, lifespan (model load, alias watch), and thin routes.

The served model lives in one reference (`ScorerRuntime.current`). A reload builds and warms the
new bundle off the event loop, then swaps that reference; a request holds the bundle it got from
the `ModelDep` dependency, so requests in flight finish on the model they started with.

Online state lives in Redis when `REDIS_URL` is set (`RedisUserStore`), in process otherwise. A
background `StateRefresher` recomputes a user's state after `POST /v1/events`, off the request path.

The hot routes (quote, events) are async: their Redis round trips are awaited on the event loop
and their CPU work is short, so one worker process keeps many requests moving; `FastPath` answers
their plainly valid bodies without FastAPI's routing and pydantic. Several worker processes can
share the port (`pricing serve` with WEB_CONCURRENCY): with Redis they share users, states and
sticky prices, and each writes its own offer-log files (see `scorer.offer_log`).
If the store is unreachable, quotes still answer (from the process's recent copy of the user's state,
else as a new user) with `degraded: true`, events answer 503, and `/readyz` stays 200 but says
`"degraded": true` with the reason: the process still prices, and taking every replica out of the
load balancer because their shared Redis is down would turn a degraded shop into a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlops.registry import ModelHandle, ModelLoadError
from mlops.settings import Settings, get_settings
from pricing import io as pio
from pricing import schema as S
from pricing.experiment import ARM, EXPERIMENT, assign_arm
from scorer.docs import mount_docs
from scorer.experiment import (
    CHAMPION_ARM,
    SHARE_TAG,
    ArmConfig,
    ArmSource,
    ExperimentConfig,
    ExperimentSettings,
    RegistryArms,
    effective_shares,
)
from scorer.metrics import MetricsMiddleware, ScorerMetrics
from scorer.offer_log import OfferLog, OfferLogError
from scorer.refresh import StateRefresher
from scorer.schemas import (
    EventsRequest,
    EventsResponse,
    OutcomeRequest,
    OutcomeResponse,
    QuoteRequest,
    QuoteResponse,
    ReloadResponse,
    fast_events,
    fast_quote,
)
from scorer.serving import (
    ARM_SHARE,
    Pricer,
    QuoteBook,
    QuoteError,
    ServingModel,
    build_serving_model,
)
from scorer.state import InMemoryUserStore, UserStore, hydrate

log = logging.getLogger(__name__)

Loader = Callable[[], ModelHandle | None]
VersionProbe = Callable[[], str | None]

RELOAD_BACKOFF_MAX_S = 1800.0  # a known-bad version is retried at least this often
_ERROR_CHARS = 500


def short_error(exc: BaseException) -> str:
    """`Type: message`, first line only and bounded: what /readyz and one log line can carry."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


@dataclass
class ReloadStatus:
    """What the scorer knows about reloads: the alias target, the last failure and its backoff.

    A version that failed to load is not retried at every alias poll: the watch waits
    `base_s * 2**failures` seconds (capped at `max_s`) after each consecutive failure of that same
    version. It tries at once when the alias moves to another version, and an operator's
    POST /admin/reload always tries. Cleared by a successful reload, or when the alias comes back
    to the served version (nothing is pending any more).
    """

    base_s: float
    max_s: float = RELOAD_BACKOFF_MAX_S
    clock: Callable[[], float] = time.monotonic
    alias_target: str | None = None  # the version the champion alias points at, as last seen
    last_error: str | None = None  # short, never a traceback
    failed_version: str | None = None
    failures: int = 0  # consecutive failures of `failed_version`
    retry_at: float = 0.0  # clock() time from which the watch may retry `failed_version`

    def due(self, version: str) -> bool:
        """Whether the alias watch should try loading `version` now."""
        return version != self.failed_version or self.clock() >= self.retry_at

    def failed(self, version: str | None, error: str) -> float:
        """Record a failed load of `version` (None: unknown); returns the backoff in seconds."""
        if version is not None and version == self.failed_version:
            self.failures += 1
        else:
            self.failed_version, self.failures = version, 1
        if version is not None:
            self.alias_target = version
        delay = min(self.base_s * 2**self.failures, self.max_s)
        self.retry_at = self.clock() + delay
        self.last_error = error
        return delay

    def clear(self) -> None:
        """Forget failures: a reload succeeded, or the alias points at the served version again."""
        self.last_error, self.failed_version, self.failures, self.retry_at = None, None, 0, 0.0

    def as_dict(self) -> dict[str, Any]:
        """The /readyz fields."""
        retry = max(0.0, self.retry_at - self.clock()) if self.failures else None
        return {
            "alias_target": self.alias_target,
            "last_reload_error": self.last_error,
            "reload_failures": self.failures,
            "next_reload_retry_s": None if retry is None else round(retry, 1),
        }


class ArmSlot:
    """One experiment arm besides the champion: its alias's model, loaded and warmed, or why not.

    Fails closed: when its alias is missing, its version does not load, or its share is unknown,
    the arm serves nobody (`current` is None, `problem` says why) and its users get the champion.
    A failed reload disables the arm even if an older version of it was serving, so an experiment
    never measures a version the operator did not point the alias at. The alias watch retries with
    the champion's backoff (`ReloadStatus`); `POST /admin/reload?arm=<name>` always tries.
    """

    def __init__(
        self, config: ArmConfig, source: ArmSource, exploration: float | None, base_s: float
    ) -> None:
        self.config = config
        self.source = source
        self.exploration = exploration
        self.current: ServingModel | None = None
        self.share: float | None = config.share
        self.problem: str | None = "starting: the arm is not loaded yet"
        self.reload_status = ReloadStatus(base_s=base_s)
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.config.name

    def bind(self) -> None:
        self._lock = asyncio.Lock()  # bound to the loop that runs this app

    def _load(self) -> tuple[ServingModel | None, float | None]:
        handle = self.source.load(self.config.alias)
        if handle is None:
            return None, None
        share = self.config.share
        if share is None:
            share = self.source.share(self.config.alias)
        return build_serving_model(handle, self.exploration), share

    def _disable(self, problem: str) -> None:
        self.current, self.problem = None, problem
        log.error("experiment arm %r disabled (its users get the champion): %s", self.name, problem)

    async def reload(self, expected: str | None = None) -> tuple[ServingModel, str | None]:
        """Load, warm and swap in the alias's version; returns (new, previous version).

        Raises:
            LookupError: the alias does not exist (the arm is disabled).
            Exception: whatever loading or warming raised (the arm is disabled).
        """
        async with self._lock:
            previous = self.current.version if self.current is not None else None
            try:
                sm, share = await asyncio.to_thread(self._load)
            except Exception as exc:
                error = short_error(exc)
                version = exc.version if isinstance(exc, ModelLoadError) else expected
                delay = self.reload_status.failed(version, error)
                self._disable(f"load failed (retried in {delay:.0f} s): {error}")
                raise
            if sm is None:
                self.reload_status.clear()
                self.reload_status.alias_target = None
                self._disable(f"no {self.config.alias!r} alias is registered")
                raise LookupError(
                    f"arm {self.name!r}: no {self.config.alias!r} alias is registered"
                )
            self.reload_status.clear()
            self.reload_status.alias_target = sm.version
            self.current, self.share = sm, share
            if share is None:  # loaded, but serves nobody until it has a share
                self.problem = (
                    f"no share: set it in PRICING_EXPERIMENT ({self.name}={self.config.alias}:0.1) "
                    f"or tag version {sm.version} with {SHARE_TAG}, then reload the arm"
                )
                log.error("experiment arm %r serves nobody: %s", self.name, self.problem)
                return sm, previous
            self.problem = None
            log.info("experiment arm %r serves %s (was %s)", self.name, sm.policy, previous)
            return sm, previous

    async def check_alias(self) -> bool:
        """One poll of the arm's alias; reloads when it moved (or vanished). Never raises."""
        try:
            found = await asyncio.to_thread(self.source.version, self.config.alias)
        except Exception as exc:  # noqa: BLE001 - the registry is down: keep serving
            log.warning(
                "alias watch: cannot read alias %r: %s", self.config.alias, short_error(exc)
            )
            return False
        current = self.current
        if found is None:
            if current is None and self.reload_status.alias_target is None:
                return False  # still no alias: already disabled for that
            with contextlib.suppress(Exception):
                await self.reload()
            return True
        version = str(found)
        status = self.reload_status
        if current is not None and current.version == version:
            return False
        if not status.due(version):
            return False
        with contextlib.suppress(Exception):  # recorded and logged by reload
            await self.reload(expected=version)
        return True

    def as_dict(self, served_share: float) -> dict[str, Any]:
        """This arm on /readyz."""
        sm = self.current
        return {
            "arm": self.name,
            "alias": self.config.alias,
            "share": self.share,
            "share_source": "PRICING_EXPERIMENT" if self.config.share is not None else SHARE_TAG,
            "served_share": round(served_share, 6),
            "status": "serving" if sm is not None and self.problem is None else "disabled",
            "reason": self.problem,
            "model_name": sm.name if sm is not None else None,
            "model_version": sm.version if sm is not None else None,
            **self.reload_status.as_dict(),
        }


@dataclass(frozen=True)
class Route:
    """Which model serves a user, and what the offer log records about it (None: no experiment)."""

    model: ServingModel
    tags: dict[str, Any] | None


class TrafficSplit:
    """The experiment's arms and the sticky assignment of users to them (`assign_arm`).

    Users are assigned on the configured (or tagged) shares; a user whose arm is disabled is served
    and logged as the champion. `served` is each arm's share of users as actually served (the
    champion's includes the disabled arms'), logged as `arm_share` with every quote.
    """

    def __init__(self, config: ExperimentConfig, arms: dict[str, ArmSlot]) -> None:
        self.config = config
        self.arms = arms
        self.assignment: list[tuple[str, float]] = []
        self.served: dict[str, float] = {}
        self.update()

    def update(self) -> None:
        """Recompute the shares after an arm's reload (cheap; called from the event loop)."""
        shares = effective_shares(self.config, {n: a.share for n, a in self.arms.items()})
        total = sum(s for _, s in shares) or 1.0
        served = {CHAMPION_ARM: 0.0}
        for name, share in shares:
            arm = self.arms.get(name)
            live = name == CHAMPION_ARM or (arm is not None and arm.problem is None)
            key = name if live else CHAMPION_ARM
            served[key] = served.get(key, 0.0) + share / total
        self.assignment, self.served = shares, served

    def route(self, user_id: str, champion: ServingModel) -> Route:
        arm_name = assign_arm(user_id, self.config.experiment_id, self.assignment)
        arm = self.arms.get(arm_name)
        sm = arm.current if arm is not None and arm.problem is None else None
        if sm is None:
            arm_name, sm = CHAMPION_ARM, champion
        tags = {
            EXPERIMENT: self.config.experiment_id,
            ARM: arm_name,
            ARM_SHARE: self.served.get(arm_name, 0.0),
        }
        return Route(sm, tags)


class ScorerRuntime:
    """Everything one app instance holds: settings, the served model, the store, the offer log."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        version_probe: VersionProbe | None,
        store: UserStore,
        rng: np.random.Generator,
        pricer_cls: type[Pricer] = Pricer,
        experiment: ExperimentConfig | None = None,
        arm_source: ArmSource | None = None,
    ) -> None:
        self.settings = settings
        self.pricer_cls = pricer_cls
        self.loader = loader
        self.version_probe = version_probe
        self.store = store
        self.rng = rng
        self.metrics = ScorerMetrics()
        self.current: ServingModel | None = None
        self.not_ready_reason = "starting: the model is not loaded yet"
        self.offer_log: OfferLog | None = None
        self.pricer: Pricer | None = None
        self.refresher: StateRefresher | None = None
        self._reload_lock = asyncio.Lock()
        self.reload_status = ReloadStatus(base_s=max(settings.alias_poll_seconds, 1.0))
        self.split: TrafficSplit | None = None
        if experiment is not None:
            source = arm_source or RegistryArms(settings.registered_model)
            arms = {
                a.name: ArmSlot(a, source, settings.exploration, self.reload_status.base_s)
                for a in experiment.challengers
            }
            self.split = TrafficSplit(experiment, arms)

    @property
    def arms(self) -> dict[str, ArmSlot]:
        """The experiment's arms besides the champion (empty without an experiment)."""
        return self.split.arms if self.split is not None else {}

    def route(self, user_id: str, champion: ServingModel) -> Route:
        """The model that serves `user_id` (the champion, or the user's arm when it serves)."""
        if self.split is None:
            return Route(champion, None)
        return self.split.route(user_id, champion)

    async def reload_arm(self, name: str) -> tuple[ServingModel, str | None]:
        """Reload one experiment arm (`ArmSlot.reload`), then the split's shares."""
        assert self.split is not None
        try:
            return await self.arms[name].reload()
        finally:
            self.split.update()

    async def check_arms(self) -> None:
        """One poll of every arm's alias."""
        if self.split is None:
            return
        for arm in self.arms.values():
            if await arm.check_alias():
                self.split.update()

    def open(self) -> None:
        """Open the offer log (creates its directory), the pricer and the state refresher."""
        self.offer_log = OfferLog(
            self.settings.offer_log_dir,
            self.settings.offer_log_fsync,
            self.settings.offer_log_fsync_interval_ms / 1000.0,
        )
        self.pricer = self.pricer_cls(
            self.store, self.offer_log, self.rng, QuoteBook(self.settings.quote_book_max_rows)
        )
        self.metrics.watch(self.pricer, self.offer_log)
        if self.pricer_cls.refreshes:
            self.refresher = StateRefresher(self._refresh_user)
            self.refresher.start()
        self._reload_lock = asyncio.Lock()  # bound to the loop that runs this app
        for arm in self.arms.values():
            arm.bind()

    async def _refresh_user(self, user_id: str) -> bool:
        sm, pricer = self.current, self.pricer
        if sm is None or pricer is None:
            return False
        sm = self.route(user_id, sm).model  # the user's arm's model computes the user's state
        t = time.perf_counter()
        try:
            return await pricer.refresh_async(sm, user_id)
        finally:
            pricer.stages.add("refresh", time.perf_counter() - t)

    def store_status(self) -> str | None:
        """None when the online store answers, else why not (pings it: call off the event loop)."""
        ping = getattr(self.store, "ping", None)
        try:
            if ping is not None:
                if ping():
                    return None
                return f"user store unreachable: {getattr(self.store, 'last_error', None)}"
            self.store.get_state("__readyz__", "0")
            return None
        except Exception as exc:  # noqa: BLE001 - any failure is a degradation to report
            return f"user store unreachable: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()
        if self.offer_log is not None:
            self.offer_log.close()

    def _load(self) -> ServingModel | None:
        """Load and warm the champion (in a worker thread); None when there is no champion.

        A model whose files fail their integrity check raises here (`ModelLoadError` from the
        registry loader) before any native parser reads them, so a corrupt artifact is an
        exception, never a crashed process.
        """
        handle = self.loader()
        if handle is None:
            return None
        return build_serving_model(handle, self.settings.exploration)

    async def reload(self, expected: str | None = None) -> tuple[ServingModel, str | None]:
        """Load, warm and swap in the champion; returns (new, previous version).

        `expected` is the version the caller believes the alias points at (the alias watch knows
        it), used to name the failed version when the loader's error does not.

        On failure the old model keeps serving; the error is recorded in `reload_status`
        (shown on /readyz, backs off the alias watch) and logged as one line, no traceback.

        Raises:
            LookupError: no champion is registered.
            Exception: whatever loading or warming raised.
        """
        async with self._reload_lock:
            try:
                sm = await asyncio.to_thread(self._load)
                if sm is None:
                    raise LookupError(
                        f"no champion registered for model {self.settings.registered_model!r}"
                    )
            except Exception as exc:
                self.metrics.reloads.labels(result="error").inc()
                if not isinstance(exc, LookupError):
                    self._reload_failed(exc, expected)
                raise
            previous = self.current.version if self.current is not None else None
            self.current = sm  # the atomic swap: one reference assignment
            self.reload_status.clear()
            self.reload_status.alias_target = sm.version
            self.metrics.set_model(sm.name, sm.version)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("serving %s (was %s)", sm.policy, previous)
            return sm, previous

    def _reload_failed(self, exc: Exception, expected: str | None) -> None:
        """Record a failed load for /readyz and the watch's backoff; log it as one line."""
        version = exc.version if isinstance(exc, ModelLoadError) else expected
        error = short_error(exc)
        status = self.reload_status
        delay = status.failed(version, error)
        current = self.current
        if current is None:
            self.not_ready_reason = f"model load failed: {error}"
        log.error(
            "reload of %s failed (%d in a row; the alias watch retries it in %.0f s); "
            "serving %s: %s",
            f"version {version}" if version is not None else "the champion",
            status.failures,
            delay,
            f"version {current.version}" if current is not None else "nothing",
            error,
        )

    async def check_alias(self) -> bool:
        """One poll of the alias watch; returns whether it tried a reload.

        Reloads when the champion alias points at another version than the served one, unless
        that version failed recently and its backoff has not run out. Never raises (but for
        cancellation): failures are recorded by `reload`, and the old model keeps serving.
        """
        assert self.version_probe is not None
        try:
            found = await asyncio.to_thread(self.version_probe)
        except Exception as exc:  # noqa: BLE001 - the registry is down: keep serving, say so once
            log.warning("alias watch: cannot read the champion alias: %s", short_error(exc))
            return False
        if found is None:
            return False
        version = str(found)
        status = self.reload_status
        status.alias_target = version
        current = self.current
        if current is not None and current.version == version:
            if status.failures:
                log.info("champion alias is back on the served version %s", version)
                status.clear()
            return False
        if not status.due(version):
            return False
        if version == status.failed_version:
            log.info("alias watch: retrying version %s (backoff ran out)", version)
        else:
            log.info("champion alias moved to version %s; reloading", version)
        with contextlib.suppress(Exception):  # recorded and logged by reload
            await self.reload(expected=version)
        return True

    async def watch_alias(self, interval: float) -> None:
        """Poll the champion alias every `interval` s (`check_alias`) until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.version_probe is not None:
                await self.check_alias()
            await self.check_arms()


def _default_loader(settings: Settings) -> tuple[Loader, VersionProbe]:
    def load() -> ModelHandle | None:
        from mlops.registry import load_champion  # lazy: pulls in mlflow

        return load_champion(settings.registered_model)

    def probe() -> str | None:
        from mlops.registry import champion_version

        return champion_version(settings.registered_model)

    return load, probe


# --- dependencies --------------------------------------------------------------------------------


async def get_runtime(request: Request) -> ScorerRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[ScorerRuntime, Depends(get_runtime)]


async def get_model(runtime: RuntimeDep) -> ServingModel:
    """The model bundle this request will use from start to finish (503 when none is loaded)."""
    sm = runtime.current
    if sm is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded: {runtime.not_ready_reason}",
            headers={"Retry-After": "5"},
        )
    return sm


ModelDep = Annotated[ServingModel, Depends(get_model)]
_bearer = HTTPBearer(auto_error=False)


def _token_digest(token: str) -> bytes:
    # Compared as fixed-length digests: `compare_digest` on the raw tokens returns early when the
    # lengths differ, which tells an attacker the token's length.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


async def require_admin(
    runtime: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes need `Authorization: Bearer <PRICING_ADMIN_TOKEN>`; none without a token set."""
    expected = runtime.settings.admin_token
    if not expected:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="admin token not configured: set PRICING_ADMIN_TOKEN to enable /admin routes",
        )
    if creds is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token (Authorization: Bearer <admin token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(_token_digest(creds.credentials), _token_digest(expected)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="invalid admin token")


# --- routes --------------------------------------------------------------------------------------

v1 = APIRouter(prefix="/v1", tags=["pricing"])


# The quote and event routes are async and do their short store round trips and CPU work on the
# event loop (a thread-pool hop per request costs more than it saves); the user tower runs in a
# worker thread when a quote needs it. `FastPath` serves the common well-formed request without
# FastAPI's routing and pydantic; these routes serve everything else (same code, same answers).


async def answer_quote(
    runtime: ScorerRuntime,
    sm: ServingModel,
    user_id: str,
    items: list[str],
    session_id: str | None,
) -> Response:
    """Price, log and answer one quote (shared by the route and the fast path)."""
    if len(items) > runtime.settings.max_candidates:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"too many candidate items: {len(items)} > max_candidates={runtime.settings.max_candidates}",
        )
    assert runtime.pricer is not None
    route = runtime.route(user_id, sm)
    sm = route.model
    try:
        q = await runtime.pricer.quote_async(sm, user_id, items, session_id, route.tags)
    except QuoteError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    runtime.metrics.quoted_items.inc(len(q.item_ids))
    explored = q.explored.tolist()
    if any(explored):
        runtime.metrics.explored_items.inc(sum(explored))
    if q.degraded:
        runtime.metrics.degraded.inc()
    order = np.argsort(q.rank, kind="stable").tolist()
    price, lp, prob = q.price.tolist(), q.list_price.tolist(), q.probability.tolist()
    profit, rank, prop = q.expected_profit.tolist(), q.rank.tolist(), q.propensity.tolist()
    body = {
        "quote_id": q.quote_id,
        "model_name": sm.name,
        "model_version": sm.version,
        "personalized": q.personalized,
        "degraded": q.degraded,
        "state_generation": q.state_generation,
        "items": [
            {
                "item_id": q.item_ids[k],
                "price": price[k],
                "list_price": lp[k],
                "purchase_probability": prob[k],
                "expected_profit": profit[k],
                "rank": int(rank[k]),
                "propensity": prop[k],
                "explored": bool(explored[k]),
            }
            for k in order
        ],
    }
    if route.tags is not None:
        body["experiment"], body["arm"] = route.tags[EXPERIMENT], route.tags[ARM]
    # Serialized here with orjson (the shape is QuoteResponse's, declared for the OpenAPI schema):
    # building and validating 50 pydantic models per quote costs more than pricing them.
    return Response(orjson.dumps(body), media_type="application/json")


async def record_events(runtime: ScorerRuntime, user_id: str, events: list[dict[str, Any]]) -> int:
    """Append events (`EventIn` fields as a dict each) to the user's history; returns the history
    generation after the append (shared by the route and the fast path).

    The append itself bumps the generation, which makes every cached state of the user stale (a
    state is served only with the generation it was computed from); the refresher then recomputes
    it off the request path.

    Raises:
        HTTPException: 503 when the store is unavailable (nothing was recorded).
    """
    now = datetime.now(UTC)
    rows = [
        {
            S.EVENT_ID: e["event_id"] or uuid.uuid4().hex,
            S.TS: (e["ts"] if e["ts"] is not None else now).isoformat(),
            S.USER_ID: user_id,
            S.SESSION_ID: e["session_id"] or "",
            S.EVENT_TYPE: e["event_type"],
            S.ITEM_ID: e["item_id"],
            S.QUERY: e["query"],
            S.PRICE: e["price"],
        }
        for e in events
    ]
    t = time.perf_counter()
    append_async = getattr(runtime.store, "append_events_async", None)
    try:
        if append_async is not None:  # (Redis) the event loop serves others meanwhile
            generation = await append_async(user_id, rows)
        else:
            generation = runtime.store.append_events(user_id, rows)
    except Exception as exc:  # noqa: BLE001 - the store is down: tell the caller to retry
        log.warning("user store failed appending events: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"user store unavailable, events not recorded; retry later: {exc}",
            headers={"Retry-After": "1"},
        ) from exc
    finally:
        if runtime.pricer is not None:
            runtime.pricer.stages.add("event_append", time.perf_counter() - t)
    if runtime.refresher is not None:
        runtime.refresher.mark(user_id)
    return generation


@v1.post("/quote", response_model=QuoteResponse)
async def quote(req: QuoteRequest, sm: ModelDep, runtime: RuntimeDep) -> Response:
    """Price and rank candidate items for a user.

    `state_generation` is the user's history generation the prices were computed from (compare it
    with the `generation` POST /v1/events returned to know whether an event is reflected); null
    when the store was unavailable.
    """
    return await answer_quote(runtime, sm, req.user_id, req.items, req.session_id)


@v1.post("/events", response_model=EventsResponse)
async def events(req: EventsRequest, runtime: RuntimeDep) -> EventsResponse:
    """Append behaviour to the user's online history; the user's state is recomputed right after."""
    generation = await record_events(runtime, req.user_id, [e.model_dump() for e in req.events])
    return EventsResponse(user_id=req.user_id, accepted=len(req.events), generation=generation)


@v1.post("/outcomes", response_model=OutcomeResponse)
def outcomes(req: OutcomeRequest, runtime: RuntimeDep) -> OutcomeResponse:
    """Record whether a quoted item was bought; appended durably to the offer log."""
    assert runtime.pricer is not None
    offers = runtime.pricer.find_quote(req.quote_id)
    if offers is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown quote_id {req.quote_id!r}")
    offer = offers.get(req.item_id)
    if offer is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"item {req.item_id!r} was not part of quote {req.quote_id!r}",
        )
    offer_id = runtime.pricer.record_outcome(offer, req.purchased)
    return OutcomeResponse(offer_id=offer_id)


ops = APIRouter(tags=["ops"])


@ops.post(
    "/admin/reload",
    response_model=ReloadResponse,
    response_model_exclude_unset=True,  # `arm` only on an arm's reload: the champion's is as before
    dependencies=[Depends(require_admin)],
)
async def admin_reload(
    runtime: RuntimeDep,
    arm: Annotated[
        str | None,
        Query(
            max_length=100,
            description="an experiment arm (its alias's version is reloaded), `all` for the "
            "champion and every arm; default: the champion",
        ),
    ] = None,
) -> ReloadResponse | JSONResponse:
    """Load the current champion (or an experiment arm), warm it and swap it in.

    On failure the champion's old model keeps serving; a failed arm is disabled (its users get the
    champion) and /readyz says why. Rolling an arm back is moving its alias back and reloading it.
    """
    if arm == "all":
        return await _reload_all(runtime)
    if arm is not None and arm != CHAMPION_ARM:
        return await _reload_arm(runtime, arm)
    try:
        sm, previous = await runtime.reload()
    except Exception as exc:  # noqa: BLE001 - report any load failure to the caller
        log.exception("reload failed")
        current = runtime.current
        return JSONResponse(
            status_code=status.HTTP_502_BAD_GATEWAY,
            content={
                "detail": f"reload failed: {type(exc).__name__}: {exc}",
                "serving_version": current.version if current is not None else None,
            },
        )
    return ReloadResponse(model_name=sm.name, model_version=sm.version, previous_version=previous)


def _unknown_arm(runtime: ScorerRuntime, arm: str) -> HTTPException:
    if runtime.split is None:
        return HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no experiment arm {arm!r}: no experiment is configured (PRICING_EXPERIMENT)",
        )
    known = ", ".join([CHAMPION_ARM, *runtime.arms, "all"])
    return HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"no experiment arm {arm!r}; the arms are: {known}"
    )


async def _reload_arm(runtime: ScorerRuntime, arm: str) -> ReloadResponse | JSONResponse:
    if arm not in runtime.arms:
        raise _unknown_arm(runtime, arm)
    try:
        sm, previous = await runtime.reload_arm(arm)
    except Exception as exc:  # noqa: BLE001 - report any load failure to the caller
        return JSONResponse(
            status_code=status.HTTP_502_BAD_GATEWAY,
            content={
                "detail": f"reload of arm {arm!r} failed; the arm is disabled and its users get "
                f"the champion: {short_error(exc)}",
                "arm": arm,
                "serving_version": None,
            },
        )
    return ReloadResponse(
        model_name=sm.name, model_version=sm.version, previous_version=previous, arm=arm
    )


async def _reload_all(runtime: ScorerRuntime) -> JSONResponse:
    """The champion and every arm; 200 when all reloaded, else 502 with each one's outcome."""
    results: dict[str, Any] = {}
    names = [CHAMPION_ARM, *runtime.arms]
    for name in names:
        try:
            if name == CHAMPION_ARM:
                sm, previous = await runtime.reload()
            else:
                sm, previous = await runtime.reload_arm(name)
            results[name] = {
                "model_name": sm.name,
                "model_version": sm.version,
                "previous_version": previous,
            }
        except Exception as exc:  # noqa: BLE001 - each arm's outcome is reported
            results[name] = {"error": short_error(exc)}
    ok = all("error" not in r for r in results.values())
    return JSONResponse(
        status_code=status.HTTP_200_OK if ok else status.HTTP_502_BAD_GATEWAY,
        content={"arms": results},
    )


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@ops.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready once a model is loaded; otherwise 503 and why.

    A store outage keeps the answer 200 (quotes still answer, degraded) but says so:
    `"degraded": true` and `"store"` with the reason.

    Both answers carry the reload status: `alias_target` (the version the champion alias points
    at), `last_reload_error` (short, null after a success), `reload_failures` (in a row, same
    version) and `next_reload_retry_s` (the alias watch's backoff). A failed reload keeps the
    answer 200 while an older version serves: `model_version` != `alias_target` shows it.
    """
    sm = runtime.current
    reload_status = runtime.reload_status.as_dict()
    if sm is None:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"ready": False, "reason": runtime.not_ready_reason, **reload_status},
        )
    problem = await asyncio.to_thread(runtime.store_status)
    runtime.metrics.store_up.set(0 if problem else 1)
    return JSONResponse(
        {
            "ready": True,
            "model_name": sm.name,
            "model_version": sm.version,
            "degraded": problem is not None,
            "store": problem or "ok",
            # why the last offer log write failed (quotes and outcomes answer 503); null: healthy
            "offer_log_error": runtime.offer_log.last_error if runtime.offer_log else None,
            # what quotes run with, and who set it (operator environment > registered > default)
            "guardrails": sm.guardrails.to_dict(),
            "guardrail_sources": sm.guardrail_sources,
            # which implementation serves each per-request model step (scorer.accel)
            "serving_paths": sm.accel.notes if sm.accel is not None else {},
            # this process's offer-log files (one writer slot per process)
            "offer_log_writer": runtime.offer_log.slot if runtime.offer_log else None,
            **reload_status,
            **experiment_status(runtime, sm),
        }
    )


def experiment_status(runtime: ScorerRuntime, champion: ServingModel) -> dict[str, Any]:
    """/readyz's `experiment` and `arms` (nothing without an experiment)."""
    split = runtime.split
    if split is None:
        return {}
    served = split.served
    arms: list[dict[str, Any]] = [
        {
            "arm": CHAMPION_ARM,
            "alias": "champion",
            "share": dict(split.assignment)[CHAMPION_ARM],
            "share_source": "PRICING_EXPERIMENT"
            if split.config.champion_share is not None
            else "the rest",
            "served_share": round(served.get(CHAMPION_ARM, 0.0), 6),
            "status": "serving",
            "reason": None,
            "model_name": champion.name,
            "model_version": champion.version,
        }
    ]
    arms += [arm.as_dict(served.get(name, 0.0)) for name, arm in split.arms.items()]
    return {"experiment": split.config.experiment_id, "arms": arms}


@ops.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus exposition of this app's registry."""
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- request limits and error responses ----------------------------------------------------------

_MAX_ERRORS_SHOWN = 20
_MAX_ERROR_TEXT = 300


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse request bodies over `max_bytes` with 413, while reading them.

    A declared Content-Length over the limit is answered before a byte of the body is read; a
    chunked (or lying) body is counted as it arrives and cut off at the limit, so a 19 MB body
    never sits in memory or in the JSON parser on the event loop.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return (
            f"request body too large: the limit is {self.max_bytes} bytes (PRICING_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    response = JSONResponse(
                        {"detail": self._detail()},
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                        headers={"Connection": "close"},
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from reading the body; its handler answers.
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=self._detail())
            return message

        await self.app(scope, limited_receive, send)


class FastPath:
    """Pure ASGI: POST /v1/quote and /v1/events with a plainly valid JSON body, without FastAPI.

    Sits inside the body-limit and metrics middleware. It takes bodies with a Content-Length and a
    JSON (or no) content type, parses them with orjson and `fast_quote`/`fast_events`, and answers
    through the same `answer_quote`/`record_events` the routes call. Anything else (another route,
    a chunked body, a body the fast parsers refuse) goes on to FastAPI with the body replayed, and
    is answered exactly as it always was, errors included. What it skips per request: routing,
    dependency resolution and two pydantic models (about a fifth of a quote's CPU).
    """

    def __init__(self, app: Any, runtime: ScorerRuntime, router: Any) -> None:
        self.app = app
        self.runtime = runtime
        self.routes = {r.path: r for r in router.routes if getattr(r, "path", None) in _FAST_ROUTES}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        length, json_type = None, True
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                json_type = value.lower().startswith(b"application/json")
        if length is None or not json_type:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except HTTPException as exc:  # the body limit, while reading
                await JSONResponse({"detail": exc.detail}, exc.status_code)(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        response = await self._answer(scope, body)
        if response is None:
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await response(scope, receive, send)

    async def _answer(self, scope: Any, body: bytes) -> Response | None:
        """The response for a plainly valid body; None to let FastAPI handle it."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        runtime, path = self.runtime, scope["path"]
        if path == "/v1/quote":
            parsed = fast_quote(data, runtime.settings.max_candidates)
            if parsed is None:
                return None
            scope["route"] = self.routes[path]
            try:
                sm = await get_model(runtime)
                return await answer_quote(runtime, sm, *parsed)
            except HTTPException as exc:
                return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
            except OfferLogError as exc:
                return await offer_log_error_handler(None, exc)  # type: ignore[arg-type]
        events = fast_events(data)
        if events is None:
            return None
        scope["route"] = self.routes[path]
        user_id, rows = events
        try:
            generation = await record_events(runtime, user_id, rows)
        except HTTPException as exc:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        out = {"user_id": user_id, "accepted": len(rows), "generation": generation}
        return Response(orjson.dumps(out), media_type="application/json")


_FAST_ROUTES = frozenset({"/v1/quote", "/v1/events"})


def _safe_text(value: Any) -> str:
    """`value` as short text that always encodes as UTF-8 JSON (lone surrogates escaped)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_error(error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _safe_text(error.get("type", "")),
        "loc": [
            part if isinstance(part, int) else _safe_text(part) for part in error.get("loc", ())
        ],
        "msg": _safe_text(error.get("msg", "")),
    }
    ctx = error.get("ctx")
    if isinstance(ctx, dict) and ctx:
        out["ctx"] = {_safe_text(k): _safe_text(v) for k, v in ctx.items()}
    return out


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 with where and why, never the offending input.

    FastAPI's default echoes each error's `input`, and cannot encode a NaN or a lone surrogate
    (a 500 for a client's mistake); echoing a 1 MB body back is no help either.
    """
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    detail: list[Any] = [_safe_error(e) for e in errors[:_MAX_ERRORS_SHOWN]]
    if len(errors) > _MAX_ERRORS_SHOWN:
        detail.append({"msg": f"... and {len(errors) - _MAX_ERRORS_SHOWN} more errors"})
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail}
    )


async def offer_log_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 when the offer log cannot take a record: nothing was acknowledged, retry later."""
    assert isinstance(exc, OfferLogError)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": f"offer log unavailable, nothing recorded; retry later: {exc.reason}"},
        headers={"Retry-After": "5"},
    )


# --- the factory ---------------------------------------------------------------------------------


def default_store(settings: Settings) -> UserStore:
    """Redis when `REDIS_URL` is set (shared by every replica), else a process-local store."""
    if settings.redis_url:
        from scorer.redis_store import RedisUserStore

        return RedisUserStore.from_url(settings.redis_url, max_user_events=settings.max_user_events)
    return InMemoryUserStore(max_user_events=settings.max_user_events)


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
        loader, default_probe = _default_loader(settings)
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
        if settings.bootstrap_data_dir is not None:
            events = await asyncio.to_thread(pio.read_table, settings.bootstrap_data_dir, S.EVENTS)
            assert events is not None
            n = await asyncio.to_thread(hydrate, runtime.store, events, settings.max_user_events)
            log.info(
                "hydrated the user store with %d users from %s", n, settings.bootstrap_data_dir
            )
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
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    return app
