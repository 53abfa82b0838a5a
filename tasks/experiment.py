"""The online experiment's steps: read the arms from the offer log, judge them by the declared rule,
publish the table and the decision, and promote through the registry's alias mechanics.

Promotion is `tasks.registry.move_champion`, the training flow's (the promotion lock, the
compare-and-set of the `champion` alias, the scorer's reload with a smoke quote, and the rollback
when the scorer does not serve the new version), so an experiment promotes exactly as the training
flow does; only the reason to promote differs (the experiment's rule instead of the offline gate).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops import registry
from pricing import experiment as X
from pricing import schema as S
from pricing.io import read_table
from tasks.registry import move_champion, now_iso


def read_experiment_offers(log_dir: str | Path, experiment_id: str | None = None) -> pd.DataFrame:
    """The offers of the log with an outcome, with their `experiment`, `arm` and `pair_id` when the
    log records them, and their request (`request_id`: the outcome row's quote id); only
    `experiment_id`'s rows when given and the log names experiments.

    `export_offers` gives the contract's columns; the others are read from the same outcome rows
    (`read_outcomes`) and joined by offer id, so a log written before arms existed still reads
    (its arms are then its policies; rows without a quote id leave their request empty).
    Lines of the log skipped as broken are counted in `attrs["skipped_lines"]`.
    """
    from scorer.offer_log import OUTCOME_TS, QUOTE_ID, export_offers, first_outcomes, read_outcomes

    offers = export_offers(log_dir)
    skipped = int(offers.attrs.get("skipped_lines", 0))
    extra = [c for c in (X.EXPERIMENT, X.ARM, X.PAIR_ID) if c not in offers] + [QUOTE_ID]
    if len(offers):
        rows = read_outcomes(log_dir, extra=[*extra, OUTCOME_TS]).frame()
        if len(rows):  # the same outcome row the export kept (the first report of each offer)
            rows = first_outcomes(rows)[[S.OFFER_ID, *extra]]
            rows = rows.rename(columns={QUOTE_ID: X.REQUEST})
            offers = offers.merge(rows, on=S.OFFER_ID, how="left")
    if experiment_id is not None and X.EXPERIMENT in offers and offers[X.EXPERIMENT].notna().any():
        offers = offers[offers[X.EXPERIMENT].astype(str) == experiment_id].reset_index(drop=True)
    offers.attrs["skipped_lines"] = skipped
    return offers


@task(
    name="load_experiment_offers",
    task_run_name="load offers of {experiment_id} from {log_dir}",
    retries=1,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
def load_experiment_offers(log_dir: str, experiment_id: str | None = None) -> pd.DataFrame:
    """`read_experiment_offers` as a task (reading is idempotent, so it may retry)."""
    return read_experiment_offers(log_dir, experiment_id)


def unit_costs(data_dir: str | Path) -> pd.Series:
    """Unit cost by item id, from the data directory's items table (profit needs it)."""
    items = read_table(data_dir, S.ITEMS)
    assert items is not None
    return items.set_index(items[S.ITEM_ID].astype(str))[S.UNIT_COST].astype(float)


def policy_version(offers: pd.DataFrame, arm: str, registered_model: str) -> str | None:
    """The registered version that served `arm` (its latest `name@version` policy), if any."""
    col = X.arm_column(offers)
    part = offers[offers[col].astype(str) == arm]
    if not len(part) or S.POLICY not in part:
        return None
    latest = str(part.sort_values(S.TS)[S.POLICY].iloc[-1])
    name, _, version = latest.rpartition("@")
    return version if name == registered_model and version.isdigit() else None


@task(
    name="judge_experiment",
    task_run_name="judge {treatment} against {control}",
    cache_policy=NO_CACHE,
)
def judge_experiment(
    offers: pd.DataFrame,
    unit_cost: pd.Series,
    rule: X.ExperimentRule,
    control: str,
    treatment: str,
) -> tuple[pd.DataFrame, X.ExperimentDecision]:
    """The per-arm table and the rule's decision at this look."""
    table, decision = X.evaluate_experiment(offers, unit_cost, rule, control, treatment)
    get_run_logger().info("experiment: %s", json.dumps(decision.to_dict(), default=str))
    return table, decision


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "experiment"


@task(
    name="publish_experiment",
    task_run_name="publish experiment {experiment_id}",
    cache_policy=NO_CACHE,
)
def publish_experiment(
    experiment_id: str,
    table: pd.DataFrame,
    decision: X.ExperimentDecision,
    rule: X.ExperimentRule,
    registered_model: str | None = None,
    version: str | None = None,
) -> str:
    """The table and the decision as Prefect artifacts, and (with a version) as the version's
    `experiment` tag and description in MLflow. Returns the Markdown report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    report = X.markdown_report(table, decision, rule)
    key = artifact_key(f"experiment-{experiment_id}")
    create_table_artifact(
        table=json.loads(table.to_json(orient="records")),
        key=f"{key}-arms",
        description=f"Arms of experiment {experiment_id}: quotes, conversion, revenue and profit "
        "per quote with always-valid 95% intervals",
    )
    create_markdown_artifact(
        markdown=report,
        key=f"{key}-decision",
        description=f"Decision of experiment {experiment_id}: {decision.action}",
    )
    if registered_model and version:
        tag_experiment(registered_model, version, experiment_id, table, decision, rule, report)
    return report


def tag_experiment(
    registered_model: str,
    version: str,
    experiment_id: str,
    table: pd.DataFrame,
    decision: X.ExperimentDecision,
    rule: X.ExperimentRule,
    report: str,
) -> None:
    """Record the experiment on the treatment's model version: tags and the description."""

    registry.tag_version(
        registered_model,
        version,
        {
            "experiment": {
                "id": experiment_id,
                "rule": rule.to_dict(),
                "rule_id": rule.rule_id(),
                "decision": decision.to_dict(),
                "arms": json.loads(table.to_json(orient="records")),
                "decided_at": now_iso(),
            },
            "experiment_decision": decision.action,
        },
    )
    registry.describe_version(registered_model, version, f"Experiment {experiment_id}\n\n{report}")


def promote_experiment_winner(
    registered_model: str,
    version: str,
    champion_version: str | None,
    decision: X.ExperimentDecision,
    scorer_url: str | None,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    allowed: bool = True,
    lock_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Promote `version` if the experiment says so, with the training flow's alias mechanics.

    Under the promotion lock: the `champion` alias moves only if it still points at
    `champion_version` (the control the experiment ran against); the scorer is asked to reload and
    a smoke quote must show the new version, else the alias is rolled back and this raises
    (`tasks.registry.move_champion`). Returns the same shape as `tasks.registry.promote`.
    """
    out: dict[str, Any] = {
        "promoted": False,
        "promotion_reasons": [f"experiment: {decision.action}", *decision.reasons],
        "previous_champion": champion_version,
        "scorer_notified": False,
        "forced": False,
        "champion_changed": False,
    }
    reasons: list[str] = out["promotion_reasons"]
    if decision.promote and not allowed:
        reasons.append("promotion disabled (promote=False)")
    elif decision.promote:
        move_champion(
            registered_model, version, champion_version, scorer_url, admin_token, smoke_items,
            smoke_user, out, lock_timeout_s,
        )  # fmt: skip
    registry.tag_version(registered_model, version, {"promotion": out, "decided_at": now_iso()})
    return out


@task(
    name="promote_experiment",
    task_run_name="promote {registered_model} v{version} if the experiment says so",
    cache_policy=NO_CACHE,
)
def promote_experiment(
    registered_model: str,
    version: str,
    champion_version: str | None,
    decision: X.ExperimentDecision,
    scorer_url: str | None,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    allowed: bool = True,
) -> dict[str, Any]:
    """`promote_experiment_winner` as a task (no retries: a retry would re-decide on a moved alias)."""
    result = promote_experiment_winner(
        registered_model, version, champion_version, decision, scorer_url, admin_token,
        smoke_items, smoke_user, allowed=allowed,
    )  # fmt: skip
    get_run_logger().info("experiment promotion: %s", json.dumps(result, default=str))
    return result
