"""The `compare` flow: the evaluation over N seeds, with intervals, instead of one run's numbers.

Seed s is a new simulated market with seed s and training seed s (`simulate=True`), or training
seed s on fixed data (`data_dir`). One MLflow parent run holds the statistics and a child run per
seed; `out_dir` gets `compare.json` (read by other tools), `compare.md`, `compare.png` and a
`seed-<s>.json` per seed. Nothing is registered or promoted.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from mlops import tracking
from mlops.config import CONFIG_DIR, load_config
from mlops.models import DemandModel
from mlops.provenance import mixed_provenance, provenance
from mlops.settings import get_settings
from tasks.compare import (
    COMPARE_JSON,
    SeedData,
    evaluate_seed,
    log_comparison,
    log_seed_run,
    model_names,
    prepare_data,
    read_seed_reports,
    seed_report,
    summarize_seeds,
    train_seed_model,
    training_budgets,
    write_compare_report,
)
from tasks.data import simulate_market

DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@flow(name="compare", log_prints=True)
def compare(
    seeds: int = 3,
    simulate: bool = False,
    data_dir: str | None = None,
    models: list[str] | None = None,
    config_path: str | None = None,
    out_dir: str | None = None,
    first_seed: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate the main model and its baselines on `seeds` seeds; report intervals.

    Args:
        seeds: how many seeds: `first_seed` (default: the config's `seed`), `+ 1`, ... Seeds run
            in separate processes or machines are pooled afterwards with `merge_compare`.
        simulate: a fresh simulated market per seed (the config's `simulate:` overrides); else
            the fixed data in `data_dir`, with only the training seed changing.
        models: the main model first, then the baselines (default: the config's `model` and
            `baselines`); the list-price policy is always added as the reference.
        out_dir: where the report files go (default: `<runs_dir>/compare`).

    Returns:
        Where the report is, the MLflow run ids, the primary metric, the best baseline and the
        main model's verdicts against it.
    """
    t_start = time.perf_counter()
    log = get_run_logger()
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if not simulate and data_dir is None:
        raise ValueError("give a data_dir, or simulate=True")
    settings = get_settings()
    runs_dir = Path(settings.runs_dir)
    cfg = load_config(config_path)
    # The config as written (before --models picks the models): runs joined model by model share it.
    prov = provenance(cfg, config_name=str(config_path or DEFAULT_CONFIG))
    names = model_names(cfg, models)
    main = names[0]
    cfg = cfg.model_copy(update={"model": main, "baselines": names[1:]})
    start = cfg.seed if first_seed is None else int(first_seed)
    seed_list = [start + i for i in range(seeds)]
    out = Path(out_dir) if out_dir else runs_dir / "compare"

    # Fixed data is validated, featurized and split once; only the training seed changes.
    fixed: SeedData | None = None
    if not simulate:
        assert data_dir is not None
        fixed = prepare_data(Path(data_dir), cfg, runs_dir, "fixed data")
    dataset = "simulated" if fixed is None else fixed.dataset

    tracking.configure(settings.tracking_uri)
    import mlflow

    exp_id = tracking.experiment_id(f"{dataset}-compare", settings.artifact_root)
    parent = mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"compare-{main}-{seeds}seeds-{datetime.now(UTC):%Y%m%dT%H%M%S}",
        tags={"kind": "compare", "model": main, "dataset": dataset},
    )
    parent_id = parent.info.run_id
    try:
        mlflow.log_params(
            {
                "seeds": ",".join(map(str, seed_list)),
                "simulate": simulate,
                "data_dir": str(data_dir),
                "main": main,
                "baselines": ",".join(names[1:]),
                "config": str(config_path),
            }
        )
        mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved.json")
        per_seed: dict[int, dict[str, dict[str, float]]] = {}
        reports: dict[int, dict[str, Any]] = {}
        children: dict[int, str] = {}
        with_truth: list[bool] = []
        for seed in seed_list:
            t_seed = time.perf_counter()
            seed_cfg = cfg.model_copy(update={"seed": seed})
            if fixed is None:
                path = simulate_market.with_options(task_run_name=f"simulate market (seed {seed})")(
                    runs_dir / f"sim-seed{seed}", cfg.simulate, seed
                )
                data = prepare_data(path, seed_cfg, runs_dir, f"seed {seed}")
            else:
                data = fixed
            trained: dict[str, DemandModel] = {}
            diagnostics: dict[str, dict[str, float]] = {}
            for name in names:
                trained[name], diagnostics[name] = train_seed_model(name, seed, data, seed_cfg)
            per_seed[seed], boot = evaluate_seed(seed, trained, data, seed_cfg)
            del trained  # one seed's models at a time
            timings = {**data.timings_s, "seed_total": time.perf_counter() - t_seed}
            reports[seed] = seed_report(seed, data, main, per_seed[seed], diagnostics, timings)
            reports[seed]["provenance"] = prov
            if boot is not None:
                reports[seed]["bootstrap"] = boot
            children[seed] = log_seed_run(seed, parent_id, exp_id, reports[seed])
            reports[seed]["mlflow_run_id"] = children[seed]
            with_truth.append(data.truth is not None)

        primary = cfg.promotion.primary_metric(all(with_truth))
        summary = summarize_seeds(per_seed, main, primary, cfg, _boots(reports))
        summary["mlflow_run_id"] = parent_id
        summary["provenance"] = prov
        summary["budgets"] = training_budgets(reports)
        paths = write_compare_report(summary, reports, out)
        log_comparison(parent_id, summary, paths, dataset)
        mlflow.log_metric("time/total", time.perf_counter() - t_start)
    except BaseException as exc:
        tracking.end_run_on_error(parent_id, exc)  # KILLED when a stop signal ended it
        raise
    mlflow.end_run()

    result = {
        "out_dir": str(out),
        "compare_json": str(out / COMPARE_JSON),
        "mlflow_run_id": parent_id,
        "mlflow_experiment": f"{dataset}-compare",
        "child_run_ids": children,
        "seeds": seed_list,
        "main": main,
        "primary": primary,
        "best_baseline": summary["best_baseline"],
        "verdicts": summary["verdicts"].get(main, {}),
        "seconds": time.perf_counter() - t_start,
    }
    log.info(
        "compare done: %s vs %s on %s over %d seeds: %s (%s)",
        main,
        summary["best_baseline"],
        primary,
        seeds,
        result["verdicts"].get(primary, "n/a"),
        out / COMPARE_JSON,
    )
    return result


