"""The `experiment` flow: arms from the offer log, always-valid intervals, the declared rule decides.

Each run is one look: it reads every offer of the experiment so far, reports each arm's quotes,
conversion, revenue and profit per quote with always-valid 95% intervals
(`pricing.experiment`), and applies the `ExperimentRule` fixed before the start: promote, keep
running, or stop. A promotion moves the `champion` alias exactly as the training flow does
(compare-and-set under the promotion lock, scorer reload with a smoke quote, rollback).
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from mlops import registry, tracking
from mlops.registry import CHALLENGER, CHAMPION
from mlops.settings import get_settings
from pricing import experiment as X
from pricing import schema as S
from tasks.experiment import (
    judge_experiment,
    load_experiment_offers,
    policy_version,
    promote_experiment,
    publish_experiment,
    unit_costs,
)


def _default_arms(
    offers: Any, registered: str, control: str | None, treatment: str | None
) -> tuple[str, str]:
    """`champion`/`challenger` when the log names arms; else the policies the aliases point at."""
    if X.arm_column(offers) == X.ARM:
        return control or CHAMPION, treatment or CHALLENGER
    if control is None:
        v = registry.alias_version(registered, CHAMPION)
        if v is None:
            raise ValueError("the log has no arms and there is no champion: pass control=<policy>")
        control = f"{registered}@{v}"
    if treatment is None:
        v = registry.alias_version(registered, CHALLENGER)
        if v is None:
            raise ValueError("the log has no arms and no challenger: pass treatment=<policy>")
        treatment = f"{registered}@{v}"
    return control, treatment


@flow(name="experiment", log_prints=True)
def experiment(
    offer_log_dir: str,
    data_dir: str,
    experiment_id: str | None = None,
    control: str | None = None,
    treatment: str | None = None,
    metric: str = "profit",
    min_sample: int = 2000,
    min_effect: float = 0.01,
    guardrail: float = 0.05,
    max_sample: int = 20000,
    alpha: float = 0.05,
    promote: bool = True,
) -> dict[str, Any]:
    """One look at an online experiment: the arms' table and the rule's decision (and promotion).

    Args:
        offer_log_dir: the scorer's offer log (every writer's files are read).
        data_dir: a data directory whose items table gives unit costs (profit per quote).
        experiment_id: only this experiment's rows, when the log records experiments.
        control, treatment: arm names (default `champion` and `challenger`); when the log has no
            arms, policies `name@version` (default: the versions the aliases point at).
        metric, min_sample, min_effect, guardrail, max_sample, alpha: the `ExperimentRule`.
        promote: move the champion alias when the rule says promote.
    """
    settings = get_settings()
    tracking.configure(settings.tracking_uri)
    registered = settings.registered_model
    rule = X.ExperimentRule(metric, min_sample, min_effect, guardrail, max_sample, alpha)
    offers = load_experiment_offers(offer_log_dir, experiment_id)
    control, treatment = _default_arms(offers, registered, control, treatment)
    exp_id = experiment_id or f"{treatment}-vs-{control}"
    table, decision = judge_experiment(offers, unit_costs(data_dir), rule, control, treatment)
    version = policy_version(offers, treatment, registered)
    report = publish_experiment(exp_id, table, decision, rule, registered, version)
    promotion: dict[str, Any] | None = None
    if version is not None:
        smoke = offers[offers[X.arm_column(offers)].astype(str) == treatment]
        promotion = promote_experiment(
            registered,
            version,
            policy_version(offers, control, registered),
            decision,
            settings.scorer_url,
            settings.admin_token,
            smoke[S.ITEM_ID].astype(str).drop_duplicates().head(3).tolist(),
            str(smoke[S.USER_ID].iloc[0]) if len(smoke) else "experiment-smoke",
            promote,
        )
    elif decision.promote:
        decision_note = f"{treatment} is not a registered version of {registered}: not promoted"
        promotion = {"promoted": False, "promotion_reasons": [decision_note]}
    result = {
        "experiment": exp_id,
        "control": control,
        "treatment": treatment,
        "treatment_version": version,
        "rule": rule.to_dict(),
        "rule_id": rule.rule_id(),
        "decision": decision.to_dict(),
        "arms": json.loads(table.to_json(orient="records")),
        "promotion": promotion,
        # offer-log lines skipped as broken (torn, invalid, incomplete): not in the arms' numbers
        "offer_log_skipped_lines": int(offers.attrs.get("skipped_lines", 0)),
    }
    print(report)
    return result
