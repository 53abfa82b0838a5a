"""Scorer latency and throughput under load, against the naive scorer; freshness; hot swap.

Starts a throwaway redis-server and the scorer under uvicorn (what `pricing serve` runs, with
REDIS_URL set and the user store hydrated from a simulated market's events), then drives
`POST /v1/quote` with 50 candidates from a load generator in a separate process
(`benchmarks/_loadgen.py`, raw asyncio sockets) at constant arrival rates stepped up until p99
passes 10 ms. Then: freshness (POST /v1/events, then quote until the quote reflects it), a model
reload under load, a profile of one quote, and the same load against the naive scorer
(`benchmarks/naive_scorer.py`: BERT over the history and the 50 item texts per request).

    python benchmarks/scorer_load.py [--model bert|lightgbm|toy] [--quick]

Prints one JSON object. Every loop is bounded in count and time; everything is on loopback.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
N_CANDIDATES = 50
P99_GOAL_MS = 10.0


# --- the model and its data ----------------------------------------------------------------------


def build_model(kind: str, workdir: Path, seed: int) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(BENCH_MODEL spec, catalog, events to hydrate the store with) for `kind`."""
    from pricing import schema as S

    if kind == "toy":
        from scorer.testing import toy_catalog

        catalog = toy_catalog(200)
        rng = np.random.default_rng(seed)
        n = 4000
        users = rng.integers(0, 400, n)
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

    from mlops.models import PricingData, save_model
    from pricing import features as F
    from pricing.simulator import SimConfig, simulate

    market = simulate(SimConfig(n_users=400, n_items=200, n_days=14, seed=seed))
    t = market.tables
    data = PricingData(offers=t[S.OFFERS], items=t[S.ITEMS], events=t[S.EVENTS])
    if kind == "lightgbm":
        from mlops.models import LightGBMDemand

        data.features = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
        model: Any = LightGBMDemand({"n_estimators": 100}, seed=seed)
    elif kind == "bert":
        from lightning_modules.demand import BertDemand

        # tiny-CPU training: a few hundred steps of the small towers over frozen MiniLM vectors
        model = BertDemand(
            {"text_encoder": "minilm", "max_epochs": 1, "max_steps": 60, "batch_size": 128},
            seed=seed,
        )
    else:
        raise ValueError(f"unknown model {kind!r}")
    t0 = time.perf_counter()
    model.fit(data)
    print(f"[bench] trained {kind} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    path = workdir / "model"
    save_model(model, path)
    return str(path), t[S.ITEMS], t[S.EVENTS]


# --- processes -----------------------------------------------------------------------------------


def start_scorer(
    workdir: Path, model_spec: str, redis_url: str, naive: bool, port: int, data_dir: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BENCH_MODEL": model_spec,
        "BENCH_NAIVE": "1" if naive else "0",
        "REDIS_URL": redis_url,
        "PRICING_OFFER_LOG_DIR": str(workdir / f"offers-{port}"),
        "PRICING_ADMIN_TOKEN": "bench",
        "PRICING_ALIAS_POLL_SECONDS": "0",
        "PRICING_BOOTSTRAP_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "uvicorn", "naive_scorer:app_factory", "--factory"]
    cmd += ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"scorer exited ({proc.returncode}):\n{err[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("scorer not ready within 180 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loadgen(
    port: int,
    bodies: Path,
    rate: float = 0,
    duration: float = 4.0,
    closed: int = 0,
    dump: Path | None = None,
    background: bool = False,
    timeout: float = 10.0,
) -> Any:
    cmd = [sys.executable, str(HERE / "_loadgen.py"), "--port", str(port), "--bodies", str(bodies)]
    cmd += ["--duration", str(duration), "--timeout", str(timeout)]
    cmd += ["--closed", str(closed)] if closed else ["--rate", str(rate)]
    if dump is not None:
        cmd += ["--dump", str(dump)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    if background:
        return proc
    out, _ = proc.communicate(timeout=duration + 10 * timeout + 60)
    return json.loads(out)


class _SkipFast(Exception):
    """--only-naive: skip the fast scorer's measurements."""


# --- the measurements ----------------------------------------------------------------------------


def make_bodies(
    path: Path, catalog: pd.DataFrame, users: list[str], n: int, rng: np.random.Generator
) -> None:
    from pricing import schema as S

    ids = catalog[S.ITEM_ID].astype(str).to_numpy()
    with open(path, "w") as f:
        for k in range(n):
            # mostly known users (hydrated), some strangers; a few sessions per user
            user = users[rng.integers(len(users))] if rng.random() < 0.9 else f"new{k}"
            items = rng.choice(ids, N_CANDIDATES, replace=False).tolist()
            body = {"user_id": user, "items": items, "session_id": f"s{rng.integers(3)}"}
            f.write(json.dumps(body) + "\n")


def step_up(port: int, bodies: Path, rates: list[float], duration: float) -> tuple[dict, list]:
    """The highest offered rate whose p99 stays within the goal with no failure."""
    steps, best = [], None
    for rate in rates:
        r = loadgen(port, bodies, rate=rate, duration=duration)
        steps.append(r)
        print(f"[bench] {json.dumps(r)}", file=sys.stderr)
        if r["failed"] or r["p99_ms"] > P99_GOAL_MS or r["achieved_rps"] < 0.95 * rate:
            break
        best = r
    return best or steps[0], steps


def freshness(url: str, catalog_ids: list[str], query: str, trials: int) -> dict[str, float]:
    """ms from sending POST /v1/events to the first quote that reflects it, over `trials` users."""
    rng = np.random.default_rng(1)
    times, misses = [], 0
    with httpx.Client(base_url=url, timeout=10) as c:
        for k in range(trials):
            user = f"fresh{k}-{rng.integers(1 << 30)}"
            items = rng.choice(catalog_ids, N_CANDIDATES, replace=False).tolist()
            ev = {"event_type": "view", "item_id": items[0], "price": 10.0}
            c.post("/v1/events", json={"user_id": user, "events": [ev]})
            q = {"user_id": user, "items": items}
            before = {
                i["item_id"]: i["purchase_probability"]
                for i in c.post("/v1/quote", json=q).json()["items"]
            }
            t0 = time.perf_counter()
            c.post(
                "/v1/events",
                json={"user_id": user, "events": [{"event_type": "search", "query": query}] * 3},
            )
            for _ in range(200):  # bounded: a quote that never reflects the event is a miss
                body = c.post("/v1/quote", json=q).json()
                got = {i["item_id"]: i["purchase_probability"] for i in body["items"]}
                if any(abs(got[i] - p) > 1e-12 for i, p in before.items()):
                    times.append((time.perf_counter() - t0) * 1e3)
                    break
            else:
                misses += 1
    t = np.asarray(times)
    return {
        "freshness_p50_ms": round(float(np.percentile(t, 50)), 2) if len(t) else float("nan"),
        "freshness_p99_ms": round(float(np.percentile(t, 99)), 2) if len(t) else float("nan"),
        "freshness_trials": trials,
        "freshness_misses": misses,
    }


def swap(port: int, bodies: Path, rate: float, workdir: Path) -> dict[str, float]:
    """A model reload in the middle of a load run: failures and p99 while it happens."""
    dump = workdir / "swap.npy"
    proc = loadgen(port, bodies, rate=rate, duration=6.0, dump=dump, background=True)
    time.sleep(2.0)
    t0 = time.monotonic()
    r = httpx.post(
        f"http://127.0.0.1:{port}/admin/reload",
        headers={"Authorization": "Bearer bench"},
        timeout=120,
    )
    t1 = time.monotonic()
    out, _ = proc.communicate(timeout=180)
    summary = json.loads(out)
    d = np.load(dump)
    due, lat, ok = d[:, 0], d[:, 1], d[:, 2] > 0
    during = (due >= t0) & (
        due <= t1 + 0.5
    )  # requests due while the new model loaded and swapped in
    return {
        "swap_reload_status": r.status_code,
        "swap_reload_s": round(t1 - t0, 3),
        "swap_rate_rps": rate,
        "swap_requests": int(during.sum()),
        "swap_failed_requests": int((~ok).sum()),
        "swap_p99_ms": round(float(np.percentile(lat[during] * 1e3, 99)), 2)
        if during.any()
        else float("nan"),
        "swap_run_p99_ms": summary["p99_ms"],
    }


def profile_quote(
    model_spec: str, redis_url: str, bodies: Path, workdir: Path, data_dir: Path
) -> dict[str, Any]:
    """Where one quote's time goes: cProfile and perf_counter sections over the quote path, in process."""
    os.environ.update({"BENCH_MODEL": model_spec, "BENCH_NAIVE": "0", "BENCH_TORCH_THREADS": "1"})
    from fastapi.testclient import TestClient
    from naive_scorer import app_factory

    from mlops.settings import Settings
    from scorer import app as app_mod
    from scorer.serving import Pricer

    settings = Settings(
        offer_log_dir=workdir / "offers-profile",
        redis_url=redis_url,
        alias_poll_seconds=0,
    )  # no bootstrap: the store is already hydrated (re-hydrating would mark every state stale)
    orig = app_mod.get_settings
    app_mod.get_settings = lambda: settings  # type: ignore[assignment]
    try:
        app = app_factory()
    finally:
        app_mod.get_settings = orig  # type: ignore[assignment]
    lines = [json.loads(x) for x in bodies.read_text().splitlines()[:300]]
    sections: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sections.setdefault(name, []).append(time.perf_counter() - t)

        return wrapper

    with TestClient(app) as c:
        rt = app.state.runtime
        pricer: Pricer = rt.pricer
        sm = rt.current
        for b in lines[:50]:
            c.post("/v1/quote", json=b)  # warm caches
        store, olog, model = pricer.store, pricer.offer_log, sm.model
        store.get_state = timed("store.get_state (redis)", store.get_state)
        store.get_last_prices = timed("store.get_last_prices (redis)", store.get_last_prices)
        store.set_last_price = timed("store.set_last_price (redis)", store.set_last_price)
        olog.append_quotes = timed("offer_log.append_quotes (write+fsync)", olog.append_quotes)
        object.__setattr__(
            model, "demand", timed("model.demand (head over 50 items)", model.demand)
        )
        pricer_quote = pricer.quote
        pricer.quote = timed("pricer.quote (total)", pricer_quote)
        total = []
        for b in lines[50:300]:
            t = time.perf_counter()
            c.post("/v1/quote", json=b)
            total.append(time.perf_counter() - t)
        prof = cProfile.Profile()
        prof.enable()
        for b in lines[50:300]:
            pricer_quote(sm, b["user_id"], b["items"], b["session_id"])
        prof.disable()
    stats = pstats.Stats(prof)
    n = len(lines[50:300])
    top = sorted(
        ((f"{Path(k[0]).name}:{k[2]}", v[3] / n * 1e6) for k, v in stats.stats.items()),  # type: ignore[attr-defined]
        key=lambda x: -x[1],
    )
    keep = [(name, us) for name, us in top if not name.startswith(("~", "<"))][:18]
    out = {name: round(float(np.median(v)) * 1e6, 1) for name, v in sections.items()}
    out["in-process request via TestClient (total)"] = round(float(np.median(total)) * 1e6, 1)
    return {
        "sections_median_us": out,
        "cprofile_cumulative_us_per_quote": {k: round(v, 1) for k, v in keep},
    }


def main() -> None:
    default_model = "bert" if importlib.util.find_spec("lightning_modules.demand") else "toy"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["bert", "lightgbm", "toy"], default=default_model)
    ap.add_argument("--rates", default="200,300,400,500,600,700,800,1000,1200")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per rate step")
    ap.add_argument("--freshness-trials", type=int, default=200)
    ap.add_argument("--naive-duration", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="shorter steps and fewer trials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-naive", action="store_true", help="measure the naive scorer alone")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.freshness_trials, args.naive_duration = 2.0, 50, 20.0

    from pricing import io as pio
    from pricing import schema as S
    from scorer.testing import RedisServer, free_port, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        sys.exit("redis-server not found (apt-get install redis-server, or set REDIS_SERVER)")
    result: dict[str, Any] = {"model": args.model, "candidates": N_CANDIDATES}
    with (
        tempfile.TemporaryDirectory(prefix="scorer-load-") as tmp,
        RedisServer(binary) as redis_srv,
    ):
        workdir = Path(tmp)
        spec, catalog, events = build_model(args.model, workdir, args.seed)
        data_dir = workdir / "data"
        pio.write_table(events, data_dir, S.EVENTS)
        users = sorted(events[S.USER_ID].astype(str).unique().tolist())
        rng = np.random.default_rng(args.seed)
        bodies = workdir / "bodies.jsonl"
        # 500 returning users: the steady state the design targets (user vectors cached, refreshed
        # off the request path when events arrive). The warm-up pass is where each user's first
        # quote pays one user-tower pass; its latency is reported as `warmup_p50_ms`.
        make_bodies(bodies, catalog, users[:500], 2000, rng)
        queries = events.loc[events[S.EVENT_TYPE] == S.SEARCH, S.QUERY].dropna().astype(str)
        cheap = [q for q in queries.unique() if "cheap" in q.lower()]
        query = cheap[0] if cheap else (queries.iloc[0] if len(queries) else "cheap")

        port = free_port()
        proc = start_scorer(workdir, spec, redis_srv.url, naive=False, port=port, data_dir=data_dir)
        if args.only_naive:
            stop(proc)
        try:
            if args.only_naive:
                raise _SkipFast
            warm = loadgen(port, bodies, closed=4, duration=20.0)  # every user's state cached
            result["warmup_p50_ms"] = warm["p50_ms"]
            best, steps = step_up(
                port, bodies, [float(r) for r in args.rates.split(",")], args.duration
            )
            result.update(
                p50_ms=best["p50_ms"],
                p99_ms=best["p99_ms"],
                rps=best["achieved_rps"],
                rps_offered=best["offered_rps"],
                steps=[
                    {k: s[k] for k in ("offered_rps", "achieved_rps", "p50_ms", "p99_ms", "failed")}
                    for s in steps
                ],
            )
            bg_rate = max(50.0, 0.5 * best["offered_rps"])
            bg = loadgen(port, bodies, rate=bg_rate, duration=3600, background=True)
            try:
                fresh = freshness(
                    f"http://127.0.0.1:{port}",
                    catalog[S.ITEM_ID].astype(str).tolist(),
                    query,
                    args.freshness_trials,
                )
            finally:
                bg.kill()
                bg.wait()
            result.update(fresh, freshness_background_rps=bg_rate, freshness_query=query)
            result.update(swap(port, bodies, bg_rate, workdir))
        except _SkipFast:
            pass
        finally:
            stop(proc)
        if not args.only_naive:
            result["profile"] = profile_quote(spec, redis_srv.url, bodies, workdir, data_dir)

        nport = free_port()
        proc = start_scorer(workdir, spec, redis_srv.url, naive=True, port=nport, data_dir=data_dir)
        try:
            # One naive request re-encodes 50 item texts and the history with BERT: seconds each,
            # so requests get a long timeout, and one client saturates the CPU.
            loadgen(nport, bodies, closed=1, duration=2.0, timeout=300.0)
            naive = loadgen(nport, bodies, closed=1, duration=args.naive_duration, timeout=300.0)
        finally:
            stop(proc)
        result.update(
            naive_rps=naive["achieved_rps"],
            naive_p50_ms=naive["p50_ms"],
            naive_p99_ms=naive["p99_ms"],
            naive_mode="closed loop, 1 client (its saturation throughput, at any latency)",
        )
        if "rps" in result and naive["achieved_rps"] > 0:
            result["speedup_vs_naive"] = round(result["rps"] / naive["achieved_rps"], 1)
        elif "rps" in result:  # not one naive request finished in the window: a lower bound only
            result["speedup_vs_naive"] = None
            result["naive_note"] = "no naive request completed in --naive-duration; raise it"
    fast = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    result["server"] = (
        "uvicorn 1 worker, " + (" + ".join(fast) or "asyncio + h11") + ", Redis store"
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
