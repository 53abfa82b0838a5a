"""The MLflow model registry: versions, aliases and their tags, and loading a version to serve.

The one module that reads or moves an alias; `mlops.tracking` logs runs and models.
"""

from __future__ import annotations

import json
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
    default = _configured()
    return alias_version(name or default, CHAMPION)


def alias_version(name: str, alias: str = CHAMPION) -> str | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, version: str, alias: str = CHAMPION) -> None:
    """Point `alias` at `version`; refused (`mlops.interrupts.Interrupted`) once a stop signal came."""
    import mlflow

    from mlops import interrupts

    interrupts.check(f"moving {name}@{alias} to v{version}")
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))
    interrupts.record_alias(name, alias, str(version))


def delete_alias(name: str, alias: str = CHAMPION) -> None:
    """Delete `alias`; refused (`mlops.interrupts.Interrupted`) once a stop signal came."""
    import mlflow

    from mlops import interrupts

    interrupts.check(f"deleting {name}@{alias}")
    mlflow.MlflowClient().delete_registered_model_alias(name, alias)
    interrupts.record_alias(name, alias, None)


def tag_version(name: str, version: str, tags: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(
            name, str(version), k, v if isinstance(v, str) else json.dumps(v)
        )


def version_evaluation(name: str, version: str) -> dict[str, Any]:
    """The evaluation record a version was registered with (the `evaluation` version tag).

    `{"metrics": {...}, "dataset": ..., "data_hash": ..., "split": {...}, "protocol": {...}}`;
    empty when the tag is missing (deleted, or a version registered by hand).
    """
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(name, str(version))
    raw = (mv.tags or {}).get("evaluation")
    return json.loads(raw) if raw else {}


def version_metrics(name: str, version: str) -> dict[str, Any]:
    """The metrics a version was registered with (the `metrics` of its evaluation record).

    Only the numbers: whether they may be compared with another run's is for
    `pricing.promotion.stored_champion_metrics` to say, from the whole `version_evaluation`.
    """
    metrics = version_evaluation(name, version).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def run_version(name: str, run_id: str) -> str | None:
    """The version of `name` registered from run `run_id`, or None.

    Registration is then idempotent: a retry after a failure that came after the version was created
    (setting its alias or tags) reuses that version instead of registering a second one. Filtered on
    `run_id` server-side and on the name here, so the name needs no quoting in the filter.
    """
    import mlflow

    found = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    versions = sorted(int(mv.version) for mv in found if mv.name == name)
    return str(versions[0]) if versions else None


def load_version(name: str, version: str) -> ModelHandle:
    """Load a registered version as a servable handle."""
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    wrapper = pyfunc.unwrap_python_model()
    return ModelHandle(
        name=name,
        version=str(version),
        model=wrapper.demand_model,
        run_id=pyfunc.metadata.run_id,
        guardrails=wrapper.guardrails,
    )


def describe_version(name: str, version: str, description: str) -> None:
    """The version's description, the first thing its page in the MLflow UI shows."""
    import mlflow

    mlflow.MlflowClient().update_model_version(name, str(version), description=description)


MODEL_DESCRIPTION = (
    "Purchase probability as a function of price for each (user, item): the demand model behind "
    "the personalized prices. The `champion` alias is what the scorer serves; `challenger` is the "
    "latest version registered by the training flow. Each version's description says why it was "
    "promoted or rejected; its `evaluation` tag holds the metrics it was registered with."
)


def describe_model(name: str, description: str = MODEL_DESCRIPTION) -> None:
    """The registered model's own description (its page in the MLflow UI), set once when empty:
    a description an operator wrote by hand is never overwritten."""
    import mlflow

    client = mlflow.MlflowClient()
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=description)
