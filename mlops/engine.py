"""Which engine runs the pipeline's data steps: in-process pandas, or Dask partition by partition.

- `local`: every table in this process as pandas frames: the fastest for data that fits.
- `dask`: events and offers stay on disk as Parquet partitions; validation, features and the
  evaluation sample run partition by partition on a Dask cluster, so no process holds a whole table.
  The cluster is the scheduler at `PRICING_DASK_ADDRESS` when set, else a `LocalCluster` of
  `workers` processes started for the run.
- `auto`: `dask` when the offers table holds more than `AUTO_DASK_OFFERS` rows, else `local`.

Prefect runs the flow on the same cluster through prefect-dask's `DaskTaskRunner` (`task_runner`);
the steps reach it with `client()` (prefect-dask's `get_dask_client` inside a run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pricing import io as pio
from pricing import schema as S

if TYPE_CHECKING:
    from distributed import Client

Engine = Literal["local", "dask"]
ENGINES = ("local", "dask", "auto")
ADDRESS_ENV = "PRICING_DASK_ADDRESS"
# Above this many offers `auto` picks Dask: the in-process path peaks near 2.1 GB per million
# offers (benchmarks/pipeline_scale.py), so 2M offers stay well inside a laptop's memory.
AUTO_DASK_OFFERS = 2_000_000
DEFAULT_WORKERS = 2
# A LocalCluster worker's memory limit: Dask spills to disk past 60% and pauses at 80% of it.
WORKER_MEMORY = "3GiB"


def offer_rows(data_dir: str | Path) -> int | None:
    """Rows of the offers table from Parquet footers alone (None for CSV: unknown without reading)."""
    path = pio.find_table_file(data_dir, S.OFFERS)
    if path is None:
        return None
    import pyarrow.parquet as pq

    total = 0
    for part in pio.table_parts(path):
        if part.suffix != ".parquet":
            return None
        try:
            total += pq.ParquetFile(part).metadata.num_rows
        except Exception:  # noqa: BLE001 - unreadable: validation names the file
            return None
    return total


def resolve(engine: str, data_dir: str | Path | None) -> Engine:
    """The engine to use: `engine` itself, or for `auto` the one that fits the data's size."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine  # type: ignore[return-value]
    rows = offer_rows(data_dir) if data_dir is not None else None
    return "dask" if rows is not None and rows > AUTO_DASK_OFFERS else "local"


def address() -> str | None:
    """The Dask scheduler to use (`PRICING_DASK_ADDRESS`, also read from `.env`), or None for a
    LocalCluster."""
    from mlops.settings import get_settings

    return os.environ.get(ADDRESS_ENV) or get_settings().dask_address or None


@contextlib.contextmanager
def cluster(workers: int | None = None) -> Iterator[str]:
    """The scheduler address of the cluster a run uses: `PRICING_DASK_ADDRESS`, or a LocalCluster of
    `workers` single-threaded processes (closed on exit). A client to it is this process's default
    for the duration, so `client()` finds it outside a Prefect run too."""
    from distributed import Client, LocalCluster

    given = address()
    if given:
        with Client(given) as c:
            yield c.scheduler.address
        return
    n = workers or DEFAULT_WORKERS
    environ = dict(os.environ)
    with LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        memory_limit=WORKER_MEMORY,
        dashboard_address=None,
        silence_logs=40,  # errors only: the run's own log says what happens
    ) as local:
        # Starting the workers leaves their settings in this process's environment (one OpenMP,
        # MKL and OpenBLAS thread, a fixed PYTHONHASHSEED): LightGBM and every process started
        # later would inherit them. The workers have them; this process gets its own back.
        _restore_environ(environ)
        with Client(local) as c:
            yield c.scheduler.address


def _restore_environ(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


def task_runner(scheduler: str) -> Any:
    """prefect-dask's task runner on the cluster at `scheduler`."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=scheduler)


@contextlib.contextmanager
def client() -> Iterator[Client]:
    """A client of the run's cluster: prefect-dask's `get_dask_client` inside a flow or task run on
    a `DaskTaskRunner`, else the process's default client (`cluster`)."""
    from distributed import get_client
    from prefect.context import FlowRunContext, TaskRunContext

    flow_ctx = FlowRunContext.get()
    on_dask = flow_ctx is not None and type(flow_ctx.task_runner).__name__ == "DaskTaskRunner"
    if on_dask or (TaskRunContext.get() is not None and has_client()):
        from prefect_dask import get_dask_client

        with get_dask_client() as c:
            yield c
        return
    yield get_client()


def has_client() -> bool:
    """Whether this process has a default Dask client (a `cluster` or a `DaskTaskRunner` is on)."""
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        return False
    return True