def _boots(reports: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]] | None:
    """Every seed's user bootstrap, or None unless every seed has one (real data)."""
    boots = {s: r["bootstrap"] for s, r in reports.items() if r.get("bootstrap")}
    return boots if boots and len(boots) == len(reports) else None


def _run_provenance(folder: Path) -> dict[str, Any]:
    """A compare run's provenance: its compare.json's, else its first seed report's ({} if none)."""
    for f in [folder / COMPARE_JSON, *sorted(folder.glob("seed-*.json"))]:
        try:
            prov = json.loads(f.read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            continue
        if prov:
            return {"provenance": prov}
    return {}


def merge_compare(
    dirs: list[str],
    out_dir: str,
    config_path: str | None = None,
    main: str | None = None,
    seeds: list[int] | None = None,
    allow_mixed: bool = False,
) -> dict[str, Any]:
    """Pool several `compare` runs into one report: their seeds, and their models.

    Every seed is independent, so runs of different seeds (split across processes or machines)
    pool into what one run over all the seeds gives. Runs of the same seeds with other models (an
    ablation run after the contest, a new baseline) are joined model by model where they were
    tested on the same rows, so every model is paired seed by seed with the rest without training
    anything again. `main` (default: the first run's main model) is the model the report is
    about: the best baseline is chosen among the others, and the main model's variants are its
    ablations, each paired with it. `seeds` keeps only those seeds (e.g. the ones every run has).
    Nothing is trained or logged to MLflow.

    Runs of different code or config (their `provenance`: commit, dirty tree, config hash) are
    refused, naming what differs, unless `allow_mixed`; the report then lists every run's
    provenance under `provenance.merged` and says `mixed: true`.
    """
    cfg = load_config(config_path)
    runs = {str(d): _run_provenance(Path(d)) for d in dirs}
    mixed = mixed_provenance(runs)
    if mixed and not allow_mixed:
        raise ValueError(
            "runs of different code or config: " + "; ".join(mixed) + " (--allow-mixed pools them)"
        )
    reports = read_seed_reports([Path(d) for d in dirs], main, seeds)
    first = next(iter(reports.values()))
    main = first["main"]
    primary = cfg.promotion.primary_metric(all(r["ground_truth"] for r in reports.values()))
    per_seed = {seed: r["metrics"] for seed, r in reports.items()}
    summary = summarize_seeds.fn(per_seed, main, primary, cfg, _boots(reports))
    summary["merged_from"] = [str(d) for d in dirs]
    summary["provenance"] = {
        **provenance(cfg, config_name=str(config_path or DEFAULT_CONFIG)),
        "mixed": bool(mixed),
        "merged": {d: r.get("provenance") for d, r in runs.items()},
    }
    summary["budgets"] = training_budgets(reports)
    differing = [
        d | {"seed": s}
        for s, r in reports.items()
        for d in r.get("joined", {}).get("differing", [])
    ]
    if differing:
        summary["joined_differing"] = differing
    out = Path(out_dir)
    write_compare_report.fn(summary, reports, out)
    return {
        "out_dir": str(out),
        "compare_json": str(out / COMPARE_JSON),
        "seeds": sorted(reports),
        "main": main,
        "primary": primary,
        "best_baseline": summary["best_baseline"],
        "verdicts": summary["verdicts"].get(main, {}),
    }
