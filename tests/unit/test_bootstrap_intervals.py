"""Real-data intervals: a paired bootstrap over test users, combined with the training seeds
(`pricing.stats.user_bootstrap`, `combine_bootstrap`, `not_worse`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pricing import metrics as M
from pricing import stats
from pricing.stats import LIST_PRICE, ORACLE_UNIFORM

Z = 1.959963984540054


def _test_set(seed: int = 0, n_users: int = 200, per_user: int = 5):
    """Offers of `n_users` users, a user-level effect on purchases, and two models' scores."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{i}" for i in range(n_users)], per_user)
    effect = np.repeat(rng.normal(0, 0.8, n_users), per_user)
    logit = -1.5 + effect + rng.normal(0, 1.0, len(users))
    y = (rng.random(len(users)) < 1 / (1 + np.exp(-logit))).astype(float)
    good = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, len(users)))))
    weak = 1 / (1 + np.exp(-(0.4 * logit + rng.normal(0, 1.0, len(users)))))
    return users, y, {"good": good, "weak": weak}


def test_every_model_sees_the_same_resamples() -> None:
    users, y, probs = _test_set()
    boot = stats.user_bootstrap(
        users, y, {"a": probs["good"], "b": probs["good"].copy(), "c": probs["weak"]}, draws=100
    )
    assert boot["unit"] == "user" and boot["draws"] == 100 and boot["users"] == 200
    assert boot["log_loss"]["a"] == boot["log_loss"]["b"]
    assert boot["auc"]["a"] == boot["auc"]["b"]
    assert len(boot["log_loss"]["c"]) == len(boot["auc"]["c"]) == 100
    # the same seed draws the same resamples, in a second call and for a model alone
    again = stats.user_bootstrap(users, y, {"a": probs["good"]}, draws=100)
    assert again["log_loss"]["a"] == boot["log_loss"]["a"]
    other = stats.user_bootstrap(users, y, {"a": probs["good"]}, draws=100, seed=1)
    assert other["log_loss"]["a"] != boot["log_loss"]["a"]
    # paired: a model close to another moves with it from resample to resample
    near = np.clip(probs["good"] * 1.05, 0, 1)
    both = stats.user_bootstrap(users, y, {"a": probs["good"], "near": near}, draws=100)
    a, d = np.asarray(both["log_loss"]["a"]), np.asarray(both["log_loss"]["near"])
    assert np.std(d - a) < 0.2 * np.std(a)


def test_the_draws_centre_on_the_full_sample_figures() -> None:
    users, y, probs = _test_set()
    boot = stats.user_bootstrap(users, y, probs, draws=400)
    for name, p in probs.items():
        ll = np.asarray(boot["log_loss"][name])
        assert ll.mean() == pytest.approx(M.log_loss(y, p), abs=0.01)
        assert 0.002 < ll.std() < 0.1  # test-sample noise: real, not absurd
        auc = np.asarray(boot["auc"][name])
        assert np.all((auc >= 0.0) & (auc <= 1.0))
        assert auc.mean() == pytest.approx(M.roc_auc(y, p), abs=0.02)
    assert np.mean(boot["auc"]["good"]) > np.mean(boot["auc"]["weak"])


def test_a_user_is_resampled_with_all_their_offers() -> None:
    # Each user's offers are all bought or all not, with a constant prediction: the loss of a
    # resample is a ratio of whole users, so every draw is a share of buyers in {k / n_users}.
    users = np.repeat(["a", "b", "c", "d"], [1, 3, 2, 4])
    y = np.repeat([1.0, 0.0, 1.0, 0.0], [1, 3, 2, 4])
    p = np.full(len(y), 0.5)
    boot = stats.user_bootstrap(users, y, {"m": p}, draws=50)
    assert boot["users"] == 4
    np.testing.assert_allclose(boot["log_loss"]["m"], math.log(2.0))


def test_weighted_auc_with_unit_weights_is_roc_auc_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(float)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # many ties
    group = (np.unique(p, return_inverse=True)[1]).astype(np.int64)
    got = stats._weighted_auc(y, group, int(group.max()) + 1, np.ones(len(y)))
    assert got == pytest.approx(M.roc_auc(y, p), abs=1e-12)


# --- combine_bootstrap ----------------------------------------------------------------------------

MAIN, BASE = "main", "base"
LOSS = {MAIN: [0.2400, 0.2410, 0.2405], BASE: [0.2420, 0.2432, 0.2424], LIST_PRICE: [0.29] * 3}
AUC = {MAIN: [0.71, 0.712, 0.709], BASE: [0.70, 0.701, 0.702], LIST_PRICE: [0.5] * 3}


def _per_seed(seeds=(0, 1, 2)) -> dict[int, dict[str, dict[str, float]]]:
    return {
        s: {n: {"log_loss": LOSS[n][s], "auc": AUC[n][s]} for n in (MAIN, BASE, LIST_PRICE)}
        for s in seeds
    }


