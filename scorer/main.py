"""Run the scorer under uvicorn (wired to `pricing serve` by the CLI)."""

from __future__ import annotations

import ipaddress
import os

from fastapi import FastAPI

from mlops.settings import WEAK_ADMIN_TOKENS, Settings


class UnsafeSettingsError(ValueError):
    """The settings would expose the scorer (a placeholder admin token on a reachable address)."""


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


def app_factory() -> FastAPI:
    """The module-level factory uvicorn calls (`uvicorn scorer.main:app_factory --factory`)."""
    from scorer.app import create_app

    limit_intra_op_threads()
    return create_app()


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

    Raises:
        SystemExit: the settings are unsafe for `host` (see `check_admin_token`).
    """
    import uvicorn

    from mlops.settings import get_settings

    try:
        check_admin_token(get_settings(), host)
    except UnsafeSettingsError as exc:
        raise SystemExit(f"pricing serve: {exc}") from None

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
    )
