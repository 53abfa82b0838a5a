"""Run the scorer under uvicorn (wired to `pricing serve` by the CLI)."""

from __future__ import annotations

import ipaddress

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


def app_factory() -> FastAPI:
    """The module-level factory uvicorn calls (`uvicorn scorer.main:app_factory --factory`)."""
    from scorer.app import create_app

    return create_app()


def serve(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info"
) -> None:
    """Serve the scorer until interrupted.

    With several workers each process holds its own model and, without Redis, its own user store.

    Raises:
        SystemExit: the settings are unsafe for `host` (see `check_admin_token`).
    """
    import uvicorn

    from mlops.settings import get_settings

    try:
        check_admin_token(get_settings(), host)
    except UnsafeSettingsError as exc:
        raise SystemExit(f"pricing serve: {exc}") from None

    uvicorn.run(
        "scorer.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # per-request logging costs more than the quote itself; /metrics counts them
    )
