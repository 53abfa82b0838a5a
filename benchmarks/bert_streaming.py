"""BERT training with its batches streamed from user-bucket shards against the in-memory path.

On a partitioned market (`pricing simulate --partitions`), each mode runs in its own child process
with its memory watched (every process of the child, sampled every 0.2 s):

- `memory`: the local engine (validate, features, time split in one process), then
  `BertDemand.fit(train)` with the whole training split in memory: today's path.
- `stream`: the Dask engine's validation and features on a 2-worker LocalCluster (closed before
  training), then `BertDemand.fit(Shards(...))`, one bucket in memory at a time.

Both train the default config's BERT (`configs/default.yaml`'s `bert:` block, MiniLM text vectors)
for `--steps` optimizer steps after `--warmup` untimed ones, without validation. The training
throughput is the timed steps' samples per second (a callback times the steps, so neither the data
preparation nor the model's setup counts); the peak RSS is the child's whole run. A full epoch of
the CPU config at 1M offers takes about 9 minutes on 2 cores, so this times a fixed number of steps.

    python benchmarks/bert_streaming.py --data /tmp/pipeline-scale/market-1M --modes memory,stream
    python benchmarks/bert_streaming.py --data /tmp/pipeline-scale/market-4M --modes stream

Prints one JSON object (also written to `--out`) with its `provenance` (commit, command, settings,
machine: `benchmarks/_provenance.py`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pytorch_lightning as pl  # noqa: E402
from _provenance import bench_provenance, commit_label  # noqa: E402
from pipeline_scale import TreeMonitor, publish  # noqa: E402


class StepTimer(pl.Callback):
    """Wall time and samples of the training steps after `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps = 0
        self.samples = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        self.steps += 1
        if self.steps > self.warmup:
            self.seconds += time.perf_counter() - self._t0
            self.samples += len(batch["ev_mask"])


def child(mode: str, data_dir: Path, work: Path, steps: int, warmup: int) -> dict[str, Any]:
    from mlops.config import ExperimentConfig, SplitConfig, load_config

    cfg: ExperimentConfig = load_config(str(ROOT / "configs" / "default.yaml"), {})
    bert = cfg.bert.model_copy(update={"max_steps": steps + warmup, "max_epochs": 1})
    t0 = time.perf_counter()
    if mode == "memory":
        from expectations import validate_data_dir
        from tasks.evaluation import split_data
        from tasks.features import build_offer_features

        report = validate_data_dir(data_dir, build_docs=False)
        fb = build_offer_features(report.clean_tables, work / "cache")
        _, train, _, _ = split_data(report.clean_tables, fb.features, SplitConfig())
        source: Any = train
        n_train = len(train)
    else:
        from lightning_modules.streaming import Shards, layout_shards
        from mlops import engine
        from mlops.config import ScaleConfig
        from tasks import partitioned as P

        layout = P.Layout(
            work / "partitions", P.bucket_count(data_dir, ScaleConfig().offers_per_bucket)
        )
        with engine.cluster(2):
            data = P.validate_partitioned(data_dir, layout, 0.01, build_docs=False)
            stats = P.features_partitioned(data, SplitConfig())
        source = Shards(layout_shards(layout), data.items, stats.valid_start)
        n_train = int(stats.total("train"))
    prep_s = time.perf_counter() - t0

    from lightning_modules.demand import BertDemand

    timer = StepTimer(warmup)
    model = BertDemand(bert, seed=0, trainer={"callbacks": [timer], "enable_progress_bar": False})
    t1 = time.perf_counter()
    model.fit(source, None)
    return {
        "mode": mode,
        "train_offers": n_train,
        "prepare_s": round(prep_s, 1),
        "fit_s": round(time.perf_counter() - t1, 1),
        "timed_steps": timer.steps - warmup,
        "samples_per_s": round(timer.samples / timer.seconds, 1) if timer.seconds else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a partitioned market folder")
    p.add_argument("--modes", default="memory,stream")
    p.add_argument("--steps", type=int, default=150, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--work", default="/tmp/bert-streaming")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    data_dir, work = Path(args.data), Path(args.work)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, data_dir, work, args.steps, args.warmup)))
        return
    runs = []
    for mode in args.modes.split(","):
        subprocess.run(["rm", "-rf", str(work)], check=False)
        cmd = [sys.executable, __file__, "--child", mode, "--data", str(data_dir), "--work",
               str(work), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        mon = TreeMonitor(proc.pid, 20 * 2**30).start()
        out, _ = proc.communicate()
        mon.stop()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        run = json.loads(line[7:]) if line else {"mode": mode, "failed": f"exit {proc.returncode}"}
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        run["peak_rss_gb_child"] = round(mon.peaks.get(proc.pid, 0) / 2**30, 3)
        run["peak_rss_gb_all_processes"] = round(mon.total_peak / 2**30, 3)
        run["monitor_cpu_s"] = round(mon.monitor_cpu_s, 2)
        print(json.dumps(run), file=sys.stderr, flush=True)
        runs.append(run)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    rates = {r["mode"]: r.get("samples_per_s") for r in runs}
    params = {"bert": "configs/default.yaml", **{k: v for k, v in vars(args).items()}}
    prov = bench_provenance("bert_streaming", params, drop=("child",))
    result = {
        "benchmark": "bert_streaming",
        "commit": commit_label(prov),  # sha[-dirty]; the full record is `provenance`
        "provenance": prov,
        "config": prov["params"],
        "runs": runs,
        "stream_vs_memory_samples_per_s": (
            rates["stream"] / rates["memory"]
            if rates.get("stream") and rates.get("memory")
            else None
        ),
    }
    publish(result, args.out)


if __name__ == "__main__":
    main()
