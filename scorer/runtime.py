"""The scorer's runtime: what one app instance holds, and how models are loaded and swapped.

The served model lives in one reference (`ScorerRuntime.current`). A reload builds and warms the
new bundle off the event loop, then swaps that reference; a request holds the bundle it got from
the `ModelDep` dependency (`scorer.deps`), so requests in flight finish on the model they started
with. The alias watch polls the registry and reloads when the champion alias moves, backing off a
version that failed (`ReloadStatus`). With an experiment (`scorer.experiment`), `TrafficSplit`
holds the arms besides the champion (`ArmSlot`, each reloaded and watched on its own) and routes
each user to their arm's model.

Online state lives in Redis when `REDIS_URL` is set (`RedisUserStore`), in process otherwise
(`default_store`). A `StateRefresher` recomputes a user's state right after `POST /v1/events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops.registry import ModelHandle, ModelLoadError
from mlops.settings import Settings
from pricing.experiment import ARM, EXPERIMENT, assign_arm
from scorer.experiment import (
    CHAMPION_ARM,
    SHARE_TAG,
    ArmConfig,
    ArmSource,
    ExperimentConfig,
    RegistryArms,
    effective_shares,
)
from scorer.logs import RateLimitedLog
from scorer.metrics import ScorerMetrics
from scorer.offer_log import OfferLog
from scorer.refresh import StateRefresher
from scorer.serving import ARM_SHARE, Pricer, QuoteBook, ServingModel, build_serving_model
from scorer.state import InMemoryUserStore, UserStore, failure_reason, hydrate_data_dir

log = logging.getLogger("scorer.app")  # one name for the scorer's log, as before the split
limited = RateLimitedLog(log)

Loader = Callable[[], ModelHandle | None]
VersionProbe = Callable[[], str | None]

RELOAD_BACKOFF_MAX_S = 1800.0  # a known-bad version is retried at least this often
HYDRATE_RETRY_S = 1.0  # a hydration the store refused is retried after this, doubling ...
HYDRATE_RETRY_MAX_S = 30.0  # ... up to this
_ERROR_CHARS = 500


def log_store_failure(what: str, exc: BaseException) -> None:
    """`user store failed <what>: <error>`, at most a line per kind of failure every few seconds
    (with the count of the others): an outage is not a line per request."""
    limited.warning(f"{what}:{failure_reason(exc)}", "user store failed %s: %s", what, exc)


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
        self.hydration_error: str | None = None  # why the startup hydration is still pending
        self._hydration: asyncio.Task[None] | None = None
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
            self._split_changed()

    def _split_changed(self) -> None:
        assert self.split is not None
        self.split.update()
        exp = self.split.config.experiment_id
        for name, arm in self.arms.items():
            self.metrics.arm_serving.labels(exp, name).set(int(arm.problem is None))

    async def check_arms(self) -> None:
        """One poll of every arm's alias."""
        if self.split is None:
            return
        for arm in self.arms.values():
            if await arm.check_alias():
                self._split_changed()

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
                    return self._hydration_status()
                return f"user store unreachable: {getattr(self.store, 'last_error', None)}"
            self.store.get_state("__readyz__", "0")
            return self._hydration_status()
        except Exception as exc:  # noqa: BLE001 - any failure is a degradation to report
            return f"user store unreachable: {type(exc).__name__}: {exc}"

    def _hydration_status(self) -> str | None:
        if self.hydration_error is None:
            return None
        return (
            f"hydration from {self.settings.bootstrap_data_dir} pending (retried in the "
            f"background): {self.hydration_error}"
        )

    # --- startup hydration ---------------------------------------------------------------------------
    async def hydrate(self) -> None:
        """Load users' histories from `PRICING_BOOTSTRAP_DATA_DIR` into the store, at startup.

        A store that refuses (down, a wrong or missing password, too slow) does not stop the
        scorer: it logs one line, starts serving degraded (`/readyz` says why) and retries the
        hydration in the background, waiting `HYDRATE_RETRY_S` doubling up to
        `HYDRATE_RETRY_MAX_S`, until it succeeds. Other failures (a missing or malformed events
        table) stop the startup as before: they are configuration errors that no retry fixes.
        """
        data_dir = self.settings.bootstrap_data_dir
        if data_dir is None:
            return
        try:
            await self._hydrate_once(data_dir)
        except (ConnectionError, TimeoutError) as exc:  # StoreUnavailable is a ConnectionError
            self.hydration_error = short_error(exc)
            log.error(
                "cannot hydrate the user store from %s; serving degraded and retrying in the "
                "background: %s",
                data_dir,
                self.hydration_error,
            )
            self._hydration = asyncio.create_task(self._retry_hydration(data_dir))

    async def _hydrate_once(self, data_dir: Any) -> None:
        work_dir = self.settings.runs_dir / f"hydrate-{os.getpid()}"
        n = await asyncio.to_thread(
            hydrate_data_dir, self.store, data_dir, self.settings.max_user_events, work_dir
        )
        log.info("hydrated the user store with %d users from %s", n, data_dir)

    async def _retry_hydration(self, data_dir: Any) -> None:
        delay = HYDRATE_RETRY_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._hydrate_once(data_dir)
            except (ConnectionError, TimeoutError) as exc:
                self.hydration_error = short_error(exc)
                delay = min(delay * 2, HYDRATE_RETRY_MAX_S)
                limited.warning(
                    "hydration",
                    "hydration from %s still refused by the user store (next try in %.0f s): %s",
                    data_dir,
                    delay,
                    self.hydration_error,
                )
                continue
            except Exception as exc:  # noqa: BLE001 - a background task: report, do not crash
                self.hydration_error = f"failed, not retried: {short_error(exc)}"
                log.error("hydration from %s failed, not retried: %s", data_dir, short_error(exc))
                return
            self.hydration_error = None
            return

    def close(self) -> None:
        if self._hydration is not None:
            self._hydration.cancel()
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


def default_loader(settings: Settings) -> tuple[Loader, VersionProbe]:
    def load() -> ModelHandle | None:
        from mlops.registry import load_champion  # lazy: pulls in mlflow

        return load_champion(settings.registered_model)

    def probe() -> str | None:
        from mlops.registry import champion_version

        return champion_version(settings.registered_model)

    return load, probe


def default_store(settings: Settings) -> UserStore:
    """Redis when `REDIS_URL` is set (shared by every replica), else a process-local store."""
    if settings.redis_url:
        from scorer.redis_store import RedisUserStore

        return RedisUserStore.from_url(
            settings.redis_url,
            timeout=settings.redis_timeout_s,
            max_user_events=settings.max_user_events,
        )
    return InMemoryUserStore(max_user_events=settings.max_user_events)
