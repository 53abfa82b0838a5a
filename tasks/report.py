"""What a person reads about a training run: the metrics table, the decision, the links.

The same text serves the Prefect artifacts (`publish_run_report`), the MLflow run's description and
the summary `pricing run` prints; the plain functions take the run report (the flow's result).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pricing.stats import REFERENCES

# The columns of the metrics table, in order: the policy's money first, then the fit.
KEY_METRICS = ("profit_regret", "gap_share", "log_loss", "auc", "ece")


class Stopwatch:
    """Wall time per step of a flow (`with clock("train"): ...`), for the report's `timings_s`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = time.perf_counter() - t

    def total(self) -> dict[str, float]:
        """The steps and `total` (since the stopwatch was made)."""
        return {**self.timings, "total": time.perf_counter() - self.start}


def _fmt(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "-"


# How a person reads each metric: shares of profit as percentages (a lift signed), fit metrics as
# plain numbers, money in the catalog's currency, durations in ms, s or min.
PERCENT = ("profit_regret", "gap_share", "grid_regret", "guardrail_hit_share", "purchase_rate")
SIGNED_PERCENT = ("uplift_vs_list", "lift_vs_uniform")
MONEY = ("expected_profit", "expected_revenue", "list_profit", "oracle_profit")
DECIMALS = {"log_loss": 4, "auc": 3, "ece": 4}
# The metrics table's columns (the Prefect artifact and the MLflow description); each cell has its unit.
TABLE_METRICS = (
    "profit_regret",
    "gap_share",
    "uplift_vs_list",
    "expected_profit",
    "log_loss",
    "auc",
)


def duration(seconds: float | None) -> str:
    """`850 ms`, `12.3 s`, `4 min 05 s`; `-` when not measured."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def metric_text(name: str, value: Any, currency: str = "USD") -> str:
    """One metric as a person reads it: `12.3 %`, `+53.9 %`, `1.24 USD`, `0.3387`; `-` if absent."""
    if not (isinstance(value, int | float) and not isinstance(value, bool)) or not math.isfinite(
        value
    ):
        return "-"
    base = name.rsplit("/", 1)[-1]
    if base in PERCENT:
        return f"{value * 100:.1f} %"
    if base in SIGNED_PERCENT:
        return f"{value * 100:+.1f} %"
    if base in MONEY:
        return f"{value:,.2f} {currency}"
    if base.endswith("_seconds"):
        return duration(value)
    return f"{value:.{DECIMALS.get(base, 4)}f}"


def _currency() -> str:
    from mlops.settings import get_settings

    try:
        return get_settings().currency
    except Exception:  # noqa: BLE001 - a bad setting is reported where it is used, not in a table
        return "USD"


def display_rows(report: dict[str, Any], currency: str | None = None) -> list[dict[str, str]]:
    """The metrics table as text, one row per model (the candidate first): rounded, with units."""
    currency = currency or _currency()
    main = report["model"]
    metrics: dict[str, dict[str, float]] = report["metrics"]
    train: dict[str, dict[str, float]] = report.get("train", {})
    names = [main, *(n for n in metrics if n != main)]
    rows = []
    for name in names:
        vals = metrics.get(name, {})
        role = "candidate" if name == main else "reference" if name in REFERENCES else "baseline"
        row = {"model": name, "role": role}
        for k in TABLE_METRICS:
            row[k] = metric_text(k, vals.get(k), currency)
        row["fit time"] = duration(train.get(name, {}).get("fit_seconds"))
        rows.append(row)
    return rows


def model_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: name, role, the key metrics (None when not measured), fit seconds."""
    main = report["model"]
    metrics: dict[str, dict[str, float]] = report["metrics"]
    train: dict[str, dict[str, float]] = report.get("train", {})
    names = [main, *(n for n in metrics if n != main)]
    rows = []
    for name in names:
        vals = metrics.get(name, {})
        role = "candidate" if name == main else "reference" if name in REFERENCES else "baseline"
        row: dict[str, Any] = {"model": name, "role": role}
        for k in KEY_METRICS:
            v = vals.get(k)
            row[k] = float(v) if isinstance(v, int | float) and math.isfinite(v) else None
        fit = train.get(name, {}).get("fit_seconds")
        row["fit_seconds"] = round(float(fit), 2) if fit is not None else None
        rows.append(row)
    return rows


def decision_headline(report: dict[str, Any]) -> str:
    """`version 3 of price-response: PROMOTED to champion` (or `not promoted`)."""
    verdict = "PROMOTED to champion" if report.get("promoted") else "not promoted"
    return f"version {report['model_version']} of {report['registered_model']}: {verdict}"


def decision_brief(report: dict[str, Any]) -> str:
    """The verdict and its reasons as Markdown: the decision artifact's description, which is what
    the flow run's Artifacts tab shows on the artifact's card in both Prefect UIs."""
    verdict = "Promoted" if report.get("promoted") else "Rejected"
    reasons = [f"- {_cell(r)}" for r in report.get("promotion_reasons", [])]
    return "\n".join([f"**{decision_headline(report)}**", "", f"{verdict} because:", "", *reasons])


def decision_markdown(report: dict[str, Any]) -> str:
    """The promotion decision with its reasons and links (the Prefect artifact `promotion-decision`).

    Plain Markdown that both Prefect UIs render: a bold verdict (no heading), the reasons as a
    list, the links as Markdown links.
    """
    lines = [
        decision_brief(report),
        "",
        f"Champion before: {report.get('previous_champion') or 'none'}; decided at "
        f"{report.get('decided_at', '?')}.",
    ]
    links = _links_markdown(report.get("links", {}))
    if links:
        lines += ["", *links]
    return "\n".join(lines)


def _links_markdown(links: dict[str, str]) -> list[str]:
    """Each link as a Markdown list item: a URL as a link, anything else (how to open a UI) as text."""
    out = []
    for name, target in links.items():
        if target.startswith(("http://", "https://")):
            out.append(f"- [{name}]({target})")
        else:
            out.append(f"- {name}: {target}")
    return out


def summary_markdown(report: dict[str, Any]) -> str:
    """The MLflow parent run's description: the decision, the models' table (the candidate in
    bold), the reasons and the links, as Markdown (GitHub tables) that MLflow's UI renders."""
    currency = _currency()
    main, dataset = report["model"], report.get("dataset", "?")
    split = report.get("split", {})
    rows = display_rows(report, currency)
    header = list(rows[0]) if rows else ["model"]
    lines = [
        f"**{decision_headline(report)}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        cells = [_cell(str(v)) for v in row.values()]
        if row["model"] == main:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Test metrics of `{main}` (the candidate, in bold) and every model it was compared with, "
        f"on `{dataset}` (train {split.get('n_train', '?')}, test {split.get('n_test', '?')} offers).",
        "",
        ("Promoted" if report.get("promoted") else "Rejected") + " because:",
        "",
    ]
    lines += [f"- {_cell(r)}" for r in report.get("promotion_reasons", [])]
    links = _links_markdown(report.get("links", {}))
    if links:
        lines += ["", *links]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell or list item (no pipes, no line breaks)."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_text(report: dict[str, Any]) -> str:
    """The one-screen summary `pricing run` prints: models, the decision, where to look next."""
    main, dataset = report["model"], report.get("dataset", "?")
    split = report.get("split", {})
    lines = [
        f"training run: {main} on {dataset} (train {split.get('n_train', '?')}, "
        f"test {split.get('n_test', '?')} offers)",
        "",
    ]
    rows = model_rows(report)
    width = max(len(r["model"]) for r in rows) + 2
    lines.append(f"  {'model':<{width}}" + "".join(f"{k:>16}" for k in KEY_METRICS))
    for row in rows:
        mark = "*" if row["model"] == main else " "
        lines.append(
            f"{mark} {row['model']:<{width}}" + "".join(f"{_fmt(row[k]):>16}" for k in KEY_METRICS)
        )
    lines += ["", decision_headline(report)]
    lines += [f"  - {r}" for r in report.get("promotion_reasons", [])]
    links = report.get("links", {})
    if links:
        lines.append("")
        lines += [f"{name + ':':<16}{url}" for name, url in links.items()]
    return "\n".join(lines)


@task(name="publish_run_report", task_run_name="publish-report-v{version}", cache_policy=NO_CACHE)
def publish_run_report(report: dict[str, Any], version: str) -> list[str]:
    """Prefect artifacts of the run: the metrics table and the promotion decision; their ids."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    mlflow_url = report.get("links", {}).get("MLflow run", "")
    table = create_table_artifact(
        table=display_rows(report),
        key="training-metrics",
        description="Test metrics of every model of this run, the candidate first"
        + (f" ([MLflow run]({mlflow_url}))" if mlflow_url.startswith("http") else ""),
    )
    decision = create_markdown_artifact(
        markdown=decision_markdown(report),
        key="promotion-decision",
        description=decision_brief(report),
    )
    if mlflow_url:
        get_run_logger().info("MLflow run: %s", mlflow_url)
    return [str(table), str(decision)]
