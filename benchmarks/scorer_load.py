"""Scorer capacity under open-loop load, against the naive design in the same run; freshness; hot swap.

What runs: a throwaway redis-server, and the scorer as `pricing serve` runs it (uvicorn, `--workers`
processes on one port, REDIS_URL set, the store hydrated from a simulated market's events, the
offer log written to the OS before each reply). A load generator in its own process
(`benchmarks/_loadgen.py`: prebuilt requests on raw sockets, one epoll loop, its own CPU reported)
sends a fixed mix, 90% POST /v1/quote with 50 candidates and 10% POST /v1/events, at fixed rates
stepped up a ladder. Latency counts from each request's scheduled time; a failed or timed-out
request counts at the timeout.

- Capacity (strict, first try only): a step passes a limit when its achieved rate is within 2% of
  its offered rate and its p99 is <= the limit over all requests and over quotes alone. The
  capacity is the highest offered rate R such that the first run at R and the first run at every
  lower rate tried all pass; None when the first run at the lowest rate fails. Only first runs
  count. A first run that fails where capacity would stop is run again (the machine is shared:
  up to three times while other processes take a real share of the cores), but a retry is
  reported beside it (`retries` of that step, with its own figures) and never counts: a rate that
  fails its first run caps the capacity below it even if its retry, or a higher rate, passes.
  The ladder stops at the first rate whose first run fails the loosest limit (nothing above can
  count). Then, per limit, one refining step halfway between the capacity and the next rate
  tried (whose first run failed) is itself a first run at a new rate: every lower rate tried
  passed, so it counts exactly when it passes. Every reported figure of a rate (`p50_ms`,
  `p99_ms`, `p99_at_500rps_ms`, `naive_*`, `common_rate`, the profile at capacity) is its first
  run's; `goal_p99_10ms_at_500rps` holds only when the capacity at 10 ms is >= 500 req/s. If the
  naive design never meets 10 ms, both are compared at p99 <= 100 ms, by the same rule.
- Naive design: the strongest alternative without online user state (`naive_scorer.NaivePricer`):
  the user tower over the stored history on every quote, item vectors precomputed, same stack.
  Measured the same way, right after, on the same Redis and machine; the ratio is of capacities,
  plus p50/p99 of both (first runs) at the highest rate both tried within both capacities.
- Freshness (exploration off): under load at min(target, capacity), time from sending POST
  /v1/events to the first quote whose `state_generation` includes the event's generation; a
  trial with no such quote within `--freshness-timeout` is a miss.
- Hot swap: every worker reloads the model (POST /admin/reload, until each writer slot has) under
  load at the same rate; failures and p99 over the requests due from the first reload sent to the
  last one done.
- Profile: per-stage wall time per quote from every worker's /metrics (`scorer_quote_stage_*`),
  CPU per request of the scorer processes, Redis and the generator from /proc, the offer log's
  quotes per batched write, and an in-process cProfile of the quote path.

    python benchmarks/scorer_load.py [--model bert|bert_wide|bert_wide_ucat|lightgbm|toy]
                                     [--workers 2] [--quick]
                                     [--model-dir DIR]  (reuse a trained model between runs)

Prints progress on stderr and one JSON line on stdout. Everything is on loopback and bounded.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _http import RawClient, children, loadavg, machine_busy, process_cpu  # noqa: E402
from _provenance import bench_provenance  # noqa: E402

N_CANDIDATES = 50
EVENTS_SHARE = 0.10
P99_GOAL_MS = 10.0
P99_LOOSE_MS = 100.0
TARGET_RPS = 500.0
ACHIEVED_SHARE = 0.98
OTHERS_BUSY = 0.3  # cores other processes used during a step, above which it is run again
LADDER = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000)
TOKEN = "bench-admin-token"


def note(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- the model and its data ----------------------------------------------------------------------


def build_model(kind: str, workdir: Path, seed: int) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(BENCH_MODEL spec, catalog, events to hydrate the store with) for `kind`."""
    from pricing import schema as S

    if kind == "toy":
        from scorer.testing import toy_catalog

        catalog = toy_catalog(200)
        rng = np.random.default_rng(seed)
        n = 8000
        users = rng.integers(0, 800, n)
        search = rng.random(n) < 0.2
        events = pd.DataFrame(
            {
                S.EVENT_ID: [f"e{k}" for k in range(n)],
                S.TS: pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), "s"),
                S.USER_ID: [f"u{u}" for u in users],
                S.SESSION_ID: "s0",
                S.EVENT_TYPE: np.where(search, S.SEARCH, S.VIEW),
                S.ITEM_ID: [None if s else f"i{k % 200}" for k, s in enumerate(search)],
                S.QUERY: [rng.choice(["cheap tv", "premium tv"]) if s else None for s in search],
                S.PRICE: np.where(search, np.nan, 20.0),
            }
        )
        return "toy", catalog, events

    from mlops.models import MANIFEST, PricingData, save_model
    from pricing import features as F
    from pricing.simulator import SimConfig, simulate

    market = simulate(SimConfig(n_users=800, n_items=200, n_days=14, seed=seed))
    t = market.tables
    data = PricingData(offers=t[S.OFFERS], items=t[S.ITEMS], events=t[S.EVENTS])
    path = workdir / f"model-{kind}-{seed}"
    if (path / MANIFEST).is_file():  # written last: a finished save
        note(f"reusing the model in {path}")
        return str(path), t[S.ITEMS], t[S.EVENTS]
    if kind == "lightgbm":
        from mlops.models import LightGBMDemand

        data.features = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
        model: Any = LightGBMDemand({"n_estimators": 100}, seed=seed)
    elif kind in ("bert", "bert_wide", "bert_wide_ucat"):
        from lightning_modules.demand import BertDemand

        # tiny-CPU training: a few dozen steps of the small towers over frozen MiniLM vectors;
        # bert_wide adds the tabular features to the head (computed per quote from the history);
        # bert_wide_ucat also reads the price sensitivity per shopper and category (its price head)
        wide = kind != "bert"
        if wide:
            data.features = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
        model = BertDemand(
            {
                "text_encoder": "minilm",
                "max_epochs": 1,
                "max_steps": 60,
                "batch_size": 128,
                "wide": wide,
                **({"price_head": "user_category"} if kind == "bert_wide_ucat" else {}),
            },
            seed=seed,
        )
    else:
        raise ValueError(f"unknown model {kind!r}")
    t0 = time.perf_counter()
    model.fit(data)
    note(f"trained {kind} in {time.perf_counter() - t0:.1f}s")
    save_model(model, path)
    return str(path), t[S.ITEMS], t[S.EVENTS]


