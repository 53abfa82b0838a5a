"""`pricing compare-merge` joins runs by model: an ablation run on the contest's seeds is paired
with the contest's models without training them again, and only where the rows tested are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from flows.compare import merge_compare
from pricing import stats

CONFIG = "configs/default.yaml"  # bert_wide's variants (bert_wide_no_text, ...) are its ablations
SPLIT = {"test_start": "2026-02-07T14:25:34", "n_train": 600, "n_valid": 80, "n_test": 200}


def _write(folder: Path, seed: int, main_model: str, metrics: dict, data_hash: str = "d0") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "seed": seed,
        "dataset": "cj",
        "ground_truth": False,
        "main": main_model,
        "models": [m for m in metrics if m != "list_price"],
        "split": SPLIT,
        "features": {"hash": "f", "data_hash": data_hash},
        "train": {m: {"seconds": 1.0} for m in metrics if m != "list_price"},
        "metrics": metrics,
    }
    (folder / f"seed-{seed}.json").write_text(json.dumps(report))


LOSS = {  # per seed: the contest's models, then the ablation run's
    "bert_wide": [0.240, 0.242, 0.241],
    "lightgbm": [0.247, 0.246, 0.248],
    "logistic": [0.2557, 0.2557, 0.2557],
    "bert_wide_no_sequence": [0.244, 0.245, 0.2435],
}


def _m(name: str, seed: int) -> dict[str, float]:
    return {"log_loss": LOSS[name][seed], "auc": 0.70 - LOSS[name][seed] / 10}


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    contest, ablation = tmp_path / "contest", tmp_path / "ablation"
    for seed in range(3):
        _write(
            contest,
            seed,
            "bert_wide",
            {n: _m(n, seed) for n in ("bert_wide", "lightgbm", "logistic")},
        )
        _write(
            ablation,
            seed,
            "bert_wide_no_sequence",
            {n: _m(n, seed) for n in ("bert_wide_no_sequence", "logistic")},
        )
    return contest, ablation


def test_runs_of_the_same_seeds_join_model_by_model_and_ablations_pair_with_the_main_model(
    tmp_path: Path,
) -> None:
    contest, ablation = _runs(tmp_path)
    out = tmp_path / "joined"
    result = merge_compare([str(ablation), str(contest)], str(out), CONFIG, main="bert_wide")
    assert result["seeds"] == [0, 1, 2] and result["main"] == "bert_wide"
    assert result["best_baseline"] == "lightgbm"  # the variant is an ablation, never a baseline
    report = json.loads((out / "compare.json").read_text())
    assert set(report["models"]) == {"bert_wide", "lightgbm", "logistic", "bert_wide_no_sequence"}
    entry = report["ablations"]["bert_wide_no_sequence"]["log_loss"]
    want = stats.paired_interval(LOSS["bert_wide_no_sequence"], LOSS["bert_wide"])
    assert entry["vs"] == "bert_wide"
    assert (entry["mean"], entry["lo"], entry["hi"]) == pytest.approx((want.mean, want.lo, want.hi))
    assert entry["verdict"] == "worse"  # the sequence helps
    assert "joined_differing" not in report  # logistic: the same figures in both runs
    seed0 = json.loads((out / "seed-0.json").read_text())
    assert seed0["main"] == "bert_wide" and seed0["models"][0] == "bert_wide"
    assert seed0["joined"]["from"] == [str(ablation / "seed-0.json"), str(contest / "seed-0.json")]
    assert set(seed0["train"]) == {"bert_wide", "lightgbm", "logistic", "bert_wide_no_sequence"}
    md = (out / "compare.md").read_text()
    assert "## Ablations: each variant minus `bert_wide`, paired over seeds" in md


def test_a_model_in_both_runs_with_other_figures_keeps_the_first_and_says_so(
    tmp_path: Path,
) -> None:
    contest, ablation = _runs(tmp_path)
    metrics = json.loads((ablation / "seed-1.json").read_text())["metrics"]
    metrics["lightgbm"] = {"log_loss": 0.2465, "auc": 0.6}  # a tuner stopped by its time budget
    _write(ablation, 1, "bert_wide_no_sequence", metrics)
    out = tmp_path / "joined"
    merge_compare([str(contest), str(ablation)], str(out), CONFIG)
    report = json.loads((out / "compare.json").read_text())
    assert report["main"] == "bert_wide"  # the first run's
    assert report["models"]["lightgbm"]["log_loss"]["per_seed"] == LOSS["lightgbm"]
    assert report["joined_differing"] == [
        {
            "model": "lightgbm",
            "kept": str(contest / "seed-1.json"),
            "other": str(ablation / "seed-1.json"),
            "seed": 1,
        }
    ]
    assert f"seed 1 lightgbm from {contest / 'seed-1.json'}" in (out / "compare.md").read_text()


def test_runs_on_other_rows_or_with_nothing_to_add_or_missing_models_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contest, ablation = _runs(tmp_path)
    other = tmp_path / "other-data"
    _write(other, 0, "bert_wide_no_text", {"bert_wide_no_text": _m("bert_wide", 0)}, data_hash="d1")
    with pytest.raises(ValueError, match="seed 0: .* tested on different rows"):
        merge_compare([str(contest), str(other)], str(tmp_path / "x"), CONFIG)
    with pytest.raises(ValueError, match="seed 0 is in both .* no model added"):
        merge_compare([str(contest), str(contest)], str(tmp_path / "x"), CONFIG)
    (ablation / "seed-2.json").unlink()  # seed 2 would lack the ablation
    with pytest.raises(ValueError, match="seed 2 .* every seed needs every model"):
        merge_compare([str(contest), str(ablation)], str(tmp_path / "x"), CONFIG)
    # ... unless the report keeps the seeds both runs have
    result = merge_compare([str(contest), str(ablation)], str(tmp_path / "y"), CONFIG, seeds=[0, 1])
    assert result["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="main model 'bert' is not among"):
        merge_compare([str(contest)], str(tmp_path / "x"), CONFIG, main="bert")
    assert not (tmp_path / "x").exists()
    # the command says what is wrong, without a traceback, and writes nothing
    args = ["compare-merge", str(contest), str(ablation), "--out", str(tmp_path / "z")]
    assert main([*args, "--config", CONFIG]) == 2
    assert main([*args, "--config", CONFIG, "--seeds", "0,two"]) == 2
    assert main([*args, "--config", CONFIG, "--seeds", "0,7"]) == 2
    err = capsys.readouterr().err
    assert "every seed needs every model" in err and "not a comma-separated list" in err
    assert "seeds [7] are in none of" in err and "Traceback" not in err
    assert not (tmp_path / "z").exists()
    assert main([*args, "--config", CONFIG, "--seeds", "0,1", "--main", "bert_wide"]) == 0
    assert json.loads((tmp_path / "z" / "compare.json").read_text())["main"] == "bert_wide"
