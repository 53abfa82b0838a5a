"""Runtime settings from environment variables (prefix PRICING_), one class behind a cached getter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where things live and how the services talk. Experiment hyperparameters are in configs/*.yaml."""

    model_config = SettingsConfigDict(env_prefix="PRICING_", env_file=".env", extra="ignore")

    tracking_uri: str = Field(
        default="sqlite:///mlruns/mlflow.db",
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking URI; the embedded default is a sqlite file under mlruns/.",
    )
    artifact_root: Path = Path("mlruns/artifacts")
    registered_model: str = "price-response"
    runs_dir: Path = Path("runs")
    # `--engine dask`: the Dask scheduler the flows use (tcp://host:8786); unset: a LocalCluster
    dask_address: str | None = None

    scorer_url: str | None = None  # e.g. http://127.0.0.1:8000; promotion notifies it when set
    # Bearer token for POST /admin/reload. No default: reload is refused until one is set, and
    # `pricing serve` refuses a placeholder (WEAK_ADMIN_TOKENS) on any non-loopback address.
    admin_token: str | None = Field(default=None, repr=False)
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    # Seconds a Redis call (connecting included) may take before the scorer treats the store as
    # down for that request. 1 s holds under the scorer's own 500 requests/s on a busy two-core
    # machine; a quarter of that fires on a healthy Redis under that load (event appends 503).
    redis_timeout_s: float = Field(default=1.0, gt=0)
    # ISO 4217 code of the catalog's prices, stated in every quote; the scorer never converts.
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    offer_log_dir: Path = Path("runs/offer_log")
    # "interval": every acknowledged log line is written to the OS (survives kill -9 of the scorer)
    # and fsync'ed within offer_log_fsync_interval_ms (bounds a machine crash's loss); "always":
    # fsync before acknowledging (about 0.2-2 ms more per request on this disk). One second, as
    # Redis' `appendfsync everysec`: each fsync commits the filesystem's journal, and an append on
    # the event loop that meets a commit waits for it (up to 12 ms measured on this machine's ext4).
    offer_log_fsync: Literal["always", "interval"] = "interval"
    offer_log_fsync_interval_ms: float = 1000.0
    bootstrap_data_dir: Path | None = None  # events to hydrate the online store at startup
    max_candidates: int = 500
    max_user_events: int = 200
    # Request bodies above this are refused with 413 while being read (never buffered in full).
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    # Requests under /v1 one worker works on at once; more are answered 503 at once, so an
    # overloaded worker answers what it can in time instead of everything too late.
    max_in_flight: int = Field(default=32, ge=1)
    # Recent quotes kept in memory for outcome lookup, in offer rows (about 0.5 KB each); older
    # quotes are found through the offer log's index.
    quote_book_max_rows: int = Field(default=100_000, ge=0)
    alias_poll_seconds: float = (
        30.0  # the scorer watches the champion alias at this interval (0: off)
    )
    # The operator's exploration share; when set it overrides the registered model's value
    # (precedence: this variable > the model's registered guardrails > pricing.policy's default).
    exploration: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("admin_token")
    @classmethod
    def _blank_token_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None


# Placeholder tokens (the old default, the .env example's): accepted only on loopback.
WEAK_ADMIN_TOKENS = frozenset({"change-me"})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call `get_settings.cache_clear()` after changing env)."""
    return Settings()
