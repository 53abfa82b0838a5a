"""Tasks of the `compare` flow: one seed's data, models and evaluation; the statistics over seeds.

The training flow's steps are written inline in `flows/training.py` and end in registration, so the
per-seed pipeline is composed here from the plain functions its tasks wrap (`simulate_to` through
the `simulate_market` task, `validate_or_fail`, `build_offer_features`, `time_split`, `fit_model`,
`evaluate_models`): the same data, features, models and optimizer as a training run, nothing
registered. The statistics themselves are pure (`pricing.stats`).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops.config import ExperimentConfig
from mlops.models import DemandModel, PricingData
from pricing import schema as S
from pricing import stats
from pricing.simulator import GroundTruth, load_ground_truth
from tasks.evaluation import evaluate_models, split_data
from tasks.features import build_offer_features
from tasks.tracking import REPORT_METRICS
from tasks.training import fit_model
from tasks.validation import validate_or_fail

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"


@dataclass
class SeedData:
    """A validated data set, featurized and split: what each model of a seed trains and is tested on."""

    data_path: Path
    dataset: str
    train: PricingData
    valid: PricingData
    test: PricingData
    truth: GroundTruth | None
    split: dict[str, Any]
    validation: dict[str, Any]
    features: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)


def model_names(cfg: ExperimentConfig, models: list[str] | None) -> list[str]:
    """The main model first, then the baselines (no duplicates): `models` if given, else the config's."""
    names = list(models) if models else [cfg.model, *cfg.baselines]
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise ValueError("no models to compare")
    refs = [n for n in names if n in stats.REFERENCES]
    if refs:
        raise ValueError(f"{refs} are references, always included where they apply: leave them out")
    return list(dict.fromkeys(names))


def load_seed_data(data_path: Path, cfg: ExperimentConfig, runs_dir: Path) -> SeedData:
    """Validate, build features (cached as in training), split by time: as the training flow does."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    report = validate_or_fail(data_path, cfg.validation.max_bad_share)
    tables = report.clean_tables
    timings["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    fb = build_offer_features(tables, runs_dir / "cache")
    timings["features"] = time.perf_counter() - t

    split, train, valid, test = split_data(tables, fb.features, cfg.split)
    return SeedData(
        data_path=data_path,
        dataset=data_path.resolve().name,
        train=train,
        valid=valid,
        test=test,
        truth=load_ground_truth(data_path),
        split=split.summary(),
        validation={
            "passed": report.passed,
            "tables": {
                name: {"rows": r.rows, "bad_rows": r.bad_rows} for name, r in report.tables.items()
            },
        },
        features={"hash": fb.key, "data_hash": fb.data_hash, "cache_hit": fb.cache_hit},
        timings_s=timings,
    )


@task(name="prepare_data", task_run_name="prepare data ({label})", cache_policy=NO_CACHE)
def prepare_data(data_path: Path, cfg: ExperimentConfig, runs_dir: Path, label: str) -> SeedData:
    """`load_seed_data` as a flow step; `label` says which seed (or "fixed data") in the UI."""
    data = load_seed_data(data_path, cfg, runs_dir)
    get_run_logger().info(
        "%s: %s, split %s, features %s", label, data_path, data.split, data.features
    )
    return data


@task(name="train_seed_model", task_run_name="train {name} (seed {seed})", cache_policy=NO_CACHE)
def train_seed_model(
    name: str, seed: int, data: SeedData, cfg: ExperimentConfig
) -> tuple[DemandModel, dict[str, float]]:
    """One model trained on one seed's training split (`cfg.seed` is that seed), single process."""
    model, diag = fit_model(name, data.train, data.valid, cfg)
    get_run_logger().info("seed %d: trained %s in %.1fs", seed, name, diag["fit_seconds"])
    return model, diag


