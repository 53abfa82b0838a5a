"""MLflow tracking: experiments, runs, UI links, and the pyfunc model the scorer loads.

Versions and aliases are `mlops.registry`'s."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.models import DemandModel, load_model, save_model
from pricing import schema as S

# Requirements written next to the model: explicit, so log_model does not spend 10 s inferring them.
PIP_REQUIREMENTS = [
    "numpy>=2.4,<2.5",
    "pandas>=3.1,<4",
    "lightgbm>=4.7,<5",
    "torch==2.13.0",
    "transformers>=5.24,<6",
    "pytorch-lightning>=2.6.6,<2.7",
    "mlflow>=3.17.2,<3.18",
]


class RegistryUnavailable(RuntimeError):
    """The MLflow store could not be opened or its schema created (the URL without its password)."""


def configure(tracking_uri: str) -> None:
    """Point MLflow at `tracking_uri`; for a sqlite file, make sure its folder exists; for a
    database, create its schema once (`ensure_schema`)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    ensure_schema(tracking_uri)


# Database stores whose schema this process has seen complete (checked once per process).
_schema_ready: set[str] = set()
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# A fixed key for PostgreSQL's advisory lock around MLflow's schema creation ("mlflowdb").
SCHEMA_LOCK_KEY = 0x6D6C_666C_6F77_6462


def ensure_schema(uri: str, timeout_s: float = 600.0) -> None:
    """Open the MLflow tracking and registry stores at `uri` once, under a lock across processes.

    MLflow creates an empty database's tables (its Alembic migrations) and the default experiment
    when a store is first opened, without a lock: two commands starting together on an empty
    registry both migrate, and the loser fails ("table _alembic_tmp_experiments already exists").
    Here the first opening is serialized: a `flock` on a file next to a sqlite database, an
    advisory lock on PostgreSQL; the loser waits, then finds the schema complete. Other stores
    (a tracking server over HTTP) create nothing here.

    Raises:
        RegistryUnavailable: the store could not be opened or its schema created.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if uri in _schema_ready or scheme not in _DB_SCHEMES:
        return
    try:
        with _schema_lock(uri, scheme, timeout_s):
            _open_stores(uri)
    except RegistryUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to open the store is this one error
        raise RegistryUnavailable(
            f"MLflow store {_safe_uri(uri)} could not be opened: {_first_line(exc)}"
        ) from exc
    _schema_ready.add(uri)


def _open_stores(uri: str) -> None:
    """MLflow's tracking and registry stores for `uri` (cached by MLflow): opening them creates a
    new database's tables and the default experiment."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._get_store(uri)
    registry_utils._get_store(uri)


