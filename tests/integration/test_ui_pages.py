"""The pages a user opens, rendered by a real headless Chromium (the `ui` marker; README "Scheduled
runs and the UIs" shows `make screenshots`' pictures of the same pages).

Only what each page needs is started: an MLflow server over a temporary sqlite store (an experiment
tagged and viewed as `tasks.tracking` does it, a parent run with the decision and the Markdown
description `tasks.report` writes, two child runs, a registered model with an alias and
descriptions), a Prefect server with one flow run that published the run report's two artifacts
(`tasks.report.publish_run_report`), the toy scorer, and the Data Docs that a failed validation
writes. MLflow pages are opened at the links the project prints (`mlops.tracking`), through
`browser.UI_HOST`, as a browser that has closed MLflow's Assistant panel sees them. Chromium resolves no host but loopback, so each page renders as it would offline. The DOM is
read after the JavaScript ran: the single-page apps have to have fetched and drawn their data.

Chromium is Debian's `chromium` (`make test` installs it as root). A missing Chromium fails these tests.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlops import tracking
from scorer.process import ScorerProcess, free_port, start_scorer

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pricing_browser", ROOT / "infra/local/browser.py")
assert _spec is not None and _spec.loader is not None
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

CHILDREN = ("lightgbm", "logistic")
MODEL = "price-response"
MODEL_DESCRIPTION = "Demand model of the shop: the champion serves quotes."
VERSION_DESCRIPTION = "Promoted because lightgbm beat the champion's profit regret."
ARTIFACTS = ("training-metrics", "promotion-decision")
REPORT = {
    "model": "lightgbm",
    "dataset": "sim",
    "split": {"n_train": 2000, "n_test": 600},
    "metrics": {
        "lightgbm": {"profit_regret": 0.12, "gap_share": 0.61, "uplift_vs_list": 0.5386,
                     "expected_profit": 1.374, "log_loss": 0.31, "auc": 0.71},
        "logistic": {"profit_regret": 0.31, "gap_share": 0.2, "uplift_vs_list": 0.26,
                     "expected_profit": 1.28, "log_loss": 0.33, "auc": 0.66},
    },
    "train": {"lightgbm": {"fit_seconds": 0.02680402737999188}},
    "registered_model": MODEL,
    "model_version": "3",
    "promoted": True,
    "promotion_reasons": ["first model: profit_regret 0.1200 beats the reference 0.3100"],
    "decided_at": "2026-12-01T11:05:57+00:00",
    "links": {},
}  # fmt: skip

# Never skipped: without Chromium the `chrome` fixture fails with the install line (`make test`
# installs Debian's `chromium` first as root, or stops before any test saying what to install).
pytestmark = [pytest.mark.ui, pytest.mark.integration]

_FLOW = textwrap.dedent(
    """
    import json, sys
    from prefect import flow
    from prefect.runtime import flow_run
    from tasks.report import publish_run_report

    @flow(name="training")
    def training(report: dict) -> str:
        publish_run_report(report, report["model_version"])
        return flow_run.id

    print("FLOW_RUN_ID=" + training(json.loads(sys.argv[1])))
    """
)


@dataclass
class Pages:
    """URL of each page under test."""

    docs: str
    redoc: str
    runs: str
    parent: str
    compare: str
    model: str
    flow_run: str
    decision: str
    metrics_table: str
    data_docs: str


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _failed_data_docs(folder: Path) -> Path:
    """A small simulated market with a tenth of its list prices negative, validated: the Data Docs
    page of the failed `items` suite."""
    from expectations import validate_data_dir
    from pricing import io as pio
    from pricing import schema as S
    from pricing.simulator import SimConfig, simulate, write_market

    market = simulate(SimConfig.preset(n_users=40, n_items=30, n_days=2, seed=0))
    write_market(market, folder)
    items = pio.read_tables(folder)[S.ITEMS]
    items.loc[items.index[::10], S.LIST_PRICE] = -5.0
    pio.write_table(items, folder, S.ITEMS)
    report = validate_data_dir(folder)
    assert not report.passed and report.docs_index is not None
    (page,) = (report.docs_index.parent / "validations" / S.ITEMS).rglob(f"{S.ITEMS}.html")
    return page


def _seed_mlflow(url: str) -> tuple[str, str, list[str], str]:
    """The experiment as a training run leaves it: its kind and runs view (`tasks.tracking`), a
    parent run with the primary metric, the decision and its Markdown description, one child run
    per model (the same headline metrics), a registered model with an alias."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.report import summary_markdown
    from tasks.tracking import set_experiment_view

    mlflow.set_tracking_uri(url)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    exp = client.create_experiment("sim")
    set_experiment_view(exp, "profit_regret")
    parent = client.create_run(exp, run_name="lightgbm-20261201T110530").info.run_id
    client.log_metric(parent, "profit_regret", 0.12)
    client.set_tag(parent, "decision", "promoted")
    client.set_tag(parent, "model_version", "1")
    client.set_tag(parent, "mlflow.note.content", summary_markdown(REPORT))
    children = []
    for name, regret in zip(CHILDREN, (0.12, 0.31), strict=True):
        tags = {"mlflow.parentRunId": parent, "model": name, "role": "candidate"}
        run = client.create_run(exp, run_name=name, tags=tags)
        client.log_metric(run.info.run_id, "profit_regret", regret)
        client.log_metric(run.info.run_id, "log_loss", regret + 0.3)
        client.set_terminated(run.info.run_id)
        children.append(run.info.run_id)
    client.set_terminated(parent)
    client.create_registered_model(MODEL, description=MODEL_DESCRIPTION)
    version = client.create_model_version(
        MODEL, f"runs:/{children[0]}/model", run_id=children[0], description=VERSION_DESCRIPTION
    )
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return exp, parent, children, version.version


