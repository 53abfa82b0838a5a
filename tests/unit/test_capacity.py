"""The scorer load benchmark's strict capacity rule and its load generator's accounting.

Pure functions on constructed records: no servers, no sockets. `benchmarks/` is not a package;
its modules are imported from that folder, as the scripts import each other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _loadgen  # noqa: E402
import scorer_load  # noqa: E402
from _provenance import bench_params, bench_provenance, commit_label  # noqa: E402
from scorer_load import capacity, first_tries, passes, sustains  # noqa: E402

from mlops.provenance import config_hash  # noqa: E402

GOAL = scorer_load.P99_GOAL_MS


def step(rate: float, p99: float, *, achieved: float | None = None, **extra: Any) -> dict:
    """A step record as `run_step` returns it (the fields the rule reads)."""
    return {
        "offered_rps": float(rate),
        "achieved_rps": float(rate if achieved is None else achieved),
        "p50_ms": round(p99 / 3, 3),
        "p99_ms": p99,
        "by_path": {"/v1/quote": {"p99_ms": p99}, "/v1/events": {"p99_ms": p99 / 2}},
        **extra,
    }


def rates(steps: list[dict], limit: float = GOAL) -> float | None:
    cap = capacity(steps, limit)
    return None if cap is None else cap["offered_rps"]


# --- passes ---------------------------------------------------------------------------------------


def test_passes_needs_the_rate_and_both_p99s() -> None:
    assert passes(step(500, 9.9), GOAL)
    assert passes(step(500, 10.0), GOAL)  # at the limit is within it
    assert not passes(step(500, 10.01), GOAL)
    assert passes(step(500, 5.0, achieved=490.0), GOAL)  # 98% of offered
    assert not passes(step(500, 5.0, achieved=489.9), GOAL)
    slow_quotes = step(500, 5.0)
    slow_quotes["by_path"]["/v1/quote"]["p99_ms"] = 12.0  # overall fine, quotes alone not
    assert not passes(slow_quotes, GOAL)


# --- capacity: first tries only -------------------------------------------------------------------


def test_a_retry_that_passes_after_a_failed_first_try_does_not_count() -> None:
    s500 = step(500, 14.0, retries=[step(500, 6.0, retry=1)])
    steps = [step(300, 5.0), step(400, 6.0), s500]
    assert passes(s500["retries"][0], GOAL)  # the retry alone would pass
    assert rates(steps) == 400.0
    # the same as a flat list, the retry after its first try and marked `retry`
    flat = [step(300, 5.0), step(400, 6.0), step(500, 14.0), step(500, 6.0, retry=1)]
    assert rates(flat) == 400.0
    assert not sustains(steps, 500, GOAL)


def test_a_failure_at_a_lower_rate_caps_capacity_even_if_higher_rates_pass() -> None:
    steps = [step(100, 3.0), step(200, 11.0), step(300, 5.0), step(400, 6.0), step(500, 7.0)]
    assert rates(steps) == 100.0
    assert not sustains(steps, 500, GOAL)
    # a failed achieved rate caps it too, whatever the latency
    steps[1] = step(200, 3.0, achieved=150.0)
    assert rates(steps) == 100.0


def test_capacity_is_the_highest_rate_with_every_lower_first_try_passing() -> None:
    steps = [step(50, 2.0), step(100, 2.5), step(200, 4.0), step(300, 9.0), step(400, 30.0)]
    assert rates(steps) == 300.0
    assert rates(steps, 100.0) == 400.0
    # in run order, not rate order: a refining step between 300 and 400, run last, counts
    assert rates([*steps, step(350, 9.5, refine=GOAL)]) == 350.0
    assert rates([*steps, step(350, 10.5, refine=GOAL)]) == 300.0
    assert sustains(steps, 300, GOAL) and sustains(steps, 200, GOAL)
    assert not sustains(steps, 250, GOAL)  # never tried


def test_capacity_is_none_when_the_lowest_first_try_fails() -> None:
    steps = [step(50, 12.0, retries=[step(50, 2.0, retry=1)]), step(100, 3.0), step(200, 4.0)]
    assert capacity(steps, GOAL) is None
    assert capacity([], GOAL) is None
    assert rates(steps, 100.0) == 200.0


def test_reported_figures_are_the_first_tries() -> None:
    first = step(500, 9.0, achieved=495.0)
    first["p50_ms"] = 4.2
    first["retries"] = [step(500, 3.0, achieved=500.0, retry=1)]  # better, and not counted
    steps = [step(400, 5.0), first]
    cap = capacity(steps, GOAL)
    assert cap is first
    assert (cap["p50_ms"], cap["p99_ms"], cap["achieved_rps"]) == (4.2, 9.0, 495.0)
    # the first run at a rate wins over a later flat record at the same rate
    later = step(500, 2.0, achieved=500.0)
    assert first_tries([step(400, 5.0), first, later])[500.0] is first


def test_first_tries_ignore_nested_and_marked_retries() -> None:
    steps = [step(100, 20.0, retries=[step(100, 1.0)]), step(100, 1.0, retry=1), step(200, 1.0)]
    ft = first_tries(steps)
    assert list(ft) == [100.0, 200.0]
    assert ft[100.0]["p99_ms"] == 20.0


# --- step_up: the ladder with fake runs -----------------------------------------------------------


class _FakeServer:
    naive = False


def _ladder(monkeypatch: pytest.MonkeyPatch, plan: dict[float, list[float]]) -> list[dict]:
    """`step_up` where the k-th run at a rate gets p99 plan[rate][k] (the last one repeats)."""
    runs: dict[float, int] = {}

    def fake_run(server: Any, redis_pid: int, mix: Path, rate: float, duration: float) -> dict:
        k = runs.get(rate, 0)
        runs[rate] = k + 1
        p99s = plan.get(rate, [500.0])
        s = step(rate, p99s[min(k, len(p99s) - 1)])
        s["cpu_cores"], s["failed"] = {"others": 0.0}, 0
        return s

    monkeypatch.setattr(scorer_load, "run_step", fake_run)
    monkeypatch.setattr(scorer_load.time, "sleep", lambda s: None)
    monkeypatch.setattr(scorer_load, "LADDER", (100, 200, 300, 400, 500))
    return scorer_load.step_up(
        _FakeServer(),  # type: ignore[arg-type]
        0,
        Path("mix"),
        1.0,
        (GOAL, 100.0),
    )


def test_step_up_reports_retries_beside_the_first_try(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 fails its first try and passes its retry; 400 passes; 500 fails even the loose limit
    plan = {100: [2.0], 200: [3.0], 300: [15.0, 4.0], 400: [5.0], 500: [150.0], 250: [6.0]}
    steps = _ladder(monkeypatch, plan)
    ft = first_tries(steps)
    assert ft[300.0]["p99_ms"] == 15.0
    assert [r["p99_ms"] for r in ft[300.0]["retries"]] == [4.0]
    assert all("retry" not in s for s in steps)  # retries only nested
    # the refining step at 250 (halfway from 200 to 300) counts: it and everything below passed
    assert ft[250.0]["refine"] == GOAL
    assert rates(steps) == 250.0
    assert rates(steps, 100.0) == 400.0
    assert max(ft) == 500.0  # stopped at the first loose failure
    assert not sustains(steps, 400, GOAL)


def test_step_up_retries_only_where_capacity_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    # 200 fails 10 ms first: retried; 300 and 400 fail 10 ms too but capacity already stopped
    plan = {100: [2.0], 200: [12.0, 12.0], 300: [20.0], 400: [30.0], 500: [40.0], 150: [11.0]}
    steps = _ladder(monkeypatch, plan)
    retried = {s["offered_rps"] for s in steps if s.get("retries")}
    assert retried == {200.0}
    assert rates(steps) == 100.0  # the refine at 150 failed
    assert rates(steps, 100.0) == 500.0


# --- the load generator's accounting --------------------------------------------------------------

PATHS = ["/v1/quote", "/v1/events"]


def _account(lat_s: list[float], status: list[int], kind: list[int] | None = None, **kw: Any):
    n = len(lat_s)
    due = np.arange(n) * 0.01  # 100 req/s from start = 0
    return _loadgen.account(
        due,
        np.asarray(lat_s, float),
        np.asarray(status, np.int16),
        np.asarray(kind if kind is not None else [0] * n, np.int8),
        PATHS,
        timeout=1.0,
        start=0.0,
        end=due[-1] + 1.0,
        rate=100.0,
        **kw,
    )


def test_failures_and_timeouts_count_at_the_timeout_in_percentiles() -> None:
    # 98 OK at 5 ms, 2 answered fast (2 ms) with 503: the p99 is the timeout, not 5 ms
    out = _account([0.005] * 98 + [0.002] * 2, [200] * 98 + [503] * 2)
    assert out["p99_ms"] == 1000.0
    assert out["p50_ms"] == 5.0
    assert (out["ok"], out["failed"], out["timeouts"]) == (98, 2, 0)
    assert out["status_counts"] == {"200": 98, "503": 2}
    # never answered (NaN latency, status 0) and cut off (status 0): timeouts, at the timeout
    out = _account([0.005] * 98 + [float("nan"), 0.003], [200] * 98 + [0, 0])
    assert (out["failed"], out["timeouts"]) == (2, 2)
    assert out["p99_ms"] == 1000.0
    assert out["max_ms"] == 1000.0


def test_p99_on_a_constructed_distribution() -> None:
    # latencies 1..100 ms: numpy's linear interpolation puts p99 at 1 + 0.99 * 99 = 99.01
    out = _account([(k + 1) / 1000 for k in range(100)], [200] * 100)
    assert out["p99_ms"] == pytest.approx(99.01)
    assert out["p50_ms"] == pytest.approx(50.5)
    # 990 at 1 ms and 10 timeouts: p99 falls between them, 1 + 0.01 * (1000 - 1)
    out = _account([0.001] * 990 + [float("nan")] * 10, [200] * 990 + [0] * 10)
    assert out["p99_ms"] == pytest.approx(10.99)


def test_achieved_rate_counts_only_completed_ok_requests() -> None:
    # 100 due at 0.00 .. 0.99 s, each answered in 5 ms; every tenth a 500: 90 OK over 0.995 s
    status = [500 if k % 10 == 3 else 200 for k in range(100)]
    out = _account([0.005] * 100, status)
    assert out["achieved_rps"] == round(90 / 0.995, 1)
    assert out["sent"] == 100
    # a late timeout does not stretch the span (only OK answers end it)
    out = _account([0.005] * 99 + [float("nan")], [200] * 99 + [0])
    assert out["achieved_rps"] == round(99 / (0.98 + 0.005), 1)
    # none OK: zero over the whole run
    out = _account([0.005] * 10, [503] * 10)
    assert out["achieved_rps"] == 0.0


def test_events_share_by_path_and_generator_cpu() -> None:
    kind = [1 if k % 10 == 9 else 0 for k in range(100)]
    lat = [0.004 if k == 0 else 0.002 for k in kind]
    status = [503 if k == 1 and j == 19 else 200 for j, k in enumerate(kind)]
    out = _account(lat, status, kind, cpu=0.5, send_lag=np.full(100, 0.0002))
    assert out["events_share"] == 0.1
    assert out["by_path"]["/v1/events"]["sent"] == 10
    assert out["by_path"]["/v1/events"]["failed"] == 1
    assert out["by_path"]["/v1/quote"]["sent"] == 90
    assert out["by_path"]["/v1/quote"]["p99_ms"] == 4.0
    assert out["by_path"]["/v1/events"]["p99_ms"] > 900.0  # its failure, at the timeout
    assert out["loadgen_cpu_cores"] == round(0.5 / 1.99, 4)
    assert out["loadgen_cpu_us_per_request"] == 5000.0
    assert out["send_lag_p99_ms"] == 0.2
    assert (out["mode"], out["offered_rps"]) == ("open", 100.0)
    no_events = _loadgen.account(
        np.zeros(3),
        np.full(3, 0.001),
        np.full(3, 200, np.int16),
        np.zeros(3, np.int8),
        ["/v1/quote"],
        timeout=1.0,
        start=0.0,
        end=1.0,
    )
    assert no_events["events_share"] == 0.0
    assert (no_events["mode"], no_events["offered_rps"]) == ("closed", None)


# --- provenance -----------------------------------------------------------------------------------


def test_bench_provenance_hashes_the_parameters() -> None:
    args = argparse.Namespace(model="toy", quick=True, model_dir=Path("/tmp/m"), child=None)
    block = bench_provenance("scorer_load", args, drop=("child",))
    assert block["config"] == "scorer_load"
    assert block["params"] == {"model": "toy", "model_dir": "/tmp/m", "quick": True}
    assert block["config_hash"] == config_hash(bench_params(args, drop=("child",)))
    assert block["config_hash"] != bench_provenance("scorer_load", {"model": "bert"})["config_hash"]
    assert {"commit", "dirty", "command", "machine", "date"} <= set(block)
    assert block["machine"]["cores"] >= 1
    assert commit_label({"commit": "abc", "dirty": True}) == "abc-dirty"
    assert commit_label({"commit": None}) == "unknown"


@pytest.mark.parametrize(
    "name",
    [
        "scorer_load",
        "serving_steps",
        "simulator_throughput",
        "validation_throughput",
        "optimizer_throughput",
        "train_throughput",
        "pipeline_scale",
        "bert_streaming",
    ],
)
def test_every_benchmark_reports_provenance(name: str) -> None:
    source = (BENCH / f"{name}.py").read_text()
    assert f'bench_provenance("{name}", ' in source
    assert '"provenance": ' in source or 'out["provenance"] = ' in source
