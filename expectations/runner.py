"""Validate contract tables with the Great Expectations suites in this folder.

Two entry points:
- `validate(df, suite)`: run one suite over one (already coerced) DataFrame and return row-level
  failures; the training task and the tests both call it.
- `validate_data_dir(data_dir)`: the whole contract check of a shop's folder: read, coerce, validate
  every table (items first: its clean ids feed the referential checks), quarantine bad rows with a
  reason, write `validation.json` and GX Data Docs, and return the clean tables.

Great Expectations is imported lazily: importing this module stays cheap for CLI commands that
never validate.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pricing import io as pio
from pricing import schema as S

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite, ExpectationSuiteValidationResult

SUITE_DIR = Path(__file__).resolve().parent
# Event clocks of real shops drift a little; a timestamp only counts as "in the future" past this.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
_PARAM = "$PARAMETER"
_KNOWN_ITEM_IDS = "known_item_ids"
_LATEST_TS = "latest_allowed_ts"
# Rows of failing values kept per expectation in the stored GX result (Data Docs, validation.json):
# COMPLETE results of a 1M-row table would otherwise be written out whole.
_DOCS_SAMPLE = 20


# --- one suite over one DataFrame ----------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, with failing rows as positions (0..n-1) in the validated frame."""

    type: str
    column: str | None
    kwargs: dict[str, Any]
    severity: str  # "critical" rows are quarantined; "warning" rows are only counted
    reason: str  # quarantine reason from the suite's meta, e.g. "price: not > 0"
    success: bool
    unexpected_count: int
    unexpected_positions: np.ndarray
    keep_first: bool = False  # uniqueness: the first occurrence is the good row
    exception: str | None = None


@dataclass
class SuiteResult:
    """What `validate` returns: per-expectation outcomes and the raw GX result."""

    suite_name: str
    row_count: int
    outcomes: list[ExpectationOutcome]
    gx_result: ExpectationSuiteValidationResult

    @property
    def success(self) -> bool:
        """True when every critical expectation passed (warnings never fail a suite)."""
        return all(o.success for o in self.outcomes if o.severity == "critical")

    def failing_mask(self, outcome: ExpectationOutcome) -> np.ndarray:
        """Boolean row mask of the rows `outcome` blames (later duplicates only, for uniqueness)."""
        mask = np.zeros(self.row_count, dtype=bool)
        mask[outcome.unexpected_positions] = True
        return mask


def suite_path(name: str) -> Path:
    """Path of the JSON suite for a table name."""
    return SUITE_DIR / f"{name}.json"


def load_suite_dict(name: str) -> dict[str, Any]:
    """The suite as plain JSON data (name, expectations, meta)."""
    path = suite_path(name)
    if not path.exists():
        raise ValueError(f"no expectation suite named {name!r} (looked for {path})")
    return json.loads(path.read_text())


def load_suite(name: str, drop_parameters: tuple[str, ...] = ()) -> ExpectationSuite:
    """Build a GX ExpectationSuite from `expectations/<name>.json`.

    Args:
        name: table / suite name.
        drop_parameters: leave out expectations that use these suite parameters (for example the
            referential check when there is no usable items table to check against).
    """
    import great_expectations as gx

    data = load_suite_dict(name)
    exps = [e for e in data["expectations"] if not (_parameters_of(e) & set(drop_parameters))]
    return gx.ExpectationSuite(name=data["name"], expectations=exps, meta=data.get("meta"))


def _parameters_of(exp: dict[str, Any]) -> set[str]:
    return {v[_PARAM] for v in exp["kwargs"].values() if isinstance(v, dict) and _PARAM in v}


