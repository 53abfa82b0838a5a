"""The LightGBM pipeline (validate -> features -> train -> evaluate) at growing data sizes, in this
process (`--engine local`) and partition by partition on a 2-worker Dask LocalCluster (`dask`).

For each size (millions of offers) it simulates a market with `pricing simulate --partitions`
(bucket by bucket: the simulator never holds the whole market), then runs each engine in its own
child process while a monitor samples the resident memory of every process of the run (the child,
and for Dask its nannies and workers; a LocalCluster's scheduler lives in the child) every 0.2 s.
A run whose processes pass `--memory-budget-gb` together is stopped there and reported with the
step it reached: that is where the local engine fails on this machine.

Per run and step: wall time and peak RSS per process; per engine: the log-log slope of total wall
time against offers. Training uses LightGBM's configured parameters without Optuna (a fixed amount
of work at every size); the Dask engine trains on whole user buckets up to `--train-sample` offers,
and both engines score the same seeded sample of `--eval-offers` test offers, so the metrics
columns show what the training sample costs.

    python benchmarks/pipeline_scale.py --sizes 1,4,16 --out docs/results/pipeline-scale/pipeline_scale.json
    python benchmarks/pipeline_scale.py --sizes 0.1 --engines local,dask         # a quick look

Prints one JSON object (also written to `--out`) with its `provenance` (commit, command, settings,
machine: `benchmarks/_provenance.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _provenance import bench_provenance, commit_label

ROOT = Path(__file__).resolve().parents[1]
OFFERS_PER_USER = 45.0  # the realistic preset: about 90k offers for 2,000 users over six weeks
LGB_PARAMS = {"tune": {"n_trials": 0}}  # configs/lightgbm.yaml's model, without the search


# --- child: one engine on one data folder, step by step ----------------------------------------


def _emit(record: dict[str, Any]) -> None:
    print("STEP " + json.dumps(record, default=str), flush=True)


def run_engine(
    engine: str, data_dir: Path, work: Path, workers: int, train_sample: int, eval_offers: int
) -> None:
    """Run the pipeline's steps, printing a `STEP {...}` line as each one ends."""
    from mlops.models import LightGBMDemand
    from pricing import schema as S
    from pricing.policy import Guardrails
    from pricing.simulator import load_ground_truth
    from tasks.evaluation import evaluate_models

    clock = time.perf_counter()

    def done(step: str, **extra: Any) -> None:
        nonlocal clock
        now = time.perf_counter()
        _emit({"step": step, "wall_s": now - clock, **extra})
        clock = now

    truth = load_ground_truth(data_dir)
    guardrails = Guardrails()
    model = LightGBMDemand(dict(LGB_PARAMS), seed=0)
    if engine == "local":
        from expectations import validate_data_dir
        from mlops.config import SplitConfig
        from tasks.evaluation import split_data
        from tasks.features import build_offer_features

        report = validate_data_dir(data_dir, build_docs=False)
        done("validate", rows={t: r.rows for t, r in report.tables.items()})
        fb = build_offer_features(report.clean_tables, work / "cache")
        done("features", offers=len(fb.features))
        _, train, valid, test = split_data(report.clean_tables, fb.features, SplitConfig())
        base_rate = float(train.offers[S.PURCHASED].mean())
        train_items = set(train.offers[S.ITEM_ID].astype(str))
        model.fit(train, valid)
        done("train", train_offers=len(train))
        metrics, _ = evaluate_models(
            {"lightgbm": model}, test, truth, guardrails, base_rate, eval_offers, 0,
            train_items=train_items,
        )  # fmt: skip
        done("evaluate", test_offers=min(len(test), eval_offers), metrics=_headline(metrics))
        return

    from mlops import engine as engines
    from mlops.config import ScaleConfig, SplitConfig
    from tasks import partitioned as P

    with engines.cluster(workers):
        _emit({"step": "cluster", "wall_s": time.perf_counter() - clock, "pids": _cluster_pids()})
        clock = time.perf_counter()
        layout = P.Layout(
            work / "partitions", P.bucket_count(data_dir, ScaleConfig().offers_per_bucket)
        )
        data = P.validate_partitioned(data_dir, layout, 0.01, build_docs=False)
        done(
            "validate",
            rows={t: r.rows for t, r in data.report.tables.items()},
            buckets=layout.buckets,
        )
        stats = P.features_partitioned(data, SplitConfig())
        done("features", offers=int(stats.total("offers")))
        train, valid, sample = P.training_sample(data, stats, train_sample)
        model.fit(train, valid)
        done("train", train_offers=len(train), sample=sample)
        test, train_items = P.evaluation_sample(data, stats, eval_offers, 0)
        metrics, _ = evaluate_models(
            {"lightgbm": model}, test, truth, guardrails, stats.base_rate, eval_offers, 0,
            train_items=train_items,
        )  # fmt: skip
        done("evaluate", test_offers=len(test), metrics=_headline(metrics))


