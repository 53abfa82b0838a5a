"""Register the trained model in MLflow, then decide on promotion and push it to the scorer.

Registration is idempotent per MLflow run: a Prefect retry reuses the run's version.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops import tracking
from mlops.models import DemandModel
from mlops.registry import CHALLENGER, CHAMPION
from pricing import schema as S
from pricing.promotion import PromotionDecision, PromotionRule, decide


def register(
    model: DemandModel,
    run_id: str,
    registered_model: str,
    guardrails: dict[str, Any],
    input_example: pd.DataFrame,
    evaluation: dict[str, Any],
) -> str:
    """Log the pyfunc to the run, register a version (alias `challenger`), tag it with its evaluation.

    Idempotent per run: when run `run_id` already has a version of `registered_model` (an earlier
    attempt failed after `create_model_version`, e.g. while setting the alias or a tag), that version
    is reused and only the alias and tags are (re)written.
    """
    import mlflow

    version = tracking.run_version(registered_model, run_id)
    if version is None:
        active = mlflow.active_run()
        same = active is not None and active.info.run_id == run_id
        with contextlib.nullcontext() if same else mlflow.start_run(run_id=run_id):
            _, version = tracking.log_price_model(
                model, guardrails, input_example, registered_model
            )
    else:
        tracking.set_alias(registered_model, version, CHALLENGER)
    tracking.tag_version(
        registered_model,
        version,
        {"evaluation": evaluation, "model_kind": model.name, "run_id": run_id},
    )
    return version


@task(name="register_model", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_model(
    model: DemandModel,
    run_id: str,
    registered_model: str,
    guardrails: dict[str, Any],
    input_example: pd.DataFrame,
    evaluation: dict[str, Any],
) -> str:
    """`register` as a task; its retries are safe because `register` is idempotent per run."""
    return register(model, run_id, registered_model, guardrails, input_example, evaluation)


def notify_scorer(
    scorer_url: str,
    token: str,
    expected_version: str,
    smoke_items: list[str],
    smoke_user: str,
    timeout: float = 120.0,
) -> tuple[str, str]:
    """Ask the scorer to reload, then check with a smoke quote that it serves `expected_version`.

    Returns (status, message) with status "ok", "unreachable" (nothing answered: the scorer will
    find the new alias by itself) or "failed" (it answered but does not serve the new version).
    """
    try:
        r = httpx.post(
            f"{scorer_url}/admin/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.TransportError as exc:
        return (
            "unreachable",
            f"scorer unreachable at {scorer_url} ({type(exc).__name__}): not notified",
        )
    if r.status_code >= 300:
        return "failed", f"scorer reload answered {r.status_code}: {r.text[:300]}"
    try:
        q = httpx.post(
            f"{scorer_url}/v1/quote",
            json={"user_id": smoke_user, "items": smoke_items},
            timeout=30.0,
        )
    except httpx.TransportError as exc:
        return "failed", f"smoke quote failed after reload: {exc}"
    served = q.json().get("model_version") if q.status_code == 200 else None
    if str(served) != str(expected_version):
        return "failed", (
            f"smoke quote served version {served} (HTTP {q.status_code}), expected {expected_version}"
        )
    return "ok", f"scorer reloaded and serves version {served} (smoke quote ok)"


def promote(
    registered_model: str,
    version: str,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    champion_version: str | None,
    reference: dict[str, float],
    simulated: bool,
    rule: PromotionRule,
    scorer_url: str | None,
    admin_token: str,
    smoke_items: list[str],
    smoke_user: str,
    allowed: bool = True,
) -> dict[str, Any]:
    """Apply the gate; move the alias; notify the scorer and roll back if it does not serve the new version."""
    decision: PromotionDecision = decide(challenger, champion, reference, simulated, rule)
    out: dict[str, Any] = {
        "promoted": False,
        "promotion_reasons": list(decision.reasons),
        "previous_champion": champion_version,
        "scorer_notified": False,
    }
    if not allowed:
        out["promotion_reasons"].append("promotion disabled (--no-promote)")
        decision.promote = False
    if decision.promote:
        tracking.set_alias(registered_model, version, CHAMPION)
        out["promoted"] = True
        if scorer_url:
            status, msg = notify_scorer(scorer_url, admin_token, version, smoke_items, smoke_user)
            out["scorer_notified"] = status == "ok"
            out["promotion_reasons"].append(msg)
            if status == "failed":
                if champion_version is not None:
                    tracking.set_alias(registered_model, champion_version, CHAMPION)
                    out["promotion_reasons"].append(
                        f"rolled back alias to version {champion_version}"
                    )
                else:
                    tracking.delete_alias(registered_model, CHAMPION)
                    out["promotion_reasons"].append("rolled back: no champion alias")
                out["promoted"] = False
                tracking.tag_version(registered_model, version, {"promotion": out})
                raise RuntimeError(f"promotion of version {version} rolled back: {msg}")
        else:
            out["promotion_reasons"].append(
                "no scorer configured (PRICING_SCORER_URL): alias moved, scorer not notified; "
                "a running scorer picks it up by watching the alias"
            )
    tracking.tag_version(registered_model, version, {"promotion": out, "decided_at": time.time()})
    return out


@task(name="promote_model", cache_policy=NO_CACHE)
def promote_model(*args: Any, **kwargs: Any) -> dict[str, Any]:
    result = promote(*args, **kwargs)
    get_run_logger().info("promotion: %s", json.dumps(result))
    return result


def input_example(offers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """A few rows in the pyfunc's input schema."""
    ex = offers[[S.USER_ID, S.ITEM_ID, S.PRICE]].head(n).copy()
    ex[S.USER_ID] = ex[S.USER_ID].astype(str)
    ex[S.ITEM_ID] = ex[S.ITEM_ID].astype(str)
    ex[S.PRICE] = ex[S.PRICE].astype(float)
    return ex.reset_index(drop=True)
