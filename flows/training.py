"""The `training` flow: ingest -> validate -> features -> train -> evaluate -> register -> promote."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops import tracking
from mlops.config import ExperimentConfig, load_config
from mlops.database import DataWindow, database_name, default_snapshot_dir
from mlops.models import DemandModel, PricingData
from mlops.registry import CHAMPION
from mlops.runtime import global_rank, is_primary_process
from mlops.settings import get_settings
from pricing import schema as S
from pricing.policy import Guardrails
from pricing.promotion import PromotionRule
from pricing.simulator import load_ground_truth
from tasks.data import read_database, simulate_market
from tasks.evaluation import LIST_PRICE, evaluate_models_task, split_data
from tasks.features import build_features
from tasks.registry import (
    champion_for_gate,
    evaluation_protocol,
    input_example,
    promote_model,
    register_model,
)
from tasks.tracking import log_evaluation, log_run_inputs
from tasks.training import fit_model, train_price_model
from tasks.validation import validate_tables


def trainer_args(
    devices: str | None, strategy: str | None, precision: str | None
) -> dict[str, Any]:
    """Lightning Trainer overrides from the CLI (only those given)."""
    args = {"devices": devices, "strategy": strategy, "precision": precision}
    return {k: v for k, v in args.items() if v}


def _load_champion(name: str) -> tuple[str | None, DemandModel | None]:
    """The current champion's version and model (None, None without one; model None if unloadable)."""
    version = tracking.alias_version(name, CHAMPION)
    if version is None:
        return None, None
    try:
        return version, tracking.load_version(name, version).model
    except Exception as exc:  # noqa: BLE001 - an unloadable champion must not block a new model
        get_run_logger().warning(
            "champion v%s could not be loaded (%s): using its stored metrics", version, exc
        )
        return version, None


@task(name="train_worker_share", cache_policy=NO_CACHE)
def train_worker_share(
    name: str,
    train: PricingData,
    valid: PricingData | None,
    config: ExperimentConfig,
    trainer: dict[str, Any],
) -> dict[str, Any]:
    """A worker rank's part of a multi-process launch: its share of training, ended as a result.

    `BertDemand.fit` ends a worker rank with `SystemExit(0)` once its share is done (evaluation,
    MLflow and registration are rank 0's). Prefect records a SystemExit as a Crashed run, so a
    clean exit is caught here and the worker reports a normal result; any other exit code is raised.
    """
    rank = global_rank()
    try:
        fit_model(name, train, valid, config, trainer)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    get_run_logger().info("rank %d finished its share of training %s", rank, name)
    return {"model": name, "rank": rank, "role": "worker", "trained": True}