def make_mix(
    path: Path,
    catalog: pd.DataFrame,
    users: list[str],
    queries: list[str],
    n: int,
    rng: np.random.Generator,
    events_share: float = EVENTS_SHARE,
) -> None:
    """The request mix, in send order: events (a priced view or a search) spread evenly at
    `events_share` (every tenth request at the default), quotes of `N_CANDIDATES` otherwise."""
    from pricing import schema as S

    ids = catalog[S.ITEM_ID].astype(str).to_numpy()
    lp = catalog[S.LIST_PRICE].to_numpy(float)
    with open(path, "w") as f:
        for k in range(n):
            user = users[rng.integers(len(users))] if rng.random() < 0.95 else f"new{k}"
            if int((k + 1) * events_share) > int(k * events_share):
                if queries and rng.random() < 0.3:
                    ev: dict[str, Any] = {"event_type": "search", "query": str(rng.choice(queries))}
                else:
                    j = int(rng.integers(len(ids)))
                    price = round(float(lp[j] * rng.uniform(0.7, 1.3)), 2)
                    ev = {"event_type": "view", "item_id": str(ids[j]), "price": price}
                rec = {"path": "/v1/events", "body": {"user_id": user, "events": [ev]}}
            else:
                items = rng.choice(ids, N_CANDIDATES, replace=False).tolist()
                body = {"user_id": user, "items": items, "session_id": f"s{rng.integers(3)}"}
                rec = {"path": "/v1/quote", "body": body}
            f.write(json.dumps(rec) + "\n")


# --- processes -----------------------------------------------------------------------------------


