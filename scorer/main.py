"""Run the scorer under uvicorn (wired to `pricing serve` by the CLI).

`serve` reads and checks every setting in the parent process, before any worker starts: a bad
value stops it at once with one `error:` line naming the variable and the value, instead of
workers that crash at startup one after the other. Each worker exits when the parent dies
(`scorer.process.die_with_parent`), so a killed `pricing serve` never leaves workers holding its
port.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

from fastapi import FastAPI

from mlops.settings import WEAK_ADMIN_TOKENS, Settings


class UnsafeSettingsError(ValueError):
    """The settings would expose the scorer (a placeholder admin token on a reachable address)."""


class SettingsError(ValueError):
    """A setting the scorer cannot run with; the message names the variable and its value."""


WORKER_HEALTHCHECK_S = 30  # seconds a worker has to answer the supervisor's ping


def _env_name(settings_cls: Any, field_name: str) -> str:
    """The environment variable a pydantic-settings field is read from."""
    field = settings_cls.model_fields.get(field_name)
    alias = getattr(field, "validation_alias", None)
    if isinstance(alias, str):
        return alias
    return f"{settings_cls.model_config.get('env_prefix', '')}{field_name}".upper()


def validation_message(settings_cls: Any, exc: Any) -> str:
    """A pydantic `ValidationError` of a settings class as one line: `VAR='value': why; ...`.

    Secret fields (`repr=False`, e.g. the admin token) show `***` instead of their value.
    """
    parts = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err.get("loc") else "?"
        var = _env_name(settings_cls, name)
        field = settings_cls.model_fields.get(name)
        secret = field is not None and field.repr is False
        value = "***" if secret else repr(err.get("input"))
        why = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix(f"{var}: ")
        parts.append(f"{var}={value}: {why}")
    return "; ".join(parts)


def check_settings(host: str = "127.0.0.1") -> Settings:
    """Read and check every setting the scorer's workers will read, in this process.

    `PRICING_*` (and `MLFLOW_TRACKING_URI`, `REDIS_URL`) through `Settings`, `PRICING_EXPERIMENT`,
    `WEB_CONCURRENCY`, the form of `REDIS_URL`, `PRICING_BOOTSTRAP_DATA_DIR`'s events table and the
    admin token for `host` (`check_admin_token`).

    Raises:
        SettingsError: one line naming the variable and the value.
        UnsafeSettingsError: see `check_admin_token`.
    """
    from pydantic import ValidationError

    from mlops.settings import get_settings
    from scorer.experiment import ExperimentSettings

    get_settings.cache_clear()  # what the workers will read, not an earlier copy
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise SettingsError(validation_message(Settings, exc)) from None
    try:
        ExperimentSettings()
    except ValidationError as exc:
        raise SettingsError(validation_message(ExperimentSettings, exc)) from None
    workers = os.environ.get("WEB_CONCURRENCY")
    if workers and not (workers.strip().isdigit() and int(workers) >= 1):
        raise SettingsError(f"WEB_CONCURRENCY={workers!r}: must be a whole number of workers >= 1")
    if settings.redis_url:
        from redis.connection import parse_url

        try:
            parse_url(settings.redis_url)
        except ValueError as exc:
            raise SettingsError(f"REDIS_URL: {exc} (e.g. redis://:PASSWORD@host:6379/0)") from None
    if settings.bootstrap_data_dir is not None:
        from pricing import io as pio
        from pricing import schema as S

        if pio.find_table_file(settings.bootstrap_data_dir, S.EVENTS) is None:
            raise SettingsError(
                f"PRICING_BOOTSTRAP_DATA_DIR={str(settings.bootstrap_data_dir)!r}: no "
                f"{S.EVENTS} table there"
            )
    check_admin_token(settings, host)
    return settings


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or a wildcard: assume reachable


def check_admin_token(settings: Settings, host: str) -> None:
    """Refuse to serve a placeholder admin token (`change-me`) on a non-loopback address.

    No token at all is safe (POST /admin/reload is then refused); a real one is required once the
    scorer is reachable from other machines.

    Raises:
        UnsafeSettingsError: the token is a placeholder and `host` is not loopback.
    """
    token = settings.admin_token
    if token is not None and token in WEAK_ADMIN_TOKENS and not is_loopback(host):
        raise UnsafeSettingsError(
            f"refusing to serve on {host}: PRICING_ADMIN_TOKEN is the placeholder {token!r}. "
            "Set a real secret (e.g. `openssl rand -hex 32`), unset it to disable /admin/reload, "
            "or bind to 127.0.0.1."
        )


def limit_intra_op_threads() -> None:
    """One intra-op thread for torch and for numpy's BLAS in a serving process, unless
    OMP_NUM_THREADS (resp. OPENBLAS_NUM_THREADS) says otherwise.

    A quote's arrays are one user's history and fifty items: splitting them across threads costs
    more than it saves, and the other worker processes (and Redis) already use the other cores.
    BLAS threads also spin while they wait for work: left at their default, two workers' BLAS
    pools on two cores burned 11 ms of CPU per request instead of about 3.
    """
    if not (os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(limits=1, user_api="blas")
    if os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


# uvicorn's exit code for a worker that failed to start: its supervisor then stops instead of
# starting another worker that would fail the same way (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3


def app_factory() -> FastAPI:
    """The module-level factory uvicorn calls (`uvicorn scorer.main:app_factory --factory`).

    In a worker process it first arranges to exit with its parent (`die_with_parent`). A setting
    that does not validate (when uvicorn is run directly, without `serve`'s checks) ends the
    process with one error line and uvicorn's startup-failure code, never a restart loop.
    """
    from pydantic import ValidationError

    from scorer.process import die_with_parent

    die_with_parent()
    from scorer.app import create_app

    limit_intra_op_threads()
    try:
        return create_app()
    except ValidationError as exc:
        from scorer.experiment import ExperimentSettings

        cls: Any = ExperimentSettings if exc.title == ExperimentSettings.__name__ else Settings
        print(f"error: {validation_message(cls, exc)}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve the scorer until interrupted.

    `workers` processes share the port (default: $WEB_CONCURRENCY, else 1). Each holds its own
    model and offer-log files (one writer slot each); with Redis (REDIS_URL) they share users'
    histories, states and sticky prices, so any worker answers any request alike. Without Redis
    each has its own user store: run one worker then. /metrics answers for the worker that took
    the connection (`scorer_worker` names it).

    Every setting is checked here first (`check_settings`), before uvicorn starts a worker.

    Raises:
        SystemExit: a setting is invalid, or unsafe for `host`; the message is one `error:` line.
    """
    import uvicorn

    try:
        check_settings(host)
    except (SettingsError, UnsafeSettingsError) as exc:
        raise SystemExit(f"error: {exc}") from None

    if workers is None:
        workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    uvicorn.run(
        "scorer.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # per-request logging costs more than the quote itself; /metrics counts them
        # The supervisor pings each worker and replaces one that does not answer in time; a worker
        # loading a model on a saturated machine can take longer than uvicorn's 5 s to answer, and
        # was then killed while starting.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
