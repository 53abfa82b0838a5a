"""Run the scorer under uvicorn (wired to `pricing serve` by the CLI)."""

from __future__ import annotations

from fastapi import FastAPI


def app_factory() -> FastAPI:
    """The module-level factory uvicorn calls (`uvicorn scorer.main:app_factory --factory`)."""
    from scorer.app import create_app

    return create_app()


def serve(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info"
) -> None:
    """Serve the scorer until interrupted.

    With several workers each process holds its own model and, without Redis, its own user store.
    """
    import uvicorn

    uvicorn.run(
        "scorer.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # per-request logging costs more than the quote itself; /metrics counts them
    )