def _cluster_pids() -> dict[str, int]:
    from distributed import get_client

    info = get_client().run(os.getpid)
    return {f"worker {i}": pid for i, pid in enumerate(info.values())}


def _headline(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    m = metrics["lightgbm"]
    return {k: m[k] for k in ("log_loss", "auc", "ece", "profit_regret") if k in m}


# --- parent: simulate, run each engine in a monitored child, collect --------------------------


class TreeMonitor:
    """Samples the RSS of a process and all its descendants; remembers each one's peak."""

    def __init__(self, pid: int, budget_bytes: float, interval_s: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.budget = budget_bytes
        self.interval = interval_s
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.total_peak = 0
        self.over_budget = False
        self.monitor_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def step_peaks(self) -> dict[int, int]:
        """Peaks since the last call (then reset): one step's memory."""
        out, self.peaks = self.peaks, {}
        return out

    def _run(self) -> None:
        import psutil

        t_cpu = time.thread_time()
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.names:
                        self.names[p.pid] = " ".join(p.cmdline()[:3])[:80]
                except psutil.Error:
                    continue
                total += rss
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
            self.total_peak = max(self.total_peak, total)
            if total > self.budget and not self.over_budget:
                self.over_budget = True
                for p in reversed(procs):
                    with _quiet():
                        p.kill()
            self._stop.wait(self.interval)
        self.monitor_cpu_s = time.thread_time() - t_cpu


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True


def simulate(offers_m: float, root: Path) -> tuple[Path, dict[str, Any]]:
    """A realistic market of about `offers_m` million offers, bucket by bucket (reused if there)."""
    users = max(200, int(round(offers_m * 1e6 / OFFERS_PER_USER)))
    parts = max(1, math.ceil(offers_m * 1e6 / 250_000))
    out = root / f"market-{offers_m:g}M"
    marker = out / "simulated.json"
    if marker.exists():
        return out, json.loads(marker.read_text())
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows.cli", "simulate", "--users", str(users), "--partitions",
         str(parts), "--out", str(out), "--seed", "0"],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    info = {"users": users, "partitions": parts, "simulate_s": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    return out, info


def run_child(args: argparse.Namespace, engine: str, data_dir: Path, work: Path) -> dict[str, Any]:
    """One engine on one market in a child process, its memory watched; its steps and peaks."""
    cmd = [
        sys.executable, __file__, "--child", engine, "--data", str(data_dir), "--work", str(work),
        "--workers", str(args.workers), "--train-sample", str(args.train_sample),
        "--eval-offers", str(args.eval_offers),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    mon = TreeMonitor(proc.pid, args.memory_budget_gb * 2**30).start()
    steps: list[dict[str, Any]] = []
    roles: dict[int, str] = {proc.pid: "driver"}
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("STEP "):
            continue
        record = json.loads(line[5:])
        if record["step"] == "cluster":
            roles.update({pid: name for name, pid in record.pop("pids").items()})
        peaks = mon.step_peaks()
        record["peak_rss_gb"] = {
            roles.get(pid, f"pid {pid} ({mon.names.get(pid, '?')})"): round(rss / 2**30, 3)
            for pid, rss in sorted(peaks.items(), key=lambda kv: -kv[1])
        }
        steps.append(record)
        print(f"  {engine:5s} {record['step']:9s} {record['wall_s']:8.1f}s  "
              f"max RSS {max(peaks.values(), default=0) / 2**30:.2f} GB", file=sys.stderr, flush=True)  # fmt: skip
    stderr = proc.stderr.read() if proc.stderr else ""
    rc = proc.wait()
    mon.stop()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "engine": engine,
        "ok": rc == 0 and not mon.over_budget,
        "wall_s": wall,
        "steps": steps,
        "peak_rss_gb_all_processes": round(mon.total_peak / 2**30, 3),
        "peak_rss_gb_one_process": round(
            max((max(s["peak_rss_gb"].values(), default=0) for s in steps), default=0), 3
        ),
        "monitor_cpu_s": round(mon.monitor_cpu_s, 2),
    }
    if not out["ok"]:
        reached = steps[-1]["step"] if steps else "start"
        why = (
            f"its processes passed the {args.memory_budget_gb} GB budget together "
            f"(peak {out['peak_rss_gb_all_processes']} GB) after step '{reached}'"
            if mon.over_budget
            else f"exit code {rc}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
        )
        out["failed"] = why
    return out


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4,16", help="millions of offers, comma-separated")
    p.add_argument("--engines", default="local,dask")
    p.add_argument("--workers", type=int, default=2, help="Dask LocalCluster worker processes")
    p.add_argument(
        "--train-sample", type=int, default=1_000_000, help="dask: training offers at most"
    )
    p.add_argument("--eval-offers", type=int, default=50_000, help="the seeded evaluation sample")
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        default=18.0,
        help="stop a run past this (all its processes)",
    )
    p.add_argument("--root", default="/tmp/pipeline-scale", help="markets and work files")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_engine(args.child, Path(args.data), Path(args.work), args.workers, args.train_sample, args.eval_offers)  # fmt: skip
        return

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    sizes = [float(s) for s in args.sizes.split(",")]
    runs: list[dict[str, Any]] = []
    failed: set[str] = set()
    for size in sizes:
        data_dir, sim = simulate(size, root)
        offers = sum(
            __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(f).metadata.num_rows
            for f in sorted((data_dir / "offers").glob("*.parquet"))
        )
        print(f"{size:g}M: {offers} offers in {data_dir}", file=sys.stderr, flush=True)
        for engine in engines:
            if engine in failed:
                runs.append(
                    {
                        "engine": engine,
                        "size_m": size,
                        "offers": offers,
                        "skipped": "failed at a smaller size",
                    }
                )
                continue
            work = root / f"work-{engine}-{size:g}M"
            subprocess.run(["rm", "-rf", str(work)], check=False)
            run = {
                "size_m": size,
                "offers": offers,
                "market": sim,
                **run_child(args, engine, data_dir, work),
            }
            subprocess.run(["rm", "-rf", str(work)], check=False)
            runs.append(run)
            if not run["ok"]:
                failed.add(engine)
    slopes = {
        e: _slope([(r["offers"], r["wall_s"]) for r in runs if r["engine"] == e and r.get("ok")])
        for e in engines
    }
    prov = bench_provenance("pipeline_scale", args, drop=("child", "data", "work"))
    result = {
        "benchmark": "pipeline_scale",
        "commit": commit_label(prov),  # sha[-dirty]; the full record is `provenance`
        "provenance": prov,
        "config": prov["params"],
        "model": {
            "lightgbm": LGB_PARAMS,
            "note": "configs/lightgbm.yaml without the Optuna search",
        },
        "runs": runs,
        "loglog_slope_wall_vs_offers": slopes,
        "note": "peak_rss_gb per step and process; the monitor's own CPU is monitor_cpu_s per run",
    }
    publish(result, args.out)


def publish(result: dict[str, Any], out: str | None) -> None:
    """Print the result as JSON, and write it to `out` too when given."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
