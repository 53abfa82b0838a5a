"""`make screenshots`' camera (infra/local/screenshots.sh runs it against a stack it started): find
the newest training run and its child runs in MLflow, the registered model, the newest completed
`training` flow run in Prefect and its decision artifact, and a failed validation's Data Docs, then
save one PNG of each page into docs/screenshots/ (docs/operations.md "The UIs").

MLflow pages are the links a training run prints (`mlops.tracking`: the classic runs view, the
run, the Compare view of its child runs), opened through `browser.UI_HOST` (see there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import BrowserError, screenshot, via_ui_host  # noqa: E402 - a sibling script

# Window and crop per page (default 1400x900, scaled to 1000 px wide).
SHOTS: dict[str, dict[str, Any]] = {
    # Run details, parameters and the metrics table under the plot
    "mlflow-compare": {"size": (1400, 1600)},
    # The description's table, then parameters, metrics and tags
    "mlflow-run": {"size": (1400, 1200)},
    # Unstyled offline (GX loads Bootstrap and its icons from CDNs): a narrow column of text
    "data-docs-failed": {"size": (1400, 2000), "crop": (0, 0, 720, 1940), "max_width": 720},
}


def mlflow_pages(url: str, model: str) -> dict[str, str]:
    """The experiment's runs view, the newest parent run, the Compare view of its child runs, the
    registered model's page (its versions and their aliases) and its champion's (aliases, the
    "Promoted because ..." text)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mlops import tracking

    mlflow.set_tracking_uri(url)  # the links below are this server's
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    exps = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=200):
        if "mlflow.parentRunId" in run.data.tags:
            continue
        children = client.search_runs(
            [run.info.experiment_id],
            f"tags.mlflow.parentRunId = '{run.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        if len(children) >= 2:
            break
    else:
        raise SystemExit(f"no MLflow run with child runs at {url}: did the training run finish?")
    exp = run.info.experiment_id
    try:
        version = client.get_model_version_by_alias(model, "champion").version
    except MlflowException:  # no champion (the gate said no): the newest version
        version = max(int(v.version) for v in client.search_model_versions(f"name = '{model}'"))
    pages = {
        "mlflow-runs": tracking.experiment_url(exp),
        "mlflow-run": tracking.run_url(exp, run.info.run_id),
        "mlflow-compare": tracking.compare_url(exp, [c.info.run_id for c in children]),
        "mlflow-model": f"{url}/#/models/{quote(model)}",
        "mlflow-model-version": tracking.version_url(model, str(version)),
    }
    return {name: via_ui_host(page) for name, page in pages.items()}


def prefect_pages(url: str, flow: str) -> dict[str, str]:
    """The newest completed run of `flow` on its Artifacts tab (Prefect's v2 UI reads ?tab=; the
    default UI opens a run on its logs) and its `promotion-decision` artifact in the default UI."""
    body = {
        "flows": {"name": {"any_": [flow]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_DESC",
        "limit": 1,
    }
    runs = httpx.post(f"{url}/api/flow_runs/filter", json=body, timeout=30).raise_for_status()
    if not runs.json():
        raise SystemExit(f"no completed '{flow}' flow run at {url}")
    run_id = runs.json()[0]["id"]
    body = {
        "artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["promotion-decision"]}}
    }
    found = httpx.post(f"{url}/api/artifacts/filter", json=body, timeout=30).raise_for_status()
    if not found.json():
        raise SystemExit(f"flow run {run_id} has no promotion-decision artifact")
    return {
        "prefect-flow-run": f"{url}/v2/runs/flow-run/{run_id}?tab=Artifacts",
        "prefect-decision": f"{url}/artifacts/artifact/{found.json()[0]['id']}",
    }


def data_docs_page(docs_dir: Path, suite: str = "items") -> str:
    """The validation page of a failed `suite` (a fragment would scroll, but headless Chromium's
    screenshot of a scrolled page comes out blank: the page is shown from its top)."""
    for page in sorted(docs_dir.resolve().rglob(f"validations/{suite}/**/{suite}.html")):
        if "unexpected values found" in page.read_text():
            return page.as_uri()
    raise SystemExit(f"no failed '{suite}' validation in the Data Docs under {docs_dir}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mlflow", required=True, help="MLflow server URL")
    p.add_argument("--prefect", required=True, help="Prefect server URL (not /api)")
    p.add_argument("--scorer", required=True, help="scorer URL")
    p.add_argument("--data-docs", type=Path, required=True, help="a failed validation's gx_docs/")
    p.add_argument("--model", default="price-response", help="registered model name")
    p.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="PNG folder")
    args = p.parse_args(argv)
    pages = {
        **mlflow_pages(args.mlflow.rstrip("/"), args.model),
        **prefect_pages(args.prefect.rstrip("/"), "training"),
        "scorer-docs": f"{args.scorer.rstrip('/')}/docs",
        "data-docs-failed": data_docs_page(args.data_docs),
    }
    failed = 0
    for name, url in pages.items():
        out = args.out / f"{name}.png"
        try:
            screenshot(url, out, **SHOTS.get(name, {}))
        except BrowserError as e:
            print(f"{name}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{out} ({out.stat().st_size // 1024} KB) <- {url}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