def _artifact_ids(api: str, flow_run_id: str) -> dict[str, str]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=30).raise_for_status()
    return {a["key"]: a["id"] for a in found.json()}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    import mlflow

    if browser.chromium() is None:
        pytest.fail(browser.CHROMIUM_MISSING, pytrace=False)
    tracking_uri = mlflow.get_tracking_uri()
    tmp = tmp_path_factory.mktemp("ui")
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **browser.MLFLOW_UI_HOST_ENV,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    mlflow_url = f"http://127.0.0.1:{free_port()}"
    prefect_port = free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    # Without PREFECT_UI_API_URL the UI calls the API on the default port 4200, not this one.
    env_prefect = {**env, "PREFECT_UI_API_URL": prefect_api}
    mlflow_log, prefect_log = tmp / "mlflow.log", tmp / "prefect.log"
    procs = [
        _start(
            [str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1"]
            + ["--port", mlflow_url.rsplit(":", 1)[1], "--workers", "1"]
            + ["--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
            + ["--artifacts-destination", str(tmp / "artifacts")],
            env,
            mlflow_log,
        ),
        _start(
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(prefect_port)],
            env_prefect,
            prefect_log,
        ),
    ]
    scorer: ScorerProcess | None = None
    try:
        scorer = start_scorer(
            "scorer.testing:toy_app_factory",
            env={"PRICING_OFFER_LOG_DIR": str(tmp / "offers"), "PRICING_ALIAS_POLL_SECONDS": "0"},
            cwd=tmp,
            log_path=tmp / "scorer.log",
            ready_timeout_s=None,
        )
        data_docs = _failed_data_docs(tmp / "broken")  # while the servers start
        _wait_healthy(f"{prefect_api}/health", procs[1], prefect_log, 180)
        # The report's links, as a training run under these ports makes them
        report = {**REPORT, "links": {"MLflow run": f"{mlflow_url}/#/experiments/1/runs/x"}}
        flow = subprocess.Popen(
            [sys.executable, "-c", _FLOW, json.dumps(report)],
            env={**env, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)},
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_healthy(f"{mlflow_url}/health", procs[0], mlflow_log, 180)
        exp, parent, children, version = _seed_mlflow(mlflow_url)
        out, _ = flow.communicate(timeout=120)
        found = re.search(r"FLOW_RUN_ID=([0-9a-f-]{36})", out)
        assert flow.returncode == 0 and found, out[-3000:]
        artifacts = _artifact_ids(prefect_api, found[1])
        scorer.wait_ready(60)
        prefect_ui = f"http://127.0.0.1:{prefect_port}"
        yield Pages(
            docs=f"{scorer.url}/docs",
            redoc=f"{scorer.url}/redoc",
            runs=browser.via_ui_host(tracking.experiment_url(exp)),
            parent=browser.via_ui_host(tracking.run_url(exp, parent)),
            compare=browser.via_ui_host(tracking.compare_url(exp, children)),
            model=browser.via_ui_host(f"{mlflow_url}/#/models/{MODEL}"),
            flow_run=f"{prefect_ui}/v2/runs/flow-run/{found[1]}?tab=Artifacts",
            decision=f"{prefect_ui}/artifacts/artifact/{artifacts['promotion-decision']}",
            metrics_table=f"{prefect_ui}/artifacts/artifact/{artifacts['training-metrics']}",
            data_docs=data_docs.as_uri(),
        )
    finally:
        mlflow.set_tracking_uri(tracking_uri)
        if scorer is not None:
            scorer.stop()
        for proc in procs:
            _stop(proc)


@pytest.fixture(scope="module")
def doms(pages: Pages) -> dict[str, str]:
    """Every page's DOM after its JavaScript ran, rendered a few at a time."""
    urls = vars(pages)
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = dict(zip(urls, pool.map(browser.dump_dom, urls.values()), strict=True))
    return got


def _text(dom: str) -> str:
    """The page's visible text, one space between words."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_scorer_docs_lists_the_operations_offline(doms: dict[str, str]) -> None:
    dom = doms["docs"]
    assert 'class="swagger-ui' in dom, "Swagger UI did not render (its assets are the scorer's)"
    for path in ("/v1/quote", "/readyz"):
        assert f'data-path="{path}"' in dom, f"no operation {path} in Swagger UI"


def test_scorer_redoc_shows_what_each_quote_field_means(doms: dict[str, str]) -> None:
    """A shop engineer reads the quote's answer in ReDoc: the money's currency, what the
    propensity is for, and which guardrail a price sits at, with the item fields opened."""
    text = _text(doms["redoc"])
    for words in ("ISO 4217", "evaluated offline", "the limit the price sits at", "event appends"):
        assert words in text, f"ReDoc does not show {words!r}"


def test_mlflow_opens_the_experiment_on_the_classic_runs_view_with_the_primary_metric(
    doms: dict[str, str],
) -> None:
    dom, text = doms["runs"], _text(doms["runs"])
    # not MLflow 3's GenAI experiment overview
    for genai in ("Detect Issues", "No data available", "Traces 0"):
        assert genai not in text, f"the GenAI overview ({genai!r}) instead of the runs table"
    assert "lightgbm-20261201T110530" in text, "the training run is not listed"
    headers = set(re.findall(r'col-id="([^"]+)"', dom))
    assert any("profit_regret" in h for h in headers), f"no profit_regret column: {headers}"
    assert any("decision" in h for h in headers), f"no decision column: {headers}"
    assert "promoted" in text and "0.12" in text


def test_mlflow_run_description_renders_the_summary_table_as_markdown(
    doms: dict[str, str],
) -> None:
    dom = doms["parent"]
    tables = re.findall(r"<table\b.*?</table>", dom, flags=re.S)
    summary = next((t for t in tables if "profit_regret" in t), None)
    assert summary is not None, "the description's models table is not rendered as a table"
    assert re.search(r"<td[^>]*>\s*<strong>lightgbm</strong>", summary), "candidate not in bold"
    assert "12.0 %" in _text(summary) and "+53.9 %" in _text(summary)
    assert "PROMOTED to champion" in _text(dom)
    assert not re.search(r"<li>\s*\*?\s*lightgbm", dom), "a table row became a list item"


def test_mlflow_compare_view_lines_up_the_child_runs(doms: dict[str, str]) -> None:
    text = _text(doms["compare"])
    assert "Comparing 2 Runs" in text
    for name in CHILDREN:
        assert name in text, f"child run {name} missing from the Compare view"
    assert "profit_regret" in text and "log_loss" in text


def test_mlflow_registered_model_shows_alias_and_descriptions(doms: dict[str, str]) -> None:
    text = _text(doms["model"])
    assert MODEL in text and MODEL_DESCRIPTION in text
    assert "champion" in text, "the champion alias is not shown"
    assert VERSION_DESCRIPTION[:20] in text, "the version's description is not shown"


def test_prefect_flow_run_page_shows_its_artifacts_with_the_decision(
    doms: dict[str, str],
) -> None:
    text = _text(doms["flow_run"])
    assert "Can't connect to Server API" not in text
    assert "Artifacts" in text and "Completed" in text
    for key in ARTIFACTS:
        assert key in text, f"artifact {key} missing from the flow run's Artifacts tab"
    assert REPORT["promotion_reasons"][0] in text, "the decision's card has no reasons"


def test_prefect_default_ui_renders_the_decision_artifact_body(doms: dict[str, str]) -> None:
    dom, text = doms["decision"], _text(doms["decision"])
    assert "Can't connect to Server API" not in text
    assert "version 3 of price-response: PROMOTED to champion" in text
    assert REPORT["promotion_reasons"][0] in text
    assert "decided at 2026-12-01T11:05:57+00:00" in text
    mlflow_link = r'href="http://127\.0\.0\.1:\d+/#/experiments/1/runs/x"'
    assert re.search(mlflow_link, dom), "the MLflow run is not a link"


def test_prefect_default_ui_shows_the_metrics_table_rounded_with_units(
    doms: dict[str, str],
) -> None:
    text = _text(doms["metrics_table"])
    for cell in ("12.0 %", "61.0 %", "+53.9 %", "1.37 USD", "0.3100", "27 ms"):
        assert cell in text, f"{cell!r} not in the training-metrics table"
    assert "0.02680402737999188" not in text and "0.5386" not in text


def test_data_docs_of_a_failed_validation_show_the_failed_expectation(
    doms: dict[str, str],
) -> None:
    text = _text(doms["data_docs"])
    assert "Expectation Validation Result" in text and "Failed" in text
    assert "values must be greater than 0.0" in text
    assert "unexpected values found" in text
