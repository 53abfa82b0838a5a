"""Chaos run: the scorer under steady open-loop load while faults are injected in turn; what was
lost, what failed, how degraded it got and how fast it came back.

What runs: a throwaway redis-server on loopback, an MLflow registry (sqlite, in a temporary folder)
holding the model twice (version 1, and version 2 with one model file cut in half after it was
registered), and the scorer as an operator runs it: `pricing serve` with WEB_CONCURRENCY=2 workers,
REDIS_URL set, the store hydrated from the market's events, the champion alias watched every second,
and the offer log on its own small filesystem (a tmpfs mounted for the run; root needed, else the
disk-full fault is reported as not injected). A load generator in its own process
(`benchmarks/_chaos_loadgen.py`) offers `--rate` requests per second, open loop: quotes (50
candidates) and events from a fixed schedule, and one outcome for every acknowledged quote, half a
second after it, for a random item of it (10% bought); events are `--events-share` of all requests.
Latency counts from each request's scheduled time; no answer within the 2 s timeout counts at it.

After a baseline, the faults come one after another, each held for a while and then healed, with
time to recover before the next:

- `redis_kill_restart`: SIGKILL of redis-server, restarted empty on the same port after the hold;
- `redis_auth_change`: `CONFIG SET requirepass` and the clients' connections killed (a rotated
  password, the scorer still holding the old URL), then the password removed again;
- `alias_truncated_model`: the champion alias moved to version 2 (a truncated file), then back;
- `offer_log_disk_full`: the offer log's filesystem shrunk to what it holds and filled, then freed;
- `worker_kill`: SIGKILL of one uvicorn worker (uvicorn's supervisor starts a new one).

Reported: requests sent, 5xx and unanswered counts, acknowledged quotes and outcomes missing from
the log afterwards (every quote answered 200 must have all its offers in `export_offers(...,
include_pending=True)`, every outcome answered 200 its offer and label in `export_offers(...)`;
both must be 0), per fault the share of degraded quotes and of failed requests while it lasts, its
time to recovery (from healing, or from the kill for a worker, to the first run of 20 good
requests in a row: answered 200 and not degraded), what /readyz said meanwhile, p99 outside and
during faults, and the load generator's CPU against the whole machine's. The accounting is
`_chaos_accounting` (pure, unit-tested).

    python benchmarks/chaos.py [--duration 300] [--quick] [--model bert_wide|logistic|lightgbm]
                               [--model-dir DIR] [--out docs/results/chaos/chaos.json]

Prints progress on stderr and writes one JSON file (also printed on stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _chaos_accounting as acc  # noqa: E402
from _http import RawClient, children, loadavg, machine_busy  # noqa: E402
from _provenance import bench_provenance  # noqa: E402
from scorer_load import make_mix  # noqa: E402

N_CANDIDATES = 50
TOKEN = "chaos-admin-token"
REGISTERED = "price-response"
ROTATED_PASSWORD = "chaos-rotated-password"
LOG_FS_BYTES = 4 << 30  # the offer log's tmpfs: far more than a run writes, until the fault
RECOVERY_STREAK = 20
# The killed worker comes last: its replacement takes tens of seconds to load and hydrate on 2
# busy cores, and the load meanwhile falls on the survivor alone, whose backlog outlasts the slot.
FAULTS = (
    "redis_kill_restart",
    "redis_auth_change",
    "alias_truncated_model",
    "offer_log_disk_full",
    "worker_kill",
)


def note(msg: str) -> None:
    print(f"[chaos] {msg}", file=sys.stderr, flush=True)


# --- the model, registered twice -----------------------------------------------------------------


def build_model(kind: str, home: Path, seed: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """(saved model folder, catalog, events to hydrate the store with); reused when saved."""
    if kind != "logistic":
        from scorer_load import build_model as load_bench_model

        spec, catalog, events = load_bench_model(kind, home, seed)
        return Path(spec), catalog, events
    from mlops.models import MANIFEST, LogisticDemand, PricingData, save_model
    from pricing import features as F
    from pricing import schema as S
    from pricing.simulator import SimConfig, simulate

    market = simulate(SimConfig(n_users=800, n_items=200, n_days=14, seed=seed))
    t = market.tables
    path = home / f"model-logistic-{seed}"
    if not (path / MANIFEST).is_file():
        data = PricingData(offers=t[S.OFFERS], items=t[S.ITEMS], events=t[S.EVENTS])
        data.features = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
        model = LogisticDemand()
        model.fit(data)
        save_model(model, path)
    return path, t[S.ITEMS], t[S.EVENTS]


def register_versions(model_dir: Path, workdir: Path, item_id: str) -> tuple[str, str, str, str]:
    """Register the model twice in a fresh MLflow store under `workdir`; cut one file of the second
    version's stored copy in half. Returns (tracking URI, good version, bad version, file cut)."""
    import mlflow

    from mlops import registry, tracking
    from mlops.models import MANIFEST, load_model
    from pricing import schema as S

    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    art_root = workdir / "mlruns" / "artifacts"
    tracking.configure(uri)
    tracking.experiment_id("chaos", art_root)
    mlflow.set_experiment("chaos")
    model = load_model(model_dir)
    example = pd.DataFrame({S.USER_ID: ["u1"], S.ITEM_ID: [item_id], S.PRICE: [10.0]})
    versions, manifests = [], []
    for _ in range(2):
        before = set(art_root.rglob(MANIFEST))
        with mlflow.start_run():
            versions.append(tracking.log_price_model(model, {}, example, REGISTERED)[1])
        (manifests_new,) = set(art_root.rglob(MANIFEST)) - before
        manifests.append(manifests_new)
    stored = manifests[1].parent
    victim = max(
        (p for p in stored.iterdir() if p.is_file() and p.name != MANIFEST),
        key=lambda p: p.stat().st_size,
    )
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    registry.set_alias(REGISTERED, versions[0])
    return uri, versions[0], versions[1], victim.name


