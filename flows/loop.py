"""The `loop` flow: rounds of serve -> log -> retrain -> gate -> experiment -> promote, on the simulator.

Round 0: the loop's own scorer serves the list-price policy with exploration to simulated shoppers
who answer from the ground truth. Each later round: the market's history plus everything the
scorer logged becomes the training set (validated by the training flow), a new version is trained
and registered, gated offline against the champion on the previous round's logs, and, if it passes,
tested online against the champion by the declared `ExperimentRule` (by default on live traffic:
the scorer's `challenger` arm serves the candidate to its share of users; or as a paired shadow
arm, see `tasks.loop`); a winner is promoted through the registry (alias compare-and-set, scorer
reload with a smoke quote, rollback). Then the round's shoppers meet whatever is champion. The
market's history ends before today by as many days as the rounds' quotes would take a shop with its
traffic, and the training sets put each round there (`tasks.loop.ShopClock`).

Writes `DIR/loop.json` (`{"rounds": [{"round", "policy", "quotes", "true_profit_per_quote",
"oracle_profit_per_quote", "list_price_profit_per_quote", "ope_dr_estimate", "promoted"}],
"provenance": {...}}`; other
tools read this shape), `loop.md`, `loop.png` and `loop-details.json` (gate, experiment, DR parts).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from flows.training import training
from mlops import registry, tracking
from mlops.config import CONFIG_DIR, load_config
from mlops.provenance import provenance
from mlops.registry import CHAMPION, ModelHandle
from mlops.settings import get_settings
from pricing import experiment as X
from pricing import schema as S
from pricing.io import read_table
from pricing.policy import DEFAULT_EXPLORATION, Guardrails
from pricing.promotion import PromotionRule, decide
from pricing.shoppers import SHOPPERS
from pricing.simulator import DEFAULT_PRESET, load_ground_truth
from tasks.evaluation import LIST_PRICE
from tasks.experiment import promote_experiment, publish_experiment
from tasks.loop import (
    CHALLENGER,
    LIVE,
    SHADOW,
    OfflineResult,
    ShopClock,
    build_next_training_set,
    evaluate_offline,
    list_price_handle,
    loop_scorer,
    round_numbers,
    run_online_experiment,
    serve_shoppers,
    served,
    simulate_loop_market,
    start_challenger,
    stop_challenger,
    write_loop_report,
    write_round_config,
)

DEFAULT_CONFIG = str(CONFIG_DIR / "default.yaml")


@contextlib.contextmanager
def own_registry(out: Path) -> Iterator[None]:
    """Point MLflow, its artifacts and the runs folder at `out` while the loop runs (its versions
    and aliases never touch the project's registry); the environment is restored afterwards."""
    keys = ("MLFLOW_TRACKING_URI", "PRICING_ARTIFACT_ROOT", "PRICING_RUNS_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    (out / "mlruns").mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    os.environ["PRICING_ARTIFACT_ROOT"] = str((out / "mlruns" / "artifacts").resolve())
    os.environ["PRICING_RUNS_DIR"] = str((out / "runs").resolve())
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _exploration(handle: ModelHandle) -> float:
    """The exploration share the scorer serves `handle` with (no operator override in the loop)."""
    from scorer.serving import serving_guardrails

    return serving_guardrails(handle.guardrails, None)[0].exploration


@flow(name="loop", log_prints=True)
def loop(
    out_dir: str,
    rounds: int = 5,
    model: str | None = None,
    config_path: str | None = DEFAULT_CONFIG,
    requests_per_round: int = 1500,
    candidates: int = 10,
    exploration: float = DEFAULT_EXPLORATION,
    seed: int = 0,
    users: int | None = None,
    items: int | None = None,
    days: int | None = None,
    experiment_batch: int = 250,
    metric: str = "profit",
    min_sample: int = 2000,
    min_effect: float = 0.01,
    guardrail: float = 0.05,
    max_sample: int = 10000,
    same_shoppers: bool = True,
    registry_in_out_dir: bool = True,
    experiment_mode: str = LIVE,
    challenger_share: float = 0.5,
    shoppers: str = "browse",
    dr_calibration: bool = False,
    preset: str = DEFAULT_PRESET,
) -> dict[str, Any]:
    """Run `rounds` rounds of the closed loop on a simulated market; returns loop.json's content.

    Args:
        out_dir: where everything goes (market, offer log, round data, registry, report).
        rounds: rounds to run (round 0 serves list price).
        model, config_path: what each round trains (default: configs/default.yaml's model, the
            contest's winner; configs/lightgbm.yaml's trains in seconds).
        requests_per_round, candidates: each round's shoppers, and items per quote request.
        exploration: the share of quotes at a random grid price, for every policy the loop serves
            (the market's history already holds the simulator's randomized ladder).
        seed, users, items, days, preset: the simulated market (defaults: the simulator's).
        experiment_batch: shoppers between two looks of an online experiment.
        metric, min_sample, min_effect, guardrail, max_sample: the `ExperimentRule` (quotes per arm).
        same_shoppers: every round's main traffic is the same shoppers (users, candidates and the
            uniform numbers that decide purchases), so a change between rounds is the policy's,
            not the sample's; each round's DR estimate, made on the previous round's logs, then
            estimates the value on exactly the contexts it is compared with.
        registry_in_out_dir: keep the loop's MLflow registry under `out_dir` (not the project's).
        experiment_mode: "live" (the scorer's challenger arm serves the candidate to
            `challenger_share` of users) or "shadow" (paired, priced beside the champion's quotes).
        challenger_share: the challenger arm's share of users in live mode.
        shoppers: how shoppers pick a request's items (`pricing.shoppers.shopper_requests`):
            "browse", as the market's shoppers browse (with their searches), or "taste".
        dr_calibration: rescale the DR estimate's reward model to the logged rewards
            (`tasks.loop.dr_estimate`; for shoppers unlike the market's, such as "taste").
    """
    if experiment_mode not in (LIVE, SHADOW):
        raise ValueError(f"experiment_mode must be 'live' or 'shadow', got {experiment_mode!r}")
    if not 0 < challenger_share < 1:
        raise ValueError(f"challenger_share must be in (0, 1), got {challenger_share}")
    if shoppers not in SHOPPERS:
        raise ValueError(f"shoppers must be one of {SHOPPERS}, got {shoppers!r}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with own_registry(out) if registry_in_out_dir else contextlib.nullcontext():
        return _run(
            out, rounds, model, config_path, requests_per_round, candidates, exploration, seed,
            users, items, days, experiment_batch,
            X.ExperimentRule(metric, min_sample, min_effect, guardrail, max_sample), same_shoppers,
            experiment_mode, challenger_share, shoppers, dr_calibration, preset,
        )  # fmt: skip


def _run(
    out: Path,
    rounds: int,
    model: str | None,
    config_path: str | None,
    requests_per_round: int,
    candidates: int,
    exploration: float,
    seed: int,
    users: int | None,
    items: int | None,
    days: int | None,
    experiment_batch: int,
    rule: X.ExperimentRule,
    same_shoppers: bool,
    mode: str = LIVE,
    share: float = 0.5,
    shoppers: str = "browse",
    dr_calibration: bool = False,
    preset: str = DEFAULT_PRESET,
) -> dict[str, Any]:
    log = get_run_logger()
    settings = get_settings()
    tracking.configure(settings.tracking_uri)
    registered = settings.registered_model
    base_cfg = load_config(config_path, {"model": model, "seed": seed})
    guard = {**base_cfg.guardrails.to_dict(), "exploration": exploration}
    market = simulate_loop_market(
        out / "market", seed, users, items, days, rounds, requests_per_round * candidates, preset
    )
    clock = ShopClock.load(market)
    truth = load_ground_truth(market)
    assert truth is not None
    catalog = read_table(market, S.ITEMS)
    assert catalog is not None
    cost = catalog.set_index(catalog[S.ITEM_ID].astype(str))[S.UNIT_COST].astype(float)
    smoke_items = catalog[S.ITEM_ID].astype(str).head(3).tolist()
    smoke_user = str(truth.user_ids[0])

    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    quotes_so_far: list[pd.DataFrame] = []
    dr_round0: dict[str, float] | None = None
    split = share if mode == LIVE else None
    # The DR's noise against what it is compared with: the same sessions' true value moves only with
    # the logged outcomes; new sessions' value with the shoppers drawn too.
    dr_noise = "se_outcomes" if same_shoppers else "se"
    with loop_scorer(out, market, guard, seed, challenger_share=split) as scorer:
        for k in range(rounds):
            start = datetime.now(UTC)
            clock.round_starts.append(start)
            detail: dict[str, Any] = {
                "round": k,
                "ope_dr_noise": dr_noise,
                "started": start.isoformat(),
                "shop_time": clock.shop_start(k).isoformat(),
            }
            promoted, dr_value = False, float("nan")
            if k >= 1:
                offline, promoted, served_key = _retrain_gate_and_experiment(
                    k, out, market, scorer, truth, cost, quotes_so_far, clock,
                    config_path, model, exploration, seed, registered, guard, rule,
                    experiment_batch, candidates, smoke_items, smoke_user, detail, mode, share,
                    shoppers, dr_calibration,
                )  # fmt: skip
                dr_value = offline.dr[served_key]["dr"]
                detail["ope_dr_se"] = offline.dr[served_key][dr_noise]
                if k == 1:  # round 0's list price on its own logs (on-policy: no earlier loop logs)
                    dr_round0 = offline.dr["champion"]
            ready = served(scorer.url)
            quotes = serve_shoppers(
                scorer.url, truth, k, "main", requests_per_round, candidates,
                seed + 101 * (1 if same_shoppers else k + 1), shoppers,
            )  # fmt: skip
            quotes_so_far.append(quotes)
            numbers = round_numbers(
                quotes, truth, cost, Guardrails.from_dict(ready["guardrails"], strict=False)
            )
            policy = str(quotes[S.POLICY].mode().iloc[0])
            rows.append(
                {
                    "round": k,
                    "policy": policy,
                    "quotes": int(len(quotes)),
                    "true_profit_per_quote": numbers["expected_profit_per_offer"],
                    "oracle_profit_per_quote": numbers["oracle_profit_per_offer"],
                    "list_price_profit_per_quote": numbers["list_profit_per_offer"],
                    "ope_dr_estimate": dr_value,
                    "promoted": bool(promoted),
                }
            )
            detail.update({"policy": policy, "served_guardrails": ready["guardrails"], **numbers})
            details.append(detail)
            log.info("round %d: %s", k, rows[-1])
        if rounds == 1:
            dr_round0 = _round0_estimate(
                out, market, scorer.offer_log_dir, quotes_so_far, config_path, model,
                exploration, seed, clock, catalog, guard, dr_calibration,
            )  # fmt: skip
    if rows and dr_round0 is not None:
        rows[0]["ope_dr_estimate"] = dr_round0["dr"]
        details[0]["ope_dr_se"] = dr_round0[dr_noise]
    prov = provenance(base_cfg, config_name=str(config_path or DEFAULT_CONFIG))
    paths = write_loop_report(out, rows, details, prov)
    print(paths["markdown"].read_text())
    return {"rounds": rows, "provenance": prov}


def _retrain_gate_and_experiment(
    k: int,
    out: Path,
    market: Path,
    scorer: Any,
    truth: Any,
    cost: pd.Series,
    quotes_so_far: list[pd.DataFrame],
    clock: ShopClock,
    config_path: str | None,
    model: str | None,
    exploration: float,
    seed: int,
    registered: str,
    guard: dict[str, Any],
    rule: X.ExperimentRule,
    experiment_batch: int,
    candidates: int,
    smoke_items: list[str],
    smoke_user: str,
    detail: dict[str, Any],
    mode: str = LIVE,
    share: float = 0.5,
    shoppers: str = "browse",
    dr_calibration: bool = False,
) -> tuple[OfflineResult, bool, str]:
    """Round k's learning step; returns the offline result, whether the candidate was promoted, and
    which policy ("candidate" or "champion") the round's shoppers will meet."""
    round_dir = out / f"round-{k}"
    data_dir = round_dir / "loop"  # the MLflow experiment is named after this folder: "loop"
    detail["training_set"] = build_next_training_set(
        market, scorer.offer_log_dir, pd.concat(quotes_so_far, ignore_index=True), data_dir, k - 1,
        clock, clock.round_starts[k],
    )  # fmt: skip
    cfg_path = write_round_config(  # the test split: the previous round's logs
        config_path, model, exploration, clock.shop_start(k - 1), seed, round_dir / "config.yaml"
    )
    result = training(data_dir=str(data_dir), config_path=str(cfg_path), promote=False, seed=seed)
    version = str(result["model_version"])
    detail["training"] = {
        "model": result["model"],
        "version": version,
        "validation_passed": result["validation"]["passed"],
        "split": result["split"],
        "metrics": result["metrics"].get(result["model"], {}),
    }
    candidate = registry.load_version(registered, version)
    champion_version = registry.alias_version(registered, CHAMPION)
    catalog = read_table(market, S.ITEMS)
    assert catalog is not None
    champion = (
        registry.load_version(registered, champion_version)
        if champion_version is not None
        else list_price_handle(catalog, guard)
    )
    policies = {
        "candidate": (candidate.model, _exploration(candidate)),
        "champion": (champion.model, _exploration(champion)),
    }
    previous_main = quotes_so_far[-1][S.OFFER_ID].astype(str).tolist()
    offline = evaluate_offline(
        data_dir, cfg_path, policies, out / "runs" / "cache", k, previous_main,
        calibrate=dr_calibration,
    )  # fmt: skip
    cfg = load_config(cfg_path)
    gate = decide(
        offline.metrics["candidate"],
        offline.metrics["champion"] if champion_version is not None else None,
        offline.metrics[LIST_PRICE],
        True,
        PromotionRule(**cfg.promotion.model_dump()),
    )
    registry.tag_version(
        registered, version, {"offline_gate": {"passed": gate.promote, "reasons": gate.reasons}}
    )
    detail["offline_gate"] = {"passed": gate.promote, "reasons": gate.reasons}
    detail["dr"] = offline.dr
    detail["champion"] = f"{champion.name}@{champion.version}"
    detail["candidate"] = f"{candidate.name}@{candidate.version}"
    if not gate.promote:
        return offline, False, "champion"
    exp_id = f"loop-round-{k}"
    events = read_table(data_dir, S.EVENTS)
    assert events is not None
    arm_status: dict[str, Any] = {}
    if mode == LIVE:
        arm_status["started"] = start_challenger(scorer, registered, version)
    try:
        run = run_online_experiment(
            scorer.url, truth, candidate, events, cost, rule, exp_id, k, experiment_batch,
            candidates, seed + 1000 * k, mode, {"champion": 1 - share, CHALLENGER: share},
            shoppers,
        )  # fmt: skip
        quotes_so_far.append(run.live)
        run.rows.to_parquet(round_dir / "experiment.parquet", index=False)
        publish_experiment(exp_id, run.table, run.decision, rule, registered, version)
        promotion = promote_experiment(
            registered, version, champion_version, run.decision, scorer.url, scorer.token,
            smoke_items, smoke_user,
        )  # fmt: skip
    finally:
        if mode == LIVE:  # the arm fails closed until the next experiment
            arm_status["stopped"] = stop_challenger(scorer, registered)
    detail["experiment"] = {
        "id": exp_id,
        "mode": mode,
        "challenger_share": share if mode == LIVE else None,
        "arm": arm_status,
        "rule": rule.to_dict(),
        "decision": run.decision.to_dict(),
        "looks": run.looks,
        "arms": run.table.to_dict(orient="records"),
        "promotion": promotion,
    }
    promoted = bool(promotion["promoted"])
    return offline, promoted, "candidate" if promoted else "champion"


def _round0_estimate(
    out: Path,
    market: Path,
    offer_log_dir: Path,
    quotes_so_far: list[pd.DataFrame],
    config_path: str | None,
    model: str | None,
    exploration: float,
    seed: int,
    clock: ShopClock,
    catalog: pd.DataFrame,
    guard: dict[str, Any],
    dr_calibration: bool = False,
) -> dict[str, float]:
    """With a single round, round 0's DR estimate (list price on its own logs) is computed here."""
    data_dir = out / "round-1" / "loop"
    build_next_training_set(
        market, offer_log_dir, pd.concat(quotes_so_far, ignore_index=True), data_dir, 0, clock
    )
    cfg_path = write_round_config(
        config_path, model, exploration, clock.shop_start(0), seed, out / "round-1" / "config.yaml"
    )
    handle = list_price_handle(catalog, guard)
    offline = evaluate_offline(
        data_dir,
        cfg_path,
        {"champion": (handle.model, exploration)},
        out / "runs" / "cache",
        1,
        dr_offer_ids=quotes_so_far[-1][S.OFFER_ID].astype(str).tolist(),
        calibrate=dr_calibration,
    )
    return offline.dr["champion"]