def _boots(per_seed, sd: float = 0.004, draws: int = 300) -> dict[int, dict]:
    """Per seed, user-bootstrap draws around each model's figure: a shared user component (so the
    models' differences are paired) plus a model's own noise."""
    out = {}
    for s, by_model in per_seed.items():
        rng = np.random.default_rng(100 + s)
        shared = rng.normal(0, sd, draws)
        entry: dict = {"unit": "user", "draws": draws, "log_loss": {}, "auc": {}}
        for name, m in by_model.items():
            for metric in stats.BOOTSTRAP_METRICS:
                own = rng.normal(0, sd / 2, draws)
                entry[metric][name] = list(m[metric] + shared + own)
        out[s] = entry
    return out


def _sd(values) -> float:
    return float(np.std(np.asarray(values, float), ddof=1))


def test_combine_widens_every_interval_and_keeps_the_seed_only_one() -> None:
    per_seed = _per_seed()
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    seeds_only = {
        (n, m): (e["lo"], e["hi"]) for n, by in summary["models"].items() for m, e in by.items()
    }
    boots = _boots(per_seed)
    out = stats.combine_bootstrap(summary, per_seed, boots)
    assert "test users" in out["intervals_cover"] and "300 draws" in out["intervals_cover"]
    for name, by_metric in out["models"].items():
        for metric in stats.BOOTSTRAP_METRICS:
            e = by_metric[metric]
            assert (e["lo_seeds"], e["hi_seeds"]) == seeds_only[(name, metric)]
            assert e["lo"] <= e["lo_seeds"] and e["hi"] >= e["hi_seeds"], (name, metric)
            # se = sqrt(var over seeds / n + mean bootstrap variance), interval mean ± z se
            x = [per_seed[s][name][metric] for s in per_seed]
            b2 = np.mean([_sd(boots[s][metric][name]) ** 2 for s in per_seed])
            se = math.sqrt(_sd(x) ** 2 / 3 + b2)
            assert e["mean"] == pytest.approx(np.mean(x))
            assert e["hi"] - e["mean"] == pytest.approx(Z * se, rel=1e-6)
            assert e["mean"] - e["lo"] == pytest.approx(Z * se, rel=1e-6)
            assert e["bootstrap_sd"] == pytest.approx(math.sqrt(b2))
    for name, by_metric in out["paired"].items():
        for metric in stats.BOOTSTRAP_METRICS:
            e = by_metric[metric]
            assert e["lo"] <= e["lo_seeds"] and e["hi"] >= e["hi_seeds"], (name, metric)


def test_verdicts_are_recomputed_from_the_wider_intervals() -> None:
    per_seed = _per_seed()
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    assert summary["best_baseline"] == BASE
    # over seeds alone main's lower loss is clear ...
    assert summary["verdicts"][MAIN]["log_loss"] == stats.BETTER
    assert summary["verdicts"][MAIN]["auc"] == stats.BETTER
    out = stats.combine_bootstrap(summary, per_seed, _boots(per_seed, sd=0.01))
    # ... but not against the noise of a test set this small
    e = out["paired"][MAIN]["log_loss"]
    assert e["lo"] < 0 < e["hi"]
    assert out["verdicts"][MAIN]["log_loss"] == stats.NO_DIFFERENCE
    assert out["verdicts"][MAIN]["auc"] == stats.NO_DIFFERENCE
    # a quiet test set keeps the verdict
    quiet = stats.combine_bootstrap(
        stats.summarize(per_seed, MAIN, "log_loss"), per_seed, _boots(per_seed, sd=0.0002)
    )
    assert quiet["verdicts"][MAIN]["log_loss"] == stats.BETTER


def test_one_seed_gets_a_finite_interval_from_the_bootstrap_alone() -> None:
    per_seed = _per_seed(seeds=(0,))
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    e = summary["models"][MAIN]["log_loss"]
    assert math.isnan(e["lo"]) and math.isnan(e["hi"])
    assert summary["verdicts"][MAIN]["log_loss"] == stats.NOT_AVAILABLE
    boots = _boots(per_seed, sd=0.0002)
    out = stats.combine_bootstrap(summary, per_seed, boots)
    e = out["models"][MAIN]["log_loss"]
    sd = _sd(boots[0]["log_loss"][MAIN])
    assert math.isfinite(e["lo"]) and math.isfinite(e["hi"])
    assert (e["lo"], e["hi"]) == pytest.approx((LOSS[MAIN][0] - Z * sd, LOSS[MAIN][0] + Z * sd))
    paired = out["paired"][MAIN]["log_loss"]
    assert math.isfinite(paired["lo"]) and paired["hi"] < 0
    assert out["verdicts"][MAIN]["log_loss"] == stats.BETTER