@flow(name="training", log_prints=True)
def training(
    data_dir: str | None = None,
    simulate: bool = False,
    model: str | None = None,
    config_path: str | None = None,
    promote: bool = True,
    devices: str | None = None,
    strategy: str | None = None,
    precision: str | None = None,
    seed: int | None = None,
    preset: str | None = None,
    force_promote: bool = False,
    data_url: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate against the baselines, register and (if it wins) promote a price-response model.

    `preset` (`pricing run --simulate --preset classic`): the simulated market, over the config's.
    `force_promote` (`pricing run --force-promote`): an operator's override for a champion whose
    metrics cannot be compared with this run's (recorded on the version as `forced_promotion`).
    `data_url` (`pricing run --data-url postgresql://...`): read the contract tables from a
    database, `since <= ts < until` in events and offers (ISO 8601, UTC when naive), into
    `<runs_dir>/data/<database>-<time>/`, where the validation report and quarantine go too.
    Returns the run report (also what `pricing run --report-json` writes); a worker rank of a
    multi-process launch returns `{"model", "rank", "role": "worker", "trained"}`.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    log = get_run_logger()
    settings = get_settings()
    cfg: ExperimentConfig = load_config(config_path, {"model": model, "seed": seed})
    if preset is not None:  # `pricing run --simulate --preset classic`
        cfg = cfg.model_copy(update={"simulate": {**cfg.simulate, "preset": preset}})
    registered = cfg.registered_model or settings.registered_model
    runs_dir = Path(settings.runs_dir)

    # ingest
    t = time.perf_counter()
    if data_url:
        window = DataWindow.parse(since, until)
        data_path = read_database(data_url, default_snapshot_dir(runs_dir, data_url), window)
        dataset = database_name(data_url)
    elif simulate or data_dir is None:
        data_path = simulate_market(runs_dir / f"sim-seed{cfg.seed}", cfg.simulate, cfg.seed)
        dataset = "simulated"
    else:
        data_path = Path(data_dir)
        dataset = data_path.resolve().name
    timings["ingest"] = time.perf_counter() - t

    # validate
    t = time.perf_counter()
    report = validate_tables(data_path, cfg.validation.max_bad_share)
    tables = report.clean_tables
    timings["validate"] = time.perf_counter() - t

    # features
    t = time.perf_counter()
    fb = build_features(tables, runs_dir / "cache")
    feats, feat_key, cache_hit = fb.features, fb.key, fb.cache_hit
    timings["features"] = time.perf_counter() - t

    split, train, valid, test = split_data(tables, feats, cfg.split)
    truth = load_ground_truth(data_path)
    guardrails = Guardrails.from_dict(cfg.guardrails.model_dump())

    if not is_primary_process():
        # A worker rank of a multi-process launch (torchrun, srun, Lightning's DDP launcher) re-runs
        # this flow: it contributes its share of training and nothing else (no MLflow run, no
        # registration), and ends as a normal result, not a SystemExit (a Crashed run).
        return train_worker_share(
            cfg.model, train, valid, cfg, trainer_args(devices, strategy, precision)
        )

    tracking.configure(settings.tracking_uri)
    import mlflow

    exp_id = tracking.experiment_id(dataset, settings.artifact_root)
    run = mlflow.start_run(
        experiment_id=exp_id, run_name=f"{cfg.model}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    )
    run_id = run.info.run_id
    try:
        log_run_inputs(
            cfg,
            config_path,
            data_path,
            dataset,
            split.summary(),
            {"features": list(feats.columns), "hash": feat_key, "cache_hit": cache_hit},
            truth is not None,
        )

        # train: the main model and every baseline
        t = time.perf_counter()
        trainer = trainer_args(devices, strategy, precision)
        names = [cfg.model] + [b for b in cfg.baselines if b != cfg.model]
        models: dict[str, DemandModel] = {}
        for name in names:
            models[name], diag = train_price_model(name, train, valid, cfg, trainer)
            mlflow.log_metrics({f"{name}/train.{k}": float(v) for k, v in diag.items()})
        timings["train"] = time.perf_counter() - t

        # evaluate (the current champion too, on the same test data)
        t = time.perf_counter()
        champ_version, champ_model = _load_champion(registered)
        to_eval = dict(models)
        if champ_model is not None:
            to_eval["champion"] = champ_model
        base_rate = float(train.offers[S.PURCHASED].mean())
        metrics, curves = evaluate_models_task(
            to_eval,
            test,
            truth,
            guardrails,
            base_rate,
            cfg.evaluation.max_test_offers,
            cfg.seed,
            cfg.evaluation.calibration_bins,
            train_items=set(train.offers[S.ITEM_ID].astype(str)),
        )
        # What the metrics were measured on: recorded on the version, and what makes a champion's
        # stored metrics comparable when the champion itself could not be evaluated.
        evaluation = {
            "metrics": metrics[cfg.model],
            "dataset": dataset,
            "data_hash": fb.data_hash,
            "split": split.summary(),
            "protocol": evaluation_protocol(
                guardrails.to_dict(), cfg.evaluation.max_test_offers, len(test), cfg.seed
            ),
        }
        champion = champion_for_gate(
            registered, champ_version, metrics.pop("champion", None), evaluation
        )
        main = metrics[cfg.model]
        log_evaluation(metrics, curves, cfg.model, cfg.evaluation.calibration_bins)
        timings["evaluate"] = time.perf_counter() - t

        # register
        t = time.perf_counter()
        version = register_model(
            models[cfg.model],
            run_id,
            registered,
            guardrails.to_dict(),
            input_example(test.offers),
            evaluation,
        )
        timings["register"] = time.perf_counter() - t

        # promote
        t = time.perf_counter()
        smoke_items = test.offers[S.ITEM_ID].astype(str).head(3).tolist()
        smoke_user = str(test.offers[S.USER_ID].iloc[0])
        promotion = promote_model(
            registered,
            version,
            main,
            champion,
            champ_version,
            metrics[LIST_PRICE],
            truth is not None,
            PromotionRule(**cfg.promotion.model_dump()),
            settings.scorer_url,
            settings.admin_token,
            smoke_items,
            smoke_user,
            promote,
            force_promote,
        )
        timings["promote"] = time.perf_counter() - t
        mlflow.set_tags({"promoted": str(promotion["promoted"]), "model_version": version})
        timings["total"] = time.perf_counter() - t_start
        mlflow.log_metrics({f"time/{k}": v for k, v in timings.items()})
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()

    result: dict[str, Any] = {
        "model": cfg.model,
        "dataset": dataset,
        "data_dir": str(data_path),
        "mlflow_run_id": run_id,
        "mlflow_experiment": dataset,
        "registered_model": registered,
        "model_version": version,
        **promotion,
        "split": split.summary(),
        "metrics": metrics,
        "validation": {
            "passed": report.passed,
            "tables": {
                t: {"rows": r.rows, "bad_rows": r.bad_rows} for t, r in report.tables.items()
            },
        },
        "feature_cache_hit": cache_hit,
        "timings_s": timings,
    }
    log.info("training done: version %s, promoted=%s", version, promotion["promoted"])
    return result
