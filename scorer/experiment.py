"""The scorer's traffic split: which arms serve, with which shares, from which registry aliases.

An experiment is configured by the operator (`PRICING_EXPERIMENT`, read by `ExperimentSettings`)
as an experiment id and `arm=alias:share` pairs, for example

    PRICING_EXPERIMENT="price-test-7,challenger=challenger:0.1"

The champion is always an arm (named `champion`, served from the `champion` alias, as without an
experiment); unless it is listed itself it gets what the other arms leave (here 0.9). A pair
without a share (`challenger=challenger`) takes its share from the `experiment_share` tag of the
model version the alias points at, read at each (re)load, so a ramp-up is a tag change and a reload.

A user's arm is `pricing.experiment.assign_arm(user_id, experiment_id, shares)`: sticky everywhere,
and decided on the configured shares, so disabling an arm never reshuffles the users of the others.
Users of an arm that cannot serve (its alias is missing, its artifact is corrupt, its share is
unknown) get the champion and are logged as `arm=champion`: the arm fails closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlops.registry import CHAMPION, ModelHandle, ModelLoadError

CHAMPION_ARM = "champion"
SHARE_TAG = "experiment_share"  # model-version tag giving an arm's share when the config has none
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ExperimentConfigError(ValueError):
    """`PRICING_EXPERIMENT` cannot be read; the message says what is wrong and the expected form."""


@dataclass(frozen=True)
class ArmConfig:
    """One arm: its name (logged as `arm`), the registry alias it serves, its share of users (None:
    from the alias's `experiment_share` version tag)."""

    name: str
    alias: str
    share: float | None


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment id and its arms, the champion first."""

    experiment_id: str
    arms: tuple[ArmConfig, ...]

    @property
    def challengers(self) -> tuple[ArmConfig, ...]:
        """The arms other than the champion."""
        return tuple(a for a in self.arms if a.name != CHAMPION_ARM)

    @property
    def champion_share(self) -> float | None:
        """The champion's configured share (None: the rest, 1 minus the others')."""
        return self.arms[0].share


_FORM = (
    "expected '<experiment id>,<arm>=<alias>[:<share>],...', e.g. 'exp-7,challenger=challenger:0.1'"
)


def _name(text: str, what: str) -> str:
    text = text.strip()
    if not text or not set(text) <= _NAME_CHARS:
        raise ExperimentConfigError(
            f"PRICING_EXPERIMENT: {what} {text!r} must be letters, digits, '-', '_' or '.'; {_FORM}"
        )
    return text


def _share(text: str, arm: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = math.nan
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise ExperimentConfigError(
            f"PRICING_EXPERIMENT: the share of arm {arm!r} must be a number in [0, 1], got {text!r}"
        )
    return share


def parse_experiment(text: str) -> ExperimentConfig:
    """Read `PRICING_EXPERIMENT` (see the module docstring).

    Raises:
        ExperimentConfigError: a malformed id, pair or share, a repeated arm or alias, the champion
            arm on another alias, or configured shares that add up to more than 1.
    """
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts or "=" in parts[0]:
        raise ExperimentConfigError(f"PRICING_EXPERIMENT: no experiment id first; {_FORM}")
    experiment_id = _name(parts[0], "the experiment id")
    arms: dict[str, ArmConfig] = {}
    for pair in parts[1:]:
        name, eq, target = pair.partition("=")
        if not eq:
            raise ExperimentConfigError(f"PRICING_EXPERIMENT: {pair!r} is not arm=alias; {_FORM}")
        name = _name(name, "the arm name")
        alias, colon, share_text = target.partition(":")
        alias = _name(alias, f"the alias of arm {name!r}")
        share = _share(share_text.strip(), name) if colon else None
        if name in arms:
            raise ExperimentConfigError(f"PRICING_EXPERIMENT: arm {name!r} is listed twice")
        if (name == CHAMPION_ARM) != (alias == CHAMPION):
            raise ExperimentConfigError(
                f"PRICING_EXPERIMENT: the {CHAMPION_ARM!r} arm is the {CHAMPION!r} alias and no "
                f"other arm may serve it (got {name}={alias})"
            )
        arms[name] = ArmConfig(name, alias, share)
    others = [a for a in arms.values() if a.name != CHAMPION_ARM]
    if not others:
        raise ExperimentConfigError(f"PRICING_EXPERIMENT: no arm besides the champion; {_FORM}")
    champion = arms.get(CHAMPION_ARM, ArmConfig(CHAMPION_ARM, CHAMPION, None))
    configured = sum(a.share for a in arms.values() if a.share is not None)
    if configured > 1.0 + 1e-9:
        raise ExperimentConfigError(
            f"PRICING_EXPERIMENT: the configured shares add up to {configured:g} > 1"
        )
    return ExperimentConfig(experiment_id, (champion, *others))


class ExperimentSettings(BaseSettings):
    """`PRICING_EXPERIMENT` (and the .env file), beside the scorer's other settings."""

    model_config = SettingsConfigDict(env_prefix="PRICING_", env_file=".env", extra="ignore")

    experiment: ExperimentConfig | None = None

    @field_validator("experiment", mode="before")
    @classmethod
    def _parse(cls, v: object) -> object:
        if isinstance(v, str):
            return parse_experiment(v) if v.strip() else None
        return v