# --- the offer log's filesystem ------------------------------------------------------------------


class LogDisk:
    """A tmpfs for the offer log that can be filled (shrunk to what it holds, the rest taken by a
    filler file) and freed; a plain folder when mounting is impossible (`why_not` says why)."""

    def __init__(self, path: Path, size: int = LOG_FS_BYTES) -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.why_not: str | None = None
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.why_not = "not root: cannot mount a tmpfs"
            return
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            self.why_not = f"mount failed: {r.stderr.strip()}"
        else:
            self.mounted = True

    def _remount(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )

    def fill(self) -> dict[str, Any]:
        st = os.statvfs(self.path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        self._remount(used + (256 << 10))  # a little room, then taken by the filler
        filler = self.path / "filler"
        written = 0
        chunk = b"\0" * 65536
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                written += f.write(chunk) or 0
        free = os.statvfs(self.path)
        return {
            "used_bytes": used,
            "filler_bytes": written,
            "free_bytes": free.f_bavail * free.f_frsize,
        }

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)
        self._remount(self.size)

    def close(self) -> None:
        if self.mounted:
            r = subprocess.run(["umount", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


# --- the scorer ----------------------------------------------------------------------------------


def worker_pids(port: int, tries: int = 8) -> set[int]:
    """Worker pids that answered /metrics (`scorer_worker{pid=...}`) in `tries` connections."""
    out: set[int] = set()
    for _ in range(tries):
        c = RawClient(port, timeout=2)
        try:
            status, text = c.get("/metrics")
            if status != 200:
                continue
            for line in str(text).splitlines():
                if line.startswith("scorer_worker{"):
                    out.add(int(line.split('pid="')[1].split('"')[0]))
        except (OSError, IndexError, ValueError):
            pass
        finally:
            c.close()
    return out


def worker_processes(master_pid: int) -> set[int]:
    """The uvicorn supervisor's worker processes (multiprocessing spawn children), from /proc."""
    out = set()
    for pid in children(master_pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
    return out


def start_scorer(workdir: Path, env: dict[str, str], workers: int) -> Any:
    """`pricing serve` on a free loopback port; returned once every worker answers."""
    from scorer.process import free_port
    from scorer.process import start_scorer as start

    port = free_port()
    argv = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)]
    sp = start(
        env={**env, "WEB_CONCURRENCY": str(workers)},
        port=port,
        cwd=workdir,  # no stray .env from the checkout
        argv=argv,
        log_path=workdir / "scorer.log",
        ready_timeout_s=300.0,
    )
    deadline = time.monotonic() + 300
    while len(worker_pids(port)) < workers:
        if time.monotonic() > deadline or not sp.alive():
            sp.stop()
            raise RuntimeError(f"not every worker answered; see {workdir / 'scorer.log'}")
        time.sleep(0.3)
    return sp


@dataclass
class ReadyLog:
    """/readyz polled in a thread: (time, status, body or None)."""

    port: int
    every_s: float = 0.25
    polls: list[tuple[float, int, dict[str, Any] | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReadyLog:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            c = RawClient(self.port, timeout=2)
            try:
                status, body = c.get("/readyz")
                self.polls.append((t, status, body if isinstance(body, dict) else None))
            except OSError:
                self.polls.append((t, 0, None))
            finally:
                c.close()
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, lo: float, hi: float) -> dict[str, Any]:
        """What /readyz said between `lo` and `hi`: answers, and each reason seen (first 5)."""
        polls = [p for p in self.polls if lo <= p[0] < hi]
        seen: dict[str, list[str]] = {
            "store": [],
            "offer_log_error": [],
            "last_reload_error": [],
            "reason": [],
        }
        versions: list[str] = []
        for _, _, body in polls:
            if not body:
                continue
            for key, values in seen.items():
                v = body.get(key)
                if v not in (None, "ok") and str(v)[:240] not in values and len(values) < 5:
                    values.append(str(v)[:240])
            v = body.get("model_version")
            if v is not None and str(v) not in versions:
                versions.append(str(v))
        return {
            "polls": len(polls),
            "status_counts": {
                str(s): sum(1 for p in polls if p[1] == s) for s in sorted({p[1] for p in polls})
            },
            "degraded_true": sum(1 for p in polls if p[2] and p[2].get("degraded") is True),
            "model_versions": versions,
            **{f"{k}_seen": v for k, v in seen.items()},
        }


# --- the faults ----------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: when it started and was healed (monotonic s); for a killed worker,
    `healed` is the kill (nothing to undo) and `replaced` when a new worker answered."""

    name: str
    started: float = float("nan")
    healed: float = float("nan")
    ended: float = float("nan")  # end of the window its effects are measured over
    replaced: float | None = None
    injected: bool = True
    detail: dict[str, Any] = field(default_factory=dict)


class Injector:
    def __init__(
        self,
        port: int,
        master_pid: int,
        redis_srv: Any,
        disk: LogDisk,
        versions: tuple[str, str],
    ) -> None:
        self.port = port
        self.master_pid = master_pid
        self.redis = redis_srv
        self.disk = disk
        self.good, self.bad = versions

    def run(self, name: str, hold: float, budget: float) -> Fault:
        """Inject `name`, hold it `hold` s, heal it; `budget` s in all for the fault's slot."""
        f = Fault(name)
        getattr(self, name)(f, hold, budget)
        if np.isnan(f.ended):
            f.ended = f.healed
        return f

    def worker_kill(self, f: Fault, hold: float, budget: float) -> None:
        before = worker_processes(self.master_pid)
        if not before:
            raise RuntimeError("no worker process found to kill")
        victim = min(before)
        f.detail["killed_pid"] = victim
        f.started = f.healed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = f.started + budget
        while time.monotonic() < deadline:  # a new process first, then it answering
            new = worker_processes(self.master_pid) - before
            if new and f.replaced is None:
                f.replaced = time.monotonic()
                f.detail["new_pid"] = min(new)
            if new and worker_pids(self.port, tries=4) & new:
                f.detail["worker_serving_s"] = round(time.monotonic() - f.started, 3)
                break
            time.sleep(0.1)
        serving = f.detail.get("worker_serving_s")
        if serving is not None:  # the fault lasts until a new worker serves
            f.ended = f.started + serving
        else:
            f.ended = f.replaced if f.replaced is not None else f.started + hold
        f.detail["workers_after"] = sorted(worker_processes(self.master_pid))

    def redis_kill_restart(self, f: Fault, hold: float, budget: float) -> None:
        proc = self.redis.proc
        f.detail["killed_pid"] = proc.pid
        f.started = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.redis.proc = None
        time.sleep(max(0.0, f.started + hold - time.monotonic()))
        self.redis.start()
        f.healed = time.monotonic()

    def alias_truncated_model(self, f: Fault, hold: float, budget: float) -> None:
        from mlops import registry

        f.started = time.monotonic()
        registry.set_alias(REGISTERED, self.bad)
        time.sleep(max(0.0, f.started + hold - time.monotonic()))
        registry.set_alias(REGISTERED, self.good)
        f.healed = time.monotonic()

    def offer_log_disk_full(self, f: Fault, hold: float, budget: float) -> None:
        if not self.disk.mounted:
            f.injected = False
            f.detail["not_injected"] = self.disk.why_not
            f.started = f.healed = time.monotonic()
            return
        f.started = time.monotonic()
        f.detail.update(self.disk.fill())
        time.sleep(max(0.0, f.started + hold - time.monotonic()))
        self.disk.free()
        f.healed = time.monotonic()

    def redis_auth_change(self, f: Fault, hold: float, budget: float) -> None:
        import redis

        c = redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5)
        f.started = time.monotonic()
        c.config_set("requirepass", ROTATED_PASSWORD)
        c = redis.Redis(
            host="127.0.0.1", port=self.redis.port, password=ROTATED_PASSWORD, socket_timeout=5
        )
        # connections authenticated before the change stay so: drop them, as a rotation does
        f.detail["clients_killed"] = int(c.execute_command("CLIENT", "KILL", "TYPE", "normal"))
        time.sleep(max(0.0, f.started + hold - time.monotonic()))
        c.config_set("requirepass", "")
        c.close()
        f.healed = time.monotonic()


def schedule(duration: float, n_faults: int) -> tuple[float, float, float]:
    """(baseline s before the first fault, slot s per fault, hold s of each fault)."""
    baseline = max(5.0, 0.1 * duration)
    tail = max(3.0, 0.03 * duration)
    slot = (duration - baseline - tail) / max(n_faults, 1)
    hold = min(15.0, round(0.3 * slot, 1))
    return baseline, slot, hold


# --- the run -------------------------------------------------------------------------------------


def account(
    rec: acc.Records,
    faults: list[Fault],
    load_end: float,
    timeout: float,
    ready: ReadyLog,
    t0: float,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per fault: window stats, recovery, /readyz; and the stats outside and during faults."""
    out, spans = [], []
    for i, f in enumerate(faults):
        nxt = faults[i + 1].started if i + 1 < len(faults) else load_end
        window = rec.select(acc.in_windows(rec.due, [(f.started, max(f.ended, f.started + 1e-9))]))
        rec_until = rec.select(rec.due < nxt)
        recovery = acc.recovery_time(rec_until, f.healed, RECOVERY_STREAK)
        span_end = f.healed + recovery if recovery is not None else nxt
        spans.append((f.started, max(span_end, f.ended)))
        out.append(
            {
                "fault": f.name,
                "injected": f.injected,
                "started_s": round(f.started - t0, 2),
                "held_s": round(f.healed - f.started, 2),
                "window_s": round(f.ended - f.started, 2),
                "recovery_s": None if recovery is None else round(recovery, 3),
                "worker_replaced_s": None
                if f.replaced is None
                else round(f.replaced - f.started, 3),
                "during": acc.window_stats(window, timeout),
                "until_recovered": acc.window_stats(
                    rec.select(acc.in_windows(rec.due, [spans[-1]])), timeout
                ),
                "readyz": ready.summary(f.started, max(span_end, f.ended)),
                **({"detail": f.detail} if f.detail else {}),
            }
        )
    during = acc.in_windows(rec.due, spans)
    return (
        out,
        acc.window_stats(rec.select(~during), timeout),
        acc.window_stats(rec.select(during), timeout),
    )


def scorer_log_summary(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    errors = [ln for ln in lines if "ERROR" in ln or "CRITICAL" in ln]
    distinct: list[str] = []
    for ln in errors:
        if ln[:200] not in distinct and len(distinct) < 8:
            distinct.append(ln[:200])
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback (most recent call last)" in ln for ln in lines),
        "error_lines": len(errors),
        "first_distinct_errors": distinct,
    }


def main() -> None:
    default_model = (
        "bert_wide" if importlib.util.find_spec("lightning_modules.demand") else "logistic"
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (>= 30)")
    ap.add_argument("--quick", action="store_true", help="about 60 s of load, for development")
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second, all kinds")
    ap.add_argument("--events-share", type=float, default=0.10, help="of all requests")
    ap.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY")
    ap.add_argument(
        "--model", choices=["bert_wide", "bert", "lightgbm", "logistic"], default=default_model
    )
    ap.add_argument("--model-dir", type=Path, help="keep the trained model here and reuse it")
    ap.add_argument("--timeout", type=float, default=2.0, help="per request, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--keep", type=Path, help="copy the scorer's log and the per-request records here"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "chaos" / "chaos.json")
    ap.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated, in order (default all: {','.join(FAULTS)}); empty: none",
    )
    args = ap.parse_args()
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(args.faults) - set(FAULTS))
    if unknown:
        sys.exit(f"error: unknown faults {unknown}; known: {', '.join(FAULTS)}")
    if args.quick:
        args.duration = 60.0
    if args.duration < 30:
        sys.exit("error: --duration must be at least 30 s (five faults need room)")

    from pricing import io as pio
    from pricing import schema as S
    from scorer.offer_log import export_offers
    from scorer.testing import RedisServer, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        sys.exit(
            "error: redis-server not found (apt-get install redis-server, or set REDIS_SERVER)"
        )
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "chaos",
        "model": args.model,
        "workers": args.workers,
        "rate_rps": args.rate,
        "events_share": args.events_share,
        "candidates": N_CANDIDATES,
        "timeout_s": args.timeout,
        "recovery_streak": RECOVERY_STREAK,
        "cores": os.cpu_count(),
        "loadavg_start": loadavg(),
        "provenance": bench_provenance("chaos", args),
    }
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = Path(tmp)
        disk = LogDisk(workdir / "offer-log")
        redis_srv = RedisServer(binary).start()
        sp = None
        ready: ReadyLog | None = None
        try:
            t = time.monotonic()
            home = args.model_dir or workdir
            home.mkdir(parents=True, exist_ok=True)
            model_dir, catalog, events = build_model(args.model, home, args.seed)
            uri, good, bad, cut = register_versions(
                model_dir, workdir, str(catalog[S.ITEM_ID].iloc[0])
            )
            result["model_prep_s"] = round(time.monotonic() - t, 1)
            result["registry"] = {"good_version": good, "bad_version": bad, "file_cut": cut}
            note(f"model {args.model} ready in {result['model_prep_s']} s (v{good}, v{bad} cut)")
            data_dir = workdir / "data"
            pio.write_table(events, data_dir, S.EVENTS)
            users = sorted(events[S.USER_ID].astype(str).unique().tolist())
            queries = sorted(
                events.loc[events[S.EVENT_TYPE] == S.SEARCH, S.QUERY].dropna().astype(str).unique()
            )
            stream_rps, stream_events = acc.stream_plan(args.rate, args.events_share)
            stream = workdir / "stream.jsonl"
            make_mix(
                stream, catalog, users, queries, 20_000, np.random.default_rng(0), stream_events
            )
            env = {
                "REDIS_URL": redis_srv.url,
                "MLFLOW_TRACKING_URI": uri,
                "PRICING_ARTIFACT_ROOT": str(workdir / "mlruns" / "artifacts"),
                "PRICING_REGISTERED_MODEL": REGISTERED,
                "PRICING_OFFER_LOG_DIR": str(disk.path),
                "PRICING_ADMIN_TOKEN": TOKEN,
                "PRICING_ALIAS_POLL_SECONDS": "1",
                "PRICING_BOOTSTRAP_DATA_DIR": str(data_dir),
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            sp = start_scorer(workdir, env, args.workers)
            note(f"scorer up on port {sp.port}, workers {sorted(worker_pids(sp.port))}")
            baseline, slot, hold = schedule(args.duration, len(args.faults))
            result["schedule"] = {
                "duration_s": args.duration,
                "baseline_s": baseline,
                "slot_s": round(slot, 2),
                "hold_s": hold,
                "stream_rps": round(stream_rps, 2),
                "stream_events_share": round(stream_events, 4),
            }
            cmd = [sys.executable, str(HERE / "_chaos_loadgen.py"), "--port", str(sp.port)]
            cmd += ["--stream", str(stream), "--stream-rate", str(stream_rps)]
            cmd += ["--duration", str(args.duration), "--timeout", str(args.timeout)]
            cmd += ["--seed", str(args.seed)]
            cmd += ["--out", str(workdir / "records.npz"), "--acks", str(workdir / "acks.json")]
            ready = ReadyLog(sp.port).start()
            gen = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            first = gen.stdout.readline() if gen.stdout is not None else b""
            if not first:
                raise RuntimeError(f"the load generator did not start ({gen.wait()})")
            t0 = float(json.loads(first)["start"])  # when its first request was due
            busy0 = machine_busy()
            injector = Injector(sp.port, sp.pid, redis_srv, disk, (good, bad))
            faults: list[Fault] = []
            for i, name in enumerate(args.faults):
                at = t0 + baseline + i * slot
                time.sleep(max(0.0, at - time.monotonic()))
                if gen.poll() is not None:
                    raise RuntimeError(
                        f"the load generator stopped early ({gen.returncode}): "
                        f"{gen.communicate()[0][-2000:]!r}"
                    )
                note(f"{name}: inject, hold {hold} s")
                faults.append(injector.run(name, hold, slot * 0.9))
                f = faults[-1]
                note(f"{name}: healed after {f.healed - f.started:.1f} s")
            out, _ = gen.communicate(timeout=args.duration + 120)
            busy1 = machine_busy()
            ready.stop()
            if gen.returncode != 0:
                raise RuntimeError(f"the load generator failed ({gen.returncode})")
            summary = json.loads(out)
            result["scorer_alive_at_end"] = sp.alive()
            result["workers_at_end"] = sorted(worker_pids(sp.port))
            if ready.polls:
                result["readyz_at_end"] = ready.summary(ready.polls[-1][0], float("inf"))
            sp.stop(timeout_s=30)
            result["scorer_log"] = scorer_log_summary(workdir / "scorer.log")

            d = np.load(workdir / "records.npz")
            rec = acc.Records.of(
                due=d["due"],
                lat=d["lat"],
                status=d["status"],
                kind=d["kind"],
                degraded=d["degraded"],
            )
            acks = json.loads((workdir / "acks.json").read_text())
            t = time.monotonic()
            reported = export_offers(disk.path)
            everything = export_offers(disk.path, include_pending=True)
            result["export_s"] = round(time.monotonic() - t, 1)
            result["export_rows"] = {"outcomes": len(reported), "with_pending": len(everything)}
            result["lost"] = acc.lost_acknowledgements(
                [tuple(q) for q in acks["quotes"]],
                [tuple(o) for o in acks["outcomes"]],
                everything[S.OFFER_ID].tolist(),
                dict(zip(reported[S.OFFER_ID], reported[S.PURCHASED].astype(int), strict=True)),
            )
            per_fault, outside, during = account(
                rec, faults, summary["end"], args.timeout, ready, t0
            )
            overall = acc.window_stats(rec, args.timeout)
            wall = summary["end"] - summary["start"]
            machine_cores = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9)
            result.update(
                {
                    "sent": overall["requests"],
                    "status_5xx": overall["status_5xx"],
                    "no_answer": overall["no_answer"],
                    "lost_quotes": result["lost"]["lost_quotes"],
                    "lost_outcomes": result["lost"]["lost_outcomes"],
                    "p99_outside_faults_ms": outside["p99_ms"],
                    "p99_during_faults_ms": during["p99_ms"],
                    "achieved_rps": round(overall["ok"] / wall, 1),
                    "faults": per_fault,
                    "outside_faults": outside,
                    "during_faults": during,
                    "overall": overall,
                    # per second from the load's start: [s, sent, ok, 5xx, no answer, degraded
                    # quotes, p99 ms]
                    "timeline_columns": [
                        "s",
                        "sent",
                        "ok",
                        "5xx",
                        "no_answer",
                        "degraded",
                        "p99_ms",
                    ],
                    "timeline": acc.timeline(rec, t0, args.timeout),
                    "load_generator": {
                        "what": "benchmarks/_chaos_loadgen.py: asyncio (uvloop), raw keep-alive "
                        f"connections (at most {summary['conns']}), its own process",
                        "cpu_s": round(summary["cpu_s"], 2),
                        "cpu_cores": round(summary["cpu_s"] / wall, 4),
                        "machine_busy_cores": round(machine_cores, 3),
                        # the generator's part of all CPU the machine used meanwhile
                        "share_of_machine_busy": round(
                            summary["cpu_s"] / wall / max(machine_cores, 1e-9), 4
                        ),
                        "cpu_us_per_request": round(summary["cpu_s"] / max(len(rec.due), 1) * 1e6),
                    },
                }
            )
        finally:
            if ready is not None:
                ready.stop()
            if sp is not None:
                sp.stop(timeout_s=30)
            redis_srv.stop()
            disk.close()
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for name in ("scorer.log", "records.npz", "acks.json"):
                    if (workdir / name).is_file():
                        shutil.copyfile(workdir / name, args.keep / name)
    result["loadavg_end"] = loadavg()
    result["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    args.out.write_text(text + "\n")
    print(json.dumps(result))
    note(
        f"sent {result['sent']}, 5xx {result['status_5xx']}, no answer {result['no_answer']}, "
        f"lost quotes {result['lost_quotes']}, lost outcomes {result['lost_outcomes']}; "
        f"p99 outside {result['p99_outside_faults_ms']} ms, during {result['p99_during_faults_ms']} ms"
    )
    for f in result["faults"]:
        dur = f["during"]
        note(
            f"  {f['fault']}: recovery {f['recovery_s']} s, degraded {dur['degraded_share']}, "
            f"failed {dur['failed_share']}, 5xx {dur['status_5xx']}"
        )


if __name__ == "__main__":
    main()