def test_combine_leaves_the_summary_alone_unless_every_seed_has_a_bootstrap() -> None:
    per_seed = _per_seed()
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    before = {n: dict(by["log_loss"]) for n, by in summary["models"].items()}
    boots = _boots(per_seed)
    del boots[2]
    out = stats.combine_bootstrap(summary, per_seed, boots)
    assert "intervals_cover" not in out
    assert {n: by["log_loss"] for n, by in out["models"].items()} == before


def test_a_model_without_draws_keeps_its_seed_interval() -> None:
    per_seed = _per_seed()
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    boots = _boots(per_seed)
    for b in boots.values():
        del b["log_loss"][BASE]
    out = stats.combine_bootstrap(summary, per_seed, boots)
    assert "lo_seeds" not in out["models"][BASE]["log_loss"]
    assert "lo_seeds" in out["models"][MAIN]["log_loss"]
    assert "lo_seeds" not in out["paired"][MAIN]["log_loss"]  # its pair has no draws
    assert "lo_seeds" in out["paired"][MAIN]["auc"]


# --- not_worse --------------------------------------------------------------------------------------


def _entry(lo: float, hi: float, vs: str = BASE) -> dict[str, float | str]:
    return {"vs": vs, "mean": (lo + hi) / 2, "lo": lo, "hi": hi}


def test_not_worse_holds_only_where_the_bad_end_is_inside_the_margin() -> None:
    summary = {
        "paired": {
            "inside": {"log_loss": _entry(-0.004, 0.0009)},
            "at_margin": {"log_loss": _entry(-0.004, 0.001)},
            "outside": {"log_loss": _entry(-0.001, 0.003)},
            "undefined": {"log_loss": _entry(math.nan, math.nan)},
            "auc_ok": {"auc": _entry(-0.0005, 0.01)},
            "auc_bad": {"auc": _entry(-0.02, 0.01)},
            "no_margin": {"ece": _entry(-1.0, 1.0)},
            LIST_PRICE: {"log_loss": _entry(-0.01, -0.005)},
            ORACLE_UNIFORM: {"log_loss": _entry(-0.01, -0.005)},
        }
    }
    out = stats.not_worse(summary, {"log_loss": 0.001, "auc": 0.001})
    assert out["inside"]["log_loss"]["not_worse"] is True
    assert out["at_margin"]["log_loss"]["not_worse"] is False  # strictly below the margin
    assert out["outside"]["log_loss"]["not_worse"] is False
    assert out["undefined"]["log_loss"]["not_worse"] is None
    assert out["auc_ok"]["auc"]["not_worse"] is True  # higher is better: lo > -margin
    assert out["auc_bad"]["auc"]["not_worse"] is False
    assert "no_margin" not in out  # no margin declared for ece
    assert LIST_PRICE not in out and ORACLE_UNIFORM not in out
    assert out["inside"]["log_loss"] == {
        "vs": BASE, "margin": 0.001, "lo": -0.004, "hi": 0.0009, "not_worse": True,
    }  # fmt: skip


def test_not_worse_on_a_combined_summary() -> None:
    per_seed = _per_seed()
    for s in per_seed:
        per_seed[s][ORACLE_UNIFORM] = {"log_loss": 0.5, "auc": 0.5}
    summary = stats.summarize(per_seed, MAIN, "log_loss")
    assert ORACLE_UNIFORM in summary["paired"] and LIST_PRICE in summary["paired"]
    quiet = stats.combine_bootstrap(summary, per_seed, _boots(per_seed, sd=0.0002))
    out = stats.not_worse(quiet, {"log_loss": 0.001})
    assert set(out) == {MAIN}
    e = quiet["paired"][MAIN]["log_loss"]
    assert out[MAIN]["log_loss"]["hi"] == e["hi"] < 0.001
    assert out[MAIN]["log_loss"]["not_worse"] is True
    # a noisy test set: the same means, but the bad end passes the margin
    noisy = stats.combine_bootstrap(
        stats.summarize(_per_seed(), MAIN, "log_loss"), _per_seed(), _boots(_per_seed(), sd=0.01)
    )
    assert noisy["paired"][MAIN]["log_loss"]["hi"] > 0.001
    assert stats.not_worse(noisy, {"log_loss": 0.001})[MAIN]["log_loss"]["not_worse"] is False


def test_summarize_seeds_adds_bootstrap_and_not_worse_with_a_config() -> None:
    from mlops.config import ExperimentConfig
    from tasks.compare import summarize_seeds

    cfg = ExperimentConfig(model=MAIN, baselines=[BASE])
    per_seed = _per_seed()
    out = summarize_seeds.fn(per_seed, MAIN, "log_loss", cfg, _boots(per_seed, sd=0.0002))
    assert "intervals_cover" in out
    assert out["not_worse"][MAIN]["log_loss"]["margin"] == 0.001
    assert out["not_worse"][MAIN]["log_loss"]["not_worse"] is True
    plain = summarize_seeds.fn(_per_seed(), MAIN, "log_loss", cfg)
    assert "intervals_cover" not in plain and "lo_seeds" not in plain["models"][MAIN]["log_loss"]
