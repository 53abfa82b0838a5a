"""Register the trained model in MLflow, then decide on promotion and push it to the scorer.

Registration is idempotent per MLflow run (a Prefect retry reuses the run's version). Each version
records what its metrics were measured on (dataset, data hash, split, evaluation protocol), so a
champion's stored metrics are compared only when they are comparable. Moving the `champion` alias is
a compare-and-set against the champion that was evaluated (see `promote`).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops import registry, tracking
from mlops.models import DemandModel
from mlops.registry import CHALLENGER, CHAMPION
from pricing import evaluation as _evaluation
from pricing import metrics as _metrics
from pricing import ope as _ope
from pricing import policy as _policy
from pricing import schema as S
from pricing.promotion import (
    NotComparable,
    PromotionDecision,
    PromotionRule,
    decide,
    stored_champion_metrics,
)
from tasks.features import source_hash

# The code that defines the metrics: stored metrics computed by other code are not comparable.
METRICS_MODULES = (_evaluation, _metrics, _ope, _policy)


def evaluation_protocol(
    guardrails: dict[str, Any], max_test_offers: int | None, n_test: int, seed: int
) -> dict[str, Any]:
    """How the metrics were measured, beyond the data and split: recorded on each version.

    Guardrails shape the policy metrics (band, ladder, grid); `exploration` is left out because
    evaluation prices greedily. The sampling seed matters only when the test set was sampled.
    """
    test_offers = n_test if max_test_offers is None else min(n_test, max_test_offers)
    return {
        "guardrails": {k: v for k, v in sorted(guardrails.items()) if k != "exploration"},
        "test_offers": test_offers,
        "sample_seed": seed if test_offers < n_test else None,
        "metrics_code": source_hash(METRICS_MODULES)[:16],
    }


def champion_for_gate(
    registered_model: str,
    champion_version: str | None,
    live_metrics: dict[str, float] | None,
    evaluation: dict[str, Any],
) -> dict[str, float] | NotComparable | None:
    """What the gate compares the challenger with.

    None without a champion; the champion's metrics measured in this run when it could be loaded;
    otherwise its stored metrics, only if they were measured on the same dataset, data, split and
    protocol as `evaluation` (this run's record), else `NotComparable` with the reason.
    """
    if champion_version is None:
        return None
    if live_metrics is not None:
        return live_metrics
    try:
        stored = registry.version_evaluation(registered_model, champion_version)
    except Exception as exc:  # noqa: BLE001 - an unreadable record is a non-comparable champion
        return NotComparable(f"champion v{champion_version}'s record is unreadable ({exc})")
    return stored_champion_metrics(champion_version, stored, evaluation)


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

    version = registry.run_version(registered_model, run_id)
    if version is None:
        active = mlflow.active_run()
        same = active is not None and active.info.run_id == run_id
        # another run active (the training run, when a baseline's child run registers): nested
        nested = active is not None and not same
        with contextlib.nullcontext() if same else mlflow.start_run(run_id=run_id, nested=nested):
            _, version = tracking.log_price_model(
                model, guardrails, input_example, registered_model
            )
    registry.set_alias(registered_model, version, CHALLENGER)
    registry.describe_model(registered_model)
    registry.tag_version(
        registered_model,
        version,
        {
            "evaluation": evaluation,
            "model_kind": model.name,
            "run_id": run_id,
            "dataset": str(evaluation.get("dataset", "")),
            "data_hash": str(evaluation.get("data_hash", "")),
        },
    )
    return version


@task(
    name="register_model",
    task_run_name="register-{registered_model}",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
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
    token: str | None,
    expected_version: str,
    smoke_items: list[str],
    smoke_user: str,
    timeout: float = 120.0,
) -> tuple[str, str]:
    """Ask the scorer to reload, then check with a smoke quote that it serves `expected_version`.

    Returns (status, message) with status "ok", "unreachable" (nothing answered: the scorer will
    find the new alias by itself), "skipped" (no admin token is configured, so the scorer cannot be
    asked; it finds the alias by itself too) or "failed" (it answered but does not serve the new
    version).
    """
    if not token:
        return (
            "skipped",
            "no admin token (PRICING_ADMIN_TOKEN) configured: scorer not notified; "
            "it picks the new champion up by watching the alias",
        )
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
    body = q.json() if q.status_code == 200 else {}
    served = body.get("model_version")
    if body.get("arm", "champion") != "champion":
        # The smoke user is in an experiment's arm, so the quote shows that arm's version: it
        # proves the scorer answers; the champion's version is the one /readyz reports.
        try:
            served = httpx.get(f"{scorer_url}/readyz", timeout=10.0).json().get("model_version")
        except (httpx.TransportError, ValueError) as exc:
            return "failed", f"smoke quote ok but /readyz unreadable after reload: {exc}"
    if str(served) != str(expected_version):
        return "failed", (
            f"smoke quote served version {served} (HTTP {q.status_code}), expected {expected_version}"
        )
    return "ok", f"scorer reloaded and serves version {served} (smoke quote ok)"


def _lock_path(registered_model: str) -> Path:
    """The promotion lock file for `registered_model` in the current registry.

    Next to the database for a sqlite store (every process that can write that file can lock it);
    in the temp folder for any other store, keyed by the registry URI (same host only).
    """
    import mlflow

    uri = mlflow.get_registry_uri()
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", registered_model)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return db.with_name(f"{db.name}.{slug}.promotion.lock")
    digest = hashlib.sha256(f"{uri}|{registered_model}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pricing-promotion-{slug}-{digest}.lock"


@contextlib.contextmanager
def promotion_lock(registered_model: str, timeout_s: float = 600.0) -> Iterator[bool]:
    """Hold the exclusive promotion lock of `registered_model`; yields False if not had in time.

    `mlops.tracking.file_lock` on a lock file next to the registry, so a crashed run never leaves
    a stale lock behind.
    """
    from mlops.tracking import file_lock

    path = _lock_path(registered_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, timeout_s) as held:
        yield held


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def promote(
    registered_model: str,
    version: str,
    challenger: dict[str, float],
    champion: dict[str, float] | NotComparable | None,
    champion_version: str | None,
    reference: dict[str, float],
    simulated: bool,
    rule: PromotionRule,
    scorer_url: str | None,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    allowed: bool = True,
    force: bool = False,
    lock_timeout_s: float = 600.0,
    baselines: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Apply the gate; move the alias (compare-and-set); notify the scorer, roll back if it fails.

    The alias moves only if it still points at `champion_version`, the champion the challenger was
    evaluated against; otherwise the result is "not promoted: champion changed" and the caller
    re-runs to evaluate against the new champion. MLflow has no compare-and-set on aliases, so:

    1. An exclusive `promotion_lock` (a `flock`ed file next to the sqlite registry) serializes every
       promotion through this function: read the alias, compare, set it, notify the scorer, roll
       back if needed, all under the lock. Two runs at once: the second to get the lock reads the
       first one's version, not the one it evaluated, and stops. flock is kernel-enforced, dies
       with its holder (no stale lock) and is cheap; the embedded sqlite store is local anyway.
    2. The alias is re-read right after setting it. A writer that does not take the lock (a remote
       registry promoted from another host, or a person moving the alias by hand) is detected if it
       moved the alias between our read and our re-read: then its write stands (it came last and we
       must not undo it) and this run reports not promoted. A tag-based lock was not used: without
       an atomic create-if-absent, "write a tag and re-read it" lets two writers both read their own
       tag when their writes do not interleave, so it would not exclude anything.

    `force` (`--force-promote`) lets a challenger past a champion whose metrics are not comparable
    (see `pricing.promotion.decide`); when it was needed, the version gets a `forced_promotion` tag.
    `baselines`: the run's baselines' metrics; one that beats the challenger blocks it (`decide`).
    """
    decision: PromotionDecision = decide(
        challenger, champion, reference, simulated, rule, force=force, baselines=baselines
    )
    out: dict[str, Any] = {
        "promoted": False,
        "promotion_reasons": list(decision.reasons),
        "beaten_by": decision.beaten_by,
        "previous_champion": champion_version,
        "scorer_notified": False,
        "forced": False,
        "champion_changed": False,
    }
    reasons: list[str] = out["promotion_reasons"]
    if not allowed:
        reasons.append("promotion disabled (--no-promote)")
        decision.promote = False
    if decision.promote:
        move_champion(
            registered_model, version, champion_version, scorer_url, admin_token, smoke_items,
            smoke_user, out, lock_timeout_s,
        )  # fmt: skip
    decided_at = now_iso()
    out["decided_at"] = decided_at
    tags: dict[str, Any] = {"promotion": out, "decided_at": decided_at}
    if out["promoted"] and decision.forced:
        out["forced"] = True
        tags["forced_promotion"] = {
            "forced": True,
            "by": _operator(),
            "at": decided_at,
            "previous_champion": champion_version,
            "reasons": decision.reasons,
        }
    registry.tag_version(registered_model, version, tags)
    registry.describe_version(registered_model, version, decision_text(out))
    return out


def now_iso() -> str:
    """The current UTC time in ISO 8601, to the second: `2026-12-01T22:30:05+00:00`."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def decision_text(out: dict[str, Any]) -> str:
    """The version's description: "Promoted because ..." or "Rejected because ...", then when.

    One reason per line, in the order the gate gave them (Markdown: the MLflow UI renders it).
    """
    head = "Promoted because" if out["promoted"] else "Rejected because"
    reasons = [str(r) for r in out.get("promotion_reasons", [])] or ["(no reason recorded)"]
    lines = [f"{head}:", *(f"- {r}" for r in reasons)]
    if out.get("previous_champion"):
        lines.append(f"\nChampion before this decision: version {out['previous_champion']}.")
    if out.get("forced"):
        lines.append("Forced by an operator (--force-promote): see the `forced_promotion` tag.")
    if out.get("decided_at"):
        lines.append(f"Decided at {out['decided_at']}.")
    return "\n".join(lines)


def move_champion(
    registered_model: str,
    version: str,
    champion_version: str | None,
    scorer_url: str | None,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    out: dict[str, Any],
    lock_timeout_s: float = 600.0,
) -> None:
    """Make `version` the champion: the one way the alias moves (training and experiments alike).

    Under the `promotion_lock`: compare-and-set the `champion` alias (it moves only if it still
    points at `champion_version`, the champion `version` was judged against), then hand over to
    the scorer (reload, smoke quote; the alias is rolled back and this raises if the scorer does
    not serve `version`). Records in `out` (`promoted`, `champion_changed`, `scorer_notified`, and
    each step's line in `promotion_reasons`); tagging the version is the caller's.
    """
    reasons: list[str] = out["promotion_reasons"]
    with promotion_lock(registered_model, lock_timeout_s) as locked:
        if not locked:
            reasons.append(
                f"not promoted: promotion lock {_lock_path(registered_model)} busy "
                f"for {lock_timeout_s:.0f}s"
            )
        elif _move_alias(registered_model, version, champion_version, out):
            if scorer_url:
                _hand_over(
                    registered_model, version, champion_version, scorer_url, admin_token,
                    smoke_items, smoke_user, out,
                )  # fmt: skip
            else:
                reasons.append(
                    "no scorer configured (PRICING_SCORER_URL): alias moved, scorer not "
                    "notified; a running scorer picks it up by watching the alias"
                )


def _move_alias(
    registered_model: str, version: str, champion_version: str | None, out: dict[str, Any]
) -> bool:
    """The compare-and-set of `move_champion` (the caller holds the lock): True if it moved."""
    reasons: list[str] = out["promotion_reasons"]
    current = registry.alias_version(registered_model, CHAMPION)
    if current != champion_version:
        out["champion_changed"] = True
        reasons.append(
            "not promoted: champion changed (evaluated against "
            f"{'v' + champion_version if champion_version else 'no champion'}, alias now at "
            f"{'v' + current if current else 'no version'}); re-run to evaluate against it"
        )
        return False
    registry.set_alias(registered_model, version, CHAMPION)
    after = registry.alias_version(registered_model, CHAMPION)
    if after != version:
        out["champion_changed"] = True
        reasons.append(
            f"not promoted: champion changed during promotion (alias moved to v{after} by a writer "
            "outside the promotion lock; left as is)"
        )
        return False
    out["promoted"] = True
    return True


def _hand_over(
    registered_model: str,
    version: str,
    champion_version: str | None,
    scorer_url: str,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    out: dict[str, Any],
) -> None:
    """Tell the scorer; if it answers but does not serve `version`, put the old champion back.

    Runs under the promotion lock, so nobody compares against `version` before it is confirmed.
    """
    reasons: list[str] = out["promotion_reasons"]
    status, msg = notify_scorer(scorer_url, admin_token, version, smoke_items, smoke_user)
    out["scorer_notified"] = status == "ok"
    reasons.append(msg)
    if status != "failed":
        return
    if champion_version is not None:
        registry.set_alias(registered_model, champion_version, CHAMPION)
        reasons.append(f"rolled back alias to version {champion_version}")
    else:
        registry.delete_alias(registered_model, CHAMPION)
        reasons.append("rolled back: no champion alias")
    out["promoted"] = False
    registry.tag_version(registered_model, version, {"promotion": out})
    registry.describe_version(registered_model, version, decision_text(out))
    raise RuntimeError(f"promotion of version {version} rolled back: {msg}")


@task(name="promote_model", task_run_name="promote-v{version}", cache_policy=NO_CACHE)
def promote_model(
    registered_model: str,
    version: str,
    challenger: dict[str, float],
    champion: dict[str, float] | NotComparable | None,
    champion_version: str | None,
    reference: dict[str, float],
    simulated: bool,
    rule: PromotionRule,
    scorer_url: str | None,
    admin_token: str | None,
    smoke_items: list[str],
    smoke_user: str,
    allowed: bool = True,
    force: bool = False,
    baselines: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """`promote` as a task (no retries: a second attempt would re-decide on a moved alias)."""
    result = promote(
        registered_model, version, challenger, champion, champion_version, reference, simulated,
        rule, scorer_url, admin_token, smoke_items, smoke_user, allowed=allowed, force=force,
        baselines=baselines,
    )  # fmt: skip
    get_run_logger().info("promotion: %s", json.dumps(result))
    return result


def input_example(offers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """A few rows in the pyfunc's input schema."""
    ex = offers[[S.USER_ID, S.ITEM_ID, S.PRICE]].head(n).copy()
    ex[S.USER_ID] = ex[S.USER_ID].astype(str)
    ex[S.ITEM_ID] = ex[S.ITEM_ID].astype(str)
    ex[S.PRICE] = ex[S.PRICE].astype(float)
    return ex.reset_index(drop=True)