@contextlib.contextmanager
def _schema_lock(uri: str, scheme: str, timeout_s: float) -> Iterator[None]:
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not uri.startswith("sqlite:///") or path in ("", ":memory:"):
            yield  # an in-memory database belongs to this process alone
            return
        db = Path(path).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(db.with_name(f"{db.name}.schema.lock"), timeout_s):
            yield
        return
    if scheme == "postgresql":
        with _advisory_lock(uri, timeout_s):
            yield
        return
    yield  # mysql, mssql: no lock here; MLflow's own migration decides


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path`; yields False (not held) if not had within `timeout_s`.

    Exclusive between processes and between threads (each call opens its own file description),
    released by the kernel if the holder dies, so a crashed process never leaves a stale lock.
    """
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """The schema's `file_lock`; `RegistryUnavailable` if it is not had in time."""
    with file_lock(path, timeout_s) as held:
        if not held:
            raise RegistryUnavailable(f"MLflow store schema lock {path} busy for {timeout_s:.0f}s")
        yield


@contextlib.contextmanager
def _advisory_lock(uri: str, timeout_s: float) -> Iterator[None]:
    """PostgreSQL's session advisory lock `SCHEMA_LOCK_KEY`, on a connection of its own."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET lock_timeout = {int(timeout_s * 1000)}"))
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def _safe_uri(uri: str) -> str:
    from mlops.database import safe_url

    return safe_url(uri) if "://" in uri and not uri.startswith("sqlite") else uri


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def experiment_id(name: str, artifact_root: Path, description: str | None = None) -> str:
    """The experiment for one dataset, created with an explicit artifact location.

    Without it, artifacts of a sqlite-backed store land under whatever folder the process started in.
    `description` is the experiment's note in the UI (set when missing, never overwritten). Two
    processes creating it at once: the loser reads the winner's.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = (Path(artifact_root).resolve() / name).as_uri()
        try:
            exp_id = str(mlflow.create_experiment(name, artifact_location=location))
        except MlflowException:
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = str(exp.experiment_id)
        tags: dict[str, str] = dict(exp.tags or {}) if exp is not None else {}
    else:
        exp_id, tags = str(exp.experiment_id), dict(exp.tags or {})
    if description and NOTE not in tags:
        mlflow.MlflowClient().set_experiment_tag(exp_id, NOTE, description)
    return exp_id


# The tag MLflow's UI shows as the description of an experiment, a run or a registered model.
NOTE = "mlflow.note.content"


@contextlib.contextmanager
def tracked_run(**start_run: Any) -> Iterator[Any]:
    """`mlflow.start_run(**start_run)` as a block that ends the run FINISHED, FAILED when the block
    raises, or KILLED when a stop signal ended it (`mlops.interrupts`); a KILLED run's child runs
    that the stop ended FAILED or left RUNNING are marked KILLED too."""
    import mlflow

    run = mlflow.start_run(**start_run)
    try:
        yield run
    except BaseException as exc:
        end_run_on_error(run.info.run_id, exc)
        raise
    _end_run(run.info.run_id, "FINISHED")


def end_run_on_error(run_id: str, exc: BaseException) -> str:
    """End `run_id` after `exc`: KILLED when it is a stop signal's (then its FAILED or RUNNING
    child runs too), else FAILED. Returns the status."""
    from mlops import interrupts

    killed = interrupts.interrupted_by(exc) is not None
    status = "KILLED" if killed else "FAILED"
    _end_run(run_id, status)
    if killed:
        interrupts.record_killed_run(run_id)
        with contextlib.suppress(Exception):
            _kill_children(run_id)
    return status


def _end_run(run_id: str, status: str) -> None:
    """End `run_id` with `status`; when it is on this thread's stack of active runs, the runs
    started above it (nested runs the block left open) end first, with the same status."""
    import mlflow
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    active = [r.info.run_id for r in stack.get()] if stack is not None else []
    if run_id not in active:
        mlflow.MlflowClient().set_terminated(run_id, status)
        return
    while (run := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if run.info.run_id == run_id:
            return


def _kill_children(parent_run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )
    for child in children:
        if child.info.status in ("FAILED", "RUNNING"):
            client.set_terminated(child.info.run_id, "KILLED")


def end_active_runs(status: str = "KILLED") -> list[str]:
    """End every MLflow run still active in this thread with `status`; their ids."""
    import mlflow

    from mlops import interrupts

    ended: list[str] = []
    while (run := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        ended.append(run.info.run_id)
        if status == "KILLED":
            interrupts.record_killed_run(run.info.run_id)
    return ended


def ui_base_url() -> str:
    """The MLflow UI: the tracking server itself, or `make ui-mlflow` on MLFLOW_PORT (5000) for a
    database or folder store (`make up` serves the same store on that port)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT') or '5000'}"


# MLflow 3's UI opens an experiment as a GenAI app (overview, traces, the Assistant) unless the
# page says `workflowType=machine_learning` (the sidebar's switch, kept per browser); every link
# here says it. `RUNS_VIEW` is the saved runs-table view (its columns) that `tasks.tracking` stores
# on each experiment as the tag `mlflow.sharedViewState.<RUNS_VIEW>`.
CLASSIC_VIEW = "workflowType=machine_learning"
RUNS_VIEW = "training-runs"
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def experiment_url(experiment_id: str) -> str:
    """An experiment's runs table: the classic training-runs view with the project's columns."""
    return (
        f"{ui_base_url()}/#/experiments/{experiment_id}/runs"
        f"?{CLASSIC_VIEW}&viewStateShareKey={RUNS_VIEW}"
    )


def run_url(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (its child runs are listed under it)."""
    return f"{ui_base_url()}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"


def compare_url(experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's Compare view of `run_ids` (a training run's child runs: one column per model)."""
    from urllib.parse import quote

    runs, exps = quote(json.dumps(list(run_ids))), quote(json.dumps([experiment_id]))
    return f"{ui_base_url()}/#/compare-runs?runs={runs}&experiments={exps}&{CLASSIC_VIEW}"


def version_url(name: str, version: str) -> str:
    """A registered model version's page in the MLflow UI."""
    return f"{ui_base_url()}/#/models/{name}/versions/{version}?{CLASSIC_VIEW}"


def _pyfunc_class() -> type:
    """The MLflow pyfunc wrapper, built lazily so that importing this module does not import mlflow."""
    import mlflow.pyfunc

    class PriceResponseModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        """Purchase probability for (user_id, item_id, price) rows.

        Rows may carry `history_json` (the user's recent events as a JSON list in the contract's
        event columns); without it the user is treated as new. The scorer does not call `predict`:
        it unwraps this object and uses `demand_model` with its online user state.
        """

        def load_context(self, context: Any) -> None:
            self.demand_model: DemandModel = load_model(Path(context.artifacts["model_dir"]))
            self.guardrails: dict[str, Any] = json.loads(
                Path(context.artifacts["guardrails"]).read_text()
            )

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: Any = None
        ) -> np.ndarray:
            m = self.demand_model
            catalog = m.catalog  # type: ignore[attr-defined]
            pos = pd.Series(np.arange(len(catalog)), index=catalog[S.ITEM_ID].astype(str))
            items = pos.reindex(model_input[S.ITEM_ID].astype(str)).to_numpy()
            if np.isnan(items).any():
                raise ValueError("unknown item_id in input: the model's catalog does not have it")
            prices = model_input[S.PRICE].to_numpy(float)
            hist = model_input.get("history_json")
            out = np.empty(len(model_input))
            for i in range(len(model_input)):
                raw = json.loads(hist.iloc[i]) if hist is not None else []
                events = pd.DataFrame(
                    raw or None, columns=None if raw else S.column_names(S.EVENTS)
                )
                state = m.user_state(events)
                out[i] = m.demand(state, items[i : i + 1].astype(int), prices[i : i + 1, None])[
                    0, 0
                ]
            return out

    return PriceResponseModel


def log_price_model(
    model: DemandModel,
    guardrails: dict[str, Any],
    input_example: pd.DataFrame,
    registered_model: str,
) -> tuple[str, str]:
    """Log `model` as a pyfunc to the active run and register it; returns (model_uri, version).

    Aliases are the registry's: `tasks.registry.register` points `challenger` at the new version.
    """
    import mlflow
    from mlflow.models import infer_signature

    from mlops import interrupts

    interrupts.check(f"registering {registered_model}")
    _drop_pickle_warning()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_model(model, model_dir)
        g_path = Path(tmp) / "guardrails.json"
        g_path.write_text(json.dumps(guardrails))
        example_out = np.full(len(input_example), 0.5)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_class()(),
            artifacts={"model_dir": str(model_dir), "guardrails": str(g_path)},
            signature=infer_signature(input_example, example_out),
            input_example=input_example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model,
            code_paths=_code_paths(),
        )
    version = str(info.registered_model_version)
    interrupts.record_registered(registered_model, version)
    return info.model_uri, version


def _is_pickle_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Passing a Python object as `python_model`")


def _drop_pickle_warning() -> None:
    """MLflow warns on every `log_model` that a PythonModel object is cloudpickled: by design here
    (the wrapper holds no state; the model files are artifacts with a verified manifest)."""
    logger = logging.getLogger("mlflow.pyfunc")
    if _is_pickle_warning not in logger.filters:
        logger.addFilter(_is_pickle_warning)


def _code_paths() -> list[str]:
    """Ship the project's model code with the model so it loads without this checkout."""
    root = Path(__file__).resolve().parent.parent
    return [str(root / p) for p in ("pricing", "mlops", "lightning_modules")]
