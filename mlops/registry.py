"""The MLflow model registry as the scorer and the promotion step see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlops.models import DemandModel

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class ModelHandle:
    """A loaded, servable model version."""

    name: str
    version: str
    model: DemandModel
    run_id: str | None = None
    guardrails: dict[str, Any] = field(default_factory=dict)  # the policy it was evaluated with


def _configured() -> str:
    from mlops.settings import get_settings
    from mlops.tracking import configure

    settings = get_settings()
    configure(settings.tracking_uri)
    return settings.registered_model


def load_champion(name: str | None = None) -> ModelHandle | None:
    """The `champion` version of the registered model, loaded; None when there is none yet."""
    from mlops.tracking import load_alias

    default = _configured()
    return load_alias(name or default, CHAMPION)


def champion_version(name: str | None = None) -> str | None:
    """The version the `champion` alias points at (cheap: one registry call)."""
    from mlops.tracking import alias_version

    default = _configured()
    return alias_version(name or default, CHAMPION)
