"""The `training` flow: ingest -> validate -> features -> train -> evaluate -> register -> promote."""

from __future__ import annotations

import contextlib
import math
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from expectations import ValidationReport
from mlops import engine as engines
from mlops import registry
from mlops.config import ExperimentConfig, load_config
from mlops.database import DataWindow, database_name, default_snapshot_dir
from mlops.models import DemandModel, PricingData
from mlops.registry import CHAMPION
from mlops.runtime import global_rank, is_primary_process
from mlops.settings import get_settings
from pricing import schema as S
from pricing.promotion import PromotionRule
from pricing.simulator import load_ground_truth
from tasks.data import read_database, simulate_market
from tasks.evaluation import LIST_PRICE, evaluate_models_task, split_data
from tasks.features import FeatureBuild, build_features
from tasks.registry import (
    champion_for_gate,
    evaluation_protocol,
    input_example,
    promote_model,
    register_model,
)
from tasks.report import Stopwatch, decision_headline, publish_run_report, summary_markdown
from tasks.tracking import log_decision, log_evaluation, log_run_inputs, training_run
from tasks.training import fit_model, train_price_model
from tasks.validation import validate_tables


def trainer_args(
    devices: str | None, strategy: str | None, precision: str | None
) -> dict[str, Any]:
    """Lightning Trainer overrides from the CLI (only those given)."""
    args = {"devices": devices, "strategy": strategy, "precision": precision}
    return {k: v for k, v in args.items() if v}


def experiment_config(
    config_path: str | None, model: str | None, seed: int | None, preset: str | None
) -> ExperimentConfig:
    """The experiment config with the command line's overrides applied."""
    cfg = load_config(config_path, {"model": model, "seed": seed})
    if preset is not None:  # `pricing run --simulate --preset classic`
        cfg = cfg.model_copy(update={"simulate": {**cfg.simulate, "preset": preset}})
    return cfg


def ingest(
    cfg: ExperimentConfig,
    runs_dir: Path,
    data_dir: str | None,
    simulate: bool,
    data_url: str | None,
    since: str | None,
    until: str | None,
) -> tuple[Path, str]:
    """The data folder this run reads, and its dataset name (the MLflow experiment)."""
    if data_url:
        window = DataWindow.parse(since, until)
        path = read_database(data_url, default_snapshot_dir(runs_dir, data_url), window)
        return path, database_name(data_url)
    if simulate or data_dir is None:
        return simulate_market(
            runs_dir / f"sim-seed{cfg.seed}", cfg.simulate, cfg.seed
        ), "simulated"
    path = Path(data_dir)
    return path, path.resolve().name


def announce(text: str) -> None:
    """A phase of the run, in the run log before it starts (no step runs unannounced)."""
    get_run_logger().info(text)


def ingest_phase(
    data_dir: str | None, simulate: bool, data_url: str | None, seed: int
) -> str | None:
    """What `ingest` is about to do, as a line for the run log (None: a folder, nothing to do)."""
    if data_url:
        from mlops.database import safe_url

        return f"reading the contract tables from {safe_url(data_url)} ..."
    if simulate or data_dir is None:
        return f"simulating a market (seed {seed}) ..."
    return None


def headline(result: dict[str, Any]) -> str:
    """The run in one line: the decision and the main model's headline metrics.

    `version 7 of price-response: PROMOTED to champion; bert_wide: profit_regret 0.0310,
    gap_share 0.6000, log_loss 0.3100, auc 0.7000`: the last line of the run log and the message
    of the flow run's Completed state (what `prefect deployment run --watch` ends with).
    """
    main = result["model"]
    metrics = result.get("metrics", {}).get(main, {})
    shown = [
        f"{k} {float(metrics[k]):.4f}"
        for k in ("profit_regret", "gap_share", "log_loss", "auc")
        if isinstance(metrics.get(k), int | float) and math.isfinite(metrics[k])
    ]
    line = f"{decision_headline(result)}; {main}: {', '.join(shown) or 'no metrics'}"
    promoted = result.get("promoted_model")
    if promoted and promoted != main:
        line += f"; promoted instead: baseline {promoted}"
    elif not result.get("promoted") and result.get("promotion_reasons"):
        line += f"; why: {result['promotion_reasons'][0]}"
    return line


def finished(result: dict[str, Any]) -> Any:
    """The flow's return value: a Completed state whose message is `headline(result)` and whose
    result is the run report (what a caller of `training(...)` gets)."""
    from prefect.states import Completed

    message = headline(result)
    announce(f"training done: {message}")
    return Completed(message=message, data=result)