def effective_shares(
    config: ExperimentConfig, shares: dict[str, float | None]
) -> list[tuple[str, float]]:
    """(arm, share) in config order for `assign_arm`: each arm's known share (0 when unknown), the
    champion's the configured one or the rest. Shares over 1 in total are normalized by
    `assign_arm`."""
    others = [(a.name, shares.get(a.name) or 0.0) for a in config.challengers]
    champion = config.champion_share
    if champion is None:
        champion = max(0.0, 1.0 - sum(s for _, s in others))
    return [(CHAMPION_ARM, champion), *others]


class ArmSource(Protocol):
    """Where an arm's model comes from: a registry alias's version, its handle and its share tag."""

    def version(self, alias: str) -> str | None:
        """The version `alias` points at (None: no such alias)."""

    def load(self, alias: str) -> ModelHandle | None:
        """The alias's model, loaded (None: no such alias); `ModelLoadError` when it fails."""

    def share(self, alias: str) -> float | None:
        """The `experiment_share` tag of the alias's version (None: untagged or no alias)."""


def _configure() -> None:
    """Point MLflow at the configured tracking store (as the champion's loader does)."""
    from mlops.settings import get_settings
    from mlops.tracking import configure

    configure(get_settings().tracking_uri)


class RegistryArms:
    """`ArmSource` over the MLflow registry's aliases of one registered model."""

    def __init__(self, registered_model: str) -> None:
        self.model = registered_model

    def version(self, alias: str) -> str | None:
        from mlops.registry import alias_version

        _configure()
        return alias_version(self.model, alias)

    def load(self, alias: str) -> ModelHandle | None:
        from mlops.registry import load_version

        version = self.version(alias)
        if version is None:
            return None
        try:
            return load_version(self.model, version)
        except Exception as exc:
            raise ModelLoadError(self.model, version, exc) from exc

    def share(self, alias: str) -> float | None:
        import mlflow
        from mlflow.exceptions import MlflowException

        _configure()
        try:
            mv = mlflow.MlflowClient().get_model_version_by_alias(self.model, alias)
        except MlflowException:
            return None
        raw = (mv.tags or {}).get(SHARE_TAG)
        return None if raw is None else parse_share_tag(raw)


def parse_share_tag(raw: str) -> float | None:
    """An `experiment_share` tag as a share in [0, 1]; None when it is not one."""
    try:
        share = float(raw)
    except (TypeError, ValueError):
        return None
    return share if math.isfinite(share) and 0.0 <= share <= 1.0 else None
