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


class ModelLoadError(RuntimeError):
    """A registered version could not be loaded; says which one, with the cause chained.

    The scorer shows `version` as the alias target that failed and backs off retrying it.
    """

    def __init__(self, name: str, version: str, cause: BaseException | str) -> None:
        self.name = name
        self.version = str(version)
        self.cause = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{name} v{self.version} could not be loaded: {self.cause}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: the cause travels as its message
        return (type(self), (self.name, self.version, self.cause))


def load_champion(name: str | None = None) -> ModelHandle | None:
    """The `champion` version of the registered model, loaded; None when there is none yet.

    Raises:
        ModelLoadError: the alias points at a version that does not load (for example its files
            fail the integrity check of `mlops.models.load_model`); the cause is chained.
    """
    from mlops.tracking import alias_version, load_version

    default = _configured()  # also points MLflow at the tracking store
    model = name or default
    version = alias_version(model, CHAMPION)
    if version is None:
        return None
    try:
        return load_version(model, version)
    except Exception as exc:
        raise ModelLoadError(model, version, exc) from exc


def champion_version(name: str | None = None) -> str | None:
    """The version the `champion` alias points at (cheap: one registry call)."""
    from mlops.tracking import alias_version

    default = _configured()
    return alias_version(name or default, CHAMPION)