@task(name="evaluate_seed", task_run_name="evaluate seed {seed}", cache_policy=NO_CACHE)
def evaluate_seed(
    seed: int, models: dict[str, DemandModel], data: SeedData, cfg: ExperimentConfig
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """Every model and the reference policies on the seed's test offers, through the one optimizer;
    on real data (no ground truth) also each model's log loss and AUC on resamples of the test
    users (`pricing.stats.user_bootstrap`), the test-sample noise the seeds do not show."""
    base_rate = float(data.train.offers[S.PURCHASED].mean())
    metrics, curves = evaluate_models(
        models,
        data.test,
        data.truth,
        cfg.guardrails,
        base_rate,
        max_offers=cfg.evaluation.max_test_offers,
        seed=seed,
        calibration_bins=cfg.evaluation.calibration_bins,
        train_items=set(data.train.offers[S.ITEM_ID].astype(str)),  # as the training flow
    )
    boot = None
    if data.truth is None and curves["offer_probs"]:
        probs = dict(curves["offer_probs"])
        probs[stats.LIST_PRICE] = np.full(len(curves["y"]), base_rate)  # its base-rate predictor
        boot = stats.user_bootstrap(curves["user_id"], curves["y"], probs, seed=seed)
    return metrics, boot


def seed_report(
    seed: int,
    data: SeedData,
    main: str,
    metrics: dict[str, dict[str, float]],
    train_diagnostics: dict[str, dict[str, float]],
    timings_s: dict[str, float],
) -> dict[str, Any]:
    """The full record of one seed (`seed-<s>.json`, and the child run's `seed-report.json`)."""
    return {
        "seed": seed,
        "dataset": data.dataset,
        "data_dir": str(data.data_path),
        "ground_truth": data.truth is not None,
        "main": main,
        "models": [n for n in metrics if n not in stats.REFERENCES],
        "split": data.split,
        "validation": data.validation,
        "features": data.features,
        "train": train_diagnostics,
        "metrics": metrics,
        "timings_s": timings_s,
    }


BUDGET_KEYS = ("tune_trials", "fit_seconds", "epochs", "steps")


def training_budgets(reports: dict[int, dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """What each model's training actually spent, seed by seed (`compare.json`'s `budgets`): the
    tuner's trials run (`tune_trials`), fit seconds and, for networks, epochs and steps."""
    out: dict[str, dict[str, list[Any]]] = {}
    for seed in sorted(reports):
        for name, diag in (reports[seed].get("train") or {}).items():
            entry = out.setdefault(name, {"seeds": []})
            entry["seeds"].append(seed)
            for key in BUDGET_KEYS:
                if key in diag:
                    entry.setdefault(key, []).append(diag[key])
    return out


@task(name="log_seed_run", task_run_name="log seed {seed}", cache_policy=NO_CACHE)
def log_seed_run(seed: int, parent_run_id: str, experiment_id: str, report: dict[str, Any]) -> str:
    """One child run of the compare run per seed; returns its run id.

    Every child logs the same metric names, so MLflow's Compare view lines the seeds up:
    `<model>/<metric>` for every model (nan kept, not dropped), and the main model's headline
    metrics without a prefix.
    """
    import mlflow

    main, metrics = report["main"], report["metrics"]
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"seed-{seed}",
        parent_run_id=parent_run_id,
        nested=True,
        tags={"seed": str(seed), "kind": "compare-seed", "model": main},
    ) as run:
        mlflow.log_params(
            {
                "seed": seed,
                "data_dir": report["data_dir"],
                "dataset": report["dataset"],
                "main": main,
                "models": ",".join(report["models"]),
                **{f"split.{k}": v for k, v in report["split"].items()},
            }
        )
        values = {
            f"{name}/{k}": float(v)
            for name, vals in metrics.items()
            for k, v in vals.items()
            if isinstance(v, int | float)
        }
        values.update({k: float(metrics[main][k]) for k in REPORT_METRICS if k in metrics[main]})
        values.update(
            {
                f"{name}/train.{k}": float(v)
                for name, diag in report["train"].items()
                for k, v in diag.items()
            }
        )
        mlflow.log_metrics(values)
        mlflow.log_dict(stats.json_safe(report), "seed-report.json")
        return str(run.info.run_id)


@task(name="summarize_seeds", task_run_name="summarize {main} over seeds", cache_policy=NO_CACHE)
def summarize_seeds(
    per_seed: dict[int, dict[str, dict[str, float]]],
    main: str,
    primary: str,
    cfg: ExperimentConfig | None = None,
    boots: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`pricing.stats.summarize` as a flow step: intervals, paired differences, verdicts, slices.

    With `cfg`, models of the main model's kind (its variants, or the base model of a main
    variant) are ablations: compared and paired like the rest, never the best baseline, and the
    config's non-inferiority margins are checked (`not_worse`). With `boots` (every seed's user
    bootstrap, real data), log loss and AUC intervals cover test-sample noise too.
    """
    ablations: list[str] = []
    if cfg is not None:
        kind = cfg.base_model(main)
        names = {n for by_model in per_seed.values() for n in by_model}
        ablations = sorted(n for n in names if n != main and cfg.base_model(n) == kind)
    summary = stats.summarize(per_seed, main, primary, not_baselines=ablations)
    if boots:
        summary = stats.combine_bootstrap(summary, per_seed, boots)
    if cfg is not None and cfg.evaluation.not_worse_margins:
        summary["not_worse"] = stats.not_worse(summary, cfg.evaluation.not_worse_margins)
    return summary


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_figure(summary: dict[str, Any], metrics: list[str]) -> Any:
    """One panel per metric: each model's mean with its t interval, and each seed's value as a dot."""
    plt = _plt()
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, constrained_layout=True
    )
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    names = list(summary["models"])
    rng = np.random.default_rng(0)  # jitter only: seeds at the same x stay apart
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        for x, name in enumerate(names):
            entry = summary["models"][name].get(metric)
            if entry is None:
                continue
            per_seed = np.asarray(entry["per_seed"], dtype=float)
            jitter = rng.uniform(-0.12, 0.12, len(per_seed))
            ax.scatter(x + jitter, per_seed, s=14, color="0.55", zorder=2)
            lo, hi, mean = entry["lo"], entry["hi"], entry["mean"]
            err = [[mean - lo], [hi - mean]] if np.isfinite(lo) and np.isfinite(hi) else None
            color = "C3" if name == summary["main"] else "C0"
            ax.errorbar(x, mean, yerr=err, fmt="o", color=color, capsize=5, ms=7, zorder=3)
        direction = stats.HIGHER_IS_BETTER.get(metric)
        arrow = (
            ""
            if direction is None
            else (" (higher is better)" if direction else " (lower is better)")
        )
        ax.set_title(f"{metric}{arrow}", fontsize=10)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    n = len(summary["seeds"])
    fig.suptitle(
        f"Mean and {summary['level']:.0%} t interval over {n} seed{'s' if n != 1 else ''} "
        f"(dots: seeds; red: main model {summary['main']})"
    )
    return fig


@task(
    name="write_compare_report",
    task_run_name="write compare report to {out_dir}",
    cache_policy=NO_CACHE,
)
def write_compare_report(
    summary: dict[str, Any], reports: dict[int, dict[str, Any]], out_dir: Path
) -> dict[str, Path]:
    """`compare.json` (strict JSON: nan written as null), `compare.md`, `compare.png`, `seed-<s>.json`."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / COMPARE_JSON,
        "markdown": out_dir / COMPARE_MD,
        "plot": out_dir / COMPARE_PNG,
    }
    paths["json"].write_text(json.dumps(stats.json_safe(summary), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(stats.markdown_table(summary))
    fig = comparison_figure(summary, stats.headline_metrics(summary))
    fig.savefig(paths["plot"], dpi=110)
    plt.close(fig)
    for seed, report in reports.items():
        path = out_dir / f"seed-{seed}.json"
        path.write_text(json.dumps(stats.json_safe(report), indent=2, allow_nan=False) + "\n")
        paths[f"seed-{seed}"] = path
    return paths


def _test_set(report: dict[str, Any]) -> tuple[Any, ...]:
    """What fixes the rows a seed report was evaluated on: the data (its hash), the split and the
    kind of evaluation. A training seed changes the models, never these."""
    data_hash = report.get("features", {}).get("data_hash")
    return report.get("dataset"), report.get("ground_truth"), report.get("split"), data_hash


def _same_figures(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether one model's metrics agree in two reports (to rounding: a deterministic model
    retrained with the same seed on the same rows)."""
    if set(a) != set(b):
        return False
    return all(
        (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        for x, y in ((a[k], b[k]) for k in a)
    )


def _read_seed_file(f: Path) -> dict[str, Any]:
    try:
        r = json.loads(f.read_text())
        r["seed"], r["main"], r["models"] = int(r["seed"]), str(r["main"]), list(r["models"])
        r["metrics"] = {  # null is how the report writes nan
            name: {k: math.nan if v is None else float(v) for k, v in vals.items()}
            for name, vals in r["metrics"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{f}: not a compare seed report ({exc})") from exc
    return r


def read_seed_reports(
    dirs: list[Path], main: str | None = None, seeds: list[int] | None = None
) -> dict[int, dict[str, Any]]:
    """The `seed-<s>.json` reports of several compare runs, as one comparison's seeds.

    Runs are pooled two ways, both checked:
    - different seeds of the same comparison (one run per process or machine) are pooled;
    - runs of the same seed that compare different models (an ablation run after the contest)
      are joined model by model, but only where they were tested on the same rows (same data
      hash and split). A model in both keeps the first folder's figures; where the two disagree
      (a tuner with a time budget is not deterministic), `joined.differing` in the seed's report
      says so.

    Every seed must end with the same models, so each paired difference uses every seed.
    `main` (default: the first report's main model) becomes every report's main model. `seeds`
    keeps only those seeds (each must be found).

    Raises ValueError (naming the files) when a folder has no seed reports, a report is unreadable,
    the same seed was tested on different rows, a seed's run adds no model to what an earlier
    folder gave, or the seeds end with different models.
    """
    reports: dict[int, dict[str, Any]] = {}
    where: dict[int, list[Path]] = {}
    for d in dirs:
        files = sorted(Path(d).glob("seed-*.json"))
        if not files:
            raise ValueError(
                f"{d}: no seed-<s>.json reports (the output folder of pricing compare)"
            )
        for f in files:
            r = _read_seed_file(f)
            seed = r["seed"]
            if seeds is not None and seed not in seeds:
                continue
            if seed not in reports:
                reports[seed], where[seed] = r, [f]
                continue
            base = reports[seed]
            if _test_set(base) != _test_set(r):
                raise ValueError(
                    f"seed {seed}: {where[seed][0]} and {f} were tested on different rows "
                    "(data hash or split differ); only runs on the same data can be joined"
                )
            new = [m for m in r["metrics"] if m not in base["metrics"]]
            if not new:
                raise ValueError(
                    f"seed {seed} is in both {where[seed][0]} and {f} with no model added: "
                    "the same comparison twice"
                )
            joined = base.setdefault("joined", {"from": [str(where[seed][0])], "differing": []})
            joined["from"].append(str(f))
            for name, vals in r["metrics"].items():
                if name not in base["metrics"]:
                    base["metrics"][name] = vals
                elif not _same_figures(base["metrics"][name], vals):
                    joined["differing"].append(
                        {"model": name, "kept": str(where[seed][0]), "other": str(f)}
                    )
            base["models"] = [*base["models"], *[m for m in r["models"] if m not in base["models"]]]
            # The same seed on the same rows draws the same user resamples: draws join too.
            if isinstance(base.get("bootstrap"), dict) and isinstance(r.get("bootstrap"), dict):
                for metric in stats.BOOTSTRAP_METRICS:
                    extra = r["bootstrap"].get(metric) or {}
                    mine = base["bootstrap"].setdefault(metric, {})
                    mine.update({k: v for k, v in extra.items() if k not in mine})
            for key in ("train", "timings_s"):
                if isinstance(r.get(key), dict):
                    base.setdefault(key, {}).update(
                        {k: v for k, v in r[key].items() if k not in base[key]}
                    )
            where[seed].append(f)
    missing_seeds = sorted(set(seeds or []) - set(reports))
    if missing_seeds or not reports:
        raise ValueError(f"seeds {missing_seeds or seeds} are in none of {[str(d) for d in dirs]}")
    names = {s: sorted(r["metrics"]) for s, r in reports.items()}
    first = min(names)
    for seed, got in names.items():
        if got != names[first]:
            missing = sorted(set(names[first]) ^ set(got))
            raise ValueError(
                f"seed {seed} ({', '.join(map(str, where[seed]))}) and seed {first} "
                f"({', '.join(map(str, where[first]))}) compare different models "
                f"({got} against {names[first]}; differing: {missing}): every seed needs every model"
            )
    chosen = main or reports[first]["main"]
    if chosen not in names[first]:
        raise ValueError(f"main model {chosen!r} is not among the models compared: {names[first]}")
    for r in reports.values():
        if r["main"] != chosen:
            r["models"] = [chosen, *[m for m in r["models"] if m != chosen]]
            r["main"] = chosen
    return dict(sorted(reports.items()))


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "compare"


@task(name="log_comparison", task_run_name="log comparison of {dataset}", cache_policy=NO_CACHE)
def log_comparison(
    run_id: str, summary: dict[str, Any], paths: dict[str, Path], dataset: str
) -> None:
    """The parent run's share: intervals as metrics, the decision as tags, the report files as
    artifacts (the per-seed values as an MLflow table); the Markdown table as a Prefect artifact."""
    import mlflow
    import pandas as pd
    from mlflow.entities import Metric
    from prefect.artifacts import create_markdown_artifact

    client = mlflow.MlflowClient()
    headline = stats.headline_metrics(summary)
    now = int(time.time() * 1000)
    values: list[Metric] = []
    for prefix, table in (("", summary["models"]), ("paired/", summary["paired"])):
        for name, by_metric in table.items():
            for metric in headline:
                for part in ("mean", "lo", "hi"):
                    v = by_metric.get(metric, {}).get(part, np.nan)
                    if np.isfinite(v):
                        values.append(Metric(f"{prefix}{name}/{metric}.{part}", float(v), now, 0))
    client.log_batch(run_id, metrics=values)
    main, primary = summary["main"], summary["primary"]
    for key, value in {
        "best_baseline": summary["best_baseline"],
        "primary": primary,
        f"verdict.{primary}": summary["verdicts"].get(main, {}).get(primary, "n/a"),
    }.items():
        client.set_tag(run_id, key, value)
    rows = [
        {"seed": seed, "model": name, "metric": metric, "value": entry["per_seed"][i]}
        for name, by_metric in summary["models"].items()
        for metric, entry in by_metric.items()
        if metric in headline
        for i, seed in enumerate(summary["seeds"])
    ]
    client.log_table(run_id, pd.DataFrame(rows), "compare/per_seed.json")
    for kind in ("json", "markdown", "plot"):
        client.log_artifact(run_id, str(paths[kind]), "compare")
    for name, path in paths.items():
        if name.startswith("seed-"):
            client.log_artifact(run_id, str(path), "compare/seeds")
    create_markdown_artifact(
        markdown=paths["markdown"].read_text(),
        key=artifact_key(f"compare-{dataset}"),
        description=f"{main} against its baselines over {len(summary['seeds'])} seeds",
    )
