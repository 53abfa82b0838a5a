"""Great Expectations suites for the data contract (JSON data in this folder) and their runner."""

from expectations.runner import (
    ExpectationOutcome,
    SuiteResult,
    TableReport,
    ValidationReport,
    coerce_table,
    load_suite,
    load_suite_dict,
    suite_path,
    validate,
    validate_data_dir,
)

__all__ = [
    "ExpectationOutcome",
    "SuiteResult",
    "TableReport",
    "ValidationReport",
    "coerce_table",
    "load_suite",
    "load_suite_dict",
    "suite_path",
    "validate",
    "validate_data_dir",
]