def _load_champion(name: str) -> tuple[str | None, DemandModel | None]:
    """The current champion's version and model (None, None without one; model None if unloadable)."""
    version = registry.alias_version(name, CHAMPION)
    if version is None:
        return None, None
    try:
        return version, registry.load_version(name, version).model
    except Exception as exc:  # noqa: BLE001 - an unloadable champion must not block a new model
        get_run_logger().warning(
            "champion v%s could not be loaded (%s): using its stored metrics", version, exc
        )
        return version, None


@task(name="train_worker_share", task_run_name="train-{name}-worker-share", cache_policy=NO_CACHE)
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
    engine: str = "local",
    workers: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate against the baselines, register and (if it wins) promote a price-response model.

    `engine` (`pricing run --engine local|dask|auto`): `local` holds every table in this process;
    `dask` validates, builds features and draws the training and evaluation samples partition by
    partition on a Dask cluster (`PRICING_DASK_ADDRESS`, else a LocalCluster of `workers`),
    through prefect-dask when the flow runs on its `DaskTaskRunner` (`mlops.engine`).

    `preset` (`pricing run --simulate --preset classic`): the simulated market, over the config's.
    `force_promote` (`pricing run --force-promote`): an operator's override for a champion whose
    metrics cannot be compared with this run's (recorded on the version as `forced_promotion`).
    `data_url` (`pricing run --data-url postgresql://...`): read the contract tables from a
    database, `since <= ts < until` in events and offers (ISO 8601, UTC when naive), into
    `<runs_dir>/data/<database>-<time>/`, where the validation report and quarantine go too.

    MLflow: one parent run holds the inputs, the plots and the decision; each model (the main one,
    every baseline, the list-price policy, the re-evaluated champion) is a child run with the same
    metric names. Prefect: the metrics table and the decision are the run's artifacts.
    Returns the run report (also what `pricing run --report-json` writes) in a Completed state
    whose message is the decision and the main model's headline metrics (`headline`); a worker
    rank of a multi-process launch returns `{"model", "rank", "role": "worker", "trained"}`.
    Each phase is announced in the run log before it starts.
    """
    clock = Stopwatch()
    settings = get_settings()
    cfg = experiment_config(config_path, model, seed, preset)
    registered = cfg.registered_model or settings.registered_model
    runs_dir = Path(settings.runs_dir)
    trainer = trainer_args(devices, strategy, precision)

    with clock("ingest"):
        phase = ingest_phase(data_dir, simulate, data_url, cfg.seed)
        if phase:
            announce(phase)
        data_path, dataset = ingest(cfg, runs_dir, data_dir, simulate, data_url, since, until)
    engine = engines.resolve(engine, data_path)
    with prepared_data(engine, data_path, runs_dir, cfg, workers, clock) as prep:
        result = _train_evaluate_register(
            cfg,
            config_path,
            settings,
            registered,
            trainer,
            data_path,
            dataset,
            prep,
            clock,
            promote,
            force_promote,
        )
    return finished(result) if "model_version" in result else result


class Prepared(NamedTuple):
    """The validated data as the training and evaluation steps read it, from either engine."""

    engine: str
    report: ValidationReport
    fb: FeatureBuild
    split: dict[str, object]  # `TimeSplit.summary()`
    train: PricingData
    valid: PricingData
    test: PricingData
    base_rate: float  # the training offers' purchase rate
    train_items: set[str]
    n_test: int  # test offers in the data (the evaluation may score a sample)
    sample: dict[str, Any] | None  # dask: which part of the data training read
    shards: Any = None  # dask: every user bucket, for the models that stream (`training_data`)

    def training_data(self, name: str, cfg: ExperimentConfig) -> Any:
        """What model `name` trains on: the BERT models without the wide features stream every
        user bucket when the data is partitioned; the others read the training sample."""
        if self.shards is None or cfg.base_model(name) != "bert" or cfg.model_block(name).wide:
            return self.train
        return self.shards


FEATURES_PHASE = "building features (reused when this data and feature code were seen before) ..."


@contextlib.contextmanager
def prepared_data(
    engine: str,
    data_path: Path,
    runs_dir: Path,
    cfg: ExperimentConfig,
    workers: int | None,
    clock: Stopwatch,
) -> Iterator[Prepared]:
    """Validate, build features and split, in this process (`local`) or on a Dask cluster."""
    if engine == "local":
        with clock("validate"):
            announce(f"validating {data_path} against the data contract ...")
            report = validate_tables(data_path, cfg.validation.max_bad_share)
        with clock("features"):
            announce(FEATURES_PHASE)
            fb = build_features(report.clean_tables, runs_dir / "cache")
        split, train, valid, test = split_data(report.clean_tables, fb.features, cfg.split)
        yield Prepared(
            engine,
            report,
            fb,
            split.summary(),
            train,
            valid,
            test,
            float(train.offers[S.PURCHASED].mean()),
            set(train.offers[S.ITEM_ID].astype(str)),
            len(test),
            None,
        )
        return
    from tasks import partitioned as P

    with contextlib.ExitStack() as stack:
        if not engines.has_client():
            stack.enter_context(engines.cluster(workers))
        work = runs_dir / "partitions" / f"{data_path.name}-{uuid.uuid4().hex[:8]}"
        stack.callback(shutil.rmtree, work, True)
        layout = P.Layout(work, P.bucket_count(data_path, cfg.scale.offers_per_bucket))
        with clock("validate"):
            announce(
                f"validating {data_path} against the data contract, partition by partition ..."
            )
            data = P.validate_partitions(data_path, layout, cfg.validation.max_bad_share)
        with clock("features"):
            announce(FEATURES_PHASE)
            stats = P.build_features_partitioned(data, cfg.split)
        with clock("sample"):
            announce("drawing the training and evaluation samples ...")
            train, valid, test, train_items, sample = P.read_samples(
                data,
                stats,
                cfg.scale.train_sample_offers,
                cfg.evaluation.max_test_offers,
                cfg.seed,
            )
        from lightning_modules.streaming import Shards, layout_shards

        yield Prepared(
            engine,
            data.report,
            P.feature_build(data, stats),
            stats.summary(),
            train,
            valid,
            test,
            stats.base_rate,
            train_items,
            int(stats.total("test")),
            sample,
            Shards(layout_shards(layout), data.items, stats.valid_start),
        )


def _train_evaluate_register(
    cfg: ExperimentConfig,
    config_path: str | None,
    settings: Any,
    registered: str,
    trainer: dict[str, Any],
    data_path: Path,
    dataset: str,
    prep: Prepared,
    clock: Stopwatch,
    promote: bool,
    force_promote: bool,
) -> dict[str, Any]:
    """Train the model and the baselines, evaluate, register and promote (either engine)."""
    report, fb, valid, test = prep.report, prep.fb, prep.valid, prep.test
    truth = load_ground_truth(data_path)
    guardrails = cfg.guardrails

    if not is_primary_process():
        # A worker rank of a multi-process launch (torchrun, srun, Lightning's DDP launcher) re-runs
        # this flow: it contributes its share of training and nothing else (no MLflow run, no
        # registration), and ends as a normal result, not a SystemExit (a Crashed run).
        return train_worker_share(
            cfg.model, prep.training_data(cfg.model, cfg), valid, cfg, trainer
        )

    with training_run(settings.tracking_uri, settings.artifact_root, dataset, cfg.model) as run:
        log_run_inputs(
            cfg,
            config_path,
            data_path,
            dataset,
            prep.split,
            {
                "features": list(fb.features.columns),
                "hash": fb.key,
                "cache_hit": fb.cache_hit,
                "engine": prep.engine,
                **({"sample": prep.sample} if prep.sample else {}),
            },
            truth is not None,
        )

        with clock("train"):  # the main model and every baseline, each in its child run
            names = [cfg.model] + [b for b in cfg.baselines if b != cfg.model]
            trained = {}
            for i, name in enumerate(names, 1):
                announce(training_phase(name, i, len(names), cfg))
                trained[name] = train_price_model(
                    name,
                    prep.training_data(name, cfg),
                    valid,
                    cfg,
                    trainer,
                    run.experiment_id,
                    run.run_id,
                    "candidate" if name == cfg.model else "baseline",
                )  # fmt: skip

        with clock("evaluate"):  # the current champion too, on the same test data
            champ_version, champ_model = _load_champion(registered)
            to_eval = {name: t.model for name, t in trained.items()}
            if champ_model is not None:
                to_eval["champion"] = champ_model
            announce(
                f"evaluating {len(to_eval)} models ({', '.join(to_eval)}) and the list-price "
                "policy on the test offers, through the same optimizer and guardrails ..."
            )
            metrics, curves = evaluate_models_task(
                to_eval,
                test,
                truth,
                guardrails,
                prep.base_rate,
                cfg.evaluation.max_test_offers,
                cfg.seed,
                cfg.evaluation.calibration_bins,
                train_items=prep.train_items,
                main=cfg.model,
            )
            # What the metrics were measured on: recorded on the version, and what makes a
            # champion's stored metrics comparable when the champion itself could not be evaluated.
            evaluation = {
                "metrics": metrics[cfg.model],
                "dataset": dataset,
                "data_hash": fb.data_hash,
                "split": prep.split,
                "protocol": evaluation_protocol(
                    guardrails.to_dict(), cfg.evaluation.max_test_offers, prep.n_test, cfg.seed
                ),
            }
            live_champion = metrics.pop("champion", None)
            champion = champion_for_gate(registered, champ_version, live_champion, evaluation)
            model_runs = log_evaluation(
                {**metrics, **({"champion": live_champion} if live_champion else {})},
                curves,
                cfg.model,
                cfg.evaluation.calibration_bins,
                {name: t.run_id for name, t in trained.items() if t.run_id},
                run.experiment_id,
                champ_version,
                cfg.promotion.primary_metric(truth is not None),
            )

        with clock("register"):
            announce(f"registering {cfg.model} in MLflow as a version of {registered} ...")
            version = register_model(
                trained[cfg.model].model,
                run.run_id,
                registered,
                guardrails.to_dict(),
                input_example(test.offers),
                evaluation,
            )

        with clock("promote"):
            announce(f"deciding promotion of version {version} (the champion, the baselines) ...")
            rule = PromotionRule(**cfg.promotion.model_dump())
            gate_args = (
                champion,
                champ_version,
                metrics[LIST_PRICE],
                truth is not None,
                rule,
                settings.scorer_url,
                settings.admin_token,
                test.offers[S.ITEM_ID].astype(str).head(3).tolist(),
                str(test.offers[S.USER_ID].iloc[0]),
                promote,
                force_promote,
            )
            ranked = [cfg.model, *[b for b in cfg.baselines if b != cfg.model]]
            promotion = promote_model(
                registered,
                version,
                metrics[cfg.model],
                *gate_args,
                baselines={n: metrics[n] for n in ranked[1:] if n in metrics},
            )
            promoted_model = cfg.model if promotion["promoted"] else None
            winner = promotion.get("beaten_by")
            if winner and rule.promote_winning_baseline and promote and winner in trained:
                # The shop serves the best model this run measured: the winning baseline goes
                # through the same gate (against the champion and every other model of the run).
                baseline_version = register_model(
                    trained[winner].model,
                    trained[winner].run_id or run.run_id,
                    registered,
                    guardrails.to_dict(),
                    input_example(test.offers),
                    {**evaluation, "metrics": metrics[winner]},
                )
                others = {n: metrics[n] for n in ranked if n != winner and n in metrics}
                second = promote_model(
                    registered, baseline_version, metrics[winner], *gate_args, baselines=others
                )
                promotion["baseline_promotion"] = {
                    "model": winner,
                    "model_version": baseline_version,
                    **second,
                }
                if second["promoted"]:
                    promoted_model = winner
                    promotion["promoted"] = True
                    promotion["promotion_reasons"] = [
                        *promotion["promotion_reasons"],
                        f"promoted instead: baseline {winner} (v{baseline_version})",
                    ]
            promotion["promoted_model"] = promoted_model

        result: dict[str, Any] = {
            "model": cfg.model,
            "dataset": dataset,
            "data_dir": str(data_path),
            "mlflow_run_id": run.run_id,
            "mlflow_experiment": dataset,
            "mlflow_child_runs": model_runs,
            "registered_model": registered,
            "model_version": version,
            **promotion,
            "split": prep.split,
            "engine": prep.engine,
            **({"sample": prep.sample} if prep.sample else {}),
            "metrics": metrics,
            "train": {name: t.diagnostics for name, t in trained.items()},
            "validation": {
                "passed": report.passed,
                "tables": {
                    t: {"rows": r.rows, "bad_rows": r.bad_rows} for t, r in report.tables.items()
                },
            },
            "feature_cache_hit": fb.cache_hit,
            "links": run_links(run.experiment_id, run.run_id, registered, version),
            "prefect_flow_run_id": str(flow_run.id or ""),
            "timings_s": clock.total(),
        }
        log_decision(version, promotion, result["timings_s"], summary_markdown(result))
        publish_run_report(result, version)
    return result


def training_phase(name: str, i: int, n: int, cfg: ExperimentConfig) -> str:
    """`training bert_wide (model 1 of 5) ...`; a Lightning model's estimate follows its first
    steps (`lightning_modules.callbacks.EpochLog`)."""
    line = f"training {name} (model {i} of {n})"
    if cfg.base_model(name) == "bert":
        line += ": text vectors first, then an estimate of its time after the first steps"
    return line + " ..."


def run_links(experiment_id: str, run_id: str, registered: str, version: str) -> dict[str, str]:
    """Where to look at this run (`tasks.tracking.run_links`)."""
    from tasks import tracking as run_tracking

    return run_tracking.run_links(experiment_id, run_id, registered, version)