@cache
def _batch_definition() -> Any:
    """An ephemeral GX context with one pandas whole-dataframe batch definition, built once."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("contract").add_dataframe_asset("table")
    return asset.add_batch_definition_whole_dataframe("whole")


def validate(
    df: pd.DataFrame,
    suite_name_or_suite: str | ExpectationSuite,
    parameters: dict[str, Any] | None = None,
) -> SuiteResult:
    """Run a suite over `df` with COMPLETE results so row-level failures come back as positions.

    Args:
        df: the table, already coerced to the contract's types (see `coerce_table`).
        suite_name_or_suite: a suite name under `expectations/` or a GX ExpectationSuite.
        parameters: suite parameter values (`{"$PARAMETER": name}` in the JSON), e.g.
            `known_item_ids` (list) and `latest_allowed_ts` (a tz-aware datetime).
    """
    suite = (
        load_suite(suite_name_or_suite)
        if isinstance(suite_name_or_suite, str)
        else suite_name_or_suite
    )
    # Positions, not labels: GX reports index labels, and a RangeIndex makes them the same.
    frame = df.reset_index(drop=True)
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(
        suite, result_format="COMPLETE", expectation_parameters=dict(parameters or {})
    )
    outcomes = [_outcome(r) for r in result.results]
    _trim(result)  # row lists now live in `outcomes`; keep the GX result small for docs and logs
    return SuiteResult(suite.name, len(frame), outcomes, result)


def _outcome(r: Any) -> ExpectationOutcome:
    config = r.expectation_config
    kwargs = dict(config.kwargs)
    res = r.result or {}
    positions = np.asarray(res.get("unexpected_index_list") or [], dtype=np.int64)
    exc = r.exception_info or {}
    raised = exc.get("raised_exception") if isinstance(exc, dict) else False
    severity = getattr(config, "severity", None) or "critical"
    severity = getattr(severity, "value", severity)
    meta = config.meta or {}
    column = kwargs.get("column") or kwargs.get("column_B")
    return ExpectationOutcome(
        type=config.type,
        column=column,
        kwargs={k: v for k, v in kwargs.items() if k not in ("batch_id",)},
        severity=str(severity),
        reason=meta.get("reason", f"{column}: {config.type}"),
        success=bool(r.success),
        unexpected_count=int(res.get("unexpected_count") or len(positions)),
        unexpected_positions=positions,
        keep_first=meta.get("keep") == "first",
        exception=exc.get("exception_message") if raised else None,
    )


# --- coercion to the contract's logical types ---------------------------------------------------


def _coerce_column(s: pd.Series, dtype: str) -> tuple[pd.Series, np.ndarray, str]:
    """Coerce one column; return it, the mask of cells that were non-null but did not parse, and
    the reason for those cells."""
    if dtype == "str":
        # Parquet may bring ints for ids; text keeps leading zeros of CSV ids untouched.
        return s.astype("str"), np.zeros(len(s), dtype=bool), ""
    if dtype in ("float", "int"):
        out = pd.to_numeric(s, errors="coerce").astype("float64")
        broken = s.notna().to_numpy() & out.isna().to_numpy()
        if dtype == "int":
            # 0.5 parses as a number but is no integer: blame it here, not as a set violation.
            values = out.to_numpy()
            fractional = ~np.isnan(values) & (np.nan_to_num(values) % 1 != 0)
            return out, broken | fractional, "not an integer"
        return out, broken, "not a number"
    if dtype == "timestamp":
        out = _to_utc(s)
        broken = s.notna().to_numpy() & out.isna().to_numpy()
        return out, broken, "unparseable timestamp"
    raise ValueError(f"unknown contract dtype {dtype!r}")


def _to_utc(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_localize("UTC")  # naive timestamps in the contract are UTC
    else:
        text = s.astype("str")
        out = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        # ISO 8601 is the fast path; retry only the cells it missed with per-cell inference.
        retry = text.notna() & out.isna()
        if retry.any():
            out = out.copy()
            out[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format="mixed")
    # One resolution whatever the source (Parquet keeps ns, text parses to us): equal tables compare
    # equal, and microseconds cover any year a shop might write.
    return out.dt.as_unit("us")


def _example(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def coerce_table(
    df: pd.DataFrame, table: str
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    """Coerce the contract columns of `df` to their logical types (extra columns are kept as they are).

    Returns:
        The coerced frame (same row order, RangeIndex), a mask per column of cells that were non-null
        but did not parse, and the reason text per column (e.g. "price: not a number ('abc')" for the
        first offending value).
    """
    out = df.reset_index(drop=True).copy()
    broken: dict[str, np.ndarray] = {}
    reasons: dict[str, str] = {}
    for col in S.CONTRACT[table]:
        if col.name not in out.columns:
            continue
        coerced, bad, why = _coerce_column(out[col.name], col.dtype)
        out[col.name] = coerced
        if bad.any():
            broken[col.name] = bad
            reasons[col.name] = f"{col.name}: {why}"
    return out, broken, reasons


# --- the whole contract check of a data folder --------------------------------------------------


@dataclass
class TableReport:
    """Validation figures of one table (one entry of `validation.json`)."""

    table: str
    rows: int = 0
    bad_rows: int = 0
    expectations: list[dict[str, Any]] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    quarantine_path: str | None = None

    @property
    def bad_share(self) -> float:
        return self.bad_rows / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad_share": self.bad_share,
            "passed": self.passed,
            "expectations": self.expectations,
            "warnings": self.warnings,
            "errors": self.errors,
            "quarantine_path": self.quarantine_path,
        }


@dataclass
class ValidationReport:
    """Result of `validate_data_dir`: clean tables, quarantined rows, figures and errors."""

    data_dir: Path
    threshold: float
    tables: dict[str, TableReport] = field(default_factory=dict)
    clean_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    quarantined: dict[str, pd.DataFrame] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    report_path: Path | None = None
    docs_index: Path | None = None
    gx_results: dict[str, Any] = field(default_factory=dict)  # batch -> GX validation result

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "threshold": self.threshold,
            "errors": self.errors,
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "docs_index": str(self.docs_index) if self.docs_index else None,
        }

    def summary_text(self) -> str:
        """The summary the CLI prints: a line per table (rows, bad rows, warnings, and for a
        failed table why), then the table of failed expectations (table, expectation, column,
        failed count) when there are any, then PASSED or FAILED.

        A table that could not be checked row by row (a required column missing, no rows) says
        so instead of counting 0 bad rows.
        """
        lines = []
        for name, t in self.tables.items():
            if t.passed:
                status = "ok"
            else:
                status = "FAILED: " + "; ".join(_short_reason(e, name) for e in t.errors)
            if not t.passed and not t.expectations:
                lines.append(f"{name:<8} rows={t.rows} not checked row by row, {status}")
                continue
            lines.append(
                f"{name:<8} rows={t.rows} bad={t.bad_rows} ({t.bad_share:.2%}) "
                f"warnings={sum(t.warnings.values())} {status}"
            )
        failed = [(n, e) for n, t in self.tables.items() for e in t.expectations if e["failed"]]
        if failed:
            lines += ["", f"{'table':<8} {'expectation':<52} {'column':<12} {'failed':>8}"]
            for name, e in failed:
                tag = " (warning)" if e["severity"] == "warning" else ""
                lines.append(
                    f"{name:<8} {e['expectation'] + tag:<52} {e['column'] or '-':<12} "
                    f"{e['failed']:>8}"
                )
        n = len(self.errors)
        lines.append("PASSED" if self.passed else f"FAILED ({n} error{'s' if n != 1 else ''})")
        return "\n".join(lines)


def _short_reason(error: str, table: str) -> str:
    """A table error without its `table '<name>': ` prefix and its closing parenthesis of
    details (the full message is printed as the command's `error:` line)."""
    text = error.removeprefix(f"table '{table}': ")
    if text.endswith(")"):
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                if i > 0 and text[i - 1] == " ":
                    text = text[: i - 1]
                break
    return text


def validate_data_dir(
    data_dir: str | Path,
    threshold: float = 0.01,
    now: dt.datetime | None = None,
    quarantine_dir: str | Path | None = None,
    docs_dir: str | Path | None = None,
    build_docs: bool = True,
) -> ValidationReport:
    """Check every contract table in `data_dir` and split each into clean and quarantined rows.

    Row-level breaks (a null or duplicate id, a bad price, an unknown item, ...) are quarantined to
    `<quarantine_dir or data_dir/quarantine>/<table>.parquet` with the original values and a
    `reason`; a table fails when its bad share passes `threshold`. Table-level breaks (a required
    column missing, an empty table) fail the report without quarantine. Everything detectable is
    reported in `report.errors` (and `passed` is False); only input that cannot be read at all
    raises.

    Args:
        data_dir: folder with items/events/offers (and optionally users) as Parquet or CSV.
        threshold: largest allowed share of quarantined rows per table.
        now: the clock for "timestamp not in the future" (default: the current UTC time).
        quarantine_dir: where quarantined rows go (default `<data_dir>/quarantine`).
        docs_dir: root of the file-backed GX project for Data Docs (default `<data_dir>/gx_docs`).
        build_docs: write GX Data Docs HTML (about 0.3 s); off in fast tests.

    Raises:
        pricing.io.ContractError: a required table is missing or a file cannot be read.
    """
    data_dir = Path(data_dir)
    raw = pio.read_tables(data_dir)  # raises ContractError for missing or unreadable files
    report = ValidationReport(data_dir=data_dir, threshold=threshold)
    qdir = Path(quarantine_dir) if quarantine_dir else data_dir / "quarantine"

    params = contract_parameters(now)
    known_ok = False
    for table in S.TABLES:  # items first: its clean ids feed the referential checks
        if table not in raw:
            continue
        drop = () if known_ok else (_KNOWN_ITEM_IDS,)
        tr, clean, bad, result = _validate_table(raw[table], table, params, drop, threshold)
        report.tables[table] = tr
        report.errors.extend(tr.errors)
        if result is not None:
            report.gx_results[table] = result.gx_result
        if clean is not None:
            report.clean_tables[table] = clean
        if bad is not None:
            report.quarantined[table] = bad
            tr.quarantine_path = write_quarantine(bad, qdir, table)
        if table == S.ITEMS and clean is not None:
            params[_KNOWN_ITEM_IDS] = clean[S.ITEM_ID].tolist()
            known_ok = True

    return finish_report(report, build_docs, docs_dir)


def finish_report(
    report: ValidationReport, build_docs: bool = True, docs_dir: str | Path | None = None
) -> ValidationReport:
    """Write the report's Data Docs (its GX results) and `validation.json` in its data folder."""
    data_dir = report.data_dir
    if build_docs and report.gx_results:
        report.docs_index = _build_docs(report.gx_results, Path(docs_dir or data_dir / "gx_docs"))
    report.report_path = data_dir / "validation.json"
    report.report_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def contract_parameters(
    now: dt.datetime | None = None, known_item_ids: list[str] | None = None
) -> dict[str, Any]:
    """The suites' parameters: the latest allowed timestamp (`now` plus the clock tolerance) and,
    once the catalog is validated, its item ids (the referential check of events and offers)."""
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    params: dict[str, Any] = {_LATEST_TS: (now + FUTURE_TOLERANCE).astimezone(dt.UTC)}
    if known_item_ids is not None:
        params[_KNOWN_ITEM_IDS] = known_item_ids
    return params


def validate_partition(
    df: pd.DataFrame, table: str, parameters: dict[str, Any], taken_ids: Any = None
) -> tuple[TableReport, pd.DataFrame | None, pd.DataFrame | None, SuiteResult | None]:
    """One partition of a table, as `validate_data_dir` checks a whole table, without the threshold
    (judged on the whole table: `merge_table_reports`). Returns its report, its clean rows, its
    quarantined rows (indexed by row number in the partition, with a `reason`) and the GX result.

    `taken_ids`: primary-key values an earlier partition holds (their rows here are duplicates).
    """
    drop = () if _KNOWN_ITEM_IDS in parameters else (_KNOWN_ITEM_IDS,)
    return _validate_table(df, table, parameters, drop, float("inf"), taken_ids)


def _validate_table(
    df: pd.DataFrame,
    table: str,
    params: dict[str, Any],
    drop: tuple[str, ...],
    threshold: float,
    taken_ids: Any = None,
) -> tuple[TableReport, pd.DataFrame | None, pd.DataFrame | None, SuiteResult | None]:
    """Coerce, run the suite and split `df` into clean and quarantined rows (see
    `validate_data_dir`). `taken_ids`: ids (the table's primary key) an earlier partition already
    holds; rows with one are duplicates, as if the partitions were one table."""
    tr = TableReport(table=table, rows=len(df))
    missing = [c for c in S.column_names(table, required_only=True) if c not in df.columns]
    if missing:
        tr.errors.append(
            f"table '{table}': required column(s) {', '.join(repr(c) for c in missing)} missing "
            f"(0 of {len(df)} rows usable; columns present: {', '.join(map(str, df.columns))})"
        )
        return tr, None, None, None
    if len(df) == 0:
        tr.errors.append(f"table '{table}': is empty (0 rows)")
        return tr, None, None, None

    coerced, broken, coerce_reasons = coerce_table(df, table)
    n = len(coerced)
    # (reason, mask, per-row reasons or None) of every quarantine rule
    rules: list[tuple[str, np.ndarray, dict[int, str] | None]] = []
    for col, mask in broken.items():
        reason = coerce_reasons[col]
        values = df[col].iloc[np.flatnonzero(mask)]
        per_row = {
            int(i): f"{reason} ({_example(v)})"
            for i, v in zip(np.flatnonzero(mask), values, strict=True)
        }
        rules.append((reason, mask, per_row))
        tr.expectations.append(
            {
                "expectation": f"coerce_to_{_dtype(table, col)}",
                "column": col,
                "severity": "critical",
                "failed": int(mask.sum()),
                "gx_unexpected_count": None,
            }
        )

    result = validate(coerced, load_suite(table, drop_parameters=drop), params)
    for o in result.outcomes:
        if o.exception:
            tr.errors.append(
                f"table '{table}': expectation {o.type} on '{o.column}' could not run: {o.exception}"
            )
            continue
        if o.column is None:  # table-level expectations (row count) are checked above
            continue
        mask = result.failing_mask(o)
        if o.keep_first and mask.any():
            # GX flags every copy of a duplicated id; the first one is the good row.
            mask &= coerced[o.column].duplicated(keep="first").to_numpy()
        if o.keep_first and taken_ids is not None and len(taken_ids):
            ids = coerced[o.column]
            mask = mask | (ids.notna() & ids.isin(taken_ids)).to_numpy()
        if o.type == "expect_column_values_to_not_be_null" and o.column in broken:
            mask &= ~broken[o.column]  # already blamed as unparseable, not as missing
        failed = int(mask.sum())
        tr.expectations.append(
            {
                "expectation": o.type,
                "column": o.column,
                "severity": o.severity,
                "failed": failed,
                "gx_unexpected_count": o.unexpected_count,
            }
        )
        if o.severity == "warning":
            tr.warnings[o.reason] = failed
        elif failed:
            rules.append((o.reason, mask, None))

    bad_mask = np.zeros(n, dtype=bool)
    for _, mask, _ in rules:
        bad_mask |= mask
    tr.bad_rows = int(bad_mask.sum())
    clean = coerced.loc[~bad_mask].reset_index(drop=True)
    clean = _finalize_types(clean, table)
    bad = _quarantine_frame(df.reset_index(drop=True), bad_mask, rules)
    if tr.bad_share > threshold:
        per_rule = "; ".join(f"{why}: {int(m.sum())} row(s)" for why, m, _ in rules if m.any())
        tr.errors.append(
            f"table '{table}': {tr.bad_rows} of {tr.rows} rows ({tr.bad_share:.2%}) break the "
            f"contract, over the threshold of {threshold:.2%} ({per_rule})"
        )
    return tr, clean, bad, result


def merge_table_reports(table: str, parts: list[TableReport], threshold: float) -> TableReport:
    """One table's report from those of its partitions (each validated with `_validate_table`
    and an infinite threshold): counts add up, and the threshold is judged on the whole table."""
    tr = TableReport(table=table)
    entries: dict[tuple[str, str | None], dict[str, Any]] = {}
    for part in parts:
        tr.rows += part.rows
        tr.bad_rows += part.bad_rows
        tr.errors.extend(e for e in part.errors if "is empty (0 rows)" not in e)
        for reason, n in part.warnings.items():
            tr.warnings[reason] = tr.warnings.get(reason, 0) + n
        for e in part.expectations:
            key = (e["expectation"], e["column"])
            if key not in entries:
                entries[key] = {**e, "failed": 0, "gx_unexpected_count": None}
                tr.expectations.append(entries[key])
            entries[key]["failed"] += e["failed"]
            if e["gx_unexpected_count"] is not None:
                entries[key]["gx_unexpected_count"] = (
                    entries[key]["gx_unexpected_count"] or 0
                ) + e["gx_unexpected_count"]
    # as one table lists them: the coercion failures in column order first, then the suite's
    columns = S.column_names(table)
    coerced = sorted(
        (e for e in tr.expectations if e["expectation"].startswith("coerce_to_")),
        key=lambda e: columns.index(e["column"]),
    )
    tr.expectations = coerced + [e for e in tr.expectations if e not in coerced]
    if tr.rows == 0 and not tr.errors:
        tr.errors.append(f"table '{table}': is empty (0 rows)")
    if tr.bad_share > threshold:
        per_rule = "; ".join(
            f"{e['expectation']} on {e['column'] or '-'}: {e['failed']} row(s)"
            for e in tr.expectations
            if e["failed"] and e["severity"] != "warning"
        )
        tr.errors.append(
            f"table '{table}': {tr.bad_rows} of {tr.rows} rows ({tr.bad_share:.2%}) break the "
            f"contract, over the threshold of {threshold:.2%} ({per_rule})"
        )
    return tr


def _dtype(table: str, column: str) -> str:
    return next(c.dtype for c in S.CONTRACT[table] if c.name == column)


def _finalize_types(clean: pd.DataFrame, table: str) -> pd.DataFrame:
    # Integer columns went through float for coercion; with bad rows gone they are whole numbers.
    for col in S.CONTRACT[table]:
        if col.dtype == "int" and col.name in clean.columns:
            s = clean[col.name]
            clean[col.name] = s.astype("Int64") if s.isna().any() else s.astype("int64")
    return clean


def _quarantine_frame(
    original: pd.DataFrame,
    bad_mask: np.ndarray,
    rules: list[tuple[str, np.ndarray, dict[int, str] | None]],
) -> pd.DataFrame:
    """Original values of the bad rows plus a `reason` column (reasons joined with '; ')."""
    positions = np.flatnonzero(bad_mask)
    reasons: list[list[str]] = [[] for _ in positions]
    for why, mask, per_row in rules:
        for i in np.flatnonzero(mask[positions]):
            reasons[i].append(per_row[int(positions[i])] if per_row else why)
    bad = original.iloc[positions].copy()
    bad[S.REASON] = ["; ".join(r) for r in reasons]
    bad.index = positions  # row numbers in the file, for the person fixing it
    bad.index.name = "row"
    return bad


def write_quarantine(bad: pd.DataFrame, qdir: Path, table: str) -> str | None:
    """Write quarantined rows to `<qdir>/<table>.parquet` (an empty frame removes a stale file)."""
    path = qdir / f"{table}.parquet"
    if bad.empty:
        path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
        return None
    qdir.mkdir(parents=True, exist_ok=True)
    # Mixed-type raw columns (Parquet ints next to CSV text) are written as text, never dropped.
    out = bad.reset_index()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    out.to_parquet(path, index=False)
    return str(path)


def _build_docs(results: dict[str, Any], docs_dir: Path) -> Path | None:
    """Write GX Data Docs (suites and this run's results) in a file-backed context at `docs_dir`."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    run_id = RunIdentifier(run_name="validate", run_time=dt.datetime.now(dt.UTC))
    for batch, result in results.items():  # a table, or "<table>/<partition>"
        table = batch.split("/")[0]
        context.suites.add_or_update(load_suite(table))
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=table),
            run_id=run_id,
            batch_identifier=batch.replace("/", "-"),
        )
        context.validation_results_store.set(key, result)
    sites = context.build_data_docs()
    url = next(iter(sites.values()), None)
    return Path(url.removeprefix("file://")) if url else None


def _trim(result: Any) -> None:
    """Cut a GX result's row lists to a sample: a 1M-row COMPLETE result would be written out whole."""
    for r in result.results:
        res = r.result or {}
        for key in (
            "unexpected_list",
            "unexpected_index_list",
            "partial_unexpected_list",
            "partial_unexpected_index_list",
            "partial_unexpected_counts",
        ):
            if isinstance(res.get(key), list):
                res[key] = res[key][:_DOCS_SAMPLE]
        res.pop("unexpected_index_query", None)