class Server:
    """`uvicorn naive_scorer:app_factory --workers N`, the real or the naive scorer."""

    def __init__(
        self, workdir: Path, spec: str, redis_url: str, naive: bool, workers: int, data_dir: Path
    ) -> None:
        from scorer.process import start_scorer

        self.workers = workers
        self.naive = naive
        self.log_dir = workdir / f"offers-{'naive' if naive else 'fast'}"
        env = {
            "BENCH_MODEL": spec,
            "BENCH_NAIVE": "1" if naive else "0",
            "REDIS_URL": redis_url,
            "PRICING_OFFER_LOG_DIR": str(self.log_dir),
            "PRICING_ADMIN_TOKEN": TOKEN,
            "PRICING_ALIAS_POLL_SECONDS": "0",
            "PRICING_EXPLORATION": "0",  # freshness must see a change when the state changes
            "PRICING_BOOTSTRAP_DATA_DIR": str(data_dir),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.sp = start_scorer(
            "naive_scorer:app_factory",
            env=env,
            workers=workers,
            cwd=workdir,
            app_dir=HERE,
            log_path=workdir / f"server-{'naive' if naive else 'fast'}.log",
            uvicorn_args=("--no-access-log", "--log-level", "warning"),
            ready_timeout_s=None,  # ready means every worker answering: `_wait_ready`
        )
        self.port, self.proc = self.sp.port, self.sp.proc
        self.slots = self._wait_ready()
        self.pids = [self.proc.pid, *children(self.proc.pid)]

    def _wait_ready(self, timeout: float = 300.0) -> dict[str, str]:
        """Every worker answering (distinct writer slots seen on /metrics): slot -> pid."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"scorer exited ({self.proc.returncode}); see {self.sp.log_path}"
                )
            seen.update(self.workers_seen(tries=4))
            if len(seen) >= self.workers:
                return seen
            time.sleep(0.2)
        raise RuntimeError(f"only {len(seen)} of {self.workers} workers ready in {timeout} s")

    def workers_seen(self, tries: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for _ in range(tries):
            c = RawClient(self.port, timeout=2)
            try:
                status, _ = c.get("/readyz")
                if status != 200:
                    continue
                _, text = c.get("/metrics")
                for line in str(text).splitlines():
                    if line.startswith("scorer_worker{"):
                        labels = dict(
                            kv.split("=")
                            for kv in line[line.index("{") + 1 : line.index("}")].split(",")
                        )
                        out[labels["offer_log_writer"].strip('"')] = labels["pid"].strip('"')
            except OSError:
                pass
            finally:
                c.close()
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        """Each worker's /metrics samples of the quote pipeline: slot -> {sample: value}."""
        found: dict[str, dict[str, float]] = {}
        for _ in range(20 * self.workers):
            c = RawClient(self.port, timeout=5)
            try:
                _, text = c.get("/metrics")
            except OSError:
                continue
            finally:
                c.close()
            samples: dict[str, float] = {}
            slot = None
            for line in str(text).splitlines():
                if line.startswith(
                    ("scorer_quote_stage", "scorer_quotes_priced", "scorer_offer_log_b")
                ):
                    name, value = line.rsplit(" ", 1)
                    samples[name] = float(value)
                elif line.startswith("scorer_worker{"):
                    slot = line.split('offer_log_writer="')[1].split('"')[0]
            if slot is not None:
                found[slot] = samples
            if len(found) >= self.workers:
                break
        return found

    def cpu(self) -> float:
        return sum(process_cpu(p) for p in self.pids)

    def stop(self) -> None:
        self.sp.stop(timeout_s=30)


def loadgen(
    port: int,
    mix: Path,
    rate: float = 0,
    duration: float = 5.0,
    closed: int = 0,
    dump: Path | None = None,
    background: bool = False,
    timeout: float = 1.0,
) -> Any:
    cmd = [sys.executable, str(HERE / "_loadgen.py"), "--port", str(port), "--requests", str(mix)]
    cmd += ["--duration", str(duration), "--timeout", str(timeout)]
    cmd += ["--closed", str(closed)] if closed else ["--rate", str(rate)]
    if dump is not None:
        cmd += ["--dump", str(dump)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    if background:
        return proc
    out, _ = proc.communicate(timeout=duration + 10 * timeout + 120)
    return json.loads(out)


# --- measurements --------------------------------------------------------------------------------


def run_step(server: Server, redis_pid: int, mix: Path, rate: float, duration: float) -> dict:
    """One fixed-rate run with the CPU each party used during it and the stage profile."""
    before = server.metrics()
    cpu0, r0, m0 = server.cpu(), process_cpu(redis_pid), machine_busy()
    r = loadgen(server.port, mix, rate=rate, duration=duration)
    cpu1, r1, m1 = server.cpu(), process_cpu(redis_pid), machine_busy()
    profile = stage_profile(before, server.metrics())
    r["stages_us_per_quote"] = {k: v["us_per_quote"] for k, v in profile["stages"].items()}
    r["tower_runs_per_quote"] = {
        k: profile["stages"].get(k, {}).get("calls_per_quote") for k in ("user_state", "refresh")
    }
    r["offer_log_quotes_per_write"] = profile["offer_log_quotes_per_write"]
    wall = max(m1[1] - m0[1], 1e-9)
    scorer, redis = cpu1 - cpu0, r1 - r0
    gen = float(r["loadgen_cpu_s"])
    machine = m1[0] - m0[0]
    r["cpu_cores"] = {
        "scorer": round(scorer / wall, 3),
        "redis": round(redis / wall, 3),
        "loadgen": round(gen / wall, 3),
        "others": round(max(machine - scorer - redis - gen, 0.0) / wall, 3),
    }
    r["scorer_cpu_us_per_request"] = round(scorer / max(r["sent"], 1) * 1e6, 1)
    r["redis_cpu_us_per_request"] = round(redis / max(r["sent"], 1) * 1e6, 1)
    return r


def passes(step: dict, limit_ms: float) -> bool:
    """Whether one run meets `limit_ms`: achieved >= 98% of offered, p99 (all, quotes) <= limit."""
    quote_p99 = step.get("by_path", {}).get("/v1/quote", {}).get("p99_ms", step["p99_ms"])
    return (
        step["achieved_rps"] >= ACHIEVED_SHARE * step["offered_rps"]
        and step["p99_ms"] <= limit_ms
        and quote_p99 <= limit_ms
    )


def first_tries(steps: list[dict]) -> dict[float, dict]:
    """Offered rate -> the first run at it, over `steps` in the order they ran.

    A step's own `retries` are never looked at, and a flat record marked `retry` is skipped.
    """
    first: dict[float, dict] = {}
    for s in steps:
        if "retry" not in s:
            first.setdefault(float(s["offered_rps"]), s)
    return dict(sorted(first.items()))


def capacity(steps: list[dict], limit_ms: float) -> dict | None:
    """The first run at the capacity under `limit_ms` (the strict rule: module docstring).

    The highest rate whose first run passes and the first run at every lower rate tried passes
    too; retries never count. None when the first run at the lowest rate fails (or no steps).
    """
    best = None
    for s in first_tries(steps).values():
        if not passes(s, limit_ms):
            break
        best = s
    return best


def sustains(steps: list[dict], rate: float, limit_ms: float) -> bool:
    """Whether `rate` was tried and it and every lower rate tried passed on the first run."""
    cap = capacity(steps, limit_ms)
    return rate in first_tries(steps) and cap is not None and cap["offered_rps"] >= rate


def brief(s: dict) -> dict:
    keys = ("offered_rps", "achieved_rps", "p50_ms", "p99_ms", "failed", "timeouts")
    out = {k: s[k] for k in keys}
    out["quote_p99_ms"] = s["by_path"].get("/v1/quote", {}).get("p99_ms")
    out["event_p99_ms"] = s["by_path"].get("/v1/events", {}).get("p99_ms")
    out["cpu_cores"] = s["cpu_cores"]
    out["scorer_cpu_us_per_request"] = s["scorer_cpu_us_per_request"]
    out["redis_cpu_us_per_request"] = s["redis_cpu_us_per_request"]
    out["loadgen_cpu_us_per_request"] = s["loadgen_cpu_us_per_request"]
    for k in ("stages_us_per_quote", "tower_runs_per_quote", "offer_log_quotes_per_write"):
        out[k] = s.get(k)
    return out


def _passes_limits(s: dict) -> dict[str, bool]:
    return {f"{lim:g}ms": passes(s, lim) for lim in (P99_GOAL_MS, P99_LOOSE_MS)}


def _verdict(s: dict) -> dict:
    keys = ("achieved_rps", "p50_ms", "p99_ms", "failed")
    return {k: s[k] for k in keys} | {"passes": _passes_limits(s)}


def step_record(s: dict) -> dict:
    """A step as reported: its first run's figures and verdicts; its retries beside, not counted."""
    out = brief(s) | {k: s[k] for k in ("refine",) if k in s} | {"passes": _passes_limits(s)}
    if s.get("retries"):
        out["retries"] = [
            brief(r) | {"retry": r.get("retry"), "passes": _passes_limits(r)} for r in s["retries"]
        ]
    return out


def _short(s: dict) -> dict:
    keys = ("offered_rps", "achieved_rps", "p50_ms", "p99_ms", "failed")
    return {**{k: s[k] for k in keys}, "cpu_cores": s["cpu_cores"]}


def step_up(
    server: Server, redis_pid: int, mix: Path, duration: float, limits: tuple[float, ...]
) -> list[dict]:
    """The ladder until a first run fails the loosest limit, then one refining step per limit.

    One record per rate, its first run; retries (never counted) under its `retries`.
    """
    steps: list[dict] = []
    loose = max(limits)
    for rate in LADDER:
        s = run_step(server, redis_pid, mix, rate, duration)
        note(f"{'naive' if server.naive else 'fast'} {json.dumps(_short(s))}")
        # Where capacity stops under a limit (first runs below all passed, this one failed),
        # a retry tells a reader whether it was noise; it is reported, never counted. The machine
        # is shared: one retry, up to three while other processes took a real share of the cores
        # (their share is in every step's cpu_cores.others), after a pause.
        stops = [
            lim
            for lim in limits
            if not passes(s, lim) and all(passes(x, lim) for x in first_tries(steps).values())
        ]
        retries: list[dict] = []
        last = s
        while (
            stops
            and not passes(last, min(stops))
            and (not retries or (len(retries) < 3 and last["cpu_cores"]["others"] > OTHERS_BUSY))
        ):
            if retries:
                time.sleep(5.0)
            last = run_step(server, redis_pid, mix, rate, duration)
            last["retry"] = len(retries) + 1
            retries.append(last)
            note(f"  retry (not counted) {json.dumps(_short(last))}")
        if retries:
            s["retries"] = retries
        steps.append(s)
        if not passes(s, loose):
            break
        time.sleep(0.5)
    for limit in limits:
        cap = capacity(steps, limit)
        low = cap["offered_rps"] if cap else 0.0
        above = sorted(r for r in first_tries(steps) if r > low)
        if not above:
            continue
        mid = round((low + above[0]) / 2 / 25) * 25
        if mid <= low or mid >= above[0] or mid <= 0:
            continue
        s = run_step(server, redis_pid, mix, mid, duration)
        s["refine"] = limit
        steps.append(s)
        note(f"  refine@{limit:g}ms {json.dumps(_short(s))}")
    steps.sort(key=lambda x: x["offered_rps"])
    return steps


def freshness(
    server: Server,
    mix: Path,
    rate: float,
    items: list[str],
    users: list[str],
    queries: list[str],
    trials: int,
    give_up_s: float,
) -> dict[str, Any]:
    """Event -> first quote whose user state includes it, over `trials` users, under load."""
    bg = loadgen(server.port, mix, rate=rate, duration=3600, background=True)
    rng = np.random.default_rng(2)
    times, misses, degraded, attempts = [], 0, 0, []
    # Several connections, picked at random for events and quotes: with several workers the quote
    # often lands on another process than the event did (the state then comes through Redis).
    conns = [RawClient(server.port, timeout=5) for _ in range(4)]
    try:
        time.sleep(1.0)  # let the background load settle
        for k in range(trials):
            user = users[k % len(users)]
            cands = rng.choice(items, N_CANDIDATES, replace=False).tolist()
            ev: dict[str, Any]
            if queries and k % 2:
                ev = {"event_type": "search", "query": str(rng.choice(queries))}
            else:
                ev = {"event_type": "view", "item_id": cands[0], "price": 9.99}
            ec, qc = conns[int(rng.integers(4))], conns[int(rng.integers(4))]
            t0 = time.perf_counter()
            status, body = ec.post("/v1/events", {"user_id": user, "events": [ev]})
            if status != 200:
                misses += 1
                continue
            generation = int(body["generation"])
            n = 0
            while True:
                n += 1
                status, q = qc.post("/v1/quote", {"user_id": user, "items": cands})
                done = time.perf_counter()
                if status == 200 and q.get("degraded"):
                    degraded += 1
                if status == 200 and (q.get("state_generation") or -1) >= generation:
                    times.append((done - t0) * 1e3)
                    attempts.append(n)
                    break
                if done - t0 > give_up_s:
                    misses += 1
                    break
    finally:
        for c in conns:
            c.close()
        bg.send_signal(signal.SIGTERM)
        bg.wait()
    t = np.asarray(times)
    return {
        "freshness_p50_ms": round(float(np.percentile(t, 50)), 2) if len(t) else None,
        "freshness_p99_ms": round(float(np.percentile(t, 99)), 2) if len(t) else None,
        "freshness_max_ms": round(float(t.max()), 2) if len(t) else None,
        "freshness_trials": trials,
        "freshness_misses": misses,
        "freshness_degraded_quotes": degraded,
        "freshness_quotes_per_trial_mean": round(float(np.mean(attempts)), 2) if attempts else None,
        "freshness_load_rps": rate,
        "freshness_give_up_ms": give_up_s * 1e3,
    }


def reload_all(server: Server) -> tuple[int, int, float, float]:
    """POST /admin/reload until every worker has reloaded: (reloads, failed calls, t0, t1)."""
    done: set[str] = set()
    reloads = failed = 0
    t0 = time.monotonic()
    for _ in range(8 * server.workers):
        c = RawClient(server.port, timeout=300)
        try:
            status, _ = c.post("/admin/reload", {}, headers={"Authorization": f"Bearer {TOKEN}"})
            reloads += 1
            if status != 200:
                failed += 1
                continue
            _, ready = c.get("/readyz")
            done.add(str(ready.get("offer_log_writer")))
        except OSError:
            failed += 1
        finally:
            c.close()
        if len(done) >= server.workers:
            break
    return reloads, failed, t0, time.monotonic()


def swap(server: Server, mix: Path, rate: float, workdir: Path) -> dict[str, Any]:
    """Every worker reloads its model under load; failures and latency over the same window."""
    dump = workdir / "swap.npy"
    bg = loadgen(server.port, mix, rate=rate, duration=12.0, dump=dump, background=True)
    time.sleep(2.0)
    reloads, failed_calls, t0, t1 = reload_all(server)
    out, _ = bg.communicate(timeout=300)
    summary = json.loads(out)
    d = np.load(dump)
    due, lat, status = d[:, 0], d[:, 1], d[:, 2]
    ok = status == 200
    window = (due >= t0) & (due <= t1 + 0.5)
    lat_ms = np.where(ok, lat, summary["timeout_ms"] / 1e3) * 1e3
    return {
        "swap_rate_rps": rate,
        "swap_reloads": reloads,
        "swap_reload_calls_failed": failed_calls,
        "swap_window_s": round(t1 + 0.5 - t0, 2),
        "swap_requests": int(window.sum()),
        "swap_failed_requests": int((~ok & window).sum()),
        "swap_p99_ms": round(float(np.percentile(lat_ms[window], 99)), 2) if window.any() else None,
        "swap_run_failed_requests": int((~ok).sum()),
        "swap_run_requests": int(len(ok)),
    }


def stage_profile(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Mean wall time per quote of each stage between two /metrics snapshots, all workers summed.

    Wall time, not CPU: "offer_log" includes waiting for the batch's turn on the event loop, and
    the store stages include waiting for Redis.
    """
    total: dict[str, float] = {}
    for slot, samples in after.items():
        base = before.get(slot, {})
        for name, value in samples.items():
            total[name] = total.get(name, 0.0) + value - base.get(name, 0.0)
    quotes = total.get("scorer_quotes_priced_total", 0.0)
    stages: dict[str, Any] = {}
    for name, value in total.items():
        if name.startswith("scorer_quote_stage_seconds_total"):
            stage = name.split('stage="')[1].split('"')[0]
            calls = total.get(f'scorer_quote_stage_calls_total{{stage="{stage}"}}', 0.0)
            stages[stage] = {
                "us_per_call": round(value / calls * 1e6, 1) if calls else None,
                "calls_per_quote": round(calls / quotes, 4) if quotes else None,
                "us_per_quote": round(value / quotes * 1e6, 1) if quotes else None,
            }
    batches = total.get("scorer_offer_log_batches_total", 0.0)
    batched = total.get("scorer_offer_log_batched_quotes_total", 0.0)
    per_worker = {
        slot: int(
            s.get("scorer_quotes_priced_total", 0)
            - before.get(slot, {}).get("scorer_quotes_priced_total", 0)
        )
        for slot, s in sorted(after.items())
    }
    return {
        "workers_scraped": len(after),
        "quotes": int(quotes),
        "quotes_per_worker": per_worker,
        "stages": stages,
        "offer_log_quotes_per_write": round(batched / batches, 3) if batches else None,
    }


def profile_in_process(spec: str, redis_url: str, mix: Path, workdir: Path) -> dict[str, Any]:
    """cProfile of the quote path (`Pricer.quote`, the blocking twin of the served one), in process."""
    os.environ.update({"BENCH_MODEL": spec, "BENCH_NAIVE": "0"})
    from naive_scorer import _load

    from mlops.registry import ModelHandle
    from scorer.main import limit_intra_op_threads
    from scorer.offer_log import OfferLog
    from scorer.redis_store import RedisUserStore
    from scorer.serving import Pricer, QuoteBook, build_serving_model

    limit_intra_op_threads()
    sm = build_serving_model(ModelHandle("bench", "1", _load(spec), None, {}), exploration=0.0)
    store = RedisUserStore.from_url(redis_url)
    log = OfferLog(workdir / "offers-profile")
    pricer = Pricer(store, log, np.random.default_rng(0), QuoteBook())
    quotes = [json.loads(x)["body"] for x in mix.read_text().splitlines() if '"/v1/quote"' in x]
    body = quotes[:300]
    for b in body:
        pricer.quote(sm, b["user_id"], b["items"], b["session_id"])  # warm: every state cached
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for b in body:
        pricer.quote(sm, b["user_id"], b["items"], b["session_id"])
    prof.disable()
    wall = time.perf_counter() - t0
    log.close()
    store.close()
    stats = pstats.Stats(prof)
    n = len(body)
    rows = [
        (f"{Path(k[0]).name}:{k[2]}", v[3] / n * 1e6, v[2] / n * 1e6)
        for k, v in stats.stats.items()  # type: ignore[attr-defined]
    ]
    top_cum = sorted(rows, key=lambda r: -r[1])
    top_own = sorted(rows, key=lambda r: -r[2])
    keep = [r for r in top_cum if not r[0].startswith(("~", "<"))][:20]
    return {
        "quotes": n,
        "us_per_quote_under_cprofile": round(wall / n * 1e6, 1),
        "serving_paths": sm.accel.notes if sm.accel is not None else {},
        "cumulative_us_per_quote": {name: round(cum, 1) for name, cum, _ in keep},
        "own_time_us_per_quote": {name: round(own, 1) for name, _, own in top_own[:15]},
    }


def measure(
    name: str,
    server: Server,
    redis_pid: int,
    mix: Path,
    args: argparse.Namespace,
    limits: tuple[float, ...],
) -> dict[str, Any]:
    warm = loadgen(server.port, mix, closed=4, duration=args.warmup, timeout=10.0)
    note(
        f"{name} warm-up (closed loop, 4 clients): {warm['achieved_rps']} req/s, p50 {warm['p50_ms']} ms"
    )
    before = server.metrics()
    steps = step_up(server, redis_pid, mix, args.duration, limits)
    profile = stage_profile(before, server.metrics())  # the rate steps only: steady state
    return {"steps": steps, "warmup_rps": warm["achieved_rps"], "stage_profile": profile}


def main() -> None:
    # the default experiment's model (configs/default.yaml); toy without the torch extras
    default_model = "bert_wide" if importlib.util.find_spec("lightning_modules.demand") else "toy"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        choices=["bert", "bert_wide", "bert_wide_ucat", "lightgbm", "toy"],
        default=default_model,
    )
    ap.add_argument("--workers", type=int, default=2, help="scorer processes on the port")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per rate step")
    ap.add_argument("--warmup", type=float, default=8.0, help="closed-loop warm-up seconds")
    ap.add_argument("--freshness-trials", type=int, default=200)
    ap.add_argument("--freshness-timeout", type=float, default=1.0, help="a miss after this (s)")
    ap.add_argument("--model-dir", type=Path, help="keep the trained model here and reuse it")
    ap.add_argument("--quick", action="store_true", help="shorter steps and fewer trials")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.freshness_trials = 3.0, 4.0, 60

    from pricing import io as pio
    from pricing import schema as S
    from scorer.testing import RedisServer, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        sys.exit("redis-server not found (apt-get install redis-server, or set REDIS_SERVER)")
    started = time.monotonic()
    result: dict[str, Any] = {
        "model": args.model,
        "candidates": N_CANDIDATES,
        "workers": args.workers,
        "loadavg_start": loadavg(),
        "cores": os.cpu_count(),
        "provenance": bench_provenance("scorer_load", args),
    }
    note(f"load average at start: {result['loadavg_start']}")
    with (
        tempfile.TemporaryDirectory(prefix="scorer-load-") as tmp,
        RedisServer(binary) as redis_srv,
    ):
        workdir = Path(tmp)
        model_home = args.model_dir or workdir
        model_home.mkdir(parents=True, exist_ok=True)
        spec, catalog, events = build_model(args.model, model_home, args.seed)
        data_dir = workdir / "data"
        pio.write_table(events, data_dir, S.EVENTS)
        users = sorted(events[S.USER_ID].astype(str).unique().tolist())
        queries = sorted(
            events.loc[events[S.EVENT_TYPE] == S.SEARCH, S.QUERY].dropna().astype(str).unique()
        )
        traffic, fresh_users = users[: len(users) // 2], users[len(users) // 2 :]
        mix = workdir / "mix.jsonl"
        make_mix(mix, catalog, traffic, queries, 4000, np.random.default_rng(args.seed))
        items = catalog[S.ITEM_ID].astype(str).tolist()
        redis_pid = redis_srv.proc.pid

        fast_srv = Server(workdir, spec, redis_srv.url, False, args.workers, data_dir)
        try:
            fast = measure("fast", fast_srv, redis_pid, mix, args, (P99_GOAL_MS, P99_LOOSE_MS))
            cap = capacity(fast["steps"], P99_GOAL_MS)
            load_rps = min(TARGET_RPS, cap["offered_rps"]) if cap else LADDER[0]
            fast.update(
                freshness(
                    fast_srv,
                    mix,
                    load_rps,
                    items,
                    fresh_users,
                    queries,
                    args.freshness_trials,
                    args.freshness_timeout,
                )
            )
            note(
                f"freshness {json.dumps({k: v for k, v in fast.items() if k.startswith('fresh')})}"
            )
            fast.update(swap(fast_srv, mix, load_rps, workdir))
            note(f"swap {json.dumps({k: v for k, v in fast.items() if k.startswith('swap')})}")
        finally:
            fast_srv.stop()
        fast["in_process_profile"] = profile_in_process(spec, redis_srv.url, mix, workdir)

        naive_srv = Server(workdir, spec, redis_srv.url, True, args.workers, data_dir)
        try:
            naive = measure("naive", naive_srv, redis_pid, mix, args, (P99_GOAL_MS, P99_LOOSE_MS))
        finally:
            naive_srv.stop()
        shutil.rmtree(workdir / "offers-profile", ignore_errors=True)

    result["loadavg_end"] = loadavg()
    result["wall_s"] = round(time.monotonic() - started, 1)
    fast_cap = capacity(fast["steps"], P99_GOAL_MS)
    naive_cap = capacity(naive["steps"], P99_GOAL_MS)
    limit = P99_GOAL_MS
    if naive_cap is None:
        limit = P99_LOOSE_MS
        naive_cap = capacity(naive["steps"], P99_LOOSE_MS)
    fast_cmp = capacity(fast["steps"], limit)
    # the highest rate both tried (first runs) within both capacities at the comparison limit
    both = [
        r
        for r in sorted(set(first_tries(fast["steps"])) & set(first_tries(naive["steps"])))
        if sustains(fast["steps"], r, limit) and sustains(naive["steps"], r, limit)
    ]
    common: dict[str, Any] | None = None
    if both:
        rate = both[-1]
        f, n = first_tries(fast["steps"])[rate], first_tries(naive["steps"])[rate]
        common = {
            "rate_rps": rate,
            "fast": {"p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"]},
            "naive": {"p50_ms": n["p50_ms"], "p99_ms": n["p99_ms"]},
        }
    at_target = first_tries(fast["steps"]).get(TARGET_RPS)
    best = fast_cap or {}
    result.update(
        {
            "p50_ms": best.get("p50_ms"),
            "p99_ms": best.get("p99_ms"),
            "rps": best.get("offered_rps"),
            "achieved_rps": best.get("achieved_rps"),
            "naive_rps": naive_cap["offered_rps"] if naive_cap else None,
            "naive_p50_ms": naive_cap["p50_ms"] if naive_cap else None,
            "naive_p99_ms": naive_cap["p99_ms"] if naive_cap else None,
            "comparison_p99_limit_ms": limit,
            "speedup_vs_naive": round(fast_cmp["offered_rps"] / naive_cap["offered_rps"], 2)
            if fast_cmp and naive_cap
            else None,
            "freshness_p99_ms": fast.get("freshness_p99_ms"),
            "freshness_misses": fast.get("freshness_misses"),
            "swap_failed_requests": fast.get("swap_failed_requests"),
            "failed_requests": best.get("failed"),
            "events_share": best.get("events_share"),
            "loadgen_cpu_cores": best.get("loadgen_cpu_cores"),
            "goal_p99_10ms_at_500rps": sustains(fast["steps"], TARGET_RPS, P99_GOAL_MS),
            "p99_at_500rps_ms": at_target["p99_ms"] if at_target else None,
            "capacity_rule": "first run only: the highest rate whose first run and the first runs "
            "at every lower rate tried pass; retries are reported under each step's `retries`, "
            "never counted",
            # rates whose first run was retried: the first run (counted) beside its retries (not)
            "retries": {
                name: [
                    {
                        "offered_rps": s["offered_rps"],
                        "first_try": _verdict(s),
                        "retries": [_verdict(r) for r in s["retries"]],
                    }
                    for s in d["steps"]
                    if s.get("retries")
                ]
                for name, d in (("fast", fast), ("naive", naive))
            },
            "common_rate": common,
            # where the time goes at the capacity rate: wall time per quote of each stage (all
            # workers; awaited stages include the loop serving others), CPU per request by process
            "profile_at_capacity": {
                name: {
                    k: s.get(k)
                    for k in (
                        "offered_rps",
                        "stages_us_per_quote",
                        "tower_runs_per_quote",
                        "offer_log_quotes_per_write",
                        "scorer_cpu_us_per_request",
                        "redis_cpu_us_per_request",
                        "loadgen_cpu_us_per_request",
                        "cpu_cores",
                    )
                }
                for name, s in (("fast", fast_cap or {}), ("naive", naive_cap or {}))
            },
            "fast": {
                **{k: v for k, v in fast.items() if k != "steps"},
                "capacity_10ms_rps": fast_cap["offered_rps"] if fast_cap else None,
                "capacity_100ms_rps": (capacity(fast["steps"], P99_LOOSE_MS) or {}).get(
                    "offered_rps"
                ),
                "steps": [step_record(s) for s in fast["steps"]],
            },
            "naive": {
                **{k: v for k, v in naive.items() if k != "steps"},
                "design": "user tower over the stored history on every quote (one Redis read of "
                "events + last prices), item and query vectors precomputed, same app/workers/Redis",
                "capacity_10ms_rps": (capacity(naive["steps"], P99_GOAL_MS) or {}).get(
                    "offered_rps"
                ),
                "capacity_100ms_rps": (capacity(naive["steps"], P99_LOOSE_MS) or {}).get(
                    "offered_rps"
                ),
                "steps": [step_record(s) for s in naive["steps"]],
            },
            "load_generator": "benchmarks/_loadgen.py: open loop, prebuilt requests, raw sockets, "
            "one epoll loop, 32 keep-alive connections, 1 s timeout (failures count at it)",
            "server": f"uvicorn --workers {args.workers} (uvloop + httptools), FastAPI app with "
            "a fast path for well-formed quote/event bodies, Redis store",
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
