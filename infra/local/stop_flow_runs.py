"""Stop the flow runs of `make up`'s worker and mark them Cancelled (called by infra/local/down.sh).

Prefect's process worker starts each flow run (`python -m prefect.engine`) in a session of its own,
so stopping the worker leaves the run's processes behind and the run stuck in Running. This finds
them by their environment (`PRICING_STACK`, which up.sh sets to its run folder for the worker, and
the `PREFECT__FLOW_RUN_ID` Prefect sets for each run: another stack's runs are left alone), ends each one's process group (SIGTERM, then SIGKILL), then sets every run of
the work pool that is still pending, running or cancelling to Cancelled through the Prefect API.
Standard library only: it must run quickly while the stack goes down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

ACTIVE = ["PENDING", "RUNNING", "CANCELLING"]


def flow_run_processes(stack: str) -> dict[int, str]:
    """{pid: flow run id} of the processes started for flow runs by the worker of `stack`."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            raw = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        env = dict(e.split("=", 1) for e in raw.decode(errors="replace").split("\0") if "=" in e)
        run_id = env.get("PREFECT__FLOW_RUN_ID")
        if run_id and env.get("PRICING_STACK") == stack:
            found[int(proc.name)] = run_id
    return found


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_groups(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM the process groups of `pids`, SIGKILL what is left after `grace_s`; the groups."""
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgid(0))  # never our own group (down.sh's)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive_group(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return sorted(groups)


def _api(api_url: str, path: str, body: dict) -> object:
    req = urllib.request.Request(
        f"{api_url}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def active_runs(api_url: str, pool: str) -> list[str]:
    """Ids of the pool's flow runs that are pending, running or cancelling."""
    runs = _api(
        api_url,
        "/flow_runs/filter",
        {
            "work_pools": {"name": {"any_": [pool]}},
            "flow_runs": {"state": {"type": {"any_": ACTIVE}}},
            "limit": 200,
        },
    )
    assert isinstance(runs, list)
    return [r["id"] for r in runs]


def mark_cancelled(api_url: str, run_id: str, message: str) -> None:
    _api(
        api_url,
        f"/flow_runs/{run_id}/set_state",
        {"state": {"type": "CANCELLED", "name": "Cancelled", "message": message}, "force": True},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", required=True, help="up.sh's PRICING_STACK (its run folder)")
    ap.add_argument("--api-url", help="the Prefect API (http://127.0.0.1:4200/api); omit: no API")
    ap.add_argument("--pool", default="pricing-local")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    args = ap.parse_args(argv)

    procs = flow_run_processes(args.stack)
    if procs:
        groups = stop_groups(list(procs), args.grace)
        print(f"stopped flow-run process groups {groups} (runs {sorted(set(procs.values()))})")
    if not args.api_url:
        return 0
    ids = set(procs.values())
    try:
        ids |= set(active_runs(args.api_url, args.pool))
        for run_id in sorted(ids):
            mark_cancelled(args.api_url, run_id, "stopped by `make down`")
            print(f"flow run {run_id}: Cancelled")
    except (urllib.error.URLError, OSError) as exc:
        if ids:
            print(f"could not mark flow runs {sorted(ids)} Cancelled: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
