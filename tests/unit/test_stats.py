"""pricing.stats: the t quantile, intervals over seeds, paired differences, verdicts, the summary."""

from __future__ import annotations

import json
import math

import pytest

from pricing import stats


# t_{p, df} from printed tables (Student's t, two-sided 95% and 99%).
@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 29, 2.0452),
        (0.995, 5, 4.0321),
        (0.95, 10, 1.8125),
        (0.025, 4, -2.7764),
    ],
)
def test_t_quantile_matches_the_printed_table(p: float, df: int, expected: float) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_limits() -> None:
    assert stats.t_quantile(0.5, 3) == 0.0
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-5)  # the normal's
    for df in (1, 3, 30):
        q = stats.t_quantile(0.9, df)
        assert stats.t_cdf(q, df) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        stats.t_quantile(0.9, 0)


def test_t_quantile_agrees_with_scipy() -> None:
    from scipy.stats import t  # scipy comes with scikit-learn, a hard dependency

    for df in (1, 2, 3, 5, 8, 19, 30, 50, 200):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert stats.t_quantile(p, df) == pytest.approx(t.ppf(p, df), rel=1e-9)


def test_mean_interval_by_hand() -> None:
    # values 1..5: mean 3, sd sqrt(2.5), n 5, t_{0.975,4} = 2.776445105...
    iv = stats.mean_interval([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (iv.mean, iv.n) == (3.0, 5)
    assert iv.lo == pytest.approx(3 - half, abs=1e-9) and iv.hi == pytest.approx(3 + half, abs=1e-9)


def test_mean_interval_with_one_seed_is_undefined_and_nan_values_are_left_out() -> None:
    one = stats.mean_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.lo) and math.isnan(one.hi)
    assert math.isnan(stats.mean_interval([]).mean)
    assert stats.mean_interval([1.0, math.nan, 3.0]).n == 2
    flat = stats.mean_interval([0.2, 0.2, 0.2])  # no spread: a zero-width interval, not nan
    assert flat.lo == pytest.approx(0.2) and flat.hi == pytest.approx(0.2)


def test_paired_interval_on_a_constructed_case() -> None:
    model = [0.20, 0.22, 0.25]
    baseline = [0.25, 0.26, 0.28]
    # differences -0.05, -0.04, -0.03: mean -0.04, sd 0.01, n 3, t_{0.975,2} = 4.302652729911275
    iv = stats.paired_interval(model, baseline)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert iv.mean == pytest.approx(-0.04)
    assert iv.lo == pytest.approx(-0.04 - half, abs=1e-9)
    assert iv.hi == pytest.approx(-0.04 + half, abs=1e-9)
    assert iv.hi < 0  # the interval excludes zero
    # unpaired, the same numbers overlap: pairing removes the shared seed-to-seed variation
    a, b = stats.mean_interval(model), stats.mean_interval(baseline)
    assert a.hi > b.lo
    with pytest.raises(ValueError):
        stats.paired_interval([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("lo", "hi", "higher_is_better", "expected"),
    [
        (-0.06, -0.01, False, "better"),  # a loss went down on every plausible value
        (-0.06, -0.01, True, "worse"),  # AUC went down
        (0.01, 0.06, False, "worse"),
        (0.01, 0.06, True, "better"),
        (-0.02, 0.03, False, "no difference"),
        (-0.02, 0.0, False, "no difference"),  # touching zero does not exclude it
        (0.0, 0.0, True, "no difference"),
        (math.nan, math.nan, False, "n/a"),  # one seed
        (-0.06, -0.01, None, "n/a"),  # a descriptive metric has no good direction
    ],
)
def test_verdict(lo: float, hi: float, higher_is_better: bool | None, expected: str) -> None:
    assert stats.verdict(lo, hi, higher_is_better) == expected


def _per_seed(with_slices: bool = False) -> dict[int, dict[str, dict[str, float]]]:
    regret = {
        "bert": [0.10, 0.12, 0.11],
        "logistic": [0.16, 0.18, 0.17],
        "lightgbm": [0.14, 0.15, 0.17],
        "list_price": [0.05, 0.05, 0.05],  # never the best baseline, however low
    }
    auc = {
        "bert": [0.70, 0.71, 0.69],
        "logistic": [0.66, 0.69, 0.70],
        "lightgbm": [0.69, 0.70, 0.71],
    }
    out: dict[int, dict[str, dict[str, float]]] = {}
    for i, seed in enumerate((3, 4, 5)):
        out[seed] = {}
        for name in regret:
            m = {"profit_regret": regret[name][i], "mean_price_ratio": 1.0}
            if name in auc:
                m["auc"] = auc[name][i]
                if with_slices:
                    m["cold_items/profit_regret"] = 0.2 + i / 100
                    m["cold_items/n"] = 10.0
                    m["cold_users/log_loss"] = 0.5
            out[seed][name] = m
    return out


def test_summarize_shape_best_baseline_paired_and_verdicts() -> None:
    s = stats.summarize(_per_seed(), main="bert", primary="profit_regret")
    assert s["primary"] == "profit_regret" and s["seeds"] == [3, 4, 5]
    assert s["best_baseline"] == "lightgbm"  # lowest mean regret among non-main, non-list-price
    assert set(s["models"]) == {"bert", "logistic", "lightgbm", "list_price"}
    entry = s["models"]["bert"]["profit_regret"]
    assert set(entry) == {"mean", "lo", "hi", "per_seed"}
    assert entry["per_seed"] == [0.10, 0.12, 0.11] and entry["lo"] < entry["mean"] < entry["hi"]
    assert "auc" not in s["models"]["list_price"]
    assert set(s["paired"]) == {"bert", "logistic", "list_price"}  # all but the best baseline
    pr = s["paired"]["bert"]["profit_regret"]
    assert set(pr) == {"vs", "mean", "lo", "hi"} and pr["vs"] == "lightgbm"
    want = stats.paired_interval([0.10, 0.12, 0.11], [0.14, 0.15, 0.17])
    assert (pr["mean"], pr["lo"], pr["hi"]) == pytest.approx((want.mean, want.lo, want.hi))
    assert "mean_price_ratio" not in s["paired"]["bert"]  # descriptive: no paired verdict
    assert s["verdicts"]["bert"]["profit_regret"] == "better"
    assert s["verdicts"]["bert"]["auc"] == "no difference"
    assert s["metric_direction"]["auc"] == {"higher_is_better": True}
    assert s["metric_direction"]["profit_regret"] == {"higher_is_better": False}
    assert s["slices"] == {}


def test_summarize_slices_are_means_over_seeds() -> None:
    s = stats.summarize(_per_seed(with_slices=True), main="bert", primary="profit_regret")
    assert set(s["slices"]) == {"cold_items", "cold_users"}
    assert s["slices"]["cold_items"]["bert"]["profit_regret"] == pytest.approx(0.21)
    assert s["slices"]["cold_items"]["logistic"]["n"] == 10.0
    assert s["slices"]["cold_users"]["lightgbm"] == {"log_loss": 0.5}
    assert "cold_items/profit_regret" not in s["models"]["bert"]  # slices stay out of models


def test_summarize_one_seed_says_n_a_and_writes_strict_json() -> None:
    one = {0: _per_seed()[3]}
    s = stats.summarize(one, main="bert", primary="profit_regret")
    entry = s["models"]["bert"]["profit_regret"]
    assert math.isnan(entry["lo"]) and math.isnan(entry["hi"])
    assert s["verdicts"]["bert"]["profit_regret"] == "n/a"
    text = json.dumps(stats.json_safe(s), allow_nan=False)
    assert json.loads(text)["models"]["bert"]["profit_regret"]["lo"] is None
    assert "[n/a]" in stats.markdown_table(s)


def test_best_baseline_falls_back_to_list_price_and_follows_direction() -> None:
    assert stats.best_baseline({"bert": 0.1, "list_price": 0.3}, "bert") == "list_price"
    means = {"bert": 0.7, "a": 0.6, "b": 0.65, "list_price": math.nan}
    assert stats.best_baseline(means, "bert", higher_is_better=True) == "b"
    assert stats.best_baseline(means, "bert", higher_is_better=False) == "a"


def test_markdown_table_has_intervals_paired_column_and_verdicts() -> None:
    s = stats.summarize(_per_seed(with_slices=True), main="bert", primary="profit_regret")
    md = stats.markdown_table(s)
    assert "| metric | model | mean [95% CI] | paired vs `lightgbm` | verdict |" in md
    row = next(line for line in md.splitlines() if line.startswith("| profit_regret | bert |"))
    assert row.endswith("| better |") and "[" in row
    assert "| profit_regret | lightgbm |" in md and "(reference)" in md
    assert "no difference" in md and "### cold_items" in md
    assert stats.headline_metrics(s) == ["profit_regret", "auc"]


def test_summarize_pairs_the_main_model_against_every_model_on_each_slice() -> None:
    per_seed = _per_seed(with_slices=True)
    for i, seed in enumerate(per_seed):  # bert is 0.05 lower than every other model on cold items
        per_seed[seed]["bert"]["cold_items/profit_regret"] = 0.15 + i / 100 + (0.002 if i else 0)
    s = stats.summarize(per_seed, main="bert", primary="profit_regret")
    paired = s["slices_paired"]["cold_items"]
    assert set(paired) == {"logistic", "lightgbm"}  # list price has no slice values here
    entry = paired["lightgbm"]["profit_regret"]
    want = stats.paired_interval([0.15, 0.162, 0.172], [0.20, 0.21, 0.22])
    assert entry["model"] == "bert" and entry["vs"] == "lightgbm"
    assert (entry["mean"], entry["lo"], entry["hi"]) == pytest.approx((want.mean, want.lo, want.hi))
    assert entry["verdict"] == "better" and entry["hi"] < 0
    assert "n" not in paired["lightgbm"]  # counts are descriptive: no paired difference
    # cold users: identical log loss for everyone -> a zero-width interval at 0, "no difference"
    assert s["slices_paired"]["cold_users"]["logistic"]["log_loss"]["verdict"] == "no difference"
    md = stats.markdown_table(s)
    assert "### cold_items: `bert` minus each model, paired over seeds" in md
    row = next(line for line in md.splitlines() if line.startswith("| lightgbm | -0.0"))
    assert "better" in row


def test_the_main_models_own_variants_are_never_the_best_baseline() -> None:
    per_seed = _per_seed()
    for i, seed in enumerate(per_seed):  # an ablation of bert, better than every baseline
        per_seed[seed]["bert_small"] = {"profit_regret": 0.09 + i / 1000, "auc": 0.7}
    plain = stats.summarize(per_seed, main="bert", primary="profit_regret")
    assert plain["best_baseline"] == "bert_small"
    s = stats.summarize(per_seed, "bert", "profit_regret", not_baselines=["bert_small"])
    assert s["best_baseline"] == "lightgbm"
    assert s["paired"]["bert_small"]["profit_regret"]["vs"] == "lightgbm"  # still compared


def test_each_ablation_is_paired_with_the_main_model_on_every_directed_metric() -> None:
    per_seed = _per_seed(with_slices=True)
    for i, seed in enumerate(per_seed):  # without a part: 0.03 more regret, 0.01 less AUC
        per_seed[seed]["bert_small"] = {
            "profit_regret": 0.13 + i / 100 + (0.001 if i == 1 else 0),
            "auc": 0.69 - (0.01 if i == 2 else 0),
            "mean_price_ratio": 1.0,
            "cold_items/profit_regret": 0.2 + i / 100,
        }
    s = stats.summarize(per_seed, "bert", "profit_regret", not_baselines=["bert_small"])
    assert set(s["ablations"]) == {"bert_small"}  # baselines are not ablations
    entry = s["ablations"]["bert_small"]["profit_regret"]
    want = stats.paired_interval([0.13, 0.141, 0.15], [0.10, 0.12, 0.11])
    assert entry["vs"] == "bert"
    assert (entry["mean"], entry["lo"], entry["hi"]) == pytest.approx((want.mean, want.lo, want.hi))
    assert entry["verdict"] == "worse"  # the part helps: regret rises without it
    assert s["ablations"]["bert_small"]["auc"]["verdict"] == "no difference"
    assert "mean_price_ratio" not in s["ablations"]["bert_small"]  # descriptive
    assert s["ablations"]["bert_small"]["cold_items/profit_regret"]["mean"] == pytest.approx(0.0)
    md = stats.markdown_table(s)
    assert "## Ablations: each variant minus `bert`, paired over seeds" in md
    assert "## Ablations on cold_items: each variant minus `bert`, paired over seeds" in md
    whole = md.split("## Ablations: ")[1].split("## Ablations on")[0]
    row = next(line for line in whole.splitlines() if line.startswith("| bert_small |"))
    assert row.split(" | ")[1].endswith("worse")
    assert stats.summarize(per_seed, "bert", "profit_regret")["ablations"] == {}
