"""Validate the contract tables with the Great Expectations suites; quarantine bad rows."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from expectations import ValidationReport, validate_data_dir
from pricing.io import ContractError


class ValidationFailed(ContractError):
    """The data broke the contract past the configured threshold."""


def validate_or_fail(data_dir: Path, threshold: float) -> ValidationReport:
    """Validate; raise with every error in one clear message when the data is not usable."""
    return raise_if_failed(validate_data_dir(data_dir, threshold=threshold, build_docs=True))


def raise_if_failed(report: ValidationReport) -> ValidationReport:
    """`report`, or `ValidationFailed` with every error and where the details are."""
    if not report.passed:
        data_dir = Path(report.data_dir)
        raise ValidationFailed(
            f"data in {data_dir} fails the contract: "
            + "; ".join(report.errors)
            + f" (details: {data_dir / 'validation.json'}, quarantine: {data_dir / 'quarantine'})"
        )
    return report


def _run_name() -> str:
    """`validate-<folder>`: which data the run checked (a str or a Path parameter alike)."""
    from prefect.runtime import task_run

    return f"validate-{Path(str(task_run.parameters['data_dir'])).name}"


@task(name="validate_tables", task_run_name=_run_name, cache_policy=NO_CACHE)
def validate_tables(data_dir: Path, threshold: float) -> ValidationReport:
    """`validate_or_fail` as a flow step (no retries: the same data fails the same way)."""
    return validate_or_fail(data_dir, threshold)
