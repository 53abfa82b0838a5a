"""The `compare` flow (`pricing compare`) end to end: two seeds of a tiny simulated market, the quick models, MLflow in
tmp_path; checks the public shape of compare.json and the parent run's children."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# configs/lightgbm.yaml, smaller: a tiny market per seed and fewer trees.
TINY_CONFIG = {
    "name": "compare-test",
    "model": "lightgbm",
    "baselines": ["logistic", "lightgbm"],
    "lightgbm": {"n_estimators": 60, "num_leaves": 15},
    "simulate": {"n_users": 150, "n_items": 40, "n_days": 21},
    "evaluation": {"max_test_offers": 3000},
}


def _strict(text: str) -> dict:
    """json.loads that refuses NaN/Infinity: other tools read compare.json as standard JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_compare_two_seeds_writes_the_report_and_one_child_run_per_seed(
    prefect_harness: None, mlflow_store: str, tmp_path: Path
) -> None:
    from flows.compare import compare

    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = compare(seeds=2, simulate=True, config_path=str(config), out_dir=str(out))
    seconds = time.perf_counter() - t0
    assert result["compare_json"] == str(out / "compare.json")
    print(f"2-seed compare (tiny market, lightgbm + logistic): {seconds:.1f}s")

    report = _strict((out / "compare.json").read_text())
    # the public shape
    assert {"primary", "seeds", "best_baseline", "models", "paired", "slices"} <= set(report)
    assert report["primary"] == "profit_regret"  # simulated: ground truth present
    assert report["seeds"] == [0, 1]
    assert report["best_baseline"] == "logistic"  # the only baseline besides the main model
    # the references: list price, and the best single price per item knowing the truth
    assert set(report["models"]) == {"lightgbm", "logistic", "list_price", "oracle_uniform"}
    for name, by_metric in report["models"].items():
        for metric in ("profit_regret", "log_loss"):
            if name == "oracle_uniform" and metric == "log_loss":
                continue  # a price policy, no predictions
            entry = by_metric[metric]
            assert set(entry) == {"mean", "lo", "hi", "per_seed"}, (name, metric)
            assert len(entry["per_seed"]) == 2
            assert entry["mean"] == pytest.approx(sum(entry["per_seed"]) / 2)
            assert entry["lo"] <= entry["mean"] <= entry["hi"]
    assert 0 <= report["models"]["lightgbm"]["auc"]["mean"] <= 1
    assert set(report["paired"]) == {"lightgbm", "list_price", "oracle_uniform"}
    for by_metric in report["paired"].values():
        for metric, entry in by_metric.items():
            assert set(entry) == {"vs", "mean", "lo", "hi"}, metric
            assert entry["vs"] == "logistic"
            if entry["lo"] is not None:  # null: undefined (a metric with one finite seed)
                assert entry["lo"] <= entry["mean"] <= entry["hi"]
    paired = report["paired"]["lightgbm"]["profit_regret"]
    diffs = [
        a - b
        for a, b in zip(
            report["models"]["lightgbm"]["profit_regret"]["per_seed"],
            report["models"]["logistic"]["profit_regret"]["per_seed"],
            strict=True,
        )
    ]
    assert paired["mean"] == pytest.approx(sum(diffs) / 2)
    assert report["metric_direction"]["auc"] == {"higher_is_better": True}
    # the verdict the interval allows: "better" only where it excludes zero on the good side
    lo, hi = paired["lo"], paired["hi"]
    expected = "better" if hi < 0 else "worse" if lo > 0 else "no difference"
    assert report["verdicts"]["lightgbm"]["profit_regret"] == expected
    # every policy's share of the personalization gap: 0 for the uniform oracle itself
    assert report["models"]["oracle_uniform"]["gap_share"]["mean"] == pytest.approx(0.0)
    for name in ("lightgbm", "logistic"):
        regret = report["models"][name]["profit_regret"]["per_seed"]
        uniform = report["models"]["oracle_uniform"]["profit_regret"]["per_seed"]
        gap = report["models"][name]["gap_share"]["per_seed"]
        for r, u, g in zip(regret, uniform, gap, strict=True):
            assert g == pytest.approx((u - r) / u)
    # provenance and the budgets each model actually spent
    prov = report["provenance"]
    assert {"commit", "dirty", "config", "config_hash", "command", "machine", "date"} <= set(prov)
    assert prov["machine"]["cores"] >= 1
    assert report["budgets"]["lightgbm"]["seeds"] == [0, 1]
    # cold-start slices: from the evaluation's `cold_items/`, `cold_users/` keys when it has them
    assert set(report["slices"]) <= {"cold_items", "cold_users"}
    for by_model in report["slices"].values():
        assert set(by_model) <= set(report["models"])
        assert all(
            v is None or math.isfinite(v) for vals in by_model.values() for v in vals.values()
        )

    # the other files
    md = (out / "compare.md").read_text()
    assert "| metric | model | mean [95% CI] | paired vs `logistic` | verdict |" in md
    assert (out / "compare.png").stat().st_size > 10_000
    for seed in (0, 1):
        seed_report = _strict((out / f"seed-{seed}.json").read_text())
        assert seed_report["seed"] == seed and seed_report["ground_truth"] is True
        assert set(seed_report["metrics"]) == {
            "lightgbm",
            "logistic",
            "list_price",
            "oracle_uniform",
        }
        assert seed_report["split"]["n_test"] > 0
    # seed s is a new market: the two seeds' data differ
    s0, s1 = (_strict((out / f"seed-{s}.json").read_text()) for s in (0, 1))
    assert s0["features"]["data_hash"] != s1["features"]["data_hash"]

    # MLflow: one parent run, one child run per seed, the same metric names in every child
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    parent_id = report["mlflow_run_id"]
    assert parent_id == result["mlflow_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "compare"
    assert parent.data.tags["best_baseline"] == "logistic"
    assert "lightgbm/profit_regret.mean" in parent.data.metrics
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == 2
    assert {c.data.tags["seed"] for c in children} == {"0", "1"}
    keys = [set(c.data.metrics) for c in children]
    assert keys[0] == keys[1]
    assert {"profit_regret", "lightgbm/profit_regret", "logistic/log_loss"} <= keys[0]
    arts = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert {"compare/compare.json", "compare/compare.md", "compare/compare.png"} <= arts
    assert "compare/per_seed.json" in arts


def test_compare_on_fixed_data_without_ground_truth_uses_log_loss_and_one_seed_says_n_a(
    prefect_harness: None, mlflow_store: str, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """Real-data mode: the data stay fixed, the primary metric is log loss; with only the main
    model, list price is the baseline. One seed gives no interval over seeds (null), but log loss
    and AUC get one from the bootstrap over test users, and a verdict from it."""
    from flows.compare import compare

    data = tmp_path / "shop"
    shutil.copytree(tiny_data_dir, data)
    shutil.rmtree(data / "ground_truth")  # as real data: no ground truth
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    out = tmp_path / "out"
    result = compare(
        seeds=1, data_dir=str(data), models=["logistic"], config_path=str(config), out_dir=str(out)
    )
    report = _strict((out / "compare.json").read_text())
    assert report["primary"] == "log_loss" and result["primary"] == "log_loss"
    assert report["seeds"] == [0] and report["best_baseline"] == "list_price"
    assert set(report["models"]) == {"logistic", "list_price"}
    assert "profit_regret" not in report["models"]["logistic"]  # no truth, no regret
    entry = report["models"]["logistic"]["log_loss"]
    assert entry["lo_seeds"] is None and entry["hi_seeds"] is None and len(entry["per_seed"]) == 1
    assert entry["lo"] < entry["mean"] < entry["hi"] and entry["bootstrap_sd"] > 0
    paired = report["paired"]["logistic"]["log_loss"]
    assert paired["vs"] == "list_price"
    lo, hi = paired["lo"], paired["hi"]
    expected = "better" if hi < 0 else "worse" if lo > 0 else "no difference"
    assert report["verdicts"]["logistic"]["log_loss"] == expected
    assert "test users" in report["intervals_cover"]
    seed_report = _strict((out / "seed-0.json").read_text())
    assert seed_report["bootstrap"]["unit"] == "user"
    assert set(seed_report["bootstrap"]["log_loss"]) == {"logistic", "list_price"}
    assert "[n/a]" in (out / "compare.md").read_text()
    assert result["mlflow_experiment"] == "shop-compare"


def test_seeds_run_apart_merge_into_the_report_of_one_run(
    prefect_harness: None, mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--first-seed` splits the seeds over processes or machines; `compare-merge` pools them."""
    from flows.cli import main
    from flows.compare import compare, merge_compare
    from pricing import stats

    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    a, b = tmp_path / "a", tmp_path / "b"
    ra = compare(seeds=1, simulate=True, config_path=str(config), out_dir=str(a))
    rb = compare(seeds=1, simulate=True, config_path=str(config), out_dir=str(b), first_seed=1)
    assert ra["seeds"] == [0] and rb["seeds"] == [1]

    merged = merge_compare([str(a), str(b)], str(tmp_path / "ab"), str(config))
    assert merged["seeds"] == [0, 1] and merged["primary"] == "profit_regret"
    report = _strict((tmp_path / "ab" / "compare.json").read_text())
    per_seed = {
        s: _strict((d / f"seed-{s}.json").read_text())["metrics"] for s, d in ((0, a), (1, b))
    }
    want = stats.json_safe(stats.summarize(per_seed, "lightgbm", "profit_regret"))
    assert report["models"] == want["models"] and report["paired"] == want["paired"]
    assert report["models"]["lightgbm"]["profit_regret"]["per_seed"] == [
        per_seed[0]["lightgbm"]["profit_regret"],
        per_seed[1]["lightgbm"]["profit_regret"],
    ]
    assert report["merged_from"] == [str(a), str(b)]
    assert {p.name for p in (tmp_path / "ab").glob("seed-*.json")} == {"seed-0.json", "seed-1.json"}

    # The same seed twice with nothing added, or a seed without every model, is refused by name.
    with pytest.raises(ValueError, match="seed 0 is in both .* no model added"):
        merge_compare([str(a), str(a)], str(tmp_path / "x"), str(config))
    other = _strict((b / "seed-1.json").read_text())
    other["models"] = ["lightgbm"]
    del other["metrics"]["logistic"]
    (b / "seed-1.json").write_text(json.dumps(other))
    assert main(["compare-merge", str(a), str(b), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "seed 1" in err and "every seed needs every model" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()
