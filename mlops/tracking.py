"""MLflow tracking: experiments, runs, UI links, and the pyfunc model the scorer loads.

Versions and aliases are `mlops.registry`'s."""

from __future__ import annotations

import json
import logging
import os
import tempfile
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


def configure(tracking_uri: str) -> None:
    """Point MLflow at `tracking_uri`; for a sqlite file, make sure its folder exists."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def experiment_id(name: str, artifact_root: Path, description: str | None = None) -> str:
    """The experiment for one dataset, created with an explicit artifact location.

    Without it, artifacts of a sqlite-backed store land under whatever folder the process started in.
    `description` is the experiment's note in the UI (set when missing, never overwritten).
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = (Path(artifact_root).resolve() / name).as_uri()
        exp_id = str(mlflow.create_experiment(name, artifact_location=location))
        tags: dict[str, str] = {}
    else:
        exp_id, tags = str(exp.experiment_id), dict(exp.tags or {})
    if description and NOTE not in tags:
        mlflow.MlflowClient().set_experiment_tag(exp_id, NOTE, description)
    return exp_id


# The tag MLflow's UI shows as the description of an experiment, a run or a registered model.
NOTE = "mlflow.note.content"


def ui_base_url() -> str:
    """The MLflow UI: the tracking server itself, or `mlflow ui` on MLFLOW_PORT (5000) for a file.

    `make up` serves the UI on that port; with the embedded sqlite store nothing serves it until
    `mlflow ui --backend-store-uri ...` runs.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"


def run_url(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (its child runs are listed under it)."""
    return f"{ui_base_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(name: str, version: str) -> str:
    """A registered model version's page in the MLflow UI."""
    return f"{ui_base_url()}/#/models/{name}/versions/{version}"


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
    return info.model_uri, str(info.registered_model_version)


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
